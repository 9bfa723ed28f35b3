//! Terminals (`objects::tty`). `tests/programs/tty_state.c` puts its terminal in a mode of
//! its own (no echo, ^G as VINTR, 40x100) and prints what it sees of it every tick.
//!
//! - A job that owns a pty pair: `mlckpt run -- script -qc tty_state /dev/null` (script
//!   holds the master, tty_state leads a session on the slave). After checkpoint --kill and
//!   restore the output is that of an uninterrupted run: same settings, still session
//!   leader, controlling terminal and foreground.
//! - A job whose terminal is outside it: `script -qc "mlckpt run -- tty_state"` and
//!   `script -qc "mlckpt restore IMAGE"` (another pty, in default mode and 0x0): the job
//!   goes on on the restoring terminal with its own settings, in the foreground, and is
//!   told (SIGWINCH) that the window size is the new terminal's.

mod common;

use common::*;
use std::process::Command;
use std::time::Instant;

fn script_bin() -> String {
    find_in_path("script")
        .expect("script (util-linux) is needed by the terminal tests")
        .to_string_lossy()
        .into_owned()
}

/// Output read from a pty: lines end in `\r\n`; mlckpt's own messages (on the same
/// terminal) and `winch` lines (only after a restore onto another size) are left out.
fn program_lines(text: &str) -> String {
    text.replace('\r', "")
        .lines()
        .filter(|l| mlckpt_line(l).is_none() && !l.starts_with("winch") && !l.is_empty())
        .map(|l| format!("{l}\n"))
        .collect()
}

/// The `pid <N>` line of the program, once it has printed it.
fn wait_program_pid(proc: &Proc) -> i32 {
    let began = Instant::now();
    loop {
        let out = proc.stdout().replace('\r', "");
        if let Some(pid) = out
            .lines()
            .find_map(|l| l.strip_prefix("pid ")?.trim().parse().ok())
        {
            return pid;
        }
        assert!(
            began.elapsed() < TICK_TIMEOUT,
            "no `pid` line:\n{out}\n{}",
            proc.stderr()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn wait_ticks(proc: &Proc, n: usize) {
    wait_until("tick lines", || {
        count_lines(&program_lines(&proc.stdout()), "tick") >= n
    });
}

#[test]
fn job_owning_a_pty_pair_comes_back_with_its_settings() {
    let h = Harness::new("tty-pair");
    let program = compiled("tty_state").to_string_lossy().into_owned();
    let prog = Prog {
        argv: vec![
            script_bin(),
            "-qc".into(),
            // `exec`: whatever $SHELL is (dash forks a last command), the program is
            // script's child and leads the pty's session.
            format!("exec {program} 40"),
            "/dev/null".into(),
        ],
        feed: None,
    };
    let reference = h.plain(&prog);
    let run = h.run(&prog);
    let pid = wait_program_pid(&run);
    wait_ticks(&run, 10);
    // The job's root is script, the program's parent.
    let (root, _) = parent_and_group(pid).expect("the program runs");
    let ckpt = h.checkpoint(root, true);
    let manifest = std::fs::read_to_string(ckpt.path.join("manifest.json")).unwrap();
    assert!(
        manifest.contains("\"pty_pair\""),
        "the image should hold a pty pair"
    );
    let before = run.finish(CMD_TIMEOUT).expect_code(KILLED).stdout;
    wait_gone(root);
    wait_gone(pid);
    let after = h.restore(&ckpt.path, &prog).finish(CMD_TIMEOUT);
    let after = after.expect_code(0).stdout;
    let reference = reference.finish(CMD_TIMEOUT).expect_code(0).stdout;
    let last = program_lines(&after);
    assert!(
        last.lines()
            .filter(|l| l.starts_with("tick"))
            .all(|l| l.contains("leader=1 ctty=1 fg=1") && l.contains("vintr=7")),
        "after the restore the program should lead its session on its pty, in the \
         foreground, with its settings:\n{last}"
    );
    assert_continuation(
        &program_lines(&reference),
        &program_lines(&before),
        &last,
        pid,
    );
}

/// `script -qc "ARGS" /dev/null` with `ARGS` a mlckpt command line: mlckpt and the job run
/// on a new terminal (script's pty).
fn on_a_terminal(h: &Harness, label: &str, args: &[&str]) -> Proc {
    let mut line = mlckpt_bin().to_owned();
    for a in args {
        line.push(' ');
        line.push_str(a);
    }
    let mut cmd = Command::new(script_bin());
    cmd.args(["-qc", &line, "/dev/null"])
        .current_dir(h.run_dir());
    Proc::spawn(label, cmd, None)
}

/// `mlckpt run -- tty_state TICKS` on a terminal, checkpointed with --kill after `at`
/// ticks: the program's PID, the image, what the terminal showed.
fn checkpoint_on_a_terminal(h: &Harness, ticks: &str, at: usize) -> (i32, Ckpt, String) {
    let program = compiled("tty_state").to_string_lossy().into_owned();
    let config = h.config.to_string_lossy().into_owned();
    let run = on_a_terminal(
        h,
        "mlckpt run on a terminal",
        &[
            "run", "--config", &config, "--job", &h.job, "--", &program, ticks,
        ],
    );
    let pid = wait_program_pid(&run);
    wait_ticks(&run, at);
    let ckpt = h.checkpoint(pid, true);
    let before = run.finish(CMD_TIMEOUT).stdout;
    wait_gone(pid);
    (pid, ckpt, before)
}

#[test]
fn job_on_a_terminal_is_handed_the_restoring_terminal() {
    let h = Harness::new("tty-outside");
    let program = compiled("tty_state").to_string_lossy().into_owned();
    let config = h.config.to_string_lossy().into_owned();
    // Not the shell's last command: it forks the program, which does not lead the session,
    // as under mlckpt.
    let reference = h.plain(&Prog {
        argv: vec![
            script_bin(),
            "-qc".into(),
            format!("{program} 40; true"),
            "/dev/null".into(),
        ],
        feed: None,
    });
    let (pid, ckpt, before) = checkpoint_on_a_terminal(&h, "40", 10);
    let image = ckpt.path.to_string_lossy().into_owned();
    let restore = on_a_terminal(
        &h,
        "mlckpt restore on a terminal",
        &["restore", &image, "--config", &config],
    );
    let after = restore.finish(CMD_TIMEOUT).expect_code(0).stdout;
    let reference = reference.finish(CMD_TIMEOUT).expect_code(0).stdout;
    let clean = after.replace('\r', "");
    assert!(
        clean.contains("winch rows=0 cols=0"),
        "the job should be told the new terminal's size (0x0):\n{clean}"
    );
    let last = program_lines(&after);
    assert!(
        last.lines()
            .filter(|l| l.starts_with("tick"))
            .all(|l| l.contains("vintr=7") && l.contains("ctty=1 fg=1")),
        "after the restore the job should have its settings on the restoring terminal, \
         in the foreground:\n{last}"
    );
    assert_continuation(
        &program_lines(&reference),
        &program_lines(&before),
        &last,
        pid,
    );
}

/// Restored without a terminal, the job gets the restoring command's streams and the
/// restore says so.
#[test]
fn job_on_a_terminal_restored_without_one_is_warned() {
    let h = Harness::new("tty-none");
    let (_, ckpt, _) = checkpoint_on_a_terminal(&h, "30", 5);
    let after = h
        .restore(&ckpt.path, &Prog::c("tty_state", &[]))
        .finish(CMD_TIMEOUT)
        .expect_code(0);
    assert!(
        after
            .stderr
            .contains("was a terminal; this restore has none"),
        "{}",
        after.describe()
    );
    assert!(
        after
            .stdout
            .lines()
            .filter(|l| l.starts_with("tick"))
            .all(|l| l.contains("ctty=0 fg=0")),
        "without a terminal the job's terminal requests fail:\n{}",
        after.stdout
    );
}

/// A terminal mlckpt cannot restore (a pts whose master is outside the job and that is not
/// its standard stream, the console) fails the checkpoint, every such fd named; the job
/// runs on.
#[test]
fn other_terminals_are_refused_all_listed() {
    let h = Harness::new("tty-refused");
    let pty = nix::pty::openpty(None, None).expect("a pty for the test");
    // The job must not inherit the master: the pair would then be its own.
    for fd in [&pty.master, &pty.slave] {
        nix::fcntl::fcntl(
            fd,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        )
        .unwrap();
    }
    let slave = std::fs::read_link(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&pty.slave)
    ))
    .unwrap();
    let sleep = find_in_path("sleep")
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let line = format!(
        "echo pid $$; exec 5<>{} 6</dev/console; exec {sleep} 60",
        slave.display()
    );
    let bash = find_in_path("bash").unwrap().to_string_lossy().into_owned();
    let mut run = h.run(&Prog {
        argv: vec![bash, "-c".into(), line],
        feed: None,
    });
    let pid = run.target_pid();
    wait_until("the fds are open", || {
        std::fs::read_link(format!("/proc/{pid}/fd/6")).is_ok()
    });
    let refused = h.checkpoint_refused(pid);
    let text = refused.output();
    assert!(
        text.contains("fd 5") && text.contains("pty master is outside the job"),
        "{text}"
    );
    assert!(text.contains("fd 6") && text.contains("console"), "{text}");
    run.signal(nix::sys::signal::Signal::SIGKILL);
    drop(pty);
}

/// A job with job control (`bash` with `set -m` runs the program in a process group of its
/// own, in the foreground): after the restore on another terminal that group has the
/// foreground again, with the program's settings.
#[test]
fn foreground_group_of_the_job_comes_back() {
    let h = Harness::new("tty-jobctl");
    let program = compiled("tty_state").to_string_lossy().into_owned();
    let config = h.config.to_string_lossy().into_owned();
    let line = format!("'set -m; {program} 40; true'");
    let run = on_a_terminal(
        &h,
        "mlckpt run on a terminal",
        &[
            "run", "--config", &config, "--job", &h.job, "--", "bash", "-c", &line,
        ],
    );
    let pid = wait_program_pid(&run);
    wait_ticks(&run, 5);
    let (root, group) = parent_and_group(pid).expect("the program runs");
    assert_eq!(group, pid, "bash -m gives the program a group of its own");
    let ckpt = h.checkpoint(root, true);
    run.finish(CMD_TIMEOUT);
    wait_gone(pid);
    let image = ckpt.path.to_string_lossy().into_owned();
    let restore = on_a_terminal(
        &h,
        "mlckpt restore",
        &["restore", &image, "--config", &config],
    );
    let after = program_lines(&restore.finish(CMD_TIMEOUT).expect_code(0).stdout);
    let ticks: Vec<&str> = after.lines().filter(|l| l.starts_with("tick")).collect();
    assert!(
        !ticks.is_empty()
            && ticks
                .iter()
                .all(|l| l.contains("vintr=7") && l.contains("ctty=1 fg=1")),
        "the program's group should be in the foreground again:\n{after}"
    );
}
