"""The bounded vocabulary of failure reasons, and the errors that carry them.

Every failed handshake ends in exactly one ``Reason``.  The CLI, the JSON
output and the ``reason`` label of the metrics all use these values, so the
set is closed: a new failure mode maps to an existing reason (``other`` last)
rather than inventing a label value.

TLS alerts are named as in RFC 8446 section 6 / RFC 5246 section 7.2 and are
mapped from the alert *number* the server sent, never from message text.
"""

from __future__ import annotations

import enum
from typing import Final


class Reason(enum.StrEnum):
    """Why a handshake failed.  Values are the metric label values."""

    # Network and transport.
    DNS = "dns"  # the host name did not resolve
    REFUSED = "refused"  # TCP RST in answer to SYN: nothing listens
    UNREACHABLE = "unreachable"  # no route to host or network
    TIMEOUT = "timeout"  # no answer within the target's timeout
    RESET = "reset"  # TCP RST during the handshake (errno 54/104)
    EOF = "eof"  # the server closed the connection without an alert
    NOT_TLS = "not_tls"  # the server answered, but not with TLS (e.g. plain HTTP)

    # Fatal TLS alerts received from the server, by their RFC names.
    UNEXPECTED_MESSAGE = "unexpected_message"  # 10
    BAD_RECORD_MAC = "bad_record_mac"  # 20
    RECORD_OVERFLOW = "record_overflow"  # 22
    HANDSHAKE_FAILURE = "handshake_failure"  # 40
    BAD_CERTIFICATE = "bad_certificate"  # 42
    UNSUPPORTED_CERTIFICATE = "unsupported_certificate"  # 43
    CERTIFICATE_REVOKED = "certificate_revoked"  # 44
    CERTIFICATE_EXPIRED = "certificate_expired"  # 45
    CERTIFICATE_UNKNOWN = "certificate_unknown"  # 46
    ILLEGAL_PARAMETER = "illegal_parameter"  # 47
    UNKNOWN_CA = "unknown_ca"  # 48
    ACCESS_DENIED = "access_denied"  # 49
    DECODE_ERROR = "decode_error"  # 50
    DECRYPT_ERROR = "decrypt_error"  # 51
    PROTOCOL_VERSION = "protocol_version"  # 70
    INSUFFICIENT_SECURITY = "insufficient_security"  # 71
    INTERNAL_ERROR = "internal_error"  # 80
    INAPPROPRIATE_FALLBACK = "inappropriate_fallback"  # 86
    USER_CANCELED = "user_canceled"  # 90
    MISSING_EXTENSION = "missing_extension"  # 109
    UNSUPPORTED_EXTENSION = "unsupported_extension"  # 110
    UNRECOGNIZED_NAME = "unrecognized_name"  # 112
    BAD_CERTIFICATE_STATUS_RESPONSE = "bad_certificate_status_response"  # 113
    UNKNOWN_PSK_IDENTITY = "unknown_psk_identity"  # 115
    CERTIFICATE_REQUIRED = "certificate_required"  # 116
    NO_APPLICATION_PROTOCOL = "no_application_protocol"  # 120

    # Anything else; the log line carries the detail.
    OTHER = "other"


#: TLS alert description number -> reason.  Alerts not listed map to OTHER.
ALERT_REASONS: Final[dict[int, Reason]] = {
    10: Reason.UNEXPECTED_MESSAGE,
    20: Reason.BAD_RECORD_MAC,
    22: Reason.RECORD_OVERFLOW,
    40: Reason.HANDSHAKE_FAILURE,
    42: Reason.BAD_CERTIFICATE,
    43: Reason.UNSUPPORTED_CERTIFICATE,
    44: Reason.CERTIFICATE_REVOKED,
    45: Reason.CERTIFICATE_EXPIRED,
    46: Reason.CERTIFICATE_UNKNOWN,
    47: Reason.ILLEGAL_PARAMETER,
    48: Reason.UNKNOWN_CA,
    49: Reason.ACCESS_DENIED,
    50: Reason.DECODE_ERROR,
    51: Reason.DECRYPT_ERROR,
    70: Reason.PROTOCOL_VERSION,
    71: Reason.INSUFFICIENT_SECURITY,
    80: Reason.INTERNAL_ERROR,
    86: Reason.INAPPROPRIATE_FALLBACK,
    90: Reason.USER_CANCELED,
    109: Reason.MISSING_EXTENSION,
    110: Reason.UNSUPPORTED_EXTENSION,
    112: Reason.UNRECOGNIZED_NAME,
    113: Reason.BAD_CERTIFICATE_STATUS_RESPONSE,
    115: Reason.UNKNOWN_PSK_IDENTITY,
    116: Reason.CERTIFICATE_REQUIRED,
    120: Reason.NO_APPLICATION_PROTOCOL,
}


def reason_for_alert(description: int) -> Reason:
    """Map a TLS alert description number to its reason."""
    return ALERT_REASONS.get(description, Reason.OTHER)


# --- Errors -----------------------------------------------------------------


class SniExporterError(Exception):
    """Base of every error this package raises on purpose."""


class UsageError(SniExporterError):
    """Bad input from the user (a flag, a target on the command line).

    The CLI prints ``str(error)`` as one line and exits with status 2.
    """


class ProbeError(SniExporterError):
    """A handshake failed.  ``reason`` is always from the vocabulary."""

    reason: Reason = Reason.OTHER

    def __init__(self, detail: str, reason: Reason | None = None) -> None:
        super().__init__(detail)
        if reason is not None:
            self.reason = reason
        self.detail = detail


class ResolveError(ProbeError):
    """The host name did not resolve."""

    reason = Reason.DNS


class ConnectError(ProbeError):
    """TCP connect failed: refused, unreachable, reset or timed out."""


class HandshakeError(ProbeError):
    """TCP connected, but the TLS handshake did not complete."""


class AlertError(HandshakeError):
    """The server sent a fatal TLS alert."""

    def __init__(self, alert: int, detail: str | None = None) -> None:
        super().__init__(detail or f"server sent fatal alert {alert}", reason_for_alert(alert))
        self.alert = alert
