"""The digest step of a pool change: both hosts read at once; a failure or a Ctrl-C on one
side ends the other side's read instead of waiting for it (pure: the reads are stand-ins)."""

from __future__ import annotations

import threading
from typing import Any, cast

import pytest

from vmigrate.cold import pool_change_steps
from vmigrate.cold.pool_change import plan_export
from vmigrate.cold.pool_change_steps import PoolChangeError, PoolChangeSteps, write_step
from vmigrate.journal import Journal
from vmigrate.virt.connection import Connection

from .test_pool_change import BOTH_RBD, FACTS, _export_source

SOURCE, DESTINATION = cast(Connection, "src-conn"), cast(Connection, "dst-conn")


class _Journal:
    job_id = 7
    token = "0123456789abcdef0123456789abcdef"

    def __init__(self) -> None:
        self.recorded: list[tuple[str, str, dict[str, Any]]] = []

    def record(self, name: str, state: str, detail: dict[str, Any]) -> None:
        self.recorded.append((name, state, detail))


def _steps(journal: _Journal | None = None) -> PoolChangeSteps:
    return PoolChangeSteps(
        (SOURCE, DESTINATION),
        ("hostA", "hostB"),
        cast(Journal, journal or _Journal()),
        "vm",
        lambda *_: None,
    )


CHANGE = plan_export(_export_source(), "local", facts=FACTS, rbd_pool_xml=BOTH_RBD)


def _reads(monkeypatch: pytest.MonkeyPatch, **by_conn: Any) -> list[str]:
    """Stand-in reads: each connection's value, or its exception; destroyed helpers noted."""
    destroyed: list[str] = []
    stopped = threading.Event()

    def digest(conn: Connection, _xml: str, **kwargs: Any) -> str:
        outcome = by_conn[str(conn)]
        if outcome == "slow":  # a long read that ends only when its helper is destroyed
            assert stopped.wait(10), "the source's read was never ended"
            raise RuntimeError("helper destroyed")
        if isinstance(outcome, BaseException):
            raise outcome
        assert kwargs["helper"] == "vmigrate-7-0123456789ab-vda-read"
        return str(outcome)

    def destroy(conn: Connection, name: str) -> bool:
        destroyed.append(f"{conn}:{name}")
        stopped.set()
        return True

    monkeypatch.setattr(pool_change_steps, "content_digest", digest)
    monkeypatch.setattr(pool_change_steps, "destroy_helper", destroy)
    return destroyed


def test_equal_digests_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    _reads(monkeypatch, **{"src-conn": "ab" * 32, "dst-conn": "ab" * 32})
    assert _steps().verify(CHANGE, {})["sha256"] == "ab" * 32


def test_different_digests_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    _reads(monkeypatch, **{"src-conn": "ab" * 32, "dst-conn": "cd" * 32})
    journal = _Journal()
    with pytest.raises(PoolChangeError, match="digest mismatch") as raised:
        _steps(journal).verify(CHANGE, {})
    # A resume writes the disk again: its write step is no longer done.
    assert [(name, state) for name, state, _ in journal.recorded] == [
        (write_step(CHANGE), "failed")
    ]
    assert "vmigrate jobs resume 7" in raised.value.fix


def test_the_source_side_failing_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    _reads(monkeypatch, **{"src-conn": PoolChangeError("read failed"), "dst-conn": "ab" * 32})
    with pytest.raises(PoolChangeError, match="read failed"):
        _steps().verify(CHANGE, {})


@pytest.mark.parametrize("failure", [PoolChangeError("no key"), KeyboardInterrupt()])
def test_the_destination_failing_or_ctrl_c_ends_the_source_read_at_once(
    monkeypatch: pytest.MonkeyPatch, failure: BaseException
) -> None:
    destroyed = _reads(monkeypatch, **{"src-conn": "slow", "dst-conn": failure})
    with pytest.raises(type(failure)):
        _steps().verify(CHANGE, {})
    assert destroyed == ["src-conn:vmigrate-7-0123456789ab-vda-read"]
