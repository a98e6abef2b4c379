"""Sharding: parse ``--shard``, and rendezvous ownership that is stable and fair."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections import Counter
from dataclasses import FrozenInstanceError
from typing import TYPE_CHECKING, Any, Final

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from exporter.reasons import UsageError
from exporter.shard import WHOLE_FLEET, Shard, owner, owns, parse_shard, select
from tests.exporter_proc import Exporter, free_port, wait_for

if TYPE_CHECKING:
    from pathlib import Path

FLEET: Final = tuple(f"svc-{i:05d}.fleet.test:{443 + i % 3}" for i in range(10_000))


class TestParseShard:
    def test_parses_index_and_count(self) -> None:
        """ "1/3" is shard 1 of 3, and prints back as it was written."""
        shard = parse_shard("1/3")
        assert shard == Shard(1, 3)
        assert str(shard) == "1/3"

    def test_surrounding_whitespace_is_ignored(self) -> None:
        """Whitespace around the flag value (from YAML or env) does not matter."""
        assert parse_shard(" 0/1 ") == WHOLE_FLEET

    @pytest.mark.parametrize(
        ("text", "fragment"),
        [
            ("3/3", "between 0 and 2"),
            ("5/2", "between 0 and 1"),
            ("0/0", "count must be between 1"),
            ("1", "expected INDEX/COUNT"),
            ("a/3", "expected INDEX/COUNT"),
            ("-1/3", "expected INDEX/COUNT"),
            ("1/3/4", "expected INDEX/COUNT"),
            ("", "expected INDEX/COUNT"),
            ("/3", "pod-index"),
            ("1/", "COUNT is empty"),
            ("0/10001", "count must be between 1 and 10000"),
        ],
    )
    def test_bad_input_is_one_usage_line(self, text: str, fragment: str) -> None:
        """Bad values raise UsageError with one line that names the flag and the fix."""
        with pytest.raises(UsageError) as caught:
            parse_shard(text)
        message = str(caught.value)
        assert "\n" not in message
        assert message.startswith("--shard ")
        assert fragment in message

    def test_shard_is_frozen_and_validated(self) -> None:
        """A Shard cannot be built out of range, nor changed after construction."""
        with pytest.raises(UsageError):
            Shard(2, 2)
        shard = Shard(0, 2)
        with pytest.raises(FrozenInstanceError):
            shard.index = 1  # type: ignore[misc]


class TestOwnership:
    @pytest.mark.parametrize("count", [1, 2, 3, 7, 16])
    def test_shards_cover_the_fleet_exactly_once(self, count: int) -> None:
        """N shards together own every target, and no target twice."""
        owned = [select(Shard(index, count), FLEET) for index in range(count)]
        assert sum(len(names) for names in owned) == len(FLEET)
        assert set().union(*owned) == set(FLEET)

    @pytest.mark.parametrize("count", [2, 5, 10])
    def test_load_is_balanced(self, count: int) -> None:
        """Each shard owns its fair share of the fleet, within 10%."""
        sizes = Counter(owner(name, count) for name in FLEET)
        fair = len(FLEET) / count
        assert set(sizes) == set(range(count))
        assert all(abs(size - fair) < 0.10 * fair for size in sizes.values()), sizes

    @pytest.mark.parametrize("count", [1, 2, 4, 9])
    def test_adding_a_shard_moves_about_one_in_n_plus_one(self, count: int) -> None:
        """From N to N+1 shards ~1/(N+1) of targets move, all to the new shard."""
        moved = [name for name in FLEET if owner(name, count) != owner(name, count + 1)]
        expected = len(FLEET) / (count + 1)
        assert abs(len(moved) - expected) < 0.10 * expected
        # Rendezvous hashing: a target only ever moves to the shard that was added.
        assert {owner(name, count + 1) for name in moved} == {count}

    def test_removing_the_last_shard_only_moves_its_targets(self) -> None:
        """Scaling 5 -> 4 moves exactly the targets shard 4 owned, nothing else."""
        before = {name: owner(name, 5) for name in FLEET}
        after = {name: owner(name, 4) for name in FLEET}
        moved = {name for name in FLEET if before[name] != after[name]}
        assert moved == {name for name in FLEET if before[name] == 4}

    def test_a_single_shard_owns_everything(self) -> None:
        """The default shard 0/1 owns every target."""
        assert all(owns(WHOLE_FLEET, name) for name in FLEET[:100])

    @given(names=st.lists(st.text(), max_size=50), count=st.integers(1, 12))
    def test_any_names_have_exactly_one_owner(self, names: list[str], count: int) -> None:
        """Any names, unicode or empty included, have exactly one owning shard."""
        for name in names:
            assert sum(owns(Shard(index, count), name) for index in range(count)) == 1

    def test_assignment_is_pinned(self) -> None:
        """The hash never changes silently: an upgrade must not reshuffle fleets."""
        names = ["shop.demo.test:443", "api.demo.test:443", "www.demo.test:443", "a:1"]
        assert [owner(name, 5) for name in names] == [3, 2, 4, 3]
        assert owner("svc-00000.fleet.test:443", 7) == 6


_CHILD: Final = """
import json, sys
from exporter.shard import owner
names = json.load(sys.stdin)
print(json.dumps([owner(name, 7) for name in names]))
"""


class TestStability:
    def test_ownership_agrees_across_processes(self) -> None:
        """Processes with different hash seeds compute the same owners (no hash())."""
        names = list(FLEET[:2000])
        results = []
        for seed in ("1", "2"):
            done = subprocess.run(
                [sys.executable, "-c", _CHILD],
                input=json.dumps(names),
                capture_output=True,
                text=True,
                check=True,
                env={**os.environ, "PYTHONHASHSEED": seed},
                timeout=60,
            )
            results.append(json.loads(done.stdout))
        assert results[0] == results[1] == [owner(name, 7) for name in names]


class TestShardedProcesses:
    @pytest.mark.slow
    def test_exporter_processes_cover_the_fleet_exactly_once(self, tmp_path: Path) -> None:
        """3 `serve --shard i/3` processes probe every target once, as `owner` predicts."""
        closed_port = free_port()  # nothing listens: every probe is refused at once
        names = [f"t{i:03d}.shard.test:{closed_port}" for i in range(90)]
        config = tmp_path / "targets.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "defaults": {"interval": "1s", "timeout": "500ms", "port": closed_port},
                    "targets": [
                        {"host": name.split(":")[0], "address": "127.0.0.1"} for name in names
                    ],
                }
            )
        )
        count = 3
        with contextlib.ExitStack() as stack:
            exporters = [
                stack.enter_context(Exporter(config, "--shard", f"{index}/{count}"))
                for index in range(count)
            ]
            probed: list[set[str]] = []
            for index, process in enumerate(exporters):
                process.wait_ready()
                owned = process.value("sni_exporter_targets")

                # Results are published a moment after the probes that made them.
                def published(process: Exporter = process, owned: float | None = owned) -> Any:
                    found = set(process.by_target("sni_probe_last_run_timestamp_seconds"))
                    return found if len(found) == owned else None

                targets: set[str] = wait_for(f"shard {index}'s targets in /metrics", published)
                probed.append(targets)
                assert targets == {n for n in names if owner(n, count) == index}
                info = process.series("sni_exporter_shard_info")
                assert list(info) == [frozenset({("index", str(index)), ("count", str(count))})]
        assert sum(len(targets) for targets in probed) == len(names)
        assert set().union(*probed) == set(names)
        assert all(probed), "a shard owns no target: the split is not spread"
