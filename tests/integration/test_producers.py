"""The producers: `hosepipe agent` tailing files into a daemon that delivers to the real S3
server (SigV4 enforced, keys from the environment), and `hosepipe generate`."""
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import requests

from conftest import BIN, FH_AK, FH_SK, REGION, ROOT, free_port, stable_port, wait_for

BATCH = 50  # the flows' maxBufferSizeRecords: the bound on re-sent lines per restart


def create_stream(fh, name, bucket):
    fh.create_delivery_stream(
        DeliveryStreamName=name,
        ExtendedS3DestinationConfiguration={
            "RoleARN": "arn:aws:iam::000000000000:role/firehose",
            "BucketARN": f"arn:aws:s3:::{bucket}", "Prefix": f"{name}/",
            "BufferingHints": {"SizeInMBs": 1, "IntervalInSeconds": 1}})


def producer_env():
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update({"AWS_ACCESS_KEY_ID": FH_AK, "AWS_SECRET_ACCESS_KEY": FH_SK,
                "AWS_REGION": REGION, "RUST_LOG": "info"})
    return env


class Agent:
    def __init__(self, config_path, env=None):
        self.config_path = config_path
        self.env = env or producer_env()
        self.proc = None
        self.lines = []
        self.start()

    def start(self):
        self.proc = subprocess.Popen([BIN, "agent", "--config", str(self.config_path)],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     env=self.env, text=True)
        threading.Thread(target=lambda p=self.proc: self.lines.extend(p.stdout), daemon=True).start()

    def log(self):
        return "".join(self.lines)

    def crash(self):
        self.proc.kill()
        self.proc.wait()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)
        return self.proc.returncode


def delivered_lines(s3, bucket, prefix):
    out = []
    for _key, body, _etag in s3.objects(bucket, prefix):
        out.extend(body.decode().splitlines())
    return out


def agent_metric(port, name):
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return sum(float(v) for v in re.findall(rf"^hosepipe_agent_{name}_total\{{[^}}]*\}} (\S+)$",
                                             text, re.M))


class LogWriter:
    """Numbered lines, long enough (80 B) that a copy of a file is recognised by its first bytes."""

    def __init__(self, directory):
        self.dir = Path(directory)
        self.n = 0
        self.written = []

    def line(self, tag):
        self.n += 1
        text = f"L{self.n:06} {tag} " + "x" * 60
        self.written.append(text)
        return text + "\n"

    def write(self, name, count, tag, partial_last=False):
        with open(self.dir / name, "a") as f:
            for i in range(count):
                text = self.line(tag)
                if partial_last and i == count - 1:
                    f.write(text[:20])
                    f.flush()
                    time.sleep(0.5)
                    f.write(text[20:])
                else:
                    f.write(text)


def test_agent_follows_rotation_truncation_and_restarts(s3, bucket, daemon_factory, tmp_path):
    port = stable_port()
    d = daemon_factory(listen=f"127.0.0.1:{port}")
    create_stream(d.firehose(), "tailed", bucket)
    logs = tmp_path / "logs"
    logs.mkdir()
    metrics_port = free_port()
    # The agent's own TOML spelling; keys come from the environment (SigV4 is enforced).
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f"""
firehose_endpoint = "{d.url}"
checkpoint_file = "{tmp_path / 'checkpoints.json'}"
metrics_listen = "127.0.0.1:{metrics_port}"
log_status_reporting_period_seconds = 1
[[flows]]
file_pattern = "{logs}/app.log*"
delivery_stream = "tailed"
initial_position = "START_OF_FILE"
max_buffer_age_millis = 1000
max_buffer_size_records = {BATCH}
retry_max_backoff_millis = 1000
""")
    w = LogWriter(logs)
    agent = Agent(cfg)
    sent = lambda: agent_metric(metrics_port, "records_sent")  # noqa: E731
    try:
        # Written before and after the agent starts; the last line arrives in two writes.
        w.write("app.log", 200, "start")
        w.write("app.log", 100, "append", partial_last=True)
        wait_for(lambda: sent() >= 300, timeout=60, what="first 300 lines sent")

        # logrotate's default: rename, the writer finishes a few lines in the old file, a new
        # file is created.
        os.rename(logs / "app.log", logs / "app.log.1")
        w.write("app.log.1", 5, "late-in-rotated")
        w.write("app.log", 100, "after-rename")
        wait_for(lambda: sent() >= 405, timeout=60, what="rename rotation")

        # copytruncate: lines written since the last poll are only in the copy.
        w.write("app.log", 50, "before-copy")
        shutil.copyfile(logs / "app.log", logs / "app.log.2")
        with open(logs / "app.log", "r+") as f:
            f.truncate(0)
        w.write("app.log", 50, "after-copytruncate")
        wait_for(lambda: sent() >= 505, timeout=60, what="copytruncate")

        # Plain truncation, then new lines.
        with open(logs / "app.log", "r+") as f:
            f.truncate(0)
        w.write("app.log", 50, "after-truncate")
        wait_for(lambda: sent() >= 555, timeout=60, what="truncation")

        # The agent dies mid-stream (kill -9) and comes back.
        for _ in range(5):
            w.write("app.log", 100, "during-crash")
            time.sleep(0.1)
        agent.crash()
        w.write("app.log", 100, "while-agent-down")
        agent = Agent(cfg)
        wait_for(lambda: agent_metric(metrics_port, "records_sent") > 0, timeout=60,
                 what="restarted agent sending")

        # The daemon stops and restarts on the same address; the agent retries meanwhile.
        before = len(w.written)
        wait_for(lambda: len(set(delivered_lines(s3, bucket, "tailed/"))) >= before - 300,
                 timeout=60, what="most lines delivered before the daemon restarts")
        d.stop()
        w.write("app.log", 100, "daemon-down")
        time.sleep(2)
        d.start()
        w.write("app.log", 100, "daemon-back")

        expected = set(w.written)
        wait_for(lambda: expected <= set(delivered_lines(s3, bucket, "tailed/")),
                 timeout=120, what="every line delivered")
        # The outage was seen, and ridden out by retrying.
        assert agent_metric(metrics_port, "service_errors") > 0, agent.log()[-3000:]
        # Progress lines and the lag gauge (all sent: no lag left).
        assert re.search(r"progress.*parsed=\d+ sent=\d+ failed=\d+.*lag=\d+B", agent.log())
        wait_for(lambda: not re.search(r'^hosepipe_agent_file_lag_bytes\{.*\} [1-9]',
                                       requests.get(f"http://127.0.0.1:{metrics_port}/metrics").text,
                                       re.M), what="lag 0")
    finally:
        agent.stop()
    got = delivered_lines(s3, bucket, "tailed/")
    missing = set(w.written) - set(got)
    assert not missing, f"lost {len(missing)} lines, e.g. {sorted(missing)[:3]}"
    assert set(got) <= set(w.written), "only written lines, whole"
    dups = len(got) - len(set(got))
    print(f"\nagent: {len(w.written)} lines written, {len(got)} delivered, {dups} re-sent "
          f"(bound: {BATCH} per agent crash + {BATCH} per daemon restart)")
    assert dups <= 2 * BATCH, agent.log()[-3000:]
    # Rotation and copytruncate themselves re-send nothing: every duplicate is from the crash
    # or the daemon restart.
    by_tag = {}
    for line in got:
        by_tag.setdefault(line.split()[1], []).append(line)
    for tag in ("start", "append", "late-in-rotated", "after-rename", "before-copy",
                "after-copytruncate", "after-truncate"):
        assert len(by_tag[tag]) == len(set(by_tag[tag])), f"{tag} lines re-sent"


def test_kinesis_agent_json_with_logtojson_combined(s3, bucket, daemon_factory, tmp_path):
    d = daemon_factory()
    create_stream(d.firehose(), "apache", bucket)
    logs = tmp_path / "httpd"
    logs.mkdir()
    # As in the Kinesis Agent docs: camelCase, dotted globals, settings hosepipe ignores.
    cfg = tmp_path / "agent.json"
    cfg.write_text(json.dumps({
        "cloudwatch.emitMetrics": False,
        "firehose.endpoint": d.url,
        "awsAccessKeyId": FH_AK,
        "awsSecretAccessKey": FH_SK,
        "checkpointFile": str(tmp_path / "cp.json"),
        "flows": [{
            "filePattern": f"{logs}/access_log*",
            "deliveryStream": "apache",
            "initialPosition": "START_OF_FILE",
            "maxBufferAgeMillis": 1000,
            "dataProcessingOptions": [{"optionName": "LOGTOJSON", "logFormat": "COMBINEDAPACHELOG"}],
        }],
    }, indent=2))
    (logs / "access_log").write_text(
        '192.168.1.20 - alice [10/Oct/2000:13:55:36 -0700] "GET /apache_pb.gif HTTP/1.0" 200 2326 '
        '"http://www.example.com/start.html" "Mozilla/4.08 [en] (Win98; I ;Nav)"\n'
        '64.242.88.10 - - [07/Mar/2004:16:10:02 -0800] "GET /mailman/listinfo/hsdivision HTTP/1.1" '
        '404 - "-" "curl/8.5.0"\n'
        'this line is not an access log line\n')
    agent = Agent(cfg)
    try:
        got = wait_for(lambda: (lambda l: l if len(l) >= 3 else None)(
            delivered_lines(s3, bucket, "apache/")), timeout=60, what="3 records")
    finally:
        agent.stop()
    assert [json.loads(g) for g in got[:2]] == [
        {"host": "192.168.1.20", "ident": None, "authuser": "alice",
         "datetime": "10/Oct/2000:13:55:36 -0700", "request": "GET /apache_pb.gif HTTP/1.0",
         "response": "200", "bytes": "2326", "referrer": "http://www.example.com/start.html",
         "agent": "Mozilla/4.08 [en] (Win98; I ;Nav)"},
        {"host": "64.242.88.10", "ident": None, "authuser": None,
         "datetime": "07/Mar/2004:16:10:02 -0800",
         "request": "GET /mailman/listinfo/hsdivision HTTP/1.1", "response": "404",
         "bytes": None, "referrer": None, "agent": "curl/8.5.0"},
    ]
    # A line the format does not match is sent as read, and said so: never dropped.
    assert got[2] == "this line is not an access log line"
    assert "record not converted" in agent.log()
    assert "cloudwatch.emitMetrics: a Kinesis Agent setting hosepipe does not use" in agent.log()


def one_file_agent_json(tmp_path, endpoint, stream, **flow):
    """An agent.json with one flow tailing tmp_path/app.log into `stream`."""
    cfg = tmp_path / "agent.json"
    cfg.write_text(json.dumps({
        "firehose.endpoint": endpoint, "checkpointFile": str(tmp_path / "cp.json"),
        "flows": [{"filePattern": f"{tmp_path}/app.log", "deliveryStream": stream,
                   "maxBufferAgeMillis": 1000, **flow}]}))
    return cfg


def test_agent_signs_with_the_ec2_instance_role_from_imds(s3, bucket, daemon_factory, moto,
                                                          tmp_path):
    """No keys anywhere but the instance metadata service (moto's IMDSv2): the agent fetches
    the role's temporary credentials and signs with them, session token included."""
    d = daemon_factory('[[auth.keys]]\naccess_key_id = "test-key"\n'
                       'secret_access_key = "test-secret-key"\n')
    create_stream(d.firehose(), "imds", bucket)
    (tmp_path / "app.log").write_text("signed by the instance role\n")
    cfg = one_file_agent_json(tmp_path, d.url, "imds", initialPosition="START_OF_FILE")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update({"HOME": str(tmp_path), "AWS_EC2_METADATA_SERVICE_ENDPOINT": moto,
                "AWS_REGION": REGION, "RUST_LOG": "info"})
    agent = Agent(cfg, env=env)
    try:
        got = wait_for(lambda: delivered_lines(s3, bucket, "imds/"), timeout=60,
                       what="the line delivered")
    finally:
        agent.stop()
    assert got == ["signed by the instance role"]
    assert "the EC2 instance role default-role (IMDSv2)" in agent.log()


def test_agent_packs_lines_with_aggregated_record_size(s3, bucket, daemon, tmp_path):
    create_stream(daemon.firehose(), "packed", bucket)
    w = LogWriter(tmp_path)
    w.write("app.log", 10, "packed")  # 80 B each: 3 fit in 300 B
    cfg = one_file_agent_json(tmp_path, daemon.url, "packed", initialPosition="START_OF_FILE",
                              aggregatedRecordSizeBytes=300)
    agent = Agent(cfg)
    try:
        got = wait_for(lambda: (lambda l: l if len(l) >= 10 else None)(
            delivered_lines(s3, bucket, "packed/")), timeout=60, what="10 lines")
    finally:
        agent.stop()
    assert got == w.written
    assert daemon.metric("hosepipe_incoming_records_total", "packed") == 4


def test_end_of_file_skips_old_lines_across_restarts(s3, bucket, daemon, tmp_path):
    create_stream(daemon.firehose(), "tailend", bucket)
    (tmp_path / "app.log").write_text("old line, before the agent\n" * 5)
    # initialPosition: END_OF_FILE (the default)
    cfg = one_file_agent_json(tmp_path, daemon.url, "tailend")
    agent = Agent(cfg)
    wait_for(lambda: "following" in agent.log(), what="the agent following the file")
    time.sleep(0.5)
    agent.stop()
    # Restarted before it sent anything: the old lines are still behind it.
    agent = Agent(cfg)
    try:
        with open(tmp_path / "app.log", "a") as f:
            f.write("new line\n")
        got = wait_for(lambda: delivered_lines(s3, bucket, "tailend/"), timeout=60,
                       what="the new line")
        time.sleep(2)
        got = delivered_lines(s3, bucket, "tailend/")
    finally:
        agent.stop()
    assert got == ["new line"]


def test_agent_refuses_a_bad_config_with_every_error(tmp_path):
    cfg = tmp_path / "agent.json"
    cfg.write_text(json.dumps({"flows": [{"filePattern": "/x", "maxBufferSizeRecords": 501,
                                          "dataProcessingOptions": [{"optionName": "NOPE"}]}]}))
    r = subprocess.run([BIN, "agent", "--config", str(cfg)], capture_output=True, text=True,
                       env=producer_env(), timeout=30)
    assert r.returncode == 2
    for needle in ("flows[0].deliveryStream: required",
                   "flows[0].maxBufferSizeRecords: must be between 1 and 500, got 501",
                   'flows[0].dataProcessingOptions[0].optionName: "NOPE" is not supported'):
        assert needle in r.stderr, r.stderr


def generate(*args, timeout=60):
    return subprocess.run([BIN, "generate", "--quiet", *args], capture_output=True, text=True,
                          env=producer_env(), timeout=timeout)


def test_generate_holds_its_rate_for_ten_seconds(s3, bucket, daemon):
    create_stream(daemon.firehose(), "gen", bucket)
    template = ROOT / "config" / "templates" / "clickstream.json"
    r = generate("--stream", "gen", "--template", str(template), "--rate", "200",
                 "--duration", "10", "--endpoint", daemon.url)
    assert r.returncode == 0, r.stderr
    m = re.search(r"generated (\d+) records, sent (\d+) .* in ([\d.]+) s: ([\d.]+) records/s "
                  r"\(target 200; ([\d.]+)/s over", r.stdout)
    assert m, r.stdout
    produced, sent, secs, rate, gen_rate = (float(x) for x in m.groups())
    tolerance = 0.05
    print(f"\ngenerate: {sent:.0f} records in {secs:.2f} s = {rate:.1f}/s "
          f"(generating: {gen_rate:.1f}/s), target 200/s ± {tolerance:.0%}")
    assert produced == sent == 2000
    assert abs(rate - 200) <= 200 * tolerance
    assert abs(gen_rate - 200) <= 200 * tolerance
    wait_for(lambda: daemon.metric("hosepipe_incoming_records_total", "gen") == 2000,
             what="2000 records in")
    lines = wait_for(lambda: (lambda l: l if len(l) == 2000 else None)(
        delivered_lines(s3, bucket, "gen/")), timeout=60, what="2000 records delivered")
    events = [json.loads(x) for x in lines]
    assert len({e["event_id"] for e in events}) == 2000
    assert {e["action"] for e in events} <= {"view", "click", "purchase"}


def test_generate_templates_render_and_errors_say_where(tmp_path):
    for name in ("clickstream.json", "iot-sensor.json", "apache-access.log"):
        r = generate("--stream", "x", "--template", str(ROOT / "config" / "templates" / name),
                     "--dry-run")
        assert r.returncode == 0, r.stderr
        if name.endswith(".json"):
            json.loads(r.stdout)
        else:
            assert re.match(r'^\S+ - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\] "\w+ ', r.stdout)
    bad = tmp_path / "bad.json"
    bad.write_text('{\n  "a": {{random.nmber(3)}}\n}\n')
    r = generate("--stream", "x", "--template", str(bad), "--count", "1")
    assert r.returncode == 2
    assert "line 2, column 10: unknown function \"random.nmber\"" in r.stderr, r.stderr
