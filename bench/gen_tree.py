#!/usr/bin/env python3
"""Generates the benchmark tree, deterministically (same profile, same bytes, names, mtimes).

    gen_tree.py --profile small|large --out DIR

Nested directories of small files of varied sizes (half text-like and compressible, half
random), a few larger files of random (incompressible) data. All content comes from a seeded
PRNG, and every file and directory gets a fixed mtime, so two generations are identical.
A stamp file DIR.done records the generator's parameters; an existing complete tree with a
matching stamp is left as it is.
"""

import argparse
import hashlib
import json
import os
import random
import shutil
import sys

PROFILES = {
    # files: small files; dirs: directories they are spread over; large: (count, MiB each)
    "small": {"files": 20_480, "dirs": 1_024, "large": (4, 16), "seed": 20},
    "large": {"files": 100_000, "dirs": 5_000, "large": (8, 64), "seed": 100},
}

EPOCH = 1_700_000_000  # mtimes are EPOCH + n seconds
WORDS = (
    "backup restore archive snapshot server volume config daemon schedule retention "
    "index pack blob tree chunk key disk mount lock check prune forget keep daily weekly "
    "monthly hourly postgres mysql sqlite dump hook before after timeout journal notify "
    "health watchdog service docker compose nginx caddy synapse matrix nextcloud gitea"
).split()
EXTS = [".txt", ".json", ".log", ".conf", ".md", ".bin", ".dat", ".py", ".rs", ".html"]


def corpus(rng: random.Random, size: int) -> bytes:
    """Text-like bytes: words and numbers in lines, compressible like logs or configs."""
    out = []
    n = 0
    while n < size:
        line = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12)))
        line += " %d\n" % rng.randint(0, 10**9)
        out.append(line)
        n += len(line)
    return "".join(out).encode()[:size]


def small_size(rng: random.Random) -> int:
    """Log-uniform sizes: mostly 16 B - 32 KiB, 1% between 64 KiB and 1 MiB, 1% empty."""
    r = rng.random()
    if r < 0.01:
        return 0
    if r < 0.02:
        return int(2 ** rng.uniform(16, 20))
    return int(2 ** rng.uniform(4, 15))


def generate(profile: str, out: str) -> dict:
    p = PROFILES[profile]
    rng = random.Random(p["seed"])
    text = corpus(rng, 4 << 20)

    # Directory tree: each new directory goes under a random existing one of depth < 7.
    dirs = [("", 0)]
    for i in range(p["dirs"]):
        parent, depth = rng.choice([d for d in dirs[-64:] if d[1] < 7] or [dirs[0]])
        if rng.random() < 0.3:  # keep the top levels wide
            parent, depth = rng.choice(dirs[:16])
        name = "%s%04d" % (rng.choice(WORDS), i)
        dirs.append((os.path.join(parent, name), depth + 1))
    for d, _ in dirs:
        os.makedirs(os.path.join(out, d), exist_ok=True)

    total = 0
    mtime = EPOCH
    for i in range(p["files"]):
        d, _ = rng.choice(dirs)
        name = "f%06d%s" % (i, rng.choice(EXTS))
        size = small_size(rng)
        if rng.random() < 0.5:
            off = rng.randrange(0, len(text) - size) if size < len(text) else 0
            header = ("%s %d\n" % (name, i)).encode()
            body = (header + text[off : off + size])[:size]
        else:
            body = rng.randbytes(size)
        path = os.path.join(out, d, name)
        with open(path, "wb") as f:
            f.write(body)
        mtime += 1
        os.utime(path, (mtime, mtime))
        total += size

    count, mib = p["large"]
    for i in range(count):
        path = os.path.join(out, "large", "blob%02d.bin" % i)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            for _ in range(mib):
                f.write(rng.randbytes(1 << 20))
        mtime += 1
        os.utime(path, (mtime, mtime))
        total += mib << 20

    # Directory mtimes last (creating files changed them), deepest first.
    all_dirs = [os.path.join(out, d) for d, _ in dirs] + [os.path.join(out, "large")]
    for d in sorted(all_dirs, key=len, reverse=True):
        os.utime(d, (EPOCH, EPOCH))
    return {"files": p["files"] + count, "dirs": len(all_dirs), "bytes": total}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", choices=sorted(PROFILES), default="small")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    out = os.path.abspath(a.out)
    stamp = out + ".done"
    me = hashlib.sha256(open(__file__, "rb").read()).hexdigest()
    want = {"profile": a.profile, "generator": me}
    if os.path.isdir(out) and os.path.exists(stamp):
        with open(stamp) as f:
            have = json.load(f)
        if {k: have.get(k) for k in want} == want:
            print("tree %s: cached (%d files, %d bytes)" % (out, have["files"], have["bytes"]))
            return 0
    if os.path.exists(stamp):
        os.remove(stamp)
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    facts = generate(a.profile, out)
    with open(stamp, "w") as f:
        json.dump({**want, **facts}, f)
    print("tree %s: generated (%d files, %d dirs, %d bytes)" % (out, facts["files"], facts["dirs"], facts["bytes"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
