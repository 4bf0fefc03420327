"""Every malformed, oversized or unauthorised request gets the error a real client expects, and
stores nothing."""
import base64
import json
import subprocess
import time

import botocore.exceptions
import pytest

from conftest import BIN, signed_call, wait_for


@pytest.fixture
def stream(s3, bucket, daemon):
    fh = daemon.firehose()
    fh.create_delivery_stream(
        DeliveryStreamName="guarded",
        ExtendedS3DestinationConfiguration={
            "RoleARN": "arn:aws:iam::000000000000:role/x", "BucketARN": f"arn:aws:s3:::{bucket}",
            "Prefix": "g/", "BufferingHints": {"SizeInMBs": 1, "IntervalInSeconds": 0}})
    return daemon, bucket


def b64(n, byte=b"a"):
    return base64.b64encode(byte * n).decode()


def error_of(resp):
    return resp.status_code, resp.json()["__type"]


def assert_nothing_stored(s3, daemon, bucket):
    time.sleep(2)  # zero buffering: anything accepted would have been written by now
    assert s3.objects(bucket, "g/") == []
    assert daemon.metric("hosepipe_incoming_records_total", "guarded") == 0


def test_limits_and_malformed_requests(s3, stream):
    daemon, bucket = stream
    url = daemon.url
    batch = lambda recs: {"DeliveryStreamName": "guarded", "Records": recs}  # noqa: E731
    cases = [
        ("501 records", "PutRecordBatch", batch([{"Data": b64(1)}] * 501)),
        ("no records", "PutRecordBatch", batch([])),
        ("record over 1,000 KiB", "PutRecordBatch", batch([{"Data": b64(1_024_001)}])),
        ("batch over 4 MiB", "PutRecordBatch", batch([{"Data": b64(1_000_000)}] * 5)),
        ("bad base64", "PutRecordBatch", batch([{"Data": b64(3)}, {"Data": "%%%"}])),
        ("missing Data", "PutRecordBatch", batch([{"Data": b64(3)}, {}])),
        ("bad stream name", "PutRecordBatch",
         {"DeliveryStreamName": "no spaces!", "Records": [{"Data": b64(1)}]}),
        ("not JSON", "PutRecordBatch", b"{not json"),
        ("wrong JSON type", "PutRecordBatch", {"DeliveryStreamName": 5, "Records": []}),
        ("PutRecord over 1,000 KiB", "PutRecord",
         {"DeliveryStreamName": "guarded", "Record": {"Data": b64(1_024_001)}}),
        ("PutRecord bad base64", "PutRecord",
         {"DeliveryStreamName": "guarded", "Record": {"Data": "!!"}}),
    ]
    for label, target, body in cases:
        status, kind = error_of(signed_call(url, target, body))
        assert (status, kind) == (400, "InvalidArgumentException"), label
    status, kind = error_of(signed_call(url, "PutRecordBatch", {
        "DeliveryStreamName": "nope", "Records": [{"Data": b64(1)}]}))
    assert (status, kind) == (400, "ResourceNotFoundException")
    assert error_of(signed_call(url, "Frobnicate", {}))[1] == "UnknownOperationException"
    assert error_of(signed_call(url, None, {}))[1] == "UnknownOperationException"
    assert_nothing_stored(s3, daemon, bucket)
    # The largest legal record and batch are accepted.
    ok = signed_call(url, "PutRecord", {"DeliveryStreamName": "guarded",
                                        "Record": {"Data": b64(1_024_000)}})
    assert ok.status_code == 200 and ok.json()["RecordId"] and ok.json()["Encrypted"] is False
    resp = signed_call(url, "PutRecordBatch", batch([{"Data": b64(1)}] * 500)).json()
    assert resp["FailedPutCount"] == 0 and len(resp["RequestResponses"]) == 500
    ids = [r["RecordId"] for r in resp["RequestResponses"]]
    assert len(set(ids)) == 500


def test_boto3_sees_firehose_exceptions(stream):
    daemon, _ = stream
    fh = daemon.firehose()
    with pytest.raises(fh.exceptions.ResourceNotFoundException):
        fh.put_record(DeliveryStreamName="missing", Record={"Data": b"x"})
    with pytest.raises(fh.exceptions.InvalidArgumentException):
        fh.put_record_batch(DeliveryStreamName="guarded", Records=[{"Data": b"x" * 1_024_001}])
    with pytest.raises(fh.exceptions.InvalidArgumentException):
        fh.create_delivery_stream(DeliveryStreamName="bad-hints",
                                  ExtendedS3DestinationConfiguration={
                                      "RoleARN": "r", "BucketARN": "arn:aws:s3:::bkt-x",
                                      "BufferingHints": {"SizeInMBs": 129, "IntervalInSeconds": 1}})


def test_authentication_refuses_bad_signatures_and_stores_nothing(s3, stream):
    daemon, bucket = stream
    body = {"DeliveryStreamName": "guarded", "Records": [{"Data": b64(10)}]}
    resp = signed_call(daemon.url, "PutRecordBatch", body, sk="wrong-secret")
    assert error_of(resp) == (400, "InvalidSignatureException")
    resp = signed_call(daemon.url, "PutRecordBatch", body, ak="AKIDUNKNOWN")
    assert error_of(resp) == (400, "UnrecognizedClientException")
    resp = signed_call(daemon.url, "PutRecordBatch", body, sign=False)
    assert error_of(resp)[1] == "MissingAuthenticationTokenException"
    # boto3 with a wrong secret gets the error class the SDK knows.
    fh = daemon.firehose(sk="wrong-secret")
    with pytest.raises(botocore.exceptions.ClientError) as e:
        fh.put_record_batch(DeliveryStreamName="guarded", Records=[{"Data": b"x"}])
    assert e.value.response["Error"]["Code"] == "InvalidSignatureException"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        daemon.firehose(ak="AKIDUNKNOWN").list_delivery_streams()
    assert e.value.response["Error"]["Code"] == "UnrecognizedClientException"
    assert_nothing_stored(s3, daemon, bucket)
    # The right key still works.
    daemon.firehose().put_record(DeliveryStreamName="guarded", Record={"Data": b"ok\n"})
    wait_for(lambda: s3.objects(bucket, "g/"), what="the authorised record")


def test_validate_prints_every_error_with_its_path(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("""
[streams.clicks.extended_s3_destination_configuration]
bucket_arn = "arn:aws:s3:::clicks"
compression_format = "LZ4"
buffering_hints = { size_in_mbs = 0, interval_in_seconds = 901 }
""")
    out = subprocess.run([BIN, "validate", "--config", str(bad)], capture_output=True, text=True)
    assert out.returncode != 0
    for line in [
        "streams.clicks.extended_s3_destination_configuration.buffering_hints.size_in_mbs: 0 is outside 1..=128",
        "streams.clicks.extended_s3_destination_configuration.buffering_hints.interval_in_seconds: 901 is outside 0..=900",
        "streams.clicks.extended_s3_destination_configuration.compression_format:",
    ]:
        assert line in out.stderr, out.stderr
    good = subprocess.run([BIN, "validate", "--config", "config/quickstart.toml"],
                          capture_output=True, text=True)
    assert good.returncode == 0, good.stderr
