#!/usr/bin/env bash
# burrow against rsync and restic on one generated tree, pulled from a private sshd on
# 127.0.0.1. See bench/README.md.
#
#   bench/run.sh [small|large]        (default small; run as root on Debian)
#
# Environment: DELAY_MS (default 25) for the proxy phase; KEEP=1 keeps bench/out/run-PROFILE
# (repositories, copies, logs) after the run (always kept when a phase fails); BURROW_BIN=PATH
# measures that binary instead of building the working tree.
set -euo pipefail

PROFILE=${1:-small}
case $PROFILE in
small | large) ;;
*)
    echo "usage: $0 [small|large]" >&2
    exit 2
    ;;
esac
DELAY_MS=${DELAY_MS:-25}

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
OUT=$HERE/out
RUN=$OUT/run-$PROFILE
TREE=$OUT/tree-$PROFILE
LOG=$RUN/log
RESULTS=$RUN/results.tsv
FACTS=$RUN/facts.txt

say() { printf '\n== %s\n' "$*" >&2; }
die() {
    echo "bench: $*" >&2
    exit 1
}

# --- tools -------------------------------------------------------------------------------
missing=()
command -v rsync >/dev/null || missing+=(rsync)
command -v restic >/dev/null || missing+=(restic)
[ -x /usr/sbin/sshd ] || missing+=(openssh-server)
{ command -v ssh >/dev/null && command -v ssh-keygen >/dev/null; } || missing+=(openssh-client)
command -v python3 >/dev/null || missing+=(python3)
[ -x /usr/bin/time ] || missing+=(time)
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    [ "$(id -u)" = 0 ] || die "need root to install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
PY=$(command -v python3)

# --- build -------------------------------------------------------------------------------
if [ -n "${BURROW_BIN:-}" ]; then
    BURROW=$BURROW_BIN
else
    say "cargo build --release"
    (cd "$ROOT" && cargo build --release)
    BURROW=${CARGO_TARGET_DIR:-$ROOT/target}/release/burrow
fi
[ -x "$BURROW" ] || die "no binary at $BURROW"

# --- tree --------------------------------------------------------------------------------
mkdir -p "$OUT"
say "tree ($PROFILE)"
"$PY" "$HERE/gen_tree.py" --profile "$PROFILE" --out "$TREE"
rm -rf "$RUN"
mkdir -p "$LOG"
SRC=$RUN/src
cp -a "$TREE" "$SRC" # the phases change it; the cached tree stays pristine
NFILES=$(find "$SRC" -type f | wc -l)
NDIRS=$(find "$SRC" -type d | wc -l)
NBYTES=$(du -sb --apparent-size "$SRC" | cut -f1)

# --- private sshd on 127.0.0.1 -----------------------------------------------------------
PIDS=()
cleanup() {
    local rc=$?
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [ "$rc" = 0 ] && [ "${KEEP:-0}" != 1 ]; then
        # keep logs and results, drop the bulky copies
        rm -rf "$RUN/src" "$RUN/rsync-dst" "$RUN/rsync-dst-proxy" "$RUN/restore-burrow" \
            "$RUN/restore-restic" "$RUN/burrow-repo" "$RUN/burrow-repo-proxy" \
            "$RUN/restic-repo" "$RUN/restic-cache"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
    local port=$1 pid=$2 i
    for i in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || return 1
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    return 1
}

say "sshd"
SSHD_DIR=$RUN/sshd
mkdir -p "$SSHD_DIR" /run/sshd
ssh-keygen -q -t ed25519 -N '' -C bench-host -f "$SSHD_DIR/host_ed25519"
ssh-keygen -q -t ed25519 -N '' -C bench-client -f "$SSHD_DIR/id_ed25519"
cp "$SSHD_DIR/id_ed25519.pub" "$SSHD_DIR/authorized_keys"
KEY=$SSHD_DIR/id_ed25519
HOSTKEY=$(cat "$SSHD_DIR/host_ed25519.pub")
USER_NAME=$(id -un)
SSHD_PORT=$(free_port)
cat >"$SSHD_DIR/sshd_config" <<EOF
Port $SSHD_PORT
ListenAddress 127.0.0.1
HostKey $SSHD_DIR/host_ed25519
PidFile $SSHD_DIR/sshd.pid
AuthorizedKeysFile $SSHD_DIR/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
StrictModes no
UsePAM no
MaxSessions 100
MaxStartups 100
LogLevel ERROR
Subsystem sftp /usr/lib/openssh/sftp-server
EOF
/usr/sbin/sshd -D -e -f "$SSHD_DIR/sshd_config" 2>>"$SSHD_DIR/sshd.log" &
SSHD_PID=$!
PIDS+=("$SSHD_PID")
wait_port "$SSHD_PORT" "$SSHD_PID" || die "sshd did not start: $(cat "$SSHD_DIR/sshd.log")"

PROXY_PORT=$(free_port)
"$PY" "$HERE/delay_proxy.py" --listen "$PROXY_PORT" --target "$SSHD_PORT" --delay-ms "$DELAY_MS" \
    2>>"$LOG/delay_proxy.log" &
PROXY_PID=$!
PIDS+=("$PROXY_PID")
wait_port "$PROXY_PORT" "$PROXY_PID" || die "delay proxy did not start: $(cat "$LOG/delay_proxy.log")"

# --- burrow config -------------------------------------------------------------------------
echo bench-password >"$RUN/pw"
burrow_config() { # FILE PORT REPO
    cat >"$1" <<EOF
repository: {path: $3, password_file: $RUN/pw}
state_dir: $RUN/burrow-state-$(basename "$1" .yaml)
servers:
  bench:
    host: 127.0.0.1
    port: $2
    user: $USER_NAME
    identity_file: $KEY
    host_key: "$HOSTKEY"
    connect_timeout: 10s
jobs:
  bench:
    server: bench
    paths: [$SRC]
EOF
}
CFG=$RUN/burrow.yaml
CFG_PROXY=$RUN/burrow-proxy.yaml
burrow_config "$CFG" "$SSHD_PORT" "$RUN/burrow-repo"
burrow_config "$CFG_PROXY" "$PROXY_PORT" "$RUN/burrow-repo-proxy"
export BURROW_SOCKET=$RUN/burrow.sock # no daemon here: runs happen in the foreground
unset NOTIFY_SOCKET || true
burrow() { "$BURROW" --config "$@"; }

export RESTIC_PASSWORD=bench-password
export RESTIC_REPOSITORY=$RUN/restic-repo
RESTIC_CACHE=$RUN/restic-cache

SSH_CMD() { echo "ssh -p $1 -i $KEY -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"; }

# --- measuring -----------------------------------------------------------------------------
DROP=yes
if ! { sync && echo 3 >/proc/sys/vm/drop_caches; } 2>/dev/null; then
    DROP="no (cannot write /proc/sys/vm/drop_caches: timings are with a warm page cache)"
fi
drop_caches() {
    sync
    if [ "$DROP" = yes ]; then echo 3 >/proc/sys/vm/drop_caches; fi
}

: >"$RESULTS"
FAILED=()
# measure PHASE TOOL CMD... : runs CMD with a cold page cache under /usr/bin/time; leaves
# its stdout in $LOG/PHASE.TOOL.out and sets WALL RSS CPU.
measure() {
    local phase=$1 tool=$2
    shift 2
    local base=$LOG/$phase.$tool rc=0
    drop_caches
    LOAD1=$(cut -d' ' -f1 /proc/loadavg)
    echo "$phase / $tool: $*" >"$base.cmd"
    /usr/bin/time -f '%e %M %U %S' -o "$base.time" "$@" >"$base.out" 2>"$base.err" &
    local tpid=$! spid=
    if [ "$tool" = burrow ]; then
        # peak RSS with and without the repository key's scrypt buffer (see rss_sampler.py)
        "$PY" "$HERE/rss_sampler.py" "$tpid" "$base.rss" &
        spid=$!
    fi
    wait "$tpid" || rc=$?
    if [ -n "$spid" ]; then wait "$spid" || true; fi
    if [ "$rc" != 0 ]; then
        echo "bench: $phase / $tool failed with exit $rc:" >&2
        tail -n 20 "$base.err" >&2
        KEEP=1
        exit 1
    fi
    read -r WALL RSS USR SYS < <(tail -n 1 "$base.time")
    CPU=$(awk "BEGIN { print $USR + $SYS }")
}
record() { # PHASE TOOL BYTES NOTE
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$WALL" "$RSS" "$CPU" "$3" "$LOAD1" "$4" >>"$RESULTS"
    printf '  %-9s %-7s %8.2f s  %6d MiB  %s\n' "$1" "$2" "$WALL" "$((RSS / 1024))" "$4" >&2
}

run_burrow() { # PHASE CONFIG
    measure "$1" burrow "$BURROW" --config "$2" run bench --json
    local added read status
    read -r added read status < <("$PY" "$HERE/report.py" burrow-json "$LOG/$1.burrow.out")
    [ "$status" = ok ] || {
        FAILED+=("$1/burrow: status $status")
    }
    BYTES_READ=$read
    record "$1" burrow "$added" "bytes_read=$read status=$status rss_without_kdf_kib=$(cut -d' ' -f2 "$LOG/$1.burrow.rss")"
}
run_rsync() { # PHASE PORT DEST
    measure "$1" rsync rsync -a --stats -e "$(SSH_CMD "$2")" "$USER_NAME@127.0.0.1:$SRC/" "$3/"
    record "$1" rsync "$("$PY" "$HERE/report.py" rsync-stats "$LOG/$1.rsync.out")" "bytes received over ssh"
}
run_restic() { # PHASE
    measure "$1" restic restic --cache-dir "$RESTIC_CACHE" backup --json "$SRC"
    record "$1" restic "$("$PY" "$HERE/report.py" restic-json "$LOG/$1.restic.out")" "data_added"
}

# --- facts -----------------------------------------------------------------------------------
{
    echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')), $(free -g | awk '/Mem:/{print $2}') GiB RAM, Linux $(uname -r), Debian $(cat /etc/debian_version 2>/dev/null || echo '?')"
    echo "tree: profile $PROFILE, $NFILES files, $NDIRS directories, $NBYTES bytes ($(du -sh --apparent-size "$SRC" | cut -f1)); change set: every 100th file appended to and touched (1%)"
    echo "network: loopback; sshd $(ssh -V 2>&1 | cut -d, -f1), SFTP via sftp-server; delay proxy +$DELAY_MS ms each way (python asyncio)"
    echo "burrow: ${BURROW_BIN:+$BURROW_BIN, }working tree at $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?') (release build; repository without a local cache)"
    echo "rsync: $(rsync --version | head -n1 | sed 's/  */ /g'), \`rsync -a\` pull over ssh (delta transfer on, no compression)"
    echo "restic: $(restic version | cut -d' ' -f1-2), local \`restic backup\` (no pull mode), default cache in a fresh --cache-dir, repository version REPOVER"
    echo "page cache dropped before each phase: $DROP"
    echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
} >"$FACTS"

# --- phases ----------------------------------------------------------------------------------
say "full"
burrow "$CFG" init >"$LOG/init.burrow.out" 2>&1 || die "burrow init failed: $(cat "$LOG/init.burrow.out")"
restic --cache-dir "$RESTIC_CACHE" init >"$LOG/init.restic.out" 2>&1 || die "restic init failed: $(cat "$LOG/init.restic.out")"
REPOVER=$(restic --cache-dir "$RESTIC_CACHE" cat config 2>/dev/null | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["version"])' || echo '?')
sed -i "s/REPOVER/$REPOVER/" "$FACTS"
run_burrow full "$CFG"
run_rsync full "$SSHD_PORT" "$RUN/rsync-dst"
run_restic full

say "no change"
run_burrow nochange "$CFG"
[ "$BYTES_READ" = 0 ] || FAILED+=("no-change run read $BYTES_READ file bytes (expected 0)")
run_rsync nochange "$SSHD_PORT" "$RUN/rsync-dst"
run_restic nochange

say "1% change"
"$PY" "$HERE/change.py" "$SRC" | tee "$LOG/change.txt" >&2
run_burrow change "$CFG"
run_rsync change "$SSHD_PORT" "$RUN/rsync-dst"
run_restic change

say "restore"
measure restore burrow "$BURROW" --config "$CFG" restore bench latest --target "$RUN/restore-burrow"
record restore burrow -1 "burrow restore latest"
measure restore restic restic --cache-dir "$RESTIC_CACHE" restore latest --target "$RUN/restore-restic"
record restore restic -1 "restic restore latest"
# Not timed: both restores must equal the source.
diff -r --no-dereference "$SRC" "$RUN/restore-burrow$SRC" >"$LOG/restore-burrow.diff" 2>&1 ||
    FAILED+=("burrow's restore differs from the source (see $LOG/restore-burrow.diff)")
diff -r --no-dereference "$SRC" "$RUN/restore-restic$SRC" >"$LOG/restore-restic.diff" 2>&1 ||
    FAILED+=("restic's restore differs from the source (see $LOG/restore-restic.diff)")

say "full through the delay proxy (+$DELAY_MS ms each way)"
burrow "$CFG_PROXY" init >"$LOG/init-proxy.burrow.out" 2>&1 || die "burrow init failed"
run_burrow proxy "$CFG_PROXY"
run_rsync proxy "$PROXY_PORT" "$RUN/rsync-dst-proxy"

echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$FACTS"
for f in "${FAILED[@]}"; do echo "problem: $f" >>"$FACTS"; done

say "results ($PROFILE)"
"$PY" "$HERE/report.py" table "$RESULTS" "$FACTS" "$RUN/results.md"
cp "$RUN/results.md" "$OUT/results-$PROFILE.md"
cp "$RUN/results.md" "$OUT/results.md"
echo "written: $OUT/results.md" >&2
if [ ${#FAILED[@]} -gt 0 ]; then
    printf 'bench: problem: %s\n' "${FAILED[@]}" >&2
    exit 1
fi
