"""What operators run beside the daemon: the build named by `--version`, shell completions and
man pages generated from the CLI, and JSON log lines for a collector."""
import json
import os
import subprocess

from conftest import BIN


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
