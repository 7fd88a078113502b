//! File bookkeeping: what the host knows about each plugin file, and the rules that decide
//! what a change to a file means.
//!
//! The rules, each pinned by a unit test below:
//!
//! * Content already served (or found disabled) from a path is not loaded again; content that
//!   failed is not tried or reported again until the file changes, or until what made it
//!   fail does (the configuration of its plugin, the file that held its name).
//! * A file *serves* a plugin name only once a generation from it has been committed. What a
//!   rejected version declared is remembered for the listing and for retries, but never
//!   decides what gets unloaded.
//! * Two files may not serve one name: the second is refused while the first exists, and is
//!   retried when the first is removed. A file that serves a name under a path that no longer
//!   exists (it was renamed) hands the name over.
//! * A file that starts serving another name stops serving its old one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::runtime::loader::{LoadError, LoadErrorKind, Metadata};

/// What the host knows about one plugin file.
#[derive(Debug, Default, Clone)]
pub(crate) struct FileEntry {
    /// The name this file serves now, if a generation from it is in the call table.
    pub(crate) serves: Option<String>,
    /// Content hash of what was accepted last: served, or found disabled.
    pub(crate) accepted: Option<u128>,
    /// What the content read last declared, whether it loaded or not.
    pub(crate) declared: Option<Metadata>,
    /// Why the last attempt failed.
    pub(crate) error: Option<LoadError>,
    /// Content hash of what failed, so that it is not tried again until it changes.
    pub(crate) failed: Option<u128>,
}

/// What to do with content just read from a path.
#[derive(Debug)]
pub(crate) enum Verdict {
    /// Load it.
    Load,
    /// It is what the path already serves (or was found disabled): nothing to do.
    Unchanged,
    /// It failed before, this way; not tried again.
    Failed(LoadError),
}

/// Every plugin file the host knows.
#[derive(Debug, Default)]
pub(crate) struct FileBook {
    files: BTreeMap<PathBuf, FileEntry>,
}

impl FileBook {
    pub(crate) fn get(&self, path: &Path) -> Option<&FileEntry> {
        self.files.get(path)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&PathBuf, &FileEntry)> {
        self.files.iter()
    }

    /// Decides what content with hash `content`, just read from `path`, calls for.
    pub(crate) fn verdict(&self, path: &Path, content: u128) -> Verdict {
        let Some(entry) = self.files.get(path) else {
            return Verdict::Load;
        };
        if entry.accepted == Some(content) {
            return Verdict::Unchanged;
        }
        match &entry.error {
            Some(err) if entry.failed == Some(content) => Verdict::Failed(err.clone().repeated()),
            _ => Verdict::Load,
        }
    }

    /// The content read from `path` is what it serves already (see [`FileBook::verdict`]):
    /// whatever failed since is forgotten, the file is back to what it was.
    pub(crate) fn unchanged(&mut self, path: &Path) {
        if let Some(entry) = self.files.get_mut(path) {
            entry.error = None;
            entry.failed = None;
        }
    }

    /// The file, other than `path`, that serves `name`, if there is one.
    pub(crate) fn server_of(&self, name: &str, except: &Path) -> Option<&Path> {
        self.files
            .iter()
            .find(|(p, e)| p.as_path() != except && e.serves.as_deref() == Some(name))
            .map(|(p, _)| p.as_path())
    }

    /// Checks that `path` may serve `name`: no other existing file serves it. A file that
    /// serves it but is gone from the disk (renamed to `path`, say) is forgotten, so that
    /// `path` takes over in one swap.
    pub(crate) fn claim(
        &mut self,
        path: &Path,
        name: &str,
        exists: impl Fn(&Path) -> bool,
    ) -> Result<(), LoadError> {
        let Some(other) = self.server_of(name, path).map(Path::to_owned) else {
            return Ok(());
        };
        if exists(&other) {
            return Err(LoadError::new(
                path,
                LoadErrorKind::NameConflict,
                format!(
                    "declares plugin {name}, which {} already serves: remove or rename one of them",
                    other.display()
                ),
            ));
        }
        self.files.remove(&other);
        Ok(())
    }

    /// Records that `path` now serves `name` (or, with `serving` false, that its plugin is
    /// disabled) from content `content`. Returns the name it served before, if that was
    /// another one: that plugin must stop being served.
    pub(crate) fn accept(
        &mut self,
        path: &Path,
        metadata: &Metadata,
        content: u128,
        serving: bool,
    ) -> Option<String> {
        let entry = self.files.entry(path.to_owned()).or_default();
        let previous = entry.serves.take().filter(|p| *p != metadata.name);
        entry.serves = serving.then(|| metadata.name.clone());
        entry.accepted = Some(content);
        entry.declared = Some(metadata.clone());
        entry.error = None;
        entry.failed = None;
        previous
    }

    /// Records a failed attempt on `path`: content `content` (if it was read) failed with
    /// `error`, after declaring `declared` (if it got that far). What the file serves is
    /// unchanged.
    pub(crate) fn reject(
        &mut self,
        path: &Path,
        content: Option<u128>,
        declared: Option<Metadata>,
        error: &LoadError,
    ) {
        let entry = self.files.entry(path.to_owned()).or_default();
        if declared.is_some() {
            entry.declared = declared;
        }
        entry.failed = content;
        entry.error = Some(error.clone());
    }

    /// Records that `path` no longer serves `name` because the configuration says so
    /// (disabled, or no longer matching a pin): with `error`, as a failure of its content.
    pub(crate) fn stop_serving(&mut self, path: &Path, error: Option<&LoadError>) {
        if let Some(entry) = self.files.get_mut(path) {
            entry.serves = None;
            if let Some(error) = error {
                entry.failed = entry.accepted.take();
                entry.error = Some(error.clone());
            }
        }
    }

    /// Forgets `path`. Returns the name it served, and the files that were refused because
    /// it held that name: they may serve it now.
    pub(crate) fn remove(&mut self, path: &Path) -> (Option<String>, Vec<PathBuf>) {
        let Some(entry) = self.files.remove(path) else {
            return (None, Vec::new());
        };
        let Some(name) = entry.serves else {
            return (None, Vec::new());
        };
        let waiting = self.waiting_for(&name);
        (Some(name), waiting)
    }

    /// Files refused because another file held `name`; their failure is forgotten so that
    /// they are tried again.
    pub(crate) fn waiting_for(&mut self, name: &str) -> Vec<PathBuf> {
        let mut waiting = Vec::new();
        for (path, entry) in &mut self.files {
            let conflicted = entry
                .error
                .as_ref()
                .is_some_and(|e| e.kind() == LoadErrorKind::NameConflict);
            if conflicted && entry.declared.as_ref().is_some_and(|m| m.name == name) {
                entry.failed = None;
                waiting.push(path.clone());
            }
        }
        waiting
    }

    /// The settings of plugin `name` changed: files that declare it and do not serve it are
    /// to be tried again (a failure may have been the configuration's; a disabled plugin may
    /// be enabled now). Returns them.
    pub(crate) fn retry_declaring(&mut self, name: &str) -> Vec<PathBuf> {
        let mut retry = Vec::new();
        for (path, entry) in &mut self.files {
            if entry.serves.is_none() && entry.declared.as_ref().is_some_and(|m| m.name == name) {
                entry.failed = None;
                entry.accepted = None;
                retry.push(path.clone());
            }
        }
        retry
    }

    /// The file at `path` is to be loaded again although its content is unchanged (its
    /// plugin moves in or out of a worker process). Returns it, to be loaded.
    pub(crate) fn reload(&mut self, path: &Path) -> Option<PathBuf> {
        let entry = self.files.get_mut(path)?;
        entry.accepted = None;
        entry.failed = None;
        Some(path.to_owned())
    }

    /// Plugin `name` was rolled back from `bad` (path, content) to `good`: `bad`'s content
    /// failed with `error` and is not tried again until its file changes; `good` serves.
    pub(crate) fn rolled_back(
        &mut self,
        name: &str,
        bad: (&Path, u128),
        good: (&Path, u128),
        error: &LoadError,
    ) {
        let entry = self.files.entry(bad.0.to_owned()).or_default();
        entry.failed = Some(bad.1);
        entry.error = Some(error.clone());
        if bad.0 != good.0 && entry.serves.as_deref() == Some(name) {
            entry.serves = None;
        }
        let entry = self.files.entry(good.0.to_owned()).or_default();
        entry.serves = Some(name.to_owned());
        entry.accepted = Some(good.1);
    }

    /// The content the file at `path` held when it was read last, as far as the book
    /// knows: what failed since it was accepted, or else what was accepted.
    pub(crate) fn on_disk(&self, path: &Path) -> Option<u128> {
        let entry = self.files.get(path)?;
        entry.failed.or(entry.accepted)
    }

    /// Every path the book knows.
    pub(crate) fn paths(&self) -> Vec<PathBuf> {
        self.files.keys().cloned().collect()
    }

    /// Forgets everything.
    pub(crate) fn clear(&mut self) {
        self.files.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(name: &str) -> Metadata {
        Metadata {
            name: name.to_owned(),
            version: "0.1.0".into(),
            description: String::new(),
            callbacks: Vec::new(),
            api_version: "0.1.0".into(),
            abi_version: "1.0".into(),
            schedules: Vec::new(),
            panic: Default::default(),
        }
    }

    fn p(name: &str) -> PathBuf {
        PathBuf::from(format!("/plugins/{name}"))
    }

    const A: u128 = 1;
    const B: u128 = 2;

    fn failure(path: &Path, kind: LoadErrorKind) -> LoadError {
        LoadError::new(path, kind, "it failed")
    }

    #[test]
    fn served_content_is_unchanged_and_failed_content_is_not_retried() {
        let mut book = FileBook::default();
        assert!(matches!(book.verdict(&p("x.so"), A), Verdict::Load));
        assert_eq!(book.accept(&p("x.so"), &meta("x"), A, true), None);
        assert!(matches!(book.verdict(&p("x.so"), A), Verdict::Unchanged));

        let err = failure(&p("x.so"), LoadErrorKind::InitFailed);
        book.reject(&p("x.so"), Some(B), Some(meta("x")), &err);
        match book.verdict(&p("x.so"), B) {
            Verdict::Failed(err) => assert!(err.is_repeated()),
            other => panic!("{other:?}"),
        }
        // The old content is still what the file serves; when it comes back, the failure
        // is forgotten.
        assert_eq!(book.get(&p("x.so")).unwrap().serves.as_deref(), Some("x"));
        assert!(matches!(book.verdict(&p("x.so"), A), Verdict::Unchanged));
        book.unchanged(&p("x.so"));
        assert!(book.get(&p("x.so")).unwrap().error.is_none());
        book.reject(&p("x.so"), Some(B), Some(meta("x")), &err);
        // Content that failed before the hash was known is always tried again.
        book.reject(&p("x.so"), None, None, &err);
        assert!(matches!(book.verdict(&p("x.so"), B), Verdict::Load));
    }

    #[test]
    fn a_second_file_for_a_name_is_refused_while_the_first_exists() {
        let mut book = FileBook::default();
        book.accept(&p("a.so"), &meta("hello"), A, true);
        let err = book.claim(&p("b.so"), "hello", |_| true).unwrap_err();
        assert_eq!(err.kind(), LoadErrorKind::NameConflict);
        assert!(err.message().contains("/plugins/a.so already serves"));
        book.reject(&p("b.so"), Some(B), Some(meta("hello")), &err);

        // The first goes: the second is named to be tried again.
        let (name, waiting) = book.remove(&p("a.so"));
        assert_eq!(name.as_deref(), Some("hello"));
        assert_eq!(waiting, vec![p("b.so")]);
        assert!(matches!(book.verdict(&p("b.so"), B), Verdict::Load));
    }

    #[test]
    fn a_renamed_file_takes_the_name_over() {
        let mut book = FileBook::default();
        book.accept(&p("a.so"), &meta("hello"), A, true);
        book.claim(&p("b.so"), "hello", |path| path != p("a.so"))
            .unwrap();
        assert!(book.get(&p("a.so")).is_none());
    }

    #[test]
    fn a_rejected_file_never_decides_what_is_unloaded() {
        // Defect 10a: a file refused for a name conflict, rebuilt to declare another name,
        // unloaded the plugin that the other file served.
        let mut book = FileBook::default();
        book.accept(&p("a.so"), &meta("hello"), A, true);
        let err = book.claim(&p("b.so"), "hello", |_| true).unwrap_err();
        book.reject(&p("b.so"), Some(B), Some(meta("hello")), &err);
        let previous = book.accept(&p("b.so"), &meta("other"), 3, true);
        assert_eq!(previous, None, "b.so never served hello");
        assert_eq!(
            book.server_of("hello", &p("b.so")),
            Some(p("a.so").as_path())
        );
    }

    #[test]
    fn a_file_that_declares_another_name_stops_serving_the_old_one() {
        let mut book = FileBook::default();
        book.accept(&p("a.so"), &meta("hello"), A, true);
        let previous = book.accept(&p("a.so"), &meta("howdy"), B, true);
        assert_eq!(previous.as_deref(), Some("hello"));
        assert_eq!(book.server_of("hello", Path::new("/")), None);
    }

    #[test]
    fn a_configuration_change_retries_what_failed_and_what_was_disabled() {
        // Defect 10b: a fixed configuration did not clear the failure of the content.
        let mut book = FileBook::default();
        let err = failure(&p("a.so"), LoadErrorKind::HashMismatch);
        book.reject(&p("a.so"), Some(A), Some(meta("hello")), &err);
        book.accept(&p("b.so"), &meta("sleepy"), B, false);
        book.accept(&p("c.so"), &meta("other"), B, true);
        assert!(matches!(book.verdict(&p("a.so"), A), Verdict::Failed(_)));
        assert!(matches!(book.verdict(&p("b.so"), B), Verdict::Unchanged));

        assert_eq!(book.retry_declaring("hello"), vec![p("a.so")]);
        assert!(matches!(book.verdict(&p("a.so"), A), Verdict::Load));
        assert_eq!(book.retry_declaring("sleepy"), vec![p("b.so")]);
        assert!(matches!(book.verdict(&p("b.so"), B), Verdict::Load));
        assert!(book.retry_declaring("other").is_empty(), "c.so serves it");
    }

    #[test]
    fn a_rollback_serves_the_old_content_and_refuses_the_new_until_it_changes() {
        let mut book = FileBook::default();
        book.accept(&p("a.so"), &meta("hello"), A, true);
        book.accept(&p("a.so"), &meta("hello"), B, true);
        let err = failure(&p("a.so"), LoadErrorKind::RolledBack);
        book.rolled_back("hello", (&p("a.so"), B), (&p("a.so"), A), &err);
        let entry = book.get(&p("a.so")).unwrap();
        assert_eq!(entry.serves.as_deref(), Some("hello"));
        // The bad content, read again, is refused; the good one is what it serves.
        assert!(matches!(book.verdict(&p("a.so"), B), Verdict::Failed(_)));
        assert!(matches!(book.verdict(&p("a.so"), A), Verdict::Unchanged));
        // Anything new is loaded.
        assert!(matches!(book.verdict(&p("a.so"), 3), Verdict::Load));

        // Rolled back to a version another file held: that file serves now.
        let mut book = FileBook::default();
        book.accept(&p("old.so"), &meta("hello"), A, true);
        book.accept(&p("new.so"), &meta("hello"), B, true);
        book.rolled_back("hello", (&p("new.so"), B), (&p("old.so"), A), &err);
        assert_eq!(book.get(&p("new.so")).unwrap().serves, None);
        assert_eq!(
            book.get(&p("old.so")).unwrap().serves.as_deref(),
            Some("hello")
        );
    }

    #[test]
    fn stopping_for_a_pin_remembers_the_content_as_failed() {
        // Defect 10b: a pin added at runtime must evict a library that does not match it,
        // and keep it from being loaded again until the file or the pin changes.
        let mut book = FileBook::default();
        book.accept(&p("a.so"), &meta("hello"), A, true);
        let err = failure(&p("a.so"), LoadErrorKind::HashMismatch);
        book.stop_serving(&p("a.so"), Some(&err));
        let entry = book.get(&p("a.so")).unwrap();
        assert_eq!(entry.serves, None);
        assert!(matches!(book.verdict(&p("a.so"), A), Verdict::Failed(_)));
    }
}
