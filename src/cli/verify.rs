//! `mlckpt verify`.

use anyhow::bail;
use mlckpt::image;
use mlckpt::image::store;
use mlckpt::tiers::config::Config;
use std::path::{Path, PathBuf};

pub fn verify(path: Option<PathBuf>, all: bool, config: Option<PathBuf>) -> anyhow::Result<i32> {
    let dirs = if all {
        let config = Config::load(config.as_deref())?;
        all_images(&config)
    } else {
        vec![path.expect("clap requires PATH without --all")]
    };
    let mut bad = 0;
    for dir in &dirs {
        if !dir.is_dir() {
            bad += 1;
            println!("BAD {}: no such image directory", dir.display());
            continue;
        }
        match image::open_verified(dir) {
            Ok(_) => println!("ok  {}", dir.display()),
            Err(e) => {
                bad += 1;
                println!("BAD {}: {e}", dir.display());
            }
        }
    }
    if bad > 0 {
        bail!("{bad} of {} image(s) failed verification", dirs.len());
    }
    Ok(0)
}

/// Every committed image under the configured tier roots (`<root>/<job>/rank<R>/ckpt-*`).
pub fn all_images(config: &Config) -> Vec<PathBuf> {
    let roots: Vec<&Path> = [
        Some(config.storage.local.as_path()),
        config.storage.global.as_deref(),
    ]
    .into_iter()
    .flatten()
    .collect();
    let mut found = Vec::new();
    for root in roots {
        for rank_dir in subdirs(root).iter().flat_map(|job| subdirs(job)) {
            if let Ok(images) = store::list_images(&rank_dir) {
                found.extend(images.into_iter().map(|(_, p)| p));
            }
        }
    }
    found
}

fn subdirs(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default()
}
