"""The HTTP endpoints: /metrics, /-/healthy, /-/ready, /-/reload and a landing page.

A threaded stdlib server: each connection is handled in its own thread, so a
slow or idle client never blocks other scrapes.  Everything per connection
(and, when ``--web.config.file`` brings TLS, the handshake) happens in that
thread, never in the accept loop: prometheus_client's built-in server
handshakes in its accept thread, and one client that connects without
handshaking stalls every scrape (FIELD-NOTES).
"""

from __future__ import annotations

import dataclasses
import html
import http.server
import ipaddress
import logging
import socket
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Final

from exporter import __version__
from exporter.reasons import UsageError

log = logging.getLogger("sni_exporter.http")

CONTENT_TYPE_METRICS: Final = "text/plain; version=0.0.4; charset=utf-8"
# A scraper or probe that opens a connection and goes quiet is dropped after this.
CLIENT_TIMEOUT_SECONDS: Final = 30.0


def parse_listen_address(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``:PORT`` (all interfaces) or ``[IPV6]:PORT``, as Go exporters take it."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise UsageError(
            f"--web.listen-address {text!r}: expected HOST:PORT, :PORT or [IPV6]:PORT "
            "with a port from 0 to 65535"
        )
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise UsageError(
                f"--web.listen-address {text!r}: {host!r} is not an IPv6 address"
            ) from None
    elif ":" in host:
        raise UsageError(
            f"--web.listen-address {text!r}: put IPv6 addresses in brackets, e.g. [::1]:9866"
        )
    return host, int(port_text)


def check_telemetry_path(path: str) -> None:
    if not path.startswith("/") or path in {"/", "/-/healthy", "/-/ready", "/-/reload"}:
        raise UsageError(
            f"--web.telemetry-path {path!r}: must start with '/' and not be '/' or a /-/ endpoint"
        )


@dataclasses.dataclass(frozen=True)
class Routes:
    """What the endpoints call.  All are thread-safe."""

    telemetry_path: str
    metrics: Callable[[bool], Sequence[bytes]]  # gzipped? -> body, in parts written in order
    ready: Callable[[], bool]
    reload: Callable[[], tuple[bool, str]]


def landing_page(telemetry_path: str) -> bytes:
    path = html.escape(telemetry_path)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>sni-exporter</title></head>
<body>
<h1>sni-exporter {html.escape(__version__)}</h1>
<p>Tells which TLS endpoints need SNI, before a client that sends none breaks.</p>
<ul>
<li><a href="{path}">{path}</a>: the metrics</li>
<li><a href="/-/healthy">/-/healthy</a>: the process is up</li>
<li><a href="/-/ready">/-/ready</a>: configuration loaded, first round of probes done</li>
<li>POST /-/reload: read the targets file again (as does SIGHUP)</li>
</ul>
</body></html>
""".encode()


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    timeout = CLIENT_TIMEOUT_SECONDS
    server_version = f"sni-exporter/{__version__}"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        log.debug("%s", format % args, extra={"fields": {"client": self.client_address[0]}})

    def _send(
        self,
        status: int,
        body: bytes | Sequence[bytes],
        content_type: str = "text/plain; charset=utf-8",
        headers: dict[str, str] | None = None,
    ) -> None:
        # A body in parts is written part by part: joining 25 MB per scrape would
        # cost a copy and hold the GIL.
        parts = (body,) if isinstance(body, bytes) else body
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(sum(len(part) for part in parts)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            for part in parts:
                self.wfile.write(part)

    def _route_get(self) -> None:
        routes = self.server.routes
        path = self.path.split("?", 1)[0]
        if path == routes.telemetry_path:
            gz = "gzip" in self.headers.get("Accept-Encoding", "")
            headers = {"Content-Encoding": "gzip"} if gz else {}
            self._send(200, routes.metrics(gz), CONTENT_TYPE_METRICS, headers)
        elif path == "/-/healthy":
            self._send(200, b"Healthy.\n")
        elif path == "/-/ready":
            if routes.ready():
                self._send(200, b"Ready.\n")
            else:
                self._send(503, b"Not ready: the first round of probes has not finished.\n")
        elif path == "/-/reload":
            self._send(405, b"Use POST or PUT to reload.\n", headers={"Allow": "POST, PUT"})
        elif path == "/":
            self._send(200, landing_page(routes.telemetry_path), "text/html; charset=utf-8")
        else:
            self._send(404, b"Not found.\n")

    def do_GET(self) -> None:
        self._route_get()

    def do_HEAD(self) -> None:
        self._route_get()

    def do_POST(self) -> None:
        if self.path.split("?", 1)[0] != "/-/reload":
            self._send(
                405 if self.path in {"/", self.server.routes.telemetry_path} else 404,
                b"Not found.\n",
            )
            return
        ok, message = self.server.routes.reload()
        self._send(
            200 if ok else 500, f"{'reloaded' if ok else 'reload failed'}: {message}\n".encode()
        )

    do_PUT = do_POST  # noqa: N815 (BaseHTTPRequestHandler dispatches on this name)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    routes: Routes

    def handle_error(self, _request: object, client_address: object) -> None:
        # socketserver prints a traceback to stderr for any error, including a
        # client that resets or times out: routine for an HTTP server, and never
        # worth a traceback in the exporter's log.
        error = sys.exc_info()[1]
        if isinstance(error, OSError):
            log.debug(
                "client connection failed",
                extra={"fields": {"client": str(client_address), "err": repr(error)}},
            )
        else:
            log.error(
                "request failed", exc_info=error, extra={"fields": {"client": str(client_address)}}
            )


class _Server6(_Server):
    address_family = socket.AF_INET6


class HTTPServer:
    """Binds at construction (so a busy port fails before anything starts), serves on start()."""

    def __init__(self, address: tuple[str, int], routes: Routes) -> None:
        host, port = address
        family = (
            socket.AF_INET6 if ":" in host or (host == "" and socket.has_ipv6) else socket.AF_INET
        )
        bind_host = "::" if host == "" and family == socket.AF_INET6 else host
        server_class = _Server6 if family == socket.AF_INET6 else _Server
        try:
            self._server = server_class((bind_host, port), _Handler, bind_and_activate=False)
            if family == socket.AF_INET6 and host == "":
                # ":PORT" means every interface, IPv4 included.
                self._server.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            self._server.server_bind()
            self._server.server_activate()
        except OSError as error:
            raise UsageError(f"cannot listen on {host or '*'}:{port}: {error.strerror}") from None
        self._server.routes = routes
        self._thread = threading.Thread(target=self._server.serve_forever, name="http", daemon=True)

    @property
    def address(self) -> str:
        host, port = self._server.server_address[:2]
        host = host.decode() if isinstance(host, bytes) else host
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()
