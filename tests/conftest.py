"""Session fixtures: the demo fleet of real TLS servers, started once per test run.

The fleet runs on free ports (so a ``make run`` fleet on the fixed ports can
run beside the tests) with a fresh PKI in a temporary state directory; its
processes are stopped when the session ends, also when tests fail.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from exporter.demo.fleet import Fleet

if TYPE_CHECKING:
    from collections.abc import Iterator

    from exporter.certs import TrustStore


@pytest.fixture(scope="session")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """The running demo fleet (free ports); ``fleet.scenarios`` says where and what to expect."""
    with Fleet().start(tmp_path_factory.mktemp("fleet"), ports="free") as running:
        yield running


@pytest.fixture(scope="session")
def fleet_trust(fleet: Fleet) -> TrustStore:
    """Trust in the fleet's CAs only (no system roots), for certificate judgements."""
    from exporter.certs import TrustStore  # noqa: PLC0415 - only tests that judge need it

    return TrustStore.from_pem(fleet.ca_file.read_bytes(), include_system=False)
