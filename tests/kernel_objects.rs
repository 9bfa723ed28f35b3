//! (13) Kernel objects behind anonymous inodes and unlinked files: jobs using timerfd,
//! signalfd, eventfd and epoll together, a memfd and a deleted file as their state, and a
//! Python asyncio program with a subprocess continue after `checkpoint --kill` and restore
//! exactly as an uninterrupted run; a job holding a namespace fd and a removed working
//! directory is refused at checkpoint time, both named in one message, and runs on.

mod common;

use common::*;

/// Every program prints a tick every 50 ms for 4 s; the checkpoint comes in the middle.
const TICKS: &str = "80";
const CHECKPOINT_AT: usize = 35;

#[test]
fn timerfd_signalfd_eventfd_epoll_job_continues() {
    let h = Harness::new("events");
    h.checkpoint_kill_restore(&Prog::c("events_job", &[TICKS]), CHECKPOINT_AT);
}

#[test]
fn memfd_and_deleted_file_job_continues() {
    let h = Harness::new("memfd");
    h.checkpoint_kill_restore(&Prog::c("memfd_job", &[TICKS]), CHECKPOINT_AT);
}

#[test]
fn python_asyncio_job_with_subprocess_continues() {
    let Some(prog) = Prog::python("asyncio_job.py", &[TICKS]) else {
        return;
    };
    let h = Harness::new("asyncio");
    h.checkpoint_kill_restore(&prog, CHECKPOINT_AT);
}

#[test]
fn namespace_fd_and_removed_cwd_are_refused_together() {
    let h = Harness::new("ns-cwd");
    let prog = Prog::c("ns_cwd", &[TICKS]);
    let reference = h.plain(&prog);
    let mut run = h.run(&prog);
    run.wait_for_ticks(10);
    let pid = run.target_pid();
    let refused = h.checkpoint_refused(pid);
    // Every object is named at once: one message (from one `mlckpt:` line to the next)
    // names both, not a first refusal that stops at the first object.
    let removed_dir = format!("mlckpt-removed-cwd-{pid}");
    let names_both = messages(&refused.output())
        .iter()
        .any(|m| (m.contains("net:[") || m.contains("ns/net")) && m.contains(removed_dir.as_str()));
    assert!(
        names_both,
        "no message of the refusal names both the namespace fd and the removed working \
         directory ({removed_dir})\n{}",
        refused.describe()
    );
    // The job ran on untouched: its whole output (each tick checks both objects) is the
    // uninterrupted run's.
    let run = run.finish(CMD_TIMEOUT).expect_code(0);
    let reference = reference.finish(CMD_TIMEOUT).expect_code(0);
    assert_continuation(&reference.stdout, &run.stdout, "", pid);
}

/// The messages in a command's output: each starts at a line beginning with `mlckpt:` and
/// runs until the next one (a list of objects continues on indented lines).
fn messages(output: &str) -> Vec<String> {
    // A message is a line of mlckpt's (`<timestamp> mlckpt: ...`) and the indented lines
    // that continue it.
    let mut all: Vec<String> = Vec::new();
    for line in output.lines() {
        let starts = !line.starts_with(char::is_whitespace) && line.contains("mlckpt:");
        match all.last_mut() {
            Some(message) if !starts => {
                message.push('\n');
                message.push_str(line);
            }
            _ => all.push(line.to_owned()),
        }
    }
    all
}
