"""The deployment files, checked by what runs here (there is no Kubernetes on this machine): the
manifests parse, the ConfigMap's hosepipe.toml passes `hosepipe validate`, and the Deployment's
arguments, port and probes agree with it; the one-machine fleet's files are valid for hosepipe
and for nats-server."""
import os
import subprocess
from pathlib import Path

import yaml

from conftest import BIN, ROOT
from nats_cluster import nats_server

K8S = ROOT / "deploy" / "kubernetes"


def validate(config_path, env=None):
    run_env = dict(os.environ)
    run_env.update(env or {})
    return subprocess.run([BIN, "validate", "--config", str(config_path)],
                          capture_output=True, text=True, env=run_env)


def test_the_kubernetes_manifests_agree_with_a_valid_config(tmp_path):
    docs = {d["kind"]: d for d in yaml.safe_load_all((K8S / "hosepipe.yaml").read_text())}
    assert set(docs) == {"ConfigMap", "Deployment", "Service", "PodDisruptionBudget"}
    toml = docs["ConfigMap"]["data"]["hosepipe.toml"]
    config = tmp_path / "hosepipe.toml"
    config.write_text(toml)
    done = validate(config, {"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert 'backend = "jetstream"' in toml

    pod = docs["Deployment"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    args = container["args"]
    assert args[0] == "serve"
    config_path = Path(args[args.index("--config") + 1])
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert str(config_path.parent) == mounts["config"]
    assert args[args.index("--data-dir") + 1] == mounts["data"]
    port = container["ports"][0]["containerPort"]
    assert f'listen = "0.0.0.0:{port}"' in toml
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == "/health"
    selector = docs["Deployment"]["spec"]["selector"]["matchLabels"]
    assert docs["Service"]["spec"]["selector"] == selector
    assert docs["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"] == selector
    # The drain on SIGTERM fits in the grace period.
    timeout = int(toml.split("shutdown_timeout_seconds = ")[1].split()[0])
    assert pod["terminationGracePeriodSeconds"] > timeout

    values = yaml.safe_load((K8S / "nats-values.yaml").read_text())
    assert values["config"]["cluster"]["replicas"] == 3
    assert values["config"]["jetstream"]["enabled"] is True


def test_the_one_machine_fleet_files_are_valid():
    done = validate(ROOT / "config" / "fleet" / "node.toml")
    assert done.returncode == 0, done.stdout + done.stderr
    for i in (1, 2, 3):
        conf = ROOT / "config" / "fleet" / f"nats-{i}.conf"
        done = subprocess.run([nats_server(), "-t", "-c", str(conf)], cwd=ROOT,
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr
