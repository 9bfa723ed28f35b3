//! A job holding a pipe whose reader is outside the job (inherited from its launcher): the
//! checkpoint succeeds with a warning naming the fd, and after the restore the reader is
//! gone, as if it had exited: the job's writes fail with EPIPE, the rest of it is exact.
//! (A file of its own: the pipe is inherited by every process this test binary starts.)

mod common;

use common::*;
use std::os::fd::AsRawFd;

const FD: i32 = 100;

#[test]
fn pipe_to_outside_the_job_loses_its_reader_at_restore() {
    let h = Harness::new("outside-pipe");
    let (reader, writer) = nix::unistd::pipe().unwrap();
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
