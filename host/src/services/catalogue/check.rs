//! What `host publish` checks before a file goes into the catalogue: its size, bounded
//! while it is read; then what a load checks (the ELF structure, the ABI and layouts, the
//! metadata), through the loader's check-only path ([`inspect`]: `dlopen` of a private copy,
//! never the plugin's `init`); and the SHA-256 of exactly the bytes that were checked and
//! are stored.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::error::CatalogueError;
use crate::files::digest::Digest;
use crate::runtime::loader::{inspect, LoadOptions, Metadata};

/// A plugin file, checked: its bytes, their SHA-256 (hex) and its metadata.
#[derive(Debug)]
pub struct Checked {
    /// The file's content.
    pub bytes: Vec<u8>,
    /// SHA-256 of `bytes`, lowercase hex.
    pub sha256: String,
    /// What the plugin says about itself.
    pub metadata: Metadata,
}

/// Reads the file at `path` (a regular file, at most `max_bytes`: reading stops one byte
/// past the limit), checks it as a load would without running its `init`, and hashes it.
/// `copy_dir` is where the private copy that is opened goes (a directory only this user
/// can write).
pub fn check_file(path: &Path, max_bytes: u64, copy_dir: &Path) -> Result<Checked, CatalogueError> {
    let file = path.display().to_string();
    let unreadable = |reason: String| CatalogueError::Unreadable {
        file: file.clone(),
        reason,
    };
    let source = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|err| unreadable(format!("cannot open: {err}")))?;
    let meta = source
        .metadata()
        .map_err(|err| unreadable(format!("cannot stat: {err}")))?;
    if !meta.is_file() {
        return Err(unreadable("not a regular file".into()));
    }
    let too_big = |size: u64| CatalogueError::TooBig {
        file: file.clone(),
        size,
        limit: max_bytes,
    };
    if meta.len() > max_bytes {
        return Err(too_big(meta.len()));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    (&source)
        .take(max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|err| unreadable(format!("cannot read: {err}")))?;
    if bytes.len() as u64 > max_bytes {
        // It grew while being read.
        return Err(too_big(bytes.len() as u64));
    }
    let metadata = check_bytes(&bytes, &file, copy_dir)?;
    let sha256 = hex(&Digest::sha256_of(&bytes));
    Ok(Checked {
        bytes,
        sha256,
        metadata,
    })
}

/// Writes `bytes` to a file of their own in `copy_dir` and checks it with the loader's
/// check-only path. The file is removed afterwards.
fn check_bytes(bytes: &[u8], file: &str, copy_dir: &Path) -> Result<Metadata, CatalogueError> {
    let host_error = |err: std::io::Error| CatalogueError::Unreadable {
        file: file.to_owned(),
        reason: format!(
            "cannot write the copy to check in {}: {err}",
            copy_dir.display()
        ),
    };
    let dir = tempfile::Builder::new()
        .prefix("publish-")
        .tempdir_in(copy_dir)
        .map_err(host_error)?;
    let candidate = dir.path().join("candidate.so");
    let mut out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o700)
        .custom_flags(libc::O_CLOEXEC)
        .open(&candidate)
        .map_err(host_error)?;
    out.write_all(bytes).map_err(host_error)?;
    drop(out);
    let options = LoadOptions {
        copy_dir: Some(dir.path().to_owned()),
        allow_insecure_permissions: false,
    };
    inspect(&candidate, &options).map_err(|err| CatalogueError::NotAPlugin {
        file: file.to_owned(),
        // The loader's message names the candidate copy; the user knows their file.
        reason: err
            .message()
            .replace(&candidate.display().to_string(), file),
    })
}

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
