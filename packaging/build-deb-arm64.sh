#!/usr/bin/env bash
# Builds the arm64 Debian package (Raspberry Pi OS 13 / Debian 13, 64-bit) on an x86_64 Debian
# machine that has no aarch64 Rust target. Prints the path of the .deb on the last line.
#
#   bash packaging/build-deb-arm64.sh        # as root; heavy: nice -n 19 bash ... on a shared box
#
# How: a Debian sid root under target/arm64/ (made once by debootstrap and kept; its name holds
# a hash of the recipe below, so a changed recipe makes a new one) has rustc and cargo with the
# aarch64 standard library (libstd-rust-dev:arm64), the aarch64 cross gcc and the arm64 libudev.
# The crates are fetched on this machine (the root has no working TLS to the crate registry)
# and the registry is bind-mounted into the root; inside it, packaging/build-deb.sh cross-builds
# the release binary and runs cargo deb, whose dependency detection (dpkg-shlibdeps) reads the
# shlibs of the arm64 libraries installed there. The man pages and completions are rendered by
# this machine's release build (built here if missing, a no-op when it is up to date).
#
# The root's view of the source tree has its own target/ (target/arm64/target), so this runs
# next to an x86 build of the same tree without touching its files. All mounts live in a
# private mount namespace (unshare) and are unmounted when the build ends, also on failure.
#
# Needs: root, debootstrap, unshare (util-linux), the Rust toolchain, Debian's mirror and the
# crate registry. The cross binary needs glibc 2.39: Debian 13 or newer, not Debian 12.
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."
repo=$(pwd)

MIRROR=http://deb.debian.org/debian
TRIPLE=aarch64-unknown-linux-gnu
BUILD_PACKAGES=(
    rustc cargo libstd-rust-dev:arm64         # Rust with the aarch64 standard library
    gcc-aarch64-linux-gnu libc6-dev-arm64-cross   # linker and C compiler for the C parts
    libudev-dev:arm64 pkg-config              # the udev crate
    dpkg-dev                                  # dpkg-shlibdeps for cargo deb's $auto
    libudev1                                  # the x86 burrow that renders the man pages
)
# The sid mirror's Release file reads as expired from here.
APT=(apt-get -o Acquire::Check-Valid-Until=false -o Dpkg::Use-Pty=0 -qq)
TIMEFORMAT="   %R s wall, %U s user + %S s system CPU"

fail() { echo "build-deb-arm64: FAIL: $*" >&2; exit 1; }
log() { echo "== $*" >&2; }

# Runs "$@" with its output in the log file $1; shows the end of the log if it fails.
quietly() {
    local logfile=$1
    shift
    if ! "$@" >"$logfile" 2>&1; then
        tail -n 40 "$logfile" >&2
        fail "$* failed (whole log: $logfile)"
    fi
}

# --- the build root -----------------------------------------------------------------------

# The recipe of the build root; its hash names the root, so changing it makes a new root.
create_build_root() {
    local dir=$1
    quietly "$dir.log" debootstrap --variant=minbase --include=ca-certificates sid "$dir" "$MIRROR"
    test -e "$dir/dev/null" || fail "debootstrap made no /dev/null in $dir"
    cp -L /etc/resolv.conf "$dir/etc/resolv.conf"
    chroot "$dir" dpkg --add-architecture arm64
    in_root "$dir" env DEBIAN_FRONTEND=noninteractive "${APT[@]}" update
    quietly "$dir.apt.log" in_root "$dir" env DEBIAN_FRONTEND=noninteractive \
        "${APT[@]}" install -y --no-install-recommends "${BUILD_PACKAGES[@]}"
    in_root "$dir" "${APT[@]}" clean
    mkdir -p "$dir/src" "$dir/root/.cargo/registry" "$dir/usr/local/lib/burrow-host"
}

build_root_key() {
    { printf '%s\n' "$MIRROR" "${BUILD_PACKAGES[@]}" "${APT[@]}"; declare -f create_build_root; } |
        sha256sum | cut -c1-16
}

# Makes the build root if this recipe has none yet; prints its path. A half-made root (an
# interrupted run) is never used: the root is made under .tmp and renamed when complete.
ensure_build_root() {
    local root
    root="$repo/target/arm64/build-sid-$(build_root_key)"
    if [ -f "$root/.complete" ]; then
        echo "$root"
        return
    fi
    log "build root $root (debootstrap sid, then rustc, cargo, the aarch64 std and gcc)"
    mkdir -p "$repo/target/arm64"
    rm -rf "$root.tmp" "$root"
    time create_build_root "$root.tmp"
    touch "$root.tmp/.complete"
    mv "$root.tmp" "$root"
    # Roots of older recipes (all mounts are private to their build, so rm never follows one).
    local old
    for old in "$repo"/target/arm64/build-sid-*; do
        case "$old" in "$root" | "$root".*) ;; *) rm -rf "$old" ;; esac
    done
    echo "$root"
}

# Runs "$@" chrooted into the root $1, in a private mount namespace with /proc, the source tree
# at /src (with target/arm64/target as its target/) and this machine's crate registry.
in_root() {
    unshare --mount --propagation private -- bash "$repo/packaging/build-deb-arm64.sh" __in-root "$@"
}

# The part of in_root that runs inside the new mount namespace.
mount_and_chroot() {
    local root=$1
    shift
    mounted=()
    unmount_all() {
        local i
        for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do
            umount "${mounted[i]}" || umount -l "${mounted[i]}" || true
        done
    }
    trap unmount_all EXIT
    mount_at() { mount "$@"; mounted+=("${!#}"); }
    mount_at -t proc proc "$root/proc"
    if [ -d "$root/src" ]; then
        local cargo_home=${CARGO_HOME:-$HOME/.cargo}
        mkdir -p "$repo/target/arm64/target" "$cargo_home/registry"
        mount_at --bind "$repo" "$root/src"
        mount_at --bind "$repo/target/arm64/target" "$root/src/target"
        mount_at --bind "$cargo_home/registry" "$root/root/.cargo/registry"
    fi
    local status=0
    chroot "$root" "$@" || status=$?
    return "$status"
}

# --- the build ----------------------------------------------------------------------------

host_target_dir() {
    cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p'
}

# cargo-deb, this machine's burrow (renders the man pages) and the crates, for the root.
prepare_host() {
    local root=$1
    bash packaging/cargo-deb.sh
    log "crates (cargo fetch on this machine)"
    time cargo fetch --locked
    log "release build for this machine (renders the man pages; a no-op when up to date)"
    time cargo build --release --locked
    local gen
    gen="$(host_target_dir)/release/burrow"
    test -x "$gen" || fail "$gen was not built"
    install -m 755 "$gen" "$root/usr/local/lib/burrow-host/burrow"
    install -m 755 "$(command -v cargo-deb)" "$root/usr/local/bin/cargo-deb"
}

# The cross build and cargo deb, by packaging/build-deb.sh inside the root. Prints the .deb.
cross_build_and_package() {
    local root=$1 deb
    log "cross build and package in the build root (packaging/build-deb.sh)"
    deb=$(time in_root "$root" env -i \
        PATH=/usr/local/bin:/usr/bin:/bin HOME=/root LANG=C.UTF-8 \
        CARGO_NET_OFFLINE=true CARGO_TERM_COLOR=never \
        CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
        CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc \
        PKG_CONFIG_ALLOW_CROSS=1 PKG_CONFIG_PATH=/usr/lib/aarch64-linux-gnu/pkgconfig \
        CARGO_DEB_ARGS="--target $TRIPLE" \
        BURROW_GENERATOR=/usr/local/lib/burrow-host/burrow \
        bash /src/packaging/build-deb.sh | tail -n 1)
    case "$deb" in
    /src/target/*_arm64.deb) deb="$repo/target/arm64/target/${deb#/src/target/}" ;;
    *) fail "packaging/build-deb.sh in the build root printed '$deb', not an arm64 .deb" ;;
    esac
    test -f "$deb" || fail "$deb does not exist"
    echo "$deb"
}

main() {
    [ "$(id -u)" = 0 ] || fail "needs root (debootstrap, chroot, mounts)"
    local tool
    for tool in debootstrap unshare chroot cargo; do
        command -v "$tool" >/dev/null || fail "$tool is missing (apt-get install debootstrap util-linux; cargo from rustup)"
    done
    local start=$SECONDS root deb
    root=$(ensure_build_root)
    prepare_host "$root"
    deb=$(cross_build_and_package "$root")
    log "built $deb in $((SECONDS - start)) s"
    echo "$deb"
}

if [ "${1:-}" = __in-root ]; then
    shift
    mount_and_chroot "$@"
else
    main
fi
