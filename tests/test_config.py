"""targets.yaml: parsing, precedence, every validation rule, hardening.

Problems are checked by exact 1-based line and column: operators jump to
them, so an off-by-one is a bug.
"""

from __future__ import annotations

import dataclasses
import os
import re
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter import config
from exporter.config import (
    MAX_CONFIG_BYTES,
    MAX_PROBLEMS,
    RESERVED_LABELS,
    Config,
    ConfigError,
    ConfigProblem,
    check_ca_file,
    format_duration,
    load_config,
    normalise_address,
    normalise_host,
    parse_config,
    parse_duration,
    parse_target,
    target_from_spec,
)
from exporter.demo.fleet import SCENARIOS
from exporter.demo.pki import CA
from exporter.model import Target
from exporter.reasons import SniExporterError, UsageError

REPO = Path(__file__).resolve().parent.parent
PROBLEM_LINE = re.compile(r"[^\n]+?(:\d+(:\d+)?)?: [^\n]+")

Expected = tuple[int | None, int | None, str]  # line, column, fragment of the message


def doc(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def problems_of(text: str, **kwargs: object) -> list[tuple[int | None, int | None, str]]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "t.yaml", **kwargs)  # type: ignore[arg-type]
    return [(p.line, p.column, p.message) for p in info.value.problems]


def assert_problems(text: str, expected: list[Expected], **kwargs: object) -> None:
    found = problems_of(text, **kwargs)
    assert [(line, col) for line, col, _ in found] == [(line, col) for line, col, _ in expected], (
        found
    )
    for (_, _, message), (_, _, fragment) in zip(found, expected, strict=True):
        assert fragment in message, (fragment, message)


@pytest.fixture(params=["libyaml", "python"])
def loader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with libyaml and with the pure-Python fallback loader."""
    if request.param == "python":
        monkeypatch.setattr(config, "_LOADER", yaml.SafeLoader)
    else:
        assert config._LOADER is yaml.CSafeLoader  # the fast path is really in use
    return str(request.param)


@pytest.fixture(scope="session")
def ca_pem() -> bytes:
    return CA.root().cert_pem


# --- Valid configs ----------------------------------------------------------


class TestShapes:
    def test_minimal_long_form(self) -> None:
        """A mapping target gets the built-in port, interval and timeout."""
        cfg = parse_config("targets:\n  - host: api.example.com\n", "t.yaml")
        assert cfg.targets == (
            Target(host="api.example.com", port=443, interval=60.0, timeout=5.0),
        )
        assert cfg.source == "t.yaml"

    @pytest.mark.parametrize(
        ("item", "host", "port"),
        [
            ("api.example.com", "api.example.com", 443),
            ("api2.example.com:8443", "api2.example.com", 8443),
            ("192.0.2.1:8443", "192.0.2.1", 8443),
            ('"[::1]:443"', "::1", 443),
            ('"[2001:db8::1]:8443"', "2001:db8::1", 8443),
            ('"[::1]"', "::1", 443),
            ("'::1'", "::1", 443),
            ("'2001:DB8:0:0::1'", "2001:db8::1", 443),
            ("localhost", "localhost", 443),
            ("bücher.example", "xn--bcher-kva.example", 443),
            ("_svc.corp.example", "_svc.corp.example", 443),
        ],
    )
    def test_shorthand(self, item: str, host: str, port: int) -> None:
        """The string form 'host[:port]' (IPv6 bracketed) gives host and port."""
        (target,) = parse_config(f"targets:\n  - {item}\n", "t.yaml").targets
        assert (target.host, target.port) == (host, port)

    def test_all_fields_of_a_target(self) -> None:
        """Every documented target field lands in the Target."""
        cfg = parse_config(
            doc("""
            targets:
              - host: api.example.com
                port: 8443
                address: 192.0.2.10
                labels: {team: payments, tier: "1"}
                interval: 1h30m
                timeout: 500ms
                ca_file: /etc/ssl/extra-ca.pem
            """),
            "t.yaml",
        )
        assert cfg.targets == (
            Target(
                host="api.example.com",
                port=8443,
                address="192.0.2.10",
                labels=(("team", "payments"), ("tier", "1")),
                interval=5400.0,
                timeout=0.5,
                ca_file="/etc/ssl/extra-ca.pem",
            ),
        )

    def test_file_order_across_targets_and_groups(self) -> None:
        """Targets come out in file order, whichever of groups/targets comes first."""
        cfg = parse_config(
            doc("""
            groups:
              - name: g
                targets: [b.test, c.test]
            targets: [a.test]
            """),
            "t.yaml",
        )
        assert [t.host for t in cfg.targets] == ["b.test", "c.test", "a.test"]

    def test_addresses_and_ip_hosts_are_normalised(self) -> None:
        """IP literals are stored in canonical compressed form; brackets are dropped."""
        cfg = parse_config(
            doc("""
            targets:
              - {host: "[0:0:0:0:0:0:0:1]", address: "[2001:DB8::0001]"}
              - {host: a.test, address: "::ffff:192.0.2.1"}
            """),
            "t.yaml",
        )
        assert [(t.host, t.address) for t in cfg.targets] == [
            ("::1", "2001:db8::1"),
            ("a.test", "::ffff:c000:201"),
        ]

    def test_yaml_11_integers_and_empty_containers(self) -> None:
        """0x1bb is 443; `targets:` with every entry commented out is an empty list."""
        cfg = parse_config("defaults:\n  port: 0x1bb\ntargets:\ngroups:\n", "t.yaml")
        assert cfg.targets == ()
        cfg = parse_config("defaults: {port: 0x1bb}\ntargets: [a.test]\n", "t.yaml")
        assert cfg.targets[0].port == 443

    def test_anchors_merge_keys_and_extension_keys(self) -> None:
        """`x-` keys hold anchors; `<<: *x` merges, written keys win over merged ones."""
        cfg = parse_config(
            doc("""
            x-common: &common
              interval: 5m
              labels: &labels {team: web}
            targets:
              - <<: *common
                host: a.test
              - <<: *common
                host: b.test
                interval: 10m
              - {host: c.test, labels: *labels}
            """),
            "t.yaml",
        )
        assert [(t.host, t.interval, t.labels) for t in cfg.targets] == [
            ("a.test", 300.0, (("team", "web"),)),
            ("b.test", 600.0, (("team", "web"),)),
            ("c.test", 60.0, (("team", "web"),)),
        ]

    def test_empty_target_lists_are_valid(self) -> None:
        """A fleet may be empty (templated configs, shards): `targets: []` loads."""
        assert parse_config("targets: []\n", "t.yaml").targets == ()
        assert parse_config("groups: [{name: g, targets: []}]\n", "t.yaml").targets == ()


class TestPrecedence:
    CONFIG = doc("""
        defaults:
          interval: 2m
          timeout: 10s
          port: 8443
          ca_file: /ca/defaults.pem
          labels: {env: prod, team: core, tier: gold}
        groups:
          - name: payments
            interval: 5m
            ca_file: /ca/group.pem
            labels: {team: payments}
            targets:
              - pay.test
              - host: pay2.test
                port: 9443
                timeout: 3s
                interval: 1m
                ca_file: /ca/target.pem
                labels: {tier: silver}
        targets:
          - plain.test
          - {host: other.test, port: 443}
        """)

    def targets(self) -> dict[str, Target]:
        return {t.host: t for t in parse_config(self.CONFIG, "t.yaml", base_dir="/x").targets}

    def test_target_over_group_over_defaults(self) -> None:
        """Each field takes the most specific value: target > group > defaults."""
        pay, pay2 = self.targets()["pay.test"], self.targets()["pay2.test"]
        assert (pay.interval, pay.timeout, pay.port, pay.ca_file) == (
            300.0,
            10.0,
            8443,
            "/ca/group.pem",
        )
        assert (pay2.interval, pay2.timeout, pay2.port, pay2.ca_file) == (
            60.0,
            3.0,
            9443,
            "/ca/target.pem",
        )

    def test_labels_merge_per_name(self) -> None:
        """Labels merge name by name, the more specific level winning; sorted by name."""
        targets = self.targets()
        assert targets["pay.test"].labels == (
            ("env", "prod"),
            ("team", "payments"),
            ("tier", "gold"),
        )
        assert targets["pay2.test"].labels == (
            ("env", "prod"),
            ("team", "payments"),
            ("tier", "silver"),
        )
        assert targets["plain.test"].labels == (("env", "prod"), ("team", "core"), ("tier", "gold"))

    def test_defaults_over_built_in(self) -> None:
        """Outside groups, defaults apply, and the shorthand takes the default port."""
        targets = self.targets()
        plain, other = targets["plain.test"], targets["other.test"]
        assert (plain.interval, plain.timeout, plain.port, plain.ca_file) == (
            120.0,
            10.0,
            8443,
            "/ca/defaults.pem",
        )
        assert other.port == 443

    def test_built_in_defaults(self) -> None:
        """Without defaults: interval 60s, timeout 5s, port 443, no ca_file, no labels."""
        (target,) = parse_config("targets: [a.test]\n", "t.yaml").targets
        assert target == Target(host="a.test", port=443, interval=60.0, timeout=5.0)


class TestEquality:
    def test_relative_ca_file_is_absolute_and_normalised(self) -> None:
        """Relative ca_file paths resolve against base_dir, normalised."""
        text = "defaults: {ca_file: ./certs/../ca.pem}\ntargets: [a.test]\n"
        (target,) = parse_config(text, "t.yaml", base_dir="/etc/sni/conf/").targets
        assert target.ca_file == "/etc/sni/conf/ca.pem"

    def test_same_content_compares_equal(self) -> None:
        """Two spellings of one config are equal (and share a digest); the source does not count."""
        one = parse_config(
            "defaults: {ca_file: ca.pem, interval: 1m}\ntargets: [a.test]\n",
            "one.yaml",
            base_dir="/d",
        )
        two = parse_config(
            "targets:\n  - {host: a.test, port: 443, interval: 60s, ca_file: /d/x/../ca.pem}\n",
            "two.yaml",
            base_dir="/elsewhere",
        )
        assert one == two
        assert one.digest() == two.digest()
        assert hash(one) == hash(two)

    def test_changed_target_differs(self) -> None:
        """A changed field makes the target, the config and the digest differ."""
        one = parse_config("targets: [{host: a.test, interval: 1m}]\n", "t.yaml")
        two = parse_config("targets: [{host: a.test, interval: 2m}]\n", "t.yaml")
        assert one.targets[0] != two.targets[0]
        assert one.digest() != two.digest()


# --- Problems ---------------------------------------------------------------

PROBLEM_CASES: list[tuple[str, str, list[Expected]]] = [
    # Unknown keys, with suggestions, at every level.
    (
        "unknown-key-suggests",
        """
        defaults:
          intervall: 60s
        targets:
          - host: a.test
            prot: 443
        groups:
          - name: g
            lables: {a: b}
            targets: []
        """,
        [
            (2, 3, "unknown key 'intervall' in `defaults`; did you mean 'interval'?"),
            (5, 5, "did you mean 'port'?"),
            (8, 5, "did you mean 'labels'?"),
        ],
    ),
    (
        "unknown-top-level-key",
        """
        target:
          - a.test
        """,
        [
            (1, 1, "unknown key 'target' in the top level; did you mean 'targets'?"),
            (1, 1, "no `targets:` or `groups:` here"),
        ],
    ),
    (
        "key-in-the-wrong-place",
        """
        defaults:
          host: a.test
          zzz: 1
        targets: []
        """,
        [
            (2, 3, "`host` belongs in a target"),
            (3, 3, "allowed keys: port, interval, timeout, ca_file, labels"),
        ],
    ),
    # Types.
    (
        "wrong-types",
        """
        defaults: [interval]
        targets:
          - host: 42
            port: "443"
          - host: b.test
            port: yes
            labels: [team]
          - 17
        groups: {name: g}
        """,
        [
            (1, 11, "`defaults` must be a mapping of `key: value` lines, not a list"),
            (3, 11, "`host` must be a string, not the number '42'; quote it"),
            (4, 11, "port must be a number, not a string; remove the quotes"),
            (6, 11, "port must be a number from 1 to 65535, not the boolean 'yes'"),
            (7, 13, "`labels` of the target must be a mapping of `key: value` lines, not a list"),
            (8, 5, "a target is a 'host[:port]' string or a mapping with `host:`, not the number"),
            (9, 9, "`groups` must be a list of `- ` items, not a mapping"),
        ],
    ),
    (
        "non-string-key-and-unsupported-tag",
        """
        targets:
          - {1: a, host: a.test}
          - !custom b.test
        """,
        [
            (2, 6, "keys must be names, not the number '1'"),
            (3, 5, "unsupported tag '!custom'"),
        ],
    ),
    (
        "empty-values",
        """
        targets:
          -
          - host:
          - {host: a.test, address: ~, ca_file: ""}
        """,
        [
            (2, 4, "not an empty value"),
            (3, 10, "`host` has no value"),
            (4, 29, "`address` has no value"),
            (4, 41, "`ca_file` is empty"),
        ],
    ),
    # Durations.
    (
        "bad-durations",
        """
        targets:
          - {host: a.test, interval: 60}
          - {host: b.test, interval: 1.5m}
          - {host: c.test, interval: 5 minutes}
          - {host: d.test, interval: 5M}
          - {host: e.test, timeout: true}
          - {host: f.test, interval: 1:30}
          - {host: g.test, timeout: 30s5m}
        """,
        [
            (2, 30, "'60' has no unit; write it with one, e.g. '60s'"),
            (3, 30, "use whole numbers of a smaller unit"),
            (4, 30, "'5 minutes' is not a duration"),
            (5, 30, "'5M' is not a duration"),
            (6, 29, "timeout must be a duration such as 30s or 5m, not the boolean 'true'"),
            (7, 30, "'1:30' is not a duration"),
            (8, 29, "'30s5m' is not a duration"),
        ],
    ),
    (
        "interval-bounds-and-zero-timeout",
        """
        targets:
          - {host: a.test, interval: 500ms, timeout: 100ms}
          - {host: b.test, interval: 8d}
          - {host: c.test, timeout: 0s}
        """,
        [
            (2, 30, "interval 500ms is too short; use at least 1s"),
            (3, 30, "interval 8d is too long; use at most 7d"),
            (4, 29, "timeout must be longer than 0s"),
        ],
    ),
    (
        "timeout-not-shorter-than-interval",
        """
        defaults:
          interval: 10s
          timeout: 10s
        groups:
          - name: fast
            interval: 3s
            targets: [a.test, b.test]
        targets:
          - c.test
          - {host: d.test, timeout: 1m}
          - {host: e.test, interval: 1m, timeout: 2s}
        """,
        [
            (2, 13, "timeout 10s (line 3) is not shorter than interval 10s (line 2)"),
            (6, 15, "timeout 10s (line 3) is not shorter than interval 3s (line 6)"),
            (10, 29, "timeout 1m (line 10) is not shorter than interval 10s (line 2)"),
        ],
    ),
    (
        "built-in-timeout-against-short-interval",
        """
        targets:
          - {host: a.test, interval: 5s}
        """,
        [(2, 30, "timeout 5s (built-in default) is not shorter than interval 5s (line 2)")],
    ),
    # Ports.
    (
        "ports-out-of-range",
        """
        defaults: {port: 0}
        targets:
          - {host: a.test, port: 65536}
          - {host: b.test, port: -1}
          - c.test:0
          - d.test:99999
          - e.test:https
          - {host: f.test, port: 65535}
          - {host: g.test, port: 1}
        """,
        [
            (1, 18, "port '0' is out of range; use 1-65535"),
            (3, 26, "port '65536' is out of range"),
            (4, 26, "port '-1' is out of range"),
            (5, 5, "the port 0 is out of range"),
            (6, 5, "the port 99999 is out of range"),
            (7, 5, "the port 'https' is not a number"),
        ],
    ),
    # Host names and addresses.
    (
        "bad-hosts",
        """
        targets:
          - host: ""
          - host: "*.example.com"
          - host: https://a.test/
          - host: a.test.
          - host: a..test
          - host: -a.test
          - host: a b.test
          - host: 1.2.3
          - host: a.test:443
          - host: "[a.test]"
          - host: xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx.test
          - "[::1"
          - "[::1]x"
          - 1:2:3:x
        """,
        [
            (2, 11, "the host is empty"),
            (3, 11, "wildcards belong in certificates"),
            (4, 11, "without scheme or path"),
            (5, 11, "drop the trailing dot"),
            (6, 11, "empty label"),
            (7, 11, "must not start or end with '-'"),
            (8, 11, "may hold only letters, digits"),
            (9, 11, "mistyped IP address"),
            (10, 11, "give the port separately"),
            (11, 11, "brackets are only for IPv6 addresses"),
            (12, 11, "longer than 63 characters"),
            (13, 5, "missing ']'"),
            (14, 5, "expected ':PORT' after ']'"),
            (15, 5, "write IPv6 with a port as [addr]:port"),
        ],
    ),
    (
        "bad-addresses",
        """
        targets:
          - {host: a.test, address: a.internal}
          - {host: b.test, address: 300.1.1.1}
          - {host: c.test, address: 10}
        """,
        [
            (2, 29, "address 'a.internal' is not an IP address"),
            (3, 29, "address '300.1.1.1' is not an IP address"),
            (4, 29, "`address` must be a string, not the number '10'"),
        ],
    ),
    # Duplicates.
    (
        "duplicate-targets",
        """
        targets:
          - a.test
          - A.TEST:443
          - {host: a.test, port: 8443}
          - &b b.test
          - *b
        groups:
          - name: g
            targets:
              - host: a.Test
                address: 192.0.2.1
        """,
        [
            (3, 5, "duplicate target A.TEST:443 (first at line 2)"),
            (5, 5, "duplicate target b.test:443 (first at line 5)"),
            (10, 15, "duplicate target a.Test:443 (first at line 2)"),
        ],
    ),
    (
        "duplicate-ipv6-target",
        """
        targets:
          - "[::1]:443"
          - {host: "0::1"}
        """,
        [(3, 12, "duplicate target [::1]:443 (first at line 2)")],
    ),
    (
        "duplicate-yaml-keys",
        """
        targets:
          - host: a.test
            port: 443
            port: 8443
            labels: {team: a, team: b}
        targets: []
        """,
        [
            (4, 5, "duplicate key 'port' in a target (first at line 3)"),
            (5, 23, "duplicate key 'team' in `labels` of the target (first at line 5)"),
            (6, 1, "duplicate key 'targets' in the top level (first at line 1)"),
        ],
    ),
    (
        "groups",
        """
        groups:
          - name: g
            targets: [a.test]
          - name: g
            targets: [b.test]
          - targets: [c.test]
          - name: ""
            targets: []
          - name: h
        """,
        [
            (4, 11, "duplicate group name 'g' (first at line 2)"),
            (6, 5, "the group has no `name`"),
            (7, 11, "the group's `name` is empty"),
            (9, 5, "group 'h' has no `targets:` list"),
        ],
    ),
    # Labels.
    (
        "label-names",
        """
        defaults:
          labels:
            team-name: a
            9lives: b
            __meta: c
            target: d
            instance: e
            ok_name: f
        targets: [a.test]
        """,
        [
            (
                3,
                5,
                (
                    "label name 'team-name' is not valid in Prometheus; "
                    "use letters, digits and '_', not starting with a digit, e.g. 'team_name'"
                ),
            ),
            (4, 5, "e.g. '_9lives'"),
            (5, 5, "names starting with '__' are reserved"),
            (6, 5, "label name 'target' is reserved"),
            (7, 5, "label name 'instance' is reserved"),
        ],
    ),
    (
        "label-values",
        """
        targets:
          - host: a.test
            labels:
              tier: 1
              primary: yes
              owner:
              empty: ""
              nested: {a: b}
              ratio: 0.5
        """,
        [
            (4, 13, "label tier: values are strings, not the number '1'; quote it: tier: \"1\""),
            (5, 16, 'quote it: primary: "yes"'),
            (6, 13, "label owner has no value"),
            (7, 14, "label empty is empty, which Prometheus treats as no label"),
            (8, 15, "label nested: values are strings, not a mapping"),
            (9, 14, 'quote it: ratio: "0.5"'),
        ],
    ),
    # The document as a whole.
    ("empty-document", "", [(None, None, "the file is empty")]),
    ("comments-only", "# nothing\n\n", [(None, None, "the file is empty")]),
    ("null-document", "~\n", [(1, 1, "the file is empty")]),
    (
        "list-document",
        "- a.test\n",
        [(1, 1, "the top level must be a mapping with `targets:`")],
    ),
    ("scalar-document", "hello\n", [(1, 1, "not the string 'hello'")]),
    (
        "yaml-syntax-error",
        """
        targets:
          - host: a.test
           port: 443
        """,
        [(3, 4, "(while parsing a block collection at line 2); check the indentation")],
    ),
    (
        "unclosed-flow",
        """
        targets: [a.test,
        groups: []
        """,
        [(3, 1, "(while parsing a flow sequence at line 1)")],
    ),
    (
        "unquoted-ipv6-shorthand",
        """
        targets:
          - [::1]:443
        """,
        [(2, 6, "invalid YAML")],
    ),
    (
        "two-documents",
        "targets: []\n---\ntargets: []\n",
        [(2, 1, "a config holds one YAML document")],
    ),
    ("undefined-alias", "targets: [*nope]\n", [(1, 11, "invalid YAML: found undefined alias")]),
    (
        "bad-merge",
        """
        targets:
          - {<<: [a, b], host: a.test}
        """,
        [(2, 10, "'<<' merges a mapping or a list of mappings, e.g. <<: *defaults")],
    ),
]


class TestProblems:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [pytest.param(doc(text), expected, id=name) for name, text, expected in PROBLEM_CASES],
    )
    def test_problem_lines(self, text: str, expected: list[Expected], loader: str) -> None:
        """Each rule reports at the exact line and column, with its hint, with either loader."""
        assert_problems(text, expected)

    def test_all_problems_are_reported_in_file_order(self) -> None:
        """One load reports every problem in the file, sorted by position, not just the first."""
        text = doc("""
            targets:
              - {host: c.test, port: 0}
              - {host: a.test, interval: 60}
            defaults:
              timeout: soon
              labels: {job: x}
            groups:
              - {name: g, targets: ["bad host"], colour: red}
            """)
        found = problems_of(text)
        assert [(line, col) for line, col, _ in found] == [
            (2, 26),
            (3, 30),
            (5, 12),
            (6, 12),
            (8, 25),
            (8, 38),
        ]

    def test_error_string_is_one_line_per_problem(self) -> None:
        """str(ConfigError) is 'FILE:LINE:COL: message', one line per problem, no traceback."""
        text = 'targets:\n  - {host: a.test, port: 0}\n  - "x\\ny:1"\n'
        with pytest.raises(ConfigError) as info:
            parse_config(text, "conf/t.yaml")
        lines = str(info.value).splitlines()
        assert len(lines) == len(info.value.problems) == 2
        assert lines[0] == "conf/t.yaml:2:26: port '0' is out of range; use 1-65535"
        assert lines[1].startswith("conf/t.yaml:3:5: target 'x\\ny': label 'x\\ny' may hold only")
        assert isinstance(info.value, SniExporterError)

    def test_problem_without_position(self) -> None:
        """A problem without a known place prints as 'FILE: message'."""
        assert str(ConfigProblem("f.yaml", None, None, "gone")) == "f.yaml: gone"
        assert str(ConfigProblem("f.yaml", 3, None, "x")) == "f.yaml:3: x"

    def test_messages_never_span_lines(self) -> None:
        """Whatever text a message quotes, it stays on one line."""
        assert str(ConfigProblem("f", 1, 1, "a\nb\r\nc")) == "f:1:1: a b c"

    def test_same_problem_from_defaults_is_reported_once(self) -> None:
        """A defaults conflict inherited by many targets is one problem, not one per target,
        and does not use up the problem limit."""
        targets = "".join(f"  - t{i}.test\n" for i in range(MAX_PROBLEMS + 500))
        found = problems_of(f"defaults: {{interval: 3s}}\ntargets:\n{targets}  - last.test:0\n")
        assert found == [
            (
                1,
                22,
                (
                    "timeout 5s (built-in default) is not shorter than interval 3s (line 1); "
                    "lower the timeout or raise the interval"
                ),
            ),
            (
                MAX_PROBLEMS + 503,
                5,
                "target 'last.test:0': the port 0 is out of range; use 1-65535",
            ),
        ]

    def test_reserved_label_list_matches_the_metric_contract(self) -> None:
        """Every label the exporter's series use is refused as a configured label name."""
        contract = {"target", "sni", "reason", "subject", "issuer", "serial"}
        contract |= {"fingerprint_sha256", "version", "address", "job", "instance"}
        contract |= {"index", "count", "result"}
        assert contract == RESERVED_LABELS
        for name in sorted(RESERVED_LABELS):
            ((_, _, message),) = problems_of(f"targets: [{{host: a.test, labels: {{{name}: x}}}}]")
            assert "is reserved" in message


# --- Reading files ----------------------------------------------------------


class TestLoadConfig:
    def write(self, directory: Path, text: str, name: str = "targets.yaml") -> Path:
        path = directory / name
        path.write_text(doc(text), encoding="utf-8")
        return path

    def test_relative_ca_file_resolves_against_the_config_directory(
        self, tmp_path: Path, ca_pem: bytes, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """ca_file: certs/ca.pem means next to the config file, not the working directory."""
        (tmp_path / "conf" / "certs").mkdir(parents=True)
        (tmp_path / "conf" / "certs" / "ca.pem").write_bytes(ca_pem)
        path = self.write(
            tmp_path / "conf", "defaults: {ca_file: certs/ca.pem}\ntargets: [a.test]\n"
        )
        monkeypatch.chdir(tmp_path)
        cfg = load_config(Path("conf/targets.yaml"))
        assert cfg.targets[0].ca_file == str(tmp_path / "conf" / "certs" / "ca.pem")
        assert cfg.source == "conf/targets.yaml"
        assert cfg == load_config(path)

    def test_ca_file_problems_point_at_the_setting(self, tmp_path: Path) -> None:
        """Missing, directory and non-PEM ca_files are reported where they are written."""
        (tmp_path / "dir").mkdir()
        (tmp_path / "key.pem").write_text("-----BEGIN PRIVATE KEY-----\n")
        path = self.write(
            tmp_path,
            """
            defaults:
              ca_file: missing.pem
            groups:
              - name: g
                ca_file: dir
                targets:
                  - {host: a.test, ca_file: key.pem}
                  - {host: b.test, ca_file: key.pem}
            """,
        )
        with pytest.raises(ConfigError) as info:
            load_config(path)
        assert [(p.line, p.column) for p in info.value.problems] == [
            (2, 12),
            (5, 14),
            (7, 33),
            (8, 33),
        ]
        messages = [p.message for p in info.value.problems]
        assert messages[0].startswith(
            f"ca_file 'missing.pem' ({tmp_path / 'missing.pem'}) does not exist"
        )
        assert "is a directory" in messages[1]
        assert "holds no PEM certificate" in messages[2]
        assert str(info.value).startswith(f"{path}:2:12: ")

    def test_each_ca_file_is_checked_once(self) -> None:
        """The file check runs once per distinct path, however many targets use it."""
        calls: list[str] = []

        def check(path: str) -> str | None:
            calls.append(path)
            return None

        text = "defaults: {ca_file: ca.pem}\ntargets:\n" + "".join(
            f"  - {{host: t{i}.test, ca_file: ./ca.pem}}\n" for i in range(5)
        )
        parse_config(text, "t.yaml", base_dir="/conf", check_file=check)
        assert calls == ["/conf/ca.pem"]

    def test_parse_config_reads_no_files(self) -> None:
        """Without check_file, a ca_file that does not exist is not looked at."""
        cfg = parse_config("defaults: {ca_file: /nonexistent/ca.pem}\ntargets: [a.test]\n", "t")
        assert cfg.targets[0].ca_file == "/nonexistent/ca.pem"

    @pytest.mark.parametrize(
        ("make", "fragment"),
        [
            (
                lambda d: d / "absent.yaml",
                "cannot read the config file (no such file or directory); check the path",
            ),
            (lambda d: d, "is a directory, not a file; give the path of the config file"),
        ],
    )
    def test_unreadable_config_file(self, tmp_path: Path, make: object, fragment: str) -> None:
        """A missing path or a directory is one clear line naming the path."""
        path = make(tmp_path)  # type: ignore[operator]
        with pytest.raises(ConfigError) as info:
            load_config(path)
        assert str(info.value) == f"{path}: {fragment}"

    def test_fifo_is_not_opened(self, tmp_path: Path) -> None:
        """A FIFO is refused without opening it (opening would block)."""
        fifo = tmp_path / "fifo"
        os.mkfifo(fifo)
        with pytest.raises(ConfigError, match="is not a regular file"):
            load_config(fifo)
        assert check_ca_file(str(fifo)) == "is not a regular file"

    def test_not_utf8(self, tmp_path: Path) -> None:
        """Bytes that are not UTF-8 are reported with their line and column."""
        path = tmp_path / "t.yaml"
        path.write_bytes(b"targets:\n  - caf\xe9.test\n")
        with pytest.raises(ConfigError) as info:
            load_config(path)
        assert str(info.value) == f"{path}:2:8: the file is not UTF-8 text; save it as UTF-8"

    def test_byte_order_mark_is_accepted(self, tmp_path: Path) -> None:
        """A UTF-8 BOM (Windows editors) does not break the file."""
        path = tmp_path / "t.yaml"
        path.write_bytes(b"\xef\xbb\xbftargets: [a.test]\n")
        assert load_config(path).targets[0].host == "a.test"

    def test_oversized_file_is_refused_unread(self, tmp_path: Path) -> None:
        """A file over the size limit is refused before it is parsed."""
        path = tmp_path / "big.yaml"
        with path.open("wb") as handle:
            handle.truncate(MAX_CONFIG_BYTES + 1)
        with pytest.raises(ConfigError, match="larger than 10 MiB"):
            load_config(path)


# --- Hardening ----------------------------------------------------------------


class TestHardening:
    def parse_quickly(self, text: str, limit: float = 2.0) -> list[str]:
        """Parse, expecting ConfigError within ``limit`` seconds; return its lines."""
        started = time.perf_counter()
        with pytest.raises(ConfigError) as info:
            parse_config(text, "t.yaml")
        assert time.perf_counter() - started < limit
        return str(info.value).splitlines()

    def test_billion_laughs(self, loader: str) -> None:
        """An alias bomb is refused at once, without expanding it."""
        text = "a: &a [x,x,x,x,x,x,x,x,x,x]\n" + "".join(
            f"{chr(98 + i)}: &{chr(98 + i)} [{','.join([f'*{chr(97 + i)}'] * 10)}]\n"
            for i in range(9)
        )
        assert self.parse_quickly(text, 0.5) == [
            (
                "t.yaml:1:1: aliases expand this document by more than 500,000 nodes "
                "(an alias bomb?); write the entries out or reuse anchors less"
            )
        ]

    def test_alias_bomb_through_the_schema(self) -> None:
        """Aliases of groups of aliased target lists cannot multiply the walk."""
        hosts = ",".join(f"h{i}.test" for i in range(2000))
        groups = ",".join(["*g"] * 300)
        text = f"x-t: &t [{hosts}]\nx-g: &g {{name: g, targets: *t}}\ngroups: [{groups}]\n"
        (line,) = self.parse_quickly(text, 1.0)
        assert "alias bomb" in line

    def test_reasonable_alias_use_is_fine(self) -> None:
        """Sharing one labels mapping across 10,000 targets is not a bomb."""
        text = "x-l: &l {team: a, env: b}\ntargets:\n" + "".join(
            f"  - {{host: h{i}.test, labels: *l}}\n" for i in range(10_000)
        )
        assert len(parse_config(text, "t.yaml").targets) == 10_000

    @pytest.mark.parametrize(
        ("text", "position"),
        [("targets: &t [*t]\n", "1:10"), ("defaults: &d {<<: *d}\ntargets: []\n", "1:11")],
    )
    def test_recursive_alias(self, text: str, position: str, loader: str) -> None:
        """An anchor that contains itself is refused, pointing at the anchor."""
        (line,) = self.parse_quickly(text)
        assert line.startswith(f"t.yaml:{position}: recursive alias")

    def test_deep_nesting(self, loader: str) -> None:
        """Thousands of nested brackets give a clear problem, not a RecursionError."""
        (line,) = self.parse_quickly("[" * 5000 + "]" * 5000, 5.0)
        assert "nest" in line

    def test_deep_merge_chain(self) -> None:
        """Merge keys chained deeper than the limit are refused, not recursed into."""
        text = "x-0: &m0 {interval: 1m}\n" + "".join(
            f"x-{i}: &m{i} {{<<: *m{i - 1}}}\n" for i in range(1, 40)
        )
        text += "targets: [{<<: *m39, host: a.test}]\n"
        (line,) = self.parse_quickly(text)
        assert "merge keys nest deeper than 16" in line

    def test_oversized_text(self) -> None:
        """parse_config refuses text over the limit without parsing it."""
        assert self.parse_quickly(" " * (MAX_CONFIG_BYTES + 1), 0.5) == [
            "t.yaml: the file is larger than 10 MiB; split the fleet"
        ]

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("targets: []\x00", "t.yaml:1:12: invalid YAML: "),
            ("targets:\n  - [\ud800]", "t.yaml:2:6: invalid Unicode character (a lone surrogate)"),
            ("targets: [{host: a.test, port: " + "9" * 5000 + "}]", "t.yaml:1:32: port '999"),
            ("targets: [{host: a.test, interval: " + "9" * 5000 + "s}]", "t.yaml:1:36: interval:"),
        ],
    )
    def test_hostile_scalars(self, text: str, expected: str, loader: str) -> None:
        """NULs, lone surrogates and 5000-digit numbers are problems, not crashes."""
        (line,) = self.parse_quickly(text)
        assert line.startswith(expected)

    def test_problem_count_is_capped(self) -> None:
        """Past MAX_PROBLEMS the list stops, with a last line saying so."""
        text = "targets:\n" + "".join(f"  - {{host: h{i}.test, port: 0}}\n" for i in range(1500))
        lines = self.parse_quickly(text, 5.0)
        assert len(lines) == MAX_PROBLEMS + 1
        assert lines[-1] == f"t.yaml: stopped after {MAX_PROBLEMS} problems; fix these first"

    def test_ten_thousand_targets_load_in_reasonable_time(self) -> None:
        """A 10,000-target file parses in a few seconds even on a slow machine."""
        text = "targets:\n" + "".join(
            f"  - {{host: h{i}.test, address: 10.0.{i // 256}.{i % 256}, labels: {{team: t}}}}\n"
            for i in range(10_000)
        )
        started = time.perf_counter()
        cfg = parse_config(text, "t.yaml")
        assert len(cfg.targets) == 10_000
        assert time.perf_counter() - started < 10.0


YAML_TOKENS = [
    *(f"{key}:" for key in ("targets", "groups", "defaults", "host", "port", "address")),
    *(f"{key}:" for key in ("labels", "interval", "timeout", "ca_file", "name", "x-a", "<<")),
    "- ", "\n", "  ", "    ", ": ", "[", "]", "{", "}", ",", "&a ", "*a", "&b ", "*b",
    "'", '"', "#", "---\n", "...", "!!str ", "!!int ", "!!binary ", "!x ", "? ", "|", ">-",
    "443", "0", "-1", "70000", "0x1bb", "5s", "1h30m", "500ms", "60", "1.5", "yes", "~", "null",
    "a.test", "A.TEST:443", "[::1]:443", "::1", "127.0.0.1", "é", "\t", "\x00", "\ud800",
    "%YAML 1.1\n", "@", "`", "\\", "*", "\ufeff", "\r\n", "team", "job", "__x", "\x85",
]  # fmt: skip


def _check_outcome(text: str) -> None:
    """parse_config returns a Config or raises a ConfigError of well-formed lines."""
    error: ConfigError | None = None
    try:
        cfg = parse_config(text, "fuzz.yaml")
    except ConfigError as caught:
        error = caught
    if error is None:
        assert isinstance(cfg, Config)
        assert all(isinstance(t, Target) for t in cfg.targets)
        return
    assert error.problems
    for line in str(error).splitlines():
        assert PROBLEM_LINE.fullmatch(line), line
        assert line.startswith("fuzz.yaml")


SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True)
    | st.sampled_from(["a.test", "[::1]:443", "5s", "0s", "1d", "x", "", "ca.pem", "::1"])
    | st.text(max_size=8)
)
KEYS = st.sampled_from(["targets", "groups", "defaults", *config._TARGET_KEYS, "name", "<<"])
DOCUMENTS = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(KEYS | st.text(max_size=4), inner, max_size=5)
    ),
    max_leaves=25,
)


class TestFuzz:
    @settings(
        max_examples=400,
        deadline=1000,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(st.lists(st.sampled_from(YAML_TOKENS) | st.text(max_size=4), max_size=60).map("".join))
    def test_yamlish_text_only_raises_config_error(self, text: str) -> None:
        """Random YAML-ish text gives a Config or a ConfigError of well-formed lines, fast."""
        _check_outcome(text)

    @settings(max_examples=300, deadline=1000, database=None)
    @given(DOCUMENTS)
    def test_structured_documents_only_raise_config_error(self, data: object) -> None:
        """Any YAML-serialisable structure near the schema gives a Config or a ConfigError."""
        _check_outcome(yaml.safe_dump(data, allow_unicode=True))


# --- Small parsers ----------------------------------------------------------


class TestDurations:
    @pytest.mark.parametrize(
        ("text", "seconds"),
        [
            ("500ms", 0.5),
            ("30s", 30),
            ("5m", 300),
            ("1h", 3600),
            ("1h30m", 5400),
            ("1d", 86400),
            ("1w", 604800),
            ("1y", 31536000),
            ("1m30s500ms", 90.5),
            ("0", 0),
            ("0s", 0),
        ],
    )
    def test_valid(self, text: str, seconds: float) -> None:
        """Prometheus durations parse to seconds."""
        assert parse_duration(text) == seconds

    @pytest.mark.parametrize(
        ("text", "fragment"),
        [
            ("60", "has no unit; write it with one, e.g. '60s'"),
            ("1.5s", "use whole numbers of a smaller unit"),
            ("5m1h", "is not a duration"),
            ("", "is not a duration"),
            ("5 s", "is not a duration"),
            ("-5s", "is not a duration"),
            ("٣s", "is not a duration"),  # non-ASCII digits
            ("9" * 100 + "s", "far too long"),
        ],
    )
    def test_invalid(self, text: str, fragment: str) -> None:
        """Bad durations raise UsageError with a hint."""
        with pytest.raises(UsageError, match=re.escape(fragment)):
            parse_duration(text)

    @pytest.mark.parametrize(
        ("seconds", "text"), [(90, "1m30s"), (0.5, "500ms"), (86400, "1d"), (60, "1m"), (0, "0s")]
    )
    def test_format(self, seconds: float, text: str) -> None:
        """format_duration is the inverse of parse_duration."""
        assert format_duration(seconds) == text
        assert parse_duration(text) == seconds


class TestHostsAndSpecs:
    @pytest.mark.parametrize(
        ("spec", "expected"),
        [
            ("a.test", ("a.test", 443)),
            ("a.test:8443", ("a.test", 8443)),
            ("[::1]:8443", ("::1", 8443)),
            ("[fe80::1%eth0]:443", ("fe80::1%eth0", 443)),
            ("::1", ("::1", 443)),
            ("10.0.0.1:636", ("10.0.0.1", 636)),
        ],
    )
    def test_parse_target(self, spec: str, expected: tuple[str, int]) -> None:
        """The CLI's HOST[:PORT] parses like the config's shorthand."""
        assert parse_target(spec) == expected

    def test_parse_target_default_port(self) -> None:
        """A spec without a port takes the given default."""
        assert parse_target("a.test", 636) == ("a.test", 636)

    @pytest.mark.parametrize(
        "spec", ["", "https://a.test", "a.test:", "a.test:0", "[a.test]:443", "[::1]443", "a:b:c"]
    )
    def test_parse_target_rejects(self, spec: str) -> None:
        """Malformed specs raise UsageError (the CLI prints it and exits 2)."""
        with pytest.raises(UsageError):
            parse_target(spec)

    def test_target_from_spec(self) -> None:
        """The CLI's check target carries the validated host, port, address and flags."""
        target = target_from_spec(
            "[::1]:8443", address="[0::1]", timeout=2.5, ca_file="certs/../ca.pem"
        )
        assert target == Target(
            host="::1",
            port=8443,
            address="::1",
            timeout=2.5,
            ca_file=str(Path.cwd() / "ca.pem"),
        )
        assert target_from_spec("a.test") == Target(host="a.test")

    @pytest.mark.parametrize(
        ("spec", "address", "fragment"),
        [
            ("a.test:x", None, "the port 'x' is not a number"),
            ("a.test", "a.internal", "address 'a.internal' is not an IP address"),
        ],
    )
    def test_target_from_spec_rejects(self, spec: str, address: str | None, fragment: str) -> None:
        """Bad specs and addresses on the command line raise UsageError saying what to fix."""
        with pytest.raises(UsageError, match=re.escape(fragment)):
            target_from_spec(spec, address=address)

    def test_normalise_address(self) -> None:
        """Addresses come back compressed; brackets are accepted and dropped."""
        assert normalise_address("[2001:DB8::0:1]") == "2001:db8::1"
        assert normalise_address("192.0.2.1") == "192.0.2.1"
        with pytest.raises(UsageError):
            normalise_address("localhost")

    def test_host_name_limits(self) -> None:
        """Labels up to 63 characters and names up to 253 are accepted, longer ones not."""
        label = "a" * 63
        name = ".".join([label, label, label, "a" * 61])
        assert len(name) == 253
        assert normalise_host(name) == name
        with pytest.raises(UsageError, match="longer than 253"):
            normalise_host(name + "a")
        with pytest.raises(UsageError, match="longer than 63"):
            normalise_host("a" * 64 + ".test")

    def test_idna(self) -> None:
        """Internationalised names become A-labels; invalid ones are refused."""
        assert normalise_host("Bücher.example") == "xn--bcher-kva.example"
        with pytest.raises(UsageError, match="internationalised"):
            normalise_host("ü" * 70 + ".example")

    def test_ascii_case_is_kept(self) -> None:
        """ASCII names keep their case: the `target` label shows what the operator wrote."""
        assert normalise_host("API.Example.com") == "API.Example.com"


# --- The repository's targets.yaml ------------------------------------------

#: The demo fleet from the brief: port -> (scenario, host, address).
DEMO_FLEET = {
    19441: ("nginx-default-cert", "shop.demo.test", "127.0.0.1"),
    19442: ("nginx-reject", "api.demo.test", "127.0.0.1"),
    19443: ("nginx-single", "www.demo.test", "127.0.0.1"),
    19444: ("nginx-default-covers", "portal.demo.test", "127.0.0.1"),
    19445: ("haproxy-strict-sni", "pay.demo.test", "127.0.0.1"),
    19446: ("s-server-cert2", "legacy.demo.test", "127.0.0.1"),
    19447: ("alert-no-sni", "cdn.demo.test", "127.0.0.1"),
    19448: ("reset-no-sni", "legacy-lb.demo.test", "127.0.0.1"),
    19449: ("reset-on-accept", "reset.demo.test", "127.0.0.1"),
    19450: ("stall", "stall.demo.test", "127.0.0.1"),
    19451: ("plain-http", "http.demo.test", "127.0.0.1"),
    19452: ("refused", "closed.demo.test", "127.0.0.1"),
    19453: ("ipv6", "v6.demo.test", "::1"),
    19454: ("expired", "expired.demo.test", "127.0.0.1"),
    19455: ("wrong-host", "wrong.demo.test", "127.0.0.1"),
    19456: ("internal-pki", "internal.demo.test", "127.0.0.1"),
    19457: ("untrusted", "self.demo.test", "127.0.0.1"),
}


@pytest.fixture(scope="module")
def repo_config() -> Config:
    # parse_config, not load_config: the file's ca_file (.demo/ca.pem) lives in
    # the gitignored state directory that the demo fleet creates when it
    # starts, so it need not exist here.  Everything else is validated in full;
    # only the file-existence check (check_file) is left out.
    path = REPO / "targets.yaml"
    return parse_config(path.read_text(encoding="utf-8"), str(path), base_dir=REPO)


class TestRepositoryTargets:
    def test_loads_cleanly_with_exactly_the_demo_fleet(self, repo_config: Config) -> None:
        """targets.yaml probes exactly the 17 loopback scenarios, each on its address."""
        found = {
            t.port: (dict(t.labels).get("scenario"), t.host, t.address) for t in repo_config.targets
        }
        assert found == DEMO_FLEET
        assert len(repo_config.targets) == len(DEMO_FLEET)

    def test_labels_match_the_fleet_table(self, repo_config: Config) -> None:
        """The scenario and server labels name what exporter.demo.fleet really runs there."""
        found = {
            (t.host, t.port, t.address, dict(t.labels)["scenario"], dict(t.labels)["server"])
            for t in repo_config.targets
        }
        assert found == {(s.host, s.port, s.address, s.name, s.server) for s in SCENARIOS}

    def test_demo_settings(self, repo_config: Config) -> None:
        """Every target trusts the fleet's CA, probes often, and times out well within."""
        for target in repo_config.targets:
            assert target.ca_file == str(REPO / ".demo" / "ca.pem")
            assert target.interval <= 30
            assert target.timeout == 2.0
            assert dict(target.labels)["env"] == "demo"

    def test_uses_groups(self) -> None:
        """The file shows the groups feature (at least two groups)."""
        data = yaml.safe_load((REPO / "targets.yaml").read_text(encoding="utf-8"))
        assert len(data["groups"]) >= 2

    def test_documented_examples_are_valid(self) -> None:
        """The real-world examples in the comments parse as a valid config."""
        text = (REPO / "targets.yaml").read_text(encoding="utf-8")
        block = text.split("# Real-world examples")[1].split("# -----")[0]
        lines = [line.removeprefix("#") for line in block.splitlines()[1:]]
        example = textwrap.dedent("\n".join(lines))
        cfg = parse_config(example, "example")
        hosts = {t.host for t in cfg.targets}
        assert {"integrations.corp.example.com", "static.example.com", "2001:db8::10"} <= hosts

    def test_every_field_is_documented(self) -> None:
        """Each key the parser accepts is explained in the file's reference comments."""
        text = (REPO / "targets.yaml").read_text(encoding="utf-8")
        keys = {*config._ROOT_KEYS, *config._GROUP_KEYS, *config._TARGET_KEYS}
        for key in keys:
            assert re.search(rf"^#.*\b{key}: ", text, re.MULTILINE), key


class TestTargetModelCoverage:
    def test_every_target_field_is_configurable(self) -> None:
        """Each Target field can be set from the config (none is silently unreachable)."""
        assert {f.name for f in dataclasses.fields(Target)} == set(config._TARGET_KEYS)
