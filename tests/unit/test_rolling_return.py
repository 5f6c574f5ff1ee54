"""`vmigrate rolling --return better` over synthetic clusters (fleet/rolling_return.py and the
dry run's simulation in rolling_plan.py): the balance planner brings back only the VMs
whose return improves the balance, every other VM stays with its reason, and no VM is ever
sent back to an older QEMU."""

from __future__ import annotations

from vmigrate.capacity import MIB, HostBudget, memory_need_bytes
from vmigrate.fleet.balance import HostSample, VmSample, imbalance
from vmigrate.fleet.plan import FleetInput, PairVerdict, Purpose, TargetHost, VmLoad
from vmigrate.fleet.rolling_plan import RollingRequest, _Simulated, with_stayed
from vmigrate.fleet.rolling_return import moved_to, plan_return

GIB = 1024 * MIB
OLD, NEW = 7_002_000, 10_000_002  # QEMU 7.2.0 and 10.0.2, libvirt's encoding
SAME = {"home": NEW, "hostA": NEW, "hostB": NEW}


def guest(name: str, host: str, cpu: float = 0.5, memory_mib: int = 512) -> VmSample:
    return VmSample(name, host, 1, cpu, memory_mib * MIB, 1.0 * MIB, True, "running")


def cluster(vms: list[VmSample]) -> tuple[HostSample, ...]:
    """Three hosts of 4 GiB (512 MiB reserve) and 4 declared vCPUs, budgets from `vms`."""
    hosts = []
    for name in ("home", "hostA", "hostB"):
        mine = [vm for vm in vms if vm.host == name and vm.holds]
        placed = sum(memory_need_bytes(vm.memory_bytes) for vm in mine)
        budget = HostBudget(name, 24 * GIB, 4 * GIB, 512 * MIB, placed, 20 * GIB - placed,
                            4, len(mine), 8)  # fmt: skip
        hosts.append(HostSample(name, budget))
    return tuple(hosts)


def loads(hosts: tuple[HostSample, ...], vms: list[VmSample], where: dict[str, str]) -> float:
    """The imbalance of the cluster with VMs at `where` (balance's own metric)."""
    by_host = dict.fromkeys((h.name for h in hosts), 0.0)
    for vm in vms:
        at = where.get(vm.name, vm.host)
        by_host[at] += (vm.cpu_cores / 4 + memory_need_bytes(vm.memory_bytes) / (3.5 * GIB)) / 2
    return imbalance(list(by_host.values()))


def test_vms_whose_return_evens_the_load_come_back() -> None:
    # home ran v1 and v2, its evacuation sent one to each other host, which run two each.
    vms = [
        guest("v1", "hostA"), guest("v2", "hostB"),
        guest("a1", "hostA"), guest("a2", "hostA"), guest("b1", "hostB"), guest("b2", "hostB"),
    ]  # fmt: skip
    planned = plan_return(cluster(vms), vms, "home", {"v1": "hostA", "v2": "hostB"}, SAME)
    assert sorted(planned.returning) == ["v1", "v2"]
    assert {m.destination for m in planned.plan.moves} == {"home"}
    assert planned.staying == {}


def test_vms_whose_return_would_only_move_the_imbalance_stay() -> None:
    # home ran both busy guests; the other hosts were empty: after the evacuation one runs
    # on each, and bringing one back leaves the loads as uneven as before.
    vms = [guest("v1", "hostA", cpu=1.0, memory_mib=1024), guest("v2", "hostB", cpu=1.0,
                                                                    memory_mib=1024)]  # fmt: skip
    hosts = cluster(vms)
    planned = plan_return(hosts, vms, "home", {"v1": "hostA", "v2": "hostB"}, SAME)
    assert planned.returning == ()
    assert set(planned.staying) == {"v1", "v2"}
    assert "would not improve the balance" in planned.staying["v1"]
    # What --return always would do: both back home, the other hosts empty: less even.
    stay = loads(hosts, vms, {})
    assert loads(hosts, vms, {"v1": "home", "v2": "home"}) > stay


def test_a_vm_never_returns_to_an_older_qemu() -> None:
    vms = [
        guest("v1", "hostA"), guest("v2", "hostB"),
        guest("a1", "hostA"), guest("a2", "hostA"), guest("b1", "hostB"), guest("b2", "hostB"),
    ]  # fmt: skip
    versions = {"home": OLD, "hostA": NEW, "hostB": OLD}  # the command left home on 7.2
    planned = plan_return(cluster(vms), vms, "home", {"v1": "hostA", "v2": "hostB"}, versions)
    assert planned.returning == ("v2",)
    assert "home's QEMU 7.2.0 is older than 10.0.2" in planned.staying["v1"]


def test_checks_that_fail_a_shut_off_vm_and_one_back_already() -> None:
    vms = [
        guest("v1", "hostA"), guest("v2", "home"),
        VmSample("v3", "hostB", 1, 0.0, 512 * MIB, None, True, "shut off"),
        guest("a1", "hostA"), guest("b1", "hostB"),
    ]  # fmt: skip
    checked = (PairVerdict("v1", "home", ("cpu: model Icelake-Server unknown to home",)),)
    away = {"v1": "hostA", "v2": "hostB", "v3": "hostB", "gone": "hostB"}
    planned = plan_return(cluster(vms), vms, "home", away, SAME, checked)
    assert planned.returning == ()
    assert planned.staying == {
        "v1": "cpu: model Icelake-Server unknown to home",
        "v3": "it is shut off on hostB: a return moves running VMs live",
        "gone": "not found on any host (its evacuation sent it to hostB)",
    }  # v2 is home already (a resumed return): not planned again


def test_moved_to_counts_each_host_with_the_vms_it_would_hold() -> None:
    vms = [guest("v1", "home", memory_mib=1024), guest("a1", "hostA")]
    hosts, placed = moved_to(cluster(vms), vms, {"v1": "hostA"})
    budgets = {h.name: h.budget for h in hosts}
    assert budgets["home"] is not None and budgets["hostA"] is not None
    assert budgets["home"].placed_bytes == 0
    assert budgets["hostA"].placed_bytes == 2 * memory_need_bytes(512 * MIB) + (
        memory_need_bytes(1024 * MIB) - memory_need_bytes(512 * MIB)
    )
    assert budgets["hostA"].vcpus_placed == 2
    assert [vm.host for vm in placed] == ["hostA", "hostA"]


def test_a_dry_run_shows_which_vms_stay_and_plans_them_again_where_they_stayed() -> None:
    vms = [guest("v1", "home", cpu=1.0, memory_mib=1024), guest("v2", "home", cpu=1.0,
                                                                memory_mib=1024)]  # fmt: skip
    simulated = _Simulated(cluster(vms), tuple(vms), {"v1": "hostA", "v2": "hostB"})
    simulated.home.update(v1="home", v2="home")
    for vm in vms:
        load = VmLoad(vm.name, "home", "running", True, vm.memory_bytes, 1, 1.0 * MIB)
        pairs = (PairVerdict(vm.name, "hostA", ()), PairVerdict(vm.name, "hostB", ()))
        simulated.loads[vm.name] = (load, pairs)
    evacuation = {"moves": [{"vm": "v1", "destination": "hostA"},
                            {"vm": "v2", "destination": "hostB"}]}  # fmt: skip
    request = RollingRequest("trio", "true {host}", bandwidth_mib=119.0)
    step = simulated.returned(request, "home", evacuation, SAME, set())
    assert step["moves"] == [] and set(step["stays"]) == {"v1", "v2"}
    # hostA's evacuation later carries v1 too: to home (upgraded) or hostB, not hostA.
    targets = (TargetHost("home", None), TargetHost("hostB", None))
    empty = FleetInput(Purpose("evacuate", "hostA"), (), targets, ())
    inp = with_stayed(empty, "hostA", simulated.where, simulated.home, simulated.loads, SAME)
    assert [(vm.name, vm.host) for vm in inp.vms] == [("v1", "hostA")]
    assert {(v.vm, v.destination, v.blockers) for v in inp.verdicts} == {
        ("v1", "hostB", ()),
        ("v1", "home", ()),
    }
    older = with_stayed(empty, "hostA", simulated.where, simulated.home, simulated.loads,
                        {"home": NEW, "hostA": NEW, "hostB": OLD})  # fmt: skip
    blocked = {v.destination: v.blockers for v in older.verdicts}
    assert blocked["home"] == () and "older" in blocked["hostB"][0]
