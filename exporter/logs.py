"""Logging as Go exporters do it: logfmt or JSON lines on stderr.

Structured fields go in ``extra={"fields": {...}}``; they become ``key=value``
pairs (logfmt) or object members (json).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from typing import Any, Final

LEVELS: Final[dict[str, int]] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "error": logging.ERROR,
}
FORMATS: Final[tuple[str, ...]] = ("logfmt", "json")
_LEVEL_NAMES: Final[dict[int, str]] = {v: k for k, v in LEVELS.items()}


def _record_fields(record: logging.LogRecord) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "ts": dt.datetime.fromtimestamp(record.created, dt.UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z"),
        "level": _LEVEL_NAMES.get(record.levelno, record.levelname.lower()),
        "logger": record.name,
        "msg": record.getMessage(),
    }
    extra = getattr(record, "fields", None)
    if isinstance(extra, dict):
        fields.update(extra)
    if record.exc_info and record.exc_info[1] is not None:
        # Only debug logging carries tracebacks; see configure().
        fields["err"] = repr(record.exc_info[1])
    return fields


def _logfmt_value(value: Any) -> str:
    text = str(value)
    if text and not any(c in text for c in ' ="\\\n\t'):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{k}={_logfmt_value(v)}" for k, v in _record_fields(record).items())


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_record_fields(record), default=str, ensure_ascii=False)


def configure(level: str = "info", fmt: str = "logfmt") -> None:
    """Install one stderr handler on the root logger."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(LEVELS[level])
    # APScheduler logs every run at INFO (FIELD-NOTES): far too chatty for a fleet.
    logging.getLogger("apscheduler").setLevel(max(LEVELS[level], logging.WARNING))
