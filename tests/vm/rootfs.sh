#!/usr/bin/env bash
# Builds the guest's root filesystem for the VM tests (tests/vm.rs): Debian 12 with systemd,
# udev, its own kernel and the tools the tests drive, then the burrow package installed the way
# docs/install.md says. Needs root, debootstrap and the Debian mirror.
#
#   bash tests/vm/rootfs.sh DIR BURROW_DEB AUTHORIZED_KEY
#
# Two stages:
# - DIR/base-HASH/: debootstrap, cached, HASH being that of this script. Holds what a minimal
#   Debian has, plus restic (a Recommends of burrow, installed by the admin) and the tools the
#   tests use, and the .debs of burrow's dependencies in apt's cache (downloaded, not
#   installed), so the per-run install needs no network. Built once (about 2 minutes).
# - per run: a copy of the base, `apt-get install --no-install-recommends ./burrow_*.deb` in a
#   chroot (which proves the package's Depends: it must pull in UDisks2, D-Bus, the LUKS plugin
#   and CA certificates by itself), root's SSH key, then DIR/root.img made by `mkfs.ext4 -d`.
#   DIR/vmlinuz and DIR/initrd.img are the guest's kernel. Prints DIR/root.img last.
set -euo pipefail

dir=${1:?usage: rootfs.sh DIR BURROW_DEB AUTHORIZED_KEY}
deb=${2:?usage: rootfs.sh DIR BURROW_DEB AUTHORIZED_KEY}
authorized_key=${3:?usage: rootfs.sh DIR BURROW_DEB AUTHORIZED_KEY}
mirror=${BURROW_VM_MIRROR:-http://deb.debian.org/debian}

# What the base has: a minimal Debian that boots with systemd, its kernel (with USB and
# dm-crypt modules), sshd (the tests' way in, and the "server" burrow pulls from), and tools
# the tests use that are not burrow's business: restic, cryptsetup (formatting the disk, as
# docs/install.md does), ext4 and partition tools.
packages=systemd,systemd-sysv,udev,kmod,e2fsprogs,util-linux,procps,cryptsetup-bin,restic,linux-image-amd64,initramfs-tools,openssh-server,psmisc
# What the burrow package must bring in itself. Downloaded into the base's apt cache only.
deps_expected=(udisks2 dbus libblockdev-crypto2 ca-certificates)

# The base is keyed by the text of this script up to the per-run part: editing the base part
# rebuilds it, editing the per-run part does not.
hash=$(sed '/^# ---- per run/q' "$0" | sha256sum | cut -c1-16)
base="$dir/base-$hash"
mkdir -p "$dir"

chroot_mounts() { # DIR: /proc, /sys and /dev for maintainer scripts
    mount -t proc proc "$1/proc"
    mount -t sysfs sys "$1/sys"
    mount --bind /dev "$1/dev"
}
chroot_umounts() {
    umount "$1/dev" 2>/dev/null || true
    umount "$1/sys" 2>/dev/null || true
    umount "$1/proc" 2>/dev/null || true
}

if [ ! -e "$base/.complete" ]; then
    start=$SECONDS
    echo "vm rootfs: building the base in $base (debootstrap from $mirror)" >&2
    rm -rf "$base" "$base.tmp"
    for old in "$dir"/base-*; do [ -e "$old" ] && rm -rf "$old"; done
    tmp="$base.tmp"
    debootstrap --variant=minbase --include="$packages" bookworm "$tmp" "$mirror" >&2
    trap 'chroot_umounts "$tmp"' EXIT
    chroot_mounts "$tmp"
    # The package's dependencies, into apt's cache only (the per-run install is offline).
    chroot "$tmp" apt-get install -y -qq --download-only --no-install-recommends "${deps_expected[@]}" >&2
    for p in "${deps_expected[@]}"; do
        if chroot "$tmp" dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
            echo "vm rootfs: $p is already in the base; the Depends check would prove nothing" >&2
            exit 1
        fi
    done
    chroot_umounts "$tmp"
    trap - EXIT

    echo burrow-vm >"$tmp/etc/hostname"
    printf '127.0.0.1 localhost\n127.0.1.1 burrow-vm\n::1 localhost\n' >"$tmp/etc/hosts"
    # QEMU user networking: the guest is 10.0.2.15, static (no DHCP client in minbase).
    cat >"$tmp/etc/systemd/network/10-qemu.network" <<'NET'
[Match]
Name=en* eth*
[Network]
Address=10.0.2.15/24
Gateway=10.0.2.2
NET
    ln -sf /lib/systemd/system/systemd-networkd.service \
        "$tmp/etc/systemd/system/multi-user.target.wants/systemd-networkd.service"
    # A getty on the serial console hangs up whoever else writes to it.
    ln -sf /dev/null "$tmp/etc/systemd/system/serial-getty@ttyS0.service"
    # Nothing here needs these at boot; they only slow it down under emulation.
    for unit in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer; do
        ln -sf /dev/null "$tmp/etc/systemd/system/$unit"
    done
    # The guest's sshd is reachable only through QEMU's port forward on the host's 127.0.0.1.
    printf 'PermitRootLogin prohibit-password\nUseDNS no\n' >"$tmp/etc/ssh/sshd_config.d/vm.conf"
    # Shrink what every run copies: drivers a VM never loads, docs, locales.
    modules=$(echo "$tmp"/lib/modules/*)
    rm -rf "$modules"/kernel/drivers/{gpu,media,net/wireless,net/ethernet,infiniband,staging,iio,bluetooth,isdn,input/joystick,input/touchscreen,hid} \
        "$modules"/kernel/sound "$modules"/kernel/net/{wireless,mac80211,bluetooth}
    rm -rf "$tmp"/usr/share/{doc,man,info,locale}/* "$tmp"/var/lib/apt/lists/*_Contents* || true
    cp "$(ls "$tmp"/boot/vmlinuz-* | tail -n 1)" "$tmp/.vmlinuz"
    cp "$(ls "$tmp"/boot/initrd.img-* | tail -n 1)" "$tmp/.initrd.img"
    touch "$tmp/.complete"
    mv "$tmp" "$base"
    echo "vm rootfs: base built in $((SECONDS - start)) s" >&2
fi

# ---- per run ------------------------------------------------------------------------------
start=$SECONDS
root="$dir/root"
rm -rf "$root" "$dir/root.img"
cp -a --reflink=auto "$base" "$root"
cp "$root/.vmlinuz" "$dir/vmlinuz"
cp "$root/.initrd.img" "$dir/initrd.img"
rm -f "$root/.vmlinuz" "$root/.initrd.img" "$root/.complete"

cp "$deb" "$root/tmp/"
trap 'chroot_umounts "$root"' EXIT
chroot_mounts "$root"
# As docs/install.md installs it. --no-install-recommends: what the package needs must be in
# its Depends.
chroot "$root" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends -o Debug::NoLocking=1 "/tmp/$(basename "$deb")" >&2
chroot_umounts "$root"
trap - EXIT
rm -f "$root/tmp/$(basename "$deb")"
for p in burrow "${deps_expected[@]}"; do
    chroot "$root" dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' ||
        { echo "vm rootfs: installing the burrow package did not install $p" >&2; exit 1; }
done
chroot "$root" apt-get clean

install -d -m 700 "$root/root/.ssh"
install -m 600 "$authorized_key" "$root/root/.ssh/authorized_keys"

# Inodes for the base and a restore of 100,000 files.
mkfs.ext4 -q -F -N 400000 -L burrow-vm-root -d "$root" "$dir/root.img" 3G >&2
rm -rf "$root"
echo "vm rootfs: per-run image in $((SECONDS - start)) s" >&2
echo "$dir/root.img"
