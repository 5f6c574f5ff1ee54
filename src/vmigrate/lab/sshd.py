"""A lab host's sshd: in the host's own mount namespace (so `virt-ssh-helper` finds that
host's libvirt socket), on the host's address only, keys only, root's keys in its private
/root/.ssh."""

from __future__ import annotations

import functools
import shutil
from pathlib import Path

from vmigrate.errors import EnvironmentProblem
from vmigrate.lab.config import LabHost
from vmigrate.lab.credentials import HOST_KEY_NAME
from vmigrate.lab.ports import port_open, wait_for
from vmigrate.lab.processes import (
    executable_of,
    pids_in_mount_namespace,
    spawn_daemon,
    terminate,
)

SSH_PORT = 22


def render_sshd_config(host: LabHost) -> str:
    return "\n".join(
        [
            "# Written by `vmigrate lab up`.",
            f"ListenAddress {host.address}:{SSH_PORT}",
            f"HostKey {host.ssh_dir / HOST_KEY_NAME}",
            f"PidFile {host.ssh_dir / 'sshd.pid'}",
            "AuthorizedKeysFile /root/.ssh/authorized_keys",
            "AllowUsers root",
            "PermitRootLogin prohibit-password",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "X11Forwarding no",
            "AllowTcpForwarding no",
            "PermitTunnel no",
            "",
        ]
    )


def start_sshd(host: LabHost, libvirtd_pid: int) -> int:
    """Start the host's sshd inside the mount namespace of its libvirtd; returns its PID."""
    sshd = shutil.which("sshd", path="/usr/sbin:/usr/bin:/sbin:/bin")
    nsenter = shutil.which("nsenter", path="/usr/sbin:/usr/bin:/sbin:/bin")
    if sshd is None or nsenter is None:
        raise EnvironmentProblem(
            "`sshd` is not installed: the lab serves qemu+ssh from its own sshd per host",
            fix="run scripts/setup.sh as root (it installs openssh-server without starting it)",
        )
    config = host.ssh_dir / "sshd_config"
    config.write_text(render_sshd_config(host))
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation directory
    namespace = f"--mount=/proc/{libvirtd_pid}/ns/mnt"
    command = [nsenter, namespace, "--", sshd, "-D", "-e", "-f", str(config)]
    return spawn_daemon(command, host.root / "sshd.log")


def stop_sshd(mount_namespace: str) -> None:
    """Stop the sshd (and its sessions) left in a host's old namespace, nothing else of it."""
    pids = [
        pid
        for pid in pids_in_mount_namespace(mount_namespace)
        if executable_of(pid).endswith("/sshd")
    ]
    terminate(pids, grace_seconds=2.0)


def wait_for_port(address: str, port: int, *, timeout: float, what: str, log: Path) -> None:
    wait_for(
        functools.partial(port_open, address, port),
        timeout=timeout,
        what=f"{what} does not answer on {address}:{port}",
        log=log,
        fix=f"is something else listening on {address}:{port}? Stop it and retry",
    )
