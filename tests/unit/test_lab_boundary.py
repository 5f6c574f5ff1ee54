"""The product does not import the lab: only `lab/` and `cli/` (which plugs the lab in) may.

The lab reaches the product through two registries: its hosts through a host source
(vmigrate.hosts), its heartbeat through a guest gap probe (vmigrate.guest_gap)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = SRC / "vmigrate"
#: The packages allowed to import vmigrate.lab: the lab itself, and the CLI that installs it.
MAY_IMPORT_LAB = ("lab", "cli")
_IMPORTERS = ("import_module", "__import__")


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _product_files() -> list[Path]:
    return [
        path
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.relative_to(PACKAGE).parts[0] not in MAY_IMPORT_LAB
    ]


def _is_lab(name: str) -> bool:
    return name == "vmigrate.lab" or name.startswith("vmigrate.lab.")


def lab_imports(path: Path) -> list[str]:
    """`module:line imports name` for every import of vmigrate.lab anywhere in the file,
    at the top or inside a function, absolute or relative, or by importlib with a literal."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            names = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) in _IMPORTERS
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names = [node.args[0].value]
        line = getattr(node, "lineno", 0)
        found += [f"{module}:{line} imports {n}" for n in names if _is_lab(n)][:1]
    return found


def test_no_module_outside_lab_and_cli_imports_the_lab() -> None:
    files = _product_files()
    assert len(files) > 50  # the scan sees the product, not an empty directory
    offenders = [found for path in files for found in lab_imports(path)]
    assert not offenders, "the product imports the lab:\n" + "\n".join(offenders)


def test_the_scan_finds_every_way_of_importing_the_lab(tmp_path: Path) -> None:
    fleet = tmp_path / "src" / "vmigrate" / "fleet"
    fleet.mkdir(parents=True)
    sample = fleet / "sample.py"
    sample.write_text(
        "import vmigrate.lab.config\n"
        "from vmigrate import lab\n"
        "from ..lab.heartbeat import heartbeat_report\n"
        "def later():\n"
        "    from vmigrate.lab.state import running_lab_hosts\n"
        "    importlib.import_module('vmigrate.lab.vms')\n"
        "from vmigrate.labels import x\n"  # not the lab
    )
    global SRC
    saved, SRC = SRC, tmp_path / "src"
    try:
        found = lab_imports(sample)
    finally:
        SRC = saved
    assert [line.split(" imports ")[0] for line in found] == [
        "vmigrate.fleet.sample:1",
        "vmigrate.fleet.sample:2",
        "vmigrate.fleet.sample:3",
        "vmigrate.fleet.sample:5",
        "vmigrate.fleet.sample:6",
    ]


# A fresh interpreter: the product's modules, imported without the CLI, load no lab module,
# know no lab host, and measure no guest gap; installing the lab plugs all of it in.
PROBE = """
import importlib, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
loaded = sorted(m for m in sys.modules if m == "vmigrate.lab" or m.startswith("vmigrate.lab."))
assert not loaded, f"importing the product loaded {loaded}"
from vmigrate.errors import UsageError
from vmigrate.guest_gap import measured_gap_ms
from vmigrate.hosts import cluster_names, resolve_cluster, resolve_host
try:
    resolve_host("hostA")
except UsageError as err:
    assert "unknown host 'hostA'" in str(err), err
else:
    raise AssertionError("hostA resolved without the lab")
assert "lab" not in cluster_names()
assert measured_gap_ms("some-vm", 0) is None
from vmigrate.lab.plugin import install
install()
install()
ref = resolve_host("hostA")
assert ref.name == "hostA" and ref.capacity_mib == 4096 and ref.uri.startswith("qemu+tls://127.0.0.2/")
assert resolve_host(ref.uri).name == "hostA"
try:
    resolve_cluster("lab")
except UsageError as err:
    assert "the lab is not running" in str(err), err
print("ok")
"""


def test_the_product_runs_without_the_lab_and_the_lab_plugs_in(tmp_path: Path) -> None:
    modules = [
        _module_name(path)
        for path in _product_files()
        if path.name != "__main__.py" and _module_name(path) != "vmigrate.cli"
    ]
    result = subprocess.run(
        [sys.executable, "-c", PROBE, *modules],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
        # no hosts file, and no running lab
        env={"PYTHONPATH": str(SRC), "XDG_CONFIG_HOME": str(tmp_path),
             "VMIGRATE_LAB_DIR": str(tmp_path / "lab")},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "ok"
