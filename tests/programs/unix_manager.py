"""unix_manager.py - a python job served by a multiprocessing manager over a unix socket
bound to a path (the server is a child process with an accepting thread and one thread
per connection). Every tick the main process updates the shared store through its proxy;
every 10 ticks it makes a new proxy, which opens new connections to the listener.

Usage:  python3 unix_manager.py <ticks>
Output: "pid <pid>"
        "tick <i> pid=<pid> size=<n> digest=<crc32 of the store>"
        "done"
"""

import multiprocessing.managers as managers
import os
import sys
import time
import zlib


class Store:
    def __init__(self):
        self.items = {}

    def put(self, key, value):
        self.items[key] = value
        return len(self.items)

    def digest(self):
        return zlib.crc32(repr(sorted(self.items.items())).encode()) & 0xFFFFFFFF


class Manager(managers.BaseManager):
    pass


Manager.register("Store", Store)


def main():
    ticks = int(sys.argv[1])
    print(f"pid {os.getpid()}", flush=True)
    path = f"/tmp/mlckpt-pymanager-{os.getpid()}.sock"
    manager = Manager(address=path, authkey=b"mlckpt-test")
    manager.start()
    store = manager.Store()
    for i in range(ticks):
        if i % 10 == 9:
            other = manager.Store()
            other.put("tick", i)
            del other
        size = store.put(f"k{i % 13}", i * i)
        print(f"tick {i} pid={os.getpid()} size={size} digest={store.digest():08x}", flush=True)
        time.sleep(0.03)
    manager.shutdown()
    print("done", flush=True)


if __name__ == "__main__":
    main()
