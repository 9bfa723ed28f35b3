//! A checkpoint keeps the target's transparent huge pages: memory backed by them is not
//! write-tracked (write protection would split them for good) but read from a fork-snapshot,
//! and the huge pages the snapshot's copy-on-write split are collapsed again afterwards.
//! The image restores like any other.

mod common;

use common::*;

/// Kilobytes of the process's memory mapped by transparent huge pages.
fn anon_huge_kb(pid: i32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("AnonHugePages:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn huge_pages_survive_a_checkpoint() {
    let enabled =
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    if enabled.contains("[never]") || enabled.is_empty() {
        eprintln!("note: transparent huge pages are off here; skipping");
        return;
    }
    let h = Harness::new("hugepages");
    let prog = Prog::c("hugepages", &["64", "60"]);
    let reference = h.plain(&prog);
    let mut run = h.run(&prog);
    run.wait_for_ticks(5);
    let pid = run.target_pid();
    let before = anon_huge_kb(pid);
    if before < 32 * 1024 {
        eprintln!("note: the kernel gave only {before} kB of huge pages; skipping");
        return;
    }
    let asked = run.line_count();
    let ckpt = h.checkpoint(pid, false);
    assert_eq!(
        ckpt.mode, "snapshot",
        "huge-page memory is read from a fork-snapshot"
    );
    run.wait_for_ticks(asked + 3);
    let after = anon_huge_kb(pid);
    assert!(
        after * 10 >= before * 9,
        "the checkpoint split the target's huge pages: {before} kB before, {after} kB after"
    );
    let output = run.finish(CMD_TIMEOUT).expect_code(0).stdout;
    let restored = h.restore_to_end(&ckpt.path, &prog, pid, |_, _| {});
    let reference = reference.finish(CMD_TIMEOUT).expect_code(0).stdout;
    assert_resumed(&reference, &output, &restored, asked..asked + 20, pid, pid);
}
