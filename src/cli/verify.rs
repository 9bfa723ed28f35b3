//! `mlckpt verify`.

use anyhow::bail;
use mlckpt::image;
use mlckpt::tiers::config::Config;
use mlckpt::tiers::inventory;
use std::path::PathBuf;

pub fn verify(path: Option<PathBuf>, all: bool, config: Option<PathBuf>) -> anyhow::Result<i32> {
    let loaded = Config::load(config.as_deref());
    if let Ok(c) = &loaded {
        image::auth::use_key_file(c.security.key_file.clone());
    }
    let dirs: Vec<PathBuf> = if all {
        let config = loaded?;
        inventory::scan(&config)
            .into_iter()
            .map(|f| f.path)
            .collect()
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
                println!("BAD {}: {}", dir.display(), mlckpt::error_chain(&e));
            }
        }
    }
    if bad > 0 {
        bail!("{bad} of {} image(s) failed verification", dirs.len());
    }
    Ok(0)
}
