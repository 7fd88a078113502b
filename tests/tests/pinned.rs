//! Bounded leftovers: a replaced version that stays mapped after its unload (a thread of the
//! plugin that never ends keeps it) is counted per plugin with the memory it holds; past
//! `max_pinned_versions` (default 3) the plugin runs in a worker process, whose exit frees
//! everything, or, where its settings keep it in-process, further reloads are refused.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use e2e::{install, plugins_dir, proc_status, Server, Variant};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);
const ADA: &str = r#"{"name":"Ada"}"#;

/// hello whose `init` starts a thread that never ends, in two versions ("Hello" and "Hi"),
/// so that reloads alternate between two contents.
fn threaded() -> &'static [PathBuf; 2] {
    static BUILT: OnceLock<(tempfile::TempDir, [PathBuf; 2])> = OnceLock::new();
    &BUILT
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let variant = || {
                Variant::of("example-plugins/hello").edit(
                    "src/lib.rs",
                    "        let config: Config = ctx.config()?;",
                    "        std::thread::spawn(|| loop {\n            std::thread::sleep(std::time::Duration::from_millis(100));\n        });\n        let config: Config = ctx.config()?;",
                )
            };
            let hello = variant().build_into(dir.path(), "libhello-a.so");
            let hi = variant()
                .edit("src/lib.rs", "\"Hello\".to_owned()", "\"Hi\".to_owned()")
                .build_into(dir.path(), "libhello-b.so");
            (dir, [hello, hi])
        })
        .1
}

/// `host list --json`, as JSON (read untyped, so that this file builds against any host).
fn list(server: &Server) -> Vec<Value> {
    let text = server.cli(&["list", "--json"]);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("host list --json: {e}:\n{text}"))
}

fn hello(server: &Server) -> Value {
    list(server)
        .into_iter()
        .find(|f| f["metadata"]["name"] == "hello")
        .unwrap_or(Value::Null)
}

fn generation(file: &Value) -> u64 {
    file["serving"]["generation"].as_u64().unwrap_or(0)
}

fn pinned(file: &Value) -> u64 {
    file["pinned"]["versions"].as_u64().unwrap_or(0)
}

/// Installs the next version and waits until generation `next` serves it and `pinned`
/// replaced versions are counted as still mapped.
fn reload(server: &Server, dir: &std::path::Path, next: u64, pinned_now: u64) -> Value {
    let source = &threaded()[(next % 2) as usize];
    install(source, dir, "libhello.so");
    let what = format!("generation {next} serving with {pinned_now} pinned versions");
    let mut last = Value::Null;
    server.wait_until(WAIT, &what, |s| {
        last = hello(s);
        generation(&last) == next && pinned(&last) == pinned_now
    });
    last
}

/// Calls `greet` in a loop until stopped; counts successes and failures.
struct Caller {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<Vec<String>>>,
}

impl Caller {
    fn start(server: &Server) -> Caller {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let socket = server.socket.clone();
        let (stop2, ok2, failed2) = (stop.clone(), ok.clone(), failed.clone());
        let thread = std::thread::spawn(move || {
            let mut errors = Vec::new();
            let mut client = host::control::Client::connect(&socket).expect("connect");
            while !stop2.load(Ordering::Relaxed) {
                let outcome = client.call("hello", "greet", ADA);
                match outcome.as_ref().map(|o| o.result()) {
                    Ok(Ok(_)) => {
                        ok2.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Err(err)) => {
                        failed2.fetch_add(1, Ordering::Relaxed);
                        errors.push(err.to_string());
                    }
                    Err(err) => {
                        failed2.fetch_add(1, Ordering::Relaxed);
                        errors.push(err.to_string());
                        match host::control::Client::connect(&socket) {
                            Ok(again) => client = again,
                            Err(_) => break,
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            errors
        });
        Caller {
            stop,
            ok,
            failed,
            thread: Some(thread),
        }
    }

    /// Stops it; returns (successes, failures, the first errors).
    fn finish(mut self) -> (u64, u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut errors = self.thread.take().unwrap().join().unwrap();
        errors.truncate(5);
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            errors,
        )
    }
}

/// The host's threads once nothing is draining or unloading any more (the versions still
/// mapped excepted).
fn settled_threads(server: &Server) -> u64 {
    server.wait_until(WAIT, "the replaced versions to be unloaded", |s| {
        hello(s)["retired"].as_array().is_some_and(|retired| {
            retired
                .iter()
                .all(|r| r["state"]["state"] == "still_mapped")
        })
    });
    proc_status(server.pid(), "Threads")
}

#[test]
fn versions_pinned_by_a_thread_are_counted_and_past_the_limit_the_plugin_runs_in_a_worker() {
    let dir = plugins_dir();
    install(&threaded()[1], dir.path(), "libhello.so");
    let config = e2e::no_probation(dir.path(), &["hello"]);
    let server = Server::start(dir.path(), &[&config[0], &config[1]]);
    server.wait_until(WAIT, "hello", |s| s.call("hello", "greet", ADA).is_ok());
    let caller = Caller::start(&server);

    // Each replaced version stays mapped: its thread runs on in the host.
    for next in 2..=4 {
        reload(&server, dir.path(), next, next - 1);
    }
    let file = hello(&server);
    assert_eq!(file["serving"]["isolation"], "in-process", "{file:#}");
    assert_eq!(file["pinned"]["versions"], 3, "{file:#}");
    let bytes = file["pinned"]["bytes"].as_u64().unwrap_or(0);
    assert!(
        bytes > 3 * 100_000,
        "3 copies of hello hold more than this: {file:#}"
    );
    let text = server.cli(&["list"]);
    assert!(
        text.contains("3 versions pinned in memory"),
        "host list shows the pinned versions:\n{text}"
    );

    // With 3 pinned (max_pinned_versions' default), the next version runs in a worker;
    // the version it replaces was still in the host's process, and stays mapped too.
    let file = reload(&server, dir.path(), 5, 4);
    assert_eq!(file["serving"]["isolation"], "process", "{file:#}");
    let reason = file["pinned"]["limit_reached"].as_str().unwrap_or_default();
    assert!(reason.contains("max_pinned_versions"), "{file:#}");
    let log = server.log();
    assert_eq!(
        log.matches("runs in a worker process from now on").count(),
        1,
        "logged once:\n{log}"
    );
    let text = server.cli(&["list"]);
    assert!(
        text.contains("4 versions pinned in memory") && text.contains("process, pid"),
        "host list shows the pinned versions and the worker:\n{text}"
    );

    // Further reloads replace workers: the host's threads stop growing, and so does the
    // memory its pinned versions hold.
    let before = settled_threads(&server);
    let rss_before = proc_status(server.pid(), "VmRSS");
    let held = hello(&server)["pinned"]["bytes"].clone();
    for next in 6..=10 {
        let file = reload(&server, dir.path(), next, 4);
        assert_eq!(file["serving"]["isolation"], "process", "{file:#}");
    }
    let after = settled_threads(&server);
    eprintln!("host threads after 5 reloads in worker processes: {before} -> {after}");
    assert!(
        after < before + 3,
        "5 reloads in workers added {} threads to the host ({before} -> {after})",
        after.saturating_sub(before)
    );
    let rss_after = proc_status(server.pid(), "VmRSS");
    eprintln!(
        "host resident memory after 5 reloads in worker processes: {rss_before} -> {rss_after} KiB"
    );
    assert!(
        rss_after <= rss_before + 2 * 1024,
        "5 reloads in workers grew the host's resident memory by more than 2 MB \
         ({rss_before} -> {rss_after} KiB)"
    );
    assert_eq!(hello(&server)["pinned"]["bytes"], held);
    let log = server.log();
    assert_eq!(
        log.matches("runs in a worker process from now on").count(),
        1,
        "logged once:\n{log}"
    );

    let (ok, failed, errors) = caller.finish();
    assert_eq!(failed, 0, "calls failed during the reloads: {errors:?}");
    assert!(ok > 0);
}

#[test]
fn past_the_limit_a_plugin_kept_in_process_refuses_reloads_and_the_old_version_serves() {
    let dir = plugins_dir();
    install(&threaded()[1], dir.path(), "libhello.so");
    let config = dir.path().join("host.toml");
    std::fs::write(
        &config,
        "[plugins.hello]\nprobation_ms = 0\nisolation = \"in-process\"\n",
    )
    .unwrap();
    let config = config.display().to_string();
    let server = Server::start(dir.path(), &["--config", &config]);
    server.wait_until(WAIT, "hello", |s| s.call("hello", "greet", ADA).is_ok());
    for next in 2..=4 {
        reload(&server, dir.path(), next, next - 1);
    }

    // The next reload is refused, in one line naming the reason; generation 4 serves on.
    install(&threaded()[1], dir.path(), "libhello.so");
    let mut file = Value::Null;
    server.wait_until(WAIT, "the reload to be refused", |s| {
        file = hello(s);
        file["last_error"].as_str().is_some()
    });
    let error = file["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("max_pinned_versions") && error.contains("isolation = \"in-process\""),
        "{file:#}"
    );
    assert!(!error.contains('\n'), "one line: {error}");
    assert_eq!(generation(&file), 4, "{file:#}");
    assert_eq!(file["serving"]["isolation"], "in-process", "{file:#}");
    assert_eq!(pinned(&file), 3, "{file:#}");
    assert_eq!(
        server.call("hello", "greet", ADA).unwrap()["message"],
        "Hello, Ada!"
    );
}
