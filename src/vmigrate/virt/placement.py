"""Where a VM really is: running and defined on which hosts (the exactly-one-host check)."""

from __future__ import annotations

from dataclasses import dataclass, field

import libvirt

from vmigrate.virt.connection import domain_state, find_domain


@dataclass(frozen=True)
class Placement:
    vm: str
    states: dict[str, str] = field(default_factory=dict)  # host -> state, where it exists
    persistent: dict[str, bool] = field(default_factory=dict)

    @property
    def running_on(self) -> list[str]:
        return [h for h, s in self.states.items() if s in ("running", "paused", "blocked")]

    @property
    def defined_on(self) -> list[str]:
        return [h for h, p in self.persistent.items() if p]

    @property
    def unknown_on(self) -> list[str]:
        """Hosts that did not answer: they may hold the VM."""
        return [h for h, s in self.states.items() if s.startswith("unknown")]

    def exactly_on(self, host: str, *, defined: bool) -> bool:
        """Running on `host` only; defined there (and nowhere else) when `defined`.

        Not proven while a host does not answer."""
        if self.running_on != [host] or self.unknown_on:
            return False
        return self.defined_on == [host] if defined else True

    def summary(self) -> str:
        running = ", ".join(self.running_on) or "no host"
        defined = ", ".join(self.defined_on) or "no host"
        summary = f"{self.vm} runs on {running}; defined on {defined}"
        for host in self.unknown_on:
            summary += f"; {host} could not be checked: {self.states[host]}"
        return summary

    def to_dict(self) -> dict[str, object]:
        return {
            "running_on": self.running_on,
            "defined_on": self.defined_on,
            "states": self.states,
            "summary": self.summary(),
        }


def locate(vm: str, hosts: dict[str, libvirt.virConnect]) -> Placement:
    states, persistent = {}, {}
    for name, conn in hosts.items():
        try:
            domain = find_domain(conn, vm)
            if domain is None:
                continue
            persistent[name] = bool(domain.isPersistent())
            states[name] = domain_state(domain)
        except libvirt.libvirtError as err:
            if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:  # vanished as we looked
                states.pop(name, None)
                persistent.pop(name, None)
                continue
            states[name] = f"unknown ({err.get_error_message()})"
    return Placement(vm, states, persistent)
