"""A local server that speaks the Hugging Face Hub's file protocol, for tests that fetch weights without any outside
network (`HF_ENDPOINT=http://127.0.0.1:<port>`).

It serves folders as model repositories at one commit each: the repository's info (`/api/models/<id>` and
`…/revision/<rev>`, with its files as `siblings`), its file tree (`/api/models/<id>/tree/<rev>`) and its files
(`/<id>/resolve/<rev>/<path>`, HEAD and GET, with the headers `huggingface_hub` reads: `X-Repo-Commit`, `ETag`,
`Content-Length`). Every request is logged, so a test can tell what was fetched.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse


class LocalHub:
    def __init__(self, repos: dict[str, Path]):
        self.repos = repos  # repo id -> folder
        self.requests: list[tuple[str, str]] = []  # (method, path)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> LocalHub:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def files(self, repo: str) -> dict[str, Path]:
        folder = self.repos[repo]
        return {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}

    def commit(self, repo: str) -> str:
        digest = hashlib.sha1()
        for name, path in self.files(repo).items():
            digest.update(name.encode() + _etag(path).encode())
        return digest.hexdigest()


def _etag(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _handler(hub: LocalHub):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # the test reads `hub.requests` instead
            pass

        def do_HEAD(self) -> None:
            self._answer(body=False)

        def do_GET(self) -> None:
            self._answer(body=True)

        def _answer(self, body: bool) -> None:
            path = unquote(urlparse(self.path).path)
            hub.requests.append((self.command, path))
            repo = next((r for r in hub.repos if path.startswith((f"/api/models/{r}", f"/{r}/resolve/"))), None)
            if repo is None:
                return self._send(404, b'{"error": "Repository not found"}', body, {"X-Error-Code": "RepoNotFound"})
            files, commit = hub.files(repo), hub.commit(repo)
            if path.startswith(f"/api/models/{repo}/tree/"):
                tree = [
                    {"type": "file", "path": name, "size": p.stat().st_size, "oid": _etag(p)}
                    for name, p in files.items()
                ]
                return self._json(tree, body)
            if path.startswith(f"/api/models/{repo}"):
                siblings = [{"rfilename": name} for name in files]
                return self._json(
                    {"id": repo, "modelId": repo, "sha": commit, "siblings": siblings, "private": False}, body
                )
            match = re.fullmatch(rf"/{re.escape(repo)}/resolve/[^/]+/(.+)", path)
            file = files.get(match.group(1)) if match else None
            if file is None:
                return self._send(
                    404, b"Entry not found", body, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": commit}
                )
            headers = {"X-Repo-Commit": commit, "ETag": f'"{_etag(file)}"', "Content-Type": "application/octet-stream"}
            self._send(200, file.read_bytes(), body, headers)

        def _json(self, document, body: bool) -> None:
            self._send(200, json.dumps(document).encode(), body, {"Content-Type": "application/json"})

        def _send(self, status: int, content: bytes, body: bool, headers: dict[str, str]) -> None:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            if body:
                self.wfile.write(content)

    return Handler
