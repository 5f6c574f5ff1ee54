"""vmigrate: move KVM virtual machines between libvirt hosts, live or cold.

The public API:

    from vmigrate import check, migrate_live, LiveRequest, PRESETS

    report = check("web1", "hostA", "hostB")            # CheckReport: findings, .failed
    result = migrate_live(LiveRequest("web1", "hostA", "hostB", PRESETS["fast"]))

The library logs through `logging`; only the CLI configures handlers.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

# Imported on first use, so `import vmigrate` stays cheap and needs no libvirt connection.
_EXPORTS = {
    "check": ("vmigrate.preflight", "run_checks"),
    "migrate_live": ("vmigrate.live.runner", "migrate_live"),
    "LiveRequest": ("vmigrate.live.runner", "LiveRequest"),
    "LiveReport": ("vmigrate.live.runner", "LiveReport"),
    "PRESETS": ("vmigrate.live.policy", "PRESETS"),
    "PolicyConfig": ("vmigrate.live.policy", "PolicyConfig"),
    "CheckReport": ("vmigrate.model", "CheckReport"),
    "Finding": ("vmigrate.model", "Finding"),
    "Mode": ("vmigrate.model", "Mode"),
    "Verdict": ("vmigrate.model", "Verdict"),
    "JobStore": ("vmigrate.store", "JobStore"),
    "VmigrateError": ("vmigrate.errors", "VmigrateError"),
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'vmigrate' has no attribute {name!r}")
    module, attribute = _EXPORTS[name]
    return getattr(importlib.import_module(module), attribute)
