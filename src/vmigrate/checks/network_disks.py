"""Disks QEMU opens over the network (rbd, iscsi, nfs, gluster, nbd): shared by nature, yet
they fail in their own ways on the destination: a cephx secret libvirt keeps per host and
the destination lacks, storage servers it cannot reach, a cache mode libvirt refuses."""

from __future__ import annotations

from dataclasses import replace

from vmigrate.checks.context import CheckInput, NetworkDiskView, PortProbe
from vmigrate.domxml.domain import DiskInfo, NetworkSource
from vmigrate.model import Finding, Mode, Verdict

FAMILY = "storage"

#: Each protocol's server port when the disk names none (what QEMU connects to).
DEFAULT_PORTS = {"rbd": 6789, "iscsi": 3260, "nfs": 2049, "gluster": 24007, "nbd": 10809}
_BLOCK = 4096  # the largest logical block of a SCSI or rbd volume we compare
_SAFE_CACHE = (None, "none", "directsync")  # None: checked by devices.disk-cache already
_DEPRECATED = {"gluster": "QEMU marks its gluster driver deprecated; plan a move off it"}


def server_endpoints(source: NetworkSource) -> tuple[tuple[str, int], ...]:
    """Where QEMU will connect for this disk: each host, with the protocol's default port."""
    default = DEFAULT_PORTS.get(source.protocol)
    endpoints = []
    for host, port in source.hosts:
        if port or default:
            endpoints.append((host, port or default or 0))
    return tuple(endpoints)


def _shared(disk: DiskInfo, source: NetworkSource) -> Finding:
    note = _DEPRECATED.get(source.protocol)
    return Finding(
        "storage.shared",
        FAMILY,
        Verdict.WARN if note else Verdict.PASS,
        f"{disk.target}: {source.protocol} network disk {source.name or '?'} on "
        f"{source.servers}: shared by nature, both hosts open the same volume, nothing is "
        "copied" + (f" ({note})" if note else ""),
        {
            "target": disk.target,
            "placement": "network",
            "protocol": source.protocol,
            "name": source.name,
            "servers": [f"{h}:{p}" if p else h for h, p in source.hosts],
        },
        fix="" if not note else "move its data to rbd, iscsi or nfs while you can",
        subject=disk.target,
    )


def _secret(disk: DiskInfo, source: NetworkSource, facts: CheckInput) -> Finding | None:
    if source.secret_uuid is None and source.secret_usage is None:
        return None
    named = source.secret_uuid or f"usage {source.secret_usage!r}"
    dst_name = facts.destination_name
    evidence: dict[str, object] = {
        "target": disk.target,
        "secret_uuid": source.secret_uuid,
        "secret_usage": source.secret_usage,
        "type": source.secret_type,
    }
    destination = facts.destination
    if destination is None or destination.secrets is None:
        # Measured: a daemon without libvirt's secret driver (a package of its own in
        # Debian) answers "not supported ... virConnectNumOfSecrets"; QEMU there could not
        # be handed the key either.
        return Finding(
            "storage.secret",
            FAMILY,
            Verdict.FAIL,
            f"{disk.target}: the disk needs the {source.secret_type or ''} secret {named}, and "
            f"{dst_name}'s libvirt lists no secrets at all (no secret driver?)",
            evidence,
            fix=f"install libvirt-daemon-driver-secret on {dst_name}, restart its libvirtd, "
            "then define the secret there (virsh secret-define, virsh secret-set-value)",
            subject=disk.target,
        )
    there = destination.secret(source.secret_uuid, source.secret_usage)
    if there is None:
        uuid = source.secret_uuid or "UUID"
        return Finding(
            "storage.secret",
            FAMILY,
            Verdict.FAIL,
            f"{disk.target}: the {source.secret_type or ''} secret {named} the disk "
            f"authenticates with is not defined on {dst_name} (libvirt keeps secrets per host): "
            f"QEMU there could not open {source.protocol}:{source.name}",
            evidence,
            fix=f"on {dst_name}: virsh secret-define a secret with uuid {uuid} and the same "
            f"usage, then virsh secret-set-value {uuid} --file KEYFILE with the key "
            f"{facts.source_name} uses",
            subject=disk.target,
        )
    here = facts.source.secret(source.secret_uuid, source.secret_usage) if facts.source else None
    if here is not None and here.value_sha256 and there.value_sha256:
        same = here.value_sha256 == there.value_sha256
        return Finding(
            "storage.secret",
            FAMILY,
            Verdict.PASS if same else Verdict.FAIL,
            f"{disk.target}: secret {there.uuid} is defined on {dst_name} "
            + ("with the same value as on the source" if same else "with ANOTHER value"),
            evidence,
            fix=""
            if same
            else f"virsh secret-set-value {there.uuid} on {dst_name} with "
            f"{facts.source_name}'s key",
            subject=disk.target,
        )
    view = _view(disk, facts)
    pool = view.destination if view is not None else None
    pool_uses_it = pool is not None and (
        pool.pool_secret_uuid == there.uuid
        or bool(
            pool.pool_secret_usage  # usage names are unique per type only
            and pool.pool_secret_usage == there.usage_id
            and there.usage_type == (source.secret_type or there.usage_type)
        )
    )
    if pool is not None and pool.pool and pool_uses_it:
        # The pool is active and listed the volume: librados there logged in with this key
        # when the pool was last started or refreshed.
        said = (
            f"its value is private and cannot be read back, but {dst_name}'s active pool "
            f"{pool.pool!r} authenticates with it and lists the volume: the key works there "
            "(as of the pool's last start or refresh)"
        )
    else:
        said = (
            "its value is private and cannot be read back, and no pool of "
            f"{dst_name} uses it: that it is the right key was not verified"
        )
    return Finding(
        "storage.secret",
        FAMILY,
        Verdict.PASS,
        f"{disk.target}: secret {there.uuid} is defined on {dst_name}; {said}",
        evidence,
        subject=disk.target,
    )


def _view(disk: DiskInfo, facts: CheckInput) -> NetworkDiskView | None:
    return next((v for v in facts.network_disks if v.target == disk.target), None)


def _size(n: int | None) -> str:
    return "?" if n is None else f"{n / (1 << 30):.2f} GiB"


def _volume(disk: DiskInfo, source: NetworkSource, facts: CheckInput) -> Finding | None:
    """The destination sees the same volume: through its own pool (same name, same size),
    and, when vmigrate runs there, by reading it as its QEMU will."""
    found = _volume_by_pool(disk, source, facts)
    view = _view(disk, facts)
    read = view.read_here if view is not None else None
    if read is None or found is None or found.verdict is Verdict.FAIL:
        return found
    dst_name = facts.destination_name
    evidence = {**found.evidence, "read_here": read.url, "read_size": read.size}
    if read.error is not None:
        # A warning: QEMU there logs in with its own initiator name and as its own user.
        return replace(
            found,
            verdict=Verdict.WARN,
            summary=f"{disk.target}: read from here (as {dst_name}), {read.url} fails: "
            f"{read.error}; {dst_name}'s QEMU may fail to open it too",
            evidence=evidence,
            fix=f"check on the server that {source.name} exists and that {dst_name} may "
            "open it (the target's initiator ACL, the export's clients)",
        )
    pool_size = found.evidence.get("destination_capacity")
    # Only a raw disk's size is the volume's: a qcow2 reads as its virtual size. Within a
    # block is the same: libvirt's iscsi-direct pool lists one block less (its last LBA
    # times the block size, measured: 1073741312 for a 1 GiB LUN that QEMU reads whole).
    if (
        isinstance(pool_size, int)
        and read.size is not None
        and disk.format == "raw"
        and abs(pool_size - read.size) >= _BLOCK
    ):
        return replace(
            found,
            verdict=Verdict.FAIL,
            summary=f"{disk.target}: {dst_name}'s pool lists {_size(pool_size)}, but "
            f"{read.url} reads {_size(read.size)} from here: not the same volume",
            evidence=evidence,
            fix=f"virsh pool-refresh on {dst_name} and check again",
        )
    said = f"; read from here as {dst_name}'s QEMU will: {_size(read.size)}"
    if found.verdict is Verdict.SKIPPED:  # no pool (NFS): the read is the proof
        return replace(
            found,
            verdict=Verdict.PASS,
            summary=f"{disk.target}: {dst_name} reads {read.url} as its QEMU will "
            f"(qemu-img from here, no pool needed): {_size(read.size)}",
            evidence=evidence,
        )
    return replace(found, summary=found.summary + said, evidence=evidence)


def _volume_by_pool(disk: DiskInfo, source: NetworkSource, facts: CheckInput) -> Finding | None:
    view = _view(disk, facts)
    if view is None or view.destination is None:
        return None  # not looked up: the destination's storage driver is missing (reported)
    here, there = view.source, view.destination
    src_name, dst_name = facts.source_name, facts.destination_name
    what = f"{source.protocol} {source.name or '?'} on {source.servers}"
    evidence: dict[str, object] = {
        "target": disk.target,
        "source_pool": here.pool if here else None,
        "source_capacity": here.capacity if here else None,
        "destination_pool": there.pool,
        "destination_volume": there.volume,
        "destination_capacity": there.capacity,
        "destination_pools_looked_at": list(there.pools_looked_at),
    }

    def finding(verdict: Verdict, message: str, fix: str = "") -> Finding:
        return Finding(
            "storage.volume", FAMILY, verdict, message, evidence, fix=fix, subject=disk.target
        )

    if there.error is not None:
        return finding(
            Verdict.WARN,
            f"{disk.target}: {dst_name}'s pool {there.pools_looked_at[-1]!r} for {what} could "
            f"not be listed: {there.error}; that it sees the same volume was not verified",
            f"check that {dst_name} reaches {source.servers} (see storage.servers)",
        )
    if there.pool is None and there.pools_looked_at:
        pools = ", ".join(repr(p) for p in there.pools_looked_at)
        return finding(
            Verdict.WARN,
            f"{disk.target}: {dst_name}'s pool {pools} reaches the server of {what} but does "
            "not list that volume: its list may be older than the volume (vmigrate does not "
            "refresh it: a failed refresh stops a pool), or it is another cluster or target",
            f"on {dst_name}: virsh pool-refresh {there.pools_looked_at[0]} and check again; "
            "if it still lacks the volume, compare its source (virsh pool-dumpxml) with the "
            "disk's",
        )
    if there.pool is None:
        if source.protocol == "nfs":
            return finding(
                Verdict.SKIPPED,
                f"{disk.target}: no libvirt pool of {dst_name} holds {what} (an NFS disk needs "
                "none: QEMU opens it with libnfs); that it sees the same file was not verified",
            )
        return finding(
            Verdict.WARN,
            f"{disk.target}: no libvirt pool of {dst_name} reaches {what}: that it sees the "
            "same volume was not verified (QEMU opens the disk itself, so the move may work)",
            f"define a {source.protocol} pool on {dst_name} for the disk's "
            f"{'pool' if source.protocol == 'rbd' else 'target'} (virsh pool-define), so "
            "vmigrate can check the volume there",
        )
    if here is not None and here.capacity is not None and here.capacity != there.capacity:
        return finding(
            Verdict.FAIL,
            f"{disk.target}: {dst_name}'s pool {there.pool!r} has {there.volume} of "
            f"{_size(there.capacity)}, {src_name} sees {_size(here.capacity)}: not the same volume",
            f"virsh pool-refresh {there.pool} on both hosts (a resize since their last listing) "
            f"and check again; if they still differ, the pools name different clusters or "
            f"targets ({source.servers})",
        )
    same = f", the same size as on {src_name}" if here is not None and here.pool else ""
    return finding(
        Verdict.PASS,
        f"{disk.target}: {dst_name} sees the same volume through its own pool {there.pool!r}: "
        f"{there.volume}, {_size(there.capacity)}{same}",
    )


def _servers(disk: DiskInfo, source: NetworkSource, facts: CheckInput) -> Finding:
    probes = [p for p in facts.storage_servers if (p.address, p.port) in server_endpoints(source)]
    if not facts.destination_probes_representative or not probes:
        return Finding(
            "storage.servers",
            FAMILY,
            Verdict.SKIPPED,
            f"{disk.target}: not verifiable from here that {facts.destination_name} reaches "
            f"{source.servers} (vmigrate does not run there)",
            {"target": disk.target},
            subject=disk.target,
        )
    unreachable = [p for p in probes if p.result != "open"]
    evidence = {"target": disk.target, "probes": [_probe(p) for p in probes]}
    if unreachable:
        where = ", ".join(f"{p.address}:{p.port} ({p.result})" for p in unreachable)
        return Finding(
            "storage.servers",
            FAMILY,
            Verdict.FAIL,
            f"{disk.target}: {facts.destination_name} cannot reach the {source.protocol} "
            f"server(s) {where}: QEMU there could not open the disk",
            evidence,
            fix=f"open the path from {facts.destination_name} to {where} (firewall, routes)",
            subject=disk.target,
        )
    return Finding(
        "storage.servers",
        FAMILY,
        Verdict.PASS,
        f"{disk.target}: {facts.destination_name} reaches the {source.protocol} server(s) "
        f"{source.servers}",
        evidence,
        subject=disk.target,
    )


def _probe(probe: PortProbe) -> dict[str, object]:
    return {"address": probe.address, "port": probe.port, "result": probe.result}


def _cache(disk: DiskInfo, source: NetworkSource, facts: CheckInput) -> Finding | None:
    # libvirt lets only rbd keep a host cache across a live migration; any other network
    # disk with cache other than none/directsync is refused ("may lead to data corruption").
    if facts.mode is not Mode.LIVE or source.protocol == "rbd" or disk.cache in _SAFE_CACHE:
        return None
    if disk.readonly or disk.shareable:
        return None
    return Finding(
        "storage.cache",
        FAMILY,
        Verdict.FAIL,
        f"{disk.target}: cache='{disk.cache}' on a {source.protocol} disk: libvirt refuses to "
        "move it live (the destination could read stale data)",
        {"target": disk.target, "cache": disk.cache, "protocol": source.protocol},
        fix=f"set <driver cache='none'/> on {disk.target} (virsh edit, then restart the VM), "
        "or move it cold",
        subject=disk.target,
    )


def network_disk_findings(disk: DiskInfo, facts: CheckInput) -> list[Finding]:
    source = disk.network
    if source is None:
        return []
    found: list[Finding | None] = [
        _shared(disk, source),
        _secret(disk, source, facts),
        _volume(disk, source, facts),
        _servers(disk, source, facts),
        _cache(disk, source, facts),
    ]
    return [f for f in found if f is not None]
