"""asyncio_job.py - exercises: an unmodified python3 asyncio program (its epoll event loop,
self-pipe, child watcher) with a producer and a consumer task joined by an asyncio.Queue,
asyncio.sleep, and a subprocess (asyncio.create_subprocess_exec of python3) talked to over
pipes: the consumer sends each item to the child, which keeps a running total in its own
memory and answers with it.

Usage:  python3 asyncio_job.py <ticks>
Output: "pid <pid>"
        "tick <i> pid=<pid> item=<v> reply=<n>:<total>"
        "done ticks=<n> total=<total> child_exit=<status>"
"""

import asyncio
import os
import sys

TICK = 0.05

# The child: reads "<i> <v>" lines, answers "<count>:<running total of v>".
CHILD = """
import sys
total = 0
count = 0
for line in sys.stdin:
    i, v = line.split()
    total += int(v) * (int(i) % 3 + 1)
    count += 1
    sys.stdout.write(f"{count}:{total}\\n")
    sys.stdout.flush()
"""


def item(i):
    return (i * i * 7 + 3) % 101


async def producer(queue, ticks):
    for i in range(1, ticks + 1):
        await queue.put((i, item(i)))
        await asyncio.sleep(TICK)
    await queue.put(None)


async def consumer(queue, child):
    total = None
    while True:
        got = await queue.get()
        if got is None:
            return total
        i, v = got
        child.stdin.write(f"{i} {v}\n".encode())
        await child.stdin.drain()
        reply = (await child.stdout.readline()).decode().strip()
        total = reply.split(":")[1]
        # (not the queue's length: it depends on how fast the child answers)
        print(f"tick {i} pid={os.getpid()} item={v} reply={reply}", flush=True)


async def main(ticks):
    print(f"pid {os.getpid()}", flush=True)
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    queue = asyncio.Queue(maxsize=4)
    _, total = await asyncio.gather(producer(queue, ticks), consumer(queue, child))
    child.stdin.close()
    status = await child.wait()
    print(f"done ticks={ticks} total={total} child_exit={status}", flush=True)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
