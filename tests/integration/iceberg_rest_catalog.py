"""An Iceberg REST catalog, written from the Apache Iceberg REST Catalog OpenAPI specification
(`open-api/rest-catalog-open-api.yaml`; the servers that implement it — Polaris, Lakekeeper,
Nessie, Gravitino, the Java fixture — do not install here), with its failure modes under the
test's control. Tables are kept by pyiceberg's SQL catalog (one per warehouse), so metadata is
written and requirements are checked by pyiceberg, an independent Iceberg implementation; this
file only speaks the protocol. For issue 18's tests.

Protocol:
- `GET /v1/config?warehouse=W` → `{"defaults": {}, "overrides": {"prefix": W}}` for a known
  warehouse (404 NoSuchWarehouseException otherwise); without `warehouse`, the default one and
  no prefix. Every other path is `/v1/[{prefix}/]…`.
- `POST /v1/oauth/tokens` (form, `grant_type=client_credentials`, `client_id`, `client_secret`):
  `{"access_token", "token_type": "bearer", "expires_in", "issued_token_type"}`; a wrong client
  gets 401 `{"error": "invalid_client", "error_description"}` (RFC 6749 §5.2). When a
  credential is set, every other request needs `Authorization: Bearer <live token>`: else 401
  NotAuthorizedException. Tokens expire after `token_ttl` seconds.
- Namespaces: list (`?parent=`), create (409 if it exists), load, HEAD (204/404), drop.
- Tables: list, create (`CreateTableRequest`; 409 AlreadyExistsException, 404 for a missing
  namespace), load (`LoadTableResult`), HEAD, commit (`CommitTableRequest`: 409
  CommitFailedException when a requirement fails), drop.
- Errors are `{"error": {"message", "type", "code"}}` (`ErrorModel`); a namespace in a path is
  its levels joined by the unit separator 0x1F, URL-encoded.

Failure modes, each for the next `n` requests or commits:
- `unavailable = True`: every request answers 503 ServiceUnavailableException (an outage).
- `conflicts = n`: the next `n` commits answer 409 CommitFailedException without applying (as
  when another writer got in first).
- `lose_commit_answers = n`: the next `n` commits are applied, then answered 504 (the commit's
  state unknown to the client).

Counters: `commits` (applied), `conflicts_answered`, `lost_answers`, `tokens_issued`,
`unauthorized`, `unavailable_answered`.
"""
import json
import secrets
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from pyiceberg.exceptions import (CommitFailedException, NamespaceAlreadyExistsError,
                                  NamespaceNotEmptyError, NoSuchNamespaceError,
                                  NoSuchTableError, TableAlreadyExistsError)
from pyiceberg.partitioning import PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.table import CommitTableRequest
from pyiceberg.table.sorting import SortOrder

SEPARATOR = "\x1f"


class Answer(Exception):
    """An error answer: `ErrorModel` with this status and type."""

    def __init__(self, status, kind, message):
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message


def namespace_of(segment):
    return tuple(urllib.parse.unquote(segment).split(SEPARATOR))


def table_result(table):
    return {"metadata-location": table.metadata_location,
            "metadata": json.loads(table.metadata.model_dump_json()), "config": {}}


class RestCatalogServer:
    def __init__(self, warehouses, default=None, credential=None, token_ttl=3600):
        """`warehouses`: name → pyiceberg catalog keeping its tables; `default`: the one
        served without a prefix; `credential`: "client_id:secret" required of clients."""
        self.warehouses = warehouses
        self.default = default or next(iter(warehouses))
        self.credential = credential
        self.token_ttl = token_ttl
        self.tokens = {}
        self.lock = threading.Lock()
        self.unavailable = False
        self.conflicts = 0
        self.lose_commit_answers = 0
        self.commits = self.conflicts_answered = self.lost_answers = 0
        self.tokens_issued = self.unauthorized = self.unavailable_answered = 0
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def serve_tls(self, cert, key):
        """Serves HTTPS with `cert` (a chain, PEM) and `key` from now on."""
        from conftest import wrap_tls
        self.url = wrap_tls(self.server, self.url, cert, key)
        return self

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    # -- requests ------------------------------------------------------------------------------

    def token(self, form):
        client_id, secret = form.get("client_id", [""])[0], form.get("client_secret", [""])[0]
        if form.get("grant_type", [""])[0] != "client_credentials":
            return 400, {"error": "unsupported_grant_type",
                         "error_description": "only client_credentials is supported"}
        if self.credential is None or f"{client_id}:{secret}" != self.credential:
            return 401, {"error": "invalid_client",
                         "error_description": "unknown client or wrong secret"}
        token = secrets.token_hex(16)
        with self.lock:
            self.tokens[token] = time.monotonic() + self.token_ttl
            self.tokens_issued += 1
        return 200, {"access_token": token, "token_type": "bearer",
                     "expires_in": self.token_ttl,
                     "issued_token_type": "urn:ietf:params:oauth:token-type:access_token"}

    def authorise(self, header):
        if self.credential is None:
            return
        token = (header or "").removeprefix("Bearer ").strip()
        with self.lock:
            live = self.tokens.get(token, 0) > time.monotonic()
            if not live:
                self.unauthorized += 1
        if not live:
            raise Answer(401, "NotAuthorizedException",
                         "the bearer token is missing, unknown or expired")

    def config(self, query):
        name = query.get("warehouse", [None])[0]
        if name is None:
            return {"defaults": {}, "overrides": {}}
        if name not in self.warehouses:
            raise Answer(404, "NoSuchWarehouseException", f"warehouse {name!r} does not exist")
        return {"defaults": {}, "overrides": {"prefix": name}}

    def route(self, method, path, query, body):
        parts = [p for p in path.split("/") if p]
        if parts[:1] != ["v1"]:
            raise Answer(404, "NotFoundException", f"no such path {path}")
        parts = parts[1:]
        catalog = self.warehouses[self.default]
        if parts and parts[0] not in ("namespaces", "tables", "config", "oauth"):
            prefix = urllib.parse.unquote(parts[0])
            if prefix not in self.warehouses:
                raise Answer(404, "NoSuchWarehouseException", f"warehouse {prefix!r} does not exist")
            catalog, parts = self.warehouses[prefix], parts[1:]
        match (method, parts):
            case ("GET", ["namespaces"]):
                parent = query.get("parent", [None])[0]
                listed = catalog.list_namespaces(namespace_of(parent) if parent else ())
                return 200, {"namespaces": [list(n) for n in listed]}
            case ("POST", ["namespaces"]):
                ns = tuple(body["namespace"])
                try:
                    catalog.create_namespace(ns, body.get("properties") or {})
                except NamespaceAlreadyExistsError as e:
                    raise Answer(409, "AlreadyExistsException", str(e)) from None
                return 200, {"namespace": list(ns), "properties": body.get("properties") or {}}
            case ("GET" | "HEAD", ["namespaces", ns]):
                try:
                    props = catalog.load_namespace_properties(namespace_of(ns))
                except NoSuchNamespaceError as e:
                    raise Answer(404, "NoSuchNamespaceException", str(e)) from None
                if method == "HEAD":
                    return 204, None
                return 200, {"namespace": list(namespace_of(ns)), "properties": props}
            case ("DELETE", ["namespaces", ns]):
                try:
                    catalog.drop_namespace(namespace_of(ns))
                except NoSuchNamespaceError as e:
                    raise Answer(404, "NoSuchNamespaceException", str(e)) from None
                except NamespaceNotEmptyError as e:
                    raise Answer(409, "NamespaceNotEmptyException", str(e)) from None
                return 204, None
            case ("GET", ["namespaces", ns, "tables"]):
                try:
                    listed = catalog.list_tables(namespace_of(ns))
                except NoSuchNamespaceError as e:
                    raise Answer(404, "NoSuchNamespaceException", str(e)) from None
                return 200, {"identifiers": [{"namespace": list(t[:-1]), "name": t[-1]}
                                             for t in listed]}
            case ("POST", ["namespaces", ns, "tables"]):
                return 200, self.create_table(catalog, namespace_of(ns), body)
            case ("GET" | "HEAD", ["namespaces", ns, "tables", table]):
                table = self.load(catalog, namespace_of(ns), table)
                return (204, None) if method == "HEAD" else (200, table_result(table))
            case ("POST", ["namespaces", ns, "tables", table]):
                return self.commit(catalog, namespace_of(ns), table, body)
            case ("DELETE", ["namespaces", ns, "tables", table]):
                try:
                    catalog.drop_table(namespace_of(ns) + (urllib.parse.unquote(table),))
                except NoSuchTableError as e:
                    raise Answer(404, "NoSuchTableException", str(e)) from None
                return 204, None
        raise Answer(404, "NotFoundException", f"no route for {method} {path}")

    def load(self, catalog, ns, table):
        try:
            return catalog.load_table(ns + (urllib.parse.unquote(table),))
        except NoSuchTableError as e:
            raise Answer(404, "NoSuchTableException", str(e)) from None

    def create_table(self, catalog, ns, body):
        if body.get("stage-create"):
            raise Answer(400, "BadRequestException", "staged creation is not supported here")
        spec = body.get("partition-spec")
        if spec:
            # An unbound spec's fields may come without ids; the catalog assigns fresh ones.
            for i, field in enumerate(spec.get("fields", [])):
                field.setdefault("field-id", 1000 + i)
            spec.setdefault("spec-id", 0)
        try:
            table = catalog.create_table(
                ns + (body["name"],),
                schema=Schema.model_validate(body["schema"]),
                location=body.get("location"),
                partition_spec=PartitionSpec.model_validate(spec) if spec else PartitionSpec(),
                sort_order=SortOrder.model_validate(body["write-order"])
                if body.get("write-order") else SortOrder(),
                properties=body.get("properties") or {})
        except NoSuchNamespaceError as e:
            raise Answer(404, "NoSuchNamespaceException", str(e)) from None
        except TableAlreadyExistsError as e:
            raise Answer(409, "AlreadyExistsException", str(e)) from None
        return table_result(table)

    def commit(self, catalog, ns, table, body):
        request = CommitTableRequest.model_validate(
            {"identifier": body.get("identifier")
             or {"namespace": list(ns), "name": urllib.parse.unquote(table)},
             "requirements": body.get("requirements", []),
             "updates": body.get("updates", [])})
        with self.lock:
            if self.conflicts > 0:
                self.conflicts -= 1
                self.conflicts_answered += 1
                raise Answer(409, "CommitFailedException",
                             "requirement failed: another writer committed first")
            current = self.load(catalog, ns, table)
            try:
                response = catalog.commit_table(current, request.requirements, request.updates)
            except CommitFailedException as e:
                self.conflicts_answered += 1
                raise Answer(409, "CommitFailedException", str(e)) from None
            self.commits += 1
            if self.lose_commit_answers > 0:
                self.lose_commit_answers -= 1
                self.lost_answers += 1
                raise Answer(504, "ServiceUnavailableException",
                             "gateway timeout: the commit's state is unknown")
        return 200, {"metadata-location": response.metadata_location,
                     "metadata": json.loads(response.metadata.model_dump_json())}

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def send(self, status, value):
                data = b"" if value is None else json.dumps(value).encode()
                self.send_response(status)
                if value is not None:
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def handle_any(self):
                url = urllib.parse.urlsplit(self.path)
                query = urllib.parse.parse_qs(url.query)
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    if server.unavailable:
                        with server.lock:
                            server.unavailable_answered += 1
                        raise Answer(503, "ServiceUnavailableException", "the catalog is down")
                    if url.path == "/v1/oauth/tokens" and self.command == "POST":
                        return self.send(*server.token(urllib.parse.parse_qs(raw.decode())))
                    server.authorise(self.headers.get("Authorization"))
                    if url.path == "/v1/config" and self.command == "GET":
                        return self.send(200, server.config(query))
                    try:
                        body = json.loads(raw) if raw else {}
                    except ValueError as e:
                        raise Answer(400, "BadRequestException", f"malformed JSON: {e}") from None
                    self.send(*server.route(self.command, url.path, query, body))
                except Answer as a:
                    self.send(a.status, {"error": {"message": a.message, "type": a.kind,
                                                   "code": a.status}})
                except (KeyError, ValueError) as e:
                    self.send(400, {"error": {"message": f"bad request: {e}",
                                              "type": "BadRequestException", "code": 400}})
                except Exception as e:  # noqa: BLE001 - the spec's 500 for anything else
                    self.send(500, {"error": {"message": repr(e), "type": "InternalServerError",
                                              "code": 500}})

            do_GET = do_POST = do_DELETE = do_HEAD = handle_any

        return Handler
