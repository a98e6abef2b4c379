"""Certificate facts, hostname matching and chain checks: pure decisions over DER.

Everything here works on bytes the probe captured; nothing opens a socket.
The only I/O is reading trust anchors (the system store and a user's CA
file), and that is cached.

Three questions are answered separately, because they fail separately:

- *What is this certificate?*  ``parse_certificate``: frozen ``CertFacts``.
- *Is it for this host?*  ``hostname_matches``: RFC 6125 as browsers and
  OpenSSL's ``X509_check_host`` apply it.
- *Would clients trust the chain?*  ``check_chain``: OpenSSL's verifier
  (``valid``, what OpenSSL- and Java-based clients accept), and cryptography's
  web-PKI verifier (``strict_valid``) reported beside it.  Neither looks at
  the host name.

Fleets repeat certificates, so each step is cached: facts and loaded
certificate objects per DER, chain verdicts per (chain, trust store) for as
long as no certificate in the chain crosses its validity bounds.
"""

from __future__ import annotations

import base64
import binascii
import collections
import contextlib
import dataclasses
import datetime as dt
import functools
import hashlib
import ipaddress
import math
import re
import ssl
import threading
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Final

from cryptography import x509
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError
from OpenSSL import crypto

from exporter.model import CertFacts, CertificateReport, ChainCheck
from exporter.reasons import SniExporterError, UsageError

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Sequence

    IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: Distinct certificates whose facts are kept, and distinct (chain, trust
#: store) verdicts.  Both must exceed what one round of the fleet shows (a
#: leaf per target with SNI, often another without, and the intermediates):
#: the schedule visits targets in a cycle, and an LRU smaller than the cycle
#: misses on every probe, which re-parses each certificate (40-60 us) and
#: re-verifies each chain (0.3-0.5 ms).  Large costs little: the latest
#: results hold the same CertFacts and ChainCheck objects and the same
#: (interned) DER, so the caches add only their entries.
FACTS_CACHE_SIZE: Final = 65536
CHAIN_CACHE_SIZE: Final = 65536
#: Distinct certificates kept parsed as cryptography and OpenSSL objects, a
#: few kB each and held by nothing else: needed only to compute facts or a
#: chain verdict that is not cached.
CERTIFICATE_CACHE_SIZE: Final = 4096
#: A cached chain verdict is recomputed after this many seconds of probe time
#: even if no certificate of the chain crossed a validity bound: the trust
#: anchor that ended the chain may have expired meanwhile.
CHAIN_CACHE_TTL: Final = 3600.0


#: What cryptography raises for a malformed certificate, at load time or when
#: a lazily parsed part is first read (found by fuzzing; TypeError comes from
#: a name attribute whose value has the wrong ASN.1 type).
_PARSE_ERRORS: Final = (
    ValueError,
    TypeError,
    x509.InvalidVersion,
    x509.DuplicateExtension,
    x509.UnsupportedGeneralNameType,
)


class CertificateError(SniExporterError):
    """A certificate or a bundle of them could not be parsed."""


class TrustStoreError(CertificateError, UsageError):
    """A CA file is missing, unreadable, or holds no usable PEM certificate.

    It is a ``UsageError``: the file was named by the user, so the message is
    one line naming the file and what to fix.
    """


# --- Facts ------------------------------------------------------------------


#: DER blobs kept by ``intern_der``; the table starts afresh when full.
INTERN_TABLE_SIZE: Final = FACTS_CACHE_SIZE
_INTERNED: dict[bytes, bytes] = {}


def intern_der(der: bytes) -> bytes:
    """The one shared bytes object for this certificate's DER.

    The service keeps every target's latest chains; without this, a fleet
    behind one intermediate, or an endpoint serving the same leaf with and
    without SNI, stores one copy per handshake (21 MB of 40,000 identical
    blobs at 10,000 targets, measured by bench/).  A full table starts afresh
    rather than evicting one by one: rotation is slow, and a miss only costs
    a copy.  Dict operations are atomic under the GIL, so threads may share it.
    """
    canonical = _INTERNED.get(der)
    if canonical is not None:
        return canonical
    if len(_INTERNED) >= INTERN_TABLE_SIZE:
        _INTERNED.clear()
    _INTERNED[der] = der
    return der


def parse_certificate(der: bytes) -> CertFacts:
    """The facts of one DER certificate.  Cached per DER.

    Raises ``CertificateError`` when the DER, or an extension in it, does not
    parse.
    """
    return _facts(bytes(der))


@functools.lru_cache(maxsize=FACTS_CACHE_SIZE)
def _facts(der: bytes) -> CertFacts:
    cert = _certificate(der)
    # cryptography parses names and extensions lazily: errors surface here.
    try:
        san = _subject_alt_name(cert)
        return CertFacts(
            subject=cert.subject.rfc4514_string(),
            issuer=cert.issuer.rfc4514_string(),
            common_name=_common_name(cert.subject),
            serial=format(cert.serial_number, "x"),
            not_before=cert.not_valid_before_utc.timestamp(),
            not_after=cert.not_valid_after_utc.timestamp(),
            fingerprint_sha256=hashlib.sha256(der).hexdigest(),
            dns_names=_dns_names(san),
            ip_addresses=_ip_addresses(san),
            has_san=san is not None,
            self_issued=cert.subject == cert.issuer,
            is_ca=_is_ca(cert),
        )
    except _PARSE_ERRORS as exc:
        raise CertificateError(f"malformed certificate: {exc}") from exc


@functools.lru_cache(maxsize=CERTIFICATE_CACHE_SIZE)
def _certificate(der: bytes) -> x509.Certificate:
    try:
        return x509.load_der_x509_certificate(der)
    except _PARSE_ERRORS as exc:
        raise CertificateError(f"malformed certificate: {exc}") from exc


def _subject_alt_name(cert: x509.Certificate) -> x509.SubjectAlternativeName | None:
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None


def _common_name(name: x509.Name) -> str | None:
    for attribute in name.get_attributes_for_oid(NameOID.COMMON_NAME):
        if isinstance(attribute.value, str):
            return attribute.value
    return None


def _dns_names(san: x509.SubjectAlternativeName | None) -> tuple[str, ...]:
    if san is None:
        return ()
    return tuple(name.lower() for name in san.get_values_for_type(x509.DNSName))


def _ip_addresses(san: x509.SubjectAlternativeName | None) -> tuple[str, ...]:
    # str() of an ip_address is its canonical text ("::1", never "0:0::1").
    if san is None:
        return ()
    return tuple(str(address) for address in san.get_values_for_type(x509.IPAddress))


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


# --- Hostname ---------------------------------------------------------------


def hostname_matches(facts: CertFacts, host: str) -> bool:
    """Whether the certificate is for ``host``, per RFC 6125 / RFC 2818.

    As browsers and OpenSSL's ``X509_check_host`` do it:

    - an IP literal (IPv4, IPv6, bracketed or not) matches only iPAddress
      SANs, compared as addresses;
    - a DNS name matches dNSName SANs, case-insensitively, ignoring one
      trailing dot; a U-label host is compared in its A-label form;
    - a wildcard counts only as the whole left-most label, over at least two
      more labels, and stands for exactly one label: ``*.example.com``
      matches ``a.example.com``, not ``example.com`` nor ``a.b.example.com``;
      ``f*.example.com``, ``xn--*.example.com`` and ``*.com`` match nothing;
    - the subject CN is consulted only when there is no SAN extension at all.
    """
    address = _ip_literal(host)
    if address is not None:
        return any(_same_address(address, text) for text in facts.ip_addresses)
    name = _reference_name(host)
    if name is None:
        return False
    if facts.has_san:
        patterns: Iterable[str] = facts.dns_names
    else:
        patterns = (facts.common_name,) if facts.common_name else ()
    return any(_dns_pattern_matches(pattern, name) for pattern in patterns)


def _ip_literal(host: str) -> IPAddress | None:
    text = host.removeprefix("[").removesuffix("]")
    # A zone ("fe80::1%eth0") is local to the client; certificates carry none.
    text = text.partition("%")[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _same_address(address: IPAddress, text: str) -> bool:
    try:
        return ipaddress.ip_address(text) == address
    except ValueError:  # e.g. a network, which only name constraints may hold
        return False


def _reference_name(host: str) -> str | None:
    """The host as labels can be compared: lowercase A-labels, no trailing dot."""
    name = host.removesuffix(".").lower()
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    labels = name.split(".")
    if "" in labels or "*" in name:
        return None
    return name


def _dns_pattern_matches(pattern: str, name: str) -> bool:
    """One presented identifier (SAN dNSName or CN) against a reference name."""
    pattern_labels = pattern.removesuffix(".").lower().split(".")
    if "" in pattern_labels:
        return False
    name_labels = name.split(".")
    if "*" not in pattern:
        return pattern_labels == name_labels
    if not _valid_wildcard(pattern_labels):
        return False
    return len(name_labels) == len(pattern_labels) and name_labels[1:] == pattern_labels[1:]


def _valid_wildcard(labels: list[str]) -> bool:
    # The whole left-most label, exactly one "*", and two labels after it so
    # that "*.com" cannot stand for a whole top-level domain.  Partial
    # wildcards ("f*", "xn--*") are refused as OpenSSL and browsers do.
    return labels[0] == "*" and len(labels) >= 3 and not any("*" in label for label in labels[1:])


# --- Trust store ------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class TrustStore:
    """Trust anchors (DER, deduplicated, sorted) and an identity for cache keys.

    Two stores with the same anchors are equal and hash alike, whatever order
    or source they came from.  Both verifiers build their own objects from the
    anchors once per identity (see ``_openssl_anchors``, ``_strict_anchors``).
    """

    identity: str  # sha256 over the anchors' sha256 digests, lowercase hex
    anchors: tuple[bytes, ...] = dataclasses.field(repr=False, compare=False)
    description: str = dataclasses.field(default="", compare=False)

    @classmethod
    def from_der(cls, anchors: Iterable[bytes], description: str = "") -> TrustStore:
        unique = tuple(sorted(set(anchors)))
        digest = hashlib.sha256(b"".join(hashlib.sha256(der).digest() for der in unique))
        return cls(identity=digest.hexdigest(), anchors=unique, description=description)

    @classmethod
    def from_pem(cls, bundle: bytes, *, include_system: bool = True) -> TrustStore:
        """The certificates of a PEM bundle, plus the system's anchors unless told not to.

        Raises ``CertificateError`` when the bundle holds no certificate or a
        malformed one.  ``include_system`` reads the system store (once per
        process).
        """
        extra = _pem_certificates(bundle, strict=True)
        if not extra:
            raise CertificateError("no PEM certificate (-----BEGIN CERTIFICATE-----) found")
        system = _system_anchors() if include_system else ()
        source = f"{len(extra)} from bundle" + (f" + {len(system)} system" if system else "")
        return cls.from_der((*system, *extra), description=source)

    @classmethod
    def system(cls) -> TrustStore:
        """The system's trust anchors (read once per process)."""
        return _system_trust_store()


def load_trust_store(ca_file: str | None, *, reload: bool = False) -> TrustStore:
    """The system store, plus the certificates of ``ca_file`` when given.

    Cached per path and checked against the file's modification time and
    size, so asking again for an unchanged file costs a ``stat`` and a
    changed file is read again; ``reload`` reads it again regardless.  An
    unchanged bundle gives back the very same object.  The system store is
    read once per process.  Raises ``TrustStoreError`` (one line naming the
    file) when the file is missing, unreadable or holds no usable PEM
    certificate.
    """
    if ca_file is None:
        return TrustStore.system()
    try:
        status = Path(ca_file).stat()
    except OSError as exc:
        raise _unreadable(ca_file, exc) from None
    stamp = (status.st_mtime_ns, status.st_size)
    with _CA_FILES_LOCK:
        cached = _CA_FILES.get(ca_file)
    if cached is not None and cached[0] == stamp and not reload:
        return cached[1]
    store = _read_ca_file(ca_file)
    if cached is not None and cached[1] == store:
        store = cached[1]
    with _CA_FILES_LOCK:
        _CA_FILES[ca_file] = (stamp, store)
    return store


#: CA file path -> ((mtime_ns, size) when read, its store).  As many entries
#: as distinct CA files were ever named, which the configuration bounds.
_CA_FILES: dict[str, tuple[tuple[int, int], TrustStore]] = {}
_CA_FILES_LOCK: Final = threading.Lock()


def _read_ca_file(ca_file: str) -> TrustStore:
    try:
        bundle = Path(ca_file).read_bytes()
    except OSError as exc:
        raise _unreadable(ca_file, exc) from None
    try:
        store = TrustStore.from_pem(bundle)
    except CertificateError as exc:
        raise TrustStoreError(f"CA file {ca_file}: {exc}") from None
    return dataclasses.replace(store, description=f"{ca_file} ({store.description})")


def _unreadable(ca_file: str, error: OSError) -> TrustStoreError:
    return TrustStoreError(
        f"CA file {ca_file}: cannot read it ({error.strerror or error}); "
        "give the path of a PEM file of CA certificates"
    )


_PEM_CERTIFICATE: Final = re.compile(
    rb"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", re.DOTALL
)


def _pem_certificates(data: bytes, *, strict: bool) -> tuple[bytes, ...]:
    """The DER of every PEM certificate block in ``data``.

    ``strict``: a malformed block raises ``CertificateError`` naming its
    position; otherwise it is skipped (one odd system certificate must not
    take the exporter down).
    """
    found: list[bytes] = []
    for number, match in enumerate(_PEM_CERTIFICATE.finditer(data), start=1):
        try:
            der = base64.b64decode(b"".join(match.group(1).split()), validate=True)
            _certificate(der)
        except (binascii.Error, CertificateError) as exc:
            if strict:
                raise CertificateError(
                    f"certificate {number} in the bundle is malformed ({exc}); "
                    "replace it with a valid PEM certificate"
                ) from None
            continue
        found.append(der)
    return tuple(found)


@functools.cache
def _system_trust_store() -> TrustStore:
    return TrustStore.from_der(_system_anchors(), description="system")


@functools.cache
def _system_anchors() -> tuple[bytes, ...]:
    paths = ssl.get_default_verify_paths()
    cafile = paths.cafile or "/etc/ssl/certs/ca-certificates.crt"
    return _read_anchors(Path(cafile), Path(paths.capath) if paths.capath else None)


def _read_anchors(cafile: Path, capath: Path | None) -> tuple[bytes, ...]:
    """Certificates from a bundle file and an OpenSSL hashed directory, deduplicated.

    Missing or unreadable files are skipped: a machine without a system store
    still works with a user's CA file.
    """
    files = [cafile]
    if capath is not None and capath.is_dir():
        files += sorted(capath.iterdir())
    anchors: dict[bytes, None] = {}
    for file in files:
        try:
            data = file.read_bytes()
        except OSError:
            continue
        with _quiet_deprecations():
            anchors.update(dict.fromkeys(_pem_certificates(data, strict=False)))
    return tuple(anchors)


@contextlib.contextmanager
def _quiet_deprecations() -> Iterator[None]:
    # System stores hold old roots that cryptography warns about (e.g. a
    # non-positive serial).  They are the operator's distribution's business,
    # not a warning to print on every start.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        yield


# --- Chain ------------------------------------------------------------------


def check_chain(chain_der: Sequence[bytes], trust: TrustStore, at: float) -> ChainCheck:
    """Whether the served chain (leaf first) leads to an anchor of ``trust`` at time ``at``.

    Never raises: a malformed certificate or an empty chain is an invalid
    chain with an error that says so.  The host name is not checked.
    Verdicts are cached per (chain fingerprints, trust identity) while no
    certificate of the chain crosses a validity bound, up to
    ``CHAIN_CACHE_TTL`` seconds of ``at``.
    """
    chain = tuple(bytes(der) for der in chain_der)
    if not chain:
        return _invalid("no certificate in the chain")
    try:
        facts = [parse_certificate(der) for der in chain]
    except CertificateError as exc:
        return _invalid(str(exc))
    seconds = _seconds(at)
    key = (tuple(f.fingerprint_sha256 for f in facts), trust.identity)
    cached = _CHAIN_CACHE.get(key, seconds)
    if cached is not None:
        return cached
    check = ChainCheck(
        valid=(error := _verify_openssl(chain, trust, seconds)) is None,
        error=error,
        strict_valid=(strict_error := _verify_strict(chain, facts[0], trust, seconds)) is None,
        strict_error=strict_error,
    )
    _CHAIN_CACHE.put(key, check, seconds, _validity_bounds(facts))
    return check


def _invalid(error: str) -> ChainCheck:
    return ChainCheck(valid=False, error=error, strict_valid=False, strict_error=error)


def _seconds(at: float) -> int:
    # Certificate times have one-second resolution and OpenSSL truncates the
    # verification time to whole seconds; do the same everywhere so that
    # ``expired`` and both verifiers agree at the boundary.
    return math.floor(at)


def _validity_bounds(facts: Sequence[CertFacts]) -> frozenset[float]:
    return frozenset(t for f in facts for t in (f.not_before, f.not_after))


def _verify_openssl(chain: Sequence[bytes], trust: TrustStore, seconds: int) -> str | None:
    """OpenSSL's verdict: None when valid, else its verify error string."""
    try:
        leaf, *intermediates = (_openssl_certificate(der) for der in chain)
    except crypto.Error as exc:
        return f"OpenSSL cannot load a certificate of the chain: {exc}"
    context = crypto.X509StoreContext(_openssl_store(trust, seconds), leaf, chain=intermediates)
    try:
        context.verify_certificate()
    except crypto.X509StoreContextError as exc:
        return str(exc)
    return None


def _verify_strict(
    chain: Sequence[bytes], leaf_facts: CertFacts, trust: TrustStore, seconds: int
) -> str | None:
    """cryptography's web-PKI verdict: None when valid, else its error, tidied."""
    store = _strict_anchors(trust)
    if store is None:
        return "the trust store holds no certificate"
    leaf, *intermediates = (_certificate(der) for der in chain)
    builder = PolicyBuilder().store(store).time(dt.datetime.fromtimestamp(seconds, dt.UTC))
    verifier = _server_verifier(builder, leaf_facts)
    try:
        verifier.verify(leaf, intermediates)
    except (VerificationError, ValueError) as exc:
        return _tidy_strict_error(str(exc))
    return None


def _server_verifier(builder: PolicyBuilder, leaf: CertFacts) -> x509.verification.ServerVerifier:
    # cryptography has no server verifier without a subject, and its client
    # verifier demands the clientAuth EKU.  Verifying against a name the leaf
    # itself presents keeps the host name out of this verdict (it is
    # hostname_match); a leaf with no usable name fails on its SANs anyway.
    for subject in _own_subjects(leaf):
        try:
            return builder.build_server_verifier(subject)
        except ValueError:  # a name cryptography does not accept as a subject
            continue
    return builder.build_server_verifier(x509.DNSName("invalid"))


def _own_subjects(leaf: CertFacts) -> Iterable[x509.verification.Subject]:
    for name in leaf.dns_names:
        labels = name.removesuffix(".").split(".")
        if labels[0] == "*":
            labels[0] = "x"  # any one label stands for a full-label wildcard
        if not any("*" in label for label in labels):
            yield x509.DNSName(".".join(labels))
    for address in leaf.ip_addresses:
        try:
            yield x509.IPAddress(ipaddress.ip_address(address))
        except ValueError:
            continue


_ENCOUNTERED: Final = re.compile(
    r"^(?P<message>.*) \(encountered processing <Certificate\(subject=<Name\((?P<subject>.*)\)>,"
    r" \.\.\.\)>\)$",
    re.DOTALL,
)


def _tidy_strict_error(message: str) -> str:
    """cryptography appends a repr of the failing certificate; keep only its subject."""
    match = _ENCOUNTERED.match(message)
    if match is None:
        return message
    return f"{match['message']} (certificate {match['subject']})"


@functools.lru_cache(maxsize=CERTIFICATE_CACHE_SIZE)
def _openssl_certificate(der: bytes) -> crypto.X509:
    # Decoding into OpenSSL costs 130-170 us per certificate: do it once.
    return crypto.load_certificate(crypto.FILETYPE_ASN1, der)


def _openssl_store(trust: TrustStore, seconds: int) -> crypto.X509Store:
    """A fresh X509Store over the anchors, verifying at ``seconds``.

    Fresh because OpenSSL keeps the first verification time set on a store
    (a later ``set_time`` does not override it).  Adding already decoded
    anchors is cheap (about 0.2 ms for a 145-certificate system store), and
    it happens only when a verdict is not cached.
    """
    store = crypto.X509Store()
    for anchor in _openssl_anchors(trust):
        store.add_cert(anchor)
    # Any anchor ends a chain, not only a self-signed root: an intermediate
    # put in a CA file is trusted, as by Java, curl, browsers and the strict
    # verifier.
    store.set_flags(crypto.X509StoreFlags.PARTIAL_CHAIN)
    store.set_time(dt.datetime.fromtimestamp(seconds, dt.UTC))
    _require_server_purpose(store)
    return store


def _require_server_purpose(store: crypto.X509Store) -> None:
    # libssl verifies a server's chain with the "sslserver" purpose, which
    # refuses e.g. a leaf whose extendedKeyUsage lacks serverAuth.  pyOpenSSL
    # has no public call for it; without the binding the check is skipped.
    try:
        from OpenSSL._util import lib  # noqa: PLC0415

        raw = store._store  # type: ignore[attr-defined]  # noqa: SLF001
        lib.X509_STORE_set_purpose(raw, lib.X509_PURPOSE_SSL_SERVER)
    except (ImportError, AttributeError):
        return


@functools.lru_cache(maxsize=16)
def _openssl_anchors(trust: TrustStore) -> tuple[crypto.X509, ...]:
    anchors: list[crypto.X509] = []
    for der in trust.anchors:
        try:
            anchors.append(_openssl_certificate(der))
        except crypto.Error:
            continue  # one certificate OpenSSL refuses must not lose the rest
    return tuple(anchors)


@functools.lru_cache(maxsize=16)
def _strict_anchors(trust: TrustStore) -> Store | None:
    certificates: list[x509.Certificate] = []
    with _quiet_deprecations():
        for der in trust.anchors:
            try:
                certificates.append(_certificate(der))
            except CertificateError:
                continue
    return Store(certificates) if certificates else None


@dataclasses.dataclass(frozen=True, slots=True)
class _Verdict:
    check: ChainCheck
    checked_at: int
    after: float  # the verdict holds strictly between these two bounds
    before: float


class _ChainCache:
    """A bounded LRU of chain verdicts, each valid for a window of probe time.

    A verdict can change only when the time crosses a notBefore or notAfter
    of a certificate in the chain, so it is reused while ``at`` stays strictly
    between the nearest such bounds (and within ``ttl`` of when it was made).
    """

    def __init__(self, maxsize: int, ttl: float) -> None:
        self._maxsize = maxsize
        self._ttl = ttl
        self._lock = threading.Lock()
        self._entries: collections.OrderedDict[tuple[object, ...], _Verdict] = (
            collections.OrderedDict()
        )

    def get(self, key: tuple[object, ...], at: int) -> ChainCheck | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if not (entry.after < at < entry.before and abs(at - entry.checked_at) < self._ttl):
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            return entry.check

    def put(
        self, key: tuple[object, ...], check: ChainCheck, at: int, bounds: frozenset[float]
    ) -> None:
        if at in bounds:
            return  # exactly on a bound: the verdict holds for this second only
        after = max((b for b in bounds if b < at), default=-math.inf)
        before = min((b for b in bounds if b > at), default=math.inf)
        with self._lock:
            self._entries[key] = _Verdict(check, at, after, before)
            self._entries.move_to_end(key)
            while len(self._entries) > self._maxsize:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


_CHAIN_CACHE: Final = _ChainCache(CHAIN_CACHE_SIZE, CHAIN_CACHE_TTL)


def clear_caches() -> None:
    """Forget every cached parse, verdict and trust store (for tests)."""
    _CHAIN_CACHE.clear()
    _INTERNED.clear()
    with _CA_FILES_LOCK:
        _CA_FILES.clear()
    for cached in (
        _facts,
        _certificate,
        _openssl_certificate,
        _openssl_anchors,
        _strict_anchors,
    ):
        cached.cache_clear()


# --- Report -----------------------------------------------------------------


def certificate_report(
    chain_der: Sequence[bytes], host: str, trust: TrustStore, at: float
) -> CertificateReport:
    """The leaf of a served chain judged against ``host`` and ``trust`` at time ``at``.

    Raises ``CertificateError`` when the chain is empty or the leaf does not
    parse (there are no facts to report); a bad certificate further up only
    makes the chain invalid.  ``expired`` means after notAfter; a leaf that is
    not yet valid shows as an invalid chain.
    """
    if not chain_der:
        raise CertificateError("no certificate in the chain")
    facts = parse_certificate(chain_der[0])
    return CertificateReport(
        facts=facts,
        hostname_match=hostname_matches(facts, host),
        chain=check_chain(chain_der, trust, at),
        expired=_seconds(at) > facts.not_after,
    )
