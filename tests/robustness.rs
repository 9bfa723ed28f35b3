//! Robustness (issue 11): a checkpoint that meets a hostile environment (a full disk, a
//! flood of real-time signals, an unsupervised multi-threaded target killed after its
//! image, a runtime directory someone else made) either succeeds or fails cleanly, and the
//! job and its supervisor go on.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;

/// `mlckpt checkpoint PID --json --config CFG --job JOB [--kill]` (no supervisor: mlckpt
/// seizes the process itself), which must end within `limit` and succeed; the image path.
fn direct_checkpoint(h: &Harness, pid: i32, kill: bool, limit: Duration) -> PathBuf {
    let pid = pid.to_string();
    let config = h.config.to_str().unwrap();
    let mut args = vec![
        "checkpoint",
        &pid,
        "--json",
        "--config",
        config,
        "--job",
        &h.job,
    ];
    if kill {
        args.push("--kill");
    }
    let res = h.start(&args, None).finish(limit).expect_code(0);
    let report: serde_json::Value = serde_json::from_str(res.stdout.trim())
        .unwrap_or_else(|e| panic!("checkpoint --json: not JSON: {e}\n{}", res.describe()));
    let path = PathBuf::from(report["path"].as_str().unwrap_or_default());
    assert!(
        path.join("manifest.json").is_file(),
        "no image at {path:?}\n{}",
        res.describe()
    );
    path
}

/// The number after `key=` on the last line of `text` that has it.
fn last_value(text: &str, key: &str) -> Option<u64> {
    let key = format!("{key}=");
    text.lines().rev().find_map(|line| {
        let at = line.find(&key)? + key.len();
        line[at..].split_whitespace().next()?.parse().ok()
    })
}

/// Item 2: `checkpoint --kill` of a multi-threaded process nobody supervises must not hang
/// (the leader's exit is only reported once its threads are reaped), and the image restores.
#[test]
fn checkpoint_kill_of_an_unsupervised_threaded_process_ends() {
    let h = Harness::new("killthreads");
    let prog = Prog::c("threads", &["4", "60"]);
    let mut target = h.unsupervised(&prog);
    target.wait_for_ticks(5);
    let pid = target.target_pid();
    let image = direct_checkpoint(&h, pid, true, Duration::from_secs(30));
    target.finish(CMD_TIMEOUT).expect_code(KILLED);
    wait_gone(pid);
    let after = h.restore_to_end(&image, &prog, pid, |_, _| {});
    assert!(
        after.contains("final joined=4 new_thread=1 tids_ok=1"),
        "the restored process did not finish cleanly:\n{after}"
    );
}

/// How the flood tests reach the job: directly (mlckpt seizes it) or under `mlckpt run`
/// (the supervisor's write tracking and pre-copy stop the job too).
#[derive(Clone, Copy)]
enum Supervision {
    None,
    Run,
}

/// Item 3: checkpoints taken while another process floods the job with queued real-time
/// signals all succeed, and every signal sent is delivered exactly once.
fn realtime_signal_flood(name: &str, how: Supervision) {
    const SIGNALS: &str = "3000";
    let h = Harness::new(name);
    let prog = Prog::c("rtcount", &["700"]);
    let mut target = match how {
        Supervision::None => h.unsupervised(&prog),
        Supervision::Run => h.run(&prog),
    };
    let pid = target.target_pid();
    target.wait_for_ticks(3);
    let mut send = Command::new(compiled("rtsend"));
    send.args([&pid.to_string(), SIGNALS, "1000"]);
    let sender = Proc::spawn("rtsend", send, None);
    wait_until("the first signals", || {
        last_value(&target.stdout(), "received").is_some_and(|n| n > 0)
    });
    let mut images = Vec::new();
    for _ in 0..6 {
        images.push(match how {
            Supervision::None => direct_checkpoint(&h, pid, false, CMD_TIMEOUT),
            Supervision::Run => h.checkpoint(pid, false).path,
        });
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        !sender.stdout().contains("sent"),
        "the sender finished before the checkpoints did: the test proves nothing; send more"
    );
    let sent = sender.finish(CMD_TIMEOUT).expect_code(0);
    let sent: u64 = sent
        .stdout
        .trim()
        .strip_prefix("sent ")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("rtsend printed no count\n{}", sent.describe()));
    let run = target.finish(CMD_TIMEOUT).expect_code(0);
    let received = last_value(&run.stdout, "final received");
    assert_eq!(
        received,
        Some(sent),
        "signals sent and received differ after {} checkpoints\n{}",
        images.len(),
        run.describe()
    );
}

#[test]
fn checkpoints_during_a_realtime_signal_flood_lose_no_signal() {
    realtime_signal_flood("rtflood", Supervision::None);
}

#[test]
fn supervised_checkpoints_during_a_realtime_signal_flood_lose_no_signal() {
    realtime_signal_flood("rtflood-run", Supervision::Run);
}

/// A small tmpfs mounted for one test; unmounted (lazily: a process may still hold a file
/// there) when dropped.
struct SmallDisk(PathBuf);

impl SmallDisk {
    /// Mounts a tmpfs of `size` (`mount -o size=`) on `dir`; None, with the reason printed,
    /// where mounting is not permitted (no CAP_SYS_ADMIN, a container).
    fn mount(dir: &Path, size: &str) -> Option<SmallDisk> {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .output()
            .expect("run mount");
        if !out.status.success() {
            eprintln!(
                "note: cannot mount a tmpfs ({}); skipping this test",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        Some(SmallDisk(dir.to_path_buf()))
    }

    /// Fills the file system up to about `free` bytes left; returns the filler file.
    fn fill_leaving(&self, free: u64) -> PathBuf {
        let filler = self.0.join("filler");
        let mut file = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0xa5u8; 64 << 10];
        while file.write_all(&chunk).is_ok() {}
        let len = file.metadata().unwrap().len();
        file.set_len(len.saturating_sub(free)).unwrap();
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Item 1: a checkpoint that meets a full disk fails with a message naming the cause and
/// the directory; the supervisor goes on supervising, the older image stays valid, no
/// partial image is left, and once there is space again the next checkpoint (SIGTERM's)
/// works.
#[test]
fn a_full_disk_fails_one_checkpoint_and_the_supervisor_goes_on() {
    let h = Harness::new("fulldisk");
    // 64 MiB of memory: two images fit in 160 MiB, the second one does not once it is
    // filled; written in many batches, so the writer thread's error meets later batches.
    let Some(disk) = SmallDisk::mount(&h.store, "160m") else {
        return;
    };
    // Full images: the failing one is read while the job runs (pre-copy), batch after
    // batch, where a write error used to be taken for an unreadable page.
    h.set_config("[interval]\nlocal = 0\n[image]\nfull_every = 1\n");
    let prog = Prog::c("memory", &["64", "400"]);
    let mut run = h.run(&prog);
    let pid = run.target_pid();
    run.wait_for_ticks(5);
    let first = h.checkpoint(pid, false);

    let filler = disk.fill_leaving(256 << 10);
    let failed = h.mlckpt(&["checkpoint", &pid.to_string()]).expect_failure();
    let said = failed.output();
    let dir = h.rank_dir().display().to_string();
    for part in ["ENOSPC", "no space left", &dir, "free space"] {
        assert!(
            said.to_lowercase().contains(&part.to_lowercase()),
            "the error should name {part:?}\n{}",
            failed.describe()
        );
    }
    assert!(pid_alive(pid), "the failed checkpoint ended the job");
    assert!(
        run.stderr().contains("ENOSPC"),
        "the supervisor should report the failure\n{}",
        run.stderr()
    );
    let partial: Vec<PathBuf> = h
        .images()
        .into_iter()
        .filter(|p| *p != first.path)
        .collect();
    assert!(partial.is_empty(), "the failed checkpoint left {partial:?}");
    h.mlckpt(&["verify".as_ref(), first.path.as_os_str()])
        .expect_code(0);

    // Space again: the supervisor, still there, takes the SIGTERM checkpoint and ends the job.
    std::fs::remove_file(filler).unwrap();
    run.wait_for_ticks(30);
    run.signal(Signal::SIGTERM);
    let run = run.finish(CMD_TIMEOUT).expect_code(STOPPED);
    wait_gone(pid);
    let seqs = image_seqs(&h.rank_dir());
    assert_eq!(
        seqs.len(),
        2,
        "the first image and SIGTERM's\n{}",
        run.describe()
    );
    let last = h.rank_dir().join(format!("ckpt-{:06}", seqs[1]));
    h.mlckpt(&["verify".as_ref(), last.as_os_str()])
        .expect_code(0);
    drop(disk);
}

/// `XDG_RUNTIME_DIR` for a test's own runtime directory (`<it>/mlckpt`), made here.
fn runtime_env(h: &Harness) -> (PathBuf, String) {
    let xdg = h.dir.path().join("xdg");
    std::fs::create_dir_all(&xdg).unwrap();
    let text = xdg.to_str().unwrap().to_owned();
    (xdg.join("mlckpt"), text)
}

/// Item 4: a runtime directory another user made (and anybody may write to) is refused
/// before the job starts, with its owner, mode and the fix; a missing one is made private.
#[test]
fn a_runtime_dir_of_another_user_is_refused() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let h = Harness::new("rundir");
    let (dir, xdg) = runtime_env(&h);
    std::fs::create_dir(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let env = [("XDG_RUNTIME_DIR", xdg.as_str())];
    let prog = Prog::c("memory", &["8", "10"]);
    let refused = h
        .run_with(&[], &env, &prog)
        .finish(CMD_TIMEOUT)
        .expect_failure();
    let said = refused.output();
    let dir_text = dir.display().to_string();
    for part in [
        dir_text.as_str(),
        "uid 65534",
        "mode 777",
        "XDG_RUNTIME_DIR",
    ] {
        assert!(
            said.contains(part),
            "the refusal should name {part:?}\n{}",
            refused.describe()
        );
    }
    assert!(
        !said.contains("started"),
        "the job was started anyway\n{}",
        refused.describe()
    );

    std::fs::remove_dir(&dir).unwrap();
    h.run_with(&[], &env, &prog)
        .finish(CMD_TIMEOUT)
        .expect_code(0);
    let meta = std::fs::metadata(&dir).unwrap();
    assert_eq!(
        (meta.uid(), meta.mode() & 0o777),
        (nix::unistd::getuid().as_raw(), 0o700),
        "the runtime directory mlckpt made is not private"
    );
}

/// Item 4: `mlckpt checkpoint` does not hand a request to whatever listens at the control
/// socket's path: a process that is not the target's supervisor is named and refused.
#[test]
fn checkpoint_does_not_trust_a_socket_held_by_another_process() {
    use std::os::unix::fs::DirBuilderExt;
    let h = Harness::new("fakesock");
    let (dir, xdg) = runtime_env(&h);
    std::fs::DirBuilder::new().mode(0o700).create(&dir).unwrap();
    let mut target = h.unsupervised(&Prog::c("memory", &["8", "300"]));
    let pid = target.target_pid();
    let socket = dir.join(format!("sup-{pid}.sock"));
    let mut listen = Command::new(compiled("unixlisten"));
    listen.arg(&socket);
    let holder = Proc::spawn("unixlisten", listen, None);
    wait_until("the impostor's socket", || socket.exists());
    let pid_text = pid.to_string();
    let config = h.config.to_str().unwrap();
    let args = ["checkpoint", &pid_text, "--config", config, "--job", &h.job];
    let env = [("XDG_RUNTIME_DIR", xdg.as_str())];
    let res = h
        .start_with_env(&args, &env, None)
        .finish(CMD_TIMEOUT)
        .expect_failure();
    let said = res.output();
    let holder_pid = holder.child_pid().to_string();
    for part in [
        "refusing to talk to",
        &socket.display().to_string(),
        &holder_pid,
    ] {
        assert!(
            said.contains(part),
            "the refusal should name {part:?}\n{}",
            res.describe()
        );
    }
    assert!(pid_alive(pid), "the target is gone");
    assert!(h.images().is_empty(), "an image was written");
    target.wait_for_ticks(1);
}

/// A process of the job orphaned to the supervisor (its subreaper) and killed by a
/// real-time signal is reaped, not left a zombie holding its PID.
#[test]
fn an_orphan_killed_by_a_realtime_signal_is_reaped() {
    let h = Harness::new("rtorphan");
    let job = Prog {
        argv: [
            "/bin/sh",
            "-c",
            "(sleep 300 & echo \"orphan $!\"); sleep 60",
        ]
        .map(String::from)
        .to_vec(),
        feed: None,
    };
    let mut run = h.run(&job);
    wait_until("the orphan's PID", || run.stdout().contains("orphan "));
    let orphan: i32 = run
        .stdout()
        .trim()
        .strip_prefix("orphan ")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no orphan PID in {:?}", run.stdout()));
    let supervisor = run.child_pid();
    wait_until("the orphan to be handed to the supervisor", || {
        parent_and_group(orphan).is_some_and(|(ppid, _)| ppid == supervisor)
    });
    run.set_target(orphan);
    // One SIGRTMIN, whose default action ends the process.
    let mut send = Command::new(compiled("rtsend"));
    send.args([&orphan.to_string(), "1", "0"]);
    Proc::spawn("rtsend", send, None)
        .finish(CMD_TIMEOUT)
        .expect_code(0);
    wait_until("the orphan to be reaped", || !pid_alive(orphan));
}
