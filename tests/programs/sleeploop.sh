#!/usr/bin/env bash
# sleeploop.sh - exercises: a bash parent that spends nearly all its time in wait4() on an
# external /bin/sleep child (a fresh short-lived child every tick), so a checkpoint almost
# always catches a two-process tree: bash + sleep mid-nanosleep.
#
# Usage:  sleeploop.sh <n>
# Output: "pid <bash pid>"
#         "tick <i>"   i = 1..n
#         "done"
set -u
if [ $# -ne 1 ]; then
    echo "usage: sleeploop.sh <n>" >&2
    exit 2
fi
echo "pid $$"
for ((i = 1; i <= $1; i++)); do
    /bin/sleep 0.05
    echo "tick $i"
done
echo done
