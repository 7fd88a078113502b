//! Tasks (issue 12): the host runs follow-ups, schedules and retries, and keeps a record of
//! every task in its database, which survives a SIGKILL.

use std::fs;
use std::path::Path;
use std::time::Duration;

use e2e::{fanout, host, install, plugins_dir, tasker, text, Server};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);

/// `host serve` on tasker (and fanout), with `config` as its host.toml and its own state
/// directory `state`.
fn serve(dir: &Path, state: &Path, config: &str) -> Server {
    install(tasker(), dir, "libtasker.so");
    install(fanout(), dir, "libfanout.so");
    let server = Server::start_with_state(dir, state, config);
    server.wait_until(WAIT, "tasker", |s| s.call("tasker", "echo", "1").is_ok());
    server
}

/// `host submit PLUGIN CALLBACK --input INPUT EXTRA...`: the id of the task queued.
fn submit(server: &Server, plugin: &str, callback: &str, input: &str, extra: &[&str]) -> i64 {
    let mut args = vec!["submit", plugin, callback, "--input", input];
    args.extend_from_slice(extra);
    let out = server.cli(&args);
    out.trim()
        .strip_prefix("queued task ")
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("not queued: {out}"))
}

/// `host tasks --json` with `filter` arguments.
fn tasks(server: &Server, filter: &[&str]) -> Vec<Value> {
    let mut args = vec!["tasks", "--json", "--limit", "10000"];
    args.extend_from_slice(filter);
    serde_json::from_str(&server.cli(&args)).expect("tasks are JSON")
}

/// `host task ID --json`.
fn task(server: &Server, id: i64) -> Value {
    serde_json::from_str(&server.cli(&["task", &id.to_string(), "--json"])).unwrap()
}

fn status(server: &Server, id: i64) -> String {
    task(server, id)["task"]["status"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn wait_status(server: &Server, id: i64, expected: &str) {
    server.wait_until(WAIT, &format!("task {id} to be {expected}"), |s| {
        status(s, id) == expected
    });
}

#[test]
fn a_chain_of_follow_ups_three_deep_runs_to_completion() {
    let (dir, state) = (plugins_dir(), tempfile::tempdir().unwrap());
    let server = serve(dir.path(), state.path(), "");
    let id = submit(&server, "tasker", "chain", r#"{"depth":3}"#, &[]);
    server.wait_until(WAIT, "the chain to finish", |s| {
        let all = tasks(s, &["--plugin", "tasker", "--status", "success"]);
        all.iter().filter(|t| t["callback"] == "chain").count() == 3
    });
    let tree = task(&server, id);
    assert_eq!(tree["task"]["result"], r#"{"depth":3}"#);
    // On SQLite one host owns the file: it is named as the host that ran each task.
    assert!(
        tree["task"]["host"].as_str().is_some_and(|h| !h.is_empty()),
        "{tree}"
    );
    let child = &tree["children"][0];
    assert_eq!(child["task"]["parent"], id);
    assert_eq!(child["task"]["depth"], 1);
    let grandchild = &child["children"][0];
    assert_eq!(grandchild["task"]["result"], r#"{"depth":1}"#);
    assert_eq!(grandchild["task"]["depth"], 2);
    assert!(grandchild["children"].as_array().unwrap().is_empty());
    // As text: the follow-ups as a tree.
    let shown = server.cli(&["task", &id.to_string()]);
    assert!(
        shown.starts_with(&format!("task {id}: success (attempt 1 of 4)")),
        "{shown}"
    );
    assert!(shown.contains("follow-ups:\n  "), "{shown}");
    assert!(
        shown.contains("success tasker.chain: {\"depth\":1}"),
        "{shown}"
    );

    // The README's example: a fan-out over a list, read back with `host tasks`.
    let id = submit(
        &server,
        "fanout",
        "execute",
        r#"{"items":["a","bb","ccc"]}"#,
        &[],
    );
    server.wait_until(WAIT, "the fan-out", |s| {
        task(s, id)["children"]
            .as_array()
            .is_some_and(|c| c.len() == 3 && c.iter().all(|c| c["task"]["status"] == "success"))
    });
    let lengths: Vec<String> = task(&server, id)["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["task"]["result"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        lengths,
        [
            r#"{"item":"a","length":1}"#,
            r#"{"item":"bb","length":2}"#,
            r#"{"item":"ccc","length":3}"#
        ]
    );
    let table = server.cli(&["tasks", "--plugin", "fanout"]);
    assert!(table.starts_with("ID "), "{table}");
    assert_eq!(
        table.lines().filter(|l| l.contains(" measure ")).count(),
        3,
        "{table}"
    );
}

#[test]
fn a_callback_that_fails_twice_is_retried_with_the_configured_delays() {
    let (dir, state) = (plugins_dir(), tempfile::tempdir().unwrap());
    let server = serve(
        dir.path(),
        state.path(),
        "[tasks]\nmin_retry_delay = \"100ms\"\n\
         [plugins.tasker]\ntask_retry_delays = [\"300ms\", \"600ms\"]\n",
    );
    let id = submit(&server, "tasker", "flaky", r#"{"key":"db","fail":2}"#, &[]);
    wait_status(&server, id, "success");
    let record = &task(&server, id)["task"];
    assert_eq!(record["attempts"], 3);
    assert_eq!(record["result"], r#"{"attempt":3}"#);
    // The delays were waited: 300 ms, then 600 ms, each within ±10%.
    let waited =
        record["finished_unix_ms"].as_u64().unwrap() - record["created_unix_ms"].as_u64().unwrap();
    assert!(waited >= 810, "finished {waited} ms after it was made");
    let log = server.log();
    assert!(
        log.contains("attempt 1 of 4 failed, retrying in ")
            && log.contains(" (300ms ±10%): db is down (attempt 1)"),
        "{log}"
    );
    assert!(
        log.contains(" (600ms ±10%): db is down (attempt 2)"),
        "{log}"
    );

    // Out of attempts: failed, with the last error.
    let id = submit(
        &server,
        "tasker",
        "flaky",
        r#"{"key":"gone","fail":100}"#,
        &["--max-attempts", "2", "--retry-delays", "10ms"],
    );
    wait_status(&server, id, "failed");
    let record = &task(&server, id)["task"];
    assert_eq!(record["attempts"], 2);
    assert!(record["error"]
        .as_str()
        .unwrap()
        .contains("gone is down (attempt 2)"));

    // A callback that does not exist: bad once its attempts run out (a plugin not served is
    // waited for: see task_defects.rs).
    let id = submit(
        &server,
        "tasker",
        "nosuch",
        "null",
        &["--max-attempts", "1"],
    );
    wait_status(&server, id, "bad");
    assert_eq!(task(&server, id)["task"]["attempts"], 1);
}

#[test]
fn retries_without_delays_wait_the_minimum_instead_of_looping() {
    // `retry_delays = []` used to retry at once: three attempts in a few milliseconds.
    let (dir, state) = (plugins_dir(), tempfile::tempdir().unwrap());
    let server = serve(dir.path(), state.path(), "[tasks]\nretry_delays = []\n");
    let id = submit(
        &server,
        "tasker",
        "flaky",
        r#"{"key":"hot","fail":100}"#,
        &["--max-attempts", "3"],
    );
    wait_status(&server, id, "failed");
    let record = &task(&server, id)["task"];
    assert_eq!(record["attempts"], 3);
    // Two retries, each at least min_retry_delay (default 1 s): never sooner.
    let waited =
        record["finished_unix_ms"].as_u64().unwrap() - record["created_unix_ms"].as_u64().unwrap();
    assert!(waited >= 2_000, "3 attempts within {waited} ms");
    let log = server.log();
    assert!(
        log.contains("(0s raised to min_retry_delay 1s, ±10%): hot is down (attempt 1)"),
        "{log}"
    );
}

#[test]
fn a_key_is_queued_once_and_age_skips_what_succeeded_recently() {
    let (dir, state) = (plugins_dir(), tempfile::tempdir().unwrap());
    let server = serve(dir.path(), state.path(), "");
    let first = submit(
        &server,
        "tasker",
        "slow",
        r#"{"ms":300}"#,
        &["--key", "nightly"],
    );
    let again = server.cli(&[
        "submit",
        "tasker",
        "slow",
        "--input",
        r#"{"ms":1}"#,
        "--key",
        "nightly",
    ]);
    assert_eq!(
        again.trim(),
        format!("not queued: task {first}, with the same key, is queued or running")
    );
    // The default key is plugin, callback and input.
    let echo = submit(
        &server,
        "tasker",
        "echo",
        r#"{"a":1,"b":2}"#,
        &["--at", "+1h"],
    );
    let same = server.cli(&["submit", "tasker", "echo", "--input", r#"{"b":2,"a":1}"#]);
    assert!(
        same.contains(&format!("task {echo}, with the same key")),
        "{same}"
    );
    assert!(server
        .cli(&["tasks", "--status", "queued"])
        .contains("queued (in 59m"));

    wait_status(&server, first, "success");
    let skipped = server.cli(&[
        "submit", "tasker", "slow", "--input", "{}", "--key", "nightly", "--age", "1h",
    ]);
    let skipped_id: i64 = skipped
        .trim()
        .strip_prefix("skipped (task ")
        .and_then(|s| s.split(')').next())
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("{skipped}"));
    let record = &task(&server, skipped_id)["task"];
    assert_eq!(record["status"], "skipped");
    assert!(
        record["error"]
            .as_str()
            .unwrap()
            .contains(&format!("task {first}")),
        "{record}"
    );
    // Without an age, a key that ended may run again.
    let rerun = submit(
        &server,
        "tasker",
        "slow",
        r#"{"ms":1}"#,
        &["--key", "nightly"],
    );
    wait_status(&server, rerun, "success");
}

#[test]
fn schedules_fire_on_time_start_with_their_plugin_and_stop_when_it_is_unloaded() {
    let (dir, state) = (plugins_dir(), tempfile::tempdir().unwrap());
    let server = serve(
        dir.path(),
        state.path(),
        "[[schedule]]\nplugin = \"tasker\"\ncallback = \"echo\"\ninput = { from = \"host.toml\" }\nevery = \"1s\"\n",
    );
    let ticks = |s: &Server, schedule: &str| -> Vec<u64> {
        let mut times: Vec<u64> = tasks(s, &["--plugin", "tasker"])
            .iter()
            .filter(|t| t["schedule"] == schedule && t["status"] == "success")
            .map(|t| t["created_unix_ms"].as_u64().unwrap())
            .collect();
        times.sort_unstable();
        times
    };
    server.wait_until(WAIT, "three ticks of each schedule", |s| {
        ticks(s, "plugin:tasker.tick").len() >= 3 && ticks(s, "tasker.echo").len() >= 3
    });
    for schedule in ["plugin:tasker.tick", "tasker.echo"] {
        let times = ticks(&server, schedule);
        for pair in times.windows(2) {
            let gap = pair[1] - pair[0];
            assert!(
                (700..=1600).contains(&gap),
                "{schedule}: ticks {gap} ms apart: {times:?}"
            );
        }
    }
    let echoed = tasks(&server, &["--plugin", "tasker"])
        .into_iter()
        .find(|t| t["schedule"] == "tasker.echo")
        .unwrap();
    assert_eq!(echoed["result"], r#"{"from":"host.toml"}"#);
    // The plugin's own schedule stops with it.
    fs::remove_file(dir.path().join("libtasker.so")).unwrap();
    server.wait_until(WAIT, "the schedule to stop", |s| {
        s.log().contains("schedule stopped")
    });
    let before = ticks(&server, "plugin:tasker.tick").len();
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(ticks(&server, "plugin:tasker.tick").len(), before);
}

#[test]
fn a_host_killed_mid_queue_loses_no_task_and_runs_the_interrupted_ones_again() {
    let (dir, state) = (plugins_dir(), tempfile::tempdir().unwrap());
    let config = "[tasks]\nmax_running = 2\n";
    let mut server = serve(dir.path(), state.path(), config);
    let ids: Vec<i64> = (0..40)
        .map(|i| {
            submit(
                &server,
                "tasker",
                "slow",
                &format!(r#"{{"ms":100,"i":{i}}}"#),
                &[],
            )
        })
        .collect();
    // tasker's own `tick` schedule runs too: count `slow` only.
    let slow_done = |s: &Server| {
        tasks(s, &["--status", "success"])
            .iter()
            .filter(|t| t["callback"] == "slow")
            .count()
    };
    let ticks = |s: &Server| -> Vec<u64> {
        tasks(s, &["--plugin", "tasker"])
            .iter()
            .filter(|t| t["schedule"] == "plugin:tasker.tick")
            .filter_map(|t| t["created_unix_ms"].as_u64())
            .collect()
    };
    server.wait_until(WAIT, "a few tasks and a tick to finish", |s| {
        slow_done(s) >= 4 && !ticks(s).is_empty()
    });
    // The plugin's `tick` fires every second: stay down past its next firing.
    let last_tick = ticks(&server).into_iter().max().unwrap_or_default();
    server.signal(libc::SIGKILL);
    server.wait();
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };
    while now() < last_tick + 1100 {
        std::thread::sleep(Duration::from_millis(20));
    }
    let server = serve(dir.path(), state.path(), config);
    server.wait_until(WAIT, "every task to finish", |s| slow_done(s) == ids.len());
    for id in &ids {
        assert_eq!(status(&server, *id), "success");
    }
    let log = server.log();
    assert!(
        log.contains("were running when the host last stopped: queued again"),
        "{log}"
    );
    assert!(
        log.lines().any(|l| l.contains("schedule started")
            && l.contains("missed while the host was down: now")
            && l.contains("plugin:tasker.tick")),
        "{log}"
    );
    assert!(
        tasks(&server, &[])
            .iter()
            .any(|t| t["attempts"].as_u64() == Some(2)),
        "no task ran twice: was none running at the kill?"
    );
}

#[test]
fn runaway_follow_ups_stop_at_the_limits_and_are_recorded_as_refused() {
    let (dir, state) = (plugins_dir(), tempfile::tempdir().unwrap());
    let server = serve(
        dir.path(),
        state.path(),
        "[tasks]\nmax_depth = 3\nmax_follow_ups_per_call = 50\n",
    );
    submit(&server, "tasker", "runaway", r#"{"path":""}"#, &[]);
    // Depths 0 to 3 run: 1 + 2 + 4 + 8; the 16 asked for at depth 4 are refused.
    server.wait_until(WAIT, "the runaway to stop", |s| {
        let all: Vec<Value> = tasks(s, &["--plugin", "tasker"])
            .into_iter()
            .filter(|t| t["callback"] == "runaway")
            .collect();
        all.iter().filter(|t| t["status"] == "success").count() == 15
            && all.iter().filter(|t| t["status"] == "refused").count() == 16
    });
    let refused = tasks(&server, &["--status", "refused"]);
    assert!(refused.iter().all(|t| t["depth"] == 4
        && t["error"]
            .as_str()
            .unwrap()
            .contains("over the limit of 3 (max_depth)")));

    // Past twice the limit, refused follow-ups are counted in the parent's logs, not
    // recorded one by one.
    let id = submit(&server, "tasker", "burst", r#"{"n":120}"#, &[]);
    server.wait_until(WAIT, "the burst", |s| {
        let children = task(s, id)["children"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        children.len() == 100
            && children
                .iter()
                .filter(|c| c["task"]["status"] == "success")
                .count()
                == 50
    });
    let tree = task(&server, id);
    let children = tree["children"].as_array().cloned().unwrap();
    let refused: Vec<_> = children
        .iter()
        .filter(|c| c["task"]["status"] == "refused")
        .collect();
    assert_eq!(refused.len(), 50);
    assert!(refused[0]["task"]["error"]
        .as_str()
        .unwrap()
        .contains("follow-up 51 of one call, over the limit of 50 (max_follow_ups_per_call)"));
    let logs = tree["task"]["logs"].as_array().unwrap();
    let line = logs.last().unwrap()["message"].as_str().unwrap();
    assert_eq!(
        line,
        "70 of its 120 follow-ups were refused (see its children); the 20 past the first 100 \
         are counted here, not recorded one by one"
    );
    // A follow-up that cannot be a task at all is recorded as refused too.
    let id = submit(&server, "tasker", "misdirect", "null", &[]);
    wait_status(&server, id, "success");
    let child = &task(&server, id)["children"][0]["task"];
    assert_eq!(child["status"], "refused");
    assert_eq!(child["plugin"], "no such plugin!");
    assert_eq!(
        child["error"],
        "refused: invalid plugin name \"no such plugin!\""
    );
}

#[test]
fn cancel_and_retry() {
    let (dir, state) = (plugins_dir(), tempfile::tempdir().unwrap());
    let server = serve(dir.path(), state.path(), "");
    let later = submit(&server, "tasker", "echo", "1", &["--at", "+1h"]);
    assert_eq!(
        server.cli(&["cancel", &later.to_string()]).trim(),
        format!("cancelled task {later}")
    );
    assert_eq!(status(&server, later), "cancelled");
    let slow = submit(&server, "tasker", "slow", r#"{"ms":20000}"#, &[]);
    wait_status(&server, slow, "running");
    let said = server.cli(&["cancel", &slow.to_string()]);
    assert_eq!(
        said.trim(),
        format!("task {slow} is running: its call was told to cancel")
    );
    wait_status(&server, slow, "cancelled");
    let said = server.cli(&["retry", &later.to_string()]);
    assert_eq!(
        said.trim(),
        format!("task {later} (cancelled) queued again")
    );
    wait_status(&server, later, "success");
    let output = host(&["cancel", "999", "--socket", server.socket.to_str().unwrap()]);
    let (_, stderr) = text(&output);
    assert!(!output.status.success());
    assert_eq!(stderr.trim(), "error: no task 999");
}

#[test]
fn a_corrupt_or_locked_database_is_one_line_and_direct_calls_are_still_served() {
    // Corrupt.
    let (dir, state) = (plugins_dir(), tempfile::tempdir().unwrap());
    fs::write(state.path().join("tasks.db"), vec![0x5a; 8192]).unwrap();
    let server = serve(dir.path(), state.path(), "");
    let line = server
        .log()
        .lines()
        .find(|l| l.contains("tasks are unavailable"))
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("{}", server.log()));
    assert!(line.contains("tasks.db"), "{line}");
    assert_eq!(server.call("tasker", "echo", "7").unwrap(), 7);
    let output = host(&[
        "submit",
        "tasker",
        "echo",
        "--socket",
        server.socket.to_str().unwrap(),
    ]);
    let (_, stderr) = text(&output);
    assert!(!output.status.success());
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("tasks are unavailable: task database"),
        "{stderr}"
    );
    drop(server);

    // Locked by another process for as long as the host starts.
    let (dir, state) = (plugins_dir(), tempfile::tempdir().unwrap());
    let db = state.path().join("tasks.db");
    let holder = rusqlite::Connection::open(&db).unwrap();
    holder
        .execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE other(x); BEGIN EXCLUSIVE; INSERT INTO other VALUES (1);")
        .unwrap();
    let server = serve(dir.path(), state.path(), "");
    server.wait_until(WAIT, "the refusal", |s| {
        s.log().contains("tasks are unavailable")
    });
    let log = server.log();
    let line = log
        .lines()
        .find(|l| l.contains("tasks are unavailable"))
        .unwrap();
    assert!(line.contains("locked"), "{line}");
    assert_eq!(server.call("tasker", "echo", "8").unwrap(), 8);
    drop(holder);
}

#[test]
fn a_plugin_runs_no_more_tasks_at_once_than_its_own_limit() {
    let (dir, state) = (plugins_dir(), tempfile::tempdir().unwrap());
    let server = serve(
        dir.path(),
        state.path(),
        "[plugins.tasker]\nmax_running_tasks = 1\n",
    );
    let ids: Vec<i64> = (0..4)
        .map(|i| {
            submit(
                &server,
                "tasker",
                "slow",
                &format!(r#"{{"ms":300,"i":{i}}}"#),
                &[],
            )
        })
        .collect();
    let slow_running = |s: &Server| {
        tasks(s, &["--status", "running"])
            .iter()
            .filter(|t| t["callback"] == "slow")
            .count()
    };
    server.wait_until(WAIT, "a task to run", |s| slow_running(s) > 0);
    loop {
        let running = slow_running(&server);
        assert!(
            running <= 1,
            "{running} of its tasks run at once, over its limit of 1"
        );
        if ids.iter().all(|id| status(&server, *id) == "success") {
            break;
        }
    }
}
