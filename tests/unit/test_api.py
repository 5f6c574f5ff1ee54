from __future__ import annotations

import pytest

import vmigrate


def test_public_api_resolves() -> None:
    assert callable(vmigrate.check) and callable(vmigrate.migrate_live)
    assert set(vmigrate.PRESETS) == {"fast", "safe", "strict"}
    with pytest.raises(AttributeError):
        _ = vmigrate.nothing_here
