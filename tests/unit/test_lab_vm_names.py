"""Lab VM names: every `vmigrate lab` command that takes one refuses a name that could reach
outside the lab's directory, before it touches anything (no lab or libvirt needed)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vmigrate.errors import UsageError
from vmigrate.lab.vms import check_vm_name

BAD_NAMES = ["../../x", "a/b", "/etc/passwd", "..", "a..b", ".hidden", "-rf", "", "a" * 64, "a\n"]


@pytest.mark.parametrize("name", ["vm1", "web-01.example", "a_b", "A", "a" * 63])
def test_valid_names(name: str) -> None:
    assert check_vm_name(name) == name


@pytest.mark.parametrize("name", BAD_NAMES)
def test_invalid_names_say_what_a_valid_name_is(name: str) -> None:
    with pytest.raises(UsageError) as caught:
        check_vm_name(name)
    assert repr(name) in str(caught.value)
    assert "letters, digits" in caught.value.fix and "no '/'" in caught.value.fix


def _vmigrate(*args: str, lab_dir: Path) -> subprocess.CompletedProcess[str]:
    """`vmigrate ARGS` as a user runs it, against a lab directory of the test's own."""
    script = Path(sys.executable).parent / "vmigrate"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "vmigrate.cli.main"]
    return subprocess.run(
        [*command, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "VMIGRATE_LAB_DIR": str(lab_dir)},
        check=False,
    )


@pytest.mark.parametrize(
    "command",
    [
        ("lab", "vm", "rm"),
        ("lab", "vm", "set-rate", "NAME", "10"),
        ("lab", "vm", "create"),
        ("lab", "heartbeat"),
    ],
    ids=["rm", "set-rate", "create", "heartbeat"],
)
def test_lab_commands_refuse_a_name_that_leaves_the_lab_directory(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    lab_dir = tmp_path / "outside" / "lab"
    heartbeat_dir = lab_dir / "heartbeat"  # where a VM's console files live
    heartbeat_dir.mkdir(parents=True)
    # What `lab vm rm ../../x` would delete: the console log, collector pid file, socket
    # and control file of "VM ../../x", i.e. files next to the lab directory.
    planted = [tmp_path / "outside" / f"x.{ext}" for ext in ("log", "pid", "sock", "ctl")]
    for path in planted:
        path.write_text("not the lab's\n")
    assert (heartbeat_dir / "../../x.log").read_text() == "not the lab's\n"
    name = "../../x"
    args = [name if a == "NAME" else a for a in command]
    if "NAME" not in command:
        args.append(name)
    result = _vmigrate(*args, lab_dir=lab_dir)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "'../../x' is not a valid lab VM name" in result.stderr
    assert "letters, digits" in result.stderr  # what a valid name is
    assert "Traceback" not in result.stdout + result.stderr
    for path in planted:
        assert path.read_text() == "not the lab's\n", path
