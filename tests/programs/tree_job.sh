#!/usr/bin/env bash
# tree_job.sh - exercises: a bash parent blocked in wait4() on a short-lived C child (step.c)
# that runs most of the time; the two share stdout. Each step reads the accumulator the
# previous step left in <statefile> and rewrites the file in place, so a checkpoint usually
# lands while a step child is running (bash waiting, child mid-step with the file open).
#
# Usage:  tree_job.sh <statefile> <steps> <step-binary>   (statefile should not exist yet)
# Output: "pid <bash pid>"
#         per step i = 1..steps: the step's 5 lines "tick step <i>.<j> acc=<hex>", then
#         "tick job step=<i> acc=<hex read back from statefile>"
#         "done steps=<steps> acc=<hex>"
# Any step failing prints "FAIL step <i> rc=<rc>" and exits 1.
set -u
if [ $# -ne 3 ]; then
    echo "usage: tree_job.sh <statefile> <steps> <step-binary>" >&2
    exit 2
fi
state=$1
steps=$2
step=$3

echo "pid $$"
acc=none
for ((i = 1; i <= steps; i++)); do
    "$step" "$state" "$i"
    rc=$?
    if [ "$rc" -ne 0 ]; then
        echo "FAIL step $i rc=$rc"
        exit 1
    fi
    if ! read -r acc < "$state" || [ -z "$acc" ]; then
        echo "FAIL step $i: empty state file"
        exit 1
    fi
    echo "tick job step=$i acc=$acc"
done
echo "done steps=$steps acc=$acc"
