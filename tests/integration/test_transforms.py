"""Record transformation end to end: streams whose ProcessingConfiguration names a transform,
driven by boto3, delivered to the real S3 server. The components come from
scripts/build-transforms (HOSEPIPE_TRANSFORMS_DIR)."""
import base64
import gzip
import json
import os
import time
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from conftest import wait_for

TRANSFORMS = Path(os.environ.get("HOSEPIPE_TRANSFORMS_DIR",
                                 Path(__file__).resolve().parents[2] / "target" / "transforms"))


def arn(name):
    return f"arn:aws:lambda:us-east-1:000000000000:function:{name}"


def lambda_processor(name, **params):
    ps = [{"ParameterName": "LambdaArn", "ParameterValue": arn(name)},
          {"ParameterName": "BufferIntervalInSeconds", "ParameterValue": "0"}]
    ps += [{"ParameterName": k, "ParameterValue": v} for k, v in params.items()]
    return {"Type": "Lambda", "Parameters": ps}


def create(fh, name, bucket, processors):
    return fh.create_delivery_stream(
        DeliveryStreamName=name,
        ExtendedS3DestinationConfiguration={
            "RoleARN": "arn:aws:iam::000000000000:role/firehose",
            "BucketARN": f"arn:aws:s3:::{bucket}",
            "Prefix": "out/",
            "ErrorOutputPrefix": "errors/!{firehose:error-output-type}/",
            "BufferingHints": {"SizeInMBs": 1, "IntervalInSeconds": 1},
            "ProcessingConfiguration": {"Enabled": True, "Processors": processors},
        })


def lines(s3, bucket, prefix):
    out = []
    for _, body, _ in s3.objects(bucket, prefix):
        out += [l for l in body.split(b"\n") if l]
    return out


def transforms_daemon(daemon_factory, extra=""):
    assert (TRANSFORMS / "hostile-guest.wasm").is_file(), "run scripts/build-transforms first"
    return daemon_factory(f'[transforms]\ndir = "{TRANSFORMS}"\n{extra}')


def put(fh, name, records):
    resp = fh.put_record_batch(DeliveryStreamName=name, Records=[{"Data": r} for r in records])
    assert resp["FailedPutCount"] == 0


APACHE = [
    b'10.0.0.%d - - [22/Nov/2026:10:00:00 +0000] "GET /p/%d HTTP/1.1" 200 512 "-" "curl/8"' % (i, i)
    for i in range(20)
]
MALFORMED = [b"not a log line", b'1.2.3.4 - - [x] "GET /" 99 1', b""]


@pytest.mark.parametrize("blueprint", ["apache-log-to-json.wasm", "built-in"])
def test_a_blueprint_transforms_records_and_failures_reach_the_error_output(
        daemon_factory, s3, bucket, blueprint):
    d = transforms_daemon(daemon_factory) if blueprint.endswith(".wasm") else daemon_factory()
    fh = d.firehose()
    create(fh, "apache", bucket, [lambda_processor("apache-log-to-json")])
    described = fh.describe_delivery_stream(DeliveryStreamName="apache")
    dest = described["DeliveryStreamDescription"]["Destinations"][0]
    assert dest["ExtendedS3DestinationDescription"]["ProcessingConfiguration"]["Enabled"] is True
    put(fh, "apache", APACHE + MALFORMED)
    wait_for(lambda: len(lines(s3, bucket, "out/")) == 20
             and len(lines(s3, bucket, "errors/")) == 3, what="transformed and failed records")
    parsed = [json.loads(l) for l in lines(s3, bucket, "out/")]
    assert sorted(p["request"] for p in parsed) == sorted(f"GET /p/{i} HTTP/1.1" for i in range(20))
    assert all(p["response"] == "200" and p["referrer"] is None and p["agent"] == "curl/8"
               for p in parsed)
    keys = [k for k, _, _ in s3.objects(bucket, "errors/")]
    assert all(k.startswith("errors/processing-failed/") for k in keys), keys
    failed = [json.loads(l) for l in lines(s3, bucket, "errors/")]
    assert sorted(base64.b64decode(f["rawData"]) for f in failed) == sorted(MALFORMED)
    for f in failed:
        assert f["errorCode"] == "Lambda.ProcessingFailed"
        assert f["lambdaArn"] == arn("apache-log-to-json")
        assert f["attemptsMade"] == 1
        assert f["errorMessage"]
        assert f["attemptEndingTimestamp"] >= f["arrivalTimestamp"] > 0
    metrics = d.metrics()
    assert 'hosepipe_processing_records_total{stream="apache",outcome="failed"} 3' in metrics
    assert 'hosepipe_processing_records_total{stream="apache",outcome="ok"} 20' in metrics
    assert "hosepipe_processing_duration_seconds_count" in metrics


def test_hostile_guests_fail_only_their_records_and_the_daemon_keeps_serving(
        daemon_factory, s3, bucket):
    d = transforms_daemon(daemon_factory, "timeout_ms = 300\nmemory_mb = 32\n")
    fh = d.firehose()
    create(fh, "hostile", bucket, [lambda_processor("hostile-guest")])
    batch = [b"rec-%d\n" % i for i in range(500)]
    batch[10], batch[250], batch[499] = b"trap", b"loop", b"alloc"
    started = time.monotonic()
    put(fh, "hostile", batch)
    # The API answers while the sandbox is busy with the endless loop.
    assert "hostile" in fh.list_delivery_streams()["DeliveryStreamNames"]
    wait_for(lambda: len(lines(s3, bucket, "out/")) == 497
             and len(lines(s3, bucket, "errors/")) == 3, timeout=60, what="497 + 3 records")
    print(f"500-record batch with 3 hostile records settled in {time.monotonic() - started:.1f}s")
    assert sorted(lines(s3, bucket, "out/")) == sorted(
        r.strip() for i, r in enumerate(batch) if i not in (10, 250, 499))
    failed = {base64.b64decode(f["rawData"]): f for f in map(json.loads, lines(s3, bucket, "errors/"))}
    assert failed[b"trap"]["errorCode"] == "Lambda.FunctionError"
    assert "poison record" in failed[b"trap"]["errorMessage"]
    assert failed[b"loop"]["errorCode"] == "Lambda.FunctionTimeout"
    assert failed[b"alloc"]["errorCode"] == "Lambda.FunctionError"
    assert all(f["attemptsMade"] >= 2 for f in failed.values())  # found by bisection
    put(fh, "hostile", [b"after\n"])
    wait_for(lambda: b"after" in lines(s3, bucket, "out/"), what="the next record")


def test_wrong_length_answers_fail_the_whole_batch(daemon_factory, s3, bucket):
    d = transforms_daemon(daemon_factory)
    fh = d.firehose()
    create(fh, "short", bucket, [lambda_processor("hostile-guest", WrongLength="true",
                                                  NumberOfRetries="1")])
    put(fh, "short", [b"a", b"b", b"c"])
    wait_for(lambda: len(lines(s3, bucket, "errors/")) == 3, what="3 failed records")
    for f in map(json.loads, lines(s3, bucket, "errors/")):
        assert f["errorCode"] == "Lambda.MissingRecordId"
        assert f["attemptsMade"] == 2
    assert lines(s3, bucket, "out/") == []


def test_unusable_transforms_are_refused_at_create(daemon_factory, bucket):
    d = transforms_daemon(daemon_factory)
    fh = d.firehose()
    cases = [
        ([lambda_processor("no-such-function")], "no-such-function.wasm"),
        ([lambda_processor("json-field-filter")], "Keep, Drop or Mask"),
        ([lambda_processor("hostile-guest", Reject="bad")], "rejected: bad"),
        ([{"Type": "Lambda", "Parameters": [{"ParameterName": "LambdaArn",
                                            "ParameterValue": "not-an-arn"}]}], "Lambda function ARN"),
    ]
    for processors, needle in cases:
        with pytest.raises(ClientError) as e:
            create(fh, "refused", bucket, processors)
        assert e.value.response["Error"]["Code"] == "InvalidArgumentException"
        assert needle in e.value.response["Error"]["Message"], e.value.response["Error"]["Message"]
    assert fh.list_delivery_streams()["DeliveryStreamNames"] == []


def test_native_cloudwatch_processing(daemon, s3, bucket):
    fh = daemon.firehose()
    create(fh, "cwl", bucket, [
        {"Type": "Decompression",
         "Parameters": [{"ParameterName": "CompressionFormat", "ParameterValue": "GZIP"}]},
        {"Type": "CloudWatchLogProcessing",
         "Parameters": [{"ParameterName": "DataMessageExtraction", "ParameterValue": "true"}]},
        {"Type": "AppendDelimiterToRecord"},
    ])
    data = gzip.compress(json.dumps({
        "messageType": "DATA_MESSAGE", "owner": "1", "logGroup": "/app", "logStream": "s",
        "subscriptionFilters": ["f"],
        "logEvents": [{"id": "1", "timestamp": 1, "message": "first"},
                      {"id": "2", "timestamp": 2, "message": "second"}]}).encode())
    control = gzip.compress(b'{"messageType":"CONTROL_MESSAGE","logEvents":[]}')
    put(fh, "cwl", [data, control, b"not gzip"])
    wait_for(lambda: len(lines(s3, bucket, "out/")) == 2
             and len(lines(s3, bucket, "errors/")) == 1, what="2 events and 1 failure")
    assert sorted(lines(s3, bucket, "out/")) == [b"first", b"second"]
    keys = [k for k, _, _ in s3.objects(bucket, "errors/")]
    assert keys[0].startswith("errors/decompression-failed/")
