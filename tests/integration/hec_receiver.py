"""A Splunk HTTP Event Collector stand-in (no real Splunk installs here), written from Splunk's
public HEC documentation, with its failure modes under the test's control.

- POST /services/collector/event (and /services/collector): concatenated JSON objects, each with
  an `event` field; POST /services/collector/raw: raw bytes (lines).
- `Authorization: Splunk <token>`: missing → 401 code 2 "Token is required"; wrong → 403 code 4
  "Invalid token".
- Indexer acknowledgement on: a channel is required (`X-Splunk-Request-Channel` header or
  `channel` query) → else 400 code 10 "Data channel is missing"; a post is answered
  `{"text":"Success","code":0,"ackId":N}` (ackIds count up per channel).
- POST /services/collector/ack?channel=C with `{"acks":[…]}` → `{"acks":{"N":true|false}}`; an
  ackId reads true `ack_delay` seconds after its post (`None`: never); a true status is deleted
  once read, later queries say false.
- Failure modes: `busy = n` answers the next n posts 503 code 9 "Server is busy"; bad JSON →
  400 code 6 "Invalid data format"; an object without `event` → 400 code 12 "Event field is
  required"; GET /services/collector/health → 200 code 17 "HEC is healthy".
- `indexed` holds every event whose ack came true (what Splunk indexed); `posted` counts posts.
"""
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


class HecReceiver:
    def __init__(self, token="hec-token"):
        self.token = token
        self.ack_delay = 0.2
        self.busy = 0
        self.posted = 0
        self.indexed = []
        self.lock = threading.Lock()
        # channel -> {ack_id: (ready_at or None, events)}
        self.pending = {}
        self.next_ack = {}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def answer(self, status, obj):
                body = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                if urlparse(self.path).path == "/services/collector/health":
                    self.answer(200, {"text": "HEC is healthy", "code": 17})
                else:
                    self.answer(404, {"text": "The requested URL was not found on this server.", "code": 404})

            def do_POST(self):
                url = urlparse(self.path)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                auth = self.headers.get("Authorization", "")
                if not auth:
                    return self.answer(401, {"text": "Token is required", "code": 2})
                if auth != f"Splunk {receiver.token}":
                    return self.answer(403, {"text": "Invalid token", "code": 4})
                channel = self.headers.get("X-Splunk-Request-Channel") \
                    or parse_qs(url.query).get("channel", [None])[0]
                if url.path == "/services/collector/ack":
                    return self.answer(200, {"acks": receiver.ack(channel, json.loads(body)["acks"])})
                if url.path not in ("/services/collector/event", "/services/collector",
                                    "/services/collector/raw"):
                    return self.answer(404, {"text": "The requested URL was not found on this server.", "code": 404})
                if not channel:
                    return self.answer(400, {"text": "Data channel is missing", "code": 10})
                with receiver.lock:
                    receiver.posted += 1
                    if receiver.busy > 0:
                        receiver.busy -= 1
                        return self.answer(503, {"text": "Server is busy", "code": 9})
                if url.path == "/services/collector/raw":
                    events = [l for l in body.split(b"\n") if l]
                else:
                    events, status = parse_events(body)
                    if status:
                        return self.answer(400, status)
                return self.answer(200, {"text": "Success", "code": 0,
                                         "ackId": receiver.accept(channel, events)})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def accept(self, channel, events):
        with self.lock:
            ack_id = self.next_ack.get(channel, 0)
            self.next_ack[channel] = ack_id + 1
            ready = None if self.ack_delay is None else time.monotonic() + self.ack_delay
            self.pending.setdefault(channel, {})[ack_id] = (ready, events)
            return ack_id

    def ack(self, channel, ids):
        out = {}
        now = time.monotonic()
        with self.lock:
            waiting = self.pending.get(channel, {})
            for i in ids:
                entry = waiting.get(i)
                done = entry is not None and entry[0] is not None and entry[0] <= now
                if done:
                    # Indexed: counted once, and the status is deleted once read.
                    self.indexed.extend(entry[1])
                    del waiting[i]
                out[str(i)] = done
        return out

    def serve_tls(self, cert, key):
        """Serves HTTPS with `cert` (a chain, PEM) and `key` from now on."""
        from conftest import wrap_tls
        self.url = wrap_tls(self.server, self.url, cert, key)
        return self

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def parse_events(body):
    """Concatenated JSON objects → (events, None), or ([], error answer)."""
    decoder = json.JSONDecoder()
    text = body.decode("utf-8", "replace")
    pos, n, events = 0, 0, []
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            break
        try:
            obj, pos = decoder.raw_decode(text, pos)
        except ValueError:
            return [], {"text": "Invalid data format", "code": 6, "invalid-event-number": n}
        if not isinstance(obj, dict) or "event" not in obj:
            return [], {"text": "Event field is required", "code": 12, "invalid-event-number": n}
        if obj["event"] in ("", None):
            return [], {"text": "Event field cannot be blank", "code": 13, "invalid-event-number": n}
        events.append(obj)
        n += 1
    if not events:
        return [], {"text": "No data", "code": 5}
    return events, None


if __name__ == "__main__":
    # Standalone, for `hosepipe bench splunk`: python hec_receiver.py PORT [ACK_DELAY]
    import sys
    r = HecReceiver()
    r.ack_delay = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0
    r.server.shutdown()
    r.server.server_close()
    r.server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), r.server.RequestHandlerClass)
    print(f"HEC receiver on http://127.0.0.1:{sys.argv[1]} token {r.token}", flush=True)
    r.server.serve_forever()
