//! The load pipeline: a plugin file staged (read, hashed and copied in one pass), prepared
//! with no lock held (`dlopen`, ABI, metadata, where it runs), started under the plugin's own
//! load lock (`init` on a thread of its own, the self-test, a handover), and committed under
//! the state mutex in a moment; and files removed, and unloads waited for.

use super::published_pins::check_published_pin;
use super::*;

impl Host {
    /// Loads the plugin file at `path`, or reloads it if its content changed since the last
    /// load. The new version is loaded and initialised next to the old one and replaces it
    /// only if that succeeds; on any error the old version keeps serving.
    pub fn load_file(&self, path: &Path) -> Result<LoadEvent, LoadError> {
        let (result, retry) = self.load_file_deferred(path);
        for path in retry {
            let _ = self.load_file(&path);
        }
        result
    }

    /// [`Host::load_file`], returning the files that should be loaded next instead of
    /// loading them (the watcher loads them in parallel).
    pub(crate) fn load_file_deferred(&self, path: &Path) -> (Result<LoadEvent, LoadError>, Retry) {
        let (result, retry) = match self.load(path) {
            Ok((event, retry)) => (Ok(event), retry),
            Err(err) => (Err(err), Vec::new()),
        };
        let counters = &self.inner.counters;
        match &result {
            Ok(event @ (LoadEvent::Loaded { plugin, .. } | LoadEvent::Reloaded { plugin, .. })) => {
                counters.note(plugin, super::call_stats::Event::Load);
                log_event(path, event)
            }
            Ok(event) => log_event(path, event),
            Err(err) if err.is_repeated() => {}
            Err(err) if err.kind() == LoadErrorKind::BeingWritten => {
                tracing::debug!(file = %path.display(), "not loaded yet: {}", err.message());
            }
            Err(err) => {
                let file = path.file_name().unwrap_or_default().to_string_lossy();
                counters.note(&file, super::call_stats::Event::FailedLoad);
                tracing::error!(file = %path.display(), "rejected: {}", err.message());
                if let Some(detail) = err.detail() {
                    tracing::debug!(file = %path.display(), "rejection detail:\n{detail}");
                }
            }
        }
        (result, retry)
    }

    pub(super) fn load(&self, path: &Path) -> Result<(LoadEvent, Retry), LoadError> {
        let staged = self.stage(path).inspect_err(|err| {
            // A file still being written says nothing about its content.
            if err.kind() != LoadErrorKind::BeingWritten {
                self.state().files.reject(path, None, None, err)
            }
        })?;
        let digest = staged.digest.clone();
        let content = digest.content();
        {
            let mut state = self.state();
            match state.files.verdict(path, content) {
                Verdict::Load => {}
                Verdict::Failed(err) => return Err(err),
                Verdict::Unchanged => {
                    state.files.unchanged(path);
                    let plugin = state
                        .files
                        .get(path)
                        .and_then(|e| Some(e.declared.as_ref()?.name.clone()))
                        .unwrap_or_default();
                    return Ok((LoadEvent::Unchanged { plugin }, Vec::new()));
                }
            }
        }
        let prepared = self
            .prepare(path, staged)
            .inspect_err(|err| self.state().files.reject(path, Some(content), None, err))?;
        let metadata = prepared.metadata().cloned();
        self.start_and_commit(path, prepared, &digest, None)
            .inspect_err(|err| {
                self.state()
                    .files
                    .reject(path, Some(content), metadata.clone(), err)
            })
    }

    /// Stages the file at `path` (see `plugin_file::stage`). A pin needs its SHA-256 now;
    /// otherwise it is computed in the background.
    pub(super) fn stage(&self, path: &Path) -> Result<StagedFile, LoadError> {
        let wants_sha256 = |declared: Option<&str>| {
            let state = self.state();
            match declared {
                Some(name) => {
                    state.settings.get(name).is_some_and(|s| s.sha256.is_some())
                        || state.published_pins.contains_key(name)
                }
                None => {
                    state.settings.values().any(|s| s.sha256.is_some())
                        || !state.published_pins.is_empty()
                }
            }
        };
        crate::files::plugin_file::stage(
            path,
            &self.inner.options,
            self.inner.copy_dir.path(),
            &wants_sha256,
        )
    }

    /// Opens a staged file in this process, or keeps its copy for a worker process if its
    /// plugin is isolated (it is then never opened here). Which plugin it is, for an
    /// isolated one, comes from the name note in its file. A plugin opened here that turns
    /// out to be built with `panic = "abort"` goes to a worker process too (`placement`).
    pub(super) fn prepare(&self, path: &Path, staged: StagedFile) -> Result<Prepared, LoadError> {
        let declared = staged.declared.clone();
        let isolated = match &declared {
            Some(name) => {
                self.isolation_of(name) == Isolation::Process
                    // Past its max_pinned_versions: a worker, or refused.
                    || placement::past_pin_limit(
                        path,
                        self.configured_isolation(name),
                        self.past_pin_limit(name),
                    )?
            }
            None => self.inner.isolation.isolate_all,
        };
        if !isolated {
            // A sandbox applies only to a worker: such a plugin is never opened here.
            if let Some(name) = &declared {
                self.refuse_sandbox_in_process(path, name)?;
            }
            // A plugin built with panic = "abort" moves to a worker, or is refused; so does
            // one past its max_pinned_versions.
            let library = Library::open(path, staged)?;
            let name = library.metadata().name.clone();
            let configured = self.configured_isolation(&name);
            let pinned = match declared {
                Some(_) => None,
                None => self.past_pin_limit(&name),
            };
            return placement::place(path, library, configured, pinned);
        }
        staged.check_structure(path)?;
        let Some(name) = declared else {
            return Err(LoadError::new(
                path,
                LoadErrorKind::InvalidMetadata,
                "cannot run in a worker process: the file has no plugin-name note (it was \
                 built against a plugin-api older than 0.1.0's note); rebuild it, or run it \
                 in-process",
            ));
        };
        Ok(Prepared::Isolated {
            copy: Arc::new(staged.keep()),
            name,
        })
    }

    /// Where the plugin named `name` is to run.
    pub(super) fn isolation_of(&self, name: &str) -> Isolation {
        if self.inner.isolation.isolate_all {
            return Isolation::Process;
        }
        self.configured_isolation(name).unwrap_or_default()
    }

    /// Where the settings of plugin `name` say it runs, if they say.
    pub(super) fn configured_isolation(&self, name: &str) -> Option<Isolation> {
        self.state().settings.get(name).and_then(|s| s.isolation)
    }

    /// Decides whether `library`, read from `path`, may serve its plugin, starts it, and
    /// commits it.
    pub(super) fn start_and_commit(
        &self,
        path: &Path,
        prepared: Prepared,
        digest: &Digest,
        rollback: Option<&Rollback>,
    ) -> Result<(LoadEvent, Retry), LoadError> {
        let name = prepared.name().to_owned();
        let load_lock = self.load_lock(&name);
        let _one_at_a_time = lock(&load_lock);

        // Staging computed the SHA-256 if a pin wanted it; for a pin added since, it is
        // computed now, outside the lock.
        let pinned = || {
            let state = self.state();
            state
                .settings
                .get(&name)
                .is_some_and(|s| s.sha256.is_some())
                || state.published_pins.contains_key(&name)
        };
        let sha256 = digest
            .sha256_now()
            .or_else(|| pinned().then(|| digest.sha256()).flatten());
        let (number, settings) = {
            let mut state = self.state();
            // Marked bad while it was prepared (rolled back meanwhile): not loaded, unless
            // a rollback asks for it.
            if let Verdict::Failed(err) = state.files.verdict(path, digest.content()) {
                if rollback.is_none() {
                    return Err(err);
                }
            }
            state.files.claim(path, &name, Path::exists)?;
            let settings = state.settings.get(&name).cloned().unwrap_or_default();
            check_pin(path, &name, &settings, sha256)?;
            check_published_pin(path, &name, state.published_pins.get(&name), sha256)?;
            if !settings.enabled {
                let stopped = self.stop_serving(&mut state, path, &name, None);
                let metadata = prepared
                    .metadata()
                    .cloned()
                    .unwrap_or_else(|| Metadata::named(&name));
                let previous = state.files.accept(path, &metadata, digest.content(), false);
                let retry = self.unload_previous(&mut state, previous);
                drop(state);
                self.retire(stopped);
                return Ok((LoadEvent::Disabled { plugin: name }, retry));
            }
            let number = {
                let last = state.generations.entry(name.clone()).or_default();
                *last += 1;
                *last
            };
            (number, settings)
        };
        let stuck = lock(&self.inner.stuck_inits)
            .get(&name)
            .copied()
            .unwrap_or(0);
        if stuck > 0 {
            self.unreserve(&name, number);
            return Err(LoadError::new(
                path,
                LoadErrorKind::InitTimedOut,
                format!(
                    "plugin {name}: an earlier init overran init_timeout_ms and is still \
                     running; no other version is started until it returns"
                ),
            ));
        }
        let origin = match prepared {
            Prepared::Library(library) => Origin::Library(Arc::new(library)),
            Prepared::Isolated { copy, .. } => Origin::Copy(copy),
        };
        // A rollback serves a version that served before: no probation.
        let probation = match rollback {
            Some(_) => Duration::ZERO,
            None => Duration::from_millis(settings.probation_ms),
        };
        // The version serving hands its state over (to an older version too, when rolled
        // back to from its copy: its `init` sees the newer version that wrote the state).
        let handover = self
            .inner
            .table
            .current(&name)
            .map_or_else(Handover::default, |old| Handover::begin(&old));
        let generation = self
            .start_generation(&name, origin, path, number, settings, handover.previous())
            .inspect_err(|_| self.unreserve(&name, number))?;
        let metadata = generation.metadata().clone();
        let generation = Arc::new(generation);

        let (replaced, retry, standby_until) = {
            let mut state = self.state();
            let (how, rollback_of) = match rollback {
                Some(rollback) => (Ended::RolledBack, Some(rollback.of)),
                None => (Ended::Replaced, None),
            };
            let replaced = self.swap(&mut state, &name, Some(&generation), how, rollback_of);
            let on_disk = state.files.on_disk(path);
            let previous = state.files.accept(path, &metadata, digest.content(), true);
            if let Some(rollback) = rollback {
                // What the file holds now is not loaded again until it changes.
                if let Some(on_disk) = on_disk.filter(|c| *c != digest.content()) {
                    let error = rollback.error(path);
                    state.files.rolled_back(
                        &name,
                        (path, on_disk),
                        (path, digest.content()),
                        &error,
                    );
                }
            }
            let retry = self.unload_previous(&mut state, previous);
            // The version replaced stays ready to serve again while the new one is on
            // probation.
            let standby_until = match &replaced {
                Some(old) if !probation.is_zero() => {
                    let until = SystemTime::now() + probation;
                    generation.probation().start(until);
                    state.standby.insert(name.clone(), Arc::downgrade(old));
                    Some(until)
                }
                _ => {
                    state.standby.remove(&name);
                    None
                }
            };
            (replaced, retry, standby_until)
        };
        handover.commit(&generation);
        let event = match &replaced {
            Some(old) => LoadEvent::Reloaded {
                plugin: name.clone(),
                old_version: old.metadata().version.clone(),
                old_generation: old.number(),
                version: metadata.version.clone(),
                generation: number,
            },
            None => LoadEvent::Loaded {
                plugin: name.clone(),
                version: metadata.version.clone(),
                generation: number,
            },
        };
        if let Some(old) = replaced {
            // One standby per plugin: an older one is unloaded now.
            self.inner.reaper.end_standby(&name);
            self.inner.reaper.retire_at(old, standby_until);
        }
        Ok((event, retry))
    }

    /// Puts `new` into plugin `name`'s entry of the call table (or takes the entry out),
    /// and notes both in the history: the generation it replaces ended `how`. Returns that
    /// generation.
    pub(super) fn swap(
        &self,
        state: &mut State,
        name: &str,
        new: Option<&Arc<Generation>>,
        how: Ended,
        rollback_of: Option<u64>,
    ) -> Option<Arc<Generation>> {
        let old = self.inner.table.replace(name, new.cloned());
        if let Some(old) = &old {
            state.history.ended(name, old.number(), how);
        }
        if let Some(new) = new {
            let keep = new.settings().keep_versions;
            state.history.served(name, new, rollback_of, keep);
        }
        old
    }

    /// The file that served `previous` now serves another name: `previous` is unloaded, and
    /// files waiting for that name are returned.
    pub(super) fn unload_previous(&self, state: &mut State, previous: Option<String>) -> Retry {
        let Some(previous) = previous else {
            return Vec::new();
        };
        if let Some(old) = self.swap(state, &previous, None, Ended::Removed, None) {
            tracing::info!(plugin = %previous, generation = old.number(), "unloading: its file now declares another plugin");
            self.inner.reaper.retire(old);
        }
        state.files.waiting_for(&previous)
    }

    /// Stops serving `name` from `path`, if `path` serves it; returns the generation taken
    /// out of the table.
    pub(super) fn stop_serving(
        &self,
        state: &mut State,
        path: &Path,
        name: &str,
        error: Option<&LoadError>,
    ) -> Option<Arc<Generation>> {
        let serves = state.files.get(path)?.serves.as_deref() == Some(name);
        if !serves {
            return None;
        }
        state.files.stop_serving(path, error);
        self.swap(state, name, None, Ended::Disabled, None)
    }

    pub(super) fn retire(&self, generation: Option<Arc<Generation>>) {
        if let Some(generation) = generation {
            self.inner.reaper.retire(generation);
        }
    }

    /// Gives back a generation number that was reserved for a start that did not happen.
    pub(super) fn unreserve(&self, name: &str, number: u64) {
        let mut state = self.state();
        if state.generations.get(name) == Some(&number) {
            state.generations.insert(name.to_owned(), number - 1);
        }
    }

    pub(super) fn load_lock(&self, name: &str) -> Arc<Mutex<()>> {
        lock(&self.inner.load_locks)
            .entry(name.to_owned())
            .or_default()
            .clone()
    }

    /// Runs `init` for a new generation on a thread of its own and waits up to the plugin's
    /// `init_timeout_ms`. An `init` that overruns is abandoned: the load fails, and the
    /// thread is counted in `stuck_inits` until it returns (its instance is then dropped).
    pub(super) fn start_generation(
        &self,
        name: &str,
        origin: Origin,
        path: &Path,
        number: u64,
        settings: PluginSettings,
        previous: Option<&PreviousState>,
    ) -> Result<Generation, LoadError> {
        let library = match origin {
            Origin::Library(library) => library,
            // In a worker: its init is bounded by killing the worker, no thread is left.
            Origin::Copy(copy) => {
                let spec = WorkerSpec {
                    plugin: name.to_owned(),
                    program: self.inner.isolation.program(),
                    copy,
                    source: path.to_owned(),
                    generation: number,
                    settings,
                    budget: self.inner.budget,
                    events: self.worker_events(),
                };
                let generation = Generation::start_isolated(spec, previous)?;
                return rollout::self_test(generation, path);
            }
        };
        let name = library.metadata().name.clone();
        // Whatever the way here (a load, new settings, a restart): never in-process.
        if settings.sandbox.is_some() {
            return Err(placement::sandbox_in_process(path, &name));
        }
        let timeout = Duration::from_millis(settings.init_timeout_ms);
        let budget = self.inner.budget;
        let previous = previous.cloned();
        let outcome = Arc::new((Mutex::new(Init::Running), Condvar::new()));
        let spawned = {
            let (outcome, source, stuck, name) = (
                outcome.clone(),
                path.to_owned(),
                self.inner.stuck_inits.clone(),
                name.clone(),
            );
            std::thread::Builder::new()
                .name(format!("init-{name}"))
                .spawn(move || {
                    let started = Instant::now();
                    let result = Generation::start(
                        library,
                        &source,
                        number,
                        (settings, budget),
                        previous.as_ref(),
                    )
                    .and_then(|generation| rollout::self_test(generation, &source));
                    let (state, ready) = &*outcome;
                    let mut state = lock(state);
                    if matches!(*state, Init::Abandoned) {
                        drop(state);
                        drop(result);
                        if let Some(count) = lock(&stuck).get_mut(&name) {
                            *count = count.saturating_sub(1);
                        }
                        tracing::warn!(plugin = %name, generation = number,
                            "abandoned init returned after {} ms; its instance was dropped",
                            started.elapsed().as_millis());
                    } else {
                        *state = Init::Done(Box::new(result));
                        ready.notify_one();
                    }
                })
        };
        if let Err(err) = spawned {
            return Err(LoadError::new(
                path,
                LoadErrorKind::Host,
                format!("cannot start a thread for init: {err}"),
            ));
        }
        let (state, ready) = &*outcome;
        let deadline = Instant::now() + timeout;
        let mut state = lock(state);
        loop {
            match std::mem::replace(&mut *state, Init::Running) {
                Init::Done(result) => return *result,
                Init::Running | Init::Abandoned => {}
            }
            let now = Instant::now();
            if now >= deadline {
                *state = Init::Abandoned;
                *lock(&self.inner.stuck_inits)
                    .entry(name.clone())
                    .or_default() += 1;
                return Err(LoadError::new(
                    path,
                    LoadErrorKind::InitTimedOut,
                    format!(
                        "plugin {name}: init did not return within {} ms (init_timeout_ms); the \
                         load is refused and its thread is counted as stuck",
                        timeout.as_millis()
                    ),
                ));
            }
            state = ready
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Unloads whatever plugin the file at `path` serves, and forgets the file. Calls in
    /// flight finish on the version they started on. Returns the plugin's name.
    pub fn remove_file(&self, path: &Path) -> Option<String> {
        let (name, retry) = self.remove_file_deferred(path);
        for path in retry {
            let _ = self.load_file(&path);
        }
        name
    }

    /// [`Host::remove_file`], returning the files that may serve the name now instead of
    /// loading them.
    pub(crate) fn remove_file_deferred(&self, path: &Path) -> (Option<String>, Retry) {
        let (name, retry, old) = {
            let mut state = self.state();
            let (name, retry) = state.files.remove(path);
            let old = name
                .as_deref()
                .and_then(|n| self.swap(&mut state, n, None, Ended::Removed, None));
            (name, retry, old)
        };
        if let (Some(name), Some(old)) = (&name, old) {
            tracing::info!(plugin = %name, generation = old.number(), file = %path.display(), "removed: unloading");
            self.inner.reaper.retire(old);
        }
        (name, retry)
    }

    /// Waits up to `wait` until every version replaced or removed so far has finished its
    /// calls and been dropped, and its library closed (unloading happens in the background,
    /// see the module docs). Returns whether that happened in time.
    pub fn wait_for_unloads(&self, wait: Duration) -> bool {
        self.inner.reaper.flush(wait)
    }

    /// Unloads every plugin and waits up to `wait` for the versions still running calls to
    /// finish and be unloaded. Returns whether everything was unloaded in time.
    pub fn unload_all(&self, wait: Duration) -> bool {
        self.inner.reaper.end_standbys();
        let old = {
            let mut state = self.state();
            state.files.clear();
            self.inner.table.clear()
        };
        for generation in old {
            self.inner.reaper.retire(generation);
        }
        self.inner.reaper.flush(wait)
    }
}

/// A version of a plugin ready to start.
pub(super) enum Prepared {
    /// Opened in this process.
    Library(Library),
    /// Staged for worker processes, which open it; `name` is what its note declares.
    Isolated { copy: Arc<KeptCopy>, name: String },
}

impl Prepared {
    pub(super) fn name(&self) -> &str {
        match self {
            Prepared::Library(library) => &library.metadata().name,
            Prepared::Isolated { name, .. } => name,
        }
    }

    /// The metadata, once known (an isolated plugin's comes from its worker).
    pub(super) fn metadata(&self) -> Option<&Metadata> {
        match self {
            Prepared::Library(library) => Some(library.metadata()),
            Prepared::Isolated { .. } => None,
        }
    }
}

/// The state of an `init` running on its own thread.
pub(super) enum Init {
    Running,
    Done(Box<Result<Generation, LoadError>>),
    /// Its caller stopped waiting; the thread drops whatever it returns.
    Abandoned,
}

pub(super) fn check_pin(
    path: &Path,
    name: &str,
    settings: &PluginSettings,
    sha256: Option<[u8; 32]>,
) -> Result<(), LoadError> {
    let Some(pinned) = &settings.sha256 else {
        return Ok(());
    };
    let Some(sha256) = sha256 else {
        return Err(LoadError::new(
            path,
            LoadErrorKind::HashMismatch,
            format!("plugin {name}: host.toml pins its SHA-256, which could not be computed"),
        ));
    };
    let actual = hex(&sha256);
    if pinned.eq_ignore_ascii_case(&actual) {
        return Ok(());
    }
    Err(LoadError::new(
        path,
        LoadErrorKind::HashMismatch,
        format!("plugin {name}: SHA-256 is {actual}, but host.toml pins {pinned}"),
    ))
}

fn log_event(path: &Path, event: &LoadEvent) {
    let file = path.display();
    match event {
        LoadEvent::Loaded {
            plugin,
            version,
            generation,
        } => {
            tracing::info!(%plugin, generation, %file, "loaded {plugin} {version}")
        }
        LoadEvent::Reloaded {
            plugin,
            old_version,
            old_generation,
            version,
            generation,
        } => {
            tracing::info!(%plugin, generation, %file, "reloaded {plugin}: {old_version} (generation {old_generation}) -> {version} (generation {generation})")
        }
        LoadEvent::Unchanged { plugin } => {
            tracing::debug!(%plugin, %file, "unchanged content, not reloaded")
        }
        LoadEvent::Disabled { plugin } => {
            tracing::info!(%plugin, %file, "disabled in the configuration, not loaded")
        }
    }
}
