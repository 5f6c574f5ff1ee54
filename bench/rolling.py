"""R1: a three-host rolling upgrade in the lab, predicted against measured.

    sudo .venv/bin/python -m bench.rolling && .venv/bin/python -m bench.report

hostC is restarted on Debian 12's own QEMU 7.2 / libvirt 9.0 (the lab's `bookworm`
release), three idle guests are spread over the hosts (256 MiB on hostA and hostB, 128 MiB
on hostC: QEMU 7.2 under TCG corrupts a guest that writes memory while it moves live,
docs/lab.md), then `vmigrate rolling --cluster lab --run 'vmigrate lab host upgrade {host}'`
rolls the cluster, the link measured as a user's roll would (no --bandwidth). Recorded: the
roll's predicted and measured duration, whole and per step, every move with its guest gap,
and each guest's heartbeat over the whole roll (contiguous, largest gap)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS = Path("bench/results/rolling.json")
#: (name, host, memory MiB)
GUESTS = [("r1-a", "hostA", 256), ("r1-b", "hostB", 256), ("r1-c", "hostC", 128)]


def _prepare() -> None:
    from vmigrate.lab.config import HOST_C
    from vmigrate.lab.host_upgrade import restart_on_release
    from vmigrate.lab.lifecycle import lab_up
    from vmigrate.lab.releases import BOOKWORM
    from vmigrate.lab.state import running_lab_hosts
    from vmigrate.lab.vms import LabVmRequest, create_vm

    if HOST_C in running_lab_hosts():
        restart_on_release(HOST_C.name, BOOKWORM)
    else:
        lab_up(3, versions=[f"{HOST_C.name}={BOOKWORM.name}"])
    for name, host, memory in GUESTS:
        create_vm(LabVmRequest(name, host=host, memory_mib=memory))


def _host_c_back() -> None:
    """hostC on the machine's packages again, whatever the roll did (the lab's usual state
    for whoever uses it next)."""
    from vmigrate.errors import VmigrateError
    from vmigrate.lab.config import HOST_C
    from vmigrate.lab.host_upgrade import upgrade_host

    try:
        upgrade_host(HOST_C.name)
    except VmigrateError as err:
        print(f"hostC left as it is: {err}", file=sys.stderr)


def _roll(store: Path) -> tuple[int, dict[str, Any], float]:
    from vmigrate.events import Done, decode

    vmigrate = str(Path(sys.executable).parent / "vmigrate")
    started = time.monotonic()
    result = subprocess.run(
        [
            *(sys.executable, "-m", "vmigrate.cli.main", "rolling", "--cluster", "lab"),
            *("--run", f"{vmigrate} lab host upgrade {{host}}", "--store", str(store), "--json"),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=1800,
    )
    wall = time.monotonic() - started
    events = [decode(json.loads(line)) for line in result.stdout.splitlines() if line[:1] == "{"]
    done = [e.report for e in events if isinstance(e, Done)]
    if not done:
        raise SystemExit(f"the roll gave no report: {result.stderr[-2000:]}")
    return result.returncode, done[-1], wall


def run() -> dict[str, Any]:
    from vmigrate.lab.heartbeat import heartbeat_report
    from vmigrate.lab.vms import remove_vm

    _prepare()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            code, report, wall = _roll(Path(tmp) / "jobs.sqlite")
        beats = {name: heartbeat_report(name).to_dict() for name, _h, _m in GUESTS}
    finally:
        for name, _host, _memory in GUESTS:
            remove_vm(name)
        _host_c_back()
    steps = [
        {
            "name": s["name"],
            "state": s["state"],
            "seconds": s["seconds"],
            "predicted_s": s["predicted_s"],
            "moves": s["detail"].get("moved", []),
        }
        for s in report["steps"]
    ]
    return {
        "date": time.strftime("%Y-%m-%d"),
        "exit_code": code,
        "ok": report["ok"],
        "wall_s": round(wall, 1),
        "total_s": report["total_s"],
        "steps_s": round(sum(s["seconds"] or 0.0 for s in steps), 1),
        "predicted_total_s": report["predicted"]["total_s"],
        "assumed": report["predicted"]["assumed"],
        "order": report["order"]["steps"],
        "hosts": report["hosts"],
        "steps": steps,
        "heartbeats": {
            name: {k: b[k] for k in ("contiguous", "largest_gap_ms", "beats")}
            for name, b in beats.items()
        },
    }


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _sum(data: dict[str, Any], key: str) -> float:
    moving = [s for s in data["steps"] if s["name"].split()[0] in ("evacuate", "return")]
    return float(sum(s[key] or 0.0 for s in moving))


def section(data: dict[str, Any]) -> list[str]:
    """R1's part of docs/benchmarks.md."""
    hosts = ", ".join(
        f"{h} QEMU {e['before']['qemu']} -> {e.get('after', {}).get('qemu', '?')}"
        for h, e in data["hosts"].items()
    )
    assumed = data["assumed"]
    lines = [
        "## A rolling upgrade of three hosts (R1)",
        "",
        "hostC starts on Debian 12's own QEMU 7.2 and libvirt 9.0, hostA and hostB on the "
        "machine's; three idle guests (256 MiB on hostA and hostB, 128 MiB on hostC). "
        "`vmigrate rolling --cluster lab --run 'vmigrate lab host upgrade {host}'`, the link "
        f"measured. Run of {data['date']}: exit {data['exit_code']}, order "
        f"{' -> '.join('+'.join(s) for s in data['order'])}; {hosts}.",
        "",
        f"Whole roll: predicted {_s(data['predicted_total_s'])} s, its steps measured "
        f"{_s(data['steps_s'])} s; the job {_s(data['total_s'])} s and the command's wall time "
        f"{_s(data['wall_s'])} s also count reading every host, planning and predicting first, "
        "and the final report. The prediction assumes "
        f"{assumed['command_s']:g} s per command and {assumed['health_s']:g} s per health "
        f"check (the defaults; `--command-estimate`, `--health-estimate`), "
        f"{assumed['gather_s']:g} s of facts and checks before each evacuation and return, "
        "and each return as long as its evacuation.",
        "",
        f"The moves' steps alone (evacuations and returns, the fleet's model): predicted "
        f"{_s(_sum(data, 'predicted_s'))} s, measured {_s(_sum(data, 'seconds'))} s. A "
        "health check without `--test-domain` is one connection and a read of the host's "
        "facts (under 0.05 s here: 0.0).",
        "",
        "| step | state | predicted s | measured s | moves (guest gap) |",
        "|---|---|---|---|---|",
    ]
    for step in data["steps"]:
        moves = ", ".join(
            f"{m['vm']} {m['source']}->{m['destination']} {_s(m['seconds'])} s"
            + (f" ({m['gap_ms']:.0f} ms)" if m.get("gap_ms") is not None else "")
            for m in step["moves"]
        )
        lines.append(
            f"| {step['name']} | {step['state']} | {_s(step['predicted_s'])} | "
            f"{_s(step['seconds'])} | {moves or '-'} |"
        )
    lines += [
        "",
        "Each guest over the whole roll (heartbeat every 10 ms, host-side timestamps): "
        + "; ".join(
            f"{name} {'contiguous' if b['contiguous'] else 'NOT contiguous'}, largest gap "
            f"{b['largest_gap_ms']:.0f} ms"
            for name, b in data["heartbeats"].items()
        )
        + ".",
        "",
        "Regenerate: `sudo .venv/bin/python -m bench.rolling && .venv/bin/python -m bench.report`.",
        "",
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.rolling")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--print", action="store_true", help="print the section of the results, run nothing"
    )
    args = parser.parse_args()
    if args.print:
        print("\n".join(section(json.loads(args.out.read_text()))))
        return
    data = run()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, indent=2) + "\n")
    print("\n".join(section(data)))


if __name__ == "__main__":
    main()
