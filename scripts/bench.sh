#!/usr/bin/env bash
# Benchmark: freeze, checkpoint and restore times and image size for 64 MiB and 1 GiB
# targets, next to this machine's own limits measured in the same run.
#   scripts/bench.sh [DIR]     DIR: where images go (default: a new dir under /var/tmp)
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
gcc -O2 -o "$WORK/memory" tests/programs/memory.c
cat > "$WORK/touch.c" <<'C'
#include <stdlib.h>
#include <string.h>
int main(int c, char **v) { size_t n = strtoull(v[1], 0, 10) << 20; char *p = malloc(n);
  for (size_t i = 0; i < n; i += 4096) p[i] = 1; return p[n / 2] - 1; }
C
gcc -O2 -o "$WORK/touch" "$WORK/touch.c"
printf '[storage]\nlocal = "%s/store"\n[interval]\nlocal = 0\n' "$WORK" > "$WORK/mlckpt.toml"

ms() { echo "$(( ($2 - $1) / 1000000 ))"; }
now() { date +%s%N; }
drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }
json() { python3 -c "import json,sys; print(json.load(sys.stdin)['$1'])"; }

limits() {   # $1 MiB
    local t0 t1 dd_ms cat_ms touch_ms
    t0=$(now); dd if=/dev/zero of="$WORK/dd.bin" bs=1M count="$1" conv=fdatasync status=none; t1=$(now)
    dd_ms=$(ms "$t0" "$t1")
    drop_caches
    t0=$(now); cat "$WORK/dd.bin" > /dev/null; t1=$(now); cat_ms=$(ms "$t0" "$t1")
    rm -f "$WORK/dd.bin"
    t0=$(now); "$WORK/touch" "$1"; t1=$(now); touch_ms=$(ms "$t0" "$t1")
    echo "$dd_ms $cat_ms $touch_ms"
}

restore_ms() {   # $1 image; prints ms until the restored process runs; kills it
    local t0 t1 pid
    t0=$(now)
    "$BIN" restore --detach --config "$WORK/mlckpt.toml" "$1" 2> "$WORK/restore.err"
    t1=$(now)
    pid=$(sed -n 's/.* as PID \([0-9]*\).*/\1/p' "$WORK/restore.err")
    kill -9 "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
    ms "$t0" "$t1"
}

ticks() { grep -c '^tick' "$WORK/out.txt"; }
MUTATIONS=25   # per 30 ms tick: slow enough that 1 % of 1 GiB outlasts the full checkpoint

bench() {   # $1 MiB
    local mib=$1 sup pid full inc last hwm warm cold t0 changed_ticks
    rm -rf "$WORK/store" "$WORK/out.txt"
    "$BIN" run --config "$WORK/mlckpt.toml" --job "m$mib" -- "$WORK/memory" "$mib" 1000000 "$MUTATIONS" \
        > "$WORK/out.txt" 2> "$WORK/run.err" &
    sup=$!
    until grep -q '^tick 1 ' "$WORK/out.txt" 2>/dev/null; do sleep 0.05; done
    pid=$(head -1 "$WORK/out.txt" | cut -d' ' -f2)
    # memory.c changes MUTATIONS random words per tick: 1 % of the pages, counted from the
    # full image's state, takes this many ticks. A pre-copied image holds the state of the
    # end of its checkpoint, a fork-snapshot one that of its start: counted from the end,
    # the increment of a snapshot image sees somewhat more than 1 %.
    changed_ticks=$(( (mib * 256 / 100 + MUTATIONS - 1) / MUTATIONS ))
    full=$("$BIN" checkpoint "$pid" --json)
    t0=$(ticks)
    until [ "$(ticks)" -ge $((t0 + changed_ticks)) ]; do sleep 0.01; done
    inc=$("$BIN" checkpoint "$pid" --json)
    hwm=$(awk '/VmHWM/ {print int($2/1024)}' "/proc/$sup/status" 2>/dev/null || echo "?")
    last=$("$BIN" checkpoint "$pid" --kill --json)
    wait "$sup" || true
    img=$(echo "$full" | json path)
    warm=$(restore_ms "$img")
    drop_caches
    cold=$(restore_ms "$img")
    read -r dd_ms cat_ms touch_ms < <(limits "$mib")
    printf "| %5s MiB | %7.1f | %8.1f | %11s | %8.1f | %10s | %7s | %7s | %5s | %6s | %6s | %6s |\n" \
        "$mib" "$(echo "$full" | json freeze_ms)" "$(echo "$full" | json total_ms)" \
        "$(echo "$full" | json bytes)" "$(echo "$inc" | json total_ms)" "$(echo "$inc" | json bytes)" \
        "$warm" "$cold" "$hwm" "$dd_ms" "$cat_ms" "$touch_ms"
    : "$last"
}

echo "mlckpt benchmark, $(uname -r), $(nproc) cores, images in $WORK"
echo "| target    | freeze  | ckpt ms  | image bytes | incr. ms | incr bytes | rest.ms | cold ms | RSS   | dd ms  | cat ms | touch  |"
echo "|-----------|---------|----------|-------------|----------|------------|---------|---------|-------|--------|--------|--------|"
bench 64
bench 1024
echo
echo "freeze / ckpt ms: full checkpoint of the running target (fork-snapshot: freeze is the time"
echo "it was stopped). incr.: the next checkpoint after ~1 % of pages changed (content-hashed)."
echo "rest. / cold: 'mlckpt restore --detach' of the full image until the process runs, page cache"
echo "warm / dropped (includes verifying the image). RSS: supervisor peak, MiB. dd: write of the"
echo "same size with fdatasync; cat: read it back, cache dropped; touch: first touch of as much"
echo "new memory."
[ -z "${1:-}" ] && rm -rf "$WORK"
