"""A local HTTP server standing in for SendGrid, Twilio, Slack, webhook receivers and price maps.

It records every request (method, path, headers, body) and answers from a
script per path: a list of (status, headers, body, delay) consumed in order,
then the path's default answer.
"""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float = field(default_factory=time.monotonic)

    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers.items() if k.lower() == name.lower()), None)


@dataclass
class Answer:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b"ok"
    delay_s: float = 0.0


TWILIO_MESSAGE = {
    "sid": "SM00000000000000000000000000000000",
    "status": "queued",
    "error_code": None,
    "error_message": None,
    "num_segments": "1",
}


class Receiver:
    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.scripts: dict[str, list[Answer]] = defaultdict(list)
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.answer("GET", b"")

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.answer("POST", self.rfile.read(length))

            def answer(self, method: str, body: bytes) -> None:
                path = self.path.split("?", 1)[0]
                with receiver.lock:
                    receiver.requests.append(Received(method, self.path, dict(self.headers.items()), body))
                    script = receiver.scripts.get(path)
                    answer = script.pop(0) if script else receiver.default(path)
                if answer.delay_s:
                    time.sleep(answer.delay_s)
                try:
                    self.send_response(answer.status)
                    for name, value in answer.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(answer.body)))
                    self.end_headers()
                    self.wfile.write(answer.body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="receiver", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def default(self, path: str) -> Answer:
        if path.startswith("/2010-04-01/Accounts/"):
            return Answer(201, {"Content-Type": "application/json"}, json.dumps(TWILIO_MESSAGE).encode())
        if path == "/v3/mail/send":
            return Answer(202, {}, b"")
        return Answer()

    def script(self, path: str, *answers: Answer) -> None:
        with self.lock:
            self.scripts[path].extend(answers)

    def at(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.requests if r.path.split("?", 1)[0] == path]

    def wait_for(self, path: str, count: int, timeout_s: float = 30) -> list[Received]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = self.at(path)
            if len(found) >= count:
                return found
            time.sleep(0.02)
        return self.at(path)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()
