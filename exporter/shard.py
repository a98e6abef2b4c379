"""Split a fleet of targets between N exporter replicas, with no coordination.

Each replica is started with ``--shard INDEX/COUNT`` and probes only the
targets it owns.  Ownership is decided by rendezvous (highest random weight)
hashing: every shard draws a pseudo-random weight for a target from a stable
hash of ``(shard index, target name)``, and the shard with the highest weight
owns the target.  This gives the properties sharding needs:

- every target has exactly one owner among ``0..COUNT-1``, so N replicas
  cover the fleet exactly once without talking to each other;
- going from N to N+1 shards moves a target only when the new shard wins it,
  about 1/(N+1) of the fleet, and never between two old shards;
- the weights come from BLAKE2b, never from Python's ``hash()``, which is
  salted per process (PYTHONHASHSEED): replicas must agree on ownership, and a
  restart or an upgrade must not reshuffle the fleet.

Pure: no I/O, no global state.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from exporter.reasons import UsageError

if TYPE_CHECKING:
    from collections.abc import Iterable

_SHARD_RE: Final = re.compile(r"(?P<index>[0-9]*)/(?P<count>[0-9]*)")

# Sharding exists to spread a fleet over pods; more shards than this is a typo.
MAX_SHARDS: Final = 10_000


@dataclass(frozen=True, slots=True)
class Shard:
    """One replica's share of the fleet: shard ``index`` of ``count`` (0-based)."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 1 <= self.count <= MAX_SHARDS:
            raise UsageError(f"shard count must be between 1 and {MAX_SHARDS}, got {self.count}")
        if not 0 <= self.index < self.count:
            raise UsageError(
                f"shard index must be between 0 and {self.count - 1} for {self.count} shards,"
                f" got {self.index}"
            )

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


#: The default: one replica owns every target.
WHOLE_FLEET: Final = Shard(0, 1)


def parse_shard(text: str) -> Shard:
    """Parse the ``--shard`` flag, ``"INDEX/COUNT"`` with ``0 <= INDEX < COUNT``.

    Raises ``UsageError`` with a one-line message saying what to fix.
    """
    match = _SHARD_RE.fullmatch(text.strip())
    if match is None:
        raise UsageError(f"--shard {text!r}: expected INDEX/COUNT, for example 0/3")
    index, count = match["index"], match["count"]
    if not index:
        # The chart fills INDEX from the pod-index label, which Kubernetes only
        # sets from 1.28 on; an empty INDEX is what an older cluster produces.
        raise UsageError(
            f"--shard {text!r}: INDEX is empty; with the Helm chart it comes from the"
            " pod label apps.kubernetes.io/pod-index (Kubernetes >= 1.28)"
        )
    if not count:
        raise UsageError(f"--shard {text!r}: COUNT is empty; expected INDEX/COUNT, e.g. 0/3")
    try:
        return Shard(int(index), int(count))
    except UsageError as error:
        raise UsageError(f"--shard {text!r}: {error}") from None


def _weight(index: int, target_name: str) -> int:
    """The pseudo-random weight shard ``index`` draws for ``target_name``."""
    # The index goes in BLAKE2b's salt (16 bytes), so (index, name) pairs can
    # never collide by concatenation, whatever characters the name holds.
    digest = hashlib.blake2b(
        target_name.encode("utf-8"), digest_size=8, salt=index.to_bytes(16, "big")
    ).digest()
    return int.from_bytes(digest, "big")


def owner(target_name: str, count: int) -> int:
    """The index of the shard, out of ``count``, that owns ``target_name``."""
    if count == 1:
        return 0
    # max() keeps the first maximum, so a (2**-64-unlikely) tie goes to the
    # lower index on every replica alike.
    return max(range(count), key=lambda index: _weight(index, target_name))


def owns(shard: Shard, target_name: str) -> bool:
    """Whether ``shard`` probes the target named ``target_name`` ("host:port")."""
    return owner(target_name, shard.count) == shard.index


def select(shard: Shard, target_names: Iterable[str]) -> list[str]:
    """The names from ``target_names`` that ``shard`` owns, in their order."""
    return [name for name in target_names if owns(shard, name)]
