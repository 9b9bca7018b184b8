"""A stand-in for a Hugging Face hub on 127.0.0.1: what huggingface_hub asks of one to
list a repo (repo info, the file tree with LFS sha256 and sizes) and to download a file
(``resolve`` with ETag, X-Repo-Commit, Content-Length, Range; HEAD too). Faults on
demand: bytes that do not match the advertised sha256, a connection dropped halfway
the first time, a redirect to another host name (``localhost``)."""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class Served:
    source: Path
    size: int
    sha256: str
    git_oid: str


@dataclass
class Hub:
    """The repos and files served, and the faults to inject."""

    repos: dict[str, dict[str, Served]] = field(default_factory=dict)
    corrupt: set[str] = field(default_factory=set)
    drop_once: set[str] = field(default_factory=set)
    redirect: bool = False
    port: int = 0
    gets: list[tuple[str, str]] = field(default_factory=list)
    """(path, Range header) of every file GET."""
    tokens: list[tuple[str, str]] = field(default_factory=list)
    """(URL path, Authorization header) of every request."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add(self, repo: str, name: str, source: Path) -> Served:
        data_hash, git = hashlib.sha256(), hashlib.sha1()
        size = source.stat().st_size
        git.update(f"blob {size}\0".encode())
        with open(source, "rb") as handle:
            while chunk := handle.read(4 << 20):
                data_hash.update(chunk)
                git.update(chunk)
        served = Served(source, size, data_hash.hexdigest(), git.hexdigest())
        self.repos.setdefault(repo, {})[name] = served
        return served


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hub: Hub

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:
        self._route(body=False)

    def do_GET(self) -> None:
        self._route(body=True)

    def _route(self, body: bool) -> None:
        path = unquote(urlsplit(self.path).path)
        self.hub.tokens.append((path, self.headers.get("Authorization", "")))
        if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/[^/]+/?(.*)", path):
            return self._tree(m[1])
        if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/revision/[^/]+", path):
            return self._info(m[1])
        if m := re.fullmatch(r"/(?:cdn/)?([^/]+/[^/]+)/resolve/[^/]+/(.+)", path):
            return self._file(m[1], m[2], body, cdn=path.startswith("/cdn/"))
        self._answer(404, b"{}", {"X-Error-Code": "EntryNotFound"})

    def _repo(self, repo: str) -> dict[str, Served] | None:
        files = self.hub.repos.get(repo)
        if files is None:
            message = b'{"error": "Repository not found"}'
            self._answer(404, message, {"X-Error-Code": "RepoNotFound"})
        return files

    def _tree(self, repo: str) -> None:
        if (files := self._repo(repo)) is None:
            return
        listing = [
            {"type": "file", "oid": s.git_oid, "size": s.size, "path": name,
             "lfs": {"oid": s.sha256, "size": s.size, "pointerSize": 134}}
            for name, s in files.items()
        ]  # fmt: skip
        self._answer(200, json.dumps(listing).encode())

    def _info(self, repo: str) -> None:
        if (files := self._repo(repo)) is None:
            return
        info = {"id": repo, "sha": COMMIT, "siblings": [{"rfilename": n} for n in files]}
        self._answer(200, json.dumps(info).encode())

    def _file(self, repo: str, name: str, body: bool, cdn: bool) -> None:
        if (files := self._repo(repo)) is None:
            return
        served = files.get(name)
        if served is None:
            return self._answer(404, b"{}", {"X-Error-Code": "EntryNotFound"})
        headers = {"X-Repo-Commit": COMMIT, "X-Linked-Etag": f'"{served.sha256}"',
                   "X-Linked-Size": str(served.size), "ETag": f'"{served.sha256}"',
                   "Accept-Ranges": "bytes"}  # fmt: skip
        if self.hub.redirect and not cdn:
            where = f"http://localhost:{self.hub.port}/cdn/{repo}/resolve/{COMMIT}/{name}"
            return self._answer(302, b"", {**headers, "Location": where})
        if body:
            self.hub.gets.append((name, self.headers.get("Range", "")))
        start = 0
        if m := re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", "")):
            start = int(m[1])
        self.send_response(206 if start else 200)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(served.size - start))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{served.size - 1}/{served.size}")
        self.end_headers()
        if body:
            self._send_bytes(served, name, start)

    def _send_bytes(self, served: Served, name: str, start: int) -> None:
        stop = served.size
        if name in self.hub.drop_once:
            self.hub.drop_once.discard(name)
            stop = start + (served.size - start) // 2
        with open(served.source, "rb") as handle:
            handle.seek(start)
            data = handle.read(stop - start)
        if name in self.hub.corrupt:  # same size, other bytes: only a hash can tell
            middle = served.size // 2 - start
            if 0 <= middle < len(data):
                data = data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]
        self.wfile.write(data)
        if stop < served.size:
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)

    def _answer(self, status: int, data: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)


@contextmanager
def running(hub: Hub) -> Iterator[Hub]:
    """Serve ``hub`` on 127.0.0.1 (a free port) until the block ends."""
    handler = type("Handler", (_Handler,), {"hub": hub})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    hub.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, name="hub-standin", daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
