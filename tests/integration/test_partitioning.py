"""Dynamic partitioning end to end: CreateDeliveryStream with DynamicPartitioningConfiguration and
a MetadataExtraction jq query (boto3), records through the API, objects fetched from the real S3
server under their `key=value/` prefixes; with format conversion the Parquet is read back by
pyarrow."""
import base64
import io
import json

import botocore.exceptions
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import wait_for

ROLE = "arn:aws:iam::000000000000:role/firehose"
QUERY = '{customer_id: .customer_id, year: (.ts | strftime("%Y"))}'


def metadata_extraction(query=QUERY):
    return {"Type": "MetadataExtraction", "Parameters": [
        {"ParameterName": "MetadataExtractionQuery", "ParameterValue": query},
        {"ParameterName": "JsonParsingEngine", "ParameterValue": "JQ-1.6"}]}


def device_from_lambda():
    """The built-in blueprint that returns partition keys, as a transform would."""
    return {"Type": "Lambda", "Parameters": [
        {"ParameterName": "LambdaArn",
         "ParameterValue": "arn:aws:lambda:us-east-1:000000000000:function:partition-key-from-field"},
        {"ParameterName": "Fields", "ParameterValue": "device=device.type"},
        {"ParameterName": "BufferIntervalInSeconds", "ParameterValue": "0"}]}


def destination(bucket, prefix, processors, interval=1, **extra):
    conf = {
        "RoleARN": ROLE, "BucketARN": f"arn:aws:s3:::{bucket}", "Prefix": prefix,
        "ErrorOutputPrefix": "errors/!{firehose:error-output-type}/",
        "BufferingHints": {"SizeInMBs": 64, "IntervalInSeconds": interval},
        "DynamicPartitioningConfiguration": {"Enabled": True,
                                             "RetryOptions": {"DurationInSeconds": 300}},
        "ProcessingConfiguration": {"Enabled": True, "Processors": processors},
    }
    conf.update(extra)
    return conf


def lines(s3, bucket, prefix):
    return [l for _, body, _ in s3.objects(bucket, prefix) for l in body.split(b"\n") if l]


def error_docs(s3, bucket):
    return [json.loads(l) for l in lines(s3, bucket, "errors/processing-failed/")]


def record(customer, device, ts=1565380509, n=0):
    return json.dumps({"customer_id": customer, "device": {"type": device}, "ts": ts,
                       "n": n}).encode()


def test_records_land_under_their_partition_prefixes(daemon, s3, bucket):
    fh = daemon.firehose()
    prefix = ("customer_id=!{partitionKeyFromQuery:customer_id}/"
              "device=!{partitionKeyFromLambda:device}/year=!{partitionKeyFromQuery:year}/")
    fh.create_delivery_stream(DeliveryStreamName="parts", ExtendedS3DestinationConfiguration=(
        destination(bucket, prefix, [device_from_lambda(), metadata_extraction(),
                                     {"Type": "AppendDelimiterToRecord"}])))
    good = [record(c, d, n=i) for i, (c, d) in enumerate(
        [("1234567890", "mobile"), ("42", "desktop"), ("1234567890", "desktop")] * 10)]
    bad = [b"not json", json.dumps({"device": {"type": "tv"}, "ts": 0}).encode(),
           json.dumps({"customer_id": "7", "ts": 0}).encode()]
    resp = fh.put_record_batch(DeliveryStreamName="parts", Records=[{"Data": r} for r in good + bad])
    assert resp["FailedPutCount"] == 0
    expected = {
        "customer_id=1234567890/device=mobile/year=2019/": 10,
        "customer_id=42/device=desktop/year=2019/": 10,
        "customer_id=1234567890/device=desktop/year=2019/": 10,
    }
    wait_for(lambda: all(len(lines(s3, bucket, p)) == n for p, n in expected.items())
             and len(error_docs(s3, bucket)) == 3, what="partitioned objects and failures")
    for p in expected:
        customer = p.split("/")[0].split("=")[1]
        device = p.split("/")[1].split("=")[1]
        for key, body, _ in s3.objects(bucket, p):
            assert key.startswith(p) and key[len(p):].startswith("parts-1-")
            for line in body.splitlines():
                doc = json.loads(line)
                assert (doc["customer_id"], doc["device"]["type"]) == (customer, device), key
    docs = error_docs(s3, bucket)
    raw = sorted(base64.b64decode(d["rawData"]) for d in docs)
    assert raw == sorted(bad)
    by_raw = {base64.b64decode(d["rawData"]): d for d in docs}
    assert by_raw[b"not json"]["errorCode"] == "Lambda.ProcessingFailed" or \
        "not JSON" in by_raw[b"not json"]["errorMessage"]
    missing_customer = by_raw[bad[1]]
    assert missing_customer["errorCode"] == "DynamicPartitioning.MetadataExtractionFailed"
    assert "customer_id" in missing_customer["errorMessage"]
    missing_device = by_raw[bad[2]]
    assert "device" in missing_device["errorMessage"]
    # Everything is delivered: no partition is active any more; the default limit is 500.
    wait_for(lambda: 'hosepipe_partition_count{stream="parts"} 0' in daemon.metrics(),
             what="no active partition")
    assert daemon.metric("hosepipe_active_partitions_limit", "parts") == 500
    assert daemon.metric("hosepipe_jq_processing_duration_seconds_count", "parts") > 0

    # The rules: partitioning cannot be disabled, and needs an error prefix at creation.
    desc = fh.describe_delivery_stream(DeliveryStreamName="parts")["DeliveryStreamDescription"]
    dest = desc["Destinations"][0]["ExtendedS3DestinationDescription"]
    assert dest["DynamicPartitioningConfiguration"]["Enabled"] is True
    with pytest.raises(botocore.exceptions.ClientError) as e:
        fh.update_destination(
            DeliveryStreamName="parts", CurrentDeliveryStreamVersionId=desc["VersionId"],
            DestinationId=desc["Destinations"][0]["DestinationId"],
            ExtendedS3DestinationUpdate={"DynamicPartitioningConfiguration": {"Enabled": False}})
    assert e.value.response["Error"]["Code"] == "InvalidArgumentException"
    assert "cannot be disabled" in e.value.response["Error"]["Message"]
    with pytest.raises(botocore.exceptions.ClientError) as e:
        fh.create_delivery_stream(DeliveryStreamName="no-errors", ExtendedS3DestinationConfiguration=(
            destination(bucket, prefix, [device_from_lambda(), metadata_extraction()],
                        ErrorOutputPrefix="")))
    assert e.value.response["Error"]["Code"] == "InvalidArgumentException"
    assert "ErrorOutputPrefix" in e.value.response["Error"]["Message"]


def test_records_over_the_active_partition_limit_go_to_the_error_output(daemon_factory, s3, bucket):
    d = daemon_factory("[quotas.limited]\nactive_partitions = 2\n")
    fh = d.firehose()
    fh.create_delivery_stream(DeliveryStreamName="limited", ExtendedS3DestinationConfiguration=(
        destination(bucket, "c=!{partitionKeyFromQuery:customer_id}/",
                    [metadata_extraction("{customer_id: .customer_id}")], interval=3)))
    recs = [record(str(c), "mobile", n=i) for i, c in enumerate([1, 2, 3, 1, 4, 2, 5])]
    resp = fh.put_record_batch(DeliveryStreamName="limited", Records=[{"Data": r} for r in recs])
    assert resp["FailedPutCount"] == 0
    wait_for(lambda: len(error_docs(s3, bucket)) == 3, what="over-limit records in the error output")
    assert d.metric("hosepipe_partition_count_exceeded", "limited") == 1
    assert d.metric("hosepipe_active_partitions_limit", "limited") == 2
    docs = error_docs(s3, bucket)
    assert {d_["errorCode"] for d_ in docs} == {"DynamicPartitioning.ActivePartitionsLimitExceeded"}
    assert sorted(json.loads(base64.b64decode(x["rawData"]))["customer_id"] for x in docs) == \
        ["3", "4", "5"]
    wait_for(lambda: len(s3.objects(bucket, "c=1/")) and len(s3.objects(bucket, "c=2/")),
             what="the two active partitions' objects")
    assert [b"".join(b for _, b, _ in s3.objects(bucket, f"c={c}/")).count(b"customer_id")
            for c in (1, 2)] == [2, 2]
    # Delivered partitions are no longer active: a new customer is accepted now.
    wait_for(lambda: d.metric("hosepipe_partition_count", "limited") == 0, what="no active partition")
    fh.put_record(DeliveryStreamName="limited", Record={"Data": record("9", "tv")})
    wait_for(lambda: s3.objects(bucket, "c=9/"), what="the new partition's object")
    assert len(error_docs(s3, bucket)) == 3


CATALOG = """
[catalog.shop.orders]
columns = [
  { name = "customer_id", type = "string" }, { name = "amount", type = "decimal(8,2)" },
  { name = "items", type = "array<string>" }, { name = "ts", type = "bigint" },
]
"""


def test_conversion_and_partitioning_together(daemon_factory, s3, bucket):
    """A Firehose user's CreateDeliveryStream with both configurations, given the table in the
    local catalog; pyarrow reads each partition's Parquet."""
    d = daemon_factory(CATALOG)
    fh = d.firehose()
    conf = destination(bucket, "orders/customer=!{partitionKeyFromQuery:customer_id}/",
                       [metadata_extraction("{customer_id: .customer_id}")])
    conf["DataFormatConversionConfiguration"] = {
        "Enabled": True,
        "SchemaConfiguration": {"DatabaseName": "shop", "TableName": "orders", "RoleARN": ROLE},
        "InputFormatConfiguration": {"Deserializer": {"OpenXJsonSerDe": {}}},
        "OutputFormatConfiguration": {"Serializer": {"ParquetSerDe": {"Compression": "SNAPPY"}}},
    }
    fh.create_delivery_stream(DeliveryStreamName="orders", ExtendedS3DestinationConfiguration=conf)
    recs = [json.dumps({"customer_id": c, "amount": f"{n}.25", "items": ["a"] * (n % 3),
                        "ts": 1700000000 + n}).encode()
            for n, c in enumerate(["alice", "bob", "carol"] * 20)]
    recs.append(json.dumps({"customer_id": "bob", "amount": "not a number"}).encode())
    resp = fh.put_record_batch(DeliveryStreamName="orders", Records=[{"Data": r} for r in recs])
    assert resp["FailedPutCount"] == 0
    wait_for(lambda: all(s3.objects(bucket, f"orders/customer={c}/") for c in ("alice", "bob", "carol"))
             and s3.objects(bucket, "errors/format-conversion-failed/"),
             what="each customer's Parquet and the conversion failure")
    for c in ("alice", "bob", "carol"):
        objects = s3.objects(bucket, f"orders/customer={c}/")
        assert all(k.endswith(".parquet") for k, _, _ in objects)
        table = pa.concat_tables([pq.read_table(io.BytesIO(b)) for _, b, _ in objects])
        assert table.num_rows == 20
        assert set(table.column("customer_id").to_pylist()) == {c}
        assert table.schema.field("amount").type == pa.decimal128(8, 2)
        assert table.schema.field("ts").type == pa.int64()
    failed = lines(s3, bucket, "errors/format-conversion-failed/")
    assert len(failed) == 1
    doc = json.loads(failed[0])
    assert doc["lastErrorCode"] == "DataFormatConversion.MalformedData"
