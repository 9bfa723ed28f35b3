#!/usr/bin/env bash
# Benchmark: freeze, checkpoint and restore times and image sizes for 64 MiB and 1 GiB
# targets (and 1 GiB with 16 threads), next to this machine's own limits measured in the
# same run, then the ratios the performance targets are stated in.
#   scripts/bench.sh [DIR]     DIR: where images go (default: a new dir under /var/tmp)
#   ONLY=tree scripts/bench.sh   only the process-tree rows
# Needs root (ptrace, clone3 with a chosen PID, drop_caches).
set -euo pipefail
cd "$(dirname "$0")/.."
for fd in $(ls /proc/$$/fd); do   # a leaked pipe in the target would (rightly) refuse the checkpoint
    if [ "$fd" -gt 2 ] && [ "$fd" != 255 ]; then eval "exec $fd>&-" || true; fi
done
cargo build --release --quiet
BIN=$PWD/target/release/mlckpt
WORK=${1:-$(mktemp -d /var/tmp/mlckpt-bench.XXXXXX)}
mkdir -p "$WORK"
gcc -O2 -pthread -o "$WORK/memory" tests/programs/memory.c
gcc -O2 -o "$WORK/tree_memory" tests/programs/tree_memory.c
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
    "$BIN" restore --detach --config "$WORK/mlckpt.toml" "$1" 2> "$WORK/restore.err"
    t1=$(now)
    pid=$(sed -n 's/.* as PID \([0-9]*\).*/\1/p' "$WORK/restore.err")
    all="$(ps -o pid= --ppid "$pid") $pid"
    kill -9 $all 2>/dev/null || true
    # Orphaned members are reaped by init, not at once: the next restore needs their PIDs.
    for p in $all; do while [ -e "/proc/$p" ]; do sleep 0.05; done; done
    ms "$t0" "$t1"
}

ticks() { grep -c '^tick' "$WORK/out.txt"; }
MUTATIONS=25   # per 30 ms tick: slow enough that 1 % of 1 GiB outlasts the full checkpoint
RATIOS=""

bench() {   # $1 MiB, $2 threads
    local mib=$1 threads=$2 sup pid full inc hwm t0 changed_ticks label img r
    local f_frz=() f_ms=() f_b=() i_frz=() i_ms=() i_b=() warm=() cold=() dd=() direct=() cat=() touch=()
    label="$mib MiB"
    if [ "$threads" -gt 1 ]; then label="$label x$threads"; fi
    rm -rf "$WORK/store" "$WORK/out.txt"
    "$BIN" run --config "$WORK/mlckpt.toml" --job "m$mib" -- \
        "$WORK/memory" "$mib" 1000000 "$MUTATIONS" "$threads" > "$WORK/out.txt" 2> "$WORK/run.err" &
    sup=$!
    until grep -q '^tick 1 ' "$WORK/out.txt" 2>/dev/null; do sleep 0.05; done
    pid=$(head -1 "$WORK/out.txt" | cut -d' ' -f2)
    # memory.c changes MUTATIONS random words per tick: 1 % of the pages takes this many
    # ticks, counted from the state the full image holds (the end of its checkpoint).
    changed_ticks=$(( (mib * 256 / 100 + MUTATIONS - 1) / MUTATIONS ))
    for r in $(seq "$REPS"); do
        full=$("$BIN" checkpoint "$pid" --json)
        t0=$(ticks)
        until [ "$(ticks)" -ge $((t0 + changed_ticks)) ]; do sleep 0.01; done
        inc=$("$BIN" checkpoint "$pid" --json)
        f_frz+=("$(field "$full" freeze_ms)"); f_ms+=("$(field "$full" total_ms)")
        f_b+=("$(field "$full" bytes)")
        i_frz+=("$(field "$inc" freeze_ms)"); i_ms+=("$(field "$inc" total_ms)")
        i_b+=("$(field "$inc" bytes)")
    done
    hwm=$(awk '/VmHWM/ {print int($2/1024)}' "/proc/$sup/status" 2>/dev/null || echo "?")
    "$BIN" checkpoint "$pid" --kill --json > /dev/null
    wait "$sup" || true
    img=$(field "$full" path)
    for r in $(seq "$REPS"); do
        drop_caches
        cold+=("$(restore_ms "$img")")
        warm+=("$(restore_ms "$img")")
    done
    for r in $(seq "$REPS"); do
        read -r a b c d < <(limits "$mib")
        dd+=("$a"); direct+=("$b"); cat+=("$c"); touch+=("$d")
    done
    local m=()
    for v in f_frz f_ms f_b i_frz i_ms i_b warm cold dd direct cat touch; do
        eval "m+=(\"\$(median \"\${$v[@]}\")\")"
    done
    printf "| %-12s | %6.1f | %7.0f | %10.0f | %6.1f | %6.1f | %9.0f | %6.0f | %6.0f | %4s | %6.0f | %6.0f | %6.0f | %6.0f |\n" \
        "$label" "${m[0]}" "${m[1]}" "${m[2]}" "${m[3]}" "${m[4]}" "${m[5]}" "${m[6]}" "${m[7]}" \
        "$hwm" "${m[8]}" "${m[9]}" "${m[10]}" "${m[11]}"
    RATIOS+=$(python3 -c "
f_frz, f_ms, f_b, i_frz, i_ms, i_b, warm, cold, dd, direct, cat, touch = map(float, '${m[*]}'.split())
print('%-12s  freeze %4.1f / %4.1f ms (full / incr.) | ckpt/dd %.2f (ckpt/dd-direct %.2f) | incr/full: time %.3f, bytes %.4f | cold restore/(cat+touch) %.2f | RSS %s MiB' % (
    '$label', f_frz, i_frz, f_ms / dd, f_ms / direct, i_ms / f_ms, i_b / f_b, cold / (cat + touch), '$hwm'))")$'\n'
}

# A job of 4 processes with 256 MiB each (the root and three workers, tree_memory.c), light
# ($MUTATIONS words per process per tick) or rewriting every page every tick ("all").
bench_tree() {   # $1 mutations per tick, or "all"
    local mode=$1 sup pid full inc label f_frz=() f_ms=() f_b=() i_frz=() i_ms=() i_b=() warm=() r
    label="tree 4x256 MiB"; [ "$mode" = all ] && label="tree 4x256 all"
    rm -rf "$WORK/store" "$WORK/out.txt"
    "$BIN" run --config "$WORK/mlckpt.toml" --job "tree" -- \
        "$WORK/tree_memory" 4 256 1000000 "$mode" > "$WORK/out.txt" 2> "$WORK/run.err" &
    sup=$!
    until grep -q '^tick 1 ' "$WORK/out.txt" 2>/dev/null; do sleep 0.05; done
    pid=$(head -1 "$WORK/out.txt" | cut -d' ' -f2)
    for r in $(seq "$REPS"); do
        full=$("$BIN" checkpoint "$pid" --json)
        t0=$(ticks)
        # 1 % of each process's pages (light), or a few ticks of rewriting everything.
        until [ "$(ticks)" -ge $((t0 + 256 * 256 / 100 / MUTATIONS + 1)) ]; do sleep 0.01; done
        inc=$("$BIN" checkpoint "$pid" --json)
        f_frz+=("$(field "$full" freeze_ms)"); f_ms+=("$(field "$full" total_ms)")
        f_b+=("$(field "$full" bytes)")
        i_frz+=("$(field "$inc" freeze_ms)"); i_ms+=("$(field "$inc" total_ms)")
        i_b+=("$(field "$inc" bytes)")
    done
    "$BIN" checkpoint "$pid" --kill --json > /dev/null
    wait "$sup" || true
    for r in $(seq "$REPS"); do warm+=("$(restore_ms "$(field "$full" path)")"); done
    local m=()
    for v in f_frz f_ms f_b i_frz i_ms i_b warm; do
        eval "m+=(\"\$(median \"\${$v[@]}\")\")"
    done
    printf "| %-14s | %6.1f | %7.0f | %10.0f | %6.1f | %6.1f | %10.0f | %6.0f |\n" \
        "$label" "${m[0]}" "${m[1]}" "${m[2]}" "${m[3]}" "${m[4]}" "${m[5]}" "${m[6]}"
}

echo "mlckpt benchmark, $(uname -r), $(nproc) cores, images in $WORK; medians of $REPS runs"
echo "| target       | freeze | ckpt ms | bytes      | i.frz  | incr ms| incr bytes| rest.ms| cold ms| RSS  | dd ms  | direct | cat ms | touch  |"
echo "|--------------|--------|---------|------------|--------|--------|-----------|--------|--------|------|--------|--------|--------|--------|"
if [ "${ONLY:-}" != tree ]; then
    bench 64 1
    bench 1024 1
    bench 1024 16
fi
echo
echo "| job            | freeze | ckpt ms | bytes      | i.frz  | incr ms| incr bytes | rest.ms|"
echo "|----------------|--------|---------|------------|--------|--------|------------|--------|"
bench_tree "$MUTATIONS"
bench_tree all
echo
printf "%s" "$RATIOS"
echo
echo "freeze / ckpt ms / bytes: full checkpoint of the running target (freeze: ms it was stopped)."
echo "i.frz / incr ms / incr bytes: the next checkpoint, after ~1 % of the pages changed."
echo "rest. / cold: 'mlckpt restore --detach' of the full image until the process runs, page cache"
echo "warm / dropped (includes verifying the image). RSS: supervisor peak, MiB. dd: write of the"
echo "same size with fdatasync (page cache); direct: the same with O_DIRECT, 8 MiB blocks; cat: read"
echo "it back, cache dropped; touch: first touch of as much new memory."
[ -z "${1:-}" ] && rm -rf "$WORK"
