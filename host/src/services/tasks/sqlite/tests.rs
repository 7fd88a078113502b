//! The SQLite store's tests: every method, the schema's promises, and the indexes each
//! hot statement uses.

use std::sync::{mpsc, Arc};
use std::time::Duration;

use plugin_api::{Level, LogRecord};
use rusqlite::{Connection, ErrorCode};

use super::super::store::{Recovered, TaskStore};
use super::super::task::{Finish, Insert, Inserted, TaskFilter, TaskId, TaskRecord, TaskStatus};
use super::claim::{
    DUE_OF_PRIORITY, FAIL_QUEUED, FIRST_PLUGIN, NEXT_PLUGIN, NEXT_PRIORITY, PLUGIN_DUE, RECOVER,
    TOP_PRIORITY,
};
use super::insert::{ACTIVE_WITH_KEY, LAST_SUCCESS};
use super::prune::{PRUNE_BEFORE, PRUNE_BEYOND};
use super::query::{ACTIVE_OF_PLUGIN, CHILDREN};
use super::schema::SCHEMA_VERSION;
use super::SqliteStore;

fn store() -> SqliteStore {
    SqliteStore::open_in_memory().unwrap()
}

fn task(plugin: &str, key: &str) -> Insert {
    Insert {
        plugin: plugin.to_owned(),
        callback: "execute".to_owned(),
        input: "{}".to_owned(),
        key: key.to_owned(),
        priority: 0,
        max_attempts: 3,
        retry_delays_ms: vec![100, 1_000],
        not_before_unix_ms: 1_000,
        age_ms: None,
        parent: None,
        depth: 0,
        schedule: None,
        created_unix_ms: 1_000,
        refused: None,
    }
}

fn ended(status: TaskStatus, at: u64) -> Finish {
    Finish {
        status,
        result: None,
        error: None,
        logs: Vec::new(),
        finished_unix_ms: at,
        generation: Some(1),
    }
}

fn insert(store: &SqliteStore, task: Insert) -> Inserted {
    let answers = store.insert(&[task]).unwrap();
    assert_eq!(answers.len(), 1);
    answers[0]
}

fn queue(store: &SqliteStore, task: Insert) -> TaskId {
    match insert(store, task) {
        Inserted::Queued(id) => id,
        other => panic!("not queued: {other:?}"),
    }
}

fn get(store: &SqliteStore, id: TaskId) -> TaskRecord {
    store.get(id).unwrap().unwrap()
}

/// Every plugin these tests queue tasks of.
const PLUGINS: [&str; 6] = ["p", "q", "x", "y", "z", "busy"];

fn all() -> Vec<String> {
    PLUGINS.iter().map(|s| s.to_string()).collect()
}

/// Claims for every plugin but those in `exclude`.
fn claim_ids(store: &SqliteStore, now: u64, limit: usize, exclude: &[&str]) -> Vec<TaskId> {
    let only: Vec<String> = PLUGINS
        .iter()
        .filter(|p| !exclude.contains(*p))
        .map(|s| s.to_string())
        .collect();
    let claimed = store.claim(now, limit, &only).unwrap();
    for task in &claimed {
        assert_eq!(task.status, TaskStatus::Running);
        assert_eq!(task.started_unix_ms, Some(now));
    }
    claimed.iter().map(|t| t.id).collect()
}

/// Queues a task of key `key`, runs it and ends it in `status` at `at`.
fn run(store: &SqliteStore, key: &str, status: TaskStatus, at: u64) -> TaskId {
    let id = queue(store, task("p", key));
    assert_eq!(claim_ids(store, at, 1, &[]), vec![id]);
    store.finish(id, &ended(status, at), &[]).unwrap();
    id
}

fn log(message: &str) -> LogRecord {
    LogRecord {
        level: Level::Warn,
        message: message.to_owned(),
        unix_ms: 1_234,
    }
}

#[test]
fn a_task_keeps_every_field() {
    let store = store();
    let parent = queue(&store, task("p", "parent"));
    let mut t = task("q", "k");
    t.callback = "work".to_owned();
    t.input = r#"{"n":1}"#.to_owned();
    t.priority = -3;
    t.max_attempts = 5;
    t.retry_delays_ms = vec![1, 2, 3];
    t.not_before_unix_ms = 1_500;
    t.created_unix_ms = 1_100;
    t.parent = Some(parent);
    t.depth = 2;
    t.schedule = Some("nightly".to_owned());
    let id = queue(&store, t);

    let queued = get(&store, id);
    let expected = TaskRecord {
        id,
        plugin: "q".to_owned(),
        callback: "work".to_owned(),
        input: r#"{"n":1}"#.to_owned(),
        key: "k".to_owned(),
        priority: -3,
        status: TaskStatus::Queued,
        attempts: 0,
        max_attempts: 5,
        retry_delays_ms: vec![1, 2, 3],
        not_before_unix_ms: 1_500,
        created_unix_ms: 1_100,
        started_unix_ms: None,
        finished_unix_ms: None,
        result: None,
        error: None,
        logs: Vec::new(),
        parent: Some(parent),
        depth: 2,
        schedule: Some("nightly".to_owned()),
        generation: None,
        host: None,
    };
    assert_eq!(queued, expected);

    let claimed = store.claim(2_000, 10, &["q".to_owned()]).unwrap();
    assert_eq!(
        claimed,
        vec![TaskRecord {
            status: TaskStatus::Running,
            attempts: 1,
            started_unix_ms: Some(2_000),
            ..expected.clone()
        }]
    );

    let finish = Finish {
        status: TaskStatus::Success,
        result: Some(r#"{"ok":true}"#.to_owned()),
        error: Some("a warning".to_owned()),
        logs: vec![log("one"), log("two\nlines")],
        finished_unix_ms: 2_500,
        generation: Some(7),
    };
    store.finish(id, &finish, &[]).unwrap();
    assert_eq!(
        get(&store, id),
        TaskRecord {
            status: TaskStatus::Success,
            attempts: 1,
            started_unix_ms: Some(2_000),
            finished_unix_ms: Some(2_500),
            result: finish.result.clone(),
            error: finish.error.clone(),
            logs: finish.logs.clone(),
            generation: Some(7),
            ..expected
        }
    );
    assert_eq!(store.get(id + 100).unwrap(), None);
}

#[test]
fn an_active_key_is_not_queued_twice() {
    let store = store();
    let a = queue(&store, task("p", "k"));
    assert_eq!(insert(&store, task("p", "k")), Inserted::Duplicate(a));
    // In one batch, the second sees the first.
    let batch = store.insert(&[task("p", "k2"), task("q", "k2")]).unwrap();
    let b = batch[0].id();
    assert_eq!(batch, vec![Inserted::Queued(b), Inserted::Duplicate(b)]);

    // Running is active too.
    assert_eq!(claim_ids(&store, 1_000, 1, &[]), vec![a]);
    assert_eq!(insert(&store, task("p", "k")), Inserted::Duplicate(a));

    // Once it has ended, the key may be queued again.
    store
        .finish(a, &ended(TaskStatus::Success, 2_000), &[])
        .unwrap();
    let c = queue(&store, task("p", "k"));
    assert!(c > b);
    assert_eq!(store.active("p").unwrap(), 2);
}

#[test]
fn the_unique_index_holds_one_active_task_per_key() {
    let store = store();
    queue(&store, task("p", "k"));
    let conn = store.lock();
    let twice = conn.execute(
        "INSERT INTO tasks (plugin, callback, input, key, priority, status, attempts, \
         max_attempts, retry_delays_ms, not_before, created, logs, depth) \
         VALUES ('p', 'execute', '{}', 'k', 0, 'running', 0, 1, '[]', 0, 0, '[]', 0)",
        [],
    );
    match twice {
        Err(rusqlite::Error::SqliteFailure(e, _)) => {
            assert_eq!(e.code, ErrorCode::ConstraintViolation)
        }
        other => panic!("a second active task with key k: {other:?}"),
    }
    // Ended tasks may share it.
    for _ in 0..2 {
        conn.execute(
            "INSERT INTO tasks (plugin, callback, input, key, priority, status, attempts, \
             max_attempts, retry_delays_ms, not_before, created, logs, depth) \
             VALUES ('p', 'execute', '{}', 'k', 0, 'failed', 1, 1, '[]', 0, 0, '[]', 0)",
            [],
        )
        .unwrap();
    }
}

#[test]
fn a_key_that_succeeded_within_its_age_is_skipped() {
    let store = store();
    let done = run(&store, "k", TaskStatus::Success, 5_000);
    run(&store, "k", TaskStatus::Failed, 5_800);

    let mut t = task("p", "k");
    t.created_unix_ms = 6_000;
    t.age_ms = Some(1_000);
    let skipped = match insert(&store, t.clone()) {
        Inserted::Skipped(id) => id,
        other => panic!("not skipped: {other:?}"),
    };
    let record = get(&store, skipped);
    assert_eq!(record.status, TaskStatus::Skipped);
    assert_eq!(record.finished_unix_ms, Some(6_000));
    assert_eq!(record.attempts, 0);
    assert_eq!(
        record.error.as_deref(),
        Some(
            format!("skipped: task {done} with key k succeeded 1000 ms ago (age 1000 ms)").as_str()
        )
    );
    assert_eq!(store.active("p").unwrap(), 0);

    // Just outside its age (a failure does not count): queued.
    t.age_ms = Some(999);
    let queued = queue(&store, t.clone());
    // And while that one is active, a duplicate whatever the age.
    t.age_ms = Some(10_000);
    assert_eq!(insert(&store, t.clone()), Inserted::Duplicate(queued));
    store.cancel(queued, 6_000).unwrap();
    // Without an age, a success does not matter.
    t.age_ms = None;
    queue(&store, t);
}

#[test]
fn a_refused_task_is_recorded_and_never_queued() {
    let store = store();
    let active = queue(&store, task("p", "k"));
    let mut t = task("p", "k");
    t.refused = Some("over the follow-up depth limit (8)".to_owned());
    t.created_unix_ms = 1_200;
    let refused = match insert(&store, t) {
        Inserted::Refused(id) => id,
        other => panic!("not refused: {other:?}"),
    };
    assert_ne!(refused, active);
    let record = get(&store, refused);
    assert_eq!(record.status, TaskStatus::Refused);
    assert_eq!(
        record.error.as_deref(),
        Some("over the follow-up depth limit (8)")
    );
    assert_eq!(record.finished_unix_ms, Some(1_200));
    assert_eq!(store.active("p").unwrap(), 1);
    assert_eq!(claim_ids(&store, 10_000, 10, &[]), vec![active]);
}

#[test]
fn claim_takes_the_highest_priority_then_the_longest_due_then_the_oldest() {
    let store = store();
    let mut ids = Vec::new();
    for (key, priority, not_before) in [
        ("a", 0, 100),
        ("b", 5, 300),
        ("c", 5, 200),
        ("d", 0, 100),
        ("e", 5, 5_000),
        ("f", 9, 5_000),
        ("g", -1, 0),
    ] {
        let mut t = task("p", key);
        t.priority = priority;
        t.not_before_unix_ms = not_before;
        ids.push(queue(&store, t));
    }
    let [a, b, c, d, e, f, g] = ids[..] else {
        unreachable!()
    };
    assert_eq!(claim_ids(&store, 1_000, 3, &[]), vec![c, b, a]);
    assert_eq!(claim_ids(&store, 1_000, 10, &[]), vec![d, g]);
    assert_eq!(claim_ids(&store, 1_000, 10, &[]), Vec::<TaskId>::new());
    // Due exactly at its time.
    assert_eq!(claim_ids(&store, 5_000, 10, &[]), vec![f, e]);
    for id in [a, b, c, d, e, f, g] {
        let record = get(&store, id);
        assert_eq!(record.status, TaskStatus::Running);
        assert_eq!(record.attempts, 1);
    }
}

#[test]
fn claim_leaves_out_excluded_plugins_and_respects_its_limit() {
    let store = store();
    let mut t = task("busy", "1");
    t.priority = 10;
    let busy = queue(&store, t);
    let x1 = queue(&store, task("x", "2"));
    let y1 = queue(&store, task("y", "3"));
    let x2 = queue(&store, task("x", "4"));

    assert_eq!(claim_ids(&store, 1_000, 0, &[]), Vec::<TaskId>::new());
    assert_eq!(claim_ids(&store, 1_000, 2, &["busy"]), vec![x1, y1]);
    assert_eq!(
        claim_ids(&store, 1_000, 5, &["busy", "x"]),
        Vec::<TaskId>::new()
    );
    assert_eq!(claim_ids(&store, 1_000, 5, &["y"]), vec![busy, x2]);
}

#[test]
fn next_due_is_the_earliest_queued_task_not_left_out() {
    let store = store();
    assert_eq!(store.next_due(&all()).unwrap(), None);
    let mut t = task("x", "1");
    t.not_before_unix_ms = 300;
    queue(&store, t);
    let mut t = task("y", "2");
    t.not_before_unix_ms = 200;
    queue(&store, t);
    let mut t = task("z", "3");
    t.not_before_unix_ms = 100;
    let z = queue(&store, t);
    // Running tasks are not due.
    assert_eq!(claim_ids(&store, 150, 1, &[]), vec![z]);

    // The plugins but those left out.
    let names = |out: &[&str]| {
        PLUGINS
            .iter()
            .filter(|p| !out.contains(p))
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(store.next_due(&all()).unwrap(), Some(200));
    assert_eq!(store.next_due(&names(&["y"])).unwrap(), Some(300));
    assert_eq!(store.next_due(&names(&["x"])).unwrap(), Some(200));
    assert_eq!(store.next_due(&names(&["x", "y"])).unwrap(), None);
    assert_eq!(store.next_due(&names(&["nobody"])).unwrap(), Some(200));
}

#[test]
fn retry_later_queues_a_task_again_with_its_attempt_kept() {
    let store = store();
    let id = queue(&store, task("p", "k"));
    assert_eq!(claim_ids(&store, 1_000, 1, &[]), vec![id]);
    let failed = Finish {
        status: TaskStatus::Failed,
        result: None,
        error: Some("timed out".to_owned()),
        logs: vec![log("trying")],
        finished_unix_ms: 1_100,
        generation: Some(3),
    };
    store.retry_later(id, 2_000, &failed).unwrap();
    let record = get(&store, id);
    assert_eq!(record.status, TaskStatus::Queued);
    assert_eq!(record.not_before_unix_ms, 2_000);
    assert_eq!(record.attempts, 1);
    assert_eq!(record.started_unix_ms, Some(1_000));
    assert_eq!(record.finished_unix_ms, None);
    assert_eq!(record.error.as_deref(), Some("timed out"));
    assert_eq!(record.logs, vec![log("trying")]);
    assert_eq!(record.generation, Some(3));
    // Still active: its key is not queued twice.
    assert_eq!(insert(&store, task("p", "k")), Inserted::Duplicate(id));

    assert_eq!(store.next_due(&all()).unwrap(), Some(2_000));
    assert_eq!(claim_ids(&store, 1_999, 1, &[]), Vec::<TaskId>::new());
    let again = store.claim(2_000, 1, &all()).unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].attempts, 2);
    assert_eq!(again[0].started_unix_ms, Some(2_000));
    store
        .finish(id, &ended(TaskStatus::Success, 2_100), &[])
        .unwrap();
    assert_eq!(get(&store, id).attempts, 2);
}

#[test]
fn finish_and_retry_later_need_a_running_task() {
    let store = store();
    let id = queue(&store, task("p", "k"));
    let err = store
        .finish(id, &ended(TaskStatus::Success, 2_000), &[])
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("task database (in memory): cannot finish task {id}: it is queued, not running")
    );
    let err = store
        .retry_later(id, 3_000, &ended(TaskStatus::Failed, 2_000))
        .unwrap_err();
    assert!(
        err.to_string().contains("it is queued, not running"),
        "{err}"
    );
    let err = store
        .finish(id + 1, &ended(TaskStatus::Success, 2_000), &[])
        .unwrap_err();
    assert!(err.to_string().ends_with("no such task"), "{err}");

    assert_eq!(claim_ids(&store, 1_000, 1, &[]), vec![id]);
    let err = store
        .finish(id, &ended(TaskStatus::Queued, 2_000), &[])
        .unwrap_err();
    assert!(
        err.to_string().contains("queued is not a final status"),
        "{err}"
    );
    assert_eq!(get(&store, id).status, TaskStatus::Running);
    store
        .finish(id, &ended(TaskStatus::Bad, 2_000), &[])
        .unwrap();
    let err = store
        .finish(id, &ended(TaskStatus::Success, 2_000), &[])
        .unwrap_err();
    assert!(err.to_string().contains("it is bad, not running"), "{err}");
    assert_eq!(get(&store, id).status, TaskStatus::Bad);
}

#[test]
fn recover_queues_again_what_ran_when_the_host_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tasks.db");
    let store = SqliteStore::open(&path).unwrap();
    let running = queue(&store, task("p", "1"));
    let queued = queue(&store, task("p", "2"));
    assert_eq!(claim_ids(&store, 1_000, 1, &[]), vec![running]);
    // A crash: the connection is never closed (no checkpoint, the WAL stays).
    std::mem::forget(store);

    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(get(&store, running).status, TaskStatus::Running);
    let queued_again = Recovered {
        queued: 1,
        failed: 0,
    };
    assert_eq!(store.recover(1_500).unwrap(), queued_again);
    assert_eq!(store.recover(1_500).unwrap(), Recovered::default());
    let record = get(&store, running);
    assert_eq!(record.status, TaskStatus::Queued);
    assert_eq!(record.attempts, 1);
    assert_eq!(
        record.error.as_deref(),
        Some("the host stopped during attempt 1")
    );
    let claimed = store.claim(2_000, 10, &all()).unwrap();
    assert_eq!(
        claimed
            .iter()
            .map(|t| (t.id, t.attempts))
            .collect::<Vec<_>>(),
        vec![(running, 2), (queued, 1)]
    );
}

#[test]
fn cancel_cancels_only_a_queued_task() {
    let store = store();
    let running = queue(&store, task("p", "1"));
    let queued = queue(&store, task("p", "2"));
    assert_eq!(claim_ids(&store, 1_000, 1, &[]), vec![running]);

    assert_eq!(
        store.cancel(queued, 1_500).unwrap(),
        Some(TaskStatus::Queued)
    );
    let record = get(&store, queued);
    assert_eq!(record.status, TaskStatus::Cancelled);
    assert_eq!(record.finished_unix_ms, Some(1_500));
    // Again: nothing changes.
    assert_eq!(
        store.cancel(queued, 1_600).unwrap(),
        Some(TaskStatus::Cancelled)
    );
    assert_eq!(get(&store, queued).finished_unix_ms, Some(1_500));

    assert_eq!(
        store.cancel(running, 1_500).unwrap(),
        Some(TaskStatus::Running)
    );
    assert_eq!(get(&store, running).status, TaskStatus::Running);
    assert_eq!(store.cancel(queued + 10, 1_500).unwrap(), None);
    // The cancelled task's key is free again.
    queue(&store, task("p", "2"));
}

#[test]
fn requeue_queues_an_ended_task_again() {
    let store = store();
    let id = queue(&store, task("p", "k"));
    assert_eq!(store.requeue(id, 1_500).unwrap(), Some(TaskStatus::Queued));
    assert_eq!(claim_ids(&store, 1_000, 1, &[]), vec![id]);
    assert_eq!(store.requeue(id, 1_500).unwrap(), Some(TaskStatus::Running));
    let failed = Finish {
        status: TaskStatus::Failed,
        result: Some("null".to_owned()),
        error: Some("boom".to_owned()),
        logs: vec![log("x")],
        finished_unix_ms: 1_200,
        generation: Some(2),
    };
    store.finish(id, &failed, &[]).unwrap();

    assert_eq!(store.requeue(id, 9_000).unwrap(), Some(TaskStatus::Failed));
    let record = get(&store, id);
    assert_eq!(record.status, TaskStatus::Queued);
    assert_eq!(record.attempts, 0);
    assert_eq!(record.not_before_unix_ms, 9_000);
    assert_eq!(record.finished_unix_ms, None);
    assert_eq!(record.result, None);
    assert_eq!(record.error, None);
    assert_eq!(record.logs, Vec::new());
    assert_eq!(insert(&store, task("p", "k")), Inserted::Duplicate(id));
    assert_eq!(claim_ids(&store, 8_999, 1, &[]), Vec::<TaskId>::new());
    assert_eq!(claim_ids(&store, 9_000, 1, &[]), vec![id]);
    assert_eq!(get(&store, id).attempts, 1);

    assert_eq!(store.requeue(id + 10, 9_000).unwrap(), None);
}

#[test]
fn requeue_fails_while_another_task_with_its_key_is_active() {
    let store = store();
    let old = run(&store, "k", TaskStatus::Failed, 1_000);
    let active = queue(&store, task("p", "k"));
    let err = store.requeue(old, 2_000).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "task database (in memory): task {old} cannot be queued again: \
             task {active} with key k is active"
        )
    );
    assert_eq!(get(&store, old).status, TaskStatus::Failed);
    // A refused or skipped task can be queued again too, once the key is free.
    store.cancel(active, 2_000).unwrap();
    assert_eq!(store.requeue(old, 2_000).unwrap(), Some(TaskStatus::Failed));
    let mut t = task("p", "r");
    t.refused = Some("too deep".to_owned());
    let refused = insert(&store, t).id();
    assert_eq!(
        store.requeue(refused, 2_000).unwrap(),
        Some(TaskStatus::Refused)
    );
    assert_eq!(get(&store, refused).status, TaskStatus::Queued);
}

#[test]
fn prune_deletes_ended_tasks_that_ended_before_a_time() {
    let store = store();
    let old = run(&store, "1", TaskStatus::Success, 1_000);
    let also_old = run(&store, "2", TaskStatus::Failed, 1_999);
    let recent = run(&store, "3", TaskStatus::Bad, 2_000);
    let mut t = task("p", "4");
    t.created_unix_ms = 500;
    t.refused = Some("no".to_owned());
    let refused = insert(&store, t).id();
    let queued = queue(&store, task("p", "5"));
    let running = queue(&store, task("p", "6"));
    assert_eq!(claim_ids(&store, 1_000, 10, &[]), vec![queued, running]);
    store
        .retry_later(queued, 0, &ended(TaskStatus::Failed, 100))
        .unwrap();

    assert_eq!(store.prune(2_000, 1_000).unwrap(), 3);
    for id in [old, also_old, refused] {
        assert_eq!(store.get(id).unwrap(), None);
    }
    for id in [recent, queued, running] {
        assert!(store.get(id).unwrap().is_some());
    }
    // Active tasks are kept whatever the time.
    assert_eq!(store.prune(u64::MAX, 1_000).unwrap(), 1);
    assert_eq!(store.active("p").unwrap(), 2);
    assert_eq!(store.prune(u64::MAX, 0).unwrap(), 0);
}

#[test]
fn prune_keeps_the_newest_ended_tasks() {
    let store = store();
    let ended: Vec<TaskId> = (0..6)
        .map(|i| run(&store, &format!("k{i}"), TaskStatus::Success, 1_000 + i))
        .collect();
    let active = queue(&store, task("p", "active"));
    assert_eq!(store.prune(0, 10).unwrap(), 0);
    assert_eq!(store.prune(0, 2).unwrap(), 4);
    let left: Vec<TaskId> = store
        .list(&TaskFilter::default())
        .unwrap()
        .iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(left, vec![active, ended[5], ended[4]]);
    assert_eq!(store.prune(0, 0).unwrap(), 2);
    assert_eq!(
        store
            .list(&TaskFilter::default())
            .unwrap()
            .iter()
            .map(|t| t.id)
            .collect::<Vec<_>>(),
        vec![active]
    );
}

#[test]
fn task_ids_are_never_reused() {
    let store = store();
    let first = run(&store, "1", TaskStatus::Success, 1_000);
    assert_eq!(store.prune(u64::MAX, 0).unwrap(), 1);
    let next = queue(&store, task("p", "2"));
    assert!(next > first, "{next} after {first}");
}

#[test]
fn list_filters_newest_first() {
    let store = store();
    let mut ids = Vec::new();
    for (plugin, created) in [("x", 100), ("y", 200), ("x", 300), ("y", 400)] {
        let mut t = task(plugin, &format!("{plugin}{created}"));
        t.created_unix_ms = created;
        ids.push(queue(&store, t));
    }
    let [x1, y1, x2, y2] = ids[..] else {
        unreachable!()
    };
    assert_eq!(claim_ids(&store, 1_000, 1, &["y"]), vec![x1]);
    store
        .finish(x1, &ended(TaskStatus::Success, 1_000), &[])
        .unwrap();

    let list = |filter: TaskFilter| -> Vec<TaskId> {
        store.list(&filter).unwrap().iter().map(|t| t.id).collect()
    };
    assert_eq!(list(TaskFilter::default()), vec![y2, x2, y1, x1]);
    let by_plugin = TaskFilter {
        plugin: Some("x".to_owned()),
        ..TaskFilter::default()
    };
    assert_eq!(list(by_plugin.clone()), vec![x2, x1]);
    let by_status = TaskFilter {
        status: Some(TaskStatus::Queued),
        ..TaskFilter::default()
    };
    assert_eq!(list(by_status.clone()), vec![y2, x2, y1]);
    let since = TaskFilter {
        since_unix_ms: Some(200),
        ..TaskFilter::default()
    };
    assert_eq!(list(since), vec![y2, x2, y1]);
    let all_three = TaskFilter {
        status: Some(TaskStatus::Queued),
        plugin: Some("y".to_owned()),
        since_unix_ms: Some(300),
        limit: 0,
        before: None,
    };
    assert_eq!(list(all_three), vec![y2]);
    let limited = TaskFilter {
        limit: 2,
        ..TaskFilter::default()
    };
    assert_eq!(list(limited), vec![y2, x2]);
    let none = TaskFilter {
        status: Some(TaskStatus::Cancelled),
        ..by_plugin
    };
    assert_eq!(list(none), Vec::<TaskId>::new());
}

#[test]
fn list_returns_a_thousand_tasks_by_default() {
    let store = store();
    let tasks: Vec<Insert> = (0..1_005).map(|i| task("p", &i.to_string())).collect();
    let ids: Vec<TaskId> = store
        .insert(&tasks)
        .unwrap()
        .iter()
        .map(|i| i.id())
        .collect();
    let listed = store.list(&TaskFilter::default()).unwrap();
    assert_eq!(listed.len(), 1_000);
    assert_eq!(listed[0].id, ids[1_004]);
    assert_eq!(listed[999].id, ids[5]);
}

#[test]
fn children_are_listed_oldest_first() {
    let store = store();
    let parent = queue(&store, task("p", "parent"));
    let other = queue(&store, task("p", "other"));
    let mut kids = Vec::new();
    for i in 0..3 {
        let mut t = task("q", &format!("kid{i}"));
        t.parent = Some(parent);
        t.depth = 1;
        if i == 1 {
            t.refused = Some("too many".to_owned());
        }
        kids.push(insert(&store, t).id());
    }
    let mut t = task("q", "grandkid");
    t.parent = Some(kids[0]);
    queue(&store, t);

    let children: Vec<TaskId> = store
        .children(parent)
        .unwrap()
        .iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(children, kids);
    assert_eq!(store.children(other).unwrap(), Vec::new());
    assert_eq!(store.children(kids[0]).unwrap().len(), 1);
}

#[test]
fn active_counts_queued_and_running_tasks_of_a_plugin() {
    let store = store();
    assert_eq!(store.active("p").unwrap(), 0);
    run(&store, "done", TaskStatus::Success, 1_000);
    queue(&store, task("p", "1"));
    queue(&store, task("p", "2"));
    queue(&store, task("q", "3"));
    claim_ids(&store, 1_000, 1, &["q"]);
    assert_eq!(store.active("p").unwrap(), 2);
    assert_eq!(store.active("q").unwrap(), 1);
    assert_eq!(store.active("r").unwrap(), 0);
}

#[test]
fn schedules_remember_when_they_last_fired() {
    let store = store();
    assert_eq!(store.last_fired("nightly").unwrap(), None);
    store.set_last_fired("nightly", 1_000).unwrap();
    store.set_last_fired("hourly", 5).unwrap();
    assert_eq!(store.last_fired("nightly").unwrap(), Some(1_000));
    store.set_last_fired("nightly", 2_000).unwrap();
    assert_eq!(store.last_fired("nightly").unwrap(), Some(2_000));
    assert_eq!(store.last_fired("hourly").unwrap(), Some(5));
}

#[test]
fn open_creates_a_private_directory_and_keeps_tasks() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state").join("host").join("tasks.db");
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.path(), Some(path.as_path()));
    assert!(format!("{store:?}").contains("tasks.db"), "{store:?}");
    let mode = std::fs::metadata(path.parent().unwrap())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
    let id = queue(&store, task("p", "k"));
    store.set_last_fired("s", 42).unwrap();
    drop(store);

    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(get(&store, id).key, "k");
    assert_eq!(store.last_fired("s").unwrap(), Some(42));
    let conn = store.lock();
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    let sync: i64 = conn
        .query_row("PRAGMA synchronous", [], |r| r.get(0))
        .unwrap();
    assert_eq!(sync, 1, "NORMAL");
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    drop(conn);

    let memory = SqliteStore::open_in_memory().unwrap();
    assert_eq!(memory.path(), None);
}

/// Bytes that look like nothing (xorshift).
fn noise(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

#[test]
fn a_file_of_random_bytes_is_a_one_line_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    // A newline in the path too: still one line.
    let path = dir.path().join("odd\nname").join("tasks.db");
    std::fs::create_dir(path.parent().unwrap()).unwrap();
    std::fs::write(&path, noise(64 * 1024)).unwrap();
    let err = SqliteStore::open(&path).unwrap_err();
    let expected = format!(
        "task database {}: file is not a database \
         (is it corrupt? move it away to start afresh)",
        path.display()
    )
    .replace('\n', " ");
    assert_eq!(err.to_string(), expected);
    assert!(!err.to_string().contains('\n'));
}

#[test]
fn a_corrupt_database_is_a_one_line_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tasks.db");
    let store = SqliteStore::open(&path).unwrap();
    let tasks: Vec<Insert> = (0..500)
        .map(|i| {
            let mut t = task("p", &i.to_string());
            t.input = format!("{{\"pad\":\"{}\"}}", "x".repeat(200));
            t
        })
        .collect();
    store.insert(&tasks).unwrap();
    drop(store);
    let mut bytes = std::fs::read(&path).unwrap();
    assert!(bytes.len() > 16 * 4096);
    bytes[4 * 4096..12 * 4096].copy_from_slice(&noise(8 * 4096));
    std::fs::write(&path, bytes).unwrap();

    let err = SqliteStore::open(&path).unwrap_err();
    assert!(
        err.to_string()
            .starts_with(&format!("task database {}: ", path.display())),
        "{err}"
    );
    assert!(err.to_string().contains("is it corrupt?"), "{err}");
    assert!(!err.to_string().contains('\n'), "{err}");
}

#[test]
fn a_database_of_a_newer_host_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tasks.db");
    Connection::open(&path)
        .unwrap()
        .execute_batch("PRAGMA user_version = 7")
        .unwrap();
    let err = SqliteStore::open(&path).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "task database {}: its schema version is 7, this host knows {SCHEMA_VERSION} at \
             most (was it written by a newer host?)",
            path.display()
        )
    );
}

#[test]
fn a_database_of_something_else_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tasks.db");
    Connection::open(&path)
        .unwrap()
        .execute_batch("CREATE TABLE tasks (what TEXT)")
        .unwrap();
    let err = SqliteStore::open(&path).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "task database {}: cannot create its schema version 1: \
             table tasks already exists",
            path.display()
        )
    );
}

/// Runs `f` on a thread; fails the test if it takes longer than a minute (it hangs).
fn without_hanging<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("hangs on a locked database")
}

#[test]
fn a_database_locked_by_another_process_is_an_error_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tasks.db");
    // Not in WAL mode: an exclusive lock keeps even readers out.
    let holder = Connection::open(&path).unwrap();
    holder
        .execute_batch("CREATE TABLE t (x); BEGIN EXCLUSIVE; INSERT INTO t VALUES (1);")
        .unwrap();
    let opening = path.clone();
    let err = without_hanging(move || SqliteStore::open(&opening)).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "task database {}: database is locked (another host uses it?)",
            path.display()
        )
    );
    holder.execute_batch("ROLLBACK").unwrap();
}

#[test]
fn a_write_lock_held_elsewhere_is_an_error_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tasks.db");
    let store = Arc::new(SqliteStore::open(&path).unwrap());
    let id = queue(&store, task("p", "k"));
    let holder = Connection::open(&path).unwrap();
    holder.execute_batch("BEGIN EXCLUSIVE").unwrap();

    let writer = Arc::clone(&store);
    let err = without_hanging(move || writer.insert(&[task("p", "k2")])).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "task database {}: cannot insert tasks: database is locked \
             (another host uses it?)",
            path.display()
        )
    );
    // WAL: readers do not wait for the writer.
    assert_eq!(get(&store, id).status, TaskStatus::Queued);
    holder.execute_batch("ROLLBACK").unwrap();
    queue(&store, task("p", "k2"));
}

#[test]
fn the_statements_use_their_indexes() {
    let store = store();
    let conn = store.lock();
    let plan = |sql: &str| -> String {
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        // Planned with its parameters unbound (NULL).
        let mut rows = stmt.raw_query();
        let mut steps = Vec::new();
        while let Some(row) = rows.next().unwrap() {
            steps.push(row.get::<_, String>(3).unwrap());
        }
        steps.join("; ")
    };
    for (sql, index) in [
        (TOP_PRIORITY, "tasks_queued"),
        (DUE_OF_PRIORITY, "tasks_queued"),
        (NEXT_PRIORITY, "tasks_queued"),
        (FIRST_PLUGIN, "tasks_plugin"),
        (PLUGIN_DUE, "tasks_plugin"),
        (NEXT_PLUGIN, "tasks_plugin"),
        (RECOVER, "tasks_active_key"),
        (FAIL_QUEUED, "tasks_plugin"),
        (CHILDREN, "tasks_parent"),
        (ACTIVE_OF_PLUGIN, "tasks_plugin"),
        (PRUNE_BEFORE, "tasks_finished"),
        (PRUNE_BEYOND, "tasks_finished"),
        (LAST_SUCCESS, "tasks_succeeded"),
        (ACTIVE_WITH_KEY, "tasks_active_key"),
    ] {
        let plan = plan(sql);
        assert!(plan.contains(index), "{sql}: {plan}");
        assert!(!plan.contains("TEMP B-TREE"), "{sql}: {plan}");
        // Every task kept, read one by one.
        let full_scan = plan
            .split("; ")
            .any(|step| step.starts_with("SCAN tasks") && !step.contains(" INDEX "));
        assert!(!full_scan, "{sql}: {plan}");
    }
}

#[test]
fn an_attempt_the_host_died_in_counts_and_past_max_attempts_the_task_fails() {
    let store = store();
    let mut t = task("p", "dies");
    t.max_attempts = 3;
    let id = queue(&store, t);
    let other = queue(&store, task("p", "lives"));
    // The host dies during each attempt: three starts.
    for attempt in 1..=3 {
        let claimed = claim_ids(&store, 1_000, 10, &[]);
        assert!(claimed.contains(&id), "attempt {attempt}: {claimed:?}");
        assert_eq!(get(&store, id).attempts, attempt);
        if attempt == 1 {
            store
                .finish(other, &ended(TaskStatus::Success, 1_000), &[])
                .unwrap();
        }
        let recovered = store.recover(5_000).unwrap();
        let expected = if attempt < 3 {
            Recovered {
                queued: 1,
                failed: 0,
            }
        } else {
            Recovered {
                queued: 0,
                failed: 1,
            }
        };
        assert_eq!(recovered, expected, "start {}", attempt + 1);
    }
    let record = get(&store, id);
    assert_eq!(record.status, TaskStatus::Failed);
    assert_eq!(record.attempts, 3);
    assert_eq!(record.finished_unix_ms, Some(5_000));
    assert_eq!(
        record.error.as_deref(),
        Some("the host stopped during this attempt 3 times")
    );
    assert_eq!(claim_ids(&store, 9_000, 10, &[]), Vec::<TaskId>::new());
    // Queued again by hand, its count starts afresh.
    store.requeue(id, 9_000).unwrap();
    assert_eq!(claim_ids(&store, 9_000, 10, &[]), vec![id]);
    store.recover(9_500).unwrap();
    assert_eq!(
        get(&store, id).error.as_deref(),
        Some("the host stopped during attempt 1")
    );
}

#[test]
fn the_outcome_and_the_follow_ups_are_written_together_or_not_at_all() {
    let store = store();
    let parent = queue(&store, task("p", "parent"));
    let mut child = task("q", "child");
    child.parent = Some(parent);
    child.depth = 1;
    // Not claimed: the finish fails, and the follow-up is not queued.
    let err = store
        .finish(
            parent,
            &ended(TaskStatus::Success, 1_500),
            std::slice::from_ref(&child),
        )
        .unwrap_err();
    assert!(
        err.to_string().contains("it is queued, not running"),
        "{err}"
    );
    assert_eq!(store.children(parent).unwrap(), Vec::new());
    assert_eq!(claim_ids(&store, 1_000, 1, &[]), vec![parent]);
    // A write that fails within the transaction (a full disk, say) undoes both.
    store
        .lock()
        .execute_batch(
            "CREATE TRIGGER full BEFORE UPDATE OF status ON tasks WHEN OLD.status = 'running' \
             BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END",
        )
        .unwrap();
    let err = store
        .finish(
            parent,
            &ended(TaskStatus::Success, 1_500),
            std::slice::from_ref(&child),
        )
        .unwrap_err();
    assert!(
        err.to_string().contains("database or disk is full"),
        "{err}"
    );
    assert_eq!(store.children(parent).unwrap(), Vec::new());
    assert_eq!(get(&store, parent).status, TaskStatus::Running);
    store.lock().execute_batch("DROP TRIGGER full").unwrap();
    let inserted = store
        .finish(
            parent,
            &ended(TaskStatus::Success, 1_500),
            &[child.clone(), child],
        )
        .unwrap();
    let kid = inserted[0].id();
    assert_eq!(
        inserted,
        vec![Inserted::Queued(kid), Inserted::Duplicate(kid)]
    );
    assert_eq!(get(&store, parent).status, TaskStatus::Success);
    assert_eq!(get(&store, kid).parent, Some(parent));
}

#[test]
fn claim_takes_only_the_plugins_given_and_release_gives_a_task_back_uncounted() {
    let store = store();
    let x = queue(&store, task("x", "1"));
    let y = queue(&store, task("y", "2"));
    assert_eq!(
        store.claim(1_000, 10, &[]).unwrap(),
        Vec::<TaskRecord>::new()
    );
    assert_eq!(store.next_due(&["z".to_owned()]).unwrap(), None);
    assert_eq!(store.next_due(&["y".to_owned()]).unwrap(), Some(1_000));
    let claimed = store.claim(1_000, 10, &["y".to_owned()]).unwrap();
    assert_eq!(claimed.iter().map(|t| t.id).collect::<Vec<_>>(), vec![y]);
    assert_eq!(get(&store, x).status, TaskStatus::Queued);
    assert_eq!(store.queued_plugins().unwrap(), vec!["x".to_owned()]);

    store.release(y).unwrap();
    let record = get(&store, y);
    assert_eq!(record.status, TaskStatus::Queued);
    assert_eq!(record.attempts, 0);
    assert_eq!(
        store.queued_plugins().unwrap(),
        vec!["x".to_owned(), "y".to_owned()]
    );
    let err = store.release(y).unwrap_err();
    assert!(
        err.to_string().contains("it is queued, not running"),
        "{err}"
    );

    // Fails the queued tasks of one plugin due by a time.
    let mut later = task("x", "3");
    later.not_before_unix_ms = 5_000;
    let later = queue(&store, later);
    assert_eq!(store.fail_queued("x", 4_999, "gone", 6_000).unwrap(), 1);
    let record = get(&store, x);
    assert_eq!(record.status, TaskStatus::Failed);
    assert_eq!(record.error.as_deref(), Some("gone"));
    assert_eq!(record.finished_unix_ms, Some(6_000));
    assert_eq!(get(&store, later).status, TaskStatus::Queued);
    assert_eq!(get(&store, y).status, TaskStatus::Queued);
}

#[test]
fn list_pages_with_a_cursor() {
    let store = store();
    let ids: Vec<TaskId> = (0..5)
        .map(|i| queue(&store, task("p", &i.to_string())))
        .collect();
    let page = |before: Option<TaskId>| -> Vec<TaskId> {
        let filter = TaskFilter {
            limit: 2,
            before,
            ..TaskFilter::default()
        };
        store.list(&filter).unwrap().iter().map(|t| t.id).collect()
    };
    assert_eq!(page(None), vec![ids[4], ids[3]]);
    assert_eq!(page(Some(ids[3])), vec![ids[2], ids[1]]);
    assert_eq!(page(Some(ids[1])), vec![ids[0]]);
    assert_eq!(page(Some(ids[0])), Vec::<TaskId>::new());
}

#[test]
fn a_database_of_schema_version_1_is_migrated_and_keeps_its_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tasks.db");
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(super::schema::MIGRATIONS[0]).unwrap();
        conn.execute_batch(
            "INSERT INTO tasks (plugin, callback, input, key, priority, status, attempts, \
             max_attempts, retry_delays_ms, not_before, created, logs, depth) \
             VALUES ('p', 'execute', '{}', 'k', 0, 'running', 2, 2, '[]', 0, 0, '[]', 0); \
             PRAGMA user_version = 1;",
        )
        .unwrap();
    }
    let store = SqliteStore::open(&path).unwrap();
    let recovered = store.recover(10).unwrap();
    assert_eq!(recovered.failed, 1);
    let record = get(&store, 1);
    assert_eq!(
        record.error.as_deref(),
        Some("the host stopped during this attempt 1 times")
    );
}

#[test]
fn notes_outlive_a_retry_and_an_attempt_are_capped_and_go_with_their_task() {
    let store = store();
    let id = queue(&store, task("p", "1"));
    let note = |n: u64| LogRecord {
        level: Level::Info,
        message: format!("retry: reason {n}"),
        unix_ms: n,
    };
    assert!(store.note(id, &note(0)).unwrap());
    assert!(!store.note(id + 100, &note(0)).unwrap(), "no such task");
    assert_eq!(claim_ids(&store, 1_000, 1, &[]), vec![id]);
    store
        .finish(id, &ended(TaskStatus::Success, 2_000), &[])
        .unwrap();
    store.requeue(id, 3_000).unwrap();
    let notes = store.notes(id).unwrap();
    assert_eq!(notes.len(), 1);
    assert_eq!(notes[0].message, "retry: reason 0");
    for n in 1..=25 {
        store.note(id, &note(n)).unwrap();
    }
    let notes = store.notes(id).unwrap();
    assert_eq!(notes.len(), 20, "the newest 20 are kept");
    assert_eq!(notes[0].unix_ms, 6);
    assert_eq!(notes[19].unix_ms, 25);
    let counts = store.counts().unwrap();
    assert_eq!(counts, vec![(TaskStatus::Queued, 1)]);
    store.cancel(id, 4_000).unwrap();
    assert_eq!(store.prune(5_000, 0).unwrap(), 1);
    let left: i64 = store
        .read(&"count notes", |c| {
            Ok(c.query_row("SELECT count(*) FROM task_notes", [], |r| r.get(0))?)
        })
        .unwrap();
    assert_eq!(left, 0, "deleted with their task");
}
