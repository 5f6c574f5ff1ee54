"""Failpoints: each declared point is reached by the code and the code names no undeclared
one; unarmed they do nothing; armed, the process dies by SIGKILL exactly there."""

from __future__ import annotations

import ast
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from vmigrate import failpoints
from vmigrate.failpoints import ENV, REGISTRY, failpoint, parse

SRC = Path(__file__).resolve().parents[2] / "src" / "vmigrate"


def _called_names() -> tuple[set[str], set[str]]:
    """The points the code names: failpoint("x") literally, and failpoint(f"{point}.x")
    with each prefix the steps pass (`point="cold.copy"`, run(..., "cold.copy"))."""
    names: set[str] = set()
    prefixes: set[str] = set()
    suffixes: set[str] = set()
    for path in SRC.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                text = node.value
                if text.startswith("cold.") and text.count(".") == 1:
                    prefixes.add(text)
            if not (isinstance(node, ast.Call) and getattr(node.func, "id", "") == "failpoint"):
                continue
            (argument,) = node.args
            if isinstance(argument, ast.Constant):
                names.add(str(argument.value))
            elif isinstance(argument, ast.JoinedStr):  # f"{point}.suffix"
                tail = argument.values[-1]
                assert isinstance(tail, ast.Constant), ast.dump(argument)
                suffixes.add(str(tail.value))
    return names, {prefix + suffix for prefix in prefixes for suffix in suffixes}


def test_every_declared_point_is_in_the_code_and_none_else() -> None:
    literal, composed = _called_names()
    declared = set(REGISTRY)
    assert declared - literal - composed == set(), "declared but never called"
    assert literal - declared == set(), "called but not declared"
    # Every step prefix reaches its boundary points, and each is declared.
    steps = {n.rsplit(".", 1)[0] for n in composed if n.endswith(".started")}
    assert {f"{s}.started" for s in steps} | {f"{s}.before-done" for s in steps} <= declared


def test_point_names_are_unique_and_in_the_cold_namespace() -> None:
    names = [p.name for p in failpoints.COLD]
    assert len(names) == len(set(names))
    assert all(n.startswith("cold.") for n in names)
    assert all(p.needs <= {"files", "keep-state", "pool-change", "start", "delete-source"}
               for p in failpoints.COLD)  # fmt: skip


def test_parse_arms_known_points_and_refuses_unknown_ones() -> None:
    assert parse("") == frozenset()
    assert parse("cold.copy.after-create, cold.define.started=kill") == {
        "cold.copy.after-create",
        "cold.define.started",
    }
    with pytest.raises(ValueError, match=r"unknown failpoint 'cold\.nope'"):
        parse("cold.nope")
    with pytest.raises(ValueError, match="unknown action 'pause'"):
        parse("cold.copy.after-create=pause")


def test_unarmed_points_do_nothing() -> None:
    assert ENV not in os.environ
    for name in REGISTRY:
        failpoint(name)


def test_an_armed_point_kills_its_process_there_and_only_there() -> None:
    code = (
        "from vmigrate.failpoints import failpoint\n"
        "failpoint('cold.copy.started'); print('passed started', flush=True)\n"
        "failpoint('cold.copy.after-create'); print('passed after-create', flush=True)\n"
    )
    env = {**os.environ, ENV: "cold.copy.after-create=kill"}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == -signal.SIGKILL
    assert done.stdout.splitlines() == ["passed started"]
