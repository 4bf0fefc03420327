"""Splunk HEC destinations end to end: streams created with boto3 post to a HEC receiver written
from Splunk's documentation (hec_receiver.py) with indexer acknowledgement; withheld acks, busy
answers and bad tokens lose nothing: every record ends indexed once or in the S3 backup
(`splunk-failed`)."""
import base64
import json

import pytest

from conftest import wait_for
from hec_receiver import HecReceiver

ROLE = "arn:aws:iam::000000000000:role/firehose"
SPLUNK = "[splunk]\nack_timeout_seconds = 2\nhost = \"web-1\"\nsourcetype = \"app:json\"\n"


@pytest.fixture
def hec():
    r = HecReceiver()
    yield r
    r.close()


@pytest.fixture
def daemon(daemon_factory):
    return daemon_factory(SPLUNK)


def create(fh, name, hec, bucket, kind="Event", **extra):
    conf = {"HECEndpoint": hec.url, "HECEndpointType": kind, "HECToken": hec.token,
            "BufferingHints": {"SizeInMBs": 1, "IntervalInSeconds": 1},
            "S3Configuration": {"RoleARN": ROLE, "BucketARN": f"arn:aws:s3:::{bucket}",
                                "Prefix": f"{name}/",
                                "BufferingHints": {"SizeInMBs": 1, "IntervalInSeconds": 1}}}
    conf.update(extra)
    fh.create_delivery_stream(DeliveryStreamName=name, SplunkDestinationConfiguration=conf)


def put(fh, name, records):
    out = fh.put_record_batch(DeliveryStreamName=name, Records=[{"Data": r} for r in records])
    assert out["FailedPutCount"] == 0


def failed_events(s3, bucket, name):
    return [json.loads(l) for _, body, _ in s3.objects(bucket, f"{name}/splunk-failed/")
            for l in body.splitlines() if l]


def test_events_and_raw_lines_are_indexed_once_acknowledged(daemon, hec, s3, bucket):
    fh = daemon.firehose()
    create(fh, "events", hec, bucket)
    records = [json.dumps({"n": i}).encode() + b"\n" for i in range(100)]
    put(fh, "events", records)
    wait_for(lambda: len(hec.indexed) == 100, what="100 events indexed")
    assert sorted(e["event"]["n"] for e in hec.indexed) == list(range(100))
    e = hec.indexed[0]
    assert e["host"] == "web-1" and e["sourcetype"] == "app:json" and e["source"] == "hosepipe:events"
    assert isinstance(e["time"], float)
    wait_for(lambda: daemon.metric("hosepipe_delivery_to_splunk_records_total", "events") == 100,
             what="DeliveryToSplunk.Records")
    assert "hosepipe_delivery_to_splunk_data_ack_latency_seconds_count" in daemon.metrics()
    d = fh.describe_delivery_stream(DeliveryStreamName="events")["DeliveryStreamDescription"]
    desc = d["Destinations"][0]["SplunkDestinationDescription"]
    assert desc["HECEndpointType"] == "Event" and desc["HECAcknowledgmentTimeoutInSeconds"] == 180
    assert desc["RetryOptions"] == {"DurationInSeconds": 3600}
    assert desc["S3BackupMode"] == "FailedEventsOnly"

    hec.indexed.clear()
    create(fh, "raw", hec, bucket, kind="Raw")
    put(fh, "raw", [b"line %d\n" % i for i in range(30)])
    wait_for(lambda: len(hec.indexed) == 30, what="30 raw lines indexed")
    assert sorted(hec.indexed) == sorted(b"line %d" % i for i in range(30))
    assert s3.objects(bucket, "events/") == [] and s3.objects(bucket, "raw/") == []


def test_withheld_acks_and_busy_answers_resend_without_loss_or_duplicates(daemon, hec, s3, bucket):
    fh = daemon.firehose()
    create(fh, "acks", hec, bucket)
    hec.ack_delay = None  # the indexer never acknowledges these posts
    put(fh, "acks", [json.dumps({"n": i}).encode() for i in range(40)])
    wait_for(lambda: hec.posted >= 2, timeout=30, what="a resend after the ack timeout")
    assert hec.indexed == []
    hec.ack_delay = 0.1
    wait_for(lambda: len(hec.indexed) == 40, timeout=60, what="40 events after acks resume")
    hec.busy = 4
    put(fh, "acks", [json.dumps({"m": i}).encode() for i in range(40)])
    wait_for(lambda: len(hec.indexed) == 80, timeout=60, what="40 more events through 503s")
    assert sorted(e["event"].get("n", e["event"].get("m")) for e in hec.indexed) == \
        sorted(list(range(40)) * 2)
    assert hec.busy == 0
    assert s3.objects(bucket, "acks/") == []
    metrics = daemon.metrics()
    assert 'hosepipe_delivery_to_splunk_requests_total{stream="acks",outcome="failure"}' in metrics


def test_what_never_succeeds_goes_to_the_backup_as_failed_events(daemon, hec, s3, bucket):
    fh = daemon.firehose()
    # A token the collector does not know: retried until RetryOptions runs out.
    create(fh, "badtoken", hec, bucket, HECToken="wrong", RetryOptions={"DurationInSeconds": 2})
    records = [json.dumps({"n": i}).encode() for i in range(10)]
    put(fh, "badtoken", records)
    wait_for(lambda: len(failed_events(s3, bucket, "badtoken")) == 10, timeout=60,
             what="10 failed events")
    failed = failed_events(s3, bucket, "badtoken")
    assert {f["errorCode"] for f in failed} == {"Splunk.InvalidToken"}
    assert sorted(base64.b64decode(f["rawData"]) for f in failed) == sorted(records)
    assert all(f["attemptsMade"] >= 2 and f["EventId"] for f in failed)
    assert set(failed[0]) >= {"arrivalTimestamp", "attemptEndingTimestamp", "errorMessage"}
    # A blank event is refused for its format: no retry, straight to the backup.
    create(fh, "blank", hec, bucket)
    posted = hec.posted
    put(fh, "blank", [b""])
    wait_for(lambda: failed_events(s3, bucket, "blank"), timeout=30, what="the refused event")
    (f,) = failed_events(s3, bucket, "blank")
    assert f["errorCode"] == "Splunk.InvalidDataFormat" and f["attemptsMade"] == 1
    assert hec.posted == posted + 1
    assert hec.indexed == []
    assert daemon.metric("hosepipe_splunk_failed_events_total", "badtoken") == 10


def test_all_events_are_backed_up_as_well(daemon, hec, s3, bucket):
    fh = daemon.firehose()
    create(fh, "all", hec, bucket, kind="Raw", S3BackupMode="AllEvents")
    put(fh, "all", [b"e%d\n" % i for i in range(25)])
    wait_for(lambda: len(hec.indexed) == 25, what="25 indexed")
    backed = lambda: sorted(l for _, b, _ in s3.objects(bucket, "all/") for l in b.splitlines() if l)
    wait_for(lambda: len(backed()) == 25, what="25 backed up")
    assert backed() == sorted(b"e%d" % i for i in range(25))
