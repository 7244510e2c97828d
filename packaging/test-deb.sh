#!/usr/bin/env bash
# Builds the .deb, installs it, checks what it put where, and removes it again (purge), leaving
# the machine as it was. Needs root and a Debian system; refuses to touch an existing install.
# That the package's Depends are complete is proven by the VM tier (tests/vm.rs, run by
# .ci/run): tests/vm/rootfs.sh installs the .deb with `apt-get install --no-install-recommends`
# into a clean Debian 12 root and checks that UDisks2, its LUKS plugin, D-Bus and the CA
# certificates came with it; the guest then unlocks LUKS and backs up with that install.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { echo "test-deb: FAIL: $*" >&2; exit 1; }

if dpkg-query -W -f='${Status}' burrow 2>/dev/null | grep -q installed; then
    fail "a burrow package is already installed; not touching it"
fi
if [ -e /etc/burrow/config.yaml ]; then
    fail "/etc/burrow/config.yaml exists (not from the package); not touching it"
fi

start=$SECONDS
deb=$(bash packaging/build-deb.sh | tail -n 1)
echo "test-deb: built $deb in $((SECONDS - start)) s"

cleanup() { dpkg -P burrow >/dev/null 2>&1 || true; rmdir /etc/burrow 2>/dev/null || true; }
trap cleanup EXIT

dpkg -i "$deb" >/dev/null

# What the package must install.
/usr/bin/burrow --version | grep -q '^burrow ' || fail "burrow --version"
test -f /lib/systemd/system/burrow.service || fail "unit file"
grep -q '^ExecStart=/usr/bin/burrow daemon' /lib/systemd/system/burrow.service || fail "unit ExecStart"
dpkg-query -W -f='${Conffiles}\n' burrow | grep -q '/etc/burrow/config.yaml' ||
    fail "/etc/burrow/config.yaml is not a conffile"
test "$(stat -c %a /etc/burrow/config.yaml)" = 600 || fail "config mode"
# The packaged config is valid as shipped and enables no job.
out=$(/usr/bin/burrow --config /etc/burrow/config.yaml check-config) || fail "check-config: $out"
grep -q ', 0 enabled)' <<<"$out" || fail "the packaged config enables a job: $out"
for page in burrow burrow-run burrow-setup-key burrow-generate-man; do
    test -f "/usr/share/man/man1/$page.1.gz" || fail "man page $page"
done
if command -v man >/dev/null; then
    man -w burrow | grep -q '/usr/share/man/man1/burrow.1.gz' || fail "man -w burrow"
    MANWIDTH=80 man burrow 2>/dev/null | grep -q 'EXIT STATUS' || fail "man burrow renders"
fi
test -f /usr/share/bash-completion/completions/burrow || fail "bash completion"
test -f /usr/share/zsh/vendor-completions/_burrow || fail "zsh completion"
test -f /usr/share/fish/vendor_completions.d/burrow.fish || fail "fish completion"
for doc in README.md install.md configuration.md restore.md recovery.md; do
    test -f "/usr/share/doc/burrow/$doc" || fail "doc $doc"
done
test -f /usr/share/doc/burrow/copyright || fail "copyright"
# Not enabled by the package: the config must be edited first.
if [ -d /run/systemd/system ]; then
    ! systemctl is-enabled burrow >/dev/null 2>&1 || fail "unit enabled by the package"
fi

# Removal: the binary goes, the conffile stays until purge.
dpkg -r burrow >/dev/null
test ! -e /usr/bin/burrow || fail "binary left after dpkg -r"
test -f /etc/burrow/config.yaml || fail "conffile removed by dpkg -r"
dpkg -P burrow >/dev/null
test ! -e /etc/burrow/config.yaml || fail "conffile left after purge"
echo "test-deb: ok ($((SECONDS - start)) s)"
