"""PutRecordBatch → buffer → object in a real S3 server, driven by boto3 and the aws CLI.

Objects are read back through S3 and decoded with independent decoders (the gzip and unzip
command-line tools, python-snappy's framing and Hadoop stream decoders)."""
import base64
import gzip
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import snappy

from conftest import FH_AK, FH_SK, REGION, signed_call, wait_for

KEY_RE = r"{prefix}\d{{4}}/\d{{2}}/\d{{2}}/\d{{2}}/{stream}-{version}-\d{{4}}-\d{{2}}-\d{{2}}-\d{{2}}-\d{{2}}-\d{{2}}-[0-9a-f]{{8}}-[0-9a-f]{{4}}-[0-9a-f]{{4}}-[0-9a-f]{{4}}-[0-9a-f]{{12}}{ext}$"


def create(fh, name, bucket, interval=1, size=1, **extra):
    cfg = {"RoleARN": "arn:aws:iam::000000000000:role/firehose",
           "BucketARN": f"arn:aws:s3:::{bucket}",
           "BufferingHints": {"SizeInMBs": size, "IntervalInSeconds": interval}}
    cfg.update(extra)
    return fh.create_delivery_stream(DeliveryStreamName=name,
                                     ExtendedS3DestinationConfiguration=cfg)


def records(n, tag=None):
    tag = tag or uuid.uuid4().hex[:8]
    return [json.dumps({"id": f"{tag}-{i}", "v": i, "pad": "x" * (i % 50)}).encode() + b"\n"
            for i in range(n)]


def put_all(fh, name, recs):
    for i in range(0, len(recs), 500):
        chunk = recs[i:i + 500]
        resp = fh.put_record_batch(DeliveryStreamName=name,
                                   Records=[{"Data": r} for r in chunk])
        assert resp["FailedPutCount"] == 0
        assert len(resp["RequestResponses"]) == len(chunk)
        assert all(len(r["RecordId"]) > 16 for r in resp["RequestResponses"])


def decode(fmt, data):
    """Decode with the standard tool for each format."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "obj"
        path.write_bytes(data)
        if fmt == "GZIP":
            return subprocess.run(["gzip", "-dc", str(path)], check=True,
                                  capture_output=True).stdout
        if fmt == "ZIP":
            return subprocess.run(["unzip", "-p", str(path)], check=True,
                                  capture_output=True).stdout
        if fmt == "Snappy":
            # python-snappy's framing-format reader (its CLI is broken in 0.7.3).
            out = io.BytesIO()
            snappy.stream_decompress(io.BytesIO(data), out)
            return out.getvalue()
        if fmt == "HADOOP_SNAPPY":
            return snappy.HadoopStreamDecompressor().decompress(data)
        return data


def wait_objects(s3, bucket, prefix, expected_bytes, fmt="UNCOMPRESSED", timeout=60):
    def enough():
        objs = s3.objects(bucket, prefix)
        total = sum(len(decode(fmt, body)) for _, body, _ in objs)
        return objs if total >= expected_bytes else None
    return wait_for(enough, timeout=timeout, interval=0.5, what=f"{expected_bytes} bytes under {prefix}")


@pytest.mark.parametrize("fmt,ext", [("UNCOMPRESSED", ""), ("GZIP", ".gz"), ("ZIP", ".zip"),
                                     ("Snappy", ".snappy"), ("HADOOP_SNAPPY", ".snappy")])
def test_records_arrive_as_named_objects_in_every_compression_format(s3, bucket, daemon, fmt, ext):
    fh = daemon.firehose()
    name = f"fmt-{fmt.lower()}"
    create(fh, name, bucket, Prefix="in/", CompressionFormat=fmt)
    sent = records(1200)
    put_all(fh, name, sent)
    objs = wait_objects(s3, bucket, "in/", sum(map(len, sent)), fmt)
    got = b"".join(decode(fmt, body) for _, body, _ in objs)
    assert sorted(got.splitlines(keepends=True)) == sorted(sent), "exactly the records sent"
    for key, _, _ in objs:
        assert re.match(KEY_RE.format(prefix="in/", stream=name, version=1, ext=re.escape(ext)),
                        key), key
    assert daemon.metric("hosepipe_incoming_records_total", name) == len(sent)
    wait_for(lambda: daemon.metric("hosepipe_delivery_to_s3_records_total", name) == len(sent),
             what="delivered-records metric")
    assert daemon.metric("hosepipe_incoming_put_requests_total", name) == 3


def test_size_threshold_flushes_before_the_interval(s3, bucket, daemon):
    fh = daemon.firehose()
    create(fh, "bysize", bucket, interval=900, size=1, Prefix="s/")
    rec = b"y" * 1000 + b"\n"
    put_all(fh, "bysize", [rec] * 1100)  # 1.1 MB: one object at 1 MiB, the rest waits
    objs = wait_objects(s3, bucket, "s/", 1024 * 1024)
    assert len(objs) == 1
    assert 1024 * 1024 <= len(objs[0][1]) < 1024 * 1024 + len(rec)
    assert 'reason="size"' in daemon.metrics()


def test_sigterm_flushes_every_buffer_before_exit(s3, bucket, daemon_factory):
    d = daemon_factory()
    fh = d.firehose()
    create(fh, "flushme", bucket, interval=900, size=128, Prefix="f/")
    sent = records(300)
    put_all(fh, "flushme", sent)
    time.sleep(1)
    assert s3.objects(bucket, "f/") == []
    assert d.stop() == 0
    got = b"".join(body for _, body, _ in s3.objects(bucket, "f/"))
    assert sorted(got.splitlines(keepends=True)) == sorted(sent)


def test_api_streams_survive_a_restart(s3, bucket, daemon_factory):
    d = daemon_factory()
    fh = d.firehose()
    create(fh, "keeper", bucket, Prefix="k/", CompressionFormat="GZIP")
    fh.tag_delivery_stream(DeliveryStreamName="keeper", Tags=[{"Key": "team", "Value": "data"}])
    assert d.stop() == 0
    d.start()
    fh = d.firehose()
    desc = fh.describe_delivery_stream(DeliveryStreamName="keeper")["DeliveryStreamDescription"]
    assert desc["DeliveryStreamStatus"] == "ACTIVE"
    assert desc["Destinations"][0]["ExtendedS3DestinationDescription"]["CompressionFormat"] == "GZIP"
    assert fh.list_tags_for_delivery_stream(DeliveryStreamName="keeper")["Tags"] == [
        {"Key": "team", "Value": "data"}]
    sent = records(10)
    put_all(fh, "keeper", sent)
    objs = wait_objects(s3, bucket, "k/", sum(map(len, sent)), "GZIP")
    assert sorted(b"".join(gzip.decompress(b) for _, b, _ in objs).splitlines(keepends=True)) == sorted(sent)


def test_control_plane_operations(s3, bucket, daemon):
    fh = daemon.firehose()
    arn = create(fh, "ctl-a", bucket, Prefix="a/")["DeliveryStreamARN"]
    assert arn == "arn:aws:firehose:us-east-1:000000000000:deliverystream/ctl-a"
    create(fh, "ctl-b", bucket, Prefix="b/")
    with pytest.raises(fh.exceptions.ResourceInUseException):
        create(fh, "ctl-a", bucket)
    page = fh.list_delivery_streams(Limit=1)
    assert page["DeliveryStreamNames"] == ["ctl-a"] and page["HasMoreDeliveryStreams"]
    page = fh.list_delivery_streams(Limit=10, ExclusiveStartDeliveryStreamName="ctl-a")
    assert page["DeliveryStreamNames"] == ["ctl-b"] and not page["HasMoreDeliveryStreams"]

    desc = fh.describe_delivery_stream(DeliveryStreamName="ctl-a")["DeliveryStreamDescription"]
    assert desc["VersionId"] == "1"
    dest = desc["Destinations"][0]
    s3d = dest["ExtendedS3DestinationDescription"]
    assert s3d["BufferingHints"] == {"SizeInMBs": 1, "IntervalInSeconds": 1}
    assert s3d["CompressionFormat"] == "UNCOMPRESSED"
    with pytest.raises(fh.exceptions.ConcurrentModificationException):
        fh.update_destination(DeliveryStreamName="ctl-a", CurrentDeliveryStreamVersionId="7",
                              DestinationId=dest["DestinationId"],
                              ExtendedS3DestinationUpdate={"CompressionFormat": "GZIP"})
    with pytest.raises(fh.exceptions.InvalidArgumentException):
        fh.update_destination(DeliveryStreamName="ctl-a", CurrentDeliveryStreamVersionId="1",
                              DestinationId=dest["DestinationId"],
                              ExtendedS3DestinationUpdate={"BufferingHints": {
                                  "SizeInMBs": 1, "IntervalInSeconds": 901}})
    fh.update_destination(DeliveryStreamName="ctl-a", CurrentDeliveryStreamVersionId="1",
                          DestinationId=dest["DestinationId"],
                          ExtendedS3DestinationUpdate={"CompressionFormat": "GZIP"})
    desc = fh.describe_delivery_stream(DeliveryStreamName="ctl-a")["DeliveryStreamDescription"]
    assert desc["VersionId"] == "2"
    s3d = desc["Destinations"][0]["ExtendedS3DestinationDescription"]
    assert s3d["CompressionFormat"] == "GZIP" and s3d["Prefix"] == "a/", "update merges"
    sent = records(5)
    put_all(fh, "ctl-a", sent)
    objs = wait_objects(s3, bucket, "a/", sum(map(len, sent)), "GZIP")
    assert all(re.match(KEY_RE.format(prefix="a/", stream="ctl-a", version=2, ext=r"\.gz"), k)
               for k, _, _ in objs), [k for k, _, _ in objs]

    fh.tag_delivery_stream(DeliveryStreamName="ctl-b",
                           Tags=[{"Key": "a", "Value": "1"}, {"Key": "b", "Value": "2"}])
    fh.untag_delivery_stream(DeliveryStreamName="ctl-b", TagKeys=["a"])
    assert fh.list_tags_for_delivery_stream(DeliveryStreamName="ctl-b")["Tags"] == [
        {"Key": "b", "Value": "2"}]
    with pytest.raises(fh.exceptions.InvalidArgumentException):
        fh.tag_delivery_stream(DeliveryStreamName="ctl-b", Tags=[{"Key": "aws:x", "Value": "1"}])

    fh.delete_delivery_stream(DeliveryStreamName="ctl-b")
    with pytest.raises(fh.exceptions.ResourceNotFoundException):
        fh.describe_delivery_stream(DeliveryStreamName="ctl-b")
    with pytest.raises(fh.exceptions.ResourceNotFoundException):
        fh.delete_delivery_stream(DeliveryStreamName="ctl-b")


def test_prefix_expressions_and_custom_time_zone(s3, bucket, daemon):
    fh = daemon.firehose()
    create(fh, "expr", bucket, Prefix="year=!{timestamp:yyyy}/r=!{firehose:random-string}/",
           ErrorOutputPrefix="err/!{firehose:error-output-type}/", CustomTimeZone="Asia/Tokyo",
           FileExtension=".json")
    sent = records(3)
    before = time.time()
    put_all(fh, "expr", sent)
    objs = wait_objects(s3, bucket, "year=", sum(map(len, sent)))
    key = objs[0][0]
    tokyo_year = time.strftime("%Y", time.gmtime(before + 9 * 3600))
    m = re.match(rf"year={tokyo_year}/r=[0-9a-f-]{{11}}/expr-1-(\d{{4}}-\d{{2}}-\d{{2}}-\d{{2}})-\d{{2}}-\d{{2}}-[0-9a-f-]{{36}}\.json$", key)
    assert m, key
    tokyo_hour = time.strftime("%Y-%m-%d-%H", time.gmtime(before + 9 * 3600))
    tokyo_hour_after = time.strftime("%Y-%m-%d-%H", time.gmtime(time.time() + 9 * 3600))
    assert m.group(1) in (tokyo_hour, tokyo_hour_after), "object name in CustomTimeZone"
    with pytest.raises(fh.exceptions.InvalidArgumentException):
        create(fh, "expr-bad", bucket, Prefix="!{timestamp:yyyy}/")  # needs ErrorOutputPrefix
    with pytest.raises(fh.exceptions.InvalidArgumentException):
        create(fh, "expr-bad", bucket, Prefix="a/", ErrorOutputPrefix="err/")


def test_multipart_upload_for_large_objects(s3, bucket, daemon_factory):
    d = daemon_factory("[s3]\nmultipart_threshold_mb = 5\npart_size_mb = 5\n")
    fh = d.firehose()
    create(fh, "big", bucket, interval=2, size=64, Prefix="m/")
    rec = b"z" * 999_999 + b"\n"
    for _ in range(2):
        fh.put_record_batch(DeliveryStreamName="big", Records=[{"Data": rec}] * 4)
    objs = wait_objects(s3, bucket, "m/", 8 * len(rec))
    assert len(objs) == 1
    key, body, etag = objs[0]
    assert body == rec * 8
    assert re.search(r"-2\"?$", etag), f"multipart ETag expected, got {etag}"


def test_aws_cli_drives_the_daemon(s3, bucket, daemon):
    env = dict(os.environ, AWS_ACCESS_KEY_ID=FH_AK, AWS_SECRET_ACCESS_KEY=FH_SK,
               AWS_DEFAULT_REGION=REGION)
    env.pop("AWS_ENDPOINT_URL", None)
    aws = [sys.executable, "-m", "awscli", "firehose", "--endpoint-url", daemon.url]
    cfg = json.dumps({"RoleARN": "arn:aws:iam::000000000000:role/x",
                      "BucketARN": f"arn:aws:s3:::{bucket}", "Prefix": "cli/",
                      "CompressionFormat": "GZIP",
                      "BufferingHints": {"SizeInMBs": 1, "IntervalInSeconds": 1}})
    subprocess.run(aws + ["create-delivery-stream", "--delivery-stream-name", "cli",
                          "--extended-s3-destination-configuration", cfg],
                   check=True, env=env, capture_output=True)
    sent = [b'{"cli":1}\n', b'{"cli":2}\n']
    # AWS CLI v1 sends a blob given as text as those bytes (it base64-encodes them itself).
    recs = json.dumps([{"Data": r.decode()} for r in sent])
    out = subprocess.run(aws + ["put-record-batch", "--delivery-stream-name", "cli",
                                "--records", recs],
                         check=True, env=env, capture_output=True, text=True)
    assert json.loads(out.stdout)["FailedPutCount"] == 0
    objs = wait_objects(s3, bucket, "cli/", sum(map(len, sent)), "GZIP")
    assert b"".join(gzip.decompress(b) for _, b, _ in objs) == b"".join(sent)
    names = subprocess.run(aws + ["list-delivery-streams"], check=True, env=env,
                           capture_output=True, text=True).stdout
    assert "cli" in json.loads(names)["DeliveryStreamNames"]


def test_delivery_survives_an_s3_outage(tmp_path, daemon_factory):
    from conftest import S3Server
    server = S3Server(tmp_path / "s3")
    try:
        bucket = server.create_bucket("outage")
        d = daemon_factory("[spool]\nretention_seconds = 2\n",
                           extra_env={"AWS_ENDPOINT_URL_S3": server.url})
        fh = d.firehose()
        create(fh, "outage", bucket, interval=1, Prefix="o/",
               ErrorOutputPrefix="err/!{firehose:error-output-type}/")
        first = records(50, "before")
        put_all(fh, "outage", first)
        wait_objects(server, bucket, "o/", sum(map(len, first)))
        server.stop()
        during = records(400, "during")
        put_all(fh, "outage", during)  # accepted and buffered while S3 is down
        wait_for(lambda: "S3 write failed; will retry" in d.log(), timeout=60,
                 what="a failed S3 write")
        # Past the retention age the records are counted, and the error output is tried too
        # (it is in the same, unreachable, bucket: so they wait for whichever comes back).
        wait_for(lambda: d.metric("hosepipe_spool_expired_records_total", "outage") >= len(during),
                 timeout=60, what="records counted as expired")
        server.start()
        sent = first + during

        def landed():
            """Record lines in objects, and records in the error output's failed-record JSON."""
            main = {line for _, b, _ in server.objects(bucket, "o/")
                    for line in b.splitlines(keepends=True)}
            docs = [json.loads(line) for _, b, _ in server.objects(bucket, "err/retention-expired/")
                    for line in b.splitlines()]
            assert all(doc["errorCode"] == "S3.RetentionExpired" for doc in docs)
            return main | {base64.b64decode(doc["rawData"]) for doc in docs}

        wait_for(lambda: landed() >= set(sent), timeout=120, interval=0.5,
                 what="every record in S3 or its error output")
        assert landed() == set(sent), "nothing lost, nothing invented"
        assert 'outcome="failure"' in d.metrics()
    finally:
        server.stop()


def test_a_stuck_stream_never_blocks_another(s3, bucket, daemon):
    fh = daemon.firehose()
    missing = f"later-{uuid.uuid4().hex[:10]}"
    create(fh, "stuck", missing, Prefix="x/")  # its bucket does not exist yet
    create(fh, "flowing", bucket, Prefix="y/")
    stuck, flowing = records(100, "stuck"), records(100, "flowing")
    put_all(fh, "stuck", stuck)
    put_all(fh, "flowing", flowing)
    objs = wait_objects(s3, bucket, "y/", sum(map(len, flowing)))
    assert sorted(b"".join(b for _, b, _ in objs).splitlines(keepends=True)) == sorted(flowing)
    # A missing bucket is named as a cause retrying alone cannot fix; the records wait.
    wait_for(lambda: "S3 delivery is blocked (no_such_bucket)" in daemon.log(),
             what="the stuck stream's cause named")
    assert daemon.metric("hosepipe_delivery_to_s3_data_freshness_seconds", "stuck") > 0
    s3.create_bucket(missing)  # the operator fixes it: the held records go out
    objs = wait_objects(s3, missing, "x/", sum(map(len, stuck)), timeout=90)
    assert sorted(set(b"".join(b for _, b, _ in objs).splitlines(keepends=True))) == sorted(stuck)
