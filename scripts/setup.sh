#!/usr/bin/env bash
# Set up vmigrate and its two-host lab on Debian 12 (bookworm), as root. Idempotent: a second
# run checks each step and skips what is already done.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
die() { printf 'setup: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run me as root: I install Debian packages and create the libvirt-qemu system user"
. /etc/os-release
[ "${VERSION_CODENAME:-}" = bookworm ] || die "this set-up is for Debian 12 (bookworm); this machine is ${PRETTY_NAME:-unknown}"
export DEBIAN_FRONTEND=noninteractive

# --- 1. bookworm-backports: Debian 12's own QEMU 7.2 corrupts busy guests during live migration
#        under TCG; QEMU 10.0 + libvirt 11.3 from backports do not (see docs/lab.md).
backports=/etc/apt/sources.list.d/vmigrate-bookworm-backports.sources
apt_updated=0
if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    say "adding bookworm-backports to apt sources"
    mirror=$(grep -hs -m1 '^URIs:' /etc/apt/sources.list.d/debian.sources | awk '{print $2}' || true)
    [ -n "$mirror" ] || mirror=$(awk '$1=="deb" && $3=="bookworm" {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
    [ -n "$mirror" ] || mirror=http://deb.debian.org/debian
    cat >"$backports" <<SRC
Types: deb
URIs: $mirror
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    apt-get update -q
    apt_updated=1
fi

# --- 2. packages
version_of() { dpkg-query -W -f='${Status} ${Version}' "$1" 2>/dev/null | awk '/install ok installed/ {print $4}'; }
at_least() { [ -n "$1" ] && dpkg --compare-versions "$1" ge "$2"; }
# libvirt's drivers are packages of their own: without the storage and network drivers every pool
# and network call fails ("this function is not supported by the connection driver").
# The lab's shared storage (`lab up --storage`): QEMU's user-space iSCSI, NFS and RBD drivers
# (qemu-block-extra), libvirt's iscsi-direct and rbd pools, and its secret driver (cephx keys).
backport_pkgs=(qemu-system-x86 qemu-utils libvirt-daemon libvirt-daemon-driver-qemu
               libvirt-daemon-driver-storage libvirt-daemon-driver-network libvirt-clients libvirt-dev
               qemu-block-extra libvirt-daemon-driver-storage-iscsi-direct
               libvirt-daemon-driver-storage-rbd libvirt-daemon-driver-secret)
stable_pkgs=(python3 python3-venv python3-dev gcc make pkg-config busybox-static iproute2 iptables cpio
             xz-utils util-linux mount dpkg-dev
             mmdebstrap  # `lab up --version hostC=bookworm`: the host's own Debian 12 root filesystem
             openssh-server openssh-client rsync  # each lab host's sshd (qemu+ssh); scp/rsync peers of the cold benchmark
             tgt ceph-mon ceph-mgr ceph-osd ceph-common nfs-ganesha nfs-ganesha-vfs rpcbind socat  # the lab's storage servers
             libpq5 postgresql  # psycopg's libpq (a PostgreSQL store); the tests' throwaway PostgreSQL server
             chromium chromium-driver)  # the dashboard's browser tests (headless, through selenium)
need_backports=0
at_least "$(version_of qemu-system-x86)" "1:10.0" || need_backports=1
at_least "$(version_of libvirt-daemon)" "11.0" || need_backports=1
for p in "${backport_pkgs[@]}"; do [ -n "$(version_of "$p")" ] || need_backports=1; done
missing_stable=()
for p in "${stable_pkgs[@]}"; do [ -n "$(version_of "$p")" ] || missing_stable+=("$p"); done
if [ "$need_backports" = 1 ] || [ "${#missing_stable[@]}" -gt 0 ]; then
    [ "$apt_updated" = 1 ] || { say "apt-get update"; apt-get update -q; }
    if [ "${#missing_stable[@]}" -gt 0 ]; then
        say "installing ${missing_stable[*]}"
        # The lab runs its own sshd per host and its own storage servers, each on a loopback
        # address of its own: keep the packages from starting system-wide ones (rpcbind would
        # listen on every address) (policy-rc.d 101 = do not start services).
        # PostgreSQL's package would make a system-wide cluster: the tests start their own.
        mkdir -p /etc/postgresql-common/createcluster.d
        echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.d/vmigrate.conf
        guard=0
        if [ ! -e /usr/sbin/policy-rc.d ]; then
            printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
            guard=1
        fi
        apt-get install -y -q --no-install-recommends "${missing_stable[@]}"
        [ "$guard" = 1 ] && rm -f /usr/sbin/policy-rc.d
        if command -v systemctl >/dev/null; then
            systemctl disable --now ssh.service ssh.socket rpcbind.service rpcbind.socket \
                nfs-ganesha.service tgt.service ceph.target postgresql.service >/dev/null 2>&1 || true
        fi
    fi
    if [ "$need_backports" = 1 ]; then
        say "installing QEMU and libvirt from bookworm-backports"
        apt-get install -y -q --no-install-recommends -t bookworm-backports "${backport_pkgs[@]}"
    fi
    apt_updated=1
else
    say "packages: QEMU $(version_of qemu-system-x86), libvirt $(version_of libvirt-daemon) already installed"
fi

# --- 3. libvirtd refuses to start without this user, even when configured to run QEMU as root
getent group libvirt-qemu >/dev/null || groupadd --system libvirt-qemu
getent passwd libvirt-qemu >/dev/null ||
    useradd --system --gid libvirt-qemu --home-dir /var/lib/libvirt --shell /usr/sbin/nologin libvirt-qemu

# --- 4. virtualenv with vmigrate and its dev tools. libvirt-python is built from source against
#        the installed libvirt-dev, so it is rebuilt whenever libvirt or our dependencies change.
stamp_wanted="$(sha256sum pyproject.toml | cut -c1-16) libvirt-$(version_of libvirt-dev)"
if [ ! -x .venv/bin/python ] || [ "$(cat .venv/.vmigrate-stamp 2>/dev/null)" != "$stamp_wanted" ]; then
    say "creating .venv and installing vmigrate with its dev dependencies"
    /usr/bin/python3 -m venv .venv
    .venv/bin/pip install -q --upgrade pip
    .venv/bin/pip install -q --no-cache-dir --force-reinstall --no-deps libvirt-python
    .venv/bin/pip install -q -e '.[dev]'
    echo "$stamp_wanted" > .venv/.vmigrate-stamp
else
    say ".venv is up to date"
fi

# --- 5. the lab guest: Debian kernel + busybox + our static workload as init
if .venv/bin/python -c 'import sys; from vmigrate.lab.image import load_guest_image as g; sys.exit(g() is None)'; then
    say "lab guest image already built"
else
    # The kernel comes from Debian's linux-image package: apt needs fresh package lists.
    [ "$apt_updated" = 1 ] || { say "apt-get update"; apt-get update -q; }
    say "building the lab guest image (Debian kernel, busybox, our workload as init)"
    .venv/bin/python -m vmigrate.lab.image build
fi
say "accelerator (KVM only if it really boots a guest)"
.venv/bin/python -m vmigrate.lab.accel
say "set-up complete: activate with '. .venv/bin/activate', then try 'vmigrate lab up'"
