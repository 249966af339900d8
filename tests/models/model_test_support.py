"""Helpers for the model registry/download tests: a real HTTP server on 127.0.0.1.

The server supports ``Range: bytes=N-`` and has per-path modes to misbehave:
``good``, ``wrong`` (same length, other bytes), ``truncate`` (a complete but short
response), ``drop_once`` (first response announces the full length, sends part of it and
drops the connection; later ones behave), ``drop_always``, ``stall`` (headers and a
little of the body, then nothing until ``release`` is set), ``silent`` (takes the request
and answers nothing until ``release`` is set) and ``404``. Independent of the mode, ``cap``
limits every ranged (206) answer to that many bytes, as some servers do, and ``delay``
sends the body in 1 KiB pieces with that many seconds between them.

To send too much: ``extra`` bytes follow the body, framed by ``framing``: ``length``
(Content-Length counts them: the server announces too much), ``close`` (no length, the
body ends when the server closes) or ``chunked``. ``sent`` counts the body bytes the
server managed to write before the client hung up. Every wait is bounded.
"""

from __future__ import annotations

import hashlib
import http.server
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Served:
    body: bytes
    mode: str = "good"
    requests: list = field(default_factory=list)  # Range header of each request (or None)
    cap: int | None = None      # ranged answers carry at most this many bytes
    delay: float = 0.0          # seconds between 1 KiB pieces of the body
    release: threading.Event = field(default_factory=threading.Event)  # ends a ``stall``
    extra: bytes = b""          # sent after the body (see ``framing``)
    framing: str = "length"     # length | close | chunked
    sent: int = 0               # body bytes written to the socket


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    files: dict[str, Served] = {}

    def log_message(self, *args):  # keep test output quiet
        pass

    def do_GET(self):
        served = self.files.get(self.path)
        if served is None or served.mode == "404":
            if served is not None:
                served.requests.append(self.headers.get("Range"))
            self._send_simple(404, b"not found")
            return
        rng = self.headers.get("Range")
        served.requests.append(rng)
        mode = served.mode
        if mode == "silent":
            served.release.wait(10)
            self.close_connection = True
            return
        if served.extra or served.framing != "length":
            self._send_framed(served, rng)
            return
        body = served.body
        if mode == "wrong":
            body = bytes(b ^ 0xFF for b in body)
        start = 0
        if rng:
            m = re.match(r"bytes=(\d+)-$", rng)
            start = int(m.group(1)) if m else 0
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        chunk = body[start:]
        if mode == "truncate":
            chunk = chunk[: len(chunk) // 2]
        if start and served.cap:
            chunk = chunk[: served.cap]
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{start + len(chunk) - 1}/{len(body)}")
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(len(chunk)))
        self.end_headers()
        drop = mode == "drop_always" or (mode == "drop_once" and len(served.requests) == 1)
        if drop:
            self.wfile.write(chunk[: len(chunk) // 2])
            self.wfile.flush()
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        if mode == "stall":
            self.wfile.write(chunk[:1000])
            self.wfile.flush()
            served.release.wait(10)
            return
        if served.delay:
            for i in range(0, len(chunk), 1024):
                self.wfile.write(chunk[i:i + 1024])
                self.wfile.flush()
                time.sleep(served.delay)
            return
        self.wfile.write(chunk)

    def _send_framed(self, served: Served, rng: str | None):
        """The whole body plus ``extra`` as a 200 (a Range is ignored, as servers may)."""
        data = served.body + served.extra
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        if served.framing == "length":
            self.send_header("Content-Length", str(len(data)))
        elif served.framing == "chunked":
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        try:
            for i in range(0, len(data), 64 * 1024):  # bounded by len(data)
                piece = data[i:i + 64 * 1024]
                if served.framing == "chunked":
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                else:
                    self.wfile.write(piece)
                served.sent += len(piece)
            if served.framing == "chunked":
                self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except OSError:  # the client stopped reading and hung up: expected
            pass

    def _send_simple(self, code: int, body: bytes):
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # clients that hang up mid-body (cancel, drop tests) are expected here
        pass


class ModelServer:
    def __init__(self):
        handler = type("Handler", (_Handler,), {"files": {}})
        self.files = handler.files
        self.httpd = _QuietServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def add(self, path: str, body: bytes, mode: str = "good", **options) -> Served:
        served = Served(body, mode, **options)
        self.files[path] = served
        return served

    def url(self, path: str) -> str:
        return self.base + path

    def close(self):
        for served in self.files.values():
            served.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_toml(path: Path, models: dict[str, dict], archives: dict[str, dict] | None = None) -> Path:
    """A small models.toml with the given model tables (values: str, int, list)."""

    def val(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int):
            return str(v)
        if isinstance(v, list):
            return "[" + ", ".join(val(x) for x in v) + "]"
        return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines = [
        "schema = 1",
        "[licenses.nc]",
        'name = "Test licence: non-commercial research only"',
        'url = "https://example.invalid/licence"',
        "commercial_use = false",
        "[licenses.free]",
        'name = "MIT"',
        'url = "https://example.invalid/mit"',
        "commercial_use = true",
    ]
    for name, table in (archives or {}).items():
        lines.append(f"[archives.{name}]")
        lines += [f"{k} = {val(v)}" for k, v in table.items()]
    for name, table in models.items():
        table = {"license": "nc", "needed_by": ["swap"], **table}
        lines.append(f"[models.{name}]")
        lines += [f"{k} = {val(v)}" for k, v in table.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
