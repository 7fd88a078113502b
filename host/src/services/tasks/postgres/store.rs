//! [`PgStore`]: the fleet's task store, and the helpers its methods share: a pooled
//! connection per method, errors in one line naming the database, the claim tokens of the
//! attempts this host runs.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use super::super::store::StoreError;
use super::super::task::TaskId;
use super::finisher::{self, Finishing};
use crate::services::postgres::{Database, PgError};

/// What wakes this host's dispatcher when another host queues a task.
pub(super) type Waker = Arc<dyn Fn() + Send + Sync>;

/// The fleet's task store on PostgreSQL. See the module's documentation.
pub struct PgStore {
    pub(super) db: Database,
    /// This host's id in the fleet (the hosts table, `host_id` of its claims).
    pub(super) host_id: String,
    pub(super) lease_ms: u64,
    /// The claim token of each attempt this host runs, by task: every write of the
    /// attempt carries it. At most `max_running` entries (one per running attempt).
    pub(super) tokens: Mutex<HashMap<TaskId, i64>>,
    /// Finishes without follow-ups, written in batches.
    pub(super) finisher: tokio::sync::mpsc::Sender<Finishing>,
    /// When expired leases were last looked for (database clock, ms).
    pub(super) last_takeover: AtomicU64,
    pub(super) waker: Arc<Mutex<Option<Waker>>>,
    /// A notification arrived since the last claim that found nothing.
    pub(super) notified: Arc<AtomicBool>,
    /// When a claim last found nothing (0: the last one found tasks).
    pub(super) last_empty: AtomicU64,
    /// `poll_interval_ms`: an idle host without notifications claims this often.
    pub(super) poll_ms: u64,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("db", &self.db)
            .field("host_id", &self.host_id)
            .field("lease_ms", &self.lease_ms)
            .finish_non_exhaustive()
    }
}

/// Finishes waiting for the finisher at most (a finish past it waits for room).
pub(super) const FINISH_QUEUE: usize = 4096;

impl PgStore {
    /// The task store of host `host_id` on `db`, whose claims hold `lease_ms`. Connects to
    /// nothing yet (the database may be down); starts the finisher and the listener.
    /// An idle host without notifications looks for due tasks every `poll_ms`.
    pub fn new(db: Database, host_id: &str, lease_ms: u64, poll_ms: u64) -> PgStore {
        let (send, receive) = tokio::sync::mpsc::channel(FINISH_QUEUE);
        db.handle().spawn(finisher::run(db.clone(), receive));
        let waker: Arc<Mutex<Option<Waker>>> = Arc::new(Mutex::new(None));
        let notified = Arc::new(AtomicBool::new(true));
        db.handle().spawn(super::listen::run(
            db.clone(),
            waker.clone(),
            notified.clone(),
        ));
        PgStore {
            db,
            host_id: host_id.to_owned(),
            lease_ms: lease_ms.max(1),
            tokens: Mutex::new(HashMap::new()),
            finisher: send,
            last_takeover: AtomicU64::new(0),
            waker,
            notified,
            last_empty: AtomicU64::new(0),
            poll_ms: poll_ms.max(1),
        }
    }

    /// This host's id.
    pub fn host_id(&self) -> &str {
        &self.host_id
    }

    /// Runs `future` on the database's runtime; its error as a [`StoreError`].
    pub(super) fn block<T>(
        &self,
        future: impl Future<Output = Result<T, PgError>>,
    ) -> Result<T, StoreError> {
        self.db
            .block_on(future)
            .map_err(|err| StoreError::Failed(format!("tasks database {}: {err}", self.db.url())))
    }

    /// `err` as a [`StoreError`] naming the database.
    pub(super) fn error(&self, err: PgError) -> StoreError {
        StoreError::Failed(format!("tasks database {}: {err}", self.db.url()))
    }

    /// The write `write` of task `id`'s attempt was refused: this host lost its lease.
    pub(super) fn lease_lost(&self, id: TaskId, write: &'static str) -> StoreError {
        StoreError::LeaseLost {
            task: id,
            host: self.host_id.clone(),
            write,
        }
    }

    pub(super) fn token(&self, id: TaskId) -> Option<i64> {
        self.tokens
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&id)
            .copied()
    }

    pub(super) fn forget(&self, id: TaskId) {
        self.tokens
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
    }

    pub(super) fn set_waker_fn(&self, waker: Waker) {
        *self.waker.lock().unwrap_or_else(PoisonError::into_inner) = Some(waker);
    }

    /// Whether a claim at `now_ms` can be skipped: no notification since the last claim
    /// found nothing, less than `poll_ms` ago (a lost notification costs one poll).
    pub(super) fn quiet(&self, now_ms: u64) -> bool {
        let notified = self.notified.swap(false, Ordering::AcqRel);
        let last = self.last_empty.load(Ordering::Relaxed);
        !notified && last != 0 && now_ms.saturating_sub(last) < self.poll_ms
    }

    /// Whether expired leases are due to be looked for again (every third of a lease),
    /// noting that they are.
    pub(super) fn takeover_due(&self, now_ms: u64) -> bool {
        let every = (self.lease_ms / 3).max(1);
        let last = self.last_takeover.load(Ordering::Relaxed);
        now_ms.saturating_sub(last) >= every
            && self
                .last_takeover
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

/// A statement's error as a [`PgError`], naming `what`.
pub(super) fn pg(what: &str) -> impl Fn(tokio_postgres::Error) -> PgError + '_ {
    move |err| PgError::from_pg(what, &err)
}
