//! `mlckpt forget`: deletes every image of a job (or of one of its ranks) on every tier
//! this machine can reach, `.partial` leftovers included, once the job is over. The same
//! places as [`super::inventory`] are looked at, for one job:
//!
//! ```text
//! <local>[/node<K>]/<job>/rank<R>/            local (node K in test mode)
//! <local>[/node<K>]/<job>/partner/rank<R>/    partner copies held by that node
//! <global>/<job>/rank<R>/                     global
//! ```
//!
//! A partner copy held by another machine (outside test mode) is that machine's to forget.
//! Nothing is deleted while a supervisor of the job runs here ([`job_lock`]). No symlink is
//! followed: one met on the way (a job, rank or image directory) is reported and left
//! alone, and each image's path is checked again right before it is deleted.

use super::config::Config;
use super::inventory::numbered;
use super::layout::PARTNER_DIR;
use super::placement::PlaceError;
use super::retention;
use crate::image::format::TierKind;
use crate::image::name::{JobNameError, check_job_name};
use crate::image::store;
use crate::supervisor::job_lock::{self, JobLockError};
use std::fs::FileType;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ForgetError {
    #[error("{name:?} is not a valid job name")]
    BadJobName {
        name: String,
        #[source]
        source: JobNameError,
    },
    #[error(
        "a supervisor of job {job} is running on this machine (it holds {}); stop the job \
         before forgetting its images",
        lock.display()
    )]
    Supervised { job: String, lock: PathBuf },
    #[error(transparent)]
    Lock(#[from] JobLockError),
    #[error(
        "{} became a symbolic link while images were being deleted; stopped without \
         following it",
        link.display()
    )]
    SymlinkAppeared { link: PathBuf },
    #[error(transparent)]
    Remove(#[from] PlaceError),
}

/// One image directory of the job, committed or partial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobImage {
    pub tier: TierKind,
    /// The test-mode node whose storage holds it.
    pub node: Option<u32>,
    pub rank: u32,
    pub seq: u64,
    /// A `.ckpt-SEQ.partial` directory: a checkpoint or copy that never committed.
    pub partial: bool,
    pub path: PathBuf,
    /// Bytes of the files in it.
    pub bytes: u64,
    /// The tier (or test-mode node) directory it lies under; nothing above it is checked.
    tier_root: PathBuf,
}

/// What `forget` found (and deleted, unless it was a dry run).
#[derive(Debug, Default)]
pub struct Forgotten {
    /// By rank, tier, node and seq.
    pub images: Vec<JobImage>,
    /// Symbolic links met where a directory of the job was expected: not followed.
    pub symlinks: Vec<PathBuf>,
}

impl Forgotten {
    pub fn bytes(&self) -> u64 {
        self.images.iter().map(|i| i.bytes).sum()
    }
}

/// Deletes the images of `job` (of rank `rank` only, if given) on every tier of `config`;
/// with `dry_run`, only finds them. Refused while a supervisor of `job` runs on this
/// machine (its lock is in `runtime_dir`).
pub fn forget(
    config: &Config,
    runtime_dir: &Path,
    job: &str,
    rank: Option<u32>,
    dry_run: bool,
) -> Result<Forgotten, ForgetError> {
    check_job_name(job).map_err(|source| ForgetError::BadJobName {
        name: job.to_string(),
        source,
    })?;
    // Held until every image is gone: a supervisor starting meanwhile waits for it.
    let Some(_lock) = job_lock::exclusive(runtime_dir, job)? else {
        return Err(ForgetError::Supervised {
            job: job.to_string(),
            lock: job_lock::lock_path(runtime_dir, job),
        });
    };
    let found = find(config, job, rank);
    if !dry_run {
        for image in &found.images {
            delete(image)?;
        }
        for image in &found.images {
            remove_empty_parents(image);
        }
    }
    Ok(found)
}

/// The images of `job` on every tier, and the symlinks met on the way. Pure reading.
pub fn find(config: &Config, job: &str, rank: Option<u32>) -> Forgotten {
    let mut found = Forgotten::default();
    let local = &config.storage.local;
    // Both layouts, whatever test_mode says now (as `list` does).
    let mut roots = vec![(local.clone(), None)];
    for (dir, kind) in entries(local) {
        if let Some(node) = numbered(&dir, "node") {
            if kind.is_symlink() {
                found.symlinks.push(dir);
            } else if kind.is_dir() {
                roots.push((dir, Some(node)));
            }
        }
    }
    for (root, node) in &roots {
        let job_dir = root.join(job);
        if found.enter(&job_dir) {
            found.ranks(root, &job_dir, TierKind::Local, *node, rank);
            let partner = job_dir.join(PARTNER_DIR);
            if found.enter(&partner) {
                found.ranks(root, &partner, TierKind::Partner, *node, rank);
            }
        }
    }
    if let Some(global) = &config.storage.global {
        let job_dir = global.join(job);
        if found.enter(&job_dir) {
            found.ranks(global, &job_dir, TierKind::Global, None, rank);
        }
    }
    found.images.sort_by(|a, b| {
        (a.rank, a.tier, a.node, a.seq, &a.path).cmp(&(b.rank, b.tier, b.node, b.seq, &b.path))
    });
    found
}

impl Forgotten {
    /// Whether `dir` is a real directory to look into; a symlink there is noted.
    fn enter(&mut self, dir: &Path) -> bool {
        match std::fs::symlink_metadata(dir) {
            Ok(meta) if meta.file_type().is_symlink() => {
                self.symlinks.push(dir.to_path_buf());
                false
            }
            Ok(meta) => meta.is_dir(),
            Err(_) => false,
        }
    }

    /// The images in `<dir>/rank<R>/`.
    fn ranks(
        &mut self,
        tier_root: &Path,
        dir: &Path,
        tier: TierKind,
        node: Option<u32>,
        only: Option<u32>,
    ) {
        for (rank_dir, kind) in entries(dir) {
            let Some(rank) = numbered(&rank_dir, "rank") else {
                continue;
            };
            if only.is_some_and(|r| r != rank) {
                continue;
            }
            if kind.is_symlink() {
                self.symlinks.push(rank_dir);
                continue;
            }
            for (path, kind) in entries(&rank_dir) {
                let name = path.file_name().and_then(|n| n.to_str());
                let committed = name.and_then(store::parse_image_dir_name);
                let partial = name.and_then(store::parse_partial_name);
                let Some(seq) = committed.or(partial) else {
                    continue;
                };
                if kind.is_symlink() {
                    self.symlinks.push(path);
                } else if kind.is_dir() {
                    self.images.push(JobImage {
                        tier,
                        node,
                        rank,
                        seq,
                        partial: committed.is_none(),
                        bytes: dir_bytes(&path),
                        path,
                        tier_root: tier_root.to_path_buf(),
                    });
                }
            }
        }
    }
}

/// The entries of `dir` and their types (a symlink is a symlink, not what it points to),
/// sorted by name.
fn entries(dir: &Path) -> Vec<(PathBuf, FileType)> {
    let mut found: Vec<(PathBuf, FileType)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.path(), e.file_type().ok()?)))
        .collect();
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found
}

/// Bytes of the files under `dir`, not following symlinks.
fn dir_bytes(dir: &Path) -> u64 {
    entries(dir)
        .into_iter()
        .map(|(path, kind)| {
            if kind.is_dir() {
                dir_bytes(&path)
            } else {
                std::fs::symlink_metadata(&path).map_or(0, |m| m.len())
            }
        })
        .sum()
}

/// Deletes one image, after checking again that nothing between its tier directory and
/// it has become a symlink since it was found (`remove_dir_all` itself never follows one
/// inside the image).
fn delete(image: &JobImage) -> Result<(), ForgetError> {
    let below_root = image
        .path
        .ancestors()
        .take_while(|dir| *dir != image.tier_root);
    for dir in below_root {
        if std::fs::symlink_metadata(dir).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(ForgetError::SymlinkAppeared {
                link: dir.to_path_buf(),
            });
        }
    }
    if image.partial {
        retention::remove_dir(&image.path)?;
    } else {
        retention::remove_image(&image.path)?;
    }
    Ok(())
}

/// Removes the rank, `partner` and job directories the deletions left empty.
fn remove_empty_parents(image: &JobImage) {
    let Some(rank_dir) = image.path.parent() else {
        return;
    };
    // The mark of a finished run speaks of the images just deleted: a new run of the job
    // numbers its images from 1 again, and must be resumable.
    let _ = std::fs::remove_file(rank_dir.join(super::finished::MARKER));
    // Generation records too: the new run's generation 1 is not the old one.
    let _ = super::generation::remove_all(rank_dir);
    for dir in rank_dir
        .ancestors()
        .take_while(|dir| *dir != image.tier_root)
    {
        // Fails (and stops) at the first one that still holds something.
        if std::fs::remove_dir(dir).is_err() {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(tmp: &Path) -> Config {
        let mut config = Config::defaults();
        config.storage.local = tmp.join("l");
        config.storage.global = Some(tmp.join("g"));
        config
    }

    fn make(tmp: &Path, dirs: &[&str]) {
        for dir in dirs {
            std::fs::create_dir_all(tmp.join(dir)).unwrap();
        }
    }

    #[test]
    fn finds_the_jobs_images_on_every_tier_and_only_them() {
        let tmp = tempfile::tempdir().unwrap();
        make(
            tmp.path(),
            &[
                "l/node0/sim/rank0/ckpt-000002",
                "l/node0/sim/rank0/.ckpt-000003.partial",
                "l/node0/sim/rank0/not-an-image",
                "l/node1/sim/partner/rank0/ckpt-000002",
                "l/node1/sim/rank1/ckpt-000001",
                "l/node1/other/rank1/ckpt-000001",
                "l/sim/rank4/ckpt-000009",
                "g/sim/rank0/ckpt-000001",
                "g/sim/notarank/ckpt-000001",
            ],
        );
        std::fs::write(tmp.path().join("l/sim/rank4/ckpt-000009/pages"), [0; 100]).unwrap();
        let config = config(tmp.path());
        let got: Vec<(u32, TierKind, Option<u32>, u64, bool)> = find(&config, "sim", None)
            .images
            .into_iter()
            .map(|i| (i.rank, i.tier, i.node, i.seq, i.partial))
            .collect();
        use TierKind::*;
        assert_eq!(
            got,
            [
                (0, Local, Some(0), 2, false),
                (0, Local, Some(0), 3, true),
                (0, Partner, Some(1), 2, false),
                (0, Global, None, 1, false),
                (1, Local, Some(1), 1, false),
                (4, Local, None, 9, false),
            ]
        );
        let rank4 = find(&config, "sim", Some(4));
        assert_eq!(rank4.images.len(), 1);
        assert_eq!(rank4.bytes(), 100);
    }

    #[test]
    fn deletes_without_following_symlinks_and_tidies_up() {
        let tmp = tempfile::tempdir().unwrap();
        make(
            tmp.path(),
            &["l/sim/rank0/ckpt-000001", "outside/ckpt-000002/keep"],
        );
        let outside = tmp.path().join("outside");
        let rank0 = tmp.path().join("l/sim/rank0");
        std::os::unix::fs::symlink(outside.join("ckpt-000002"), rank0.join("ckpt-000002")).unwrap();
        std::os::unix::fs::symlink(&outside, tmp.path().join("l/sim/rank1")).unwrap();
        let record = super::super::generation::GenerationRecord {
            generation: 1,
            ranks: 1,
            tier: TierKind::Local,
            committed_unix_ms: 0,
            skew_ms: 0.0,
        };
        super::super::generation::write(&rank0, &record).unwrap();
        let runtime = tmp.path().join("run");
        let done = forget(&config(tmp.path()), &runtime, "sim", None, false).unwrap();
        assert_eq!(done.images.len(), 1);
        assert_eq!(
            done.symlinks,
            [rank0.join("ckpt-000002"), tmp.path().join("l/sim/rank1")]
        );
        assert!(!rank0.join("ckpt-000001").exists());
        assert!(
            !rank0.join("generation-000001.json").exists(),
            "generation records go with the images"
        );
        assert!(outside.join("ckpt-000002/keep").is_dir());
    }

    #[test]
    fn refused_while_a_supervisor_holds_the_job() {
        let tmp = tempfile::tempdir().unwrap();
        make(tmp.path(), &["l/sim/rank0/ckpt-000001"]);
        let runtime = tmp.path().join("run");
        let config = config(tmp.path());
        let held = job_lock::supervising(&runtime, "sim").unwrap();
        let refused = forget(&config, &runtime, "sim", None, false);
        assert!(matches!(refused, Err(ForgetError::Supervised { .. })));
        assert!(tmp.path().join("l/sim/rank0/ckpt-000001").is_dir());
        // Another job is not held up.
        assert!(forget(&config, &runtime, "other", None, false).is_ok());
        drop(held);
        assert_eq!(
            forget(&config, &runtime, "sim", None, false)
                .unwrap()
                .images
                .len(),
            1
        );
        let bad = forget(&config, &runtime, "../sim", None, true);
        assert!(matches!(bad, Err(ForgetError::BadJobName { .. })));
    }
}
