"""What operators run beside the daemon: the build named by `--version`, shell completions and
man pages generated from the CLI, JSON log lines for a collector, the Grafana dashboard and
Prometheus alert rules in deploy/ proven against a real Prometheus scraping a daemon under load
and through an S3 outage, and `hosepipe top` driven through tmux."""
import json
import os
import random
import re
import subprocess
import threading
import time

import requests
import yaml

from conftest import BIN, ROOT, Daemon, S3Server, free_port, wait_for


def run(*args, **kw):
    return subprocess.run([BIN, *args], capture_output=True, text=True, **kw)


def test_version_names_the_build():
    out = run("--version")
    assert out.returncode == 0
    line = out.stdout.strip()
    # hosepipe 0.1.0 (<commit> <date>, <target>, <profile>, features: …)
    assert line.startswith("hosepipe 0.1.0 ("), line
    head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True,
                          text=True, cwd=os.path.dirname(__file__))
    if head.returncode == 0:
        # Built from this checkout (perhaps a commit or two back while developing).
        assert len(line.split("(")[1].split()[0]) == 12, line
    assert "linux" in line and "features:" in line, line


def test_help_shows_the_users_commands_first_and_benchmarks_under_bench():
    top = run("--help").stdout
    commands = [line.split()[0] for line in top.split("Commands:")[1].split("Options:")[0]
                .splitlines() if line.strip()]
    assert commands[:3] == ["serve", "validate", "top"], commands
    assert commands[-2:] == ["bench", "help"], commands
    assert not [c for c in commands if c.startswith("bench-")]
    bench = run("bench", "--help").stdout
    for what in ["ingest", "backlog", "control", "fleet", "convert", "transform", "partition",
                 "encrypt", "opensearch", "splunk", "http-endpoint", "iceberg", "agent"]:
        assert f"\n  {what} " in bench, what
    assert "--records" in run("bench", "iceberg", "--help").stdout
    assert run("bench-convert").returncode == 2


def test_completions_and_man_pages_come_from_the_cli(tmp_path):
    bash = run("completions", "bash")
    assert bash.returncode == 0
    script = tmp_path / "hosepipe.bash"
    script.write_text(bash.stdout)
    # The script is valid bash and completes the commands and their options.
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    for word in ["serve", "status", "generate", "--log-format", "--data-dir"]:
        assert word in bash.stdout, word
    for shell in ["zsh", "fish", "elvish", "powershell"]:
        assert "serve" in run("completions", shell).stdout
    assert run("completions", "tcsh").returncode == 2
    done = run("man", "--dir", str(tmp_path / "man"))
    assert done.returncode == 0, done.stderr
    pages = sorted(p.name for p in (tmp_path / "man").iterdir())
    assert "hosepipe.1" in pages and "hosepipe-serve.1" in pages and "hosepipe-status.1" in pages
    serve = (tmp_path / "man" / "hosepipe-serve.1").read_text()
    assert serve.startswith(".ie") or ".TH" in serve
    assert "hosepipe\\-serve" in serve and "\\-\\-data\\-dir" in serve


def log_lines(config, *args, env=None):
    """The daemon's stderr from its start to its stop."""
    proc = subprocess.Popen([BIN, "serve", "--config", str(config), *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "listening on" in proc.stdout.readline()
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    return [line for line in err.splitlines() if line.strip()]


def test_json_logs_are_one_object_per_line(tmp_path):
    config = tmp_path / "h.toml"
    config.write_text(f'listen = "127.0.0.1:0"\ndata_dir = "{tmp_path / "data"}"\n'
                      'object_store = "local"\n')
    lines = [json.loads(line) for line in log_lines(config, "--log-format", "json")]
    assert lines
    for entry in lines:
        assert {"timestamp", "level", "message", "target"} <= set(entry), entry
    assert any(e["message"].startswith("spool:") and "max_mb" in e for e in lines), lines
    # The environment can say it; text stays the default.
    env = dict(os.environ, HOSEPIPE_LOG_FORMAT="json")
    assert all(json.loads(line) for line in log_lines(config, env=env))
    plain = log_lines(config)
    assert plain and not plain[0].startswith("{"), plain[0]
    bad = run("serve", "--config", str(config), "--log-format", "xml")
    assert bad.returncode == 2 and "xml" in bad.stderr


# -- the Grafana dashboard and the alert rules, against a real Prometheus ----------------------

DASHBOARD = ROOT / "deploy" / "grafana" / "hosepipe.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
ROLE = "arn:aws:iam::000000000000:role/firehose"
CATALOG = """
[catalog.ops.events]
columns = [{ name = "kind", type = "string" }, { name = "n", type = "int" }]
"""


class Prometheus:
    """Debian's prometheus scraping one daemon every second, evaluating `rules` every second."""

    def __init__(self, root, target, rules):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = root / "prometheus.yml"
        config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(rules)],
            "scrape_configs": [{"job_name": "hosepipe",
                                "static_configs": [{"targets": [target]}]}]}))
        self.proc = subprocess.Popen(
            ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={root / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=open(root / "prometheus.log", "wb"), stderr=subprocess.STDOUT)
        wait_for(lambda: requests.get(f"{self.url}/-/ready", timeout=1).status_code == 200,
                 timeout=60, what="Prometheus ready")

    def query(self, expr):
        out = requests.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10).json()
        assert out["status"] == "success", (expr, out)
        return out["data"]["result"]

    def rules(self):
        return requests.get(f"{self.url}/api/v1/rules", timeout=10).json()["data"]["groups"]

    def firing(self):
        alerts = requests.get(f"{self.url}/api/v1/alerts", timeout=10).json()["data"]["alerts"]
        return {a["labels"]["alertname"] for a in alerts if a["state"] == "firing"}

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)


def dashboard_queries():
    """(panel title, expr) of every dashboard query, as Grafana would send them for all streams."""
    dash = json.loads(DASHBOARD.read_text())
    out = []
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"].replace("$__rate_interval", "30s").replace("$stream", ".*")
            out.append((panel["title"], expr))
    return out


def at_test_speed(rules_text):
    """The same rules with time compressed: `for:` durations of 0 s and 30 s windows, so an
    outage of seconds shows what one of minutes would."""
    text = re.sub(r"for: \d+m", "for: 0s", rules_text)
    return re.sub(r"\[\d+m\]", "[30s]", text)


def exported_families(metrics_text):
    names = set()
    for line in metrics_text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names.add(name)
            names.update({"counter": [f"{name}_total"],
                          "histogram": [f"{name}_bucket", f"{name}_sum", f"{name}_count"]}
                         .get(kind, []))
    return names


def test_a_fresh_healthy_daemon_shows_0_not_no_data(tmp_path):
    """Counters every stream has (throttled records, refused puts, error output by type,
    delivery outcomes) exist at 0 from the start: on a healthy daemon with no event of those
    kinds, every panel that applies to its stream returns series."""
    s3 = S3Server(tmp_path / "s3")
    prometheus = d = None
    try:
        bucket = s3.create_bucket("calm")
        d = Daemon(s3)
        fh = d.firehose()
        fh.create_delivery_stream(DeliveryStreamName="calm", ExtendedS3DestinationConfiguration={
            "RoleARN": ROLE, "BucketARN": f"arn:aws:s3:::{bucket}",
            "BufferingHints": {"SizeInMBs": 1, "IntervalInSeconds": 1}})
        fh.put_record_batch(DeliveryStreamName="calm", Records=[{"Data": b"one\n"}])
        rules = tmp_path / "alerts.yml"
        rules.write_text(at_test_speed(ALERTS.read_text()))
        prometheus = Prometheus(tmp_path, d.url.removeprefix("http://"), rules)
        # Panels of features the stream does not use: a transform, conversion, a key service,
        # dynamic partitioning.
        unused = {"Transform records/s", "Conversion records/s", "Key-service calls/s",
                  "Active partitions"}
        queries = [(t, e) for t, e in dashboard_queries() if t not in unused]
        lacking = []

        def all_answer():
            lacking[:] = [t for t, e in queries if not prometheus.query(e)]
            return not lacking

        wait_for(all_answer, timeout=60, interval=1, what="every applicable panel with series")
        for name in ("hosepipe_throttled_records_total", "hosepipe_error_output_records_total",
                     "hosepipe_refused_requests_total"):
            assert all(float(r["value"][1]) == 0 for r in prometheus.query(name)), name
        assert {r["metric"]["error_type"] for r in prometheus.query(
            "hosepipe_error_output_records_total")} >= {"processing-failed", "retention-expired"}
        assert {r["metric"]["reason"] for r in prometheus.query(
            "hosepipe_refused_requests_total")} == {"quota", "spool_full", "memory"}
    finally:
        if prometheus:
            prometheus.stop()
        if d:
            d.stop()
        s3.stop()


def test_the_dashboard_and_alerts_against_a_real_prometheus(tmp_path):
    assert subprocess.run(["promtool", "check", "rules", str(ALERTS)]).returncode == 0
    s3 = S3Server(tmp_path / "s3")
    prometheus = d = None
    try:
        bucket = s3.create_bucket("ops")
        keyring = tmp_path / "keyring.json"
        d = Daemon(s3, CATALOG + f'[encryption]\nkeyring = "{keyring}"\n'
                   '[quotas.web]\nrecords_per_second = 150\n[spool]\nmax_mb = 6\nsegment_mb = 1\n')
        assert subprocess.run([BIN, "keys", "--config", str(d.config), "create", "ops"],
                              env=d.env).returncode == 0
        fh = d.firehose()
        s3_conf = {"RoleARN": ROLE, "BucketARN": f"arn:aws:s3:::{bucket}",
                   "ErrorOutputPrefix": "errors/!{firehose:error-output-type}/",
                   "BufferingHints": {"SizeInMBs": 1, "IntervalInSeconds": 1}}
        # A transform whose malformed lines fail, objects sealed with a local key, a quota.
        fh.create_delivery_stream(DeliveryStreamName="web", ExtendedS3DestinationConfiguration={
            **s3_conf, "Prefix": "web/", "CompressionFormat": "GZIP",
            "EncryptionConfiguration": {"KMSEncryptionConfig": {
                "AWSKMSKeyARN": "arn:aws:kms:us-east-1:000000000000:key/ops"}},
            "ProcessingConfiguration": {"Enabled": True, "Processors": [{"Type": "Lambda",
                "Parameters": [{"ParameterName": "LambdaArn", "ParameterValue":
                                "arn:aws:lambda:us-east-1:000000000000:function:apache-log-to-json"},
                               {"ParameterName": "BufferIntervalInSeconds",
                                "ParameterValue": "0"}]}]}})
        # Parquet conversion (some records do not fit) and dynamic partitioning.
        fh.create_delivery_stream(DeliveryStreamName="tbl", ExtendedS3DestinationConfiguration={
            **s3_conf, "Prefix": "tbl/!{partitionKeyFromQuery:kind}/",
            "BufferingHints": {"SizeInMBs": 64, "IntervalInSeconds": 1},
            "DynamicPartitioningConfiguration": {"Enabled": True},
            "ProcessingConfiguration": {"Enabled": True, "Processors": [
                {"Type": "MetadataExtraction", "Parameters": [
                    {"ParameterName": "MetadataExtractionQuery", "ParameterValue": "{kind: .kind}"},
                    {"ParameterName": "JsonParsingEngine", "ParameterValue": "JQ-1.6"}]}]},
            "DataFormatConversionConfiguration": {
                "Enabled": True,
                "SchemaConfiguration": {"DatabaseName": "ops", "TableName": "events",
                                        "RoleARN": ROLE},
                "InputFormatConfiguration": {"Deserializer": {"OpenXJsonSerDe": {}}},
                "OutputFormatConfiguration": {"Serializer": {"ParquetSerDe": {}}}}})
        rules = tmp_path / "alerts.yml"
        rules.write_text(at_test_speed(ALERTS.read_text()))
        prometheus = Prometheus(tmp_path, d.url.removeprefix("http://"), rules)

        stop = threading.Event()

        def produce():
            # About 180 KB/s, so a small spool fills within seconds of the outage.
            pad = b"x" * 500
            i = 0
            while not stop.is_set():
                web = [b'10.0.0.1 - - [30/Nov/2026:10:00:00 +0000] "GET /p/%d?%s HTTP/1.1" 200 5 "-" "c"'
                       % (n, pad) for n in range(i, i + 40)] + [b"not a log line"]
                tbl = [json.dumps({"kind": ["a", "b"][n % 2], "n": n, "pad": pad.decode()}).encode()
                       for n in range(i, i + 20)] + [b'{"kind": "a", "n": "many"}']
                for name, recs in (("web", web), ("tbl", tbl)):
                    try:
                        fh.put_record_batch(DeliveryStreamName=name,
                                            Records=[{"Data": r} for r in recs])
                    except Exception:  # noqa: BLE001 - throttled or refused: keep going
                        pass
                i += 40
                time.sleep(0.1)

        producer = threading.Thread(target=produce, daemon=True)
        producer.start()

        # Under load: every dashboard query returns series, every metric it names is exported.
        queries = dashboard_queries()
        assert len(queries) >= 25
        # (Failed attempts only show in the outage below.)
        seen = set()

        def without_series(timeout, may_lack=()):
            deadline = time.monotonic() + timeout
            while True:
                seen.update(q for q in queries if q not in seen and prometheus.query(q[1]))
                lacking = [t for t, e in queries if (t, e) not in seen]
                if set(lacking) <= set(may_lack) or time.monotonic() > deadline:
                    return lacking
                time.sleep(1)

        failed_attempts = ["Failed delivery attempts/s"]
        lacking = without_series(60, failed_attempts)
        assert set(lacking) <= set(failed_attempts), lacking
        # Every metric named outright (not through a __name__ pattern, whose queries
        # returned series above) by a panel or a rule is one the daemon exports.
        families = exported_families(d.metrics())
        rule_exprs = [("rule " + r["name"], r["query"]) for g in prometheus.rules()
                      for r in g["rules"]]
        for title, expr in queries + rule_exprs:
            literal = re.sub(r'__name__!?=~"[^"]*"', "", expr)
            for name in re.findall(r"\bhosepipe_[a-z0-9_]+", literal):
                assert name in families, f"{title}: {name} is not exported"
        for group in prometheus.rules():
            for rule in group["rules"]:
                assert rule["health"] == "ok", rule
        assert prometheus.firing() <= {"HosepipeRecordsToErrorOutput",
                                       "HosepipeThrottlingSustained"}, prometheus.firing()
        # The keyring gone (objects are sealed before their upload, so this comes first), then
        # an S3 outage: the rules that should fire, fire.
        fired = set()

        def wait_fired(expected, timeout):
            deadline = time.monotonic() + timeout
            while not expected <= fired and time.monotonic() < deadline:
                fired.update(prometheus.firing())
                time.sleep(1)
            assert expected - fired == set(), f"fired: {fired}, metrics:\n{d.metrics()}"

        keyring.rename(tmp_path / "elsewhere.json")
        wait_fired({"HosepipeKeyServiceFailing"}, 60)
        s3.stop()
        wait_fired({"HosepipeDeliveryFailing", "HosepipeDataFreshnessHigh",
                    "HosepipeBacklogGrowing", "HosepipeSpoolNearlyFull",
                    "HosepipeThrottlingSustained", "HosepipeRecordsToErrorOutput"}, 120)
        for group in prometheus.rules():
            for rule in group["rules"]:
                assert rule["health"] == "ok", rule
        assert "HosepipeDown" not in prometheus.firing()
        assert without_series(30) == [], "every dashboard query returned series"
        stop.set()
        producer.join(timeout=30)
    finally:
        if prometheus:
            prometheus.stop()
        if d:
            d.crash()  # (a stop would wait for S3 to deliver the backlog)
        s3.stop()


# -- hosepipe top, driven through tmux ----------------------------------------------------------

class Tmux:
    """A detached tmux session running one command, read with capture-pane."""

    def __init__(self, command, width=180, height=24):
        self.name = f"hp-top-{os.getpid()}-{random.randint(0, 10**6)}"
        subprocess.run(["tmux", "new-session", "-d", "-s", self.name, "-x", str(width),
                        "-y", str(height), command], check=True)

    def screen(self):
        return subprocess.run(["tmux", "capture-pane", "-p", "-t", self.name],
                              capture_output=True, text=True).stdout

    def keys(self, *keys):
        subprocess.run(["tmux", "send-keys", "-t", self.name, *keys], check=True)

    def alive(self):
        return subprocess.run(["tmux", "has-session", "-t", self.name],
                              capture_output=True).returncode == 0

    def kill(self):
        subprocess.run(["tmux", "kill-session", "-t", self.name], capture_output=True)


def rows_of(screen):
    """Stream name → its cells, in screen order (the table's lines below the header)."""
    out = {}
    lines = screen.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("STREAM"))
    for line in lines[start + 1:]:
        cells = line.split()
        if cells and cells[0] in ("alpha", "zulu"):
            out[cells[0]] = cells
    return out


def test_top_shows_live_rates_sorts_rides_out_a_restart_and_quits(daemon_factory, bucket,
                                                                 tmp_path):
    d = daemon_factory(listen=f"127.0.0.1:{free_port()}")
    fh = d.firehose()
    for name in ("alpha", "zulu"):
        fh.create_delivery_stream(DeliveryStreamName=name, ExtendedS3DestinationConfiguration={
            "RoleARN": ROLE, "BucketARN": f"arn:aws:s3:::{bucket}", "Prefix": f"{name}/",
            "BufferingHints": {"SizeInMBs": 1, "IntervalInSeconds": 1}})
    stop = threading.Event()

    def produce():
        while not stop.is_set():
            try:
                fh.put_record_batch(DeliveryStreamName="zulu",
                                    Records=[{"Data": b"z" * 100}] * 50)
                fh.put_record(DeliveryStreamName="alpha", Record={"Data": b"a" * 100})
            except Exception:  # noqa: BLE001 - the daemon is away for a moment below
                pass
            time.sleep(0.1)

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    exit_file = tmp_path / "exit"
    tmux = Tmux(f"{BIN} top --endpoint {d.url} --interval 0.5; echo $? > {exit_file}")
    try:
        # Live rates, busiest first (the default sort is IN REC/S).
        wait_for(lambda: len(rows_of(tmux.screen())) == 2
                 and float(rows_of(tmux.screen())["zulu"][2]) > 50, timeout=30,
                 what="both streams with zulu's rate")
        screen = tmux.screen()
        assert list(rows_of(screen)) == ["zulu", "alpha"], screen
        assert "sorted by IN REC/S" in screen and "2 streams" in screen
        # Sorting: 1 = by name, r = reversed.
        tmux.keys("1")
        wait_for(lambda: "sorted by STREAM —" in tmux.screen(), what="sorting by name")
        assert list(rows_of(tmux.screen())) == ["alpha", "zulu"]
        tmux.keys("r")
        wait_for(lambda: "sorted by STREAM (reversed)" in tmux.screen(), what="reversed")
        assert list(rows_of(tmux.screen())) == ["zulu", "alpha"]
        # The daemon goes away: top says so and keeps the last table; it comes back: live again.
        d.stop()
        wait_for(lambda: "DAEMON NOT ANSWERING" in tmux.screen(), what="the daemon's absence")
        assert "Connection refused" in tmux.screen() and rows_of(tmux.screen())
        d.start()
        wait_for(lambda: "DAEMON NOT ANSWERING" not in tmux.screen()
                 and float(rows_of(tmux.screen()).get("zulu", [0, 0, "0"])[2]) > 0,
                 timeout=30, what="live rates after the restart")
        # q quits, with exit status 0 and the terminal given back.
        tmux.keys("q")
        wait_for(lambda: exit_file.exists(), what="top to exit")
        assert exit_file.read_text().strip() == "0"
    finally:
        stop.set()
        producer.join(timeout=10)
        tmux.kill()
