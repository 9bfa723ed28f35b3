//! (11) A damaged image is refused by `mlckpt verify PATH` and `mlckpt restore PATH`, with a
//! non-zero exit and a message naming the damaged file; no process is created.

mod common;

use common::*;

fn damaged_image_is_refused(file: &str, how: Damage) {
    let h = Harness::new("corrupt");
    let killed = h.run_until_checkpoint_kill(&Prog::c("memory", &["8", "200"]), 5);
    let image = killed.ckpt.path;
    h.mlckpt(&["verify".as_ref(), image.as_os_str()])
        .expect_code(0);

    let copy = copy_image(&image, &h.dir.path().join("damaged"));
    damage(&copy.join(file), how);
    let config = h.config.as_os_str();
    for args in [
        vec!["verify".as_ref(), copy.as_os_str()],
        vec![
            "restore".as_ref(),
            copy.as_os_str(),
            "--config".as_ref(),
            config,
        ],
    ] {
        let res = h.mlckpt(&args).expect_failure();
        assert!(
            res.output().contains(file),
            "the error should name {file}\n{}",
            res.describe()
        );
        assert!(
            !pid_alive(killed.pid),
            "a process was created from a damaged image"
        );
    }
}

#[test]
fn truncated_pages_refused() {
    damaged_image_is_refused("pages.bin", Damage::Truncate);
}

#[test]
fn bit_flipped_pages_refused() {
    damaged_image_is_refused("pages.bin", Damage::FlipBit);
}

#[test]
fn bit_flipped_manifest_refused() {
    damaged_image_is_refused("manifest.json", Damage::FlipBit);
}

/// A manifest edited and re-summed (CHECKSUMS recomputed as the writer does): `verify` and
/// `restore` refuse it naming the field, exit 1, never panic, create no process.
#[test]
fn hostile_manifests_with_recomputed_checksums_are_refused() {
    let h = Harness::new("hostile");
    let killed = h.run_until_checkpoint_kill(&Prog::c("memory", &["8", "200"]), 5);
    type Edit = fn(&mut serde_json::Value);
    let cases: [(&str, &str, Edit); 7] = [
        ("auxv-100000", "process.auxv", |m| {
            m["process"]["auxv"] = serde_json::json!(vec![7u64; 100_000]);
        }),
        ("run-from-non-parent", ".runs[0].image", |m| {
            let regions = m["regions"].as_array_mut().unwrap();
            let with_runs = regions
                .iter_mut()
                .find(|r| !r["runs"].as_array().unwrap().is_empty())
                .expect("no region with stored pages");
            with_runs["runs"][0]["image"] = serde_json::json!(7);
        }),
        ("tid-minus-one", "threads[0].tid", |m| {
            m["threads"][0]["tid"] = serde_json::json!(-1);
        }),
        ("no-threads", "threads", |m| {
            m["threads"] = serde_json::json!([]);
        }),
        ("job-escapes", "job", |m| {
            m["job"] = serde_json::json!("../../x")
        }),
        ("fd-negative", ".fd", |m| {
            m["fds"][0]["fd"] = serde_json::json!(-3)
        }),
        ("pages-offset-beyond", ".offset", |m| {
            m["pages_bytes"] = serde_json::json!(0);
        }),
    ];
    let config = h.config.as_os_str();
    for (name, field, edit) in cases {
        let copy = copy_image(&killed.ckpt.path, &h.dir.path().join(name));
        rewrite_manifest(&copy, edit);
        // The checksums agree: only the validator stands between the edit and a restore.
        if let Some(b3sum) = find_in_path("b3sum") {
            let ok = std::process::Command::new(b3sum)
                .args(["-c", "CHECKSUMS"])
                .current_dir(&copy)
                .output()
                .unwrap();
            assert!(ok.status.success(), "{name}: CHECKSUMS not rewritten right");
        }
        for args in [
            vec!["verify".as_ref(), copy.as_os_str()],
            vec![
                "restore".as_ref(),
                copy.as_os_str(),
                "--config".as_ref(),
                config,
            ],
        ] {
            let res = h.mlckpt(&args).expect_code(1);
            let out = res.output();
            assert!(
                !out.contains("panicked"),
                "{name}: mlckpt panicked\n{}",
                res.describe()
            );
            assert!(
                out.contains("inconsistent") && out.contains(field),
                "{name}: the error should name {field}\n{}",
                res.describe()
            );
            assert!(
                !pid_alive(killed.pid),
                "{name}: a process was created from an inconsistent image"
            );
        }
    }
}
