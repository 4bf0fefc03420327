"""Firehose Lambda handlers, unchanged, as transforms: the Python handlers in tests/lambda/python
(written the way Firehose users write them) are made into one component by `hosepipe transform
build` (componentize-py, installed on first use into target/tools) and driven through real
streams with boto3; each stream picks its handler with the `Handler` parameter."""
import base64
import gzip
import json
import os
import subprocess

import pytest

from conftest import BIN, ROOT, wait_for

HANDLERS = ROOT / "tests" / "lambda" / "python"
ROLE = "arn:aws:iam::000000000000:role/firehose"
FUNCTION = "arn:aws:lambda:us-east-1:000000000000:function:py-handlers"


@pytest.fixture(scope="module")
def component_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("transforms")
    done = subprocess.run([BIN, "transform", "build", str(HANDLERS), "-o",
                           str(out / "py-handlers.wasm")], capture_output=True, text=True,
                          env=dict(os.environ, HOSEPIPE_TOOLS_DIR=str(ROOT / "target" / "tools")))
    assert done.returncode == 0, done.stdout + done.stderr
    assert (out / "py-handlers.wasm").stat().st_size > 1_000_000
    return out


def stream(fh, name, bucket, handler, prefix=None, retries="3", **extra):
    params = [{"ParameterName": "LambdaArn", "ParameterValue": FUNCTION},
              {"ParameterName": "Handler", "ParameterValue": handler},
              {"ParameterName": "NumberOfRetries", "ParameterValue": retries},
              {"ParameterName": "BufferIntervalInSeconds", "ParameterValue": "0"}]
    fh.create_delivery_stream(DeliveryStreamName=name, ExtendedS3DestinationConfiguration={
        "RoleARN": ROLE, "BucketARN": f"arn:aws:s3:::{bucket}", "Prefix": prefix or f"{name}/",
        "ErrorOutputPrefix": f"errors-{name}/!{{firehose:error-output-type}}/",
        "BufferingHints": {"SizeInMBs": 1, "IntervalInSeconds": 1},
        "ProcessingConfiguration": {"Enabled": True,
                                    "Processors": [{"Type": "Lambda", "Parameters": params}]},
        **extra})


def put(fh, name, records):
    assert fh.put_record_batch(DeliveryStreamName=name,
                               Records=[{"Data": r} for r in records])["FailedPutCount"] == 0


def body_lines(s3, bucket, prefix):
    return [l for _, b, _ in s3.objects(bucket, prefix) for l in b.split(b"\n") if l]


def errors(s3, bucket, name):
    return [json.loads(l) for l in body_lines(s3, bucket, f"errors-{name}/processing-failed/")]


APACHE = [b'10.0.0.%d - - [30/Nov/2026:10:00:0%d +0000] "GET /p/%d HTTP/1.1" 200 512 "-" "curl/8"'
          % (i, i, i) for i in range(5)]


def test_python_handlers_run_unchanged(daemon_factory, s3, bucket, component_dir):
    d = daemon_factory(f'[transforms]\ndir = "{component_dir}"\ntimeout_ms = 2000\n')
    fh = d.firehose()
    stream(fh, "general", bucket, "general_processing.lambda_handler")
    stream(fh, "apache", bucket, "apache_log_to_json.lambda_handler")
    stream(fh, "filter", bucket, "drop_debug.lambda_handler")
    stream(fh, "parts", bucket, "partition_by_customer.lambda_handler",
           prefix="parts/customer=!{partitionKeyFromLambda:customer}/"
                  "year=!{partitionKeyFromLambda:year}/",
           DynamicPartitioningConfiguration={"Enabled": True})
    stream(fh, "raises", bucket, "raises.lambda_handler", retries="0")
    stream(fh, "ids", bucket, "wrong_ids.lambda_handler", retries="0")

    general = [json.dumps({"n": i, "text": "héllo"}).encode() for i in range(20)]
    put(fh, "general", general)
    put(fh, "apache", APACHE + [b"not a log line"])
    events = [{"level": lvl, "n": i} for i, lvl in enumerate(["INFO", "DEBUG", "WARN", "DEBUG"])]
    put(fh, "filter", [json.dumps(e).encode() for e in events])
    docs = [{"customer": c, "ts": f"{y}-01-01", "n": i}
            for i, (c, y) in enumerate([(7, 2025), (7, 2026), (9, 2026)])]
    put(fh, "parts", [json.dumps(doc).encode() for doc in docs])
    put(fh, "raises", [b"a", b"b"])
    put(fh, "ids", [b"first", b"second", b"third", b"fourth"])

    wait_for(lambda: len(body_lines(s3, bucket, "general/")) == 1, timeout=120,
             what="the pass-through's object")
    # The pass-through: every record as it was (the handler adds no newline).
    assert body_lines(s3, bucket, "general/") == [b"".join(general)]
    # re and datetime: parsed lines; the line that does not parse goes to the error output.
    wait_for(lambda: len(body_lines(s3, bucket, "apache/")) == 5 and errors(s3, bucket, "apache"),
             timeout=60, what="parsed log lines and the failed one")
    parsed = sorted((json.loads(l) for l in body_lines(s3, bucket, "apache/")),
                    key=lambda p: p["request"])
    assert parsed[0] == {"host": "10.0.0.0", "datetime": "2026-11-30T10:00:00+00:00",
                         "request": "GET /p/0 HTTP/1.1", "response": 200, "bytes": 512,
                         "referrer": None, "agent": "curl/8"}
    failed, = errors(s3, bucket, "apache")
    assert base64.b64decode(failed["rawData"]) == b"not a log line"
    assert failed["errorCode"] == "Lambda.ProcessingFailed" and failed["lambdaArn"] == FUNCTION
    # Dropped, gzip and the context: only INFO and WARN remain.
    wait_for(lambda: len(body_lines(s3, bucket, "filter/")) == 2, timeout=60, what="filtered")
    kept = [json.loads(l) for l in body_lines(s3, bucket, "filter/")]
    assert [k["level"] for k in kept] == ["INFO", "WARN"]
    assert {k["seen_by"] for k in kept} == {"drop_debug"}
    # Partition keys into prefixes.
    wait_for(lambda: len(s3.objects(bucket, "parts/")) == 3, timeout=60, what="partitions")
    keys = sorted(k.split("/")[1:3] for k, _, _ in s3.objects(bucket, "parts/"))
    assert keys == [["customer=7", "year=2025"], ["customer=7", "year=2026"],
                    ["customer=9", "year=2026"]]
    # An exception fails the batch with its message.
    wait_for(lambda: len(errors(s3, bucket, "raises")) == 2, timeout=60, what="raised")
    assert {e["errorMessage"] for e in errors(s3, bucket, "raises")} == {
        "the handler raised ValueError: the upstream schema changed"}
    # A wrong id and a missing one fail those records; the others are delivered.
    wait_for(lambda: len(errors(s3, bucket, "ids")) == 2
             and len(s3.objects(bucket, "ids/")) == 1, timeout=60, what="id checks")
    bad = {base64.b64decode(e["rawData"]): e["errorMessage"] for e in errors(s3, bucket, "ids")}
    assert set(bad) == {b"first", b"second"}
    assert all(m.startswith("MissingRecordId") for m in bad.values()), bad
    assert body_lines(s3, bucket, "ids/") == [b"thirdfourth"]
    m = d.metrics()
    assert 'hosepipe_processing_records_total{stream="filter",outcome="dropped"} 2' in m


def test_hostile_python_handlers_fail_their_records_and_the_daemon_survives(
        daemon_factory, s3, bucket, component_dir):
    d = daemon_factory(f'[transforms]\ndir = "{component_dir}"\ntimeout_ms = 1500\n'
                       'memory_mb = 96\n')
    fh = d.firehose()
    stream(fh, "spin", bucket, "hostile.spin", retries="0")
    stream(fh, "hoard", bucket, "hostile.hoard", retries="0")
    stream(fh, "after", bucket, "general_processing.lambda_handler")
    put(fh, "spin", [b"x"])
    put(fh, "hoard", [b"y"])
    for name, code in (("spin", "Lambda.FunctionTimeout"), ("hoard", "Lambda.FunctionError")):
        wait_for(lambda: errors(s3, bucket, name), timeout=90, what=f"{name}'s record failed")
        e, = errors(s3, bucket, name)
        assert e["errorCode"] == code, e
    put(fh, "after", [b"still here"])
    wait_for(lambda: body_lines(s3, bucket, "after/") == [b"still here"], timeout=60,
             what="the daemon still transforming")
    assert d.proc.poll() is None


def test_transform_build_makes_a_crate_into_a_component(tmp_path):
    """A Rust transform crate (the template) through the same command: the component is the
    one scripts/build-transforms makes."""
    out = tmp_path / "mine.wasm"
    done = subprocess.run([BIN, "transform", "build", str(ROOT / "transforms" / "template"),
                           "-o", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    built = ROOT / "target" / "wasm32-wasip2" / "release" / "my_transform.wasm"
    assert out.read_bytes() == built.read_bytes()
    bad = subprocess.run([BIN, "transform", "build", str(tmp_path)], capture_output=True,
                         text=True)
    assert bad.returncode == 1 and "not a Python handler" in bad.stderr
