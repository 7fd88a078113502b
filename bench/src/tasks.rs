//! The task figures: tasks per second through the persistent queue (SQLite, WAL,
//! `synchronous = NORMAL`: a queued task survives a killed host, a power loss may take the
//! last transactions), and how long a task submitted to an idle runner waits for its call
//! to start.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use host::tasks::{NewTask, SqliteStore, TaskSettings, TaskStatus, TaskStore, Tasks};

use crate::{fresh_dir, percentile, row, Args, Row};

const PLUGIN: &str = "bench-noop";

fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// `3 ms`, or `< 1 ms`.
fn ms(value: f64) -> String {
    if value < 1.0 {
        "< 1 ms".to_owned()
    } else {
        format!("{value:.0} ms")
    }
}

pub(crate) fn figures(args: &Args, rows: &mut Vec<Row>) {
    let dir = fresh_dir("tasks");
    let file = dir.join("libbench_noop.so");
    std::fs::copy(&args.plugin, &file).expect("copy plugin");
    let host = host::Host::new(host::HostOptions::default()).expect("host");
    host.load_file(&file).expect("load");
    let store = Arc::new(SqliteStore::open(&dir.join("state/tasks.db")).expect("task store"));
    let mut settings = TaskSettings::default();
    settings.max_running = 4;
    settings.max_running_per_plugin = 4;
    settings.max_queued_per_plugin = 1_000_000;
    let tasks = Tasks::start(host.clone(), store.clone(), settings, Vec::new()).expect("tasks");
    let submit = |key: String| {
        let mut task = NewTask::new(PLUGIN, "noop", "null");
        task.options.key = Some(key);
        tasks.submit(task).expect("submit").id()
    };
    let drained = |deadline: Duration| {
        let until = Instant::now() + deadline;
        while store.active(PLUGIN).expect("count") > 0 {
            assert!(Instant::now() < until, "the queue did not drain");
            std::thread::sleep(Duration::from_millis(1));
        }
    };

    // Throughput: submit a batch as fast as one thread can, until every task succeeded.
    let n = if args.smoke { 500 } else { 20_000 };
    let start = Instant::now();
    for i in 0..n {
        submit(format!("t{i}"));
    }
    drained(Duration::from_secs(600));
    let per_second = f64::from(n) / start.elapsed().as_secs_f64();
    rows.push(row(
        "tasks through the persistent queue (submit, claim, run a no-op, record; SQLite WAL, synchronous = NORMAL)",
        format!("{per_second:.0} tasks/s ({n} tasks, 4 runners)"),
        ">= 5,000/s",
        Some(per_second >= 5_000.0),
    ));

    // Latency: one task at a time into an idle runner, from submit to its call starting.
    let samples = if args.smoke { 20 } else { 300 };
    let mut waits = Vec::with_capacity(samples);
    for i in 0..samples {
        let before = now_ms();
        let id = submit(format!("l{i}"));
        drained(Duration::from_secs(10));
        let record = store.get(id).expect("get").expect("the task");
        assert_eq!(record.status, TaskStatus::Success);
        let started = record.started_unix_ms.expect("started") as f64;
        waits.push((started - before).max(0.0));
    }
    waits.sort_by(f64::total_cmp);
    let p50 = percentile(&waits, 0.5);
    rows.push(row(
        "submit to start of a task's call, idle runner",
        format!(
            "{} p50, {} p99 (the store keeps whole milliseconds)",
            ms(p50),
            ms(percentile(&waits, 0.99))
        ),
        "<= 5 ms p50",
        Some(p50 <= 5.0),
    ));
    tasks.stop(Duration::from_secs(10));
    drop(host);
    let _ = std::fs::remove_dir_all(&dir);
}
