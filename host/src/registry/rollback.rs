//! Rolling back: serving again a version that served before, automatically when a new one
//! trips its probation (see `rollout`), or by request (`host rollback`); and the history
//! (`host history`) it chooses from.
//!
//! The version on standby (the one a generation on probation replaced) is put back in one
//! step: it is still loaded. An older one is loaded again from its kept private copy, as a
//! new generation that runs its `init` and self-test like any other. Either way, what the
//! plugin's file holds is not loaded again until the file changes.

use std::path::Path;
use std::sync::{Arc, Weak};

use crate::runtime::generation::Generation;
use crate::runtime::loader::{LoadError, LoadErrorKind};
use crate::types::call::{CallError, CallErrorKind, CallOutcome};

use super::history::{Ended, HistoryEntry};
use super::{hex, lock, Host, LoadEvent, State};
use crate::runtime::rollout::Trip;

/// A load that is a rollback by request, to the kept copy of generation `of`.
#[derive(Debug)]
pub(crate) struct Rollback {
    pub(crate) of: u64,
}

impl Rollback {
    /// What is remembered against the content of the file at `path` it replaces.
    pub(crate) fn error(&self, path: &Path) -> LoadError {
        requested(path, self.of)
    }
}

fn requested(path: &Path, to: u64) -> LoadError {
    LoadError::new(
        path,
        LoadErrorKind::RolledBack,
        format!(
            "rolled back by request to generation {to}; the file is loaded again when it changes"
        ),
    )
}

impl Host {
    /// Notes how a call on `generation` ended: a failure of a kind its probation counts may
    /// roll it back (see `rollout`). Cheap when the call succeeded.
    pub(crate) fn after_call(
        &self,
        generation: &Generation,
        result: &Result<CallOutcome, CallError>,
    ) {
        let kind = match result {
            Ok(outcome) => match &outcome.error {
                None => return,
                Some(err) => err.kind().as_str(),
            },
            Err(err) => err.kind.as_str(),
        };
        self.after_failure(generation, kind);
    }

    /// Notes a failed call of `kind` on `generation`.
    pub(crate) fn after_failure(&self, generation: &Generation, kind: &str) {
        if let Some(trip) = generation.note_failure(kind) {
            self.roll_back_tripped(generation.name(), generation.number(), &trip);
        }
    }

    /// Serves again the version plugin `name`'s generation `bad` replaced, because `bad`
    /// tripped its probation; remembers `bad`'s content as bad until its file changes.
    ///
    /// Rollbacks and loads of one plugin are serialized by its load lock, so a load in
    /// flight never commits a version started from the state of the generation rolled
    /// back. The lock is held by loads for as long as an `init` takes: a caller whose call
    /// tripped the rollback is not kept waiting for it, a thread of its own waits.
    fn roll_back_tripped(&self, name: &str, bad: u64, trip: &Trip) {
        let load_lock = self.load_lock(name);
        let held = match load_lock.try_lock() {
            Ok(guard) => Some(guard),
            Err(std::sync::TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        };
        if let Some(_one_at_a_time) = held {
            self.roll_back_tripped_locked(name, bad, trip);
            return;
        }
        drop(held);
        let (host, owned, why) = (self.clone(), name.to_owned(), trip.clone());
        let waiting = std::thread::Builder::new()
            .name("host-rollback".to_owned())
            .spawn(move || {
                let _one_at_a_time = lock(&load_lock);
                host.roll_back_tripped_locked(&owned, bad, &why);
            });
        if let Err(err) = waiting {
            tracing::error!(plugin = %name, generation = bad,
                "cannot start the thread to roll back ({}): {err}", trip.describe());
        }
    }

    fn roll_back_tripped_locked(&self, name: &str, bad: u64, trip: &Trip) {
        let reinstated = {
            let mut state = self.state();
            let Some(current) = self.inner.table.current(name).filter(|g| g.number() == bad) else {
                return;
            };
            let Some(previous) = state.standby.remove(name).and_then(|w| w.upgrade()) else {
                tracing::error!(plugin = %name, generation = bad,
                    "would roll back ({}), but the version it replaced is gone", trip.describe());
                return;
            };
            let error = LoadError::new(
                current.source(),
                LoadErrorKind::RolledBack,
                format!(
                    "rolled back to generation {}: {} during its probation; not loaded again \
                     until the file changes",
                    previous.number(),
                    trip.describe()
                ),
            );
            // Bad first: its copy is not one of the good ones to keep.
            state.history.tripped(name, bad);
            self.reinstate(&mut state, &current, &previous, &error);
            (current, previous)
        };
        let (bad, previous) = reinstated;
        tracing::error!(plugin = %name, generation = previous.number(),
            "rolled back {name} {} (generation {}) -> {} (generation {}): {}",
            bad.metadata().version, bad.number(), previous.metadata().version,
            previous.number(), trip.describe());
        self.inner
            .counters
            .note(name, super::call_stats::Event::Rollback);
        self.inner.reaper.retire(bad);
    }

    /// Puts `previous`, still loaded, back in place of `current` in one step; what the file
    /// of `current` holds is remembered as failed with `error`.
    fn reinstate(
        &self,
        state: &mut State,
        current: &Arc<Generation>,
        previous: &Arc<Generation>,
        error: &LoadError,
    ) {
        let name = current.name();
        previous.reinstate();
        self.inner.table.replace(name, Some(previous.clone()));
        current.probation().end();
        state.history.reinstated(name, previous.number());
        state
            .history
            .ended(name, current.number(), Ended::RolledBack);
        let on_disk = state
            .files
            .on_disk(current.source())
            .unwrap_or_else(|| current.digest().content());
        state.files.rolled_back(
            name,
            (current.source(), on_disk),
            (previous.source(), previous.digest().content()),
            error,
        );
    }

    /// Serves an earlier version of plugin `plugin` again (`host rollback`), until its file
    /// changes: generation `to`, or by default the newest kept version whose content
    /// differs from what serves. The version on standby is put back at once; an older one
    /// is loaded again from its kept private copy, as a new generation (its `init` and
    /// self-test run). Returns what was done, in one line.
    pub fn rollback(&self, plugin: &str, to: Option<u64>) -> Result<String, CallError> {
        let done = self.rollback_uncounted(plugin, to);
        if done.is_ok() {
            let event = super::call_stats::Event::Rollback;
            self.inner.counters.note(plugin, event);
        }
        done
    }

    fn rollback_uncounted(&self, plugin: &str, to: Option<u64>) -> Result<String, CallError> {
        let refused = |why: String| {
            CallError::new(
                CallErrorKind::InvalidRequest,
                format!("cannot roll back plugin {plugin}: {why}"),
            )
        };
        let (current, target) = {
            let state = self.state();
            let current = self
                .inner
                .table
                .current(plugin)
                .ok_or_else(|| self.unknown_plugin(plugin))?;
            let standby = state.standby.get(plugin).and_then(Weak::upgrade);
            if let Some(previous) = standby.filter(|p| to.is_none_or(|to| to == p.number())) {
                // Serialized with loads of the plugin (see `roll_back_tripped`); the state
                // lock is taken again once the load lock is held.
                drop(state);
                let load_lock = self.load_lock(plugin);
                let _one_at_a_time = lock(&load_lock);
                let mut state = self.state();
                let still = self
                    .inner
                    .table
                    .current(plugin)
                    .is_some_and(|c| Arc::ptr_eq(&c, &current))
                    && state
                        .standby
                        .get(plugin)
                        .and_then(Weak::upgrade)
                        .is_some_and(|p| Arc::ptr_eq(&p, &previous));
                if !still {
                    return Err(refused(
                        "a new version was loaded meanwhile: look at `host history` and try again"
                            .to_owned(),
                    ));
                }
                state.standby.remove(plugin);
                let error = requested(current.source(), previous.number());
                self.reinstate(&mut state, &current, &previous, &error);
                drop(state);
                self.inner.reaper.retire(current.clone());
                return Ok(self.rolled_back(&current, &previous, None));
            }
            let target = state
                .history
                .target(plugin, current.number(), to)
                .map_err(refused)?;
            (current, target)
        };
        let failed = |err: LoadError| {
            refused(format!(
                "generation {} did not load again: {}",
                target.generation,
                err.message()
            ))
        };
        let path = current.source().to_owned();
        let staged = self.stage(target.copy.path()).map_err(failed)?;
        let digest = staged.digest.clone();
        let prepared = self.prepare(&path, staged).map_err(failed)?;
        let rollback = Rollback {
            of: target.generation,
        };
        let (event, retry) = self
            .start_and_commit(&path, prepared, &digest, Some(&rollback))
            .map_err(failed)?;
        for path in retry {
            let _ = self.load_file(&path);
        }
        match (event, self.inner.table.current(plugin)) {
            (LoadEvent::Reloaded { .. }, Some(now)) => {
                Ok(self.rolled_back(&current, &now, Some(target.generation)))
            }
            _ => Err(refused("it stopped serving meanwhile".to_owned())),
        }
    }

    /// Logs a rollback by request, and says it in one line.
    fn rolled_back(&self, from: &Generation, to: &Generation, copy_of: Option<u64>) -> String {
        let of = copy_of.map_or_else(String::new, |of| format!(", from generation {of}'s copy"));
        let line = format!(
            "rolled back {} {} (generation {}) -> {} (generation {}{of}): by request",
            from.name(),
            from.metadata().version,
            from.number(),
            to.metadata().version,
            to.number(),
        );
        tracing::warn!(plugin = %from.name(), generation = to.number(), "{line}");
        line
    }

    /// The generations plugin `plugin` served, newest first (`host history`).
    pub fn history(&self, plugin: &str) -> Result<Vec<HistoryEntry>, CallError> {
        let list = self.state().history.list(plugin).ok_or_else(|| {
            CallError::new(
                CallErrorKind::UnknownPlugin,
                format!("plugin {plugin} has no history: no version of it has served"),
            )
        })?;
        // SHA-256s left for later are computed now, with no lock held.
        Ok(list
            .into_iter()
            .map(|(mut entry, digest)| {
                entry.sha256 = digest.sha256().map(|s| hex(&s));
                entry
            })
            .collect())
    }
}
