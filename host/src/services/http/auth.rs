//! Who may use the HTTP API: a bearer token (and an optional read-only one), compared in
//! constant time, checked before anything else is looked at, never logged.
//!
//! The token comes from `HOST_HTTP_TOKEN`, else `[http] token_file`, else
//! `STATE_DIR/http-token`, made at first start (random, mode 0600). A token file must be
//! the user's own and closed to others (mode 0600), as the socket's directory must be.

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::files::regular::read_regular;

/// The environment variable that gives the token.
pub const TOKEN_ENV: &str = "HOST_HTTP_TOKEN";

/// The largest token file read (a token is a line of 64 hex digits).
const MAX_TOKEN_FILE_BYTES: u64 = 64 << 10;

/// The tokens the API accepts. `Debug` never shows them.
#[derive(Clone)]
pub struct Tokens {
    write: [u8; 32],
    read: Option<[u8; 32]>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("read_only_token", &self.read.is_some())
            .finish_non_exhaustive()
    }
}

/// What a request's token allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No valid token.
    None,
    /// The read-only token: lists and reads.
    Read,
    /// The token: everything.
    Write,
}

/// Where the token came from, for the start-up log line (never the token itself).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenSource {
    /// `HOST_HTTP_TOKEN`.
    Environment,
    /// A token file given in host.toml.
    File(PathBuf),
    /// The state directory's `http-token`, made now (`true`) or earlier.
    Generated(PathBuf, bool),
}

/// Why the tokens cannot be read: one line naming the file.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TokenError(pub String);

impl Tokens {
    /// Tokens from these values (for embedders and tests).
    pub fn new(write: &str, read: Option<&str>) -> Result<Tokens, TokenError> {
        if write.trim().is_empty() || read.is_some_and(|r| r.trim().is_empty()) {
            return Err(TokenError("an HTTP token is empty".into()));
        }
        Ok(Tokens {
            write: digest(write.trim()),
            read: read.map(|r| digest(r.trim())),
        })
    }

    /// The tokens as `host serve` finds them (see the module docs); `state_dir` is where
    /// a token is made when none is given.
    pub fn load(
        env: Option<String>,
        token_file: Option<&Path>,
        read_token_file: Option<&Path>,
        state_dir: Option<&Path>,
    ) -> Result<(Tokens, TokenSource), TokenError> {
        let read = read_token_file.map(read_private).transpose()?;
        let (write, source) = match (env.filter(|t| !t.trim().is_empty()), token_file) {
            (Some(token), _) => (token, TokenSource::Environment),
            (None, Some(file)) => (read_private(file)?, TokenSource::File(file.to_owned())),
            (None, None) => {
                let dir = state_dir.ok_or_else(|| {
                    TokenError(format!(
                        "the HTTP API needs a token: set {TOKEN_ENV} or [http] token_file \
                         (or keep [tasks] enabled, so the host has a state directory to make \
                         one in)"
                    ))
                })?;
                let path = dir.join("http-token");
                let made = make_token_file(&path)?;
                (read_private(&path)?, TokenSource::Generated(path, made))
            }
        };
        if read.as_deref().is_some_and(|r| r.trim() == write.trim()) {
            return Err(TokenError(
                "[http] read_token_file holds the same token as the read-write one".into(),
            ));
        }
        Ok((Tokens::new(&write, read.as_deref())?, source))
    }

    /// What `authorization` (the header's value) allows, compared in constant time.
    pub fn check(&self, authorization: Option<&[u8]>) -> Access {
        let Some(token) = authorization.and_then(|h| h.strip_prefix(b"Bearer ")) else {
            return Access::None;
        };
        let given = digest_bytes(token.trim_ascii());
        if same(&given, &self.write) {
            Access::Write
        } else if self.read.as_ref().is_some_and(|read| same(&given, read)) {
            Access::Read
        } else {
            Access::None
        }
    }
}

fn digest(token: &str) -> [u8; 32] {
    digest_bytes(token.as_bytes())
}

/// Tokens are compared as SHA-256 digests, so neither their bytes nor their lengths show in
/// the time a comparison takes.
fn digest_bytes(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

/// Equal, in a time that does not depend on where they differ.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Reads a token file that must be this user's and closed to others.
fn read_private(path: &Path) -> Result<String, TokenError> {
    let fail = |why: String| TokenError(format!("token file {}: {why}", path.display()));
    // Never a plain read: a FIFO there would block the thread starting the HTTP API. The
    // owner and mode checked are those of the very file read (its fstat).
    let read = read_regular(path, MAX_TOKEN_FILE_BYTES).map_err(|err| fail(err.to_string()))?;
    let meta = &read.metadata;
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    if meta.uid() != uid {
        return Err(fail(format!(
            "owned by user {}, not this user ({uid}): chown it",
            meta.uid()
        )));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(fail(format!(
            "mode {mode:o} lets others read it: chmod 600 it"
        )));
    }
    let text = read.text;
    if text.trim().is_empty() {
        return Err(fail("it is empty".into()));
    }
    Ok(text.trim().to_owned())
}

/// Makes `path` with a random token, mode 0600, unless it exists; whether it made it.
fn make_token_file(path: &Path) -> Result<bool, TokenError> {
    let fail = |err: io::Error| TokenError(format!("token file {}: {err}", path.display()));
    let mut random = [0u8; 32];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut random))
        .map_err(fail)?;
    let token: String = random.iter().map(|b| format!("{b:02x}")).collect();
    match fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(mut file) => {
            file.write_all(token.as_bytes())
                .and_then(|()| file.write_all(b"\n"))
                .map_err(fail)?;
            Ok(true)
        }
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(err) => Err(fail(err)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_grant_what_they_should() {
        let tokens = Tokens::new("secret", Some("reader")).unwrap();
        assert_eq!(tokens.check(Some(b"Bearer secret")), Access::Write);
        assert_eq!(tokens.check(Some(b"Bearer reader")), Access::Read);
        assert_eq!(tokens.check(Some(b"Bearer secre")), Access::None);
        assert_eq!(tokens.check(Some(b"secret")), Access::None);
        assert_eq!(tokens.check(None), Access::None);
        assert!(!format!("{tokens:?}").contains("secret"));
    }

    #[test]
    fn a_token_is_made_once_0600_and_a_file_open_to_others_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (_, source) = Tokens::load(None, None, None, Some(dir.path())).unwrap();
        let path = dir.path().join("http-token");
        assert_eq!(source, TokenSource::Generated(path.clone(), true));
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let token = fs::read_to_string(&path).unwrap();
        let (tokens, source) = Tokens::load(None, None, None, Some(dir.path())).unwrap();
        assert_eq!(source, TokenSource::Generated(path.clone(), false));
        let header = format!("Bearer {}", token.trim());
        assert_eq!(tokens.check(Some(header.as_bytes())), Access::Write);

        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = Tokens::load(None, Some(&path), None, None).unwrap_err();
        assert!(err.0.contains("mode 644 lets others read it"), "{err}");
        assert!(err.0.contains("http-token"), "{err}");
        let err = Tokens::load(None, None, None, None).unwrap_err();
        assert!(err.0.contains(TOKEN_ENV), "{err}");
    }

    #[test]
    fn a_token_file_that_is_a_fifo_is_refused_without_blocking() {
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("http-token");
        let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: mkfifo reads the NUL-terminated path, which outlives the call.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        let err = Tokens::load(None, Some(&path), None, None).unwrap_err();
        assert_eq!(
            err.0,
            format!("token file {}: not a regular file (a FIFO)", path.display())
        );
    }
}
