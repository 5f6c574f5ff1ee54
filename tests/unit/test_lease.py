"""The lease value: its XML both ways, live or stale, ours or not, and what refusals say."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from vmigrate.lease import (
    DEFAULT_TTL_S,
    NAMESPACE,
    RENEW,
    TAKE,
    TAKE_OVER,
    Holder,
    Lease,
    LeaseError,
    MalformedLease,
    decide,
    decode,
    format_time,
    judge,
    lease_in_domain_xml,
    lost_race_error,
    malformed_error,
    slow_take_error,
)

T0 = datetime(2026, 12, 7, 12, 0, 0, tzinfo=UTC)
STORE = "0b7e3c52-52d5-4a8e-9d6c-2f0e9f7f4c11"
OURS = Holder(42, "cold", "root@ops1", STORE, "9f3a" * 8)


def lease(renewed: datetime = T0, holder: Holder = OURS) -> Lease:
    return Lease.new(holder, T0).renewed_at(renewed)


def test_xml_round_trip_keeps_every_field() -> None:
    original = lease(T0 + timedelta(seconds=30))
    assert decode(original.to_xml()) == original
    assert decode(original.to_element_xml()) == original
    assert original.to_xml().startswith("<lease ")
    assert 'renewed="2026-12-07T12:00:30Z"' in original.to_xml()
    assert f'ttl="{DEFAULT_TTL_S}"' in original.to_xml()


def test_decodes_what_libvirt_returns_and_what_the_domain_xml_holds() -> None:
    # virDomainGetMetadata returns the element with a default namespace (seen in the lab);
    # the domain XML carries it with our prefix next to other applications' metadata.
    attrs = (
        f'job="7" kind="live" owner="ops@b" store="{STORE}" token="ab" '
        'taken="2026-12-07T11:00:00Z" renewed="2026-12-07T11:00:20Z" ttl="90"'
    )
    from_libvirt = decode(f'<lease xmlns="{NAMESPACE}" {attrs}/>')
    assert from_libvirt.job == 7 and from_libvirt.kind == "live"
    assert from_libvirt.renewed == datetime(2026, 12, 7, 11, 0, 20, tzinfo=UTC)
    domain = (
        "<domain type='kvm'><name>web</name><metadata "
        'xmlns:vmigrate-lab="https://vmigrate.dev/xmlns/lab/1">'
        '<vmigrate-lab:guest working-set-mib="256"/>'
        f'<vmigrate:lease xmlns:vmigrate="{NAMESPACE}" {attrs}/>'
        "</metadata></domain>"
    )
    assert lease_in_domain_xml(domain) == from_libvirt
    assert lease_in_domain_xml("<domain><name>web</name></domain>") is None


@pytest.mark.parametrize(
    "text",
    [
        "<lease job='1'",  # not XML
        f'<other xmlns="{NAMESPACE}"/>',  # not a lease
        '<lease xmlns="https://example.org/x" job="1"/>',  # another namespace
        "<lease job='x' kind='live' owner='a@b' store='s' token='t' "
        "taken='2026-12-07T11:00:00Z' renewed='2026-12-07T11:00:00Z' ttl='90'/>",
        "<lease job='1' kind='live' owner='a@b' store='s' token='t' "
        "taken='2026-12-07T11:00:00' renewed='2026-12-07T11:00:00Z' ttl='90'/>",  # no zone
        "<lease job='1' kind='live'/>",  # fields missing
    ],
)
def test_malformed_leases_are_named_never_guessed(text: str) -> None:
    with pytest.raises(MalformedLease):
        decode(text)


def test_times_are_utc_to_the_second() -> None:
    local = datetime(2026, 12, 7, 13, 0, 0, 700000, tzinfo=timezone(timedelta(hours=1)))
    assert format_time(local) == "2026-12-07T12:00:00Z"


def test_live_within_its_ttl_stale_after() -> None:
    held = lease()
    assert judge(held, T0 + timedelta(seconds=89), job_in_progress=False).live
    stale = judge(held, T0 + timedelta(seconds=91), job_in_progress=False)
    assert not stale.live and "not renewed for 91 s (ttl 90 s)" in stale.why


def test_a_libvirt_job_keeps_an_old_lease_live() -> None:
    # A long live migration: its holder cannot renew while libvirt's job runs.
    verdict = judge(lease(), T0 + timedelta(minutes=30), job_in_progress=True)
    assert verdict.live and "libvirt runs a job" in verdict.why


def test_a_lease_renewed_in_the_future_is_live_and_says_clocks_differ() -> None:
    verdict = judge(lease(T0 + timedelta(minutes=5)), T0, job_in_progress=False)
    assert verdict.live and "clocks differ" in verdict.why


def test_ours_needs_the_same_job_store_and_token() -> None:
    held = lease()
    assert held.held_by(OURS)
    for other in (
        Holder(43, "cold", "root@ops1", STORE, OURS.token),  # another job
        Holder(42, "cold", "root@ops1", "another-store", OURS.token),  # same id, other store
        Holder(42, "cold", "root@ops1", STORE, "00" * 16),  # same job, another token
    ):
        assert not held.held_by(other)
    # The owner's name proves nothing: the same user on another machine is the same job.
    assert held.held_by(Holder(42, "cold", "admin@elsewhere", STORE, OURS.token))


def test_the_token_stays_out_of_what_is_shown_and_recorded() -> None:
    shown = lease().to_dict()
    assert "token" not in shown and OURS.token not in str(shown)


THEIRS = Holder(7, "live", "alice@ops2", "other-store-uuid", "ab" * 16)


def _decide(
    found: Lease | None, *, at: datetime, busy: bool = False, take_over: bool = False
) -> str:
    return decide(
        found, OURS, at, job_in_progress=busy, take_over=take_over, vm="web", host="hostA"
    )


def test_decide_free_ours_and_stale_with_the_flag() -> None:
    assert _decide(None, at=T0) == TAKE
    assert _decide(lease(), at=T0 + timedelta(hours=1)) == RENEW  # resumed: still ours
    stale = lease(holder=THEIRS)
    assert _decide(stale, at=T0 + timedelta(hours=1), take_over=True) == TAKE_OVER


def test_a_live_lease_of_another_job_is_refused_naming_it() -> None:
    with pytest.raises(LeaseError) as caught:
        _decide(lease(holder=THEIRS), at=T0 + timedelta(seconds=10), take_over=True)
    err = caught.value
    assert err.host == "hostA" and err.vm == "web" and err.exit_code == 1
    assert "live job 7 of alice@ops2 (store other-store-uuid)" in err.message
    assert "renewed 10 s ago" in err.message and "nothing was changed" in err.message
    assert "wait for that job" in err.fix


def test_a_migrating_vm_is_refused_even_with_the_flag() -> None:
    with pytest.raises(LeaseError) as caught:
        _decide(lease(holder=THEIRS), at=T0 + timedelta(hours=2), busy=True, take_over=True)
    assert "libvirt runs a job on it" in caught.value.message


def test_a_stale_lease_without_the_flag_says_what_taking_over_risks() -> None:
    with pytest.raises(LeaseError) as caught:
        _decide(lease(holder=THEIRS), at=T0 + timedelta(minutes=10))
    err = caught.value
    assert "stale lease of live job 7 of alice@ops2" in err.message
    assert "not renewed for 10 min" in err.message
    assert "--take-over-lease" in err.fix and "two jobs act on one VM" in err.fix


def test_other_refusals_name_what_was_found() -> None:
    lost = lost_race_error(lease(holder=THEIRS), vm="web", host="hostA")
    assert "job 7 of alice@ops2" in lost.message and "same moment" in lost.message
    assert "removed" in lost_race_error(None, vm="web", host="hostA").message
    slow = slow_take_error(0.73, 0.5, vm="web", host="hostA")
    assert "took 0.73 s" in slow.message and "backs out" in slow.message
    assert "nothing was changed" in slow.message
    bad = malformed_error("not XML", vm="web", host="hostA")
    assert "--take-over-lease" in bad.fix and NAMESPACE in bad.fix


def test_what_the_cli_shows_of_a_lease() -> None:
    from vmigrate.cli.leases import describe_found, lease_line

    taken = {"action": "taken over", "host": "hostA", **lease(holder=THEIRS).to_dict()}
    assert lease_line(taken) == "lease taken over on hostA: job 7, alice@ops2"
    released = {"action": "released", "host": "hostB", "job": 7, "removed_from": ["hostB"]}
    assert lease_line(released) == "lease released (hostB)"
    assert "no host held it" in lease_line({**released, "removed_from": []})
    found = {"vm": "web", "live": False, "state": "stale", "age_s": 612.4, **lease().to_dict()}
    assert describe_found(found) == ("web: stale cold job 42 of root@ops1, renewed 612 s ago")
