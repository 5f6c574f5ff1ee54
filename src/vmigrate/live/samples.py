"""Typed samples of a migration job, made from libvirt's raw job statistics (pure)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

# virDomainJobType values (libvirt.VIR_DOMAIN_JOB_*), repeated so this module stays pure.
JOB_NONE, JOB_BOUNDED, JOB_UNBOUNDED, JOB_COMPLETED, JOB_FAILED, JOB_CANCELLED = range(6)


@dataclass(frozen=True)
class JobSample:
    """One look at a running migration. Sizes in bytes, rates in bytes per second."""

    elapsed_s: float  # since the migration started, on our clock
    phase: str  # setup | precopy | postcopy
    iteration: int  # pass number: 1 is the first full copy of memory
    memory_total: int
    memory_processed: int
    memory_remaining: int
    bandwidth_bps: float
    dirty_rate_bps: float  # distinct pages dirtied per second, as QEMU measured at the last sync
    expected_downtime_ms: float | None
    disk_total: int
    disk_processed: int
    disk_remaining: int
    throttle_pct: int | None  # auto-converge CPU throttle
    postcopy_requests: int
    disk_bandwidth_bps: float = 0.0  # the storage mirror's rate (--copy-storage)

    @property
    def data_total(self) -> int:
        return self.memory_total + self.disk_total

    @property
    def data_processed(self) -> int:
        return self.memory_processed + self.disk_processed

    @property
    def percent(self) -> float:
        """Share of the first full copy done (memory and disks); later passes re-send."""
        total = self.data_total
        if total <= 0:
            return 0.0
        done = min(self.memory_processed, self.memory_total) + self.disk_processed
        return min(100.0, 100.0 * done / total)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sample_from_job_stats(
    stats: dict[str, Any], elapsed_s: float, *, postcopy: bool
) -> JobSample | None:
    """None when libvirt reports no running job (not started yet, or already over)."""
    if stats.get("type") not in (JOB_BOUNDED, JOB_UNBOUNDED):
        return None
    iteration = int(stats.get("memory_iteration", 0))
    page = int(stats.get("memory_page_size", 4096))
    if postcopy:
        phase = "postcopy"
    elif iteration == 0 and int(stats.get("memory_processed", 0)) == 0:
        phase = "setup"
    else:
        phase = "precopy"
    downtime = stats.get("downtime")
    return JobSample(
        elapsed_s=elapsed_s,
        phase=phase,
        iteration=max(iteration, 1) if phase != "setup" else 0,
        memory_total=int(stats.get("memory_total", 0)),
        memory_processed=int(stats.get("memory_processed", 0)),
        memory_remaining=int(stats.get("memory_remaining", 0)),
        bandwidth_bps=float(stats.get("memory_bps", 0)),
        dirty_rate_bps=float(stats.get("memory_dirty_rate", 0)) * page,
        expected_downtime_ms=float(downtime) if downtime is not None and not postcopy else None,
        disk_total=int(stats.get("disk_total", 0)),
        disk_processed=int(stats.get("disk_processed", 0)),
        disk_remaining=int(stats.get("disk_remaining", 0)),
        throttle_pct=int(stats["auto_converge_throttle"])
        if "auto_converge_throttle" in stats
        else None,
        postcopy_requests=int(stats.get("memory_postcopy_requests", 0)),
        disk_bandwidth_bps=float(stats.get("disk_bps", 0)),
    )


def with_disk_rate(sample: JobSample, previous: JobSample | None) -> JobSample:
    """libvirt 11.3 reports no rate for the storage mirror: derive it from two samples."""
    if sample.disk_bandwidth_bps or previous is None:
        return sample
    seconds = sample.elapsed_s - previous.elapsed_s
    copied = sample.disk_processed - previous.disk_processed
    if seconds <= 0 or copied <= 0:
        return sample
    return replace(sample, disk_bandwidth_bps=copied / seconds)
