"""`/metrics`: what the store says at scrape time, in Prometheus's format and conventions
(`vmigrate_` prefix, bytes and seconds). A scrape reads the store and the inventory the server
already holds; it never probes a guest or a host (kubevirt#17504: probes slowed migrations)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from vmigrate.serve.inventory import Snapshot
from vmigrate.store import JobRecord, JobStore, MaintenanceRecord

MOVE_KINDS = ("live", "cold")
FLEET_KINDS = ("evacuate", "balance", "return")
#: How many of the newest jobs a scrape looks at for running ones.
RECENT_JOBS = 500
#: Phases a migration reports (a state-set metric: the current one is 1).
PHASES = ("setup", "precopy", "postcopy", "completed", "cancelled", "failed")


@dataclass(frozen=True)
class RunningMove:
    record: JobRecord
    sample: dict[str, Any] | None


@dataclass(frozen=True)
class FleetProgress:
    record: JobRecord
    planned: int
    done: int
    predicted_total_s: float | None


@dataclass(frozen=True)
class StoreFacts:
    """What a scrape read from the store, in one go."""

    moves: list[RunningMove] = field(default_factory=list)
    fleets: list[FleetProgress] = field(default_factory=list)
    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)
    running: Counter[str] = field(default_factory=Counter)
    maintenance: dict[str, MaintenanceRecord] = field(default_factory=dict)


def _fleet_progress(record: JobRecord, recent: list[JobRecord]) -> FleetProgress:
    plan = record.params.get("plan") or {}
    planned = [m.get("vm") for m in plan.get("moves", [])]
    finished = {
        r.vm
        for r in recent
        if r.kind in MOVE_KINDS and r.started >= record.started and r.finished is not None
    }
    predicted = plan.get("predicted_total_s")
    return FleetProgress(
        record,
        len(planned),
        sum(1 for vm in planned if vm in finished),
        float(predicted) if isinstance(predicted, int | float) else None,
    )


def read_store(store: JobStore) -> StoreFacts:
    recent = store.jobs(limit=RECENT_JOBS)
    facts = StoreFacts(maintenance=store.maintenance())
    for record in recent:
        if record.state != "running":
            continue
        facts.running[record.kind] += 1
        if record.kind in MOVE_KINDS:
            samples = store.samples(record.id)
            facts.moves.append(RunningMove(record, samples[-1] if samples else None))
        elif record.kind in FLEET_KINDS:
            facts.fleets.append(_fleet_progress(record, recent))
    for kind in MOVE_KINDS:
        for record in store.jobs_of_kind(kind):
            if record.state != "running":
                facts.outcomes[(kind, record.state)] += 1
    return facts


def _gauge(name: str, doc: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=labels)


MOVE_LABELS = ["job", "vm", "kind", "source", "destination"]
#: (metric, sample field, scale to base units, help)
SAMPLE_GAUGES = (
    ("data_total_bytes", ("memory_total", "disk_total"), 1.0, "bytes the move carries"),
    ("data_processed_bytes", ("memory_processed", "disk_processed"), 1.0, "bytes sent so far"),
    ("data_remaining_bytes", ("memory_remaining", "disk_remaining"), 1.0, "bytes left"),
    ("dirty_rate_bytes_per_second", ("dirty_rate_bps",), 1.0, "guest's memory dirty rate"),
    ("transfer_rate_bytes_per_second", ("bandwidth_bps", "disk_bandwidth_bps"), 1.0,
     "bytes per second carried"),
    ("expected_downtime_seconds", ("expected_downtime_ms",), 0.001,
     "pause QEMU expects at the switch-over"),
    ("iteration", ("iteration",), 1.0, "pre-copy pass"),
)  # fmt: skip


class StoreCollector(Collector):
    """Metrics from one reading of the store and the cached inventory."""

    def __init__(self, facts: StoreFacts, inventory: Snapshot | None) -> None:
        self.facts = facts
        self.inventory = inventory

    def collect(self) -> Iterator[Metric]:
        yield from self._moves()
        yield from self._counters()
        yield from self._fleets()
        yield from self._hosts()

    def _moves(self) -> Iterator[Metric]:
        prefix = "vmigrate_migration_"
        gauges = {
            name: _gauge(prefix + name, f"Running migration: {doc}.", MOVE_LABELS)
            for name, _fields, _scale, doc in SAMPLE_GAUGES
        }
        started = _gauge(prefix + "start_timestamp_seconds", "When it started.", MOVE_LABELS)
        phase = _gauge(prefix + "phase", "Its phase (1 = current).", [*MOVE_LABELS, "phase"])
        for move in self.facts.moves:
            r = move.record
            labels = [str(r.id), r.vm, r.kind, r.source, r.destination]
            started.add_metric(labels, r.started)
            sample = move.sample
            if sample is None:
                continue
            for name, fields, scale, _doc in SAMPLE_GAUGES:
                values = [sample.get(f) for f in fields]
                if values[0] is None:
                    continue
                total = sum(float(v) for v in values if isinstance(v, int | float))
                gauges[name].add_metric(labels, total * scale)
            current = str(sample.get("phase", ""))
            for name in sorted({*PHASES, current} - {""}):
                phase.add_metric([*labels, name], 1.0 if name == current else 0.0)
        yield from gauges.values()
        yield started
        yield phase

    def _counters(self) -> Iterator[Metric]:
        moves = CounterMetricFamily(
            "vmigrate_moves", "Finished moves by kind and outcome.", labels=["kind", "outcome"]
        )
        for (kind, outcome), count in sorted(self.facts.outcomes.items()):
            moves.add_metric([kind, outcome], count)
        yield moves
        running = _gauge("vmigrate_jobs_running", "Jobs running now, by kind.", ["kind"])
        for kind, count in sorted(self.facts.running.items()):
            running.add_metric([kind], count)
        yield running

    def _fleets(self) -> Iterator[Metric]:
        labels = ["job", "kind", "host"]
        left = _gauge("vmigrate_fleet_vms_left", "VMs the running evacuation or balance has "
                      "still to move.", labels)  # fmt: skip
        planned = _gauge("vmigrate_fleet_moves_planned", "Moves in its plan.", labels)
        finish = _gauge("vmigrate_fleet_predicted_finish_timestamp_seconds",
                        "When its plan predicts it ends.", labels)  # fmt: skip
        for fleet in self.facts.fleets:
            r = fleet.record
            values = [str(r.id), r.kind, r.vm]
            left.add_metric(values, fleet.planned - fleet.done)
            planned.add_metric(values, fleet.planned)
            if fleet.predicted_total_s is not None:
                finish.add_metric(values, r.started + fleet.predicted_total_s)
        yield from (left, planned, finish)

    def _hosts(self) -> Iterator[Metric]:
        labels = ["host", "cluster"]
        maint = _gauge("vmigrate_host_in_maintenance", "1 while the host is in maintenance.",
                       ["host"])  # fmt: skip
        for record in self.facts.maintenance.values():
            maint.add_metric([record.host], 1.0)
        yield maint
        snap = self.inventory
        if snap is None:
            return
        up = _gauge("vmigrate_host_up", "1 when the host answered the last inventory.", labels)
        gauges = {
            key: _gauge(f"vmigrate_host_{name}", doc, labels)
            for key, name, doc in (
                ("capacity_mib", "memory_capacity_bytes", "Memory VMs may use."),
                ("used_mib", "memory_used_bytes", "Memory its VMs take (QEMU's included)."),
                ("free_mib", "memory_free_bytes", "Memory free for new VMs."),
                ("reserve_mib", "memory_reserve_bytes", "Memory the host keeps."),
            )
        }
        vcpus = _gauge("vmigrate_host_vcpus_used", "vCPUs of its running VMs.", labels)
        vms = _gauge("vmigrate_host_vms", "VMs defined or running there.", labels)
        for row in snap.hosts:
            values = [row["name"], row.get("cluster") or ""]
            up.add_metric(values, 1.0 if row.get("reachable") else 0.0)
            if not row.get("reachable"):
                continue
            for key, gauge in gauges.items():
                if row.get(key) is not None:
                    gauge.add_metric(values, float(row[key]) * (1 << 20))
            vcpus.add_metric(values, float(row.get("vcpus_used") or 0))
            vms.add_metric(values, float(len(row.get("vms", []))))
        age = _gauge("vmigrate_inventory_age_seconds", "Age of the host facts shown.", [])
        age.add_metric([], max(0.0, time.time() - snap.taken))
        yield from (up, *gauges.values(), vcpus, vms, age)


def exposition(facts: StoreFacts, inventory: Snapshot | None) -> bytes:
    from prometheus_client.exposition import generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(facts, inventory))
    return generate_latest(registry)
