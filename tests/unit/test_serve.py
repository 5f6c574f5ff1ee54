"""`vmigrate serve` without a lab: tokens and roles, request validation with the CLI's words,
the metrics collector over a real SQLite store, SSE resumed with Last-Event-ID, the made
certificate. The inventory is a fixed snapshot (no libvirt); the store is a real file."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat
import threading
import time
import warnings
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

with warnings.catch_warnings():  # Starlette 1.x prefers httpx2 for its TestClient; httpx works
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from vmigrate.serve.actions import ACTIONS, command_line, validate
from vmigrate.serve.app import ServeConfig, create_app
from vmigrate.serve.children import parse_error
from vmigrate.serve.inventory import Inventory, Snapshot, snapshot_of
from vmigrate.serve.metrics import exposition, read_store
from vmigrate.serve.tls import server_certificate
from vmigrate.serve.tokens import TokenFile, token_hash, verify
from vmigrate.store import JobStore

MIB = 1 << 20


def _rows() -> list[dict[str, Any]]:
    def host(name: str, vms: list[str]) -> dict[str, Any]:
        return {
            "name": name, "uri": f"qemu+tls://{name}/system", "cluster": "c1",
            "reachable": True, "problem": None, "maintenance": None,
            "capacity_mib": 4096, "reserve_mib": 512, "used_mib": 640 * len(vms),
            "free_mib": 4096 - 512 - 640 * len(vms), "vcpus_used": len(vms),
            "vms": [{"name": v, "state": "running", "memory_mib": 384, "vcpus": 1} for v in vms],
            "leases": [],
        }  # fmt: skip

    return [host("h1", ["web1", "db1"]), host("h2", []), host("h3", ["cache1"])]


def fixed_snapshot() -> Snapshot:
    return snapshot_of(_rows(), {"c1": ["h1", "h2", "h3"]}, time.monotonic())


class Server:
    def __init__(self, tmp: Path) -> None:
        self.tokens = TokenFile(tmp / "serve" / "tokens.json")
        self.operate = self.tokens.add("ops", "operate")
        self.read = self.tokens.add("grafana", "read")
        self.store_path = tmp / "jobs.sqlite"
        self.app = create_app(
            ServeConfig(self.store_path, None, self.tokens, gather=fixed_snapshot)
        )

    def headers(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def server(tmp_path: Path) -> Server:
    return Server(tmp_path)


@pytest.fixture
def client(server: Server) -> Iterator[TestClient]:
    with TestClient(server.app, raise_server_exceptions=False) as test_client:
        yield test_client


# --- tokens -----------------------------------------------------------------------------


def test_a_token_is_shown_once_and_stored_only_as_its_hash(tmp_path: Path) -> None:
    tokens = TokenFile(tmp_path / "d" / "tokens.json")
    token = tokens.add("alice", "operate")
    text = tokens.path.read_text()
    assert token not in text
    assert token_hash(token) in text
    assert stat.S_IMODE(tokens.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(tokens.path.parent.stat().st_mode) == 0o700
    entry = verify(token, tokens.entries())
    assert entry is not None and (entry.name, entry.role) == ("alice", "operate")
    assert verify(token + "x", tokens.entries()) is None
    assert "sha256" not in entry.to_public()


def test_token_names_roles_and_removal_are_checked(tmp_path: Path) -> None:
    tokens = TokenFile(tmp_path / "tokens.json")
    with pytest.raises(Exception, match="not a plain name"):
        tokens.add("bad name; rm", "read")
    with pytest.raises(Exception, match="unknown role"):
        tokens.add("bob", "admin")
    tokens.add("bob", "read")
    with pytest.raises(Exception, match="exists"):
        tokens.add("bob", "read")
    tokens.remove("bob")
    assert tokens.entries() == []


# --- authentication and roles -------------------------------------------------------------


def test_no_token_is_401_and_a_read_token_cannot_act(server: Server, client: TestClient) -> None:
    assert client.get("/api/inventory").status_code == 401
    bad = client.get("/api/jobs", headers=server.headers("vmg_wrong"))
    assert bad.status_code == 401 and bad.headers["www-authenticate"].startswith("Bearer")
    assert client.get("/metrics").status_code == 401
    assert client.get("/api/inventory", headers=server.headers(server.read)).status_code == 200
    refused = client.post(
        "/api/actions/live",
        headers=server.headers(server.read),
        json={"vm": "web1", "from": "h1", "to": "h2"},
    )
    assert refused.status_code == 403
    assert "may only read" in refused.json()["error"]
    assert client.post("/api/jobs/1/cancel", headers=server.headers(server.read)).status_code == 403
    # public: the description of the API and the dashboard's files
    assert client.get("/api/openapi.json").status_code == 200
    assert client.get("/").status_code == 200


def test_tokens_appear_in_no_response_and_no_log(
    server: Server, client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    bodies = []
    for token in (server.read, server.operate):
        for path in ("/api/inventory", "/api/jobs", "/api/jobs/99", "/metrics", "/api/leases"):
            bodies.append(client.get(path, headers=server.headers(token)).text)
    bodies.append(_post(server, client, "live", json={"vm": "nope", "from": "h1", "to": "h2"}).text)
    bodies.append(client.post("/api/actions/live", headers=server.headers(server.read)).text)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for token in (server.read, server.operate):
        assert token not in "".join(bodies)
        assert token not in logged
        assert token_hash(token) not in "".join(bodies)


# --- bad input: the CLI's message and fix, a 4xx, the server keeps serving -----------------


def _post(server: Server, client: TestClient, name: str, **kwargs: Any) -> Any:
    return client.post(f"/api/actions/{name}", headers=server.headers(server.operate), **kwargs)


def test_bad_requests_get_a_4xx_with_what_to_do(server: Server, client: TestClient) -> None:
    cases = [
        (_post(server, client, "live", content=b'{"vm": "web1",'), 400, "not valid JSON"),
        (_post(server, client, "live", json=["web1"]), 400, "must be a JSON object"),
        (_post(server, client, "live", json={"vm": "web1", "from": "h1"}), 400,
         "'to' is required"),
        (_post(server, client, "live", json={"vm": "web1", "from": "h1", "to": "h2", "x": 1}),
         400, "unknown field 'x'"),
        (_post(server, client, "live",
               json={"vm": "web1", "from": "h1", "to": "h2", "bandwidth_mib": "fast"}),
         400, "must be a number"),
        (_post(server, client, "live", json={"vm": "ghost", "from": "h1", "to": "h2"}), 404,
         "no VM named 'ghost'"),
        (_post(server, client, "live", json={"vm": "cache1", "from": "h1", "to": "h2"}), 404,
         "it is on h3"),
        (_post(server, client, "live", json={"vm": "web1", "from": "h1", "to": "h9"}), 404,
         "unknown host 'h9'"),
        (_post(server, client, "evacuate", json={"host": "h1", "cluster": "nope"}), 404,
         "unknown cluster 'nope'"),
        (_post(server, client, "live", json={"vm": "web1", "from": "h1", "to": "h1"}), 400,
         "same host"),
        (_post(server, client, "live", content=b"x" * 70_000), 413, "more than"),
        (_post(server, client, "teleport", json={}), 404, "no action 'teleport'"),
        (client.get("/api/jobs/12345", headers=server.headers(server.read)), 404, "no job 12345"),
        (client.get("/api/jobs?last=zero", headers=server.headers(server.read)), 400, "?last="),
        (client.post("/api/jobs/777/cancel", headers=server.headers(server.operate)), 404,
         "no job 777"),
    ]  # fmt: skip
    for response, status, words in cases:
        assert response.status_code == status, response.text
        body = response.json()
        assert words in body["error"], body
        assert body["fix"], body
        assert "Traceback" not in response.text
    assert client.get("/api/health").json() == {"ok": True}


def test_a_second_action_on_a_vm_with_an_open_job_is_409_with_the_clis_words(
    server: Server, client: TestClient
) -> None:
    with JobStore(server.store_path) as store:
        params = {"lease_token": "secret-123"}
        job_id = store.create_job("live", "web1", "qemu+tls://h1", "qemu+tls://h2", params)
    response = _post(server, client, "cold", json={"vm": "web1", "from": "h1", "to": "h2"})
    assert response.status_code == 409
    body = response.json()
    assert f"in the middle of live job {job_id}" in body["error"]
    assert f"vmigrate jobs cancel {job_id}" in body["fix"]
    shown = client.get(f"/api/jobs/{job_id}", headers=server.headers(server.read)).json()
    assert shown["params"]["lease_token"] == "(hidden)"
    assert "secret-123" not in json.dumps(shown)


def test_cancel_of_a_finished_job_is_refused_as_the_cli_refuses_it(
    server: Server, client: TestClient
) -> None:
    with JobStore(server.store_path) as store:
        job_id = store.create_job("live", "web1", "a", "b", {})
        store.finish_job(job_id, "completed", "completed", {})
    response = client.post(f"/api/jobs/{job_id}/cancel", headers=server.headers(server.operate))
    assert response.status_code == 409
    assert f"job {job_id}" in response.json()["error"]


def test_actions_become_argument_lists_with_names_after_the_double_dash() -> None:
    live = ACTIONS["live"]
    values = validate(live, {"vm": "--force", "from": "h1", "to": "h2", "bandwidth_mib": 50})
    args = command_line(live, values, "/s/jobs.sqlite", None)
    assert args[:1] == ["live"]
    assert args[-2:] == ["--", "--force"]  # a VM named like an option stays a VM name
    assert args[args.index("--bandwidth") : args.index("--bandwidth") + 2] == ["--bandwidth", "50"]
    assert "--json" in args and "--store" in args
    evac = validate(ACTIONS["evacuate"], {"host": "h1", "to": ["h2", "h3"], "dry_run": True})
    args = command_line(ACTIONS["evacuate"], evac, None, "/h.toml")
    assert args == ["evacuate", "--to", "h2,h3", "--dry-run", "--hosts", "/h.toml", "--json",
                    "--", "h1"]  # fmt: skip
    with pytest.raises(Exception, match="control characters"):
        validate(live, {"vm": "a\nb", "from": "h1", "to": "h2"})


def test_the_clis_error_text_is_split_into_message_and_fix() -> None:
    said = parse_error(
        "error: VM web1: 'web1' is in the middle of live job 4 (a -> b, running)\n"
        "  what to do: wait for it, or cancel it with `vmigrate jobs cancel 4`\n"
    )
    assert said.message.startswith("VM web1: 'web1' is in the middle")
    assert said.fix == "wait for it, or cancel it with `vmigrate jobs cancel 4`"


# --- inventory ------------------------------------------------------------------------------


def test_many_viewers_cost_one_gather() -> None:
    calls = []
    entered = threading.Event()

    def slow_gather() -> Snapshot:
        calls.append(time.monotonic())
        entered.set()
        time.sleep(0.2)
        return fixed_snapshot()

    inventory = Inventory(slow_gather, ttl_s=30)

    async def many() -> list[Snapshot]:
        return await asyncio.gather(*(inventory.snapshot() for _ in range(50)))

    snaps = asyncio.run(many())
    assert len(calls) == 1 and all(s is snaps[0] for s in snaps)
    assert inventory.cached() is snaps[0]


def test_inventory_shows_capacity_vms_and_maintenance_from_the_store(
    server: Server, client: TestClient
) -> None:
    with JobStore(server.store_path) as store:
        store.set_maintenance("h2", "qemu+tls://h2/system", None, "disk swap")
    body = client.get("/api/inventory", headers=server.headers(server.read)).json()
    by_name = {h["name"]: h for h in body["hosts"]}
    assert by_name["h2"]["maintenance"] == "disk swap"
    assert [v["name"] for v in by_name["h1"]["vms"]] == ["web1", "db1"]
    assert body["clusters"] == {"c1": ["h1", "h2", "h3"]}
    vms = client.get("/api/vms", headers=server.headers(server.read)).json()
    assert {(v["name"], v["host"]) for v in vms} == {("web1", "h1"), ("db1", "h1"),
                                                     ("cache1", "h3")}  # fmt: skip


# --- metrics ---------------------------------------------------------------------------------


def _sample(remaining: int) -> dict[str, Any]:
    return {
        "phase": "precopy", "iteration": 2, "memory_total": 384 * MIB,
        "memory_processed": 384 * MIB - remaining, "memory_remaining": remaining,
        "disk_total": 0, "disk_processed": 0, "disk_remaining": 0,
        "dirty_rate_bps": 50.0 * MIB, "bandwidth_bps": 100.0 * MIB,
        "expected_downtime_ms": 120.0,
    }  # fmt: skip


def _metric(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} {labels} not in the metrics")


def test_metrics_read_running_moves_and_counters_from_the_store(tmp_path: Path) -> None:
    with JobStore(tmp_path / "jobs.sqlite") as store:
        evac = store.create_job("evacuate", "h1", "qemu:///h1", "h2", {})
        store.set_job_params(evac, {"plan": {"moves": [{"vm": "db1"}, {"vm": "zz"}],
                                             "predicted_total_s": 60.0}})  # fmt: skip
        running = store.create_job("live", "web1", "qemu:///a", "qemu:///b", {})
        store.add_sample(running, _sample(300 * MIB))
        store.add_sample(running, _sample(100 * MIB))
        for vm, state in (("db1", "completed"), ("db2", "completed"), ("db3", "failed")):
            job = store.create_job("live", vm, "a", "b", {})
            store.finish_job(job, state, state, {})
        cold = store.create_job("cold", "db4", "a", "b", {})
        store.finish_job(cold, "completed", "completed", {})
        text = exposition(read_store(store), fixed_snapshot()).decode()
    labels = {"job": str(running), "vm": "web1", "kind": "live"}
    assert _metric(text, "vmigrate_migration_data_remaining_bytes", **labels) == 100 * MIB
    assert _metric(text, "vmigrate_migration_data_total_bytes", **labels) == 384 * MIB
    assert _metric(text, "vmigrate_migration_dirty_rate_bytes_per_second", **labels) == 50 * MIB
    assert _metric(text, "vmigrate_migration_expected_downtime_seconds", **labels) == 0.12
    assert _metric(text, "vmigrate_migration_phase", phase="precopy", **labels) == 1.0
    assert _metric(text, "vmigrate_migration_phase", phase="postcopy", **labels) == 0.0
    assert _metric(text, "vmigrate_moves_total", kind="live", outcome="completed") == 2
    assert _metric(text, "vmigrate_moves_total", kind="live", outcome="failed") == 1
    assert _metric(text, "vmigrate_moves_total", kind="cold", outcome="completed") == 1
    # db1's move finished after the evacuation started: one of two planned moves is left
    assert _metric(text, "vmigrate_fleet_vms_left", job=str(evac)) == 1
    assert _metric(text, "vmigrate_fleet_predicted_finish_timestamp_seconds", job=str(evac)) > 0
    assert _metric(text, "vmigrate_host_memory_capacity_bytes", host="h1") == 4096 * MIB
    assert _metric(text, "vmigrate_host_vms", host="h1") == 2


# --- SSE --------------------------------------------------------------------------------------


def _frames(text: str) -> list[dict[str, str]]:
    frames = []
    for block in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line
                      and not line.startswith(":"))  # fmt: skip
        if "data" in fields:
            frames.append(fields)
    return frames


def test_a_job_stream_resumes_after_last_event_id_and_ends_with_the_job(
    server: Server, client: TestClient
) -> None:
    with JobStore(server.store_path) as store:
        job_id = store.create_job("live", "web1", "a", "b", {})
        other = store.create_job("live", "db1", "a", "b", {})
        seqs = []
        for step in range(6):
            seqs.append(store.append_event(job_id, "sample", {"event": "sample", "n": step}))
            store.append_event(other, "sample", {"event": "sample", "n": 100 + step})
        seqs.append(store.append_event(job_id, "done", {"event": "done", "outcome": "completed"}))
        store.finish_job(job_id, "completed", "completed", {})
    headers = {**server.headers(server.read), "Last-Event-ID": str(seqs[2])}
    response = client.get(f"/api/jobs/{job_id}/events", headers=headers)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    frames = _frames(response.text)
    assert [int(f["id"]) for f in frames if f.get("event") != "end"] == seqs[3:]
    bodies = [json.loads(f["data"]) for f in frames if f.get("event") == "sample"]
    assert [b["event"]["n"] for b in bodies] == [3, 4, 5]  # none of the other job's
    assert frames[-1]["event"] == "end"
    # nothing after the last: the finished job's stream says so (EventSource stops on 204)
    headers["Last-Event-ID"] = str(seqs[-1])
    assert client.get(f"/api/jobs/{job_id}/events", headers=headers).status_code == 204


def test_the_shared_follower_delivers_every_event_in_order(tmp_path: Path) -> None:
    """Events written while a client follows come through the one poller, none lost."""
    from vmigrate.serve.events import EventHub
    from vmigrate.serve.storeaccess import StoreAccess

    path = tmp_path / "jobs.sqlite"
    with JobStore(path) as store:
        job_id = store.create_job("live", "web1", "a", "b", {})
        first = store.append_event(job_id, "sample", {"n": 0})
    access = StoreAccess(path)
    hub = EventHub(access)

    async def follow_and_write() -> list[int]:
        got: list[int] = []

        async def writer() -> None:
            with JobStore(path) as store:
                for n in range(1, 40):
                    store.append_event(job_id, "sample", {"n": n})
                    await asyncio.sleep(0.01)

        task = asyncio.create_task(writer())
        async for event in hub.follow(0, None):
            if event is not None:
                got.append(event.body["n"])
            if len(got) == 40:
                break
        await task
        return got

    try:
        got = asyncio.run(asyncio.wait_for(follow_and_write(), 30))
    finally:
        access.close()
    assert got == list(range(40)) and first > 0


# --- certificate and the API description ---------------------------------------------------------


def test_the_server_makes_its_certificate_once_in_a_private_directory(tmp_path: Path) -> None:
    where = tmp_path / "tls"
    made = server_certificate("127.0.0.1", None, None, where)
    assert made.made and stat.S_IMODE(where.stat().st_mode) == 0o700
    assert stat.S_IMODE(made.key_path.stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate(made.cert_path.read_bytes())
    assert made.fingerprint == cert.fingerprint(hashes.SHA256()).hex(":").upper()
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "127.0.0.1" in [str(a) for a in names.get_values_for_type(x509.IPAddress)]
    again = server_certificate("127.0.0.1", None, None, where)
    assert again.fingerprint == made.fingerprint
    with pytest.raises(Exception, match="go together"):
        server_certificate("127.0.0.1", made.cert_path, None, where)


def test_the_openapi_document_names_every_route_and_action(client: TestClient) -> None:
    doc = client.get("/api/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    for name in ACTIONS:
        body = doc["paths"][f"/api/actions/{name}"]["post"]["requestBody"]
        assert body["content"]["application/json"]["schema"]["type"] == "object"
    for path in ("/api/inventory", "/api/jobs", "/api/jobs/{job_id}/events", "/metrics"):
        assert "get" in doc["paths"][path]


def test_streams_of_clients_that_leave_or_stop_reading_are_let_go(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vmigrate.serve import events as serve_events

    with JobStore(server.store_path) as store:
        job_id = store.create_job("live", "web1", "a", "b", {})
        for n in range(3):
            store.append_event(job_id, "sample", {"n": n})
    hub = server.app.state.serve.hub
    auth = f"Bearer {server.read}".encode()

    async def one_client() -> list[MutableMapping[str, Any]]:
        sent: list[MutableMapping[str, Any]] = []
        scope = {
            "type": "http",
            "method": "GET",
            "path": "/api/events",
            "raw_path": b"",
            "query_string": b"",
            "headers": [(b"authorization", auth)],
            "root_path": "",
            "scheme": "https",
            "server": ("t", 1),
            "http_version": "1.1",
        }
        asked = False

        async def receive() -> dict[str, Any]:
            nonlocal asked
            if not asked:
                asked = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await asyncio.sleep(0.3)  # the client leaves
            return {"type": "http.disconnect"}

        async def send(message: MutableMapping[str, Any]) -> None:
            sent.append(message)

        await server.app(scope, receive, send)
        return sent

    async def clients() -> None:
        for _ in range(20):  # connect and drop
            sent = await asyncio.wait_for(one_client(), 10)
            assert sent[0]["status"] == 200
        assert hub.listeners == 0

    asyncio.run(clients())
    # a client that stops reading is dropped once a send takes longer than the timeout
    monkeypatch.setattr(serve_events, "SEND_TIMEOUT_S", 0.2)

    async def stuck() -> None:
        async def never_done() -> bool:
            return False

        async def events() -> Any:
            for n in range(5):
                yield serve_events.StoredEvent(n + 1, job_id, "sample", 0.0, {})

        async def send(message: MutableMapping[str, Any]) -> None:
            if message.get("body", b"").startswith(b"id: 2"):
                await asyncio.sleep(3600)

        with pytest.raises(TimeoutError):
            await serve_events.stream_response(send, events(), never_done)

    asyncio.run(asyncio.wait_for(stuck(), 10))


def test_a_child_vmigrate_is_read_whole_and_its_refusal_kept(tmp_path: Path) -> None:
    """The real `vmigrate` command as a child: an indented JSON document is read as one,
    and a refusal keeps the CLI's message and fix."""
    from vmigrate.serve.children import Children

    store = tmp_path / "jobs.sqlite"
    with JobStore(store) as opened:
        for vm in ("web1", "db1"):
            opened.create_job("cold", vm, "a", "b", {})
    children = Children()
    listing = children.start("jobs", ["jobs", "--store", str(store), "--json"])
    assert listing.wait_for_end(60) and listing.returncode == 0, listing.stderr
    assert sorted(job["vm"] for job in listing.events) == ["db1", "web1"]
    refused = children.start("cancel", ["jobs", "--store", str(store), "cancel", "99"])
    assert refused.wait_for_end(60) and refused.returncode == 1
    said = refused.error()
    assert "no job 99" in said.message and "vmigrate jobs" in said.fix
    assert children.running() == []


def test_the_server_prints_the_fingerprint_of_the_certificate_it_serves(tmp_path: Path) -> None:
    """`vmigrate serve` for real: the fingerprint it prints is the served certificate's."""
    import re
    import socket
    import ssl
    import subprocess
    import sys

    import httpx

    from vmigrate.serve.tls import fingerprint_of

    (tmp_path / "hosts.toml").write_text("")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = tmp_path / "server.log"
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "state")}
    with log.open("wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "vmigrate.cli.main", "serve", "--listen", f"127.0.0.1:{port}",
             "--store", str(tmp_path / "jobs.sqlite"), "--hosts", str(tmp_path / "hosts.toml"),
             "--tokens", str(tmp_path / "tokens.json")],
            stdout=out, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    try:
        cert = tmp_path / "state" / "vmigrate" / "serve" / "server-127.0.0.1.crt"
        deadline = time.monotonic() + 30
        while "Uvicorn running" not in log.read_text():
            assert server.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        printed = re.search(r"SHA-256 fingerprint: (\S+)", log.read_text())
        assert printed and printed.group(1) == fingerprint_of(cert.read_bytes())
        trust = ssl.create_default_context(cafile=str(cert))
        answer = httpx.get(f"https://127.0.0.1:{port}/api/health", verify=trust, timeout=10)
        assert answer.json() == {"ok": True}
        assert "no API token" in log.read_text()  # said at start: nobody could use it yet
    finally:
        server.terminate()
        server.wait(20)


def test_a_cluster_stream_carries_only_the_jobs_on_its_hosts(server: Server) -> None:
    from vmigrate.serve.api_events import _in_cluster

    with JobStore(server.store_path) as store:
        ours = store.create_job("live", "web1", "qemu+tls://h1/system", "qemu+tls://h2/system", {})
        theirs = store.create_job("live", "x1", "qemu+tls://far1/system", "qemu+tls://far2/system",
                                  {})  # fmt: skip
        for n in range(4):
            store.append_event(ours if n % 2 == 0 else theirs, "sample", {"n": n})
    serve = server.app.state.serve

    async def first_two() -> list[int]:
        got: list[int] = []
        members = {"h1", "h2", "qemu+tls://h1/system", "qemu+tls://h2/system"}
        async for event in _in_cluster(serve, serve.hub.follow(0, None), members):
            if event is not None:
                got.append(event.body["n"])
            if len(got) == 2:
                break
        return got

    try:
        assert asyncio.run(asyncio.wait_for(first_two(), 10)) == [0, 2]
    finally:
        serve.access.close()
