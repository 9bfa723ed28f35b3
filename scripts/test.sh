#!/usr/bin/env bash
# The project's test command (README): unit tests and end-to-end checkpoint/restore tests.
# The end-to-end tests need root (ptrace, clone3 with a chosen PID).
set -euo pipefail
cd "$(dirname "$0")/.."
# A runner may leak open fds into us; a checkpoint would (rightly) refuse a job that holds
# an unknown pipe, so the tests start from a clean fd table.
for fd in $(ls /proc/$$/fd); do
    if [ "$fd" -gt 2 ] && [ "$fd" != 255 ]; then eval "exec $fd>&-" || true; fi
done
cargo build --release --quiet
cargo test --release -- --test-threads=2 --skip zdtm_conformance
# The conformance suite (tests/zdtm/, one program per kind of kernel state): its per-kind
# lines and pass count are printed.
cargo test --release --test conformance -- --nocapture
