"""Small stdlib servers for the behaviours no real server shows on demand.

Run as ``python -m exporter.demo.hostile SPEC.json``; the demo fleet starts
it as a child process.  ``SPEC.json`` is a list of listeners::

    [{"kind": "alert-no-sni", "address": "127.0.0.1", "port": 19447,
      "names": ["cdn.demo.test"], "cert": "certs/cdn.crt", "key": "certs/cdn.key"}, ...]

Kinds:

- ``alert-no-sni``: TLS; a ClientHello without SNI gets a fatal
  handshake_failure alert (40), as some CDNs send; an SNI naming another host
  gets unrecognized_name (112), so a test can tell "no SNI" from "wrong SNI".
- ``reset-no-sni``: reads the ClientHello without consuming it and answers a
  missing server_name extension with a TCP reset (the support article's
  ``errno=54``); with SNI it completes the handshake.
- ``reset-on-accept``: a TCP reset right after accept.
- ``stall``: accepts and never answers.
- ``plain-http``: answers the ClientHello with an HTTP 400, as a plain HTTP
  server on a TLS port does.

Each connection runs in its own thread, bounded in number and in time, so a
stalled client never blocks the others and nothing lingers.
"""

from __future__ import annotations

import json
import socket
import ssl
import struct
import sys
import threading
from pathlib import Path
from typing import Any, Final

KINDS: Final = ("alert-no-sni", "reset-no-sni", "reset-on-accept", "stall", "plain-http")

_MAX_CONNECTIONS: Final = 256  # per listener; beyond it connections are reset at once
_IO_TIMEOUT: Final = 10.0  # any single read or write
_STALL_LIMIT: Final = 120.0  # a stalled connection is dropped after this
_ABORTIVE_LINGER: Final = struct.pack("ii", 1, 0)
_HTTP_400: Final = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: 35\r\n"
    b"Connection: close\r\n\r\nThis port speaks plain HTTP, not TLS"
)
_HTTP_200: Final = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n"


def client_hello_server_names(record: bytes) -> list[str] | None:
    """The server_name entries of a TLS ClientHello record, or None if it is not one.

    ``record`` starts at the record header.  An empty list means a valid
    ClientHello without the server_name extension (RFC 6066 section 3).
    """
    try:
        if record[0] != 0x16 or record[5] != 0x01:  # handshake record, ClientHello
            return None
        pos = 5 + 4 + 2 + 32  # record header, handshake header, version, random
        pos += 1 + record[pos]  # session id
        pos += 2 + int.from_bytes(record[pos : pos + 2], "big")  # cipher suites
        pos += 1 + record[pos]  # compression methods
        end = pos + 2 + int.from_bytes(record[pos : pos + 2], "big")
        pos += 2
        while pos + 4 <= end:
            ext_type = int.from_bytes(record[pos : pos + 2], "big")
            ext_len = int.from_bytes(record[pos + 2 : pos + 4], "big")
            body = record[pos + 4 : pos + 4 + ext_len]
            if ext_type == 0:
                return _server_names(body)
            pos += 4 + ext_len
    except IndexError:
        return None
    return []


def _server_names(body: bytes) -> list[str]:
    names: list[str] = []
    pos = 2  # server_name_list length
    while pos + 3 <= len(body):
        name_type = body[pos]
        length = int.from_bytes(body[pos + 1 : pos + 3], "big")
        if name_type == 0:  # host_name
            names.append(body[pos + 3 : pos + 3 + length].decode("ascii", "replace"))
        pos += 3 + length
    return names


def _reset(conn: socket.socket) -> None:
    """Close with a TCP RST instead of a FIN."""
    try:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _ABORTIVE_LINGER)
    finally:
        conn.close()


def _peek_client_hello(conn: socket.socket) -> bytes:
    """The first TLS record, read with MSG_PEEK so the TLS layer still sees all of it."""
    header = conn.recv(5, socket.MSG_PEEK | socket.MSG_WAITALL)
    if len(header) < 5:
        return header
    length = int.from_bytes(header[3:5], "big")
    return conn.recv(5 + length, socket.MSG_PEEK | socket.MSG_WAITALL)


class Listener:
    """One listening socket and the threads serving its connections."""

    def __init__(self, spec: dict[str, Any], base: Path) -> None:
        self.kind: str = spec["kind"]
        if self.kind not in KINDS:
            raise ValueError(f"unknown kind {self.kind!r}; expected one of {', '.join(KINDS)}")
        self.names = frozenset(name.lower() for name in spec.get("names", ()))
        self.context: ssl.SSLContext | None = None
        if self.kind in {"alert-no-sni", "reset-no-sni"}:
            self.context = self._tls_context(base / spec["cert"], base / spec["key"])
        address: str = spec["address"]
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((address, int(spec["port"])))
        self.sock.listen(128)
        self.slots = threading.BoundedSemaphore(_MAX_CONNECTIONS)

    def _tls_context(self, cert: Path, key: Path) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        context.num_tickets = 0
        if self.kind == "alert-no-sni":
            context.sni_callback = self._check_sni
        return context

    def _check_sni(
        self, _sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext
    ) -> int | None:
        if name is None:
            return ssl.ALERT_DESCRIPTION_HANDSHAKE_FAILURE
        if name.lower() not in self.names:
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        return None

    def serve_forever(self) -> None:
        while True:
            conn, _peer = self.sock.accept()
            if not self.slots.acquire(blocking=False):
                _reset(conn)
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(_IO_TIMEOUT)
            handler = getattr(self, "_" + self.kind.replace("-", "_"))
            handler(conn)
        except OSError:
            pass  # the client went away or misbehaved: nothing to report
        finally:
            conn.close()
            self.slots.release()

    def _reset_on_accept(self, conn: socket.socket) -> None:
        _reset(conn)

    def _stall(self, conn: socket.socket) -> None:
        # Read and discard until the client gives up; never answer.
        conn.settimeout(_STALL_LIMIT)
        while conn.recv(4096):
            pass

    def _plain_http(self, conn: socket.socket) -> None:
        conn.recv(65536)  # the ClientHello, taken as a (bad) request
        conn.sendall(_HTTP_400)
        # Half-close and drain, so that the close is a FIN and not a reset
        # (closing with unread data would send RST and might drop the answer).
        conn.shutdown(socket.SHUT_WR)
        while conn.recv(4096):
            pass

    def _reset_no_sni(self, conn: socket.socket) -> None:
        names = client_hello_server_names(_peek_client_hello(conn))
        if not names:
            _reset(conn)
            return
        self._tls(conn)

    def _alert_no_sni(self, conn: socket.socket) -> None:
        self._tls(conn)

    def _tls(self, conn: socket.socket) -> None:
        if self.context is None:
            raise OSError(f"{self.kind} has no TLS context")
        with self.context.wrap_socket(conn, server_side=True) as tls:
            tls.recv(4096)
            tls.sendall(_HTTP_200)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m exporter.demo.hostile SPEC.json", file=sys.stderr)
        return 2
    spec_path = Path(argv[0])
    specs: list[dict[str, Any]] = json.loads(spec_path.read_text())
    listeners = [Listener(spec, spec_path.parent) for spec in specs]
    threads = [threading.Thread(target=lst.serve_forever, daemon=True) for lst in listeners]
    for thread in threads:
        thread.start()
    print(f"hostile: {len(listeners)} listeners ready", flush=True)
    for thread in threads:
        thread.join()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
