"""Record format conversion end to end: a CreateDeliveryStream with
DataFormatConversionConfiguration (boto3), records through the API, Parquet objects fetched from
the real S3 server and read back by pyarrow, an independent reader."""
import base64
import datetime
import decimal
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import wait_for

CATALOG = """
[catalog.web.events]
columns = [
  { name = "s", type = "string" }, { name = "vc", type = "varchar(3)" },
  { name = "ti", type = "tinyint" }, { name = "si", type = "smallint" },
  { name = "i", type = "int" }, { name = "bi", type = "bigint" },
  { name = "b", type = "boolean" }, { name = "f", type = "float" },
  { name = "d", type = "double" }, { name = "dec", type = "decimal(10,2)" },
  { name = "dt", type = "date" }, { name = "ts", type = "timestamp" },
  { name = "bin", type = "binary" }, { name = "arr", type = "array<int>" },
  { name = "m", type = "map<string,bigint>" },
  { name = "st", type = "struct<a:int,b:array<string>>" },
]
"""

FULL = {"s": "héllo", "vc": "abcdef", "ti": -5, "si": 300, "i": 70000, "bi": 9007199254740993,
        "b": True, "f": 1.5, "d": 2.25, "dec": "12345678.91", "dt": "2026-11-22",
        "ts": "2026-11-22T10:00:00.250Z", "bin": base64.b64encode(b"\x00\x01\x02").decode(),
        "arr": [1, None, 3], "m": {"x": 1}, "st": {"a": 7, "b": ["p", "q"]}}

EXPECTED_TYPES = {
    "s": pa.string(), "vc": pa.string(), "ti": pa.int8(), "si": pa.int16(), "i": pa.int32(),
    "bi": pa.int64(), "b": pa.bool_(), "f": pa.float32(), "d": pa.float64(),
    "dec": pa.decimal128(10, 2), "dt": pa.date32(), "ts": pa.timestamp("ms"),
    "bin": pa.binary(),
}


def create(fh, name, bucket, compression="SNAPPY", writer="V1"):
    fh.create_delivery_stream(DeliveryStreamName=name, ExtendedS3DestinationConfiguration={
        "RoleARN": "arn:aws:iam::000000000000:role/firehose",
        "BucketARN": f"arn:aws:s3:::{bucket}",
        "Prefix": f"{name}/", "ErrorOutputPrefix": f"errors-{name}/!{{firehose:error-output-type}}/",
        "BufferingHints": {"SizeInMBs": 64, "IntervalInSeconds": 1},
        "DataFormatConversionConfiguration": {
            "Enabled": True,
            "SchemaConfiguration": {"DatabaseName": "web", "TableName": "events",
                                    "RoleARN": "arn:aws:iam::000000000000:role/glue"},
            "InputFormatConfiguration": {"Deserializer": {"OpenXJsonSerDe": {}}},
            "OutputFormatConfiguration": {"Serializer": {"ParquetSerDe": {
                "Compression": compression, "WriterVersion": writer}}},
        }})


def test_parquet_objects_read_back_with_pyarrow(daemon_factory, s3, bucket):
    d = daemon_factory(CATALOG)
    fh = d.firehose()
    combos = [(c, w) for c in ["UNCOMPRESSED", "SNAPPY", "GZIP", "ZSTD"] for w in ["V1", "V2"]]
    bad = [b'{"i": "seventy"}', b"not json", b'[{"i": 1}]', b'{"ti": 1000}']
    for c, w in combos:
        name = f"p-{c.lower()}-{w.lower()}"
        create(fh, name, bucket, c, w)
        recs = [json.dumps(FULL).encode(), b"{}"] + [
            json.dumps({"i": n, "s": f"row {n}"}).encode() for n in range(100)] + bad
        resp = fh.put_record_batch(DeliveryStreamName=name, Records=[{"Data": r} for r in recs])
        assert resp["FailedPutCount"] == 0
    for c, w in combos:
        name = f"p-{c.lower()}-{w.lower()}"
        wait_for(lambda: s3.objects(bucket, f"{name}/") and s3.objects(bucket, f"errors-{name}/"),
                 what=f"{name} objects")
        objects = s3.objects(bucket, f"{name}/")
        assert all(k.endswith(".parquet") for k, _, _ in objects)
        table = pa.concat_tables([pq.read_table(io.BytesIO(body)) for _, body, _ in objects])
        assert table.num_rows == 102, (name, table.num_rows)
        for col, ty in EXPECTED_TYPES.items():
            assert table.schema.field(col).type == ty, (col, table.schema.field(col).type)
        assert pa.types.is_list(table.schema.field("arr").type)
        assert pa.types.is_map(table.schema.field("m").type)
        assert pa.types.is_struct(table.schema.field("st").type)
        meta = pq.ParquetFile(io.BytesIO(objects[0][1])).metadata
        codec = meta.row_group(0).column(0).compression
        assert codec == c, (name, codec)
        rows = table.to_pylist()
        full = next(r for r in rows if r["s"] == "héllo")
        assert full["vc"] == "abc" and full["ti"] == -5 and full["bi"] == 9007199254740993
        assert full["dec"] == decimal.Decimal("12345678.91")
        assert full["dt"] == datetime.date(2026, 11, 22)
        assert full["ts"] == datetime.datetime(2026, 11, 22, 10, 0, 0, 250000)
        assert full["bin"] == b"\x00\x01\x02" and full["arr"] == [1, None, 3]
        assert full["m"] == [("x", 1)] and full["st"] == {"a": 7, "b": ["p", "q"]}
        empty = next(r for r in rows if r["s"] is None and r["i"] is None)
        assert all(v is None for v in empty.values())
        assert sorted(r["i"] for r in rows if r["s"] and r["s"].startswith("row ")) == list(range(100))
        docs = [json.loads(l) for _, body, _ in s3.objects(bucket, f"errors-{name}/")
                for l in body.splitlines() if l]
        keys = [k for k, _, _ in s3.objects(bucket, f"errors-{name}/")]
        assert all(f"errors-{name}/format-conversion-failed/" in k for k in keys), keys
        assert sorted(base64.b64decode(x["rawData"]) for x in docs) == sorted(bad)
        for x in docs:
            assert x["lastErrorCode"] and x["lastErrorMessage"]
            assert x["dataCatalogTable"]["databaseName"] == "web"
            assert x["dataCatalogTable"]["tableName"] == "events"
    metrics = d.metrics()
    assert 'hosepipe_conversion_records_total{stream="p-snappy-v1",outcome="failure"} 4' in metrics


def test_conversion_is_refused_without_a_table_or_with_object_compression(daemon_factory, bucket):
    d = daemon_factory(CATALOG)
    fh = d.firehose()
    from botocore.exceptions import ClientError
    cfg = {"RoleARN": "r", "BucketARN": f"arn:aws:s3:::{bucket}",
           "DataFormatConversionConfiguration": {
               "SchemaConfiguration": {"DatabaseName": "web", "TableName": "missing"}}}
    with pytest.raises(ClientError) as e:
        fh.create_delivery_stream(DeliveryStreamName="x", ExtendedS3DestinationConfiguration=cfg)
    assert e.value.response["Error"]["Code"] == "InvalidArgumentException"
    assert "table web.missing" in e.value.response["Error"]["Message"]
    cfg["DataFormatConversionConfiguration"]["SchemaConfiguration"]["TableName"] = "events"
    cfg["CompressionFormat"] = "GZIP"
    with pytest.raises(ClientError) as e:
        fh.create_delivery_stream(DeliveryStreamName="x", ExtendedS3DestinationConfiguration=cfg)
    assert "UNCOMPRESSED" in e.value.response["Error"]["Message"]
