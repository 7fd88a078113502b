//! Process isolation (issue 9): the same plugin file, run in a supervised worker process,
//! survives what would end the host in-process, and keeps the hot-swap promise.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use e2e::{built, hello_hi, install, plugins_dir, tough, Server};
use host::control::ClientError;
use host::{CallError, CallErrorKind};

const WAIT: Duration = Duration::from_secs(30);
const ADA: &str = r#"{"name":"Ada"}"#;

/// `host serve` on hello and tough, with `config` as its host.toml.
fn serve(config: &str, extra: &[&str]) -> (tempfile::TempDir, Server) {
    let dir = plugins_dir();
    install(&built().hello, dir.path(), "libhello.so");
    install(tough(), dir.path(), "libtough.so");
    let conf = dir.path().join("host.toml");
    fs::write(&conf, config).unwrap();
    let mut args = vec!["--config", conf.to_str().unwrap()];
    args.extend_from_slice(extra);
    let server = Server::start(dir.path(), &args);
    server.wait_until(WAIT, "both plugins", |s| {
        s.call("hello", "greet", ADA).is_ok() && s.call("tough", "greet", "null").is_ok()
    });
    (dir, server)
}

/// The host's refusal of a call (`ok: false`), or a panic if it was served.
fn refusal(server: &Server, plugin: &str, callback: &str, input: &str) -> CallError {
    let mut client = server.client().unwrap();
    match client.call(plugin, callback, input) {
        Err(ClientError::Refused(err)) => err,
        other => panic!("`{callback}` was not refused: {other:?}"),
    }
}

fn worker_pid(server: &Server) -> u32 {
    server
        .call("tough", "pid", "null")
        .unwrap()
        .as_u64()
        .unwrap() as u32
}

/// The process ids of `host __worker` processes whose parent is `parent`.
fn workers_of(parent: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: the comm may hold spaces, so split after the `)`.
        let Some(rest) = stat.rsplit_once(") ").map(|(_, rest)| rest) else {
            continue;
        };
        let mut fields = rest.split(' ');
        let (state, ppid) = (fields.next(), fields.next().and_then(|p| p.parse().ok()));
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if ppid == Some(parent) && cmdline.split(|b| *b == 0).any(|a| a == b"__worker") {
            assert_ne!(state, Some("Z"), "worker {pid} is a zombie");
            found.push(pid);
        }
    }
    found
}

fn descriptors(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

const CRASHY: &str =
    "[plugins.tough]\nisolation = \"process\"\ntimeout_ms = 400\nkill_after_ms = 300\n\
                      max_memory_mb = 768\nmax_restarts = 100\nrestart_window_ms = 1\n";

#[test]
fn every_way_a_worker_dies_fails_only_its_call_and_the_next_call_is_served() {
    let (_dir, mut server) = serve(CRASHY, &[]);
    let host_pid = server.pid();
    let first = worker_pid(&server);
    assert_ne!(first, host_pid, "tough runs in a worker of its own");
    let cases: [(&str, &str, &str); 6] = [
        ("segv", "null", "killed by signal SIGSEGV"),
        ("abort", "null", "killed by signal SIGABRT"),
        (
            "overflow",
            "null",
            "stack overflow, killed by signal SIGABRT",
        ),
        ("exit", r#"{"code":3}"#, "exited with status 3"),
        ("oom", "null", "out of memory (max_memory_mb = 768)"),
        (
            "spin",
            "null",
            "did not return within timeout_ms (400 ms) + kill_after_ms (300 ms)",
        ),
    ];
    let mut pids = BTreeSet::from([first]);
    for (callback, input, reason) in cases {
        let before = worker_pid(&server);
        if callback == "spin" {
            // The caller gets its timeout on time; the worker is killed 300 ms later.
            let start = Instant::now();
            let err = refusal(&server, "tough", "spin", input);
            assert_eq!(err.kind, CallErrorKind::Timeout, "{err}");
            assert!(
                start.elapsed() < Duration::from_millis(1200),
                "{:?}",
                start.elapsed()
            );
            server.wait_until(WAIT, "the spinning worker to be killed", |s| {
                s.log().contains(reason)
            });
        } else {
            let err = refusal(&server, "tough", callback, input);
            assert_eq!(err.kind, CallErrorKind::Crashed, "{callback}: {err}");
            let expected = format!("plugin tough crashed: {reason}");
            assert!(err.message.starts_with(&expected), "{callback}: {err}");
            assert!(
                err.message.contains(&format!("in callback `{callback}`")),
                "{err}"
            );
        }
        // The host is the same process, every other plugin serves, and so does tough, on a
        // fresh worker.
        assert!(server.call("hello", "greet", ADA).is_ok());
        let after = worker_pid(&server);
        assert_ne!(after, before, "{callback}: a new worker serves");
        assert!(pids.insert(after));
        assert_eq!(server.pid(), host_pid);
    }
    let files = server.files();
    let worker = files
        .iter()
        .find(|f| f.path.ends_with("libtough.so"))
        .and_then(|f| f.serving.as_ref()?.worker.clone())
        .unwrap();
    assert_eq!(worker.crashes, 6, "{worker:?}");
    assert_eq!(worker.restarts, 6, "{worker:?}");
    assert!(server.is_running());
}

#[test]
fn a_crash_fails_every_call_in_flight_on_that_worker_each_naming_its_callback() {
    let (_dir, server) = serve("[plugins.tough]\nisolation = \"process\"\n", &[]);
    let waiting = {
        let mut client = server.client().unwrap();
        thread::spawn(move || client.call("tough", "wait", r#"{"ms":5000}"#))
    };
    server.wait_until(WAIT, "the wait to be running", |s| {
        s.files()
            .iter()
            .any(|f| f.serving.as_ref().is_some_and(|g| g.in_flight == 1))
    });
    let err = refusal(&server, "tough", "segv", "null");
    assert_eq!(err.kind, CallErrorKind::Crashed, "{err}");
    match waiting.join().unwrap() {
        Err(ClientError::Refused(err)) => {
            assert_eq!(err.kind, CallErrorKind::Crashed, "{err}");
            assert!(
                err.message.starts_with(
                    "plugin tough crashed: killed by signal SIGSEGV in callback `wait`"
                ),
                "{err}"
            );
        }
        other => panic!("the call in flight was not failed: {other:?}"),
    }
    assert_eq!(server.call("tough", "greet", "null").unwrap(), "still here");
}

#[test]
fn a_crash_loop_is_quarantined_until_host_restart() {
    let config =
        "[plugins.tough]\nisolation = \"process\"\nmax_restarts = 3\nrestart_window_ms = 60000\n";
    let (_dir, server) = serve(config, &[]);
    for _ in 0..3 {
        let err = refusal(&server, "tough", "segv", "null");
        assert_eq!(err.kind, CallErrorKind::Crashed, "{err}");
    }
    // Quarantined: refused at once, naming the last crash, without starting a worker.
    let start = Instant::now();
    let err = refusal(&server, "tough", "greet", "null");
    assert_eq!(err.kind, CallErrorKind::Quarantined, "{err}");
    assert!(err.message.contains("3 crashes within 60000 ms"), "{err}");
    assert!(
        err.message.contains("the last: killed by signal SIGSEGV"),
        "{err}"
    );
    assert!(start.elapsed() < Duration::from_millis(200));
    assert!(workers_of(server.pid()).is_empty());
    let out = e2e::host(&["list", "--socket", server.socket.to_str().unwrap()]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("QUARANTINED"));

    let out = e2e::host(&[
        "restart",
        "tough",
        "--socket",
        server.socket.to_str().unwrap(),
    ]);
    let (stdout, stderr) = e2e::text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.starts_with("restarted plugin tough (generation 1): worker pid "),
        "{stdout}"
    );
    assert_eq!(server.call("tough", "greet", "null").unwrap(), "still here");
    // A crashed plugin's calls exit with status 3 (the plugin failed), quarantined too.
    let out = e2e::host(&[
        "call",
        "tough",
        "segv",
        "--socket",
        server.socket.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(3));
}

#[test]
fn a_reload_of_an_isolated_plugin_under_load_fails_no_call() {
    // Without probation, which would keep the replaced version's worker on purpose.
    let (dir, server) = serve("[plugins.hello]\nprobation_ms = 0\n", &["--isolate-all"]);
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let callers: Vec<_> = (0..2)
        .map(|_| {
            let mut client = server.client().unwrap();
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            thread::spawn(move || {
                let mut errors = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    match client.call("hello", "greet", ADA) {
                        Ok(outcome) if outcome.result().is_ok() => {
                            ok.fetch_add(1, Ordering::Relaxed)
                        }
                        other => {
                            errors.push(format!("{other:?}"));
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
                errors
            })
        })
        .collect();
    let versions = [hello_hi(), built().hello.as_path()];
    for round in 0..6u64 {
        install(versions[round as usize % 2], dir.path(), "libhello.so");
        let expected = if round % 2 == 0 {
            "Hi, Ada!"
        } else {
            "Hello, Ada!"
        };
        server.wait_until(WAIT, "the new version", |s| {
            s.call("hello", "greet", ADA)
                .is_ok_and(|v| v["message"] == expected)
        });
    }
    stop.store(true, Ordering::Relaxed);
    let errors: Vec<String> = callers
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
    assert_eq!(failed.load(Ordering::Relaxed), 0);
    assert!(ok.load(Ordering::Relaxed) > 50, "{ok:?}");
    // Old workers were shut down and reaped: one worker per plugin is left.
    server.wait_until(WAIT, "old workers to be reaped", |s| {
        workers_of(s.pid()).len() == 2
    });
    let log = server.log();
    assert!(
        log.contains("unloaded: its worker process was stopped"),
        "{log}"
    );
    // What the plugin logs in its worker reaches the host's log, naming the worker.
    assert!(
        log.lines().any(|l| l.contains("greeting Ada")
            && l.contains("worker_pid=")
            && l.contains("plugin=\"hello\"")),
        "{log}"
    );
}

#[test]
fn workers_inherit_only_their_channel_and_the_listed_environment() {
    let dir = plugins_dir();
    install(tough(), dir.path(), "libtough.so");
    let server = Server::start_with_env(dir.path(), &["--isolate-all"], &[("A_SECRET", "hunter2")]);
    server.wait_until(WAIT, "tough", |s| s.call("tough", "greet", "null").is_ok());
    let worker = worker_pid(&server);
    let environ = fs::read(format!("/proc/{worker}/environ")).unwrap();
    let names: Vec<String> = environ
        .split(|b| *b == 0)
        .filter(|v| !v.is_empty())
        .map(|v| {
            String::from_utf8_lossy(v)
                .split('=')
                .next()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert!(!names.contains(&"A_SECRET".to_owned()), "{names:?}");
    for name in &names {
        assert!(
            host::isolation::PASSED_ENV.contains(&name.as_str()),
            "{name} passed"
        );
    }
    // stdin, stdout, stderr, the channel (and the worker's own second handle on it), the
    // doorbell.
    let fds: Vec<String> = fs::read_dir(format!("/proc/{worker}/fd"))
        .unwrap()
        .flatten()
        .map(|e| {
            fs::read_link(e.path())
                .map(|l| l.display().to_string())
                .unwrap_or_default()
        })
        .collect();
    assert!(fds.len() <= 6, "{fds:?}");
    for fd in &fds {
        assert!(
            fd == "/dev/null" || fd.starts_with("pipe:") || fd.starts_with("socket:"),
            "the worker inherited {fd}: {fds:?}"
        );
    }
}

#[test]
fn killing_the_host_leaves_no_worker_behind() {
    let (_dir, mut server) = serve("", &["--isolate-all"]);
    let workers = workers_of(server.pid());
    assert_eq!(workers.len(), 2, "{workers:?}");
    server.signal(libc::SIGKILL);
    server.wait_timeout(WAIT).unwrap();
    let start = Instant::now();
    while workers.iter().any(|pid| {
        Path::new(&format!("/proc/{pid}/cmdline")).exists()
            && fs::read(format!("/proc/{pid}/cmdline"))
                .unwrap_or_default()
                .windows(8)
                .any(|w| w == b"__worker")
    }) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "workers {workers:?} outlived the host"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn descriptors_stay_flat_over_200_worker_restarts() {
    let config =
        "[plugins.tough]\nisolation = \"process\"\nmax_restarts = 1000\nrestart_window_ms = 1\n";
    let (_dir, server) = serve(config, &[]);
    let host_pid = server.pid();
    let crash = |n: usize| {
        for _ in 0..n {
            let err = refusal(&server, "tough", "exit", r#"{"code":1}"#);
            assert_eq!(err.kind, CallErrorKind::Crashed, "{err}");
        }
    };
    // Counted each time with one worker running (its channel, pidfd, output pipe, eventfd).
    crash(10);
    assert_eq!(server.call("tough", "greet", "null").unwrap(), "still here");
    let before = descriptors(host_pid);
    crash(200);
    assert_eq!(server.call("tough", "greet", "null").unwrap(), "still here");
    let after = descriptors(host_pid);
    assert!(
        after <= before + 2,
        "descriptors {before} -> {after} over 200 restarts"
    );
    assert!(workers_of(host_pid).len() <= 1);
}

#[test]
fn the_same_file_runs_in_process_or_isolated_and_one_shot() {
    // In-process by default: the plugin runs in the host's own process.
    let (_dir, server) = serve("", &[]);
    assert_eq!(worker_pid(&server), server.pid());
    drop(server);
    // `host call --plugins DIR --isolated`: a worker for one call.
    let dir = plugins_dir();
    install(tough(), dir.path(), "libtough.so");
    let plugins = dir.path().to_str().unwrap();
    let out = e2e::host(&["call", "tough", "segv", "--plugins", plugins, "--isolated"]);
    let (_, stderr) = e2e::text(&out);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("plugin tough crashed: killed by signal SIGSEGV in callback `segv`"),
        "{stderr}"
    );
    let out = e2e::host(&["call", "tough", "greet", "--plugins", plugins, "--isolated"]);
    assert_eq!(e2e::text(&out).0.trim(), "\"still here\"");
}

#[test]
fn an_isolated_init_that_overruns_is_killed_and_leaves_nothing_running() {
    let config = "[plugins.tough]\nisolation = \"process\"\ninit_timeout_ms = 300\n\
                  config = { init_sleep_ms = 60000 }\n";
    let dir = plugins_dir();
    install(tough(), dir.path(), "libtough.so");
    let conf = dir.path().join("host.toml");
    fs::write(&conf, config).unwrap();
    let server = Server::start(dir.path(), &["--config", conf.to_str().unwrap()]);
    server.wait_until(WAIT, "the load to be refused", |s| {
        s.log().contains("init did not return within 300 ms")
    });
    assert!(workers_of(server.pid()).is_empty());
    let files = server.files();
    assert_eq!(
        files[0].stuck_inits, 0,
        "no thread is left behind: {files:?}"
    );
}

/// Whether process `pid` is gone: no such process, a zombie (PID 1 here may not reap
/// orphans), or a process that is not `comm` (its pid was reused).
fn is_gone(pid: u32, comm: &str) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return true;
    };
    let Some((head, rest)) = stat.rsplit_once(") ") else {
        return true;
    };
    !head.ends_with(&format!("({comm}")) || rest.starts_with('Z')
}

#[test]
fn a_crash_that_leaves_a_child_process_is_answered_crashed_at_once_and_the_child_is_killed() {
    // A long timeout: a crash answered `timeout` would take all of it.
    let config = "[plugins.tough]\nisolation = \"process\"\ntimeout_ms = 10000\n";
    let (dir, server) = serve(config, &[]);
    let before = worker_pid(&server);
    let pid_file = dir.path().join("orphan.pid");
    let input = serde_json::json!({ "pid_file": pid_file }).to_string();
    let start = Instant::now();
    let mut client = server.client().unwrap();
    let answer = client.call("tough", "orphan", &input);
    let took = start.elapsed();
    let err = match answer {
        Err(ClientError::Refused(err)) => err,
        other => panic!("`orphan` was not refused: {other:?}"),
    };
    assert_eq!(err.kind, CallErrorKind::Crashed, "after {took:?}: {err}");
    assert!(
        err.message
            .starts_with("plugin tough crashed: killed by signal SIGABRT in callback `orphan`"),
        "{err}"
    );
    assert!(took < Duration::from_secs(3), "answered after {took:?}");
    // The next call gets a fresh worker, and so does every later one.
    for _ in 0..3 {
        assert_eq!(server.call("tough", "greet", "null").unwrap(), "still here");
    }
    assert_ne!(worker_pid(&server), before, "a new worker serves");
    // The `sleep` it left behind died with its process group.
    let orphan: u32 = fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let start = Instant::now();
    while !is_gone(orphan, "sleep") {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the worker's child {orphan} outlived it"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_legal_answer_that_grows_six_fold_when_escaped_crosses_the_worker_channel() {
    // 150,000 control characters are a result of 900,002 bytes of JSON, under the limit of
    // 1,000,000; the log record of 90,000 more fits what is left of it. Escaped for the
    // channel, the log record alone is 540,000 bytes.
    let config = "max_message_bytes = 1000000\n\
                  [plugins.tough]\nisolation = \"process\"\ntimeout_ms = 5000\n";
    let (_dir, server) = serve(config, &[]);
    let before = worker_pid(&server);
    let mut client = server.client().unwrap();
    let outcome = client
        .call("tough", "control", r#"{"chars":150000,"log_chars":90000}"#)
        .unwrap_or_else(|err| panic!("the answer was lost: {err}"));
    let result = outcome.result().unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(result.get().len(), 900_002);
    assert_eq!(result.parse::<String>().unwrap(), "\u{1}".repeat(150_000));
    assert_eq!(outcome.logs.len(), 1, "{:?}", outcome.logs.len());
    assert_eq!(outcome.logs[0].message, "\u{1}".repeat(90_000));
    // The channel still serves, on the same worker.
    assert_eq!(server.call("tough", "greet", "null").unwrap(), "still here");
    assert_eq!(worker_pid(&server), before);
}
