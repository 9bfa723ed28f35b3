"""pool.py - exercises: a python3 multiprocessing Pool (fork start method): a multi-threaded
parent (the pool's task/result/worker-handler threads) with two forked worker processes,
connected by pipes and guarded by process-shared semaphores. Every tick the parent maps a
deterministic job (~5 ms each) over 8 inputs, checks the results against its own computation
and prints the total; only the parent prints. A wrong result: "FAIL ..." and exit 1.

Usage:  python3 pool.py <ticks>
Output: "pid <pid>"
        "tick <i> total=<sum of f(i, x) for x in 0..7>"   i = 1..ticks
        "done"
"""

import functools
import multiprocessing
import os
import sys
import time


def g(i, x):
    return sum((i * 1000 + x * 31 + k) ** 2 % 1000003 for k in range(200))


def f(i, x):
    time.sleep(0.005)
    return g(i, x)


def main():
    ticks = int(sys.argv[1])
    print(f"pid {os.getpid()}", flush=True)
    pool = multiprocessing.get_context("fork").Pool(2)
    for i in range(1, ticks + 1):
        result = pool.map(functools.partial(f, i), range(8))
        expected = [g(i, x) for x in range(8)]
        if result != expected:
            print(f"FAIL tick {i}: pool returned {result}, expected {expected}", flush=True)
            sys.exit(1)
        print(f"tick {i} total={sum(result)}", flush=True)
        time.sleep(0.03)
    pool.close()
    pool.join()
    print("done", flush=True)


if __name__ == "__main__":
    main()
