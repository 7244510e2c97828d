#!/usr/bin/env bash
# Builds the Debian package: release binary, man pages and shell completions rendered by the
# binary itself (`burrow generate`), then cargo-deb with the [package.metadata.deb] section of
# Cargo.toml. Prints the path of the .deb on the last line.
#
#   bash packaging/build-deb.sh            # for this machine's architecture
#   CARGO_DEB_ARGS="--target aarch64-unknown-linux-gnu" bash packaging/build-deb.sh
#                                          # cross build (needs the target's linker)
#   BURROW_GENERATOR=/path/to/burrow ...    # render the man pages and completions with this
#                                          # burrow for this machine instead of building one
#
# Each step prints its wall and CPU time on stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
TIMEFORMAT="   %R s wall, %U s user + %S s system CPU"

bash packaging/cargo-deb.sh

echo "== release build" >&2
# shellcheck disable=SC2086
time cargo build --release --locked ${CARGO_DEB_ARGS:-}

# The binary just built, wherever the target dir is.
target_dir=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
bin="$target_dir/release/burrow"
case "${CARGO_DEB_ARGS:-}" in
*--target*)
    triple=$(sed -n 's/.*--target[ =]\([^ ]*\).*/\1/p' <<<"$CARGO_DEB_ARGS")
    bin="$target_dir/$triple/release/burrow"
    # The man pages and completions are the same on every architecture: render them with a
    # build for this machine.
    if [ -n "${BURROW_GENERATOR:-}" ]; then
        gen=$BURROW_GENERATOR
    else
        echo "== release build for this machine (man pages and completions)" >&2
        time cargo build --release --locked
        gen="$target_dir/release/burrow"
    fi
    ;;
*) gen="${BURROW_GENERATOR:-$bin}" ;;
esac
test -x "$bin" || { echo "build-deb: $bin was not built" >&2; exit 1; }
test -x "$gen" || { echo "build-deb: $gen (renders the man pages) is not an executable" >&2; exit 1; }

echo "== man pages and completions" >&2
rm -rf target/man target/completions
mkdir -p target/man target/completions
"$gen" generate man --dir target/man >/dev/null
gzip -9n target/man/*.1
"$gen" generate completions bash >target/completions/burrow.bash
"$gen" generate completions zsh >target/completions/_burrow
"$gen" generate completions fish >target/completions/burrow.fish

echo "== cargo deb" >&2
# shellcheck disable=SC2086
time deb=$(cargo deb --no-build --locked ${CARGO_DEB_ARGS:-} | tail -n 1)
test -f "$deb"
echo "$deb"
