#!/usr/bin/env bash
# Makes sure cargo-deb, the version the packaging is written for, is installed (build-deb.sh and
# build-deb-arm64.sh both call this). It is built without optimisation: it only lays out files
# and calls dpkg-shlibdeps, and its compression is C code built optimised either way, so the
# package comes out the same in the same time, and the install takes about a minute instead
# of several. Two builds at once install it once (flock).
#
#   bash packaging/cargo-deb.sh
set -euo pipefail

VERSION=3.8.0

installed() { cargo deb --version 2>/dev/null | grep -qx "cargo-deb $VERSION"; }

installed && exit 0
exec 9>"${TMPDIR:-/tmp}/burrow-cargo-deb.lock"
flock 9
installed && exit 0
echo "== installing cargo-deb $VERSION" >&2
cargo install cargo-deb --version "=$VERSION" --locked --debug --quiet
installed || { echo "cargo-deb.sh: cargo deb --version does not say $VERSION after the install" >&2; exit 1; }
