//! A real PostgreSQL server for the fleet's tests: the one `.ci/test` starts (it exports
//! `E2E_DATABASE_URL`, `E2E_PG_BINDIR`, `E2E_PG_DATA`, `E2E_PG_USER`, `E2E_PG_PORT`). Each
//! test gets a database of its own ([`fresh_database`]), and starts hosts on it
//! ([`start_hosts`]).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::Server;

/// An environment variable `.ci/test` exports; a clear panic when it is unset.
pub fn env(name: &str) -> String {
    match std::env::var(name) {
        Ok(value) if !value.is_empty() => value,
        _ => panic!(
            "{name} is not set: run the fleet's tests with `.ci/test -p e2e --test fleet`, \
             which starts a throwaway PostgreSQL server and exports it"
        ),
    }
}

/// `psql` of the server's binaries.
fn psql_path() -> PathBuf {
    Path::new(&env("E2E_PG_BINDIR")).join("psql")
}

/// Runs `sql` on the database at `url` with psql; its output, unaligned, tuples only.
pub fn psql(url: &str, sql: &str) -> String {
    let output = Command::new(psql_path())
        .args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-d", url, "-c", sql])
        .output()
        .expect("psql runs");
    assert!(
        output.status.success(),
        "psql {sql:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// A new, empty database on the server (`t_<pid>_<n>`); its URL.
pub fn fresh_database() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let admin = env("E2E_DATABASE_URL");
    let name = format!(
        "t_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    psql(&admin, &format!("CREATE DATABASE {name}"));
    match admin.rsplit_once('/') {
        Some((server, _)) => format!("{server}/{name}"),
        None => panic!("E2E_DATABASE_URL {admin:?} names no database"),
    }
}

/// Hosts of one fleet: `host serve` processes on one database, each with its own socket
/// and state directory, killed when dropped.
pub struct Fleet {
    pub hosts: Vec<Server>,
    /// Their host.toml.
    pub config: PathBuf,
    _config: tempfile::TempDir,
}

/// Starts `n` hosts serving `plugins` on the database at `url`, at once, with `tasks`
/// added to their `[tasks]` table (e.g. `lease_ms = 2000`) and `rest` after it (e.g.
/// `[[schedule]]` tables); waits until every one answers.
pub fn start_hosts(n: usize, plugins: &Path, url: &str, tasks: &str, rest: &str) -> Fleet {
    let config = tempfile::tempdir().expect("temp dir");
    let toml = config.path().join("host.toml");
    std::fs::write(
        &toml,
        format!("[tasks]\ndatabase = \"{url}\"\n{tasks}\n{rest}\n"),
    )
    .expect("write host.toml");
    let path = toml.clone();
    let toml = toml.to_str().expect("a UTF-8 path").to_owned();
    let hosts: Vec<Server> = (0..n)
        .map(|_| Server::spawn(None, plugins, &["--config", &toml], |_| {}))
        .collect();
    for host in &hosts {
        host.wait_until(Duration::from_secs(30), "the host to answer", |s| {
            s.client().and_then(|mut c| c.ping().ok()).is_some()
        });
    }
    Fleet {
        hosts,
        config: path,
        _config: config,
    }
}

/// Queues `n` tasks of `plugin.callback` straight into the fleet's tasks table (as a
/// host's submit would, without `n` CLI processes), with input `input` where `{i}` is the
/// task's number; their ids, in order.
pub fn insert_tasks(url: &str, n: usize, plugin: &str, callback: &str, input: &str) -> Vec<i64> {
    let input = input.replace('\'', "''").replace("{i}", "' || i || '");
    let ids = psql(
        url,
        &format!(
            "INSERT INTO tasks (plugin, callback, input, key, priority, status, max_attempts, \
             retry_delays_ms, not_before, created, depth) \
             SELECT '{plugin}', '{callback}', '{input}', 'bulk:' || i || ':' || random(), 0, \
             'queued', 4, '[1000]', 0, fleet_now_ms(), 0 FROM generate_series(1, {n}) i \
             RETURNING id; NOTIFY host_tasks"
        ),
    );
    ids.lines().filter_map(|l| l.trim().parse().ok()).collect()
}

/// How many tasks of the fleet's database have `status` (all: `None`).
pub fn count(url: &str, filter: &str) -> usize {
    psql(url, &format!("SELECT count(*) FROM tasks WHERE {filter}"))
        .parse()
        .unwrap_or(0)
}

/// The test server stopped (`pg_ctl stop`) until [`Outage::end`], or until dropped: the
/// server is started again whatever the test does.
pub struct Outage {
    stopped: bool,
}

impl Outage {
    /// Stops the server `.ci/test` started (fast shutdown: connections are cut).
    pub fn begin() -> Outage {
        pg_ctl(&["stop", "-m", "fast"]);
        Outage { stopped: true }
    }

    /// Starts it again with the options `.ci/test` used, and waits until it answers.
    pub fn end(&mut self) {
        if !std::mem::replace(&mut self.stopped, false) {
            return;
        }
        let data = PathBuf::from(env("E2E_PG_DATA"));
        let dir = data.parent().unwrap_or(&data).to_owned();
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c max_connections=400 -c fsync=off \
             -c synchronous_commit=off -c full_page_writes=off",
            env("E2E_PG_PORT"),
            dir.display()
        );
        let log = dir.join("server.log");
        pg_ctl(&[
            "start",
            "-l",
            log.to_str().expect("a UTF-8 path"),
            "-o",
            &options,
        ]);
    }
}

impl Drop for Outage {
    fn drop(&mut self) {
        self.end();
    }
}

/// `pg_ctl -D DATA -w ARGS`, as the server's user (through runuser when root).
fn pg_ctl(args: &[&str]) {
    let pg_ctl = Path::new(&env("E2E_PG_BINDIR")).join("pg_ctl");
    let data = env("E2E_PG_DATA");
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let mut command = if root {
        let mut c = Command::new("runuser");
        c.args(["-u", &env("E2E_PG_USER"), "--"]).arg(&pg_ctl);
        c
    } else {
        Command::new(&pg_ctl)
    };
    command.args(["-D", &data, "-w"]).args(args);
    let output = command.output().expect("pg_ctl runs");
    assert!(
        output.status.success(),
        "pg_ctl {args:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
