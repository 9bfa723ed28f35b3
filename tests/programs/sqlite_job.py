"""sqlite_job.py - exercises: a database updated in place. Every tick inserts a row, and
rewrites a counter row and a blob that sqlite keeps in pages it updates in place; prints
a digest of the whole database. At the end, sqlite's own integrity check.

Usage:  python3 sqlite_job.py <db path> <ticks>
Output: "pid <pid>"
        "tick <i> pid=<pid> db=<crc32 of every row>"
        "final <crc32> integrity=<ok|...>"
"""

import os
import sqlite3
import sys
import time
import zlib


def digest(db):
    rows = db.execute("SELECT * FROM log ORDER BY id").fetchall()
    rows += db.execute("SELECT * FROM counter").fetchall()
    return zlib.crc32(repr(rows).encode()) & 0xFFFFFFFF


def main():
    path, ticks = sys.argv[1], int(sys.argv[2])
    print(f"pid {os.getpid()}", flush=True)
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE IF NOT EXISTS log (id INTEGER PRIMARY KEY, v TEXT, blob BLOB)")
    db.execute("CREATE TABLE IF NOT EXISTS counter (k TEXT PRIMARY KEY, n INTEGER, pad BLOB)")
    db.execute("INSERT OR IGNORE INTO counter VALUES ('ticks', 0, zeroblob(3000))")
    db.commit()
    for i in range(ticks):
        db.execute("INSERT INTO log (v, blob) VALUES (?, ?)", (f"row {i}", bytes([i % 251]) * 700))
        db.execute("UPDATE counter SET n = n + 1, pad = ? WHERE k = 'ticks'", (bytes([i % 13]) * 3000,))
        # Rows far back are rewritten in place too: their pages are old ones.
        db.execute("UPDATE log SET v = v || '.' WHERE id = ?", (i // 2 + 1,))
        db.commit()
        print(f"tick {i} pid={os.getpid()} db={digest(db)}", flush=True)
        time.sleep(0.05)
    check = db.execute("PRAGMA integrity_check").fetchone()[0]
    print(f"final {digest(db)} integrity={check}", flush=True)


main()
