"""libvirt's words for failed ssh and TLS connections, recorded from the real lab
(tests/unit/data/transport_errors.json), each turned into its cause and a fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vmigrate.transport_errors import diagnose

RECORDED = json.loads((Path(__file__).parent / "data" / "transport_errors.json").read_text())


@pytest.mark.parametrize("case", sorted(k for k in RECORDED if RECORDED[k]["message"]))
def test_each_recorded_failure_has_its_diagnosis(case: str) -> None:
    record = RECORDED[case]
    found = diagnose(record["uri"], record["message"])
    assert found is not None, record["message"]
    assert found.code == record["expect"], (found, record["message"])
    assert found.fix and found.cause


def test_an_unknown_failure_keeps_libvirt_words() -> None:
    assert diagnose("qemu+tls://h/system", "something nobody has seen") is None
    assert diagnose("qemu+tcp://h/system", "Connection refused") is None
    assert diagnose("not a uri", "Host key verification failed.") is None
