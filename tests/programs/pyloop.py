"""pyloop.py - exercises: an unmodified python3 interpreter (many shared libraries, a large
heap, its own signal handlers). Keeps state in a dict and lists, does float math every tick
and prints a deterministic digest of the whole state.

Usage:  python3 pyloop.py <ticks>
Output: "pid <pid>"
        "tick <i> pid=<pid> state=<crc32 of the state>"
        "final <crc32>"
"""

import math
import os
import sys
import time
import zlib


def digest(state):
    return zlib.crc32(repr(sorted(state.items())).encode()) & 0xFFFFFFFF


def main():
    ticks = int(sys.argv[1])
    print(f"pid {os.getpid()}", flush=True)
    big = [i * i % 1000003 for i in range(300_000)]
    state = {"acc": 0.0, "recent": [], "counts": {}, "big_sum": 0}
    x = 1.0
    for i in range(ticks):
        x = math.sin(x * 1.7 + i) * 1000.0 + math.sqrt(i + 1.0)
        state["acc"] += x / 3.0
        state["recent"].append(round(x, 9))
        del state["recent"][:-40]
        key = f"k{i % 17}"
        state["counts"][key] = state["counts"].get(key, 0) + i
        j = (i * 7919) % len(big)
        big[j] = (big[j] * 31 + i) % 1000003
        state["big_sum"] = sum(big[::97])
        print(f"tick {i} pid={os.getpid()} state={digest(state):08x}", flush=True)
        time.sleep(0.03)
    print(f"final {zlib.crc32(repr(big).encode()) & 0xFFFFFFFF:08x}", flush=True)


if __name__ == "__main__":
    main()
