//! This host's side of the catalogue on disk: the files the agent writes into the plugins
//! directory, written so that the watcher never sees a partial one (a hidden temporary file,
//! synced, then renamed over the old one), and what the host made of each one.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::store::Report;
use crate::registry::FileStatus;

/// The suffix of the files the catalogue owns in a plugins directory.
const SUFFIX: &str = ".catalogue.so";

/// Where the catalogue's file for `name` goes in `dir`.
pub(crate) fn file_for(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}{SUFFIX}"))
}

/// The names of the catalogue's files already in `dir` (from an earlier run).
pub(crate) fn existing(dir: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| {
            let name = entry.ok()?.file_name().into_string().ok()?;
            let plugin = name.strip_suffix(SUFFIX)?;
            plugin_api::is_valid_name(plugin).then(|| plugin.to_owned())
        })
        .collect()
}

/// Writes `bytes` as the catalogue's file for `name` in `dir`: a hidden temporary file in
/// the same directory (the watcher ignores hidden files), written, synced, then renamed
/// over the old file in one step.
pub(crate) fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<PathBuf> {
    let target = file_for(dir, name);
    let temp = dir.join(format!(".{name}.catalogue.{}.tmp", std::process::id()));
    let written = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o755)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&temp, &target)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&temp);
    }
    written.map(|()| target)
}

/// Removes the catalogue's file for `name` from `dir`, if it is there.
pub(crate) fn remove(dir: &Path, name: &str) -> std::io::Result<()> {
    match fs::remove_file(file_for(dir, name)) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(err),
        _ => Ok(()),
    }
}

/// What the host made of the file at `path`, published with `sha256`: served past its
/// probation (`passed`), served on probation (`serving`), refused or rolled back
/// (`failed`, with the host's reason), or not yet loaded (`loading`). With `min_served_ms`
/// (a canary's probation), the version must also have served that long: a version loaded
/// at start has no probation of its own (nothing to roll back to), and a canary restarted
/// on probation must not pass at once.
pub(crate) fn state_of(
    files: &[FileStatus],
    path: &Path,
    sha256: &str,
    now_ms: u64,
    min_served_ms: u64,
) -> Report {
    let report = |state: &'static str, reason: Option<String>, generation: Option<u64>| Report {
        sha256: sha256.to_owned(),
        state,
        reason,
        generation,
    };
    let Some(file) = files.iter().find(|f| f.path == path) else {
        return report("loading", None, None);
    };
    match &file.serving {
        Some(serving) if serving.sha256.as_deref() == Some(sha256) => {
            let on_probation = serving
                .probation_until_unix_ms
                .is_some_and(|until| until > now_ms)
                || serving.loaded_at_unix_ms.saturating_add(min_served_ms) > now_ms;
            let state = if on_probation { "serving" } else { "passed" };
            report(state, None, Some(serving.generation))
        }
        _ => match &file.last_error {
            Some(error) => report("failed", Some(error.clone()), None),
            None => report("loading", None, None),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(
        serving_sha: Option<&str>,
        probation_until: Option<u64>,
        error: Option<&str>,
    ) -> FileStatus {
        let mut json = serde_json::json!({ "path": "/p/hello.catalogue.so" });
        if let Some(sha) = serving_sha {
            json["serving"] = serde_json::json!({
                "generation": 7, "loaded_at_unix_ms": 1, "calls": 0, "stuck": 0,
                "sha256": sha, "probation_until_unix_ms": probation_until,
            });
        }
        if let Some(error) = error {
            json["last_error"] = error.into();
        }
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn the_state_reported_follows_what_the_host_serves() {
        let path = Path::new("/p/hello.catalogue.so");
        let state = |files: &[FileStatus]| state_of(files, path, "aa", 1_000, 0);
        assert_eq!(state(&[]).state, "loading");
        assert_eq!(
            state(&[file(Some("aa"), Some(2_000), None)]).state,
            "serving"
        );
        let passed = state(&[file(Some("aa"), None, None)]);
        assert_eq!((passed.state, passed.generation), ("passed", Some(7)));
        assert_eq!(state(&[file(Some("aa"), Some(500), None)]).state, "passed");
        let failed = state(&[file(Some("bb"), None, Some("rolled back: 3 panics"))]);
        assert_eq!(failed.state, "failed");
        assert_eq!(failed.reason.as_deref(), Some("rolled back: 3 panics"));
        assert_eq!(
            state(&[file(None, None, Some("self_test failed"))]).state,
            "failed"
        );
        assert_eq!(state(&[file(Some("bb"), None, None)]).state, "loading");
        // A canary's version loaded at start (no probation of its own, loaded at 1 ms):
        // serving until it served the canary's probation.
        let canary = |now| state_of(&[file(Some("aa"), None, None)], path, "aa", now, 500).state;
        assert_eq!(canary(400), "serving");
        assert_eq!(canary(501), "passed");
    }

    #[test]
    fn a_written_file_is_whole_and_replaces_the_old_one_and_is_found_again() {
        let dir = tempfile::tempdir().unwrap();
        let first = write(dir.path(), "hello", b"one").unwrap();
        assert_eq!(first, file_for(dir.path(), "hello"));
        write(dir.path(), "hello", b"two").unwrap();
        assert_eq!(fs::read(&first).unwrap(), b"two");
        let names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["hello.catalogue.so"], "no temporary file is left");
        assert_eq!(existing(dir.path()), ["hello"]);
        remove(dir.path(), "hello").unwrap();
        remove(dir.path(), "hello").unwrap();
        assert!(existing(dir.path()).is_empty());
    }
}
