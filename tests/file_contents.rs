//! The files a job writes come back as they were at the checkpoint: files written in place
//! are copied into the image (incrementally), files only appended to are proven unchanged
//! and cut back, larger ones are refused when they changed; a restore never follows a
//! symlink put on a file's path, nor writes into a file that replaced the job's.

mod common;

use common::*;
use nix::sys::signal::Signal;
use std::path::Path;

/// Checkpoint at `at_tick` (the job goes on), kill it at `kill_tick`, restore: the restored
/// job must go on from the checkpoint exactly as an uninterrupted run. Returns the image.
fn checkpoint_go_on_kill_restore(
    h: &Harness,
    prog: &Prog,
    at_tick: usize,
    kill_tick: usize,
) -> Ckpt {
    let reference = h.plain(prog);
    let mut run = h.run(prog);
    run.wait_for_ticks(at_tick);
    let pid = run.target_pid();
    let ckpt = h.checkpoint(pid, false);
    run.wait_for_ticks(kill_tick);
    run.signal(Signal::SIGKILL);
    let went_on = run.finish(CMD_TIMEOUT).stdout;
    wait_gone(pid);
    let after = h.restore_to_end(&ckpt.path, prog, pid, |_, _| {});
    let reference = reference.finish(CMD_TIMEOUT).expect_code(0).stdout;
    assert_continuation(&reference, printed_before(&went_on, &after), &after, pid);
    ckpt
}

/// Restores `killed`'s image, which must be refused with a message holding every one of
/// `words`, and no process may run.
fn refused_restore(h: &Harness, killed: &Killed, prog: &Prog, words: &[&str]) {
    let res = h
        .restore(&killed.ckpt.path, prog)
        .finish(CMD_TIMEOUT)
        .expect_failure();
    let out = res.output();
    assert!(words.iter().all(|w| out.contains(w)), "{}", res.describe());
    assert!(!pid_alive(killed.pid), "a process ran");
}

fn same_file(h: &Harness, name: &str) {
    let got = std::fs::read(h.run_dir().join(name)).unwrap();
    let want = std::fs::read(h.ref_dir().join(name)).unwrap();
    assert!(got == want, "{name} differs from the uninterrupted run's");
}

fn manifest(image: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(image.join("manifest.json")).unwrap()).unwrap()
}

fn kind_of_file(image: &Path) -> String {
    manifest(image)["files"][0]["contents"]["kind"]
        .as_str()
        .unwrap_or("none")
        .to_string()
}

#[test]
fn appended_file_is_cut_back_after_its_proof() {
    let h = Harness::new("appended");
    let prog = Prog::c("filewriter", &["append", "{dir}/log.txt", "40"]);
    let ckpt = checkpoint_go_on_kill_restore(&h, &prog, 8, 20);
    assert_eq!(kind_of_file(&ckpt.path), "appended");
    same_file(&h, "log.txt");
}

/// Also incremental: the second image stores only the chunks that changed and refers to
/// the first for the others.
#[test]
fn file_written_in_place_comes_back_exact_and_increments_store_changed_chunks() {
    let h = Harness::new("inplace");
    h.set_config("[interval]\nlocal = 0\n[image]\nfull_every = 4\n");
    let prog = Prog::c("filewriter", &["inplace", "{dir}/data.bin", "50"]);
    let reference = h.plain(&prog);
    let mut run = h.run(&prog);
    run.wait_for_ticks(8);
    let pid = run.target_pid();
    let first = h.checkpoint(pid, false);
    run.wait_for_ticks(12);
    let second = h.checkpoint(pid, false);
    run.wait_for_ticks(25);
    run.signal(Signal::SIGKILL);
    let went_on = run.finish(CMD_TIMEOUT).stdout;
    wait_gone(pid);
    assert_eq!(kind_of_file(&first.path), "copied");
    let chunks = manifest(&second.path)["files"][0]["contents"]["chunks"]
        .as_array()
        .unwrap()
        .clone();
    let from_parent = chunks.iter().filter(|c| c["image"] == first.seq).count();
    assert!(
        chunks.len() == 3 && (1..3).contains(&from_parent),
        "the increment should store the changed chunks only: {chunks:?}"
    );
    let after = h.restore_to_end(&second.path, &prog, pid, |_, _| {});
    let reference = reference.finish(CMD_TIMEOUT).expect_code(0).stdout;
    assert_continuation(&reference, printed_before(&went_on, &after), &after, pid);
    same_file(&h, "data.bin");
}

#[test]
fn copied_file_that_is_gone_is_created_again() {
    let h = Harness::new("gone");
    let prog = Prog::c("filewriter", &["inplace", "{dir}/data.bin", "30"]);
    let reference = h.plain(&prog);
    let killed = h.run_until_checkpoint_kill(&prog, 10);
    std::fs::remove_file(h.run_dir().join("data.bin")).unwrap();
    let after = h.restore_to_end(&killed.ckpt.path, &prog, killed.pid, |_, _| {});
    let reference = reference.finish(CMD_TIMEOUT).expect_code(0).stdout;
    assert_continuation(&reference, &killed.before, &after, killed.pid);
    same_file(&h, "data.bin");
}

#[test]
fn appended_file_rewritten_before_its_end_is_refused() {
    let h = Harness::new("rewritten");
    let prog = Prog::c("filewriter", &["append", "{dir}/log.txt", "200"]);
    let killed = h.run_until_checkpoint_kill(&prog, 5);
    let log = h.run_dir().join("log.txt");
    let mut bytes = std::fs::read(&log).unwrap();
    bytes[3] = b'#';
    bytes.extend_from_slice(b"written after the checkpoint\n");
    std::fs::write(&log, &bytes).unwrap();
    refused_restore(
        &h,
        &killed,
        &prog,
        &["log.txt", "rewritten", "--keep-files"],
    );
    assert_eq!(
        std::fs::read(&log).unwrap(),
        bytes,
        "a refused restore changed the file"
    );
}

#[test]
fn file_over_the_copy_limit_that_changed_is_refused_naming_the_limit() {
    let h = Harness::new("overlimit");
    h.set_config("[interval]\nlocal = 0\n[image]\nfile_copy_limit_mib = 1\n");
    let prog = Prog::c("filewriter", &["inplace", "{dir}/data.bin", "200"]);
    let killed = h.run_until_checkpoint_kill(&prog, 5);
    assert_eq!(kind_of_file(&killed.ckpt.path), "not_copied");
    let data = h.run_dir().join("data.bin");
    let mut bytes = std::fs::read(&data).unwrap();
    bytes[100] ^= 1;
    std::fs::write(&data, &bytes).unwrap();
    refused_restore(&h, &killed, &prog, &["data.bin", "file_copy_limit_mib"]);
    assert_eq!(std::fs::read(&data).unwrap(), bytes);
}

/// The attack: after the checkpoint, the job's owner puts a symlink to a file only root may
/// write where the job's log was. Root's restore must neither cut nor write that file.
#[test]
fn symlink_swapped_in_for_a_file_is_not_followed() {
    let h = Harness::new("symlink");
    let prog = Prog::c("filewriter", &["append", "{dir}/log.txt", "200"]);
    let killed = h.run_until_checkpoint_kill(&prog, 5);
    let log = h.run_dir().join("log.txt");
    let victim = h.ref_dir().join("precious");
    let precious = vec![b'p'; 3 << 20];
    std::fs::write(&victim, &precious).unwrap();
    std::fs::remove_file(&log).unwrap();
    std::os::unix::fs::symlink(&victim, &log).unwrap();
    refused_restore(&h, &killed, &prog, &["log.txt", "symlink"]);
    assert_eq!(
        std::fs::read(&victim).unwrap(),
        precious,
        "the symlink was followed"
    );
}

/// A file the job writes, replaced since by another file (another inode): refused, not
/// written.
#[test]
fn replaced_file_is_refused() {
    let h = Harness::new("replaced");
    let prog = Prog::c("filewriter", &["append", "{dir}/log.txt", "200"]);
    let killed = h.run_until_checkpoint_kill(&prog, 5);
    let log = h.run_dir().join("log.txt");
    // Written beside and renamed over it (as editors do): another inode.
    let bytes = std::fs::read(&log).unwrap();
    let new = h.run_dir().join("log.new");
    std::fs::write(&new, &bytes).unwrap();
    std::fs::rename(&new, &log).unwrap();
    refused_restore(&h, &killed, &prog, &["log.txt", "replaced"]);
}
