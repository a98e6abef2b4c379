"""The per-target exposition: contract, format, incremental rendering, collisions.

Pure: results are built by hand below, no sockets.  The text is checked three
ways: by reading it, by prometheus_client's parser, and by `promtool check
metrics` (which also lints).  promtool does not notice duplicate series, so
``parse`` below rejects them itself.
"""

from __future__ import annotations

import dataclasses
import gzip
import random
import subprocess
import zlib
from typing import TYPE_CHECKING, TypeAlias

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from exporter import metrics
from exporter.metrics import (
    FAMILIES,
    Exposition,
    TargetCollector,
    configured_labels,
    gzip_member,
)
from exporter.model import ChainCheck, HandshakeReport, ProbeResult, Target, Verdict
from exporter.reasons import Reason
from tests.factories import NOW, cert_facts, failed, next_probe, probe_result, succeeded

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator


def sni_required_result(host: str = "api.test", **changes: object) -> ProbeResult:
    """The no-SNI handshake is refused with alert 112 (nginx ssl_reject_handshake)."""
    return probe_result(
        host,
        no_sni=failed(False, Reason.UNRECOGNIZED_NAME),
        sni_required=True,
        **changes,  # type: ignore[arg-type]
    )


def fleet(count: int) -> list[ProbeResult]:
    """A mixed fleet: fine, default certificate without SNI, SNI required, down."""
    results = []
    for i in range(count):
        host = f"host{i:05d}.fleet.test"
        labels = (("env", "prod"), ("team", f"team{i % 7}"))
        started = NOW + i * 0.006
        match i % 4:
            case 0:
                results.append(probe_result(host, labels=labels, started_at=started))
            case 1:
                other = succeeded(False, cert_facts("default.fleet.test"), hostname_match=False)
                results.append(
                    probe_result(
                        host,
                        labels=labels,
                        no_sni=other,
                        sni_required=True,
                        mismatch=True,
                        started_at=started,
                    )
                )
            case 2:
                results.append(sni_required_result(host, labels=labels, started_at=started))
            case _:
                results.append(
                    probe_result(
                        host,
                        labels=labels,
                        sni=failed(True, Reason.TIMEOUT, connect=5.0),
                        no_sni=failed(False, Reason.TIMEOUT, connect=5.0),
                        started_at=started,
                    )
                )
    return results


def exposition(results: Iterable[ProbeResult], rank: metrics.Rank | None = None) -> Exposition:
    exp = Exposition(rank)
    for result in results:
        exp.update(result)
    return exp


def by_family(parts: Iterable[bytes]) -> dict[str, bytes]:
    """The parts of render_parts() by the family they show."""
    return {part.split(b" ", 3)[2].decode(): part for part in parts}


def one_member(data: bytes) -> bytes:
    """``data`` decompressed, checking that it is exactly one gzip member with a valid
    trailer: curl --compressed and browsers read no further than the first member."""
    reader = zlib.decompressobj(wbits=31)
    text = reader.decompress(data) + reader.flush()
    assert reader.eof, "the gzip member does not end"
    assert reader.unused_data == b"", "more than one gzip member"
    return text


def assert_served_alike(exp: Exposition, expected: bytes) -> None:
    """Every way to read ``exp`` gives ``expected``: parts, compressed parts, joined forms."""
    parts = exp.render_parts()
    deflated = exp.render_deflated()
    assert exp.render() == expected
    assert b"".join(parts) == expected
    assert one_member(exp.render_gzip()) == expected
    own = b"# the service's own metrics\n"
    assert one_member(b"".join(gzip_member(deflated, own))) == expected + own
    assert deflated.size == len(expected)
    # One compressed run per part, each readable on its own: no run refers to
    # the text of another, which is what lets them be recompressed one by one.
    assert [zlib.decompressobj(-15).decompress(run) for run in deflated.parts] == list(parts)
    assert all(part.startswith(b"# HELP ") for part in parts)
    assert list(by_family(parts)) == families_in(expected)


# --- Reading the output -----------------------------------------------------------

Series: TypeAlias = tuple[str, frozenset[tuple[str, str]]]


def parse(text: bytes) -> dict[Series, float]:
    """Every sample by (name, labels), with prometheus_client's parser; no duplicates allowed."""
    samples: dict[Series, float] = {}
    for family in text_string_to_metric_families(text.decode("utf-8")):
        assert family.type == "gauge", family.name
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in samples, f"duplicate series {key}"
            samples[key] = sample.value
    return samples


def select(text: bytes, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
    """The samples of ``name`` whose labels include ``labels``, in parsed order."""
    return [
        (dict(series[1]), value)
        for series, value in parse(text).items()
        if series[0] == name and labels.items() <= dict(series[1]).items()
    ]


def value(text: bytes, name: str, **labels: str) -> float:
    """The value of the one series of ``name`` matching ``labels``."""
    found = select(text, name, **labels)
    assert len(found) == 1, (name, labels, found)
    return found[0][1]


def sample_lines(text: bytes) -> list[str]:
    return [line for line in text.decode().splitlines() if not line.startswith("#")]


def promtool(text: bytes) -> str:
    """`promtool check metrics` on ``text``: its complaints, "" when it has none."""
    proc = subprocess.run(
        ["/usr/bin/promtool", "check", "metrics"],
        input=text,
        capture_output=True,
        timeout=60,
        check=False,
    )
    problems = (proc.stdout + proc.stderr).decode().strip()
    assert proc.returncode == 0 or problems, "promtool failed without saying why"
    return problems


def families_in(text: bytes) -> list[str]:
    return [line.split()[2] for line in text.decode().splitlines() if line.startswith("# TYPE ")]


#: The metric contract, in exposition order: family -> its labels besides target
#: and the configured ones.
CONTRACT = {
    "sni_required": set(),
    "sni_certificate_mismatch": set(),
    "sni_probe_interval_seconds": set(),
    "sni_handshake_error": {"sni", "reason"},
    "sni_probe_success": {"sni"},
    "sni_certificate_not_after_timestamp_seconds": {"sni"},
    "sni_certificate_not_before_timestamp_seconds": {"sni"},
    "sni_certificate_hostname_match": {"sni"},
    "sni_certificate_chain_valid": {"sni"},
    "sni_certificate_chain_strict_valid": {"sni"},
    "sni_certificate_info": {"sni", "subject", "issuer", "serial", "fingerprint_sha256"},
    "sni_tls_version_info": {"sni", "version"},
    "sni_probe_last_run_timestamp_seconds": set(),
    "sni_probe_duration_seconds": {"sni"},
}
CERTIFICATE_FAMILIES = [name for name in CONTRACT if name.startswith("sni_certificate_")] + [
    "sni_tls_version_info"
]
CERTIFICATE_FAMILIES.remove("sni_certificate_mismatch")


# --- Tests ------------------------------------------------------------------------


class TestOkTarget:
    """Both handshakes succeed with the same, valid certificate."""

    @pytest.fixture(scope="class")
    @classmethod
    def text(cls) -> bytes:
        return exposition([probe_result("a.test")]).render()

    def test_every_contract_family_with_its_labels(self, text: bytes) -> None:
        """Each family of the contract is there, as a gauge, with exactly its labels."""
        assert families_in(text) == list(CONTRACT)
        for name, own in CONTRACT.items():
            for labels, _ in select(text, name):
                assert set(labels) == {"target", *own}, name
                assert labels["target"] == "a.test:443"

    def test_help_says_values_follow_the_schedule(self, text: bytes) -> None:
        """One HELP and TYPE line per family; HELP says the values are refreshed on schedule."""
        lines = text.decode().splitlines()
        for name in CONTRACT:
            helps = [line for line in lines if line.startswith(f"# HELP {name} ")]
            assert len(helps) == 1, name
            assert helps[0].endswith("Refreshed on the probe schedule."), name
            assert lines.count(f"# TYPE {name} gauge") == 1, name

    def test_per_target_values(self, text: bytes) -> None:
        """Verdict flags are 0, the start time and the interval are exact."""
        assert value(text, "sni_required") == 0
        assert value(text, "sni_certificate_mismatch") == 0
        assert value(text, "sni_probe_last_run_timestamp_seconds") == NOW
        assert value(text, "sni_probe_interval_seconds") == 60.0

    @pytest.mark.parametrize("sni", ["true", "false"])
    def test_handshake_values(self, text: bytes, sni: str) -> None:
        """Per handshake: one error series with reason none at 0, success 1, connect+handshake."""
        assert select(text, "sni_handshake_error", sni=sni) == [
            ({"target": "a.test:443", "sni": sni, "reason": "none"}, 0.0)
        ]
        assert value(text, "sni_probe_success", sni=sni) == 1
        assert value(text, "sni_probe_duration_seconds", sni=sni) == 0.0011 + 0.0023

    @pytest.mark.parametrize("sni", ["true", "false"])
    def test_certificate_values(self, text: bytes, sni: str) -> None:
        """The certificate families carry the leaf's facts and checks."""
        facts = cert_facts("a.test")
        assert (
            value(text, "sni_certificate_not_after_timestamp_seconds", sni=sni) == facts.not_after
        )
        assert (
            value(text, "sni_certificate_not_before_timestamp_seconds", sni=sni) == facts.not_before
        )
        assert value(text, "sni_certificate_hostname_match", sni=sni) == 1
        assert value(text, "sni_certificate_chain_valid", sni=sni) == 1
        assert value(text, "sni_certificate_chain_strict_valid", sni=sni) == 1
        assert select(text, "sni_certificate_info", sni=sni) == [
            (
                {
                    "target": "a.test:443",
                    "sni": sni,
                    "subject": "CN=a.test,O=Test",
                    "issuer": "CN=Test Issuing CA,O=Test",
                    "serial": facts.serial,
                    "fingerprint_sha256": facts.fingerprint_sha256,
                },
                1.0,
            )
        ]
        assert select(text, "sni_tls_version_info", sni=sni)[0][0]["version"] == "TLSv1.3"

    def test_flags_are_integers_and_sni_true_comes_first(self, text: bytes) -> None:
        """0/1 values are written as integers; the sni="true" series precedes sni="false"."""
        lines = sample_lines(text)
        assert 'sni_required{target="a.test:443"} 0' in lines
        success = [line for line in lines if line.startswith("sni_probe_success")]
        assert success == [
            'sni_probe_success{target="a.test:443",sni="true"} 1',
            'sni_probe_success{target="a.test:443",sni="false"} 1',
        ]

    def test_promtool_accepts_it(self, text: bytes) -> None:
        """promtool parses and lints the output without a single complaint."""
        assert promtool(text) == ""


class TestFailures:
    """Targets whose handshakes fail."""

    def test_sni_required_target(self) -> None:
        """No-SNI refused: reason on the error series, no certificate series for sni="false"."""
        text = exposition([sni_required_result("api.test")]).render()
        assert value(text, "sni_required") == 1
        assert select(text, "sni_handshake_error", sni="false") == [
            ({"target": "api.test:443", "sni": "false", "reason": "unrecognized_name"}, 1.0)
        ]
        assert value(text, "sni_handshake_error", sni="true") == 0
        assert value(text, "sni_probe_success", sni="false") == 0
        assert value(text, "sni_probe_duration_seconds", sni="false") == 0.0007
        for name in CERTIFICATE_FAMILIES:
            assert select(text, name, sni="false") == [], name
            assert len(select(text, name, sni="true")) == 1, name
        assert promtool(text) == ""

    def test_family_without_series_is_left_out(self) -> None:
        """When no handshake captured a certificate, the certificate families are absent."""
        down = probe_result(
            "down.test",
            sni=failed(True, Reason.REFUSED),
            no_sni=failed(False, Reason.REFUSED),
        )
        text = exposition([down]).render()
        assert families_in(text) == [n for n in CONTRACT if n not in CERTIFICATE_FAMILIES]
        assert value(text, "sni_handshake_error", sni="true", reason="refused") == 1
        assert promtool(text) == ""

    def test_no_tls_version_no_version_series(self) -> None:
        """A handshake that captured a certificate but no version gets no version series."""
        facts = cert_facts("a.test")
        result = probe_result(no_sni=succeeded(False, facts, tls_version=None))
        text = exposition([result]).render()
        assert [labels["sni"] for labels, _ in select(text, "sni_tls_version_info")] == ["true"]

    def test_failed_handshake_without_reason_says_other(self) -> None:
        """A failed handshake that lacks a reason still gets exactly one error series: other."""
        broken = dataclasses.replace(failed(False, Reason.RESET).handshake, reason=None)
        text = exposition([probe_result(no_sni=HandshakeReport(broken, None))]).render()
        assert select(text, "sni_handshake_error", sni="false")[0][0]["reason"] == "other"

    def test_non_finite_values(self) -> None:
        """Infinite and NaN durations are written the way parsers and promtool accept."""
        facts = cert_facts("a.test")
        result = probe_result(
            sni=succeeded(True, facts, connect=float("inf")),
            no_sni=succeeded(False, facts, connect=float("nan")),
        )
        text = exposition([result]).render()
        lines = sample_lines(text)
        assert 'sni_probe_duration_seconds{target="a.test:443",sni="true"} +Inf' in lines
        assert 'sni_probe_duration_seconds{target="a.test:443",sni="false"} NaN' in lines
        assert value(text, "sni_probe_duration_seconds", sni="true") == float("inf")
        assert promtool(text) == ""


class TestLabels:
    """Configured labels and label values that need escaping."""

    def test_configured_labels_on_every_series_of_their_target(self) -> None:
        """A target's labels are on all its series and on no other target's."""
        labelled = probe_result("a.test", labels=(("env", "prod"), ("team", "payments")))
        text = exposition([labelled, sni_required_result("b.test")]).render()
        for name, labels in parse(text):
            names = {k for k, _ in labels}
            mine = dict(labels)["target"] == "a.test:443"
            assert ({"env", "team"} <= names) is mine, name
            if mine:
                assert dict(labels)["team"] == "payments"
        assert promtool(text) == ""

    def test_unexposable_label_names_are_dropped(self) -> None:
        """Reserved, invalid and double-underscore names never reach the output; last wins."""
        target = Target(
            host="a.test",
            labels=(
                ("sni", "x"),
                ("target", "x"),
                ("__meta", "x"),
                ("bad-name", "x"),
                ("team", "one"),
                ("team", "two"),
                ("zone", "z"),
            ),
        )
        assert configured_labels(target) == (("team", "two"), ("zone", "z"))
        text = exposition([dataclasses.replace(probe_result(), target=target)]).render()
        assert value(text, "sni_probe_success", sni="true", target="a.test:443", team="two") == 1
        assert promtool(text) == ""

    WEIRD = 'quote " backslash \\ newline \n tab \t unicode ünï 🙂 end\\'

    def test_weird_values_are_escaped_and_round_trip(self) -> None:
        """Quotes, backslashes, newlines and unicode survive the round trip exactly."""
        facts = cert_facts("a.test", subject='CN=a\\,b "q"\nO=x ü', serial='\\"\n')
        result = probe_result(
            labels=(("team", self.WEIRD),),
            sni=succeeded(True, facts),
            no_sni=succeeded(False, facts),
        )
        text = exposition([result]).render()
        assert '\\"' in text.decode()
        assert "\\\\" in text.decode()
        assert "\\n" in text.decode()
        assert all(line.count("\n") == 0 for line in sample_lines(text))
        info = select(text, "sni_certificate_info", sni="true")
        assert info[0][0]["team"] == self.WEIRD
        assert info[0][0]["subject"] == facts.subject
        assert info[0][0]["serial"] == facts.serial
        assert promtool(text) == ""

    def test_ipv6_target_name(self) -> None:
        """An IPv6 literal target keeps its brackets in the target label."""
        text = exposition([probe_result("::1", address="::1")]).render()
        assert value(text, "sni_required", target="[::1]:443") == 0

    def test_lone_surrogate_does_not_break_the_render(self) -> None:
        """A label value UTF-8 cannot encode becomes "?" instead of failing the scrape."""
        text = exposition([probe_result(labels=(("team", "a\udc80b"),))]).render()
        assert value(text, "sni_required", team="a?b") == 0
        assert promtool(text) == ""


class TestOrdering:
    """Families are contiguous and series come in a fixed order."""

    def test_families_are_contiguous(self) -> None:
        """Every sample line sits in the block of its own family's TYPE line."""
        text = exposition(fleet(40)).render()
        current = None
        for line in text.decode().splitlines():
            if line.startswith("# TYPE "):
                current = line.split()[2]
            elif not line.startswith("#"):
                assert line.split("{", 1)[0] == current
        assert families_in(text) == list(CONTRACT)

    def test_series_sorted_by_target_then_sni(self) -> None:
        """Within a family: by target name, then sni="true" before "false"."""
        text = exposition(reversed(fleet(12))).render()
        success = select(text, "sni_probe_success")
        keys = [(labels["target"], labels["sni"]) for labels, _ in success]
        assert keys == sorted(keys, key=lambda k: (k[0], k[1] == "false"))
        assert keys[0] == ("host00000.fleet.test:443", "true")

    def test_series_follow_the_rank_then_the_name(self) -> None:
        """With a rank, each family lists its targets by rank, then name; the lines are
        the same as by name alone."""
        results = fleet(12)

        def rank(target: Target) -> tuple[float, ...]:
            return (int(target.host[4:9]) % 3,)  # 0, 3, 6, 9, then 1, 4, 7, 10, ...

        ranked = exposition(reversed(results), rank).render()
        order = [labels["target"][4:9] for labels, _ in select(ranked, "sni_required")]
        assert order == ["00000", "00003", "00006", "00009", "00001", "00004", "00007", "00010",
                         "00002", "00005", "00008", "00011"]  # fmt: skip
        plain = exposition(results).render()
        assert families_in(ranked) == families_in(plain)
        assert sorted(ranked.splitlines()) == sorted(plain.splitlines())

    def test_a_pair_keeps_the_rank_it_was_added_with(self) -> None:
        """Ranks are read once per pair: a later result whose rank would differ keeps
        its place; removed and added again, it takes the new one."""
        ranks = {"host00000.fleet.test": 1.0, "host00001.fleet.test": 2.0}
        a, b = fleet(2)
        exp = exposition([a, b], lambda target: (ranks[target.host],))
        exp.render()
        ranks["host00000.fleet.test"] = 3.0
        exp.update(next_probe(a))

        def first() -> str:
            return select(exp.render(), "sni_required")[0][0]["target"]

        assert first() == a.target.name
        exp.remove(a.target.name)
        exp.render()
        exp.update(next_probe(a))
        assert first() == b.target.name

    def test_insertion_order_does_not_matter(self) -> None:
        """The same results in any order render the same bytes."""
        results = fleet(30)
        shuffled = results[:]
        random.Random(4).shuffle(shuffled)
        assert exposition(results).render() == exposition(shuffled).render()


def _variants() -> dict[str, tuple[ProbeResult, ProbeResult]]:
    """Pairs of results for one target that differ in one shown aspect each."""
    base = sni_required_result("a.test")
    handshake = base.sni.handshake
    certificate = base.sni.certificate
    assert certificate is not None
    replace = dataclasses.replace

    def with_sni(**changes: object) -> ProbeResult:
        return replace(base, sni=replace(base.sni, **changes))

    unfinished = HandshakeReport(replace(handshake, ok=False, tls_version=None), None)
    return {
        "verdict": (base, replace(base, verdict=Verdict(False, True, "x"))),
        "reason": (base, replace(base, no_sni=failed(False, Reason.HANDSHAKE_FAILURE))),
        "tls version": (base, with_sni(handshake=replace(handshake, tls_version="TLSv1.2"))),
        "ok flag": (
            with_sni(handshake=unfinished.handshake, certificate=None),
            with_sni(handshake=replace(unfinished.handshake, ok=True), certificate=None),
        ),
        "hostname match": (base, with_sni(certificate=replace(certificate, hostname_match=False))),
        "chain": (base, with_sni(certificate=replace(certificate, chain=ChainCheck(valid=False)))),
        "interval": (base, replace(base, target=replace(base.target, interval=300.0))),
        "start time": (base, replace(base, started_at=NOW + 60)),
        "duration": (base, with_sni(handshake=replace(handshake, handshake_seconds=0.5))),
    }


class TestIncremental:
    """The cache: same bytes until a change, and never a stale series."""

    @pytest.mark.parametrize("aspect", list(_variants()))
    def test_every_shown_aspect_is_rerendered(self, aspect: str) -> None:
        """A change in any one shown aspect gives a fresh render's bytes, in every form, and
        rebuilds only the families whose text changed."""
        before, after = _variants()[aspect]
        other = probe_result("b.test")
        exp = exposition([before, other])
        assert exp.render() == exposition([before, other]).render()
        old_parts, old_runs = exp.render_parts(), exp.render_deflated().parts
        exp.update(after)
        fresh = exposition([after, other]).render()
        assert fresh != exposition([before, other]).render(), "the variant shows no difference"
        assert_served_alike(exp, fresh)
        old, new = by_family(old_parts), by_family(exp.render_parts())
        old_gz = dict(zip(old, old_runs, strict=True))
        new_gz = dict(zip(new, exp.render_deflated().parts, strict=True))
        for name, part in new.items():
            unchanged = old.get(name) == part
            assert (old.get(name) is part) is unchanged, name
            assert (old_gz.get(name) is new_gz[name]) is unchanged, name

    def test_unchanged_render_returns_the_cached_bytes(self) -> None:
        """Without changes, every render method returns the very same objects."""
        exp = exposition(fleet(8))
        assert exp.render() is exp.render()
        assert exp.render_gzip() is exp.render_gzip()
        assert exp.render_parts() is exp.render_parts()
        assert exp.render_deflated() is exp.render_deflated()

    def test_an_update_that_shows_nothing_new_keeps_the_cached_bytes(self) -> None:
        """A result that renders exactly like the previous one changes no object at all."""
        results = fleet(8)
        exp = exposition(results)
        text, parts, gz = exp.render(), exp.render_parts(), exp.render_gzip()
        deflated = exp.render_deflated()
        exp.update(dataclasses.replace(results[3], duration_seconds=9.0))  # not shown
        assert exp.render_parts() is parts
        assert exp.render_deflated() is deflated
        assert exp.render() is text
        assert exp.render_gzip() is gz

    def test_a_probe_rebuilds_only_the_measured_families(self) -> None:
        """The next probe of a target with the same findings rebuilds and recompresses only
        the start time and duration families; every other part is the same object."""
        results = fleet(12)
        exp = exposition(results)
        parts, runs = by_family(exp.render_parts()), exp.render_deflated().parts
        exp.update(next_probe(results[5]))
        exp.update(next_probe(results[6]))
        new_parts, new_runs = by_family(exp.render_parts()), exp.render_deflated().parts
        measured = {"sni_probe_last_run_timestamp_seconds", "sni_probe_duration_seconds"}
        assert list(new_parts) == list(parts)
        for (name, part), run, new_run in zip(new_parts.items(), runs, new_runs, strict=True):
            assert (part is not parts[name]) is (name in measured), name
            assert (new_run is not run) is (name in measured), name
        assert_served_alike(
            exp, exposition([*results[:5], *map(next_probe, results[5:7]), *results[7:]]).render()
        )

    def test_a_probe_recompresses_only_its_chunks(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """With the text compressed in chunks of two targets, the next probe of one target
        recompresses one chunk per measured family: the one with that target's series."""
        monkeypatch.setattr(metrics, "_CHUNK_PAIRS", 2)
        monkeypatch.setattr(metrics, "_STATE_CHUNK_PAIRS", 2)
        results = fleet(12)
        exp = exposition(results)
        exp.render_deflated()
        compressed: list[bytes] = []
        deflate = metrics._deflate  # spied on, not replaced

        def spy(data: bytes | memoryview) -> bytes:
            compressed.append(bytes(data))
            return deflate(data)

        monkeypatch.setattr(metrics, "_deflate", spy)
        exp.update(next_probe(results[7]))
        assert_served_alike(
            exp, exposition([*results[:7], next_probe(results[7]), *results[8:]]).render()
        )
        assert [chunk.split(b"{", 1)[0].rsplit(b"\n", 1)[-1] for chunk in compressed] == [
            b"sni_probe_last_run_timestamp_seconds",
            b"sni_probe_duration_seconds",
        ]
        target = results[7].target.name.encode()
        assert all(target in chunk and chunk.count(b"\n") <= 2 * 2 for chunk in compressed)

    def test_a_target_that_comes_or_goes_rebuilds_only_its_families(self) -> None:
        """Adding or removing a target without certificates leaves the certificate families'
        parts and their compressed runs as they were."""
        up = [probe_result("a.test"), probe_result("c.test")]
        down = probe_result(
            "b.test", sni=failed(True, Reason.REFUSED), no_sni=failed(False, Reason.REFUSED)
        )
        exp = exposition(up)
        parts = by_family(exp.render_parts())
        runs = dict(zip(parts, exp.render_deflated().parts, strict=True))
        for step in ("add", "remove"):
            if step == "add":
                exp.update(down)
            else:
                exp.remove("b.test:443")
            new = by_family(exp.render_parts())
            new_runs = dict(zip(new, exp.render_deflated().parts, strict=True))
            assert list(new) == list(parts)
            for name, part in new.items():
                untouched = name in CERTIFICATE_FAMILIES
                assert (part is parts[name]) is untouched, (step, name)
                assert (new_runs[name] is runs[name]) is untouched, (step, name)
        assert_served_alike(exp, exposition(up).render())

    def test_empty_exposition(self) -> None:
        """No targets: no parts, and the gzip forms are still one valid member."""
        exp = Exposition()
        assert exp.render_parts() == ()
        assert exp.render_deflated().parts == ()
        assert_served_alike(exp, b"")

    def test_update_replaces_every_series_of_the_target(self) -> None:
        """A new result replaces the old one: new values, and series that no longer apply go."""
        exp = exposition([probe_result("a.test"), probe_result("b.test")])
        before = exp.render()
        assert value(before, "sni_probe_success", target="a.test:443", sni="false") == 1
        exp.update(sni_required_result("a.test", started_at=NOW + 60))
        after = exp.render()
        assert value(after, "sni_probe_last_run_timestamp_seconds", target="a.test:443") == NOW + 60
        assert value(after, "sni_handshake_error", target="a.test:443", sni="false") == 1
        assert select(after, "sni_handshake_error", target="a.test:443", reason="none") == [
            ({"target": "a.test:443", "sni": "true", "reason": "none"}, 0.0)
        ]
        for name in CERTIFICATE_FAMILIES:
            assert select(after, name, target="a.test:443", sni="false") == [], name
        # The other target is untouched.
        b_before = {k: v for k, v in parse(before).items() if ("target", "b.test:443") in k[1]}
        b_after = {k: v for k, v in parse(after).items() if ("target", "b.test:443") in k[1]}
        assert b_before == b_after

    def test_changed_certificate_replaces_the_info_series(self) -> None:
        """A new leaf for a known target: the old fingerprint's series is gone."""
        exp = exposition([probe_result("a.test")])
        exp.render()
        renewed = cert_facts("a.test", fingerprint_sha256="f" * 64, not_after=NOW + 90 * 86400)
        exp.update(
            probe_result(
                "a.test",
                sni=succeeded(True, renewed),
                no_sni=succeeded(False, renewed),
                started_at=NOW + 60,
            )
        )
        text = exp.render()
        prints = {
            labels["fingerprint_sha256"] for labels, _ in select(text, "sni_certificate_info")
        }
        assert prints == {"f" * 64}
        assert value(text, "sni_certificate_not_after_timestamp_seconds", sni="true") == (
            NOW + 90 * 86400
        )

    def test_changed_labels_replace_the_series(self) -> None:
        """A reloaded target with other labels shows only the new labels on every series."""
        exp = exposition([probe_result(labels=(("team", "old"),))])
        exp.render()
        exp.update(probe_result(labels=(("team", "new"),), started_at=NOW + 60))
        text = exp.render()
        assert {dict(labels)["team"] for (_, labels) in parse(text)} == {"new"}

    def test_target_added_after_a_render_appears_in_order(self) -> None:
        """A new target after a render gets its series, sorted among the others."""
        exp = exposition([probe_result("a.test"), probe_result("c.test")])
        exp.render()
        exp.update(probe_result("b.test"))
        targets = [labels["target"] for labels, _ in select(exp.render(), "sni_required")]
        assert targets == ["a.test:443", "b.test:443", "c.test:443"]

    def test_remove_makes_the_series_vanish(self) -> None:
        """After remove(), no series of that target remains; unknown names are ignored."""
        exp = exposition([probe_result("a.test"), probe_result("b.test")])
        exp.render()
        exp.remove("a.test:443")
        exp.remove("never.test:443")
        text = exp.render()
        targets = {dict(labels)["target"] for (_, labels) in parse(text)}
        assert targets == {"b.test:443"}
        assert len(exp) == 1
        exp.remove("b.test:443")
        assert exp.render() == b""

    @pytest.mark.parametrize(
        ("seed", "chunk_pairs", "ranked"), [(7, 64, False), (8, 1, False), (9, 3, True)]
    )
    def test_incremental_render_equals_a_fresh_one(
        self,
        seed: int,
        chunk_pairs: int,
        ranked: bool,
        caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """After random updates and removals, between renders of every kind, each render in
        every form equals a fresh render of the latest results, whatever the gzip chunks."""
        monkeypatch.setattr(metrics, "_CHUNK_PAIRS", chunk_pairs)
        monkeypatch.setattr(metrics, "_STATE_CHUNK_PAIRS", chunk_pairs + 1)
        rng = random.Random(seed)
        pool = fleet(40)
        variants = [
            (
                r,
                next_probe(r),  # the common case: only the measured families change
                next_probe(r, 120.0),
                sni_required_result(r.target.host, labels=r.target.labels, started_at=NOW + 1),
                dataclasses.replace(r, address="127.0.0.2"),  # same name, another pair
                probe_result(r.target.host, labels=(("team", "moved"),), started_at=NOW + 2),
                dataclasses.replace(r, started_at="soon"),  # type: ignore[arg-type]
            )
            for r in pool
        ]

        def by_digest(target: Target) -> tuple[float, ...]:  # a stable, scrambled order
            return (zlib.crc32(target.name.encode()) % 7,)

        rank = by_digest if ranked else None
        exp = Exposition(rank)
        latest: dict[str, ProbeResult] = {}
        renders = (exp.render, exp.render_gzip, exp.render_parts, exp.render_deflated)
        for _ in range(600):
            i = rng.randrange(len(pool))
            name = pool[i].target.name
            if rng.random() < 0.1:
                exp.remove(name)
                latest.pop(name, None)
            else:
                result = rng.choice(variants[i])
                exp.update(result)
                latest[name] = result
            if rng.random() < 0.15:
                rng.choice(renders)()
            if rng.random() < 0.05:
                assert_served_alike(exp, exposition(latest.values(), rank).render())
        assert_served_alike(exp, exposition(latest.values(), rank).render())
        assert exp.results() == tuple(sorted(latest.values(), key=lambda r: r.target.name))
        assert "cannot render the series" in caplog.text

    def test_gzip_matches_and_follows_changes(self) -> None:
        """render_gzip() is one gzip member of the rendered text, recompressed after a change;
        gzip_member() puts a tail (the service's own metrics) into that same member."""
        exp = exposition([probe_result("a.test")])
        first = exp.render_gzip()
        assert one_member(first) == exp.render()
        assert gzip.decompress(first) == exp.render()
        exp.update(probe_result("b.test"))
        second = exp.render_gzip()
        assert second is not first
        assert one_member(second) == exp.render()
        body = b"".join(gzip_member(exp.render_deflated(), b"own 1\n"))
        assert one_member(body) == exp.render() + b"own 1\n"
        # The trailer is checked: a wrong CRC or length is refused.
        for broken in (body[:-8] + bytes([body[-8] ^ 1]) + body[-7:], body[:-1] + b"\x01"):
            with pytest.raises(zlib.error):
                one_member(broken)


class TestCollisions:
    """One result per target name: never two identical series."""

    def test_same_name_other_address_last_write_wins(self) -> None:
        """A result for a known name from another address replaces the old pair."""
        exp = Exposition()
        exp.update(probe_result("a.test", address="127.0.0.1"))
        exp.update(sni_required_result("a.test", address="127.0.0.2"))
        text = exp.render()
        parse(text)  # no duplicates
        assert value(text, "sni_required", target="a.test:443") == 1
        assert len(exp) == 1
        assert [r.address for r in exp.results()] == ["127.0.0.2"]
        assert promtool(text) == ""
        exp.remove("a.test:443")
        assert exp.render() == b""

    def test_same_name_other_labels_last_write_wins(self) -> None:
        """Two targets of one name with different labels: only the last one's series remain."""
        exp = exposition(
            [
                probe_result(labels=(("team", "x"),)),
                probe_result(labels=(("team", "y"),), address="127.0.0.9"),
            ]
        )
        text = exp.render()
        assert {dict(labels)["team"] for (_, labels) in parse(text)} == {"y"}

    def test_names_that_render_alike_are_one_target(self) -> None:
        """A name whose lone surrogate renders as "?" collides with the "?" name: last wins."""
        exp = exposition([probe_result("a?.test"), sni_required_result("a\udc80.test")])
        text = exp.render()
        assert value(text, "sni_required") == 1
        assert len(exp) == 1

    def test_failing_target_does_not_fail_the_scrape(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A result the renderer cannot format is left out, logged, and the rest is served."""
        broken = dataclasses.replace(probe_result("bad.test"), started_at="soon")  # type: ignore[arg-type]
        exp = exposition([broken, probe_result("good.test")])
        text = exp.render()
        assert {dict(labels)["target"] for (_, labels) in parse(text)} == {"good.test:443"}
        assert "bad.test:443" in caplog.text
        exp.update(probe_result("bad.test"))
        assert value(exp.render(), "sni_required", target="bad.test:443") == 0


class TestCompliance:
    """The output against the real parsers, and against prometheus_client's own rendering."""

    def test_large_output_passes_promtool_and_the_parser(self) -> None:
        """3,000 mixed targets: promtool has no complaint, the parser reads every series."""
        results = fleet(3000)
        text = exposition(results).render()
        assert promtool(text) == ""
        # Per quarter of the fleet: 24 series with both certificates (twice), 17 without the
        # no-SNI one, 10 when both handshakes fail.
        assert len(parse(text)) == 750 * (24 + 24 + 17 + 10)

    def test_collector_yields_the_same_samples(self) -> None:
        """Parsing our bytes and parsing generate_latest of the collector give equal samples."""
        weird = probe_result(
            "w.test",
            labels=(("team", TestLabels.WEIRD), ("zone", "ü")),
            sni=succeeded(True, cert_facts("w.test", subject='CN="w",O=a\\b')),
        )
        results = [*fleet(41), weird, probe_result("::1", address="::1")]
        exp = exposition(results)
        registry = CollectorRegistry()
        registry.register(TargetCollector(exp.results))
        reference = generate_latest(registry)
        assert parse(exp.render()) == parse(reference)
        assert families_in(exp.render()) == families_in(reference)

    def test_collector_describes_without_collecting(self) -> None:
        """Registering the collector does not read the snapshot; it describes every family."""

        def snapshot() -> Iterator[ProbeResult]:
            raise AssertionError("collected during registration")
            yield  # pragma: no cover

        collector = TargetCollector(snapshot)
        CollectorRegistry(auto_describe=True).register(collector)
        assert [m.name for m in collector.describe()] == [f.name for f in FAMILIES]

    def test_families_match_the_contract(self) -> None:
        """The family names, order and own labels are the documented contract."""
        assert [(f.name, set(f.labels)) for f in FAMILIES] == list(CONTRACT.items())
        assert metrics.CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"
