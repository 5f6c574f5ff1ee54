"""A lab host on another release: `--version HOST=RELEASE` parsing, the root cache key and
what a finished root is, the record that remembers it, and how `lab status` shows it."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from vmigrate.cli.main import cli
from vmigrate.cli.render_lab import lab_status_lines
from vmigrate.errors import UsageError
from vmigrate.lab import rootfs, state
from vmigrate.lab.config import lab_hosts
from vmigrate.lab.daemons import DaemonRecord
from vmigrate.lab.releases import BOOKWORM, parse_version_specs, release_named

THREE_HOSTS = lab_hosts(3)


def test_a_host_of_the_lab_runs_a_known_release() -> None:
    assert parse_version_specs(["hostC=bookworm"], THREE_HOSTS) == {"hostC": BOOKWORM}
    # Host names as everywhere in the lab: `C` and `hostc` name hostC.
    assert parse_version_specs(["c=Bookworm"], THREE_HOSTS) == {"hostC": BOOKWORM}
    assert parse_version_specs([], THREE_HOSTS) == {}


def test_an_unknown_release_is_refused_with_the_known_ones() -> None:
    with pytest.raises(UsageError) as caught:
        parse_version_specs(["hostC=trixie"], THREE_HOSTS)
    assert "'trixie'" in caught.value.message
    assert "bookworm" in str(caught.value.fix)
    with pytest.raises(UsageError):
        release_named("jessie")


@pytest.mark.parametrize(
    ("spec", "said"),
    [
        ("hostD=bookworm", "not a host of this lab"),  # a lab of three hosts has no hostD
        ("hostX=bookworm", "not a host of this lab"),
        ("hostC", "not HOST=RELEASE"),
        ("=bookworm", "not HOST=RELEASE"),
        ("hostC=", "not HOST=RELEASE"),
    ],
)
def test_a_malformed_or_foreign_spec_is_refused(spec: str, said: str) -> None:
    with pytest.raises(UsageError, match=said):
        parse_version_specs([spec], THREE_HOSTS)


def test_a_host_named_twice_is_refused() -> None:
    with pytest.raises(UsageError, match="twice"):
        parse_version_specs(["hostC=bookworm", "C=bookworm"], THREE_HOSTS)


def test_the_root_cache_key_follows_the_package_list() -> None:
    assert BOOKWORM.key.startswith("bookworm-")
    reordered = replace(BOOKWORM, packages=tuple(reversed(BOOKWORM.packages)))
    assert reordered.key == BOOKWORM.key  # the same packages: the same root
    more = replace(BOOKWORM, packages=(*BOOKWORM.packages, "rsync"))
    assert more.key != BOOKWORM.key


def test_only_a_root_with_its_manifest_counts_as_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rootfs, "ROOTS_DIR", tmp_path)
    root = tmp_path / BOOKWORM.key
    root.mkdir()  # e.g. renamed by hand, or a build of an older vmigrate
    assert rootfs.cached_root(BOOKWORM) is None
    (root / rootfs.MANIFEST).write_text(json.dumps({"release": "bookworm"}))
    assert rootfs.cached_root(BOOKWORM) == root


def test_the_record_remembers_the_release(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(state, "STATE_FILE", tmp_path / "state.json")
    monkeypatch.setattr(state, "LAB_DIR", tmp_path)
    state.save_records({"hostC": DaemonRecord(7, "mnt:[1]", release="bookworm")})
    assert state.load_records()["hostC"].release == "bookworm"
    # A state file written before releases existed reads as the machine's own packages.
    (tmp_path / "state.json").write_text(
        json.dumps({"hosts": {"hostA": {"pid": 5, "mount_namespace": "mnt:[2]"}}})
    )
    assert state.load_records()["hostA"].release == ""


def _host(name: str, release: str, libvirt: str) -> dict[str, object]:
    return {
        "name": name,
        "address": "127.0.0.4",
        "uris": {"tls": "x"},
        "capacity_mib": 3072,
        "vcpus": 4,
        "running": True,
        "pid": 10,
        "release": release,
        "libvirt_version": libvirt,
        "qemu_version": "7.2.19" if release == "bookworm" else "10.0.2",
        "accelerator": "tcg",
        "vms": [],
    }


def test_status_says_which_host_runs_another_release() -> None:
    hosts = [_host("hostA", "system", "11.3.0"), _host("hostC", "bookworm", "9.0.0")]
    text = "\n".join(line.plain for line in lab_status_lines(hosts, 160))
    assert "9.0.0\u00a0(bookworm)" in text or "9.0.0 (bookworm)" in text
    assert "11.3.0 (system)" not in text and "(system)" not in text


def test_nsinit_refuses_a_root_without_its_overlay_directory() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "vmigrate.lab.nsinit", "--hostname=h", "--root=/x", "--", "true"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "--root needs --overlay-dir" in result.stderr


def test_lab_up_with_an_unknown_release_is_a_usage_error() -> None:
    result = CliRunner().invoke(cli, ["lab", "up", "--hosts", "3", "--version", "hostC=etch"])
    assert result.exit_code == 2
    assert "the lab knows no release 'etch'" in result.output
