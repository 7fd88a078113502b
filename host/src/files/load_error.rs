//! Why a plugin file could not be loaded, and how files are turned into libraries: the
//! typed errors of every step from opening the file to publishing its version.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// How a plugin file is turned into a library.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Where private copies are written before `dlopen`. Must allow executable mappings.
    /// `None`: a directory created under the system's temporary directory.
    pub copy_dir: Option<PathBuf>,
    /// Turn the ownership and permission checks into warnings.
    pub allow_insecure_permissions: bool,
}

/// What kind of problem stopped a load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum LoadErrorKind {
    /// The file could not be opened or read, or is not a regular file.
    Unreadable,
    /// Some process has the file open for writing, or it changed while it was read: not an
    /// error of its content, try again once the writer is done (the watcher does).
    BeingWritten,
    /// The file or its directory is writable by others or owned by someone else.
    InsecurePermissions,
    /// The file is not a shared library this process can open.
    NotALibrary,
    /// The library does not export a plugin.
    NotAPlugin,
    /// The plugin speaks another ABI version or its layout does not match.
    IncompatibleAbi,
    /// The plugin's metadata is unusable.
    InvalidMetadata,
    /// The plugin's `init` failed or panicked.
    InitFailed,
    /// The plugin's `init` did not return within `init_timeout_ms`.
    InitTimedOut,
    /// Another file already serves a plugin of that name.
    NameConflict,
    /// The plugin's `self_test` callback failed on the new version.
    SelfTestFailed,
    /// The version was rolled back after it failed during its probation.
    RolledBack,
    /// The file's SHA-256 is not the pinned one.
    HashMismatch,
    /// The plugin was built with `panic = "abort"` and its settings keep it in the host's
    /// process, where its first panic would end the host.
    AbortsOnPanic,
    /// Replaced versions of the plugin stay in memory past its `max_pinned_versions`, and
    /// its settings keep it in the host's process: its reloads are refused until the host
    /// restarts.
    TooManyPinned,
    /// The plugin's sandbox cannot be applied: it would run in the host's process, or the
    /// kernel lacks what its settings need.
    Sandbox,
    /// The host itself could not do its part (for example write the private copy).
    Host,
}

/// Why a plugin file could not be loaded: one line naming the file, the problem and what to
/// do, and optionally a long technical detail (abi_stable's layout report).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {message}", path.display())]
pub struct LoadError {
    path: PathBuf,
    kind: LoadErrorKind,
    message: String,
    detail: Option<String>,
    /// The same content failed the same way before (not logged again).
    repeated: bool,
}

impl LoadError {
    pub(crate) fn new(path: &Path, kind: LoadErrorKind, message: impl Into<String>) -> Self {
        LoadError {
            path: path.to_owned(),
            kind,
            message: message.into(),
            detail: None,
            repeated: false,
        }
    }

    pub(crate) fn repeated(mut self) -> Self {
        self.repeated = true;
        self
    }

    pub(crate) fn is_repeated(&self) -> bool {
        self.repeated
    }

    pub(crate) fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// The plugin file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What kind of problem it is.
    pub fn kind(&self) -> LoadErrorKind {
        self.kind
    }

    /// The one-line description, without the path.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Long technical detail, such as abi_stable's type layout comparison, if there is any.
    pub fn detail(&self) -> Option<&str> {
        self.detail.as_deref()
    }
}
