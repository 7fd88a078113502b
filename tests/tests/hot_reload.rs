//! Hot reload, end to end: a real `host serve` process, real plugin files dropped in,
//! rewritten in place, renamed, broken and removed while calls keep flowing.

use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use e2e::{built, host, install, plugins_dir, text, Server, Variant};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(20);
const ADA: &str = r#"{"name":"Ada"}"#;

/// hello with another default greeting ("Hi"), so a reload is visible in the answer.
fn hi_variant() -> &'static Path {
    e2e::hello_hi()
}

fn message(server: &Server) -> Result<String, String> {
    server
        .call("hello", "greet", ADA)
        .map(|v| v["message"].as_str().unwrap_or_default().to_owned())
}

fn wait_for_message(server: &Server, expected: &str) {
    server.wait_until(WAIT, &format!("hello to answer {expected:?}"), |s| {
        message(s).as_deref() == Ok(expected)
    });
}

fn list(server: &Server) -> Vec<Value> {
    let out = host(&[
        "list",
        "--json",
        "--socket",
        server.socket.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out).1);
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Calls `hello.greet` from `threads` threads until stopped; counts successes and failures.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    threads: Vec<thread::JoinHandle<Vec<String>>>,
}

impl Load {
    fn start(server: &Server, threads: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let threads = (0..threads)
            .map(|_| {
                let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
                let mut client = server.client().expect("connect");
                thread::spawn(move || {
                    let mut errors = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        match client
                            .call("hello", "greet", ADA)
                            .map(|o| o.result().is_ok())
                        {
                            Ok(true) => ok.fetch_add(1, Ordering::Relaxed),
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
        Load {
            stop,
            ok,
            failed,
            threads,
        }
    }

    /// Stops the callers; returns (successful calls, failures with their errors).
    fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let errors = self
            .threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        assert_eq!(
            self.failed.load(Ordering::Relaxed) as usize,
            Vec::<String>::len(&errors)
        );
        (self.ok.load(Ordering::Relaxed), errors)
    }
}

#[test]
fn drop_in_rebuild_rename_and_delete() {
    let dir = plugins_dir();
    let config = e2e::no_probation(dir.path(), &["hello"]);
    let server = Server::start(dir.path(), &[&config[0], &config[1]]);
    assert!(message(&server)
        .unwrap_err()
        .contains("no plugin named hello"));

    // Dropped in.
    install(&built().hello, dir.path(), "libhello.so");
    wait_for_message(&server, "Hello, Ada!");

    // Rebuilt with another answer and copied over the loaded file in place.
    fs::copy(hi_variant(), dir.path().join("libhello.so")).unwrap();
    wait_for_message(&server, "Hi, Ada!");
    let files = list(&server);
    assert_eq!(files.len(), 1);
    assert_eq!(files[0]["serving"]["generation"], 2);
    assert_eq!(files[0]["metadata"]["version"], "0.2.0");

    // The binary talks to the running host: with --socket, and with --plugins naming the
    // directory that host serves.
    let socket = server.socket.to_str().unwrap();
    let plugins = dir.path().to_str().unwrap();
    for target in [["--socket", socket], ["--plugins", plugins]] {
        let mut args = vec!["call", "hello", "greet", "--json", "--input", ADA];
        args.extend(target);
        if target[0] == "--plugins" {
            args.extend(["--socket", socket]);
        }
        let out = host(&args);
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{stderr}");
        let outcome: Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(outcome["result"]["message"], "Hi, Ada!", "{target:?}");
        assert_eq!(
            outcome["generation"], 2,
            "{target:?}: served by the running host"
        );
    }
    assert!(files[0]["serving"]["calls"].as_u64().unwrap() >= 1);

    // Renamed inside the directory while calls run: the plugin moves with no failed call.
    let load = Load::start(&server, 2);
    fs::rename(
        dir.path().join("libhello.so"),
        dir.path().join("libgreeter.so"),
    )
    .unwrap();
    server.wait_until(WAIT, "the renamed file to serve hello", |s| {
        let files = s.files();
        files.len() == 1 && files[0].path.ends_with("libgreeter.so") && files[0].serving.is_some()
    });
    let (ok, errors) = load.finish();
    assert!(
        errors.is_empty(),
        "failed calls during the rename: {errors:?}"
    );
    assert!(ok > 0);
    wait_for_message(&server, "Hi, Ada!");

    // Deleted: unloaded, and the library leaves memory.
    fs::remove_file(dir.path().join("libgreeter.so")).unwrap();
    server.wait_until(WAIT, "hello to be unloaded", |s| message(s).is_err());
    // Earlier versions' unloads (after the rebuild, after the rename) are logged already:
    // wait for the removed version's, the first unload logged after the removal.
    server.wait_until(WAIT, "the removed version's unload to be logged", |s| {
        s.log()
            .split_once("removed: unloading")
            .is_some_and(|(_, after)| {
                after.contains("unloaded: library closed and gone from memory")
            })
    });

    let log = server.log();
    assert!(log.contains("loaded hello 0.1.0"), "{log}");
    assert!(
        log.contains("reloaded hello: 0.1.0 (generation 1) -> 0.2.0 (generation 2)"),
        "{log}"
    );
    assert!(log.contains("removed: unloading"), "{log}");
}

#[test]
fn copying_over_a_loaded_file_while_calls_run_loses_no_call() {
    let dir = plugins_dir();
    install(&built().hello, dir.path(), "libhello.so");
    let mut server = Server::start(dir.path(), &[]);
    wait_for_message(&server, "Hello, Ada!");

    let load = Load::start(&server, 2);
    for round in 0..6 {
        let (source, expected) = if round % 2 == 0 {
            (hi_variant(), "Hi, Ada!")
        } else {
            (built().hello.as_path(), "Hello, Ada!")
        };
        // `cp` semantics: truncate and rewrite the very file the host loaded.
        fs::copy(source, dir.path().join("libhello.so")).unwrap();
        wait_for_message(&server, expected);
    }
    let (ok, errors) = load.finish();
    assert!(errors.is_empty(), "failed calls: {errors:?}");
    assert!(ok > 0);
    assert!(server.is_running());
    assert!(!server.log().contains("rejected"), "{}", server.log());
}

#[test]
fn a_slow_write_in_place_is_loaded_once_and_only_when_complete() {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    let dir = plugins_dir();
    install(&built().hello, dir.path(), "libhello.so");
    let server = Server::start(dir.path(), &[]);
    wait_for_message(&server, "Hello, Ada!");

    // Half the new version, a chmod, a pause longer than any settle or quiet time, then the
    // rest: only the writer's close may make the file complete.
    let bytes = fs::read(hi_variant()).unwrap();
    let (first, rest) = bytes.split_at(bytes.len() / 2);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(dir.path().join("libhello.so"))
        .unwrap();
    file.write_all(first).unwrap();
    file.set_permissions(fs::Permissions::from_mode(0o700))
        .unwrap();
    thread::sleep(2 * host::watch::WRITE_QUIET);
    file.write_all(rest).unwrap();
    drop(file);

    wait_for_message(&server, "Hi, Ada!");
    let files = server.files();
    assert_eq!(
        files[0].serving.as_ref().unwrap().generation,
        2,
        "{}",
        server.log()
    );
    assert!(!server.log().contains("rejected"), "{}", server.log());
}

#[test]
fn a_broken_file_over_a_good_one_leaves_the_old_version_serving() {
    let dir = plugins_dir();
    install(&built().hello, dir.path(), "libhello.so");
    let server = Server::start(dir.path(), &[]);
    wait_for_message(&server, "Hello, Ada!");

    // Half a library, written in place.
    // (Cut inside the loadable segments: a debug build cut after them would still load.)
    let bytes = fs::read(&built().hello).unwrap();
    fs::write(dir.path().join("libhello.so"), &bytes[..4096]).unwrap();
    server.wait_until(WAIT, "the broken file to be rejected", |s| {
        s.log().contains("rejected")
    });
    assert_eq!(message(&server).unwrap(), "Hello, Ada!");
    let files = list(&server);
    assert_eq!(files[0]["serving"]["generation"], 1);
    assert!(
        files[0]["last_error"]
            .as_str()
            .unwrap()
            .contains("truncated: segment"),
        "{files:?}"
    );

    // The good file again: the error clears, and nothing is reloaded for known content.
    install(&built().hello, dir.path(), "libhello.so");
    server.wait_until(WAIT, "the error to clear", |s| {
        s.files()[0].last_error.is_none()
    });
    assert_eq!(list(&server)[0]["serving"]["generation"], 1);
}

#[test]
fn a_second_file_with_the_same_name_is_refused_until_the_first_goes() {
    let dir = plugins_dir();
    install(&built().hello, dir.path(), "liba.so");
    let server = Server::start(dir.path(), &[]);
    wait_for_message(&server, "Hello, Ada!");

    install(hi_variant(), dir.path(), "libb.so");
    server.wait_until(WAIT, "the second file to be refused", |s| {
        s.log().contains("declares plugin hello")
    });
    assert_eq!(message(&server).unwrap(), "Hello, Ada!");
    let files = list(&server);
    assert!(
        files[1]["last_error"]
            .as_str()
            .unwrap()
            .contains("liba.so already serves"),
        "{files:?}"
    );

    fs::remove_file(dir.path().join("liba.so")).unwrap();
    wait_for_message(&server, "Hi, Ada!");
}

#[test]
fn shutdown_lets_calls_in_flight_finish() {
    let dir = plugins_dir();
    install(&built().hello, dir.path(), "libhello.so");
    let mut server = Server::start(dir.path(), &[]);
    wait_for_message(&server, "Hello, Ada!");

    // Many calls, each on its connection, ending at about the same moment: each answer
    // must be written before the host closes its connections (a call that has returned
    // but whose answer is not written yet is not idle).
    let calls = 16;
    let in_flight: Vec<_> = (0..calls)
        .map(|_| {
            let mut client = server.client().unwrap();
            thread::spawn(move || client.call("hello", "wait", r#"{"ms":700}"#))
        })
        .collect();
    // Running, not finished: SIGTERM must arrive while the calls are in flight.
    server.wait_until(WAIT, "the calls to start", |s| {
        s.files()[0]
            .serving
            .as_ref()
            .is_some_and(|g| g.in_flight == calls)
    });
    let socket = server.socket.clone();
    assert!(server.stop(), "host serve exits successfully on SIGTERM");
    for call in in_flight {
        let outcome = call
            .join()
            .unwrap()
            .expect("every call in flight is answered");
        let result: Value = serde_json::from_str(outcome.result().unwrap().get()).unwrap();
        assert!(result["waited_ms"].as_u64().unwrap() >= 700);
    }
    assert!(!socket.exists(), "the socket is removed");
    let log = server.log();
    assert!(
        log.contains("unloaded: library closed and gone from memory"),
        "{log}"
    );
}

#[test]
fn configuration_changes_apply_without_restart() {
    let dir = plugins_dir();
    install(&built().hello, dir.path(), "libhello.so");
    let conf_dir = tempfile::tempdir().unwrap();
    let conf = conf_dir.path().join("host.toml");
    let write = |greeting: &str, enabled: bool| {
        // Written to a temporary name and renamed, as editors do.
        let tmp = conf_dir.path().join(".host.toml.tmp");
        fs::write(
            &tmp,
            format!(
                "[plugins.hello]\nenabled = {enabled}\nconfig = {{ greeting = \"{greeting}\" }}\n"
            ),
        )
        .unwrap();
        fs::rename(&tmp, &conf).unwrap();
    };
    write("Hi", true);
    let server = Server::start(dir.path(), &["--config", conf.to_str().unwrap()]);
    wait_for_message(&server, "Hi, Ada!");

    write("Yo", true);
    wait_for_message(&server, "Yo, Ada!");
    assert_eq!(list(&server)[0]["serving"]["generation"], 2);

    fs::write(&conf, "[plugins.hello]\nenabled = \"maybe\"\n").unwrap();
    server.wait_until(WAIT, "the bad configuration to be reported", |s| {
        s.log()
            .contains("host.toml:2:11: key `plugins.hello.enabled`")
    });
    assert_eq!(message(&server).unwrap(), "Yo, Ada!");

    write("Yo", false);
    server.wait_until(WAIT, "hello to be disabled", |s| message(s).is_err());
    write("Hey", true);
    wait_for_message(&server, "Hey, Ada!");
}

#[test]
fn a_library_kept_alive_by_a_thread_local_is_reported_as_still_mapped() {
    let staging = tempfile::tempdir().unwrap();
    let sticky = Variant::of("example-plugins/hello")
        .edit(
            "src/lib.rs",
            "        ctx.info(format_args!(\"greeting {}\", input.name));",
            "        thread_local!(static SEEN: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) });\n        SEEN.with(|seen| seen.borrow_mut().push(input.name.clone()));\n        ctx.info(format_args!(\"greeting {}\", input.name));",
        )
        .build_into(staging.path(), "libhello.so");
    let dir = plugins_dir();
    install(&sticky, dir.path(), "libhello.so");
    let config = e2e::no_probation(dir.path(), &["hello"]);
    let server = Server::start(dir.path(), &[&config[0], &config[1]]);
    // One connection, so one host thread touches the thread-local and stays alive.
    let mut client = server.client().unwrap();
    server.wait_until(WAIT, "hello to load", |s| message(s).is_ok());
    assert!(client.call("hello", "greet", ADA).unwrap().result().is_ok());

    install(&built().hello, dir.path(), "libhello.so");
    server.wait_until(WAIT, "the old version to be reported still mapped", |s| {
        s.log().contains("still mapped")
    });
    assert!(client.call("hello", "greet", ADA).unwrap().result().is_ok());
}

/// Resident set size of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn hundreds_of_reloads_under_calls_lose_no_call_and_no_memory() {
    let dir = plugins_dir();
    install(&built().hello, dir.path(), "libhello.so");
    let server = Server::start(dir.path(), &[]);
    wait_for_message(&server, "Hello, Ada!");
    let pid = server.pid();

    let load = Load::start(&server, 2);
    let mut rss_after_warm_up = 0;
    const RELOADS: u64 = 300;
    for round in 1..=RELOADS {
        let source = if round % 2 == 1 {
            hi_variant()
        } else {
            built().hello.as_path()
        };
        install(source, dir.path(), "libhello.so");
        server.wait_until(WAIT, &format!("reload {round}"), |s| {
            s.files()
                .first()
                .and_then(|f| f.serving.as_ref())
                .map(|g| g.generation)
                == Some(round + 1)
        });
        if round == 50 {
            rss_after_warm_up = rss_kib(pid);
        }
    }
    let rss_at_end = rss_kib(pid);
    let (ok, errors) = load.finish();
    assert!(
        errors.is_empty(),
        "{} failed calls, first: {:?}",
        errors.len(),
        errors.first()
    );
    assert!(ok > RELOADS, "calls kept flowing: {ok}");
    // 250 more reloads: with the per-reload leak abi_stable's own loader has (over 400 KB),
    // this would be 100 MB. Allow allocator noise only.
    let growth = rss_at_end.saturating_sub(rss_after_warm_up);
    assert!(
        growth < 4 * 1024,
        "resident memory grew by {growth} KiB over 250 reloads"
    );
}

#[test]
fn cargo_rebuilding_into_the_served_directory_swaps_the_plugin_under_calls() {
    // The served directory is cargo's own output directory.
    let (_work, crate_dir) = Variant::of("example-plugins/hello").prepare();
    let target = e2e::target_dir().join("e2e-cargo");
    e2e::cargo(&["build", "--lib"], &crate_dir, Some(&target));
    let served = target.join("debug");
    let server = Server::start(&served, &[]);
    wait_for_message(&server, "Hello, Ada!");

    let load = Load::start(&server, 2);
    e2e::replace_in(
        &crate_dir.join("src/lib.rs"),
        "\"Hello\".to_owned()",
        "\"Rebuilt\".to_owned()",
    );
    e2e::cargo(&["build", "--lib"], &crate_dir, Some(&target));
    wait_for_message(&server, "Rebuilt, Ada!");
    let (ok, errors) = load.finish();
    assert!(
        errors.is_empty(),
        "failed calls during the rebuild: {errors:?}"
    );
    assert!(ok > 0);
    assert!(
        !server.log().contains("removed: unloading"),
        "{}",
        server.log()
    );
}
