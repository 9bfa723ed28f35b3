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
