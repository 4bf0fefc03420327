"""A reverse proxy in front of a real S3 server that injects the faults of a sick S3 or a bad
network, written from the S3 error documentation (REST error responses: an XML body with
Code, Message, RequestId) and plain TCP behaviour.

    proxy = FaultProxy(s3.url)
    proxy.add(Fault("status", match="PUT", status=503, code="SlowDown", times=3))
    proxy.add(Fault("hang", match="PUT", seconds=40))   # no byte back, then a closed socket
    proxy.add(Fault("reset", match="partNumber=2"))       # RST after half the body was read
    proxy.slow_bps = 1024                                  # request bodies read at 1 KiB/s

A fault applies to the next `times` requests whose request line contains `match`. The request
is forwarded with its headers unchanged (SigV4 signs the Host header the client sent, and the
server checks it as received), so the server verifies signatures as usual. `seen` counts
requests by method, `started` lists their request lines; `injected` lists what was done.
"""
import http.client
import socket
import socketserver
import struct
import threading
import time
import uuid
from dataclasses import dataclass
from urllib.parse import urlparse


@dataclass
class Fault:
    kind: str               # status | hang | reset
    match: str = ""
    status: int = 500
    code: str = "InternalError"
    seconds: float = 0.0
    times: int = 1


ERROR_BODY = ('<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
              '<Message>{message}</Message><RequestId>{rid}</RequestId></Error>')
MESSAGES = {"InternalError": "We encountered an internal error. Please try again.",
            "SlowDown": "Please reduce your request rate.",
            "RequestTimeTooSkewed": "The difference between the request time and the "
                                    "current time is too large.",
            "ServiceUnavailable": "Service is unable to handle request."}


class FaultProxy:
    def __init__(self, upstream):
        u = urlparse(upstream)
        self.upstream = (u.hostname, u.port)
        self.faults = []
        self.slow_bps = 0
        self.seen = {}
        self.started = []
        self.injected = []
        self.lock = threading.Lock()
        proxy = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                proxy._serve(self.request)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def add(self, fault):
        with self.lock:
            self.faults.append(fault)

    def clear(self):
        with self.lock:
            self.faults.clear()
            self.slow_bps = 0

    def _take(self, line):
        with self.lock:
            for f in self.faults:
                if f.match in line and f.times > 0:
                    f.times -= 1
                    self.injected.append((f.kind, line))
                    return f
        return None

    def _serve(self, conn):
        reader = conn.makefile("rb")
        try:
            while True:
                line = reader.readline()
                if not line:
                    return
                line = line.decode("latin-1").rstrip("\r\n")
                headers = []
                while True:
                    h = reader.readline().decode("latin-1").rstrip("\r\n")
                    if not h:
                        break
                    k, _, v = h.partition(":")
                    headers.append((k.strip(), v.strip()))
                length = int(next((v for k, v in headers if k.lower() == "content-length"),
                                  "0"))
                method, path, _ = line.split(" ", 2)
                with self.lock:
                    self.seen[method] = self.seen.get(method, 0) + 1
                    self.started.append(line)
                fault = self._take(line)
                if fault and fault.kind == "reset":
                    reader.read(length // 2)
                    # RST, not FIN: the client sees "connection reset" mid-upload.
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return
                body = self._read_body(reader, length)
                if fault and fault.kind == "hang":
                    time.sleep(fault.seconds)
                    return
                if fault and fault.kind == "status":
                    self._answer_error(conn, fault)
                    continue
                if not self._forward(conn, method, path, headers, body):
                    return
        except (ConnectionError, OSError):
            return
        finally:
            try:
                conn.close()
            except OSError:
                pass

    def _read_body(self, reader, length):
        if not self.slow_bps:
            return reader.read(length)
        out = bytearray()
        while len(out) < length:
            chunk = reader.read(min(256, length - len(out)))
            if not chunk:
                break
            out += chunk
            time.sleep(len(chunk) / self.slow_bps)
        return bytes(out)

    def _answer_error(self, conn, fault):
        body = ERROR_BODY.format(code=fault.code, message=MESSAGES.get(fault.code, fault.code),
                                 rid=uuid.uuid4().hex[:16].upper()).encode()
        head = (f"HTTP/1.1 {fault.status} {http.client.responses.get(fault.status, 'Error')}\r\n"
                f"Content-Type: application/xml\r\nContent-Length: {len(body)}\r\n\r\n")
        conn.sendall(head.encode() + body)

    def _forward(self, conn, method, path, headers, body):
        up = http.client.HTTPConnection(*self.upstream, timeout=60)
        try:
            up.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            for k, v in headers:
                up.putheader(k, v)
            up.endheaders(body if body else None)
            resp = up.getresponse()
            data = resp.read()
        except (ConnectionError, OSError, http.client.HTTPException):
            return False
        finally:
            up.close()
        lines = [f"HTTP/1.1 {resp.status} {resp.reason}"]
        for k, v in resp.getheaders():
            # A HEAD answer keeps the object's length; others say what is relayed.
            if k.lower() in ("transfer-encoding", "connection") or \
                    (k.lower() == "content-length" and method != "HEAD"):
                continue
            lines.append(f"{k}: {v}")
        if method != "HEAD":
            lines.append(f"Content-Length: {len(data)}")
        conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") +
                     (data if method != "HEAD" else b""))
        return True

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
