"""A local HTTP server that answers the KFP v2beta1 REST calls kfp.Client makes.

It keeps experiments and runs in memory and records every request (method,
path, query, JSON body, headers), so tests assert on what the client sent:
the experiment lookup and creation, the inline pipeline spec, the parameters,
the bearer token.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlparse

from tests.support.local_http import LocalHTTPServer


@dataclasses.dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    body: Any
    headers: dict[str, str]  # lower-case names


class KfpApiServer(LocalHTTPServer):
    def __init__(self, required_token: str | None = None) -> None:
        self.required_token = required_token
        self.requests: list[Request] = []
        self.experiments: dict[str, dict] = {}
        self.runs: dict[str, dict] = {}
        self.run_states: list[str] = ["RUNNING", "SUCCEEDED"]  # answers to successive GET run
        super().__init__()

    def calls(self, method: str, path_prefix: str) -> list[Request]:
        return [r for r in self.requests if r.method == method and r.path.startswith(path_prefix)]

    def _handle(self, method: str, path: str, query: dict, body: Any) -> tuple[int, Any]:
        api = "/apis/v2beta1"
        if path == f"{api}/healthz":
            return 200, {"commit_sha": "test", "tag_name": "2.5.0", "multi_user": False}
        if path == f"{api}/experiments" and method == "GET":
            wanted = None
            if "filter" in query:
                predicates = json.loads(query["filter"][0]).get("predicates", [])
                wanted = next(
                    (p.get("stringValue") or p.get("string_value") for p in predicates), None
                )
            found = [
                e
                for e in self.experiments.values()
                if wanted is None or e["display_name"] == wanted
            ]
            return 200, {"experiments": found, "total_size": len(found)}
        if path == f"{api}/experiments" and method == "POST":
            experiment = {**body, "experiment_id": str(uuid.uuid4()), "storage_state": "AVAILABLE"}
            self.experiments[experiment["experiment_id"]] = experiment
            return 200, experiment
        if path == f"{api}/runs" and method == "POST":
            run = {**body, "run_id": str(uuid.uuid4()), "state": "PENDING"}
            self.runs[run["run_id"]] = run
            return 200, run
        if path.startswith(f"{api}/runs/") and method == "GET":
            run = self.runs.get(path.rsplit("/", 1)[1])
            if run is None:
                return 404, {"error": "run not found", "code": 5}
            if self.run_states:
                run["state"] = self.run_states.pop(0)
            return 200, run
        return 404, {"error": f"no route {method} {path}", "code": 5}

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _serve(self, method: str) -> None:
                parsed = urlparse(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                with server._lock:
                    server.requests.append(
                        Request(
                            method,
                            parsed.path,
                            parse_qs(parsed.query),
                            body,
                            {k.lower(): v for k, v in self.headers.items()},
                        )
                    )
                    if (
                        server.required_token
                        and self.headers.get("Authorization") != f"Bearer {server.required_token}"
                    ):
                        status, answer = 401, {"error": "unauthenticated", "code": 16}
                    else:
                        status, answer = server._handle(
                            method, parsed.path, parse_qs(parsed.query), body
                        )
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._serve("GET")

            def do_POST(self) -> None:
                self._serve("POST")

        return Handler
