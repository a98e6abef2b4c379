"""nginx configuration for the demo fleet: one foreground process, many listeners.

Everything nginx writes (pid, error log, temp directories) lives under the
fleet's state directory, and the process stays in the foreground as a single
process (``daemon off; master_process off``) so the fleet can stop it by its
pid.  No ``user`` directive: without a master process nginx never switches
users, so the same file works for root and for normal users.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path


@dataclasses.dataclass(frozen=True, slots=True)
class Site:
    """One nginx server block.

    ``server_name`` None makes it the listener's ``default_server``, which
    answers handshakes without SNI (and with unknown names).  ``certificate``
    None rejects those handshakes (``ssl_reject_handshake on``).
    """

    address: str
    port: int
    server_name: str | None
    certificate: tuple[Path, Path] | None  # (full chain .crt, .key)


def _listen(site: Site) -> str:
    host = f"[{site.address}]" if ":" in site.address else site.address
    default = " default_server" if site.server_name is None else ""
    return f"{host}:{site.port} ssl{default}"


def _server_block(site: Site) -> str:
    lines = [f"listen {_listen(site)};"]
    if site.server_name is not None:
        lines.append(f"server_name {site.server_name};")
    if site.certificate is None:
        lines.append("ssl_reject_handshake on;")
    else:
        crt, key = site.certificate
        lines += [f"ssl_certificate {crt};", f"ssl_certificate_key {key};"]
    label = site.server_name or "default"
    lines.append(f'return 200 "{label} on port {site.port}\\n";')
    body = "".join(f"        {line}\n" for line in lines)
    return f"    server {{\n{body}    }}\n"


def nginx_config(directory: Path, sites: Sequence[Site]) -> str:
    """The whole nginx.conf for ``sites``; runtime files go under ``directory``."""
    temp = directory / "tmp"
    paths = "".join(
        f"    {kind}_temp_path {temp / kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    servers = "".join(_server_block(site) for site in sites)
    return (
        "# Written by exporter.demo.fleet; regenerated on every start.\n"
        "daemon off;\n"
        "master_process off;\n"
        f"pid {directory / 'nginx.pid'};\n"
        f"error_log {directory / 'error.log'} warn;\n"
        "events {\n    worker_connections 1024;\n}\n"
        "http {\n"
        "    access_log off;\n"
        "    default_type text/plain;\n"
        # nginx before 1.23.4 leaves TLS 1.3 out of its default protocols.
        "    ssl_protocols TLSv1.2 TLSv1.3;\n"
        f"{paths}"
        f"{servers}"
        "}\n"
    )
