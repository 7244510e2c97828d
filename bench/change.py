#!/usr/bin/env python3
"""Applies the benchmark's change set: 1% of the files get a line appended and a new mtime.

    change.py TREE

The files are every 100th regular file (from the 37th) in byte order of their paths, so the
set is the same for a given tree. Prints how many files changed.
"""

import os
import sys


def main() -> int:
    root = os.path.abspath(sys.argv[1])
    files = []
    for d, dirs, names in os.walk(root):
        for n in names:
            p = os.path.join(d, n)
            if os.path.isfile(p) and not os.path.islink(p):
                files.append(os.path.relpath(p, root).encode())
    files.sort()
    chosen = files[37::100]
    for i, rel in enumerate(chosen):
        p = os.path.join(root.encode(), rel)
        with open(p, "ab") as f:
            f.write(b"changed by the benchmark, change %d\n" % i)
        os.utime(p, None)  # touch: mtime = now
    print("changed %d of %d files" % (len(chosen), len(files)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
