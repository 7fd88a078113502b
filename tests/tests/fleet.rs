//! A fleet of hosts on one PostgreSQL database (the server `.ci/test` starts): each test
//! has a database of its own and real `host serve` processes.

use std::time::Duration;

use e2e::postgres::{count, fresh_database, psql, start_hosts};
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
        log.contains("has schema version 999, this host knows version 1 at most"),
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
