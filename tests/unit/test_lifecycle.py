"""The job lifecycle: every action on every kind from every state, allowed or refused with a
reason; and whether a job's process still runs (PID + start time + boot + machine)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, replace

import pytest

from vmigrate import lifecycle
from vmigrate.lifecycle import (
    ACTIONS,
    ALLOWED,
    CANCEL,
    COMPLETED,
    ENDS,
    FAILED,
    INTERRUPTED,
    RECOVER,
    RESUME,
    ROLLBACK,
    ROLLED_BACK,
    RUNNING,
    STATES,
    TRANSITIONS,
    TransitionRefused,
    check_action,
    check_finish,
)
from vmigrate.owner import Liveness, ProcessIdentity, liveness, process_start, this_process

KINDS = ("live", "cold", "evacuate", "balance", "return", "rolling")


@dataclass(frozen=True)
class Job:
    id: int
    kind: str
    vm: str
    source: str
    destination: str
    state: str
    holder: str = "process 4242 on root@ops1"
    action: str | None = None


def job(kind: str, state: str, **changes: object) -> Job:
    base = Job(12, kind, "db1", "hostA", "hostB", state)
    return replace(base, **changes)  # type: ignore[arg-type]


# The table, written out once more by hand: a change to lifecycle.ALLOWED must change this.
EXPECTED_ALLOWED = {
    ("cold", RESUME): {FAILED, INTERRUPTED},
    ("cold", ROLLBACK): {FAILED, INTERRUPTED},
    ("live", RECOVER): {INTERRUPTED, FAILED, COMPLETED, "cancelled", "aborted"},
    ("live", CANCEL): {RUNNING},
    ("evacuate", RESUME): {FAILED, INTERRUPTED, "cancelled", "aborted"},
    ("rolling", RESUME): {FAILED, INTERRUPTED, "cancelled", "aborted"},
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize("action", ACTIONS)
def test_every_action_from_every_state(kind: str, state: str, action: str) -> None:
    allowed = state in EXPECTED_ALLOWED.get((kind, action), set())
    if allowed:
        check_action(job(kind, state), action)
        return
    with pytest.raises(TransitionRefused) as refused:
        check_action(job(kind, state), action)
    # Every refusal says which job, and names the VM or host it is about.
    assert "job 12" in refused.value.message or "evacuation 12" in refused.value.message
    assert refused.value.vm == "db1" or refused.value.host == "db1"
    assert refused.value.fix


def test_the_table_is_the_one_written_out() -> None:
    table = {
        (kind, action): set(states)
        for kind, actions in ALLOWED.items()
        for action, states in actions.items()
    }
    assert table == EXPECTED_ALLOWED


def test_actions_that_reopen_follow_the_arrows() -> None:
    for actions in ALLOWED.values():
        for action in lifecycle.REOPENING & actions.keys():
            for state in actions[action]:
                assert lifecycle.can_move(state, RUNNING), (action, state)


def test_the_arrows() -> None:
    assert lifecycle.can_move(lifecycle.PLANNED, RUNNING)
    for end in ENDS:
        assert lifecycle.can_move(RUNNING, end)
        assert not lifecycle.can_move(end, end)
    # A completed or rolled-back job never runs again.
    assert TRANSITIONS[COMPLETED] == frozenset() and TRANSITIONS[ROLLED_BACK] == frozenset()
    assert not lifecycle.can_move(lifecycle.PLANNED, COMPLETED)


def test_rolling_back_a_completed_cold_job_says_how_to_move_it_back() -> None:
    with pytest.raises(TransitionRefused) as refused:
        check_action(job("cold", COMPLETED), ROLLBACK)
    assert refused.value.message == (
        "job 12 completed: db1 runs on hostB with the disks it has written since; "
        "rolling back would destroy that"
    )
    assert refused.value.fix == "to move it back: vmigrate cold db1 --from hostB --to hostA"
    assert refused.value.exit_code == 1


def test_resuming_a_rolled_back_cold_job_says_to_start_again() -> None:
    with pytest.raises(TransitionRefused) as refused:
        check_action(job("cold", ROLLED_BACK), RESUME)
    assert "nothing to resume" in refused.value.message
    assert "vmigrate cold db1 --from hostA --to hostB" in refused.value.fix
    with pytest.raises(TransitionRefused, match="already rolled back"):
        check_action(job("cold", ROLLED_BACK), ROLLBACK)
    with pytest.raises(TransitionRefused, match="already completed"):
        check_action(job("cold", COMPLETED), RESUME)


@pytest.mark.parametrize("action", [RESUME, ROLLBACK])
def test_a_running_job_names_its_process_and_what_it_is_doing(action: str) -> None:
    with pytest.raises(TransitionRefused) as refused:
        check_action(job("cold", RUNNING, action=ROLLBACK), action)
    assert refused.value.message == (
        "job 12 is still running (being rolled back): process 4242 on root@ops1 drives it"
    )
    assert "stop process 4242 on root@ops1" in refused.value.fix


def test_a_live_job_is_recovered_not_resumed() -> None:
    for action in (RESUME, ROLLBACK):
        with pytest.raises(TransitionRefused) as refused:
            check_action(job("live", INTERRUPTED), action)
        assert "vmigrate recover db1" in refused.value.fix
    with pytest.raises(TransitionRefused) as refused:
        check_action(job("live", RUNNING), RECOVER)
    assert "vmigrate jobs cancel 12" in refused.value.fix


def test_an_evacuation_is_not_rolled_back() -> None:
    with pytest.raises(TransitionRefused) as refused:
        check_action(job("evacuate", FAILED), ROLLBACK)
    assert refused.value.fix == "bring its VMs back with `vmigrate maintenance end db1 --return`"


def test_only_live_jobs_are_cancelled() -> None:
    with pytest.raises(TransitionRefused, match="only live jobs take 'cancel'"):
        check_action(job("balance", FAILED), CANCEL)
    with pytest.raises(TransitionRefused, match="only live jobs take 'cancel'"):
        check_action(job("cold", FAILED), CANCEL)
    with pytest.raises(TransitionRefused, match="nothing to cancel"):
        check_action(job("live", COMPLETED), CANCEL)


def test_unknown_action_is_a_bug() -> None:
    with pytest.raises(ValueError, match="unknown action"):
        check_action(job("cold", FAILED), "undo")


@pytest.mark.parametrize("state", STATES)
def test_who_may_record_the_end(state: str) -> None:
    # The process that drives it (or last took it over) always may.
    check_finish(job("cold", state), COMPLETED, ours=True)
    if state == RUNNING:  # another process drives it: never
        with pytest.raises(TransitionRefused, match="driven by process 4242"):
            check_finish(job("cold", state), FAILED, ours=False)
    else:  # nobody drives it: `recover` settles it
        check_finish(job("live", state), COMPLETED, ours=False)
    with pytest.raises(ValueError, match="not a state a job ends in"):
        check_finish(job("cold", state), RUNNING, ours=True)


# --- liveness -------------------------------------------------------------------------------


def test_this_process_is_alive() -> None:
    me = this_process()
    assert me.pid == os.getpid() and me.start is not None and me.boot_id
    assert me.machine and me.machine.endswith("@" + os.uname().nodename)
    assert liveness(me, time.time(), me) is Liveness.ALIVE


def test_a_reused_pid_is_not_the_process() -> None:
    me = this_process()
    assert me.start is not None
    earlier = replace(me, start=me.start - 1)  # same PID, another process
    assert liveness(earlier, time.time(), me) is Liveness.GONE


def test_a_process_that_exited_is_gone() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    start = process_start(child.pid)
    assert start is not None
    recorded = replace(this_process(), pid=child.pid, start=start)
    assert liveness(recorded, time.time(), this_process()) is Liveness.ALIVE
    child.kill()
    child.wait()
    assert liveness(recorded, time.time(), this_process()) is Liveness.GONE


def test_another_boot_is_not_the_process() -> None:
    me = this_process()
    before_reboot = replace(me, boot_id="00000000-0000-0000-0000-000000000000")
    assert liveness(before_reboot, time.time(), me) is Liveness.GONE


def test_another_machine_cannot_be_judged_here() -> None:
    me = this_process()
    there = ProcessIdentity(pid=1, start=1, boot_id="other", machine="ops@elsewhere")
    assert liveness(there, time.time(), me) is Liveness.ELSEWHERE
    # Even when no process has that PID here.
    assert liveness(replace(there, pid=2**22 + 7), time.time(), me) is Liveness.ELSEWHERE


def test_a_row_without_start_time_counts_only_a_process_older_than_the_job() -> None:
    me = this_process()
    legacy = ProcessIdentity(me.pid, None, None, None)  # as main wrote it: the PID alone
    assert liveness(legacy, time.time(), me) is Liveness.ALIVE
    # The job was started before this process: the PID was reused since.
    assert liveness(legacy, 1_000_000.0, me) is Liveness.GONE
    assert liveness(ProcessIdentity(2**22 + 7, None, None, None), time.time(), me) is (
        Liveness.GONE
    )
