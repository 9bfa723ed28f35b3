//! The on-disk image: manifest, page data and checksums. Knows nothing about ptrace.

pub mod format;
pub mod reader;
pub mod store;
pub mod verify;
pub mod writer;

pub use reader::Image;

impl Image {
    /// Verifies checksums; the manifest's page size (when it parses) names truncation.
    pub fn verify(&self) -> Result<(), verify::VerifyError> {
        verify::verify_dir(&self.dir, Some(self.manifest.pages_bytes))
    }
}

/// Opens and fully verifies the image at `dir`: what restore does before touching anything.
pub fn open_verified(dir: &std::path::Path) -> Result<Image, verify::VerifyError> {
    // Checksums first: a corrupt manifest must say "checksum mismatch", not "bad JSON".
    let pages_bytes = reader::Image::open(dir)
        .ok()
        .map(|i| i.manifest.pages_bytes);
    verify::verify_dir(dir, pages_bytes)?;
    Ok(reader::Image::open(dir)?)
}
