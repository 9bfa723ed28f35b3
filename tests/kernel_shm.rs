//! Shared memory of a job across `checkpoint --kill` and restore: System V segments (one
//! shared by a producer and its consumer, one marked for removal), what a restore does
//! with a segment of the same id still on the node, and a POSIX shared memory object whose
//! file was lost (a node reboot empties /dev/shm). Each restored run must continue the
//! checkpointed one exactly as an uninterrupted run goes.

mod common;

use common::*;
use mlckpt::image::Image;
use mlckpt::image::format::{Backing, Manifest};

fn manifest(ckpt: &Ckpt) -> Manifest {
    Image::open(&ckpt.path).expect("image opens").manifest
}

/// Whether segment `shmid` exists on the machine.
fn segment_exists(shmid: i32) -> bool {
    let table = std::fs::read_to_string("/proc/sysvipc/shm").unwrap();
    table
        .lines()
        .skip(1)
        .any(|l| l.split_whitespace().nth(1) == Some(&shmid.to_string()))
}

/// Segment `shmid` attached in this process, read-write.
struct Attach(*mut u8);

impl Attach {
    fn new(shmid: i32) -> Attach {
        // SAFETY: shmat with a null address lets the kernel choose a free range.
        let at = unsafe { libc::shmat(shmid, std::ptr::null(), 0) };
        assert_ne!(
            at as isize,
            -1,
            "shmat({shmid}): {}",
            std::io::Error::last_os_error()
        );
        Attach(at.cast())
    }

    fn scribble(&self, len: usize) {
        // SAFETY: the attach maps at least `len` bytes read-write (the segment's size).
        unsafe { std::ptr::write_bytes(self.0, 0x5a, len) };
    }
}

impl Drop for Attach {
    fn drop(&mut self) {
        // SAFETY: the address shmat returned, detached once.
        unsafe { libc::shmdt(self.0.cast()) };
    }
}

#[test]
fn sysv_producer_and_consumer_continue_exactly() {
    let h = Harness::new("shm-sysv");
    let out = h.checkpoint_kill_restore(&Prog::c("sysv_job", &["60"]), 15);
    let m = manifest(&out.ckpt);
    assert_eq!(m.sysv_shm.len(), 2, "ring and tally: {:?}", m.sysv_shm);
    assert_eq!(m.members.len(), 1, "the consumer");
    for p in m.processes() {
        let attaches = p
            .regions
            .iter()
            .filter(|r| matches!(r.backing, Backing::SysvShm(_)))
            .count();
        assert_eq!(attaches, 2, "process {} attaches both", p.process.pid);
    }
    // The job removed the ring at its end; the tally, marked for removal again at
    // restore, went with the last detach. Neither may outlive the job.
    for s in &m.sysv_shm {
        assert!(
            !segment_exists(s.shmid),
            "segment {} outlived the job",
            s.shmid
        );
    }
}

#[test]
fn a_leftover_segment_is_replaced_and_one_in_use_is_refused() {
    let h = Harness::new("shm-sysv-leftover");
    let prog = Prog::c("sysv_job", &["50"]);
    let reference = h.plain(&prog);
    let Killed { pid, ckpt, before } = h.run_until_checkpoint_kill(&prog, 12);
    let m = manifest(&ckpt);
    let ring = m.sysv_shm.iter().find(|s| s.key != 0).expect("the ring");
    // The killed job's ring outlives it (it was not marked for removal). Someone changes
    // it and keeps it attached: the restore must neither use it nor pull it away.
    assert!(
        segment_exists(ring.shmid),
        "the ring outlived the killed job"
    );
    let attach = Attach::new(ring.shmid);
    attach.scribble(usize::try_from(ring.size).unwrap());
    let refused = h
        .restore(&ckpt.path, &prog)
        .finish(CMD_TIMEOUT)
        .expect_failure();
    let text = refused.output();
    assert!(
        text.contains(&format!("segment {}", ring.shmid)) && text.contains("in use"),
        "the restore should name the segment in use\n{}",
        refused.describe()
    );
    assert!(!pid_alive(pid), "a refused restore left a process");
    drop(attach);
    // Nobody attaches it now: it is the job's leftover, replaced by the checkpoint's.
    let after = h.restore_to_end(&ckpt.path, &prog, pid, |_, _| {});
    let reference = reference.finish(CMD_TIMEOUT).expect_code(0).stdout;
    assert_continuation(&reference, &before, &after, pid);
}

#[test]
fn a_posix_shm_object_lost_since_the_checkpoint_comes_back() {
    let h = Harness::new("shm-posix-lost");
    let prog = Prog::c("shmem", &["50"]);
    let reference = h.plain(&prog);
    let Killed { pid, ckpt, before } = h.run_until_checkpoint_kill(&prog, 12);
    let object = format!("/dev/shm/mlckpt-shmem-{pid}");
    let m = manifest(&ckpt);
    assert!(
        m.files.iter().any(|f| f.path == object),
        "the object's contents are in the image: {:?}",
        m.files.iter().map(|f| &f.path).collect::<Vec<_>>()
    );
    std::fs::remove_file(&object).expect("the object is there after the kill");
    let after = h.restore_to_end(&ckpt.path, &prog, pid, |_, _| {});
    let reference = reference.finish(CMD_TIMEOUT).expect_code(0).stdout;
    assert_continuation(&reference, &before, &after, pid);
}

/// An attach of which a part was unmapped cannot be made again (`shmat` maps the whole
/// segment): the checkpoint fails saying so, and the job runs on untouched.
#[test]
fn a_partly_unmapped_attach_is_refused_and_the_job_runs_on() {
    let h = Harness::new("shm-sysv-partial");
    let prog = Prog::c("sysv_job", &["40", "partial"]);
    let reference = h.plain(&prog);
    let mut run = h.run(&prog);
    run.wait_for_ticks(8);
    let pid = run.target_pid();
    let res = h.checkpoint_refused(pid);
    assert!(
        res.output().contains("part of it was unmapped"),
        "the refusal should say what is wrong\n{}",
        res.describe()
    );
    let run = run.finish(CMD_TIMEOUT).expect_code(0);
    let reference = reference.finish(CMD_TIMEOUT).expect_code(0);
    assert_continuation(&reference.stdout, &run.stdout, "", pid);
}

/// An increment stores only the segment pages that changed since its parent: a restore
/// from it fills the segments from both images.
#[test]
fn sysv_segments_restore_from_an_increment() {
    let h = Harness::new("shm-sysv-incr");
    h.set_config("keep = 10\n[interval]\nlocal = 0\n[image]\nfull_every = 4\n");
    let prog = Prog::c("sysv_job", &["50"]);
    let reference = h.plain(&prog);
    let mut run = h.run(&prog);
    run.wait_for_ticks(5);
    let pid = run.target_pid();
    h.checkpoint(pid, false);
    run.wait_for_ticks(15);
    let last = h.checkpoint(pid, true);
    let before = run.finish(CMD_TIMEOUT).expect_code(KILLED).stdout;
    wait_gone(pid);
    let m = manifest(&last);
    assert_eq!(m.chain_depth, 1, "the last image should be an increment");
    let from_parent = m
        .processes()
        .iter()
        .flat_map(|p| p.regions.iter())
        .filter(|r| matches!(r.backing, Backing::SysvShm(_)))
        .flat_map(|r| &r.runs)
        .any(|run| run.image.is_some());
    assert!(
        from_parent,
        "unchanged segment pages should come from the parent"
    );
    let after = h.restore_to_end(&last.path, &prog, pid, |_, _| {});
    let reference = reference.finish(CMD_TIMEOUT).expect_code(0).stdout;
    assert_continuation(&reference, &before, &after, pid);
}
