"""The transports users run: every move over qemu+ssh and over qemu+tls (real sshd, real
certificates), the migration stream under QEMU TLS on the wire, bad credentials as clear
findings, and no way in for a local user who is not root."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vmigrate.errors import VmigrateError
from vmigrate.lab import link
from vmigrate.lab.config import HOST_B, LAB_CLIENT_CN
from vmigrate.lab.credentials import HOST_KEY_NAME, lab_ca, ssh_keypair
from vmigrate.lab.daemons import namespace_when_ready, start_libvirtd, stop_host_processes
from vmigrate.lab.heartbeat import heartbeat_report, wait_for_console
from vmigrate.lab.lifecycle import HostStatus, lab_up
from vmigrate.lab.paths import CLIENT_PKI_DIR, CLIENT_SSH_DIR, LAB_DIR
from vmigrate.lab.pki import issue, make_ca, write_client_pkipath, write_private
from vmigrate.lab.sshd import SSH_PORT, start_sshd, stop_sshd, wait_for_port
from vmigrate.lab.state import load_records, save_records
from vmigrate.lab.vms import LabVmRequest, create_vm, locate_vm
from vmigrate.store import JobStore
from vmigrate.virt.connection import wait_for_connection

from .helpers import busy_migration, read_events_until, read_rest, run_cli
from .wire import capture

pytestmark = pytest.mark.lab

TRANSPORTS = ["ssh", "tls"]
MIGRATION_PORTS = range(49152, 49216)


@pytest.fixture(params=TRANSPORTS)
def transport(
    request: pytest.FixtureRequest, lab: list[HostStatus], monkeypatch: pytest.MonkeyPatch
) -> str:
    """hostA and hostB mean the lab hosts over this transport, for vmigrate and its children."""
    chosen: str = request.param
    monkeypatch.setenv("VMIGRATE_LAB_TRANSPORT", chosen)
    return chosen


def _json(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    assert "Traceback" not in result.stderr
    return dict(json.loads(result.stdout))


def _done(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    return next(event for event in lines if event.get("event") == "done")


def _by_check(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["check"]: f for f in report["findings"]}


def test_check_estimate_and_live_p2p_and_direct(
    transport: str, vm_name: str, tmp_path: Path
) -> None:
    store = str(tmp_path / "jobs.sqlite")
    create_vm(LabVmRequest(vm_name, memory_mib=256, working_set_mib=128, dirty_rate_mib=50))
    report = _json(run_cli("check", vm_name, "--from", "hostA", "--to", "hostB", "--json"))
    found = _by_check(report)
    control = found["encryption.control-destination"]
    assert control["verdict"] == "pass" and control["evidence"]["transport"] == transport
    assert control["evidence"]["uri"].startswith(f"qemu+{transport}://")
    assert (
        found["connectivity.libvirt-port"]["evidence"]["port"]
        == {"ssh": 22, "tls": 16514}[transport]
    )
    assert found["encryption.migration-stream"]["evidence"]["tls"] is True

    forecast = _json(
        run_cli("estimate", vm_name, "--from", "hostA", "--to", "hostB", "--store", store, "--json")
    )
    assert forecast["prediction"]["outcome"] == "completed", forecast

    there = _done(
        run_cli("live", vm_name, "--from", "hostA", "--to", "hostB", "--store", store, "--json")
    )
    assert there["outcome"] == "completed" and there["placement_ok"], there
    back = _done(
        run_cli(
            "live",
            vm_name,
            "--from",
            "hostB",
            "--to",
            "hostA",
            "--direct",
            "--store",
            store,
            "--json",
        )
    )
    assert back["outcome"] == "completed" and back["placement_ok"], back
    assert locate_vm(vm_name) == {"hostA": "running"}
    beats = heartbeat_report(vm_name)
    assert beats.contiguous, beats.problems


def test_copy_storage_there_and_cold_back(transport: str, vm_name: str, tmp_path: Path) -> None:
    store = str(tmp_path / "jobs.sqlite")
    create_vm(LabVmRequest(vm_name, memory_mib=256, dirty_rate_mib=20, disk="local"))
    there = _done(
        run_cli(
            "live",
            vm_name,
            "--from",
            "hostA",
            "--to",
            "hostB",
            "--copy-storage",
            "--delete-source-disks",  # cold brings the disk back to where it came from
            "--store",
            store,
            "--json",
        )
    )
    assert there["outcome"] == "completed" and there["placement_ok"], there
    assert locate_vm(vm_name) == {"hostB": "running"}
    assert heartbeat_report(vm_name).contiguous
    since = time.monotonic_ns()
    cold = run_cli("cold", vm_name, "--from", "hostB", "--to", "hostA", "--store", store, "--json")
    done = _done(cold)
    assert done["outcome"] == "completed", done
    assert locate_vm(vm_name) == {"hostA": "running"}
    # The guest checks its disk's pattern as it boots on hostA: the copies were exact.
    line = wait_for_console(vm_name, r"^DISK ", timeout=90, since_ns=since)
    assert line.text.startswith("DISK verify ok") and line.host == "hostA", line


def test_cancel_from_a_second_process(transport: str, vm_name: str, tmp_path: Path) -> None:
    store = tmp_path / "jobs.sqlite"
    with busy_migration(vm_name, store, "--policy", "safe", "--max-downtime", "3000") as process:
        job_id = read_events_until(process, "sample")
        cancelled = run_cli("jobs", "--store", str(store), "cancel", str(job_id))
        assert cancelled.returncode == 0, cancelled.stderr
        out, _ = read_rest(process, timeout=180)
    done = next(json.loads(line) for line in out.splitlines() if '"event": "done"' in line)
    assert done["outcome"] == "cancelled" and done["placement_ok"], done
    assert locate_vm(vm_name) == {"hostA": "running"}
    assert heartbeat_report(vm_name).contiguous


def test_recover_after_vmigrate_is_killed(transport: str, vm_name: str, tmp_path: Path) -> None:
    store = tmp_path / "jobs.sqlite"
    with busy_migration(vm_name, store) as process:
        job_id = read_events_until(process, "sample")
        process.kill()
        process.wait(timeout=30)
    assert JobStore(store).job(job_id).state == "interrupted"
    result = run_cli("recover", vm_name, "--store", str(store), "--wait", "120", "--json")
    report = _json(result)
    assert report["outcome"] in ("completed", "aborted"), report
    placement = locate_vm(vm_name)
    assert list(placement.values()) == ["running"], placement  # exactly one host
    assert heartbeat_report(vm_name).contiguous


def test_live_tls_puts_a_tls_handshake_on_the_migration_port(
    lab: list[HostStatus], vm_name: str, tmp_path: Path
) -> None:
    create_vm(LabVmRequest(vm_name, memory_mib=256, working_set_mib=128, dirty_rate_mib=100))
    link.shape("1gbit")
    try:
        with capture(HOST_B.address, MIGRATION_PORTS) as wire:
            done = _done(
                run_cli(
                    "live",
                    vm_name,
                    "--from",
                    "hostA",
                    "--to",
                    "hostB",
                    "--tls",
                    "--store",
                    str(tmp_path / "jobs.sqlite"),
                    "--json",
                )
            )
    finally:
        link.reset()
    assert done["outcome"] == "completed" and done["placement_ok"], done
    assert locate_vm(vm_name) == {"hostB": "running"}
    assert heartbeat_report(vm_name).contiguous
    assert wire.first_bytes, "no migration traffic was seen"
    assert wire.tls_connections() == len(wire.first_bytes), wire.first_bytes
    # QEMU's own stream starts with its magic "QEVM": never seen in clear.
    assert not any(data.startswith(b"QEVM") for data in wire.first_bytes.values())
    assert wire.payload_bytes > 128 << 20  # the guest's memory did cross, encrypted


# --- bad credentials: a finding with cause and fix, exit 1, nothing changed --------------


@pytest.fixture(scope="module")
def idle_vm(lab: list[HostStatus]) -> Iterator[str]:
    from vmigrate.lab.vms import remove_vm

    name = "t-transport-idle"
    with contextlib.suppress(VmigrateError):
        remove_vm(name)
    create_vm(LabVmRequest(name, memory_mib=256))
    yield name
    remove_vm(name)


def _refused(vm: str, destination: str, *words: str) -> dict[str, Any]:
    """`check` fails on the destination with these words, and `live` moves nothing."""
    result = run_cli("check", vm, "--from", "hostA", "--to", destination, "--json")
    assert result.returncode == 1, result.stdout[-1500:] + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    finding = _by_check(json.loads(result.stdout))["connectivity.destination"]
    assert finding["verdict"] == "fail", finding
    for word in words:
        assert word in finding["summary"] + " " + finding["fix"], finding
    assert locate_vm(vm) == {"hostA": "running"}
    return dict(finding)


def test_a_certificate_from_another_ca(idle_vm: str, tmp_path: Path) -> None:
    other = make_ca("someone else's CA")
    foreign = tmp_path / "foreign"
    write_client_pkipath(foreign, other.cert_pem(), issue(other, LAB_CLIENT_CN, client=True))
    _refused(idle_vm, f"qemu+tls://{HOST_B.address}/system?pkipath={foreign}", "CA")
    # Our CA is trusted, but the client certificate comes from another: hostB refuses it.
    mixed = tmp_path / "mixed"
    write_client_pkipath(mixed, lab_ca().cert_pem(), issue(other, LAB_CLIENT_CN, client=True))
    _refused(idle_vm, f"qemu+tls://{HOST_B.address}/system?pkipath={mixed}", "not issued by the CA")
    live = run_cli(
        "live",
        idle_vm,
        "--from",
        "hostA",
        "--to",
        f"qemu+tls://{HOST_B.address}/system?pkipath={foreign}",
    )
    assert live.returncode == 1 and "Traceback" not in live.stderr, live.stderr
    assert locate_vm(idle_vm) == {"hostA": "running"}


def test_an_address_the_certificate_does_not_name(idle_vm: str) -> None:
    # hostB's address written as IPv4-mapped IPv6: the same host, not a name its certificate
    # lists; libvirt says only "Failed to verify peer's certificate", vmigrate says which.
    _refused(
        idle_vm,
        f"qemu+tls://[::ffff:{HOST_B.address}]/system?pkipath={CLIENT_PKI_DIR}",
        "does not name",
        "subjectAltName",
    )


def test_an_expired_client_certificate(idle_vm: str, tmp_path: Path) -> None:
    ca = lab_ca()
    expired = tmp_path / "expired"
    write_client_pkipath(
        expired, ca.cert_pem(), issue(ca, LAB_CLIENT_CN, client=True, valid_days=-1)
    )
    _refused(idle_vm, f"qemu+tls://{HOST_B.address}/system?pkipath={expired}", "expired")


def test_a_client_name_hostb_does_not_allow(idle_vm: str, tmp_path: Path) -> None:
    ca = lab_ca()
    stranger = tmp_path / "stranger"
    write_client_pkipath(stranger, ca.cert_pem(), issue(ca, "someone-else", client=True))
    _refused(
        idle_vm, f"qemu+tls://{HOST_B.address}/system?pkipath={stranger}", "tls_allowed_dn_list"
    )


def test_wrong_or_missing_ssh_key(idle_vm: str, tmp_path: Path) -> None:
    private, _ = ssh_keypair()
    write_private(tmp_path / "stranger", private)
    command = CLIENT_SSH_DIR / "ssh"
    base = f"qemu+ssh://root@{HOST_B.address}/system?command={command}"
    _refused(idle_vm, f"{base}&keyfile={tmp_path / 'stranger'}", "refused the ssh key")
    _refused(idle_vm, f"{base}&keyfile={tmp_path / 'no-such-key'}", "cannot be read")


def test_a_changed_host_key(idle_vm: str) -> None:
    record = load_records()["hostB"]
    key = HOST_B.ssh_dir / HOST_KEY_NAME
    saved = key.read_bytes(), key.with_suffix(".pub").read_bytes()

    def restart_sshd() -> None:
        stop_sshd(record.mount_namespace)
        start_sshd(HOST_B, record.pid)
        wait_for_port(
            HOST_B.address, SSH_PORT, timeout=10, what="hostB's sshd", log=Path("/dev/null")
        )

    private, _ = ssh_keypair()
    write_private(key, private)
    restart_sshd()
    try:
        ssh_uri = HOST_B.ssh_uri
        _refused(idle_vm, ssh_uri, "host key", "ssh-keygen -R")
    finally:
        write_private(key, saved[0])
        key.with_suffix(".pub").write_bytes(saved[1])
        restart_sshd()
    assert run_cli("check", idle_vm, "--from", "hostA", "--to", HOST_B.ssh_uri).returncode == 0


def test_a_transport_the_host_does_not_serve(idle_vm: str) -> None:
    _refused(idle_vm, f"qemu+tcp://{HOST_B.address}/system", "does not serve qemu+tcp", "16514")


def test_a_local_user_who_is_not_root_cannot_get_in(lab: list[HostStatus]) -> None:
    if shutil.which("runuser") is None:
        pytest.fail("runuser (util-linux) is missing: scripts/setup.sh installs it")
    uris = list(HOST_B.uris(insecure_tcp=True).values())
    uris.append(f"qemu+unix:///system?socket={HOST_B.private_dir('/run/libvirt')}/libvirt-sock")
    uris.append(f"qemu+tls://{HOST_B.address}/system?pkipath={CLIENT_PKI_DIR}")
    for uri in uris:
        attempt = subprocess.run(
            ["runuser", "-u", "nobody", "--", "virsh", "-c", uri, "hostname"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert attempt.returncode != 0 and "hostB" not in attempt.stdout, (uri, attempt.stdout)
    assert (LAB_DIR / "ca").stat().st_mode & 0o077 == 0
    assert CLIENT_PKI_DIR.stat().st_mode & 0o077 == 0


@pytest.fixture
def host_b_without_ssh_helper(lab: list[HostStatus]) -> Iterator[None]:
    """hostB restarted with neither virt-ssh-helper nor nc in its namespace (as on a host
    without libvirt-clients); the real hostB back afterwards."""
    helper = shutil.which("virt-ssh-helper")
    if helper is None:
        pytest.fail("virt-ssh-helper (libvirt-clients) is missing: scripts/setup.sh installs it")
    records = load_records()
    old = records["hostB"]
    stop_host_processes(old)
    crippled = start_libvirtd(HOST_B, hide=[helper, *filter(None, [shutil.which("nc")])])
    wait_for_connection(HOST_B.uri, timeout=30, host="hostB").close()
    records["hostB"] = namespace_when_ready(crippled)
    save_records(records)
    start_sshd(HOST_B, crippled.pid)
    wait_for_port(HOST_B.address, SSH_PORT, timeout=10, what="hostB's sshd", log=Path("/dev/null"))
    try:
        yield
    finally:
        stop_host_processes(load_records()["hostB"])
        lab_up()


def test_a_host_without_virt_ssh_helper(idle_vm: str, host_b_without_ssh_helper: None) -> None:
    _refused(idle_vm, HOST_B.ssh_uri, "virt-ssh-helper", "libvirt-clients")
