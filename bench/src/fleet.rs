//! The fleet's figures, on a real PostgreSQL server ([`server_url`]: `bench/run` starts a
//! throwaway one when none is given; the group is skipped without one): tasks
//! per second with 1, 2 and 4 hosts, submit to start of a call woken by NOTIFY, a 3-step
//! chain of follow-ups, and the takeover of a SIGKILLed host's tasks.
//!
//! In the throughput and latency figures each "host" is a `Host`, a pool, a heartbeat and
//! a task runner of its own, in this one process (as `host serve` runs them); the takeover
//! figure runs real `host serve` processes.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use host::postgres::{Database, HostRow, Membership};
use host::tasks::{NewTask, PgStore, TaskSettings, TaskStatus, TaskStore, Tasks};

use crate::{fresh_dir, percentile, row, Args, Row};

const PLUGIN: &str = "bench-noop";

fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// The server's URL: `--database URL`, else `BENCH_DATABASE_URL`, else `E2E_DATABASE_URL`
/// (which `.ci/test` and `bench/run` export when they start a throwaway server).
pub(crate) fn server_url() -> Option<String> {
    std::env::args()
        .skip_while(|a| a != "--database")
        .nth(1)
        .or_else(|| {
            ["BENCH_DATABASE_URL", "E2E_DATABASE_URL"]
                .iter()
                .find_map(|name| std::env::var(name).ok())
        })
        .filter(|u| !u.is_empty())
}

/// A new database on the server; its URL.
fn fresh_database(admin: &str, name: &str) -> String {
    let db = Database::open(admin, 1, Duration::from_secs(5)).expect("the server's URL");
    let name = format!("bench_{name}_{}", std::process::id());
    db.block_on(async {
        let client = db
            .client("create a database")
            .await
            .expect("the server answers");
        client
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name}"))
            .await
            .expect("drop database");
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create database");
    });
    let (server, _) = admin.rsplit_once('/').expect("a database URL");
    format!("{server}/{name}")
}

/// One host of the fleet, in this process.
struct FleetHost {
    tasks: Tasks,
    store: Arc<PgStore>,
    _membership: Membership,
    host: host::Host,
}

fn settings(runners: usize) -> TaskSettings {
    let mut settings = TaskSettings::default();
    settings.max_running = runners;
    settings.max_running_per_plugin = runners;
    settings.max_queued_per_plugin = 10_000_000;
    settings
}

fn start_host(url: &str, plugin: Option<&Path>, runners: usize) -> FleetHost {
    let host = host::Host::new(host::HostOptions::default()).expect("host");
    if let Some(plugin) = plugin {
        host.load_file(plugin).expect("load");
    }
    let settings = settings(runners);
    let db = Database::open(url, settings.pool_size, Duration::from_secs(5)).expect("database");
    db.block_on(db.migrate()).expect("migrate");
    let row = HostRow::this_process("bench", now_ms() as u64);
    let id = format!("{}-{}", row.id, fastrand_suffix());
    let mut row = row;
    row.id = id;
    let store = Arc::new(PgStore::new(
        db.clone(),
        &row.id,
        settings.lease_ms,
        settings.poll_interval_ms,
    ));
    let membership = Membership::start(db, host.clone(), row, settings.lease_ms, true, true);
    let tasks = Tasks::start(host.clone(), store.clone(), settings, Vec::new()).expect("tasks");
    FleetHost {
        tasks,
        store,
        _membership: membership,
        host,
    }
}

fn fastrand_suffix() -> u32 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// When the last task of the database at `url` finished, in ms since the epoch (the
/// server's clock, on this machine).
fn last_finished_ms(url: &str) -> f64 {
    let db = Database::open(url, 1, Duration::from_secs(5)).expect("database");
    db.block_on(async {
        let client = db.client("read the last finish").await.expect("connect");
        let row = client
            .query_one("SELECT max(finished) FROM tasks", &[])
            .await
            .expect("max(finished)");
        row.get::<_, Option<i64>>(0).expect("finished tasks") as f64
    })
}

/// Queues `n` no-op tasks in batches of 1,000 rows per statement.
fn queue_noops(store: &PgStore, url: &str, n: usize) {
    let db = Database::open(url, 1, Duration::from_secs(5)).expect("database");
    db.block_on(async {
        let client = db.client("queue tasks").await.expect("connect");
        let mut done = 0;
        while done < n {
            let batch = (n - done).min(1000);
            client
                .batch_execute(&format!(
                    "INSERT INTO tasks (plugin, callback, input, key, priority, status, \
                     max_attempts, retry_delays_ms, not_before, created, depth) \
                     SELECT '{PLUGIN}', 'noop', 'null', 'b' || ({done} + i), 0, 'queued', 4, \
                     '[1000]', 0, fleet_now_ms(), 0 FROM generate_series(1, {batch}) i"
                ))
                .await
                .expect("insert");
            done += batch;
        }
        client
            .batch_execute("NOTIFY host_tasks")
            .await
            .expect("notify");
    });
    let _ = store;
}

pub(crate) fn figures(args: &Args, rows: &mut Vec<Row>) {
    let Some(admin) = server_url() else {
        eprintln!(
            "fleet: no database (--database URL, BENCH_DATABASE_URL or E2E_DATABASE_URL): \
             skipped"
        );
        return;
    };
    let dir = fresh_dir("fleet");
    let plugin = dir.join("libbench_noop.so");
    std::fs::copy(&args.plugin, &plugin).expect("copy plugin");

    // Throughput: N no-op tasks queued beforehand, drained by 1, 2 and 4 hosts of 32
    // runners (`max_running`) each, and by 4 hosts of 16. A runner of a no-op task spends
    // its time waiting for round trips (its claim, its finish), so more runners per host
    // overlap more of them.
    let n = if args.smoke { 1_000 } else { 20_000 };
    for (hosts, runners) in [(1usize, 32usize), (2, 32), (4, 32), (4, 16)] {
        let url = fresh_database(&admin, &format!("tput{hosts}_{runners}"));
        let fleet: Vec<FleetHost> = (0..hosts)
            .map(|_| start_host(&url, None, runners))
            .collect();
        queue_noops(&fleet[0].store, &url, n);
        let (start, start_ms) = (Instant::now(), now_ms());
        for host in &fleet {
            host.host.load_file(&plugin).expect("load");
        }
        // The end is when the last task finished, read from the table once the queue
        // drained: the driver looks rarely (every 50 ms), so that its own counting, a scan
        // of the active tasks, takes little of the 2 cores it measures.
        let until = start + Duration::from_secs(600);
        while fleet[0].store.active(PLUGIN).expect("count") > 0 {
            assert!(Instant::now() < until, "the queue did not drain");
            std::thread::sleep(Duration::from_millis(50));
        }
        let seconds = (last_finished_ms(&url) - start_ms) / 1000.0;
        let per_second = n as f64 / seconds;
        rows.push(row(
            &format!("tasks through PostgreSQL, {hosts} host(s) (claim in batches, run a no-op, batched finish)"),
            format!(
                "{per_second:.0} tasks/s ({n} queued no-op tasks, {runners} runners per host)"
            ),
            if (hosts, runners) == (4, 32) { ">= 10,000/s" } else { "-" },
            ((hosts, runners) == (4, 32)).then_some(per_second >= 10_000.0),
        ));
        for host in fleet {
            host.tasks.stop(Duration::from_secs(10));
        }
    }

    // Latency: a task submitted on one host (which does not serve the plugin) starts on
    // another, idle one, woken by NOTIFY.
    let url = fresh_database(&admin, "notify");
    let runner = start_host(&url, Some(&plugin), 4);
    let submitter = start_host(&url, None, 1);
    let samples = if args.smoke { 20 } else { 200 };
    let mut waits = Vec::with_capacity(samples);
    for i in 0..samples {
        // Idle: the runner's dispatcher is asleep (it polls every 250 ms).
        std::thread::sleep(Duration::from_millis(5));
        let before = now_ms();
        let mut task = NewTask::new(PLUGIN, "noop", "null");
        task.options.key = Some(format!("n{i}"));
        let id = submitter.tasks.submit(task).expect("submit").id();
        let until = Instant::now() + Duration::from_secs(10);
        let started = loop {
            let record = runner.store.get(id).expect("get").expect("the task");
            if record.status == TaskStatus::Success {
                break record.started_unix_ms.expect("started") as f64;
            }
            assert!(Instant::now() < until, "the task did not run");
            std::thread::sleep(Duration::from_micros(200));
        };
        waits.push((started - before).max(0.0));
    }
    waits.sort_by(f64::total_cmp);
    let p50 = percentile(&waits, 0.5);
    rows.push(row(
        "submit on one host to start of the call on another, idle (NOTIFY), PostgreSQL",
        format!(
            "{p50:.0} ms p50, {:.0} ms p99 (whole milliseconds)",
            percentile(&waits, 0.99)
        ),
        "<= 5 ms p50",
        Some(p50 <= 5.0),
    ));

    // A 3-step sequential chain: each step's follow-up is the next; submit to the last
    // step finished.
    let mut chains = Vec::with_capacity(samples);
    for i in 0..samples {
        let before = now_ms();
        let mut task = NewTask::new(PLUGIN, "chain", "2");
        task.options.key = Some(format!("c{i}"));
        let id = runner.tasks.submit(task).expect("submit").id();
        let until = Instant::now() + Duration::from_secs(10);
        let finished = loop {
            let mut last = runner.store.get(id).expect("get").expect("the task");
            for _ in 0..2 {
                match runner.store.children(last.id).expect("children").pop() {
                    Some(child) => last = child,
                    None => break,
                }
            }
            if last.input == "0" && last.status == TaskStatus::Success {
                break last.finished_unix_ms.expect("finished") as f64;
            }
            assert!(Instant::now() < until, "the chain did not finish");
            std::thread::sleep(Duration::from_micros(200));
        };
        chains.push((finished - before).max(0.0));
    }
    chains.sort_by(f64::total_cmp);
    let p50 = percentile(&chains, 0.5);
    rows.push(row(
        "3-step sequential chain (each step's follow-up is the next), submit to last step finished, PostgreSQL",
        format!("{p50:.0} ms p50, {:.0} ms p99", percentile(&chains, 0.99)),
        "<= 10 ms p50",
        Some(p50 <= 10.0),
    ));
    runner.tasks.stop(Duration::from_secs(10));
    submitter.tasks.stop(Duration::from_secs(10));

    takeover(args, &admin, &plugin, rows);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Two `host serve` processes with a short lease; one is SIGKILLed with tasks in flight:
/// how long until the last of them runs again on the other.
fn takeover(args: &Args, admin: &str, plugin: &Path, rows: &mut Vec<Row>) {
    let lease_ms = 2_000u64;
    let url = fresh_database(admin, "takeover");
    let toml = fresh_dir("fleet-takeover-config").join("host.toml");
    std::fs::write(
        &toml,
        format!("[tasks]\ndatabase = \"{url}\"\nlease_ms = {lease_ms}\nmax_running = 4\n"),
    )
    .expect("host.toml");
    let mut servers = Vec::new();
    for i in 0..2 {
        let dir = fresh_dir(&format!("fleet-takeover-{i}"));
        std::fs::copy(plugin, dir.join("libbench_noop.so")).expect("copy plugin");
        let (serve, _) = crate::Serve::start_with(
            &args.host,
            dir,
            &[std::ffi::OsStr::new("--config"), toml.as_os_str()],
        );
        serve.client();
        servers.push(serve);
    }
    let db = Database::open(&url, 1, Duration::from_secs(5)).expect("database");
    let query = |sql: String| -> Vec<i64> {
        db.block_on(async {
            let client = db.client("bench").await.expect("connect");
            client
                .query(&sql, &[])
                .await
                .expect("query")
                .iter()
                .map(|r| r.get::<_, i64>(0))
                .collect()
        })
    };
    query(
        "INSERT INTO tasks (plugin, callback, input, key, priority, status, max_attempts, \
         retry_delays_ms, not_before, created, depth) SELECT 'bench-noop', 'sleep', '3000', \
         'k' || i, 0, 'queued', 4, '[1000]', 0, fleet_now_ms(), 0 \
         FROM generate_series(1, 8) i RETURNING id"
            .to_owned(),
    );
    let victim = servers[0].child.id();
    let until = Instant::now() + Duration::from_secs(30);
    let in_flight = loop {
        let ids = query(format!(
            "SELECT t.id FROM tasks t JOIN hosts h ON h.id = t.host_id \
             WHERE t.status = 'running' AND h.pid = {victim}"
        ));
        if !ids.is_empty() {
            break ids;
        }
        assert!(Instant::now() < until, "no task ran on the first host");
        std::thread::sleep(Duration::from_millis(10));
    };
    let killed = query("SELECT fleet_now_ms()".to_owned())[0];
    servers[0].child.kill().expect("SIGKILL the first host");
    let list = in_flight
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let until = Instant::now() + Duration::from_secs(60);
    let taken = loop {
        let starts = query(format!(
            "SELECT started FROM tasks WHERE id IN ({list}) AND attempts > 1 AND started IS NOT NULL"
        ));
        if starts.len() == in_flight.len() {
            break starts.into_iter().max().unwrap_or(killed) - killed;
        }
        assert!(Instant::now() < until, "the tasks were not taken back");
        std::thread::sleep(Duration::from_millis(10));
    };
    rows.push(row(
        "takeover after SIGKILL of a host: until its tasks in flight run again on another",
        format!(
            "{taken} ms ({} tasks, lease_ms = {lease_ms})",
            in_flight.len()
        ),
        "<= 2x lease_ms",
        Some(taken <= 2 * lease_ms as i64),
    ));
    drop(servers);
}
