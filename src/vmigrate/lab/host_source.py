"""The lab's hosts as a host source (vmigrate.hosts): hostA..hostD by name and by any URI
`lab status` prints, and the running ones as the cluster `lab`. The CLI registers it.

Imports no libvirt: resolving a name must work where libvirt is absent."""

from __future__ import annotations

from dataclasses import dataclass

from vmigrate.errors import UsageError
from vmigrate.hosts import LAB_CLUSTER, HostRef, SourceHost
from vmigrate.lab.config import LAB_HOSTS, LAB_TRANSPORTS, LabHost, lab_host, lab_transport
from vmigrate.lab.state import running_lab_hosts


def lab_host_ref(lab: LabHost, transport: str) -> HostRef:
    """A lab host over one of its transports: vmigrate's URI carries the lab client's
    credentials, the hosts reach each other with their own; all have QEMU TLS credentials."""
    return HostRef(
        lab.name,
        lab.uri_for(transport),
        lab.address,
        capacity_mib=lab.capacity_mib,
        vcpus=lab.vcpus,
        peer_uri=lab.peer_uri(transport),
        migration_tls=True,
    )


@dataclass(frozen=True)
class LabHostSource:
    """hostA..hostD over the lab's transport (VMIGRATE_LAB_TRANSPORT, TLS by default)."""

    cluster: str = LAB_CLUSTER

    def host(self, name: str) -> HostRef | None:
        lab = lab_host(name) if name.lower().startswith("host") else None
        return lab_host_ref(lab, lab_transport()) if lab is not None else None

    def host_for_uri(self, uri: str) -> HostRef | None:
        for lab in LAB_HOSTS:
            for transport in LAB_TRANSPORTS:
                if lab.uri_for(transport) == uri:
                    return lab_host_ref(lab, transport)
        return None

    def running(self) -> tuple[SourceHost, ...]:
        return tuple(
            SourceHost(lab.name, frozenset(lab.uris(insecure_tcp=True).values()))
            for lab in running_lab_hosts()
        )

    def not_running(self) -> UsageError:
        return UsageError(
            f"the cluster {self.cluster!r} is the running lab, and the lab is not running",
            fix="start it with `vmigrate lab up --hosts 3`",
        )
