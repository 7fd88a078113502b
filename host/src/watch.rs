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
//!   further writes, and in every case only once no process has it open for writing (Linux
//!   refuses a read lease until then);
//! * a file removed or renamed away: after [`SETTLE`], so that a file replaced by unlinking
//!   and linking again (cargo's way) is reloaded, not unloaded and loaded.
//!
//! In every round, loads are handled before removals, so a rename inside the directory
//! swaps the plugin atomically instead of leaving a gap. Files that are not `*.so`, and hidden
//! files (editor swap files, `.tmp` work files), are ignored.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode, CreateKind, EventKind, ModifyKind, RenameMode};
use notify::{RecommendedWatcher, RecursiveMode, Watcher as _};

use crate::config::HostConfig;
use crate::registry::Host;

/// How long a newly created file must stay unchanged before it is loaded, when no write was
/// seen (hard links, `install`).
pub const SETTLE: Duration = Duration::from_millis(50);
/// How long a file written but not yet closed must stay unwritten before it is loaded.
pub const WRITE_QUIET: Duration = Duration::from_millis(500);

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
    Stop,
}

/// Watches a plugins directory (and optionally a `host.toml`) and keeps a [`Host`] in step
/// with it, on a thread of its own.
pub struct Watcher {
    sender: mpsc::Sender<Message>,
    thread: Option<JoinHandle<()>>,
    _watcher: RecommendedWatcher,
}

impl Watcher {
    /// Starts watching `dir`, then loads every plugin file already in it. With
    /// `config_file`, changes to that file are applied with [`Host::apply_settings`].
    pub fn start(host: Host, dir: &Path, config_file: Option<&Path>) -> notify::Result<Watcher> {
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
        let mut state = WatchState {
            host,
            dir: dir.to_owned(),
            config_file,
            pending: HashMap::new(),
            config_due: None,
        };
        // Everything already there; events from now on are queued and looked at afterwards.
        state.rescan();
        let thread = std::thread::Builder::new()
            .name("plugin-watch".into())
            .spawn(move || state.run(receiver))
            .map_err(notify::Error::io)?;
        Ok(Watcher {
            sender,
            thread: Some(thread),
            _watcher: watcher,
        })
    }

    /// Stops watching. Plugins stay loaded.
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
                Ok(Message::Event(Ok(event))) => self.note(event),
                Ok(Message::Event(Err(err))) => {
                    tracing::warn!(dir = %self.dir.display(), "watch error: {err}")
                }
                Ok(Message::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                Err(RecvTimeoutError::Timeout) => {}
            }
            // Take whatever else is already queued before acting, so a burst is one round.
            while let Ok(message) = receiver.try_recv() {
                match message {
                    Message::Event(Ok(event)) => self.note(event),
                    Message::Event(Err(err)) => {
                        tracing::warn!(dir = %self.dir.display(), "watch error: {err}")
                    }
                    Message::Stop => return,
                }
            }
            self.act(Instant::now());
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

    /// Reconciles every path that is due, loads before removals.
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
        if due.is_empty() {
            return;
        }
        for path in &due {
            self.pending.remove(path);
        }
        due.sort();
        // Present means a directory entry exists, even a link to nowhere (which is an error
        // to report, not a removal).
        let (present, gone): (Vec<_>, Vec<_>) =
            due.into_iter().partition(|p| p.symlink_metadata().is_ok());
        // However long a writer paused, a file some process still has open for writing is
        // not complete: wait for its close.
        let (present, writing): (Vec<_>, Vec<_>) =
            present.into_iter().partition(|p| !being_written(p));
        for path in writing {
            tracing::debug!(file = %path.display(), "still open for writing; waiting");
            self.pending.insert(path, now + WRITE_QUIET);
        }
        for path in present {
            let _ = self.host.load_file(&path);
        }
        for path in gone {
            self.host.remove_file(&path);
        }
    }

    /// Loads every plugin file in the directory and forgets files that disappeared.
    fn rescan(&mut self) {
        let files = match plugin_files(&self.dir) {
            Ok(files) => files,
            Err(err) => {
                tracing::error!(dir = %self.dir.display(), "cannot read the plugins directory: {err}");
                return;
            }
        };
        for path in &files {
            let _ = self.host.load_file(path);
        }
        for status in self.host.status() {
            if !files.contains(&status.path) {
                self.host.remove_file(&status.path);
            }
        }
    }

    fn reload_config(&mut self) {
        let Some(path) = &self.config_file else {
            return;
        };
        match HostConfig::load(path) {
            Ok(config) => {
                tracing::info!(file = %path.display(), "configuration changed; applying plugin settings");
                self.host.apply_settings(config.plugins);
            }
            Err(err) => tracing::error!("{err}; keeping the previous configuration"),
        }
    }
}

/// Whether some process has `path` open for writing. Linux refuses a read lease on such a
/// file (`EAGAIN`); where leases are not supported, the answer is no.
fn being_written(path: &Path) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::io::AsRawFd;
    let Ok(file) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
    else {
        return false;
    };
    if !file.metadata().is_ok_and(|m| m.is_file()) {
        return false;
    }
    let fd = file.as_raw_fd();
    // SAFETY: `fd` is open, read-only and owned by `file` for both calls; a lease only
    // changes how the kernel treats later opens of the file, and is released at once.
    unsafe {
        if libc::fcntl(fd, libc::F_SETLEASE, libc::F_RDLCK) == 0 {
            libc::fcntl(fd, libc::F_SETLEASE, libc::F_UNLCK);
            return false;
        }
    }
    std::io::Error::last_os_error().raw_os_error() == Some(libc::EAGAIN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_open_for_writing_is_seen_as_being_written() {
        let dir = std::env::temp_dir().join(format!("watch-lease-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x.so");
        let writer = std::fs::File::create(&path).unwrap();
        assert!(being_written(&path));
        drop(writer);
        assert!(!being_written(&path));
        assert!(!being_written(&dir.join("missing.so")));
        std::fs::remove_dir_all(&dir).unwrap();
    }

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
