"""TLS on the listener: real clients — the aws CLI with `--ca-bundle`, boto3 with `verify=`,
`hosepipe agent` and `hosepipe generate` with a CA bundle — reach a daemon serving HTTPS with a
certificate that a CA made in the test signed, and their records reach S3. A client trusting
another CA fails the handshake; with client certificates required, a client without one is
refused and one with a certificate the client CA signed gets through."""
import json
import os
import subprocess
import time

import boto3
import botocore.exceptions
import pytest
import trustme
from botocore.config import Config

from conftest import BIN, FH_AK, FH_SK, REGION, wait_for
from hec_receiver import HecReceiver
from test_producers import Agent, create_stream, delivered_lines, producer_env
from test_splunk import SPLUNK, failed_events, put
from test_splunk import create as create_splunk


@pytest.fixture
def pki(tmp_path):
    """A CA, the listener's certificate and key, another CA, and a client certificate."""
    ca, other = trustme.CA(), trustme.CA()
    files = {name: tmp_path / f"{name}.pem" for name in
             ("ca", "other_ca", "server", "server_key", "client", "client_key")}
    ca.cert_pem.write_to_path(files["ca"])
    other.cert_pem.write_to_path(files["other_ca"])
    server = ca.issue_cert("127.0.0.1", "localhost")
    for blob in server.cert_chain_pems:
        blob.write_to_path(files["server"], append=True)
    server.private_key_pem.write_to_path(files["server_key"])
    client = ca.issue_cert("producer@example.com")
    client.cert_chain_pems[0].write_to_path(files["client"])
    client.private_key_pem.write_to_path(files["client_key"])
    return files


def tls_block(pki, client_ca=False):
    text = f'[tls]\ncert_file = "{pki["server"]}"\nkey_file = "{pki["server_key"]}"\n'
    if client_ca:
        text += f'client_ca_file = "{pki["ca"]}"\n'
    return text


def firehose(url, verify, client_cert=None):
    return boto3.client("firehose", endpoint_url=url, aws_access_key_id=FH_AK,
                        aws_secret_access_key=FH_SK, region_name=REGION, verify=verify,
                        config=Config(retries={"max_attempts": 1}, client_cert=client_cert))


def aws_cli(*args):
    env = producer_env()
    env["AWS_DEFAULT_REGION"] = REGION
    return subprocess.run(["aws", "firehose", *args], env=env, capture_output=True, text=True,
                          timeout=120)


def test_real_clients_reach_an_https_listener_through_the_ca_bundle(
        s3, bucket, daemon_factory, pki, tmp_path):
    d = daemon_factory(tls_block(pki))
    assert d.url.startswith("https://"), d.url
    fh = firehose(d.url, verify=str(pki["ca"]))
    create_stream(fh, "secure", bucket)

    # boto3 with verify= the CA.
    fh.put_record_batch(DeliveryStreamName="secure",
                        Records=[{"Data": f"boto3 {i}\n".encode()} for i in range(10)])
    # The aws CLI with --ca-bundle.
    out = aws_cli("put-record-batch", "--endpoint-url", d.url, "--ca-bundle", str(pki["ca"]),
                  "--delivery-stream-name", "secure",
                  "--records", json.dumps([{"Data": f"cli {i}\n"} for i in range(5)]))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["FailedPutCount"] == 0
    # hosepipe generate with --ca-bundle.
    template = tmp_path / "t.txt"
    template.write_text("generated {{random.uuid}}\n")
    gen = subprocess.run([BIN, "generate", "--stream", "secure", "--template", str(template),
                          "--count", "7", "--rate", "1000", "--quiet", "--endpoint", d.url,
                          "--ca-bundle", str(pki["ca"])],
                         env=producer_env(), capture_output=True, text=True, timeout=120)
    assert gen.returncode == 0, gen.stderr
    # hosepipe agent with ca_bundle in its config.
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "app.log").write_text("".join(f"agent {i}\n" for i in range(6)))
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f"""
firehose_endpoint = "{d.url}"
ca_bundle = "{pki['ca']}"
checkpoint_file = "{tmp_path / 'checkpoints.json'}"
[[flows]]
file_pattern = "{logs}/app.log"
delivery_stream = "secure"
initial_position = "START_OF_FILE"
max_buffer_age_millis = 1000
""")
    agent = Agent(cfg)
    try:
        wait_for(lambda: len(delivered_lines(s3, bucket, "secure/")) >= 28, timeout=90,
                 what="every producer's records in S3")
    except AssertionError as e:
        raise AssertionError(f"{e}\n{delivered_lines(s3, bucket, 'secure/')}\n"
                             f"{agent.log()[-3000:]}") from None
    finally:
        agent.stop()
    got = delivered_lines(s3, bucket, "secure/")
    assert sorted(line.split()[0] for line in got) == sorted(
        ["boto3"] * 10 + ["cli"] * 5 + ["generated"] * 7 + ["agent"] * 6), got

    # A client that trusts another CA fails the handshake and stores nothing.
    with pytest.raises(botocore.exceptions.SSLError):
        firehose(d.url, verify=str(pki["other_ca"])).put_record_batch(
            DeliveryStreamName="secure", Records=[{"Data": b"wrong ca\n"}])
    out = aws_cli("put-record-batch", "--endpoint-url", d.url,
                  "--ca-bundle", str(pki["other_ca"]), "--delivery-stream-name", "secure",
                  "--records", json.dumps([{"Data": "wrong ca\n"}]))
    assert out.returncode != 0
    assert "SSL" in out.stderr or "certificate" in out.stderr, out.stderr
    time.sleep(2)  # what the daemon would have delivered by now, had it accepted it
    assert not any("wrong ca" in line for line in delivered_lines(s3, bucket, "secure/"))


def test_client_certificates_are_required_when_a_client_ca_is_set(
        s3, bucket, daemon_factory, pki):
    d = daemon_factory(tls_block(pki, client_ca=True))
    with_cert = firehose(d.url, verify=str(pki["ca"]),
                         client_cert=(str(pki["client"]), str(pki["client_key"])))
    create_stream(with_cert, "mtls", bucket)
    with_cert.put_record_batch(DeliveryStreamName="mtls", Records=[{"Data": b"signed\n"}])
    without = firehose(d.url, verify=str(pki["ca"]))
    with pytest.raises((botocore.exceptions.SSLError, botocore.exceptions.EndpointConnectionError,
                        botocore.exceptions.ConnectionClosedError)):
        without.put_record_batch(DeliveryStreamName="mtls", Records=[{"Data": b"anonymous\n"}])
    wait_for(lambda: delivered_lines(s3, bucket, "mtls/") == ["signed"], timeout=60,
             what="the client with a certificate delivered, the other not")


def test_plain_http_is_only_for_loopback_unless_allowed(tmp_path):
    config = tmp_path / "open.toml"
    config.write_text('listen = "0.0.0.0:0"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    out = subprocess.run([BIN, "serve", "--config", str(config), "--data-dir",
                          str(tmp_path / "data")], env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode != 0
    assert "needs TLS" in out.stderr and "allow_plain_http" in out.stderr, out.stderr


def test_the_daemon_trusts_its_ca_bundle_for_its_own_clients(s3, bucket, daemon_factory, pki):
    # A Splunk HEC (the stand-in receiver) serving HTTPS with the test CA's certificate.
    hec = HecReceiver().serve_tls(pki["server"], pki["server_key"])
    try:
        trusting = daemon_factory(f'ca_bundle = "{pki["ca"]}"\n' + SPLUNK)
        fh = trusting.firehose()
        create_splunk(fh, "trusted", hec, bucket)
        put(fh, "trusted", [b'{"n": %d}\n' % i for i in range(20)])
        wait_for(lambda: len(hec.indexed) == 20, what="20 events indexed over HTTPS")

        # Without the bundle the daemon does not trust the receiver: nothing is indexed, and
        # once RetryOptions run out the events are in the backup bucket.
        doubting = daemon_factory(SPLUNK)
        fh = doubting.firehose()
        create_splunk(fh, "untrusted", hec, bucket, RetryOptions={"DurationInSeconds": 0})
        put(fh, "untrusted", [b'{"m": %d}\n' % i for i in range(5)])
        wait_for(lambda: len(failed_events(s3, bucket, "untrusted")) == 5,
                 what="5 failed events in the backup")
        assert len(hec.indexed) == 20
        assert all(e["errorCode"].startswith("Splunk.Connection")
                   for e in failed_events(s3, bucket, "untrusted"))
    finally:
        hec.close()
