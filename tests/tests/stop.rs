//! The stop signal (issue 17): a plugin whose threads honour it leaves nothing behind when it
//! is reloaded: no thread, no mapped copy of its library, no memory, and no failed call.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use e2e::{cargo, install, no_probation, plugins_dir, proc_status, target_dir, Server, Variant};

const WAIT: Duration = Duration::from_secs(60);

/// The ticker example plugin (a thread started with `ctx.spawn`) and a second build of it
/// (version 0.2.0), so that installing them in turn is a reload each time.
fn tickers() -> &'static (PathBuf, PathBuf) {
    static BUILT: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    BUILT.get_or_init(|| {
        cargo(&["build", "-p", "ticker"], e2e::root(), None);
        let b = Variant::of("example-plugins/ticker")
            .edit("Cargo.toml", "version = \"0.1.0\"", "version = \"0.2.0\"")
            .build();
        (target_dir().join("debug/libticker.so"), b)
    })
}

/// Lines of the host's `/proc/PID/maps` that name a private copy of `stem`.
fn mapped_copies(pid: u32, stem: &str) -> usize {
    let maps = fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    let needle = format!("{stem}.{pid}.");
    maps.lines().filter(|l| l.contains(&needle)).count()
}

/// What is measured before and after the reloads.
#[derive(Debug, Clone, Copy)]
struct Footprint {
    threads: u64,
    copies: usize,
    rss_kib: u64,
}

fn footprint(pid: u32, stem: &str) -> Footprint {
    Footprint {
        threads: proc_status(pid, "Threads"),
        copies: mapped_copies(pid, stem),
        rss_kib: proc_status(pid, "VmRSS"),
    }
}

/// The generation answering `callback` of `plugin`, if the call succeeds.
fn generation(server: &Server, plugin: &str, callback: &str) -> Option<u64> {
    generation_with(server, plugin, callback, "null")
}

/// [`generation`], calling with `input`.
fn generation_with(server: &Server, plugin: &str, callback: &str, input: &str) -> Option<u64> {
    server
        .call(plugin, callback, input)
        .ok()
        .and_then(|v| v["generation"].as_u64())
}

/// Reloads `plugin` `reloads` times (installing `files` in turn as `file_name`) while a
/// caller calls `callback` without pause; then waits until the host's threads and mapped
/// copies are back to what they were before, and checks its memory. `check` looks at every
/// successful answer.
fn reload_under_calls(
    dir: &Path,
    server: &Server,
    target: (&str, &str, &str),
    files: [&Path; 2],
    reloads: usize,
    check: impl Fn(&serde_json::Value) -> Result<(), String> + Sync,
) {
    reload_under_calls_with(dir, server, target, "null", files, reloads, check)
}

/// [`reload_under_calls`], calling with `input`.
fn reload_under_calls_with(
    dir: &Path,
    server: &Server,
    (plugin, callback, file_name): (&str, &str, &str),
    input: &str,
    files: [&Path; 2],
    reloads: usize,
    check: impl Fn(&serde_json::Value) -> Result<(), String> + Sync,
) {
    let generation = |server: &Server, plugin: &str, callback: &str| {
        generation_with(server, plugin, callback, input)
    };
    let stem = file_name.trim_end_matches(".so");
    let pid = server.pid();
    server.wait_until(WAIT, "the plugin to serve", |s| {
        generation(s, plugin, callback).is_some()
    });
    // Two reloads first, so that what a first reload allocates once (the reaper's and the
    // loader's threads and buffers) is in the baseline.
    // `files[0]` serves at first; each reload installs the other one.
    let mut current = generation(server, plugin, callback).unwrap_or(0);
    for round in 0..2 {
        install(files[(round + 1) % 2], dir, file_name);
        server.wait_until(WAIT, "a warm-up reload", |s| {
            generation(s, plugin, callback).is_some_and(|g| g > current)
        });
        current = generation(server, plugin, callback).unwrap_or(current);
    }
    let before = settled(server, pid, stem, None);

    let stop = AtomicBool::new(false);
    let (calls, failed) = (AtomicU64::new(0), AtomicU64::new(0));
    let first_failure = std::sync::Mutex::new(None::<String>);
    std::thread::scope(|scope| {
        /// Stops the caller however the reloads end (a failed wait panics).
        struct StopOnDrop<'a>(&'a AtomicBool);
        impl Drop for StopOnDrop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        let _stop_caller = StopOnDrop(&stop);
        scope.spawn(|| {
            let mut client = server.client().expect("a connection");
            while !stop.load(Ordering::Relaxed) {
                let answer = client
                    .call(plugin, callback, input)
                    .map_err(|e| e.to_string())
                    .and_then(|o| match o.result() {
                        Ok(raw) => serde_json::from_str::<serde_json::Value>(raw.get())
                            .map_err(|e| e.to_string()),
                        Err(err) => Err(err.to_string()),
                    })
                    .and_then(|v| check(&v));
                calls.fetch_add(1, Ordering::Relaxed);
                if let Err(err) = answer {
                    failed.fetch_add(1, Ordering::Relaxed);
                    first_failure.lock().unwrap().get_or_insert(err);
                }
            }
        });
        for round in 0..reloads {
            // After the two warm-ups `files[0]` serves again.
            install(files[(round + 1) % 2], dir, file_name);
            server.wait_until(WAIT, "the reload to serve", |s| {
                generation(s, plugin, callback).is_some_and(|g| g > current)
            });
            current = generation(server, plugin, callback).unwrap_or(current);
        }
    });
    let calls = calls.into_inner();
    assert_eq!(
        failed.into_inner(),
        0,
        "calls failed during the reloads (of {calls}); the first: {:?}",
        first_failure.into_inner().unwrap()
    );
    assert!(calls > 0);

    let after = settled(server, pid, stem, Some(before));
    assert!(
        after.rss_kib <= before.rss_kib + 2 * 1024,
        "resident memory grew by more than 2 MB over {reloads} reloads: {before:?} -> {after:?}"
    );
}

/// Polls until the host's thread count and mapped copies are steady (and, with `target`,
/// no more than `target`'s), within a deadline; returns them.
fn settled(server: &Server, pid: u32, stem: &str, target: Option<Footprint>) -> Footprint {
    let deadline = Instant::now() + WAIT;
    let mut last = footprint(pid, stem);
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let now = footprint(pid, stem);
        let steady = now.threads == last.threads && now.copies == last.copies;
        let reached = target.is_none_or(|t| now.threads <= t.threads && now.copies <= t.copies);
        if steady && reached && now.copies > 0 {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "the host's threads and mapped copies of {stem} did not come back to {target:?}: \
             {now:?}; host log tail:\n{}",
            tail(&server.log())
        );
        last = now;
    }
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

#[test]
fn a_plugin_whose_thread_honours_the_stop_signal_reloads_50_times_leaving_nothing() {
    let (a, b) = tickers();
    let dir = plugins_dir();
    let config = no_probation(dir.path(), &["ticker"]);
    install(a, dir.path(), "libticker.so");
    let server = Server::start(dir.path(), &[&config[0], &config[1]]);
    reload_under_calls(
        dir.path(),
        &server,
        ("ticker", "ticks", "libticker.so"),
        [a, b],
        50,
        |v| match v["ticks"].as_u64() {
            Some(_) => Ok(()),
            None => Err(format!("no tick count in {v}")),
        },
    );
    let log = server.log();
    assert!(
        log.contains("stopped: 1 of its threads ended"),
        "the host logs each stop; log tail:\n{}",
        tail(&log)
    );
    assert!(!log.contains("still mapped"), "{}", tail(&log));
}

/// The ticker with a `Drop` that never returns in time: its worker process cannot exit.
fn ticker_stuck_in_drop() -> &'static PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        Variant::of("example-plugins/ticker")
            .edit("Cargo.toml", "version = \"0.1.0\"", "version = \"0.3.0\"")
            .edit(
                "src/lib.rs",
                "export_plugin!(Ticker);",
                "impl Drop for Ticker {\n    fn drop(&mut self) {\n        \
                 std::thread::sleep(Duration::from_secs(60));\n    }\n}\n\n\
                 export_plugin!(Ticker);",
            )
            .build()
    })
}

#[test]
fn an_isolated_plugin_gets_the_stop_signal_and_a_worker_that_does_not_exit_is_killed() {
    let (a, b) = tickers();
    let dir = plugins_dir();
    let config = dir.path().join("host.toml");
    fs::write(
        &config,
        "[plugins.ticker]\nisolation = \"process\"\nprobation_ms = 0\nstop_timeout_ms = 500\n",
    )
    .unwrap();
    install(a, dir.path(), "libticker.so");
    let server = Server::start(dir.path(), &["--config", config.to_str().unwrap()]);
    server.wait_until(WAIT, "the plugin to serve", |s| {
        generation(s, "ticker", "ticks") == Some(1)
    });

    // Replaced: its worker joins the ticker thread at the signal, then exits.
    install(b, dir.path(), "libticker.so");
    server.wait_until(WAIT, "the worker of generation 1 to report its stop", |s| {
        s.log()
            .lines()
            .any(|l| l.contains("generation=1") && l.contains("stopped: 1 of its threads ended"))
    });

    // A version whose worker cannot exit (its Drop sleeps) is killed past stop_timeout_ms.
    install(ticker_stuck_in_drop(), dir.path(), "libticker.so");
    server.wait_until(WAIT, "generation 3 to serve", |s| {
        generation(s, "ticker", "ticks") == Some(3)
    });
    install(a, dir.path(), "libticker.so");
    server.wait_until(WAIT, "the stuck worker to be killed", |s| {
        s.log().lines().any(|l| {
            l.contains("generation=3")
                && l.contains("did not exit within 500 ms (stop_timeout_ms): killed")
        })
    });
    assert_eq!(generation(&server, "ticker", "ticks"), Some(4));
}

/// The fetch example plugin (a tokio runtime of its own) and a second build of it.
fn fetchers() -> &'static (PathBuf, PathBuf) {
    static BUILT: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    BUILT.get_or_init(|| {
        cargo(&["build", "-p", "fetch"], e2e::root(), None);
        let b = Variant::of("example-plugins/fetch")
            .edit("Cargo.toml", "version = \"0.1.0\"", "version = \"0.2.0\"")
            .build();
        (target_dir().join("debug/libfetch.so"), b)
    })
}

/// A tiny HTTP server on 127.0.0.1:0 that answers every request `200 pong`, for as long as
/// the test runs; its port.
fn pong_server() -> u16 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 4\r\n\r\npong");
        }
    });
    port
}

#[test]
fn a_plugin_with_a_tokio_runtime_reloads_20_times_leaving_nothing() {
    let (a, b) = fetchers();
    let port = pong_server();
    let dir = plugins_dir();
    let config = no_probation(dir.path(), &["fetch"]);
    install(a, dir.path(), "libfetch.so");
    let server = Server::start(dir.path(), &[&config[0], &config[1]]);
    let input = format!("{{\"port\": {port}}}");
    reload_under_calls_with(
        dir.path(),
        &server,
        ("fetch", "get", "libfetch.so"),
        &input,
        [a, b],
        20,
        |v| match (v["status"].as_u64(), v["body"].as_str()) {
            (Some(200), Some("pong")) => Ok(()),
            _ => Err(format!("not the server's answer: {v}")),
        },
    );
}
