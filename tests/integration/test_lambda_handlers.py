"""Firehose Lambda handlers, unchanged, as transforms: the Python handlers in tests/lambda/python
and the Node.js ones in tests/lambda/node (written the way Firehose users write them) are made
into one component per language by `hosepipe transform build` (componentize-py and
esbuild + componentize-js, installed on first use into target/tools) and driven through real
streams with boto3; each stream picks its handler with the `Handler` parameter. The same
handlers under `hosepipe transform test` give the same answers."""
import base64
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import BIN, ROOT, wait_for

ROLE = "arn:aws:iam::000000000000:role/firehose"
TOOLS = dict(os.environ, HOSEPIPE_TOOLS_DIR=str(ROOT / "target" / "tools"))


@dataclass
class Handlers:
    """One language's handlers, built into one component."""
    language: str
    component: Path
    function: str       # Lambda's default handler function name in this language
    error: str          # the error type raises.* throws

    @property
    def arn(self):
        return f"arn:aws:lambda:us-east-1:000000000000:function:{self.component.stem}"

    def handler(self, module):
        """`module.function`; a bare module names Lambda's default function in it."""
        return module if "." in module else f"{module}.{self.function}"


@pytest.fixture(scope="module", params=["python", "node"])
def handlers(request, tmp_path_factory):
    language = request.param
    out = tmp_path_factory.mktemp("transforms") / f"{language}-handlers.wasm"
    done = subprocess.run([BIN, "transform", "build", str(ROOT / "tests" / "lambda" / language),
                           "-o", str(out)], capture_output=True, text=True, env=TOOLS)
    assert done.returncode == 0, done.stdout + done.stderr
    assert out.stat().st_size > 1_000_000
    function, error = {"python": ("lambda_handler", "ValueError"),
                       "node": ("handler", "TypeError")}[language]
    return Handlers(language, out, function, error)


def stream(fh, name, bucket, handlers, module, prefix=None, retries="3", env=None, **extra):
    params = [{"ParameterName": "LambdaArn", "ParameterValue": handlers.arn},
              {"ParameterName": "Handler", "ParameterValue": handlers.handler(module)},
              {"ParameterName": "NumberOfRetries", "ParameterValue": retries},
              {"ParameterName": "BufferIntervalInSeconds", "ParameterValue": "0"}]
    params += [{"ParameterName": k, "ParameterValue": v} for k, v in (env or {}).items()]
    fh.create_delivery_stream(DeliveryStreamName=name, ExtendedS3DestinationConfiguration={
        "RoleARN": ROLE, "BucketARN": f"arn:aws:s3:::{bucket}", "Prefix": prefix or f"{name}/",
        "ErrorOutputPrefix": f"errors-{name}/!{{firehose:error-output-type}}/",
        "BufferingHints": {"SizeInMBs": 1, "IntervalInSeconds": 1},
        "ProcessingConfiguration": {"Enabled": True,
                                    "Processors": [{"Type": "Lambda", "Parameters": params}]},
        **extra})


def put(fh, name, records):
    assert fh.put_record_batch(DeliveryStreamName=name,
                               Records=[{"Data": r} for r in records])["FailedPutCount"] == 0


def body_lines(s3, bucket, prefix):
    return [l for _, b, _ in s3.objects(bucket, prefix) for l in b.split(b"\n") if l]


def errors(s3, bucket, name):
    return [json.loads(l) for l in body_lines(s3, bucket, f"errors-{name}/processing-failed/")]


APACHE = [b'10.0.0.%d - - [30/Nov/2026:10:00:0%d +0000] "GET /p/%d HTTP/1.1" 200 512 "-" "curl/8"'
          % (i, i, i) for i in range(5)]
APACHE_0 = {"host": "10.0.0.0", "datetime": "2026-11-30T10:00:00+00:00",
            "request": "GET /p/0 HTTP/1.1", "response": 200, "bytes": 512, "referrer": None,
            "agent": "curl/8"}
GENERAL = [json.dumps({"n": i, "text": "héllo"}).encode() for i in range(20)]
EVENTS = [json.dumps({"level": lvl, "n": i}).encode()
          for i, lvl in enumerate(["INFO", "DEBUG", "WARN", "DEBUG"])]
DOCS = [json.dumps({"customer": c, "ts": f"{y}-01-01", "n": i}).encode()
        for i, (c, y) in enumerate([(7, 2025), (7, 2026), (9, 2026)])]
IDS = [b"first", b"second", b"third", b"fourth"]


def test_lambda_handlers_run_unchanged(daemon_factory, s3, bucket, handlers):
    d = daemon_factory(f'[transforms]\ndir = "{handlers.component.parent}"\ntimeout_ms = 2000\n')
    fh = d.firehose()
    stream(fh, "general", bucket, handlers, "general_processing")
    stream(fh, "apache", bucket, handlers, "apache_log_to_json")
    stream(fh, "filter", bucket, handlers, "drop_debug", env={"TIER": "gold"})
    stream(fh, "parts", bucket, handlers, "partition_by_customer",
           prefix="parts/customer=!{partitionKeyFromLambda:customer}/"
                  "year=!{partitionKeyFromLambda:year}/",
           DynamicPartitioningConfiguration={"Enabled": True})
    stream(fh, "raises", bucket, handlers, "raises", retries="0")
    stream(fh, "ids", bucket, handlers, "wrong_ids", retries="0")

    put(fh, "general", GENERAL)
    put(fh, "apache", APACHE + [b"not a log line"])
    put(fh, "filter", EVENTS)
    put(fh, "parts", DOCS)
    put(fh, "raises", [b"a", b"b"])
    put(fh, "ids", IDS)

    wait_for(lambda: len(body_lines(s3, bucket, "general/")) == 1, timeout=120,
             what="the pass-through's object")
    # The pass-through: every record as it was (the handler adds no newline).
    assert body_lines(s3, bucket, "general/") == [b"".join(GENERAL)]
    # Regular expressions and dates: parsed lines; the line that does not parse goes to the
    # error output.
    wait_for(lambda: len(body_lines(s3, bucket, "apache/")) == 5 and errors(s3, bucket, "apache"),
             timeout=60, what="parsed log lines and the failed one")
    parsed = sorted((json.loads(l) for l in body_lines(s3, bucket, "apache/")),
                    key=lambda p: p["request"])
    assert parsed[0] == APACHE_0
    failed, = errors(s3, bucket, "apache")
    assert base64.b64decode(failed["rawData"]) == b"not a log line"
    assert failed["errorCode"] == "Lambda.ProcessingFailed" and failed["lambdaArn"] == handlers.arn
    # Dropped, the context and the environment: only INFO and WARN remain.
    wait_for(lambda: len(body_lines(s3, bucket, "filter/")) == 2, timeout=60, what="filtered")
    kept = [json.loads(l) for l in body_lines(s3, bucket, "filter/")]
    assert [k["level"] for k in kept] == ["INFO", "WARN"]
    assert {(k["seen_by"], k["tier"]) for k in kept} == {("drop_debug", "gold")}
    # Partition keys into prefixes.
    wait_for(lambda: len(s3.objects(bucket, "parts/")) == 3, timeout=60, what="partitions")
    keys = sorted(k.split("/")[1:3] for k, _, _ in s3.objects(bucket, "parts/"))
    assert keys == [["customer=7", "year=2025"], ["customer=7", "year=2026"],
                    ["customer=9", "year=2026"]]
    # An exception fails the batch with its message.
    wait_for(lambda: len(errors(s3, bucket, "raises")) == 2, timeout=60, what="raised")
    assert {e["errorMessage"] for e in errors(s3, bucket, "raises")} == {
        f"the handler raised {handlers.error}: the upstream schema changed"}
    # A wrong id and a missing one fail those records; the others are delivered.
    wait_for(lambda: len(errors(s3, bucket, "ids")) == 2
             and len(s3.objects(bucket, "ids/")) == 1, timeout=60, what="id checks")
    bad = {base64.b64decode(e["rawData"]): e["errorMessage"] for e in errors(s3, bucket, "ids")}
    assert set(bad) == {b"first", b"second"}
    assert all(m.startswith("MissingRecordId") for m in bad.values()), bad
    assert body_lines(s3, bucket, "ids/") == [b"thirdfourth"]
    m = d.metrics()
    assert 'hosepipe_processing_records_total{stream="filter",outcome="dropped"} 2' in m


def transform_test(handlers, module, records, cwd, *params, event=False):
    """`hosepipe transform test` of one handler over records (lines, or a Lambda test event):
    its exit status and its Lambda-shaped answer."""
    return run_transform_test(handlers.component, records, cwd, "--param",
                              f"Handler={handlers.handler(module)}", *params, event=event)


def run_transform_test(component, records, cwd, *params, event=False):
    path = cwd / f"{component.stem}.records"
    if event:
        path.write_text(json.dumps({"invocationId": "test", "records": [
            {"recordId": f"4954{i}", "approximateArrivalTimestamp": 1764496800000,
             "data": base64.b64encode(r).decode()} for i, r in enumerate(records)]}))
    else:
        path.write_bytes(b"\n".join(records) + b"\n")
    done = subprocess.run([BIN, "transform", "test", str(component), "--records", str(path),
                           "--json", "--retries", "0", *params],
                          capture_output=True, text=True, cwd=cwd)
    assert done.returncode in (0, 1), done.stdout + done.stderr
    return done.returncode, json.loads(done.stdout)["records"]


def data(answer):
    return base64.b64decode(answer["data"])


def test_transform_test_gives_the_answers_the_streams_deliver(handlers, tmp_path):
    """The records of the stream test, through `hosepipe transform test` (the compiled
    component is cached under ./data as the daemon caches it)."""
    status, out = transform_test(handlers, "general_processing", GENERAL, tmp_path, event=True)
    assert status == 0 and [data(a) for a in out] == GENERAL
    assert [a["recordId"] for a in out] == [f"4954{i}" for i in range(len(GENERAL))]
    status, out = transform_test(handlers, "apache_log_to_json", APACHE + [b"not a log line"],
                                 tmp_path)
    assert status == 1
    assert json.loads(data(out[0])) == APACHE_0
    assert [a["result"] for a in out] == ["Ok"] * 5 + ["ProcessingFailed"]
    assert out[5]["errorCode"] == "Lambda.ProcessingFailed"
    status, out = transform_test(handlers, "drop_debug", EVENTS, tmp_path, "--param", "TIER=gold")
    assert status == 0
    assert [a["result"] for a in out] == ["Ok", "Dropped", "Ok", "Dropped"]
    assert json.loads(data(out[2])) == {"level": "WARN", "n": 2, "seen_by": "drop_debug",
                                        "tier": "gold"}
    status, out = transform_test(handlers, "partition_by_customer", DOCS, tmp_path)
    assert [a["metadata"]["partitionKeys"] for a in out] == [
        {"customer": "7", "year": "2025"}, {"customer": "7", "year": "2026"},
        {"customer": "9", "year": "2026"}]
    status, out = transform_test(handlers, "raises", [b"a", b"b"], tmp_path)
    assert status == 1 and {a["errorMessage"] for a in out} == {
        f"the handler raised {handlers.error}: the upstream schema changed"}
    status, out = transform_test(handlers, "wrong_ids", IDS, tmp_path)
    assert status == 1 and [a["result"] for a in out] == ["ProcessingFailed"] * 2 + ["Ok"] * 2
    assert out[1]["errorMessage"].startswith("MissingRecordId")
    assert [data(a) for a in out[2:]] == [b"third", b"fourth"]


def test_hostile_handlers_fail_their_records_and_the_daemon_survives(
        daemon_factory, s3, bucket, handlers, tmp_path):
    d = daemon_factory(f'[transforms]\ndir = "{handlers.component.parent}"\ntimeout_ms = 1500\n'
                       'memory_mb = 96\n')
    fh = d.firehose()
    stream(fh, "spin", bucket, handlers, "hostile.spin", retries="0")
    stream(fh, "hoard", bucket, handlers, "hostile.hoard", retries="0")
    stream(fh, "after", bucket, handlers, "general_processing")
    put(fh, "spin", [b"x"])
    put(fh, "hoard", [b"y"])
    for name, code in (("spin", "Lambda.FunctionTimeout"), ("hoard", "Lambda.FunctionError")):
        wait_for(lambda: errors(s3, bucket, name), timeout=90, what=f"{name}'s record failed")
        e, = errors(s3, bucket, name)
        assert e["errorCode"] == code, e
    put(fh, "after", [b"still here"])
    wait_for(lambda: body_lines(s3, bucket, "after/") == [b"still here"], timeout=60,
             what="the daemon still transforming")
    assert d.proc.poll() is None
    # `transform test` applies the same deadline and memory cap.
    for module, code in (("hostile.spin", "Lambda.FunctionTimeout"),
                         ("hostile.hoard", "Lambda.FunctionError")):
        status, out = transform_test(handlers, module, [b"z"], tmp_path, "--timeout-ms", "1500",
                                     "--memory-mb", "96")
        assert status == 1 and out[0]["errorCode"] == code, out


def test_transform_build_makes_a_crate_into_a_component(tmp_path):
    """A Rust transform crate (the template) through the same command: the component is the
    one scripts/build-transforms makes."""
    out = tmp_path / "mine.wasm"
    done = subprocess.run([BIN, "transform", "build", str(ROOT / "transforms" / "templates" / "rust"),
                           "-o", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    built = ROOT / "target" / "wasm32-wasip2" / "release" / "my_transform.wasm"
    assert out.read_bytes() == built.read_bytes()
    bad = subprocess.run([BIN, "transform", "build", str(tmp_path)], capture_output=True,
                         text=True)
    assert bad.returncode == 1 and "not a Python (.py) or Node.js" in bad.stderr


def test_transform_test_runs_a_builtin_blueprint_and_refuses_what_it_cannot_read(tmp_path):
    records = tmp_path / "records.txt"
    records.write_text('{"user": "ann", "password": "x"}\n{"user": "bob"}\nnot json\n')
    done = subprocess.run([BIN, "transform", "test", "json-field-filter", "--records",
                           str(records), "--param", "Drop=password"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["record", "result", "data"]
    assert lines[1].split(None, 2) == ["1", "Ok", json.dumps('{"user":"ann"}\n')]
    assert lines[3].split()[:2] == ["3", "ProcessingFailed"]
    assert lines[-1] == "3 records: 2 Ok, 0 Dropped, 1 ProcessingFailed"
    records.write_text('{"user": "ann"}\n')
    ok = subprocess.run([BIN, "transform", "test", "general-processing", "--records",
                         str(records)], capture_output=True, text=True, cwd=tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.endswith("1 record: 1 Ok, 0 Dropped, 0 ProcessingFailed\n")
    # Parameters the transform rejects: as CreateDeliveryStream would refuse them.
    bad = subprocess.run([BIN, "transform", "test", "json-field-filter", "--records",
                          str(records)], capture_output=True, text=True, cwd=tmp_path)
    assert bad.returncode == 2 and "give at least one of Keep, Drop or Mask" in bad.stderr
    for args, why in ((["no-such-transform"], "no-such-transform"),
                      ([str(tmp_path / "missing.wasm")], "no such file")):
        bad = subprocess.run([BIN, "transform", "test", *args, "--records", str(records)],
                             capture_output=True, text=True, cwd=tmp_path)
        assert bad.returncode == 2 and why in bad.stderr, bad.stderr
    records.write_text('{"records": [{"recordId": "1", "data": "%%"}]}')
    bad = subprocess.run([BIN, "transform", "test", "json-field-filter", "--records",
                          str(records)], capture_output=True, text=True, cwd=tmp_path)
    assert bad.returncode == 2 and "not base64" in bad.stderr


def test_the_templates_in_three_languages_answer_alike(tmp_path):
    """transforms/templates: the Python and Node.js handlers built by `transform build` and the
    Rust crate (built by scripts/build-transforms) give the same results and data."""
    templates = ROOT / "transforms" / "templates"
    components = [ROOT / "target" / "transforms" / "my-transform.wasm"]
    for source in (templates / "python" / "lambda_function.py", templates / "node" / "index.mjs"):
        out = tmp_path / f"{source.parent.name}-template.wasm"
        done = subprocess.run([BIN, "transform", "build", str(source), "-o", str(out)],
                              capture_output=True, text=True, env=TOOLS)
        assert done.returncode == 0, done.stdout + done.stderr
        components.append(out)
    records = [b"hello", b"", "h\u00e9llo w\u00f6rld".encode(), b"\xff\xfe"]
    answers = []
    for component in components:
        status, out = run_transform_test(component, records, tmp_path, "--param", "Suffix=!",
                                         event=True)
        assert status == 1
        answers.append([(a["result"], data(a) if a["result"] == "Ok" else None) for a in out])
    assert answers[0] == [("Ok", b"HELLO!"), ("Dropped", None),
                          ("Ok", "H\u00c9LLO W\u00d6RLD!".encode()), ("ProcessingFailed", None)]
    assert answers[1] == answers[0] and answers[2] == answers[0]


def test_a_node_handler_bundles_its_packages_and_a_node_builtin_fails_the_build(tmp_path):
    """esbuild bundles what the handler imports from node_modules (here a CommonJS package);
    Node's built-in modules are not in the sandbox, and the build says which one."""
    app = tmp_path / "app"
    pkg = app / "node_modules" / "shout"
    pkg.mkdir(parents=True)
    (pkg / "package.json").write_text('{"name": "shout", "version": "1.0.0", "main": "lib.js"}')
    (pkg / "lib.js").write_text("module.exports = (s) => s.toUpperCase() + '!';\n")
    (app / "index.mjs").write_text(
        "import shout from 'shout';\n"
        "export const handler = async (event) => ({ records: event.records.map((r) => ({\n"
        "  recordId: r.recordId, result: 'Ok',\n"
        "  data: Buffer.from(shout(Buffer.from(r.data, 'base64').toString())).toString('base64'),\n"
        "})) });\n")
    out = tmp_path / "shout.wasm"
    done = subprocess.run([BIN, "transform", "build", str(app / "index.mjs"), "-o", str(out)],
                          capture_output=True, text=True, env=TOOLS)
    assert done.returncode == 0, done.stdout + done.stderr
    status, answer = run_transform_test(out, [b"hello"], tmp_path)
    assert status == 0 and data(answer[0]) == b"HELLO!"

    (app / "zipped.mjs").write_text(
        "import zlib from 'zlib';\nexport const handler = async (e) => zlib.gzipSync(e);\n")
    bad = subprocess.run([BIN, "transform", "build", str(app / "zipped.mjs"), "-o",
                          str(tmp_path / "zipped.wasm")], capture_output=True, text=True, env=TOOLS)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert 'Could not resolve "zlib"' in bad.stderr, bad.stderr
    assert not (tmp_path / "zipped.wasm").exists()
