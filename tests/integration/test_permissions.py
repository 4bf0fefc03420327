"""Per-key permissions in IAM's terms, through boto3: a key whose policy allows puts and
describes on `app-*` streams, with an explicit deny on `app-secret`, is refused everything else
with `AccessDeniedException` naming the key, the action and the resource, and what it was
refused stores nothing. `/metrics` and `/status` want the bearer token."""
import subprocess

import boto3
import botocore.exceptions
import pytest
import requests
from botocore.config import Config

from conftest import BIN, REGION, signed_call, wait_for
from test_producers import create_stream, delivered_lines

ARN = "arn:aws:firehose:us-east-1:000000000000:deliverystream"
POLICY = f'''
[[auth.keys]]
access_key_id = "AKIDPRODUCER"
secret_access_key = "producer-secret"
[[auth.keys.policy]]
effect = "Allow"
action = ["firehose:PutRecord*", "firehose:Describe*"]
resource = "{ARN}/app-*"
[[auth.keys.policy]]
effect = "Deny"
action = "firehose:*"
resource = "{ARN}/app-secret"

[auth]
metrics_token = "scrape-me"
'''


def producer(url):
    return boto3.client("firehose", endpoint_url=url, aws_access_key_id="AKIDPRODUCER",
                        aws_secret_access_key="producer-secret", region_name=REGION,
                        config=Config(retries={"max_attempts": 1}))


def denied(call):
    with pytest.raises(botocore.exceptions.ClientError) as e:
        call()
    err = e.value.response["Error"]
    assert err["Code"] == "AccessDeniedException", err
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    return err["Message"]


def test_a_keys_policy_decides_what_it_may_do(s3, bucket, daemon_factory):
    d = daemon_factory(POLICY)
    admin = d.firehose()
    for name in ("app-1", "app-secret", "other"):
        create_stream(admin, name, bucket)
    p = producer(d.url)
    put = lambda name: p.put_record_batch(  # noqa: E731
        DeliveryStreamName=name, Records=[{"Data": f"{name} record\n".encode()}])

    assert put("app-1")["FailedPutCount"] == 0
    p.describe_delivery_stream(DeliveryStreamName="app-1")

    message = denied(lambda: put("other"))
    assert message == (
        "User: arn:aws:iam::000000000000:user/AKIDPRODUCER is not authorized to perform: "
        f"firehose:PutRecordBatch on resource: {ARN}/other because no identity-based policy "
        "allows the firehose:PutRecordBatch action")
    assert "with an explicit deny" in denied(lambda: put("app-secret"))
    assert "firehose:DeleteDeliveryStream" in denied(
        lambda: p.delete_delivery_stream(DeliveryStreamName="app-1"))
    assert "on resource: *" in denied(lambda: p.list_delivery_streams())
    denied(lambda: p.create_delivery_stream(
        DeliveryStreamName="app-new",
        ExtendedS3DestinationConfiguration={
            "RoleARN": "arn:aws:iam::000000000000:role/firehose",
            "BucketARN": f"arn:aws:s3:::{bucket}"}))

    # A body whose stream cannot be read is asked about "*", which this key may not touch.
    r = signed_call(d.url, "PutRecordBatch", b'{"Records": "not a stream"}',
                    ak="AKIDPRODUCER", sk="producer-secret")
    assert r.status_code == 400 and r.json()["__type"] == "AccessDeniedException", r.text

    # What was allowed is delivered; what was refused is nowhere.
    wait_for(lambda: delivered_lines(s3, bucket, "app-1/") == ["app-1 record"],
             what="the allowed put delivered")
    assert delivered_lines(s3, bucket, "other/") == []
    assert delivered_lines(s3, bucket, "app-secret/") == []
    assert "app-new" not in admin.list_delivery_streams()["DeliveryStreamNames"]

    # /metrics and /status want the bearer token.
    assert requests.get(f"{d.url}/metrics", timeout=5).status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert requests.get(f"{d.url}/status", headers=wrong, timeout=5).status_code == 401
    ok = {"Authorization": "Bearer scrape-me"}
    metrics = requests.get(f"{d.url}/metrics", headers=ok, timeout=5)
    assert metrics.status_code == 200
    # Every stream's counters exist from its start; the refused put counted nothing.
    assert 'hosepipe_incoming_records_total{stream="other"} 0\n' in metrics.text
    assert 'hosepipe_incoming_records_total{stream="app-1"} 1' in metrics.text
    status = subprocess.run([BIN, "status", "--endpoint", d.url, "--token", "scrape-me"],
                            capture_output=True, text=True, timeout=30)
    assert status.returncode == 0 and "app-1" in status.stdout, status.stderr
    refused = subprocess.run([BIN, "status", "--endpoint", d.url], capture_output=True,
                             text=True, timeout=30)
    assert refused.returncode != 0
