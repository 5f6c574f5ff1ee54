"""vmigrate: move KVM virtual machines between libvirt hosts, live or cold.

The library logs through `logging`; only the CLI configures handlers.
"""

from __future__ import annotations

import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = ["__version__"]
