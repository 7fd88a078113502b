//! A task's events as Server-Sent Events (`GET /v1/tasks/{id}/events`): its status changes
//! and log lines, ending when it ends, resumable with `Last-Event-ID`.
//!
//! Derived from the store and from the lines of the attempt running on this host: one
//! poller per watched task (however many streams watch it) reads, every [`POLL`], the lines
//! its running attempt has logged so far (`Tasks::live_logs`: plugins of ABI 1.5 send them
//! as they write them), then its record, and appends what is new to the task's *feed*, a bounded
//! in-memory log (`max_events_per_task`) that every stream of the task reads from. Feeds
//! outlive their streams, so a client that reconnects resumes where it was; at most
//! `max_event_feeds` are kept (the least recently watched go first). An event's id is
//! `FEED-SEQ`: a `Last-Event-ID` from a feed that is gone replays the new feed from its
//! start (a fresh snapshot of the task), never skipping what the client has not seen.
//!
//! A line is sent once: a line of the record's logs is sent unless the feed showed it
//! already, live while its attempt ran or in an earlier read of the record (the feed keeps a
//! fingerprint of each line the record held at its last read and of each live line of the
//! attempt running, bounded like those lines). The events ids stay one sequence whatever
//! the source of a line, so `Last-Event-ID` resumes as before.

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::json;
use tokio::sync::watch;

use plugin_api::LogRecord;

use crate::services::tasks::{LiveLogs, TaskId, TaskRecord, TaskStatus, Tasks};
use crate::types::call::CallError;

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
    /// The status and attempts the last read of the record showed.
    seen: Option<(TaskStatus, u32)>,
    /// The fingerprints of the lines the record held at the last read: shown already.
    stored: Vec<u64>,
    /// The live lines sent of the attempt running: which attempt, and how many.
    live: Option<(u32, usize)>,
    /// Their fingerprints: shown already, and not in the record's logs yet.
    live_prints: Vec<u64>,
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
            // Epochs differ across host restarts too (the start's second, then a count of
            // up to 2^20 feeds), so an old id never matches a new feed.
            next_epoch: AtomicU64::new(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_secs())
                    << 20,
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
    /// Whether its poller runs (it keeps the feed up to date).
    pub(super) fn is_polling(&self) -> bool {
        self.polling.load(Ordering::SeqCst)
    }

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

    /// Where the live lines last sent end, to read only those after them.
    pub(super) fn live_cursor(&self) -> Option<(u32, usize)> {
        lock(&self.log).live
    }

    /// Appends what is new in `live`, the lines of the attempt running, and in `record`, read
    /// after them (see [`read`]), since what was seen.
    pub(super) fn update(&self, live: Option<&LiveLogs>, record: &TaskRecord) {
        let mut log = lock(&self.log);
        if log.ended && !record.status.is_active() {
            return;
        }
        let changed = log.seen.is_none_or(|(status, attempts)| {
            status != record.status || attempts != record.attempts
        });
        // A line of the record is sent unless one shown already matches it.
        let mut unmatched: HashMap<u64, usize> = HashMap::new();
        for &print in log.stored.iter().chain(&log.live_prints) {
            *unmatched.entry(print).or_default() += 1;
        }
        let mut stored = Vec::with_capacity(record.logs.len());
        for line in &record.logs {
            let print = fingerprint(line);
            stored.push(print);
            match unmatched.get_mut(&print) {
                Some(n) if *n > 0 => *n -= 1,
                _ => push_line(&mut log, self.max_events, line),
            }
        }
        log.stored = stored;
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
        // Live lines count while the record shows their attempt running: read after them,
        // it holds none of them yet. Once it does not, its logs have them.
        let running =
            |attempt: u32| record.status == TaskStatus::Running && attempt == record.attempts;
        if !log.live.is_some_and(|(attempt, _)| running(attempt)) {
            log.live = None;
            log.live_prints.clear();
        }
        if let Some(live) = live.filter(|l| running(l.attempt)) {
            let sent = log.live.map_or(0, |(_, sent)| sent);
            for (at, line) in (live.first..).zip(&live.lines) {
                if at >= sent {
                    log.live_prints.push(fingerprint(line));
                    push_line(&mut log, self.max_events, line);
                }
            }
            log.live = Some((live.attempt, sent.max(live.first + live.lines.len())));
        }
        log.seen = Some((record.status, record.attempts));
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

/// What tells two log lines apart.
fn fingerprint(line: &LogRecord) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (line.level, &line.message, line.unix_ms).hash(&mut hasher);
    hasher.finish()
}

fn push_line(log: &mut Log, max: usize, line: &LogRecord) {
    let data = serde_json::to_string(line).unwrap_or_default();
    push(log, max, "log", data);
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

/// Task `id`'s record and the live lines of its attempt running on this host (after
/// `cursor`), read in that order: the lines first, so that a record that shows their
/// attempt running holds none of them yet.
pub(super) fn read(
    tasks: &Tasks,
    id: TaskId,
    cursor: Option<(u32, usize)>,
) -> Result<Option<(TaskRecord, Option<LiveLogs>)>, CallError> {
    let live = tasks.live_logs(id, cursor);
    Ok(tasks.get(id)?.map(|record| (record, live)))
}

/// Reads the task's record while a stream watches it and it has not ended.
async fn poll(feed: Arc<Feed>, tasks: Tasks) {
    loop {
        let reading = tasks.clone();
        let id = feed.id;
        let cursor = feed.live_cursor();
        match tokio::task::spawn_blocking(move || read(&reading, id, cursor)).await {
            Ok(Ok(Some((record, live)))) => feed.update(live.as_ref(), &record),
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
        feed.update(None, &record(TaskStatus::Queued, 0, &[]));
        feed.update(None, &record(TaskStatus::Queued, 0, &[]));
        feed.update(None, &record(TaskStatus::Running, 1, &[]));
        let (events, ended) = feed.after(0);
        let names: Vec<_> = events.iter().map(|e| (e.seq, e.name)).collect();
        assert_eq!(
            names,
            [(1, "status"), (2, "status")],
            "nothing new, no event"
        );
        assert!(!ended);
        feed.update(None, &record(TaskStatus::Success, 1, &["a", "b"]));
        let (events, ended) = feed.after(2);
        let names: Vec<_> = events.iter().map(|e| (e.seq, e.name)).collect();
        assert_eq!(names, [(3, "log"), (4, "log"), (5, "status")]);
        assert!(ended);
        let (kept, _) = feed.after(0);
        assert_eq!(kept.len(), 3, "at most max_events_per_task kept");
        feed.update(None, &record(TaskStatus::Success, 1, &["a", "b"]));
        assert_eq!(
            feed.after(5).0.len(),
            0,
            "an ended task's feed stays as it was"
        );
        feed.update(None, &record(TaskStatus::Queued, 0, &[]));
        let (events, ended) = feed.after(5);
        assert_eq!((events.len(), ended), (1, false), "retried: active again");

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

    fn live(attempt: u32, first: usize, lines: &[(&str, u64)]) -> LiveLogs {
        LiveLogs {
            attempt,
            first,
            lines: lines
                .iter()
                .map(|(m, ms)| LogRecord {
                    level: plugin_api::Level::Info,
                    message: (*m).to_owned(),
                    unix_ms: *ms,
                })
                .collect(),
        }
    }

    fn with_times(mut record: TaskRecord, times: &[u64]) -> TaskRecord {
        for (line, ms) in record.logs.iter_mut().zip(times) {
            line.unix_ms = *ms;
        }
        record
    }

    fn events(feed: &Feed, after: u64) -> Vec<(&'static str, String)> {
        feed.after(after)
            .0
            .into_iter()
            .map(|e| {
                let data: serde_json::Value = serde_json::from_str(&e.data).unwrap();
                let what = match e.name {
                    "log" => data["message"].as_str().unwrap_or_default().to_owned(),
                    _ => data["status"].as_str().unwrap_or_default().to_owned(),
                };
                (e.name, what)
            })
            .collect()
    }

    #[test]
    fn live_lines_come_while_their_attempt_runs_and_each_line_is_sent_once() {
        let feeds = Feeds::new(2, 100);
        let feed = feeds.watch(7);
        let running = |logs: &[&str]| record(TaskStatus::Running, 1, logs);
        feed.update(Some(&live(1, 0, &[("one", 10)])), &running(&[]));
        assert_eq!(
            events(&feed, 0),
            [("status", "running".into()), ("log", "one".into())]
        );
        assert_eq!(feed.live_cursor(), Some((1, 1)));
        // The next read brings only what is new; a read without live lines loses none.
        feed.update(Some(&live(1, 1, &[("two", 20)])), &running(&[]));
        feed.update(None, &running(&[]));
        feed.update(
            Some(&live(1, 0, &[("one", 10), ("two", 20)])),
            &running(&[]),
        );
        assert_eq!(events(&feed, 2), [("log", "two".into())]);
        // Lines read live before a record that shows the attempt ended are not used: its
        // logs hold them, and the ones shown already are not sent again.
        let done = with_times(
            record(TaskStatus::Failed, 1, &["one", "two", "three"]),
            &[10, 20, 30],
        );
        feed.update(Some(&live(1, 2, &[("three", 30)])), &done);
        assert_eq!(
            events(&feed, 3),
            [("log", "three".into()), ("status", "failed".into())]
        );
        assert_eq!(feed.live_cursor(), None);

        // Retried: the next attempt's lines, live then stored, each once; the earlier
        // attempt's lines, still in the record while it runs, are not sent again.
        let feed = feeds.watch(8);
        let first = with_times(record(TaskStatus::Queued, 1, &["a"]), &[1]);
        feed.update(None, &first);
        let again = with_times(record(TaskStatus::Running, 2, &["a"]), &[1]);
        feed.update(Some(&live(1, 0, &[("stale", 2)])), &again);
        feed.update(Some(&live(2, 0, &[("b", 5)])), &again);
        let ended = with_times(record(TaskStatus::Success, 2, &["b", "c"]), &[5, 6]);
        feed.update(None, &ended);
        assert_eq!(
            events(&feed, 0),
            [
                ("log", "a".into()),
                ("status", "queued".into()),
                ("status", "running".into()),
                ("log", "b".into()),
                ("log", "c".into()),
                ("status", "success".into()),
            ]
        );
    }
}
