//! `mlckpt list` and `mlckpt verify --all` only read: they work on storage mounted
//! read-only (a global tier exported read-only to compute nodes, a local disk remounted
//! after an error), and create nothing there.

mod common;

use common::*;
use std::process::Command;

/// Runs `mlckpt ARGS` inside a private mount namespace in which `store` is bind-mounted
/// read-only at `mount_point` (the mounts vanish with the namespace). `None` (with the
/// reason printed) if this machine cannot do that.
fn in_read_only_view(
    h: &Harness,
    store: &std::path::Path,
    mount_point: &std::path::Path,
    args: &[&str],
) -> Option<Finished> {
    let script = r#"set -e
mount --bind "$1" "$2"
mount -o remount,ro,bind "$2"
touch "$2/.probe" 2>/dev/null && { echo "MOUNT-NOT-READ-ONLY"; exit 97; }
shift 2
exec "$@"
"#;
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        script,
        "sh",
    ])
    .arg(store)
    .arg(mount_point)
    .arg(mlckpt_bin())
    .args(args)
    .current_dir(h.run_dir());
    let res = Proc::spawn("mlckpt (read-only storage)", cmd, None).finish(CMD_TIMEOUT);
    let cannot_mount = res.stderr.contains("unshare:")
        || res.stderr.contains("mount:")
        || res.stdout.contains("MOUNT-NOT-READ-ONLY");
    if cannot_mount {
        eprintln!(
            "SKIPPED: cannot make a read-only bind mount here (needs CAP_SYS_ADMIN):\n{}",
            res.describe()
        );
        return None;
    }
    Some(res)
}

#[test]
fn list_and_verify_all_work_on_read_only_storage() {
    if find_in_path("unshare").is_none() {
        eprintln!("SKIPPED: unshare (util-linux) is not installed");
        return;
    }
    let h = Harness::new("rostore");
    let killed = h.run_until_checkpoint_kill(&Prog::c("memory", &["4", "200"]), 5);
    let mount_point = h.dir.path().join("ro");
    std::fs::create_dir(&mount_point).unwrap();
    // The global tier's directory does not exist on the read-only view: a loader that
    // creates directories fails there.
    let config = h.dir.path().join("ro.toml");
    std::fs::write(
        &config,
        format!(
            "[storage]\nlocal = '{}'\nglobal = '{}/global'\n",
            mount_point.display(),
            mount_point.display()
        ),
    )
    .unwrap();
    let cfg = config.to_str().unwrap();
    let image_name = killed.ckpt.path.file_name().unwrap().to_str().unwrap();
    for args in [
        vec!["list", "--config", cfg],
        vec!["verify", "--all", "--config", cfg],
    ] {
        let Some(res) = in_read_only_view(&h, &h.store, &mount_point, &args) else {
            return;
        };
        let res = res.expect_code(0);
        assert!(
            res.stdout.contains(image_name) && res.stdout.contains(&h.job),
            "{args:?} should show {image_name}\n{}",
            res.describe()
        );
    }
    assert!(
        !h.store.join("global").exists(),
        "a read-only command created a directory"
    );
}
