//! A job holding a pipe whose reader is outside the job (inherited from its launcher): the
//! checkpoint succeeds with a warning naming the fd, and after the restore the reader is
//! gone, as if it had exited: the job's writes fail with EPIPE, the rest of it is exact.
//! (A file of its own: the pipe is inherited by every process this test binary starts.)

mod common;

use common::*;
use std::os::fd::AsRawFd;

const FD: i32 = 100;

/// A job writing to a pipe whose reader is this test (outside the job), and the thread
/// that drains it until every writer is gone; the write end stays open in the test until
/// it drops the returned fd.
fn job_with_outside_pipe() -> (Prog, std::os::fd::OwnedFd, std::thread::JoinHandle<()>) {
    // Close-on-exec: no program started from here may hold it but through the script.
    let (reader, writer) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    let drain = std::thread::spawn(move || {
        let mut file = std::fs::File::from(reader);
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut file, &mut sink);
    });
    // The job opens the pipe's write end at fd FD itself (through this process's fd link),
    // then becomes the program: the pipe's reader, this test, is outside the job.
    let program = compiled("outside_pipe").to_string_lossy().into_owned();
    let script = format!(
        "exec {FD}>/proc/{}/fd/{}; exec {program} {FD} 60",
        std::process::id(),
        writer.as_raw_fd()
    );
    let bash = find_in_path("bash").unwrap().to_string_lossy().into_owned();
    let prog = Prog {
        argv: vec![bash, "-c".into(), script],
        feed: None,
    };
    (prog, writer, drain)
}

#[test]
fn pipe_to_outside_the_job_loses_its_reader_at_restore() {
    let h = Harness::new("outside-pipe");
    let (prog, writer, drain) = job_with_outside_pipe();
    let reference = h.plain(&prog);
    let mut run = h.run(&prog);
    run.wait_for_ticks(15);
    let pid = run.target_pid();
    let ckpt = h.checkpoint(pid, true);
    let before = run.finish(CMD_TIMEOUT).expect_code(KILLED);
    assert!(
        before.stderr.contains(&format!("fd {FD} of process {pid}"))
            && before.stderr.contains("outside the job"),
        "the supervisor should warn about the pipe\n{}",
        before.describe()
    );
    wait_gone(pid);
    // Only the reference run still writes to the pipe: the drain ends with it.
    drop(writer);
    let after = h.restore_to_end(&ckpt.path, &prog, pid, |_, _| {});
    let reference = reference.finish(CMD_TIMEOUT).expect_code(0).stdout;
    drain.join().unwrap();
    assert!(
        after.lines().filter(|l| l.starts_with("tick ")).count() > 5
            && after
                .lines()
                .filter(|l| l.starts_with("tick "))
                .all(|l| l.ends_with("write=EPIPE")),
        "after the restore every write should fail with EPIPE:\n{after}"
    );
    let expected_after = after.replace("write=EPIPE", "write=ok");
    assert_continuation(&reference, &before.stdout, &expected_after, pid);
}

/// With `[image] outside_peers = "refuse"` the same job cannot be checkpointed: the
/// supervisor says so when it starts (the job inherits the pipe from its launcher here, so
/// it has it from the start), the checkpoint fails naming the fd, the job runs on.
#[test]
fn outside_pipe_refused_on_request() {
    let h = Harness::new("outside-pipe-refused");
    h.set_config("[interval]\nlocal = 0\n[image]\noutside_peers = \"refuse\"\n");
    let (prog, writer, drain) = job_with_outside_pipe();
    let reference = h.plain(&prog);
    let program = compiled("outside_pipe").to_string_lossy().into_owned();
    let launcher = format!(
        "exec {FD}>/proc/{}/fd/{}; exec {} run --config {} --job {} -- {program} {FD} 60",
        std::process::id(),
        writer.as_raw_fd(),
        mlckpt_bin(),
        h.config.display(),
        h.job,
    );
    let mut cmd = std::process::Command::new("bash");
    cmd.args(["-c", &launcher]).current_dir(h.run_dir());
    let mut run = Proc::spawn("mlckpt run", cmd, None);
    run.wait_for_ticks(10);
    let pid = run.target_pid();
    let res = h.checkpoint_refused(pid);
    assert!(
        res.output().contains(&format!("fd {FD} of process {pid}"))
            && res.output().contains("outside_peers"),
        "the refusal should name the fd and the setting\n{}",
        res.describe()
    );
    let run = run.finish(CMD_TIMEOUT).expect_code(0);
    assert!(
        run.stderr.contains("will fail"),
        "the supervisor should say at start that checkpoints will fail\n{}",
        run.describe()
    );
    drop(writer);
    let reference = reference.finish(CMD_TIMEOUT).expect_code(0).stdout;
    drain.join().unwrap();
    assert_continuation(&reference, &run.stdout, "", pid);
}
