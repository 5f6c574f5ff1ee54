"""Only `virt/` talks to libvirt: the pure stages import without it, so checks, plans, policy
and estimates run (and are tested) on a machine that has no libvirt at all."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "vmigrate"

#: Modules that must never pull in libvirt, directly or through what they import.
PURE_MODULES = (
    "vmigrate",
    "vmigrate.errors",
    "vmigrate.model",
    "vmigrate.facts",
    "vmigrate.versions",
    "vmigrate.hosts",
    "vmigrate.estimate",
    "vmigrate.journal",
    "vmigrate.lease",
    "vmigrate.failpoints",
    "vmigrate.store",
    "vmigrate.store_sql",
    "vmigrate.events",
    "vmigrate.trusted_checks",
    "vmigrate.lifecycle",
    "vmigrate.owner",
    "vmigrate.domxml.cpu",
    "vmigrate.domxml.capabilities",
    "vmigrate.migration_features",
    "vmigrate.known_incompatibilities",
    "vmigrate.checks.machine",
    "vmigrate.domxml.domain",
    "vmigrate.domxml.rewrite",
    "vmigrate.domxml.secrets",
    "vmigrate.domxml.adapt",
    "vmigrate.checks.connectivity",
    "vmigrate.checks.context",
    "vmigrate.checks.cpu",
    "vmigrate.checks.devices",
    "vmigrate.checks.drivers",
    "vmigrate.checks.resources",
    "vmigrate.checks.storage",
    "vmigrate.checks.versions",
    "vmigrate.cold.plan",
    "vmigrate.cold.errors",
    "vmigrate.live.policy",
    "vmigrate.live.rehearsal",
    "vmigrate.live.postcopy_cost",
    "vmigrate.live.history",
    "vmigrate.live.samples",
    "vmigrate.live.request",
    "vmigrate.live.storage_plan",
    "vmigrate.live.recovery_plan",
    "vmigrate.live.failure",
    "vmigrate.capacity",
    "vmigrate.fleet.plan",
    "vmigrate.fleet.stream",
    "vmigrate.fleet.rolling_order",
    "vmigrate.lab.host_freeze",
    "vmigrate.fleet.predict",
    "vmigrate.fleet.moves",
    "vmigrate.fleet.logs",
    "vmigrate.fleet.outcome",
    "vmigrate.fleet.balance",
    "vmigrate.lab.state",
    "vmigrate.lab.config",
    "vmigrate.lab.host_source",
    "vmigrate.lab.plugin",
    "vmigrate.lab.releases",
    "vmigrate.lab.rootfs",
    "vmigrate.guest_gap",
    "vmigrate.cli.layout",
    "vmigrate.cli.host_names",
    "vmigrate.cli.render_findings",
    "vmigrate.cli.render_jobs",
    "vmigrate.cli.render_plan",
    "vmigrate.cli.render_lab",
    "vmigrate.serve.app",  # the server itself: only its inventory's gather reads hosts
    "vmigrate.serve.tokens",
    "vmigrate.serve.actions",
    "vmigrate.serve.metrics",
)

# Runs in a fresh interpreter in which importing libvirt fails, as on a machine without it.
PROBE = """
import importlib, sys
class NoLibvirt:
    def find_spec(self, name, path=None, target=None):
        if name in ("libvirt", "libvirtmod") or name.startswith("libvirt."):
            raise ImportError("libvirt is absent on this machine")
        return None
sys.meta_path.insert(0, NoLibvirt())
for name in sys.argv[1:]:
    importlib.import_module(name)
assert "libvirt" not in sys.modules, "libvirt was imported"
print("ok", len(sys.argv) - 1)
"""


def test_pure_modules_import_without_libvirt() -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, *PURE_MODULES],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"ok {len(PURE_MODULES)}"


def test_each_pure_module_alone_leaves_libvirt_out() -> None:
    # One interpreter per module: an import that only works because an earlier module
    # happened to be loaded first would hide here otherwise.
    for name in PURE_MODULES:
        result = subprocess.run(
            [sys.executable, "-c", PROBE, name], capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, f"{name}: {result.stderr.strip().splitlines()[-1:]}"


def test_only_virt_imports_libvirt() -> None:
    offenders = [
        str(path.relative_to(SRC))
        for path in SRC.rglob("*.py")
        if "virt" not in path.relative_to(SRC).parts[:1]
        and any(
            line.strip().startswith(("import libvirt", "from libvirt"))
            for line in path.read_text().splitlines()
        )
    ]
    assert offenders == []
