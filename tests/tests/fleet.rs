//! A fleet of hosts on one PostgreSQL database (the server `.ci/test` starts): each test
//! has a database of its own and real `host serve` processes.

use std::os::unix::fs::DirBuilderExt;
use std::sync::{PoisonError, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use e2e::postgres::{count, fresh_database, insert_tasks, psql, start_hosts, Outage};
use e2e::{install, tasker};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);
use e2e::{host, plugins_dir, text, Server};

/// `host submit PLUGIN CALLBACK --input INPUT` on `server`: the id of the task queued.
fn submit(server: &Server, plugin: &str, callback: &str, input: &str) -> i64 {
    let out = server.cli(&["submit", plugin, callback, "--input", input]);
    out.trim()
        .strip_prefix("queued task ")
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("not queued: {out}"))
}

#[test]
fn two_hosts_starting_at_once_migrate_once() {
    let _server = shared();
    let url = fresh_database();
    let plugins = plugins_dir();
    let fleet = start_hosts(2, plugins.path(), &url, "", "");
    assert_eq!(
        psql(&url, "SELECT count(*), max(version) FROM schema_migrations"),
        format!("{n}|{n}", n = host::postgres::SCHEMA_VERSION)
    );
    // Both heartbeats land in the hosts table.
    fleet.hosts[0].wait_until(Duration::from_secs(20), "two host rows", |_| {
        psql(&url, "SELECT count(*) FROM hosts") == "2"
    });
}

#[test]
fn a_database_with_a_newer_schema_is_refused_in_one_line() {
    let _server = shared();
    let url = fresh_database();
    let plugins = plugins_dir();
    drop(start_hosts(1, plugins.path(), &url, "", ""));
    psql(
        &url,
        "INSERT INTO schema_migrations (version, name) VALUES (999, 'from_the_future')",
    );
    let config = tempfile::tempdir().unwrap();
    let toml = config.path().join("host.toml");
    std::fs::write(&toml, format!("[tasks]\ndatabase = \"{url}\"\n")).unwrap();
    let mut server = Server::spawn(
        None,
        plugins.path(),
        &["--config", toml.to_str().unwrap()],
        |_| {},
    );
    let status = server
        .wait_timeout(Duration::from_secs(20))
        .expect("the host exits");
    assert!(!status.success());
    let log = server.log();
    assert!(
        log.contains(&format!(
            "has schema version 999, this host knows version {} at most",
            host::postgres::SCHEMA_VERSION
        )),
        "{log}"
    );
}

#[test]
fn a_bad_database_url_is_refused_naming_the_field() {
    let plugins = plugins_dir();
    let config = tempfile::tempdir().unwrap();
    let toml = config.path().join("host.toml");
    std::fs::write(&toml, "[tasks]\ndatabase = \"mysql://x@y/z\"\n").unwrap();
    let output = host(&[
        "serve",
        "--plugins",
        plugins.path().to_str().unwrap(),
        "--config",
        toml.to_str().unwrap(),
    ]);
    let (_, stderr) = text(&output);
    assert!(!output.status.success());
    assert!(stderr.contains("tasks.database"), "{stderr}");
    assert!(stderr.contains("is not a PostgreSQL URL"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}

#[test]
fn a_host_on_postgres_runs_a_chain_of_follow_ups_and_names_itself_on_each_task() {
    let _server = shared();
    let url = fresh_database();
    let plugins = plugins_dir();
    install(tasker(), plugins.path(), "libtasker.so");
    let fleet = start_hosts(1, plugins.path(), &url, "", "");
    let server = &fleet.hosts[0];
    let id = submit(server, "tasker", "chain", r#"{"depth":3}"#);
    server.wait_until(WAIT, "the chain to finish", |_| {
        count(&url, "callback = 'chain' AND status = 'success'") == 3
    });
    let task: Value =
        serde_json::from_str(&server.cli(&["task", &id.to_string(), "--json"])).unwrap();
    let host_id = psql(&url, "SELECT id FROM hosts");
    assert_eq!(task["task"]["host"], Value::from(host_id), "{task}");
    assert_eq!(task["task"]["status"], "success", "{task}");
}

/// Tests that use the server take this shared; the outage test takes it alone.
static SERVER: RwLock<()> = RwLock::new(());

fn shared() -> RwLockReadGuard<'static, ()> {
    SERVER.read().unwrap_or_else(PoisonError::into_inner)
}

/// The database's clock (ms since the epoch), on which leases are kept.
fn db_now(url: &str) -> u64 {
    psql(url, "SELECT fleet_now_ms()").parse().unwrap()
}

fn host_id_of(url: &str, server: &Server) -> String {
    let pid = server.pid();
    server.wait_until(WAIT, "the host's row", |_| {
        !psql(url, &format!("SELECT id FROM hosts WHERE pid = {pid}")).is_empty()
    });
    psql(url, &format!("SELECT id FROM hosts WHERE pid = {pid}"))
}

#[test]
fn three_hosts_run_2000_tasks_and_one_killed_mid_run_loses_none() {
    let _server = shared();
    let url = fresh_database();
    let plugins = plugins_dir();
    install(tasker(), plugins.path(), "libtasker.so");
    let lease_ms = 2000;
    let mut fleet = start_hosts(
        3,
        plugins.path(),
        &url,
        &format!("lease_ms = {lease_ms}\nmax_running = 8\nmax_running_per_plugin = 8"),
        "",
    );
    let victim = host_id_of(&url, &fleet.hosts[0]);
    let ids = insert_tasks(&url, 2000, "tasker", "slow", r#"{"ms":20,"i":{i}}"#);
    assert_eq!(ids.len(), 2000);
    let slow = "callback = 'slow'";
    fleet.hosts[1].wait_until(WAIT, "some tasks done, and the victim running some", |_| {
        count(&url, &format!("{slow} AND status = 'success'")) >= 200
            && count(
                &url,
                &format!("status = 'running' AND host_id = '{victim}'"),
            ) > 0
    });
    fleet.hosts[0].signal(libc::SIGKILL);
    fleet.hosts[0].wait();
    let killed_at = db_now(&url);
    let in_flight: Vec<i64> = psql(
        &url,
        &format!("SELECT id FROM tasks WHERE status = 'running' AND host_id = '{victim}'"),
    )
    .lines()
    .filter_map(|l| l.parse().ok())
    .collect();
    fleet.hosts[1].wait_until(Duration::from_secs(120), "every task to end", |_| {
        count(&url, &format!("{slow} AND status = 'success'")) == 2000
    });
    assert_eq!(count(&url, slow), 2000, "no task lost or added");
    // Only the tasks in flight on the killed host ran twice, and only they.
    let twice: Vec<(i64, u64, String)> = psql(
        &url,
        &format!("SELECT id, started, logs FROM tasks WHERE {slow} AND attempts > 1"),
    )
    .lines()
    .map(|l| {
        let mut parts = l.splitn(3, '|');
        (
            parts.next().unwrap().parse().unwrap(),
            parts.next().unwrap().parse().unwrap(),
            parts.next().unwrap().to_owned(),
        )
    })
    .collect();
    assert!(!twice.is_empty(), "no task was taken back");
    // `host fleet` says which host is gone.
    let listed = host(&[
        "fleet",
        "--json",
        "--config",
        fleet.config.to_str().unwrap(),
    ]);
    let (stdout, stderr) = text(&listed);
    assert!(listed.status.success(), "{stderr}");
    let hosts: Vec<Value> = serde_json::from_str(&stdout).unwrap();
    assert_eq!(hosts.len(), 3, "{stdout}");
    for listed in &hosts {
        let gone = listed["id"].as_str() == Some(victim.as_str());
        assert_eq!(listed["alive"], Value::from(!gone), "{stdout}");
    }
    assert_eq!(count(&url, &format!("{slow} AND attempts > 2")), 0);
    for (id, started, logs) in &twice {
        assert!(
            in_flight.contains(id),
            "task {id} ran twice but was not in flight on {victim}"
        );
        assert!(
            logs.contains(&format!("host {victim} lost its lease")),
            "task {id}: {logs}"
        );
        let after = started.saturating_sub(killed_at);
        assert!(
            after <= 2 * lease_ms,
            "task {id} ran again {after} ms after the kill, over twice the lease ({lease_ms} ms)"
        );
    }
}

#[test]
fn a_host_paused_past_its_lease_cannot_overwrite_the_host_that_took_over() {
    let _server = shared();
    let url = fresh_database();
    let plugins = plugins_dir();
    install(tasker(), plugins.path(), "libtasker.so");
    let config = "lease_ms = 1500";
    let mut first = start_hosts(1, plugins.path(), &url, config, "");
    let paused = host_id_of(&url, &first.hosts[0]);
    let id = submit(&first.hosts[0], "tasker", "slow", r#"{"ms":3000}"#);
    first.hosts[0].wait_until(WAIT, "the task running on the first host", |_| {
        count(
            &url,
            &format!("id = {id} AND status = 'running' AND host_id = '{paused}'"),
        ) == 1
    });
    first.hosts[0].signal(libc::SIGSTOP);
    let second = start_hosts(1, plugins.path(), &url, config, "");
    let taker = host_id_of(&url, &second.hosts[0]);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        second.hosts[0].wait_until(WAIT, "the second host to take the task over", |_| {
            count(&url, &format!("id = {id} AND host_id = '{taker}'")) == 1
        });
    }));
    first.hosts[0].signal(libc::SIGCONT);
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
    first.hosts[0].wait_until(WAIT, "the paused host's outcome refused", |s| {
        s.log()
            .contains(&format!("task {id}: host {paused} lost its lease on it"))
    });
    second.hosts[0].wait_until(WAIT, "the task to succeed", |_| {
        count(&url, &format!("id = {id} AND status = 'success'")) == 1
    });
    // Refused for good: said once (by the runner, from the store's typed error), and not
    // tried again as a failed write.
    let log = first.hosts[0].log();
    assert_eq!(
        log.matches(&format!("task {id}: host {paused} lost its lease on it"))
            .count(),
        1,
        "{log}"
    );
    assert!(
        !log.contains(&format!("cannot record how task {id} ended")),
        "{log}"
    );
    let task: Value =
        serde_json::from_str(&second.hosts[0].cli(&["task", &id.to_string(), "--json"])).unwrap();
    let task = &task["task"];
    assert_eq!(task["host"], Value::from(taker.clone()), "{task}");
    assert_eq!(task["attempts"], 2, "{task}");
    assert!(
        task["logs"].to_string().contains(&format!(
            "taken back by host {taker}: host {paused} lost its lease"
        )),
        "{task}"
    );
}

/// A host keeps its id across restarts (kept in its state directory): `host fleet --json`
/// lists it once, under its new pid; the task it ran when it was killed is taken back as it
/// starts again, without waiting out the (two-minute) lease; and a copy of its state
/// directory started beside it is refused in one line.
#[test]
fn a_restarted_host_keeps_its_id_and_takes_back_its_own_tasks_at_once() {
    let _server = shared();
    let url = fresh_database();
    let plugins = plugins_dir();
    install(tasker(), plugins.path(), "libtasker.so");
    let dirs = tempfile::tempdir().unwrap();
    let (state, clone) = (dirs.path().join("state"), dirs.path().join("clone"));
    let toml = dirs.path().join("host.toml");
    std::fs::write(
        &toml,
        format!("[tasks]\ndatabase = \"{url}\"\nlease_ms = 120000\n"),
    )
    .unwrap();
    let start = |state: &std::path::Path| {
        Server::spawn(
            None,
            plugins.path(),
            &[
                "--config",
                toml.to_str().unwrap(),
                "--state-dir",
                state.to_str().unwrap(),
            ],
            |_| {},
        )
    };
    let answers = |server: &Server| {
        server.wait_until(WAIT, "the host to answer", |s| {
            s.client().and_then(|mut c| c.ping().ok()).is_some()
        });
    };
    let mut first = start(&state);
    answers(&first);
    let id = host_id_of(&url, &first);
    let task = submit(&first, "tasker", "slow", r#"{"ms":3000}"#);
    first.wait_until(WAIT, "the task running", |_| {
        count(&url, &format!("id = {task} AND status = 'running'")) == 1
    });
    first.signal(libc::SIGKILL);
    first.wait();

    let second = start(&state);
    answers(&second);
    second.wait_until(WAIT, "the task to succeed on the restarted host", |_| {
        count(&url, &format!("id = {task} AND status = 'success'")) == 1
    });
    assert_eq!(host_id_of(&url, &second), id);
    let log = second.log();
    assert!(
        log.contains(&format!("fleet: host {id} restarted")),
        "{log}"
    );
    let logs = psql(&url, &format!("SELECT logs FROM tasks WHERE id = {task}"));
    assert!(
        logs.contains(&format!(
            "taken back by host {id}: host {id} restarted during attempt 1"
        )),
        "{logs}"
    );
    let listed = host(&["fleet", "--json", "--database", &url]);
    let (stdout, stderr) = text(&listed);
    assert!(listed.status.success(), "{stderr}");
    let hosts: Vec<Value> = serde_json::from_str(&stdout).unwrap();
    assert_eq!(hosts.len(), 1, "{stdout}");
    assert_eq!(hosts[0]["id"], Value::from(id.clone()), "{stdout}");
    assert_eq!(hosts[0]["pid"], second.pid(), "{stdout}");
    assert_eq!(hosts[0]["alive"], true, "{stdout}");

    // A copy of the state directory, beside the host it was copied from.
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&clone)
        .unwrap();
    std::fs::copy(state.join("host-id"), clone.join("host-id")).unwrap();
    let mut copy = start(&clone);
    let status = copy
        .wait_timeout(Duration::from_secs(30))
        .expect("the copy exits");
    assert!(!status.success());
    let log = copy.log();
    let line = log
        .lines()
        .find(|l| l.contains(&format!("host id {id} is in use by a running host")))
        .unwrap_or_else(|| panic!("not refused: {log}"));
    assert!(
        line.contains(&format!("pid {}", second.pid())) && line.contains("remove its host-id"),
        "{line}"
    );
    assert_eq!(psql(&url, "SELECT count(*) FROM hosts"), "1");
}

#[test]
fn a_schedule_every_second_on_three_hosts_fires_once_a_second() {
    let _server = shared();
    let url = fresh_database();
    let plugins = plugins_dir();
    // tasker declares `tick`, every second.
    install(tasker(), plugins.path(), "libtasker.so");
    let fleet = start_hosts(3, plugins.path(), &url, "", "");
    let ticks = "schedule = 'plugin:tasker.tick'";
    fleet.hosts[0].wait_until(WAIT, "six ticks", |_| count(&url, ticks) >= 6);
    let fires = psql(
        &url,
        "SELECT count(*), count(DISTINCT due) FROM schedule_fires WHERE name = 'plugin:tasker.tick'",
    );
    let (n, distinct) = fires.split_once('|').unwrap();
    assert_eq!(n, distinct, "a due time fired twice");
    let created: Vec<u64> = psql(
        &url,
        &format!("SELECT created FROM tasks WHERE {ticks} ORDER BY created"),
    )
    .lines()
    .map(|l| l.parse().unwrap())
    .collect();
    for pair in created.windows(2) {
        assert!(
            pair[1] - pair[0] >= 500,
            "two ticks {} ms apart: {created:?}",
            pair[1] - pair[0]
        );
    }
}

#[test]
fn the_database_stopped_for_10_s_loses_no_task_and_direct_calls_are_served() {
    let _alone = SERVER.write().unwrap_or_else(PoisonError::into_inner);
    let url = fresh_database();
    let plugins = plugins_dir();
    install(tasker(), plugins.path(), "libtasker.so");
    let fleet = start_hosts(
        2,
        plugins.path(),
        &url,
        "max_running = 2\nmax_running_per_plugin = 2",
        "",
    );
    let ids = insert_tasks(&url, 200, "tasker", "slow", r#"{"ms":50,"i":{i}}"#);
    assert_eq!(ids.len(), 200);
    let slow = "callback = 'slow'";
    fleet.hosts[0].wait_until(WAIT, "some tasks done", |_| {
        count(&url, &format!("{slow} AND status = 'success'")) >= 10
    });
    let mut outage = Outage::begin();
    let started = Instant::now();
    // A host started while the database is down starts, serves direct calls, and joins
    // the fleet when the database answers.
    let late = start_hosts(1, plugins.path(), &url, "", "");
    let answer = late.hosts[0].cli(&["call", "tasker", "echo", "--input", "8"]);
    assert_eq!(answer.trim(), "8");
    let mut calls = 0;
    while started.elapsed() < Duration::from_secs(10) {
        for host in &fleet.hosts {
            let answer = host.cli(&["call", "tasker", "echo", "--input", "7"]);
            assert_eq!(answer.trim(), "7", "a direct call during the outage");
            calls += 1;
        }
    }
    outage.end();
    assert!(calls > 0);
    late.hosts[0].wait_until(WAIT, "the late host to join the fleet", |_| {
        psql(&url, "SELECT count(*) FROM hosts") == "3"
    });
    fleet.hosts[0].wait_until(Duration::from_secs(120), "every task to succeed", |_| {
        count(&url, &format!("{slow} AND status = 'success'")) == 200
    });
    for host in &fleet.hosts {
        let log = host.log();
        let errors = log
            .lines()
            .filter(|l| l.contains("ERROR") && l.contains("tasks database"))
            .count();
        assert_eq!(errors, 1, "the outage is one error line:\n{log}");
        assert!(log.contains("the task store answers again"), "{log}");
    }
}

#[test]
fn a_run_missed_while_every_host_was_down_fires_once() {
    let _server = shared();
    let url = fresh_database();
    let plugins = plugins_dir();
    // tasker declares `tick`, every second.
    install(tasker(), plugins.path(), "libtasker.so");
    let fires = "FROM schedule_fires WHERE name = 'plugin:tasker.tick'";
    let mut first = start_hosts(2, plugins.path(), &url, "", "");
    first.hosts[0].wait_until(WAIT, "a tick", |_| {
        psql(&url, &format!("SELECT count(*) {fires}")) != "0"
    });
    for host in &mut first.hosts {
        host.signal(libc::SIGKILL);
        host.wait();
    }
    let last_due: u64 = psql(&url, &format!("SELECT max(due) {fires}"))
        .parse()
        .unwrap();
    // Down past at least two due times.
    let down = Instant::now();
    while db_now(&url) < last_due + 2_500 {
        assert!(down.elapsed() < WAIT);
        std::thread::sleep(Duration::from_millis(50));
    }
    let restarted = db_now(&url);
    let again = start_hosts(3, plugins.path(), &url, "", "");
    again.hosts[0].wait_until(WAIT, "ticks after the restart", |_| {
        psql(
            &url,
            &format!("SELECT count(*) {fires} AND due > {restarted}"),
        ) != "0"
    });
    let missed = psql(
        &url,
        &format!("SELECT count(*) {fires} AND due > {last_due} AND due <= {restarted}"),
    );
    assert_eq!(
        missed,
        "1",
        "the missed due times fired {missed} times (last due {last_due}, restarted \
         {restarted}): {}\n{}",
        psql(&url, &format!("SELECT due, host_id {fires} ORDER BY due")),
        again.hosts[0].log()
    );
    let counts = psql(
        &url,
        &format!("SELECT count(*), count(DISTINCT due) {fires}"),
    );
    let (n, distinct) = counts.split_once('|').unwrap();
    assert_eq!(n, distinct, "a due time fired twice");
}

#[test]
fn ended_tasks_past_keep_days_are_deleted_in_batches_and_active_ones_kept() {
    let _server = shared();
    let url = fresh_database();
    let plugins = plugins_dir();
    // Migrate, then fill the table as a long-running fleet would have.
    drop(start_hosts(1, plugins.path(), &url, "", ""));
    psql(
        &url,
        "INSERT INTO tasks (plugin, callback, input, key, priority, status, max_attempts, \
         retry_delays_ms, not_before, created, finished, depth) \
         SELECT 'tasker', 'echo', '1', 'old' || i, 0, 'success', 4, '[]', 0, 0, 1, 0 \
         FROM generate_series(1, 2500) i",
    );
    psql(
        &url,
        "INSERT INTO tasks (plugin, callback, input, key, priority, status, max_attempts, \
         retry_delays_ms, not_before, created, depth) \
         VALUES ('gone', 'echo', '1', 'waiting', 0, 'queued', 4, '[]', 0, 0, 0)",
    );
    // A host prunes at start: 2,500 rows take three statements of at most 1,000.
    let fleet = start_hosts(
        1,
        plugins.path(),
        &url,
        "keep_days = 1\norphan_after = \"0s\"",
        "",
    );
    fleet.hosts[0].wait_until(WAIT, "the old tasks deleted", |_| {
        count(&url, "status = 'success'") == 0
    });
    assert_eq!(
        count(&url, "status = 'queued'"),
        1,
        "an active task was deleted"
    );
    fleet.hosts[0].wait_until(WAIT, "the deletion logged", |s| {
        s.log().contains("deleted 2500 ended tasks")
    });
}

/// `GET /v1/fleet` of a host with a fleet database and the HTTP API lists the fleet's
/// hosts as `host fleet --json` does (it answered 400 `not_configured` before the fleet
/// was wired to it).
#[test]
fn the_http_api_lists_the_fleet() {
    let _server = shared();
    let url = fresh_database();
    let plugins = plugins_dir();
    let fleet = start_hosts(
        2,
        plugins.path(),
        &url,
        "",
        "[http]\nlisten = \"127.0.0.1:0\"",
    );
    let server = &fleet.hosts[0];
    // The token file is logged before the address: both are there once the address is.
    let base = server.http_base();
    let log = server.log();
    let token_file = log
        .split("http: made a token in ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no token file in the log: {log}"));
    let token = std::fs::read_to_string(token_file).unwrap();
    let ids = [
        host_id_of(&url, &fleet.hosts[0]),
        host_id_of(&url, &fleet.hosts[1]),
    ];
    let mut response = e2e::http_agent(Duration::from_secs(30))
        .get(format!("{base}/v1/fleet"))
        .header("Authorization", format!("Bearer {}", token.trim()))
        .call()
        .unwrap();
    let text = response.body_mut().read_to_string().unwrap();
    assert_eq!(response.status().as_u16(), 200, "{text}");
    let hosts: Value = serde_json::from_str(&text).unwrap();
    let listed: Vec<&str> = hosts
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["alive"] == true)
        .filter_map(|h| h["id"].as_str())
        .collect();
    for id in &ids {
        assert!(listed.contains(&id.as_str()), "{id} missing: {hosts}");
    }
    // Each host also says what it made of the catalogue's plugins: none published here.
    for host in hosts.as_array().unwrap() {
        assert_eq!(host["published"], serde_json::json!([]), "{hosts}");
    }
}
