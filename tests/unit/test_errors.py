from __future__ import annotations

from vmigrate.errors import UsageError, VmigrateError


def test_error_names_host_and_vm_and_what_to_do() -> None:
    err = VmigrateError("port 16509 refused", host="hostB", vm="web1", fix="open it")
    assert str(err) == "host hostB, VM web1: port 16509 refused\n  what to do: open it"
    assert err.exit_code == 1


def test_usage_errors_exit_2() -> None:
    assert UsageError("bad").exit_code == 2
    assert str(UsageError("bad")) == "bad"
