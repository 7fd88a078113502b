//! Reading a small file a user names (host.toml, a token file of the HTTP API) without
//! putting the reading thread at risk.
//!
//! A plain `read` of a FIFO nobody writes blocks forever, a device may never end, and a huge
//! file takes the memory it holds. So the file is opened with `O_NONBLOCK | O_CLOEXEC` (an
//! open of a FIFO then returns at once), checked with `fstat` on the opened descriptor (no
//! race with a rename), refused unless it is a regular file, and read up to a bound. The
//! descriptor stays non-blocking while it is read: the few regular-looking files that could
//! block (`/proc/kmsg`, tracing pipes) then fail with `EAGAIN` instead.

use std::fs::{File, Metadata, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// The largest `host.toml` read: 1 MiB (a large one is a few kilobytes).
pub const MAX_CONFIG_FILE_BYTES: u64 = 1 << 20;

/// Why a file could not be read. Its `Display` is one line without the file's name: the
/// caller names the file (and says which file it is).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// The file could not be opened, or its status read.
    #[error("cannot open: {0}")]
    Open(#[source] io::Error),
    /// A FIFO, a device, a directory, a socket: nothing the host reads settings from.
    #[error("not a regular file ({0})")]
    NotRegular(&'static str),
    /// Larger than the bound the caller gave.
    #[error("larger than {limit} bytes, the most this file may have")]
    TooLarge {
        /// The bound, in bytes.
        limit: u64,
    },
    /// Reading failed part way (or would have blocked).
    #[error("cannot read: {0}")]
    Read(#[source] io::Error),
    /// The content is not UTF-8 text.
    #[error("not UTF-8 text")]
    NotText,
}

/// A regular file's text and its status, as seen on the descriptor that was read.
#[derive(Debug)]
pub struct RegularText {
    /// The whole content.
    pub text: String,
    /// The status from `fstat` (owner, mode, ...).
    pub metadata: Metadata,
}

/// Reads `path` as text if it is a regular file of at most `limit` bytes; never blocks on a
/// FIFO or a device (see the module docs).
pub fn read_regular(path: &Path, limit: u64) -> Result<RegularText, ReadError> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|err| match err.raw_os_error() {
            // What open(2) says of a Unix socket.
            Some(libc::ENXIO) if is_socket(path) => ReadError::NotRegular("a socket"),
            _ => ReadError::Open(err),
        })?;
    let metadata = file.metadata().map_err(ReadError::Open)?;
    if let Some(kind) = not_regular(&metadata) {
        return Err(ReadError::NotRegular(kind));
    }
    if metadata.len() > limit {
        return Err(ReadError::TooLarge { limit });
    }
    let text = read_bounded(file, limit)?;
    Ok(RegularText { text, metadata })
}

/// What a file that is not regular is, in a few words; `None` for a regular file.
fn not_regular(metadata: &Metadata) -> Option<&'static str> {
    let kind = metadata.file_type();
    if kind.is_file() {
        None
    } else if kind.is_fifo() {
        Some("a FIFO")
    } else if kind.is_dir() {
        Some("a directory")
    } else if kind.is_char_device() {
        Some("a character device")
    } else if kind.is_block_device() {
        Some("a block device")
    } else if kind.is_socket() {
        Some("a socket")
    } else {
        Some("not a file")
    }
}

fn is_socket(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

/// At most `limit` bytes: a file that grew past it since `fstat` is refused too.
fn read_bounded(file: File, limit: u64) -> Result<String, ReadError> {
    let mut bytes = Vec::new();
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(ReadError::Read)?;
    if bytes.len() as u64 > limit {
        return Err(ReadError::TooLarge { limit });
    }
    String::from_utf8(bytes).map_err(|_| ReadError::NotText)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    use std::time::{Duration, Instant};

    fn mkfifo(path: &Path) {
        let c_path = CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: mkfifo reads the NUL-terminated path, which outlives the call.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    }

    #[test]
    fn a_regular_file_is_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("host.toml");
        std::fs::write(&path, "socket = \"x\"\n").unwrap();
        let read = read_regular(&path, 100).unwrap();
        assert_eq!(read.text, "socket = \"x\"\n");
        assert!(read.metadata.is_file());
    }

    #[test]
    fn a_fifo_nobody_writes_is_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("host.toml");
        mkfifo(&path);
        let start = Instant::now();
        let err = read_regular(&path, 100).unwrap_err();
        assert_eq!(err.to_string(), "not a regular file (a FIFO)");
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn directories_devices_and_sockets_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = read_regular(dir.path(), 100).unwrap_err();
        assert_eq!(err.to_string(), "not a regular file (a directory)");
        let err = read_regular(Path::new("/dev/zero"), 100).unwrap_err();
        assert_eq!(err.to_string(), "not a regular file (a character device)");
        let socket = dir.path().join("sock");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let err = read_regular(&socket, 100).unwrap_err();
        assert_eq!(err.to_string(), "not a regular file (a socket)");
    }

    #[test]
    fn a_file_past_the_limit_is_refused_in_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("host.toml");
        std::fs::write(&path, vec![b'#'; 101]).unwrap();
        let err = read_regular(&path, 100).unwrap_err();
        assert_eq!(
            err.to_string(),
            "larger than 100 bytes, the most this file may have"
        );
        std::fs::write(&path, vec![b'#'; 100]).unwrap();
        assert_eq!(read_regular(&path, 100).unwrap().text.len(), 100);
    }

    #[test]
    fn a_missing_file_and_binary_content_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gone");
        assert!(matches!(read_regular(&path, 100), Err(ReadError::Open(_))));
        std::fs::write(&path, [0xff, 0xfe]).unwrap();
        assert!(matches!(read_regular(&path, 100), Err(ReadError::NotText)));
    }
}
