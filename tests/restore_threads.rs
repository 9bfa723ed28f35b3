//! Issue 4: multi-threaded processes. Every thread is checkpointed and recreated with its
//! TID; thread-local storage, per-thread vector registers, futexes (mutexes, condition
//! variables, joins) and threads blocked in syscalls or spinning in user code all carry on.
//!
//! `threads.c` checks TLS, gettid() and ymm9/zmm25 of every worker itself (`ok=1` on every
//! tick line) and ends with `final joined=N new_thread=1 tids_ok=1`; `blocked.c` has threads
//! waiting in a mutex, a condition variable, a timed wait, a join, sleep(), a pipe read and
//! a user-space loop, and prints how often each one was woken.
//!
//! Covered: (1) 16 workers continue identically, (2) TLS, (3) AVX/AVX-512 per thread,
//! (5) gettid — threads.c's own checks, plus the restored process's `/proc/PID/task` is the
//! original's TID set; (4) every pre-existing thread joinable and a new thread after the
//! restore; blocked threads woken exactly as without the checkpoint; (6) ten checkpoint ->
//! kill -> restore cycles in one run; (7) 4, 16 and 64 threads, with their freeze times;
//! (8) checkpoints while threads are being created.

mod common;

use std::collections::BTreeSet;

use common::*;

/// threads.c needs AVX2 (it checks ymm9 in every worker).
fn no_avx2() -> bool {
    if cpu_has("avx2") {
        return false;
    }
    eprintln!("note: CPU has no AVX2; threads.c cannot run, skipping");
    true
}

fn threads_prog(workers: usize, ticks: usize) -> Prog {
    Prog::c("threads", &[&workers.to_string(), &ticks.to_string()])
}

/// Every tick line of threads.c's output (the whole run, before + after) says `ok=1`, there
/// are `ticks` of them, and the last line is the final line with every worker joined.
fn assert_threads_ok(output: &str, workers: usize, ticks: usize) {
    let tick_lines: Vec<&str> = output.lines().filter(|l| l.starts_with("tick ")).collect();
    assert_eq!(tick_lines.len(), ticks, "tick lines:\n{output}");
    for line in &tick_lines {
        assert!(
            line.contains(&format!(" workers={workers} ok=1 broken=-")),
            "a thread's TLS, gettid, ymm9/zmm25 or the shared counters broke: {line:?}\n\
             {output}"
        );
    }
    assert_eq!(
        output.lines().last(),
        Some(format!("final joined={workers} new_thread=1 tids_ok=1").as_str()),
        "the threads that existed before the checkpoint must be joinable, and a new thread \
         creatable, after the restore:\n{output}"
    );
}

/// The TIDs of `pid` once it has `count` threads (threads.c: workers + checker + main).
fn tids_when(pid: i32, count: usize) -> BTreeSet<i32> {
    let mut tids = BTreeSet::new();
    wait_until(&format!("{count} threads in /proc/{pid}/task"), || {
        tids = task_tids(pid);
        tids.len() == count
    });
    assert!(tids.contains(&pid), "the leader's TID is its PID: {tids:?}");
    tids
}

/// [`Harness::checkpoint_kill_restore`] for threads.c with `workers`, that also records the
/// TIDs in `/proc/PID/task` just before the checkpoint and checks the restored process has
/// exactly the same ones while it runs.
fn threads_cycle(h: &Harness, workers: usize, ticks: usize, at_tick: usize) -> Outcome {
    let prog = threads_prog(workers, ticks);
    let out = h.checkpoint_kill_restore_around(
        &prog,
        at_tick,
        |pid| tids_when(pid, workers + 2),
        |restore, pid, tids| {
            restore.wait_for_ticks(1);
            assert_eq!(
                &task_tids(pid),
                tids,
                "the restored process must have the original's threads, with their TIDs"
            );
        },
    );
    assert_threads_ok(&format!("{}{}", out.before, out.after), workers, ticks);
    out
}

/// (1)-(5): 16 workers checkpointed after 15 ticks run on for 45 more, every tick `ok=1`,
/// same TIDs, all joinable at the end, a new thread can be created.
#[test]
fn sixteen_threads_continue_with_tls_avx_and_tids() {
    if no_avx2() {
        return;
    }
    if !cpu_has("avx512f") {
        eprintln!("note: CPU has no AVX-512F; threads.c checks ymm9 only");
    }
    let h = Harness::new("threads16");
    let out = threads_cycle(&h, 16, 60, 15);
    assert!(
        out.after.lines().filter(|l| l.starts_with("tick ")).count() >= 40,
        "the restored process should run many ticks:\n{}",
        out.after
    );
}

/// (4) Threads blocked in a mutex, condition variables (plain and timed), a join, sleep(),
/// a pipe read, and one spinning in user code: after the restore each is woken exactly as
/// often as in an uninterrupted run — no lost or extra wakeup, no hang, no failed restart.
#[test]
fn blocked_threads_wake_up_as_before() {
    let h = Harness::new("blocked");
    let prog = Prog::c("blocked", &["40"]);
    // Tick 15: the sleep(1) started at tick 10 is still running, a sleeper is being joined.
    let out = h.checkpoint_kill_restore_with(&prog, 15, |restore, pid| {
        restore.wait_for_ticks(1);
        // main + mutex, cond, timed, join, sleep, pipe, spin + one or two sleepers (the
        // next one is created just before the current one may end)
        let n = task_tids(pid).len();
        assert!(
            (9..=10).contains(&n),
            "the restored process has {n} threads, expected 9 or 10"
        );
    });
    assert_caught_blocked(&out.ckpt.path);
    let all = format!("{}{}", out.before, out.after);
    assert!(
        all.lines()
            .filter(|l| l.starts_with("tick "))
            .all(|l| l.ends_with("hung=-")),
        "{all}"
    );
    assert_eq!(
        all.lines().last(),
        Some("final joined=7 mutex=40 cond=40 timed=40 join=13 sleep=5 pipe=40"),
        "{all}"
    );
}

/// The image of blocked.c (taken just after a tick line, while the main thread sleeps)
/// caught its threads where the test means them to be: futex waits that are restarted
/// (mutex, condition variable, join), a timed futex wait and sleeps that return EINTR, the
/// read() of stdin restarted, and the spinning thread outside any syscall.
fn assert_caught_blocked(image: &std::path::Path) {
    let text = std::fs::read_to_string(image.join("manifest.json")).unwrap();
    let manifest: serde_json::Value = serde_json::from_str(&text).unwrap();
    let threads = manifest["threads"]
        .as_array()
        .expect("manifest has threads[]");
    let states: Vec<Option<(u64, String)>> = threads
        .iter()
        .map(|t| {
            let call = &t["syscall"];
            Some((call["nr"].as_u64()?, call["resume"].as_str()?.to_owned()))
        })
        .collect();
    let count = |nr: i64, resume: &str| {
        states
            .iter()
            .flatten()
            .filter(|(n, r)| *n as i64 == nr && r == resume)
            .count()
    };
    let (futex, nanosleep, read) = (libc::SYS_futex, libc::SYS_clock_nanosleep, libc::SYS_read);
    let caught = [
        (
            "restarted futex waits (mutex, cond, join)",
            count(futex, "restart") >= 3,
        ),
        (
            "a timed futex wait returning EINTR",
            count(futex, "eintr") >= 1,
        ),
        (
            "clock_nanosleep returning EINTR (main)",
            count(nanosleep, "eintr") >= 1,
        ),
        ("a restarted read (stdin)", count(read, "restart") == 1),
        (
            "a thread outside syscalls (spin)",
            states.iter().any(Option::is_none),
        ),
    ];
    for (what, ok) in caught {
        assert!(
            ok,
            "the checkpoint did not catch {what}; threads' syscalls: {states:?}"
        );
    }
}

/// (6) One run of threads.c checkpointed with --kill and restored ten times in a row (each
/// restored process runs a few ticks and is checkpointed and killed in turn): the output of
/// all the pieces together is the uninterrupted run's, and the TIDs never change.
#[test]
fn ten_checkpoint_kill_restore_cycles() {
    if no_avx2() {
        return;
    }
    const CYCLES: usize = 10;
    const WORKERS: usize = 8;
    const FIRST: usize = 5;
    const EVERY: usize = 3;
    const TICKS: usize = FIRST + (CYCLES - 1) * EVERY + 10;
    let h = Harness::new("threads-cycles");
    let prog = threads_prog(WORKERS, TICKS);
    let reference = h.plain(&prog);

    let mut run = h.run(&prog);
    run.wait_for_ticks(FIRST);
    let pid = run.target_pid();
    let tids = tids_when(pid, WORKERS + 2);
    let mut ckpt = h.checkpoint(pid, true);
    let before = run.finish(CMD_TIMEOUT).expect_code(KILLED).stdout;
    wait_gone(pid);

    let mut after = String::new();
    for cycle in 2..=CYCLES {
        let mut restore = h.restore(&ckpt.path, &prog);
        restore.set_target(pid);
        restore.wait_for_ticks(EVERY);
        assert_eq!(task_tids(pid), tids, "TIDs after restore {}", cycle - 1);
        let next = h.checkpoint(pid, true);
        assert!(
            next.seq > ckpt.seq,
            "checkpoint {cycle}: seq {} after {}",
            next.seq,
            ckpt.seq
        );
        let piece = restore.finish(CMD_TIMEOUT).expect_code(KILLED).stdout;
        wait_gone(pid);
        after.push_str(&piece);
        ckpt = next;
    }
    let last = h.restore_to_end(&ckpt.path, &prog, pid, |restore, pid| {
        restore.wait_for_ticks(1);
        assert_eq!(task_tids(pid), tids, "TIDs after restore {CYCLES}");
    });
    after.push_str(&last);

    let reference = reference.finish(CMD_TIMEOUT).expect_code(0).stdout;
    assert_continuation(&reference, &before, &after, pid);
    assert_threads_ok(&format!("{before}{after}"), WORKERS, TICKS);
}

/// (7) 4, 16 and 64 threads checkpoint and restore correctly (same TIDs, every tick ok, all
/// joined); prints the freeze time of each (`cargo test -- --nocapture` shows the table).
#[test]
fn many_threads_and_freeze_times() {
    if no_avx2() {
        return;
    }
    let mut table = Vec::new();
    for workers in [4, 16, 64] {
        let h = Harness::new(&format!("threads{workers}"));
        let out = threads_cycle(&h, workers, 20, 6);
        table.push((
            workers,
            out.ckpt.freeze_ms,
            out.ckpt.total_ms,
            out.ckpt.bytes,
        ));
    }
    eprintln!("threads  workers  freeze_ms  total_ms  image bytes");
    for (workers, freeze, total, bytes) in table {
        eprintln!(
            "{:>7}  {workers:>7}  {freeze:>9.1}  {total:>8.1}  {bytes:>11}",
            workers + 2
        );
    }
}

/// (8) Checkpoints that land while threads are being born: spawner.c creates and joins
/// threads without pause, so freezes catch its main thread inside clone(), where a pending
/// stop request is used up by the clone event and the newborn thread is already attached.
/// Every checkpoint must finish (the run is not frozen for good), and the last one restores.
#[test]
fn checkpoints_while_threads_are_born() {
    const TICKS: usize = 1500;
    let h = Harness::new("spawner");
    let prog = Prog::c("spawner", &[&TICKS.to_string()]);
    let reference = h.plain(&prog);
    let mut run = h.run(&prog);
    run.wait_for_ticks(10);
    let pid = run.target_pid();
    for i in 0..12 {
        h.checkpoint(pid, false);
        run.wait_for_ticks(12 + 2 * i);
    }
    let last = h.checkpoint(pid, true);
    let before = run.finish(CMD_TIMEOUT).expect_code(KILLED).stdout;
    wait_gone(pid);
    let after = h.restore_to_end(&last.path, &prog, pid, |_, _| {});
    let reference = reference.finish(CMD_TIMEOUT).expect_code(0).stdout;
    assert_continuation(&reference, &before, &after, pid);
}
