//! A restore cannot be turned against its user: images are authenticated with the writer's
//! key (an edited image, or one without its AUTH, is refused), and a restored process runs
//! with the credentials it had, not the restorer's.

mod common;

use common::*;
use nix::sys::signal::Signal;

/// The job runs as `nobody` under root's `mlckpt run`; root restores it: it must come back
/// as `nobody` (every thread), not as root.
#[test]
fn job_of_another_user_comes_back_as_that_user() {
    let h = Harness::new("ids");
    let Some(setpriv) = find_in_path("setpriv") else {
        eprintln!("note: no setpriv; skipping");
        return;
    };
    let mut prog = Prog::c("ids", &["40"]);
    let as_nobody = [
        setpriv.to_string_lossy().into_owned(),
        "--reuid=65534".into(),
        "--regid=65534".into(),
        "--clear-groups".into(),
    ];
    prog.argv.splice(0..0, as_nobody);
    let out = h.checkpoint_kill_restore(&prog, 10);
    assert!(
        out.after.contains(
            "uid=65534,65534,65534 gid=65534,65534,65534 groups=0 capeff=0 thread_uid=65534"
        ),
        "{}",
        out.after
    );
    let status = |pid: i32| std::fs::read_to_string(format!("/proc/{pid}/status"));
    assert!(
        status(out.pid).is_err(),
        "the restored job should have ended"
    );
}

/// Someone who can write the image directory edits the manifest and recomputes CHECKSUMS
/// (the plain hashes anyone can compute): refused, for want of the key.
#[test]
fn edited_image_is_refused_without_the_key() {
    let h = Harness::new("forged");
    let prog = Prog::c("sleeper", &["nanosleep", "400", "30"]);
    let killed = h.run_until_checkpoint_kill(&prog, 5);
    let dir = &killed.ckpt.path;
    let path = dir.join("manifest.json");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replacen("\"umask\":", "\"umask\": ", 1);
    std::fs::write(&path, &text).unwrap();
    let sums: String = std::fs::read_to_string(dir.join("CHECKSUMS"))
        .unwrap()
        .lines()
        .map(|l| match l.split_once("  ") {
            Some((_, "manifest.json")) => {
                format!(
                    "{}  manifest.json\n",
                    blake3::hash(text.as_bytes()).to_hex()
                )
            }
            _ => format!("{l}\n"),
        })
        .collect();
    std::fs::write(dir.join("CHECKSUMS"), sums).unwrap();
    let res = h.restore(dir, &prog).finish(CMD_TIMEOUT).expect_failure();
    assert!(
        res.output().contains("AUTH does not match"),
        "{}",
        res.describe()
    );
    assert!(!pid_alive(killed.pid), "a process ran from a forged image");
    let verify = h
        .mlckpt(&["verify", &dir.to_string_lossy()])
        .expect_failure();
    assert!(verify.output().contains("AUTH"), "{}", verify.describe());

    // The key's owner may vouch for an edit: then it restores.
    reseal(dir);
    let mut restored = h.restore(dir, &prog);
    restored.set_target(killed.pid);
    restored.wait_for_ticks(2);
    restored.signal(Signal::SIGKILL);
}

#[test]
fn image_without_auth_is_refused() {
    let h = Harness::new("noauth");
    let prog = Prog::c("sleeper", &["nanosleep", "400", "30"]);
    let killed = h.run_until_checkpoint_kill(&prog, 5);
    std::fs::remove_file(killed.ckpt.path.join("AUTH")).unwrap();
    let res = h
        .restore(&killed.ckpt.path, &prog)
        .finish(CMD_TIMEOUT)
        .expect_failure();
    assert!(
        res.output().contains("not authenticated"),
        "{}",
        res.describe()
    );
    assert!(!pid_alive(killed.pid));
}

/// An image others could write is not trusted even though it checks out now: its files
/// could be swapped between the check and their use.
#[test]
fn image_others_can_write_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let h = Harness::new("exposed");
    let prog = Prog::c("sleeper", &["nanosleep", "400", "30"]);
    let killed = h.run_until_checkpoint_kill(&prog, 5);
    let dir = &killed.ckpt.path;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let res = h.restore(dir, &prog).finish(CMD_TIMEOUT).expect_failure();
    assert!(
        res.output().contains("writable by others"),
        "{}",
        res.describe()
    );
    assert!(!pid_alive(killed.pid));
}
