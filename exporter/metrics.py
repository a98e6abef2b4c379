"""The per-target series, as Prometheus text exposition (format 0.0.4).

Two renderings of the same data, pinned to each other by the tests:

* ``Exposition`` is the serving path.  It keeps the latest ``ProbeResult`` per
  (target name, address) pair and, per metric family, the text of that family
  and its compressed form.  A render formats only the pairs that changed
  since the last one, and rebuilds and recompresses only the families (and
  in them the chunks) whose text changed; between changes it returns the
  same bytes objects.  ``gzip_member`` wraps the compressed families and the
  service's own metrics into one gzip member per scrape.  prometheus_client
  needs 0.6-1.0 s for 100k series (FIELD-NOTES), which is why the scrape
  path does not use it.
* ``TargetCollector`` is a prometheus_client collector over the same snapshot.
  It is the readable statement of what each series means; it is too slow to
  serve 100k series but fine for tests, debugging and small fleets.

The exporter's own ``sni_exporter_*`` metrics are not here: the service keeps
them in a prometheus_client registry and serves its output after ours.

Every series carries ``target="host:port"`` and the target's configured labels;
``sni="true"`` is the handshake with SNI, ``sni="false"`` the one without.
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import logging
import math
import re
import struct
import threading
import zlib
from typing import TYPE_CHECKING, Final, TypeAlias

from prometheus_client.metrics_core import GaugeMetricFamily
from prometheus_client.registry import Collector

from exporter.model import RESERVED_LABELS

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

    from prometheus_client.metrics_core import Metric

    from exporter.model import HandshakeReport, ProbeResult, Target

log = logging.getLogger(__name__)

#: The Content-Type of ``Exposition.render()``'s output.
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"


_LABEL_NAME: Final = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")

_REFRESHED: Final = "Refreshed on the probe schedule."


@dataclasses.dataclass(frozen=True, slots=True)
class Family:
    """One metric family: all are gauges.

    ``labels`` are the family's own labels, after ``target`` and the
    configured ones.
    """

    name: str
    help: str
    labels: tuple[str, ...] = ()


SNI_REQUIRED: Final = Family(
    "sni_required",
    "1 when the endpoint needs SNI: the handshake with SNI succeeded and the one without "
    f"failed or served a certificate that does not match the host name. {_REFRESHED}",
)
CERTIFICATE_MISMATCH: Final = Family(
    "sni_certificate_mismatch",
    "1 when both handshakes succeeded and served different leaf certificates. " + _REFRESHED,
)
LAST_RUN: Final = Family(
    "sni_probe_last_run_timestamp_seconds",
    f"POSIX time in seconds when the last probe of the target started. {_REFRESHED}",
)
INTERVAL: Final = Family(
    "sni_probe_interval_seconds",
    "Configured probe interval of the target in seconds, to alert on stale probes. " + _REFRESHED,
)
HANDSHAKE_ERROR: Final = Family(
    "sni_handshake_error",
    "1 with the failure reason when the handshake failed, 0 with reason=none when it succeeded "
    f"(sni=true: with SNI, sni=false: without). {_REFRESHED}",
    ("sni", "reason"),
)
PROBE_SUCCESS: Final = Family(
    "sni_probe_success",
    f"1 when the handshake succeeded (sni=true: with SNI, sni=false: without). {_REFRESHED}",
    ("sni",),
)
PROBE_DURATION: Final = Family(
    "sni_probe_duration_seconds",
    f"Seconds the handshake took, TCP connect plus TLS handshake. {_REFRESHED}",
    ("sni",),
)
NOT_AFTER: Final = Family(
    "sni_certificate_not_after_timestamp_seconds",
    "POSIX time in seconds when the leaf certificate served in the handshake expires. "
    + _REFRESHED,
    ("sni",),
)
NOT_BEFORE: Final = Family(
    "sni_certificate_not_before_timestamp_seconds",
    "POSIX time in seconds from which the leaf certificate served in the handshake is valid. "
    + _REFRESHED,
    ("sni",),
)
HOSTNAME_MATCH: Final = Family(
    "sni_certificate_hostname_match",
    "1 when the leaf certificate served in the handshake covers the target's host name "
    f"(RFC 6125). {_REFRESHED}",
    ("sni",),
)
CHAIN_VALID: Final = Family(
    "sni_certificate_chain_valid",
    "1 when the served chain leads to a trusted root by OpenSSL's rules, which OpenSSL and Java "
    f"clients follow; the host name is not part of it. {_REFRESHED}",
    ("sni",),
)
CHAIN_STRICT_VALID: Final = Family(
    "sni_certificate_chain_strict_valid",
    "1 when the served chain passes the strict web-PKI verifier (CA/Browser Forum profile); "
    f"the host name is not part of it. {_REFRESHED}",
    ("sni",),
)
CERTIFICATE_INFO: Final = Family(
    "sni_certificate_info",
    f"Always 1; the labels identify the leaf certificate served in the handshake. {_REFRESHED}",
    ("sni", "subject", "issuer", "serial", "fingerprint_sha256"),
)
TLS_VERSION_INFO: Final = Family(
    "sni_tls_version_info",
    f"Always 1; the version label is the TLS version the handshake negotiated. {_REFRESHED}",
    ("sni", "version"),
)

#: Every per-target family, in exposition order: what a probe found first, and
#: last what it measured (times and durations), which changes on every probe.
FAMILIES: Final = (
    SNI_REQUIRED,
    CERTIFICATE_MISMATCH,
    INTERVAL,
    HANDSHAKE_ERROR,
    PROBE_SUCCESS,
    NOT_AFTER,
    NOT_BEFORE,
    HOSTNAME_MATCH,
    CHAIN_VALID,
    CHAIN_STRICT_VALID,
    CERTIFICATE_INFO,
    TLS_VERSION_INFO,
    LAST_RUN,
    PROBE_DURATION,
)


# --- Labels and values --------------------------------------------------------


def configured_labels(target: Target) -> tuple[tuple[str, str], ...]:
    """The target's configured labels that can be exposed, sorted by name.

    Config validates label names; this drops whatever slipped through (an
    invalid or reserved name) and keeps the last value of a repeated name, so
    that one target's labels can never make the scrape invalid.
    """
    if not target.labels:
        return ()
    labels = dict(target.labels)
    return tuple(
        sorted(
            (name, value)
            for name, value in labels.items()
            if _LABEL_NAME.fullmatch(name)
            and not name.startswith("__")
            and name not in RESERVED_LABELS
        )
    )


def _valid_text(value: str) -> str:
    """``value`` with lone surrogates replaced, which UTF-8 cannot encode.

    The target name goes through this before it becomes a key, so that names
    which render the same (``"a\\udc80"`` and ``"a?"``) are the same key.
    """
    if value.isascii():
        return value
    return value.encode("utf-8", "replace").decode("utf-8")


def _escape(value: str) -> str:
    """A label value escaped for the text format: backslash, double quote, newline."""
    # The `in` checks skip three scans-and-copies for the usual value.
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return value


def _flag(value: bool) -> str:
    return "1" if value else "0"


def _number(value: float) -> str:
    """A float as Go's ParseFloat and prometheus_client's parser read it, exactly."""
    if math.isfinite(value):
        return repr(float(value))  # shortest round-trip form: timestamps keep every digit
    if math.isnan(value):
        return "NaN"
    return "+Inf" if value > 0 else "-Inf"


def _reason(report: HandshakeReport) -> str:
    handshake = report.handshake
    if handshake.ok:
        return "none"
    return str(handshake.reason) if handshake.reason is not None else "other"


# --- The serving path -----------------------------------------------------------
#
# Per family one block: its HELP/TYPE header, then every pair's fragment (its
# series in that family) in pair order; and that text compressed in chunks (see
# "Gzip" below).  A pair's fragments live only inside the blocks: a block keeps
# the length of each pair's fragment, so a change is spliced into the previous
# text (the unchanged runs between changed pairs are copied as they are)
# instead of re-joining every fragment.  A probe that found what the previous
# one found changes two families (LAST_RUN and PROBE_DURATION, the last ones):
# only those two texts are rebuilt, and in them only the chunks with a changed
# pair are recompressed.

#: New fragments of one pair for the families from some index on, in ``FAMILIES``
#: order; b"" where the pair has no series in that family.
_Fragments: TypeAlias = tuple[bytes, ...]
_PairKey: TypeAlias = tuple[str, str]  # (target name, address)
#: Where a target's series go in each family, before its name: see ``Exposition``.
Rank: TypeAlias = "Callable[[Target], tuple[float, ...]]"
_OrderKey: TypeAlias = tuple[tuple[float, ...], _PairKey]  # (rank, pair): the exposition order
#: In one family, the pairs [start, end) of the rendered order become the
#: fragment: a pair's new fragment (end = start + 1), a new pair (end = start),
#: or nothing at all, None (a removed pair, end = start + 1).
_Edit: TypeAlias = tuple[int, int, bytes | None]

_HEADERS: Final = tuple(
    f"# HELP {family.name} {family.help}\n# TYPE {family.name} gauge\n".encode()
    for family in FAMILIES
)
#: Where the measured families start: the last ones, see ``FAMILIES``.
_MEASURED: Final = FAMILIES.index(LAST_RUN)
_NO_SERIES: Final = (b"",) * len(FAMILIES)
_REMOVED: Final = (None,) * len(FAMILIES)


@dataclasses.dataclass(frozen=True, slots=True)
class _Pair:
    """What one pair's fragments in the blocks were made of, to reuse them."""

    target: Target | None  # None: nothing to reuse
    head: str
    state: tuple[object, ...]


#: Pairs per chunk: a family's text is compressed in chunks of that many pairs,
#: so that a change recompresses only the chunks it falls in.  The measured
#: families change with every probe: at 10k targets a typical half second of
#: probes (84) touches one or two of their 157 chunks when the series are in
#: schedule order (see ``Exposition``), 42% of them in name order.  The
#: others change only when findings do, and compress better in larger
#: chunks.  The whole body compresses 3% worse than in one piece.
_CHUNK_PAIRS: Final = 64
_STATE_CHUNK_PAIRS: Final = 1024


@dataclasses.dataclass(frozen=True, slots=True)
class _Block:
    """One family: its header, then each pair's fragment, in pair order."""

    header: bytes
    text: bytes  # the header alone while no pair has a series in the family
    lengths: list[int]  # of each pair's fragment in ``text``, in pair order; never mutated
    chunk_pairs: int
    # Where the text's chunks start, each at a pair's fragment (the first at 0,
    # with the header): every chunk_pairs pairs, shifted by the edits since.
    cuts: tuple[int, ...] = (0,)

    def has_series(self) -> bool:
        return len(self.text) > len(self.header)

    def starts(self) -> list[int]:
        """Where each pair's fragment starts in ``text``, and at last where the text ends."""
        return list(itertools.accumulate(self.lengths, initial=len(self.header)))

    def chunks(self) -> Iterator[memoryview]:
        """The text, chunk by chunk."""
        view = memoryview(self.text)
        return (view[a:b] for a, b in itertools.pairwise((*self.cuts, len(self.text))))


def _head(target: Target) -> str:
    """``{target="…",team="…"`` without the closing brace: each family adds its labels."""
    labels = [f'target="{_escape(_valid_text(target.name))}"']
    labels += (f'{name}="{_escape(value)}"' for name, value in configured_labels(target))
    return "{" + ",".join(labels)


def _state(result: ProbeResult) -> tuple[object, ...]:
    """Everything the state families show, besides the target.

    Flat, and made of the objects that stay the same from probe to probe
    (certs caches facts and chain checks per certificate), so that comparing
    two states is mostly identity checks (10k comparisons: 7 ms, against
    20 ms for tuples of the certificate reports).
    """
    verdict = result.verdict
    return (
        verdict.sni_required,
        verdict.certificate_mismatch,
        *_handshake_state(result.sni),
        *_handshake_state(result.no_sni),
    )


def _handshake_state(report: HandshakeReport) -> tuple[object, ...]:
    handshake, certificate = report.handshake, report.certificate
    if certificate is None:
        return (handshake.ok, handshake.reason, handshake.tls_version, None, None, None)
    return (
        handshake.ok,
        handshake.reason,
        handshake.tls_version,
        certificate.facts,
        certificate.hostname_match,
        certificate.chain,
    )


def _format(result: ProbeResult, previous: _Pair | None) -> tuple[_Pair, int, _Fragments]:
    """One pair's new fragments: ``(pair, first, fragments)``.

    ``fragments`` are those of the families from index ``first`` on: every
    family (0), or only the measured ones (``_MEASURED``) when the state is
    what ``previous`` shows, which is the case for most probes.  Their text is
    then already in the blocks, so it is neither formatted nor compared.
    """
    target = result.target
    state = _state(result)
    # Targets come from the config, so usually the very same object: `is`
    # first, as a dataclass's == compares every field.
    if previous is not None and (previous.target is target or previous.target == target):
        if previous.state == state:
            return previous, _MEASURED, _format_measured(previous.head, result)
        head = previous.head
    else:
        head = _head(target)
    fragments = _format_state(head, result) + _format_measured(head, result)
    return _Pair(target, head, state), 0, fragments


def _encode(texts: Iterable[str]) -> _Fragments:
    # "replace": a lone surrogate in a label value becomes "?" instead of
    # failing the whole render.
    return tuple(text.encode("utf-8", "replace") for text in texts)


def _format_state(head: str, result: ProbeResult) -> _Fragments:
    """The fragments of the families before ``_MEASURED``."""
    target, verdict = result.target, result.verdict
    with_sni = _handshake_state_lines(head + ',sni="true"', result.sni)
    without_sni = _handshake_state_lines(head + ',sni="false"', result.no_sni)
    return _encode(
        (
            f"sni_required{head}}} {_flag(verdict.sni_required)}\n",
            f"sni_certificate_mismatch{head}}} {_flag(verdict.certificate_mismatch)}\n",
            f"sni_probe_interval_seconds{head}}} {_number(target.interval)}\n",
            *(a + b for a, b in zip(with_sni, without_sni, strict=True)),
        )
    )


def _format_measured(head: str, result: ProbeResult) -> _Fragments:
    """The fragments of LAST_RUN and PROBE_DURATION, formatted on every probe.

    Written out for speed: at 10k targets the three float reprs are 12 ms of
    a full round; the tuple-of-generator ``_encode`` would add 4 ms.
    """
    started = _number(result.started_at)
    with_sni = _number(result.sni.handshake.duration_seconds)
    without_sni = _number(result.no_sni.handshake.duration_seconds)
    return (
        f"sni_probe_last_run_timestamp_seconds{head}}} {started}\n".encode("utf-8", "replace"),
        (
            f'sni_probe_duration_seconds{head},sni="true"}} {with_sni}\n'
            f'sni_probe_duration_seconds{head},sni="false"}} {without_sni}\n'
        ).encode("utf-8", "replace"),
    )


def _handshake_state_lines(head: str, report: HandshakeReport) -> tuple[str, ...]:
    """One handshake's lines from HANDSHAKE_ERROR to TLS_VERSION_INFO; "" where none."""
    handshake = report.handshake
    reason = _escape(_reason(report))
    lines = (
        f'sni_handshake_error{head},reason="{reason}"}} {_flag(not handshake.ok)}\n',
        f"sni_probe_success{head}}} {_flag(handshake.ok)}\n",
    )
    certificate = report.certificate
    if certificate is None:
        return (*lines, "", "", "", "", "", "", "")
    facts = certificate.facts
    version = handshake.tls_version
    return (
        *lines,
        f"sni_certificate_not_after_timestamp_seconds{head}}} {_number(facts.not_after)}\n",
        f"sni_certificate_not_before_timestamp_seconds{head}}} {_number(facts.not_before)}\n",
        f"sni_certificate_hostname_match{head}}} {_flag(certificate.hostname_match)}\n",
        f"sni_certificate_chain_valid{head}}} {_flag(certificate.chain.valid)}\n",
        f"sni_certificate_chain_strict_valid{head}}} {_flag(certificate.chain.strict_valid)}\n",
        (
            f'sni_certificate_info{head},subject="{_escape(facts.subject)}"'
            f',issuer="{_escape(facts.issuer)}",serial="{_escape(facts.serial)}"'
            f',fingerprint_sha256="{_escape(facts.fingerprint_sha256)}"}} 1\n'
        ),
        f'sni_tls_version_info{head},version="{_escape(version)}"}} 1\n' if version else "",
    )


def _format_or_nothing(
    result: ProbeResult, previous: _Pair | None
) -> tuple[_Pair, int, _Fragments]:
    """``_format``, or no series for this pair if it fails: never a failed scrape."""
    try:
        return _format(result, previous)
    except Exception:
        log.exception("cannot render the series of target %r", result.target.name)
        return _Pair(None, "", ()), 0, _NO_SERIES


def _splice(
    block: _Block, edits: list[_Edit], starts: list[int]
) -> tuple[_Block, frozenset[int] | None]:
    """``block`` with ``edits`` (sorted, not overlapping) applied, and the chunks whose
    text changed: their indexes, or None when the chunks were cut anew.

    The runs of unchanged pairs between edits are copied from the old text
    through memoryview slices, so a few edits cost one copy of the text and
    not one Python step per pair (the copy holds the GIL, ~0.1 ms per MB, as
    join does for anything but bytes).
    """
    old_lengths = block.lengths
    view = memoryview(block.text)
    pieces: list[bytes | memoryview] = []
    lengths: list[int] = []
    changed = structural = False
    cursor = offset = 0  # the old pairs before `cursor`, the old bytes before `offset`, are done
    for start, end, fragment in edits:
        begin = starts[start]
        if start > cursor:
            lengths += old_lengths[cursor:start]
        if begin > offset:  # the unchanged run before this edit (with the header, at first)
            pieces.append(view[offset:begin])
        if fragment is not None:
            pieces.append(fragment)
            lengths.append(len(fragment))
            changed = changed or bool(fragment)
        structural = structural or fragment is None or end == start
        cursor, offset = end, starts[end]
        changed = changed or offset > begin
    lengths += old_lengths[cursor:]
    if not changed:  # pairs without series in this family came or went: same text and chunks
        return dataclasses.replace(block, lengths=lengths), frozenset()
    pieces.append(view[offset:])
    text = b"".join(pieces)
    if structural or not block.has_series():  # pairs moved: cut the chunks anew
        bounds = itertools.accumulate(lengths, initial=len(block.header))
        every = block.chunk_pairs
        cuts = (0, *itertools.islice(bounds, every, len(lengths), every))
        return _Block(block.header, text, lengths, every, cuts), None
    cuts, touched = _recut(block.cuts, edits, starts)
    return _Block(block.header, text, lengths, block.chunk_pairs, cuts), touched


def _recut(
    cuts: tuple[int, ...], edits: list[_Edit], starts: list[int]
) -> tuple[tuple[int, ...], frozenset[int]]:
    """The chunk starts after ``edits`` that replace pairs' fragments (none comes or
    goes), and the chunks they change.

    An edit belongs to the chunk its old bytes start in (an empty fragment at
    a chunk's start: to that chunk), and shifts the starts of the chunks
    after it by how much longer or shorter the new fragment is.
    """
    touched = frozenset(bisect.bisect_right(cuts, starts[start]) - 1 for start, _, _ in edits)
    shifted: list[int] = []
    delta = 0
    pending = iter(edits)
    edit = next(pending, None)
    for cut in cuts:
        while edit is not None and starts[edit[0]] < cut:
            start, end, fragment = edit
            delta += len(fragment or b"") - (starts[end] - starts[start])
            edit = next(pending, None)
        shifted.append(cut + delta)
    return tuple(shifted), touched


#: One changed pair: (start, end, order, first, fragments), where start and end
#: are as in ``_Edit``, order is the pair's ``_OrderKey``, and ``fragments``
#: those from family ``first`` on (see ``_format``), or None for a removed pair.
_Change: TypeAlias = tuple[int, int, _OrderKey, int, _Fragments | None]


def _edits(
    blocks: list[_Block], changes: list[_Change]
) -> tuple[list[list[_Edit]], list[list[int] | None], bool]:
    """Per family, the edits ``changes`` make, sorted; the blocks' ``starts()`` computed
    on the way (None where not needed); and whether pairs came or went.

    A changed pair edits only the families whose fragment really changed; a
    pair that came or went edits every family (even with no series there, so
    that every block keeps one length per pair).
    """
    edits: list[list[_Edit]] = [[] for _ in blocks]
    starts: list[list[int] | None] = [None] * len(blocks)
    structural = False
    for start, end, _, first, fragments in changes:
        if fragments is None or start == end:
            structural = True
            news: tuple[bytes | None, ...] = _REMOVED if fragments is None else fragments
            for family_edits, fragment in zip(edits, news, strict=True):
                family_edits.append((start, end, fragment))
            continue
        for family, fragment in enumerate(fragments, first):
            bounds = starts[family]
            if bounds is None:
                bounds = starts[family] = blocks[family].starts()
            begin, stop = bounds[start], bounds[end]
            if stop - begin != len(fragment) or blocks[family].text[begin:stop] != fragment:
                edits[family].append((start, end, fragment))
    return edits, starts, structural


# --- Gzip: one member, compressed chunk by chunk --------------------------------------
#
# The body is served as ONE gzip member: curl --compressed fails (exit 23) after
# the first of several concatenated members and browsers show only the first
# one, though Go's and Python's readers read them all.  So each chunk of each
# family is compressed on its own into raw deflate blocks that end byte-aligned
# and are not final (Z_SYNC_FLUSH); such runs of blocks concatenate into one
# deflate stream, and one header and one trailer (CRC-32 and length of the
# whole text, the CRC continued family by family) make it a gzip member.

#: deflate, no file name, mtime 0, XFL 4 (fastest), OS 255 (unknown)
_GZIP_HEADER: Final = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x04\xff"


@dataclasses.dataclass(frozen=True, slots=True)
class Deflated:
    """A text as raw deflate data that a gzip member can start with: see ``gzip_member``.

    ``parts``: runs of deflate blocks, byte-aligned, none of them final;
    ``crc``: the CRC-32 of the text; ``size``: its length in bytes.
    """

    parts: tuple[bytes, ...] = ()
    crc: int = 0
    size: int = 0


def _deflate(data: bytes | memoryview) -> bytes:
    """``data`` as raw deflate blocks that more blocks may follow.

    zlib level 1: level 9 (prometheus_client's handler) costs 0.21 s at 100k
    series, level 1 0.026 s, for a slightly larger body.
    """
    compressor = zlib.compressobj(1, zlib.DEFLATED, -15)  # -15: raw, no header
    return compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)


def gzip_member(deflated: Deflated, tail: bytes = b"") -> tuple[bytes, ...]:
    """One gzip member (RFC 1952) of ``deflated``'s text followed by ``tail``, in parts.

    Only ``tail`` is compressed here (the service's own metrics, a few kB),
    so that every scrape gets one member without recompressing the rest.
    The parts are to be written one after the other.
    """
    compressor = zlib.compressobj(1, zlib.DEFLATED, -15)
    last = compressor.compress(tail) + compressor.flush()  # ends with the final block
    crc = zlib.crc32(tail, deflated.crc)  # the CRC of the text, continued over the tail
    trailer = struct.pack("<II", crc, (deflated.size + len(tail)) & 0xFFFFFFFF)
    return (_GZIP_HEADER, *deflated.parts, last, trailer)


class Exposition:
    """The latest result per (target, address) pair, rendered incrementally.

    ``update`` and ``remove`` are cheap and only record the change.  The next
    render formats the pairs changed since the last one and rebuilds only
    the families whose text changed, each spliced from its previous text.

    Two ways to read it, both cached until the next change:

    * ``render_parts()`` and ``render_deflated()``: the serving path.  The
      parts, one per family with series, concatenated are the exposition;
      written one after the other with their total length as Content-Length
      they serve it without ever joining it.  ``render_deflated()`` is the
      same text compressed family by family, and in a family chunk by chunk,
      each chunk once per change of its text, for ``gzip_member`` to wrap
      (with the service's own metrics after it) into one gzip member per
      scrape.
    * ``render()`` and ``render_gzip()``: the same as single bytes, for tests
      and small callers; the join costs a copy of the whole body (25 MB at
      10k targets) and keeps it cached alongside the parts.

    Safe to call from several threads; rendering holds the lock.  Measured at
    10k targets (240k series, 23 MB) on the 2-core machine, updates then
    ``render_parts()`` and ``render_deflated()``, medians: 9.5 ms after a
    typical half second of probes in name order (84 targets: 3.7 ms to
    render, 5.9 ms to compress), 82 ms after a full round of probes in
    schedule order (of which 12.6 ms to compress; ``make bench``);
    tracemalloc: it holds 35 MB (23 MB of text).

    Series are in order of ``rank(target)``, then target name and address;
    without ``rank``, by name.  The service ranks targets by their place in
    the schedule (interval, then phase), so that the pairs one debounce
    window brings are neighbours and touch one or two compressed chunks per
    family instead of most of them.  That halves the renderer's CPU at the
    full scenario's rate (10k targets, 167 probes/s, flushed every 0.5 s:
    9.5 -> 6.0 ms per second; ``bench/publisher.py``).  Prometheus does not
    care about the order of series in a family.  A pair keeps the rank it had
    when it was added.

    The exposition has no ``address`` label yet, so it shows one pair per
    target name: a result for a name that is already present under another
    address replaces that pair.  Two pairs of one name would otherwise render
    identical series, and one duplicate series makes Prometheus reject the
    whole scrape.
    """

    def __init__(self, rank: Rank | None = None) -> None:
        self._lock = threading.Lock()
        self._rank = rank
        self._ranks: dict[_PairKey, tuple[float, ...]] = {}  # each pair's, from when it came
        self._results: dict[_PairKey, ProbeResult] = {}
        self._address: dict[str, str] = {}  # target name -> the address of its one pair
        # Updated since the last render, in the order of the updates (for
        # locality: results are mostly allocated in that order).
        self._changed: dict[_PairKey, ProbeResult] = {}
        self._dropped: set[_PairKey] = set()  # rendered, and removed since
        self._stale = False  # changes to apply: _changed or _dropped, or both
        # As of the last render:
        self._order: list[_OrderKey] = []  # sorted
        # One lookup per changed pair: its index in _order, and what its fragments were made of.
        self._rendered: dict[_PairKey, tuple[int, _Pair]] = {}
        self._blocks = [
            _Block(header, header, [], _CHUNK_PAIRS if family >= _MEASURED else _STATE_CHUNK_PAIRS)
            for family, header in enumerate(_HEADERS)
        ]
        self._parts: tuple[bytes, ...] = ()
        # Per family: its text compressed, chunk by chunk and whole (None: not
        # yet), and the CRC-32 of the texts of the families up to it, valid
        # before family _crc_from.
        self._runs: list[list[bytes | None]] = [[None] for _ in FAMILIES]
        self._deflates: list[bytes | None] = [None] * len(FAMILIES)
        self._crcs = [0] * len(FAMILIES)
        self._crc_from = len(FAMILIES)
        self._deflated: Deflated | None = None
        self._text: bytes | None = None
        self._gzip: bytes | None = None

    def __len__(self) -> int:
        """The number of pairs shown."""
        with self._lock:
            return len(self._results)

    def update(self, result: ProbeResult) -> None:
        """Show ``result`` in place of the previous one for its target."""
        name = _valid_text(result.target.name)
        key = (name, result.address)
        with self._lock:
            previous = self._address.get(name)
            if previous is not None and previous != result.address:
                self._drop((name, previous))
            self._address[name] = result.address
            if self._rank is not None and key not in self._results:
                self._ranks[key] = self._rank(result.target)
            self._results[key] = result
            self._changed[key] = result
            if self._dropped:
                self._dropped.discard(key)
            self._stale = True

    def remove(self, target_name: str) -> None:
        """Drop every series of the target; unknown names are ignored."""
        name = _valid_text(target_name)
        with self._lock:
            address = self._address.pop(name, None)
            if address is not None:
                self._drop((name, address))

    def results(self) -> tuple[ProbeResult, ...]:
        """An immutable snapshot of the results shown, sorted by target name."""
        with self._lock:
            return tuple(self._results[key] for key in sorted(self._results))

    def render_parts(self) -> tuple[bytes, ...]:
        """The exposition in parts, one per family with series: the cached tuple when
        nothing changed, and the same bytes objects for the families that did not."""
        with self._lock:
            return self._refresh()

    def render_deflated(self) -> Deflated:
        """``render_parts()`` compressed, for ``gzip_member``: cached like the parts."""
        with self._lock:
            return self._refresh_deflated()

    def render(self) -> bytes:
        """The exposition of every pair, as one bytes: ``b"".join(render_parts())``, cached."""
        with self._lock:
            parts = self._refresh()
            if self._text is None:
                self._text = b"".join(parts)
            return self._text

    def render_gzip(self) -> bytes:
        """``render()`` as one gzip member: ``gzip_member(render_deflated())`` joined, cached."""
        with self._lock:
            deflated = self._refresh_deflated()
            if self._gzip is None:
                self._gzip = b"".join(gzip_member(deflated))
            return self._gzip

    def _refresh(self) -> tuple[bytes, ...]:
        if self._stale:
            self._apply()
            parts = tuple(block.text for block in self._blocks if block.has_series())
            # A change may leave every text as it was (a probe that measured
            # the same values): then the cached parts and joins stay.
            if len(parts) != len(self._parts) or any(
                new is not old for new, old in zip(parts, self._parts, strict=True)
            ):
                self._parts = parts
                self._deflated = self._text = self._gzip = None
        return self._parts

    def _refresh_deflated(self) -> Deflated:
        self._refresh()
        if self._deflated is None:
            blocks = self._blocks
            parts = []
            for family, block in enumerate(blocks):
                if block.has_series():
                    deflate = self._deflates[family]
                    if deflate is None:
                        deflate = self._deflates[family] = self._deflate(family)
                    parts.append(deflate)
            # The CRC of the whole text, continued family by family from the
            # last one that did not change: usually only the measured ones.
            crc = self._crcs[self._crc_from - 1] if self._crc_from else 0
            for family in range(self._crc_from, len(blocks)):
                if blocks[family].has_series():
                    crc = zlib.crc32(blocks[family].text, crc)
                self._crcs[family] = crc
            self._crc_from = len(blocks)
            self._deflated = Deflated(tuple(parts), crc, sum(map(len, self._parts)))
        return self._deflated

    def _deflate(self, family: int) -> bytes:
        """The family's text compressed: the chunks that changed anew, the others as they were."""
        runs = self._runs[family]
        compressed = []
        for i, chunk in enumerate(self._blocks[family].chunks()):
            run = runs[i]
            if run is None:
                run = runs[i] = _deflate(chunk)
            compressed.append(run)
        return b"".join(compressed)

    def _apply(self) -> None:
        """Format the changed pairs and splice their new fragments into the blocks."""
        changes, pairs = self._changes()
        blocks = self._blocks
        edits, starts, structural = _edits(blocks, changes)
        spliced = [
            _splice(block, family_edits, bounds or block.starts())
            if family_edits
            else (block, frozenset())
            for block, family_edits, bounds in zip(blocks, edits, starts, strict=True)
        ]
        # Commit, now that nothing can fail halfway.
        for family, (block, touched) in enumerate(spliced):
            if touched is None:
                self._runs[family] = [None] * len(block.cuts)
            elif touched:
                for chunk in touched:
                    self._runs[family][chunk] = None
            else:
                continue
            self._deflates[family] = None
            self._crc_from = min(self._crc_from, family)
        self._blocks = [block for block, _ in spliced]
        rendered = self._rendered
        if structural:
            ranks = self._ranks
            self._order = sorted((ranks.get(key, ()), key) for key in self._results)
            self._rendered = {
                key: (i, pairs[key] if key in pairs else rendered[key][1])
                for i, (_, key) in enumerate(self._order)
            }
        else:
            for key, pair in pairs.items():
                rendered[key] = (rendered[key][0], pair)
        self._changed.clear()
        self._dropped.clear()
        self._stale = False

    def _changes(self) -> tuple[list[_Change], dict[_PairKey, _Pair]]:
        """The changed pairs formatted, and the removed ones, in rendered order;
        and the pairs whose fragments are now made of something else."""
        changes: list[_Change] = []
        pairs: dict[_PairKey, _Pair] = {}
        rendered = self._rendered
        for key, result in self._changed.items():
            found = rendered.get(key)
            if found is None:  # a new pair: before the first greater key, all its fragments
                pair, first, fragments = _format_or_nothing(result, None)
                order = (self._ranks.get(key, ()), key)
                position = bisect.bisect_left(self._order, order)
                changes.append((position, position, order, first, fragments))
                pairs[key] = pair
                continue
            position, previous = found
            pair, first, fragments = _format_or_nothing(result, previous)
            changes.append((position, position + 1, self._order[position], first, fragments))
            if pair is not previous:
                pairs[key] = pair
        for key in self._dropped:
            position = rendered[key][0]
            changes.append((position, position + 1, self._order[position], 0, None))
        # By position (start, then end: a new pair before the one it precedes),
        # then order key; these are unique, so the sort never compares the fragments.
        changes.sort()
        return changes, pairs

    def _drop(self, key: _PairKey) -> None:
        del self._results[key]
        self._ranks.pop(key, None)
        self._changed.pop(key, None)
        if key in self._rendered:
            self._dropped.add(key)
        self._stale = True


# --- The reference collector ------------------------------------------------------


def samples(result: ProbeResult) -> Iterator[tuple[Family, dict[str, str], float]]:
    """Every series of one result: its family, labels and value.

    The plain statement of the metric contract.  ``Exposition`` renders the
    same series by hand for speed; the tests hold the two together.
    """
    target = result.target
    identity = {"target": _valid_text(target.name), **dict(configured_labels(target))}
    verdict = result.verdict
    yield SNI_REQUIRED, identity, float(verdict.sni_required)
    yield CERTIFICATE_MISMATCH, identity, float(verdict.certificate_mismatch)
    yield LAST_RUN, identity, result.started_at
    yield INTERVAL, identity, target.interval
    for sni, report in (("true", result.sni), ("false", result.no_sni)):
        labels = {**identity, "sni": sni}
        handshake = report.handshake
        yield HANDSHAKE_ERROR, {**labels, "reason": _reason(report)}, float(not handshake.ok)
        yield PROBE_SUCCESS, labels, float(handshake.ok)
        yield PROBE_DURATION, labels, handshake.duration_seconds
        certificate = report.certificate
        if certificate is None:
            continue
        facts = certificate.facts
        yield NOT_AFTER, labels, facts.not_after
        yield NOT_BEFORE, labels, facts.not_before
        yield HOSTNAME_MATCH, labels, float(certificate.hostname_match)
        yield CHAIN_VALID, labels, float(certificate.chain.valid)
        yield CHAIN_STRICT_VALID, labels, float(certificate.chain.strict_valid)
        info = {
            **labels,
            "subject": facts.subject,
            "issuer": facts.issuer,
            "serial": facts.serial,
            "fingerprint_sha256": facts.fingerprint_sha256,
        }
        yield CERTIFICATE_INFO, info, 1.0
        if handshake.tls_version:
            yield TLS_VERSION_INFO, {**labels, "version": handshake.tls_version}, 1.0


class TargetCollector(Collector):
    """The per-target families as prometheus_client metrics, from one snapshot.

    ``snapshot`` returns the results to show, normally ``Exposition.results``
    (which already holds one pair per target name).  Registered with a
    ``CollectorRegistry``, ``generate_latest`` writes for a target that needs
    SNI (HELP texts cut short, and six of the fourteen families shown)::

        # HELP sni_required 1 when the endpoint needs SNI: the handshake with SNI succeeded ...
        # TYPE sni_required gauge
        sni_required{target="api.test:443",team="web"} 1.0
        # HELP sni_handshake_error 1 with the failure reason when the handshake failed, 0 ...
        # TYPE sni_handshake_error gauge
        sni_handshake_error{reason="none",sni="true",target="api.test:443",team="web"} 0.0
        sni_handshake_error{reason="unrecognized_name",sni="false",target="api.test:443",team="web"} 1.0
        # HELP sni_probe_duration_seconds Seconds the handshake took, TCP connect plus TLS ...
        # TYPE sni_probe_duration_seconds gauge
        sni_probe_duration_seconds{sni="true",target="api.test:443",team="web"} 0.0034
        sni_probe_duration_seconds{sni="false",target="api.test:443",team="web"} 0.0007
        # HELP sni_certificate_not_after_timestamp_seconds POSIX time in seconds when the leaf ...
        # TYPE sni_certificate_not_after_timestamp_seconds gauge
        sni_certificate_not_after_timestamp_seconds{sni="true",target="api.test:443",team="web"} 1.805184e+09
        # HELP sni_certificate_info Always 1; the labels identify the leaf certificate served ...
        # TYPE sni_certificate_info gauge
        sni_certificate_info{fingerprint_sha256="9f86d081884c7d65…",issuer="CN=Test Issuing CA,O=Test",serial="0d0a1b",sni="true",subject="CN=api.test,O=Test",target="api.test:443",team="web"} 1.0
        # HELP sni_tls_version_info Always 1; the version label is the TLS version the handshake ...
        # TYPE sni_tls_version_info gauge
        sni_tls_version_info{sni="true",target="api.test:443",team="web",version="TLSv1.3"} 1.0

    The no-SNI handshake failed, so it has no certificate series.
    ``Exposition.render()`` writes the same samples, with ``target`` and the
    configured labels first and ``1`` for ``1.0``; a test holds them equal.
    """  # noqa: E501 (the sample's lines are as long as the real ones)

    def __init__(self, snapshot: Callable[[], Iterable[ProbeResult]]) -> None:
        self._snapshot = snapshot

    def describe(self) -> Iterator[Metric]:
        """The families without samples, so that registering does not collect."""
        for family in FAMILIES:
            yield GaugeMetricFamily(family.name, family.help)

    def collect(self) -> Iterator[Metric]:
        metrics = {family.name: GaugeMetricFamily(family.name, family.help) for family in FAMILIES}
        for result in self._snapshot():
            for family, labels, value in samples(result):
                metrics[family.name].add_sample(family.name, labels, value)
        # Like the renderer: a family without series is left out.
        yield from (metric for metric in metrics.values() if metric.samples)
