"""HTTP endpoint destinations end to end: streams created with boto3 post to a receiver written
from AWS's HTTP endpoint delivery specification (http_endpoint_receiver.py) that can fail on
demand; what never succeeds ends in the S3 backup as `http-endpoint-failed`. Keys come inline,
from moto's Secrets Manager, or from a file. And hosepipe's own receiver (`POST
/http-endpoint/<stream>`): bad input refused as the specification says, and a chain of two
daemons that loses nothing when the second is killed."""
import base64
import gzip
import json
import time
import uuid

import boto3
import pytest
import requests

from conftest import REGION, stable_port, wait_for
from http_endpoint_receiver import HttpEndpointReceiver

ROLE = "arn:aws:iam::000000000000:role/firehose"
FAST = "[http_endpoint]\nrequest_timeout_seconds = 2\n"


@pytest.fixture
def endpoint():
    r = HttpEndpointReceiver(access_key="key-1")
    yield r
    r.stop()


@pytest.fixture
def daemon(daemon_factory):
    return daemon_factory(FAST)


def create(fh, name, url, bucket, key="key-1", **extra):
    endpoint = {"Url": url, "Name": "test receiver"}
    if key is not None:
        endpoint["AccessKey"] = key
    conf = {"EndpointConfiguration": endpoint,
            "BufferingHints": {"SizeInMBs": 1, "IntervalInSeconds": 1},
            "S3Configuration": {"RoleARN": ROLE, "BucketARN": f"arn:aws:s3:::{bucket}",
                                "Prefix": f"{name}/",
                                "BufferingHints": {"SizeInMBs": 1, "IntervalInSeconds": 1}}}
    conf.update(extra)
    fh.create_delivery_stream(DeliveryStreamName=name, HttpEndpointDestinationConfiguration=conf)


def put(fh, name, records):
    for i in range(0, len(records), 500):
        out = fh.put_record_batch(DeliveryStreamName=name,
                                  Records=[{"Data": r} for r in records[i:i + 500]])
        assert out["FailedPutCount"] == 0


def failed_records(s3, bucket, name):
    return [json.loads(l) for _, body, _ in s3.objects(bucket, f"{name}/http-endpoint-failed/")
            for l in body.splitlines() if l]


def test_records_arrive_as_firehose_sends_them(daemon, endpoint, s3, bucket):
    fh = daemon.firehose()
    attrs = [{"AttributeName": "env", "AttributeValue": "prod"},
             {"AttributeName": "team", "AttributeValue": ""}]
    create(fh, "plain", endpoint.url + "v1/input?source=hosepipe", bucket,
           RequestConfiguration={"ContentEncoding": "GZIP", "CommonAttributes": attrs})
    records = [json.dumps({"n": i}).encode() + b"\n" for i in range(100)]
    put(fh, "plain", records)
    wait_for(lambda: len(endpoint.records()) == 100, what="100 records at the endpoint")
    assert sorted(endpoint.records()) == sorted(records)
    assert endpoint.rejected == []
    req = endpoint.received[0]
    assert req["gzip"] and req["attributes"] == {"env": "prod", "team": ""}
    assert req["source_arn"] == "arn:aws:firehose:us-east-1:000000000000:deliverystream/plain"
    uuid.UUID(req["request_id"])
    wait_for(lambda: daemon.metric("hosepipe_delivery_to_http_endpoint_records_total", "plain") == 100,
             what="DeliveryToHttpEndpoint.Records")
    metrics = daemon.metrics()
    assert 'hosepipe_delivery_to_http_endpoint_requests_total{stream="plain",outcome="success"}' in metrics
    assert "hosepipe_delivery_to_http_endpoint_processed_records_total" in metrics
    assert 'hosepipe_delivery_to_http_endpoint_data_freshness_seconds{stream="plain"}' in metrics
    d = fh.describe_delivery_stream(DeliveryStreamName="plain")["DeliveryStreamDescription"]
    desc = d["Destinations"][0]["HttpEndpointDestinationDescription"]
    assert desc["EndpointConfiguration"] == {"Url": endpoint.url + "v1/input?source=hosepipe",
                                             "Name": "test receiver"}
    assert desc["RequestConfiguration"] == {"ContentEncoding": "GZIP", "CommonAttributes": attrs}
    assert desc["RetryOptions"] == {"DurationInSeconds": 300}
    assert desc["S3BackupMode"] == "FailedDataOnly"
    assert desc["BufferingHints"] == {"SizeInMBs": 1, "IntervalInSeconds": 1}
    assert s3.objects(bucket, "plain/") == []


def test_bad_definitions_are_refused_with_their_fields(daemon, bucket):
    fh = daemon.firehose()
    for conf, field in [
        ({"EndpointConfiguration": {"Url": "http://intake.example.com/"}}, "Url"),
        ({"EndpointConfiguration": {"Url": "https://intake.example.com/"},
          "RequestConfiguration": {"ContentEncoding": "BROTLI"}}, "ContentEncoding"),
        ({"EndpointConfiguration": {"Url": "https://intake.example.com/"},
          "BufferingHints": {"SizeInMBs": 65, "IntervalInSeconds": 60}}, "SizeInMBs"),
        ({"EndpointConfiguration": {"Url": "https://intake.example.com/", "AccessKey": "k"},
          "SecretsManagerConfiguration": {"Enabled": True, "SecretARN":
                                          "arn:aws:secretsmanager:us-east-1:000000000000:secret:s"}},
         "AccessKey"),
    ]:
        conf["S3Configuration"] = {"RoleARN": ROLE, "BucketARN": f"arn:aws:s3:::{bucket}"}
        with pytest.raises(fh.exceptions.InvalidArgumentException, match=field):
            fh.create_delivery_stream(DeliveryStreamName="bad",
                                      HttpEndpointDestinationConfiguration=conf)
    assert fh.list_delivery_streams()["DeliveryStreamNames"] == []


def test_failures_are_retried_with_one_request_id_then_go_to_the_error_output(
        daemon, endpoint, s3, bucket):
    fh = daemon.firehose()
    create(fh, "flaky", endpoint.url, bucket)
    # A 503, a timeout, a wrong request id and a body that is not JSON: then it is taken. The
    # endpoint takes the request it answered too late as well: the same request id says so.
    endpoint.fail_status = (503, 1)
    endpoint.hang = (3, 1)
    endpoint.wrong_id = 1
    endpoint.bad_body = 1
    records = [b"r%d" % i for i in range(20)]
    put(fh, "flaky", records)
    wait_for(lambda: endpoint.posts >= 5 and len(endpoint.received) == 2, timeout=90,
             what="20 records after failures")
    assert sorted(set(endpoint.records())) == sorted(records)
    assert len(endpoint.posted_ids) == 5 and len(set(endpoint.posted_ids)) == 1
    assert {r["request_id"] for r in endpoint.received} == set(endpoint.posted_ids)
    log = daemon.log()
    for code in ["HttpEndpoint.DestinationException", "HttpEndpoint.RequestTimeout",
                 "HttpEndpoint.InvalidResponseFromDestination"]:
        assert code in log

    # Never taken: after RetryOptions, the records go to the error output.
    create(fh, "down", endpoint.url, bucket, RetryOptions={"DurationInSeconds": 3})
    endpoint.fail_status = (500, 1000)
    put(fh, "down", [b"d%d" % i for i in range(10)])
    wait_for(lambda: len(failed_records(s3, bucket, "down")) == 10, timeout=60,
             what="10 failed records")
    failed = failed_records(s3, bucket, "down")
    assert {f["errorCode"] for f in failed} == {"HttpEndpoint.DestinationException"}
    assert sorted(base64.b64decode(f["rawData"]) for f in failed) == sorted(b"d%d" % i for i in range(10))
    assert all(f["attemptsMade"] >= 2 and "told to answer 500" in f["errorMessage"] for f in failed)
    assert daemon.metric("hosepipe_http_endpoint_failed_records_total", "down") == 10
    # 413 is final: one attempt, then the error output (Firehose would drop the batch).
    endpoint.fail_status = (413, 1)
    create(fh, "big", endpoint.url, bucket)
    posts = endpoint.posts
    put(fh, "big", [b"x"])
    wait_for(lambda: failed_records(s3, bucket, "big"), timeout=30, what="the 413 batch")
    (f,) = failed_records(s3, bucket, "big")
    assert f["attemptsMade"] == 1 and "lower the buffer size" in f["errorMessage"]
    assert endpoint.posts == posts + 1


def test_all_data_is_backed_up_and_updates_take_effect(daemon, endpoint, s3, bucket):
    fh = daemon.firehose()
    create(fh, "all", endpoint.url, bucket, S3BackupMode="AllData")
    put(fh, "all", [b"a%d\n" % i for i in range(25)])
    wait_for(lambda: len(endpoint.records()) == 25, what="25 records at the endpoint")
    backed = lambda: sorted(l for _, b, _ in s3.objects(bucket, "all/") for l in b.splitlines() if l)
    wait_for(lambda: len(backed()) == 25, what="25 backed up")

    other = HttpEndpointReceiver(access_key="key-2")
    try:
        d = fh.describe_delivery_stream(DeliveryStreamName="all")["DeliveryStreamDescription"]
        fh.update_destination(
            DeliveryStreamName="all", CurrentDeliveryStreamVersionId=d["VersionId"],
            DestinationId=d["Destinations"][0]["DestinationId"],
            HttpEndpointDestinationUpdate={
                "EndpointConfiguration": {"Url": other.url, "AccessKey": "key-2"},
                "RequestConfiguration": {"CommonAttributes": [
                    {"AttributeName": "v", "AttributeValue": "2"}]},
                "S3Update": {"Prefix": "all-v2/"}})
        d = fh.describe_delivery_stream(DeliveryStreamName="all")["DeliveryStreamDescription"]
        assert d["VersionId"] == "2"
        desc = d["Destinations"][0]["HttpEndpointDestinationDescription"]
        assert desc["EndpointConfiguration"]["Url"] == other.url
        assert desc["S3DestinationDescription"]["Prefix"] == "all-v2/"
        put(fh, "all", [b"b%d\n" % i for i in range(10)])
        wait_for(lambda: len(other.records()) == 10, what="10 records at the new endpoint")
        assert other.received[-1]["attributes"] == {"v": "2"}
        assert len(endpoint.records()) == 25
        # A bad update is refused and changes nothing.
        with pytest.raises(fh.exceptions.InvalidArgumentException):
            fh.update_destination(
                DeliveryStreamName="all", CurrentDeliveryStreamVersionId="2",
                DestinationId=d["Destinations"][0]["DestinationId"],
                HttpEndpointDestinationUpdate={"EndpointConfiguration": {"Url": "ftp://x/"}})
    finally:
        other.stop()


def secrets_client(moto):
    return boto3.client("secretsmanager", endpoint_url=moto, region_name=REGION,
                        aws_access_key_id="test", aws_secret_access_key="test")


def test_keys_from_secrets_manager_are_read_again_when_refused(daemon_factory, moto, endpoint,
                                                                s3, bucket, tmp_path):
    sm = secrets_client(moto)
    arn = sm.create_secret(Name=f"ep-{uuid.uuid4().hex[:8]}",
                           SecretString=json.dumps({"api_key": "key-1"}))["ARN"]
    daemon = daemon_factory(FAST, extra_env={"AWS_ENDPOINT_URL_SECRETSMANAGER": moto})
    fh = daemon.firehose()
    create(fh, "secret", endpoint.url, bucket, key=None,
           SecretsManagerConfiguration={"Enabled": True, "SecretARN": arn})
    put(fh, "secret", [b"s%d" % i for i in range(5)])
    wait_for(lambda: len(endpoint.records()) == 5, what="5 records with the secret's key")
    # Rotated: the endpoint refuses the old key, the daemon reads the secret again.
    sm.put_secret_value(SecretId=arn, SecretString=json.dumps({"api_key": "key-2"}))
    endpoint.access_key = "key-2"
    put(fh, "secret", [b"t%d" % i for i in range(5)])
    wait_for(lambda: len(endpoint.records()) == 10, timeout=60, what="5 records with the new key")
    assert (401, "access key") in endpoint.rejected
    metrics = daemon.metrics()
    assert 'hosepipe_secret_reads_total{stream="secret",outcome="success"} 2' in metrics

    # A secret that does not exist: retried, then the error output.
    create(fh, "nosecret", endpoint.url, bucket, key=None, RetryOptions={"DurationInSeconds": 3},
           SecretsManagerConfiguration={"Enabled": True, "SecretARN":
                                        arn.rsplit(":", 1)[0] + ":missing-AbCdEf"})
    put(fh, "nosecret", [b"n%d" % i for i in range(3)])
    wait_for(lambda: len(failed_records(s3, bucket, "nosecret")) == 3, timeout=60,
             what="3 failed records")
    assert {f["errorCode"] for f in failed_records(s3, bucket, "nosecret")} == \
        {"HttpEndpoint.SecretUnreadable"}
    assert 'hosepipe_secret_reads_total{stream="nosecret",outcome="unreadable"}' in daemon.metrics()

    # hosepipe's own form: a local file with the same JSON.
    key_file = tmp_path / "key.json"
    key_file.write_text(json.dumps({"api_key": "key-2"}))
    create(fh, "filesecret", endpoint.url, bucket, key=None,
           SecretsManagerConfiguration={"Enabled": True, "SecretARN": f"file://{key_file}"})
    put(fh, "filesecret", [b"f"])
    wait_for(lambda: len(endpoint.records()) == 11, what="the record with the file's key")


def test_a_splunk_token_from_secrets_manager(daemon_factory, moto, s3, bucket):
    from hec_receiver import HecReceiver
    hec = HecReceiver()
    try:
        sm = secrets_client(moto)
        arn = sm.create_secret(Name=f"hec-{uuid.uuid4().hex[:8]}",
                               SecretString=json.dumps({"hec_token": hec.token}))["ARN"]
        daemon = daemon_factory("[splunk]\nack_timeout_seconds = 2\n",
                                extra_env={"AWS_ENDPOINT_URL_SECRETSMANAGER": moto})
        fh = daemon.firehose()
        fh.create_delivery_stream(DeliveryStreamName="hec", SplunkDestinationConfiguration={
            "HECEndpoint": hec.url, "HECEndpointType": "Raw",
            "SecretsManagerConfiguration": {"Enabled": True, "SecretARN": arn},
            "BufferingHints": {"SizeInMBs": 1, "IntervalInSeconds": 1},
            "S3Configuration": {"RoleARN": ROLE, "BucketARN": f"arn:aws:s3:::{bucket}"}})
        put(fh, "hec", [b"line %d\n" % i for i in range(10)])
        wait_for(lambda: len(hec.indexed) == 10, what="10 lines with the secret's token")
    finally:
        hec.close()


# --- hosepipe's receiver ------------------------------------------------------------------

RECEIVER = '[receiver]\naccess_keys = ["rk-1", "rk-2"]\n'


def s3_stream(fh, name, bucket):
    fh.create_delivery_stream(DeliveryStreamName=name, ExtendedS3DestinationConfiguration={
        "RoleARN": ROLE, "BucketARN": f"arn:aws:s3:::{bucket}", "Prefix": f"{name}/",
        "BufferingHints": {"SizeInMBs": 1, "IntervalInSeconds": 1}})


def deliver(url, records, key="rk-1", request_id=None, gzipped=False, body=None, headers=None):
    request_id = request_id or str(uuid.uuid4())
    if body is None:
        body = json.dumps({"requestId": request_id, "timestamp": int(time.time() * 1000),
                           "records": [{"data": base64.b64encode(r).decode()} for r in records]}
                          ).encode()
    h = {"Content-Type": "application/json", "X-Amz-Firehose-Protocol-Version": "1.0",
         "X-Amz-Firehose-Request-Id": request_id,
         "X-Amz-Firehose-Source-Arn": "arn:aws:firehose:us-east-1:1:deliverystream/edge"}
    if key is not None:
        h["X-Amz-Firehose-Access-Key"] = key
    if gzipped:
        body = gzip.compress(body)
        h["Content-Encoding"] = "gzip"
    h.update(headers or {})
    return requests.post(url, data=body, headers=h, timeout=30), request_id


def test_the_receiver_takes_firehose_deliveries_and_refuses_bad_ones(daemon_factory, s3, bucket):
    daemon = daemon_factory(RECEIVER)
    fh = daemon.firehose()
    s3_stream(fh, "in", bucket)
    url = f"{daemon.url}/http-endpoint/in"
    big = b"x" * 1_024_001
    for kwargs, status in [
        ({"key": "wrong"}, 401),
        ({"key": None}, 401),
        ({"body": b"{not json"}, 400),
        ({"body": b'{"requestId": "other", "timestamp": 1, "records": [{"data": "eA=="}]}'}, 400),
        ({"body": None, "records": [b"ok"], "headers": {"Content-Encoding": "br"}}, 400),
        ({"records": []}, 400),
        ({"records": [big]}, 413),
    ]:
        records = kwargs.pop("records", [b"never stored"])
        resp, rid = deliver(url, records, **kwargs)
        assert resp.status_code == status, (kwargs, resp.text)
        answer = resp.json()
        assert resp.headers["Content-Type"] == "application/json"
        assert answer["requestId"] == rid and isinstance(answer["timestamp"], int)
        assert answer["errorMessage"]
    rid = str(uuid.uuid4())
    bad_b64 = json.dumps({"requestId": rid, "timestamp": 1, "records": [{"data": "!!!"}]}).encode()
    resp, _ = deliver(url, [], request_id=rid, body=bad_b64)
    assert resp.status_code == 400 and "base64" in resp.json()["errorMessage"]
    resp, _ = deliver(f"{daemon.url}/http-endpoint/nosuch", [b"x"])
    assert resp.status_code == 404
    # Nothing of the refused requests was taken.
    assert daemon.metric("hosepipe_incoming_records_total", "in") == 0

    records = [b'{"n": %d}\n' % i for i in range(3000)]
    resp, rid = deliver(url, records[:2000], key="rk-2", gzipped=True)
    assert resp.status_code == 200 and resp.json()["requestId"] == rid
    assert "errorMessage" not in resp.json()
    resp, _ = deliver(url, records[2000:])
    assert resp.status_code == 200
    stored = lambda: sorted(l + b"\n" for _, b, _ in s3.objects(bucket, "in/") for l in b.splitlines() if l)
    wait_for(lambda: len(stored()) == 3000, what="3000 records in S3")
    assert stored() == sorted(records)


def test_the_receiver_is_off_without_keys(daemon):
    resp, _ = deliver(f"{daemon.url}/http-endpoint/in", [b"x"])
    assert resp.status_code == 404


def test_a_chain_of_two_daemons_loses_nothing_when_the_second_is_killed(daemon_factory, s3, bucket):
    port = stable_port()
    central = daemon_factory(RECEIVER, listen=f"127.0.0.1:{port}")
    s3_stream(central.firehose(), "central", bucket)
    edge = daemon_factory(FAST)
    fh = edge.firehose()
    create(fh, "edge", f"http://127.0.0.1:{port}/http-endpoint/central", bucket, key="rk-1",
           RequestConfiguration={"ContentEncoding": "GZIP"}, RetryOptions={"DurationInSeconds": 600})
    ids = [uuid.uuid4().hex for _ in range(6000)]
    records = [json.dumps({"id": i}).encode() + b"\n" for i in ids]
    put(fh, "edge", records[:2000])
    wait_for(lambda: central.metric("hosepipe_incoming_records_total", "central") >= 1,
             what="the first deliveries at the central daemon")
    central.crash()
    put(fh, "edge", records[2000:4000])
    time.sleep(3)  # the edge retries against a dead port meanwhile
    central.start()
    put(fh, "edge", records[4000:])

    def arrived():
        return {json.loads(l)["id"] for _, b, _ in s3.objects(bucket, "central/")
                for l in b.splitlines() if l}
    wait_for(lambda: len(arrived()) == len(ids), timeout=120, what="every record in S3")
    assert arrived() == set(ids)
    assert "HttpEndpoint.ConnectionFailed" in edge.log()
