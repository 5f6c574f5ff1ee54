"""Rewrite docs/benchmarks.md from the results in bench/results/ (medians, ranges, ratios).

python -m bench.report [--results bench/results] [--doc docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

RESULTS = Path("bench/results")
DOC = Path("docs/benchmarks.md")
MIB = 1 << 20


def _ok(run: dict[str, Any]) -> bool:
    return run["outcome"] in ("completed", "succeeded")  # the word older results used


def _spread(values: list[float], fmt: str = "{:.1f}") -> str:
    if not values:
        return "-"
    median = statistics.median(values)
    if len(values) == 1:
        return fmt.format(median)
    return f"{fmt.format(median)} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def _ratio(ours: list[float], theirs: list[float]) -> str:
    if not ours or not theirs or statistics.median(theirs) == 0:
        return "-"
    return f"{statistics.median(ours) / statistics.median(theirs):.2f}x"


def live_section(data: dict[str, Any]) -> list[str]:
    runs = data["runs"]
    lines = [
        "## Live migration (L1-L4)",
        "",
        f"Guest: 512 MiB, 384 MiB working set; {data['pairs']} rounds, tools alternating "
        "within each round. Medians with (min-max). Ratios are vmigrate's median over the "
        "peer's. Guest gap = largest gap between heartbeats on host time.",
        "",
    ]
    for scenario in sorted({r["scenario"] for r in runs}):
        mine = [r for r in runs if r["scenario"] == scenario]
        tools = list(dict.fromkeys(r["tool"] for r in mine))
        ours = [r for r in mine if r["tool"] == "vmigrate"]
        lines += [
            f"### {scenario}",
            "",
            "| tool | ok | total s | vmigrate ÷ peer | libvirt downtime ms | guest gap ms "
            "| sent MiB | passes |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for tool in tools:
            these = [r for r in mine if r["tool"] == tool]
            ok = [r for r in these if _ok(r)]
            totals = [r["total_s"] for r in ok]
            ratio = (
                "" if tool == "vmigrate" else _ratio([r["total_s"] for r in ours if _ok(r)], totals)
            )
            downtimes = [r["downtime_ms"] for r in ok if r["downtime_ms"] is not None]
            gaps = [r["guest_gap_ms"] for r in ok if r["guest_gap_ms"] is not None]
            sent = [r["bytes_sent"] / MIB for r in ok]
            passes = [float(r["passes"]) for r in ok]
            lines.append(
                f"| {tool} | {len(ok)}/{len(these)} | {_spread(totals)} | {ratio} | "
                f"{_spread(downtimes, '{:.0f}')} | {_spread(gaps, '{:.0f}')} | "
                f"{_spread(sent, '{:.0f}')} | {_spread(passes, '{:.0f}')} |"
            )
        failed = [r for r in mine if not _ok(r)]
        for run in failed:
            lines.append(f"\n- round {run['round']} {run['tool']}: {run['outcome']}")
        actions = [f"round {r['round']}: {', '.join(r['actions'])}" for r in ours if r["actions"]]
        if actions:
            lines += ["", "vmigrate's policy actions: " + "; ".join(actions)]
        lines.append("")
    return lines


def cold_section(data: dict[str, Any]) -> list[str]:
    runs = data["runs"]
    lines = [
        "## Cold migration (C1-C3)",
        "",
        f"Over the {data['link']} lab link to hostB, {data['pairs']} round(s), tools "
        "alternating. Link bound = allocated bytes / link throughput measured in the same run "
        f"({runs[0]['link_mib_s'] if runs else '-'} MiB/s). vmigrate's time includes "
        "verifying a checksum of every file on both sides; the virsh two-step verifies "
        "nothing. Regenerate: `sudo .venv/bin/python -m bench.cold && "
        ".venv/bin/python -m bench.report`.",
        "",
        "| scenario | tool | ok | total s | ÷ link bound | ÷ virsh two-step | through link MiB "
        "| dest. allocated ÷ source | bytes equal |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for scenario in sorted({r["scenario"] for r in runs}):
        mine = [r for r in runs if r["scenario"] == scenario]
        virsh = [r["total_s"] for r in mine if r["tool"] != "vmigrate" and _ok(r)]
        for tool in dict.fromkeys(r["tool"] for r in mine):
            these = [r for r in mine if r["tool"] == tool]
            ok = [r for r in these if _ok(r)]
            totals = [r["total_s"] for r in ok]
            bound = [r["allocated_bytes"] / MIB / r["link_mib_s"] for r in ok]
            alloc = [r["destination_allocated"] / max(1, r["allocated_bytes"]) for r in ok]
            lines.append(
                f"| {scenario} {data['scenarios'].get(scenario, '')} | {tool} | "
                f"{len(ok)}/{len(these)} | {_spread(totals)} | {_ratio(totals, bound)} | "
                f"{_ratio(totals, virsh) if tool == 'vmigrate' else ''} | "
                f"{_spread([r['link_bytes'] / MIB for r in ok], '{:.0f}')} | "
                f"{_spread(alloc, '{:.2f}')} | {all(r['identical'] for r in ok)} |"
            )
    lines += [
        "",
        "scp and rsync --sparse are not measured yet: they need an sshd on hostB's loopback "
        "address, which the lab does not run.",
        "",
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.report")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--doc", type=Path, default=DOC)
    args = parser.parse_args()
    args.doc.write_text(render(args.results))


def render(results: Path) -> str:
    parts = [
        "# Benchmarks",
        "",
        "Measured on our lab (two libvirt hosts on one machine, TCG guests). Figures move "
        "from run to run on shared machines; every table is one run of the command shown, "
        "tools side by side. Never asserted in tests.",
        "",
    ]
    live = results / "live.json"
    if live.exists():
        data = json.loads(live.read_text())
        env = data["environment"]
        parts += [
            f"Environment: QEMU {env['qemu']}, libvirt {env['libvirt']}, host kernel "
            f"{env['kernel']}, {env['cpus']} CPUs, {env['memory']} memory, "
            f"{env['date']}.",
            "",
            "Regenerate: `sudo .venv/bin/vmigrate lab up && sudo .venv/bin/python -m "
            "bench.live --pairs 3 && .venv/bin/python -m bench.report`",
            "",
        ]
        parts += live_section(data)
    cold = results / "cold.json"
    if cold.exists():
        parts += cold_section(json.loads(cold.read_text()))
    check = results / "check.json"
    if check.exists():
        data = json.loads(check.read_text())
        parts += [
            "## Pre-flight check speed",
            "",
            f"`vmigrate check` of a lab VM with a shared disk (live mode, every check "
            f"family, the shared-storage probe included), {len(data['seconds'])} runs: "
            f"median {statistics.median(data['seconds']) * 1000:.0f} ms "
            f"(min {min(data['seconds']) * 1000:.0f}, max "
            f"{max(data['seconds']) * 1000:.0f}) in-process; the CLI adds Python "
            f"start-up (~0.5 s). Regenerate: `sudo .venv/bin/python -m bench.check`.",
            "",
        ]
    return "\n".join(parts)


if __name__ == "__main__":
    main()
