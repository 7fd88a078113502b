//! What identifies a plugin file's content: a fast hash that tells a changed file from a
//! touched one, and its SHA-256, which pins in host.toml compare against.
//!
//! The fast hash (XXH3, 128 bits) is computed while the file is staged: about 1 ms for a
//! 7 MB plugin, where SHA-256 takes about 4 ms, which would be most of a reload. So SHA-256
//! is computed while staging only when a pin needs it, and otherwise on first demand (a
//! listing, a pin added later); either way from the private copy, the bytes that are
//! loaded, never from the watched file. The digest keeps a descriptor of the copy, which
//! keeps its content after it is unlinked, until then.

use std::fs::File;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use sha2::{Digest as _, Sha256};

/// A plugin file's content identity. Cheap to clone; clones share the SHA-256 once known.
#[derive(Clone)]
pub(crate) struct Digest(Arc<Inner>);

struct Inner {
    content: u128,
    sha256: Mutex<Sha256State>,
}

enum Sha256State {
    Known([u8; 32]),
    /// To be computed from this copy, of this many bytes, when first asked for.
    Later(File, u64),
    /// It could not be computed (the copy could not be read again), or there is nothing to
    /// compute it from.
    Unknown,
}

impl std::fmt::Debug for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Digest")
            .field("content", &format_args!("{:032x}", self.0.content))
            .finish_non_exhaustive()
    }
}

impl Digest {
    /// The fast hash of `bytes`.
    pub(crate) fn content_of(bytes: &[u8]) -> u128 {
        xxhash_rust::xxh3::xxh3_128(bytes)
    }

    /// SHA-256 of `bytes`.
    pub(crate) fn sha256_of(bytes: &[u8]) -> [u8; 32] {
        Sha256::digest(bytes).into()
    }

    /// A digest whose SHA-256 is known already.
    pub(crate) fn known(content: u128, sha256: [u8; 32]) -> Digest {
        Digest::with(content, Sha256State::Known(sha256))
    }

    /// A digest whose SHA-256 is computed from `copy` (of `len` bytes) when first asked for.
    pub(crate) fn later(content: u128, copy: File, len: u64) -> Digest {
        Digest::with(content, Sha256State::Later(copy, len))
    }

    /// A digest for a library opened where nothing is compared (a worker process).
    pub(crate) fn none() -> Digest {
        Digest::with(0, Sha256State::Unknown)
    }

    fn with(content: u128, state: Sha256State) -> Digest {
        Digest(Arc::new(Inner {
            content,
            sha256: Mutex::new(state),
        }))
    }

    /// The fast content hash: equal for equal content.
    pub(crate) fn content(&self) -> u128 {
        self.0.content
    }

    /// The SHA-256, if it is known by now.
    pub(crate) fn sha256_now(&self) -> Option<[u8; 32]> {
        match *self.lock() {
            Sha256State::Known(sha256) => Some(sha256),
            Sha256State::Later(..) | Sha256State::Unknown => None,
        }
    }

    /// The SHA-256, computing it now if it was left for later (a few ms for a large
    /// plugin: never call this under a lock others need); `None` if it cannot be computed.
    pub(crate) fn sha256(&self) -> Option<[u8; 32]> {
        let mut state = self.lock();
        if let Sha256State::Later(copy, len) = &*state {
            *state = match crate::files::plugin_file::Mapping::of(copy, *len) {
                Ok(mapping) => Sha256State::Known(Digest::sha256_of(mapping.bytes())),
                Err(err) => {
                    tracing::warn!("cannot compute the SHA-256 of a plugin's private copy: {err}");
                    Sha256State::Unknown
                }
            };
        }
        match *state {
            Sha256State::Known(sha256) => Some(sha256),
            Sha256State::Later(..) | Sha256State::Unknown => None,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Sha256State> {
        self.0.sha256.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn the_sha256_left_for_later_is_the_file_s() {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(b"plugin bytes").unwrap();
        let digest = Digest::later(Digest::content_of(b"plugin bytes"), file, 12);
        assert_eq!(digest.sha256_now(), None);
        assert_eq!(digest.sha256(), Some(Digest::sha256_of(b"plugin bytes")));
        assert_eq!(digest.sha256_now(), digest.sha256());
        assert_eq!(digest.content(), Digest::content_of(b"plugin bytes"));
        assert_ne!(digest.content(), Digest::content_of(b"plugin bytez"));
        assert_eq!(Digest::none().sha256(), None);
    }
}
