"""Load and validate ``targets.yaml``.

The file is read as a YAML *node graph* (``yaml.compose``), never constructed
into Python objects by the YAML library: nodes keep their line and column, so
every problem can point at the exact place to fix, and the walker below only
descends into the fixed shape of the schema, which bounds the work a hostile
file can cause.  Every problem is collected (not just the first) and raised
together as one ``ConfigError`` whose ``str()`` is one ``FILE:LINE:COL:
message`` line per problem.

``parse_config`` is pure: it reads no files.  Relative ``ca_file`` paths are
made absolute against ``base_dir`` and, only when a ``check_file`` callback is
given, checked through it.  ``load_config`` is the thin shell that reads the
file and passes the real file check.

Hardening against hostile or fuzzed files (nothing but ``ConfigError`` may
escape, and nothing may hang):

- documents over ``MAX_CONFIG_BYTES`` are refused before parsing;
- only safe YAML is read (tags beyond the core schema are refused);
- nesting is bounded by libyaml (1000 levels) or, with the pure-Python
  loader, by catching ``RecursionError``;
- aliases are measured before the walk: recursive aliases are refused, and so
  is a document whose aliases add more than ``MAX_ALIAS_EXPANSION`` nodes
  (the "billion laughs" bomb), counted in time linear in the document;
- at most ``MAX_PROBLEMS`` problems are reported.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import ipaddress
import os
import re
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Final, Generic, TypeVar

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.reader import ReaderError

from exporter.model import (
    DEFAULT_INTERVAL,
    DEFAULT_PORT,
    DEFAULT_TIMEOUT,
    RESERVED_LABELS,
    Target,
    is_ip_literal,
    target_name,
)
from exporter.reasons import SniExporterError, UsageError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

__all__ = [
    "MAX_CONFIG_BYTES",
    "MAX_INTERVAL",
    "MIN_INTERVAL",
    "RESERVED_LABELS",
    "Config",
    "ConfigError",
    "ConfigProblem",
    "check_ca_file",
    "format_duration",
    "load_config",
    "normalise_address",
    "normalise_host",
    "parse_config",
    "parse_duration",
    "parse_target",
    "target_from_spec",
]

#: Larger files are refused unread: parsing 10 MiB of YAML already takes seconds.
MAX_CONFIG_BYTES: Final = 10 * 1024 * 1024
#: Nodes that aliases may add beyond the document itself.  Real configs reuse
#: a labels mapping or a ``<<: *defaults`` per target (a few nodes each);
#: 500,000 covers 100,000 such targets, while a "billion laughs" needs far more.
MAX_ALIAS_EXPANSION: Final = 500_000
#: Beyond this many problems the file is not a config; stop listing.
MAX_PROBLEMS: Final = 1000
#: Merge keys (``<<: *x``) may chain this deep.
MAX_MERGE_DEPTH: Final = 16
#: A CA file is searched for a PEM certificate in its first 16 MiB.
MAX_CA_BYTES: Final = 16 * 1024 * 1024

MIN_INTERVAL: Final = 1.0  # faster probing loads servers and tells nothing new
MAX_INTERVAL: Final = 7 * 86400.0  # also keeps the scheduler's timedelta arithmetic finite


_SETTING_KEYS: Final = ("port", "interval", "timeout", "ca_file", "labels")
_ROOT_KEYS: Final = ("defaults", "targets", "groups")
_GROUP_KEYS: Final = ("name", *_SETTING_KEYS, "targets")
_TARGET_KEYS: Final = ("host", "port", "address", "labels", "interval", "timeout", "ca_file")
# Where a key that is unknown at one level does belong, for the hint.
_BELONGS: Final = {
    "host": "a target",
    "address": "a target",
    "name": "a group",
    "targets": "the top level or a group",
    "groups": "the top level",
    "defaults": "the top level",
}

_TAG: Final = "tag:yaml.org,2002:"
_STR: Final = _TAG + "str"
_INT: Final = _TAG + "int"
_FLOAT: Final = _TAG + "float"
_BOOL: Final = _TAG + "bool"
_NULL: Final = _TAG + "null"
_MERGE: Final = _TAG + "merge"
_TIMESTAMP: Final = _TAG + "timestamp"

_LABEL_NAME: Final = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
# A DNS label as used in host names; "_" is allowed because internal names use it.
_HOST_LABEL: Final = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
# Prometheus durations: units in this order, each at most once, whole numbers.
_DURATION: Final = re.compile(
    r"(?:([0-9]+)y)?(?:([0-9]+)w)?(?:([0-9]+)d)?(?:([0-9]+)h)?"
    r"(?:([0-9]+)m)?(?:([0-9]+)s)?(?:([0-9]+)ms)?"
)
_UNIT_MS: Final = (365 * 86_400_000, 7 * 86_400_000, 86_400_000, 3_600_000, 60_000, 1000, 1)
_UNIT_NAMES: Final = ("y", "w", "d", "h", "m", "s", "ms")

# libyaml is ~4x faster than the pure-Python loader; fall back when it is missing.
_LOADER: type[yaml.SafeLoader | yaml.CSafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
# Its scalar methods are stateless; used for YAML 1.1 integers (0x1bb, 1_000).
_CONSTRUCTOR: Final = SafeConstructor()

_T = TypeVar("_T")


# --- Problems ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One thing wrong in a config file.  ``line`` and ``column`` are 1-based."""

    source: str
    line: int | None
    column: int | None
    message: str

    def __post_init__(self) -> None:
        # One problem is one output line, whatever text the file smuggled in.
        if "\n" in self.message or "\r" in self.message:
            one_line = " ".join(self.message.splitlines())
            object.__setattr__(self, "message", one_line)

    def __str__(self) -> str:
        if self.line is None:
            return f"{self.source}: {self.message}"
        if self.column is None:
            return f"{self.source}:{self.line}: {self.message}"
        return f"{self.source}:{self.line}:{self.column}: {self.message}"


class ConfigError(SniExporterError):
    """A config file could not be used.  ``str()`` is one line per problem."""

    def __init__(self, problems: Iterable[ConfigProblem]) -> None:
        self.problems: tuple[ConfigProblem, ...] = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


# --- The result -------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Config:
    """A validated config.  ``targets`` are in file order, every field resolved.

    Equality compares the targets only, so a reload of an unchanged file (or
    of the same content under another name) compares equal; ``Target``
    equality in turn tells the service which targets changed.
    """

    targets: tuple[Target, ...]
    source: str = dataclasses.field(default="<config>", compare=False)

    def digest(self) -> str:
        """A short stable fingerprint of the targets, for logs ("config abc123 loaded")."""
        return hashlib.sha256(repr(self.targets).encode()).hexdigest()[:16]


# --- Small public parsers (the CLI uses them for HOST[:PORT] and flags) -----


def parse_duration(text: str) -> float:
    """Seconds in a Prometheus duration (``500ms``, ``30s``, ``1h30m``, ``1d``).

    Raises ``UsageError`` with a hint; a bare number is refused because it is
    ambiguous (seconds? minutes?).
    """
    if len(text) > 40:
        raise UsageError(f"{_q(text)} is not a duration; it is far too long")
    if text == "0":
        return 0.0
    match = _DURATION.fullmatch(text)
    if not text or match is None:
        if re.fullmatch(r"[0-9]+", text):
            raise UsageError(f"{_q(text)} has no unit; write it with one, e.g. '{text}s'")
        if re.fullmatch(r"[0-9]*\.[0-9]+[a-z]*", text):
            raise UsageError(
                f"{_q(text)} is not a duration; use whole numbers of a smaller unit, "
                "e.g. 1500ms instead of 1.5s"
            )
        raise UsageError(
            f"{_q(text)} is not a duration; write whole numbers with units "
            "(ms, s, m, h, d, w, y), e.g. 30s, 5m, 1h30m"
        )
    millis = sum(int(g) * unit for g, unit in zip(match.groups(), _UNIT_MS, strict=True) if g)
    return millis / 1000


def format_duration(seconds: float) -> str:
    """The shortest Prometheus duration for ``seconds`` (``90`` -> ``1m30s``)."""
    millis = round(seconds * 1000)
    if millis <= 0:
        return "0s"
    parts = []
    for unit, name in zip(_UNIT_MS, _UNIT_NAMES, strict=True):
        if millis >= unit:
            parts.append(f"{millis // unit}{name}")
            millis %= unit
    return "".join(parts)


def normalise_host(host: str) -> str:
    """Validate a target host name or IP literal and return its canonical form.

    IP literals come back compressed (brackets removed); internationalised
    names come back as IDNA A-labels (what SNI carries); ASCII names keep
    their case.  Raises ``UsageError`` saying what to fix.
    """
    if not host:
        raise UsageError("the host is empty; give a DNS name or an IP address")
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if is_ip_literal(bare):
        return str(ipaddress.ip_address(bare))
    if bare != host:
        raise UsageError(f"{_q(host)}: brackets are only for IPv6 addresses")
    _refuse_non_names(host)
    name = host
    if not host.isascii():
        try:
            name = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise UsageError(
                f"{_q(host)} is not a valid internationalised domain name "
                "(a label is empty, too long or holds characters IDNA forbids)"
            ) from None
    _check_dns_labels(name, host)
    return name


def _refuse_non_names(host: str) -> None:
    """The usual things pasted where a host name belongs, each with its fix."""
    if "://" in host or "/" in host:
        raise UsageError(
            f"{_q(host)} is not a host name; write only the name, without scheme or path"
        )
    if "*" in host:
        raise UsageError(
            f"{_q(host)}: a target is one concrete name; wildcards belong in certificates"
        )
    if ":" in host:
        raise UsageError(
            f"{_q(host)} is not a host name; give the port separately "
            "(and write IPv6 with a port as [addr]:port)"
        )
    if host.endswith("."):
        raise UsageError(f"{_q(host)}: drop the trailing dot (SNI names are sent without it)")


def _check_dns_labels(name: str, host: str) -> None:
    if len(name) > 253:
        raise UsageError(f"{_q(host)} is longer than 253 characters, the DNS limit")
    labels = name.split(".")
    for label in labels:
        if not label:
            raise UsageError(f"{_q(host)} has an empty label (two dots in a row?)")
        if len(label) > 63:
            raise UsageError(f"{_q(host)} has a label longer than 63 characters, the DNS limit")
        if not _HOST_LABEL.fullmatch(label):
            raise UsageError(
                f"{_q(host)}: label {_q(label)} may hold only letters, digits, '-' and '_', "
                "and must not start or end with '-'"
            )
    if labels[-1].isdigit():
        raise UsageError(f"{_q(host)} ends in an all-digit label; is it a mistyped IP address?")


def parse_target(spec: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """Split ``host[:port]`` (IPv6 as ``[::1]:443``) into a normalised host and port.

    A bare IPv6 literal without brackets is taken as a host with the default
    port.  Raises ``UsageError``.
    """
    if "://" in spec:
        raise UsageError(f"{_q(spec)}: write host[:port] without a scheme such as https://")
    if spec.startswith("["):
        end = spec.find("]")
        if end < 0:
            raise UsageError(f"{_q(spec)}: missing ']' after the IPv6 address")
        host, rest = spec[1:end], spec[end + 1 :]
        if rest and not rest.startswith(":"):
            raise UsageError(f"{_q(spec)}: expected ':PORT' after ']'")
        if ":" not in host:
            raise UsageError(f"{_q(spec)}: brackets are only for IPv6 addresses")
        port = _port_text(rest[1:], spec) if rest else default_port
    elif spec.count(":") > 1:
        host, port = spec, default_port
        if not is_ip_literal(spec):
            raise UsageError(
                f"{_q(spec)} is neither host:port nor an IPv6 address; "
                "write IPv6 with a port as [addr]:port"
            )
    elif ":" in spec:
        host, _, port_text = spec.rpartition(":")
        port = _port_text(port_text, spec)
    else:
        host, port = spec, default_port
    return normalise_host(host), port


def normalise_address(text: str) -> str:
    """Validate an ``address`` (an IP literal, brackets allowed) and return it compressed.

    Raises ``UsageError``.
    """
    bare = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    if not is_ip_literal(bare):
        raise UsageError(
            f"address {_q(text)} is not an IP address; give an IPv4 or IPv6 address "
            "(host names go in `host`)"
        )
    return str(ipaddress.ip_address(bare))


def target_from_spec(
    spec: str,
    *,
    address: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    ca_file: str | None = None,
) -> Target:
    """The ``Target`` for a command-line ``HOST[:PORT]`` and the ``check`` flags.

    Validated like the config's short form; ``ca_file`` is made absolute as
    the config does.  Raises ``UsageError``.
    """
    host, port = parse_target(spec)
    return Target(
        host=host,
        port=port,
        address=normalise_address(address) if address is not None else None,
        timeout=timeout,
        ca_file=os.path.abspath(ca_file) if ca_file else None,  # noqa: PTH100
    )


def check_ca_file(path: str) -> str | None:
    """The file check ``load_config`` uses: ``None`` when ``path`` is a readable
    file holding a PEM certificate, else what is wrong (a sentence fragment)."""
    try:
        head = _read_regular_file(Path(path), MAX_CA_BYTES)
    except FileNotFoundError:
        return "does not exist"
    except _NotAFileError as exc:
        return str(exc)
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        return f"cannot be read ({_os_reason(exc)})"
    if b"-----BEGIN CERTIFICATE-----" not in head:
        return "holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
    return None


class _NotAFileError(Exception):
    """The path exists but is no regular file; the message says what it is."""


def _read_regular_file(path: Path, limit: int) -> bytes:
    """Up to ``limit + 1`` bytes of a regular file.  FIFOs and devices are never
    opened (opening a FIFO blocks until a writer comes)."""
    info = path.stat()
    if stat.S_ISDIR(info.st_mode):
        raise _NotAFileError("is a directory, not a file")
    if not stat.S_ISREG(info.st_mode):
        raise _NotAFileError("is not a regular file")
    with path.open("rb") as handle:
        return handle.read(limit + 1)


# --- Entry points -----------------------------------------------------------


def parse_config(
    text: str,
    source: str = "<config>",
    *,
    base_dir: str | Path | None = None,
    check_file: Callable[[str], str | None] | None = None,
) -> Config:
    """Parse and validate a config document.  Raises ``ConfigError``.

    ``source`` names the document in messages.  Relative ``ca_file`` paths
    resolve against ``base_dir`` (the current directory when ``None``).
    ``check_file(path)`` returns what is wrong with a ``ca_file`` or ``None``;
    without it files are not looked at, which keeps this function pure.
    """
    root = _compose(text, source)
    base = os.path.abspath(base_dir if base_dir is not None else os.curdir)  # noqa: PTH100
    walker = _Walker(source, base, check_file)
    targets = walker.run(root)
    if walker.problems:
        raise ConfigError(walker.finished_problems())
    return Config(targets=tuple(targets), source=source)


def load_config(path: str | Path) -> Config:
    """Read, parse and validate a config file, checking every ``ca_file``.

    Relative ``ca_file`` paths resolve against the file's directory.  Raises
    ``ConfigError`` (also for a missing, unreadable or oversized file).
    """
    source = os.fspath(path)
    data = _read_config_bytes(source)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line, column = _position(data, exc.start)
        raise ConfigError(
            [ConfigProblem(source, line, column, "the file is not UTF-8 text; save it as UTF-8")]
        ) from None
    base_dir = os.path.dirname(os.path.abspath(source))  # noqa: PTH100, PTH120
    return parse_config(text, source, base_dir=base_dir, check_file=check_ca_file)


def _read_config_bytes(source: str) -> bytes:
    def fail(message: str) -> ConfigError:
        return ConfigError([ConfigProblem(source, None, None, message)])

    try:
        data = _read_regular_file(Path(source), MAX_CONFIG_BYTES)
    except _NotAFileError as exc:
        raise fail(f"{exc}; give the path of the config file") from None
    except (OSError, ValueError) as exc:
        raise fail(f"cannot read the config file ({_os_reason(exc)}); check the path") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise fail(_too_large())
    return data


# --- YAML to a checked node graph -------------------------------------------


def _compose(text: str, source: str) -> Node | None:
    def fail(line: int | None, column: int | None, message: str) -> ConfigError:
        return ConfigError([ConfigProblem(source, line, column, message)])

    if len(text) > MAX_CONFIG_BYTES:
        raise fail(None, None, _too_large())
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError as exc:  # lone surrogates from a bad decode upstream
        line, column = _position(text, exc.start)
        raise fail(
            line, column, "invalid Unicode character (a lone surrogate); remove it"
        ) from None
    if len(data) > MAX_CONFIG_BYTES:
        raise fail(None, None, _too_large())
    # libyaml is faster on UTF-8 bytes than on str; the Python loader wants str.
    root = _compose_stream(data if _LOADER is not yaml.SafeLoader else text, source)
    if root is not None:
        problem = _check_graph(root)
        if problem is not None:
            node, message = problem
            raise fail(*_mark(node), message)
    return root


def _compose_stream(stream: str | bytes, source: str) -> Node | None:
    def fail(line: int | None, column: int | None, message: str) -> ConfigError:
        return ConfigError([ConfigProblem(source, line, column, message)])

    try:
        return yaml.compose(stream, Loader=_LOADER)
    except yaml.MarkedYAMLError as exc:
        raise _yaml_error(exc, source) from None
    except ReaderError as exc:
        line, column = _position(stream, exc.position)
        reason = f"{exc.reason} (character {exc.character!r})"
        raise fail(line, column, f"invalid YAML: {reason}; remove that character") from None
    except yaml.YAMLError as exc:  # any other library error: still one line
        raise fail(None, None, f"invalid YAML: {exc}") from None
    except RecursionError:  # the pure-Python composer recurses per nesting level
        raise fail(None, None, "invalid YAML: nested too deeply; flatten the document") from None


def _yaml_error(exc: yaml.MarkedYAMLError, source: str) -> ConfigError:
    mark = exc.problem_mark or exc.context_mark
    line, column = (mark.line + 1, mark.column + 1) if mark is not None else (None, None)
    if exc.problem == "but found another document":
        message = "a config holds one YAML document; remove this '---' and what follows"
    else:
        message = f"invalid YAML: {exc.problem or exc.context or 'syntax error'}"
        if exc.context and exc.problem:
            message += f" ({exc.context}"
            if exc.context_mark is not None and exc.context_mark.line + 1 != line:
                message += f" at line {exc.context_mark.line + 1}"
            message += ")"
        message += "; check the indentation and quoting here"
    return ConfigError([ConfigProblem(source, line, column, message)])


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _check_graph(root: Node) -> tuple[Node, str] | None:
    """Refuse recursive aliases and alias bombs, in time linear in the document.

    The composer shares one node per anchor, so the document is a graph.  Its
    size with every alias expanded is computed bottom-up, memoised per node,
    without expanding anything; the walk is iterative, so depth costs no stack.
    """
    expanded: dict[int, int] = {}  # id(node) -> size with aliases expanded (done)
    open_ids: set[int] = set()  # nodes on the current path
    stack: list[tuple[Node, list[Node], int]] = [(root, _children(root), 0)]
    open_ids.add(id(root))
    while stack:
        node, children, next_index = stack[-1]
        if next_index < len(children):
            stack[-1] = (node, children, next_index + 1)
            child = children[next_index]
            if id(child) in expanded:
                continue
            if id(child) in open_ids:
                return child, (
                    "recursive alias: this anchor contains an alias to itself; "
                    "anchors must not refer to themselves"
                )
            open_ids.add(id(child))
            stack.append((child, _children(child), 0))
            continue
        stack.pop()
        open_ids.discard(id(node))
        expanded[id(node)] = 1 + sum(expanded[id(c)] for c in children)
    if expanded[id(root)] - len(expanded) > MAX_ALIAS_EXPANSION:
        return root, (
            f"aliases expand this document by more than {MAX_ALIAS_EXPANSION:,} nodes "
            "(an alias bomb?); write the entries out or reuse anchors less"
        )
    return None


# --- The schema walk --------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class _Value(Generic[_T]):
    """A setting with where it came from, for messages and precedence."""

    value: _T
    text: str  # as written, for messages
    level: int  # 0 built-in, 1 defaults, 2 group, 3 target
    node: Node | None = None

    @property
    def origin(self) -> str:
        if self.node is None:
            return "built-in default"
        return f"line {self.node.start_mark.line + 1}"


@dataclasses.dataclass(frozen=True, slots=True)
class _Settings:
    """What a level passes down: defaults -> group -> target."""

    port: _Value[int]
    interval: _Value[float]
    timeout: _Value[float]
    ca_file: str | None
    labels: tuple[tuple[str, str], ...]
    timing_ok: bool = True  # False after a bad interval/timeout: skip the comparison


_BUILT_IN: Final = _Settings(
    port=_Value(DEFAULT_PORT, str(DEFAULT_PORT), 0),
    interval=_Value(DEFAULT_INTERVAL, format_duration(DEFAULT_INTERVAL), 0),
    timeout=_Value(DEFAULT_TIMEOUT, format_duration(DEFAULT_TIMEOUT), 0),
    ca_file=None,
    labels=(),
)

_Items = dict[str, tuple[Node, Node]]  # key -> (key node, value node), in document order


class _Walker:
    """Walks the node graph along the schema, collecting every problem."""

    def __init__(
        self, source: str, base_dir: str, check_file: Callable[[str], str | None] | None
    ) -> None:
        self.source = source
        self.base_dir = base_dir
        self.check_file = check_file
        self.problems: list[ConfigProblem] = []
        self.reported = 0  # distinct problems, including those beyond MAX_PROBLEMS
        self.seen: set[ConfigProblem] = set()  # a defaults problem repeats for every target
        self.file_results: dict[str, str | None] = {}
        self.target_lines: dict[str, int] = {}  # target name (lowercase) -> first line
        self.group_lines: dict[str, int] = {}

    # -- problems --

    def add(self, node: Node | None, message: str) -> None:
        problem = ConfigProblem(self.source, *_mark(node), message)
        if problem in self.seen:
            return
        self.seen.add(problem)
        self.reported += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(problem)

    def finished_problems(self) -> list[ConfigProblem]:
        """The problems in file order, with a last line when some were cut."""
        ordered = sorted(self.problems, key=lambda p: (p.line or 0, p.column or 0))
        if self.reported > len(self.problems):
            ordered.append(
                ConfigProblem(
                    self.source,
                    None,
                    None,
                    f"stopped after {MAX_PROBLEMS} problems; fix these first",
                )
            )
        return ordered

    # -- the document --

    def run(self, root: Node | None) -> list[Target]:
        targets: list[Target] = []
        if root is None or (isinstance(root, ScalarNode) and root.tag == _NULL):
            self.add(root, "the file is empty; add a `targets:` list (see targets.yaml)")
            return targets
        if not isinstance(root, MappingNode):
            hint = "; indent the list under `targets:`" if isinstance(root, SequenceNode) else ""
            self.add(
                root,
                f"the top level must be a mapping with `targets:` (and optionally `defaults:`, "
                f"`groups:`), not {_kind(root)}{hint}",
            )
            return targets
        items = self.mapping(root, "the top level", _ROOT_KEYS, extensions=True)
        if items is None:
            return targets
        if "targets" not in items and "groups" not in items:
            self.add(root, "no `targets:` or `groups:` here; add a `targets:` list")
        settings = _BUILT_IN
        if "defaults" in items:
            defaults = self.mapping(items["defaults"][1], "`defaults`", _SETTING_KEYS)
            if defaults is not None:
                settings = self.settings(defaults, settings, "defaults", level=1)
        for key, (_, value) in items.items():
            if key == "targets":
                targets.extend(self.targets(value, settings, "the top level"))
            elif key == "groups":
                targets.extend(self.groups(value, settings))
        return targets

    def groups(self, node: Node, settings: _Settings) -> list[Target]:
        targets: list[Target] = []
        for group in self.sequence(node, "`groups`"):
            items = self.mapping(group, "a group", _GROUP_KEYS)
            if items is None:
                continue
            what = "the group"
            if "name" not in items:
                self.add(group, "the group has no `name`; add one, e.g. name: payments")
            else:
                name_node = items["name"][1]
                name = self.string(name_node, "the group's `name`")
                if name == "":
                    self.add(name_node, "the group's `name` is empty; give it a name")
                elif name is not None:
                    what = f"group {_q(name)}"
                    if name in self.group_lines:
                        self.add(
                            name_node,
                            f"duplicate group name {_q(name)} "
                            f"(first at line {self.group_lines[name]}); rename one",
                        )
                    else:
                        self.group_lines[name] = _line(name_node)
            group_settings = self.settings(items, settings, what, level=2)
            if "targets" not in items:
                self.add(group, f"{what} has no `targets:` list; add one")
            else:
                targets.extend(self.targets(items["targets"][1], group_settings, what))
        return targets

    def targets(self, node: Node, settings: _Settings, where: str) -> list[Target]:
        found = []
        for item in self.sequence(node, f"`targets` of {where}"):
            target = self.target(item, settings)
            if target is not None:
                found.append(target)
        return found

    def target(self, node: Node, base: _Settings) -> Target | None:
        before = self.reported
        address: str | None = None
        settings = base
        host: str | None = None
        port = base.port.value
        port_ok = True
        where: Node = node
        if isinstance(node, ScalarNode) and node.tag == _STR:
            try:
                host, port = parse_target(node.value, base.port.value)
            except UsageError as exc:
                self.add(node, f"target {exc}")
        elif isinstance(node, MappingNode):
            items = self.mapping(node, "a target", _TARGET_KEYS)
            if items is None:
                return None
            settings = self.settings(items, base, "the target", level=3)
            port = settings.port.value
            port_ok = "port" not in items or settings.port.node is items["port"][1]
            if "host" not in items:
                self.add(node, "the target has no `host`; add host: <DNS name or IP>")
            else:
                where = items["host"][1]
                host = self.host(where)
            if "address" in items:
                address = self.address(items["address"][1])
        else:
            self.add(
                node,
                f"a target is a 'host[:port]' string or a mapping with `host:`, not {_kind(node)}",
            )
            return None
        self.check_timing(settings)
        if host is not None and port_ok and self.is_duplicate(target_name(host, port), where):
            return None
        if self.reported != before or host is None:
            return None
        return Target(
            host=host,
            port=port,
            address=address,
            labels=settings.labels,
            interval=settings.interval.value,
            timeout=settings.timeout.value,
            ca_file=settings.ca_file,
        )

    def is_duplicate(self, name: str, where: Node) -> bool:
        """Record a target name; report and say so when it was seen before.

        Every visit is an occurrence: an alias of a target is a second one too.
        """
        first = self.target_lines.get(name.lower())
        if first is None:
            self.target_lines[name.lower()] = _line(where)
            return False
        self.add(
            where,
            f"duplicate target {name} (first at line {first}); host:port is the `target` "
            "label and must be unique: remove one",
        )
        return True

    def check_timing(self, settings: _Settings) -> None:
        interval, timeout = settings.interval, settings.timeout
        if not settings.timing_ok or timeout.value < interval.value:
            return
        # Report where the more specific of the two was set: that is what to change.
        at = interval if interval.level >= timeout.level else timeout
        self.add(
            at.node,
            f"timeout {timeout.text} ({timeout.origin}) is not shorter than interval "
            f"{interval.text} ({interval.origin}); lower the timeout or raise the interval",
        )

    # -- settings shared by defaults, groups and targets --

    def settings(self, items: _Items, base: _Settings, what: str, *, level: int) -> _Settings:
        port, interval, timeout = base.port, base.interval, base.timeout
        ca_file, timing_ok = base.ca_file, base.timing_ok
        labels = dict(base.labels)
        if "port" in items:
            node = items["port"][1]
            value = self.port(node)
            if value is not None:
                port = _Value(value, str(value), level, node)
        if "interval" in items:
            interval, ok = self.interval(items["interval"][1], interval, level)
            timing_ok = timing_ok and ok
        if "timeout" in items:
            timeout, ok = self.timeout(items["timeout"][1], timeout, level)
            timing_ok = timing_ok and ok
        if "ca_file" in items:
            ca_file = self.ca_file(items["ca_file"][1]) or ca_file
        if "labels" in items:
            labels.update(self.labels(items["labels"][1], what))
        return _Settings(
            port=port,
            interval=interval,
            timeout=timeout,
            ca_file=ca_file,
            labels=tuple(sorted(labels.items())),
            timing_ok=timing_ok,
        )

    def interval(self, node: Node, base: _Value[float], level: int) -> tuple[_Value[float], bool]:
        """The new interval (or ``base`` when invalid) and whether it was valid."""
        seconds = self.duration(node, "interval")
        if seconds is None:
            return base, False
        if seconds < MIN_INTERVAL:
            self.add(node, f"interval {node.value} is too short; use at least 1s")
            return base, False
        if seconds > MAX_INTERVAL:
            self.add(node, f"interval {node.value} is too long; use at most 7d")
            return base, False
        return _Value(seconds, str(node.value), level, node), True

    def timeout(self, node: Node, base: _Value[float], level: int) -> tuple[_Value[float], bool]:
        seconds = self.duration(node, "timeout")
        if seconds is None:
            return base, False
        if seconds == 0:
            self.add(node, "timeout must be longer than 0s; e.g. timeout: 5s")
            return base, False
        return _Value(seconds, str(node.value), level, node), True

    # -- YAML shapes --

    def mapping(
        self, node: Node, what: str, allowed: tuple[str, ...] | None, *, extensions: bool = False
    ) -> _Items | None:
        """The keys of a mapping (merge keys applied), checking duplicates and names.

        ``allowed=None`` accepts any string key.  With ``extensions``, keys
        starting with ``x-`` are ignored (a place for anchors to live).
        """
        if isinstance(node, ScalarNode) and node.tag == _NULL:
            return {}
        if not isinstance(node, MappingNode):
            self.add(node, f"{what} must be a mapping of `key: value` lines, not {_kind(node)}")
            return None
        items: _Items = {}
        seen: dict[str, tuple[Node, bool]] = {}
        for key, value, explicit in self.pairs(node, 0):
            if not (isinstance(key, ScalarNode) and key.tag == _STR):
                self.add(key, f"keys must be names, not {_kind(key)}; quote it if it is a name")
                continue
            name = key.value
            if name in seen:
                first, first_explicit = seen[name]
                if explicit and first_explicit:
                    self.add(
                        key,
                        f"duplicate key {_q(name)} in {what} (first at line {_line(first)}); "
                        "YAML would keep only the last one: remove one",
                    )
                continue  # a merged key never overrides one written out
            seen[name] = (key, explicit)
            if allowed is not None and name not in allowed:
                if not (extensions and name.startswith("x-")):
                    self.add(key, _unknown_key(name, what, allowed))
                continue
            items[name] = (key, value)
        return items

    def pairs(self, node: MappingNode, depth: int) -> list[tuple[Node, Node, bool]]:
        """Key-value pairs with ``<<`` merges applied: written keys first, then merged
        ones in order (earlier sources win), as the YAML merge key type defines."""
        written: list[tuple[Node, Node, bool]] = []
        merged: list[tuple[Node, Node, bool]] = []
        for key, value in node.value:
            if key.tag != _MERGE:
                written.append((key, value, True))
                continue
            if depth >= MAX_MERGE_DEPTH:
                self.add(key, f"merge keys nest deeper than {MAX_MERGE_DEPTH}; flatten them")
                continue
            sources = value.value if isinstance(value, SequenceNode) else [value]
            if not all(isinstance(s, MappingNode) for s in sources):
                self.add(value, "'<<' merges a mapping or a list of mappings, e.g. <<: *defaults")
                continue
            for source in sources:
                merged.extend((k, v, False) for k, v, _ in self.pairs(source, depth + 1))
        return written + merged

    def sequence(self, node: Node, what: str) -> list[Node]:
        if isinstance(node, SequenceNode):
            return list(node.value)
        if isinstance(node, ScalarNode) and node.tag == _NULL:
            return []  # every entry commented out
        self.add(node, f"{what} must be a list of `- ` items, not {_kind(node)}")
        return []

    # -- scalars --

    def string(self, node: Node, what: str) -> str | None:
        if isinstance(node, ScalarNode) and node.tag == _STR:
            return str(node.value)
        if isinstance(node, ScalarNode) and node.tag == _NULL:
            self.add(node, f"{what} has no value; give it one or remove the key")
        elif isinstance(node, ScalarNode) and node.tag in (_INT, _FLOAT, _BOOL, _TIMESTAMP):
            self.add(node, f"{what} must be a string, not {_kind(node)}; quote it")
        else:
            self.add(node, f"{what} must be a string, not {_kind(node)}")
        return None

    def host(self, node: Node) -> str | None:
        text = self.string(node, "`host`")
        if text is None:
            return None
        try:
            return normalise_host(text)
        except UsageError as exc:
            self.add(node, f"host {exc}")
        return None

    def address(self, node: Node) -> str | None:
        text = self.string(node, "`address`")
        if text is None:
            return None
        try:
            return normalise_address(text)
        except UsageError as exc:
            self.add(node, str(exc))
        return None

    def port(self, node: Node) -> int | None:
        if isinstance(node, ScalarNode) and node.tag == _INT:
            try:
                value = int(_CONSTRUCTOR.construct_yaml_int(node))
            except ValueError:  # e.g. more digits than int() accepts
                value = -1
            if 1 <= value <= 65535:
                return value
            self.add(node, f"port {_q(str(node.value))} is out of range; use 1-65535")
        elif isinstance(node, ScalarNode) and node.tag == _STR and node.value.isdigit():
            self.add(node, "port must be a number, not a string; remove the quotes")
        else:
            self.add(node, f"port must be a number from 1 to 65535, not {_kind(node)}")
        return None

    def duration(self, node: Node, what: str) -> float | None:
        if isinstance(node, ScalarNode) and node.tag in (_STR, _INT, _FLOAT):
            try:
                return parse_duration(str(node.value))
            except UsageError as exc:
                self.add(node, f"{what}: {exc}")
                return None
        self.add(node, f"{what} must be a duration such as 30s or 5m, not {_kind(node)}")
        return None

    def ca_file(self, node: Node) -> str | None:
        text = self.string(node, "`ca_file`")
        if text is None:
            return None
        if not text:
            self.add(node, "`ca_file` is empty; give a path or remove the key")
            return None
        path = os.path.normpath(os.path.join(self.base_dir, text))  # noqa: PTH118
        if self.check_file is not None:
            if path not in self.file_results:
                self.file_results[path] = self.check_file(path)
            error = self.file_results[path]
            if error is not None:
                shown = _q(text) if path == text else f"{_q(text)} ({path})"
                self.add(
                    node,
                    f"ca_file {shown} {error}; fix the path (relative paths start in the "
                    "config file's directory)",
                )
        return path

    def labels(self, node: Node, what: str) -> dict[str, str]:
        items = self.mapping(node, f"`labels` of {what}", None)
        labels: dict[str, str] = {}
        for name, (key, value_node) in (items or {}).items():
            name_ok = self.label_name_ok(key, name)
            value = self.label_value(value_node, name)
            if name_ok and value is not None:
                labels[name] = value
        return labels

    def label_value(self, node: Node, name: str) -> str | None:
        if isinstance(node, ScalarNode) and node.tag == _STR:
            if node.value:
                return str(node.value)
            self.add(
                node,
                f"label {name} is empty, which Prometheus treats as no label; "
                "give it a value or remove it",
            )
        elif isinstance(node, ScalarNode) and node.tag == _NULL:
            self.add(node, f"label {name} has no value; give it one or remove it")
        elif isinstance(node, ScalarNode) and node.tag in (_INT, _FLOAT, _BOOL, _TIMESTAMP):
            self.add(
                node,
                f"label {name}: values are strings, not {_kind(node)}; "
                f'quote it: {name}: "{node.value}"',
            )
        else:
            self.add(node, f"label {name}: values are strings, not {_kind(node)}")
        return None

    def label_name_ok(self, key: Node, name: str) -> bool:
        if not _LABEL_NAME.fullmatch(name):
            suggestion = re.sub(r"[^a-zA-Z0-9_]", "_", name)
            if not suggestion or suggestion[0].isdigit():
                suggestion = "_" + suggestion
            self.add(
                key,
                f"label name {_q(name)} is not valid in Prometheus; use letters, digits and '_', "
                f"not starting with a digit, e.g. {_q(suggestion)}",
            )
            return False
        if name.startswith("__"):
            self.add(
                key, f"label name {_q(name)}: names starting with '__' are reserved; rename it"
            )
            return False
        if name in RESERVED_LABELS:
            self.add(
                key,
                f"label name {_q(name)} is reserved (the exporter or Prometheus sets it); "
                "pick another name",
            )
            return False
        return True


# --- Helpers ----------------------------------------------------------------


def _unknown_key(name: str, what: str, allowed: tuple[str, ...]) -> str:
    message = f"unknown key {_q(name)} in {what}"
    close = difflib.get_close_matches(name.lower(), allowed, n=1, cutoff=0.6)
    if close:
        return f"{message}; did you mean {_q(close[0])}?"
    if name in _BELONGS:
        return f"{message}; `{name}` belongs in {_BELONGS[name]}"
    return f"{message}; allowed keys: {', '.join(allowed)}"


def _port_text(text: str, spec: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise UsageError(f"{_q(spec)}: the port {_q(text)} is not a number")
    if len(text) > 5 or not 1 <= int(text) <= 65535:
        raise UsageError(f"{_q(spec)}: the port {text} is out of range; use 1-65535")
    return int(text)


def _kind(node: Node | None) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    if node is None or node.tag == _NULL:
        return "an empty value"
    text = _q(str(node.value))
    kinds = {
        _STR: f"the string {text}",
        _INT: f"the number {text}",
        _FLOAT: f"the number {text}",
        _BOOL: f"the boolean {text} (YAML reads yes/no/on/off as booleans)",
        _TIMESTAMP: f"the date {text}",
    }
    return kinds.get(node.tag, f"a value with the unsupported tag {_q(node.tag)}")


def _q(text: str) -> str:
    """Quote user text for a message: short, on one line, control characters escaped."""
    if len(text) > 60:
        text = text[:57] + "..."
    return repr(text)


def _mark(node: Node | None) -> tuple[int | None, int | None]:
    if node is None or node.start_mark is None:
        return None, None
    return node.start_mark.line + 1, node.start_mark.column + 1


def _line(node: Node) -> int:
    return int(node.start_mark.line) + 1


def _position(data: str | bytes, index: int) -> tuple[int, int]:
    """1-based line and column of ``index`` in ``data``."""
    newline: str | bytes = "\n" if isinstance(data, str) else b"\n"
    line = data.count(newline, 0, index) + 1  # type: ignore[arg-type]
    start = data.rfind(newline, 0, index) + 1  # type: ignore[arg-type]
    return line, index - start + 1


def _os_reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower() if exc.strerror[:1].isupper() else exc.strerror
    return str(exc)


def _too_large() -> str:
    return f"the file is larger than {MAX_CONFIG_BYTES // (1024 * 1024)} MiB; split the fleet"
