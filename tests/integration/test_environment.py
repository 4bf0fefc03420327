"""The environments users run the daemon in, and failures retrying cannot fix.

- CA bundles as the AWS SDKs take them: `AWS_CA_BUNDLE` naming the system's own bundle (as in
  many containers and CI runners), a bundle of the system's and a private CA together, a file
  with no usable certificate (refused at start-up).
- A bucket that does not exist, credentials S3 refuses: named in the log (once), in `/metrics`,
  in `hosepipe status` and in DescribeDeliveryStream's FailureDescription; the records wait in
  the spool and are delivered once the cause is fixed.
"""
import datetime
import json
import os
import re
import subprocess
import threading
from pathlib import Path

import pytest

from conftest import (BIN, S3_AK, S3_READER_AK, S3_READER_SK, S3_SK, Daemon, wait_for)
from hec_receiver import HecReceiver
from test_s3_delivery import create, put_all, records
from test_splunk import SPLUNK, put
from test_splunk import create as create_splunk
from test_tls import pki  # noqa: F401 - the fixture

SYSTEM_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def bodies(s3, bucket, prefix=""):
    return b"".join(body for _, body, _ in s3.objects(bucket, prefix))


# A certificate no TLS stack can take as a trust anchor (its DER is cut short).
BROKEN_CERT = (b"-----BEGIN CERTIFICATE-----\n"
               b"MIIBAjCBqaADAgECAgEBMAoGCCqGSM49BAMCMAAwHhcNMjYwMTAxMDAwMDAwWhcN\n"
               b"-----END CERTIFICATE-----\n")


@pytest.mark.skipif(not SYSTEM_BUNDLE.exists(), reason="no system CA bundle")
def test_aws_ca_bundle_naming_the_system_bundle_delivers(s3, bucket, daemon_factory, tmp_path):
    mixed = tmp_path / "mixed.pem"
    mixed.write_bytes(BROKEN_CERT + SYSTEM_BUNDLE.read_bytes())
    for n, bundle in enumerate([SYSTEM_BUNDLE, mixed]):
        d = daemon_factory(extra_env={"AWS_CA_BUNDLE": str(bundle)})
        fh = d.firehose()
        create(fh, "sys", bucket, Prefix=f"b{n}/")
        recs = records(10)
        put_all(fh, "sys", recs)
        wait_for(lambda: bodies(s3, bucket, f"b{n}/") == b"".join(recs), timeout=60,
                 what="the 10 records in one object")
        log = d.log()
        assert "clients trust the CA bundle too" in log
        assert "builder error" not in log and "will retry" not in log, log
    # The certificate that cannot be used is skipped, with one warning saying how many.
    assert re.search(r"WARN .*1 of the \d+ certificates in the CA bundle cannot be used", log), log


@pytest.mark.skipif(not SYSTEM_BUNDLE.exists(), reason="no system CA bundle")
def test_a_bundle_of_the_system_and_a_private_ca_reaches_an_https_receiver(
        s3, bucket, daemon_factory, pki, tmp_path):
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(SYSTEM_BUNDLE.read_bytes() + Path(pki["ca"]).read_bytes())
    hec = HecReceiver().serve_tls(pki["server"], pki["server_key"])
    try:
        d = daemon_factory(SPLUNK, extra_env={"AWS_CA_BUNDLE": str(bundle)})
        fh = d.firehose()
        create_splunk(fh, "hec", hec, bucket)
        put(fh, "hec", [b'{"n": %d}\n' % i for i in range(10)])
        wait_for(lambda: len(hec.indexed) == 10, what="10 events indexed over HTTPS")
    finally:
        hec.close()


def test_a_file_without_a_usable_certificate_is_refused_at_start(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('listen = "127.0.0.1:0"\n')
    for name, text in [("empty.pem", b"no certificates here\n"),
                       ("broken.pem", b"-----BEGIN CERTIFICATE-----\nAAAA\n"
                                      b"-----END CERTIFICATE-----\n")]:
        path = tmp_path / name
        path.write_bytes(text)
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env["AWS_CA_BUNDLE"] = str(path)
        out = subprocess.run([BIN, "serve", "--config", str(config), "--data-dir",
                              str(tmp_path / "data")], env=env, capture_output=True,
                             text=True, timeout=60)
        assert out.returncode != 0, out.stderr
        assert str(path) in out.stderr and "CA bundle" in out.stderr, out.stderr


def blocked_metric(d, stream, reason):
    m = re.search(rf'^hosepipe_delivery_blocked\{{stream="{stream}",reason="{reason}"\}} (\S+)$',
                  d.metrics(), re.M)
    return float(m.group(1)) if m else None


def status_text(d):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    out = subprocess.run([BIN, "status", "--endpoint", d.url], env=env, capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_a_missing_bucket_is_named_and_its_records_wait_until_it_exists(s3, daemon_factory):
    d = daemon_factory()
    fh = d.firehose()
    missing = f"not-yet-{os.getpid()}"
    create(fh, "lost", missing)
    assert blocked_metric(d, "lost", "no_such_bucket") == 0
    recs = records(25)
    put_all(fh, "lost", recs)
    description = wait_for(
        lambda: fh.describe_delivery_stream(DeliveryStreamName="lost")[
            "DeliveryStreamDescription"].get("FailureDescription"),
        timeout=60, what="a FailureDescription")
    assert description["Type"] == "UNKNOWN_ERROR"
    assert "no_such_bucket" in description["Details"], description
    assert fh.describe_delivery_stream(DeliveryStreamName="lost")[
        "DeliveryStreamDescription"]["DeliveryStreamStatus"] == "ACTIVE"
    assert blocked_metric(d, "lost", "no_such_bucket") == 1
    wait_for(lambda: "BLOCKED (no_such_bucket)" in status_text(d), what="status names it")
    # Logged once however many attempts fail.
    wait_for(lambda: re.search(r'hosepipe_delivery_blocked_attempts_total\{stream="lost",'
                               r'reason="no_such_bucket"\} ([3-9]|\d\d)', d.metrics()),
             timeout=60, what="three blocked attempts")
    assert d.log().count("S3 delivery is blocked (no_such_bucket)") == 1, d.log()

    s3.create_bucket(missing)
    wait_for(lambda: bodies(s3, missing) == b"".join(recs), timeout=90,
             what="the records delivered once the bucket exists")
    wait_for(lambda: "FailureDescription" not in fh.describe_delivery_stream(
        DeliveryStreamName="lost")["DeliveryStreamDescription"], what="the failure cleared")
    assert blocked_metric(d, "lost", "no_such_bucket") == 0
    assert "S3 delivery is no longer blocked" in d.log()


def put_until_denied(d, name, bucket, n):
    """A stream to `bucket` given `n` records, once S3 has refused them AccessDenied."""
    fh = d.firehose()
    create(fh, name, bucket)
    recs = records(n)
    put_all(fh, name, recs)
    wait_for(lambda: blocked_metric(d, name, "access_denied") == 1, timeout=60,
             what=f"{name}: access_denied blocked")
    return recs


def test_access_denied_is_named_and_the_spool_keeps_the_records(s3, bucket, daemon_factory):
    d = daemon_factory(extra_env={"AWS_ACCESS_KEY_ID": S3_READER_AK,
                                  "AWS_SECRET_ACCESS_KEY": S3_READER_SK})
    recs = put_until_denied(d, "denied", bucket, 15)
    assert "BLOCKED (access_denied)" in status_text(d)
    assert s3.objects(bucket) == []
    # The operator fixes the credentials and restarts: the spool still holds every record.
    d.stop()
    d.env.update({"AWS_ACCESS_KEY_ID": S3_AK, "AWS_SECRET_ACCESS_KEY": S3_SK})
    d.start()
    wait_for(lambda: bodies(s3, bucket) == b"".join(recs), timeout=90,
             what="the records delivered with the right credentials")


class ForwardProxy:
    """proxy.py, a real forward proxy (plain HTTP and CONNECT), logging each request it
    carries."""

    def __init__(self, root):
        from conftest import free_port
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(root) / "proxy.log"
        proxy = Path(os.sys.executable).parent / "proxy"
        self.proc = subprocess.Popen(
            [str(proxy), "--hostname", "127.0.0.1", "--port", str(self.port),
             "--num-acceptors", "1"],
            stdout=open(self.log_path, "wb"), stderr=subprocess.STDOUT)
        wait_for(lambda: "access_log" in self.carry_probe(), timeout=60, what="proxy.py")

    def carry_probe(self):
        import requests
        try:
            requests.get("http://127.0.0.1:9/", proxies={"http": self.url}, timeout=2)
        except Exception:  # noqa: BLE001 - the probe's target is closed; the log is the point
            pass
        return self.log()

    def log(self):
        return self.log_path.read_text(errors="replace")

    def carried(self, needle):
        return [line for line in self.log().splitlines()
                if "access_log" in line and needle in line]

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=20)


@pytest.fixture
def forward_proxy(tmp_path):
    p = ForwardProxy(tmp_path)
    yield p
    p.stop()


def test_http_proxy_and_no_proxy_are_honoured(s3, bucket, daemon_factory, forward_proxy, pki):
    s3_host = s3.url.removeprefix("http://")
    # Through the proxy: the S3 PUT of the object is one of the requests it carried.
    d = daemon_factory(extra_env={"HTTP_PROXY": forward_proxy.url,
                                  "HTTPS_PROXY": forward_proxy.url})
    fh = d.firehose()
    create(fh, "proxied", bucket, Prefix="proxied/")
    recs = records(5)
    put_all(fh, "proxied", recs)
    wait_for(lambda: bodies(s3, bucket, "proxied/") == b"".join(recs), timeout=60,
             what="the records delivered through the proxy")
    # proxy.py logs a request when its client connection closes: stop the daemon first.
    d.stop()
    assert any(f"PUT {s3_host}/{bucket}/proxied/" in line
               for line in forward_proxy.carried(s3_host)), forward_proxy.log()

    # An HTTPS destination is reached through the proxy's CONNECT tunnel.
    hec = HecReceiver().serve_tls(pki["server"], pki["server_key"])
    try:
        t = daemon_factory(f'ca_bundle = "{pki["ca"]}"\n' + SPLUNK,
                           extra_env={"HTTPS_PROXY": forward_proxy.url})
        create_splunk(t.firehose(), "tunnelled", hec, bucket)
        put(t.firehose(), "tunnelled", [b'{"n": %d}\n' % i for i in range(4)])
        wait_for(lambda: len(hec.indexed) == 4, what="4 events through the tunnel")
        t.stop()
        hec_host = hec.url.removeprefix("https://").split("/")[0]
        assert forward_proxy.carried(f"CONNECT {hec_host}") or \
            forward_proxy.carried(hec_host), forward_proxy.log()
    finally:
        hec.close()

    # NO_PROXY names the S3 host: its requests bypass the proxy.
    before = len(forward_proxy.carried(s3_host))
    n = daemon_factory(extra_env={"HTTP_PROXY": forward_proxy.url,
                                  "NO_PROXY": "127.0.0.1,localhost"})
    create(n.firehose(), "direct", bucket, Prefix="direct/")
    direct = records(5)
    put_all(n.firehose(), "direct", direct)
    wait_for(lambda: bodies(s3, bucket, "direct/") == b"".join(direct), timeout=60,
             what="the records delivered directly")
    n.stop()
    assert len(forward_proxy.carried(s3_host)) == before, forward_proxy.log()


# -- credentials as the SDKs resolve them ----------------------------------------------------

NO_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


def profile_files(tmp_path, credentials="", config=""):
    (tmp_path / "credentials").write_text(credentials)
    (tmp_path / "config").write_text(config)
    return {"AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "credentials"),
            "AWS_CONFIG_FILE": str(tmp_path / "config"), "HOME": str(tmp_path)}


def keys_section(name, ak, sk):
    return f"[{name}]\naws_access_key_id = {ak}\naws_secret_access_key = {sk}\n"


def test_a_profile_file_and_its_rotated_keys(s3, bucket, daemon_factory, tmp_path):
    """AWS_PROFILE names a profile of the shared credentials file; the keys in it cannot
    write, and once the file holds keys that can, delivery resumes without a restart."""
    env = profile_files(tmp_path, keys_section("ci", S3_READER_AK, S3_READER_SK))
    d = daemon_factory(extra_env={**env, "AWS_PROFILE": "ci"}, drop_env=NO_KEYS)
    assert "credentials from " + str(tmp_path / "credentials") + " [ci]" in d.log()
    recs = put_until_denied(d, "rotating", bucket, 12)
    (tmp_path / "credentials").write_text(keys_section("ci", S3_AK, S3_SK))
    wait_for(lambda: bodies(s3, bucket) == b"".join(recs), timeout=90,
             what="the records delivered with the rotated keys")
    assert "credentials refreshed" in d.log()


def test_credential_process(s3, bucket, daemon_factory, tmp_path):
    doc = json.dumps({"Version": 1, "AccessKeyId": S3_AK, "SecretAccessKey": S3_SK})
    env = profile_files(tmp_path, config=f"[profile proc]\ncredential_process = printf '%s' '{doc}'\n")
    d = daemon_factory(extra_env={**env, "AWS_PROFILE": "proc"}, drop_env=NO_KEYS)
    create(d.firehose(), "proc", bucket)
    recs = records(5)
    put_all(d.firehose(), "proc", recs)
    wait_for(lambda: bodies(s3, bucket) == b"".join(recs), timeout=60, what="delivered")
    assert "credential_process of profile 'proc'" in d.log()


class MetadataStandIn:
    """The EC2 instance metadata service (IMDSv2: PUT /latest/api/token, then the role and its
    credentials with the token) and the ECS container credentials endpoint, written from
    their documentation. Credentials expire `ttl` seconds after they are handed out."""

    def __init__(self, ak, sk, ttl=3600, token="container-token"):
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        stand_in = self
        self.fetches = 0
        self.ttl = ttl

        def document():
            stand_in.fetches += 1
            expires = datetime.datetime.now(datetime.timezone.utc) + \
                datetime.timedelta(seconds=stand_in.ttl)
            return json.dumps({"Code": "Success", "AccessKeyId": ak, "SecretAccessKey": sk,
                               "Token": f"session-{stand_in.fetches}",
                               "Expiration": expires.strftime("%Y-%m-%dT%H:%M:%SZ")}).encode()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def answer(self, status, body=b""):
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_PUT(self):
                if self.path == "/latest/api/token" and \
                        self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
                    return self.answer(200, b"imds-session-token")
                self.answer(400)

            def do_GET(self):
                if self.path.startswith("/latest/"):
                    if self.headers.get("X-aws-ec2-metadata-token") != "imds-session-token":
                        return self.answer(401)  # IMDSv2 only
                    if self.path == "/latest/meta-data/iam/security-credentials/":
                        return self.answer(200, b"hosepipe-node")
                    if self.path == "/latest/meta-data/iam/security-credentials/hosepipe-node":
                        return self.answer(200, document())
                    return self.answer(404)
                if self.path == "/v2/credentials/task":
                    if self.headers.get("Authorization") != token:
                        return self.answer(403)
                    return self.answer(200, document())
                self.answer(404)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


def moto_bucket(moto, name):
    """A bucket in moto's S3, which takes any keys and session tokens (SeaweedFS refuses a
    session token it did not issue itself): what the daemon signed with shows in its log."""
    import boto3
    s3c = boto3.client("s3", endpoint_url=moto, region_name="us-east-1",
                       aws_access_key_id="x", aws_secret_access_key="x")
    s3c.create_bucket(Bucket=name)
    return s3c


def objects_under(s3c, bucket, prefix=""):
    return s3c.list_objects_v2(Bucket=bucket, Prefix=prefix).get("KeyCount", 0)


def test_the_ec2_instance_role_through_imdsv2(daemon_factory, moto):
    s3c = moto_bucket(moto, "imds")
    imds = MetadataStandIn("ASIAIMDSROLE", "role-secret")
    try:
        d = daemon_factory('object_store = "s3"\n',
                           extra_env={"AWS_EC2_METADATA_SERVICE_ENDPOINT": imds.url,
                                      "AWS_ENDPOINT_URL_S3": moto},
                           drop_env=NO_KEYS)
        create(d.firehose(), "imds", "imds")
        put_all(d.firehose(), "imds", records(5))
        wait_for(lambda: objects_under(s3c, "imds") >= 1, timeout=60, what="delivered")
        assert re.search(r"credentials fetched source=the EC2 instance role \(IMDSv2 at "
                         r"\S+\) access_key_id=ASIAIMDSROLE", d.log()), d.log()
    finally:
        imds.close()


def test_container_credentials_are_fetched_again_before_they_expire(daemon_factory, moto):
    # Credentials that expire within the five-minute margin are fetched again at each use.
    s3c = moto_bucket(moto, "task")
    container = MetadataStandIn("ASIATASKROLE", "task-secret", ttl=200)
    try:
        d = daemon_factory(extra_env={
            "AWS_CONTAINER_CREDENTIALS_FULL_URI": f"{container.url}/v2/credentials/task",
            "AWS_CONTAINER_AUTHORIZATION_TOKEN": "container-token",
            "AWS_ENDPOINT_URL_S3": moto}, drop_env=NO_KEYS)
        fh = d.firehose()
        create(fh, "task", "task")
        for n in range(3):
            put_all(fh, "task", records(4, tag=f"batch{n}"))
            wait_for(lambda: objects_under(s3c, "task") >= n + 1, timeout=60,
                     what=f"batch {n}")
        assert container.fetches >= 3, container.fetches
        assert "credentials refreshed" in d.log()
    finally:
        container.close()


def test_a_role_assumed_through_sts_with_a_source_profile_and_a_web_identity(
        daemon_factory, moto, tmp_path):
    """role_arn + source_profile, and AWS_WEB_IDENTITY_TOKEN_FILE + AWS_ROLE_ARN, through
    moto's STS; moto's S3 takes the objects (it accepts any keys, so the log's access key id
    shows whose they were: the role's temporary ASIA… keys)."""
    s3c = moto_bucket(moto, "assumed")
    env = profile_files(tmp_path, keys_section("base", "AKIDBASE", "base-secret"),
                        "[profile writer]\nrole_arn = arn:aws:iam::123456789012:role/writer\n"
                        "source_profile = base\nrole_session_name = hosepipe-test\n")
    common = {"AWS_ENDPOINT_URL_S3": moto, "AWS_ENDPOINT_URL_STS": moto,
              "AWS_REGION": "us-east-1"}
    (tmp_path / "token").write_text("eyJhbGciOiJIUzI1NiJ9.e30.signature")
    for name, extra in [
        ("profile", {"AWS_PROFILE": "writer"}),
        ("webid", {"AWS_WEB_IDENTITY_TOKEN_FILE": str(tmp_path / "token"),
                   "AWS_ROLE_ARN": "arn:aws:iam::123456789012:role/irsa"}),
    ]:
        # The web identity case sees no shared files (the chain would take a profile first).
        files = env if name == "profile" else {"HOME": str(tmp_path / "elsewhere")}
        d = daemon_factory(extra_env={**files, **common, **extra}, drop_env=NO_KEYS)
        create(d.firehose(), name, "assumed", Prefix=f"{name}/")
        put_all(d.firehose(), name, records(3))
        wait_for(lambda: objects_under(s3c, "assumed", f"{name}/") >= 1, timeout=60,
                 what=f"an object via {name}")
        fetched = [line for line in d.log().splitlines()
                   if "credentials fetched source=role" in line]
        assert fetched and "assumed through STS" in fetched[0], d.log()
        assert re.search(r"access_key_id=ASIA", fetched[0]), fetched[0]


# -- a fleet's NATS connection over TLS --------------------------------------------------------

@pytest.mark.skipif(not SYSTEM_BUNDLE.exists(), reason="no system CA bundle")
def test_the_nats_connection_trusts_the_ca_bundle_and_a_system_bundle_as_tls_ca_file(
        s3, bucket, daemon_factory, pki, tmp_path):
    """A JetStream server serving TLS with a private CA's certificate: a node trusts it through
    AWS_CA_BUNDLE, or through `[log] tls_ca_file` naming the system's bundle with the CA (and a
    certificate no TLS stack takes, skipped); a node trusting neither cannot connect."""
    from conftest import stable_port
    from nats_cluster import nats_server
    from test_durability import delivered_ids, stream_toml
    port, http_port = stable_port(), stable_port()
    (tmp_path / "js").mkdir()
    conf = tmp_path / "nats.conf"
    conf.write_text(f'listen: 127.0.0.1:{port}\nhttp: 127.0.0.1:{http_port}\n'
                    f'jetstream {{ store_dir: "{tmp_path / "js"}" }}\n'
                    f'tls {{ cert_file: "{pki["server"]}", key_file: "{pki["server_key"]}" }}\n')
    server = subprocess.Popen([nats_server(), "-c", str(conf)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.STDOUT)
    try:
        import requests
        wait_for(lambda: requests.get(f"http://127.0.0.1:{http_port}/healthz",
                                      timeout=1).status_code == 200, what="nats-server")
        mixed = tmp_path / "system-and-ca.pem"
        mixed.write_bytes(BROKEN_CERT + SYSTEM_BUNDLE.read_bytes() + Path(pki["ca"]).read_bytes())

        def log(extra=""):
            return (f'[log]\nbackend = "jetstream"\nservers = ["tls://127.0.0.1:{port}"]\n'
                    f'replicas = 1\nprefix = "tls"\nrequire_tls = true\n{extra}')

        bundle = tmp_path / "bundle.pem"
        bundle.write_bytes(SYSTEM_BUNDLE.read_bytes() + Path(pki["ca"]).read_bytes())
        for name, config, env in [
            ("viaenv", log(), {"AWS_CA_BUNDLE": str(bundle)}),
            ("viafile", log(f'tls_ca_file = "{mixed}"\n'), {}),
        ]:
            d = daemon_factory(config + stream_toml(name, bucket, f"{name}/"), extra_env=env)
            ids = [f"{name}-{i}" for i in range(20)]
            d.firehose().put_record_batch(DeliveryStreamName=name, Records=[
                {"Data": f"{r}\n".encode()} for r in ids])
            wait_for(lambda: sorted(delivered_ids(s3, bucket, f"{name}/")) == sorted(ids),
                     timeout=60, what=f"{name}: records through JetStream over TLS")
            d.stop()
        assert "certificates of log.tls_ca_file cannot be used" in d.log()
        # Trusting neither: the handshake fails and the node says so.
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        cfg = tmp_path / "untrusting.toml"
        cfg.write_text('listen = "127.0.0.1:0"\n' + log())
        out = subprocess.run([BIN, "serve", "--config", str(cfg), "--data-dir",
                              str(tmp_path / "untrusting")], env=env, capture_output=True,
                             text=True, timeout=60)
        assert out.returncode != 0
        assert "cannot connect to NATS" in out.stderr or "certificate" in out.stderr.lower(), \
            out.stderr[-2000:]
    finally:
        server.terminate()
        server.wait()
