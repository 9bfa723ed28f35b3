//! The on-disk image: manifest, page data and checksums. Knows nothing about ptrace.

pub mod attributes;
pub mod auth;
pub mod compress;
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
    /// The image's own first, then its parents.
    pages: Vec<ImagePages>,
}

/// The page file of one image of a restore.
#[derive(Debug)]
struct ImagePages {
    seq: u64,
    /// For a parent: the image that needs it and the parent's directory, which a failure
    /// names.
    needed_by: Option<(std::path::PathBuf, std::path::PathBuf)>,
    check: verify::PagesToCheck,
}

/// A parent's failure says which image needs it.
fn blame(
    needed_by: Option<(std::path::PathBuf, std::path::PathBuf)>,
    source: verify::VerifyError,
) -> verify::VerifyError {
    match needed_by {
        None => source,
        Some((image, parent)) => verify::VerifyError::BrokenParent {
            image,
            parent,
            source: Box::new(source),
        },
    }
}

impl PageCheck {
    /// Hashes every page file (decompressing compressed ones); an error names the file
    /// (and, for a parent, which image needs it).
    pub fn verify(self) -> Result<(), verify::VerifyError> {
        for pages in self.pages {
            pages
                .check
                .verify()
                .map_err(|e| blame(pages.needed_by, e))?;
        }
        Ok(())
    }

    /// The bytes of pages stored compressed (what a restore decompresses first).
    pub fn compressed_bytes(&self) -> u64 {
        self.pages
            .iter()
            .filter(|p| p.check.is_compressed())
            .map(|p| p.check.size())
            .sum()
    }

    /// Decompresses every compressed page file (copies from the partner or global tier)
    /// into memory, verifying it on the way: a restore reads those pages from memory. The
    /// raw page files are left in the returned check, to verify while the restore reads
    /// them.
    pub fn unpack_compressed(
        self,
    ) -> Result<(compress::UnpackedPages, PageCheck), verify::VerifyError> {
        let mut unpacked = compress::UnpackedPages::default();
        let mut raw = Vec::new();
        for pages in self.pages {
            if !pages.check.is_compressed() {
                raw.push(pages);
                continue;
            }
            let size = pages.check.size();
            let name = format!("mlckpt-pages-{}", pages.seq);
            match pages.check.unpack(&name) {
                Ok(Some(memory)) => unpacked.insert(pages.seq, memory, size),
                Ok(None) => {}
                Err(e) => return Err(blame(pages.needed_by, e)),
            }
        }
        Ok((unpacked, PageCheck { pages: raw }))
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
    let mut pages = vec![ImagePages {
        seq: image.manifest.seq,
        needed_by: None,
        check: own,
    }];
    pages.extend(check_parents(&image)?);
    Ok((image, PageCheck { pages }))
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

/// Every parent must be present, intact, and the very image the child was made against;
/// their page contents are returned to be checked.
fn check_parents(image: &Image) -> Result<Vec<ImagePages>, verify::VerifyError> {
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
        pages.push(ImagePages {
            seq: parent.seq,
            needed_by: Some((image.dir.clone(), dir)),
            check: to_check,
        });
    }
    Ok(pages)
}
