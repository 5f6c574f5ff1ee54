"""The copy's digest: the same bytes digest the same whatever the hole layout and chunking."""

from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st

from vmigrate.virt.streams import CHUNK, BlockDigest


def _digest(pieces: list[tuple[str, int, bytes]]) -> str:
    digest = BlockDigest()
    for kind, length, data in pieces:
        if kind == "hole":
            digest.update_zeros(length)
        else:
            digest.update(data)
    return digest.hexdigest()


def test_holes_digest_like_zeros_written_as_data() -> None:
    data = os.urandom(CHUNK + 12345)
    sparse = [("data", len(data), data), ("hole", 3 * CHUNK + 7, b""), ("data", 3, b"abc")]
    dense = [("data", 0, data + bytes(3 * CHUNK + 7) + b"abc")]
    assert _digest(sparse) == _digest(dense)
    assert _digest(sparse) != _digest([("data", 0, data + bytes(3 * CHUNK + 8) + b"abc")])


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=CHUNK // 3), min_size=1, max_size=12))
def test_chunking_does_not_change_the_digest(cuts: list[int]) -> None:
    payload = os.urandom(sum(cuts))
    whole = _digest([("data", 0, payload)])
    pieces, at = [], 0
    for cut in cuts:
        pieces.append(("data", cut, payload[at : at + cut]))
        at += cut
    assert _digest(pieces) == whole
