//! State handover: what a plugin keeps in memory, carried from the version being replaced
//! to the next one (plugin ABI 1.2), with no update lost.
//!
//! When a plugin whose `save_state` returns something is replaced (a new file, a new
//! configuration), the host closes the old generation's [`Gate`]: calls already running
//! finish, new ones wait. Once they have drained (within `handover_timeout_ms`), the old
//! generation's state is taken, the next version's `init` reads it, and when the next
//! version is published the gate sends the waiting calls, and every later call that reaches
//! the old generation, on to it. If the next version fails to start, the gate opens again
//! and the old version serves on with its state, which it never gave up. A plugin that
//! hands over nothing is replaced as before: its calls are never held.
//!
//! Closing the gate races with callers that are just starting. A caller counts itself
//! started, then looks at the gate; the host closes the gate, then counts the calls
//! running. One of the two must see the other's write, which takes a full barrier on both
//! sides. A fence on every call would cost as much as the rest of its bookkeeping, so the
//! caller only stops the compiler from reordering the two, and the host makes every thread
//! of the process execute a full barrier with `membarrier(2)`
//! (`MEMBARRIER_CMD_PRIVATE_EXPEDITED`, Linux 4.14). Where the kernel lacks it, callers
//! fence.

use std::sync::atomic::{compiler_fence, fence, AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Once, PoisonError, Weak};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::runtime::generation::Generation;

/// What one version handed over, for the next one's `init`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PreviousState {
    /// The state it saved, as JSON text.
    pub(crate) state_json: String,
    /// Its version.
    pub(crate) version: String,
}

/// Why a call held at a closed gate does not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Held {
    /// The generation that took over (this number) is unloaded since.
    Unloaded(u64),
    /// The call's deadline passed while the handover went on.
    PastDeadline,
}

/// Whether new calls may run on a generation, or must wait for a handover to end.
#[derive(Default)]
pub(crate) struct Gate {
    /// Read by every call: set while the state is not `Open`.
    closed: AtomicBool,
    state: Mutex<GateState>,
    changed: Condvar,
}

#[derive(Default)]
enum GateState {
    #[default]
    Open,
    Closed,
    /// Handed over: calls go to the next version (its number, and the generation while it
    /// is loaded; a weak reference, so that a handle kept on an old version does not keep
    /// every later one loaded).
    Superseded(u64, Weak<Generation>),
}

impl Gate {
    /// Whether a call that has just counted itself started may run.
    #[inline(always)]
    pub(crate) fn is_open(&self) -> bool {
        if CALLERS_FENCE.load(Ordering::Relaxed) {
            callers_fence();
        }
        // The count's store must not move past the load below; the CPU's side of it is
        // the host's `membarrier` (see the module doc).
        compiler_fence(Ordering::SeqCst);
        !self.closed.load(Ordering::Relaxed)
    }

    /// Waits while a handover holds calls, until `deadline` at the most; then the
    /// generation that took over, or `None` if this one serves again. Fails if the one that
    /// took over is unloaded since, or the deadline passed first.
    pub(crate) fn wait(
        &self,
        deadline: Option<SystemTime>,
    ) -> Result<Option<Arc<Generation>>, Held> {
        let mut state = lock(&self.state);
        loop {
            match &*state {
                GateState::Open => return Ok(None),
                GateState::Superseded(number, next) => {
                    return next.upgrade().map(Some).ok_or(Held::Unloaded(*number))
                }
                GateState::Closed => {
                    let Some(deadline) = deadline else {
                        state = self
                            .changed
                            .wait(state)
                            .unwrap_or_else(PoisonError::into_inner);
                        continue;
                    };
                    let Ok(left) = deadline.duration_since(SystemTime::now()) else {
                        return Err(Held::PastDeadline);
                    };
                    if left.is_zero() {
                        return Err(Held::PastDeadline);
                    }
                    state = self
                        .changed
                        .wait_timeout(state, left)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
            }
        }
    }

    fn close(&self) {
        *lock(&self.state) = GateState::Closed;
        self.closed.store(true, Ordering::Relaxed);
        everyone_fences();
    }

    /// Lets calls run on this generation again (a failed handover, or a rollback to it).
    pub(crate) fn open(&self) {
        let mut state = lock(&self.state);
        *state = GateState::Open;
        self.closed.store(false, Ordering::Relaxed);
        self.changed.notify_all();
    }

    fn supersede(&self, next: &Arc<Generation>) {
        *lock(&self.state) = GateState::Superseded(next.number(), Arc::downgrade(next));
        self.changed.notify_all();
    }
}

/// A handover under way: the old generation's gate is closed until it is committed (calls
/// go on to the next version) or dropped (they run on the old one again).
#[must_use = "dropping a handover opens the old generation's gate again"]
#[derive(Default)]
pub(crate) struct Handover {
    /// The generation whose gate is closed.
    from: Option<Arc<Generation>>,
    previous: Option<PreviousState>,
    /// When the gate closed.
    closed_at: Option<Instant>,
}

impl std::fmt::Debug for Handover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handover")
            .field("from", &self.from.as_ref().map(|g| g.number()))
            .field(
                "state_bytes",
                &self.previous.as_ref().map(|p| p.state_json.len()),
            )
            .finish()
    }
}

impl Handover {
    /// Takes `old`'s state for the version that replaces it. If it has any, `old`'s calls are
    /// held (see the module doc) until the handover is committed or dropped. A `save_state`
    /// that fails is logged, and the next version starts without state.
    pub(crate) fn begin(old: &Arc<Generation>) -> Handover {
        let (name, number) = (old.name(), old.number());
        let _span = tracing::info_span!("handover", plugin = name, generation = number).entered();
        let warn = |err: String| {
            tracing::warn!("save_state failed, the next version starts without state: {err}");
            Handover::default()
        };
        // Most plugins hand over nothing: their calls are never held.
        match save_state(old) {
            Ok(Some(_)) => {}
            Ok(None) => return Handover::default(),
            Err(err) => return warn(err),
        }
        let started = Instant::now();
        old.gate().close();
        let mut handover = Handover {
            from: Some(old.clone()),
            previous: None,
            closed_at: Some(started),
        };
        let limit = Duration::from_millis(old.settings().handover_timeout_ms);
        let running = drain(old, started + limit);
        if running > 0 {
            tracing::warn!(
                "{running} calls still running after {} ms (handover_timeout_ms): what they \
                 change from now on is not handed over",
                limit.as_millis()
            );
        }
        match save_state(old) {
            Ok(state) => {
                let version = old.metadata().version.clone();
                tracing::debug!(
                    "calls drained and state saved in {} us",
                    started.elapsed().as_micros()
                );
                handover.previous = state.map(|state_json| PreviousState {
                    state_json,
                    version,
                });
                handover
            }
            Err(err) => {
                drop(handover);
                warn(err)
            }
        }
    }

    /// What the next version's `init` is handed.
    pub(crate) fn previous(&self) -> Option<&PreviousState> {
        self.previous.as_ref()
    }

    /// `next` is published: the held calls, and any later call of the old generation, go to
    /// it.
    pub(crate) fn commit(mut self, next: &Arc<Generation>) {
        let Some(from) = self.from.take() else {
            return;
        };
        from.gate().supersede(next);
        let held = self.closed_at.map_or(0, |at| at.elapsed().as_micros());
        let bytes = self.previous.as_ref().map_or(0, |p| p.state_json.len());
        tracing::info!(
            plugin = from.name(),
            generation = next.number(),
            "handed {bytes} bytes of state from generation {} to {}; calls held {held} us",
            from.number(),
            next.number()
        );
    }
}

impl Drop for Handover {
    fn drop(&mut self) {
        if let Some(from) = self.from.take() {
            from.gate().open();
        }
    }
}

/// Waits until `generation` runs no call but those whose callers gave up on them, or until
/// `deadline`; returns the calls still running.
fn drain(generation: &Generation, deadline: Instant) -> u64 {
    let mut pause = Duration::from_micros(20);
    loop {
        let running = generation.in_flight().saturating_sub(generation.stuck());
        if running == 0 || Instant::now() >= deadline {
            return running;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(2));
    }
}

/// Runs `generation`'s `save_state` on a thread of its own, so that one that never returns
/// holds up only that thread; waits up to the plugin's `timeout_ms`.
fn save_state(generation: &Arc<Generation>) -> Result<Option<String>, String> {
    let timeout = generation.timeout();
    let (sender, receiver) = mpsc::sync_channel(1);
    let saving = generation.clone();
    std::thread::Builder::new()
        .name(format!("save-{}", generation.name()))
        .spawn(move || {
            let _ = sender.send(saving.save_state());
        })
        .map_err(|err| format!("cannot start a thread for save_state: {err}"))?;
    receiver.recv_timeout(timeout).unwrap_or_else(|_| {
        Err(format!(
            "save_state did not return within {} ms (timeout_ms)",
            timeout.as_millis()
        ))
    })
}

/// A caller's full barrier, where `membarrier` cannot stand in for it.
#[cold]
#[inline(never)]
fn callers_fence() {
    fence(Ordering::SeqCst);
}

/// Set while callers must fence themselves: until `membarrier` is known to work.
static CALLERS_FENCE: AtomicBool = AtomicBool::new(true);
static REGISTER: Once = Once::new();

const MEMBARRIER_CMD_PRIVATE_EXPEDITED: libc::c_long = 1 << 3;
const MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED: libc::c_long = 1 << 4;

fn membarrier(cmd: libc::c_long) -> bool {
    // SAFETY: membarrier takes a command and two integer arguments and touches no memory
    // of ours; an unknown command or an old kernel is an error return, nothing else.
    unsafe {
        libc::syscall(
            libc::SYS_membarrier,
            cmd,
            0 as libc::c_long,
            0 as libc::c_long,
        ) == 0
    }
}

/// Registers this process for expedited `membarrier`, so that callers need not fence. Done
/// once, when the first host is created.
pub(crate) fn init() {
    REGISTER.call_once(|| {
        if membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED) {
            CALLERS_FENCE.store(false, Ordering::SeqCst);
        } else {
            tracing::debug!("membarrier is not available: every call fences");
        }
    });
}

/// A full barrier on every thread of this process (the handover's side of the gate).
fn everyone_fences() {
    fence(Ordering::SeqCst);
    if CALLERS_FENCE.load(Ordering::SeqCst) {
        return;
    }
    if !membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED) {
        // Registered, so this cannot fail; if it ever did, a caller could slip past the
        // gate and its update would miss the handover.
        tracing::error!(
            "membarrier failed: {}; a call starting now may miss the handover",
            std::io::Error::last_os_error()
        );
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn membarrier_registers_here() {
        // The machines this host runs on have Linux 4.14 or later; on one without it the
        // callers fence, which is correct, only slower. This pins which one we measure.
        init();
        assert!(!CALLERS_FENCE.load(Ordering::SeqCst));
        assert!(membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED));
    }
}
