"""A host's name for a libvirt URI, for tables: `hostB`, not `qemu+tls://127.0.0.3/...`."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from vmigrate.errors import VmigrateError
from vmigrate.hosts import HostRef, host_sources, load_inventory, source_host_for_uri


class HostNames:
    """Names for URIs: the hosts file's names, then the host sources' (the lab's, once the CLI
    plugged it in), then the URI's host part. It imports no lab: the server uses it too."""

    def __init__(self, hosts: dict[str, HostRef] | None = None) -> None:
        self._by_uri: dict[str, str] = {}
        for ref in (hosts or {}).values():
            self._by_uri.setdefault(ref.uri, ref.name)
            if ref.peer_uri:
                self._by_uri.setdefault(ref.peer_uri, ref.name)
        self._source_addresses: dict[str, str] = {}
        for source in host_sources():
            for running in source.running():
                for uri in running.uris:
                    address = urlsplit(uri).hostname
                    if address:
                        self._source_addresses.setdefault(address, running.name)

    @classmethod
    def from_hosts_file(cls, hosts_file: Path | None = None) -> HostNames:
        """The names of the hosts file; a missing or broken one only costs its names."""
        from vmigrate.hosts import default_hosts_file

        path = hosts_file or default_hosts_file()
        try:
            hosts = load_inventory(path).hosts if path.exists() else {}
        except VmigrateError:
            hosts = {}
        return cls(hosts)

    def name(self, host: str) -> str:
        """`host`'s name; a name stays as it is."""
        if "://" not in host and ":/" not in host:
            return host
        if host in self._by_uri:
            return self._by_uri[host]
        known = source_host_for_uri(host)
        if known is not None:
            return known.name
        address = urlsplit(host).hostname
        if not address:
            return "localhost"
        return self._source_addresses.get(address, address)
