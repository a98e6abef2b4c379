"""The per-target series, as Prometheus text exposition (format 0.0.4).

Two renderings of the same data, pinned to each other by the tests:

* ``Exposition`` is the serving path.  It keeps the latest ``ProbeResult`` per
  (target name, address) pair and, per pair, one cached byte fragment per
  metric family.  ``render()`` formats only the pairs that changed since the
  last call (and of those, only the families whose values changed) and joins
  the cached fragments, family by family; between changes it returns the
  same bytes object.  prometheus_client needs 0.6-1.0 s for 100k series
  (FIELD-NOTES), which is why the scrape path does not use it.
* ``TargetCollector`` is a prometheus_client collector over the same snapshot.
  It is the readable statement of what each series means; it is too slow to
  serve 100k series but fine for tests, debugging and small fleets.

The exporter's own ``sni_exporter_*`` metrics are not here: the service keeps
them in a prometheus_client registry and serves its output after ours.

Every series carries ``target="host:port"`` and the target's configured labels;
``sni="true"`` is the handshake with SNI, ``sni="false"`` the one without.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
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

#: One cached fragment per family, in ``FAMILIES`` order; b"" when the pair has
#: no series in that family.
_Fragments: TypeAlias = tuple[bytes, ...]
_PairKey: TypeAlias = tuple[str, str]  # (target name, address)

_HEADERS: Final = tuple(
    f"# HELP {family.name} {family.help}\n# TYPE {family.name} gauge\n".encode()
    for family in FAMILIES
)
#: Where the measured families start: the last ones, see ``FAMILIES``.
_MEASURED: Final = FAMILIES.index(LAST_RUN)


@dataclasses.dataclass(frozen=True, slots=True)
class _Formatted:
    """One pair's fragments, and what its state fragments were made of."""

    fragments: _Fragments
    target: Target | None  # None: nothing to reuse
    head: str
    state: tuple[object, ...]


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


def _format(result: ProbeResult, previous: _Formatted | None) -> _Formatted:
    """The series of one pair, one fragment per family.

    Most probes change only the measured families; the state fragments are
    then taken from ``previous``.  Measured at 10k targets (205k series) on
    the 2-core machine, a full round of changes renders in 123 ms with that
    reuse and in 195 ms without.
    """
    target = result.target
    state = _state(result)
    # Targets come from the config, so usually the very same object: `is`
    # first, as a dataclass's == compares every field.
    if previous is not None and (previous.target is target or previous.target == target):
        head = previous.head
    else:
        head, previous = _head(target), None
    if previous is not None and previous.state == state:
        stable = previous.fragments[:_MEASURED]
    else:
        stable = _format_state(head, result)
    return _Formatted(stable + _format_measured(head, result), target, head, state)


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
    """The fragments of LAST_RUN and PROBE_DURATION."""
    with_sni = _number(result.sni.handshake.duration_seconds)
    without_sni = _number(result.no_sni.handshake.duration_seconds)
    return _encode(
        (
            f"sni_probe_last_run_timestamp_seconds{head}}} {_number(result.started_at)}\n",
            (
                f'sni_probe_duration_seconds{head},sni="true"}} {with_sni}\n'
                f'sni_probe_duration_seconds{head},sni="false"}} {without_sni}\n'
            ),
        )
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


def _format_or_nothing(result: ProbeResult, previous: _Formatted | None) -> _Formatted:
    """``_format``, or no series for this pair if it fails: never a failed scrape."""
    try:
        return _format(result, previous)
    except Exception:
        log.exception("cannot render the series of target %r", result.target.name)
        return _Formatted((b"",) * len(FAMILIES), None, "", ())


class Exposition:
    """The latest result per (target, address) pair, rendered incrementally.

    ``update`` and ``remove`` are cheap; ``render`` formats the pairs changed
    since its last call, joins the cached fragments and keeps the bytes until
    the next change, and ``render_gzip`` keeps their compressed form alongside.
    Safe to call from several threads; ``render`` holds the lock while it
    formats.  At 10k targets (205k series, 25 MB) it takes about 130 ms after
    a full round of changes, 25 ms after 1% of them (the join), and returns
    the cached bytes in microseconds otherwise.

    The exposition has no ``address`` label yet, so it shows one pair per
    target name: a result for a name that is already present under another
    address replaces that pair.  Two pairs of one name would otherwise render
    identical series, and one duplicate series makes Prometheus reject the
    whole scrape.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._results: dict[_PairKey, ProbeResult] = {}
        self._address: dict[str, str] = {}  # target name -> the address of its one pair
        self._formatted: dict[_PairKey, _Formatted] = {}
        self._changed: set[_PairKey] = set()
        self._order: list[_PairKey] | None = None  # sorted keys; None when pairs came or went
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
            if key not in self._results:
                self._order = None
            self._address[name] = result.address
            self._results[key] = result
            self._changed.add(key)
            self._text = self._gzip = None

    def remove(self, target_name: str) -> None:
        """Drop every series of the target; unknown names are ignored."""
        name = _valid_text(target_name)
        with self._lock:
            address = self._address.pop(name, None)
            if address is not None:
                self._drop((name, address))
                self._text = self._gzip = None

    def results(self) -> tuple[ProbeResult, ...]:
        """An immutable snapshot of the results shown, in exposition order."""
        with self._lock:
            return tuple(self._results[key] for key in sorted(self._results))

    def render(self) -> bytes:
        """The exposition of every pair: the cached bytes when nothing changed."""
        with self._lock:
            return self._render()

    def render_gzip(self) -> bytes:
        """``render()`` as a gzip member, compressed once per change.

        zlib level 1: level 9 (prometheus_client's handler) costs 0.21 s at
        100k series, level 1 0.026 s, for a slightly larger body.  Gzip
        members concatenate (RFC 1952), so the service may append its own
        compressed registry output to these bytes.
        """
        with self._lock:
            if self._gzip is None:
                self._gzip = zlib.compress(self._render(), level=1, wbits=31)  # 31: gzip framing
            return self._gzip

    def _render(self) -> bytes:
        if self._text is not None:
            return self._text
        for key in self._changed:
            self._formatted[key] = _format_or_nothing(self._results[key], self._formatted.get(key))
        self._changed.clear()
        if self._order is None:
            self._order = sorted(self._formatted)  # by name, then address
        rows = [self._formatted[key].fragments for key in self._order]
        parts: list[bytes] = []
        # zip(*rows) turns the pairs' rows into one column per family.
        for header, column in zip(_HEADERS, zip(*rows, strict=True), strict=False):
            if any(column):  # a family without series gets no HELP/TYPE either
                parts.append(header)
                parts += column
        # One join: each join into a fresh 25 MB buffer costs 15 ms in page faults.
        self._text = b"".join(parts)
        return self._text

    def _drop(self, key: _PairKey) -> None:
        del self._results[key]
        self._formatted.pop(key, None)
        self._changed.discard(key)
        self._order = None


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
