"""One lab per test session; each test names its own VMs and removes them afterwards."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import Iterator

import pytest

from vmigrate.errors import VmigrateError
from vmigrate.lab.image import load_guest_image
from vmigrate.lab.lifecycle import HostStatus, lab_down, lab_up, running_hosts
from vmigrate.lab.vms import remove_vm

pytestmark = pytest.mark.lab


@pytest.fixture(scope="session")
def lab() -> Iterator[list[HostStatus]]:
    # Lab tests must run, never skip: a skipped lab test proves nothing.
    if os.geteuid() != 0:
        pytest.fail("the lab tests need root: run scripts/test.sh as root")
    if load_guest_image() is None:
        pytest.fail("the lab guest image is not built: run scripts/setup.sh")
    was_up = bool(running_hosts())
    hosts = lab_up()
    yield hosts
    if not was_up:
        lab_down()


@pytest.fixture
def vm_name(request: pytest.FixtureRequest) -> Iterator[str]:
    """A VM name unique to this test, removed from the lab afterwards."""
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40]
    name = f"t-{slug}-{secrets.token_hex(2)}"
    yield name
    with contextlib.suppress(VmigrateError):
        remove_vm(name)
