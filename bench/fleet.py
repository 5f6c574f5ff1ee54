"""Fleet benchmarks: E1 and E2 (empty a host), P1 (the planner alone at scale), B1 (balance).

    sudo .venv/bin/python -m bench.fleet --scenario E1 [--rounds 1]   # the lab, 3 hosts
    sudo .venv/bin/python -m bench.fleet --scenario E2                # the lab, 4 hosts
    .venv/bin/python -m bench.fleet --scenario P1                    # no lab needed

E1 empties hostA of six guests (256-512 MiB, dirty rates 0-50 MiB/s) over a 1 Gbit/s link,
side by side with what operators run today: a shell loop of `virsh migrate --live --p2p` to
one target, one VM at a time and three at a time (xargs -P 3). Measured: wall time, the
largest guest-observed gap, VMs left behind, the memory each target ends up holding against
its declared capacity, and vmigrate's predicted total against its measured one.

E2 is E1 with guests of real size: eight guests of 512-2048 MiB (two dirtying 50 MiB/s) from
hostA onto hostB, hostC and hostD, whose capacities a hosts file raises to hold them (the E2
constant says why). Besides E1's figures: the link's own peak rate, the link floor, where
vmigrate's time goes before its plan (`gather_stages`), and each move's result.

B1 balances a skewed three-host lab (four 256 MiB guests on hostA, two dirtying 100 MiB/s;
hostB and hostC empty; 1 Gbit/s) with `vmigrate balance --threshold 0.3`, then runs it again:
imbalance before and after (planned and measured), moves, bytes sent, time, guest gaps; the
second round must move nothing.

P1 plans 5,000 VMs spread over 20 source hosts onto 200 hosts (every pair checked) and
measures the planner's time and peak memory (tracemalloc).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vmigrate.errors import VmigrateError

RESULTS = Path("bench/results/fleet.json")
#: Where a scenario's results go unless --out says otherwise (E2 has a file of its own).
RESULTS_OF = {"E2": Path("bench/results/fleet-e2.json")}
MIB = 1 << 20


@dataclass(frozen=True)
class Guest:
    memory_mib: int
    dirty_mib: int = 0
    working_set_mib: int | None = None  # None: the lab's default (memory less ~128 MiB)


@dataclass(frozen=True)
class Evacuation:
    """One host emptied by each tool side by side: the guests on hostA, the targets vmigrate
    chooses among, where the hand-spread loop sends each guest (the other loops send every
    guest to the first target), and the capacities the targets declare for the run (a hosts
    file over the lab's own where they are too small for the guests)."""

    name: str
    lab_hosts: int
    guests: tuple[Guest, ...]
    targets: tuple[str, ...]
    spread: tuple[str, ...]
    capacity_mib: tuple[tuple[str, int], ...] = ()
    #: A loop still running after this long is stopped and reported as unfinished.
    loop_deadline_s: float = 1200.0

    def names(self, round_no: int, tool: str) -> list[str]:
        return [f"{self.name.lower()}-{tool}-{round_no}-{i}" for i in range(len(self.guests))]

    @property
    def memory_mib(self) -> int:
        return sum(g.memory_mib for g in self.guests)

    def capacity(self, host: str) -> int:
        from vmigrate.lab.config import lab_host

        declared = lab_host(host)
        return dict(self.capacity_mib).get(host, declared.capacity_mib if declared else 0)

    def hosts_file(self, directory: Path) -> Path | None:
        """The hosts file that overlays the lab hosts' declared capacities, if any."""
        if not self.capacity_mib:
            return None
        path = directory / "hosts.toml"
        path.write_text(
            "".join(f"[hosts.{h}]\ncapacity_mib = {mib}\n" for h, mib in self.capacity_mib)
        )
        return path


E1 = Evacuation(
    "E1",
    3,
    (
        Guest(512, 50, 256),
        Guest(512),
        Guest(384, 20, 192),
        Guest(384),
        Guest(256, 10, 96),
        Guest(256),
    ),
    ("hostB", "hostC"),
    # hostB 768 + 640 + 512 MiB of its 2048, hostC the same of its 3072
    ("hostB", "hostC", "hostB", "hostC", "hostB", "hostC"),
)
#: E2: guests of real size, 8448 MiB in all (10496 MiB with QEMU's overhead as vmigrate
#: counts it), more than the lab's declared targets hold (hostB 2048, hostC 3072, hostD
#: 2048 MiB, less 512 MiB each kept for the host): the run declares them twice that, so
#: they are 82 % full once hostA is empty. The idle guests have written all their memory
#: (the default working set); the two busy ones dirty half theirs, as E1's busiest does (a
#: busy guest's hot set is a part of its memory: each pre-copy pass re-sends at most that).
E2 = Evacuation(
    "E2",
    4,
    (
        Guest(2048),
        Guest(1536, 50, 768),
        Guest(1024),
        Guest(1024, 50, 512),
        Guest(1024),
        Guest(768),
        Guest(512),
        Guest(512),
    ),
    ("hostB", "hostC", "hostD"),
    # by hand, within what each holds less its reserve: hostC 2304 + 1280 + 768 of 5632,
    # hostB 1792 + 1280 of 3584, hostD 1280 + 1024 + 768 of 3584 (MiB with QEMU's overhead)
    ("hostC", "hostB", "hostD", "hostC", "hostB", "hostD", "hostC", "hostD"),
    (("hostB", 4096), ("hostC", 6144), ("hostD", 4096)),
    # four times what vmigrate is predicted to take (~90 s): a loop that takes longer has
    # lost; the run as a whole must fit the lab's shared time
    loop_deadline_s=360.0,
)
SCENARIOS = {s.name: s for s in (E1, E2)}


def _make_guests(scenario: Evacuation, names: list[str]) -> None:
    from vmigrate.lab.vms import LabVmRequest, create_vm

    for name, guest in zip(names, scenario.guests, strict=True):
        create_vm(
            LabVmRequest(
                name,
                memory_mib=guest.memory_mib,
                dirty_rate_mib=guest.dirty_mib,
                working_set_mib=guest.working_set_mib,
            )
        )


def _held_by_target(scenario: Evacuation, names: list[str]) -> dict[str, Any]:
    """Where each VM ended, and the memory (with QEMU's overhead) each target holds against
    the capacity it declared for the run."""
    from vmigrate.capacity import memory_need_bytes
    from vmigrate.lab.vms import locate_vm

    held: dict[str, int] = {}
    left = []
    for name, guest in zip(names, scenario.guests, strict=True):
        where = [h for h, s in locate_vm(name).items() if s == "running"]
        if len(where) != 1 or where[0] not in scenario.targets:
            left.append(name)
            continue
        held[where[0]] = held.get(where[0], 0) + memory_need_bytes(guest.memory_mib * MIB) // MIB
    capacity = {h: scenario.capacity(h) for h in held}
    return {"left_behind": left, "held_mib": held, "declared_mib": capacity}


def _gaps(names: list[str], since_ns: int) -> list[float]:
    from vmigrate.lab.heartbeat import heartbeat_report

    return [round(heartbeat_report(n, since_ns=since_ns).largest_gap_ms, 1) for n in names]


SENDING_PHASES = ("precopy", "postcopy", "copy")
#: The rate E1 and E2 shape hostA's uplink to (1 Gbit/s as migrations measured it).
SHAPED_BPS = 119 * MIB


def _shaped_bytes() -> int:
    from vmigrate.lab import link

    return link.status().bytes_shaped


class LinkWatch:
    """What crossed the shaped link over time: its byte counter read every `every_s` in a
    thread, so a run's busy and idle link can be told apart (to that resolution)."""

    def __init__(self, every_s: float = 0.2) -> None:
        import threading

        self.every_s = every_s
        self.readings: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.started = time.monotonic()

    def __enter__(self) -> LinkWatch:
        self.started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.readings.append((time.monotonic() - self.started, _shaped_bytes()))
            self._stop.wait(self.every_s)

    def busy_s(self, rate_bps: float, share: float = 0.1) -> float:
        """Seconds the link sent at more than `share` of `rate_bps`."""
        busy = 0.0
        for (t0, b0), (t1, b1) in itertools.pairwise(self.readings):
            if t1 > t0 and (b1 - b0) / (t1 - t0) > share * rate_bps:
                busy += t1 - t0
        return busy

    def peak_bps(self, window_s: float = 2.0) -> float:
        """The link's highest rate over any `window_s` of the run: what it can carry, as its
        own counter saw it (the stream's TLS and headers included)."""
        best = 0.0
        for i, (t0, b0) in enumerate(self.readings):
            later = [(t, b) for t, b in self.readings[i + 1 :] if t - t0 >= window_s]
            if later:
                t1, b1 = later[0]
                best = max(best, (b1 - b0) / (t1 - t0))
        return best

    def span_s(self) -> float:
        return self.readings[-1][0] - self.readings[0][0] if len(self.readings) > 1 else 0.0


def _link_figures(watch: LinkWatch, before: int, rate_bps: float, wall: float) -> dict[str, Any]:
    busy = watch.busy_s(rate_bps)
    return {
        "link_mib": round((_shaped_bytes() - before) / MIB),
        "link_busy_s": round(busy, 1),
        "link_idle_s": round(max(wall - busy, 0.0), 1),
        "link_peak_mib_s": round(watch.peak_bps() / MIB, 1),
    }


def _timed_lines(argv: list[str]) -> tuple[int, list[tuple[float, dict[str, Any]]], str]:
    """Run a command, stamping each JSON line of its stdout with when it came (seconds
    since the start); readline only (a for-loop's read-ahead would hold lines back)."""
    started = time.monotonic()
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stderr is not None
    lines: list[tuple[float, dict[str, Any]]] = []
    while True:
        line = process.stdout.readline()
        if not line:
            break
        if line.startswith("{"):
            lines.append((time.monotonic() - started, json.loads(line)))
    stderr = process.stderr.read()
    return process.wait(timeout=1200), lines, stderr


def phases(lines: list[tuple[float, dict[str, Any]]], wall: float) -> dict[str, Any]:
    """Where one evacuation's time went, from its events as they came (to the fleet's
    0.2 s poll): gathering and planning until the plan, then per move its set-up (child
    start to its first sending report), sending and finish, and the link idle between."""
    plan_at = next(t for t, e in lines if e["event"] == "plan")
    moves: dict[str, dict[str, float]] = {}
    for at, event in lines:
        vm = str(event.get("vm"))
        if event["event"] == "move-start":
            moves[vm] = {"start": at}
        elif event["event"] == "move-progress" and event.get("phase") in SENDING_PHASES:
            move = moves.setdefault(vm, {"start": at})
            move.setdefault("first_byte", at)
            move["last_report"] = at
        elif event["event"] == "move-end" and vm in moves:
            moves[vm]["end"] = at
    sending = sorted(
        (m["first_byte"], m["last_report"]) for m in moves.values() if "first_byte" in m
    )
    busy, covered_until = 0.0, 0.0
    for begin, until in sending:
        busy += max(0.0, until - max(begin, covered_until))
        covered_until = max(covered_until, until)
    first = min((m["start"] for m in moves.values()), default=plan_at)
    last = max((m.get("end", wall) for m in moves.values()), default=plan_at)
    setups = [m["first_byte"] - m["start"] for m in moves.values() if "first_byte" in m]
    finishes = [
        m["end"] - m["last_report"] for m in moves.values() if "end" in m and "last_report" in m
    ]
    first_byte = min((begin for begin, _ in sending), default=first)
    return {
        "gather_and_plan_s": round(plan_at, 1),
        "plan_to_first_move_s": round(first - plan_at, 1),
        "first_setup_s": round(first_byte - first, 1),
        "moves_span_s": round(last - first, 1),
        "link_sending_s": round(busy, 1),
        "link_idle_s": round(max(last - first - busy, 0.0), 1),
        "after_last_move_s": round(wall - last, 1),
        "setup_s": [round(x, 1) for x in setups],
        "finish_s": [round(x, 1) for x in finishes],
        "moves": {vm: {k: round(v, 1) for k, v in m.items()} for vm, m in moves.items()},
    }


class StageClock:
    """Spans of named library calls, timed by wrapping them where the evacuation looks them
    up; a name the code no longer has is left out (the benchmark outlives refactors)."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.spans: dict[str, list[tuple[float, float]]] = {}
        self._undo: list[tuple[Any, str, Any]] = []

    def wrap(self, module: Any, attr: str, label: str) -> None:
        original = getattr(module, attr, None)
        if original is None:
            return

        def timed(*args: Any, **kwargs: Any) -> Any:
            begin = time.monotonic() - self.started
            try:
                return original(*args, **kwargs)
            finally:
                span = (begin, time.monotonic() - self.started)
                self.spans.setdefault(label, []).append(span)

        setattr(module, attr, timed)
        self._undo.append((module, attr, original))

    def restore(self) -> None:
        for module, attr, original in reversed(self._undo):
            setattr(module, attr, original)
        self._undo.clear()

    def summary(self) -> dict[str, Any]:
        """Per label: from its first call's start to its last call's end, and the sum of
        its calls (the two differ where calls ran side by side or with gaps)."""
        return {
            label: {
                "from_s": round(min(b for b, _ in spans), 2),
                "until_s": round(max(e for _, e in spans), 2),
                "sum_s": round(sum(e - b for b, e in spans), 2),
                "calls": len(spans),
            }
            for label, spans in self.spans.items()
        }


def gather_stages(scenario: Evacuation, hosts_file: Path | None, store: Path) -> dict[str, Any]:
    """What vmigrate does before its plan, split into stages: `prepare` (the evacuation's
    gather, checks and plan, nothing moved) run in this process on the run's guests, with
    its stages timed. Imports and the CLI's start-up are not in it."""
    from vmigrate.fleet import evacuate as evacuation
    from vmigrate.fleet import gather
    from vmigrate.store import JobStore

    clock = StageClock()
    clock.wrap(evacuation, "open_sessions", "connect and read every host's facts")
    clock.wrap(gather, "_gather_one", "each VM's facts and checks against each target")
    clock.wrap(gather, "_dirty_rates", "dirty rates (beside the checks)")
    clock.wrap(evacuation, "probe_link", "link probe (beside the facts)")
    clock.wrap(evacuation, "plan_moves", "plan")
    request = evacuation.EvacuateRequest(
        "hostA", to=scenario.targets, dry_run=True, hosts_file=hosts_file, store_path=store
    )
    try:
        with JobStore(request.store_path) as jobs:
            clock.started = time.monotonic()
            evacuation.prepare(request, jobs)
            total = time.monotonic() - clock.started
    finally:
        clock.restore()
    return {"total_s": round(total, 2), "stages": clock.summary()}


def _run_vmigrate(scenario: Evacuation, names: list[str]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as scratch:
        store = Path(scratch) / "jobs.sqlite"
        hosts_file = scenario.hosts_file(Path(scratch))
        hosts_args = ["--hosts", str(hosts_file)] if hosts_file else []
        try:
            stages = gather_stages(scenario, hosts_file, Path(scratch) / "dry.sqlite")
        except VmigrateError as err:  # the breakdown is extra: the run itself still counts
            stages = {"error": str(err)}
        started_ns = time.monotonic_ns()
        shaped = _shaped_bytes()
        started = time.monotonic()
        with LinkWatch() as watch:
            code, lines, stderr = _timed_lines(
                [
                    sys.executable,
                    "-m",
                    "vmigrate.cli.main",
                    "evacuate",
                    "hostA",
                    "--to",
                    ",".join(scenario.targets),
                    *hosts_args,
                    "--store",
                    str(store),
                    "--json",
                ]
            )
        wall = time.monotonic() - started
    if code != 0:
        print(stderr[-3000:], file=sys.stderr)
    events = [e for _t, e in lines]
    plan = next(e for e in events if e["event"] == "plan")
    done: dict[str, Any] = next((e for e in events if e["event"] == "done"), {})
    memory = scenario.memory_mib * MIB
    return {
        "tool": "vmigrate",
        "exit_code": code,
        "wall_s": round(wall, 1),
        "moves_s": done.get("moves_s"),
        "predicted_s": plan["predicted_total_s"],
        "bandwidth_mib_s": round(plan["bandwidth_bps"] / MIB, 1),
        "link_floor_s": round(memory / plan["bandwidth_bps"], 1),
        "link_plan": plan.get("link"),
        **_link_figures(watch, shaped, plan["bandwidth_bps"], wall),
        "phases": phases(lines, wall),
        "gather_stages": stages,
        "planned": {m["vm"]: m.get("destination") for m in plan.get("moves", [])},
        "move_results": [
            {k: m.get(k) for k in ("vm", "destination", "state", "seconds", "gap_ms")}
            for m in done.get("moves", [])
        ],
        "gaps_ms": _gaps(names, started_ns),
        **_held_by_target(scenario, names),
    }


def _run_virsh_loop(
    scenario: Evacuation, names: list[str], parallel: int, spread: bool
) -> dict[str, Any]:
    from vmigrate.lab.config import HOST_A, lab_host

    uris = {h: lab_host(h).uri for h in scenario.targets}  # type: ignore[union-attr]
    # What operators write: names and URIs passed as arguments (never pasted into the
    # script), QEMU's TLS on the stream as vmigrate uses it in the lab.
    targets = scenario.spread if spread else (scenario.targets[0],) * len(names)
    pairs = [x for name, host in zip(names, targets, strict=True) for x in (name, uris[host])]
    script = (
        'printf "%s\\n" "$@" | xargs -P "$PARALLEL" -n 2 sh -c '
        '\'virsh -q -c "$SRC" migrate --live --p2p --tls --persistent --undefinesource "$0" "$1"\''
    )
    started_ns = time.monotonic_ns()
    shaped = _shaped_bytes()
    started = time.monotonic()
    with LinkWatch() as watch:
        code, stderr = _loop_until(
            ["bash", "-c", script, "loop", *pairs],
            {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PARALLEL": str(parallel), "SRC": HOST_A.uri},
            scenario.loop_deadline_s,
        )
        if code is None:
            _abort_outgoing(names)
    wall = time.monotonic() - started
    if code != 0:
        print(stderr[-3000:], file=sys.stderr)
    return {
        "tool": f"virsh loop x{parallel}" + (" spread" if spread else ""),
        "exit_code": code,
        "finished": code is not None,
        "deadline_s": scenario.loop_deadline_s,
        "wall_s": round(wall, 1),
        "predicted_s": None,
        **_link_figures(watch, shaped, SHAPED_BPS, wall),
        "gaps_ms": _gaps(names, started_ns),
        **_held_by_target(scenario, names),
    }


def _loop_until(argv: list[str], env: dict[str, str], deadline_s: float) -> tuple[int | None, str]:
    """Run the loop; past `deadline_s` stop it (its own process group: bash, xargs and their
    virsh) and return None for its exit code. A pre-copy that cannot converge (a busy guest
    sharing the link) keeps a loop without --timeout going for ever."""
    process = subprocess.Popen(
        argv,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _out, stderr = process.communicate(timeout=deadline_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGTERM)
        _out, stderr = process.communicate()
        return None, stderr
    return process.returncode, stderr


def _abort_outgoing(names: list[str]) -> None:
    """Abort the migrations a stopped loop left running on hostA (libvirt drives p2p
    migrations itself, whether or not its virsh is still there)."""
    from vmigrate.lab.config import HOST_A
    from vmigrate.virt.connection import open_connection

    conn = open_connection(HOST_A.uri)
    try:
        for name in names:
            with contextlib.suppress(Exception):  # not on hostA, or no job: nothing to abort
                conn.lookupByName(name).abortJob()
    finally:
        conn.close()
    time.sleep(2)  # the aborted jobs' clean-up, before the guests are looked for and removed


EVACUATION_TOOLS = ("vmigrate", "virsh1", "virsh3", "spread3")
E1_TOOLS = EVACUATION_TOOLS


def run_evacuation(
    scenario: Evacuation, rounds: int, tools: tuple[str, ...] = EVACUATION_TOOLS
) -> list[dict[str, Any]]:
    """Each tool empties hostA of the scenario's guests over a 1 Gbit/s uplink, one after
    another in each round, on guests made anew for each tool."""
    from vmigrate.lab import link
    from vmigrate.lab.lifecycle import lab_up
    from vmigrate.lab.vms import remove_vm

    lab_up(scenario.lab_hosts)
    runs = []
    link.shape("1gbit")
    try:
        for round_no in range(rounds):
            for tool in tools:
                names = scenario.names(round_no, tool)
                # a host may have gone since (a lab left by another session stopping)
                lab_up(scenario.lab_hosts)
                try:
                    made = time.monotonic()
                    _make_guests(scenario, names)
                    made_s = time.monotonic() - made
                    # The machine's load (other users' work shares its cores with the lab's
                    # guests, TLS and the tools): said beside each tool's figures.
                    load_before = os.getloadavg()[0]
                    if tool == "vmigrate":
                        run = _run_vmigrate(scenario, names)
                    else:
                        run = _run_virsh_loop(
                            scenario, names, int(tool[-1]), tool.startswith("spread")
                        )
                    run["round"] = round_no
                    run["load_avg"] = [round(load_before, 1), round(os.getloadavg()[0], 1)]
                    run["guests_made_s"] = round(made_s, 1)
                    runs.append(run)
                    print(json.dumps(run), flush=True)
                finally:
                    for name in names:
                        with contextlib.suppress(VmigrateError):
                            remove_vm(name)
    finally:
        link.reset()
    return runs


def e1(rounds: int, tools: tuple[str, ...] = E1_TOOLS) -> list[dict[str, Any]]:
    return run_evacuation(E1, rounds, tools)


def e2_setting() -> dict[str, Any]:
    """What E2 ran with, for the report: guests, targets, capacities, the hand spread."""
    from vmigrate.capacity import DEFAULT_RESERVE_BYTES, memory_need_bytes
    from vmigrate.lab.config import lab_host

    return {
        "guests": [asdict(g) for g in E2.guests],
        "targets": list(E2.targets),
        "capacity_mib": dict(E2.capacity_mib),
        "lab_capacity_mib": {h: lab_host(h).capacity_mib for h in E2.targets},  # type: ignore[union-attr]
        "reserve_mib": DEFAULT_RESERVE_BYTES // MIB,
        "spread": list(E2.spread),
        "memory_mib": E2.memory_mib,
        "need_mib": sum(memory_need_bytes(g.memory_mib * MIB) // MIB for g in E2.guests),
        "link": "1gbit",
        "cpus": os.cpu_count(),
    }


def trusted_checks_cost(repeats: int = 3) -> dict[str, Any]:
    """What a fleet move's child saves by trusting its parent's checks: `check_move` of a
    lab VM from hostA to hostB in full, then with the full report trusted (what the child
    does), live (a running VM) and cold (a shut-off one), median of `repeats` each; both
    include connecting to the two hosts."""
    import statistics

    from vmigrate.lab.lifecycle import lab_up
    from vmigrate.lab.vms import LabVmRequest, create_vm, remove_vm
    from vmigrate.model import Mode
    from vmigrate.preflight import check_move
    from vmigrate.trusted_checks import TrustedChecks
    from vmigrate.virt.connection import open_connection

    lab_up(3)
    name = "trust-cost"
    create_vm(LabVmRequest(name, memory_mib=128))
    out: dict[str, Any] = {}
    try:
        for mode in (Mode.LIVE, Mode.COLD):
            if mode is Mode.COLD:
                from vmigrate.lab.config import HOST_A

                conn = open_connection(HOST_A.uri)
                try:
                    conn.lookupByName(name).destroy()
                finally:
                    conn.close()
            full, trusted = [], []
            for _ in range(repeats):
                started = time.monotonic()
                report = check_move(name, "hostA", "hostB", mode=mode).report
                full.append(time.monotonic() - started)
                started = time.monotonic()
                check_move(
                    name, "hostA", "hostB", mode=mode, trusted=TrustedChecks(0, time.time(), report)
                )
                trusted.append(time.monotonic() - started)
            out[mode.value] = {
                "full_s": round(statistics.median(full), 2),
                "trusted_s": round(statistics.median(trusted), 2),
            }
    finally:
        remove_vm(name)
    return out


def _p1_facts(hosts: int, vms: int) -> list[Any]:
    """Synthetic HostFacts of `hosts` hosts holding `vms` running VMs between them."""
    from vmigrate.facts import GuestUsage, HostFacts
    from vmigrate.hosts import HostRef

    rng = random.Random(1)
    facts = []
    for h in range(hosts):
        guests = tuple(
            GuestUsage(
                f"vm{h:03d}-{i:03d}",
                f"uuid-{h}-{i}",
                "running",
                True,
                rng.choice((1, 2, 4, 8)) * 1024 * MIB,
                rng.choice((1, 2, 4)),
            )
            for i in range(vms // hosts)
        )
        facts.append(
            HostFacts(
                ref=HostRef(
                    f"h{h:03d}", f"qemu+tls://h{h:03d}.example/system", capacity_mib=512 * 1024
                ),
                hostname=f"h{h:03d}",
                host_uuid=f"uuid-{h}",
                libvirt_version=11003000,
                hypervisor_type="QEMU",
                hypervisor_version=10000002,
                arch="x86_64",
                cpus=128,
                memory_free_bytes=200 * 1024 * MIB,
                memory_available_bytes=400 * 1024 * MIB,
                rtt_ms=0.2,
                pools=(),
                networks=(),
                host_interfaces=None,
                domains={g.name: g.uuid for g in guests},
                memory_total_bytes=512 * 1024 * MIB,
                guests=guests,
                cpu_model="Icelake-Server",
            )
        )
    return facts


def _p1_input(facts: list[Any], sources: int) -> Any:
    """Every VM of the first `sources` hosts to place on the others; every pair checked,
    one in twenty refused (a missing network, a CPU feature)."""
    from vmigrate.capacity import host_budget
    from vmigrate.fleet.plan import (
        BALANCE,
        EVACUATE,
        FleetInput,
        Limits,
        PairVerdict,
        Purpose,
        TargetHost,
        VmLoad,
    )

    rng = random.Random(2)
    moving = [f for f in facts[:sources]]
    loads = tuple(
        VmLoad(
            g.name,
            f.ref.name,
            g.state,
            g.persistent,
            g.memory_bytes,
            g.vcpus,
            rng.uniform(0, 200) * MIB,
        )
        for f in moving
        for g in f.guests
    )
    targets = tuple(TargetHost(f.ref.name, host_budget(f)) for f in facts)
    verdicts = tuple(
        PairVerdict(vm.name, t.name, ("networks.present: missing",) if rng.random() < 0.05 else ())
        for vm in loads
        for t in targets
        if t.name != vm.host
    )
    purpose = (
        Purpose(EVACUATE, facts[0].ref.name, (facts[0].ref.name,))
        if sources == 1
        else Purpose(BALANCE, "bench", tuple(f.ref.name for f in moving))
    )
    return FleetInput(
        purpose,
        loads,
        targets,
        verdicts,
        limits=Limits(2, 2),
        bandwidth_bps=1190 * MIB,
    )


def p1(hosts: int = 200, vms: int = 5000) -> dict[str, Any]:
    from vmigrate.fleet.plan import plan_moves

    facts = _p1_facts(hosts, vms)
    cases: dict[str, Any] = {}
    for label, sources in (
        ("one host emptied", 1),
        ("20 hosts emptied", 20),
        ("all 5,000 VMs placed anew", hosts),
    ):
        inp = _p1_input(facts, sources)
        started = time.perf_counter()
        plan = plan_moves(inp)
        seconds = time.perf_counter() - started
        tracemalloc.start()
        plan_moves(inp)
        _current, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        cases[label] = {
            "vms_to_place": len(inp.vms),
            "pairs_checked": len(inp.verdicts),
            "seconds": round(seconds, 3),
            "peak_mib": round(peak / MIB, 1),
            "placed": len(plan.moves),
            "unplaced": len(plan.unplaced),
            "predicted_total_s": round(plan.predicted_total_s),
        }
    return {"hosts": hosts, "vms": vms, "cases": cases}


def _balance_run(store: Path) -> dict[str, Any]:
    started = time.monotonic()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "vmigrate.cli.main",
            "balance",
            "--cluster",
            "lab",
            "--threshold",
            "0.3",
            "--window",
            "3",
            "--store",
            str(store),
            "--json",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=1200,
    )
    wall = time.monotonic() - started
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    done = next(e for e in events if e["event"] == "done")
    moved = [m for m in done["moves"] if m["state"] == "moved"]
    return {
        "exit_code": result.returncode,
        "wall_s": round(wall, 1),
        "imbalance_before": done["imbalance_before"],
        "imbalance_after_planned": done["imbalance_after"],
        "imbalance_after_measured": done["imbalance_measured_after"],
        "moves": len(done["moves"]),
        "moved": len(moved),
        "bytes_sent": sum(m.get("bytes_sent") or 0 for m in moved),
        "gaps_ms": [m.get("gap_ms") for m in moved],
        "predicted_s": [m.get("predicted_s") for m in moved],
        "seconds": [m.get("seconds") for m in moved],
    }


def b1() -> list[dict[str, Any]]:
    """A skewed three-host lab (four guests on hostA, two busy), balanced, then again."""
    from vmigrate.lab import link
    from vmigrate.lab.lifecycle import lab_up
    from vmigrate.lab.vms import LabVmRequest, create_vm, remove_vm

    lab_up(3)
    names = [f"b1-{n}" for n in ("busy1", "busy2", "idle1", "idle2")]
    link.shape("1gbit")
    try:
        for name in names:
            busy = "busy" in name
            create_vm(
                LabVmRequest(
                    name, memory_mib=256, dirty_rate_mib=100 if busy else 0, working_set_mib=96
                )
            )
        with tempfile.TemporaryDirectory() as scratch:
            store = Path(scratch) / "jobs.sqlite"
            runs = []
            for label in ("first round", "second round"):
                run = {"round": label, **_balance_run(store)}
                print(json.dumps(run), flush=True)
                runs.append(run)
    finally:
        link.reset()
        for name in names:
            remove_vm(name)
    return runs


def _measure(scenario: str, args: argparse.Namespace) -> dict[str, Any]:
    """The scenario's figures, under the keys its results file keeps them."""
    tools = tuple(args.tool or EVACUATION_TOOLS)
    if scenario in SCENARIOS:
        figures: dict[str, Any] = {
            scenario: run_evacuation(SCENARIOS[scenario], args.rounds, tools)
        }
        if scenario == "E2":
            figures["E2_setting"] = e2_setting()
        return figures
    if scenario == "B1":
        return {scenario: b1()}
    if scenario == "TRUST":
        return {scenario: trusted_checks_cost()}
    return {scenario: p1()}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.fleet")
    parser.add_argument("--scenario", action="append", choices=["E1", "E2", "P1", "B1", "TRUST"])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--out", type=Path, default=None, help=f"default {RESULTS} (E2: {RESULTS_OF['E2']})"
    )
    parser.add_argument(
        "--tool", "--e1-tool", action="append", choices=EVACUATION_TOOLS, help="E1/E2: only these"
    )
    args = parser.parse_args()
    for scenario in args.scenario or ["P1", "E1", "B1"]:
        out: Path = args.out or RESULTS_OF.get(scenario, RESULTS)
        results: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {}
        results.update(_measure(scenario, args))
        print(json.dumps({scenario: results[scenario]}), flush=True)
        # after each scenario: a later one that fails keeps the earlier ones' figures
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
