"""Just enough PromQL reading for the dashboard and rule linters, and the metric contract.

There is no PromQL parser on this machine (promtool has no expression command,
and Grafana's dashboard-linter is a Go program), so this module tokenises
expressions well enough to find the vector selectors, their label matchers and
range windows, the functions called, and the grouping label lists.  Whether an
expression really parses is proven elsewhere: ``promtool check rules`` for the
rules, and a real Prometheus for every dashboard query (test_e2e_prometheus).

The metric contract is read from one place each: the per-target families from
``exporter.metrics.FAMILIES`` (the renderer's own list), and the exporter's own
``sni_exporter_*`` metrics from ``OWN_METRICS`` below, read from the
service's own registry.  The end-to-end test checks
that every name a dashboard or rule uses really appears in a live scrape.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Final

from exporter.metrics import FAMILIES

#: Per-target metric names (all gauges), with the labels that identify a series.
PER_TARGET_METRICS: Final = frozenset(family.name for family in FAMILIES)


def _own_metrics() -> dict[str, str]:
    """The exporter's own metric names and types, read from the service's registry."""
    from exporter.service import OwnMetrics  # noqa: PLC0415 - the service pulls in APScheduler
    from exporter.shard import WHOLE_FLEET  # noqa: PLC0415

    own: dict[str, str] = {}
    for family in OwnMetrics(WHOLE_FLEET).registry.collect():
        if family.name.startswith("sni_exporter_"):
            # An Info family "x" is exposed as the gauge "x_info".
            info = family.type == "info"
            own[family.name + "_info" if info else family.name] = "gauge" if info else family.type
    return own


#: The exporter's own metrics and their types: one source, the service itself.
OWN_METRICS: Final[dict[str, str]] = _own_metrics()

#: prometheus_client's process and platform collectors are part of the contract
#: by prefix; their exact set depends on the platform.
CONTRACT_PREFIXES: Final = ("process_", "python_")

#: Series Prometheus itself writes for every scrape target; dashboards may use them.
PROMETHEUS_SERIES: Final = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped"})

_SUFFIXES: Final = {
    "gauge": ("",),
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
}


def own_series_names() -> frozenset[str]:
    """The sample names the exporter's own metrics render as (counters with _total, ...)."""
    return frozenset(
        name + suffix for name, kind in OWN_METRICS.items() for suffix in _SUFFIXES[kind]
    )


def in_contract(name: str) -> bool:
    """True when ``name`` is a series name the exporter (or Prometheus) produces."""
    return (
        name in PER_TARGET_METRICS
        or name in own_series_names()
        or name in PROMETHEUS_SERIES
        or name.startswith(CONTRACT_PREFIXES)
    )


# --- Tokens ---------------------------------------------------------------------

#: Keywords that take a parenthesised label list.
GROUPING: Final = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
#: Binary set operators and modifiers that look like identifiers.
KEYWORDS: Final = frozenset({"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"})
AGGREGATIONS: Final = frozenset(
    {
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
    }
)
#: PromQL functions (Prometheus 2.42), to catch misspelt calls.
FUNCTIONS: Final = AGGREGATIONS | frozenset(
    {
        "abs",
        "absent",
        "absent_over_time",
        "avg_over_time",
        "ceil",
        "changes",
        "clamp",
        "clamp_max",
        "clamp_min",
        "count_over_time",
        "day_of_month",
        "day_of_week",
        "day_of_year",
        "days_in_month",
        "delta",
        "deriv",
        "exp",
        "floor",
        "histogram_quantile",
        "holt_winters",
        "hour",
        "idelta",
        "increase",
        "irate",
        "label_join",
        "label_replace",
        "last_over_time",
        "ln",
        "log10",
        "log2",
        "max_over_time",
        "min_over_time",
        "minute",
        "month",
        "predict_linear",
        "present_over_time",
        "quantile_over_time",
        "rate",
        "resets",
        "round",
        "scalar",
        "sgn",
        "sort",
        "sort_desc",
        "sqrt",
        "stddev_over_time",
        "stdvar_over_time",
        "sum_over_time",
        "time",
        "timestamp",
        "vector",
        "year",
    }
)

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_IDENT = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_NUMBER = re.compile(r"(?:0x[0-9a-fA-F]+|\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+)(?:ms|[smhdwy])?")
_VARIABLE = re.compile(r"\$\{?[a-zA-Z_][a-zA-Z0-9_]*(?::[a-z]+)?\}?")
_OPERATOR = re.compile(r"==|!=|>=|<=|=~|!~|[-+*/%^<>=(),]")
_MATCHER = re.compile(
    r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*("(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\')\s*(,|$)'
)


class PromQLSyntaxError(ValueError):
    """The expression cannot be tokenised, or its brackets do not balance."""


@dataclasses.dataclass(frozen=True, slots=True)
class Token:
    kind: str  # ident, string, number, variable, op, braces, range
    text: str


def tokenize(expr: str) -> list[Token]:
    """Split ``expr`` into tokens; ``{...}`` and ``[...]`` stay whole."""
    tokens: list[Token] = []
    i = 0
    while i < len(expr):
        token, i = _scan(expr, i)
        if token is not None:
            tokens.append(token)
    depth = 0
    for token in tokens:
        depth += {"(": 1, ")": -1}.get(token.text, 0) if token.kind == "op" else 0
        if depth < 0:
            raise PromQLSyntaxError(f"unbalanced ')' in {expr!r}")
    if depth:
        raise PromQLSyntaxError(f"unbalanced '(' in {expr!r}")
    return tokens


_PATTERNS: Final = (
    ("string", _STRING),
    ("variable", _VARIABLE),
    ("number", _NUMBER),
    ("ident", _IDENT),
    ("op", _OPERATOR),
)


def _scan(expr: str, i: int) -> tuple[Token | None, int]:
    """The token at ``expr[i:]`` (None for blanks and comments) and where the next starts."""
    char = expr[i]
    if char.isspace():
        return None, i + 1
    if char == "#":  # a comment runs to the end of the line
        end = expr.find("\n", i)
        return None, len(expr) if end < 0 else end
    if char == "{":
        end = _closing_brace(expr, i)
        return Token("braces", expr[i : end + 1]), end + 1
    if char == "[":
        end = expr.find("]", i)
        if end < 0:
            raise PromQLSyntaxError(f"unclosed '[' at {i} in {expr!r}")
        return Token("range", expr[i + 1 : end].strip()), end + 1
    for kind, pattern in _PATTERNS:
        match = pattern.match(expr, i)
        if match:
            return Token(kind, match.group()), match.end()
    raise PromQLSyntaxError(f"unexpected {char!r} at {i} in {expr!r}")


def _closing_brace(expr: str, start: int) -> int:
    i = start + 1
    while i < len(expr):
        if expr[i] in "\"'`":
            match = _STRING.match(expr, i)
            if not match:
                raise PromQLSyntaxError(f"unclosed string at {i} in {expr!r}")
            i = match.end()
            continue
        if expr[i] == "}":
            return i
        i += 1
    raise PromQLSyntaxError(f"unclosed '{{' at {start} in {expr!r}")


# --- Structure ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Selector:
    """One vector selector: ``metric{matchers}[range]``."""

    metric: str | None
    matchers: tuple[tuple[str, str, str], ...]  # (label, operator, unquoted value)
    range: str | None  # the text between [ and ], or None
    function: str | None  # the function whose argument list holds the selector directly

    def matcher(self, label: str) -> tuple[str, str] | None:
        for name, op, value in self.matchers:
            if name == label:
                return op, value
        return None


@dataclasses.dataclass(frozen=True, slots=True)
class Analysis:
    selectors: tuple[Selector, ...]
    functions: tuple[str, ...]
    groupings: tuple[tuple[str, tuple[str, ...]], ...]  # (keyword, labels)
    variables: tuple[str, ...]  # Grafana variables outside strings, e.g. $__rate_interval


def parse_matchers(braces: str) -> tuple[tuple[str, str, str], ...]:
    body = braces[1:-1].strip()
    out: list[tuple[str, str, str]] = []
    pos = 0
    while pos < len(body):
        match = _MATCHER.match(body, pos)
        if not match:
            raise PromQLSyntaxError(f"bad label matcher in {braces!r}")
        out.append((match.group(1), match.group(2), match.group(3)[1:-1]))
        pos = match.end()
    return tuple(out)


def analyse(expr: str) -> Analysis:
    """Selectors, called functions, grouping clauses and variables of ``expr``."""
    return _Analyser(tokenize(expr)).run()


class _Analyser:
    """One left-to-right pass over the tokens, tracking which call owns each parenthesis."""

    def __init__(self, tokens: list[Token]) -> None:
        self.tokens = tokens
        self.selectors: list[Selector] = []
        self.functions: list[str] = []
        self.groupings: list[tuple[str, tuple[str, ...]]] = []
        self.calls: list[str | None] = []  # the function owning each open parenthesis
        self.pending: str | None = None  # an aggregation whose "(" follows its by/without

    def run(self) -> Analysis:
        i = 0
        while i < len(self.tokens):
            i = self._step(i)
        variables = [t.text for t in self.tokens if t.kind == "variable"]
        variables += [
            v for t in self.tokens if t.kind == "range" for v in _VARIABLE.findall(t.text)
        ]
        return Analysis(
            tuple(self.selectors), tuple(self.functions), tuple(self.groupings), tuple(variables)
        )

    def _is(self, index: int, text: str) -> bool:
        return index < len(self.tokens) and self.tokens[index].text == text

    def _step(self, i: int) -> int:
        token = self.tokens[i]
        if token.kind == "ident" and token.text in GROUPING:
            return self._grouping(i)
        if (
            token.kind == "ident"
            and token.text in AGGREGATIONS
            and (self._is(i + 1, "by") or self._is(i + 1, "without"))
        ):
            self.functions.append(token.text)
            self.pending = token.text
            return i + 1
        if token.kind == "ident" and self._is(i + 1, "("):
            self.functions.append(token.text)
            self.calls.append(token.text)
            return i + 2
        if token.kind == "op" and token.text == "(":
            self.calls.append(self.pending)
            self.pending = None
        elif token.kind == "op" and token.text == ")":
            self.calls.pop()
        elif (token.kind == "ident" and token.text not in KEYWORDS) or token.kind == "braces":
            return self._selector(i)
        return i + 1

    def _grouping(self, i: int) -> int:
        if not self._is(i + 1, "("):  # a bare group_left / group_right
            return i + 1
        end = i + 2
        while not self._is(end, ")"):
            end += 1
        labels = tuple(t.text for t in self.tokens[i + 2 : end] if t.kind == "ident")
        self.groupings.append((self.tokens[i].text, labels))
        return end + 1

    def _selector(self, i: int) -> int:
        token = self.tokens[i]
        metric = token.text if token.kind == "ident" else None
        matchers: tuple[tuple[str, str, str], ...] = ()
        if token.kind == "braces":
            matchers = parse_matchers(token.text)
        elif i + 1 < len(self.tokens) and self.tokens[i + 1].kind == "braces":
            i += 1
            matchers = parse_matchers(self.tokens[i].text)
        window = None
        if i + 1 < len(self.tokens) and self.tokens[i + 1].kind == "range":
            i += 1
            window = self.tokens[i].text
        owner = self.calls[-1] if self.calls else None
        self.selectors.append(Selector(metric, matchers, window, owner))
        return i + 1


_DURATION = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")
_UNIT_SECONDS: Final = {
    "ms": 0.001,
    "s": 1,
    "m": 60,
    "h": 3600,
    "d": 86400,
    "w": 604800,
    "y": 31536000,
}


def duration_seconds(text: str) -> float | None:
    """Seconds of a PromQL duration literal like ``1h30m``; None when it is not one."""
    if not text or _DURATION.sub("", text):
        return None
    return sum(int(n) * _UNIT_SECONDS[unit] for n, unit in _DURATION.findall(text))
