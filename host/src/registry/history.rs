//! History: the generations each plugin has served, how each ended, and the private copies
//! of the last good versions, kept to serve one of them again (`host rollback`).
//!
//! The rules, each pinned by a unit test below:
//!
//! * Every generation that serves gets a record when it is published; it ends, once, when
//!   it stops serving (replaced, rolled back, removed, disabled), and a generation put back
//!   into service (a rollback to the one on standby) is serving again.
//! * A plugin's history holds its last [`MAX_RECORDS`] generations; the history of at most
//!   [`MAX_PLUGINS`] plugin names is kept, the least recently active name that serves nothing
//!   is forgotten first.
//! * The private copy of what serves is kept on disk, and those of the newest
//!   `keep_versions` good versions before it; a version rolled back because its probation
//!   tripped is not good. A plugin whose file is removed keeps no copies (a rollback needs
//!   a version that serves).
//! * A rollback with no generation named goes to the newest kept good version whose content
//!   differs from what serves.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::files::digest::Digest;
use crate::files::plugin_file::KeptCopy;
use crate::runtime::generation::{Generation, Tally};
use crate::runtime::reaper::unix_ms;
use crate::types::settings::Isolation;

pub use crate::types::settings::MAX_RECORDS;

/// Plugin names whose history is kept.
pub const MAX_PLUGINS: usize = 1024;

/// How a generation stopped serving.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Ended {
    /// A newer generation took its place: a new version, or the same one reconfigured.
    Replaced,
    /// It was rolled back: its probation tripped, or `host rollback` asked for another
    /// version.
    RolledBack,
    /// Its file was removed (or now declares another plugin).
    Removed,
    /// The configuration disabled it, or it no longer matches a pinned SHA-256.
    Disabled,
}

impl Ended {
    /// `replaced`, `rolled back` ...
    pub fn as_str(self) -> &'static str {
        match self {
            Ended::Replaced => "replaced",
            Ended::RolledBack => "rolled back",
            Ended::Removed => "removed",
            Ended::Disabled => "disabled",
        }
    }
}

/// One generation of a plugin, as [`Host::history`](crate::Host::history) reports it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[non_exhaustive]
pub struct HistoryEntry {
    /// Its number.
    pub generation: u64,
    /// The plugin's version.
    pub version: String,
    /// SHA-256 of the file it was loaded from, in hex, when it could be computed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// The file it was loaded from.
    pub path: PathBuf,
    /// Where it ran.
    #[serde(default)]
    pub isolation: Isolation,
    /// When it started serving, in milliseconds since the Unix epoch.
    pub loaded_at_unix_ms: u64,
    /// When it stopped serving.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired_at_unix_ms: Option<u64>,
    /// Calls it finished.
    pub calls: u64,
    /// Of those, calls that failed.
    pub errors: u64,
    /// How it stopped serving; `None` while it serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended: Option<Ended>,
    /// Its private copy is kept: `host rollback --to` can serve it again.
    #[serde(default)]
    pub kept: bool,
    /// It was loaded from the kept copy of this generation, by a rollback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_of: Option<u64>,
}

/// A kept version to load again.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) generation: u64,
    pub(crate) copy: Arc<KeptCopy>,
}

#[derive(Debug)]
struct Record {
    generation: u64,
    version: String,
    digest: Digest,
    path: PathBuf,
    isolation: Isolation,
    loaded_at: SystemTime,
    retired_at: Option<SystemTime>,
    tally: Arc<Tally>,
    ended: Option<Ended>,
    /// Rolled back because its probation tripped: never a version to go back to.
    bad: bool,
    kept: Option<Arc<KeptCopy>>,
    rollback_of: Option<u64>,
}

#[derive(Debug, Default)]
struct Plugin {
    records: VecDeque<Record>,
    /// When it last changed, in [`History::clock`] ticks.
    active: u64,
    /// Its `keep_versions`, as of its last generation.
    keep: usize,
}

impl Plugin {
    /// Lets go of the copies beyond the newest `keep` good versions that do not serve.
    fn trim(&mut self) {
        let mut good = 0;
        for record in self.records.iter_mut().rev() {
            if record.ended.is_none() && !record.bad {
                continue;
            }
            if record.bad || good >= self.keep {
                record.kept = None;
            } else if record.kept.is_some() {
                good += 1;
            }
        }
    }
}

/// The history of every plugin name.
#[derive(Debug, Default)]
pub(crate) struct History {
    plugins: BTreeMap<String, Plugin>,
    clock: u64,
}

impl History {
    /// `generation` of plugin `name` serves now (loaded by a rollback from
    /// `rollback_of`'s copy, if that is set); copies beyond the newest `keep` good ones are
    /// let go.
    pub(crate) fn served(
        &mut self,
        name: &str,
        generation: &Generation,
        rollback_of: Option<u64>,
        keep: usize,
    ) {
        self.record(
            name,
            Record {
                generation: generation.number(),
                version: generation.metadata().version.clone(),
                digest: generation.digest().clone(),
                path: generation.source().to_owned(),
                isolation: generation.isolation(),
                loaded_at: generation.loaded_at(),
                retired_at: None,
                tally: generation.tally().clone(),
                ended: None,
                bad: false,
                kept: generation.kept_copy(),
                rollback_of,
            },
            keep,
        );
    }

    fn record(&mut self, name: &str, record: Record, keep: usize) {
        self.clock += 1;
        if !self.plugins.contains_key(name) && self.plugins.len() >= MAX_PLUGINS {
            self.forget_one();
        }
        let plugin = self.plugins.entry(name.to_owned()).or_default();
        plugin.active = self.clock;
        plugin.keep = keep;
        plugin.records.push_back(record);
        while plugin.records.len() > MAX_RECORDS {
            plugin.records.pop_front();
        }
        plugin.trim();
    }

    /// Forgets the least recently active plugin that serves nothing (or, if every one
    /// serves, the least recently active one).
    fn forget_one(&mut self) {
        let serves = |p: &Plugin| p.records.iter().any(|r| r.ended.is_none());
        let oldest = |idle_only: bool| {
            self.plugins
                .iter()
                .filter(|(_, p)| !idle_only || !serves(p))
                .min_by_key(|(_, p)| p.active)
                .map(|(name, _)| name.clone())
        };
        if let Some(name) = oldest(true).or_else(|| oldest(false)) {
            tracing::info!(plugin = %name, "history forgotten: the history of {MAX_PLUGINS} plugins is kept");
            self.plugins.remove(&name);
        }
    }

    /// Changes the record of `generation` of plugin `name`, if it has one; then lets go of
    /// the copies that are no longer to be kept.
    fn change(&mut self, name: &str, generation: u64, change: impl FnOnce(&mut Record)) {
        self.clock += 1;
        let Some(plugin) = self.plugins.get_mut(name) else {
            return;
        };
        plugin.active = self.clock;
        if let Some(record) = plugin
            .records
            .iter_mut()
            .find(|r| r.generation == generation)
        {
            change(record);
        }
        plugin.trim();
    }

    /// `generation` of plugin `name` stopped serving, `how`.
    pub(crate) fn ended(&mut self, name: &str, generation: u64, how: Ended) {
        self.change(name, generation, |record| {
            if record.ended.is_none() {
                record.ended = Some(how);
                record.retired_at = Some(SystemTime::now());
            }
        });
        if how == Ended::Removed {
            if let Some(plugin) = self.plugins.get_mut(name) {
                plugin.records.iter_mut().for_each(|r| r.kept = None);
            }
        }
    }

    /// `generation` of plugin `name` was rolled back because its probation tripped: its
    /// copy is let go, and it is never a version to go back to.
    pub(crate) fn tripped(&mut self, name: &str, generation: u64) {
        self.change(name, generation, |record| {
            record.bad = true;
            if record.ended.is_none() {
                record.ended = Some(Ended::RolledBack);
                record.retired_at = Some(SystemTime::now());
            }
        });
    }

    /// `generation` of plugin `name`, retired, serves again.
    pub(crate) fn reinstated(&mut self, name: &str, generation: u64) {
        self.change(name, generation, |record| {
            record.ended = None;
            record.retired_at = None;
        });
    }

    /// The kept version of plugin `name` a rollback from `current` serves: generation `to`,
    /// or else the newest good one whose content differs from `current`'s.
    pub(crate) fn target(
        &self,
        name: &str,
        current: u64,
        to: Option<u64>,
    ) -> Result<Target, String> {
        let records = self.plugins.get(name).map(|p| &p.records);
        let records = records.into_iter().flatten();
        let current_content = records
            .clone()
            .find(|r| r.generation == current)
            .map(|r| r.digest.content());
        let found = match to {
            Some(to) if to == current => {
                return Err(format!("generation {to} is the one serving"));
            }
            Some(to) => {
                let record = records
                    .clone()
                    .find(|r| r.generation == to)
                    .ok_or_else(|| format!("generation {to} is not in its history"))?;
                if record.bad {
                    return Err(format!(
                        "generation {to} was rolled back for failing its probation; its copy \
                         was not kept"
                    ));
                }
                Some(record)
            }
            None => records.rev().find(|r| {
                !r.bad && r.kept.is_some() && Some(r.digest.content()) != current_content
            }),
        };
        let Some(record) = found else {
            return Err(
                "no earlier version with other content than the one serving is kept \
                 (keep_versions); name one with --to"
                    .to_owned(),
            );
        };
        let copy = record.kept.clone().ok_or_else(|| {
            format!(
                "generation {}'s copy is no longer kept (keep_versions)",
                record.generation
            )
        })?;
        Ok(Target {
            generation: record.generation,
            copy,
        })
    }

    /// Plugin `name`'s history, newest first, with the digest of each record (its SHA-256
    /// is filled in by the caller, outside any lock: it may have to be computed).
    pub(crate) fn list(&self, name: &str) -> Option<Vec<(HistoryEntry, Digest)>> {
        let plugin = self.plugins.get(name)?;
        let entries = plugin.records.iter().rev().map(|r| {
            let entry = HistoryEntry {
                generation: r.generation,
                version: r.version.clone(),
                sha256: None,
                path: r.path.clone(),
                isolation: r.isolation,
                loaded_at_unix_ms: unix_ms(r.loaded_at),
                retired_at_unix_ms: r.retired_at.map(unix_ms),
                calls: r.tally.calls(),
                errors: r.tally.errors(),
                ended: r.ended,
                kept: r.kept.is_some(),
                rollback_of: r.rollback_of,
            };
            (entry, r.digest.clone())
        });
        Some(entries.collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy(dir: &tempfile::TempDir, n: u64) -> Arc<KeptCopy> {
        let path = dir.path().join(format!("copy-{n}"));
        std::fs::write(&path, b"x").unwrap();
        Arc::new(KeptCopy::new(path, Digest::known(n.into(), [0; 32])))
    }

    /// Generation `n` of `name`, with content `content`, replaces generation `n - 1`.
    fn serve(history: &mut History, dir: &tempfile::TempDir, name: &str, n: u64, content: u64) {
        history.ended(name, n - 1, Ended::Replaced);
        history.record(
            name,
            Record {
                generation: n,
                version: format!("0.{n}.0"),
                digest: Digest::known(content.into(), [0; 32]),
                path: PathBuf::from(format!("/plugins/{name}.so")),
                isolation: Isolation::InProcess,
                loaded_at: SystemTime::now(),
                retired_at: None,
                tally: Arc::default(),
                ended: None,
                bad: false,
                kept: Some(copy(dir, n)),
                rollback_of: None,
            },
            2,
        );
    }

    fn kept(history: &History, name: &str) -> Vec<u64> {
        let list = history.list(name).unwrap();
        list.iter()
            .filter(|(e, _)| e.kept)
            .map(|(e, _)| e.generation)
            .collect()
    }

    #[test]
    fn records_end_once_and_a_reinstated_one_serves_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut history = History::default();
        serve(&mut history, &dir, "a", 1, 1);
        serve(&mut history, &dir, "a", 2, 2);
        history.ended("a", 1, Ended::Removed);
        let list = history.list("a").unwrap();
        assert_eq!(list[0].0.generation, 2);
        assert_eq!(list[0].0.ended, None);
        assert_eq!(list[1].0.ended, Some(Ended::Replaced));
        assert!(list[1].0.retired_at_unix_ms.is_some());
        history.reinstated("a", 1);
        let list = history.list("a").unwrap();
        assert_eq!(list[1].0.ended, None);
        assert_eq!(list[1].0.retired_at_unix_ms, None);
    }

    #[test]
    fn a_removed_plugin_keeps_no_copies() {
        let dir = tempfile::tempdir().unwrap();
        let mut history = History::default();
        serve(&mut history, &dir, "a", 1, 1);
        serve(&mut history, &dir, "a", 2, 2);
        assert_eq!(kept(&history, "a"), vec![2, 1]);
        history.ended("a", 2, Ended::Removed);
        assert_eq!(kept(&history, "a"), Vec::<u64>::new());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn what_serves_and_the_newest_good_versions_before_it_keep_their_copies() {
        let dir = tempfile::tempdir().unwrap();
        let mut history = History::default();
        for n in 1..=3 {
            serve(&mut history, &dir, "a", n, n);
        }
        assert_eq!(kept(&history, "a"), vec![3, 2, 1]);
        serve(&mut history, &dir, "a", 4, 4);
        assert_eq!(kept(&history, "a"), vec![4, 3, 2]);
        assert!(!dir.path().join("copy-1").exists());
        // 5 trips its probation: 4 serves again, and nothing good was let go for 5.
        serve(&mut history, &dir, "a", 5, 5);
        assert_eq!(kept(&history, "a"), vec![5, 4, 3]);
        history.tripped("a", 5);
        history.reinstated("a", 4);
        assert_eq!(kept(&history, "a"), vec![4, 3]);
        assert!(!dir.path().join("copy-5").exists());
        assert!(dir.path().join("copy-3").exists());
        for n in 6..=(MAX_RECORDS as u64 + 10) {
            serve(&mut history, &dir, "a", n, n);
        }
        assert_eq!(history.list("a").unwrap().len(), MAX_RECORDS);
    }

    #[test]
    fn the_default_target_is_the_newest_good_kept_version_with_other_content() {
        let dir = tempfile::tempdir().unwrap();
        let mut history = History::default();
        serve(&mut history, &dir, "a", 1, 10);
        serve(&mut history, &dir, "a", 2, 20);
        // 3 is 2 reconfigured: same content.
        serve(&mut history, &dir, "a", 3, 20);
        assert_eq!(history.target("a", 3, None).unwrap().generation, 1);
        assert_eq!(history.target("a", 3, Some(2)).unwrap().generation, 2);
        serve(&mut history, &dir, "a", 4, 40);
        history.tripped("a", 4);
        history.reinstated("a", 3);
        let err = history.target("a", 3, Some(4)).unwrap_err();
        assert!(err.contains("rolled back"), "{err}");
        let err = history.target("a", 3, Some(3)).unwrap_err();
        assert!(err.contains("serving"), "{err}");
        let err = history.target("a", 3, Some(9)).unwrap_err();
        assert!(err.contains("not in its history"), "{err}");
        let err = history.target("b", 1, None).unwrap_err();
        assert!(err.contains("no earlier version"), "{err}");
    }

    #[test]
    fn the_least_recently_active_idle_plugin_is_forgotten_first() {
        let dir = tempfile::tempdir().unwrap();
        let mut history = History::default();
        for n in 0..MAX_PLUGINS as u64 {
            serve(&mut history, &dir, &format!("p{n}"), 1, n);
        }
        // p0 is the oldest, but serves; p1 and p2 serve nothing, p1 for longer.
        history.ended("p1", 1, Ended::Removed);
        history.ended("p2", 1, Ended::Removed);
        serve(&mut history, &dir, "new", 1, 0);
        assert!(history.list("p0").is_some());
        assert!(history.list("p1").is_none());
        assert!(history.list("p2").is_some());
        assert!(history.list("new").is_some());
        assert_eq!(history.plugins.len(), MAX_PLUGINS);
    }
}
