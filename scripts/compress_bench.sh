#!/usr/bin/env bash
# Does compressing copies (`[image] compress = "zstd"`) beat writing them raw on this
# machine's storage? For a real 1 GiB image of each of two programs, in one run:
#   - mlckpt's own copy to the global tier (read, blake3, compress, write, fsync, rename),
#     timed by the supervisor's log line, with compress = none, zstd level 1, zstd level 3;
#     each row is a fresh `mlckpt run` + `checkpoint --tier global --kill --json` of the
#     same deterministic program, so the image is the same;
#   - the restore of that copy: for a compressed one, the decompression + verification into
#     memory that comes first (restore's log line), and the whole restore;
#   - the zstd command (-T0: all cores; input in the page cache) at levels 1 and 3 on the
#     same pages.bin, when it is installed: compression speed alone;
#   - dd of the same size with conv=fdatasync: what the device writes (from /dev/zero in
#     1 MiB writes as scripts/bench.sh does, and the image's own pages from the page cache
#     in 1 MiB and in 128 KiB writes: buffered writes of 1 MiB are much slower here).
# Programs: tests/programs/memory.c (fills memory from a PRNG: incompressible, the worst
# case) and tests/programs/field.c (a smooth 2-D field of doubles, like a simulation's).
#   scripts/compress_bench.sh [DIR]     DIR: where images go (default: a new dir in /var/tmp)
#   MIB=256 REPS=5 scripts/compress_bench.sh   another size, more repetitions (default 3)
# Needs root (ptrace, clone3 with a chosen PID, drop_caches). Do not run it next to a
# cargo build: it measures CPU-bound work.
set -euo pipefail
source "$(dirname "$0")/setup.sh"
WORK=${1:-$(mktemp -d /var/tmp/mlckpt-compress.XXXXXX)}
MIB=${MIB:-1024}
REPS=${REPS:-3}   # every number is the median of this many measurements
mkdir -p "$WORK"
gcc -O2 -pthread -o "$WORK/memory" tests/programs/memory.c
gcc -O2 -o "$WORK/field" tests/programs/field.c

now() { date +%s%N; }
ms() { echo "$(( ($2 - $1) / 1000000 ))"; }
drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }
rate() { python3 -c "import sys; print(f'{float(sys.argv[1]) / (float(sys.argv[2]) / 1000):.0f}')" "$1" "$2"; }
ratio() { python3 -c "import sys; print(f'{float(sys.argv[1]) / float(sys.argv[2]):.2f}')" "$1" "$2"; }

config() {   # $1 compress, $2 level
    printf '[storage]\nlocal = "%s/store"\nglobal = "%s/global"\nkeep = 1\n[interval]\nlocal = 0\n[image]\ncompress = "%s"\ncompress_level = %s\n' \
        "$WORK" "$WORK" "$1" "$2" > "$WORK/mlckpt.toml"
}

IMAGE=""      # the local image of the last copy_run
COPY=""       # its copy on the global tier
COPY_LINE=""  # the supervisor's log line for the copy

copy_run() {   # $1 program, $2 compress, $3 level: one image, copied to the global tier
    local sup pid json
    rm -rf "$WORK/store" "$WORK/global" "$WORK/out.txt"
    config "$2" "$3"
    "$BIN" run --config "$WORK/mlckpt.toml" --job "$1" -- "$WORK/$1" "$MIB" 1000000 \
        > "$WORK/out.txt" 2> "$WORK/run.err" &
    sup=$!
    until grep -q '^tick 1 ' "$WORK/out.txt" 2>/dev/null; do sleep 0.05; done
    pid=$(head -1 "$WORK/out.txt" | cut -d' ' -f2)
    json=$("$BIN" checkpoint "$pid" --tier global --kill --json)
    wait "$sup" || true
    COPY=$(python3 -c "import json,sys; print(json.loads(sys.argv[1])['path'])" "$json")
    IMAGE="$WORK/store/$1/rank0/$(basename "$COPY")"
    COPY_LINE=$(grep 'to the global tier' "$WORK/run.err" | tail -1)
    # "(1024.0 MiB in 812.3 ms, 1261 MiB/s[, stored as 950.1 MiB with zstd level 1])"
    COPY_MIB=$(sed -n 's/.*(\([0-9.]*\) MiB in.*/\1/p' <<< "$COPY_LINE")
    COPY_MS=$(sed -n 's/.* MiB in \([0-9.]*\) ms.*/\1/p' <<< "$COPY_LINE")
    STORED_MIB=$(sed -n 's/.*stored as \([0-9.]*\) MiB.*/\1/p' <<< "$COPY_LINE")
    STORED_MIB=${STORED_MIB:-$COPY_MIB}
}

restore_run() {   # $1 image: prints "total_ms decompress_ms" (decompress_ms "-" if raw)
    local t0 t1 pid dec
    drop_caches
    t0=$(now)
    "$BIN" restore --detach --config "$WORK/mlckpt.toml" "$1" 2> "$WORK/restore.err"
    t1=$(now)
    pid=$(sed -n 's/.* as PID \([0-9]*\).*/\1/p' "$WORK/restore.err")
    kill -9 "$pid" 2>/dev/null || true
    while [ -e "/proc/$pid" ]; do sleep 0.05; done
    dec=$(sed -n 's/.*decompressed and verified .* in \([0-9.]*\) ms.*/\1/p' "$WORK/restore.err")
    echo "$(ms "$t0" "$t1") ${dec:--}"
}

zstd_cli() {   # $1 pages.bin, $2 level: prints "ms bytes" (input in the page cache)
    local t0 t1 bytes
    cat "$1" > /dev/null
    t0=$(now)
    bytes=$(zstd -q -T0 "-$2" -c "$1" | wc -c)
    t1=$(now)
    echo "$(ms "$t0" "$t1") $bytes"
}

median() { python3 -c "import statistics,sys; print(f'{statistics.median(map(float, sys.argv[1:])):.0f}')" "$@"; }
settle() { sync; sleep 2; }   # the previous step's writeback must not land in the next one

declare -A T   # measurements by name, space-separated, one per repetition
add() { T[$1]="${T[$1]:-} $2"; }

echo "compress_bench: $(nproc) cores, $REPS repetitions (medians shown), images in $WORK ($(df --output=source "$WORK" | tail -1))"
for prog in memory field; do
    T=()
    RAW_PAGES="$WORK/pages-$prog.bin"
    for rep in $(seq "$REPS"); do
        for setting in "none 1" "zstd 1" "zstd 3"; do
            read -r compress level <<< "$setting"
            key="$compress-$level"
            settle
            copy_run "$prog" "$compress" "$level"
            add "$key-copy" "$COPY_MS"
            add "$key-mib" "$COPY_MIB"
            add "$key-stored" "$STORED_MIB"
            settle
            read -r total dec <<< "$(restore_run "$COPY")"
            add "$key-restore" "$total"
            if [ "$dec" != - ]; then add "$key-dec" "$dec"; fi
            if [ "$compress" = none ] && [ "$rep" = 1 ]; then cp "$IMAGE/pages.bin" "$RAW_PAGES"; fi
        done
        mkdir -p "$WORK/global"
        pages_mib=$(( $(stat -c %s "$RAW_PAGES") >> 20 ))
        # From /dev/zero as scripts/bench.sh does (bs=1M), and the image's own pages (from
        # the page cache) in 1 MiB and in 128 KiB writes: the write size matters here.
        for dd in "/dev/zero 1M" "$RAW_PAGES 1M" "$RAW_PAGES 128K"; do
            read -r from bs <<< "$dd"
            cat "$RAW_PAGES" > /dev/null
            rm -f "$WORK/global/dd.bin"; settle
            t0=$(now)
            dd if="$from" of="$WORK/global/dd.bin" bs="$bs" iflag=count_bytes count=$(( pages_mib << 20 )) \
                conv=fdatasync status=none
            t1=$(now)
            add "dd-$(basename "$from")-$bs" "$(ms "$t0" "$t1")"
        done
        rm -f "$WORK/global/dd.bin"
        if command -v zstd > /dev/null; then
            for level in 1 3; do
                read -r t bytes <<< "$(zstd_cli "$RAW_PAGES" "$level")"
                add "cli-$level" "$t"
                add "cli-$level-bytes" "$bytes"
            done
        fi
    done

    echo
    echo "== $prog: $pages_mib MiB of pages =="
    printf '  %-50s %8s    %6s        %9s %6s  %s\n' "mlckpt copy to the global tier" "time" "rate" \
        "stored" "ratio" "restore of the copy (decompression)"
    for setting in "none 1" "zstd 1" "zstd 3"; do
        read -r compress level <<< "$setting"
        key="$compress-$level"
        label="compress = $compress"
        if [ "$compress" = zstd ]; then label="$label, level $level"; fi
        copy=$(median ${T[$key-copy]}); mib=$(median ${T[$key-mib]}); stored=$(median ${T[$key-stored]})
        dec="-"
        if [ -n "${T[$key-dec]:-}" ]; then dec=$(median ${T[$key-dec]}); fi
        printf '  %-50s %8s ms %6s MiB/s %7s MiB %6s  %s ms (%s ms)\n' "$label" "$copy" \
            "$(rate "$mib" "$copy")" "$stored" "$(ratio "$mib" "$stored")" \
            "$(median ${T[$key-restore]})" "$dec"
    done
    if command -v zstd > /dev/null; then
        for level in 1 3; do
            t=$(median ${T[cli-$level]}); bytes=$(median ${T[cli-$level-bytes]})
            printf '  %-50s %8s ms %6s MiB/s %7s MiB %6s\n' "zstd command -T0 -$level (page cache to a pipe)" "$t" \
                "$(rate "$pages_mib" "$t")" "$(( ${bytes%.*} >> 20 ))" "$(ratio "$(stat -c %s "$RAW_PAGES")" "$bytes")"
        done
    else
        echo "  (no zstd command installed: its rows are left out)"
    fi
    for dd in "zero 1M" "pages-$prog.bin 1M" "pages-$prog.bin 128K"; do
        read -r from bs <<< "$dd"
        t=$(median ${T[dd-$from-$bs]})
        printf '  %-50s %8s ms %6s MiB/s\n' "dd from $from bs=$bs conv=fdatasync" "$t" "$(rate "$pages_mib" "$t")"
    done
    printf '  %-50s %s\n' "each copy (ms), none / zstd 1 / zstd 3:" "${T[none-1-copy]} /${T[zstd-1-copy]} /${T[zstd-3-copy]}"
    printf '  %-50s %s\n' "each dd, zero 1M / pages 1M / pages 128K (ms):" \
        "${T[dd-zero-1M]} /${T[dd-pages-$prog.bin-1M]} /${T[dd-pages-$prog.bin-128K]}"
    rm -f "$RAW_PAGES"
done
