#!/usr/bin/env python3
"""Helpers for run.sh: pulls numbers out of tool output, and turns results into tables.

    report.py burrow-json FILE        -> "bytes_added bytes_read" from `burrow run --json`
    report.py restic-json FILE        -> "data_added" from `restic backup --json`
    report.py rsync-stats FILE        -> "bytes received" from `rsync --stats`
    report.py table RESULTS.tsv FACTS OUT.md

RESULTS.tsv columns: phase tool wall_s rss_kib cpu_s bytes load1 note
"""

import json
import re
import sys

PHASES = [
    ("full", "full (fresh repo / empty dir)"),
    ("nochange", "no change"),
    ("change", "after 1% change"),
    ("restore", "restore"),
    ("proxy", "full, +25 ms each way"),
]
TOOLS = ["burrow", "rsync", "restic"]


def burrow_json(path):
    s = json.load(open(path))
    print(s.get("bytes_added", 0), s.get("bytes_read", 0), s.get("status", "?"))


def restic_json(path):
    added = None
    for line in open(path, errors="replace"):
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            m = json.loads(line)
        except ValueError:
            continue
        if m.get("message_type") == "summary":
            added = m.get("data_added")
    print(added if added is not None else -1)


def rsync_stats(path):
    text = open(path, errors="replace").read()
    m = re.search(r"Total bytes received: ([\d,.]+)", text)
    print(m.group(1).replace(",", "").replace(".", "") if m else -1)


def mib(kib):
    return "%.0f" % (kib / 1024)


def human(n):
    n = float(n)
    for unit in ["B", "KiB", "MiB", "GiB"]:
        if abs(n) < 1024 or unit == "GiB":
            return ("%d %s" % (n, unit)) if unit == "B" else ("%.1f %s" % (n, unit))
        n /= 1024


def table(results, facts_path, out):
    rows = []
    for line in open(results):
        if not line.strip() or line.startswith("#"):
            continue
        phase, tool, wall, rss, cpu, nbytes, load1, note = (line.rstrip("\n").split("\t") + [""] * 8)[:8]
        rows.append(
            dict(phase=phase, tool=tool, wall=float(wall), rss=int(rss), cpu=float(cpu),
                 bytes=int(nbytes), load1=load1, note=note)
        )
    by = {(r["phase"], r["tool"]): r for r in rows}
    facts = [l.rstrip("\n") for l in open(facts_path)]

    def cell(phase, tool, key):
        r = by.get((phase, tool))
        if r is None:
            return "–"
        if key == "wall":
            return "%.2f" % r["wall"]
        if key == "rss":
            return mib(r["rss"])
        if key == "bytes":
            return "–" if r["bytes"] < 0 else human(r["bytes"])
        return str(r[key])

    def ratio(phase):
        b = by.get((phase, "burrow"))
        if b is None:
            return "–", None
        if phase == "proxy":
            others = [("rsync", by.get((phase, "rsync")))]
        else:
            others = [(t, by.get((phase, t))) for t in ("rsync", "restic")]
        others = [(t, r) for t, r in others if r is not None]
        if not others:
            return "–", None
        t, best = min(others, key=lambda x: x[1]["wall"])
        q = b["wall"] / best["wall"] if best["wall"] > 0 else float("inf")
        return "%.2f× (vs %s)" % (q, t), q

    md = []
    md.append("| phase | burrow s | rsync s | restic s | burrow / fastest other | "
              "peak RSS MiB burrow / rsync / restic | burrow added | rsync received | restic added |")
    md.append("|---|---:|---:|---:|---|---|---:|---:|---:|")
    for key, label in PHASES:
        if not any((key, t) in by for t in TOOLS):
            continue
        md.append(
            "| %s | %s | %s | %s | %s | %s / %s / %s | %s | %s | %s |"
            % (
                label,
                cell(key, "burrow", "wall"), cell(key, "rsync", "wall"), cell(key, "restic", "wall"),
                ratio(key)[0],
                cell(key, "burrow", "rss"), cell(key, "rsync", "rss"), cell(key, "restic", "rss"),
                cell(key, "burrow", "bytes"), cell(key, "rsync", "bytes"), cell(key, "restic", "bytes"),
            )
        )

    detail = ["| phase | tool | wall s | CPU s (user+sys) | peak RSS MiB | bytes | load avg before | note |",
              "|---|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        detail.append("| %s | %s | %.2f | %.2f | %s | %s | %s | %s |" % (
            r["phase"], r["tool"], r["wall"], r["cpu"], mib(r["rss"]),
            "–" if r["bytes"] < 0 else human(r["bytes"]), r["load1"], r["note"]))

    checks = []
    q, v = ratio("full")
    if v is not None:
        checks.append("- full pull ≤ 1.0× the faster of rsync and restic: %s → %s"
                      % (q, "met" if v <= 1.0 else "MISSED"))
    b, rs = by.get(("nochange", "burrow")), by.get(("nochange", "rsync"))
    if b and rs:
        read0 = "bytes_read=0" in b["note"]
        checks.append("- no-change run ≤ rsync's no-change time, 0 file bytes read: %.2f s vs %.2f s, %s → %s"
                      % (b["wall"], rs["wall"], "0 bytes read" if read0 else "BYTES WERE READ",
                         "met" if b["wall"] <= rs["wall"] and read0 else "MISSED"))
    runs = [r for r in rows if r["tool"] == "burrow" and r["phase"] != "restore"]
    rss = max((r["rss"] for r in runs), default=None)
    no_kdf = [int(m.group(1)) for r in runs for m in [re.search(r"rss_without_kdf_kib=(\d+)", r["note"])] if m]
    if rss is not None:
        line = ("- peak RSS ≤ 100 MB (for 100,000 files): burrow's largest backup run %.1f MB (%s MiB) "
                "on this tree → %s" % (rss * 1024 / 1e6, mib(rss), "met" if rss * 1024 <= 100e6 else "MISSED"))
        if no_kdf and max(no_kdf) > 0:
            line += ("; without the scrypt buffers of the repository key's derivation "
                     "%.1f MB (%s MiB)" % (max(no_kdf) * 1024 / 1e6, mib(max(no_kdf))))
        checks.append(line)
    b, rs = by.get(("proxy", "burrow")), by.get(("proxy", "rsync"))
    if b and rs:
        checks.append("- with +25 ms each way, full pull ≤ rsync through the same proxy: %.2f s vs %.2f s (%.2f×) → %s"
                      % (b["wall"], rs["wall"], b["wall"] / rs["wall"], "met" if b["wall"] <= rs["wall"] else "MISSED"))

    text = "\n".join(
        ["# Benchmark results", ""] + ["- " + f for f in facts] + ["", "## Summary", ""] + md
        + ["", "## Targets", ""] + checks + ["", "## Every measurement", ""] + detail + [""]
    )
    with open(out, "w") as f:
        f.write(text)
    print("\n".join(md + [""] + checks))


def main():
    cmd = sys.argv[1]
    if cmd == "burrow-json":
        burrow_json(sys.argv[2])
    elif cmd == "restic-json":
        restic_json(sys.argv[2])
    elif cmd == "rsync-stats":
        rsync_stats(sys.argv[2])
    elif cmd == "table":
        table(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        sys.exit("unknown command " + cmd)


if __name__ == "__main__":
    main()
