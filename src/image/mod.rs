//! The on-disk image: manifest, page data and checksums. Knows nothing about ptrace.

pub mod auth;
pub mod format;
pub mod name;
pub mod pagebuf;
pub mod pages_hash;
pub mod reader;
pub mod store;
pub mod validate;
pub mod verify;
pub mod writer;

pub use reader::Image;

impl Image {
    /// Verifies checksums; the manifest's page size (when it parses) names truncation.
    pub fn verify(&self) -> Result<(), verify::VerifyError> {
        verify::verify_dir(&self.dir, Some(self.manifest.pages_bytes))
    }
}

/// Opens and fully verifies the image at `dir`, and every image it takes pages from:
/// what restore does before touching anything.
pub fn open_verified(dir: &std::path::Path) -> Result<Image, verify::VerifyError> {
    let (image, pages) = open_checked(dir)?;
    pages.verify()?;
    Ok(image)
}

/// The page contents of an image and its parents, still to be verified.
#[derive(Debug)]
pub struct PageCheck {
    own: verify::PagesToCheck,
    parents: ParentChecks,
}

impl PageCheck {
    /// Hashes every pages.bin; an error names the file (and, for a parent, which image
    /// needs it).
    pub fn verify(self) -> Result<(), verify::VerifyError> {
        self.own.verify()?;
        for (image, parent, pages) in self.parents {
            pages
                .verify()
                .map_err(|source| verify::VerifyError::BrokenParent {
                    image,
                    parent,
                    source: Box::new(source),
                })?;
        }
        Ok(())
    }
}

/// Opens the image at `dir` and verifies everything about it and every image it takes
/// pages from, except the contents of their pages.bin (their sizes are checked): the
/// returned check does that, so a restore can read and verify them at the same time.
pub fn open_checked(dir: &std::path::Path) -> Result<(Image, PageCheck), verify::VerifyError> {
    // Checksums first: a corrupt manifest must say "checksum mismatch", not "bad JSON".
    let parsed = reader::Image::open(dir);
    let pages_bytes = parsed.as_ref().ok().map(|i| i.manifest.pages_bytes);
    let own = verify::check_dir(dir, pages_bytes)?;
    // Parsed just before its checksum was checked; images are private to their owner
    // (0600 files in 0700 directories), so nothing swaps it in between.
    let mut image = parsed?;
    image.signer = Some(own.signer);
    let parents = check_parents(&image)?;
    Ok((image, PageCheck { own, parents }))
}

impl Image {
    /// Where parent `seq` lives: beside this image.
    pub fn parent_dir(&self, seq: u64) -> std::path::PathBuf {
        let name = store::image_dir_name(seq);
        self.dir
            .parent()
            .map_or_else(|| name.clone().into(), |d| d.join(&name))
    }
}

/// Each parent's pages, with the paths a failure names (the image, the parent).
type ParentChecks = Vec<(std::path::PathBuf, std::path::PathBuf, verify::PagesToCheck)>;

/// Every parent must be present, intact, and the very image the child was made against;
/// their page contents are returned to be checked.
fn check_parents(image: &Image) -> Result<ParentChecks, verify::VerifyError> {
    use verify::VerifyError;
    let mut pages = Vec::new();
    for parent in &image.manifest.parents {
        let dir = image.parent_dir(parent.seq);
        let err = |kind: fn(std::path::PathBuf, std::path::PathBuf) -> VerifyError| {
            kind(image.dir.clone(), dir.clone())
        };
        if !dir.is_dir() {
            return Err(err(|image, parent| VerifyError::MissingParent {
                image,
                parent,
            }));
        }
        let opened = reader::Image::open(&dir);
        let pages_bytes = opened.as_ref().ok().map(|i| i.manifest.pages_bytes);
        let to_check =
            verify::check_dir(&dir, pages_bytes).map_err(|source| VerifyError::BrokenParent {
                image: image.dir.clone(),
                parent: dir.clone(),
                source: Box::new(source),
            })?;
        if Some(to_check.signer) != image.signer {
            return Err(VerifyError::MixedSigners {
                image: image.dir.clone(),
                parent: dir.clone(),
                image_signer: image.signer.unwrap_or(u32::MAX),
                parent_signer: to_check.signer,
            });
        }
        if verify::manifest_hash(&dir)? != parent.manifest_blake3 {
            return Err(err(|image, parent| VerifyError::ParentChanged {
                image,
                parent,
            }));
        }
        // Intact and the very parent: an inconsistent one is as broken as a damaged one.
        let opened = opened.map_err(|source| VerifyError::BrokenParent {
            image: image.dir.clone(),
            parent: dir.clone(),
            source: Box::new(source.into()),
        })?;
        // Only now is it known to be the image the runs were written against.
        validate::check_parent_pages(&image.manifest, parent.seq, opened.manifest.pages_bytes)
            .map_err(|source| reader::ReadError::Invalid {
                path: image.dir.join(format::MANIFEST_FILE),
                source,
            })?;
        pages.push((image.dir.clone(), dir, to_check));
    }
    Ok(pages)
}
