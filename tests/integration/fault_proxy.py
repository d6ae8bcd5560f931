"""A real HTTP hop in front of the real vLLM server that misbehaves on demand.

Not a stand-in for vLLM: every request it lets through is answered by the real server.
It only adds what a production network and a struggling server add: ``fail(path, n)``
answers the next ``n`` requests to ``path`` with a 503, ``slow(seconds)`` delays every
request by that much before forwarding it.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

FORWARDED_HEADERS = ("content-type", "authorization")


class FaultProxy:
    def __init__(self, upstream: str):
        self.upstream = upstream
        self.failures: Counter[str] = Counter()  # path -> 503s still to answer
        self.injected: Counter[str] = Counter()  # path -> 503s answered
        self.forwarded: Counter[str] = Counter()
        self.delay_s = 0.0
        self._client = httpx.Client(base_url=upstream, timeout=300)
        handler = type("FaultHandler", (_Handler,), {"proxy": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def fail(self, path: str, times: int) -> None:
        self.failures[path] += times

    def slow(self, seconds: float) -> None:
        self.delay_s = seconds

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._client.close()


class _Handler(BaseHTTPRequestHandler):
    proxy: FaultProxy

    def do_GET(self) -> None:
        self._relay("GET")

    def do_POST(self) -> None:
        self._relay("POST")

    def _relay(self, method: str) -> None:
        path = self.path.split("?", 1)[0]
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.proxy.failures[path] > 0:
            self.proxy.failures[path] -= 1
            self.proxy.injected[path] += 1
            return self._answer(503, b'{"error": {"message": "injected 503"}}', "application/json")
        time.sleep(self.proxy.delay_s)
        headers = {k: v for k, v in self.headers.items() if k.lower() in FORWARDED_HEADERS}
        upstream = self.proxy._client.request(method, self.path, content=body, headers=headers)
        self.proxy.forwarded[path] += 1
        kind = upstream.headers.get("content-type", "application/json")
        self._answer(upstream.status_code, upstream.content, kind)

    def _answer(self, code: int, body: bytes, kind: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass
