"""haproxy configuration for the demo fleet: TLS frontends with ``strict-sni``.

haproxy runs in the foreground (``-db``); there is no ``user``/``daemon``
directive, so the same file works for root and for normal users.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path


@dataclasses.dataclass(frozen=True, slots=True)
class Frontend:
    """One TLS frontend: ``pem`` holds chain then key; ``strict_sni`` rejects handshakes
    whose SNI matches no certificate, including those without SNI."""

    name: str
    address: str
    port: int
    pem: Path
    strict_sni: bool = True


def _frontend(frontend: Frontend) -> str:
    host = f"[{frontend.address}]" if ":" in frontend.address else frontend.address
    strict = " strict-sni" if frontend.strict_sni else ""
    return (
        f"frontend {frontend.name}\n"
        f"    bind {host}:{frontend.port} ssl crt {frontend.pem}{strict}\n"
        f'    http-request return status 200 content-type text/plain string "{frontend.name}\\n"\n'
    )


def haproxy_config(frontends: Sequence[Frontend]) -> str:
    """The whole haproxy.cfg for ``frontends``."""
    return (
        "# Written by exporter.demo.fleet; regenerated on every start.\n"
        "global\n"
        "    maxconn 512\n"
        "defaults\n"
        "    mode http\n"
        "    timeout connect 5s\n"
        "    timeout client 30s\n"
        "    timeout server 30s\n" + "".join(_frontend(frontend) for frontend in frontends)
    )
