"""A fleet plan made while its first moves run (pure; docs/architecture.md, "Next round's
shape"). The planning thread checks each VM in the planner's order and places it (plan.Placer:
a placement is final once made); the scheduler (execute.py) takes each placed move as it
comes, records it in the job and may start it at once, while the next VMs are still being
checked and the dirty rates and the link are still being measured. Once those are in, the
plan is complete: the same plan `plan_moves` (and so `--dry-run`) makes of the same facts.

A move is handed over early only when its child's options cannot change with what is still
being measured (plan.options_final); otherwise it waits for the complete plan."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass, replace

from vmigrate.fleet.plan import (
    FleetInput,
    FleetPlan,
    PairVerdict,
    Placer,
    PlannedMove,
    VmLoad,
    options_final,
    provisional_move,
)
from vmigrate.model import CheckReport


class PlanningStopped(Exception):
    """The scheduler asked the planning to stop (Ctrl-C): no more VMs are placed."""


@dataclass(frozen=True)
class Arrival:
    """A placed move, with what the scheduler needs to run it."""

    move: PlannedMove  # its placement and options final; link figures provisional
    load: VmLoad
    verdicts: tuple[PairVerdict, ...]
    checks: tuple[CheckReport, ...]


@dataclass(frozen=True)
class Completion:
    """The plan once every VM is placed and the dirty rates and the link are measured; or,
    when the planning failed or was stopped (`error`), the plan of the VMs placed till then."""

    plan: FleetPlan
    inp: FleetInput
    error: BaseException | None = None


class PlanFeed:
    """Placed moves, handed from the planning thread to the scheduler (thread-safe)."""

    def __init__(self, start: FleetInput) -> None:
        """`start`: what is known before any VM is checked (the purpose, the targets and
        their budgets, the mode, the limits, the link as far as it is known, when the checks
        began); its VMs and verdicts are added as they come."""
        self.start = start
        self.placer = Placer(start.targets, start.mode)
        self.early = options_final(start)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._news = threading.Event()  # a move placed, or the planning ended
        self._ready: list[Arrival] = []
        self._held: list[Arrival] = []  # placed, waiting for the complete plan's options
        self._completion: Completion | None = None
        self._loads: list[VmLoad] = []
        self._verdicts: list[PairVerdict] = []
        self._checks: list[CheckReport] = []

    # -- the planning thread ----------------------------------------------------------------
    def offer(
        self, load: VmLoad, verdicts: Iterable[PairVerdict], checks: Iterable[CheckReport]
    ) -> None:
        """A VM with its checks (in the planner's order): placed now, for good."""
        if self._stop.is_set():
            raise PlanningStopped("the fleet job was cancelled")
        verdicts, checks = tuple(verdicts), tuple(checks)
        self._loads.append(load)
        self._verdicts += verdicts
        self._checks += checks
        placed = self.placer.place(load, {(v.vm, v.destination): v for v in verdicts})
        if placed is None:
            return
        arrival = Arrival(provisional_move(placed, self.start), load, verdicts, checks)
        if self.early:
            with self._lock:
                self._ready.append(arrival)
            self._news.set()
        else:
            self._held.append(arrival)

    def complete(self, inp: FleetInput) -> FleetPlan:
        """Every VM placed, rates and link measured: the plan, handed over with the moves
        still held."""
        plan = self.placer.plan(inp)
        self._end(Completion(plan, inp))
        return plan

    def fail(self, error: BaseException) -> None:
        """The planning stopped: the moves placed so far stand (each was final), planned with
        what was known."""
        inp = replace(
            self.start,
            vms=tuple(self._loads),
            verdicts=tuple(self._verdicts),
            checks=tuple(self._checks),
        )
        self._end(Completion(self.placer.plan(inp), inp, error))

    def _end(self, completion: Completion) -> None:
        final = {move.vm: move for move in completion.plan.moves}
        held = [replace(a, move=final.get(a.move.vm, a.move)) for a in self._held]
        with self._lock:
            self._ready += held
            self._held = []
            self._completion = completion
        self._news.set()

    # -- the scheduler -----------------------------------------------------------------------
    def stop(self) -> None:
        """Place no more VMs (the planning thread stops at its next VM)."""
        self._stop.set()

    @property
    def done(self) -> bool:
        """Whether the planning has ended (complete, failed or stopped)."""
        with self._lock:
            return self._completion is not None

    @property
    def failure(self) -> BaseException | None:
        """Why the planning ended before every VM was placed (a cancel is no failure)."""
        with self._lock:
            error = None if self._completion is None else self._completion.error
        return None if isinstance(error, PlanningStopped) else error

    def wait(self, timeout_s: float) -> None:
        """Until a move is placed or the planning ends, at most `timeout_s` (the scheduler
        starts a move placed while it waited at once, not at its next poll)."""
        self._news.wait(timeout_s)
        self._news.clear()

    def take(self) -> tuple[list[Arrival], Completion | None]:
        """The moves placed since the last call, in order, and the completion once it came
        (after its last move)."""
        with self._lock:
            ready, self._ready = self._ready, []
            return ready, self._completion
