"""`vmigrate serve` against the real lab, as a team would use it: one HTTPS server for the
module (its own store, tokens and certificate), moves started through the API and followed
over SSE, cancelled, refused while another job holds the VM; an evacuation planned then carried
out; /metrics during a move; the dashboard in headless Chromium, with screenshots."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from vmigrate.errors import VmigrateError
from vmigrate.lab import link
from vmigrate.lab.lifecycle import HostStatus
from vmigrate.lab.vms import LabVmRequest, create_vm, locate_vm, remove_vm
from vmigrate.store import JobStore, default_store_path, store_files

from .helpers import VMIGRATE, run_cli

pytestmark = pytest.mark.lab


@dataclass
class Served:
    url: str
    store: Path
    log: Path
    operate: str
    read: str
    cert: Path
    process: subprocess.Popen[bytes]
    screenshots: Path

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        context = ssl.create_default_context(cafile=str(self.cert))  # the printed certificate
        return httpx.Client(base_url=self.url, headers=headers, verify=context, timeout=120)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _token(tokens: Path, name: str, role: str) -> str:
    made = run_cli("serve", "--tokens", str(tokens), "token", "add", name, "--role", role)
    assert made.returncode == 0, made.stderr
    return made.stdout.strip()


@pytest.fixture(scope="module")
def served(lab: list[HostStatus]) -> Iterator[Served]:
    base = Path(tempfile.mkdtemp(prefix="vmigrate-serve-test-"))
    tokens, store, log = base / "tokens.json", base / "jobs.sqlite", base / "server.log"
    operate, read = _token(tokens, "ops", "operate"), _token(tokens, "viewer", "read")
    hosts = base / "hosts.toml"  # none: the running lab's hosts, cluster `lab`
    hosts.write_text("")
    port = _free_port()
    env = {**os.environ, "XDG_STATE_HOME": str(base / "state")}
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*VMIGRATE, "serve", "--listen", f"127.0.0.1:{port}", "--store", str(store),
             "--hosts", str(hosts), "--tokens", str(tokens),
             "--inventory-ttl", "2"],
            stdout=out, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    cert = base / "state" / "vmigrate" / "serve" / "server-127.0.0.1.crt"
    screenshots = base / "screenshots"
    screenshots.mkdir()
    print(f"\nserver log: {log}\nscreenshots: {screenshots}")
    served = Served(f"https://127.0.0.1:{port}", store, log, operate, read, cert, process,
                    screenshots)  # fmt: skip
    deadline = time.monotonic() + 30
    while True:
        with contextlib.suppress(httpx.HTTPError, OSError, ssl.SSLError):
            if cert.exists() and served.client().get("/api/health").status_code == 200:
                break
        assert process.poll() is None, log.read_text()
        assert time.monotonic() < deadline, f"the server did not answer: {log.read_text()}"
        time.sleep(0.3)
    printed = log.read_text()
    assert re.search(r"SHA-256 fingerprint: ([0-9A-F]{2}:){31}[0-9A-F]{2}", printed), printed
    yield served
    process.terminate()
    process.wait(timeout=20)


@pytest.fixture
def guests(vm_name: str) -> Iterator[Callable[..., str]]:
    made: list[str] = []

    def make(suffix: str, **fields: Any) -> str:
        name = f"{vm_name[:36]}-{suffix}"
        create_vm(LabVmRequest(name, **fields))
        made.append(name)
        return name

    yield make
    link.reset()
    for name in made:
        with contextlib.suppress(VmigrateError):
            remove_vm(name)


def _job(store: Path, job_id: int) -> Any:
    with JobStore(store) as opened:
        return opened.job(job_id)


def _wait_finished(store: Path, job_id: int, timeout: float = 180) -> Any:
    deadline = time.monotonic() + timeout
    while (record := _job(store, job_id)).state == "running":
        assert time.monotonic() < deadline, f"job {job_id} still running"
        time.sleep(0.5)
    return record


def _sse(
    served: Served, path: str, last_id: int | None, stop_after: int | None
) -> list[dict[str, Any]]:
    """Frames of one SSE connection: until the stream ends, or `stop_after` events."""
    frames: list[dict[str, Any]] = []
    headers = {"Last-Event-ID": str(last_id)} if last_id is not None else {}
    with served.client(served.read) as client, client.stream("GET", path, headers=headers) as r:
        assert r.status_code == 200, r.read()
        block: dict[str, str] = {}
        for line in r.iter_lines():
            if line == "":
                if "data" in block:
                    frames.append(block)
                    if stop_after is not None and len(frames) >= stop_after:
                        return frames
                block = {}
            elif not line.startswith(":") and ": " in line:
                key, value = line.split(": ", 1)
                block[key] = value
    return frames


def test_tokens_are_required_and_a_read_token_cannot_move(
    served: Served, guests: Callable[..., str]
) -> None:
    vm = guests("ro", memory_mib=192)
    with served.client() as anonymous:
        assert anonymous.get("/api/inventory").status_code == 401
        assert anonymous.get("/metrics").status_code == 401
    with served.client(served.read) as viewer:
        hosts = {h["name"]: h for h in viewer.get("/api/inventory").json()["hosts"]}
        assert {"hostA", "hostB"} <= set(hosts)
        assert vm in [v["name"] for v in hosts["hostA"]["vms"]]
        move = {"vm": vm, "from": "hostA", "to": "hostB"}
        refused = viewer.post("/api/actions/live", json=move)
        assert refused.status_code == 403
    assert locate_vm(vm) == {"hostA": "running"}
    with served.client(served.operate) as ops:
        unknown = ops.post(
            "/api/actions/live", json={"vm": "ghost", "from": "hostA", "to": "hostB"}
        )
        assert unknown.status_code == 404 and "no VM named 'ghost'" in unknown.json()["error"]


def test_a_live_move_through_the_api_streams_every_event_and_the_metrics_follow(
    served: Served, guests: Callable[..., str]
) -> None:
    vm = guests("live", memory_mib=384, working_set_mib=256, dirty_rate_mib=20)
    link.shape("400mbit")
    with served.client(served.operate) as ops:
        started = ops.post("/api/actions/live", json={"vm": vm, "from": "hostA", "to": "hostB"})
    assert started.status_code == 202, started.text
    job_id = started.json()["job_id"]
    # /metrics while it runs: remaining bytes fall
    remaining: list[float] = []
    scraping = True

    def scrape() -> None:
        pattern = re.compile(
            rf'^vmigrate_migration_data_remaining_bytes\{{[^}}]*job="{job_id}"[^}}]*\}} (\S+)$',
            re.M,
        )
        with served.client(served.read) as viewer:
            while scraping:
                found = pattern.search(viewer.get("/metrics").text)
                if found:
                    remaining.append(float(found.group(1)))
                time.sleep(0.4)

    scraper = threading.Thread(target=scrape)
    scraper.start()
    try:
        # SSE: a first connection dropped after 3 events, then resumed with Last-Event-ID
        first = _sse(served, f"/api/jobs/{job_id}/events", None, stop_after=3)
        rest = _sse(served, f"/api/jobs/{job_id}/events", int(first[-1]["id"]), None)
    finally:
        scraping = False
        scraper.join()
    record = _wait_finished(served.store, job_id)
    assert record.state == "completed", record.outcome
    assert locate_vm(vm) == {"hostB": "running"}
    frames = [f for f in first + rest if f.get("event") != "end"]
    seen = [int(f["id"]) for f in frames]
    with JobStore(served.store) as store:
        stored = store.events_after(0, job_id=job_id, limit=100_000)
        finished_live = [r for r in store.jobs_of_kind("live") if r.state == "completed"]
    assert seen == [e.seq for e in stored], "the stream lost, repeated or reordered events"
    assert rest[-1].get("event") == "end"
    done = json.loads(frames[-1]["data"])
    assert done["kind"] == "done" and done["event"]["outcome"] == record.state
    # from the first pass on (QEMU's setup phase reports nothing remaining yet)
    moving = remaining[next((i for i, v in enumerate(remaining) if v > 0), len(remaining)) :]
    assert len(moving) >= 3 and min(moving[1:]) < moving[0], remaining
    with served.client(served.read) as viewer:
        text = viewer.get("/metrics").text
        shown = viewer.get(f"/api/jobs/{job_id}").json()
    counted = re.search(r'^vmigrate_moves_total\{kind="live",outcome="completed"\} (\S+)$', text,
                        re.M)  # fmt: skip
    assert counted and float(counted.group(1)) == len(finished_live)
    assert shown["state"] == "completed" and shown["samples"]


def test_cancel_and_a_second_action_on_the_vm_refused(
    served: Served, guests: Callable[..., str]
) -> None:
    vm = guests("cancel", memory_mib=384, working_set_mib=256, dirty_rate_mib=200)
    link.shape("1gbit")
    body = {"vm": vm, "from": "hostA", "to": "hostB", "policy": "safe", "max_downtime_ms": 3000}
    with served.client(served.operate) as ops:
        started = ops.post("/api/actions/live", json=body)
        assert started.status_code == 202, started.text
        job_id = started.json()["job_id"]
        deadline = time.monotonic() + 60
        while not ops.get(f"/api/jobs/{job_id}").json()["samples"]:
            assert time.monotonic() < deadline
            time.sleep(0.5)
        # a second action on the VM, from the API and from the CLI: refused, nothing changed
        again = ops.post("/api/actions/cold", json={"vm": vm, "from": "hostA", "to": "hostB"})
        assert again.status_code == 409, again.text
        assert f"live job {job_id}" in again.json()["error"]
        assert f"vmigrate jobs cancel {job_id}" in again.json()["fix"]
        cli = run_cli("cold", vm, "--from", "hostA", "--to", "hostB", "--store", str(served.store))
        assert cli.returncode == 1 and str(job_id) in cli.stderr, cli.stderr
        cancelled = ops.post(f"/api/jobs/{job_id}/cancel")
        assert cancelled.status_code == 200, cancelled.text
    record = _wait_finished(served.store, job_id)
    assert record.state == "cancelled", record
    assert locate_vm(vm) == {"hostA": "running"}


def test_an_evacuation_dry_run_then_carried_out(served: Served, guests: Callable[..., str]) -> None:
    vm = guests("evac", host="hostB", memory_mib=192)
    with served.client(served.operate) as ops:
        evacuation = {"host": "hostB", "to": ["hostA"]}
        dry = ops.post("/api/actions/evacuate", json={**evacuation, "dry_run": True})
        assert dry.status_code == 200, dry.text
        plan = next(e for e in dry.json()["output"] if e.get("event") == "plan")
        assert [(m["vm"], m["destination"]) for m in plan["moves"]] == [(vm, "hostA")]
        assert locate_vm(vm) == {"hostB": "running"}  # a dry run moves nothing
        started = ops.post("/api/actions/evacuate", json=evacuation)
        assert started.status_code == 202, started.text
        job_id = started.json()["job_id"]
        record = _wait_finished(served.store, job_id)
        assert record.state == "completed", record.report
        assert locate_vm(vm) == {"hostA": "running"}
        detail = ops.get(f"/api/jobs/{job_id}").json()
        assert [m["state"] for m in detail["moves"]] == ["completed"]
        assert ops.get("/api/maintenance").json()[0]["host"] == "hostB"
        ended = ops.post("/api/actions/maintenance-end", json={"host": "hostB"})
        assert ended.status_code == 200, ended.text
        assert ops.get("/api/maintenance").json() == []


def test_the_dashboard_in_chromium(served: Served, guests: Callable[..., str]) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as seen
    from selenium.webdriver.support.ui import Select, WebDriverWait

    chromium = shutil.which("chromium")
    assert chromium and Path("/usr/bin/chromedriver").exists(), "apt-get install chromium-driver"
    vm = guests("web", memory_mib=384, working_set_mib=256, dirty_rate_mib=60)
    link.shape("400mbit")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--window-size=1366,900", "--ignore-certificate-errors"):  # fmt: skip
        options.add_argument(arg)
    browser = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    wait = WebDriverWait(browser, 60)

    def shot(name: str) -> None:
        browser.save_screenshot(str(served.screenshots / f"{name}.png"))

    def click(css: str) -> None:
        """Click, again if the page redrew the element meanwhile (the cluster view
        refreshes every 10 s)."""
        from selenium.common.exceptions import StaleElementReferenceException

        for _ in range(5):
            try:
                browser.find_element(By.CSS_SELECTOR, css).click()
            except StaleElementReferenceException:
                time.sleep(0.2)
            else:
                return
        raise AssertionError(f"{css} kept being redrawn")

    try:
        browser.get(served.url + "/")
        wait.until(seen.visibility_of_element_located((By.ID, "token"))).send_keys(served.operate)
        browser.find_element(By.CSS_SELECTOR, "#login-form button").click()
        wait.until(seen.presence_of_element_located((By.CSS_SELECTOR, '.host[data-host="hostB"]')))
        wait.until(seen.presence_of_element_located((By.CSS_SELECTOR, f'.vm[data-vm="{vm}"]')))
        shot("1-cluster")
        # an evacuation's dry run from the page: the plan, then a confirmation
        click('.host[data-host="hostA"] button.evacuate')
        table = wait.until(seen.visibility_of_element_located((By.ID, "plan-table")))
        assert vm in table.text
        assert browser.find_element(By.ID, "dialog-ok").text == "Carry it out"
        shot("2-evacuation-dry-run")
        browser.find_element(By.ID, "dialog-cancel").click()
        assert locate_vm(vm) == {"hostA": "running"}
        # a live move from the page, its chart watched to the end
        click(f'.vm[data-vm="{vm}"]')
        Select(wait.until(seen.visibility_of_element_located((By.ID, "move-to")))).select_by_value(
            "hostB"
        )
        browser.find_element(By.ID, "dialog-ok").click()
        wait.until(seen.text_to_be_present_in_element((By.ID, "dialog-ok"), "Start the move"))
        browser.find_element(By.ID, "dialog-ok").click()
        wait.until(lambda b: "#/job/" in b.current_url)
        counts: list[int] = []
        running_shot = False
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                svg = browser.find_element(By.CSS_SELECTOR, "#chart svg")
                counts.append(int(svg.get_attribute("data-samples") or 0))
                state = browser.find_element(By.ID, "job-state").text
                if state == "running" and counts[-1] >= 6 and not running_shot:
                    shot("3-live-chart-running")
                    running_shot = True
                if state == "completed":
                    break
            time.sleep(0.5)
        assert browser.find_element(By.ID, "job-state").text == "completed"
        time.sleep(2.5)  # the last refresh draws the actual end
        svg = browser.find_element(By.CSS_SELECTOR, "#chart svg")
        counts.append(int(svg.get_attribute("data-samples") or 0))
        shot("4-live-chart-done")
        assert len({c for c in counts if c > 0}) >= 2, f"the chart never updated: {counts}"
        assert browser.find_elements(By.CSS_SELECTOR, "#chart svg path.remaining")
        assert locate_vm(vm) == {"hostB": "running"}
    finally:
        browser.quit()
    assert sorted(p.name for p in served.screenshots.iterdir())[:2] == [
        "1-cluster.png", "2-evacuation-dry-run.png"]  # fmt: skip


def _raw(served: Served, request: bytes) -> ssl.SSLSocket:
    """A TLS connection that sends REQUEST and then does what the test says (or nothing)."""
    import socket

    context = ssl.create_default_context(cafile=str(served.cert))
    port = int(served.url.rsplit(":", 1)[1])
    raw = socket.create_connection(("127.0.0.1", port), timeout=30)
    conn = context.wrap_socket(raw, server_hostname="127.0.0.1")
    conn.sendall(request)
    return conn


def test_clients_that_drop_stall_or_never_read_leave_the_server_serving(served: Served) -> None:
    auth = f"Authorization: Bearer {served.read}\r\n".encode()
    stream = b"GET /api/events HTTP/1.1\r\nHost: x\r\n" + auth + b"\r\n"
    # 100 event streams that connect and drop; 20 more that connect and never read
    for _ in range(100):
        conn = _raw(served, stream)
        assert b"200 OK" in conn.recv(200)
        conn.close()
    idle = [_raw(served, stream) for _ in range(20)]
    # a client that announces a body and never sends it: 408 after the body deadline
    ops = f"Authorization: Bearer {served.operate}\r\n".encode()
    stall = _raw(
        served,
        b"POST /api/actions/live HTTP/1.1\r\nHost: x\r\n"
        + ops
        + b'Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"vm"',
    )
    answer = stall.recv(400)
    assert b" 408 " in answer and b"Traceback" not in answer, answer
    stall.close()
    with served.client(served.read) as viewer:  # still serving, quickly
        started = time.monotonic()
        assert viewer.get("/api/health").json() == {"ok": True}
        assert viewer.get("/api/jobs").status_code == 200
        assert time.monotonic() - started < 5
        frames = _sse(served, "/api/events", 0, stop_after=1)
        assert frames and int(frames[0]["id"]) > 0
    for conn in idle:
        conn.close()
    assert "Traceback" not in served.log.read_text()


def test_no_token_in_the_log_the_store_or_a_crash_report(served: Served) -> None:
    """Last in the module: after every request above, the tokens were written nowhere."""
    started = served.log.stat().st_ctime - 3600
    places = [served.log, *(p for p in store_files(served.store) if p.exists())]
    crashes = default_store_path().parent
    places += [p for p in crashes.glob("crash-*.txt") if p.stat().st_mtime > started]
    for place in places:
        data = place.read_bytes()
        for token in (served.operate, served.read):
            assert token.encode() not in data, f"a token is in {place}"
    with served.client(served.read) as viewer:  # the server kept serving through it all
        assert viewer.get("/api/health").json() == {"ok": True}
    assert served.process.poll() is None
