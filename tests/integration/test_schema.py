"""Table schemas for format conversion: `hosepipe schema` reads a Glue table from moto's Glue
(a real Glue API server, driven by boto3) or from the config's local catalog."""
import os
import subprocess
import tempfile
import time
from pathlib import Path

import boto3
import pytest

from conftest import BIN, REGION, wait_for

ALL_TYPES = [
    ("s", "string"), ("c", "char(10)"), ("vc", "varchar(255)"), ("ti", "tinyint"),
    ("si", "smallint"), ("i", "int"), ("bi", "bigint"), ("b", "boolean"), ("f", "float"),
    ("d", "double"), ("dec", "decimal(10,2)"), ("dt", "date"), ("ts", "timestamp"),
    ("bin", "binary"), ("arr", "array<string>"), ("m", "map<string,bigint>"),
    ("st", "struct<a:int,b:array<double>>"),
]


@pytest.fixture(scope="module")
def glue(moto):
    url = moto
    client = boto3.client("glue", endpoint_url=url, region_name=REGION,
                          aws_access_key_id="AKIDGLUE", aws_secret_access_key="secret")
    client.create_database(DatabaseInput={"Name": "web"})

    def table(name, columns):
        client.create_table(DatabaseName="web", TableInput={
            "Name": name,
            "StorageDescriptor": {"Columns": [{"Name": n, "Type": t} for n, t in columns]}})

    yield url, table


def schema(*args, env=None):
    e = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    e.update(env or {})
    return subprocess.run([BIN, "schema", *args], capture_output=True, text=True, env=e)


def glue_env(url):
    return {"AWS_ENDPOINT_URL_GLUE": url, "AWS_ACCESS_KEY_ID": "AKIDGLUE",
            "AWS_SECRET_ACCESS_KEY": "secret", "AWS_REGION": REGION}


def test_every_type_is_read_from_glue(glue):
    url, table = glue
    table("clicks", ALL_TYPES)
    out = schema("--database", "web", "--table", "clicks", env=glue_env(url))
    assert out.returncode == 0, out.stderr
    rows = [l.split()[:2] for l in out.stdout.splitlines()[1:]]
    assert rows == [[n, t] for n, t in ALL_TYPES]
    assert "Decimal128(10, 2)" in out.stdout and "Timestamp(ms)" in out.stdout.replace(
        "Millisecond", "ms").replace("Timestamp(ms, None)", "Timestamp(ms)")


def test_schema_errors_name_the_table_and_column(glue):
    url, table = glue
    table("bad", [("id", "bigint"), ("ua", "text")])
    out = schema("--database", "web", "--table", "bad", env=glue_env(url))
    assert out.returncode != 0
    assert "table web.bad: column ua: unknown type \"text\"" in out.stderr, out.stderr
    out = schema("--database", "web", "--table", "nope", env=glue_env(url))
    assert out.returncode != 0
    assert "table web.nope: Glue AWSGlue.GetTable failed: EntityNotFoundException" in out.stderr, \
        out.stderr


def test_the_local_catalog_needs_no_glue(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[catalog.web.events]\ncolumns = [\n'
                   '  { name = "id", type = "bigint" },\n'
                   '  { name = "tags", type = "map<string,int>" },\n]\n')
    out = schema("--config", str(cfg), "--database", "WEB", "--table", "Events")
    assert out.returncode == 0, out.stderr
    assert [l.split()[:2] for l in out.stdout.splitlines()[1:]] == [
        ["id", "bigint"], ["tags", "map<string,int>"]]
    out = schema("--config", str(cfg), "--database", "web", "--table", "other")
    assert out.returncode != 0 and "no Glue endpoint is configured" in out.stderr
    cfg.write_text('[catalog.web.events]\ncolumns = [{ name = "x", type = "array<int" }]\n')
    out = schema("--config", str(cfg), "--database", "web", "--table", "events")
    assert out.returncode == 2
    assert "catalog.web.events.columns: table web.events: column x:" in out.stderr, out.stderr


def test_a_pinned_version_id_reads_that_version(glue):
    url, table = glue
    table("versioned", [("id", "int")])
    client = boto3.client("glue", endpoint_url=url, region_name=REGION,
                          aws_access_key_id="AKIDGLUE", aws_secret_access_key="secret")
    client.update_table(DatabaseName="web", TableInput={
        "Name": "versioned",
        "StorageDescriptor": {"Columns": [{"Name": "id", "Type": "bigint"},
                                          {"Name": "extra", "Type": "string"}]}})
    latest = schema("--database", "web", "--table", "versioned", env=glue_env(url))
    first = schema("--database", "web", "--table", "versioned", "--version-id", "1",
                   env=glue_env(url))
    assert latest.returncode == 0 and first.returncode == 0, (latest.stderr, first.stderr)
    assert [l.split()[:2] for l in latest.stdout.splitlines()[1:]] == [
        ["id", "bigint"], ["extra", "string"]]
    assert [l.split()[:2] for l in first.stdout.splitlines()[1:]] == [["id", "int"]]


def test_a_stream_converts_with_a_glue_table(glue, daemon_factory, s3, bucket):
    import io
    import json as _json

    import pyarrow.parquet as pq

    url, table = glue
    table("orders", [("id", "bigint"), ("amount", "decimal(8,2)"), ("items", "array<string>")])
    d = daemon_factory(extra_env={"AWS_ENDPOINT_URL_GLUE": url})
    fh = d.firehose()
    fh.create_delivery_stream(DeliveryStreamName="orders", ExtendedS3DestinationConfiguration={
        "RoleARN": "r", "BucketARN": f"arn:aws:s3:::{bucket}", "Prefix": "orders/",
        "ErrorOutputPrefix": "errors/!{firehose:error-output-type}/",
        "BufferingHints": {"SizeInMBs": 64, "IntervalInSeconds": 1},
        "DataFormatConversionConfiguration": {
            "SchemaConfiguration": {"DatabaseName": "web", "TableName": "orders"},
            "InputFormatConfiguration": {"Deserializer": {"HiveJsonSerDe": {}}},
            "OutputFormatConfiguration": {"Serializer": {"ParquetSerDe": {}}}}})
    recs = [_json.dumps({"id": n, "amount": n + 0.5, "items": ["a"] * n}).encode()
            for n in range(5)]
    fh.put_record_batch(DeliveryStreamName="orders", Records=[{"Data": r} for r in recs])
    wait_for(lambda: s3.objects(bucket, "orders/"), what="the Parquet object")
    _, body, _ = s3.objects(bucket, "orders/")[0]
    t = pq.read_table(io.BytesIO(body))
    assert t.column("id").to_pylist() == [0, 1, 2, 3, 4]
    assert str(t.schema.field("amount").type) == "decimal128(8, 2)"
    assert t.column("items").to_pylist()[2] == ["a", "a"]
