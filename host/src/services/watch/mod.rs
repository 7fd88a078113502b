//! Watching: turns changes in a plugins directory (and in `host.toml`) into loads, reloads
//! and unloads on a [`Host`].
//!
//! Built on `notify`'s raw events rather than a time-based debouncer, because a debounce
//! window would be the whole reload latency. Each plugin path waits until its content is
//! complete, then the host *reconciles* it with the disk: a file present is loaded (the host
//! compares content hashes, so the same content is never loaded twice), a file gone is
//! unloaded. When is content complete?
//!
//! * a file closed after writing (`cp`, a compiler), or renamed into the directory (an atomic
//!   `mv`): at once;
//! * a file created with no write seen yet (a hard link, as cargo makes): after
//!   [`SETTLE`] without further events;
//! * a file written but not closed: when it is closed, or after [`WRITE_QUIET`] without
//!   further writes, and in every case only once no process has it open for writing (see
//!   `writers`, which asks the kernel without risking a signal);
//! * a file removed or renamed away: after [`SETTLE`], so that a file replaced by unlinking
//!   and linking again (cargo's way) is reloaded, not unloaded and loaded.
//!
//! Loads run on up to [`MAX_PARALLEL_LOADS`] threads at once, never on the watcher's own, so a
//! plugin whose `init` takes seconds delays nothing but itself; loads of one path run one at
//! a time. A removal waits for the loads that started before it (a rename inside the
//! directory then swaps the plugin atomically instead of leaving a gap). Files that are not
//! `*.so`, and hidden files (editor swap files, `.tmp` work files), are ignored.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode, CreateKind, EventKind, ModifyKind, RenameMode};
use notify::{RecommendedWatcher, RecursiveMode, Watcher as _};

use crate::files::lease as writers;
use crate::registry::Host;
use crate::services::config::{HostConfig, PluginSettings};
pub use observe::{ConfigReload, ReloadObserver, WatcherProbe};
pub use writers::{being_written, lease_signal};

mod observe;

/// How long a newly created file must stay unchanged before it is loaded, when no write was
/// seen (hard links, `install`).
pub const SETTLE: Duration = Duration::from_millis(50);
/// How long a file written but not yet closed must stay unwritten before it is loaded.
pub const WRITE_QUIET: Duration = Duration::from_millis(500);
/// How many loads (and reconfigurations) run at once.
pub const MAX_PARALLEL_LOADS: usize = 4;

/// Whether `path` names a plugin file: `*.so`, not hidden.
pub fn is_plugin_file(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    !name.starts_with('.') && name.len() > 3 && name.ends_with(".so")
}

/// The plugin files in `dir` (see [`is_plugin_file`]), sorted.
pub fn plugin_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| is_plugin_file(path))
        .collect();
    files.sort();
    Ok(files)
}

enum Message {
    Event(notify::Result<notify::Event>),
    /// A job finished; these files may serve a name now.
    Done {
        job: u64,
        retry: Vec<PathBuf>,
        /// The file loaded was being written: it is looked at again later.
        being_written: bool,
    },
    /// Answer on this channel: the watchdog asks whether the thread still runs its loop.
    Ping(mpsc::SyncSender<()>),
    Stop,
}

enum Job {
    Load(PathBuf),
    Settings(BTreeMap<String, PluginSettings>),
}

/// Watches a plugins directory (and optionally a `host.toml`) and keeps a [`Host`] in step
/// with it, on a thread of its own.
pub struct Watcher {
    sender: mpsc::Sender<Message>,
    thread: Option<JoinHandle<()>>,
    _watcher: RecommendedWatcher,
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher").finish_non_exhaustive()
    }
}

impl Watcher {
    /// Starts watching `dir`, then loads every plugin file already in it, and returns once
    /// those loads are done. With `config_file`, changes to that file are applied with
    /// [`Host::apply_settings`].
    pub fn start(host: Host, dir: &Path, config_file: Option<&Path>) -> notify::Result<Watcher> {
        Watcher::start_observed(host, dir, config_file, None)
    }

    /// [`Watcher::start`], telling `observer` when host.toml is reloaded.
    pub fn start_observed(
        host: Host,
        dir: &Path,
        config_file: Option<&Path>,
        observer: Option<ReloadObserver>,
    ) -> notify::Result<Watcher> {
        // notify names paths as the directory it was given joined with the file name.
        let dir = &std::fs::canonicalize(dir).map_err(notify::Error::io)?;
        let (sender, receiver) = mpsc::channel();
        let events = sender.clone();
        let mut watcher = notify::recommended_watcher(move |event| {
            let _ = events.send(Message::Event(event));
        })?;
        watcher.watch(dir, RecursiveMode::NonRecursive)?;
        let config_file = match config_file {
            Some(file) => {
                let parent = match file.parent().filter(|p| !p.as_os_str().is_empty()) {
                    Some(parent) => std::fs::canonicalize(parent),
                    None => std::env::current_dir(),
                }
                .map_err(notify::Error::io)?;
                let file = parent.join(file.file_name().unwrap_or_default());
                let parent = parent.as_path();
                // The directory, not the file: editors replace files by renaming over them.
                if parent != dir {
                    watcher.watch(parent, RecursiveMode::NonRecursive)?;
                }
                Some(file)
            }
            None => None,
        };
        let (scanned, initial_scan) = mpsc::channel();
        let mut state = WatchState {
            host,
            dir: dir.to_owned(),
            config_file,
            pending: HashMap::new(),
            config_due: None,
            sender: sender.clone(),
            running: BTreeMap::new(),
            queued: VecDeque::new(),
            settings_queued: None,
            next_job: 0,
            removals: Vec::new(),
            redo: HashSet::new(),
            scanned: Some(scanned),
            observer,
        };
        // Everything already there; events from now on are queued and looked at afterwards.
        state.rescan();
        let thread = std::thread::Builder::new()
            .name("plugin-watch".into())
            .spawn(move || state.run(receiver))
            .map_err(notify::Error::io)?;
        let _ = initial_scan.recv();
        Ok(Watcher {
            sender,
            thread: Some(thread),
            _watcher: watcher,
        })
    }

    /// A probe asking the watcher's thread whether it still answers (the watchdog's).
    pub fn probe(&self) -> WatcherProbe {
        WatcherProbe {
            sender: self.sender.clone(),
            ping: crate::services::ping::Ping::default(),
        }
    }

    /// Stops watching. Plugins stay loaded; loads already running finish on their own.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        let _ = self.sender.send(Message::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

struct WatchState {
    host: Host,
    dir: PathBuf,
    config_file: Option<PathBuf>,
    /// Plugin paths waiting for their content to be complete, with the moment they will be.
    pending: HashMap<PathBuf, Instant>,
    config_due: Option<Instant>,
    sender: mpsc::Sender<Message>,
    /// Jobs running, by number, with the path each loads (`None`: a reconfiguration).
    running: BTreeMap<u64, Option<PathBuf>>,
    /// Loads waiting for a free thread, in order, numbered like jobs.
    queued: VecDeque<(u64, PathBuf)>,
    /// The newest configuration, waiting for the one being applied.
    settings_queued: Option<BTreeMap<String, PluginSettings>>,
    /// The number the next job gets. Loads are numbered when queued, so that a removal
    /// queued after them waits for them even before they start.
    next_job: u64,
    /// Paths to unload, each once every job numbered below its barrier has finished.
    removals: Vec<(PathBuf, u64)>,
    /// Paths that changed again while being loaded: loaded again afterwards.
    redo: HashSet<PathBuf>,
    /// Told when the first scan's loads are done.
    scanned: Option<mpsc::Sender<()>>,
    /// Told of reloads of host.toml.
    observer: Option<ReloadObserver>,
}

impl WatchState {
    fn run(mut self, receiver: mpsc::Receiver<Message>) {
        loop {
            let next = self.pending.values().chain(&self.config_due).min().copied();
            let message = match next {
                Some(due) => receiver.recv_timeout(due.saturating_duration_since(Instant::now())),
                None => receiver.recv().map_err(|_| RecvTimeoutError::Disconnected),
            };
            match message {
                Ok(Message::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                Ok(message) => self.handle(message),
                Err(RecvTimeoutError::Timeout) => {}
            }
            // Take whatever else is already queued before acting, so a burst is one round.
            while let Ok(message) = receiver.try_recv() {
                match message {
                    Message::Stop => return,
                    message => self.handle(message),
                }
            }
            self.act(Instant::now());
        }
    }

    fn handle(&mut self, message: Message) {
        match message {
            Message::Event(Ok(event)) => self.note(event),
            Message::Event(Err(err)) => {
                tracing::warn!(dir = %self.dir.display(), "watch error: {err}")
            }
            Message::Done {
                job,
                retry,
                being_written,
            } => {
                if let Some(Some(path)) = self.running.remove(&job) {
                    if self.redo.remove(&path) {
                        self.queue_load(path);
                    } else if being_written {
                        // A writer opened it while it was looked at: wait for the writer
                        // (its close is an event too, which makes it due at once).
                        self.pending
                            .entry(path)
                            .or_insert_with(|| Instant::now() + SETTLE);
                    }
                }
                for path in retry {
                    self.queue_load(path);
                }
            }
            Message::Ping(answer) => {
                let _ = answer.try_send(());
            }
            Message::Stop => {}
        }
    }
    /// Records what an event means for the paths it names.
    fn note(&mut self, event: notify::Event) {
        if event.need_rescan() {
            tracing::warn!(dir = %self.dir.display(), "watch events were lost; rescanning");
            self.rescan();
            return;
        }
        let now = Instant::now();
        let delay = match event.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => Some(Duration::ZERO),
            EventKind::Modify(ModifyKind::Name(RenameMode::To | RenameMode::Both)) => {
                Some(Duration::ZERO)
            }
            // A file replaced by unlink-then-link (as cargo does) must not be unloaded in
            // between: a removal waits a moment for its replacement.
            EventKind::Modify(ModifyKind::Name(_)) | EventKind::Remove(_) => Some(SETTLE),
            EventKind::Create(CreateKind::Folder) => Some(Duration::ZERO),
            EventKind::Create(_) | EventKind::Modify(ModifyKind::Metadata(_)) => Some(SETTLE),
            EventKind::Modify(_) => Some(WRITE_QUIET),
            // Opens and reads (our own included) change nothing.
            _ => None,
        };
        let Some(delay) = delay else {
            return;
        };
        for path in &event.paths {
            if self.config_file.as_deref() == Some(path.as_path()) {
                self.config_due = Some(now + SETTLE);
            } else if path.parent() == Some(self.dir.as_path()) && is_plugin_file(path) {
                let due = now + delay;
                self.pending
                    .entry(path.clone())
                    .and_modify(|d| {
                        // A close after writing, or a rename, makes the file ready now. Any
                        // other event only ever pushes the moment out: a chmod in the middle
                        // of a copy must not cut short the wait for the copy.
                        *d = if delay.is_zero() { due } else { (*d).max(due) };
                    })
                    .or_insert(due);
            }
        }
    }

    /// Reconciles every path that is due: loads are queued, removals wait for the loads
    /// queued before them.
    fn act(&mut self, now: Instant) {
        if self.config_due.is_some_and(|due| due <= now) {
            self.config_due = None;
            self.reload_config();
        }
        let mut due: Vec<PathBuf> = self
            .pending
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(path, _)| path.clone())
            .collect();
        for path in &due {
            self.pending.remove(path);
        }
        due.sort();
        for path in due {
            // Present means a directory entry exists, even a link to nowhere (which is an
            // error to report, not a removal).
            if path.symlink_metadata().is_err() {
                self.queue_removal(path);
            } else if writers::being_written(&path) {
                // However long a writer paused, a file some process still has open for
                // writing is not complete: wait for its close.
                tracing::debug!(file = %path.display(), "still open for writing; waiting");
                self.pending.insert(path, now + WRITE_QUIET);
            } else {
                self.queue_load(path);
            }
        }
        self.dispatch();
    }

    fn queue_load(&mut self, path: PathBuf) {
        // The newest event about a path wins over an older removal.
        self.removals.retain(|(p, _)| *p != path);
        if self.running.values().any(|p| p.as_ref() == Some(&path)) {
            self.redo.insert(path);
        } else if !self.queued.iter().any(|(_, p)| *p == path) {
            self.queued.push_back((self.next_job, path));
            self.next_job += 1;
        }
    }

    fn queue_removal(&mut self, path: PathBuf) {
        self.queued.retain(|(_, p)| *p != path);
        self.redo.remove(&path);
        self.removals.retain(|(p, _)| *p != path);
        self.removals.push((path, self.next_job));
    }

    /// Starts queued jobs while threads are free, and removals whose loads are done.
    fn dispatch(&mut self) {
        loop {
            let oldest = self
                .running
                .keys()
                .chain(self.queued.iter().map(|(number, _)| number))
                .min()
                .copied()
                .unwrap_or(u64::MAX);
            let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.removals)
                .into_iter()
                .partition(|(_, barrier)| *barrier <= oldest);
            self.removals = waiting;
            for (path, _) in ready {
                let (_, retry) = self.host.remove_file_deferred(&path);
                for path in retry {
                    self.queue_load(path);
                }
            }
            if self.running.len() >= MAX_PARALLEL_LOADS {
                break;
            }
            let job = if let Some(settings) = self.settings_queued.take() {
                if self.running.values().any(Option::is_none) {
                    // One reconfiguration at a time: the newest waits for the one running.
                    self.settings_queued = Some(settings);
                    match self.queued.pop_front() {
                        Some((number, path)) => (number, Job::Load(path)),
                        None => break,
                    }
                } else {
                    let number = self.next_job;
                    self.next_job += 1;
                    (number, Job::Settings(settings))
                }
            } else {
                match self.queued.pop_front() {
                    Some((number, path)) => (number, Job::Load(path)),
                    None => break,
                }
            };
            self.start(job.0, job.1);
        }
        if self.running.is_empty() && self.queued.is_empty() {
            if let Some(scanned) = self.scanned.take() {
                let _ = scanned.send(());
            }
        }
    }

    fn start(&mut self, number: u64, job: Job) {
        let path = match &job {
            Job::Load(path) => Some(path.clone()),
            Job::Settings(_) => None,
        };
        self.running.insert(number, path);
        let (host, sender) = (self.host.clone(), self.sender.clone());
        let observer = self.observer.clone();
        let work = move || {
            let (retry, being_written) = match job {
                Job::Load(path) => {
                    let (result, retry) = host.load_file_deferred(&path);
                    let written =
                        result.is_err_and(|err| err.kind() == crate::LoadErrorKind::BeingWritten);
                    (retry, written)
                }
                Job::Settings(settings) => {
                    host.apply_settings(settings);
                    if let Some(observer) = &observer {
                        observer(ConfigReload::Applied);
                    }
                    (Vec::new(), false)
                }
            };
            let _ = sender.send(Message::Done {
                job: number,
                retry,
                being_written,
            });
        };
        let spawned = std::thread::Builder::new()
            .name("plugin-load".into())
            .spawn(work);
        if let Err(err) = spawned {
            tracing::error!("cannot start a thread for a load: {err}; the load is not done");
            self.running.remove(&number);
        }
    }

    /// Loads every plugin file in the directory and forgets files that disappeared.
    fn rescan(&mut self) {
        let files = match plugin_files(&self.dir) {
            Ok(files) => files,
            Err(err) => {
                tracing::error!(dir = %self.dir.display(), "cannot read the plugins directory: {err}");
                self.dispatch();
                return;
            }
        };
        for path in self.host.known_files() {
            if !files.contains(&path) {
                self.queue_removal(path);
            }
        }
        for path in files {
            self.queue_load(path);
        }
        self.dispatch();
    }

    fn reload_config(&mut self) {
        let Some(path) = &self.config_file else {
            return;
        };
        if let Some(observer) = &self.observer {
            observer(ConfigReload::Started);
        }
        match HostConfig::load(path) {
            Ok(config) => {
                tracing::info!(file = %path.display(), "configuration changed; applying plugin settings");
                self.settings_queued = Some(config.plugins);
            }
            Err(err) => {
                tracing::error!("{err}; keeping the previous configuration");
                if let Some(observer) = &self.observer {
                    observer(ConfigReload::Refused);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_visible_so_files_are_plugins() {
        assert!(is_plugin_file(Path::new("/p/libhello.so")));
        assert!(is_plugin_file(Path::new("x.so")));
        for name in [
            "/p/.libhello.so",
            "/p/libhello.so.tmp",
            "/p/libhello.so~",
            "/p/.so",
            "/p/notes.txt",
            "/p/libhello.so.swp",
        ] {
            assert!(!is_plugin_file(Path::new(name)), "{name}");
        }
    }
}
