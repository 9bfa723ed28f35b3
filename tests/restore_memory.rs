//! Memory contents survive checkpoint --kill + restore; the PID is kept; an image can be
//! restored more than once.

mod common;

use common::*;

/// (1) Tens of MiB of heap plus .data/.bss/stack, checkpointed mid-run and SIGKILLed.
#[test]
fn memory_48_mib_continues_after_restore() {
    let h = Harness::new("mem48");
    h.checkpoint_kill_restore(&Prog::c("memory", &["48", "60"]), 20);
}

/// (2) The same at 1 GiB, fewer ticks.
#[test]
fn memory_1_gib_continues_after_restore() {
    let h = Harness::new("mem1g");
    let out = h.checkpoint_kill_restore(&Prog::c("memory", &["1024", "12"]), 4);
    assert!(
        out.ckpt.bytes >= 1 << 30,
        "a 1 GiB random-filled heap cannot fit in {} bytes",
        out.ckpt.bytes
    );
}

/// (6) Restoring the same image a second time gives the same result: the image is not
/// consumed by a restore.
#[test]
fn same_image_restores_twice() {
    let h = Harness::new("twice");
    let prog = Prog::c("memory", &["16", "60"]);
    let first = h.checkpoint_kill_restore(&prog, 15);
    let second = h.restore_to_end(&first.ckpt.path, &prog, first.pid, |_, _| {});
    assert_eq!(
        second, first.after,
        "second restore of the same image printed something else"
    );
    h.mlckpt(&["verify".as_ref(), first.ckpt.path.as_os_str()])
        .expect_code(0);
}

/// (7) The restored process has the original PID and is the restore command's child.
#[test]
fn restore_keeps_pid() {
    let h = Harness::new("pid");
    let prog = Prog::c("memory", &["16", "100"]);
    h.checkpoint_kill_restore_with(&prog, 10, |restore, pid| {
        restore.wait_for_ticks(1);
        let (ppid, _) = parent_and_group(pid)
            .unwrap_or_else(|| panic!("no process {pid} while the restore runs"));
        assert_eq!(
            ppid,
            restore.child_pid(),
            "restored process is not restore's child"
        );
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
        assert_eq!(
            exe,
            compiled("memory"),
            "restored process runs another executable"
        );
    });
}
