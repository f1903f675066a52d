"""Helpers of the server tests: the schemathesis run over an app's own OpenAPI schema, and a
webhook receiver on 127.0.0.1 for the notification tests."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)


def fuzz_schema(app, headers: dict | None = None, max_examples: int = 15) -> int:
    """Every operation of the app's OpenAPI schema with generated requests (hypothesis, bounded):
    zero 5xx and every answer as the schema says (status code, content type, body). Driven
    without schemathesis' pytest plugin; returns the number of operations run."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    n = 0
    for result in schema.get_all_operations():
        op = result.ok()

        @given(case=op.as_strategy())
        @settings(max_examples=max_examples, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
        def run(case):
            case.call_and_validate(headers=headers, checks=checks)

        run()
        n += 1
    return n


class Receiver:
    """A webhook on 127.0.0.1 that records every delivery (and can be killed and restarted)."""

    def __init__(self, port: int = 0) -> None:
        self.got: list[dict] = []
        received = self.got

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append(json.loads(body) | {"idem": self.headers.get("Idempotency-Key")})
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def kill(self) -> None:
        self.server.shutdown()
        self.server.server_close()
