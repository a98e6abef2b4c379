"""The container image's recipe, checked without building it (no Docker here).

What a build would catch first is checked instead: the files it copies exist
and are in the build context, it runs as a numeric non-root user, its
entrypoint is the console script and its default command parses, and it
agrees with the Helm chart on the port, the user and the config path.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pytest
import yaml

from exporter import cli

ROOT: Final = Path(__file__).resolve().parent.parent
CHART: Final = ROOT / "helm" / "sni-exporter"


@dataclass(frozen=True, slots=True)
class Instruction:
    keyword: str
    args: str
    stage: int  # index of the FROM it belongs to


def instructions(text: str) -> list[Instruction]:
    """Dockerfile instructions, with continuations joined and comments dropped."""
    found: list[Instruction] = []
    stage = -1
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # comment lines inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        pending = ""
        if keyword.upper() == "FROM":
            stage += 1
        found.append(Instruction(keyword.upper(), args.strip(), stage))
    return found


DOCKERFILE: Final = instructions((ROOT / "Dockerfile").read_text())
FINAL_STAGE: Final = max(i.stage for i in DOCKERFILE)


def _final(keyword: str) -> list[Instruction]:
    return [i for i in DOCKERFILE if i.keyword == keyword and i.stage == FINAL_STAGE]


def _exec_form(instruction: Instruction) -> list[str]:
    value = yaml.safe_load(instruction.args)  # a JSON array is YAML too
    assert isinstance(value, list), f"{instruction.keyword} must use the exec form (JSON array)"
    return [str(part) for part in value]


def _context_copies() -> list[str]:
    """Sources of the COPY instructions that read the build context (not --from)."""
    sources = []
    for instruction in DOCKERFILE:
        if instruction.keyword != "COPY":
            continue
        parts = shlex.split(instruction.args)
        if any(part.startswith("--from") for part in parts):
            continue
        sources += [part for part in parts[:-1] if not part.startswith("--")]
    return sources


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regex (Go filepath.Match plus `**`)."""
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def in_build_context(path: str) -> bool:
    """Whether Docker sends `path` (relative) to the build, per .dockerignore."""
    rules = []
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line.removeprefix("!").strip().strip("/")
        rules.append((negated, _pattern_regex(pattern)))
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    included = True
    # Docker's rule: the last pattern matching the path or one of its parents wins.
    for negated, regex in rules:
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            included = negated
    return included


class TestImage:
    def test_stages_are_slim_python(self) -> None:
        """Every stage starts from a slim Python image."""
        bases = [i.args.split()[0] for i in DOCKERFILE if i.keyword == "FROM"]
        assert bases
        for base in bases:
            assert re.fullmatch(r"python:(\$\{PYTHON_VERSION\}|3\.1[1-9])-slim(-\w+)?", base), base

    def test_copied_files_exist_and_are_in_the_context(self) -> None:
        """Each file the build copies exists and is not left out by .dockerignore."""
        sources = _context_copies()
        assert "exporter" in sources
        assert "pyproject.toml" in sources
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: no such file"
            assert in_build_context(source), f"COPY {source}: excluded by .dockerignore"
        assert in_build_context("exporter/shard.py")

    def test_pip_install_has_what_the_package_needs(self) -> None:
        """The copied files are what pip needs: pyproject, its readme, the package."""
        project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
        assert project["readme"] in _context_copies()
        assert any("pip install ." in i.args for i in DOCKERFILE if i.keyword == "RUN")

    def test_runs_as_numeric_non_root_user_like_the_chart(self) -> None:
        """The final USER is numeric, not 0, and the uid the chart's pods run as."""
        users = _final("USER")
        assert users, "the final stage sets no USER: it would run as root"
        uid, _, gid = users[-1].args.partition(":")
        assert uid.isdigit()
        assert int(uid) != 0
        assert not gid or (gid.isdigit() and int(gid) != 0)
        last_user = DOCKERFILE.index(users[-1])
        assert all(i.keyword != "RUN" for i in DOCKERFILE[last_user:]), "RUN after USER"
        pod = yaml.safe_load((CHART / "values.yaml").read_text())["podSecurityContext"]
        assert pod["runAsUser"] == int(uid)

    def test_entrypoint_is_the_console_script(self) -> None:
        """ENTRYPOINT runs the `sni-exporter` script that pyproject declares."""
        scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
        (entrypoint,) = _final("ENTRYPOINT")
        assert _exec_form(entrypoint) == ["sni-exporter"]
        assert scripts["sni-exporter"] == "exporter.cli:main"

    def test_default_command_serves_the_mounted_targets(self) -> None:
        """CMD is `serve --config.file /etc/sni-exporter/targets.yaml`, and the CLI accepts it."""
        (cmd,) = _final("CMD")
        argv = _exec_form(cmd)
        assert argv == ["serve", "--config.file", "/etc/sni-exporter/targets.yaml"]
        args = cli.build_parser().parse_args(argv)
        assert args.command == "serve"
        # The chart mounts its ConfigMap at the same place.
        helpers = (CHART / "templates" / "_helpers.tpl").read_text()
        assert "--config.file=/etc/sni-exporter/targets.yaml" in helpers
        assert "mountPath: /etc/sni-exporter\n" in helpers

    def test_exposed_port_is_the_default_everywhere(self) -> None:
        """EXPOSE, the CLI's default listen address and the chart's port all say 9866."""
        (expose,) = _final("EXPOSE")
        assert expose.args == "9866"
        assert yaml.safe_load((CHART / "values.yaml").read_text())["port"] == 9866
        assert cli.DEFAULT_LISTEN == ":9866"


class TestBuildContext:
    @pytest.mark.parametrize(
        "path",
        [
            ".venv/bin/python",
            ".venv-helm/bin/python",
            ".git/HEAD",
            ".demo/ca.pem",
            ".mypy_cache/3.11/x.json",
            "bench/results/run.json",
            "sni_exporter.egg-info/PKG-INFO",
            "exporter/__pycache__/shard.cpython-311.pyc",
            "tests/test_shard.py",
            "helm/sni-exporter/values.yaml",
        ],
    )
    def test_local_state_stays_out(self, path: str) -> None:
        """Virtualenvs, git, caches and the demo's state never reach the image."""
        assert not in_build_context(path)

    @pytest.mark.parametrize("path", ["pyproject.toml", "README.md", "exporter/cli.py"])
    def test_sources_go_in(self, path: str) -> None:
        """The files the build needs are sent."""
        assert in_build_context(path)
