"""What every route shares: the server's settings, the store, the inventory, the children."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.requests import Request

from vmigrate.serve.children import Children
from vmigrate.serve.events import EventHub
from vmigrate.serve.inventory import Inventory
from vmigrate.serve.storeaccess import StoreAccess
from vmigrate.store import StoreLocation


@dataclass
class ServeState:
    store_location: StoreLocation | None
    hosts_file: Path | None
    access: StoreAccess
    inventory: Inventory
    children: Children
    hub: EventHub
    job_hosts: dict[int, tuple[str, ...]] = field(default_factory=dict)

    def store_arg(self) -> str | None:
        return str(self.store_location) if self.store_location is not None else None

    def hosts_arg(self) -> str | None:
        return str(self.hosts_file) if self.hosts_file is not None else None


def state_of(request: Request) -> ServeState:
    found: ServeState = request.app.state.serve
    return found


def caller_name(request: Request) -> str:
    caller: Any = request.scope.get("state", {}).get("caller")
    return str(caller.name) if caller is not None else "?"
