"""OpenSearch / Elasticsearch destinations end to end: streams created with boto3 index into a
real OpenSearch-API server (osmem-server) through `_bulk`; what fails goes to the S3 backup
(SeaweedFS) as Firehose's failed-document JSON; outages and 429 storms lose and duplicate
nothing."""
import base64
import datetime
import json
import os

import botocore.exceptions
import pytest
import requests

from conftest import free_port, signed_call, wait_for
from faulty_proxy import FaultyProxy
from test_durability import Producers, crash_cycles

# As many cycles as the exactly-once test runs against S3.
OPENSEARCH_CRASH_CYCLES = int(os.environ.get("HOSEPIPE_EXACTLY_ONCE_CYCLES", "20"))

ROLE = "arn:aws:iam::000000000000:role/firehose"


def create(fh, name, endpoint, bucket, index="logs", block="AmazonopensearchserviceDestinationConfiguration",
           **extra):
    conf = {"RoleARN": ROLE, "ClusterEndpoint": endpoint, "IndexName": index,
            "BufferingHints": {"SizeInMBs": 1, "IntervalInSeconds": 1},
            "S3Configuration": {"RoleARN": ROLE, "BucketARN": f"arn:aws:s3:::{bucket}",
                                "Prefix": f"{name}/",
                                "BufferingHints": {"SizeInMBs": 1, "IntervalInSeconds": 1}}}
    conf.update(extra)
    fh.create_delivery_stream(DeliveryStreamName=name, **{block: conf})


def put(fh, name, docs):
    for i in range(0, len(docs), 500):
        out = fh.put_record_batch(DeliveryStreamName=name,
                                  Records=[{"Data": d} for d in docs[i:i + 500]])
        assert out["FailedPutCount"] == 0


def today(rotation="OneDay"):
    now = datetime.datetime.now(datetime.timezone.utc)
    return now.strftime({"OneDay": "%Y-%m-%d", "OneMonth": "%Y-%m", "OneHour": "%Y-%m-%d-%H"}[rotation])


def failed_docs(s3, bucket, prefix):
    return [json.loads(line) for _, body, _ in s3.objects(bucket, prefix)
            for line in body.splitlines() if line]


def test_documents_are_indexed_under_rotated_names(daemon, opensearch, s3, bucket):
    fh = daemon.firehose()
    create(fh, "happy", opensearch.url, bucket)
    docs = [json.dumps({"n": i, "msg": f"hello {i}"}).encode() + b"\n" for i in range(300)]
    put(fh, "happy", docs)
    index = f"logs-{today()}"
    wait_for(lambda: opensearch.count(index) == 300, what="300 documents indexed")
    hits = opensearch.search(index, {"term": {"n": 42}})
    assert hits == [{"n": 42, "msg": "hello 42"}]
    desc = fh.describe_delivery_stream(DeliveryStreamName="happy")["DeliveryStreamDescription"]
    d = desc["Destinations"][0]["AmazonopensearchserviceDestinationDescription"]
    assert d["IndexName"] == "logs" and d["IndexRotationPeriod"] == "OneDay"
    assert d["S3BackupMode"] == "FailedDocumentsOnly"
    assert d["RetryOptions"] == {"DurationInSeconds": 300}
    assert d["S3DestinationDescription"]["BucketARN"] == f"arn:aws:s3:::{bucket}"
    assert daemon.metric("hosepipe_delivery_to_opensearch_records_total", "happy") == 300
    assert s3.objects(bucket, "happy/") == []

    # The Elasticsearch block, with other rotations.
    hours = {today("OneHour")}
    for rotation, name in [("NoRotation", "plain"), ("OneMonth", "monthly"), ("OneHour", "hourly")]:
        create(fh, f"es-{name}", opensearch.url, bucket, index=name,
               block="ElasticsearchDestinationConfiguration", IndexRotationPeriod=rotation)
        put(fh, f"es-{name}", [b'{"rotation": "%s"}' % rotation.encode()])
    wait_for(lambda: opensearch.count("plain") == 1, what="NoRotation index")
    wait_for(lambda: opensearch.count(f"monthly-{today('OneMonth')}") == 1, what="OneMonth index")
    hours.add(today("OneHour"))
    wait_for(lambda: sum(opensearch.count(f"hourly-{h}") for h in hours) == 1, what="OneHour index")
    desc = fh.describe_delivery_stream(DeliveryStreamName="es-plain")["DeliveryStreamDescription"]
    assert "ElasticsearchDestinationDescription" in desc["Destinations"][0]


def test_only_refused_documents_go_to_the_backup_and_the_rest_are_indexed_once(
        daemon, opensearch, s3, bucket):
    fh = daemon.firehose()
    requests.put(f"{opensearch.url}/typed", json={"mappings": {"properties": {"n": {"type": "long"}}}},
                 timeout=5)
    proxy = FaultyProxy(opensearch.url)
    try:
        create(fh, "partial", proxy.url, bucket, index="typed", IndexRotationPeriod="NoRotation")
        good = [json.dumps({"n": i}).encode() for i in range(100)]
        bad = [json.dumps({"n": f"not a number {i}"}).encode() for i in range(5)]
        # Every other item of the first answer is "rejected" (429) though it was indexed:
        # the resend must overwrite, not duplicate.
        proxy.items = 1
        put(fh, "partial", good + bad + [b"not json at all"])
        wait_for(lambda: len(failed_docs(s3, bucket, "partial/AmazonOpenSearchService-failed/")) == 6,
                 what="6 failed documents in the backup")
        wait_for(lambda: opensearch.count("typed") == 100, what="100 documents")
        failed = failed_docs(s3, bucket, "partial/AmazonOpenSearchService-failed/")
        raw = sorted(base64.b64decode(f["rawData"]) for f in failed)
        assert raw == sorted(bad + [b"not json at all"])
        by_code = sorted(f["errorCode"] for f in failed)
        assert by_code == ["400"] * 5 + ["OS.MalformedDocument"]
        mapping = next(f for f in failed if f["errorCode"] == "400")
        assert "mapper_parsing_exception" in mapping["errorMessage"]
        assert mapping["esIndexName"] == "typed" and mapping["esDocumentId"]
        assert set(mapping) >= {"attemptsMade", "arrivalTimestamp", "attemptEndingTimestamp",
                                "esTypeName"}
        # Indexed exactly once each, even the ones resent after a 429.
        requests.post(f"{opensearch.url}/typed/_refresh", timeout=5)
        assert opensearch.count("typed") == 100
        assert daemon.metric("hosepipe_opensearch_failed_documents_total", "partial") == 6
    finally:
        proxy.close()


def test_429_storms_and_an_outage_lose_and_duplicate_nothing(daemon, opensearch, s3, bucket):
    fh = daemon.firehose()
    proxy = FaultyProxy(opensearch.url)
    try:
        create(fh, "storm", proxy.url, bucket, index="storm", IndexRotationPeriod="NoRotation")
        proxy.whole, proxy.items = 3, 3
        put(fh, "storm", [json.dumps({"n": i}).encode() for i in range(200)])
        wait_for(lambda: daemon.metric("hosepipe_delivery_to_opensearch_records_total", "storm") == 200,
                 timeout=60, what="200 documents acknowledged")
        assert proxy.whole == 0 and proxy.items == 0
        requests.post(f"{opensearch.url}/storm/_refresh", timeout=5)
        assert opensearch.count("storm") == 200
        assert s3.objects(bucket, "storm/") == []
        metrics = daemon.metrics()
        assert 'hosepipe_delivery_to_opensearch_requests_total{stream="storm",outcome="failure"} 3' in metrics

        # The cluster goes away for a while: documents wait and go in when it is back (it comes
        # back empty: osmem keeps nothing).
        opensearch.stop()
        put(fh, "storm", [json.dumps({"later": i}).encode() for i in range(50)])
        wait_for(lambda: 'outcome="failure"} 3' not in daemon.metrics(), timeout=30,
                 what="failed requests while the cluster is down")
        opensearch.start()
        wait_for(lambda: opensearch.count("storm") == 50, timeout=60, what="50 documents after the outage")
        assert s3.objects(bucket, "storm/") == []
    finally:
        proxy.close()


def test_past_the_retry_duration_documents_go_to_the_backup(daemon, s3, bucket):
    fh = daemon.firehose()
    # Nothing listens there.
    create(fh, "gone", "http://127.0.0.1:9", bucket, RetryOptions={"DurationInSeconds": 2})
    put(fh, "gone", [json.dumps({"n": i}).encode() for i in range(10)])
    wait_for(lambda: len(failed_docs(s3, bucket, "gone/AmazonOpenSearchService-failed/")) == 10,
             timeout=60, what="10 failed documents")
    failed = failed_docs(s3, bucket, "gone/AmazonOpenSearchService-failed/")
    assert {f["errorCode"] for f in failed} == {"OS.ConnectionFailed"}
    assert all(f["attemptsMade"] >= 1 for f in failed)


def test_all_documents_are_backed_up_as_well(daemon, opensearch, s3, bucket):
    fh = daemon.firehose()
    create(fh, "everything", opensearch.url, bucket, index="everything",
           IndexRotationPeriod="NoRotation", S3BackupMode="AllDocuments")
    docs = [json.dumps({"n": i}).encode() + b"\n" for i in range(40)]
    put(fh, "everything", docs)
    wait_for(lambda: opensearch.count("everything") == 40, what="40 documents")
    backed_up = lambda: sorted(l for _, b, _ in s3.objects(bucket, "everything/") for l in b.splitlines() if l)
    wait_for(lambda: len(backed_up()) == 40, what="40 backed-up records")
    assert backed_up() == sorted(d.rstrip(b"\n") for d in docs)


def test_bad_definitions_are_refused(daemon, bucket):
    fh = daemon.firehose()
    with pytest.raises(botocore.exceptions.ClientError) as e:
        create(fh, "bad", "http://127.0.0.1:9200", bucket, BufferingHints={"SizeInMBs": 101})
    assert e.value.response["Error"]["Code"] == "InvalidArgumentException"
    assert "SizeInMBs" in e.value.response["Error"]["Message"]
    # boto3 would not send it; the daemon refuses it too.
    r = signed_call(daemon.url, "CreateDeliveryStream", {
        "DeliveryStreamName": "bad2",
        "AmazonopensearchserviceDestinationConfiguration": {
            "RoleARN": ROLE, "ClusterEndpoint": "http://127.0.0.1:9200", "IndexName": "x"}})
    assert r.status_code == 400 and r.json()["__type"].endswith("InvalidArgumentException")
    assert "S3Configuration" in r.json()["message"]
    assert fh.list_delivery_streams()["DeliveryStreamNames"] == []


class JsonProducers(Producers):
    """The crash test's producers, each record a JSON document carrying its id."""

    def record(self, rid):
        return json.dumps({"rid": rid}).encode() + b"\n"


def test_kill_9_cycles_index_each_acknowledged_document_exactly_once(
        opensearch, s3, bucket, daemon_factory):
    # Document ids come from the stream, the record's spool position and its content, so a
    # batch sent again after a crash overwrites what it had indexed instead of adding to it.
    d = daemon_factory(listen=f"127.0.0.1:{free_port()}")
    create(d.firehose(), "crashy", opensearch.url, bucket, index="crashy",
           IndexRotationPeriod="NoRotation")
    with JsonProducers(d, "crashy", threads=2, batch=20) as producers:
        crash_cycles(d, OPENSEARCH_CRASH_CYCLES)
    assert d.stop() == 0, d.log()
    requests.post(f"{opensearch.url}/crashy/_refresh", timeout=10)
    r = requests.post(f"{opensearch.url}/crashy/_search", timeout=30, json={
        "size": 0, "aggs": {"dups": {"terms": {"field": "rid.keyword", "min_doc_count": 2,
                                               "size": 100000}}}})
    duplicated = r.json()["aggregations"]["dups"]["buckets"]
    acked = sorted(producers.acked)
    found = 0
    for i in range(0, len(acked), 1000):
        chunk = acked[i:i + 1000]
        found += requests.post(f"{opensearch.url}/crashy/_count", timeout=30, json={
            "query": {"terms": {"rid.keyword": chunk}}}).json()["count"]
    print(f"\nOpenSearch crash test: {OPENSEARCH_CRASH_CYCLES} kill -9 cycles, {len(acked)} acknowledged, "
          f"{opensearch.count('crashy')} documents, {len(duplicated)} duplicated ids")
    assert len(acked) > 0
    assert duplicated == [], duplicated[:5]
    assert found == len(acked), f"{len(acked) - found} acknowledged documents missing"
    assert s3.objects(bucket, "crashy/") == []
