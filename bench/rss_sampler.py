#!/usr/bin/env python3
"""Samples the memory of the process /usr/bin/time runs, leaving out the key derivation.

    rss_sampler.py TIME_PID OUT

Every 20 ms until TIME_PID exits: the resident memory of its child (the measured program),
total and without the scratch buffers of scrypt. Opening a restic-format repository derives
the key with scrypt, and each lane being derived holds one anonymous mapping of 128 × r × N
bytes (32 MiB for a key made by `burrow init`, N=2^15 and r=8, two lanes at a time; 128 MiB
for the N=2^17 keys of rustic and older burrow versions) for under half a second. Mappings of
those sizes, or of two 32 MiB lanes merged by the kernel into one mapping, are left out (to
the pages that hold the allocator's headers). A glibc heap arena is also 64 MiB of address
space, but exactly that (no header page), so none is taken for one.
Writes "PEAK_KIB PEAK_WITHOUT_KDF_KIB SAMPLES" to OUT.
"""

import os
import sys
import time

# 128 × r × N for r = 8 and N = 2^15 (burrow's keys) or 2^17 (rustic's); burrow derives two
# lanes at once, and the kernel merges the two adjacent mappings into one
SCRYPT_SCRATCH = (32 << 20, 64 << 20, 128 << 20)
SLACK = 64 << 10


def is_scrypt_scratch(size):
    return any(0 < size - s <= SLACK for s in SCRYPT_SCRATCH)


def child_of(pid):
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
            kids = f.read().split()
        return int(kids[0]) if kids else None
    except (OSError, ValueError):
        return None


def sample(pid):
    """(rss KiB, rss KiB outside scrypt's scratch buffers) or None once the process is gone."""
    total = 0
    big = 0
    try:
        with open("/proc/%d/smaps" % pid) as f:
            size = 0
            anon = False
            for line in f:
                if "-" in line.split(" ", 1)[0]:  # a mapping's header line
                    parts = line.split()
                    lo, hi = (int(x, 16) for x in parts[0].split("-"))
                    size = hi - lo
                    anon = len(parts) < 6  # no path: anonymous
                elif line.startswith("Rss:"):
                    kib = int(line.split()[1])
                    total += kib
                    if anon and is_scrypt_scratch(size):
                        big += kib
    except (OSError, ValueError):
        return None
    return total, total - big


def main():
    tpid, out = int(sys.argv[1]), sys.argv[2]
    peak = peak_wo = n = 0
    child = None
    while True:
        try:
            os.kill(tpid, 0)
        except OSError:
            break
        if child is None:
            child = child_of(tpid)
        if child is not None:
            s = sample(child)
            if s is not None:
                n += 1
                peak = max(peak, s[0])
                peak_wo = max(peak_wo, s[1])
        time.sleep(0.02)
    with open(out, "w") as f:
        f.write("%d %d %d\n" % (peak, peak_wo, n))


if __name__ == "__main__":
    main()
