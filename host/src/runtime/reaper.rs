//! The reaper: drains, drops and unloads replaced generations, off every caller's path and
//! outside every lock, and keeps an eye on libraries that stayed in memory.
//!
//! A generation taken out of the call table is handed to the reaper. It waits until no call
//! holds the generation any more, then drops it on a short-lived thread of its own (dropping
//! runs plugin code: the plugin value's `Drop`, the library's destructors), so that a plugin
//! stuck in its `Drop` holds up nothing but that thread. When the drop is done it checks
//! whether the library left memory. One that did not (a thread-local destructor on a thread
//! still alive keeps it) is checked again at every later reap and every minute, with a
//! `dlclose` pass each time (see [`loader::release_pass`]), and its release is logged when it
//! happens.
//!
//! A generation replaced by a new version may be retired *on standby*: it is kept loaded
//! until its probation ends (see `registry::rollout`), ready to serve again; if the registry
//! puts it back into service meanwhile (a rollback), the reaper lets go of it.
//!
//! [`Reaper::retired`] lists everything the reaper holds, for `host list`.

use std::path::PathBuf;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::runtime::generation::Generation;
use crate::runtime::loader::{self, Library};
use crate::runtime::mappings;

/// How often draining generations are looked at.
const DRAIN_TICK: Duration = Duration::from_millis(5);
/// How often libraries still mapped are checked again when nothing else happens.
const MAPPED_RECHECK: Duration = Duration::from_secs(60);
/// A drop running longer than this is reported.
const SLOW_DROP: Duration = Duration::from_secs(10);

/// A generation that no longer serves calls but is still in memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retired {
    /// The plugin.
    pub plugin: String,
    /// Its generation number.
    pub generation: u64,
    /// The file it was loaded from.
    pub path: PathBuf,
    /// Where it is in its way out.
    pub state: RetiredState,
    /// When it stopped serving, in milliseconds since the Unix epoch.
    pub retired_at_unix_ms: u64,
    /// Still mapped after its unload: the address space its library's mappings span, in
    /// bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mapped_bytes: Option<u64>,
}

/// Where a retired generation is in its way out of memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
#[non_exhaustive]
pub enum RetiredState {
    /// Kept loaded, ready to serve again, until the probation of the version that
    /// replaced it ends.
    Standby {
        /// When it will be unloaded, in milliseconds since the Unix epoch.
        until_unix_ms: u64,
    },
    /// Calls that started on it are still running.
    Draining {
        /// Calls running.
        in_flight: u64,
        /// Of those, calls whose caller was told they timed out.
        stuck: u64,
    },
    /// Its plugin value and library are being dropped.
    Unloading,
    /// Closed, but the library is still mapped (a thread or thread-local of the plugin
    /// keeps it); checked again every minute.
    StillMapped,
}

enum Message {
    /// A generation out of service since then, to be unloaded once no call holds it and,
    /// for a standby, not before the given moment.
    Retire(Arc<Generation>, SystemTime, Option<SystemTime>),
    /// Standbys are unloaded as soon as no call holds them (shutting down).
    EndStandbys,
    /// The standbys of this plugin are: a newer one replaces them.
    EndStandby(String),
    /// Answered once nothing is draining or unloading any more.
    Flush(mpsc::Sender<()>),
}

/// Owns the reaper thread. Dropping it lets the thread finish what it holds in the
/// background.
pub(crate) struct Reaper {
    sender: Mutex<mpsc::Sender<Message>>,
    status: Arc<Mutex<Vec<Retired>>>,
}

impl Reaper {
    pub(crate) fn start() -> std::io::Result<Reaper> {
        let (sender, receiver) = mpsc::channel();
        let status = Arc::new(Mutex::new(Vec::new()));
        let mut state = State {
            status: status.clone(),
            draining: Vec::new(),
            unloading: Vec::new(),
            mapped: Vec::new(),
            flushes: Vec::new(),
            next_recheck: Instant::now() + MAPPED_RECHECK,
        };
        std::thread::Builder::new()
            .name("plugin-reaper".into())
            .spawn(move || state.run(receiver))?;
        Ok(Reaper {
            sender: Mutex::new(sender),
            status,
        })
    }

    /// Hands over a generation that no longer serves calls.
    pub(crate) fn retire(&self, generation: Arc<Generation>) {
        self.retire_at(generation, None);
    }

    /// Hands over a generation that no longer serves calls, to be kept loaded until
    /// `standby_until` (if given) in case it serves again.
    pub(crate) fn retire_at(&self, generation: Arc<Generation>, standby_until: Option<SystemTime>) {
        tracing::debug!(
            plugin = generation.name(),
            generation = generation.number(),
            "retired; {}",
            if standby_until.is_some() {
                "on standby"
            } else {
                "draining"
            }
        );
        let message = Message::Retire(generation, SystemTime::now(), standby_until);
        if let Err(mpsc::SendError(Message::Retire(generation, ..))) = self.sender().send(message) {
            // The thread is gone (it never ends while we hold the sender, but be safe):
            // drop here rather than leak.
            drop(generation);
        }
    }

    /// Unloads standbys as soon as no call holds them, without waiting for their time.
    pub(crate) fn end_standbys(&self) {
        let _ = self.sender().send(Message::EndStandbys);
    }

    /// Unloads the standbys of `plugin` handed over so far as soon as no call holds them.
    pub(crate) fn end_standby(&self, plugin: &str) {
        let _ = self.sender().send(Message::EndStandby(plugin.to_owned()));
    }

    /// Waits up to `timeout` until every generation handed over so far is dropped (standbys
    /// waiting for their time excepted). Returns
    /// whether that happened in time.
    pub(crate) fn flush(&self, timeout: Duration) -> bool {
        let (ack, done) = mpsc::channel();
        if self.sender().send(Message::Flush(ack)).is_err() {
            return true;
        }
        done.recv_timeout(timeout).is_ok()
    }

    /// What the reaper holds now.
    pub(crate) fn retired(&self) -> Vec<Retired> {
        self.status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn sender(&self) -> std::sync::MutexGuard<'_, mpsc::Sender<Message>> {
        self.sender.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl std::fmt::Debug for Reaper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reaper").finish_non_exhaustive()
    }
}

struct Draining {
    generation: Arc<Generation>,
    since: SystemTime,
    /// A standby's time: not unloaded before it.
    until: Option<SystemTime>,
    /// The generation's service epoch when it was retired; another means it serves again.
    epoch: u64,
}

struct Unloading {
    info: Retired,
    /// The library, for a generation that ran in this process (an isolated one has its
    /// worker stopped instead).
    library: Option<(Weak<Library>, PathBuf)>,
    thread: JoinHandle<()>,
    started: Instant,
    reported_slow: bool,
}

struct Mapped {
    info: Retired,
    copy_path: PathBuf,
}

struct State {
    status: Arc<Mutex<Vec<Retired>>>,
    draining: Vec<Draining>,
    unloading: Vec<Unloading>,
    mapped: Vec<Mapped>,
    flushes: Vec<mpsc::Sender<()>>,
    next_recheck: Instant,
}

impl State {
    fn run(&mut self, receiver: mpsc::Receiver<Message>) {
        let mut open = true;
        loop {
            let busy = !self.draining.is_empty() || !self.unloading.is_empty();
            if !open && !busy {
                return;
            }
            // Look often at what retired recently; calls stuck for long are looked at less.
            let recent = self
                .unloading
                .iter()
                .any(|u| u.started.elapsed() < SLOW_DROP)
                || self.draining.iter().any(|d| {
                    d.since
                        .elapsed()
                        .map_or(true, |age| age < Duration::from_secs(1))
                });
            let message = if recent {
                receiver.recv_timeout(DRAIN_TICK)
            } else if busy {
                receiver.recv_timeout(DRAIN_TICK * 20)
            } else {
                receiver.recv_timeout(self.next_recheck.saturating_duration_since(Instant::now()))
            };
            match message {
                Ok(Message::Retire(generation, since, until)) => {
                    let epoch = generation.epoch();
                    self.draining.push(Draining {
                        generation,
                        since,
                        until,
                        epoch,
                    })
                }
                Ok(Message::EndStandbys) => {
                    for entry in &mut self.draining {
                        entry.until = None;
                    }
                }
                Ok(Message::EndStandby(plugin)) => {
                    for entry in &mut self.draining {
                        if entry.generation.name() == plugin {
                            entry.until = None;
                        }
                    }
                }
                Ok(Message::Flush(ack)) => self.flushes.push(ack),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => open = false,
            }
            let reaped = self.reap();
            if reaped || Instant::now() >= self.next_recheck {
                self.recheck_mapped();
                self.next_recheck = Instant::now() + MAPPED_RECHECK;
            }
            let now = SystemTime::now();
            let settled = self
                .draining
                .iter()
                .all(|d| d.until.is_some_and(|until| now < until));
            if settled && self.unloading.is_empty() {
                for ack in self.flushes.drain(..) {
                    let _ = ack.send(());
                }
            }
            self.publish();
        }
    }

    /// Starts dropping every generation no call holds any more, and finishes the drops that
    /// are done. Returns whether a library was closed.
    fn reap(&mut self) -> bool {
        let now = SystemTime::now();
        let mut i = 0;
        while i < self.draining.len() {
            let entry = &self.draining[i];
            if entry.generation.epoch() != entry.epoch {
                // Back in service (a rollback): not ours to unload any more.
                self.draining.swap_remove(i);
            } else if entry.until.is_some_and(|until| now < until) {
                i += 1;
            // Only this list holds it: no call is running on it, and none can start (it is
            // out of the call table, and handles to it are gone).
            } else if Arc::strong_count(&entry.generation) == 1 {
                let Draining {
                    generation, since, ..
                } = self.draining.swap_remove(i);
                self.start_unload(generation, since);
            } else {
                i += 1;
            }
        }
        let mut closed = false;
        let mut i = 0;
        while i < self.unloading.len() {
            if self.unloading[i].thread.is_finished() {
                let unloading = self.unloading.swap_remove(i);
                closed |= self.finish_unload(unloading);
            } else {
                let u = &mut self.unloading[i];
                if !u.reported_slow && u.started.elapsed() > SLOW_DROP {
                    u.reported_slow = true;
                    tracing::warn!(plugin = %u.info.plugin, generation = u.info.generation,
                        "unloading has taken over {} s: the plugin's Drop or its library's \
                         destructors do not return", SLOW_DROP.as_secs());
                }
                i += 1;
            }
        }
        closed
    }

    fn start_unload(&mut self, generation: Arc<Generation>, since: SystemTime) {
        let info = Retired {
            plugin: generation.name().to_owned(),
            generation: generation.number(),
            path: generation.source().to_owned(),
            state: RetiredState::Unloading,
            retired_at_unix_ms: unix_ms(since),
            mapped_bytes: None,
        };
        let library = generation
            .library()
            .map(|library| (Arc::downgrade(library), library.copy_path().to_owned()));
        let (plugin, number) = (info.plugin.clone(), info.generation);
        let spawned = std::thread::Builder::new()
            .name(format!("unload-{plugin}-{number}"))
            .spawn(move || {
                let _span =
                    tracing::info_span!("drain", plugin = %plugin, generation = number).entered();
                stop_then_unload(generation);
            });
        match spawned {
            Ok(thread) => self.unloading.push(Unloading {
                info,
                library,
                thread,
                started: Instant::now(),
                reported_slow: false,
            }),
            // Without a thread to spare, the generation was dropped with the closure, here.
            Err(err) => tracing::warn!(plugin = %info.plugin, generation = info.generation,
                "unloaded on the reaper's own thread (cannot start one: {err})"),
        }
    }

    /// Checks where a finished drop left the library. Returns whether it was closed.
    fn finish_unload(&mut self, unloading: Unloading) -> bool {
        let Unloading {
            info,
            library,
            thread,
            ..
        } = unloading;
        let _ = thread.join();
        let _span =
            tracing::info_span!("drain", plugin = %info.plugin, generation = info.generation)
                .entered();
        let Some((library, copy_path)) = library else {
            tracing::info!("unloaded: its worker process was stopped");
            return false;
        };
        if library.strong_count() > 0 {
            // Another generation (a reconfigured one) still uses the library.
            tracing::info!("unloaded; the library stays, a newer generation uses it");
            return false;
        }
        if loader::release_pass(&copy_path) {
            tracing::warn!(
                "still mapped: the library stayed in memory after dlclose (a thread or a \
                 thread-local destructor of the plugin keeps it); checked again every minute"
            );
            self.mapped.push(Mapped {
                info: Retired {
                    state: RetiredState::StillMapped,
                    mapped_bytes: Some(mappings::mapped_bytes(&copy_path)),
                    ..info
                },
                copy_path,
            });
        } else {
            tracing::info!("unloaded: library closed and gone from memory");
        }
        true
    }

    fn recheck_mapped(&mut self) {
        self.mapped.retain_mut(|mapped| {
            if loader::release_pass(&mapped.copy_path) {
                mapped.info.mapped_bytes = Some(mappings::mapped_bytes(&mapped.copy_path));
                return true;
            }
            tracing::info!(plugin = %mapped.info.plugin, generation = mapped.info.generation,
                "released: the library that stayed mapped after unload has left memory");
            false
        });
    }

    fn publish(&self) {
        let mut all: Vec<Retired> = self
            .draining
            .iter()
            .map(|d| Retired {
                plugin: d.generation.name().to_owned(),
                generation: d.generation.number(),
                path: d.generation.source().to_owned(),
                state: match d.until.filter(|until| SystemTime::now() < *until) {
                    Some(until) => RetiredState::Standby {
                        until_unix_ms: unix_ms(until),
                    },
                    None => RetiredState::Draining {
                        in_flight: d.generation.in_flight(),
                        stuck: d.generation.stuck(),
                    },
                },
                retired_at_unix_ms: unix_ms(d.since),
                mapped_bytes: None,
            })
            .chain(self.unloading.iter().map(|u| u.info.clone()))
            .chain(self.mapped.iter().map(|m| m.info.clone()))
            .collect();
        all.sort_by(|a, b| (&a.plugin, a.generation).cmp(&(&b.plugin, b.generation)));
        *self.status.lock().unwrap_or_else(PoisonError::into_inner) = all;
    }
}

/// The retirement sequence of a generation no call holds any more, on an unload thread of
/// its own (never under a lock, never on a tokio thread): its stop signal, and the wait for
/// the threads it started, bounded by its `stop_timeout_ms` (plugin ABI 1.4; an older plugin
/// gets none); then the drop, which closes its library (or stops its worker process).
fn stop_then_unload(generation: Arc<Generation>) {
    let stopped = generation.stop();
    stopped.log(
        generation.name(),
        generation.number(),
        generation.settings().stop_timeout_ms,
    );
    // Its SHA-256, if nobody asked for it yet, for the plugin's history: the descriptor the
    // digest keeps to compute it from is then closed.
    generation.digest().sha256();
    drop(generation);
}

pub(crate) fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
