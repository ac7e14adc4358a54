"""A tiny stdlib HTTP server that fails on purpose: it answers every request with one status
(401, 403, 500, ...) or accepts connections and never answers ("hang")."""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FaultServer:
    """``FaultServer(401)`` answers 401 to everything; ``FaultServer("hang")`` never answers."""

    def __init__(self, behaviour: int | str) -> None:
        self.behaviour = behaviour
        self.requests: list[str] = []  # "METHOD path" of each request seen
        self.headers: list[dict[str, str]] = []
        self._stop = threading.Event()
        self._sockets: list[socket.socket] = []
        self._thread: threading.Thread | None = None
        self._server: ThreadingHTTPServer | None = None
        self._listener: socket.socket | None = None
        self.port = 0

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> FaultServer:
        if self.behaviour == "hang":
            self._listener = socket.create_server(("127.0.0.1", 0), backlog=64)
            self.port = self._listener.getsockname()[1]
            target = self._accept_forever
        else:
            self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
            self._server.daemon_threads = True
            self.port = self._server.server_address[1]
            target = self._server.serve_forever
        self._thread = threading.Thread(target=target, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._listener is not None:
            self._listener.close()
        for sock in self._sockets:
            sock.close()

    def _accept_forever(self) -> None:
        assert self._listener is not None
        while not self._stop.is_set():
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return  # closed by __exit__
            self._sockets.append(sock)  # held open, never read, never answered
            self.requests.append("connection")

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                server.requests.append(f"{self.command} {self.path}")
                server.headers.append(dict(self.headers))
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                body = f"fault server: {server.behaviour}".encode()
                self.send_response(int(server.behaviour))
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _answer

            def log_message(self, format: str, *args: object) -> None:
                pass  # quiet

        return Handler
