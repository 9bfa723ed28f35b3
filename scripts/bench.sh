#!/usr/bin/env bash
# Benchmark: freeze, checkpoint and restore times and image sizes for 64 MiB and 1 GiB
# targets (and 1 GiB with 16 threads), process trees, and jobs that write every page again
# and again (the simulation pattern), next to this machine's own limits measured in the
# same run, then the ratios the performance targets are stated in.
#   scripts/bench.sh [DIR]     DIR: where images go (default: a new dir under /var/tmp)
#   ONLY=memory|tree|dirty|chain|objects|mpi|ranks scripts/bench.sh   only that section's rows
# Needs root (ptrace, clone3 with a chosen PID, drop_caches).
set -euo pipefail
source "$(dirname "$0")/setup.sh"
WORK=${1:-$(mktemp -d /var/tmp/mlckpt-bench.XXXXXX)}
mkdir -p "$WORK"
gcc -O2 -pthread -o "$WORK/memory" tests/programs/memory.c
gcc -O2 -o "$WORK/tree_memory" tests/programs/tree_memory.c
want() { [ -z "${ONLY:-}" ] || [ "$ONLY" = "$1" ]; }
if want dirty; then
    gcc -O2 -pthread -o "$WORK/dirty" tests/programs/dirty.c
    gcc -O2 -fopenmp -o "$WORK/stencil" tests/programs/stencil.c   # OpenMP: needs libgomp
fi
if want objects; then
    gcc -O2 -o "$WORK/objects_job" tests/programs/objects_job.c
fi
if want ranks; then
    gcc -O2 -o "$WORK/rank_steps" tests/programs/rank_steps.c
fi
if want mpi; then
    mpicc -O2 -o "$WORK/ring" tests/programs/ring.c   # Open MPI: openmpi-bin, libopenmpi-dev
fi
cat > "$WORK/touch.c" <<'C'
#include <stdlib.h>
#include <string.h>
int main(int c, char **v) { size_t n = strtoull(v[1], 0, 10) << 20; char *p = malloc(n);
  for (size_t i = 0; i < n; i += 4096) p[i] = 1; return p[n / 2] - 1; }
C
gcc -O2 -o "$WORK/touch" "$WORK/touch.c"
# full_every = 2: full and incremental images alternate, so each repetition has one of each.
printf '[storage]\nlocal = "%s/store"\nkeep = 100\n[interval]\nlocal = 0\n[image]\nfull_every = 2\n' \
    "$WORK" > "$WORK/mlckpt.toml"
REPS=${REPS:-3}   # every number is the median of this many measurements

ms() { echo "$(( ($2 - $1) / 1000000 ))"; }
now() { date +%s%N; }
drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }
field() { python3 -c "import json,sys; print(json.loads(sys.argv[1])['$2'])" "$1"; }
median() { python3 -c "import statistics,sys; print(statistics.median(map(float, sys.argv[1:])))" "$@"; }

limits() {   # $1 MiB: dd with fdatasync, dd O_DIRECT, cat (cache dropped), first touch
    local t0 t1 dd_ms direct_ms cat_ms touch_ms
    t0=$(now); dd if=/dev/zero of="$WORK/dd.bin" bs=1M count="$1" conv=fdatasync status=none; t1=$(now)
    dd_ms=$(ms "$t0" "$t1")
    drop_caches
    t0=$(now); cat "$WORK/dd.bin" > /dev/null; t1=$(now); cat_ms=$(ms "$t0" "$t1")
    rm -f "$WORK/dd.bin"; sync
    t0=$(now); dd if=/dev/zero of="$WORK/dd.bin" bs=8M count="$(( ($1 + 7) / 8 ))" oflag=direct conv=fdatasync status=none; t1=$(now)
    direct_ms=$(ms "$t0" "$t1")
    rm -f "$WORK/dd.bin"; sync
    t0=$(now); "$WORK/touch" "$1"; t1=$(now); touch_ms=$(ms "$t0" "$t1")
    echo "$dd_ms $direct_ms $cat_ms $touch_ms"
}

restore_ms() {   # $1 image; prints ms until the restored processes run; kills them all
    local t0 t1 pid all
    t0=$(now)
    "$BIN" restore --detach --config "$WORK/mlckpt.toml" "$1" > /dev/null 2> "$WORK/restore.err"
    t1=$(now)
    pid=$(sed -n 's/.* as PID \([0-9]*\).*/\1/p' "$WORK/restore.err")
    if [ -z "$pid" ]; then
        { echo "restore of $1 failed:"; cat "$WORK/restore.err"; } >&2
        echo fail
        return
    fi
    all="$(ps -o pid= --ppid "$pid") $pid"
    kill -9 $all 2>/dev/null || true
    # Orphaned members are reaped by init, not at once: the next restore needs their PIDs.
    for p in $all; do while [ -e "/proc/$p" ]; do sleep 0.05; done; done
    # Files the killed restore left that the next restore of the same image must create
    # again (it refuses to take a file that is not the checkpointed one).
    if [ -n "${RESTORE_CLEANUP:-}" ]; then rm -f $RESTORE_CLEANUP; fi
    ms "$t0" "$t1"
}

lines() { awk -v w="$1" '$1 == w {n++} END {print n + 0}' "$WORK/out.txt" 2>/dev/null || echo 0; }
wait_lines() {   # $1 word, $2 count: waits for that many lines; exits if the job ($sup) ended
    until [ "$(lines "$1")" -ge "$2" ]; do
        if ! kill -0 "$sup" 2>/dev/null; then
            tail -5 "$WORK/out.txt" "$WORK/run.err" >&2
            exit 1
        fi
        sleep 0.01
    done
}
MUTATIONS=25   # per 30 ms tick: slow enough that 1 % of 1 GiB outlasts the full checkpoint
RATIOS=""
declare -A M   # medians of the last measurement, by name

# measure JOB WORD GAP CMD...: runs CMD under `mlckpt run --job JOB` until it printed two
# lines whose first word is WORD, then REPS times: a full checkpoint (the target's VmRSS in
# kB read just before it), GAP more such lines, the next checkpoint. Then the supervisor's
# peak RSS, --kill, and REPS restores of the last full image: warm, and with COLD=1 also
# cold (page cache dropped) before each. Leaves the medians in M (named as the arrays
# below), the modes seen in M[mode] and M[i_mode], the supervisor's peak RSS in M[hwm] (MiB).
measure() {
    local job=$1 word=$2 gap=$3 sup pid full inc r v
    shift 3
    local f_frz=() f_ms=() f_b=() i_frz=() i_ms=() i_b=() rss=() warm=() cold=() modes=() i_modes=()
    M=()
    rm -rf "$WORK/store" "$WORK/out.txt"
    "$BIN" run --config "$WORK/mlckpt.toml" --job "$job" -- "$@" > "$WORK/out.txt" 2> "$WORK/run.err" &
    sup=$!
    wait_lines "$word" 2
    pid=$(head -1 "$WORK/out.txt" | cut -d' ' -f2)
    for r in $(seq "$REPS"); do
        rss+=("$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")")
        full=$("$BIN" checkpoint "$pid" --json)
        wait_lines "$word" $(($(lines "$word") + gap))
        inc=$("$BIN" checkpoint "$pid" --json)
        f_frz+=("$(field "$full" freeze_ms)"); f_ms+=("$(field "$full" total_ms)")
        f_b+=("$(field "$full" bytes)"); modes+=("$(field "$full" mode)")
        i_frz+=("$(field "$inc" freeze_ms)"); i_ms+=("$(field "$inc" total_ms)")
        i_b+=("$(field "$inc" bytes)"); i_modes+=("$(field "$inc" mode)")
    done
    M[hwm]=$(awk '/VmHWM/ {print int($2/1024)}' "/proc/$sup/status" 2>/dev/null || echo "?")
    "$BIN" checkpoint "$pid" --kill --json > /dev/null
    wait "$sup" || true
    for r in $(seq "$REPS"); do
        if [ "${COLD:-0}" = 1 ]; then
            drop_caches
            cold+=("$(restore_ms "$(field "$full" path)")")
        fi
        warm+=("$(restore_ms "$(field "$full" path)")")
    done
    for v in f_frz f_ms f_b i_frz i_ms i_b rss warm cold; do
        eval "[ \${#$v[@]} -eq 0 ] || M[$v]=\$(median \"\${$v[@]}\")"
    done
    M[mode]=$(printf '%s\n' "${modes[@]}" | awk '!seen[$0]++' | paste -sd,)
    M[i_mode]=$(printf '%s\n' "${i_modes[@]}" | awk '!seen[$0]++' | paste -sd,)
}

# This machine's limits for $1 MiB (see limits), medians of REPS, into M.
machine_limits() {
    local dd=() direct=() cat=() touch=() a b c d r v
    for r in $(seq "$REPS"); do
        read -r a b c d < <(limits "$1")
        dd+=("$a"); direct+=("$b"); cat+=("$c"); touch+=("$d")
    done
    for v in dd direct cat touch; do eval "M[$v]=\$(median \"\${$v[@]}\")"; done
}

# Evaluates a python expression over the medians (M's names as variables) and prints it.
ratios() {
    local k args=()
    for k in "${!M[@]}"; do args+=("$k=${M[$k]}"); done
    python3 -c "
import sys
m = {}
for a in sys.argv[2:]:
    k, v = a.split('=', 1)
    try: m[k] = float(v)
    except ValueError: m[k] = v
print(eval(sys.argv[1], {}, m))" "$1" "${args[@]}"
}

bench() {   # $1 MiB, $2 threads
    local mib=$1 threads=$2 label="$1 MiB"
    if [ "$threads" -gt 1 ]; then label="$label x$threads"; fi
    # memory.c changes MUTATIONS random words per tick: 1 % of the pages takes this many
    # ticks, counted from the state the full image holds (the end of its checkpoint).
    COLD=1 measure "m$mib" tick $(( (mib * 256 / 100 + MUTATIONS - 1) / MUTATIONS )) \
        "$WORK/memory" "$mib" 1000000 "$MUTATIONS" "$threads"
    machine_limits "$mib"
    printf "| %-12s | %6.1f | %7.0f | %10.0f | %6.1f | %6.1f | %9.0f | %6.0f | %6.0f | %4s | %6.0f | %6.0f | %6.0f | %6.0f |\n" \
        "$label" "${M[f_frz]}" "${M[f_ms]}" "${M[f_b]}" "${M[i_frz]}" "${M[i_ms]}" "${M[i_b]}" \
        "${M[warm]}" "${M[cold]}" "${M[hwm]}" "${M[dd]}" "${M[direct]}" "${M[cat]}" "${M[touch]}"
    RATIOS+=$(ratios "'%-12s  freeze %4.1f / %4.1f ms (full / incr.) | ckpt/dd %.2f (ckpt/dd-direct %.2f) | incr/full: time %.3f, bytes %.4f | cold restore/(cat+touch) %.2f | RSS %s MiB' % (
    '$label', f_frz, i_frz, f_ms / dd, f_ms / direct, i_ms / f_ms, i_b / f_b, cold / (cat + touch), '${M[hwm]}')")$'\n'
}

# A job of 4 processes with 256 MiB each (the root and three workers, tree_memory.c), light
# ($MUTATIONS words per process per tick) or rewriting every page every tick ("all").
bench_tree() {   # $1 mutations per tick, or "all"
    local mode=$1 label="tree 4x256 MiB"
    [ "$mode" = all ] && label="tree 4x256 all"
    # 1 % of each process's pages (light), or a few ticks of rewriting everything.
    measure tree tick $((256 * 256 / 100 / MUTATIONS + 1)) "$WORK/tree_memory" 4 256 1000000 "$mode"
    printf "| %-14s | %6.1f | %7.0f | %10.0f | %6.1f | %6.1f | %10.0f | %6.0f |\n" \
        "$label" "${M[f_frz]}" "${M[f_ms]}" "${M[f_b]}" "${M[i_frz]}" "${M[i_ms]}" "${M[i_b]}" "${M[warm]}"
}

# The simulation pattern, every page written again and again: dirty.c (a window of a share
# of the pages rewritten each step, moving on each step) and the OpenMP stencil. The
# increment is taken 3 steps after the full image.
bench_dirty() {   # $1 label, $2 MiB (for the limits), then the command
    local label=$1 mib=$2
    shift 2
    COLD=1 measure dirty step 3 "$@"
    machine_limits "$mib"
    printf "| %-20s | %-8s | %6.0f | %7.0f | %10.0f | %7.0f | %-8s | %6.0f | %6.0f | %10.0f | %6.0f | %6.0f | %4s | %6.0f | %6.0f | %6.0f | %6.0f |\n" \
        "$label" "${M[mode]}" "${M[f_frz]}" "${M[f_ms]}" "${M[f_b]}" "$(( ${M[rss]%.*} / 1024 ))" \
        "${M[i_mode]}" "${M[i_frz]}" "${M[i_ms]}" "${M[i_b]}" "${M[warm]}" "${M[cold]}" "${M[hwm]}" \
        "${M[dd]}" "${M[direct]}" "${M[cat]}" "${M[touch]}"
    RATIOS+=$(ratios "'%-20s  freeze %5.0f / %5.0f ms (full / incr.) | ckpt/dd %.2f | bytes/RSS %.2f | incr/full bytes %.3f | cold restore/(cat+touch) %.2f' % (
    '$label', f_frz, i_frz, f_ms / dd, f_b / (rss * 1024), i_b / f_b, cold / (cat + touch))")$'\n'
}

# A chain: a full image of 1 GiB and four increments (1 % of the pages each), restored from
# its last image, next to a restore of the full image alone (both cold).
bench_chain() {
    local sup pid full last i r gap=$(( (1024 * 256 / 100 + MUTATIONS - 1) / MUTATIONS ))
    local chain=() alone=()
    sed 's/full_every = 2/full_every = 5/' "$WORK/mlckpt.toml" > "$WORK/chain.toml"
    rm -rf "$WORK/store" "$WORK/out.txt"
    "$BIN" run --config "$WORK/chain.toml" --job chain -- \
        "$WORK/memory" 1024 1000000 "$MUTATIONS" 1 > "$WORK/out.txt" 2> "$WORK/run.err" &
    sup=$!
    wait_lines tick 2
    pid=$(head -1 "$WORK/out.txt" | cut -d' ' -f2)
    full=$(field "$("$BIN" checkpoint "$pid" --json)" path)
    for i in 1 2 3 4; do
        wait_lines tick $(($(lines tick) + gap))
        last=$(field "$("$BIN" checkpoint "$pid" --json)" path)
    done
    kill -9 "$pid"
    wait "$sup" || true
    for r in $(seq "$REPS"); do
        drop_caches
        alone+=("$(restore_ms "$full")")
        drop_caches
        chain+=("$(restore_ms "$last")")
    done
    machine_limits 1024
    printf "| %-30s | %9.0f | %10.0f | %6.0f | %6.0f |\n" "1 GiB + 4 increments of 1 %" \
        "$(median "${alone[@]}")" "$(median "${chain[@]}")" "${M[cat]}" "${M[touch]}"
}

# An event-loop job: 1000 eventfds in an epoll, a timerfd, a signalfd and a memfd of $1 MiB
# mapped shared as its state (objects_job.c): what the objects cost next to the memory.
bench_objects() {   # $1 MiB of memfd
    local mib=$1
    COLD=1 measure objects tick 3 "$WORK/objects_job" 1000 "$mib"
    machine_limits "$mib"
    printf "| %-28s | %6.1f | %7.0f | %10.0f | %6.1f | %6.1f | %10.0f | %6.0f | %6.0f | %6.0f | %6.0f |\n" \
        "1000 eventfds, memfd $mib MiB" "${M[f_frz]}" "${M[f_ms]}" "${M[f_b]}" "${M[i_frz]}" \
        "${M[i_ms]}" "${M[i_b]}" "${M[warm]}" "${M[cold]}" "${M[dd]}" "${M[cat]}"
}

# A whole Open MPI job on one node: mpirun and 4 ranks passing a token (ring.c), with their
# TCP connections and listeners, ptys, eventfds, epolls and shared-memory segment.
bench_mpi() {
    RESTORE_CLEANUP='/dev/shm/vader_segment.*' measure mpi tick 5 mpirun --allow-run-as-root --oversubscribe -np 4 "$WORK/ring" 1000000
    printf "| %-28s | %6.1f | %7.0f | %10.0f | %6.1f | %6.1f | %10.0f | %6.0f |\n" \
        "mpirun -np 4 ring" "${M[f_frz]}" "${M[f_ms]}" "${M[f_b]}" "${M[i_frz]}" "${M[i_ms]}" \
        "${M[i_b]}" "${M[warm]}"
}

# A coordinated job in test mode: 2 simulated nodes x 2 ranks on this machine, each rank
# rewriting every page of $1 MiB every 100 ms (rank_steps.c, the ranks stepping together).
# GENS generations (default 5) asked of rank 0's job with `checkpoint --json`; per
# generation: the spread of the ranks' freeze starts (skew), the time from the
# coordinator's decision until every rank committed (commit), the longest freeze of a rank,
# rank 0's own freeze and image bytes.
bench_ranks() {   # $1 MiB per rank
    local mib=$1 gens=${GENS:-5} r g v start pid0 pids=() sups=()
    local skew=() commit=() frz_max=() frz0=() bytes=()
    printf '[storage]\nlocal = "%s/store"\nkeep = 3\n[interval]\nlocal = 0\n[topology]\ntest_mode = true\nnodes = 2\nranks_per_node = 2\n[coordination]\ntimeout = 60\n' \
        "$WORK" > "$WORK/ranks.toml"
    rm -rf "$WORK/store"
    start=$(( $(date +%s%3N) + 1000 ))
    for r in 0 1 2 3; do
        "$BIN" run --config "$WORK/ranks.toml" --job ranks --rank "$r" -- \
            "$WORK/rank_steps" "$r" "$mib" 1000000 100 "$start" > "$WORK/rank$r.out" 2> "$WORK/rank$r.err" &
        sups+=($!)
    done
    for r in 0 1 2 3; do
        until [ "$(awk '$1 == "step" {n++} END {print n + 0}' "$WORK/rank$r.out")" -ge 2 ]; do
            if ! kill -0 "${sups[$r]}" 2>/dev/null; then tail -5 "$WORK/rank$r.err" >&2; exit 1; fi
            sleep 0.01
        done
        pids+=("$(head -1 "$WORK/rank$r.out" | cut -d' ' -f2)")
    done
    pid0=${pids[0]}
    for g in $(seq "$gens"); do
        v=$("$BIN" checkpoint "$pid0" --json)
        read -r g s c f < <(python3 -c "
import json, sys
v = json.loads(sys.argv[1]); g = v.get('generation') or {}
print(*(g.get(k, 'nan') for k in ('generation', 'skew_ms', 'commit_ms', 'freeze_ms_max')))" "$v")
        skew+=("$s"); commit+=("$c"); frz_max+=("$f")
        frz0+=("$(field "$v" freeze_ms)"); bytes+=("$(field "$v" bytes)")
        printf "| %-10s | %7.1f | %9.0f | %10.1f | %9.1f | %11.0f | %6s |\n" \
            "$g" "$s" "$c" "$f" "${frz0[-1]}" "${bytes[-1]}" "-"
        sleep 0.3
    done
    kill -9 "${pids[@]}" 2>/dev/null || true
    # Supervisors whose job is gone exit; one that does not within 10 s is killed.
    running() {   # PIDs of $@ still running (an exited child of ours stays a zombie until waited)
        local p; for p; do [ "$(cut -d' ' -f3 "/proc/$p/stat" 2>/dev/null)" = Z ] || [ ! -e "/proc/$p" ] || echo "$p"; done
    }
    for r in $(seq 100); do
        [ -n "$(running "${sups[@]}")" ] || break
        sleep 0.1
    done
    for r in $(running "${sups[@]}"); do echo "supervisor $r did not exit, killed" >&2; kill -9 "$r"; done
    wait "${sups[@]}" 2>/dev/null || true
    machine_limits $(( 4 * mib ))
    M[skew]=$(median "${skew[@]}"); M[commit]=$(median "${commit[@]}")
    M[frz_max]=$(median "${frz_max[@]}"); M[frz0]=$(median "${frz0[@]}"); M[bytes]=$(median "${bytes[@]}")
    printf "| %-10s | %7.1f | %9.0f | %10.1f | %9.1f | %11.0f | %6.0f |\n" \
        "median" "${M[skew]}" "${M[commit]}" "${M[frz_max]}" "${M[frz0]}" "${M[bytes]}" "${M[dd]}"
    RATIOS+=$(ratios "'%-20s  skew %5.1f ms | commit %5.0f ms, commit/dd(4 x $mib MiB) %.2f | freeze max %5.1f ms' % (
    '4 ranks x $mib MiB', skew, commit, commit / dd, frz_max)")$'\n'
}

echo "mlckpt benchmark, $(uname -r), $(nproc) cores, images in $WORK; medians of $REPS runs"
if want memory; then
    echo "| target       | freeze | ckpt ms | bytes      | i.frz  | incr ms| incr bytes| rest.ms| cold ms| RSS  | dd ms  | direct | cat ms | touch  |"
    echo "|--------------|--------|---------|------------|--------|--------|-----------|--------|--------|------|--------|--------|--------|--------|"
    bench 64 1
    bench 1024 1
    bench 1024 16
    echo
fi
if want tree; then
    echo "| job            | freeze | ckpt ms | bytes      | i.frz  | incr ms| incr bytes | rest.ms|"
    echo "|----------------|--------|---------|------------|--------|--------|------------|--------|"
    bench_tree "$MUTATIONS"
    bench_tree all
    echo
fi
if want dirty; then
    echo "| every page written   | mode     | freeze | ckpt ms | bytes      | tgt MiB | i.mode   | i.frz  | incr ms| incr bytes | rest.ms| cold ms| RSS  | dd ms  | direct | cat ms | touch  |"
    echo "|----------------------|----------|--------|---------|------------|---------|----------|--------|--------|------------|--------|--------|------|--------|--------|--------|--------|"
    for percent in 100 10; do
        for period in 50 200; do
            bench_dirty "1 GiB $percent% ${period}ms" 1024 "$WORK/dirty" 1024 "$percent" "$period"
        done
    done
    bench_dirty "1 GiB 100% 200ms x16" 1024 "$WORK/dirty" 1024 100 200 16
    bench_dirty "stencil 512 MiB x2" 512 "$WORK/stencil" 512 -1 2
    echo
fi
if want chain; then
    echo "| cold restore of a chain        | full ms   | chain ms   | cat ms | touch  |"
    echo "|--------------------------------|-----------|------------|--------|--------|"
    bench_chain
    echo
fi
if want objects; then
    echo "| kernel objects               | freeze | ckpt ms | bytes      | i.frz  | incr ms| incr bytes | rest.ms| cold ms| dd ms  | cat ms |"
    echo "|------------------------------|--------|---------|------------|--------|--------|------------|--------|--------|--------|--------|"
    bench_objects 16
    bench_objects 256
    echo
fi
if want mpi; then
    echo "| MPI job on one node          | freeze | ckpt ms | bytes      | i.frz  | incr ms| incr bytes | rest.ms|"
    echo "|------------------------------|--------|---------|------------|--------|--------|------------|--------|"
    bench_mpi
    echo
fi
if want ranks; then
    echo "| generation | skew ms | commit ms | max frz ms | rank 0 ms | rank 0 bytes | dd ms  |"
    echo "|------------|---------|-----------|------------|-----------|--------------|--------|"
    bench_ranks 64
    echo
fi
printf "%s" "$RATIOS"
echo
echo "freeze / ckpt ms / bytes: full checkpoint of the running target (freeze: ms it was stopped)."
echo "i.frz / incr ms / incr bytes: the next checkpoint, after ~1 % of the pages changed (every"
echo "page written: 3 steps later). mode / i.mode: how memory was read (checkpoint --json)."
echo "rest. / cold: 'mlckpt restore --detach' of the full image until the process runs, page cache"
echo "warm / dropped (includes verifying the image). RSS: supervisor peak, MiB. dd: write of the"
echo "same size with fdatasync (page cache); direct: the same with O_DIRECT, 8 MiB blocks; cat: read"
echo "it back, cache dropped; touch: first touch of as much new memory. tgt MiB: the target's"
echo "VmRSS just before the full checkpoint (bytes/RSS: the full image's bytes over it)."
echo "generation (ranks): 4 ranks in test mode, one generation per 'checkpoint --json' of rank 0;"
echo "skew: spread of the ranks' freeze starts; commit: decision until every rank committed;"
echo "max frz: longest freeze of a rank; dd: writing the 4 ranks' memory at once (4 x 64 MiB)."
if [ -z "${1:-}" ]; then rm -rf "$WORK"; fi
