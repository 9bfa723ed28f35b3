//! TCP connections and listeners in checkpoints: a client/server pair inside one job with
//! data in flight both ways (checkpoint --kill, restore, same output as an uninterrupted
//! run; and a checkpoint without --kill, after which the job goes on unharmed); a Python
//! HTTP server that still answers after a restore; the freeze time of a job with 100
//! established connections holding queued data.

mod common;

use common::*;
use mlckpt::objects::ObjectKind;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn manifest(image: &Path) -> mlckpt::image::format::Manifest {
    serde_json::from_slice(&std::fs::read(image.join("manifest.json")).unwrap()).unwrap()
}

/// Bytes queued in the image's TCP connections inside the job (both ends, both queues).
fn queued_in_pairs(image: &Path) -> (usize, usize) {
    let m = manifest(image);
    let pairs: Vec<_> = m
        .objects
        .iter()
        .filter_map(|o| match &o.object {
            ObjectKind::TcpPair(p) => Some(p),
            _ => None,
        })
        .collect();
    let bytes = pairs
        .iter()
        .flat_map(|p| &p.ends)
        .map(|e| e.send_queue.len() + e.receive_queue.len())
        .sum();
    (pairs.len(), bytes)
}

/// A server and its client (two processes of the job) with data waiting in both
/// directions: every byte comes back, in order, and the run ends as an uninterrupted one.
#[test]
fn client_and_server_with_data_in_flight() {
    require_root();
    let h = Harness::new("tcp-pair");
    let out = h.checkpoint_kill_restore(&Prog::c("tcp_pair", &["60"]), 15);
    let (pairs, bytes) = queued_in_pairs(&out.ckpt.path);
    assert_eq!(pairs, 1, "one connection inside the job");
    assert!(bytes > 0, "data should be in flight at checkpoint time");
    let m = manifest(&out.ckpt.path);
    assert!(
        m.objects.iter().any(|o| matches!(
            &o.object,
            ObjectKind::TcpSocket(t) if t.backlog.is_some()
        )),
        "the listener is in the image"
    );
}

/// A checkpoint without --kill reads the connection in repair mode and puts it back: the
/// job goes on exactly as an uninterrupted run.
#[test]
fn checkpoint_without_kill_leaves_connections_working() {
    require_root();
    let h = Harness::new("tcp-nokill");
    let prog = Prog::c("tcp_pair", &["60"]);
    let reference = h.plain(&prog);
    let mut run = h.run(&prog);
    run.wait_for_ticks(10);
    let pid = run.target_pid();
    let first = h.checkpoint(pid, false);
    run.wait_for_ticks(20);
    let second = h.checkpoint(pid, false);
    assert!(pid_alive(pid), "checkpoint without --kill ended the target");
    let run = run.finish(CMD_TIMEOUT).expect_code(0);
    let reference = reference.finish(CMD_TIMEOUT).expect_code(0);
    assert_continuation(&reference.stdout, &run.stdout, "", pid);
    for ckpt in [first, second] {
        assert!(queued_in_pairs(&ckpt.path).0 == 1, "{ckpt:?}");
    }
}

/// A free TCP port on the loopback (free when this returns).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET url` with curl, or None if it did not answer.
fn fetch(url: &str) -> Option<Vec<u8>> {
    let out = Command::new("curl")
        .args(["-sf", "--max-time", "5", url])
        .output()
        .ok()?;
    out.status.success().then_some(out.stdout)
}

fn fetch_soon(url: &str) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(body) = fetch(url) {
            return body;
        }
        assert!(Instant::now() < deadline, "{url} does not answer");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `python3 -m http.server` on the loopback, checkpointed with --kill and restored: it
/// listens again on its port and serves the file.
#[test]
fn python_http_server_answers_after_restore() {
    require_root();
    let (Some(python), Some(_)) = (find_in_path("python3"), find_in_path("curl")) else {
        eprintln!("note: python3 or curl is not in PATH; skipping this test");
        return;
    };
    let h = Harness::new("http-server");
    let site = h.run_dir().join("site");
    std::fs::create_dir_all(&site).unwrap();
    let body: Vec<u8> = (0..20_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(site.join("data.bin"), &body).unwrap();
    let port = free_port();
    let script = format!(
        "echo pid $$; exec {} -u -m http.server --bind 127.0.0.1 --directory {} {port}",
        python.display(),
        site.display()
    );
    let prog = Prog {
        argv: vec!["bash".into(), "-c".into(), script],
        feed: None,
    };
    let url = format!("http://127.0.0.1:{port}/data.bin");
    let mut run = h.run(&prog);
    let pid = run.target_pid();
    assert_eq!(fetch_soon(&url), body, "served before the checkpoint");
    let ckpt = h.checkpoint(pid, true);
    run.finish(CMD_TIMEOUT).expect_code(KILLED);
    wait_gone(pid);
    assert!(
        fetch(&url).is_none(),
        "nothing should answer after the kill"
    );
    let mut restored = h.restore(&ckpt.path, &prog);
    restored.set_target(pid);
    assert_eq!(fetch_soon(&url), body, "served after the restore");
    assert_eq!(fetch_soon(&url), body, "and again");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    restored.finish(CMD_TIMEOUT);
}

/// The freeze of a job holding 100 established connections with 8 KiB unread each way on
/// each, against the same program with none, in a checkpoint that lets the job go on
/// (frozen while its state is read) and in a --kill one (frozen until the image is
/// committed): printed; the restored job reads all its data back.
#[test]
fn freeze_time_with_100_connections() {
    require_root();
    let mut freeze = Vec::new();
    for n in ["0", "100"] {
        let h = Harness::new(&format!("tcp-many-{n}"));
        let prog = Prog::c("tcp_many", &[n, "40"]);
        let mut run = h.run(&prog);
        run.wait_for_ticks(5);
        let live = h.checkpoint(run.target_pid(), false);
        let run = run.finish(CMD_TIMEOUT).expect_code(0);
        assert!(run.stdout.contains(&format!("verified {n} connections")));
        let out = h.checkpoint_kill_restore(&prog, 10);
        assert!(
            out.after.contains(&format!("verified {n} connections")),
            "{}",
            out.after
        );
        let (pairs, bytes) = queued_in_pairs(&out.ckpt.path);
        assert_eq!(pairs.to_string(), n);
        freeze.push((n, live.freeze_ms, out.ckpt.freeze_ms, bytes));
    }
    for (n, live, kill, bytes) in &freeze {
        eprintln!(
            "measure: tcp_many {n} connections ({bytes} bytes queued): freeze {live:.1} ms \
             (job goes on), {kill:.1} ms (--kill, until committed)"
        );
    }
}

/// A server outside the job (this test) that accepts every connection and drains it.
fn outside_server() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut conn, &mut std::io::sink());
            });
        }
    });
    port
}

/// A connection to a server outside the job: the restored job finds it reset (its first write fails with ECONNRESET, the next ones too);
/// the rest of its run is exact.
#[test]
fn connection_to_outside_is_reset_at_restore() {
    require_root();
    let h = Harness::new("tcp-outside");
    let port = outside_server().to_string();
    let prog = Prog::c("tcp_outside", &[&port, "60"]);
    let reference = h.plain(&prog);
    let Killed { pid, ckpt, before } = h.run_until_checkpoint_kill(&prog, 15);
    let resets = manifest(&ckpt.path)
        .objects
        .iter()
        .filter(|o| matches!(o.object, ObjectKind::TcpReset(_)))
        .count();
    assert_eq!(resets, 1, "the connection is kept as one to reset");
    let after = h.restore_to_end(&ckpt.path, &prog, pid, |_, _| {});
    assert!(
        after.lines().any(|l| l == "error ECONNRESET"),
        "the first write after the restore should see ECONNRESET:\n{after}"
    );
    let ticks_after: Vec<&str> = after.lines().filter(|l| l.starts_with("tick ")).collect();
    assert!(
        ticks_after.len() > 5 && ticks_after.iter().all(|l| l.ends_with("write=failed")),
        "every write after the restore should fail:\n{after}"
    );
    let expected_after: String = after
        .lines()
        .filter(|l| !l.starts_with("error "))
        .map(|l| format!("{}\n", l.replace("write=failed", "write=ok")))
        .collect();
    let reference = reference.finish(CMD_TIMEOUT).expect_code(0).stdout;
    assert_continuation(&reference, &before, &expected_after, pid);
}

/// With `[image] outside_peers = "refuse"` the same job cannot be checkpointed: the
/// checkpoint fails naming the connection, and the job runs on unharmed.
#[test]
fn connection_to_outside_refused_on_request() {
    require_root();
    let h = Harness::new("tcp-outside-refused");
    h.set_config("[interval]\nlocal = 0\n[image]\noutside_peers = \"refuse\"\n");
    let port = outside_server().to_string();
    let prog = Prog::c("tcp_outside", &[&port, "40"]);
    let mut run = h.run(&prog);
    run.wait_for_ticks(10);
    let pid = run.target_pid();
    let res = h.checkpoint_refused(pid);
    assert!(
        res.output().contains("TCP connection") && res.output().contains("outside_peers"),
        "the refusal should name the connection and the setting\n{}",
        res.describe()
    );
    let run = run.finish(CMD_TIMEOUT).expect_code(0);
    assert!(
        run.stdout
            .lines()
            .filter(|l| l.starts_with("tick "))
            .all(|l| l.ends_with("write=ok")),
        "the job's connection should work on\n{}",
        run.describe()
    );
}

/// Connections mlckpt does not restore make the checkpoint fail naming them (a connection
/// of the job waiting in its listener's accept queue; a half-closed one), and the job runs
/// on unharmed.
#[test]
fn unaccepted_and_half_closed_connections_are_refused() {
    require_root();
    for (mode, says) in [
        ("unaccepted", "waiting to be accepted"),
        ("halfclosed", "FIN_WAIT2"),
    ] {
        let h = Harness::new(&format!("tcp-refused-{mode}"));
        let mut run = h.run(&Prog::c("tcp_refused", &[mode, "40"]));
        run.wait_for_ticks(5);
        let pid = run.target_pid();
        let res = h.checkpoint_refused(pid);
        assert!(res.output().contains(says), "{mode}: {}", res.describe());
        let run = run.finish(CMD_TIMEOUT).expect_code(0);
        assert!(run.stdout.ends_with("done\n"), "{mode}: {}", run.describe());
    }
}

/// A restored connection is an ordinary one: the restored job is checkpointed (--kill)
/// and restored again, and its run still ends as an uninterrupted one.
#[test]
fn a_restored_connection_is_checkpointed_again() {
    require_root();
    let h = Harness::new("tcp-twice");
    let prog = Prog::c("tcp_pair", &["80"]);
    let reference = h.plain(&prog);
    let Killed { pid, ckpt, before } = h.run_until_checkpoint_kill(&prog, 15);
    let mut restored = h.restore(&ckpt.path, &prog);
    restored.set_target(pid);
    restored.wait_for_ticks(15);
    let second = h.checkpoint(pid, true);
    let middle = restored.finish(CMD_TIMEOUT).expect_code(KILLED).stdout;
    wait_gone(pid);
    assert_eq!(queued_in_pairs(&second.path).0, 1);
    let after = h.restore_to_end(&second.path, &prog, pid, |_, _| {});
    let reference = reference.finish(CMD_TIMEOUT).expect_code(0).stdout;
    assert_continuation(&reference, &before, &format!("{middle}{after}"), pid);
}
