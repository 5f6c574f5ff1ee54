"""Both daemons answer; the destination's libvirt and migration ports are reachable."""

from __future__ import annotations

from vmigrate.checks.context import CheckInput, PortProbe
from vmigrate.hosts import parse_uri
from vmigrate.model import Finding, Mode, Verdict

FAMILY = "connectivity"


def _daemon(name: str, role: str, facts: CheckInput) -> Finding:
    host = facts.source if role == "source" else facts.destination
    error = facts.source_error if role == "source" else facts.destination_error
    if host is None:
        return Finding(
            f"connectivity.{role}",
            FAMILY,
            Verdict.FAIL,
            f"libvirt on {name} did not answer: {error}",
            {"error": error},
            fix=(facts.destination_error_fix if role == "destination" else "")
            or f"check that libvirtd runs on {name} and that its port is open",
        )
    return Finding(
        f"connectivity.{role}",
        FAMILY,
        Verdict.PASS,
        f"libvirt on {name} ({host.hostname}) answers in {host.rtt_ms:.1f} ms",
        {"uri": host.ref.uri, "rtt_ms": round(host.rtt_ms, 2)},
    )


def _libvirt_port(facts: CheckInput) -> Finding:
    probe = facts.libvirt_port
    uri = parse_uri(facts.destination.ref.uri) if facts.destination else None
    if probe is None:
        reason = (
            "the destination URI uses no TCP port"
            if uri is None or not uri.is_remote
            else "the destination URI names no host"
        )
        return Finding(
            "connectivity.libvirt-port",
            FAMILY,
            Verdict.SKIPPED,
            f"not verifiable from here: {reason}",
        )
    return _port_finding("connectivity.libvirt-port", "libvirt", probe, expect_open=True)


def _port_finding(check: str, what: str, probe: PortProbe, *, expect_open: bool) -> Finding:
    where = f"{probe.address}:{probe.port}"
    evidence = {
        "address": probe.address,
        "port": probe.port,
        "result": probe.result,
        "seconds": round(probe.seconds, 3),
    }
    if probe.result == "open" or (probe.result == "refused" and not expect_open):
        summary = (
            f"{what} port {where} accepts connections"
            if probe.result == "open"
            else f"{what} port {where} is reachable (closed until a migration starts)"
        )
        return Finding(check, FAMILY, Verdict.PASS, summary, evidence)
    if probe.result == "filtered":
        summary = f"{what} port {where} does not answer: a firewall drops it"
    elif probe.result == "refused":
        summary = f"{what} port {where} refuses connections: nothing listens there"
    else:
        summary = f"{what} port {where} cannot be reached ({probe.result})"
    return Finding(
        check,
        FAMILY,
        Verdict.FAIL,
        summary,
        evidence,
        fix=f"open {probe.port}/tcp on {probe.address} in the firewall"
        + (" and check that libvirtd listens there (listen_tcp/listen_tls)" if expect_open else ""),
    )


def _migration_ports(facts: CheckInput) -> list[Finding]:
    if facts.mode is Mode.COLD:
        return []
    if not facts.migration_ports:
        return [
            Finding(
                "connectivity.migration-ports",
                FAMILY,
                Verdict.SKIPPED,
                "not verifiable from here: the destination's migration address is unknown",
                fix="set migration_address for the host in hosts.toml",
            )
        ]
    findings = [
        _port_finding("connectivity.migration-ports", "migration", p, expect_open=False)
        for p in facts.migration_ports
    ]
    if not facts.probes_representative:
        # The stream goes from the source host, not from here: our view may differ.
        return [
            Finding(
                f.check,
                FAMILY,
                Verdict.SKIPPED,
                f"not verifiable from here (the stream starts at the source host); "
                f"from this machine: {f.summary}",
                f.evidence,
                f.fix,
            )
            for f in findings
        ]
    worst = next((f for f in findings if f.verdict is Verdict.FAIL), findings[0])
    ports = [p.port for p in facts.migration_ports]
    return [
        Finding(
            worst.check,
            FAMILY,
            worst.verdict,
            worst.summary
            if worst.verdict is Verdict.FAIL
            else f"migration ports {ports[0]}-{ports[-1]} on "
            f"{facts.migration_ports[0].address} are reachable",
            {"probes": [f.evidence for f in findings]},
            worst.fix,
        )
    ]


def check_connectivity(facts: CheckInput) -> list[Finding]:
    findings = [
        _daemon(facts.source_name, "source", facts),
        _daemon(facts.destination_name, "destination", facts),
    ]
    if facts.destination is not None or facts.libvirt_port is not None:
        findings.append(_libvirt_port(facts))
    findings += _migration_ports(facts)
    return findings
