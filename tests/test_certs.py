"""Certificate facts, RFC 6125 hostname matching, chain checks and their caches.

Everything is in memory: certificates come from exporter.demo.pki, hostname
cases use hand-built CertFacts, and nothing opens a socket.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import ipaddress
import os
import time
from typing import TYPE_CHECKING

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID
from hypothesis import given, settings
from hypothesis import strategies as st
from OpenSSL import crypto

from exporter import certs
from exporter.certs import (
    CertificateError,
    TrustStore,
    TrustStoreError,
    certificate_report,
    check_chain,
    hostname_matches,
    load_trust_store,
    parse_certificate,
)
from exporter.demo.pki import CA, Issued, new_key, self_signed
from exporter.model import CertFacts, ChainCheck
from exporter.reasons import SniExporterError, UsageError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

DAY = 86400.0
NOW = time.time()


# --- Fixtures ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Pki:
    """Two trusted hierarchies (web-PKI and internal profile) and their trust store."""

    web_root: CA
    web_intermediate: CA
    internal_root: CA
    internal_intermediate: CA
    trust: TrustStore


@pytest.fixture(scope="module")
def pki() -> Pki:
    web_root = CA.root()
    internal_root = CA.root(profile="internal")
    return Pki(
        web_root=web_root,
        web_intermediate=web_root.intermediate(),
        internal_root=internal_root,
        internal_intermediate=internal_root.intermediate(),
        trust=TrustStore.from_pem(
            web_root.bundle_pem + internal_root.bundle_pem, include_system=False
        ),
    )


@pytest.fixture(scope="module")
def web_leaf(pki: Pki) -> Issued:
    return pki.web_intermediate.leaf(["www.demo.test"])


@pytest.fixture
def fresh_caches() -> Iterator[None]:
    """Tests that count work start and end with empty caches."""
    certs.clear_caches()
    yield
    certs.clear_caches()


def utc(offset_days: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(NOW + offset_days * DAY, dt.UTC).replace(microsecond=0)


def facts(
    dns: tuple[str, ...] = (),
    ips: tuple[str, ...] = (),
    cn: str | None = None,
    *,
    has_san: bool | None = None,
) -> CertFacts:
    """CertFacts for hostname tests; has_san defaults to "some SAN given"."""
    return CertFacts(
        subject=f"CN={cn}" if cn else "",
        issuer="CN=issuer",
        common_name=cn,
        serial="1",
        not_before=0.0,
        not_after=0.0,
        fingerprint_sha256="00",
        dns_names=dns,
        ip_addresses=ips,
        has_san=bool(dns or ips) if has_san is None else has_san,
        self_issued=False,
        is_ca=False,
    )


def client_auth_leaf(issuer: CA, name: str) -> Issued:
    """A web-PKI-shaped leaf whose extendedKeyUsage is clientAuth only."""
    key = new_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, name)]))
        .issuer_name(issuer.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(utc(-1))
        .not_valid_after(utc(30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
            critical=False,
        )
        .sign(issuer.key, hashes.SHA256())
    )
    return Issued(cert=cert, key=key, chain=(issuer.cert, *issuer.chain))


# --- Facts ------------------------------------------------------------------


class TestParseCertificate:
    def test_leaf_facts(self, pki: Pki, web_leaf: Issued) -> None:
        """A leaf's facts: RFC 4514 names, CN, hex serial, UTC times, fingerprint, SANs, flags."""
        got = parse_certificate(web_leaf.der)
        cert = web_leaf.cert
        assert got.subject == cert.subject.rfc4514_string()
        assert "CN=www.demo.test" in got.subject
        assert got.issuer == pki.web_intermediate.cert.subject.rfc4514_string()
        assert got.common_name == "www.demo.test"
        assert got.serial == format(cert.serial_number, "x")
        assert got.serial == got.serial.lower()
        assert got.not_before == cert.not_valid_before_utc.timestamp()
        assert got.not_after == cert.not_valid_after_utc.timestamp()
        assert got.fingerprint_sha256 == cert.fingerprint(hashes.SHA256()).hex()
        assert got.dns_names == ("www.demo.test",)
        assert got.ip_addresses == ()
        assert got.has_san
        assert not got.self_issued
        assert not got.is_ca

    def test_times_are_utc_posix_seconds(self, pki: Pki) -> None:
        """not_before/not_after are the POSIX seconds of the certificate's UTC times."""
        start = dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
        end = dt.datetime(2030, 4, 2, 3, 4, 5, tzinfo=dt.UTC)
        leaf = pki.web_root.leaf(["t.demo.test"], not_before=start, not_after=end)
        got = parse_certificate(leaf.der)
        assert (got.not_before, got.not_after) == (start.timestamp(), end.timestamp())

    def test_san_text_is_normalised(self, pki: Pki) -> None:
        """dNSNames are lowercased; IP SANs are canonical text (compressed IPv6)."""
        leaf = pki.web_root.leaf(["WWW.Demo.TEST"], ip_addresses=["0:0:0:0:0:0:0:1", "127.0.0.1"])
        got = parse_certificate(leaf.der)
        assert got.dns_names == ("www.demo.test",)
        assert got.ip_addresses == ("::1", "127.0.0.1")
        assert got.sans == ("www.demo.test", "::1", "127.0.0.1")

    def test_cn_only_certificate_has_no_san(self, pki: Pki) -> None:
        """Without a subjectAltName extension has_san is False and the CN is kept."""
        got = parse_certificate(pki.web_root.leaf(common_name="legacy.demo.test").der)
        assert not got.has_san
        assert got.dns_names == ()
        assert got.common_name == "legacy.demo.test"

    @pytest.mark.parametrize("profile", ["webpki", "internal"])
    def test_roots_are_self_issued_cas(self, pki: Pki, profile: str) -> None:
        """A root is self-issued and a CA by basicConstraints, in both profiles."""
        root = pki.web_root if profile == "webpki" else pki.internal_root
        got = parse_certificate(root.der)
        assert got.self_issued
        assert got.is_ca
        assert got.subject == got.issuer

    def test_self_signed_leaf_is_self_issued_not_ca(self) -> None:
        """A self-signed server certificate is self-issued but no CA."""
        got = parse_certificate(self_signed(["self.demo.test"]).der)
        assert got.self_issued
        assert not got.is_ca

    def test_cached_per_der(self, web_leaf: Issued) -> None:
        """Equal DER from different buffers yields the very same facts object."""
        first = parse_certificate(web_leaf.der)
        assert parse_certificate(bytes(bytearray(web_leaf.der))) is first

    @pytest.mark.parametrize(
        "der",
        [b"", b"not a certificate", b"\x30\x03\x02\x01\x01", b"\x30\x82\xff\xff"],
        ids=["empty", "text", "wrong-structure", "truncated"],
    )
    def test_malformed_der_raises_typed_error(self, der: bytes) -> None:
        """Malformed DER raises CertificateError, a SniExporterError."""
        with pytest.raises(CertificateError, match="malformed certificate") as caught:
            parse_certificate(der)
        assert isinstance(caught.value, SniExporterError)

    def test_truncated_real_certificate_raises_typed_error(self, web_leaf: Issued) -> None:
        """A certificate cut short raises CertificateError."""
        with pytest.raises(CertificateError):
            parse_certificate(web_leaf.der[:-10])

    @settings(max_examples=300, deadline=None)
    @given(data=st.data())
    def test_corrupted_der_never_escapes_the_hierarchy(self, data: st.DataObject) -> None:
        """Any corruption of a real certificate either parses or raises CertificateError."""
        der = bytearray(_CORRUPTIBLE.der)
        for _ in range(data.draw(st.integers(1, 4))):
            der[data.draw(st.integers(0, len(der) - 1))] = data.draw(st.integers(0, 255))
        try:
            got = parse_certificate(bytes(der))
        except CertificateError:
            return
        assert isinstance(got, CertFacts)


# Made once at import: hypothesis forbids function-scoped fixtures in @given.
_CORRUPTIBLE = CA.root().leaf(["corrupt.demo.test"], ip_addresses=["192.0.2.1"])


# --- Hostname ---------------------------------------------------------------


HOSTNAME_TABLE: list[tuple[CertFacts, str, bool]] = [
    # Exact dNSName: case and one trailing dot do not matter.
    (facts(("www.example.com",)), "www.example.com", True),
    (facts(("www.example.com",)), "WWW.Example.COM", True),
    (facts(("www.example.com",)), "www.example.com.", True),
    (facts(("www.example.com.",)), "www.example.com", True),
    (facts(("www.example.com",)), "example.com", False),
    (facts(("www.example.com",)), "www.example.com.evil.test", False),
    (facts(("www.example.com",)), "www.example.com..", False),
    # Wildcards: the whole left-most label, exactly one label.
    (facts(("*.example.com",)), "a.example.com", True),
    (facts(("*.example.com",)), "A.EXAMPLE.COM", True),
    (facts(("*.example.com",)), "example.com", False),
    (facts(("*.example.com",)), "a.b.example.com", False),
    (facts(("*.example.com",)), ".example.com", False),
    (facts(("*.example.com",)), "*.example.com", False),
    (facts(("*.example.com",)), "xn--bcher-kva.example.com", True),
    # Partial, nested and too-broad wildcards match nothing.
    (facts(("f*.example.com",)), "foo.example.com", False),
    (facts(("*o.example.com",)), "foo.example.com", False),
    (facts(("f*o.example.com",)), "foo.example.com", False),
    (facts(("xn--*.example.com",)), "xn--bcher-kva.example.com", False),
    (facts(("xn--bcher-*.example.com",)), "xn--bcher-kva.example.com", False),
    (facts(("a.*.example.com",)), "a.b.example.com", False),
    (facts(("*.*.example.com",)), "a.b.example.com", False),
    (facts(("*.com",)), "example.com", False),
    (facts(("*",)), "localhost", False),
    # IDN: a U-label host is compared in A-label form.
    (facts(("xn--bcher-kva.example",)), "bücher.example", True),
    (facts(("xn--bcher-kva.example",)), "BÜCHER.example", True),
    # IP literals match only iPAddress SANs, compared as addresses.
    (facts(ips=("127.0.0.1",)), "127.0.0.1", True),
    (facts(ips=("127.0.0.1",)), "127.0.0.2", False),
    (facts(ips=("::1",)), "::1", True),
    (facts(ips=("::1",)), "0:0:0:0:0:0:0:1", True),
    (facts(ips=("::1",)), "[::1]", True),
    (facts(ips=("2001:db8::1",)), "2001:DB8::1", True),
    (facts(ips=("::ffff:127.0.0.1",)), "127.0.0.1", False),
    (facts(("127.0.0.1",)), "127.0.0.1", False),
    (facts(ips=("127.0.0.1",)), "localhost", False),
    # The CN counts only when there is no SAN extension at all.
    (facts(cn="legacy.example.com"), "legacy.example.com", True),
    (facts(cn="legacy.example.com"), "LEGACY.example.com.", True),
    (facts(cn="*.example.com"), "a.example.com", True),
    (facts(cn="legacy.example.com"), "other.example.com", False),
    (facts(("other.example.com",), cn="legacy.example.com"), "legacy.example.com", False),
    (facts(ips=("192.0.2.1",), cn="legacy.example.com"), "legacy.example.com", False),
    (facts(cn="legacy.example.com", has_san=True), "legacy.example.com", False),
    (facts(cn="127.0.0.1"), "127.0.0.1", False),
    (facts(), "anything.example.com", False),
    # Hosts that are no names.
    (facts(("example.com",)), "", False),
    (facts(("example.com",)), ".", False),
]


class TestHostnameMatches:
    @pytest.mark.parametrize(("cert", "host", "expected"), HOSTNAME_TABLE)
    def test_truth_table(self, cert: CertFacts, host: str, expected: bool) -> None:
        """RFC 6125 / X509_check_host behaviour, row by row."""
        assert hostname_matches(cert, host) is expected

    def test_real_certificate(self, pki: Pki) -> None:
        """Facts parsed from a real leaf match their own names and nothing else."""
        leaf = pki.web_root.leaf(["*.shop.demo.test", "shop.demo.test"], ip_addresses=["::1"])
        got = parse_certificate(leaf.der)
        assert hostname_matches(got, "shop.demo.test")
        assert hostname_matches(got, "eu.shop.demo.test")
        assert hostname_matches(got, "::1")
        assert not hostname_matches(got, "a.eu.shop.demo.test")
        assert not hostname_matches(got, "127.0.0.1")


LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
# A top-level label with a letter, so that no generated name is an IP literal.
TLD = st.from_regex(r"[a-z]{2,6}", fullmatch=True)
NAME = st.builds(
    lambda labels, tld: ".".join([*labels, tld]), st.lists(LABEL, min_size=1, max_size=3), TLD
)


def shout(name: str, flags: list[bool]) -> str:
    return "".join(
        c.upper() if up else c for c, up in zip(name, flags + [False] * len(name), strict=False)
    )


class TestHostnameProperties:
    @given(name=NAME, flags=st.lists(st.booleans(), max_size=40), dot=st.booleans())
    def test_exact_name_matches_in_any_case(self, name: str, flags: list[bool], dot: bool) -> None:
        """A dNSName matches itself in any letter case, with or without a trailing dot."""
        host = shout(name, flags) + ("." if dot else "")
        assert hostname_matches(facts((name,)), host)

    @given(base=NAME, label=LABEL, extra=LABEL)
    def test_wildcard_spans_exactly_one_label(self, base: str, label: str, extra: str) -> None:
        """*.base matches label.base, never base itself nor extra.label.base."""
        cert = facts((f"*.{base}",))
        assert hostname_matches(cert, f"{label}.{base}")
        assert not hostname_matches(cert, base)
        assert not hostname_matches(cert, f"{extra}.{label}.{base}")

    @given(label=LABEL, tld=LABEL, host_label=LABEL)
    def test_wildcard_over_single_label_matches_nothing(
        self, label: str, tld: str, host_label: str
    ) -> None:
        """*.tld is too broad: it matches no host, even one it would syntactically cover."""
        assert not hostname_matches(facts((f"*.{tld}",)), f"{host_label}.{tld}")
        assert not hostname_matches(facts((f"{label}*.{tld}.test",)), f"{label}x.{tld}.test")

    @given(name=NAME)
    def test_cn_ignored_when_any_san_exists(self, name: str) -> None:
        """With a SAN extension (even one without dNSNames) the CN never matches."""
        assert hostname_matches(facts(cn=name), name)
        assert not hostname_matches(facts(ips=("192.0.2.1",), cn=name), name)
        assert not hostname_matches(facts(cn=name, has_san=True), name)

    @given(address=st.ip_addresses())
    def test_ip_san_matches_every_spelling_of_its_address(
        self, address: ipaddress.IPv4Address | ipaddress.IPv6Address
    ) -> None:
        """An iPAddress SAN matches its address written compressed, exploded or bracketed."""
        cert = facts(ips=(str(address),))
        assert hostname_matches(cert, str(address))
        assert hostname_matches(cert, address.exploded)
        if address.version == 6:
            assert hostname_matches(cert, f"[{address}]")
        assert not hostname_matches(facts((str(address),)), str(address))

    @given(host=st.text(max_size=80), pattern=st.text(max_size=40))
    def test_never_raises(self, host: str, pattern: str) -> None:
        """Arbitrary text as host or presented name gives a bool, never an exception."""
        assert hostname_matches(facts((pattern,), cn=pattern), host) in {True, False}
        assert hostname_matches(facts(cn=pattern), host) in {True, False}


# --- Trust store ------------------------------------------------------------


class TestTrustStore:
    def test_identity_ignores_order_and_duplicates(self, pki: Pki) -> None:
        """Stores with the same anchors are equal and hash alike, however they were listed."""
        a, b = pki.web_root.bundle_pem, pki.internal_root.bundle_pem
        one = TrustStore.from_pem(a + b, include_system=False)
        two = TrustStore.from_pem(b + a + b, include_system=False)
        assert one == two
        assert hash(one) == hash(two)
        assert one.identity == two.identity
        assert len(two.anchors) == 2

    def test_identity_tracks_contents(self, pki: Pki) -> None:
        """Different anchors give a different identity."""
        one = TrustStore.from_pem(pki.web_root.bundle_pem, include_system=False)
        both = TrustStore.from_pem(
            pki.web_root.bundle_pem + pki.internal_root.bundle_pem, include_system=False
        )
        assert one.identity != both.identity
        assert one != both

    def test_anchors_are_der(self, pki: Pki) -> None:
        """Anchors hold the DER of the bundle's certificates."""
        store = TrustStore.from_pem(pki.web_root.bundle_pem, include_system=False)
        assert store.anchors == (pki.web_root.der,)

    def test_pem_with_surrounding_text(self, pki: Pki) -> None:
        """Text around PEM blocks (as in distribution bundles) is ignored."""
        bundle = b"# Root one\n" + pki.web_root.bundle_pem + b"\nsome note\n"
        store = TrustStore.from_pem(bundle, include_system=False)
        assert store.anchors == (pki.web_root.der,)

    def test_include_system_adds_the_system_anchors(self, pki: Pki) -> None:
        """include_system=True is the bundle plus every system anchor."""
        with_system = TrustStore.from_pem(pki.web_root.bundle_pem)
        system = set(TrustStore.system().anchors)
        assert set(with_system.anchors) == system | {pki.web_root.der}

    @pytest.mark.parametrize(
        ("bundle", "message"),
        [
            (b"", "no PEM certificate"),
            (b"just text", "no PEM certificate"),
            (
                b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n",
                "certificate 1 in the bundle is malformed",
            ),
            (
                b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
                "certificate 1 in the bundle is malformed",
            ),
        ],
        ids=["empty", "text", "not-a-certificate", "bad-base64"],
    )
    def test_bad_bundle_raises(self, bundle: bytes, message: str) -> None:
        """A bundle without certificates, or with a malformed one, raises CertificateError."""
        with pytest.raises(CertificateError, match=message):
            TrustStore.from_pem(bundle, include_system=False)

    def test_read_anchors_from_file_and_hashed_directory(self, pki: Pki, tmp_path: Path) -> None:
        """System anchors come from the CA file and the capath directory; junk is skipped."""
        cafile = tmp_path / "bundle.crt"
        cafile.write_bytes(pki.web_root.bundle_pem)
        capath = tmp_path / "certs"
        capath.mkdir()
        (capath / "1a2b3c4d.0").write_bytes(pki.internal_root.bundle_pem)
        (capath / "dup.pem").write_bytes(pki.web_root.bundle_pem)
        (capath / "README").write_text("not a certificate")
        (capath / "broken.pem").write_bytes(
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
        )
        (capath / "subdir").mkdir()
        anchors = certs._read_anchors(cafile, capath)
        assert sorted(anchors) == sorted([pki.web_root.der, pki.internal_root.der])

    def test_read_anchors_without_any_store(self, tmp_path: Path) -> None:
        """A machine without a system store yields no anchors instead of failing."""
        assert certs._read_anchors(tmp_path / "missing.crt", tmp_path / "missing") == ()


class TestLoadTrustStore:
    def test_none_is_the_system_store(self) -> None:
        """No CA file means the system store, read once."""
        assert load_trust_store(None) is load_trust_store(None)
        assert load_trust_store(None) == TrustStore.system()

    def test_ca_file_adds_to_the_system_store(self, pki: Pki, tmp_path: Path) -> None:
        """A CA file's certificates are trusted on top of the system's."""
        ca_file = tmp_path / "ca.pem"
        ca_file.write_bytes(pki.web_root.bundle_pem + pki.internal_root.bundle_pem)
        store = load_trust_store(str(ca_file))
        assert {pki.web_root.der, pki.internal_root.der} <= set(store.anchors)
        assert set(TrustStore.system().anchors) <= set(store.anchors)
        assert str(ca_file) in store.description

    def test_cached_per_unchanged_file(self, pki: Pki, tmp_path: Path) -> None:
        """The same unchanged file gives the same object; a changed file is read again."""
        ca_file = tmp_path / "ca.pem"
        ca_file.write_bytes(pki.web_root.bundle_pem)
        first = load_trust_store(str(ca_file))
        assert load_trust_store(str(ca_file)) is first
        ca_file.write_bytes(pki.web_root.bundle_pem + pki.internal_root.bundle_pem)
        second = load_trust_store(str(ca_file))
        assert second is not first
        assert pki.internal_root.der in second.anchors
        assert pki.internal_root.der not in first.anchors

    def test_reload_reads_again_regardless(self, pki: Pki, tmp_path: Path) -> None:
        """reload=True sees a change that kept size and mtime; same content keeps the object."""
        ca_file = tmp_path / "ca.pem"
        ca_file.write_bytes(pki.web_root.bundle_pem)
        first = load_trust_store(str(ca_file))
        assert load_trust_store(str(ca_file), reload=True) is first
        stamp = ca_file.stat()
        # Another root of the same size (ECDSA signatures vary by a byte or two).
        other = next(
            pem for pem in (CA.root().bundle_pem for _ in range(50)) if len(pem) == stamp.st_size
        )
        ca_file.write_bytes(other)
        os.utime(ca_file, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
        assert load_trust_store(str(ca_file)) is first
        reloaded = load_trust_store(str(ca_file), reload=True)
        assert reloaded != first
        assert load_trust_store(str(ca_file)) is reloaded

    @pytest.mark.parametrize(
        ("content", "message"),
        [
            (None, "cannot read it"),
            (b"", "no PEM certificate"),
            (b"\x30\x82\x01\x00 DER is not PEM", "no PEM certificate"),
            (
                b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n",
                "certificate 1 in the bundle is malformed",
            ),
        ],
        ids=["missing", "empty", "der", "malformed"],
    )
    def test_bad_file_one_line_naming_it(
        self, tmp_path: Path, content: bytes | None, message: str
    ) -> None:
        """Missing, empty, non-PEM or malformed CA files raise one line naming the file."""
        ca_file = tmp_path / "extra-ca.pem"
        if content is not None:
            ca_file.write_bytes(content)
        with pytest.raises(TrustStoreError, match=message) as caught:
            load_trust_store(str(ca_file))
        text = str(caught.value)
        assert text.startswith(f"CA file {ca_file}: ")
        assert "\n" not in text
        assert isinstance(caught.value, UsageError)
        assert isinstance(caught.value, CertificateError)

    def test_directory_is_refused(self, tmp_path: Path) -> None:
        """A directory given as CA file raises a TrustStoreError naming it."""
        with pytest.raises(TrustStoreError, match=f"CA file {tmp_path}: cannot read it"):
            load_trust_store(str(tmp_path))


# --- Chain ------------------------------------------------------------------


class TestCheckChain:
    def test_webpki_chain_with_intermediate_is_valid_both_ways(
        self, pki: Pki, web_leaf: Issued
    ) -> None:
        """A complete web-PKI chain passes OpenSSL and the strict verifier."""
        assert check_chain(web_leaf.chain_der, pki.trust, NOW) == ChainCheck(
            valid=True, error=None, strict_valid=True, strict_error=None
        )

    def test_internal_pki_is_valid_but_not_strict(self, pki: Pki) -> None:
        """An internal-profile chain is accepted by OpenSSL and refused by the web-PKI verifier."""
        leaf = pki.internal_intermediate.leaf(["internal.demo.test"])
        check = check_chain(leaf.chain_der, pki.trust, NOW)
        assert check.valid
        assert check.error is None
        assert not check.strict_valid
        assert check.strict_error is not None
        assert "missing required extension" in check.strict_error
        assert "CN=internal.demo.test" in check.strict_error
        assert "<Certificate" not in check.strict_error

    def test_root_sent_by_the_server_is_fine(self, pki: Pki) -> None:
        """A chain that includes the (trusted) root still validates both ways."""
        leaf = pki.web_intermediate.leaf(["www.demo.test"], include_root=True)
        assert len(leaf.chain_der) == 3
        check = check_chain(leaf.chain_der, pki.trust, NOW)
        assert (check.valid, check.strict_valid) == (True, True)

    def test_expired_leaf(self, pki: Pki) -> None:
        """A leaf past notAfter fails with OpenSSL's "certificate has expired"."""
        leaf = pki.web_intermediate.leaf(["old.demo.test"], not_before=utc(-90), not_after=utc(-1))
        check = check_chain(leaf.chain_der, pki.trust, NOW)
        assert not check.valid
        assert check.error == "certificate has expired"
        assert not check.strict_valid
        assert check.strict_error is not None
        assert "not valid at validation time" in check.strict_error

    def test_verification_time_is_at_not_now(self, pki: Pki) -> None:
        """The chain is judged at ``at``: the expired leaf was valid while it lasted."""
        # The intermediate was issued a day ago, so the leaf's life fits after it.
        leaf = pki.web_intermediate.leaf(
            ["was.demo.test"], not_before=utc(-0.5), not_after=utc(-0.25)
        )
        check = check_chain(leaf.chain_der, pki.trust, NOW - 0.4 * DAY)
        assert (check.valid, check.strict_valid) == (True, True)
        assert not check_chain(leaf.chain_der, pki.trust, NOW).valid

    def test_not_yet_valid_leaf(self, pki: Pki) -> None:
        """A leaf before notBefore is an invalid chain (OpenSSL: not yet valid)."""
        leaf = pki.web_intermediate.leaf(["new.demo.test"], not_before=utc(1), not_after=utc(90))
        check = check_chain(leaf.chain_der, pki.trust, NOW)
        assert not check.valid
        assert check.error is not None
        assert "not yet valid" in check.error
        assert not check.strict_valid

    def test_unknown_ca(self, pki: Pki) -> None:
        """A chain from a CA outside the trust store fails to find its issuer."""
        stranger = CA.root("sni-exporter Stranger Root CA").intermediate("Stranger Intermediate")
        leaf = stranger.leaf(["www.demo.test"])
        check = check_chain(leaf.chain_der, pki.trust, NOW)
        assert not check.valid
        assert check.error == "unable to get local issuer certificate"
        assert not check.strict_valid

    def test_self_signed_leaf(self, pki: Pki) -> None:
        """A self-signed leaf is refused, unless it is itself in the trust store."""
        leaf = self_signed(["self.demo.test"])
        check = check_chain(leaf.chain_der, pki.trust, NOW)
        assert not check.valid
        assert check.error == "self-signed certificate"
        assert not check.strict_valid
        pinned = TrustStore.from_pem(leaf.cert_pem, include_system=False)
        assert check_chain(leaf.chain_der, pinned, NOW).valid

    def test_missing_intermediate(self, pki: Pki, web_leaf: Issued) -> None:
        """A server that sends only its leaf fails: the issuer cannot be found."""
        check = check_chain(web_leaf.chain_der[:1], pki.trust, NOW)
        assert not check.valid
        assert check.error == "unable to get local issuer certificate"
        assert not check.strict_valid
        assert check.strict_error is not None

    def test_intermediate_as_anchor(self, pki: Pki, web_leaf: Issued) -> None:
        """An intermediate placed in the CA file ends the chain (partial chain), as in Java."""
        trust = TrustStore.from_pem(pki.web_intermediate.cert_pem, include_system=False)
        check = check_chain(web_leaf.chain_der[:1], trust, NOW)
        assert check.valid

    def test_wrong_purpose_leaf(self, pki: Pki) -> None:
        """A leaf whose extendedKeyUsage lacks serverAuth is refused, as TLS clients do."""
        leaf = client_auth_leaf(pki.web_intermediate, "client.demo.test")
        check = check_chain(leaf.chain_der, pki.trust, NOW)
        assert not check.valid
        assert check.error == "unsuitable certificate purpose"
        assert not check.strict_valid

    @pytest.mark.parametrize(
        ("dns", "ips"),
        [(["other.demo.test"], []), (["*.wild.demo.test"], []), ([], ["127.0.0.1", "::1"])],
        ids=["other-name", "wildcard", "ip-only"],
    )
    def test_hostname_plays_no_part(self, pki: Pki, dns: list[str], ips: list[str]) -> None:
        """Whatever names the leaf holds, a good chain is valid both ways."""
        leaf = pki.web_intermediate.leaf(dns, ip_addresses=ips)
        check = check_chain(leaf.chain_der, pki.trust, NOW)
        assert (check.valid, check.strict_valid) == (True, True)

    def test_cn_only_leaf_fails_only_the_strict_verifier(self, pki: Pki) -> None:
        """A leaf without subjectAltName is valid for OpenSSL, not for the web PKI."""
        leaf = pki.web_intermediate.leaf(common_name="legacy.demo.test")
        check = check_chain(leaf.chain_der, pki.trust, NOW)
        assert check.valid
        assert not check.strict_valid
        assert check.strict_error is not None
        assert "subjectAltName" in check.strict_error

    def test_malformed_intermediate_is_an_invalid_chain(self, pki: Pki, web_leaf: Issued) -> None:
        """A malformed certificate in the chain makes it invalid; nothing is raised."""
        check = check_chain((web_leaf.der, b"garbage"), pki.trust, NOW)
        assert not check.valid
        assert not check.strict_valid
        assert check.error is not None
        assert "malformed certificate" in check.error

    def test_empty_chain_is_invalid(self, pki: Pki) -> None:
        """An empty chain is invalid, not an exception."""
        check = check_chain((), pki.trust, NOW)
        assert (check.valid, check.strict_valid) == (False, False)
        assert check.error == "no certificate in the chain"

    def test_empty_trust_store(self, web_leaf: Issued) -> None:
        """A store without anchors trusts nothing, and says so."""
        empty = TrustStore.from_der(())
        check = check_chain(web_leaf.chain_der, empty, NOW)
        assert not check.valid
        assert not check.strict_valid
        assert check.strict_error == "the trust store holds no certificate"


def count_calls(monkeypatch: pytest.MonkeyPatch, name: str) -> list[int]:
    """Wrap certs.<name> so that each call appends to the returned list."""
    calls: list[int] = []
    original: Callable[..., str | None] = getattr(certs, name)

    def counted(*args: object) -> str | None:
        calls.append(1)
        return original(*args)

    monkeypatch.setattr(certs, name, counted)
    return calls


@pytest.mark.usefixtures("fresh_caches")
class TestChainCache:
    def test_same_chain_verified_once(
        self, pki: Pki, web_leaf: Issued, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Repeated checks of one chain (fresh buffers each time) verify once, same object."""
        openssl = count_calls(monkeypatch, "_verify_openssl")
        strict = count_calls(monkeypatch, "_verify_strict")
        first = check_chain(web_leaf.chain_der, pki.trust, NOW)
        for offset in range(1, 50):
            chain = [bytes(bytearray(der)) for der in web_leaf.chain_der]
            assert check_chain(chain, pki.trust, NOW + offset) is first
        assert (len(openssl), len(strict)) == (1, 1)

    def test_keyed_by_trust_store(
        self, pki: Pki, web_leaf: Issued, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The same chain under another trust store is verified again, with its own verdict."""
        calls = count_calls(monkeypatch, "_verify_openssl")
        other = TrustStore.from_pem(pki.internal_root.bundle_pem, include_system=False)
        assert check_chain(web_leaf.chain_der, pki.trust, NOW).valid
        assert not check_chain(web_leaf.chain_der, other, NOW).valid
        equal = TrustStore.from_pem(
            pki.internal_root.bundle_pem + pki.web_root.bundle_pem, include_system=False
        )
        assert check_chain(web_leaf.chain_der, equal, NOW).valid
        assert len(calls) == 2

    def test_verdict_changes_when_leaf_expires(
        self, pki: Pki, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A cached "valid" is not served past the leaf's notAfter."""
        calls = count_calls(monkeypatch, "_verify_openssl")
        leaf = pki.web_intermediate.leaf(["soon.demo.test"], not_before=utc(-10), not_after=utc(1))
        not_after = parse_certificate(leaf.der).not_after
        assert check_chain(leaf.chain_der, pki.trust, not_after - 10).valid
        assert check_chain(leaf.chain_der, pki.trust, not_after - 1).valid
        assert len(calls) == 1
        # notAfter itself is the last valid second (RFC 5280: inclusive).
        assert check_chain(leaf.chain_der, pki.trust, not_after + 0.5).valid
        late = check_chain(leaf.chain_der, pki.trust, not_after + 1)
        assert not late.valid
        assert late.error == "certificate has expired"

    def test_verdict_changes_when_leaf_becomes_valid(self, pki: Pki) -> None:
        """A cached "not yet valid" is not served past the leaf's notBefore."""
        leaf = pki.web_intermediate.leaf(["later.demo.test"], not_before=utc(1), not_after=utc(9))
        not_before = parse_certificate(leaf.der).not_before
        assert not check_chain(leaf.chain_der, pki.trust, not_before - 5).valid
        assert check_chain(leaf.chain_der, pki.trust, not_before + 5).valid

    def test_ttl_bounds_reuse(
        self, pki: Pki, web_leaf: Issued, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A verdict is recomputed once CHAIN_CACHE_TTL seconds of probe time have passed."""
        calls = count_calls(monkeypatch, "_verify_openssl")
        check_chain(web_leaf.chain_der, pki.trust, NOW)
        check_chain(web_leaf.chain_der, pki.trust, NOW + certs.CHAIN_CACHE_TTL - 1)
        assert len(calls) == 1
        check_chain(web_leaf.chain_der, pki.trust, NOW + certs.CHAIN_CACHE_TTL + 1)
        assert len(calls) == 2

    def test_bounded_lru(self) -> None:
        """The verdict cache keeps at most maxsize entries, dropping the least recently used."""
        cache = certs._ChainCache(maxsize=2, ttl=100.0)
        check = ChainCheck(valid=True)
        for key in ("a", "b"):
            cache.put((key,), check, 10, frozenset())
        assert cache.get(("a",), 10) is check  # "a" is now the most recent
        cache.put(("c",), check, 10, frozenset())
        assert len(cache) == 2
        assert cache.get(("b",), 10) is None
        assert cache.get(("a",), 10) is check
        assert cache.get(("c",), 10) is check

    def test_openssl_objects_loaded_once_per_der(
        self, pki: Pki, web_leaf: Issued, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Each distinct certificate is decoded into OpenSSL once, across chains and times."""
        loads: list[bytes] = []
        original = crypto.load_certificate

        def counted(kind: int, der: bytes) -> crypto.X509:
            loads.append(der)
            return original(kind, der)

        monkeypatch.setattr(crypto, "load_certificate", counted)
        other = pki.web_intermediate.leaf(["other.demo.test"])
        for at in (NOW, NOW + 2 * certs.CHAIN_CACHE_TTL, NOW + 4 * certs.CHAIN_CACHE_TTL):
            check_chain(web_leaf.chain_der, pki.trust, at)
            check_chain(other.chain_der, pki.trust, at)
        expected = {*web_leaf.chain_der, other.der, pki.web_root.der, pki.internal_root.der}
        assert sorted(loads) == sorted(expected)


# --- Report -----------------------------------------------------------------


def cheap_leaves(issuer: CA, count: int) -> list[tuple[bytes, ...]]:
    """``count`` distinct chains under ``issuer``: one key, serials 1..count (fast to sign)."""
    key = new_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "fleet.test")]))
        .issuer_name(issuer.cert.subject)
        .public_key(key.public_key())
        .not_valid_before(utc(-1))
        .not_valid_after(utc(90))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("*.fleet.test")]), critical=False)
    )
    der = serialization.Encoding.DER
    intermediates = tuple(c.public_bytes(der) for c in (issuer.cert, *issuer.chain)[:-1])
    signed = (
        builder.serial_number(i).sign(issuer.key, hashes.SHA256()) for i in range(1, count + 1)
    )
    return [(leaf.public_bytes(der), *intermediates) for leaf in signed]


class TestFleetSizedCaches:
    def test_a_round_of_a_large_fleet_is_parsed_and_verified_once(
        self, pki: Pki, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The schedule visits targets in a cycle, which an LRU smaller than the cycle
        misses every time.  A round with more distinct leaves than the parsed-object
        cache holds, probed again, parses no certificate and verifies no chain."""
        certs.clear_caches()
        chains = cheap_leaves(pki.web_intermediate, certs.CERTIFICATE_CACHE_SIZE + 1000)
        first = [certificate_report(chain, "a.fleet.test", pki.trust, NOW) for chain in chains]
        assert all(report.chain.valid for report in first)
        loads = count_calls(monkeypatch, "_certificate")
        verifies = count_calls(monkeypatch, "_verify_openssl")
        again = [certificate_report(chain, "a.fleet.test", pki.trust, NOW) for chain in chains]
        assert (len(loads), len(verifies)) == (0, 0)
        assert [r.facts for r in again] == [r.facts for r in first]

    def test_sized_for_the_full_scenario(self) -> None:
        """10,000 targets, each with its own leaf with and without SNI, plus intermediates."""
        assert certs.FACTS_CACHE_SIZE >= 2 * 10_000 + 1000
        assert certs.CHAIN_CACHE_SIZE >= 2 * 10_000
        assert certs.INTERN_TABLE_SIZE >= 2 * 10_000 + 1000


class TestCertificateReport:
    def test_combines_facts_hostname_and_chain(self, pki: Pki, web_leaf: Issued) -> None:
        """The report holds the leaf's facts, the host match and the chain check."""
        report = certificate_report(web_leaf.chain_der, "www.demo.test", pki.trust, NOW)
        assert report.facts is parse_certificate(web_leaf.der)
        assert report.hostname_match
        assert report.chain == check_chain(web_leaf.chain_der, pki.trust, NOW)
        assert report.chain.valid
        assert not report.expired

    def test_host_mismatch_leaves_chain_valid(self, pki: Pki, web_leaf: Issued) -> None:
        """A certificate for another name is a hostname mismatch, not a chain failure."""
        report = certificate_report(web_leaf.chain_der, "wrong.demo.test", pki.trust, NOW)
        assert not report.hostname_match
        assert (report.chain.valid, report.chain.strict_valid) == (True, True)

    def test_expired_means_after_not_after(self, pki: Pki, web_leaf: Issued) -> None:
        """expired is False through the notAfter second and True after it."""
        facts_ = parse_certificate(web_leaf.der)
        at_end = certificate_report(
            web_leaf.chain_der, "www.demo.test", pki.trust, facts_.not_after
        )
        after = certificate_report(
            web_leaf.chain_der, "www.demo.test", pki.trust, facts_.not_after + 1
        )
        assert not at_end.expired
        assert after.expired
        assert not after.chain.valid

    def test_not_yet_valid_is_not_expired(self, pki: Pki, web_leaf: Issued) -> None:
        """Before notBefore the leaf is not expired; the chain check catches it."""
        facts_ = parse_certificate(web_leaf.der)
        report = certificate_report(
            web_leaf.chain_der, "www.demo.test", pki.trust, facts_.not_before - DAY
        )
        assert not report.expired
        assert not report.chain.valid

    def test_untrusted_leaf_still_reported(self, pki: Pki) -> None:
        """A self-signed leaf gets full facts and a host match, with an invalid chain."""
        leaf = self_signed(["self.demo.test"])
        report = certificate_report(leaf.chain_der, "self.demo.test", pki.trust, NOW)
        assert report.facts.fingerprint_sha256 == hashlib.sha256(leaf.der).hexdigest()
        assert report.hostname_match
        assert not report.chain.valid

    def test_malformed_leaf_raises(self, pki: Pki) -> None:
        """Without a parsable leaf there is nothing to report: CertificateError."""
        with pytest.raises(CertificateError):
            certificate_report((b"garbage",), "www.demo.test", pki.trust, NOW)

    def test_empty_chain_raises(self, pki: Pki) -> None:
        """An empty chain raises CertificateError."""
        with pytest.raises(CertificateError, match="no certificate"):
            certificate_report((), "www.demo.test", pki.trust, NOW)


def test_pem_round_trip_matches_der(pki: Pki) -> None:
    """The DER the store keeps is the certificate's own encoding (no re-encoding drift)."""
    pem = pki.web_root.cert.public_bytes(serialization.Encoding.PEM)
    assert TrustStore.from_pem(pem, include_system=False).anchors[0] == pki.web_root.der


class TestInternDer:
    def test_equal_blobs_become_one_object(self) -> None:
        """Two equal DER copies come back as the same object; a different one stays itself."""
        certs.clear_caches()
        first = bytes(bytearray(b"\x30\x03\x02\x01\x01"))
        second = bytes(bytearray(b"\x30\x03\x02\x01\x01"))
        assert first is not second
        assert certs.intern_der(first) is first
        assert certs.intern_der(second) is first
        other = b"\x30\x03\x02\x01\x02"
        assert certs.intern_der(other) is other

    def test_bounded(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """The table never grows past its size: a full table starts afresh."""
        certs.clear_caches()
        monkeypatch.setattr(certs, "INTERN_TABLE_SIZE", 4)
        for i in range(10):
            certs.intern_der(bytes([i]) * 8)
        assert len(certs._INTERNED) <= 4
