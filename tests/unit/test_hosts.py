"""Host names, hosts files and libvirt URIs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from vmigrate.errors import UsageError
from vmigrate.hosts import load_hosts_file, parse_uri, resolve_host


@pytest.mark.parametrize(
    ("uri", "transport", "port", "encrypted"),
    [
        ("qemu+tcp://127.0.0.3/system", "tcp", 16509, False),
        ("qemu+tls://web-a/system", "tls", 16514, True),
        ("qemu://web-a/system", "tls", 16514, True),
        ("qemu+ssh://root@web-a:2222/system", "ssh", 2222, True),
        ("qemu:///system", "unix", None, True),
    ],
)
def test_uri_transports(uri: str, transport: str, port: int | None, encrypted: bool) -> None:
    parsed = parse_uri(uri)
    assert parsed.effective_transport == transport
    assert parsed.daemon_port == port
    assert parsed.encrypted is encrypted


@pytest.mark.parametrize(
    "uri",
    [
        "qemu+tcp:/host/system",
        "xen+ssh://h/system",
        "qemu+foo://h/system",
        "qemu+tcp://h/",
        "qemu+tcp://h:99999/system",
        "://",
    ],
)
def test_malformed_uris(uri: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_uri(uri)
    assert caught.value.exit_code == 2


def test_hosts_file(tmp_path: Path) -> None:
    path = tmp_path / "hosts.toml"
    path.write_text(
        '[hosts.web-a]\nuri = "qemu+tls://web-a/system"\n'
        'migration_address = "10.0.0.11"\nmigration_ports = [50000, 50010]\n'
        "bandwidth = 119\n"
    )
    hosts = load_hosts_file(path)
    assert hosts["web-a"].bandwidth_mib == 119.0
    assert hosts["web-a"].migration_address == "10.0.0.11"
    assert hosts["web-a"].migration_ports == (50000, 50010)
    assert resolve_host("web-a", path).uri == "qemu+tls://web-a/system"


@pytest.mark.parametrize(
    "content",
    [
        "[hosts.a\nuri = 1",  # not TOML
        '[a]\nuri = "qemu:///system"\n',  # not under [hosts]
        "[hosts.a]\nmigration_tls = 'yes'\n",  # not a boolean
        '[hosts.a]\nuri = "qemu:///system"\naddress = "a"\n',  # a URI and its parts
        '[hosts.a]\ntransport = "telnet"\n',
        '[hosts.a]\ntransport = "ssh"\nknown_hosts = "/k"\n',  # openssh takes none
        '[hosts.a]\ntransport = "tls"\nuser = "root"\n',
        "[hosts.a]\nport = 99999\n",
        '[hosts.a]\naddress = "x@y"\n',  # would make user "root@x" on host y
        '[hosts.a]\naddress = "web:2222"\n',  # the port has its own key
        '[defaults]\ncolour = "red"\n',
        '[hosts.a]\nuri = "qemu:///system"\ncolour = "red"\n',  # unknown key
        '[hosts.a]\nuri = "qemu:///system"\nmigration_ports = [9, 1]\n',
        '[hosts.a]\nuri = "nonsense"\n',
        '[hosts.a]\nuri = "qemu:///system"\nbandwidth = -5\n',
        '[hosts.a]\nuri = "qemu:///system"\nbandwidth = "fast"\n',
        '[hosts.a]\nuri = "qemu:///system"\nbandwidth = nan\n',
        '[hosts.a]\nuri = "qemu:///system"\nbandwidth = inf\n',
    ],
)
def test_malformed_hosts_files(tmp_path: Path, content: str) -> None:
    path = tmp_path / "hosts.toml"
    path.write_text(content)
    with pytest.raises(UsageError) as caught:
        load_hosts_file(path)
    assert str(path) in str(caught.value)


def test_a_hosts_file_that_is_not_text_is_a_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "hosts.toml"
    path.write_bytes(b'[hosts.a]\nuri = "qemu:///system"\n# \xff\xfe latin-1 junk\n')
    with pytest.raises(UsageError) as caught:
        load_hosts_file(path)
    assert str(path) in str(caught.value)


def test_lab_names_need_no_hosts_file(tmp_path: Path) -> None:
    ref = resolve_host("hostB")
    assert ref.uri.startswith("qemu+tls://127.0.0.3/system?pkipath=")
    assert ref.address == "127.0.0.3"
    assert ref.migration_tls is True
    assert ref.peer_connection_uri == "qemu+tls://127.0.0.3/system"


def test_the_lab_transport_can_be_chosen(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VMIGRATE_LAB_TRANSPORT", "ssh")
    ref = resolve_host("hostB")
    assert ref.uri.startswith("qemu+ssh://root@127.0.0.3/system")
    assert ref.peer_connection_uri == "qemu+ssh://root@127.0.0.3/system"
    # A URI `lab status` printed is that lab host, whichever transport names it.
    assert resolve_host(ref.uri).name == "hostB"
    monkeypatch.setenv("VMIGRATE_LAB_TRANSPORT", "carrier-pigeon")
    with pytest.raises(UsageError, match="names no lab transport"):
        resolve_host("hostB")


def test_hosts_built_from_their_parts(tmp_path: Path) -> None:
    path = tmp_path / "hosts.toml"
    path.write_text(
        "[defaults]\nmigration_tls = true\n"
        '[hosts.a]\naddress = "10.1.1.1"\nkey_file = "/keys/id a"\n'
        '[hosts.b]\ntransport = "libssh"\nuser = "ops"\nport = 2222\n'
        'known_hosts = "/etc/vmigrate/known_hosts"\n'
        '[hosts.c]\ntransport = "tls"\npeer_uri = "qemu+tls://c.mig/system"\n'
        "migration_tls = false\n"
    )
    hosts = load_hosts_file(path)
    assert hosts["a"].uri == "qemu+ssh://root@10.1.1.1/system?keyfile=/keys/id%20a"
    assert hosts["a"].migration_tls is True  # from [defaults]
    assert hosts["b"].uri == (
        "qemu+libssh://ops@b:2222/system?known_hosts=/etc/vmigrate/known_hosts"
    )
    assert hosts["c"].uri == "qemu+tls://c/system"
    assert hosts["c"].peer_connection_uri == "qemu+tls://c.mig/system"
    assert hosts["c"].migration_tls is False


def test_bare_names_are_ssh_hosts_with_defaults(tmp_path: Path) -> None:
    path = tmp_path / "hosts.toml"
    path.write_text('[defaults]\ntransport = "ssh"\n')
    assert resolve_host("web-c", path).uri == "qemu+ssh://root@web-c/system"
    with pytest.raises(UsageError):
        resolve_host("not a name", path)


def test_unknown_name_says_what_to_do(tmp_path: Path) -> None:
    empty = tmp_path / "hosts.toml"
    empty.write_text("")
    with pytest.raises(UsageError) as caught:
        resolve_host("web-z", empty)
    assert "web-z" in str(caught.value) and "qemu+ssh://root@web-z/system" in str(caught.value)
    assert "[defaults]" in str(caught.value)


def test_missing_explicit_hosts_file(tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        resolve_host("web-a", tmp_path / "nope.toml")


def test_hosts_file_capacity_and_clusters(tmp_path: Path) -> None:
    from vmigrate.hosts import load_inventory, resolve_cluster

    path = tmp_path / "hosts.toml"
    path.write_text(
        '[hosts.b]\nuri = "qemu+tcp://127.0.0.3/system"\ncapacity_mib = 2048\n'
        "reserve_mib = 256\nvcpus = 4\n"
        '[hosts.c]\nuri = "qemu+tcp://127.0.0.4/system"\n'
        '[clusters.pair]\nhosts = ["b", "c", "hostA"]\n'
    )
    inventory = load_inventory(path)
    assert inventory.hosts["b"].capacity_mib == 2048
    assert inventory.hosts["b"].reserve_mib == 256
    assert inventory.hosts["c"].capacity_mib is None
    refs = resolve_cluster("pair", path)
    assert [r.name for r in refs] == ["b", "c", "hostA"]
    assert refs[2].capacity_mib == 4096  # the lab's hostA declares its capacity


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('[hosts.b]\nuri = "qemu+tcp://h/system"\ncapacity_mib = -1\n', "capacity_mib must be"),
        ('[hosts.b]\nuri = "qemu+tcp://h/system"\nvcpus = "four"\n', "vcpus must be"),
        ('[clusters.x]\nhosts = ["nowhere"]\n', "nowhere not defined"),
        ("[clusters.x]\nhosts = []\n", "needs only hosts = [...]"),
        ("[racks.x]\n", "expected only [hosts.NAME], [clusters.NAME] and [defaults]"),
    ],
)
def test_bad_hosts_files_say_what_is_wrong(tmp_path: Path, text: str, words: str) -> None:
    path = tmp_path / "hosts.toml"
    path.write_text(text)
    with pytest.raises(UsageError, match=re.escape(words)):
        load_hosts_file(path)


def test_an_unknown_cluster_is_a_usage_error(tmp_path: Path) -> None:
    from vmigrate.hosts import resolve_cluster

    path = tmp_path / "hosts.toml"
    path.write_text('[hosts.b]\nuri = "qemu+tcp://127.0.0.3/system"\n')
    with pytest.raises(UsageError, match="unknown cluster 'rack9'"):
        resolve_cluster("rack9", path)


def test_a_lab_host_listed_without_a_uri_takes_what_the_file_declares(tmp_path: Path) -> None:
    from vmigrate.hosts import resolve_cluster

    path = tmp_path / "hosts.toml"
    path.write_text(
        "[hosts.hostA]\ncapacity_mib = 16384\nreserve_mib = 1024\n"
        '[hosts.hostB]\nuri = "qemu+tcp://127.0.0.3/system"\n'
        '[clusters.big]\nhosts = ["hostA", "hostB", "hostC"]\n'
    )
    lab_a = resolve_host("hostA")
    bigger = resolve_host("hostA", path)
    assert (bigger.capacity_mib, bigger.reserve_mib) == (16384, 1024)
    assert bigger.uri == lab_a.uri and bigger.peer_uri == lab_a.peer_uri
    assert bigger.migration_tls is True and bigger.vcpus == lab_a.vcpus
    # a URI of its own makes it an ordinary host of the file; an unlisted one stays the lab's
    assert resolve_host("hostB", path).uri == "qemu+tcp://127.0.0.3/system"
    refs = resolve_cluster("big", path)
    assert [r.capacity_mib for r in refs] == [16384, None, 3072]
