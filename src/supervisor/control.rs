//! The supervisor's control socket: `mlckpt checkpoint PID` asks the supervisor of PID to
//! checkpoint, since only one tracer can hold a process.

use crate::image::format::TierKind;
use crate::tracer::dump::CheckpointStats;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

#[derive(Debug, Serialize, Deserialize)]
pub struct Request {
    pub tier: Option<TierKind>,
    pub kill: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Response {
    pub stats: Option<CheckpointStats>,
    pub error: Option<String>,
}

pub fn socket_path(runtime_dir: &Path, pid: i32) -> PathBuf {
    runtime_dir.join(format!("sup-{pid}.sock"))
}

/// Binds the socket for `pid` (replacing a stale one), owner-only.
pub fn listen(runtime_dir: &Path, pid: i32) -> std::io::Result<(UnixListener, PathBuf)> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(runtime_dir)?;
    let path = socket_path(runtime_dir, pid);
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    listener.set_nonblocking(true)?;
    Ok((listener, path))
}

/// Reads one request from a connected client.
pub fn read_request(stream: &UnixStream) -> std::io::Result<Request> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    serde_json::from_str(&line).map_err(std::io::Error::other)
}

pub fn send_response(mut stream: &UnixStream, response: &Response) -> std::io::Result<()> {
    let mut text = serde_json::to_string(response).map_err(std::io::Error::other)?;
    text.push('\n');
    stream.write_all(text.as_bytes())
}

/// Asks the supervisor of `pid`, if there is one. `Ok(None)`: nobody supervises it.
pub fn ask(runtime_dir: &Path, pid: i32, request: &Request) -> std::io::Result<Option<Response>> {
    let path = socket_path(runtime_dir, pid);
    let stream = match UnixStream::connect(&path) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let mut line = serde_json::to_string(request).map_err(std::io::Error::other)?;
    line.push('\n');
    (&stream).write_all(line.as_bytes())?;
    let mut reply = String::new();
    BufReader::new(&stream).read_line(&mut reply)?;
    serde_json::from_str(&reply)
        .map(Some)
        .map_err(std::io::Error::other)
}
