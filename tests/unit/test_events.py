"""The typed events (events.py): every type survives encode/decode, unknown kinds and newer
versions decode to Unknown, the JSON Schema covers every type and accepts what encode
writes, and JobEvents writes a job's events to a real store before passing them on."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from dataclasses import fields
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmigrate.events import (
    EVENT_TYPES,
    VERSION,
    CopyProgress,
    Done,
    Event,
    EventDecodeError,
    JobEvents,
    JobStarted,
    Notice,
    PlanMade,
    Sample,
    Unknown,
    decode,
    encode,
    json_schema,
    markdown_table,
    to_json_line,
)
from vmigrate.live.samples import JobSample
from vmigrate.store import JobStore, StoreLocation

JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)


def strategy_for(hint: Any) -> st.SearchStrategy[Any]:
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        return st.one_of(*(strategy_for(arm) for arm in get_args(hint)))
    simple: dict[Any, st.SearchStrategy[Any]] = {
        type(None): st.none(),
        bool: st.booleans(),
        int: st.integers(),
        float: st.floats(allow_nan=False, allow_infinity=False),
        str: st.text(),
    }
    if hint in simple:
        return simple[hint]
    if origin is dict:
        return st.dictionaries(st.text(), JSON_VALUES, max_size=4)
    if origin is list:
        return st.lists(strategy_for(get_args(hint)[0]), max_size=3)
    raise AssertionError(f"no strategy for {hint}")


def event_strategy(event_type: type[Event]) -> st.SearchStrategy[Event]:
    hints = get_type_hints(event_type)
    spread = getattr(event_type, "SPREAD", None)
    taken = {"event", "schema", *(f.name for f in fields(event_type))}
    values = {}
    for f in fields(event_type):
        if f.name == spread:  # its keys sit beside the fields: they cannot reuse their names
            keys = st.text().filter(lambda k: k not in taken)
            values[f.name] = st.dictionaries(keys, JSON_VALUES, max_size=4)
        else:
            values[f.name] = strategy_for(hints[f.name])
    return st.builds(event_type, **values)


class SchemaViolation(AssertionError):
    pass


def validate(value: Any, schema: dict[str, Any], root: dict[str, Any]) -> None:
    """A small JSON Schema checker for the keywords json_schema() uses (no library for it is
    installed): $ref, oneOf, anyOf, const, type, properties, required,
    additionalProperties, items."""
    if "$ref" in schema:
        validate(value, root["$defs"][schema["$ref"].rsplit("/", 1)[1]], root)
    if "oneOf" in schema:
        fits = 0
        for arm in schema["oneOf"]:
            try:
                validate(value, arm, root)
            except SchemaViolation:
                continue
            fits += 1
        if fits != 1:
            raise SchemaViolation(f"{value!r} fits {fits} of oneOf")
    if "anyOf" in schema:
        for arm in schema["anyOf"]:
            try:
                validate(value, arm, root)
            except SchemaViolation:
                continue
            break
        else:
            raise SchemaViolation(f"{value!r} fits no arm of anyOf")
    if "const" in schema and value != schema["const"]:
        raise SchemaViolation(f"{value!r} is not {schema['const']!r}")
    kinds = {
        "null": value is None,
        "boolean": isinstance(value, bool),
        "integer": isinstance(value, int) and not isinstance(value, bool),
        "number": isinstance(value, int | float) and not isinstance(value, bool),
        "string": isinstance(value, str),
        "object": isinstance(value, dict),
        "array": isinstance(value, list),
    }
    if "type" in schema and not kinds[schema["type"]]:
        raise SchemaViolation(f"{value!r} is not of type {schema['type']}")
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        for name in schema.get("required", []):
            if name not in value:
                raise SchemaViolation(f"{name!r} missing")
        for name, item in value.items():
            if name in properties:
                validate(item, properties[name], root)
            elif schema.get("additionalProperties") is False:
                raise SchemaViolation(f"{name!r} is not allowed")
    if isinstance(value, list) and "items" in schema:
        for item in value:
            validate(item, schema["items"], root)


def check(value: Any) -> None:
    schema = json_schema()
    validate(value, schema, schema)


ANY_EVENT = st.one_of(*(event_strategy(t) for t in EVENT_TYPES))


@settings(max_examples=400)
@given(ANY_EVENT)
def test_every_event_survives_encode_and_decode(event: Event) -> None:
    encoded = encode(event)
    assert encoded["event"] == event.KIND and encoded["schema"] == VERSION
    assert decode(encoded) == event
    assert decode(json.loads(to_json_line(event))) == event  # through a --json line


@settings(max_examples=200)
@given(ANY_EVENT)
def test_the_schema_accepts_every_encoded_event(event: Event) -> None:
    check(encode(event))


def test_the_schema_covers_every_type_and_field() -> None:
    schema = json_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert set(schema["$defs"]) == {t.__name__ for t in EVENT_TYPES}
    assert len(schema["oneOf"]) == len(EVENT_TYPES)
    kinds = {d["properties"]["event"]["const"] for d in schema["$defs"].values()}
    assert len(kinds) == len(EVENT_TYPES)  # one kind per type
    for event_type in EVENT_TYPES:
        spread = getattr(event_type, "SPREAD", None)
        properties = schema["$defs"][event_type.__name__]["properties"]
        assert {f.name for f in fields(event_type) if f.name != spread} <= set(properties)
    # A sample without its phase, or with a word for a number, is refused.
    sample = encode(Sample.of(JobSample(1.0, "precopy", 1, *[0] * 11), downtime_limit_ms=None))
    check(sample)
    with pytest.raises(SchemaViolation):
        check({k: v for k, v in sample.items() if k != "phase"})
    with pytest.raises(SchemaViolation):
        check({**sample, "memory_total": "lots"})
    with pytest.raises(SchemaViolation):
        check({"event": "teleport"})


def test_the_schema_is_printed_by_the_module() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "vmigrate.events", "--schema"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(result.stdout) == json_schema()


def test_a_sample_carries_every_field_of_a_job_sample() -> None:
    sample_fields = {f.name for f in fields(Sample)}
    assert {f.name for f in fields(JobSample)} <= sample_fields


def test_an_unknown_kind_or_a_newer_version_decodes_to_unknown() -> None:
    unknown = decode({"event": "teleport", "schema": 1, "to": "mars"})
    assert isinstance(unknown, Unknown)
    assert unknown.kind == "teleport" and "unknown event kind 'teleport'" in unknown.why
    newer = decode({"event": "done", "schema": VERSION + 1, "outcome": "completed"})
    assert isinstance(newer, Unknown)
    assert newer.why == f"done events of version {VERSION + 1}: this vmigrate reads version 1"
    assert isinstance(decode({"no": "kind"}), Unknown)


def test_a_line_from_before_versions_decodes_as_version_1() -> None:
    assert decode({"event": "job", "job_id": 7, "store": "/s"}) == JobStarted(7, "/s")


def test_wrong_fields_of_a_known_kind_are_a_clear_error() -> None:
    with pytest.raises(EventDecodeError, match="copy event without 'total'"):
        decode({"event": "copy", "path": "/d", "done": 1})
    with pytest.raises(EventDecodeError, match="copy event: done='1'"):
        decode({"event": "copy", "path": "/d", "done": "1", "total": 2})
    with pytest.raises(EventDecodeError, match="schema must be an integer"):
        decode({"event": "copy", "schema": "one"})


def test_a_report_is_spread_beside_the_kind_as_json_always_was() -> None:
    done = Done({"outcome": "completed", "placement_ok": True})
    assert encode(done) == {
        "event": "done",
        "schema": 1,
        "outcome": "completed",
        "placement_ok": True,
    }


def test_job_events_are_stored_for_their_job_then_passed_on(store_at: StoreLocation) -> None:
    store = JobStore(store_at)
    passed: list[Event] = []
    sink = JobEvents(passed.append, copy_every_s=3600)
    plan = PlanMade({"copies": []})
    sink(plan)  # before the job exists: kept
    assert store.events_after(0) == [] and passed == [plan]
    job = store.create_job("cold", "db1", "hostA", "hostB", {})
    sink.attach(store, job)
    sink(JobStarted(job, str(store.path)))
    for done in (0, 10, 20, 100):  # only the first and the last pass within the hour
        sink(CopyProgress("/d.qcow2", done, 100))
    sink(Notice("careful", level="warning"))
    stored = store.events_after(0, job_id=job)
    assert [decode(e.body) for e in stored] == [
        plan,
        JobStarted(job, str(store.path)),
        CopyProgress("/d.qcow2", 0, 100),
        CopyProgress("/d.qcow2", 100, 100),
        Notice("careful", "warning"),
    ]
    assert [e.kind for e in stored] == ["plan", "job", "copy", "copy", "notice"]
    assert passed == [decode(e.body) for e in stored]


def test_docs_events_md_holds_the_generated_table() -> None:
    text = (Path(__file__).parents[2] / "docs" / "events.md").read_text()
    assert markdown_table() in text, "run `python -m vmigrate.events --markdown`"
    for event_type in EVENT_TYPES:
        assert f"| `{event_type.KIND}` | {event_type.__name__} |" in text
