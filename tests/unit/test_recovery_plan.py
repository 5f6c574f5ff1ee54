"""What `vmigrate recover` does in each state an interrupted live migration can leave."""

from __future__ import annotations

from vmigrate.live.recovery_plan import plan_recovery
from vmigrate.model import DomainView

SRC, DST = "qemu+tcp://a/system", "qemu+tcp://b/system"


def source(state: str = "running", reason: str = "", *, exists: bool = True) -> DomainView:
    return DomainView("source", SRC, exists, state if exists else "absent", reason, True, "u1")


def destination(state: str = "absent", reason: str = "", *, persistent: bool = False) -> DomainView:
    return DomainView("destination", DST, state != "absent", state, reason, persistent, "u1")


def test_finished_migration_is_completed_and_the_source_definition_removed() -> None:
    plan = plan_recovery("web", source("shut off"), destination("running"), transient=False)
    assert plan.outcome == "completed" and plan.steps == ("undefine-source",)
    transient = plan_recovery("web", source("shut off"), destination("running"), transient=True)
    assert transient.steps == ()


def test_unfinished_migration_keeps_the_source_and_drops_the_incoming_copy() -> None:
    plan = plan_recovery("web", source(), destination("paused", "migration"), transient=False)
    assert plan.outcome == "aborted" and plan.steps == ("destroy-destination-leftover",)
    clean = plan_recovery("web", source(), destination(), transient=False)
    assert clean.outcome == "aborted" and clean.steps == ()


def test_a_source_paused_for_the_switch_over_is_resumed() -> None:
    plan = plan_recovery(
        "web", source("paused", "migration"), destination("paused", "migration"), transient=False
    )
    assert plan.outcome == "aborted"
    assert plan.steps == ("destroy-destination-leftover", "resume-source")


def test_postcopy_halves_are_never_touched() -> None:
    for src, dst in (
        (source("paused", "postcopy"), destination("running", "postcopy")),
        (source("paused", "postcopy-failed"), destination("paused", "postcopy-failed")),
    ):
        plan = plan_recovery("web", src, dst, transient=False)
        assert plan.outcome == "failed" and plan.steps == ()
        assert "--postcopy-resume" in plan.fix


def test_running_on_both_is_left_to_a_human() -> None:
    plan = plan_recovery("web", source(), destination("running"), transient=False)
    assert plan.outcome == "failed" and plan.steps == () and "both" in plan.message


def test_a_user_paused_destination_is_not_destroyed() -> None:
    plan = plan_recovery("web", source(), destination("paused", "user"), transient=False)
    assert plan.steps == ()
