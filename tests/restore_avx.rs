//! (5) Vector registers: ymm8-15 (and zmm16-31, k1-7 where the CPU has AVX-512F) loaded
//! before a sleep syscall hold the same values after it, across checkpoint and restore.

mod common;

use common::*;

#[test]
fn vector_registers_survive() {
    if !cpu_has("avx2") {
        eprintln!("note: CPU has no AVX2; skipping");
        return;
    }
    if !cpu_has("avx512f") {
        eprintln!("note: CPU has no AVX-512F; only ymm registers are checked");
    }
    let h = Harness::new("avx");
    let out = h.checkpoint_kill_restore(&Prog::c("avx", &["60"]), 15);
    assert!(
        !out.after.contains("_ok=0"),
        "vector registers changed across the restore:\n{}",
        out.after
    );
}
