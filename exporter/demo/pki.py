"""A small PKI for the demo fleet and the tests: CAs, intermediates, leaves.

Certificates are ECDSA P-256 (cheap to make and to handshake with).  By
default they carry what a real CA sets: basicConstraints, keyUsage,
extendedKeyUsage serverAuth, subject and authority key identifiers.
``profile="internal"`` leaves those out, the way many internal PKIs do:
its CAs carry only basicConstraints CA:TRUE (without it OpenSSL and Java
refuse a v3 certificate as an issuer), and its leaves carry nothing but the
subjectAltName.  OpenSSL and Java accept such chains, cryptography's web-PKI
verifier does not (no keyUsage on the CAs, no authority key identifier).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
from typing import TYPE_CHECKING, Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

if TYPE_CHECKING:
    from pathlib import Path

Profile = Literal["webpki", "internal"]

_DAY = dt.timedelta(days=1)
_DEFAULT_ROOT_NAMES: dict[Profile, str] = {
    "webpki": "sni-exporter Test Root CA",
    "internal": "sni-exporter Test Internal Root CA",
}
_DEFAULT_INTERMEDIATE_NAMES: dict[Profile, str] = {
    "webpki": "sni-exporter Test Intermediate CA",
    "internal": "sni-exporter Test Internal Intermediate CA",
}


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "sni-exporter test PKI"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@dataclasses.dataclass(frozen=True)
class Issued:
    """A certificate, its key, and the chain above it (issuers, leaf-side first)."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    chain: tuple[x509.Certificate, ...] = ()

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    @property
    def chain_der(self) -> tuple[bytes, ...]:
        """Leaf first, then the issuers as a server would send them."""
        return (self.der, *(c.public_bytes(serialization.Encoding.DER) for c in self.chain))

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def fullchain_pem(self) -> bytes:
        return self.cert_pem + b"".join(
            c.public_bytes(serialization.Encoding.PEM) for c in self.chain
        )

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def write(self, directory: Path, stem: str) -> tuple[Path, Path]:
        """Write ``stem.crt`` (full chain, leaf first) and ``stem.key``; return both paths."""
        directory.mkdir(parents=True, exist_ok=True)
        crt, key = directory / f"{stem}.crt", directory / f"{stem}.key"
        crt.write_bytes(self.fullchain_pem)
        key.write_bytes(self.key_pem)
        key.chmod(0o600)
        return crt, key

    def combined_pem(self) -> bytes:
        """Chain then key in one file, as haproxy wants it."""
        return self.fullchain_pem + self.key_pem


@dataclasses.dataclass(frozen=True)
class CA(Issued):
    """A certificate authority that can issue intermediates and leaves."""

    profile: Profile = "webpki"

    @classmethod
    def root(
        cls,
        common_name: str | None = None,
        profile: Profile = "webpki",
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
    ) -> CA:
        # Distinct default names per profile: OpenSSL finds issuers by name, so
        # two trusted CAs with one name make it try the wrong key.
        common_name = common_name or _DEFAULT_ROOT_NAMES[profile]
        key = new_key()
        start = not_before or _now() - _DAY
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(_name(common_name))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(not_after or start + 3650 * _DAY)
        )
        if profile == "webpki":
            builder = _ca_extensions(builder, key.public_key(), key.public_key(), path_length=None)
        else:
            builder = _internal_ca_extensions(builder)
        cert = builder.sign(key, hashes.SHA256())
        return cls(cert=cert, key=key, chain=(), profile=profile)

    @property
    def bundle_pem(self) -> bytes:
        """This CA as a trust bundle (PEM)."""
        return self.cert_pem

    def intermediate(self, common_name: str | None = None) -> CA:
        common_name = common_name or _DEFAULT_INTERMEDIATE_NAMES[self.profile]
        key = new_key()
        start = _now() - _DAY
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + 1825 * _DAY)
        )
        if self.profile == "webpki":
            builder = _ca_extensions(
                builder, key.public_key(), self.key.public_key(), path_length=0
            )
        else:
            builder = _internal_ca_extensions(builder)
        cert = builder.sign(self.key, hashes.SHA256())
        return CA(cert=cert, key=key, chain=(self.cert, *self.chain), profile=self.profile)

    def leaf(
        self,
        dns_names: tuple[str, ...] | list[str] = (),
        ip_addresses: tuple[str, ...] | list[str] = (),
        common_name: str | None = None,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
        include_root: bool = False,
    ) -> Issued:
        """Issue a server certificate.

        Without ``dns_names`` and ``ip_addresses`` there is no subjectAltName
        at all (a CN-only certificate).  The chain excludes the root unless
        ``include_root``, as servers should send it.
        """
        key = new_key()
        start = not_before or _now() - _DAY
        cn = common_name or (dns_names[0] if dns_names else "sni-exporter test leaf")
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(not_after or start + 90 * _DAY)
        )
        sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
        sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        if self.profile == "webpki":
            builder = (
                builder.add_extension(
                    x509.BasicConstraints(ca=False, path_length=None), critical=True
                )
                .add_extension(_key_usage(signs_certificates=False), critical=True)
                .add_extension(
                    x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
                )
                .add_extension(
                    x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
                )
                .add_extension(
                    x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                    critical=False,
                )
            )
        cert = builder.sign(self.key, hashes.SHA256())
        issuers = (self.cert, *self.chain)
        if not include_root:
            issuers = tuple(c for c in issuers if c.issuer != c.subject)
        return Issued(cert=cert, key=key, chain=issuers)


def self_signed(dns_names: tuple[str, ...] | list[str], common_name: str | None = None) -> Issued:
    """A self-signed leaf, like a CDN's "no SNI" placeholder certificate."""
    key = new_key()
    cn = common_name or (dns_names[0] if dns_names else "self-signed")
    start = _now() - _DAY
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + 90 * _DAY)
    )
    if dns_names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in dns_names]), critical=False
        )
    return Issued(cert=builder.sign(key, hashes.SHA256()), key=key)


def _internal_ca_extensions(builder: x509.CertificateBuilder) -> x509.CertificateBuilder:
    # basicConstraints only: OpenSSL's check_ca() refuses a v3 issuer that has
    # neither basicConstraints nor keyUsage, so even internal CAs carry it.
    return builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)


def _key_usage(*, signs_certificates: bool) -> x509.KeyUsage:
    """keyUsage as a real CA sets it: signatures, plus certificate and CRL signing for CAs."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=signs_certificates,
        crl_sign=signs_certificates,
        encipher_only=False,
        decipher_only=False,
    )


def _ca_extensions(
    builder: x509.CertificateBuilder,
    subject_key: ec.EllipticCurvePublicKey,
    issuer_key: ec.EllipticCurvePublicKey,
    path_length: int | None,
) -> x509.CertificateBuilder:
    return (
        builder.add_extension(
            x509.BasicConstraints(ca=True, path_length=path_length), critical=True
        )
        .add_extension(_key_usage(signs_certificates=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(subject_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key), critical=False
        )
    )
