"""A proxy in front of a real server that misbehaves on request, for the failures a real
OpenSearch cluster shows under load but osmem-server does not on its own: whole-request 429s and
`_bulk` items rejected with 429 `es_rejected_execution_exception`.

    proxy = FaultyProxy(upstream_url)
    proxy.whole = 3   # the next 3 requests get 429 without reaching the server
    proxy.items = 2   # the next 2 _bulk answers say every other item was rejected (429)
                      # (those items were indexed all the same: a resend must not duplicate)
    proxy.hold()      # requests wait at the door (counted in proxy.held) until
    proxy.release()   # lets them through: a slow server, with no clock in the test
"""
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests

REJECTED = {"type": "es_rejected_execution_exception",
            "reason": "rejected execution of coordinating operation"}


class FaultyProxy:
    def __init__(self, upstream):
        self.upstream = upstream.rstrip("/")
        self.whole = 0
        self.items = 0
        self.seen = 0
        self.held = 0
        self.gate = threading.Event()
        self.gate.set()
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self, status, body, content_type="application/json"):
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                r = requests.get(proxy.upstream + self.path, timeout=30)
                self._answer(r.status_code, r.content)

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if not proxy.gate.is_set():
                    with proxy.lock:
                        proxy.held += 1
                    proxy.gate.wait()
                with proxy.lock:
                    proxy.seen += 1
                    refuse = proxy.whole > 0
                    proxy.whole -= refuse
                    mark = not refuse and proxy.items > 0 and "_bulk" in self.path
                    proxy.items -= mark
                if refuse:
                    self._answer(429, json.dumps({"error": REJECTED, "status": 429}).encode())
                    return
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() in ("content-type", "content-encoding", "authorization")
                           or k.lower().startswith("x-amz-")}
                r = requests.post(proxy.upstream + self.path, data=body, headers=headers, timeout=60)
                if not mark or r.status_code != 200:
                    self._answer(r.status_code, r.content)
                    return
                answer = r.json()
                for i, item in enumerate(answer["items"]):
                    if i % 2 == 0:
                        result = next(iter(item.values()))
                        result["status"] = 429
                        result["error"] = REJECTED
                answer["errors"] = True
                self._answer(200, json.dumps(answer).encode())

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def hold(self):
        self.gate.clear()

    def release(self):
        self.gate.set()

    def close(self):
        self.release()
        self.server.shutdown()
        self.server.server_close()
