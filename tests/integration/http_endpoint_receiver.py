"""An HTTP endpoint that Firehose delivers to, written from AWS's published HTTP endpoint
delivery request and response specifications (no partner's endpoint installs here), with its
failure modes under the test's control. For issue 17's tests.

Request checks (each failure answers 400 with `errorMessage` and is counted in `rejected`):
- POST only, `Content-Type: application/json`, `X-Amz-Firehose-Protocol-Version: 1.0`,
  `X-Amz-Firehose-Request-Id` present and equal to the body's `requestId`,
  `X-Amz-Firehose-Source-Arn` present; `Content-Encoding: gzip` bodies are gunzipped (any other
  encoding refused).
- `X-Amz-Firehose-Access-Key` must equal `access_key` (when set) → else 401.
- `X-Amz-Firehose-Common-Attributes`, when present, is `{"commonAttributes": {…}}` (0–50
  entries, names 1–256 characters, values ≤ 1024) and is kept per request.
- Body: `{"requestId", "timestamp", "records": [{"data": base64}]}`, 1–10,000 records, each
  `data` ≤ 1,024,000 bytes decoded; the body ≤ 64 MiB before compression.

Answers: 200 `{"requestId": <the request's>, "timestamp": <ms>}` on success. Failure modes, in
order of precedence, each for the next `n` requests: `fail_status = (code, n)` answers that
status with an `errorMessage`; `hang = (seconds, n)` answers after a delay (a timeout for a
client that waits less); `wrong_id = n` answers 200 with another `requestId`; `bad_body = n`
answers 200 with a body that is not JSON.

`posted_ids` holds the request id of every POST, answered well or not; `received` holds each
accepted request (request id, headers that matter, decoded records);
`records()` is every record accepted, in order (a retried request appears once per
acceptance: its request id tells resends apart).
"""
import base64
import binascii
import gzip
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_RECORDS = 10_000
MAX_RECORD_BYTES = 1_024_000
MAX_BODY_BYTES = 64 * 1024 * 1024


class Refused(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


def check_common_attributes(text):
    try:
        value = json.loads(text)
    except ValueError as e:
        raise Refused(400, f"X-Amz-Firehose-Common-Attributes is not JSON: {e}") from None
    attrs = value.get("commonAttributes") if isinstance(value, dict) else None
    if not isinstance(attrs, dict) or len(attrs) > 50:
        raise Refused(400, "X-Amz-Firehose-Common-Attributes must be {\"commonAttributes\": {…}} with 0-50 entries")
    for k, v in attrs.items():
        if not (1 <= len(k) <= 256) or not isinstance(v, str) or len(v) > 1024:
            raise Refused(400, f"common attribute {k!r} is out of bounds")
    return attrs


def decode_request(headers, raw):
    """The request's id, common attributes and records, or Refused."""
    if headers.get("Content-Type", "").split(";")[0].strip() != "application/json":
        raise Refused(400, "Content-Type must be application/json")
    if headers.get("X-Amz-Firehose-Protocol-Version") != "1.0":
        raise Refused(400, "X-Amz-Firehose-Protocol-Version must be 1.0")
    request_id = headers.get("X-Amz-Firehose-Request-Id")
    if not request_id:
        raise Refused(400, "X-Amz-Firehose-Request-Id is missing")
    if not headers.get("X-Amz-Firehose-Source-Arn"):
        raise Refused(400, "X-Amz-Firehose-Source-Arn is missing")
    encoding = headers.get("Content-Encoding")
    if encoding == "gzip":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise Refused(400, f"the gzip body does not decompress: {e}") from None
    elif encoding:
        raise Refused(400, f"Content-Encoding {encoding!r} is not supported")
    if len(raw) > MAX_BODY_BYTES:
        raise Refused(413, "the body is over 64 MiB")
    try:
        body = json.loads(raw)
    except ValueError as e:
        raise Refused(400, f"the body is not JSON: {e}") from None
    if not isinstance(body, dict) or "requestId" not in body or "records" not in body:
        raise Refused(400, "the body needs requestId and records")
    if body["requestId"] != request_id:
        raise Refused(400, "the body's requestId is not the header's")
    if not isinstance(body.get("timestamp"), int):
        raise Refused(400, "timestamp must be an integer (ms)")
    records = body["records"]
    if not isinstance(records, list) or not (1 <= len(records) <= MAX_RECORDS):
        raise Refused(400, f"records must hold 1-{MAX_RECORDS} entries")
    decoded = []
    for i, r in enumerate(records):
        if not isinstance(r, dict) or not isinstance(r.get("data"), str):
            raise Refused(400, f"records[{i}] has no data")
        try:
            data = base64.b64decode(r["data"], validate=True)
        except (binascii.Error, ValueError) as e:
            raise Refused(400, f"records[{i}].data is not base64: {e}") from None
        if len(data) > MAX_RECORD_BYTES:
            raise Refused(400, f"records[{i}] is over {MAX_RECORD_BYTES} bytes")
        decoded.append(data)
    attrs = None
    if "X-Amz-Firehose-Common-Attributes" in headers:
        attrs = check_common_attributes(headers["X-Amz-Firehose-Common-Attributes"])
    return request_id, attrs, decoded


class HttpEndpointReceiver:
    def __init__(self, access_key=None):
        self.access_key = access_key
        self.fail_status = None
        self.hang = None
        self.wrong_id = 0
        self.bad_body = 0
        self.received = []
        self.rejected = []
        self.posts = 0
        self.posted_ids = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def send(self, status, body):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def answer(self, status, request_id, error=None):
                obj = {"requestId": request_id, "timestamp": int(time.time() * 1000)}
                if error is not None:
                    obj["errorMessage"] = error[:8192]
                self.send(status, json.dumps(obj).encode())

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                request_id = self.headers.get("X-Amz-Firehose-Request-Id", "")
                with receiver.lock:
                    receiver.posts += 1
                    receiver.posted_ids.append(request_id)
                    mode = receiver.next_failure()
                if mode is not None:
                    kind, arg = mode
                    if kind == "status":
                        return self.answer(arg, request_id, f"told to answer {arg}")
                    if kind == "hang":
                        time.sleep(arg)
                    if kind == "wrong_id":
                        return self.answer(200, str(uuid.uuid4()))
                    if kind == "bad_body":
                        return self.send(200, b"<html>not json</html>")
                if receiver.access_key is not None and \
                        self.headers.get("X-Amz-Firehose-Access-Key") != receiver.access_key:
                    with receiver.lock:
                        receiver.rejected.append((401, "access key"))
                    return self.answer(401, request_id, "the access key is not the one configured")
                try:
                    rid, attrs, records = decode_request(self.headers, raw)
                except Refused as e:
                    with receiver.lock:
                        receiver.rejected.append((e.status, str(e)))
                    return self.answer(e.status, request_id, str(e))
                with receiver.lock:
                    receiver.received.append({
                        "request_id": rid, "attributes": attrs, "records": records,
                        "source_arn": self.headers.get("X-Amz-Firehose-Source-Arn"),
                        "gzip": self.headers.get("Content-Encoding") == "gzip",
                    })
                self.answer(200, rid)

            def do_GET(self):
                self.answer(405, "", "POST only")

            do_PUT = do_GET

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def next_failure(self):
        """The failure to answer this request with, if one is armed (under the lock)."""
        if self.fail_status and self.fail_status[1] > 0:
            code, n = self.fail_status
            self.fail_status = (code, n - 1)
            return ("status", code)
        if self.hang and self.hang[1] > 0:
            seconds, n = self.hang
            self.hang = (seconds, n - 1)
            return ("hang", seconds)
        if self.wrong_id > 0:
            self.wrong_id -= 1
            return ("wrong_id", None)
        if self.bad_body > 0:
            self.bad_body -= 1
            return ("bad_body", None)
        return None

    def records(self):
        with self.lock:
            return [r for req in self.received for r in req["records"]]

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
