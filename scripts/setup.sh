# Sourced by the test and benchmark scripts: run from the repository's root, with no fd
# beyond 0-2 that a launcher leaked (a leaked pipe in a job would rightly refuse its
# checkpoint), and mlckpt built; BIN names it.
cd "$(dirname "${BASH_SOURCE[0]}")/.."
for fd in $(ls /proc/$$/fd); do
    if [ "$fd" -gt 2 ] && [ "$fd" != 255 ]; then eval "exec $fd>&-" || true; fi
done
cargo build --release --quiet
BIN=$PWD/target/release/mlckpt
