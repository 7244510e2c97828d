#!/usr/bin/env bash
# Starts the services the burrow-disk integration tests talk to: the system D-Bus, udevd (so
# loop devices get udev properties and hot-plug events) and udisksd. Each one is started only
# if it is not already running, so the script can be called any number of times.
set -euo pipefail

log() { echo "disk-services: $*"; }

# Debian ships systemd-udevd outside PATH.
UDEVD=""
for c in /lib/systemd/systemd-udevd /usr/lib/systemd/systemd-udevd "$(command -v systemd-udevd || true)"; do
    if [[ -n "$c" && -x "$c" ]]; then UDEVD="$c"; break; fi
done
UDISKSD=/usr/libexec/udisks2/udisksd

missing=()
command -v dbus-daemon >/dev/null || missing+=(dbus-daemon)
command -v udevadm >/dev/null || missing+=(udev)
[[ -n "$UDEVD" ]] || missing+=(udev)
[[ -x "$UDISKSD" ]] || missing+=(udisks2)
command -v mkfs.ext4 >/dev/null || missing+=(e2fsprogs)
command -v cryptsetup >/dev/null || missing+=(cryptsetup-bin)
command -v dbus-send >/dev/null || missing+=(dbus-bin)
if ((${#missing[@]})); then
    log "installing missing packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y dbus udev udisks2 e2fsprogs cryptsetup-bin >/dev/null 2>&1 || {
        apt-get update >/dev/null
        apt-get install -y dbus udev udisks2 e2fsprogs cryptsetup-bin >/dev/null
    }
    for c in /lib/systemd/systemd-udevd /usr/lib/systemd/systemd-udevd; do
        if [[ -x "$c" ]]; then UDEVD="$c"; break; fi
    done
fi

running() { pgrep -x "$1" >/dev/null 2>&1; }

bus_has() {
    dbus-send --system --print-reply --dest=org.freedesktop.DBus /org/freedesktop/DBus \
        org.freedesktop.DBus.NameHasOwner "string:$1" 2>/dev/null | grep -q 'boolean true'
}

# 1. System bus.
if dbus-send --system --print-reply --dest=org.freedesktop.DBus /org/freedesktop/DBus \
    org.freedesktop.DBus.GetId >/dev/null 2>&1; then
    log "system bus already running"
else
    mkdir -p /run/dbus
    pidfile=/run/dbus/pid
    if [[ -f "$pidfile" ]] && ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
        rm -f "$pidfile"
    fi
    # A leftover socket from a dead daemon makes the new one fail to bind.
    if ! running dbus-daemon; then
        rm -f /run/dbus/system_bus_socket "$pidfile"
    fi
    dbus-daemon --system --fork
    log "started dbus-daemon --system"
fi

# 2. udevd, then replay "add" for block devices so existing ones get their ID_* properties.
if running systemd-udevd; then
    log "systemd-udevd already running"
else
    "$UDEVD" --daemon
    log "started systemd-udevd"
fi
udevadm trigger --action=add --subsystem-match=block
udevadm settle --timeout=30 || log "udevadm settle timed out (continuing)"

# 3. udisksd, started by hand because PID 1 is not systemd here.
if bus_has org.freedesktop.UDisks2; then
    log "udisksd already on the bus"
else
    if ! running udisksd; then
        nohup "$UDISKSD" >/var/log/udisksd.log 2>&1 </dev/null &
        disown || true
        log "started udisksd (pid $!, log /var/log/udisksd.log)"
    fi
    for _ in $(seq 1 100); do
        bus_has org.freedesktop.UDisks2 && break
        sleep 0.1
    done
    if ! bus_has org.freedesktop.UDisks2; then
        log "udisksd did not appear on the system bus within 10 s; see /var/log/udisksd.log"
        exit 1
    fi
    log "org.freedesktop.UDisks2 is on the system bus"
fi
