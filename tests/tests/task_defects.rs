//! Task store defects (issue 16, items b, f, g, h, n): a task that kills the host, an
//! outcome that cannot be written, a plugin unloaded for a moment or never served, task
//! listings without bounds, and task input that lost precision.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use e2e::{built, host, install, plugins_dir, tasker, text, Server};
use host::control::Client;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);

/// `host serve` on tasker, with `config` as its host.toml and `state` as its state
/// directory.
fn serve(dir: &Path, state: &Path, config: &str) -> Server {
    install(tasker(), dir, "libtasker.so");
    let server = Server::start_with_state(dir, state, config);
    server.wait_until(WAIT, "tasker", |s| s.call("tasker", "echo", "1").is_ok());
    server
}

/// Runs `host ARGS --socket SOCKET`.
fn run(socket: &Path, args: &[&str]) -> Output {
    let mut all = args.to_vec();
    all.extend(["--socket", socket.to_str().unwrap()]);
    host(&all)
}

/// Runs `host ARGS --socket SOCKET`; its stdout, or a panic with its stderr.
fn cli(socket: &Path, args: &[&str]) -> String {
    let output = run(socket, args);
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "host {args:?}: {stderr}");
    stdout
}

/// The id in `queued task N`.
fn queued_id(out: &str) -> i64 {
    out.trim()
        .strip_prefix("queued task ")
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("not queued: {out}"))
}

/// `host submit PLUGIN CALLBACK --input INPUT EXTRA...`: the id of the task queued.
fn submit(socket: &Path, plugin: &str, callback: &str, input: &str, extra: &[&str]) -> i64 {
    let mut args = vec!["submit", plugin, callback, "--input", input];
    args.extend_from_slice(extra);
    queued_id(&cli(socket, &args))
}

/// `host tasks --json` with `filter` arguments.
fn tasks(socket: &Path, filter: &[&str]) -> Vec<Value> {
    let mut args = vec!["tasks", "--json", "--limit", "10000"];
    args.extend_from_slice(filter);
    serde_json::from_str(&cli(socket, &args)).expect("tasks are JSON")
}

/// Task `id`'s record (`host task ID --json`).
fn task(socket: &Path, id: i64) -> Value {
    let tree: Value =
        serde_json::from_str(&cli(socket, &["task", &id.to_string(), "--json"])).unwrap();
    tree["task"].clone()
}

fn status(socket: &Path, id: i64) -> String {
    task(socket, id)["status"].as_str().unwrap().to_owned()
}

fn wait_status(server: &Server, id: i64, expected: &str) {
    server.wait_until(WAIT, &format!("task {id} to be {expected}"), |s| {
        status(&s.socket, id) == expected
    });
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A `host serve` started without waiting for it to answer: it may die first. Its
/// private copies go to a temporary directory of its own, removed with it.
struct Started {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Started {
    fn new(plugins: &Path, config: &Path, state: &Path) -> Started {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("host.sock");
        let log = dir.path().join("serve.log");
        let tmp = dir.path().join("tmp");
        fs::create_dir(&tmp).unwrap();
        let child = Command::new(&built().host)
            .arg("serve")
            .arg("--plugins")
            .arg(plugins)
            .arg("--socket")
            .arg(&socket)
            .arg("--config")
            .arg(config)
            .arg("--state-dir")
            .arg(state)
            .env("RUST_LOG", "info")
            .env("TMPDIR", &tmp)
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .expect("host serve starts");
        Started {
            child,
            socket,
            log,
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Polls until the process exits (its status) or `ready` holds (`None`), for at most
    /// [`WAIT`].
    fn exit_or(&mut self, what: &str, mut ready: impl FnMut(&Path) -> bool) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            let answers = Client::connect(&self.socket)
                .ok()
                .and_then(|mut c| c.ping().ok())
                .is_some();
            if answers && ready(&self.socket) {
                return None;
            }
            assert!(
                start.elapsed() < WAIT,
                "timed out waiting for {what}; host log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_task_that_kills_the_host_fails_after_its_attempts_and_the_host_starts_normally() {
    let (dir, state) = (plugins_dir(), tempfile::tempdir().unwrap());
    install(tasker(), dir.path(), "libtasker.so");
    let config = dir.path().join("host.toml");
    fs::write(&config, "[tasks]\nmax_attempts = 3\n").unwrap();

    // The first host takes the task and dies with it.
    let mut first = Started::new(dir.path(), &config, state.path());
    first.exit_or("the host to answer", |_| true);
    let id = submit(&first.socket, "tasker", "die", "null", &["--at", "+1s"]);
    let died = first.exit_or("the host to die running the task", |_| false);
    assert!(died.is_some_and(|s| !s.success()), "{died:?}");

    // Attempts 2 and 3: each start takes it again, and dies.
    for start in 2..=3 {
        let mut host = Started::new(dir.path(), &config, state.path());
        let died = host.exit_or(&format!("start {start} to die"), |_| false);
        assert!(died.is_some(), "start {start}");
    }

    // Its attempts are spent: the next host records it failed, and serves.
    let mut last = Started::new(dir.path(), &config, state.path());
    let died = last.exit_or("the task to be failed", |socket| {
        status(socket, id) == "failed"
    });
    assert!(
        died.is_none(),
        "the host died again at its 4th start ({died:?}): the task ran a 4th time; log:\n{}",
        last.log()
    );
    let record = task(&last.socket, id);
    assert_eq!(record["attempts"], 3, "{record}");
    assert_eq!(
        record["error"], "the host stopped during this attempt 3 times",
        "{record}"
    );
    assert!(last.child.try_wait().unwrap().is_none(), "the host serves");
    let echoed = submit(&last.socket, "tasker", "echo", "5", &[]);
    last.exit_or("a task to run", |socket| {
        status(socket, echoed) == "success"
    });
    assert!(
        last.log()
            .contains("were running when the host last stopped"),
        "{}",
        last.log()
    );
}

#[test]
fn a_plugin_unloaded_for_a_moment_keeps_its_due_tasks_queued() {
    let (dir, state) = (plugins_dir(), tempfile::tempdir().unwrap());
    let server = serve(dir.path(), state.path(), "");
    let socket = server.socket.clone();
    let before = now_ms();
    let ids: Vec<i64> = (0..20)
        .map(|i| {
            submit(
                &socket,
                "tasker",
                "echo",
                &format!(r#"{{"i":{i}}}"#),
                &["--at", "+2s"],
            )
        })
        .collect();
    let due = before + 2_000;
    fs::remove_file(dir.path().join("libtasker.so")).unwrap();
    server.wait_until(WAIT, "tasker to be unloaded", |s| {
        s.call("tasker", "echo", "1").is_err()
    });
    // Due, and the dispatcher has looked at them a few times (it looks every 250 ms).
    server.wait_until(WAIT, "the tasks to be due for a second", |_| {
        now_ms() > due + 1_000
    });
    for id in &ids {
        let record = task(&socket, *id);
        assert_eq!(
            record["status"], "queued",
            "task {id}, due while its plugin was not served: {record}"
        );
    }
    install(tasker(), dir.path(), "libtasker.so");
    for id in &ids {
        wait_status(&server, *id, "success");
        assert_eq!(task(&socket, *id)["attempts"], 1);
    }
}

#[test]
fn a_plugin_not_served_is_waited_for_and_an_unknown_callback_is_retried() {
    let (dir, state) = (plugins_dir(), tempfile::tempdir().unwrap());
    let server = serve(dir.path(), state.path(), "");
    let socket = server.socket.clone();
    let output = run(&socket, &["submit", "nosuch", "execute", "--input", "1"]);
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stderr}");
    let waiting = queued_id(&stdout);
    assert_eq!(
        stderr.trim(),
        "plugin nosuch is not served now: the task waits for it \
         (failed if it is not served within orphan_after, 1day)"
    );
    // A task submitted after it, of a plugin served, has run: the dispatcher saw both.
    let echo = submit(&socket, "tasker", "echo", "2", &[]);
    wait_status(&server, echo, "success");
    let record = task(&socket, waiting);
    assert_eq!(record["status"], "queued", "{record}");
    assert_eq!(record["attempts"], 0, "{record}");

    // An unknown callback of a served plugin: retried by the policy, bad at the end.
    let id = submit(
        &socket,
        "tasker",
        "nosuch",
        "null",
        &["--max-attempts", "2", "--retry-delays", "10ms"],
    );
    wait_status(&server, id, "bad");
    let record = task(&socket, id);
    assert_eq!(record["attempts"], 2, "{record}");
    assert!(
        record["error"].as_str().unwrap().contains("nosuch"),
        "{record}"
    );
}

#[test]
fn tasks_of_a_plugin_never_served_fail_after_orphan_after_naming_it() {
    let (dir, state) = (plugins_dir(), tempfile::tempdir().unwrap());
    let server = serve(dir.path(), state.path(), "[tasks]\norphan_after = \"1s\"\n");
    let socket = server.socket.clone();
    let output = run(&socket, &["submit", "gone", "execute"]);
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("orphan_after, 1s"), "{stderr}");
    let id = queued_id(&stdout);
    wait_status(&server, id, "failed");
    let record = task(&socket, id);
    assert_eq!(record["attempts"], 0, "{record}");
    assert_eq!(
        record["error"], "plugin gone was not served for 1s (orphan_after)",
        "{record}"
    );
}

#[test]
fn an_outcome_that_cannot_be_written_is_retried_and_its_follow_ups_wait_for_it() {
    let (dir, state) = (plugins_dir(), tempfile::tempdir().unwrap());
    let server = serve(dir.path(), state.path(), "");
    let socket = server.socket.clone();
    // Another writer of the database makes the end of a `chain` attempt fail, as a full
    // disk would.
    let db = rusqlite::Connection::open(state.path().join("tasks.db")).unwrap();
    db.busy_timeout(Duration::from_secs(10)).unwrap();
    db.execute_batch(
        "CREATE TRIGGER outcome_fails BEFORE UPDATE OF status ON tasks \
         WHEN OLD.callback = 'chain' AND OLD.status = 'running' \
         BEGIN SELECT RAISE(ABORT, 'database or disk is full (a test)'); END;",
    )
    .unwrap();
    let id = submit(&socket, "tasker", "chain", r#"{"depth":2}"#, &[]);
    server.wait_until(WAIT, "the outcome to fail", |s| {
        s.log()
            .contains(&format!("cannot record how task {id} ended"))
    });
    let chains: Vec<Value> = tasks(&socket, &["--plugin", "tasker"])
        .into_iter()
        .filter(|t| t["callback"] == "chain")
        .collect();
    assert_eq!(
        chains.len(),
        1,
        "the follow-up was queued before its parent's outcome was recorded: {chains:?}"
    );
    assert_eq!(chains[0]["status"], "running");
    // The disk has room again: the outcome is written without a restart, and its
    // follow-up runs.
    db.execute_batch("DROP TRIGGER outcome_fails").unwrap();
    wait_status(&server, id, "success");
    server.wait_until(WAIT, "the follow-up", |s| {
        let chains: Vec<Value> = tasks(&s.socket, &["--plugin", "tasker"])
            .into_iter()
            .filter(|t| t["callback"] == "chain")
            .collect();
        chains.len() == 2 && chains.iter().all(|t| t["status"] == "success")
    });
    assert_eq!(task(&socket, id)["attempts"], 1);
}

/// Sends one request line on a new connection; the answer as JSON.
fn request(socket: &Path, line: &str) -> Value {
    let mut stream = UnixStream::connect(socket).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.write_all(format!("{line}\n").as_bytes()).unwrap();
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer).unwrap();
    serde_json::from_str(&answer).unwrap_or_else(|e| panic!("{e}: {answer}"))
}

#[test]
fn task_listings_come_in_pages_of_at_most_a_thousand() {
    let dir = plugins_dir();
    let state = tempfile::tempdir().unwrap();
    install(&built().hello, dir.path(), "libhello.so");
    let server = Server::start(dir.path(), &["--state-dir", state.path().to_str().unwrap()]);
    let socket = server.socket.clone();
    let later = now_ms() + 3_600_000;
    let mut stream = UnixStream::connect(&socket).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut ids = Vec::new();
    for i in 0..1_005 {
        let line = format!(
            r#"{{"v":1,"op":"submit","plugin":"hello","callback":"greet","input":{{"i":{i}}},"options":{{"not_before_unix_ms":{later}}}}}"#
        );
        stream.write_all(format!("{line}\n").as_bytes()).unwrap();
        let mut answer = String::new();
        reader.read_line(&mut answer).unwrap();
        let answer: Value = serde_json::from_str(&answer).unwrap();
        ids.push(answer["submitted"]["id"].as_i64().expect("queued"));
    }
    ids.reverse();

    let page = request(&socket, r#"{"v":1,"op":"tasks","filter":{"limit":5000}}"#);
    let listed: Vec<i64> = page["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_i64().unwrap())
        .collect();
    assert_eq!(listed.len(), 1_000, "a page of {} tasks", listed.len());
    assert_eq!(listed[..], ids[..1_000]);
    let next = page["next"].as_i64().expect("a cursor to the next page");
    let page = request(
        &socket,
        &format!(r#"{{"v":1,"op":"tasks","filter":{{"limit":5000,"before":{next}}}}}"#),
    );
    let listed: Vec<i64> = page["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_i64().unwrap())
        .collect();
    assert_eq!(listed[..], ids[1_000..]);
    assert!(page.get("next").is_none(), "{}", page["next"]);

    // `host tasks` follows the cursor up to its --limit.
    assert_eq!(tasks(&socket, &["--plugin", "hello"]).len(), 1_005);
    let out = cli(&socket, &["tasks", "--json", "--limit", "1002"]);
    let some: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(some.len(), 1_002);
}

#[test]
fn task_input_keeps_its_text_and_big_numbers_are_not_the_same_key() {
    let (dir, state) = (plugins_dir(), tempfile::tempdir().unwrap());
    let server = serve(dir.path(), state.path(), "");
    let socket = server.socket.clone();
    let input = r#"{"n":12345678901234567890123,"f":1.10}"#;
    let first = submit(&socket, "tasker", "echo", input, &["--at", "+1h"]);
    assert_eq!(task(&socket, first)["input"], input);
    // One more than it: another task.
    let other = r#"{"n":12345678901234567890124,"f":1.10}"#;
    let out = cli(
        &socket,
        &["submit", "tasker", "echo", "--input", other, "--at", "+1h"],
    );
    let second = queued_id(&out);
    assert_eq!(task(&socket, second)["input"], other);
    // The same, its keys in another order and spaced otherwise: the same task.
    let same = r#"{ "f": 1.10, "n": 12345678901234567890123 }"#;
    let out = cli(&socket, &["submit", "tasker", "echo", "--input", same]);
    assert_eq!(
        out.trim(),
        format!("not queued: task {first}, with the same key, is queued or running")
    );
}
