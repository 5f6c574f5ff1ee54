"""What each action accepts (JSON fields, their types) and the `vmigrate` command line it
becomes (pure). Names are checked against the inventory and the store before anything runs,
so an unknown VM, host or job is refused with the CLI's own message and fix."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vmigrate.errors import UsageError

#: A field's type: bool, int, float (an int is accepted), str, a list of str.
FieldType = type[bool] | type[int] | type[float] | type[str] | type[list[str]]


@dataclass(frozen=True)
class Field:
    name: str
    kind: FieldType
    required: bool = False
    choices: tuple[str, ...] = ()
    flag: str = ""  # the CLI option; "" for a positional argument or a server-side field
    minimum: float | None = None
    help: str = ""


@dataclass(frozen=True)
class Action:
    name: str
    command: tuple[str, ...]  # the vmigrate subcommand
    fields: tuple[Field, ...]
    starts_job: bool  # True: answered once the child names its job; False: waited for
    help: str
    store: bool = True  # the command takes --store
    json_flag: bool = True

    def field(self, name: str) -> Field:
        return next(f for f in self.fields if f.name == name)


def _move_fields(*extra: Field) -> tuple[Field, ...]:
    return (
        Field("vm", str, required=True, help="the VM's name"),
        Field("from", str, required=True, flag="--from", help="source host"),
        Field("to", str, required=True, flag="--to", help="destination host"),
        *extra,
    )


DRY_RUN = Field("dry_run", bool, flag="--dry-run", help="print the plan; change nothing")
ACTIONS: dict[str, Action] = {
    action.name: action
    for action in (
        Action(
            "check",
            ("check",),
            _move_fields(
                Field("mode", str, choices=("live", "cold"), flag="--mode"),
                Field("copy_storage", bool, flag="--copy-storage"),
            ),
            starts_job=False,
            store=False,
            help="pre-flight checks of one move (changes nothing)",
        ),
        Action(
            "estimate",
            ("estimate",),
            _move_fields(
                Field("bandwidth_mib", float, flag="--bandwidth", minimum=0.001),
                Field("max_downtime_ms", float, flag="--max-downtime", minimum=1),
                Field("no_postcopy", bool, flag="--no-postcopy"),
                Field("measure_s", int, flag="--measure", minimum=1),
            ),
            starts_job=False,
            store=False,
            help="how long a live move would take, from the measured dirty rate",
        ),
        Action(
            "live",
            ("live",),
            _move_fields(
                Field("policy", str, choices=("fast", "safe", "strict"), flag="--policy"),
                Field("max_downtime_ms", int, flag="--max-downtime", minimum=1),
                Field("timeout_s", float, flag="--timeout", minimum=0.001),
                Field("bandwidth_mib", int, flag="--bandwidth", minimum=1),
                Field("copy_storage", bool, flag="--copy-storage"),
            ),
            starts_job=True,
            help="move a running VM live; its dry run is `check`",
        ),
        Action(
            "cold",
            ("cold",),
            _move_fields(
                Field("keep_state", bool, flag="--keep-state"),
                Field("shutdown_timeout_s", float, flag="--shutdown-timeout", minimum=1),
                DRY_RUN,
            ),
            starts_job=True,
            help="move a VM stopped (shut down, copied, started there)",
        ),
        Action(
            "evacuate",
            ("evacuate",),
            (
                Field("host", str, required=True, help="the host to empty"),
                Field("to", list, flag="--to", help="target hosts [default: its cluster]"),
                Field("cluster", str, flag="--cluster"),
                Field("mode", str, choices=("live", "cold", "auto"), flag="--mode"),
                Field("max_parallel", int, flag="--max-parallel", minimum=1),
                Field("max_per_host", int, flag="--max-per-host", minimum=1),
                Field("bandwidth_mib", float, flag="--bandwidth", minimum=0.001),
                DRY_RUN,
            ),
            starts_job=True,
            help="move every VM off a host and mark it in maintenance",
        ),
        Action(
            "balance",
            ("balance",),
            (
                Field("cluster", str, flag="--cluster"),
                Field("threshold", float, flag="--threshold", minimum=0),
                Field("min_gain", float, flag="--min-gain", minimum=0),
                Field("max_moves", int, flag="--max-moves", minimum=1),
                Field("window_s", float, flag="--window", minimum=0.1),
                Field("max_parallel", int, flag="--max-parallel", minimum=1),
                Field("bandwidth_mib", float, flag="--bandwidth", minimum=0.001),
                DRY_RUN,
            ),
            starts_job=True,
            help="one balance round over a cluster",
        ),
        Action(
            "rolling",
            ("rolling",),
            (
                Field("cluster", str, required=True, flag="--cluster"),
                Field(
                    "run",
                    str,
                    required=True,
                    flag="--run",
                    help="the command per host, {host} replaced; run on the server's machine "
                    "as its user, never through a shell",
                ),
                Field("hosts_at_once", int, flag="--hosts-at-once", minimum=1),
                Field("command_timeout_s", float, flag="--command-timeout", minimum=1),
                Field("wait_s", float, flag="--wait", minimum=1),
                Field("max_parallel", int, flag="--max-parallel", minimum=1),
                Field("bandwidth_mib", float, flag="--bandwidth", minimum=0.001),
                DRY_RUN,
            ),
            starts_job=True,
            help="a rolling upgrade: each host emptied, its command run, checked, refilled",
        ),
        Action(
            "maintenance-start",
            ("maintenance", "start"),
            (
                Field("host", str, required=True),
                Field("reason", str, flag="--reason"),
            ),
            starts_job=False,
            json_flag=False,
            help="mark a host in maintenance (no plan sends VMs there)",
        ),
        Action(
            "maintenance-end",
            ("maintenance", "end"),
            (
                Field("host", str, required=True),
                Field("return", bool, flag="--return", help="move back what it evacuated"),
            ),
            starts_job=False,
            help="end a host's maintenance (optionally move its VMs back)",
        ),
    )
}
#: The positional argument of each action, in order (the rest are options).
POSITIONAL = ("vm", "host")
#: Longest text accepted in a field (names, reasons).
MAX_TEXT = 200


def _bad(message: str, fix: str) -> UsageError:
    return UsageError(message, fix=fix)


def _typed(action: Action, spec: Field, value: Any) -> Any:
    where = f"{action.name}: field {spec.name!r}"
    if spec.kind is bool:
        if not isinstance(value, bool):
            raise _bad(f"{where} must be true or false, not {value!r}", "send a JSON boolean")
        return value
    if spec.kind in (int, float):
        number_ok = isinstance(value, int | float) and not isinstance(value, bool)
        if not number_ok or (spec.kind is int and not isinstance(value, int)):
            raise _bad(f"{where} must be a number ({spec.kind.__name__}), not {value!r}",
                       "send a JSON number")  # fmt: skip
        if spec.minimum is not None and value < spec.minimum:
            raise _bad(f"{where} must be at least {spec.minimum:g}", "send a larger number")
        return value
    if spec.kind is list:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise _bad(f"{where} must be a list of names", 'e.g. ["hostB", "hostC"]')
        return [_text(where, v) for v in value]
    if not isinstance(value, str):
        raise _bad(f"{where} must be text, not {value!r}", "send a JSON string")
    text = _text(where, value)
    if spec.choices and text not in spec.choices:
        raise _bad(f"{where} must be one of {', '.join(spec.choices)}, not {text!r}",
                   f"use one of {', '.join(spec.choices)}")  # fmt: skip
    return text


def _text(where: str, value: str) -> str:
    if not value or len(value) > MAX_TEXT or any(ord(c) < 32 for c in value):
        raise _bad(f"{where}: {value[:40]!r} is empty, too long or holds control characters",
                   f"send a plain name of at most {MAX_TEXT} characters")  # fmt: skip
    return value


def validate(action: Action, body: object) -> dict[str, Any]:
    """The body's fields, typed; an unknown or missing field is refused naming it."""
    if not isinstance(body, dict):
        raise _bad(f"{action.name}: the body must be a JSON object", '{"vm": "web1", ...}')
    known = {f.name: f for f in action.fields}
    unknown = sorted(set(body) - set(known))
    if unknown:
        raise _bad(f"{action.name}: unknown field {unknown[0]!r}",
                   f"fields of {action.name}: {', '.join(known)}")  # fmt: skip
    values = {}
    for spec in action.fields:
        if spec.name not in body or body[spec.name] is None:
            if spec.required:
                raise _bad(f"{action.name}: field {spec.name!r} is required",
                           f"send it, e.g. {{{spec.name!r}: ...}}")  # fmt: skip
            continue
        values[spec.name] = _typed(action, spec, body[spec.name])
    return values


def command_line(
    action: Action, values: dict[str, Any], store: str | None, hosts_file: str | None
) -> list[str]:
    """The `vmigrate` arguments: options first, then `--` and the positional, so that no
    value is ever read as an option."""
    args = list(action.command)
    positional = []
    for spec in action.fields:
        if spec.name not in values:
            continue
        value = values[spec.name]
        if spec.name in POSITIONAL:
            positional.append(value)
        elif spec.kind is bool:
            if value:
                args.append(spec.flag)
        elif spec.kind is list:
            args += [spec.flag, ",".join(value)]
        else:
            args += [spec.flag, str(value)]
    if hosts_file is not None:
        args += ["--hosts", hosts_file]
    if action.store and store is not None:
        args += ["--store", store]
    if action.json_flag:
        args.append("--json")
    return [*args, "--", *positional] if positional else args


def jobs_command(job_id: int, subcommand: str, store: str | None) -> list[str]:
    """`vmigrate jobs [--store S] SUBCOMMAND ID`."""
    return ["jobs", *(["--store", store] if store is not None else []), subcommand, str(job_id)]
