//! mlckpt: checkpoint and restore running Linux x86-64 processes from the outside, with
//! ptrace, and keep the images on several storage tiers.
//!
//! The modules follow the pipeline: [`tracer`] touches the target process, [`image`] is the
//! on-disk format, [`tiers`] decides where images go and which one a restore uses;
//! [`coordination`] makes the ranks of one job checkpoint and restore together.

pub mod coordination;
pub mod image;
pub mod log;
pub mod objects;
pub mod progress;
pub mod supervisor;
pub mod tiers;
pub mod tracer;

/// An error with its causes, on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}
