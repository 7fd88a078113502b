//! New settings applied to plugins already served (a reload where a setting needs one), and
//! restarts (`host restart`).

use super::load::check_pin;
use super::*;

impl Host {
    /// Replaces the per-plugin settings. Plugins whose configuration changed are started
    /// again from the library already loaded (a new generation); plugins now disabled, or no
    /// longer matching a pinned SHA-256, are unloaded; files whose plugin's settings changed
    /// and that do not serve are loaded again.
    pub fn apply_settings(&self, settings: BTreeMap<String, PluginSettings>) {
        let (restarts, retry) = self.apply_settings_deferred(settings);
        for (name, current) in restarts {
            self.restart(&name, &current);
        }
        for path in retry {
            let _ = self.load_file(&path);
        }
    }

    pub(super) fn apply_settings_deferred(
        &self,
        settings: BTreeMap<String, PluginSettings>,
    ) -> (Vec<(String, Arc<Generation>)>, Retry) {
        let mut restarts = Vec::new();
        let mut retry = Vec::new();
        let mut stopped = Vec::new();
        // A pin checks the SHA-256 of what serves: compute any left for later before taking
        // the lock.
        for (name, new) in &settings {
            if new.sha256.is_some() {
                if let Some(current) = self.inner.table.current(name) {
                    current.digest().sha256();
                }
            }
        }
        {
            let mut state = self.state();
            let old = std::mem::replace(&mut state.settings, settings);
            let names: BTreeSet<String> =
                old.keys().chain(state.settings.keys()).cloned().collect();
            for name in names {
                let new = state.settings.get(&name).cloned().unwrap_or_default();
                if old.get(&name).cloned().unwrap_or_default() == new {
                    continue;
                }
                if let Some(current) = self.inner.table.current(&name) {
                    let path = current.source().to_owned();
                    let sha256 = current.digest().sha256_now();
                    let actual = sha256.map_or_else(|| "unknown".to_owned(), |s| hex(&s));
                    let isolation = if self.inner.isolation.isolate_all {
                        Isolation::Process
                    } else {
                        placement::wanted(new.isolation, current.metadata())
                    };
                    if !new.enabled {
                        tracing::info!(plugin = %name, generation = current.number(), "unloading: disabled in the configuration");
                        stopped.extend(self.stop_serving(&mut state, &path, &name, None));
                    } else if let Err(err) = check_pin(&path, &name, &new, sha256) {
                        tracing::error!(plugin = %name, generation = current.number(), "unloading: its SHA-256 {actual} does not match the pin in the configuration");
                        stopped.extend(self.stop_serving(&mut state, &path, &name, Some(&err)));
                    } else if current.isolation() != isolation {
                        // In or out of a worker: loaded again from its file, as a reload.
                        tracing::info!(plugin = %name, generation = current.number(), "isolation changed to {isolation}: loading it again");
                        retry.extend(state.files.reload(&path));
                    } else if current.settings() != &new {
                        restarts.push((name.clone(), current));
                    }
                }
                retry.extend(state.files.retry_declaring(&name));
            }
        }
        for generation in stopped {
            self.inner.reaper.retire(generation);
        }
        (restarts, retry)
    }

    /// Starts `current`'s library again, with its plugin's current settings, as a new
    /// generation that replaces it (unless something else replaced it meanwhile).
    pub(super) fn restart(&self, name: &str, current: &Arc<Generation>) {
        let load_lock = self.load_lock(name);
        let _one_at_a_time = lock(&load_lock);
        let (number, settings) = {
            let mut state = self.state();
            let still = self
                .inner
                .table
                .current(name)
                .is_some_and(|c| Arc::ptr_eq(&c, current));
            if !still {
                return;
            }
            let settings = state.settings.get(name).cloned().unwrap_or_default();
            let last = state.generations.entry(name.to_owned()).or_default();
            *last += 1;
            (*last, settings)
        };
        let handover = Handover::begin(current);
        let started = self.start_generation(
            name,
            current.origin(),
            current.source(),
            number,
            settings,
            handover.previous(),
        );
        let generation = match started {
            Ok(generation) => Arc::new(generation),
            Err(err) => {
                self.unreserve(name, number);
                tracing::error!(plugin = %name, "new configuration rejected, the old one keeps serving: {}", err.message());
                return;
            }
        };
        let replaced = {
            let mut state = self.state();
            let still = self
                .inner
                .table
                .current(name)
                .is_some_and(|c| Arc::ptr_eq(&c, current));
            if still {
                self.swap(&mut state, name, Some(&generation), Ended::Replaced, None)
            } else {
                Some(generation.clone())
            }
        };
        if replaced.as_ref().is_some_and(|r| Arc::ptr_eq(r, current)) {
            handover.commit(&generation);
        }
        if replaced.as_ref().is_some_and(|r| Arc::ptr_eq(r, current)) {
            tracing::info!(plugin = %name, old_generation = current.number(), generation = number, "reconfigured");
        }
        self.retire(replaced);
    }

    /// Starts plugin `plugin` afresh (`host restart`): an isolated plugin gets a new worker
    /// process, and a quarantine is lifted; an in-process one is started again from its
    /// library as a new generation. Returns what was done, in one line.
    pub fn restart_plugin(&self, plugin: &str) -> Result<String, CallError> {
        let current = self
            .inner
            .table
            .current(plugin)
            .ok_or_else(|| self.unknown_plugin(plugin))?;
        if let Some(restarted) = current.restart_worker() {
            let pid = restarted?;
            tracing::info!(%plugin, generation = current.number(), worker_pid = pid, "restarted by request");
            return Ok(format!(
                "restarted plugin {plugin} (generation {}): worker pid {pid}",
                current.number()
            ));
        }
        self.restart(plugin, &current);
        match self.inner.table.current(plugin) {
            Some(now) if !Arc::ptr_eq(&now, &current) => Ok(format!(
                "restarted plugin {plugin}: generation {} -> {}",
                current.number(),
                now.number()
            )),
            _ => Err(CallError::new(
                CallErrorKind::Internal,
                format!("plugin {plugin} could not be started again; the old generation keeps serving (see the host's log)"),
            )),
        }
    }
}
