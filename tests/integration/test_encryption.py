"""Envelope encryption end to end: streams with KMSEncryptionConfig (boto3) write only HPEN objects
to the real S3 server; an independent decryptor written from docs/encryption-format.md
(decrypt_hpen.py, `cryptography`) and `hosepipe decrypt` both recover the exact plaintext; the key
service is the local keyring or moto's KMS."""
import gzip
import json
import re
import subprocess
import threading

import boto3
import botocore.exceptions
import pytest

from conftest import BIN, REGION, wait_for
from faulty_proxy import FaultyProxy
from decrypt_hpen import HpenError, decrypt, kms_unwrap, local_unwrap, read_header

ROLE = "arn:aws:iam::000000000000:role/firehose"


def create(fh, name, bucket, key_arn, **extra):
    conf = {"RoleARN": ROLE, "BucketARN": f"arn:aws:s3:::{bucket}", "Prefix": f"{name}/",
            "ErrorOutputPrefix": f"errors-{name}/!{{firehose:error-output-type}}/",
            "CompressionFormat": "GZIP",
            "BufferingHints": {"SizeInMBs": 1, "IntervalInSeconds": 1},
            "EncryptionConfiguration": {"KMSEncryptionConfig": {"AWSKMSKeyARN": key_arn}}}
    conf.update(extra)
    return fh.create_delivery_stream(DeliveryStreamName=name,
                                     ExtendedS3DestinationConfiguration=conf)


def hosepipe(d, *args):
    return subprocess.run([BIN, *args], capture_output=True, env=d.env)


def key_calls(d, stream):
    """Successful data-key requests (`hosepipe_key_service_calls_total{outcome="success"}`)."""
    m = re.search(rf'^hosepipe_key_service_calls_total\{{stream="{stream}",outcome="success"\}} (\S+)$',
                  d.metrics(), re.M)
    return float(m.group(1)) if m else 0.0


def lines(blob):
    return [l for l in gzip.decompress(blob).split(b"\n") if l]


def test_local_keyring_streams_write_only_encrypted_objects(daemon_factory, s3, bucket, tmp_path):
    keyring = tmp_path / "keyring.json"
    d = daemon_factory(f'[encryption]\nkeyring = "{keyring}"\n')
    out = hosepipe(d, "keys", "--config", str(d.config), "create", "orders")
    assert out.returncode == 0, out.stderr
    assert (keyring.stat().st_mode & 0o777) == 0o600
    fh = d.firehose()
    create(fh, "secret", bucket, "arn:aws:kms:us-east-1:000000000000:key/orders",
           ProcessingConfiguration={"Enabled": True, "Processors": [
               {"Type": "Decompression",
                "Parameters": [{"ParameterName": "CompressionFormat", "ParameterValue": "GZIP"}]}]})
    records = [json.dumps({"n": i, "pad": "x" * 200}).encode() + b"\n" for i in range(300)]
    fh.put_record_batch(DeliveryStreamName="secret",
                        Records=[{"Data": gzip.compress(r)} for r in records])
    fh.put_record(DeliveryStreamName="secret", Record={"Data": b"not gzip at all"})
    unwrap = local_unwrap(keyring)

    def delivered():
        return [r for _, body, _ in s3.objects(bucket, "secret/")
                for r in lines(decrypt(body, unwrap))]

    wait_for(lambda: len(delivered()) == 300 and s3.objects(bucket, "errors-secret/"),
             what="encrypted objects and error output")
    assert sorted(delivered()) == sorted(r.rstrip(b"\n") for r in records)
    c = s3.client()
    for prefix in ("secret/", "errors-secret/"):
        for key, body, _ in s3.objects(bucket, prefix):
            assert key.endswith(".enc") and body[:4] == b"HPEN", key
            assert b'"n": 1' not in body and b"not gzip" not in body
            meta = c.head_object(Bucket=bucket, Key=key)["Metadata"]
            assert meta["hosepipe-encryption"] == "HPEN1"
            # The object key is in the authenticated header: a rename is caught.
            decrypt(body, unwrap, expected_key=key)
            with pytest.raises(HpenError):
                decrypt(body, unwrap, expected_key=key + "x")
    (err_key, err_body, _), = s3.objects(bucket, "errors-secret/")
    doc = json.loads(decrypt(err_body, unwrap, expected_key=err_key))
    assert doc["errorCode"] and "rawData" in doc

    # hosepipe decrypt recovers the same bytes, from S3 and from a local copy.
    key, body, _ = s3.objects(bucket, "secret/")[0]
    plain = tmp_path / "plain.gz"
    out = hosepipe(d, "decrypt", "--config", str(d.config), f"s3://{bucket}/{key}", "-o", str(plain))
    assert out.returncode == 0, out.stderr
    assert plain.read_bytes() == decrypt(body, unwrap)
    local = tmp_path / key.rsplit("/", 1)[1]
    flipped = body[:100] + bytes([body[100] ^ 1]) + body[101:]
    for broken, why in [(body[:-5], "authenticate"), (flipped, "authenticate"),
                        (body[:40], "truncated")]:
        local.write_bytes(broken)
        target = tmp_path / "should-not-exist"
        out = hosepipe(d, "decrypt", "--config", str(d.config), str(local), "-o", str(target))
        assert out.returncode != 0 and why in out.stderr.decode(), out.stderr
        assert not target.exists()
    local.write_bytes(body)
    out = hosepipe(d, "decrypt", "--config", str(d.config), str(local))
    assert out.returncode == 0 and out.stdout == decrypt(body, unwrap)

    # Rotation: new objects use version 2, old ones still open.
    out = hosepipe(d, "keys", "--config", str(d.config), "rotate", "orders")
    assert out.returncode == 0 and "version 2 of 2" in out.stdout.decode(), out
    before = {k for k, _, _ in s3.objects(bucket, "secret/")}
    fh.put_record(DeliveryStreamName="secret", Record={"Data": gzip.compress(b"after rotation\n")})
    wait_for(lambda: {k for k, _, _ in s3.objects(bucket, "secret/")} - before,
             what="an object after the rotation")
    for key, body, _ in s3.objects(bucket, "secret/"):
        version = 2 if key not in before else 1
        header = read_header(body)
        assert header["key_id"] == "orders"
        assert header["wrapped_key"][:4] == version.to_bytes(4, "big"), key
        assert lines(decrypt(body, unwrap, expected_key=key))
    assert key_calls(d, "secret") >= 3

    # An unknown key is refused up front, and nothing is created.
    with pytest.raises(botocore.exceptions.ClientError) as e:
        create(fh, "nokey", bucket, "alias/missing")
    assert e.value.response["Error"]["Code"] == "InvalidKMSResourceException"
    assert "nokey" not in fh.list_delivery_streams()["DeliveryStreamNames"]


def test_the_aws_kms_provider_against_moto(moto, daemon_factory, s3, bucket, tmp_path):
    kms = boto3.client("kms", endpoint_url=moto, region_name=REGION,
                       aws_access_key_id="AKIDKMS", aws_secret_access_key="secret")
    key = kms.create_key(Description="firehose")["KeyMetadata"]
    kms.create_alias(AliasName="alias/firehose", TargetKeyId=key["KeyId"])
    d = daemon_factory(f'[encryption]\nprovider = "aws-kms"\nkms_endpoint = "{moto}"\n'
                       'data_key_max_objects = 100\n')
    fh = d.firehose()
    create(fh, "kms", bucket, key["Arn"])
    records = [b"record %d\n" % i for i in range(50)]
    for r in records:
        fh.put_record(DeliveryStreamName="kms", Record={"Data": r})
    unwrap = kms_unwrap(kms)
    wait_for(lambda: sum(len(lines(decrypt(b, unwrap))) for _, b, _ in s3.objects(bucket, "kms/"))
             == 50, what="KMS-encrypted objects")
    key_name, body, _ = s3.objects(bucket, "kms/")[0]
    out = hosepipe(d, "decrypt", "--config", str(d.config), f"s3://{bucket}/{key_name}")
    assert out.returncode == 0, out.stderr
    assert out.stdout == decrypt(body, unwrap)
    # One data key served every object (reuse up to 100 objects).
    assert 1 <= key_calls(d, "kms") <= 2
    with pytest.raises(botocore.exceptions.ClientError) as e:
        create(fh, "kms-missing", bucket,
               "arn:aws:kms:us-east-1:123456789012:key/00000000-0000-0000-0000-000000000000")
    assert e.value.response["Error"]["Code"] == "InvalidKMSResourceException"
    assert "KMSKeyNotFound" in e.value.response["Error"]["Message"]


def test_records_wait_while_the_key_service_fails(daemon_factory, s3, bucket, tmp_path):
    keyring = tmp_path / "keyring.json"
    d = daemon_factory(f'[encryption]\nkeyring = "{keyring}"\n')
    assert hosepipe(d, "keys", "--config", str(d.config), "create", "k").returncode == 0
    fh = d.firehose()
    create(fh, "waits", bucket, "k")
    # The key goes away after the stream was created: objects wait, nothing is written in clear.
    hidden = tmp_path / "elsewhere.json"
    keyring.rename(hidden)
    fh.put_record(DeliveryStreamName="waits", Record={"Data": b"held back\n"})
    failures = r'hosepipe_key_service_calls_total\{stream="waits",outcome="KMSKeyNotFound"\} (\d+)'
    wait_for(lambda: re.search(failures, d.metrics()), what="key-service failures counted")
    assert s3.objects(bucket, "waits/") == []
    # Named as a cause retrying alone cannot fix, as Firehose names it.
    description = wait_for(lambda: fh.describe_delivery_stream(DeliveryStreamName="waits")[
        "DeliveryStreamDescription"].get("FailureDescription"), what="a FailureDescription")
    assert description["Type"] == "KMS_KEY_NOT_FOUND", description
    assert 'hosepipe_delivery_blocked{stream="waits",reason="kms_key_not_found"} 1' in d.metrics()
    hidden.rename(keyring)
    wait_for(lambda: s3.objects(bucket, "waits/"), timeout=60, what="the held object")
    assert "FailureDescription" not in fh.describe_delivery_stream(
        DeliveryStreamName="waits")["DeliveryStreamDescription"]
    (key, body, _), = s3.objects(bucket, "waits/")
    assert lines(decrypt(body, local_unwrap(keyring), expected_key=key)) == [b"held back"]


def spool_files(d, stream):
    return sorted((d.data_dir / "spool" / f"s-{stream}").glob("seg-*.log"))


def in_clear(d, stream, needle):
    return any(needle in p.read_bytes() for p in spool_files(d, stream))


def at_rest(fh, name):
    return fh.describe_delivery_stream(DeliveryStreamName=name)[
        "DeliveryStreamDescription"]["DeliveryStreamEncryptionConfiguration"]


def test_stream_encryption_seals_the_spool_at_rest(daemon_factory, s3, bucket, tmp_path):
    keyring = tmp_path / "keyring.json"
    d = daemon_factory(f'[encryption]\nkeyring = "{keyring}"\n')
    fh = d.firehose()
    slow = {"RoleARN": ROLE, "BucketARN": f"arn:aws:s3:::{bucket}", "Prefix": "rest/",
            "BufferingHints": {"SizeInMBs": 128, "IntervalInSeconds": 900}}
    # At creation, with the daemon's own key (created in the keyring on first use).
    fh.create_delivery_stream(DeliveryStreamName="owned", ExtendedS3DestinationConfiguration=slow,
                              DeliveryStreamEncryptionConfigurationInput={"KeyType": "AWS_OWNED_CMK"})
    assert at_rest(fh, "owned") == {"KeyType": "AWS_OWNED_CMK", "Status": "ENABLED"}
    assert "hosepipe-owned" in json.loads(keyring.read_text())["keys"]
    out = fh.put_record_batch(DeliveryStreamName="owned",
                              Records=[{"Data": b"owned-secret-%d\n" % i} for i in range(20)])
    assert out["Encrypted"] is True and out["FailedPutCount"] == 0
    assert fh.put_record(DeliveryStreamName="owned", Record={"Data": b"owned-secret-x\n"})["Encrypted"]
    assert spool_files(d, "owned") and not in_clear(d, "owned", b"owned-secret")
    seg = spool_files(d, "owned")[0].read_bytes()
    assert seg[:8] == b"HPSPOOL\x02"
    envelope = read_header(seg[20:])
    assert envelope["provider"] == "local" and envelope["key_id"] == "hosepipe-owned"
    assert envelope["context"]["hosepipe:stream"] == "owned"

    # Turned on later with a customer key: the records already waiting get sealed too.
    assert hosepipe(d, "keys", "--config", str(d.config), "create", "custom").returncode == 0
    fh.create_delivery_stream(DeliveryStreamName="later", ExtendedS3DestinationConfiguration=slow)
    assert at_rest(fh, "later") == {"Status": "DISABLED"}
    out = fh.put_record_batch(DeliveryStreamName="later",
                              Records=[{"Data": b"early-secret-%d\n" % i} for i in range(10)])
    assert out["Encrypted"] is False
    assert in_clear(d, "later", b"early-secret")
    arn = "arn:aws:kms:us-east-1:000000000000:key/custom"
    fh.start_delivery_stream_encryption(
        DeliveryStreamName="later",
        DeliveryStreamEncryptionConfigurationInput={"KeyType": "CUSTOMER_MANAGED_CMK", "KeyARN": arn})
    wait_for(lambda: at_rest(fh, "later")["Status"] == "ENABLED", what="encryption ENABLED")
    assert at_rest(fh, "later") == {"KeyType": "CUSTOMER_MANAGED_CMK", "KeyARN": arn,
                                    "Status": "ENABLED"}
    assert not in_clear(d, "later", b"early-secret")
    assert fh.put_record(DeliveryStreamName="later", Record={"Data": b"sealed-secret\n"})["Encrypted"]
    assert not in_clear(d, "later", b"sealed-secret")

    # Refusals, with the errors a Firehose client expects; nothing changes.
    def refused(code, **kw):
        with pytest.raises(botocore.exceptions.ClientError) as e:
            fh.start_delivery_stream_encryption(**kw)
        assert e.value.response["Error"]["Code"] == code, e.value.response
    refused("InvalidArgumentException", DeliveryStreamName="later",
            DeliveryStreamEncryptionConfigurationInput={"KeyType": "CUSTOMER_MANAGED_CMK"})
    refused("InvalidArgumentException", DeliveryStreamName="later",
            DeliveryStreamEncryptionConfigurationInput={"KeyType": "AWS_OWNED_CMK", "KeyARN": arn})
    refused("InvalidKMSResourceException", DeliveryStreamName="later",
            DeliveryStreamEncryptionConfigurationInput={"KeyType": "CUSTOMER_MANAGED_CMK",
                                                        "KeyARN": "alias/missing"})
    refused("ResourceNotFoundException", DeliveryStreamName="nope",
            DeliveryStreamEncryptionConfigurationInput={"KeyType": "AWS_OWNED_CMK"})
    with pytest.raises(botocore.exceptions.ClientError) as e:
        fh.create_delivery_stream(DeliveryStreamName="badkey", ExtendedS3DestinationConfiguration=slow,
                                  DeliveryStreamEncryptionConfigurationInput={
                                      "KeyType": "CUSTOMER_MANAGED_CMK", "KeyARN": "alias/missing"})
    assert e.value.response["Error"]["Code"] == "InvalidKMSResourceException"
    assert at_rest(fh, "later")["KeyARN"] == arn

    # Stopped: new records are written plain; the sealed ones stay sealed.
    fh.stop_delivery_stream_encryption(DeliveryStreamName="later")
    wait_for(lambda: at_rest(fh, "later")["Status"] == "DISABLED", what="encryption DISABLED")
    assert fh.put_record(DeliveryStreamName="later", Record={"Data": b"plain-again\n"})["Encrypted"] is False
    assert in_clear(d, "later", b"plain-again") and not in_clear(d, "later", b"early-secret")

    # A crash: the sealed records come back from the spool (unsealed with the keyring) and are
    # delivered once; the settings survive the restart.
    d.crash()
    d.start()
    fh = d.firehose()
    assert at_rest(fh, "owned")["Status"] == "ENABLED"
    assert at_rest(fh, "later") == {"Status": "DISABLED"}
    assert d.metric("hosepipe_spool_replayed_records_total", "owned") == 21
    assert d.metric("hosepipe_spool_replayed_records_total", "later") == 12
    d.stop()  # flushes every buffer
    got = sorted(l for _, body, _ in s3.objects(bucket, "rest/") for l in body.split(b"\n") if l)
    want = sorted([b"owned-secret-%d" % i for i in range(20)] + [b"owned-secret-x"]
                  + [b"early-secret-%d" % i for i in range(10)] + [b"sealed-secret", b"plain-again"])
    assert got == want


def test_a_slow_key_service_never_stalls_puts_to_other_streams(moto, daemon_factory, bucket):
    """UpdateDestination on a KMS-encrypted stream asks the key service for a data key; held at
    a proxy in front of moto's KMS, the update stays in flight while another stream takes puts
    and answers Describe. Ordering is asserted, not time."""
    kms = boto3.client("kms", endpoint_url=moto, region_name=REGION,
                       aws_access_key_id="AKIDKMS", aws_secret_access_key="secret")
    key = kms.create_key(Description="slow")["KeyMetadata"]
    proxy = FaultyProxy(moto)
    try:
        d = daemon_factory(f'[encryption]\nprovider = "aws-kms"\nkms_endpoint = "{proxy.url}"\n')
        fh = d.firehose()
        create(fh, "sealed", bucket, key["Arn"])
        fh.create_delivery_stream(DeliveryStreamName="plain", ExtendedS3DestinationConfiguration={
            "RoleARN": ROLE, "BucketARN": f"arn:aws:s3:::{bucket}", "Prefix": "plain/",
            "BufferingHints": {"SizeInMBs": 1, "IntervalInSeconds": 1}})
        version = fh.describe_delivery_stream(
            DeliveryStreamName="sealed")["DeliveryStreamDescription"]["VersionId"]
        proxy.hold()
        outcome = {}
        finished = threading.Event()

        def update():
            try:
                d.firehose().update_destination(
                    DeliveryStreamName="sealed", CurrentDeliveryStreamVersionId=version,
                    DestinationId="destinationId-000000000001",
                    ExtendedS3DestinationUpdate={"BufferingHints": {"SizeInMBs": 2,
                                                                    "IntervalInSeconds": 2}})
                outcome["ok"] = True
            except Exception as e:  # noqa: BLE001 - reported by the assertion below
                outcome["error"] = e
            finally:
                finished.set()

        updating = threading.Thread(target=update)
        updating.start()
        wait_for(lambda: proxy.held >= 1, what="the update's key request held at the proxy")
        for i in range(10):
            answer = fh.put_record_batch(DeliveryStreamName="plain",
                                         Records=[{"Data": b"%d-%d\n" % (i, j)} for j in range(50)])
            assert answer["FailedPutCount"] == 0
        assert fh.describe_delivery_stream(DeliveryStreamName="plain")
        # Every put above was answered while the update still waited for the key service.
        assert not finished.is_set()
        proxy.release()
        updating.join(60)
        assert outcome == {"ok": True}
        after = fh.describe_delivery_stream(DeliveryStreamName="sealed")["DeliveryStreamDescription"]
        assert int(after["VersionId"]) == int(version) + 1
    finally:
        proxy.close()
