#!/usr/bin/env bash
# Builds the arm64 .deb (packaging/build-deb-arm64.sh) and checks it on this x86_64 machine:
# its control fields (Architecture, Depends installable on Debian 13), its file list, that the
# binary is an aarch64 ELF, and that this binary runs on a Debian 13 (trixie) arm64 root under
# qemu-aarch64-static: `--version`, then `quickstart` backs up a directory, and this machine's
# restic checks (reading all data), lists and restores what it wrote. Installs nothing.
#
#   nice -n 19 bash packaging/test-deb-arm64.sh       # as root
#
# The trixie root is debootstrap's first stage only (files unpacked, nothing executed), kept
# under target/arm64/ with a hash of its recipe in its name. qemu-aarch64-static is called
# explicitly: no binfmt handler is registered on this machine.
#
# Needs: root, debootstrap, qemu-user-static, restic, and what build-deb-arm64.sh needs.
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."
repo=$(pwd)

MIRROR=http://deb.debian.org/debian
TIMEFORMAT="   %R s wall, %U s user + %S s system CPU"

fail() { echo "test-deb-arm64: FAIL: $*" >&2; exit 1; }
log() { echo "== $*" >&2; }

# --- the Debian 13 arm64 root -------------------------------------------------------------

# The recipe of the run root; its hash names the root, so changing it makes a new root.
create_run_root() {
    local dir=$1
    if ! debootstrap --foreign --arch arm64 --variant=minbase --include=libudev1 \
        trixie "$dir" "$MIRROR" >"$dir.log" 2>&1; then
        tail -n 40 "$dir.log" >&2
        fail "debootstrap of the trixie arm64 root failed (whole log: $dir.log)"
    fi
    test -e "$dir/lib/ld-linux-aarch64.so.1" || fail "$dir has no /lib/ld-linux-aarch64.so.1"
}

ensure_run_root() {
    local key root old
    key=$({ echo "$MIRROR"; declare -f create_run_root; } | sha256sum | cut -c1-16)
    root="$repo/target/arm64/run-trixie-$key"
    if [ -f "$root/.complete" ]; then
        echo "$root"
        return
    fi
    log "Debian 13 arm64 root $root (debootstrap, first stage)"
    mkdir -p "$repo/target/arm64"
    rm -rf "$root.tmp" "$root"
    time create_run_root "$root.tmp"
    touch "$root.tmp/.complete"
    mv "$root.tmp" "$root"
    for old in "$repo"/target/arm64/run-trixie-*; do
        case "$old" in "$root" | "$root".*) ;; *) rm -rf "$old" ;; esac
    done
    echo "$root"
}

# The version of package $2 that the trixie root $1 unpacked (empty if it has none).
root_version() {
    local deb
    for deb in "$1"/var/cache/apt/archives/"$2"_*_arm64.deb "$1"/var/cache/apt/archives/"$2"_*_all.deb; do
        [ -f "$deb" ] && { dpkg-deb -f "$deb" Version; return; }
    done
    true
}

# --- checks of the package ----------------------------------------------------------------

check_control() {
    local deb=$1 root=$2 arch depends
    arch=$(dpkg-deb -f "$deb" Architecture)
    [ "$arch" = arm64 ] || fail "Architecture is '$arch', not arm64"
    depends=$(dpkg-deb -f "$deb" Depends)
    echo "   Depends: $depends" >&2
    case "$depends" in
    *-cross* | *:arm64* | *:amd64*)
        fail "Depends names a cross or arch-qualified package (dpkg-shlibdeps found the wrong libraries): $depends" ;;
    esac
    local want
    for want in 'libc6 (>= ' 'libudev1 (>= ' udisks2 dbus 'libblockdev-crypto2 | libblockdev-crypto3' ca-certificates; do
        grep -qF "$want" <<<"$depends" || fail "Depends lacks '$want': $depends"
    done
    # Every versioned dependency that Debian 13 has must be satisfied by Debian 13's version.
    local item name op version have
    while read -r name op version; do
        have=$(root_version "$root" "$name")
        [ -n "$have" ] || continue
        dpkg --compare-versions "$have" "$op" "$version" ||
            fail "Depends: $name ($op $version), but Debian 13 has $have: the package would not install there"
        echo "   $name ($op $version): Debian 13 has $have" >&2
    done < <(tr ',|' '\n\n' <<<"$depends" | sed -n 's/^ *\([^ ]*\) (\([<>=]*\) \([^)]*\)).*/\1 \2 \3/p')
}

check_contents() {
    local deb=$1 list path
    list=$(dpkg-deb -c "$deb" | awk '{ print $NF }')
    for path in ./usr/bin/burrow ./etc/burrow/config.yaml \
        ./usr/share/bash-completion/completions/burrow ./usr/share/zsh/vendor-completions/_burrow \
        ./usr/share/fish/vendor_completions.d/burrow.fish ./usr/share/doc/burrow/README.md; do
        grep -qxF "$path" <<<"$list" || fail "the package lacks $path"
    done
    grep -qE '^\./(usr/)?lib/systemd/system/burrow\.service$' <<<"$list" ||
        fail "the package lacks the systemd unit burrow.service"
    for path in burrow burrow-run burrow-setup-key burrow-generate-man; do
        grep -qxF "./usr/share/man/man1/$path.1.gz" <<<"$list" || fail "the package lacks the man page $path.1"
    done
}

# An ELF file for 64-bit little-endian aarch64: magic, EI_CLASS 2, EI_DATA 1, e_machine 183.
check_aarch64_elf() {
    local bin=$1 header
    header=$(od -An -tx1 -N20 "$bin" | tr -d ' \n')
    [ "${header:0:12}" = 7f454c460201 ] || fail "$bin is not a 64-bit little-endian ELF (header $header)"
    [ "${header:36:4}" = b700 ] || fail "$bin is an ELF for machine 0x${header:38:2}${header:36:2}, not aarch64 (0x00b7)"
    if command -v file >/dev/null; then
        file -b "$bin" | sed 's/^/   /' >&2
    fi
}

# --- running it on Debian 13 arm64 --------------------------------------------------------

check_runs() {
    local bin=$1 root=$2 deb=$3 work=$4 out want
    local qemu=(qemu-aarch64-static -L "$root")
    out=$("${qemu[@]}" "$bin" --version) || fail "burrow --version under qemu-aarch64-static exited with $?"
    want="burrow $(dpkg-deb -f "$deb" Version | sed 's/-[^-]*$//')"
    [ "${out%% (*}" = "$want" ] || [ "$out" = "$want" ] || fail "burrow --version printed '$out', not '$want'"
    echo "   $out" >&2

    mkdir -p "$work/data/sub"
    echo "hello from the arm64 build" >"$work/data/a.txt"
    head -c 300000 /dev/urandom >"$work/data/sub/random.bin"
    log "quickstart (arm64 burrow under qemu) into $work/qs"
    time "${qemu[@]}" "$bin" quickstart --dir "$work/qs" --path "$work/data" >"$work/quickstart.log" 2>&1 || {
        cat "$work/quickstart.log" >&2
        fail "burrow quickstart under qemu-aarch64-static failed"
    }
    test -f "$work/qs/password" || fail "quickstart wrote no password file $work/qs/password"

    log "restic (this machine's) reads the repository the arm64 burrow wrote"
    local restic=(restic --no-cache -r "$work/qs/repo" --password-file "$work/qs/password")
    "${restic[@]}" check --read-data >"$work/check.log" 2>&1 || {
        cat "$work/check.log" >&2
        fail "restic check --read-data failed on the repository written by the arm64 burrow"
    }
    out=$("${restic[@]}" snapshots --json) || fail "restic snapshots failed"
    grep -qF "\"$work/data\"" <<<"$out" || fail "restic snapshots shows no snapshot of $work/data: $out"
    "${restic[@]}" snapshots | sed 's/^/   /' >&2
    "${restic[@]}" restore latest --target "$work/restored" >/dev/null ||
        fail "restic restore of the arm64 burrow's snapshot failed"
    diff -r "$work/data" "$work/restored$work/data" >&2 ||
        fail "the restored files differ from the backed-up ones"
}

main() {
    [ "$(id -u)" = 0 ] || fail "needs root"
    local tool
    for tool in debootstrap qemu-aarch64-static restic dpkg-deb od; do
        command -v "$tool" >/dev/null || fail "$tool is missing (apt-get install debootstrap qemu-user-static restic)"
    done
    local start=$SECONDS deb root work
    deb=$(bash packaging/build-deb-arm64.sh | tail -n 1)
    echo "test-deb-arm64: built $deb in $((SECONDS - start)) s" >&2
    root=$(ensure_run_root)
    work=$(mktemp -d /tmp/burrow-arm64.XXXXXX)
    # shellcheck disable=SC2064
    trap "rm -rf '$work'" EXIT

    log "package control fields"
    check_control "$deb" "$root"
    log "package contents"
    check_contents "$deb"
    dpkg-deb -x "$deb" "$work/pkg"
    log "the binary is aarch64"
    check_aarch64_elf "$work/pkg/usr/bin/burrow"
    log "burrow --version on Debian 13 arm64 (qemu-aarch64-static -L $root)"
    check_runs "$work/pkg/usr/bin/burrow" "$root" "$deb" "$work"
    echo "test-deb-arm64: ok ($((SECONDS - start)) s)"
}

main
