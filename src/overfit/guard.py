"""The front of `make serve`: a small HTTP server on the public port that checks each request
before `mlflow models serve`, on a private port behind it, sees it.

MLflow's scoring server reads any body whole, parses any JSON (a deeply nested one raises
RecursionError: HTTP 500) and converts booleans to numbers; MLflow 3.17 has no setting for
any of it. The guard answers, in MLflow's JSON error format:

- 413 to a body over `registry.max_request_kb` (read no further than that);
- 400 to JSON nested deeper than a request for this model needs, or holding a boolean;

and passes everything else, and MLflow's answers, through unchanged.
"""

from __future__ import annotations

import http.client
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# {"dataframe_split": {"columns": [...], "data": [[x1, x2], ...]}} is 4 deep; leave room for
# MLflow's other formats ({"inputs": ...}, {"dataframe_records": [...]}, "params").
MAX_DEPTH = 8
# Headers passed on to MLflow, and back.
FORWARDED = ("Content-Type",)


class Refused(ValueError):
    """A request the guard answers itself: its status and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def check_json(body: bytes) -> None:
    """Refused (400) if `body` is JSON nested deeper than MAX_DEPTH or holding a boolean.
    Anything that is not JSON is left to MLflow, which says so."""
    if _depth(body) > MAX_DEPTH:
        raise Refused(400, f"JSON nested more than {MAX_DEPTH} levels deep")
    try:
        data = json.loads(body)
    except ValueError:
        return
    if _has_boolean(data):
        raise Refused(400, "x1 and x2 must be numbers, not true or false")


def _depth(body: bytes) -> int:
    """The deepest nesting of [ and { outside strings, without parsing (a parser recurses)."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in body:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1
    return deepest


def _has_boolean(data: Any) -> bool:
    pending = [data]
    while pending:
        item = pending.pop()
        if isinstance(item, bool):
            return True
        if isinstance(item, dict):
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return False


def error_body(message: str) -> bytes:
    """MLflow's JSON error format."""
    return json.dumps({"error_code": "BAD_REQUEST", "message": message}).encode()


def handler(backend_port: int, max_bytes: int) -> type[BaseHTTPRequestHandler]:
    """Requests checked, then forwarded to 127.0.0.1:`backend_port`."""

    class Guard(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802 - the standard library's name
            self.forward(b"")

        def do_POST(self) -> None:  # noqa: N802
            try:
                body = self.read_body()
                if "json" in (self.headers.get("Content-Type") or ""):
                    check_json(body)
            except Refused as refused:
                self.answer(refused.status, error_body(str(refused)), "application/json")
                return
            self.forward(body)

        def read_body(self) -> bytes:
            length = self.headers.get("Content-Length")
            if length is None or not length.isdigit():
                self.close_connection = True
                raise Refused(411, "a Content-Length header is required")
            if int(length) > max_bytes:
                self.drain(int(length))
                raise Refused(
                    413,
                    f"request body of {int(length):,} bytes; at most {max_bytes:,} "
                    "(registry.max_request_kb)",
                )
            return self.rfile.read(int(length))

        def drain(self, length: int) -> None:
            """Read a refused body in small pieces, keeping none (the client can then read the
            answer), and end the connection after it."""
            self.close_connection = True
            while length > 0:
                piece = self.rfile.read(min(length, 1 << 16))
                if not piece:
                    break
                length -= len(piece)

        def forward(self, body: bytes) -> None:
            connection = http.client.HTTPConnection("127.0.0.1", backend_port, timeout=120)
            try:
                headers = {k: self.headers[k] for k in FORWARDED if self.headers.get(k)}
                connection.request(self.command, self.path, body or None, headers)
                response = connection.getresponse()
                data = response.read()
                kind = response.getheader("Content-Type") or "application/json"
                self.answer(response.status, data, kind)
            except OSError as error:
                self.answer(502, error_body(f"the model server did not answer ({error})"), "")
            finally:
                connection.close()

        def answer(self, status: int, body: bytes, kind: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind or "application/json")
            self.send_header("Content-Length", str(len(body)))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass  # MLflow's server logs the requests it gets

    return Guard


def start(host: str, port: int, backend_port: int, max_bytes: int) -> ThreadingHTTPServer:
    """The guard listening on host:port, serving on a thread of its own."""
    server = ThreadingHTTPServer((host, port), handler(backend_port, max_bytes))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
