//! [`DispatcherProbe`]: asks the task runner's dispatcher thread whether its loop still
//! turns, for the systemd watchdog. The question is left in a one-place slot that the
//! dispatcher answers at the top of every round; at most one is in flight, so a wedged
//! dispatcher is never sent more, and asking never starts a thread.

use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError, TryLockError};
use std::time::Duration;

use super::runner::Inner;
use super::service::Tasks;
use crate::services::ping::Ping;

/// The watchdog's question to the dispatcher (see [`Tasks::probe`]).
pub struct DispatcherProbe {
    inner: Arc<Inner>,
    ping: Ping,
}

impl std::fmt::Debug for DispatcherProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DispatcherProbe")
            .field("pending", &self.ping.in_flight())
            .finish_non_exhaustive()
    }
}

/// Where a question waits for the dispatcher: one at a time.
pub(super) type PingSlot = Mutex<Option<mpsc::SyncSender<()>>>;

impl Tasks {
    /// A probe asking the dispatcher thread whether it still answers (the watchdog's).
    pub fn probe(&self) -> DispatcherProbe {
        DispatcherProbe {
            inner: self.inner.clone(),
            ping: Ping::default(),
        }
    }
}

impl DispatcherProbe {
    /// Whether the dispatcher answered within `within` (a stopped one never does).
    pub fn ping(&mut self, within: Duration) -> bool {
        let inner = &self.inner;
        self.ping.answered(within, |send| {
            *inner.ping.lock().unwrap_or_else(PoisonError::into_inner) = Some(send);
            // Wakes it if it sleeps. Never waits for the state lock: a dispatcher wedged
            // while holding it must not wedge the watchdog too (it then answers at its
            // next round, within the 250 ms it sleeps at most).
            match inner.state.try_lock() {
                Ok(mut state) => state.poked = true,
                Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner().poked = true,
                Err(TryLockError::WouldBlock) => {}
            }
            inner.wake.notify_all();
            true
        })
    }
}

impl Inner {
    /// Answers the watchdog's question, if one waits (the dispatcher, once a round).
    pub(super) fn answer_ping(&self) {
        let ping = self
            .ping
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(ping) = ping {
            let _ = ping.try_send(());
        }
    }

    /// Drops the question waiting, if any (the dispatcher stopped: it will not answer).
    pub(super) fn refuse_pings(&self) {
        drop(
            self.ping
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use crate::registry::{Host, HostOptions};
    use crate::services::tasks::runner::lock;
    use crate::services::tasks::{SqliteStore, TaskSettings, Tasks};

    /// A dispatcher held at the top of its loop (here by its state lock, as a wedged loop
    /// would hold it) answers no ping until it is let go; the probe keeps one ping in
    /// flight meanwhile, and a stopped dispatcher answers none.
    #[test]
    fn a_wedged_dispatcher_does_not_answer() {
        let host = Host::new(HostOptions::default()).unwrap();
        let store = SqliteStore::open_in_memory().unwrap();
        let tasks =
            Tasks::start(host, Arc::new(store), TaskSettings::default(), Vec::new()).unwrap();
        let mut probe = tasks.probe();
        assert!(probe.ping(Duration::from_secs(10)));

        let held = lock(&tasks.inner.state);
        assert!(!probe.ping(Duration::from_millis(50)));
        assert!(!probe.ping(Duration::from_millis(50)));
        drop(held);
        assert!(probe.ping(Duration::from_secs(10)));
        assert!(probe.ping(Duration::from_secs(10)));

        assert!(tasks.stop(Duration::from_secs(10)));
        assert!(!probe.ping(Duration::from_millis(300)));
    }
}
