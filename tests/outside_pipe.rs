//! A job holding a pipe whose reader is outside the job (inherited from its launcher): the
//! checkpoint succeeds with a warning naming the fd, and after the restore the reader is
//! gone, as if it had exited: the job's writes fail with EPIPE, the rest of it is exact.
//! The same for a unix socket pair. (A file of its own: these tests hand fds to the
//! programs they start.)

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

/// The same policy for a unix socket pair whose other end stays with the launcher: the
/// job's end comes back with its peer gone, and its writes fail with EPIPE.
#[test]
fn socket_to_outside_the_job_loses_its_peer_at_restore() {
    use std::os::unix::process::CommandExt;
    let h = Harness::new("outside-socket");
    let (outside, job_end) = nix::sys::socket::socketpair(
        nix::sys::socket::AddressFamily::Unix,
        nix::sys::socket::SockType::Stream,
        None,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
    )
    .unwrap();
    let drain = std::thread::spawn(move || {
        let mut file = std::fs::File::from(outside);
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut file, &mut sink);
    });
    let program = compiled("outside_pipe").to_string_lossy().into_owned();
    let prog = Prog::c("outside_pipe", &[&FD.to_string(), "60"]);
    let job_fd = job_end.as_raw_fd();
    let mut cmd = std::process::Command::new(mlckpt_bin());
    cmd.args(["run", "--config"])
        .arg(&h.config)
        .args(["--job", &h.job, "--", &program, &FD.to_string(), "60"])
        .current_dir(h.run_dir());
    // SAFETY: dup2 is async-signal-safe; the closure touches no lock or allocation, and
    // `job_fd` stays open in this process until the child has started.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(job_fd, FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut run = Proc::spawn("mlckpt run", cmd, None);
    run.wait_for_ticks(12);
    let pid = run.target_pid();
    let ckpt = h.checkpoint(pid, true);
    let before = run.finish(CMD_TIMEOUT).expect_code(KILLED);
    assert!(
        before.stderr.contains(&format!("fd {FD} of process {pid}"))
            && before.stderr.contains("unix socket"),
        "the supervisor should warn about the socket\n{}",
        before.describe()
    );
    drop(job_end);
    wait_gone(pid);
    let after = h.restore_to_end(&ckpt.path, &prog, pid, |_, _| {});
    drain.join().unwrap();
    let ticks: Vec<&str> = after.lines().filter(|l| l.starts_with("tick ")).collect();
    assert!(
        ticks.len() > 5 && ticks.iter().all(|l| l.ends_with("write=EPIPE")),
        "after the restore every write should fail with EPIPE:\n{after}"
    );
    assert!(
        before
            .stdout
            .lines()
            .filter(|l| l.starts_with("tick "))
            .all(|l| l.ends_with("write=ok")),
        "before the checkpoint the writes should succeed:\n{}",
        before.stdout
    );
}
