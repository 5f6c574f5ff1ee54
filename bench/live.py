"""Live-migration benchmarks L1-L4 (docs/benchmarks.md): vmigrate against virsh, side by side.

Each scenario runs `--pairs` rounds; in each round every tool migrates a fresh lab guest
(512 MiB, 384 MiB working set) from hostA to hostB over the scenario's link, in an order
that alternates between rounds. Measured per run: outcome, wall time, libvirt downtime,
guest-observed gap (host-timestamped heartbeats), bytes sent, passes, policy actions.

    python -m bench.live [--scenario L1 ...] [--pairs 3] [--out bench/results/live.json]
    python -m bench.live --quick --out /tmp/quick.json   # one small L1 round (CI)

Needs root and `vmigrate lab up`. Benchmarks never fail a build; they only measure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from itertools import pairwise
from pathlib import Path
from typing import Any

import libvirt

from vmigrate.forecast import StreamChoice, forecast
from vmigrate.lab import link
from vmigrate.lab.config import HOST_A, HOST_B
from vmigrate.lab.heartbeat import beats_of, heartbeat_report, read_console
from vmigrate.lab.vms import LabVmRequest, create_vm, remove_vm
from vmigrate.live.policy import PRESETS, PolicyConfig
from vmigrate.live.runner import LiveRequest, migrate_live
from vmigrate.store import JobStore

MEMORY_MIB, WORKING_SET_MIB = 512, 384
#: vmigrate's job store in the benchmarks (VMIGRATE_BENCH_STORE overrides it): the host
#: pair's fixed costs and stream rate are learned from it.
STORE = Path(os.environ.get("VMIGRATE_BENCH_STORE", "/tmp/vmigrate-bench.sqlite"))
QUICK_MEMORY_MIB, QUICK_WORKING_SET_MIB = 256, 64  # --quick: proves the suite still runs


@dataclass(frozen=True)
class Tool:
    name: str
    virsh_flags: tuple[str, ...] = ()  # empty for vmigrate
    set_downtime_ms: int | None = None  # virsh migrate-setmaxdowntime once the job runs
    policy: str = "fast"
    postcopy: bool | None = None
    # QEMU TLS on the migration stream (vmigrate --tls, virsh --tls); off elsewhere so every
    # tool moves the same bytes the same way (the lab's hosts would make it vmigrate's default)
    tls: bool = False
    # vmigrate's policy: the share of the link its post-copy push may take (None: the
    # policy's own default; 0: the whole link, as before the option)
    push_share: float | None = None
    # `vmigrate estimate` just before the run (None: vmigrate's runs are estimated, for the
    # accuracy table; virsh's are not)
    estimated: bool | None = None
    # vmigrate's policy: the downtime limit it starts from (None: the preset's, 30 ms; QEMU's
    # own default, which virsh leaves, is 300 ms)
    start_downtime_ms: int | None = None


@dataclass(frozen=True)
class Scenario:
    id: str
    dirty_rate: int
    link_rate: str | None
    tools: tuple[Tool, ...]
    memory_mib: int = MEMORY_MIB
    working_set_mib: int = WORKING_SET_MIB


P2P = ("--live", "--p2p")
SCENARIOS = {
    "L1": Scenario(
        "L1",
        0,
        None,
        (
            Tool("vmigrate"),
            Tool("virsh common", P2P),
            Tool("virsh expert", P2P, set_downtime_ms=30),
        ),
    ),
    "L2": Scenario(
        "L2",
        100,
        "1gbit",
        (
            Tool("vmigrate"),
            Tool("vmigrate-tls", tls=True),
            Tool("virsh common", P2P),
            Tool("virsh-tls", (*P2P, "--tls")),
            Tool("virsh expert", (*P2P, "--postcopy", "--postcopy-after-precopy")),
        ),
    ),
    "L3": Scenario(
        "L3",
        200,
        "1gbit",
        (
            Tool("vmigrate"),
            Tool("virsh common", (*P2P, "--postcopy", "--timeout", "60", "--timeout-postcopy")),
            Tool("virsh expert", (*P2P, "--postcopy", "--postcopy-after-precopy")),
        ),
    ),
    "L4": Scenario(
        "L4",
        200,
        "1gbit",
        (
            Tool("vmigrate", policy="safe", postcopy=False),
            Tool("virsh common", (*P2P, "--auto-converge")),
            Tool(
                "virsh expert",
                (
                    *P2P,
                    "--auto-converge",
                    "--auto-converge-initial",
                    "60",
                    "--auto-converge-increment",
                    "20",
                ),
            ),
        ),
    ),
    # L3's guest with QEMU's post-copy background rate held under the link (libvirt's
    # bandwidth.postcopy), so that a page the guest faults on does not queue behind it.
    "L3B": Scenario(
        "L3B",
        200,
        "1gbit",
        (
            Tool("vmigrate"),
            Tool("vmigrate push75", push_share=0.75),
            Tool("vmigrate push50", push_share=0.5),
            Tool("virsh expert", (*P2P, "--postcopy", "--postcopy-after-precopy")),
        ),
    ),
    # L3B's largest gaps, vmigrate's against virsh expert's, with one difference between
    # them removed at a time: the estimate that runs before vmigrate's runs (on the guest
    # and hostB), and the downtime limit vmigrate starts from (where QEMU ends pass 1).
    "L3C": Scenario(
        "L3C",
        200,
        "1gbit",
        (
            Tool("vmigrate"),
            Tool("vmigrate unestimated", estimated=False),
            Tool("vmigrate from300", start_downtime_ms=300),
            Tool("virsh expert", (*P2P, "--postcopy", "--postcopy-after-precopy")),
        ),
    ),
    # A 1 GiB guest running the lab guest's own workload at a database-like rate: 50 MiB/s
    # over a 512 MiB working set (no database fits the lab's initramfs guest).
    "G1": Scenario("G1", 50, "1gbit", (Tool("vmigrate"),), memory_mib=1024, working_set_mib=512),
}


@dataclass
class Run:
    scenario: str
    tool: str
    round: int
    outcome: str
    total_s: float
    downtime_ms: float | None
    guest_gap_ms: float | None
    contiguous: bool
    bytes_sent: int
    passes: int
    actions: list[str] = field(default_factory=list)
    # `vmigrate estimate` with the run's options just before vmigrate's run: the route it
    # expects and its predicted figures, for the planning-accuracy table.
    predicted: dict[str, Any] | None = None
    # remaining memory over time [[s, bytes], ...] (L3 only: the plot in docs/benchmarks.md)
    timeline: list[list[float]] | None = None
    # The heartbeat's gaps above GAP_RECORD_MS: [[ms since the move started, gap ms], ...]
    gaps: list[list[float]] | None = None
    # vmigrate: [[s since start, post-copy requests so far], ...] while in post-copy
    postcopy_requests: list[list[float]] | None = None


def _completed_stats(vm: str) -> dict[str, Any]:
    """virsh leaves the source defined (shut off): its completed job holds the figures."""
    conn = libvirt.open(HOST_A.uri)
    try:
        return dict(conn.lookupByName(vm).jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED))
    except libvirt.libvirtError:
        return {}
    finally:
        conn.close()


def _when_running(vm: str, stop: threading.Event, act: Callable[[Any], None]) -> None:
    """`act` on the VM's domain once its migration job runs (a setting libvirt takes only
    then)."""
    conn = libvirt.open(HOST_A.uri)
    try:
        domain = conn.lookupByName(vm)
        while not stop.is_set():
            try:
                if domain.jobStats(0).get("type", 0) in (1, 2):
                    act(domain)
                    return
            except libvirt.libvirtError:
                return
            time.sleep(0.01)
    finally:
        conn.close()


#: Heartbeat gaps at least this long are kept in a run's record (the beat is every 10 ms).
GAP_RECORD_MS = 30.0


def _gaps_since(vm: str, started_ns: int) -> list[list[float]]:
    beats = [b for b in beats_of(read_console(vm)) if b.time_ns >= started_ns]
    return [
        [round((a.time_ns - started_ns) / 1e6, 1), round((b.time_ns - a.time_ns) / 1e6, 1)]
        for a, b in pairwise(beats)
        if (b.time_ns - a.time_ns) / 1e6 >= GAP_RECORD_MS
    ]


def _sample_remaining(vm: str, stop: threading.Event, timeline: list[list[float]]) -> None:
    """What virsh's migration still has to send, every 0.5 s (as vmigrate's monitor does)."""
    conn = libvirt.open(HOST_A.uri)
    started = time.monotonic()
    try:
        domain = conn.lookupByName(vm)
        while not stop.wait(0.5):
            try:
                stats = domain.jobStats(0)
            except libvirt.libvirtError:
                return
            if stats.get("type", 0) in (1, 2):
                timeline.append(
                    [round(time.monotonic() - started, 2), float(stats.get("memory_remaining", 0))]
                )
    finally:
        conn.close()


def _config(tool: Tool) -> PolicyConfig:
    config = PRESETS[tool.policy].with_limits(postcopy=tool.postcopy)
    if tool.push_share is not None:
        config = replace(config, postcopy_push_share=tool.push_share or None)
    if tool.start_downtime_ms is not None:
        config = replace(config, start_downtime_ms=tool.start_downtime_ms)
    return config


def _predict(vm: str, tool: Tool, store: Path) -> dict[str, Any]:
    """What `vmigrate estimate` with the run's own options says just before the run."""
    config = _config(tool)
    result = forecast(
        vm, "hostA", "hostB", config, stream=StreamChoice(tls=tool.tls), store_path=store
    )
    return {
        **(result.prediction or {}),
        "bandwidth_mib_s": round(result.bandwidth_bps / (1 << 20), 1),
        "dirty_rate_mib_s": round((result.dirty_rate_bps or 0) / (1 << 20), 1),
        "working_set_mib": None
        if result.working_set_bytes is None
        else round(result.working_set_bytes / (1 << 20)),
        "costs": result.costs,
        "alternative": result.alternative,
        "touched_mib": None
        if result.touched_bytes is None
        else round(result.touched_bytes / (1 << 20)),
    }


def _run_virsh(
    vm: str, tool: Tool, timeline: list[list[float]] | None
) -> tuple[str, float, dict[str, Any]]:
    stop = threading.Event()
    sampler = None
    if timeline is not None:
        sampler = threading.Thread(target=_sample_remaining, args=(vm, stop, timeline))
        sampler.start()
    helper = None
    if tool.set_downtime_ms is not None:
        ms = tool.set_downtime_ms
        helper = threading.Thread(
            target=_when_running, args=(vm, stop, lambda d: d.migrateSetMaxDowntime(ms, 0))
        )
        helper.start()
    started = time.monotonic()
    result = subprocess.run(
        ["virsh", "-c", HOST_A.uri, "migrate", *tool.virsh_flags, vm, HOST_B.uri],
        capture_output=True,
        text=True,
        check=False,
    )
    total = time.monotonic() - started
    stop.set()
    for thread in (helper, sampler):
        if thread is not None:
            thread.join()
    outcome = "completed" if result.returncode == 0 else f"failed: {result.stderr.strip()}"
    return outcome, total, _completed_stats(vm)


def run_once(scenario: Scenario, tool: Tool, round_no: int, *, quick: bool = False) -> Run:
    vm = f"bench-{scenario.id.lower()}-{round_no}-{tool.name.split()[-1]}"
    memory, working_set = (
        (QUICK_MEMORY_MIB, QUICK_WORKING_SET_MIB)
        if quick
        else (scenario.memory_mib, scenario.working_set_mib)
    )
    create_vm(
        LabVmRequest(
            vm,
            memory_mib=memory,
            working_set_mib=working_set,
            dirty_rate_mib=scenario.dirty_rate,
        )
    )
    time.sleep(2)  # let the workload settle at its rate
    try:
        if scenario.link_rate:
            link.shape(scenario.link_rate)
        timeline: list[list[float]] | None = [] if scenario.id == "L3" else None
        store = STORE
        estimated = not tool.virsh_flags if tool.estimated is None else tool.estimated
        predicted = _predict(vm, tool, store) if estimated and not quick else None
        started_ns = time.monotonic_ns()
        requests: list[list[float]] | None = None
        if tool.virsh_flags:
            outcome, total, stats = _run_virsh(vm, tool, timeline)
            downtime = stats.get("downtime")
            sent, passes, actions = (
                stats.get("data_processed", 0),
                stats.get("memory_iteration", 0),
                [],
            )
        else:
            config = _config(tool)
            report = migrate_live(
                LiveRequest(vm, "hostA", "hostB", config, store_path=store, tls=tool.tls)
            )
            outcome, total, downtime = report.outcome, report.total_s, report.downtime_ms
            if report.job_id is not None:
                with JobStore(store) as jobs:
                    samples = jobs.samples(report.job_id)
                if timeline is not None:
                    timeline += [[s["elapsed_s"], float(s["memory_remaining"])] for s in samples]
                requests = [
                    [round(s["elapsed_s"], 2), float(s["postcopy_requests"])]
                    for s in samples
                    if s.get("phase") == "postcopy"
                ]
            sent, passes = report.bytes_sent, report.passes
            actions = [f"{a['at_s']}s {a['action']}" for a in report.actions]
        link.reset()
        time.sleep(1)
        beats = heartbeat_report(vm)
        gaps = _gaps_since(vm, started_ns)
        return Run(
            scenario.id,
            tool.name,
            round_no,
            outcome,
            round(total, 2),
            float(downtime) if downtime is not None else None,
            round(beats.largest_gap_ms, 1),
            beats.contiguous,
            int(sent),
            int(passes),
            actions,
            predicted,
            timeline,
            gaps,
            requests,
        )
    finally:
        link.reset()
        remove_vm(vm)


def environment() -> dict[str, str]:
    conn = libvirt.open(HOST_A.uri)
    try:
        lib, qemu = conn.getLibVersion(), conn.getVersion()
    finally:
        conn.close()
    return {
        "libvirt": f"{lib // 1_000_000}.{lib // 1000 % 1000}.{lib % 1000}",
        "qemu": f"{qemu // 1_000_000}.{qemu // 1000 % 1000}.{qemu % 1000}",
        "kernel": platform.release(),
        "cpus": str(os.cpu_count()),
        "memory": subprocess.run(
            ["free", "-h"], capture_output=True, text=True, check=False
        ).stdout.split()[7],
        "date": time.strftime("%Y-%m-%d"),
    }


def estimator_version() -> str:
    """The commit whose estimator and policy ran (noted in the results for the accuracy
    table), "+ changes" when src/ differs from it."""
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    changed = subprocess.run(
        ["git", "status", "--porcelain", "src"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return f"commit {head or 'unknown'}" + (" + changes" if changed else "")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.live")
    parser.add_argument("--scenario", action="append", choices=sorted(SCENARIOS))
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench/results/live.json"))
    parser.add_argument(
        "--quick",
        action="store_true",
        help="one round of L1 with a small guest, vmigrate and virsh common only",
    )
    parser.add_argument(
        "--tool", action="append", help="run only these tools (e.g. --tool vmigrate)"
    )
    args = parser.parse_args()
    scenarios = {
        key: replace(s, tools=tuple(t for t in s.tools if t.name in args.tool)) if args.tool else s
        for key, s in SCENARIOS.items()
    }
    if args.quick:
        l1 = scenarios["L1"]
        scenarios = {"L1": Scenario("L1", l1.dirty_rate, l1.link_rate, l1.tools[:2])}
        args.scenario, args.pairs = ["L1"], 1
    runs: list[Run] = []
    kept = []
    if args.out.exists():  # re-running some scenarios keeps the others' latest results
        chosen = {(s, t.name) for s in args.scenario or SCENARIOS for t in scenarios[s].tools}
        kept = [
            r
            for r in json.loads(args.out.read_text())["runs"]
            if (r["scenario"], r["tool"]) not in chosen
        ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for scenario_id in args.scenario or sorted(SCENARIOS):
        scenario = scenarios[scenario_id]
        for round_no in range(args.pairs):
            order = scenario.tools if round_no % 2 == 0 else tuple(reversed(scenario.tools))
            for tool in order:
                run = run_once(scenario, tool, round_no, quick=args.quick)
                print(json.dumps(asdict(run)), flush=True)
                runs.append(run)
                # Written after every run: an interrupted benchmark keeps what it measured.
                payload = {
                    "environment": environment(),
                    "pairs": args.pairs,
                    "quick": args.quick,
                    "runs": kept + [asdict(r) for r in runs],
                    "estimator": f"{estimator_version()}, run {time.strftime('%Y-%m-%d %H:%M')}",
                }
                args.out.write_text(json.dumps(payload, indent=1))


if __name__ == "__main__":
    main()
