"""Cold-migration benchmarks C1-C3 (docs/benchmarks.md): vmigrate against virsh, side by side.

Each round moves the same image from hostA to hostB over a 1 Gbit/s lab link with every tool,
in an order that alternates between rounds:
- vmigrate cold (stream copy of the allocated data, checksums on both sides);
- virsh vol-download --sparse to a local file, then virsh vol-upload --sparse (the two-step
  users run when they have no shared storage and no SSH between the hosts);
- scp and rsync --sparse, to an sshd the benchmark starts on hostB's loopback address only
  (throwaway keys), writing straight into hostB's pool directory.
Measured per run: wall time, bytes through the link (tc counter), destination allocation,
whether the destination's bytes equal the source's, and the link bound (allocated bytes /
link throughput measured in the same run).

    python -m bench.cold [--scenario C1 ...] [--pairs 1] [--out bench/results/cold.json]

Needs root and `vmigrate lab up`.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import socket
import subprocess
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import libvirt

from bench.live import environment
from vmigrate.cold.runner import ColdRequest, migrate_cold
from vmigrate.lab import link
from vmigrate.lab.config import HOST_A, HOST_B
from vmigrate.lab.hostfs import file_sha256, in_host, on_host
from vmigrate.lab.vms import volume_xml

MIB, GIB = 1 << 20, 1 << 30
LINK = "1gbit"
POOL = "local"


@dataclass(frozen=True)
class Scenario:
    id: str
    description: str


SCENARIOS = {
    "C1": Scenario("C1", "raw, 4 GiB virtual, 1 GiB allocated with random data"),
    "C2": Scenario("C2", "qcow2, same content"),
    "C3": Scenario("C3", "qcow2 overlay (256 MiB written) on a 1 GiB qcow2 backing file"),
}


@dataclass
class Run:
    scenario: str
    tool: str
    round: int
    outcome: str
    total_s: float
    link_bytes: int
    allocated_bytes: int  # on the source, all files
    destination_allocated: int
    identical: bool
    link_mib_s: float


def _random_raw(conn: libvirt.virConnect, name: str, virtual: int, data: int) -> str:
    pool = conn.storagePoolLookupByName(POOL)
    volume = pool.createXML(volume_xml(name, "raw", virtual / GIB, sparse=True), 0)
    stream = conn.newStream(0)
    volume.upload(stream, 0, data, 0)
    block = 4 * MIB
    for _ in range(data // block):
        stream.send(os.urandom(block))
    stream.finish()
    return str(volume.path())


def make_images(scenario: str, tag: str) -> list[str]:
    """The scenario's files on hostA, bottom of the chain first; returns their paths."""
    # hostA's tools: a failure stops the benchmark, their output shows with ours
    on_a = functools.partial(in_host, "hostA", check=True, capture=False)
    conn = libvirt.open(HOST_A.uri)
    try:
        raw = _random_raw(conn, f"{tag}.img", 4 * GIB, GIB)
        if scenario == "C1":
            return [raw]
        if scenario == "C2":
            qcow = raw.removesuffix(".img") + ".qcow2"
            on_a("qemu-img", "convert", "-O", "qcow2", raw, qcow)
            on_a("rm", raw)
            conn.storagePoolLookupByName(POOL).refresh(0)
            return [qcow]
        base = raw.removesuffix(".img") + "-base.qcow2"
        top = raw.removesuffix(".img") + "-top.qcow2"
        on_a("truncate", "-s", str(GIB), raw)
        on_a("qemu-img", "convert", "-O", "qcow2", raw, base)
        on_a("rm", raw)
        on_a("qemu-img", "create", "-f", "qcow2", "-F", "qcow2", "-b", base, top)
        on_a("qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 256M", top)
        conn.storagePoolLookupByName(POOL).refresh(0)
        return [base, top]
    finally:
        conn.close()


def _allocated(host: str, paths: list[str]) -> int:
    return sum(on_host(host, p).stat().st_blocks * 512 for p in paths)


def domain_xml(vm: str, disk: str) -> str:
    """A small shut-off guest whose one disk is `disk` (raw if it ends in .img, else qcow2)."""
    domain = ET.Element("domain", type="qemu")
    ET.SubElement(domain, "name").text = vm
    ET.SubElement(domain, "memory", unit="MiB").text = "128"
    os_element = ET.SubElement(domain, "os")
    ET.SubElement(os_element, "type", arch="x86_64", machine="pc").text = "hvm"
    devices = ET.SubElement(domain, "devices")
    device = ET.SubElement(devices, "disk", type="file", device="disk")
    ET.SubElement(device, "driver", name="qemu", type="raw" if disk.endswith(".img") else "qcow2")
    ET.SubElement(device, "source", file=disk)
    ET.SubElement(device, "target", dev="vda", bus="virtio")
    return ET.tostring(domain, encoding="unicode")


def _define(vm: str, paths: list[str]) -> None:
    conn = libvirt.open(HOST_A.uri)
    conn.defineXML(domain_xml(vm, paths[-1]))
    conn.close()


def _virsh_two_step(paths: list[str]) -> str:
    with tempfile.TemporaryDirectory(dir="/var/tmp") as scratch:
        for path in paths:
            local = str(Path(scratch) / Path(path).name)
            name = Path(path).name
            subprocess.run(
                ["virsh", "-c", HOST_A.uri, "vol-download", "--pool", POOL, "--sparse", name,
                 local],
                check=True, capture_output=True,
            )  # fmt: skip
            size = on_host("hostA", path).stat().st_size
            subprocess.run(
                ["virsh", "-c", HOST_B.uri, "vol-create-as", POOL, name, str(size),
                 "--allocation", "0", "--format", "raw"],
                check=True, capture_output=True,
            )  # fmt: skip
            subprocess.run(
                ["virsh", "-c", HOST_B.uri, "vol-upload", "--pool", POOL, "--sparse", name,
                 local],
                check=True, capture_output=True,
            )  # fmt: skip
    return "completed"


SSH_PORT = 2222


@contextlib.contextmanager
def lab_sshd() -> Iterator[list[str]]:
    """An sshd for root on hostB's loopback address only; yields the ssh client options."""
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        for key in ("host_key", "client_key"):
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp / key)], check=True
            )
        (tmp / "authorized_keys").write_text((tmp / "client_key.pub").read_text())
        (tmp / "sshd_config").write_text(
            f"ListenAddress {HOST_B.address}:{SSH_PORT}\nHostKey {tmp}/host_key\n"
            f"AuthorizedKeysFile {tmp}/authorized_keys\nPermitRootLogin prohibit-password\n"
            f"PasswordAuthentication no\nStrictModes no\nUsePAM no\nPidFile {tmp}/sshd.pid\n"
            "Subsystem sftp internal-sftp\n"  # scp speaks SFTP by default on Debian 12
        )
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation directory
        daemon = subprocess.Popen(
            ["/usr/sbin/sshd", "-D", "-e", "-f", str(tmp / "sshd_config")],
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection((HOST_B.address, SSH_PORT), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            yield [
                "-i", str(tmp / "client_key"), "-o", "StrictHostKeyChecking=no",
                "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
            ]  # fmt: skip
        finally:
            daemon.terminate()
            daemon.wait()


def _over_ssh(tool: str, paths: list[str], ssh: list[str]) -> str:
    for path in paths:
        source, target = on_host("hostA", path), on_host("hostB", path)
        remote = f"root@{HOST_B.address}:{target}"
        if tool == "scp":
            command = ["scp", "-q", "-P", str(SSH_PORT), *ssh, str(source), remote]
        else:  # the options are our own fixed values, never user input
            shell = " ".join(["ssh", "-p", str(SSH_PORT), *ssh])
            command = ["rsync", "--sparse", "-e", shell, str(source), remote]
        subprocess.run(command, check=True, capture_output=True)
    return "completed"


def measure_link(seconds: float = 3.0) -> float:
    """MiB/s a plain TCP stream gets to hostB's address through the shaped link."""
    server = socket.create_server((HOST_B.address, 0))
    port = server.getsockname()[1]
    received = [0]

    def sink() -> None:
        peer, _ = server.accept()
        while chunk := peer.recv(1 << 20):
            received[0] += len(chunk)
        peer.close()

    thread = threading.Thread(target=sink)
    thread.start()
    client = socket.create_connection((HOST_B.address, port))
    payload = bytes(1 << 20)
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        client.sendall(payload)
    client.close()
    thread.join()
    elapsed = time.monotonic() - started
    server.close()
    return received[0] / MIB / elapsed


def _cleanup(vm: str, paths: list[str]) -> None:
    for uri in (HOST_A.uri, HOST_B.uri):
        conn = libvirt.open(uri)
        try:
            with contextlib.suppress(libvirt.libvirtError):
                conn.lookupByName(vm).undefine()
            pool = conn.storagePoolLookupByName(POOL)
            pool.refresh(0)
            for path in paths:
                with contextlib.suppress(libvirt.libvirtError):
                    pool.storageVolLookupByName(Path(path).name).delete(0)
        finally:
            conn.close()


def run_once(scenario: str, tool: str, round_no: int, link_mib_s: float, ssh: list[str]) -> Run:
    vm = f"bench-{scenario.lower()}-{round_no}-{tool.split()[0]}"
    paths = make_images(scenario, vm)
    try:
        allocated = _allocated("hostA", paths)
        digests = [file_sha256(on_host("hostA", p)) for p in paths]
        _define(vm, paths)
        link.shape(LINK)
        before = link.status().bytes_to_hostb
        started = time.monotonic()
        if tool == "vmigrate":
            report = migrate_cold(
                ColdRequest(vm, "hostA", "hostB", store_path=Path("/tmp/vmigrate-bench.sqlite"))
            )
            outcome = report.outcome
        elif tool == "virsh two-step":
            outcome = _virsh_two_step(paths)
        else:
            outcome = _over_ssh(tool, paths, ssh)
        total = time.monotonic() - started
        sent = link.status().bytes_to_hostb - before
        link.reset()
        identical = [file_sha256(on_host("hostB", p)) for p in paths] == digests
        return Run(
            scenario,
            tool,
            round_no,
            outcome,
            round(total, 2),
            sent,
            allocated,
            _allocated("hostB", paths),
            identical,
            round(link_mib_s, 1),
        )
    finally:
        link.reset()
        _cleanup(vm, paths)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.cold")
    parser.add_argument("--scenario", action="append", choices=sorted(SCENARIOS))
    parser.add_argument("--pairs", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("bench/results/cold.json"))
    args = parser.parse_args()
    tools = ("vmigrate", "virsh two-step", "scp", "rsync --sparse")
    link.shape(LINK)
    try:
        link_mib_s = measure_link()
    finally:
        link.reset()
    runs: list[Run] = []
    with lab_sshd() as ssh:
        _run_all(args, tools, link_mib_s, ssh, runs)


def _run_all(
    args: argparse.Namespace,
    tools: tuple[str, ...],
    link_mib_s: float,
    ssh: list[str],
    runs: list[Run],
) -> None:
    chosen = args.scenario or sorted(SCENARIOS)
    kept = []  # re-running some scenarios keeps the others' latest results
    if args.out.exists():
        previous = json.loads(args.out.read_text())["runs"]
        kept = [r for r in previous if r["scenario"] not in chosen]
    for scenario in chosen:
        for round_no in range(args.pairs):
            for tool in tools if round_no % 2 == 0 else tools[::-1]:
                run = run_once(scenario, tool, round_no, link_mib_s, ssh)
                print(json.dumps(asdict(run)), flush=True)
                runs.append(run)
                args.out.write_text(
                    json.dumps(
                        {
                            "environment": environment(),
                            "pairs": args.pairs,
                            "link": LINK,
                            "scenarios": {k: v.description for k, v in SCENARIOS.items()},
                            "runs": kept + [asdict(r) for r in runs],
                        },
                        indent=1,
                    )
                )


if __name__ == "__main__":
    main()
