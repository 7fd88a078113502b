//! A task's events as Server-Sent Events (`GET /v1/tasks/{id}/events`): its status changes
//! and log lines, ending when it ends, resumable with `Last-Event-ID`.
//!
//! Derived from the store: one poller per watched task (however many streams watch it)
//! reads its record every [`POLL`] and appends what changed to the task's *feed*, a bounded
//! in-memory log (`max_events_per_task`) that every stream of the task reads from. Feeds
//! outlive their streams, so a client that reconnects resumes where it was; at most
//! `max_event_feeds` are kept (the least recently watched go first). An event's id is
//! `FEED-SEQ`: a `Last-Event-ID` from a feed that is gone replays the new feed from its
//! start (a fresh snapshot of the task), never skipping what the client has not seen.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::json;
use tokio::sync::watch;

use crate::services::tasks::{TaskId, TaskRecord, TaskStatus, Tasks};

/// How often a watched task's record is read.
pub const POLL: Duration = Duration::from_millis(20);

/// One event of a task.
#[derive(Debug, Clone)]
pub(super) struct TaskEvent {
    pub(super) seq: u64,
    /// `status` or `log`.
    pub(super) name: &'static str,
    pub(super) data: String,
}

#[derive(Debug, Default)]
struct Log {
    events: VecDeque<TaskEvent>,
    next_seq: u64,
    /// What the last read of the record showed.
    seen: Option<(TaskStatus, u32, usize)>,
    ended: bool,
}

/// One task's events.
#[derive(Debug)]
pub(super) struct Feed {
    pub(super) epoch: u64,
    id: TaskId,
    log: Mutex<Log>,
    /// The newest sequence number, for streams to wait on.
    newest: watch::Sender<u64>,
    polling: AtomicBool,
    last_used: AtomicU64,
    max_events: usize,
}

/// The feeds of the tasks being (or recently) watched.
#[derive(Debug)]
pub(super) struct Feeds {
    feeds: Mutex<HashMap<TaskId, Arc<Feed>>>,
    next_epoch: AtomicU64,
    clock: AtomicU64,
    max_feeds: usize,
    max_events: usize,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Feeds {
    pub(super) fn new(max_feeds: usize, max_events: usize) -> Feeds {
        Feeds {
            feeds: Mutex::new(HashMap::new()),
            // Epochs differ across host restarts too, so an old id never matches a new feed.
            next_epoch: AtomicU64::new(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_secs()),
            ),
            clock: AtomicU64::new(0),
            max_feeds: max_feeds.max(1),
            max_events: max_events.max(1),
        }
    }

    /// The feed of task `id`, its poller started on `tasks` if none runs.
    pub(super) fn watch(&self, id: TaskId) -> Arc<Feed> {
        let now = self.clock.fetch_add(1, Ordering::Relaxed);
        let feed = {
            let mut feeds = lock(&self.feeds);
            if !feeds.contains_key(&id) && feeds.len() >= self.max_feeds {
                // The least recently watched feed that no stream reads goes.
                let idle = feeds
                    .values()
                    .filter(|f| f.newest.receiver_count() == 0)
                    .min_by_key(|f| f.last_used.load(Ordering::Relaxed))
                    .map(|f| f.id);
                if let Some(old) = idle {
                    feeds.remove(&old);
                } else {
                    tracing::warn!(
                        "http: {} task event feeds are watched (http.max_event_feeds): task {id}'s \
                         events are not kept for resuming",
                        self.max_feeds
                    );
                }
            }
            let feed = feeds.entry(id).or_insert_with(|| {
                Arc::new(Feed {
                    epoch: self.next_epoch.fetch_add(1, Ordering::Relaxed),
                    id,
                    log: Mutex::new(Log::default()),
                    newest: watch::channel(0).0,
                    polling: AtomicBool::new(false),
                    last_used: AtomicU64::new(now),
                    max_events: self.max_events,
                })
            });
            feed.last_used.store(now, Ordering::Relaxed);
            let feed = feed.clone();
            if feeds.len() > self.max_feeds {
                feeds.remove(&id);
            }
            feed
        };
        feed
    }
}

impl Feed {
    /// A receiver that changes when an event is added.
    pub(super) fn subscribe(self: &Arc<Feed>, tasks: &Tasks) -> watch::Receiver<u64> {
        let receiver = self.newest.subscribe();
        if !self.polling.swap(true, Ordering::SeqCst) {
            tokio::spawn(poll(self.clone(), tasks.clone()));
        }
        receiver
    }

    /// The events after `seq` (all kept ones when `seq` is older than the oldest), and
    /// whether the task has ended with them.
    pub(super) fn after(&self, seq: u64) -> (Vec<TaskEvent>, bool) {
        let log = lock(&self.log);
        let events = log.events.iter().filter(|e| e.seq > seq).cloned().collect();
        (events, log.ended)
    }

    /// Appends what changed between what was seen and `record`.
    fn update(&self, record: &TaskRecord) {
        let mut log = lock(&self.log);
        if log.ended {
            return;
        }
        let (logs_sent, changed) = match log.seen {
            Some((status, attempts, sent)) => {
                // A retry cleared the logs: they are sent again from the start.
                let sent = if record.logs.len() < sent { 0 } else { sent };
                (sent, status != record.status || attempts != record.attempts)
            }
            None => (0, true),
        };
        for line in record.logs.iter().skip(logs_sent) {
            let data = serde_json::to_string(line).unwrap_or_default();
            push(&mut log, self.max_events, "log", data);
        }
        if changed {
            let data = json!({
                "id": record.id,
                "status": record.status,
                "attempts": record.attempts,
                "error": record.error,
                "generation": record.generation,
            })
            .to_string();
            push(&mut log, self.max_events, "status", data);
        }
        log.seen = Some((record.status, record.attempts, record.logs.len()));
        log.ended = !record.status.is_active();
        let newest = log.next_seq;
        drop(log);
        self.newest.send_replace(newest);
    }

    fn vanished(&self) {
        let mut log = lock(&self.log);
        let data = json!({"id": self.id, "status": "deleted"}).to_string();
        push(&mut log, self.max_events, "status", data);
        log.ended = true;
        let newest = log.next_seq;
        drop(log);
        self.newest.send_replace(newest);
    }
}

fn push(log: &mut Log, max: usize, name: &'static str, data: String) {
    log.next_seq += 1;
    if log.events.len() >= max {
        log.events.pop_front();
    }
    log.events.push_back(TaskEvent {
        seq: log.next_seq,
        name,
        data,
    });
}

/// Reads the task's record while a stream watches it and it has not ended.
async fn poll(feed: Arc<Feed>, tasks: Tasks) {
    loop {
        let reading = tasks.clone();
        let id = feed.id;
        match tokio::task::spawn_blocking(move || reading.get(id)).await {
            Ok(Ok(Some(record))) => feed.update(&record),
            Ok(Ok(None)) => feed.vanished(),
            Ok(Err(err)) => tracing::debug!("http: task {id}'s events: {}", err.message),
            Err(_) => {}
        }
        let ended = lock(&feed.log).ended;
        if ended || feed.newest.receiver_count() == 0 {
            feed.polling.store(false, Ordering::SeqCst);
            // A stream may have come in between the check and the flag.
            if ended
                || feed.newest.receiver_count() == 0
                || feed.polling.swap(true, Ordering::SeqCst)
            {
                return;
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

/// `Last-Event-ID` (`FEED-SEQ`) as the sequence number to resume after in `feed`: 0 when
/// absent, malformed or from another feed.
pub(super) fn resume_after(last_event_id: Option<&str>, feed: &Feed) -> u64 {
    last_event_id
        .and_then(|id| id.trim().split_once('-'))
        .filter(|(epoch, _)| epoch.parse() == Ok(feed.epoch))
        .and_then(|(_, seq)| seq.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(status: TaskStatus, attempts: u32, logs: &[&str]) -> TaskRecord {
        let json = json!({
            "id": 7, "plugin": "p", "callback": "c", "input": "null", "key": "k",
            "priority": 0, "status": status, "attempts": attempts, "max_attempts": 3,
            "retry_delays_ms": [], "not_before_unix_ms": 0, "created_unix_ms": 0,
            "started_unix_ms": null, "finished_unix_ms": null, "result": null, "error": null,
            "logs": logs.iter().map(|m| json!({"level": "info", "message": m, "unix_ms": 1}))
                .collect::<Vec<_>>(),
            "parent": null, "depth": 0, "schedule": null, "generation": null,
        });
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn a_feed_keeps_what_changed_bounded_and_resumes_only_its_own_ids() {
        let feeds = Feeds::new(2, 3);
        let feed = feeds.watch(7);
        feed.update(&record(TaskStatus::Queued, 0, &[]));
        feed.update(&record(TaskStatus::Queued, 0, &[]));
        feed.update(&record(TaskStatus::Running, 1, &[]));
        let (events, ended) = feed.after(0);
        let names: Vec<_> = events.iter().map(|e| (e.seq, e.name)).collect();
        assert_eq!(
            names,
            [(1, "status"), (2, "status")],
            "nothing new, no event"
        );
        assert!(!ended);
        feed.update(&record(TaskStatus::Success, 1, &["a", "b"]));
        let (events, ended) = feed.after(2);
        let names: Vec<_> = events.iter().map(|e| (e.seq, e.name)).collect();
        assert_eq!(names, [(3, "log"), (4, "log"), (5, "status")]);
        assert!(ended);
        let (kept, _) = feed.after(0);
        assert_eq!(kept.len(), 3, "at most max_events_per_task kept");

        let id = format!("{}-2", feed.epoch);
        assert_eq!(resume_after(Some(&id), &feed), 2);
        assert_eq!(resume_after(Some("1-2"), &feed), 0, "another feed's id");
        assert_eq!(resume_after(Some("garbage"), &feed), 0);
        assert!(
            Arc::ptr_eq(&feeds.watch(7), &feed),
            "the same feed while kept"
        );
        feeds.watch(8);
        feeds.watch(9);
        assert!(lock(&feeds.feeds).len() <= 2, "at most max_event_feeds");
    }
}
