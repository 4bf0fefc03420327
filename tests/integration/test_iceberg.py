"""Apache Iceberg tables end to end: streams created with boto3 (or declared in the config file)
commit into tables that pyiceberg, an independent Iceberg implementation, creates and reads
back. Catalogs: SQL on SQLite and on a throwaway PostgreSQL; warehouses on SeaweedFS, or on the
local disk (the embedded default). Routing by a JQ query and by a transform's otfMetadata,
tables created from the first records, new fields added as columns, records that do not fit in
the error output, and `kill -9` cycles with an S3 outage that leave every acknowledged record in
its table exactly once."""
import base64
import datetime
import json
import os
import random
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pytest
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.transforms import IdentityTransform
from pyiceberg.types import (BooleanType, DoubleType, IntegerType, ListType, LongType, MapType,
                             NestedField, StringType, StructType, TimestamptzType)

from conftest import REGION, S3_AK, S3_SK, S3Server, free_port, wait_for
from test_durability import Producers
from test_tls import pki  # noqa: F401 - the fixture

ROLE = "arn:aws:iam::000000000000:role/firehose"
ACCOUNT_CATALOG = "arn:aws:glue:us-east-1:000000000000:catalog"
CYCLES = int(os.environ.get("HOSEPIPE_ICEBERG_CYCLES", "10"))


def s3_props(s3):
    return {"s3.endpoint": s3.url, "s3.access-key-id": S3_AK, "s3.secret-access-key": S3_SK,
            "s3.region": REGION, "s3.path-style-access": "true"}


def reader(name, uri, warehouse, s3=None):
    """pyiceberg's SQL catalog on the same database the daemon uses."""
    return SqlCatalog(name, uri=uri, warehouse=warehouse, **(s3_props(s3) if s3 else {}))


EVENTS = Schema(
    NestedField(1, "id", LongType(), required=True),
    NestedField(2, "name", StringType()),
    NestedField(3, "score", DoubleType()),
    NestedField(4, "at", TimestamptzType()),
    NestedField(5, "region", StringType()),
    NestedField(6, "ok", BooleanType()),
    NestedField(7, "geo", StructType(NestedField(8, "lat", DoubleType()),
                                     NestedField(9, "lon", DoubleType()))),
    NestedField(10, "tags", ListType(11, StringType())),
    NestedField(12, "attrs", MapType(13, StringType(), 14, IntegerType())),
)
BY_REGION = PartitionSpec(PartitionField(source_id=5, field_id=1000,
                                         transform=IdentityTransform(), name="region"))


def event(i):
    return {"id": i, "name": f"n{i}", "score": i / 4, "at": f"2026-11-30 10:{i % 60:02d}:00",
            "region": ["eu", "us", "ap"][i % 3], "ok": i % 2 == 0,
            "geo": {"lat": 1.5, "lon": -2.25}, "tags": [f"t{i}"], "attrs": {"k": i}}


def iceberg_destination(catalog_arn, tables, bucket, warehouse=None, **extra):
    conf = {"RoleARN": ROLE,
            "CatalogConfiguration": {"CatalogARN": catalog_arn},
            "DestinationTableConfigurationList": tables,
            "BufferingHints": {"SizeInMBs": 1, "IntervalInSeconds": 1},
            "S3Configuration": {"RoleARN": ROLE, "BucketARN": f"arn:aws:s3:::{bucket}",
                                "ErrorOutputPrefix": "errors/!{firehose:error-output-type}/"}}
    if warehouse:
        conf["CatalogConfiguration"]["WarehouseLocation"] = warehouse
    conf.update(extra)
    return conf


def put(fh, name, records):
    for i in range(0, len(records), 500):
        out = fh.put_record_batch(DeliveryStreamName=name,
                                  Records=[{"Data": r} for r in records[i:i + 500]])
        assert out["FailedPutCount"] == 0


def error_documents(s3, bucket, prefix="errors/iceberg-failed/"):
    return [json.loads(line) for _, body, _ in s3.objects(bucket, prefix)
            for line in body.splitlines() if line]


def rows(catalog, table):
    return catalog.load_table(table).scan().to_arrow().to_pylist()


def test_a_sqlite_catalog_on_seaweedfs_gets_typed_partitioned_rows(daemon_factory, s3, bucket,
                                                                   tmp_path):
    uri = f"sqlite:///{tmp_path / 'catalog.db'}"
    cat = reader("lake", uri, f"s3://{bucket}/wh", s3)
    cat.create_namespace("db")
    cat.create_table("db.events", schema=EVENTS, partition_spec=BY_REGION)
    d = daemon_factory(f'[iceberg.catalogs.lake]\nuri = "{uri}"\n')
    fh = d.firehose()
    fh.create_delivery_stream(
        DeliveryStreamName="ice",
        IcebergDestinationConfiguration=iceberg_destination(
            ACCOUNT_CATALOG + "/lake",
            [{"DestinationDatabaseName": "db", "DestinationTableName": "events",
              "S3ErrorOutputPrefix": "events-errors/"}], bucket, f"s3://{bucket}/wh"))
    sent = [event(i) for i in range(300)]
    misfits = [{"name": "no id"}, {"id": "not a number"}, "not json at all"]
    put(fh, "ice", [json.dumps(e).encode() for e in sent + misfits])
    wait_for(lambda: len(rows(cat, "db.events")) >= 300, timeout=60, what="300 rows")
    got = sorted(rows(cat, "db.events"), key=lambda r: r["id"])
    assert len(got) == 300
    first = got[7]
    assert first["id"] == 7 and first["name"] == "n7" and first["score"] == 1.75
    assert first["at"] == datetime.datetime(2026, 11, 30, 10, 7, tzinfo=datetime.timezone.utc)
    assert first["geo"] == {"lat": 1.5, "lon": -2.25} and first["tags"] == ["t7"]
    assert dict(first["attrs"]) == {"k": 7} and first["ok"] is False
    table = cat.load_table("db.events")
    # Typed as the table says, and partitioned by region: every data file holds one region.
    assert str(table.scan().to_arrow().schema.field("at").type) == "timestamp[us, tz=UTC]"
    files = table.inspect.files().to_pylist()
    per_region = {}
    for f in files:
        per_region[f["partition"]["region"]] = per_region.get(f["partition"]["region"], 0) \
            + f["record_count"]
    assert per_region == {"eu": 100, "us": 100, "ap": 100}
    # The snapshot says what it holds.
    summary = table.current_snapshot().summary
    assert summary["hosepipe.positions"] and summary["hosepipe.commit"]
    # Records that do not fit: in the error output with the column and why; nothing else lost.
    # The table's S3ErrorOutputPrefix takes them.
    mine = "events-errors/iceberg-failed/"
    docs = wait_for(lambda: len(error_documents(s3, bucket, mine)) == 3 and
                    error_documents(s3, bucket, mine),
                    timeout=30, what="three misfits in the table's error output")
    assert error_documents(s3, bucket) == []
    assert {doc["errorCode"] for doc in docs} == {"Iceberg.RecordDoesNotFitTable"}
    reasons = " | ".join(doc["errorMessage"] for doc in docs)
    assert "column id: is required" in reasons and "column id" in reasons
    assert "not JSON" in reasons or "not a JSON object" in reasons, reasons
    raw = sorted(base64.b64decode(doc["rawData"]) for doc in docs)
    assert raw == sorted(json.dumps(m).encode() for m in misfits)
    desc = fh.describe_delivery_stream(DeliveryStreamName="ice")["DeliveryStreamDescription"]
    ice = desc["Destinations"][0]["IcebergDestinationDescription"]
    assert ice["CatalogConfiguration"]["CatalogARN"] == ACCOUNT_CATALOG + "/lake"
    assert ice["DestinationTableConfigurationList"][0]["DestinationTableName"] == "events"
    assert d.metric("hosepipe_delivery_to_iceberg_records_total", "ice") == 300
    assert 'hosepipe_delivery_to_iceberg_requests_total{stream="ice",outcome="success"}' \
        in d.metrics()
    assert "hosepipe_delivery_to_iceberg_commit_latency_seconds_bucket" in d.metrics()
    status = subprocess.run([os.environ["HOSEPIPE_BIN"], "status", "--endpoint", d.url],
                            capture_output=True, text=True, check=True).stdout
    assert "iceberg lake: db.events" in status, status


def test_bad_definitions_are_refused(daemon_factory, bucket):
    d = daemon_factory()
    fh = d.firehose()
    tables = [{"DestinationDatabaseName": "db", "DestinationTableName": "t",
               "UniqueKeys": ["id"]}]
    for conf, field in [
        (iceberg_destination("arn:aws:glue:us-east-1:1:catalog", tables, bucket,
                             AppendOnly=True), "CatalogARN"),
        (iceberg_destination(ACCOUNT_CATALOG, tables, bucket), "AppendOnly"),
        (iceberg_destination(ACCOUNT_CATALOG + "/nowhere", tables, bucket, AppendOnly=True),
         "nowhere"),
    ]:
        with pytest.raises(fh.exceptions.InvalidArgumentException) as e:
            fh.create_delivery_stream(DeliveryStreamName="bad",
                                      IcebergDestinationConfiguration=conf)
        assert field in str(e.value)
    assert fh.list_delivery_streams()["DeliveryStreamNames"] == []
    # A good one on the default catalog, then updated: the update is merged and checked.
    fh.create_delivery_stream(DeliveryStreamName="good", IcebergDestinationConfiguration=(
        iceberg_destination(ACCOUNT_CATALOG, [{"DestinationDatabaseName": "db",
                                               "DestinationTableName": "t"}], bucket)))
    desc = fh.describe_delivery_stream(DeliveryStreamName="good")["DeliveryStreamDescription"]
    update = dict(CurrentDeliveryStreamVersionId=desc["VersionId"],
                  DestinationId=desc["Destinations"][0]["DestinationId"])
    fh.update_destination(DeliveryStreamName="good", **update, IcebergDestinationUpdate={
        "BufferingHints": {"SizeInMBs": 2, "IntervalInSeconds": 30},
        "DestinationTableConfigurationList": [{"DestinationDatabaseName": "db",
                                               "DestinationTableName": "u",
                                               "S3ErrorOutputPrefix": "u-errors/"}]})
    desc = fh.describe_delivery_stream(DeliveryStreamName="good")["DeliveryStreamDescription"]
    ice = desc["Destinations"][0]["IcebergDestinationDescription"]
    assert ice["BufferingHints"] == {"SizeInMBs": 2, "IntervalInSeconds": 30}
    assert ice["DestinationTableConfigurationList"][0]["S3ErrorOutputPrefix"] == "u-errors/"
    update["CurrentDeliveryStreamVersionId"] = desc["VersionId"]
    with pytest.raises(fh.exceptions.InvalidArgumentException):
        fh.update_destination(DeliveryStreamName="good", **update, IcebergDestinationUpdate={
            "BufferingHints": {"SizeInMBs": 500}})


ROUTE_BY_JQ = {"Enabled": True, "Processors": [{"Type": "MetadataExtraction", "Parameters": [
    {"ParameterName": "MetadataExtractionQuery",
     "ParameterValue": "{destinationDatabaseName: .db, destinationTableName: .table}"},
    {"ParameterName": "JsonParsingEngine", "ParameterValue": "JQ-1.6"}]}]}

ROUTE_BY_TRANSFORM = {"Enabled": True, "Processors": [{"Type": "Lambda", "Parameters": [
    {"ParameterName": "LambdaArn",
     "ParameterValue": "arn:aws:lambda:us-east-1:000000000000:function:partition-key-from-field"},
    {"ParameterName": "Fields", "ParameterValue":
        "otfMetadata.destinationDatabaseName=db,otfMetadata.destinationTableName=table"},
    {"ParameterName": "BufferIntervalInSeconds", "ParameterValue": "0"}]}]}


def test_routing_creates_tables_and_adds_columns(daemon_factory, s3, bucket, tmp_path):
    uri = f"sqlite:///{tmp_path / 'catalog.db'}"
    cat = reader("lake", uri, f"s3://{bucket}/wh", s3)
    cat.create_namespace("db")
    cat.create_table("db.a", schema=Schema(NestedField(1, "id", LongType()),
                                           NestedField(2, "table", StringType())))
    d = daemon_factory(f'[iceberg.catalogs.lake]\nuri = "{uri}"\n')
    fh = d.firehose()
    fh.create_delivery_stream(
        DeliveryStreamName="routed",
        IcebergDestinationConfiguration=iceberg_destination(
            ACCOUNT_CATALOG + "/lake", [], bucket, f"s3://{bucket}/wh",
            ProcessingConfiguration=ROUTE_BY_JQ,
            TableCreationConfiguration={"Enabled": True},
            SchemaEvolutionConfiguration={"Enabled": True}))
    to_a = [{"db": "db", "table": "a", "id": i, "extra": f"x{i}"} for i in range(50)]
    to_b = [{"db": "db", "table": "b", "id": i, "flag": True} for i in range(20)]
    unrouted = [{"id": 1}]
    put(fh, "routed", [json.dumps(r).encode() for r in to_a + to_b + unrouted])
    wait_for(lambda: cat.table_exists("db.b") and len(rows(cat, "db.b")) == 20 and
             len(rows(cat, "db.a")) == 50, timeout=60, what="rows in db.a and the new db.b")
    # db.a got the new field as a column (committed before the data), with its values.
    a = sorted(rows(cat, "db.a"), key=lambda r: r["id"])
    assert [r["extra"] for r in a] == [f"x{i}" for i in range(50)]
    assert cat.load_table("db.a").schema().find_field("extra").required is False
    b = cat.load_table("db.b")
    assert {f.name for f in b.schema().fields} == {"db", "table", "id", "flag"}
    assert str(b.schema().find_field("id").field_type) == "long"
    # A record the query finds no table for fails its metadata extraction.
    docs = wait_for(lambda: error_documents(s3, bucket, "errors/processing-failed/"), timeout=30,
                    what="the unrouted record")
    assert [doc["errorCode"] for doc in docs] == ["DynamicPartitioning.MetadataExtractionFailed"]

    # By a transform's otfMetadata, tables not created: the unknown one's records are refused.
    fh.create_delivery_stream(
        DeliveryStreamName="by-transform",
        IcebergDestinationConfiguration=iceberg_destination(
            ACCOUNT_CATALOG + "/lake", [], bucket, f"s3://{bucket}/wh",
            ProcessingConfiguration=ROUTE_BY_TRANSFORM,
            S3Configuration={"RoleARN": ROLE, "BucketARN": f"arn:aws:s3:::{bucket}",
                             "ErrorOutputPrefix": "t-errors/!{firehose:error-output-type}/"}))
    put(fh, "by-transform", [json.dumps({"db": "db", "table": t, "id": 100 + i}).encode()
                             for i, t in enumerate(["a"] * 5 + ["missing"] * 3)])
    wait_for(lambda: len(rows(cat, "db.a")) == 55, timeout=60, what="5 more rows in db.a")
    docs = wait_for(lambda: len(error_documents(s3, bucket, "t-errors/")) == 3 and
                    error_documents(s3, bucket, "t-errors/"), timeout=30,
                    what="the missing table's records in the error output")
    assert {doc["errorCode"] for doc in docs} == {"Iceberg.TableNotFound"}
    assert not cat.table_exists("db.missing")


def start_postgres(root, port=None):
    """A throwaway PostgreSQL cluster (../shared/reference/test-servers.md); started again on
    its data and port when `port` is given."""
    bindir = sorted(Path("/usr/lib/postgresql").glob("*/bin"))[-1]
    as_pg = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if port is None:
        root.mkdir(parents=True, exist_ok=True)
        shutil.chown(root, "postgres", "postgres")
        port = free_port()
        subprocess.run(as_pg + [str(bindir / "initdb"), "-D", str(root / "data"), "-A", "trust",
                                "-U", "postgres", "--no-sync"], check=True, capture_output=True)
    subprocess.run(as_pg + [str(bindir / "pg_ctl"), "-D", str(root / "data"), "-l",
                            str(root / "log"), "-w", "-o",
                            f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off",
                            "start"], check=True, capture_output=True)
    stop = lambda: subprocess.run(as_pg + [str(bindir / "pg_ctl"), "-D", str(root / "data"),  # noqa: E731
                                           "-m", "immediate", "stop"], capture_output=True)
    return port, stop


def test_a_postgresql_catalog(daemon_factory, s3, bucket):
    root = Path(tempfile.mkdtemp(prefix="hosepipe-pg-"))
    port, stop = start_postgres(root)
    try:
        uri = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        cat = SqlCatalog("pg", uri=uri.replace("postgresql://", "postgresql+psycopg2://"),
                         warehouse=f"s3://{bucket}/pg", **s3_props(s3))
        cat.create_namespace("db")
        cat.create_table("db.events", schema=EVENTS, partition_spec=BY_REGION)
        d = daemon_factory(f'[iceberg]\ndefault_catalog = "pg"\n'
                           f'[iceberg.catalogs.pg]\nuri = "{uri}"\nwarehouse = "s3://{bucket}/pg"\n')
        fh = d.firehose()
        fh.create_delivery_stream(
            DeliveryStreamName="pg",
            IcebergDestinationConfiguration=iceberg_destination(
                ACCOUNT_CATALOG,
                [{"DestinationDatabaseName": "db", "DestinationTableName": "events"}], bucket))
        put(fh, "pg", [json.dumps(event(i)).encode() for i in range(120)])
        wait_for(lambda: len(rows(cat, "db.events")) == 120, timeout=60, what="120 rows")
        # A catalog outage: PostgreSQL stopped while records keep coming; commits are retried
        # until it is back, and each record lands once.
        stop()
        put(fh, "pg", [json.dumps(event(i)).encode() for i in range(120, 240)])
        failure = 'hosepipe_delivery_to_iceberg_requests_total{stream="pg",outcome="failure"}'
        wait_for(lambda: failure in d.metrics(), timeout=60, what="a failed commit")
        port, stop = start_postgres(root, port)
        cat = SqlCatalog("pg", uri=uri.replace("postgresql://", "postgresql+psycopg2://"),
                         warehouse=f"s3://{bucket}/pg", **s3_props(s3))
        wait_for(lambda: len(rows(cat, "db.events")) == 240, timeout=90, what="240 rows")
        assert sorted(r["id"] for r in rows(cat, "db.events")) == list(range(240))
    finally:
        stop()
        shutil.rmtree(root, ignore_errors=True)


def test_a_rest_catalog_with_oauth_conflicts_lost_answers_and_an_outage(daemon_factory, s3,
                                                                        bucket, tmp_path):
    """A REST catalog (the protocol's stand-in in iceberg_rest_catalog.py, its tables kept by
    pyiceberg) behind OAuth2 client credentials with short-lived tokens, a warehouse named by
    the server (its prefix), another writer's commits, commits answered 409, a commit applied
    whose answer is lost, and an outage: every record lands once; pyiceberg's own REST client
    reads the table back. A wrong credential ends in the error output, clearly."""
    from pyiceberg.catalog.rest import RestCatalog
    from iceberg_rest_catalog import RestCatalogServer
    backing = reader("analytics", f"sqlite:///{tmp_path / 'rest.db'}", f"s3://{bucket}/rest", s3)
    server = RestCatalogServer({"analytics": backing}, credential="hosepipe:s3cret",
                               token_ttl=4).start()
    try:
        cat = RestCatalog("rest", uri=server.url, warehouse="analytics",
                          credential="hosepipe:s3cret", **s3_props(s3),
                          **{"oauth2-server-uri": f"{server.url}/v1/oauth/tokens"})
        cat.create_namespace("db")
        cat.create_table("db.events", schema=EVENTS, partition_spec=BY_REGION)
        d = daemon_factory(f'[iceberg.catalogs.lake]\nuri = "{server.url}/"\n'
                           f'warehouse = "analytics"\n'
                           f'properties = {{ credential = "hosepipe:s3cret" }}\n'
                           f'[iceberg.catalogs.intruder]\nuri = "{server.url}"\n'
                           f'warehouse = "analytics"\n'
                           f'properties = {{ credential = "hosepipe:guess" }}\n')
        fh = d.firehose()
        fh.create_delivery_stream(
            DeliveryStreamName="rest",
            IcebergDestinationConfiguration=iceberg_destination(
                ACCOUNT_CATALOG + "/lake",
                [{"DestinationDatabaseName": "db", "DestinationTableName": "events"},
                 {"DestinationDatabaseName": "db", "DestinationTableName": "created"}],
                bucket, ProcessingConfiguration=ROUTE_BY_JQ,
                TableCreationConfiguration={"Enabled": True}))
        server.conflicts, server.lose_commit_answers = 2, 1
        first = [dict(event(i), db="db", table="events") for i in range(100)]
        put(fh, "rest", [json.dumps(e).encode() for e in first])
        wait_for(lambda: len(rows(cat, "db.events")) == 100, timeout=60, what="100 rows")
        assert server.conflicts_answered >= 2 and server.lost_answers == 1
        assert d.metric("hosepipe_delivery_to_iceberg_commit_conflicts_total", "rest") >= 2
        # Another writer appends through the same catalog; a table is created over REST.
        theirs = cat.load_table("db.events")
        theirs.append(pa.Table.from_pylist(
            [{"id": i, "name": "theirs", "region": "eu"} for i in (10_000, 10_001, 10_002)],
            schema=theirs.schema().as_arrow()))
        put(fh, "rest", [json.dumps({"db": "db", "table": "created", "id": i}).encode()
                         for i in range(10)])
        wait_for(lambda: cat.table_exists("db.created") and len(rows(cat, "db.created")) == 10,
                 timeout=60, what="a table created over REST")
        # An outage, longer than a token lives: commits wait it out and sign in again.
        server.unavailable = True
        put(fh, "rest", [json.dumps(dict(event(i), db="db", table="events")).encode()
                         for i in range(100, 200)])
        failure = 'hosepipe_delivery_to_iceberg_requests_total{stream="rest",outcome="failure"}'
        wait_for(lambda: failure in d.metrics(), timeout=60, what="a failed commit")
        time.sleep(server.token_ttl + 1)
        issued = server.tokens_issued
        server.unavailable = False
        wait_for(lambda: len(rows(cat, "db.events")) == 203, timeout=90, what="203 rows")
        ids = sorted(r["id"] for r in rows(cat, "db.events"))
        assert ids == list(range(200)) + [10_000, 10_001, 10_002]
        assert server.tokens_issued > issued, "the daemon signed in again after its token expired"
        summary = cat.load_table("db.events").current_snapshot().summary
        assert "hosepipe.positions" in summary.additional_properties
        # A wrong credential: refused by the token endpoint, retried, then the error output.
        fh.create_delivery_stream(
            DeliveryStreamName="intruder",
            IcebergDestinationConfiguration=iceberg_destination(
                ACCOUNT_CATALOG + "/intruder",
                [{"DestinationDatabaseName": "db", "DestinationTableName": "events"}], bucket,
                RetryOptions={"DurationInSeconds": 0},
                S3Configuration={"RoleARN": ROLE, "BucketARN": f"arn:aws:s3:::{bucket}",
                                 "ErrorOutputPrefix": "i-errors/!{firehose:error-output-type}/"}))
        put(fh, "intruder", [json.dumps(event(i)).encode() for i in range(5)])
        docs = wait_for(lambda: len(error_documents(s3, bucket, "i-errors/")) == 5 and
                        error_documents(s3, bucket, "i-errors/"), timeout=60,
                        what="the intruder's records in the error output")
        assert {doc["errorCode"] for doc in docs} == {"Iceberg.CatalogUnavailable"}
        assert "invalid_client" in docs[0]["errorMessage"], docs[0]["errorMessage"]
        assert len(rows(cat, "db.events")) == 203
    finally:
        server.stop()


def test_the_glue_catalog_on_moto(daemon_factory, s3, bucket, moto):
    """A plain CatalogARN goes to Glue when Glue is configured: moto's Glue holds the tables
    (Parameters.metadata_location), SeaweedFS their files. moto does not enforce UpdateTable's
    VersionId, so concurrent commits are not checked there."""
    from pyiceberg.catalog.glue import GlueCatalog
    cat = GlueCatalog("glue", **{"glue.endpoint": moto, "glue.region": REGION,
                                 "glue.access-key-id": "AKIDGLUE",
                                 "glue.secret-access-key": "secret", **s3_props(s3)})
    cat.create_namespace("gdb")
    cat.create_table("gdb.events", schema=EVENTS, partition_spec=BY_REGION,
                     location=f"s3://{bucket}/glue/events")
    d = daemon_factory(f'[glue]\nendpoint = "{moto}"\n')
    fh = d.firehose()
    fh.create_delivery_stream(
        DeliveryStreamName="to-glue",
        IcebergDestinationConfiguration=iceberg_destination(
            ACCOUNT_CATALOG, [{"DestinationDatabaseName": "gdb",
                               "DestinationTableName": "events"}], bucket,
            f"s3://{bucket}/glue-wh"))
    fh.create_delivery_stream(
        DeliveryStreamName="glue-created",
        IcebergDestinationConfiguration=iceberg_destination(
            ACCOUNT_CATALOG, [{"DestinationDatabaseName": "gdb2",
                               "DestinationTableName": "made"}], bucket,
            f"s3://{bucket}/glue-wh", TableCreationConfiguration={"Enabled": True}))
    put(fh, "to-glue", [json.dumps(event(i)).encode() for i in range(90)])
    put(fh, "glue-created", [json.dumps({"id": i, "v": f"v{i}"}).encode() for i in range(40)])
    wait_for(lambda: len(rows(cat, "gdb.events")) == 90, timeout=60, what="90 rows via Glue")
    assert sorted(r["id"] for r in rows(cat, "gdb.events")) == list(range(90))
    assert len(cat.load_table("gdb.events").history()) >= 1
    wait_for(lambda: cat.table_exists("gdb2.made") and len(rows(cat, "gdb2.made")) == 40,
             timeout=60, what="a table hosepipe created in Glue")
    made = cat.load_table("gdb2.made")
    assert made.location() == f"s3://{bucket}/glue-wh/gdb2.db/made"
    assert {f.name for f in made.schema().fields} == {"id", "v"}


def test_the_embedded_default_needs_no_server(daemon_factory):
    d = daemon_factory("""
object_store = "local"
[streams.local-ice.iceberg_destination_configuration]
catalog_configuration = { catalog_arn = "arn:aws:glue:us-east-1:000000000000:catalog", warehouse_location = "s3://lake/warehouse" }
destination_table_configuration_list = [{ destination_database_name = "web", destination_table_name = "clicks" }]
table_creation_configuration = { enabled = true }
buffering_hints = { size_in_mbs = 1, interval_in_seconds = 1 }
s3_configuration = { bucket_arn = "arn:aws:s3:::lake" }
""", auth=False)
    fh = d.firehose()
    put(fh, "local-ice", [json.dumps({"id": i, "page": f"/p{i % 5}"}).encode()
                          for i in range(200)])
    db = d.data_dir / "iceberg" / "catalog.db"
    wait_for(db.exists, timeout=60, what="the embedded catalog's database")
    cat = reader("default", f"sqlite:///{db}",
                 f"file://{d.data_dir / 'buckets' / 'lake' / 'warehouse'}")
    wait_for(lambda: cat.table_exists("web.clicks") and len(rows(cat, "web.clicks")) == 200,
             timeout=60, what="200 rows in web.clicks")
    location = cat.load_table("web.clicks").location()
    assert location.startswith(f"file://{d.data_dir / 'buckets' / 'lake' / 'warehouse'}")


class IdProducers(Producers):
    def record(self, rid):
        return json.dumps({"rid": rid, "n": len(rid)}).encode()


def test_kill_9_cycles_and_an_outage_commit_every_record_once(tmp_path, daemon_factory):
    server = S3Server(tmp_path / "s3")
    try:
        bucket = server.create_bucket("ice-once")
        uri = f"sqlite:///{tmp_path / 'catalog.db'}"
        cat = reader("lake", uri, f"s3://{bucket}/wh", server)
        cat.create_namespace("db")
        cat.create_table("db.once", schema=Schema(NestedField(1, "rid", StringType()),
                                                  NestedField(2, "n", LongType())))
        d = daemon_factory(f"""
[iceberg.catalogs.lake]
uri = "{uri}"
[streams.once.iceberg_destination_configuration]
catalog_configuration = {{ catalog_arn = "{ACCOUNT_CATALOG}/lake", warehouse_location = "s3://{bucket}/wh" }}
destination_table_configuration_list = [{{ destination_database_name = "db", destination_table_name = "once" }}]
buffering_hints = {{ size_in_mbs = 1, interval_in_seconds = 1 }}
retry_options = {{ duration_in_seconds = 7200 }}
s3_configuration = {{ bucket_arn = "arn:aws:s3:::{bucket}", error_output_prefix = "errors/!{{firehose:error-output-type}}/" }}
""", listen=f"127.0.0.1:{free_port()}", extra_env={"AWS_ENDPOINT_URL_S3": server.url})
        producers = IdProducers(d, "once", threads=2)
        logs = []
        with producers:
            for cycle in range(CYCLES):
                if cycle == CYCLES // 2:
                    server.stop()  # the outage: data files cannot be written ...
                time.sleep(random.uniform(0.5, 2.0))
                logs.append(d.log())
                d.crash()          # ... and the daemon dies, again and again
                d.start()
                if cycle == CYCLES // 2 + 2:
                    server.start()
            time.sleep(1)
        acked = producers.acked
        assert acked, "nothing acknowledged"

        def committed():
            return [r["rid"] for r in rows(cat, "db.once")]

        wait_for(lambda: acked <= set(committed()), timeout=120,
                 what="every acknowledged record in the table")
        logs.append(d.log())
        assert d.stop() == 0, d.log()
        logs.append(d.log())
        got = committed()
        errors = error_documents(server, bucket)
        duplicated = len(got) - len(set(got))
        print(f"\n{CYCLES} kill -9 cycles, {len(acked)} acknowledged, {len(set(got))} distinct "
              f"rows, {duplicated} duplicated, {len(errors)} in the error output")
        assert duplicated == 0, f"{duplicated} rows committed twice"
        assert not errors, errors[:3]
        skipped = sum(log.count("already in the table") for log in logs)
        print(f"batches found already committed after a restart: {skipped}")
    finally:
        server.stop()


def test_partition_values_are_escaped_in_paths_as_the_java_writer_does(daemon_factory):
    d = daemon_factory("""
object_store = "local"
[streams.paths.iceberg_destination_configuration]
catalog_configuration = { catalog_arn = "arn:aws:glue:us-east-1:000000000000:catalog", warehouse_location = "s3://lake/warehouse" }
destination_table_configuration_list = [{ destination_database_name = "web", destination_table_name = "pages", partition_spec = { identity = [{ source_name = "page" }] } }]
table_creation_configuration = { enabled = true }
buffering_hints = { size_in_mbs = 1, interval_in_seconds = 1 }
s3_configuration = { bucket_arn = "arn:aws:s3:::lake" }
""", auth=False)
    pages = ["/search", "a b", "k=v", "100%", "/x y=z%"]
    put(d.firehose(), "paths", [json.dumps({"id": i, "page": pages[i % 5]}).encode()
                                for i in range(50)])
    db = d.data_dir / "iceberg" / "catalog.db"
    warehouse = d.data_dir / "buckets" / "lake" / "warehouse"
    wait_for(db.exists, timeout=60, what="the embedded catalog's database")
    cat = reader("default", f"sqlite:///{db}", f"file://{warehouse}")
    wait_for(lambda: cat.table_exists("web.pages") and len(rows(cat, "web.pages")) == 50,
             timeout=60, what="50 rows in web.pages")
    got = rows(cat, "web.pages")
    assert sorted(r["page"] for r in got) == sorted(pages[i % 5] for i in range(50))
    # One directory per value, named as Iceberg's Java writer names it (URLEncoder).
    dirs = {p.parent.name for p in warehouse.rglob("*.parquet") if "/data/" in str(p)}
    assert dirs == {"page=%2Fsearch", "page=a+b", "page=k%3Dv", "page=100%25",
                    "page=%2Fx+y%3Dz%25"}, dirs
    # Each data file's partition, as the manifest holds it, is the raw value.
    files = cat.load_table("web.pages").inspect.files().to_pylist()
    assert {f["partition"]["page"] for f in files} == set(pages)


def test_a_rest_catalog_over_https_trusts_the_ca_bundle(daemon_factory, s3, bucket, tmp_path,
                                                        pki):
    """The REST catalog's client takes the daemon's CA bundle: over HTTPS with a certificate a
    private CA signed, rows arrive; a daemon without the bundle fails the handshake, and the
    records go to the error output saying so."""
    from iceberg_rest_catalog import RestCatalogServer
    backing = reader("analytics", f"sqlite:///{tmp_path / 'tls.db'}", f"s3://{bucket}/tls", s3)
    backing.create_namespace("db")
    backing.create_table("db.events", schema=EVENTS)
    server = RestCatalogServer({"analytics": backing}).serve_tls(pki["server"],
                                                                  pki["server_key"]).start()
    catalog = f'[iceberg.catalogs.lake]\nuri = "{server.url}"\nwarehouse = "analytics"\n'
    table = [{"DestinationDatabaseName": "db", "DestinationTableName": "events"}]
    try:
        d = daemon_factory(f'ca_bundle = "{pki["ca"]}"\n' + catalog)
        d.firehose().create_delivery_stream(
            DeliveryStreamName="tls", IcebergDestinationConfiguration=iceberg_destination(
                ACCOUNT_CATALOG + "/lake", table, bucket))
        put(d.firehose(), "tls", [json.dumps(event(i)).encode() for i in range(20)])
        wait_for(lambda: len(rows(backing, "db.events")) == 20, timeout=60,
                 what="20 rows through the HTTPS catalog")
        untrusting = daemon_factory(catalog)
        untrusting.firehose().create_delivery_stream(
            DeliveryStreamName="untrusted", IcebergDestinationConfiguration=iceberg_destination(
                ACCOUNT_CATALOG + "/lake", table, bucket, RetryOptions={"DurationInSeconds": 0},
                S3Configuration={"RoleARN": ROLE, "BucketARN": f"arn:aws:s3:::{bucket}",
                                 "ErrorOutputPrefix": "u-errors/!{firehose:error-output-type}/"}))
        put(untrusting.firehose(), "untrusted", [json.dumps(event(i)).encode() for i in range(3)])
        docs = wait_for(lambda: len(error_documents(s3, bucket, "u-errors/")) == 3 and
                        error_documents(s3, bucket, "u-errors/"), timeout=60,
                        what="the untrusted records in the error output")
        assert "certificate" in docs[0]["errorMessage"].lower(), docs[0]["errorMessage"]
        assert len(rows(backing, "db.events")) == 20
    finally:
        server.stop()
