"""What an operator reads, at 80 and 120 columns, from data recorded in the real lab: `check`
(pass, warn, fail), `jobs`, `jobs show`, `hosts`, the evacuation plan and `lab status`.

Each rendering is compared with its golden file (VMIGRATE_UPDATE_GOLDEN=1 rewrites them), and
checked for what the issue asks of every table: no VM name, host name, verdict or state cut,
nothing wrapped in the middle of a word, no line wider than the terminal (but a single word
longer than it, such as a URI, on its own line)."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from rich.text import Text

from tests.unit.test_fleet_recorded import evacuation
from vmigrate.cli.host_names import HostNames
from vmigrate.cli.jobs import move_of_a_fleet_job
from vmigrate.cli.layout import ELLIPSIS, print_lines, shorten, wrap
from vmigrate.cli.render_findings import report_from_dict, report_lines
from vmigrate.cli.render_hosts import hosts_lines
from vmigrate.cli.render_jobs import JobFilter, jobs_lines, show_lines, started_at
from vmigrate.cli.render_lab import lab_status_lines
from vmigrate.cli.render_plan import balance_plan_lines, evacuation_plan_lines
from vmigrate.fleet.balance import plan_balance
from vmigrate.fleet.plan import plan_moves
from vmigrate.hosts import HostRef
from vmigrate.model import CheckReport, Verdict
from vmigrate.owner import Liveness, ProcessIdentity
from vmigrate.store import JobRecord, JobStore

DATA = Path(__file__).parent / "data"
RECORDED = DATA / "recorded27"
GOLDEN = DATA / "golden"
STORES = DATA / "stores"
WIDTHS = (80, 120)
WIDE = 10_000  # nothing wraps, nothing is cut: every word as it is
UPDATE = os.environ.get("VMIGRATE_UPDATE_GOLDEN") == "1"

Lines = Callable[[int], list[Text]]


@pytest.fixture(autouse=True)
def utc() -> Iterator[None]:
    """Times print in the local zone: the golden files are in UTC."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    yield
    if before is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = before
    time.tzset()


def text_at(lines: Lines, width: int) -> str:
    out = io.StringIO()
    console = Console(width=width, file=out, color_system=None, force_terminal=False)
    print_lines(console, lines(width))
    return out.getvalue()


def assert_readable(lines: Lines, width: int, whole: set[str]) -> str:
    """The text at `width`: no line too wide, no word broken, every name in `whole` intact."""
    text = text_at(lines, width)
    vocabulary = set(text_at(lines, WIDE).split())
    stems = {word.rstrip(",;:") for word in vocabulary}
    for line in text.splitlines():
        assert len(line) <= width or len(line.split()) == 1, f"too wide: {line!r}"
        for word in line.split():
            if word.endswith(ELLIPSIS):  # cut after a whole word
                assert word.removesuffix(ELLIPSIS) in stems, f"cut mid-word: {word!r}"
            else:
                assert word in vocabulary, f"broken word {word!r} in {line!r}"
    for name in whole:
        pattern = rf"(?<![\w.-]){re.escape(name)}(?![\w-]|{ELLIPSIS})"
        assert re.search(pattern, text), f"{name!r} is cut or missing at {width} columns"
    return text


def assert_golden(name: str, text: str) -> None:
    path = GOLDEN / f"{name}.txt"
    if UPDATE:
        path.write_text(text, encoding="utf-8")
    assert path.read_text(encoding="utf-8") == text, f"differs from {path}"


# check


def recorded_report(name: str) -> CheckReport:
    return report_from_dict(json.loads((RECORDED / f"check-{name}.json").read_text()))


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("name", ["pass", "warn", "fail"])
def test_check_reads_verdict_first_then_one_line_per_check(name: str, width: int) -> None:
    report = recorded_report(name)
    text = assert_readable(
        lambda w: report_lines(report, w),
        width,
        {"hostA", "hostB", report.vm} | {f.check for f in report.findings},
    )
    assert_golden(f"check-{name}-{width}", text)
    lines = text.splitlines()
    first = {"pass": "can go ahead:", "warn": "can go ahead, with warnings:", "fail": "will not"}
    assert lines[0].startswith(first[name])
    for finding in report.findings:
        listed = [
            line for line in lines if line.split()[:2] == [finding.verdict.value, finding.check]
        ]
        assert listed, f"no line for {finding.check}"
        if finding.verdict in (Verdict.WARN, Verdict.FAIL):
            # in full below: the summary, the evidence, the fix
            flat = " ".join(text.split())
            assert " ".join(finding.summary.split()) in flat
            assert " ".join(f"fix: {finding.fix}".split()) in flat
            for key in finding.evidence:
                assert f"{key}:" in text
    passed = [f for f in report.findings if f.verdict is Verdict.PASS]
    assert all(str(f.evidence) not in text for f in passed if f.evidence)
    assert len(lines) <= 40 or name == "fail"


def test_verbose_check_shows_every_checks_evidence() -> None:
    report = recorded_report("warn")
    text = text_at(lambda w: report_lines(report, w, verbose=True), 80)
    flat = " ".join(text.split())
    for finding in report.findings:
        assert " ".join(finding.summary.split()) in flat
        for key in finding.evidence:
            assert f"{key}:" in text


def test_before_a_move_only_what_needs_attention_is_listed() -> None:
    report = recorded_report("warn")
    text = text_at(lambda w: report_lines(report, w, brief=True), 80)
    assert "versions.postcopy-resume" in text
    assert "drivers.source" not in text
    assert text.splitlines()[0].startswith("can go ahead, with warnings:")


# jobs


def recorded_store(name: str, tmp_path: Path) -> JobStore:
    """A copy: opening a store may bring its schema up to date."""
    path = tmp_path / name
    shutil.copyfile(STORES / name, path)
    return JobStore(path)


def store_rows(name: str, tmp_path: Path) -> list[JobRecord]:
    return recorded_store(name, tmp_path).jobs()


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("store_name", ["lab-issue27", "lab-long-names"])
def test_jobs_list_names_hosts_and_keeps_vm_names_and_states_whole(
    store_name: str, width: int, tmp_path: Path
) -> None:
    records = store_rows(f"{store_name}.sqlite", tmp_path)
    now = max(r.started for r in records) + 600
    names = HostNames()
    text = assert_readable(
        lambda w: jobs_lines(records, w, names, now=now),
        width,
        {r.vm for r in records} | {r.state for r in records} | {"hostA", "hostB"},
    )
    assert_golden(f"jobs-{store_name}-{width}", text)
    assert "qemu+" not in text and "127.0.0" not in text
    assert re.search(r"\b\d\d:\d\d\b", text)


def test_jobs_started_another_day_show_the_date() -> None:
    today = time.mktime((2026, 12, 7, 15, 0, 0, 0, 0, -1))
    assert started_at(today - 3600, today) == "14:00"
    assert started_at(today - 2 * 86400, today) == "2026-12-05"


def test_jobs_filters(tmp_path: Path) -> None:
    records = store_rows("lab-long-names.sqlite", tmp_path)
    names = HostNames()
    assert [r.id for r in JobFilter(state="rolled back").apply(records, names)] == [5, 4]
    assert [r.id for r in JobFilter(host="hostA", last=2).apply(records, names)] == [6, 5]
    assert [r.id for r in JobFilter(vm="t-storage-diskless").apply(records, names)] == [1]
    # a URI names the same host as its name
    uri = "qemu+tls://127.0.0.2/system?pkipath=/var/lib/vmigrate-lab/client/pki"
    assert len(JobFilter(host=uri).apply(records, names)) == len(records)


def test_a_hosts_file_name_wins_over_the_uri() -> None:
    uri = "qemu+ssh://root@10.1.2.3/system"
    names = HostNames({"rack3-kvm7": HostRef("rack3-kvm7", uri)})
    assert names.name(uri) == "rack3-kvm7"
    assert names.name("qemu+ssh://root@10.9.9.9/system") == "10.9.9.9"
    assert names.name("hostB") == "hostB"


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("job_id", [1, 2, 3, 4])
def test_jobs_show_reads_top_down(job_id: int, width: int, tmp_path: Path) -> None:
    store = recorded_store("lab-issue27.sqlite", tmp_path)
    record = store.job(job_id)
    samples, actions = store.samples(job_id), store.actions(job_id)
    names = HostNames()
    fleet_move = move_of_a_fleet_job(store, record)
    assert (fleet_move is not None) == (job_id == 4)  # job 4 is the evacuation's move
    text = assert_readable(
        lambda w: show_lines(record, samples, actions, w, names, fleet_move),
        width,
        {record.vm, record.state, "hostA", "hostB"},
    )
    assert_golden(f"jobs-show-{job_id}-{width}", text)
    order = ["outcome:", "time:"]
    if record.kind == "live":
        order += ["downtime:", "gap:", "actions", "samples"]
    positions = [text.index(word) for word in order]
    assert positions == sorted(positions)
    assert record.source in text  # the URI stays in `jobs show`
    for action in actions:
        assert " ".join(action.reason.split()) in " ".join(text.split())
    if fleet_move is not None:
        assert "its plan predicted 5.5 s" in " ".join(text.split())
        assert "gap:       74 ms" in text


# the evacuation plan and the lab


def recorded_plan() -> dict[str, Any]:
    plan: dict[str, Any] = json.loads((RECORDED / "evacuate-plan.json").read_text())
    return plan


def refused_plan() -> dict[str, Any]:
    return plan_moves(evacuation(capacities={"hostB": 1024, "hostC": 1280})).to_dict()


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("which", ["placed", "refused"])
def test_evacuation_plan(which: str, width: int) -> None:
    plan = recorded_plan() if which == "placed" else refused_plan()
    vms = {m["vm"] for m in plan["moves"]} | {u["vm"] for u in plan["unplaced"]}
    hosts = {m["destination"] for m in plan["moves"]}
    text = assert_readable(lambda w: evacuation_plan_lines(plan, w), width, vms | hosts)
    assert_golden(f"evacuate-plan-{which}-{width}", text)
    if which == "refused":
        assert text.startswith(f"plan to empty hostA: {len(plan['unplaced'])} VM(s) with nowhere")
        flat = " ".join(text.split())
        assert "hostB: needs 640 MiB, 512 MiB free" in flat


@pytest.mark.parametrize("width", WIDTHS)
def test_lab_status(width: int) -> None:
    hosts = json.loads((RECORDED / "lab-status.json").read_text())["hosts"]
    vms = {vm["name"] for host in hosts for vm in host["vms"]}
    text = assert_readable(
        lambda w: lab_status_lines(hosts, w), width, vms | {h["name"] for h in hosts}
    )
    assert_golden(f"lab-status-{width}", text)
    # a VM and its state are never split over two lines
    assert re.search(r"rec27-web\s\(running\)", text.replace("\n", "|"))


# the layout itself


def test_shorten_cuts_after_a_whole_word() -> None:
    assert (
        shorten("libvirt 11.3.0 on hostB crashes when it resumes", 24) == "libvirt 11.3.0 on hostB…"
    )
    assert shorten("short", 24) == "short"
    assert shorten("averyveryverylongword and more", 5) == "averyveryverylongword…"


def test_wrap_never_breaks_a_word() -> None:
    uri = "qemu+tls://127.0.0.3/system?pkipath=/var/lib/vmigrate-lab/client/pki"
    assert wrap(f"see {uri} now", 20) == ["see", uri, "now"]


@pytest.mark.parametrize("width", WIDTHS)
def test_balance_plan(width: int) -> None:
    from tests.unit.test_balance import four_guests, lab

    plan = plan_balance(lab(four_guests())).to_dict()
    vms = {m["vm"] for m in plan["moves"]}
    text = assert_readable(
        lambda w: balance_plan_lines(plan, w), width, vms | {"hostA", "hostB", "hostC"}
    )
    assert text.startswith("imbalance 1.414 -> 0.202 (threshold 0.1): 2 move(s)")


@pytest.mark.parametrize("width", WIDTHS)
def test_hosts(width: int) -> None:
    rows = json.loads((RECORDED / "hosts.json").read_text())
    vms = {vm["name"] for row in rows for vm in row.get("vms", [])}
    text = assert_readable(
        lambda w: hosts_lines(rows, w), width, vms | {r["name"] for r in rows} | {"maintenance"}
    )
    assert_golden(f"hosts-{width}", text)
    in_maintenance = [r for r in rows if r["maintenance"]]
    assert in_maintenance  # recorded with hostB marked: its reason in full below the table
    flat = " ".join(text.split())
    for row in in_maintenance:
        assert f"{row['name']} is in maintenance: {row['maintenance']}" in flat


def test_a_job_running_on_another_machine_names_who_drives_it(tmp_path: Path) -> None:
    record = replace(
        store_rows("lab-issue27.sqlite", tmp_path)[-1],
        state="running",
        finished=None,
        outcome=None,
        owner=ProcessIdentity(4242, 1, "boot", "ops@admin-2"),
        liveness=Liveness.ELSEWHERE,
    )
    names = HostNames()
    listed = " ".join(text_at(lambda w: jobs_lines([record], w, names), 80).split())
    assert "running" in listed
    assert "driven by process 4242 on ops@admin-2 (another machine)" in listed
    shown = text_at(lambda w: show_lines(record, [], [], w, names), 80)
    assert "driven by: process 4242 on ops@admin-2 (another machine)" in shown


def test_lab_status_with_a_vm_name_longer_than_its_column() -> None:
    # the lab tests' names: `t-` and 40 characters of the test's name and 4 hex digits
    hosts = json.loads((RECORDED / "lab-status.json").read_text())["hosts"]
    long_name = "t-test-lab-status-fits-80-columns-67d7-and-more"
    hosts[1]["vms"] = [{"name": long_name, "state": "running", "persistent": True}]
    text = assert_readable(lambda w: lab_status_lines(hosts, w), 80, {long_name, "hostB"})
    assert f"    {long_name}\u00a0(running)" in text.splitlines()  # under its row, whole
