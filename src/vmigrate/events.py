"""The events every job reports as it runs (pure): frozen, versioned types and their one JSON
mapping.

A job (live, cold, evacuate, balance, return) tells what it does by calling its `EventSink`
with these events. The terminal renders them, `--json` writes `encode(event)` one per line,
the fleet reads its children's lines back with `decode`, and each job writes them to the job
store (`JobEvents`), where another process (`vmigrate serve`) follows them by `seq`.

The encoding is a flat JSON object: `event` (the kind), `schema` (the version of that kind's
fields) and the fields. Events that carry a whole report (checks, plan, done) spread its keys
beside `event`, as `--json` always did. A reader that meets a kind it does not know, or a
newer version of one, gets an `Unknown` back instead of an error: newer vmigrates may add both.

`python -m vmigrate.events --schema` prints the JSON Schema generated from these types,
`--markdown` the table of docs/events.md.
"""

from __future__ import annotations

import json
import sys
import time
import types
from collections.abc import Callable
from dataclasses import MISSING, Field, asdict, dataclass, field, fields
from typing import Any, ClassVar, Protocol, Union, get_args, get_origin, get_type_hints

from vmigrate.live.samples import JobSample

#: The version every kind has today; a kind whose fields change incompatibly gets the next.
VERSION = 1
#: The keys every encoded event has besides its fields.
EVENT_KEY, SCHEMA_KEY = "event", "schema"


@dataclass(frozen=True)
class JobStarted:
    """The job is recorded in the store: from here on its events are stored too."""

    KIND: ClassVar[str] = "job"
    job_id: int
    store: str  # the store's path or URL (never with a password)


@dataclass(frozen=True)
class ChecksDone:
    """The pre-flight checks' report (CheckReport.to_dict(): ok, findings, ...)."""

    KIND: ClassVar[str] = "checks"
    SPREAD: ClassVar[str] = "report"
    report: dict[str, Any]


@dataclass(frozen=True)
class PlanMade:
    """What the job is about to do: a cold move's copies, an evacuation's or a balance
    round's moves with their predictions (the plan's to_dict())."""

    KIND: ClassVar[str] = "plan"
    SPREAD: ClassVar[str] = "plan"
    plan: dict[str, Any]


@dataclass(frozen=True)
class Sample:
    """One look at a running live migration (every 0.5 s). Sizes in bytes, rates in bytes
    per second, times in seconds since the migration started."""

    KIND: ClassVar[str] = "sample"
    elapsed_s: float
    phase: str  # setup | precopy | postcopy
    iteration: int  # pass number: 1 is the first full copy of memory
    memory_total: int
    memory_processed: int
    memory_remaining: int
    bandwidth_bps: float
    dirty_rate_bps: float
    expected_downtime_ms: float | None
    disk_total: int
    disk_processed: int
    disk_remaining: int
    throttle_pct: int | None  # auto-converge CPU throttle
    postcopy_requests: int
    disk_bandwidth_bps: float
    percent: float  # of the first full copy (memory and disks)
    downtime_limit_ms: float | None  # the limit the policy has set

    @classmethod
    def of(cls, sample: JobSample, downtime_limit_ms: float | None) -> Sample:
        return cls(**asdict(sample), percent=sample.percent, downtime_limit_ms=downtime_limit_ms)


@dataclass(frozen=True)
class CopyProgress:
    """How far the copy of one disk (or a cold move's state file) is, in bytes."""

    KIND: ClassVar[str] = "copy"
    path: str
    done: int
    total: int


@dataclass(frozen=True)
class PolicyAction:
    """Something the policy, the user (jobs cancel/set) or vmigrate did to a running live
    migration, and why."""

    KIND: ClassVar[str] = "action"
    at_s: float  # seconds since the migration started
    action: str  # set-downtime | set-bandwidth | postcopy | abort | note
    value: float | None
    reason: str
    by: str  # policy | user | vmigrate


@dataclass(frozen=True)
class Notice:
    """A sentence for the operator."""

    KIND: ClassVar[str] = "notice"
    message: str
    level: str = "info"  # info | warning


@dataclass(frozen=True)
class LeaseEvent:
    """The job's lease on the VM (docs/safety.md): taken, taken over, kept, released."""

    KIND: ClassVar[str] = "lease"
    SPREAD: ClassVar[str] = "lease"
    action: str
    host: str  # where the lease is (or "-")
    lease: dict[str, Any]  # the lease (job, owner, ttl_s, ...) or what was released


@dataclass(frozen=True)
class RollbackStep:
    """A cold move undoes what it did, after `reason`."""

    KIND: ClassVar[str] = "rollback"
    reason: str


@dataclass(frozen=True)
class MoveStarted:
    """A fleet operation (evacuate, balance, return) starts one move, as a child job."""

    KIND: ClassVar[str] = "move-start"
    vm: str
    source: str
    destination: str
    mode: str  # live | cold
    copy_storage: bool
    attempt: int
    predicted_s: float | None


@dataclass(frozen=True)
class MoveProgress:
    """How far one move of a fleet operation is, from its child job's events."""

    KIND: ClassVar[str] = "move-progress"
    vm: str
    destination: str
    phase: str  # checks | moving | setup | precopy | postcopy | copy | ...
    percent: float
    elapsed_s: float
    job_id: int | None  # the child's job, once it has one


@dataclass(frozen=True)
class MoveEnded:
    """One move of a fleet operation ended: where the VM is, how long it took against the
    prediction."""

    KIND: ClassVar[str] = "move-end"
    vm: str
    source: str
    destination: str | None  # where it went (moved), or where it was last tried
    state: str  # moved | stayed | unknown | cancelled
    mode: str
    reason: str
    seconds: float | None = None
    downtime_ms: float | None = None
    gap_ms: float | None = None
    bytes_sent: int | None = None
    predicted_s: float | None = None
    attempts: list[dict[str, Any]] = field(default_factory=list)
    job_id: int | None = None
    runs_on: str | None = None


@dataclass(frozen=True)
class Done:
    """The job's final report (outcome, message, ...: the report's to_dict())."""

    KIND: ClassVar[str] = "done"
    SPREAD: ClassVar[str] = "report"
    report: dict[str, Any]


Event = Union[  # noqa: UP007 (a Union object can be iterated with get_args)
    JobStarted,
    ChecksDone,
    PlanMade,
    Sample,
    CopyProgress,
    PolicyAction,
    Notice,
    LeaseEvent,
    RollbackStep,
    MoveStarted,
    MoveProgress,
    MoveEnded,
    Done,
]
EVENT_TYPES: tuple[type[Event], ...] = get_args(Event)
BY_KIND: dict[str, type[Event]] = {t.KIND: t for t in EVENT_TYPES}
#: Where a job's events go: the one signature every producer calls.
EventSink = Callable[[Event], None]


@dataclass(frozen=True)
class Unknown:
    """An encoded event this vmigrate cannot read: a kind it does not know, or a newer
    version of one (a newer vmigrate wrote it). Readers skip it."""

    kind: str
    version: int
    data: dict[str, Any]
    why: str


class EventDecodeError(ValueError):
    """An encoded event of a known kind and version whose fields are wrong."""


def _spread(kind: type[Event]) -> str | None:
    return getattr(kind, "SPREAD", None)


def encode(event: Event) -> dict[str, Any]:
    """The event as a flat JSON-able object: event, schema, then its fields (a spread
    report's keys beside them)."""
    out: dict[str, Any] = {EVENT_KEY: event.KIND, SCHEMA_KEY: VERSION}
    spread = _spread(type(event))
    for f in fields(event):
        value = getattr(event, f.name)
        if f.name == spread:
            reserved = {EVENT_KEY, SCHEMA_KEY, *(g.name for g in fields(event))}
            out.update((k, v) for k, v in value.items() if k not in reserved)
        else:
            out[f.name] = value
    return out


def to_json_line(event: Event) -> str:
    """One line of `--json` output."""
    return json.dumps(encode(event), default=str)


def print_json(event: Event) -> None:
    """The `--json` sink: one encoded event per line on stdout, flushed at once (a parent
    process reads the lines as they come)."""
    sys.stdout.write(to_json_line(event) + "\n")
    sys.stdout.flush()


def decode(data: dict[str, Any]) -> Event | Unknown:
    """The typed event of an encoded one (a line of `--json`, a stored body). An unknown kind
    or a newer version is an `Unknown`; a known one with wrong fields raises EventDecodeError."""
    kind = data.get(EVENT_KEY)
    version = data.get(SCHEMA_KEY, VERSION)  # lines from before versions were written: 1
    if not isinstance(version, int) or isinstance(version, bool):
        raise EventDecodeError(f"event {kind!r}: schema must be an integer, not {version!r}")
    if not isinstance(kind, str) or kind not in BY_KIND:
        return Unknown(str(kind), version, data, f"unknown event kind {kind!r}")
    if version > VERSION:
        why = f"{kind} events of version {version}: this vmigrate reads version {VERSION}"
        return Unknown(kind, version, data, why)
    event_type = BY_KIND[kind]
    hints = get_type_hints(event_type)
    spread = _spread(event_type)
    values: dict[str, Any] = {}
    for f in fields(event_type):
        if f.name == spread:
            names = {EVENT_KEY, SCHEMA_KEY, *(g.name for g in fields(event_type))}
            values[f.name] = {k: v for k, v in data.items() if k not in names}
            continue
        if f.name not in data:
            if _required(f):
                raise EventDecodeError(f"{kind} event without {f.name!r}: {data}")
            continue
        value = data[f.name]
        if not _matches(value, hints[f.name]):
            raise EventDecodeError(f"{kind} event: {f.name}={value!r} is not {hints[f.name]}")
        values[f.name] = value
    return event_type(**values)


def _required(f: Field[Any]) -> bool:
    return f.default is MISSING and f.default_factory is MISSING


def _matches(value: Any, hint: Any) -> bool:
    """Whether a decoded JSON value fits a field's type (ints count as floats)."""
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        return any(_matches(value, arm) for arm in get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    if origin is list:
        (item,) = get_args(hint)
        return isinstance(value, list) and all(_matches(v, item) for v in value)
    return True  # Any


# --- JSON Schema --------------------------------------------------------------------------


def _type_schema(hint: Any) -> dict[str, Any]:
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        return {"anyOf": [_type_schema(arm) for arm in get_args(hint)]}
    simple = {type(None): "null", bool: "boolean", int: "integer", float: "number", str: "string"}
    if hint in simple:
        return {"type": simple[hint]}
    if origin is dict or hint is dict:
        return {"type": "object"}
    if origin is list:
        return {"type": "array", "items": _type_schema(get_args(hint)[0])}
    return {}


def _event_schema(event_type: type[Event]) -> dict[str, Any]:
    hints = get_type_hints(event_type)
    spread = _spread(event_type)
    properties: dict[str, Any] = {
        EVENT_KEY: {"const": event_type.KIND},
        SCHEMA_KEY: {"type": "integer", "const": VERSION},
    }
    required = [EVENT_KEY]
    for f in fields(event_type):
        if f.name == spread:
            continue
        properties[f.name] = _type_schema(hints[f.name])
        if _required(f):
            required.append(f.name)
    doc = " ".join((event_type.__doc__ or "").split())
    if spread:
        doc += f" Its {spread}'s keys are spread beside these."
    return {
        "title": event_type.__name__,
        "description": doc,
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": spread is not None,
    }


def json_schema() -> dict[str, Any]:
    """The JSON Schema of one encoded event (a line of `--json`, a stored event's body)."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://vmigrate.invalid/schemas/event.json",
        "title": "vmigrate event",
        "description": f"One event of a vmigrate job, encoding version {VERSION}.",
        "oneOf": [{"$ref": f"#/$defs/{t.__name__}"} for t in EVENT_TYPES],
        "$defs": {t.__name__: _event_schema(t) for t in EVENT_TYPES},
    }


def _type_name(schema: dict[str, Any]) -> str:
    if "anyOf" in schema:
        return " or ".join(_type_name(arm) for arm in schema["anyOf"])
    if schema.get("type") == "array":
        return f"array of {_type_name(schema['items'])}"
    return str(schema.get("type", "any"))


def markdown_table() -> str:
    """Every kind, its fields and what it means (docs/events.md holds this table)."""
    lines = ["| `event` | type | fields | meaning |", "|---|---|---|---|"]
    for event_type in EVENT_TYPES:
        schema = _event_schema(event_type)
        required = set(schema["required"])
        names = [
            f"`{name}`{'' if name in required else '?'}: {_type_name(prop)}"
            for name, prop in schema["properties"].items()
            if name not in (EVENT_KEY, SCHEMA_KEY)
        ]
        if schema["additionalProperties"]:
            names.append(f"the {_spread(event_type)}'s keys")
        row = [
            f"`{event_type.KIND}`",
            event_type.__name__,
            "<br>".join(names),
            schema["description"],
        ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


# --- sinks --------------------------------------------------------------------------------


class EventStore(Protocol):
    """What JobEvents needs of the job store."""

    def append_event(self, job_id: int, kind: str, body: dict[str, Any]) -> int: ...


def ignore(_event: Event) -> None:
    """A sink for callers that want no events."""


class JobEvents:
    """A job's sink: writes each event to the store for its job, then passes it on.

    A job emits its checks and plan before the store knows it: those are kept and written
    when `attach` names the job. Copy progress is passed on at most every `copy_every_s` per
    file (and always at its start and end): a copy reports far more often than anyone reads.
    """

    def __init__(self, downstream: EventSink = ignore, *, copy_every_s: float = 0.5) -> None:
        self.downstream = downstream
        self.copy_every_s = copy_every_s
        self._store: EventStore | None = None
        self._job_id: int | None = None
        self._pending: list[Event] = []
        self._last_copy: dict[str, float] = {}

    def attach(self, store: EventStore, job_id: int) -> None:
        """From now on, write to `store` as job `job_id`'s events (the ones kept first)."""
        self._store, self._job_id = store, job_id
        pending, self._pending = self._pending, []
        for event in pending:
            store.append_event(job_id, event.KIND, encode(event))

    def start(self, store: EventStore, job_id: int, where: str) -> None:
        """The job exists in `store` (named `where`): attach, and say so (JobStarted)."""
        self.attach(store, job_id)
        self(JobStarted(job_id, where))

    def __call__(self, event: Event) -> None:
        if isinstance(event, CopyProgress) and not self._due(event):
            return
        if self._store is None or self._job_id is None:
            self._pending.append(event)
        else:
            self._store.append_event(self._job_id, event.KIND, encode(event))
        self.downstream(event)

    def _due(self, copy: CopyProgress) -> bool:
        now = time.monotonic()
        last = self._last_copy.get(copy.path)
        if last is None or copy.done >= copy.total or now - last >= self.copy_every_s:
            self._last_copy[copy.path] = now
            return True
        return False


def main(argv: list[str]) -> int:
    if argv == ["--schema"]:
        print(json.dumps(json_schema(), indent=2))
    elif argv == ["--markdown"]:
        print(markdown_table(), end="")
    else:
        print("usage: python -m vmigrate.events --schema | --markdown", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
