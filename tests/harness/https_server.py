"""An https server on 127.0.0.1 with a throwaway self-signed certificate, counting its requests.

:class:`Server` runs in the test's process (unit tests). ``python https_server.py DIR`` runs one
in the foreground, for a network namespace the test made: it makes ``DIR/cert.pem``, serves the
files of ``DIR/files/`` and writes its port to ``DIR/port`` and, after every request,
the counts per path to ``DIR/counts.json``.
"""

from __future__ import annotations

import http.server
import json
import shutil
import ssl
import subprocess
import sys
import threading
from pathlib import Path
from typing import Callable, Dict, Optional


def make_certificate(directory: Path) -> tuple:
    """(cert.pem, key.pem) for 127.0.0.1 in ``directory``, made with openssl."""
    if shutil.which("openssl") is None:
        raise FileNotFoundError("openssl")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                    "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    return cert, key


class Server:
    """Serves ``routes`` (path -> bytes, or ("redirect", url)) over TLS on 127.0.0.1, counting the
    requests per path; ``on_request`` is called after each."""

    def __init__(self, directory: Path, on_request: Optional[Callable[[Dict[str, int]], None]] = None):
        self.cert, key = make_certificate(directory)
        self.routes, self.counts = {}, {}
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                server.counts[self.path] = server.counts.get(self.path, 0) + 1
                if on_request is not None:
                    on_request(dict(server.counts))
                route = server.routes.get(self.path)
                if route is None:
                    self.send_error(404)
                elif isinstance(route, tuple):
                    self.send_response(302)
                    self.send_header("Location", route[1])
                    self.end_headers()
                else:
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(route)))
                    self.end_headers()
                    self.wfile.write(route)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, key)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def start(self) -> "Server":
        self.thread.start()
        return self

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    def url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.port}{path}"

    def client(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cert))

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def main(directory: Path) -> None:
    counts = directory / "counts.json"

    def record(now: Dict[str, int]) -> None:
        tmp = counts.with_suffix(".tmp")
        tmp.write_text(json.dumps(now))
        tmp.replace(counts)

    server = Server(directory, on_request=record)
    for path in sorted((directory / "files").glob("*")):
        server.routes[f"/{path.name}"] = path.read_bytes()
    (directory / "port").write_text(str(server.port))
    server.httpd.serve_forever()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
