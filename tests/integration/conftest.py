"""Fixtures: a real SeaweedFS S3 server and real hosepipe daemons, on 127.0.0.1.

The test command (.ci/run) builds the binary once and passes its path in HOSEPIPE_BIN.
"""
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import boto3
import pytest
import requests
from botocore.config import Config

ROOT = Path(__file__).resolve().parents[2]
BIN = os.environ.get("HOSEPIPE_BIN", str(ROOT / "target" / "debug" / "hosepipe"))
S3_AK = "hosepipe-ci"
S3_SK = "hosepipe-ci-secret"
S3_READER_AK = "hosepipe-reader"
S3_READER_SK = "hosepipe-reader-secret"
# The test command runs the suites with AWS_CA_BUNDLE naming the system's CA bundle, as many
# containers and CI runners do; daemons keep it (the other AWS_* variables are the test's).
CA_BUNDLE = os.environ.get("AWS_CA_BUNDLE")
FH_AK = "AKIDHOSEPIPETEST"
FH_SK = "firehose-test-secret"
REGION = "us-east-1"


def port_free(port):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def moto():
    """moto's server: real AWS JSON APIs (Glue, KMS) on 127.0.0.1; yields its URL."""
    port = free_port()
    proc = subprocess.Popen(["moto_server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: requests.get(f"{url}/moto-api/", timeout=1).status_code == 200,
             timeout=60, what="moto server")
    yield url
    proc.terminate()
    proc.wait()


class OpenSearchServer:
    """osmem-server: the OpenSearch API in memory (real `_bulk` item statuses and mapping
    errors). Restartable on the same port; a restart starts empty."""

    def __init__(self):
        import osmem_server
        self.binary = osmem_server.resolve_binary()
        self.port = stable_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = None
        self.start()

    def start(self):
        self.proc = subprocess.Popen([self.binary, "-addr", f"127.0.0.1:{self.port}", "-no-stdin-watch"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: requests.get(f"{self.url}/_cluster/health", timeout=1).status_code == 200,
                 timeout=30, what="osmem-server")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait()

    def count(self, index):
        r = requests.get(f"{self.url}/{index}/_count", timeout=5)
        return r.json()["count"] if r.status_code == 200 else 0

    def search(self, index, query):
        requests.post(f"{self.url}/{index}/_refresh", timeout=5)
        r = requests.post(f"{self.url}/{index}/_search", json={"query": query, "size": 100}, timeout=5)
        return [h["_source"] for h in r.json()["hits"]["hits"]]


@pytest.fixture(scope="module")
def opensearch():
    server = OpenSearchServer()
    yield server
    server.stop()


def _ephemeral_low():
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port_pair():
    """A port whose +10000 neighbour (SeaweedFS's gRPC port) is free too, both below the
    kernel's ephemeral range: a server restarted on them must not find one taken by some
    outgoing connection meanwhile (SeaweedFS then exits: "bind: address already in use")."""
    top = _ephemeral_low() - 10001
    for _ in range(200):
        p = random.randint(10000, top)
        if port_free(p) and port_free(p + 10000):
            return p
    raise RuntimeError("no free port pair")


def stable_port():
    """A free port below the ephemeral range, for a server that is stopped and restarted."""
    return free_port_pair() + 10000


def wait_for(predicate, timeout=30.0, interval=0.1, what="condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except Exception as e:  # noqa: BLE001 - keep polling until the deadline
            last = e
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


class S3Server:
    """SeaweedFS `weed mini` with SigV4 enforced; restartable on the same directory."""

    def __init__(self, root):
        self.dir = Path(root)
        self.dir.mkdir(parents=True, exist_ok=True)
        ports = set()
        while len(ports) < 5:
            ports.add(free_port_pair())
        self.ports = sorted(ports)
        self.port = self.ports[3]
        self.url = f"http://127.0.0.1:{self.port}"
        (self.dir / "s3.json").write_text(json.dumps({"identities": [{
            "name": "ci",
            "credentials": [{"accessKey": S3_AK, "secretKey": S3_SK}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]},
            # Credentials that may read but not write: S3 answers their PUTs 403 AccessDenied.
            {"name": "reader",
             "credentials": [{"accessKey": S3_READER_AK, "secretKey": S3_READER_SK}],
             "actions": ["Read", "List"]}]}))
        self.proc = None
        self.start()

    def start(self):
        weed = shutil.which("weed") or str(Path(os.sys.executable).parent / "weed")
        p1, p2, p3, s3, p5 = self.ports
        log = open(self.dir / "weed.log", "ab")
        self.proc = subprocess.Popen(
            [weed, "mini", f"-dir={self.dir / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
             f"-master.port={p1}", f"-volume.port={p2}", f"-filer.port={p3}", f"-s3.port={s3}",
             f"-admin.port={p5}", "-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false",
             "-admin.ui=false", "-master.telemetry=false", "-s3.autoCreateBucket=false",
             f"-s3.config={self.dir / 's3.json'}",
             # Every bucket takes a volume of its own, and `weed mini` otherwise sizes the volume
             # count from free disk (1 GiB each): a CI machine with 30 GiB free stopped taking
             # writes at the 31st test bucket. Volumes are sparse files, so cap them small.
             "-master.volumeSizeLimitMB=64", "-volume.max=4000"],
            stdout=log, stderr=subprocess.STDOUT)
        wait_for(lambda: requests.get(f"{self.url}/healthz", timeout=1).status_code == 200,
                 timeout=60, what="SeaweedFS S3 to answer /healthz")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def client(self):
        return boto3.client("s3", endpoint_url=self.url, aws_access_key_id=S3_AK,
                            aws_secret_access_key=S3_SK, region_name=REGION,
                            config=Config(s3={"addressing_style": "path"},
                                          retries={"max_attempts": 2}))

    def create_bucket(self, name):
        self.client().create_bucket(Bucket=name)
        return name

    def objects(self, bucket, prefix=""):
        """Every object under prefix: [(key, bytes, etag)]."""
        c = self.client()
        out = []
        for page in c.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for o in page.get("Contents", []):
                body = c.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
                out.append((o["Key"], body, o["ETag"]))
        return out


@pytest.fixture(scope="session")
def s3():
    root = tempfile.mkdtemp(prefix="hosepipe-s3-")
    server = S3Server(root)
    yield server
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


_bucket_seq = [0]


@pytest.fixture
def bucket(s3):
    _bucket_seq[0] += 1
    return s3.create_bucket(f"it-{os.getpid()}-{_bucket_seq[0]}-{random.randint(0, 10**6)}")


class Daemon:
    def __init__(self, s3, config_text="", data_dir=None, auth=True, extra_env=None, listen=None,
                 drop_env=()):
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="hosepipe-data-"))
        self.config = self.data_dir.parent / f"{self.data_dir.name}.toml"
        listen = listen or "127.0.0.1:0"
        # The test's config first, so it may set top-level keys; the key table after it.
        text = f'listen = "{listen}"\nshutdown_timeout_seconds = 60\n{config_text}\n'
        if auth:
            text += f'[[auth.keys]]\naccess_key_id = "{FH_AK}"\nsecret_access_key = "{FH_SK}"\n'
        self.config.write_text(text)
        self.env = dict(os.environ)
        for k in list(self.env):
            if k.startswith("AWS_") and k != "AWS_CA_BUNDLE":
                del self.env[k]
        if s3 is not None:
            self.env.update({"AWS_ENDPOINT_URL_S3": s3.url, "AWS_ACCESS_KEY_ID": S3_AK,
                             "AWS_SECRET_ACCESS_KEY": S3_SK, "AWS_REGION": REGION})
        self.env.update(extra_env or {})
        for k in drop_env:
            self.env.pop(k, None)
        self.env.setdefault("RUST_LOG", "info,hosepipe=debug")
        self.proc = None
        self.url = None
        self.log_lines = []
        self.start()

    def start(self):
        self.log_lines = []
        self.proc = subprocess.Popen(
            [BIN, "serve", "--config", str(self.config), "--data-dir", str(self.data_dir)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=self.env, text=True)
        threading.Thread(target=self._drain, args=(self.proc.stderr,), daemon=True).start()
        line = self.proc.stdout.readline()
        m = re.search(r"listening on (https?://\S+)", line)
        if not m:
            self.proc.wait(timeout=10)
            raise AssertionError(f"daemon did not start: {line!r}\n" + "".join(self.log_lines))
        self.url = m.group(1)
        threading.Thread(target=self._drain, args=(self.proc.stdout,), daemon=True).start()

    def _drain(self, stream):
        for line in stream:
            self.log_lines.append(line)

    def log(self):
        return "".join(self.log_lines)

    def crash(self):
        """kill -9: no flush, no checkpoint, no goodbye."""
        self.proc.kill()
        self.proc.wait()

    def rss_peak_kib(self):
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1))

    def stop(self, sig=signal.SIGTERM, timeout=90):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                return self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise
        return self.proc.returncode if self.proc else None

    def firehose(self, ak=FH_AK, sk=FH_SK):
        return boto3.client("firehose", endpoint_url=self.url, aws_access_key_id=ak,
                            aws_secret_access_key=sk, region_name=REGION,
                            config=Config(retries={"max_attempts": 1}))

    def metrics(self):
        return requests.get(f"{self.url}/metrics", timeout=5).text

    def metric(self, name, stream):
        m = re.search(rf'^{re.escape(name)}\{{stream="{re.escape(stream)}"\}} (\S+)$',
                      self.metrics(), re.M)
        return float(m.group(1)) if m else 0.0


@pytest.fixture
def daemon_factory(s3):
    started = []

    def make(config_text="", **kw):
        d = Daemon(s3, config_text, **kw)
        started.append(d)
        return d

    yield make
    for d in started:
        try:
            d.stop()
        except Exception:  # noqa: BLE001 - best effort cleanup
            pass


@pytest.fixture
def daemon(daemon_factory):
    return daemon_factory()


def wrap_tls(server, url, cert, key):
    """Makes an http.server serve HTTPS with `cert` (a chain, PEM) and `key`; its new URL."""
    import ssl
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    return url.replace("http://", "https://")


def signed_call(url, target, body, ak=FH_AK, sk=FH_SK, sign=True):
    """A raw JSON 1.1 call, signed with botocore's SigV4 signer (for requests boto3 would refuse
    to send)."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    headers = {"Content-Type": "application/x-amz-json-1.1"}
    if target is not None:
        headers["X-Amz-Target"] = f"Firehose_20150804.{target}"
    req = AWSRequest(method="POST", url=url + "/", data=data, headers=headers)
    if sign:
        SigV4Auth(Credentials(ak, sk), "firehose", REGION).add_auth(req)
    prepared = req.prepare()
    return requests.post(prepared.url, data=prepared.body, headers=dict(prepared.headers),
                         timeout=30)
