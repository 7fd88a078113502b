//! The host's id in the fleet, kept in its state directory (`host-id`) so that it survives
//! restarts: made once (random), written atomically (a hidden temporary file, mode 0600,
//! fsynced, renamed into place, the directory fsynced), and read back at every start with
//! the bounded regular-file reader.
//!
//! Only the host holding the state directory's lock calls this, so no two processes make
//! the file at once.

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::files::regular::read_regular;

/// The name of the id file in a state directory.
pub const HOST_ID_FILE: &str = "host-id";

/// The longest id kept (a hostname is at most 64 bytes, plus the random part).
pub const MAX_HOST_ID_BYTES: usize = 128;

/// The id of this host, and whether it was made now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredHostId {
    /// The id.
    pub id: String,
    /// The file it is kept in.
    pub path: PathBuf,
    /// Made at this start (there was no file).
    pub created: bool,
}

/// Why the id cannot be read or made: one line naming the file and what to do.
#[derive(Debug, thiserror::Error)]
#[error("host id file {}: {why}", path.display())]
pub struct HostIdError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong.
    pub why: String,
}

/// Random hex digits from the kernel (`/dev/urandom`): `bytes` bytes, twice as many digits.
pub fn random_hex(bytes: usize) -> io::Result<String> {
    let mut random = vec![0u8; bytes];
    fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut random))?;
    Ok(random.iter().map(|b| format!("{b:02x}")).collect())
}

/// The id kept in `dir` (a state directory this host holds), made with `fresh` and written
/// there if there is none yet.
pub fn load_or_create(
    dir: &Path,
    fresh: impl FnOnce() -> io::Result<String>,
) -> Result<StoredHostId, HostIdError> {
    let path = dir.join(HOST_ID_FILE);
    let fail = |why: String| HostIdError {
        path: path.clone(),
        why,
    };
    match read_regular(&path, MAX_HOST_ID_BYTES as u64) {
        Ok(read) => {
            let id = read.text.trim();
            check(id).map_err(|why| {
                fail(format!(
                    "{why}; remove it and this host takes a new id at its next start"
                ))
            })?;
            return Ok(StoredHostId {
                id: id.to_owned(),
                path,
                created: false,
            });
        }
        Err(crate::files::regular::ReadError::Open(err))
            if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => return Err(fail(err.to_string())),
    }
    let id = fresh().map_err(|err| fail(format!("cannot make an id: {err}")))?;
    check(&id).map_err(|why| fail(format!("the id made is refused: {why}")))?;
    write_atomically(dir, &path, &id).map_err(|err| fail(format!("cannot write it: {err}")))?;
    Ok(StoredHostId {
        id,
        path,
        created: true,
    })
}

/// An id is 1 to [`MAX_HOST_ID_BYTES`] ASCII letters, digits, `.`, `_` and `-`.
fn check(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("it is empty".to_owned());
    }
    if id.len() > MAX_HOST_ID_BYTES {
        return Err(format!("the id is over {MAX_HOST_ID_BYTES} bytes"));
    }
    if let Some(bad) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "the id holds {bad:?} (only letters, digits, '.', '_' and '-' are allowed)"
        ));
    }
    Ok(())
}

/// Writes `id` to a hidden temporary file in `dir` (mode 0600), fsyncs it, renames it to
/// `path` and fsyncs `dir`: a crash leaves either no id file or the whole one.
fn write_atomically(dir: &Path, path: &Path, id: &str) -> io::Result<()> {
    let temporary = dir.join(format!(".{HOST_ID_FILE}.{}", random_hex(6)?));
    let written = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(&temporary)?;
        file.write_all(id.as_bytes())?;
        file.write_all(b"\n")?;
        file.sync_all()?;
        fs::rename(&temporary, path)?;
        fs::File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = fs::remove_file(&temporary);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn an_id_is_made_once_0600_and_read_back_at_every_start() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create(dir.path(), || Ok("box-0123456789ab".to_owned())).unwrap();
        assert!(first.created);
        assert_eq!(first.id, "box-0123456789ab");
        let mode = fs::metadata(&first.path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = load_or_create(dir.path(), || panic!("no new id is made")).unwrap();
        assert_eq!(
            (again.id.as_str(), again.created),
            (first.id.as_str(), false)
        );
        // Nothing left beside it.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [HOST_ID_FILE]);
    }

    #[test]
    fn a_bad_id_file_is_refused_in_one_line_saying_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(HOST_ID_FILE);
        fs::write(&path, "two words\n").unwrap();
        let err = load_or_create(dir.path(), || Ok("x".to_owned()))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("host-id") && err.contains("' '") && err.contains("remove it"),
            "{err}"
        );
        assert!(!err.contains('\n'), "{err}");
        fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink("/dev/zero", &path).unwrap();
        let err = load_or_create(dir.path(), || Ok("x".to_owned()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a regular file"), "{err}");
    }
}
