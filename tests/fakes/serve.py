"""Serve a fake broker on 127.0.0.1, for tests that run mbx as processes or point an adapter at
a ``base_url``: each request is handed to the fake's ``handle`` (the same code the in-process
``httpx.MockTransport`` runs), under a lock, so the test can read and switch the fake's state
while the server runs. A transport failure the fake raises (its outage or lost-reply faults)
drops the connection without an answer, as the network would. A request on a kept-alive
connection carries ``reused_connection`` in its extensions (for the fakes' closed-idle-connection
fault); a response marked ``delay_s`` (the fakes' slow replies) is sent that much later, outside
the lock, so other requests are answered meanwhile."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

Handle = Callable[[httpx.Request], httpx.Response]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    handle_request: Handle
    lock: threading.Lock

    served: int = 0
    """Requests answered on this connection so far (the handler lives as long as it)."""

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        host, port = self.server.server_address[:2]
        request = httpx.Request(
            self.command,
            f"http://{host!s}:{port}{self.path}",
            headers=dict(self.headers.items()),
            content=body,
            extensions={"reused_connection": self.served > 0},
        )
        self.served += 1
        try:
            with self.lock:
                response = self.handle_request(request)
        except httpx.TransportError:
            self.close_connection = True
            self.connection.close()
            return
        content = response.read()
        delay = float(response.extensions.get("delay_s") or 0)
        if delay:
            time.sleep(delay)  # a slow broker: the client's deadline may pass first
        self.send_response(response.status_code)
        for name, value in response.headers.items():
            if name.lower() not in ("content-length", "transfer-encoding", "connection"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(content)))
        try:
            self.end_headers()
            self.wfile.write(content)
        except (BrokenPipeError, ConnectionResetError):  # the client stopped waiting (a slow reply)
            self.close_connection = True

    do_GET = do_POST = do_DELETE = do_PATCH = _serve

    def log_message(self, format: str, *args: object) -> None:
        return


@contextlib.contextmanager
def serve(handle: Handle) -> Iterator[tuple[str, threading.Lock]]:
    """Run ``handle`` behind an HTTP server on a free loopback port; yields its base URL and the
    lock the server holds while the fake handles a request."""
    lock = threading.Lock()
    handler = type("FakeBrokerHandler", (_Handler,), {"handle_request": staticmethod(handle), "lock": lock})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="fake-broker", daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        yield f"http://{host!s}:{port}", lock
    finally:
        server.shutdown()
        server.server_close()
