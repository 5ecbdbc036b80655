"""Local HTTP servers on 127.0.0.1 that misbehave on purpose, for download fault tests.

Nothing here touches the internet. `FaultServer` serves one payload at any path, as a plain
file server (CIFAR-10 archive) and as a stand-in for the Hugging Face Hub's
`/<repo>/resolve/<rev>/<file>` endpoint (the HEAD answer carries `X-Repo-Commit` and `ETag`,
which `huggingface_hub` needs). Its `mode` picks the fault:

    "ok"          the whole payload, with Content-Length
    "no-length"   the whole payload, no Content-Length (the size is unknown until the end)
    "short"       Content-Length of the whole payload, half of it, then the connection closes
    "hang"        accept the connection and never answer (no status line)
    "hang-body"   headers and the first 1000 bytes, then nothing
    "500"         HTTP 500 on every request

`refused_url()` is an address where nothing listens (connection refused).
"""

from __future__ import annotations

import hashlib
import http.server
import socket
import socketserver
import threading


class FaultServer:
    """A threaded local HTTP server; use as a context manager (hanging handlers are released on exit)."""

    def __init__(self, payload: bytes, mode: str = "ok", files: dict[str, bytes | None] | None = None) -> None:
        self.payload = payload
        self.mode = mode
        self.files = files or {}  # file name -> bytes served whole (None: 404), whatever the mode
        self.requests: list[tuple[str, str]] = []  # (method, path)
        self._release = threading.Event()
        self._httpd = _Server(("127.0.0.1", 0), _handler(self))
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="fault-server", daemon=True)
        self._thread.start()

    def __enter__(self) -> FaultServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._release.set()
        self._httpd.shutdown()
        self._httpd.server_close()


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def _handler(srv: FaultServer) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _head(self, length: bool = True) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("X-Repo-Commit", "0" * 40)
            self.send_header("ETag", f'"{hashlib.sha256(srv.payload).hexdigest()}"')
            if length:
                self.send_header("Content-Length", str(len(srv.payload)))
            else:
                self.send_header("Connection", "close")
            self.end_headers()

        def _fault(self) -> bool:
            """Handle the modes that fail before any header, and `files`; True when handled."""
            srv.requests.append((self.command, self.path))
            name = self.path.rsplit("/", 1)[-1]
            if name in srv.files:
                body = srv.files[name]
                self.send_response(404 if body is None else 200)
                self.send_header("X-Repo-Commit", "0" * 40)
                self.send_header("ETag", f'"{hashlib.sha256(body or b"").hexdigest()}"')
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                if body and self.command == "GET":
                    self.wfile.write(body)
                return True
            if srv.mode == "hang":
                srv._release.wait(120)
                self.close_connection = True
                return True
            if srv.mode == "500":
                self.send_response(500)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return True
            return False

        def do_HEAD(self) -> None:
            if not self._fault():
                self._head()

        def do_GET(self) -> None:
            if self._fault():
                return
            data = srv.payload
            if srv.mode == "no-length":
                self._head(length=False)
                self.wfile.write(data)
                self.close_connection = True
            elif srv.mode == "short":
                self._head()
                self.wfile.write(data[: len(data) // 2])
                self.close_connection = True
            elif srv.mode == "hang-body":
                self._head()
                self.wfile.write(data[:1000])
                self.wfile.flush()
                srv._release.wait(120)
                self.close_connection = True
            else:
                self._head()
                self.wfile.write(data)

    return Handler


def refused_url() -> str:
    """An http URL on 127.0.0.1 where nothing listens: connecting is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"
