//! The one call path (issue 16): a call that passes its deadline is answered `timeout` on
//! time whoever made it, the socket, a task or an embedding service, and for a task that
//! answer is a failed attempt, retried by its policy.

use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant, SystemTime};

use e2e::{counter, install, plugins_dir, tough, Server, Variant};
use host::{CallErrorKind, CallRequest, Host, HostOptions};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);

fn task(server: &Server, id: &str) -> Value {
    let out = server.cli(&["task", id, "--json"]);
    serde_json::from_str::<Value>(&out).unwrap()["task"].clone()
}

#[test]
fn a_task_past_its_timeout_is_a_failed_attempt_answered_on_time_and_retried() {
    let (dir, state) = (plugins_dir(), tempfile::tempdir().unwrap());
    install(tough(), dir.path(), "libtough.so");
    let server = Server::start_with_state(
        dir.path(),
        state.path(),
        "[plugins.tough]\ntimeout_ms = 300\n",
    );
    server.wait_until(WAIT, "tough", |s| s.call("tough", "greet", "null").is_ok());

    // `sleep` ignores cancellation: only the host can end the attempt at its deadline.
    let out = server.cli(&[
        "submit",
        "tough",
        "sleep",
        "--input",
        r#"{"ms":4000}"#,
        "--max-attempts",
        "2",
        "--retry-delays",
        "10ms",
    ]);
    let id = out
        .trim()
        .strip_prefix("queued task ")
        .expect(&out)
        .to_owned();
    server.wait_until(WAIT, "the task to end", |s| {
        matches!(task(s, &id)["status"].as_str(), Some("failed" | "success"))
    });
    let record = task(&server, &id);
    assert_eq!(record["status"], "failed", "{record}");
    assert_eq!(record["attempts"], 2, "{record}");
    let error = record["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("timeout") && error.contains("did not finish within 300 ms"),
        "{record}"
    );
    // Two attempts of 300 ms, not two of 4 s: the answer came at the deadline.
    let took =
        record["finished_unix_ms"].as_u64().unwrap() - record["created_unix_ms"].as_u64().unwrap();
    assert!(took < 4000, "the task took {took} ms: {record}");
}

#[test]
fn an_embedded_invoke_is_answered_at_its_deadline_and_counts_the_call_stuck() {
    let dir = plugins_dir();
    let file = install(tough(), dir.path(), "libtough.so");
    let host = Host::new(HostOptions::default()).unwrap();
    host.load_file(&file).unwrap();

    let started = Instant::now();
    let request =
        CallRequest::new("tough", "sleep", r#"{"ms":3000}"#).timeout(Duration::from_millis(200));
    let err = host.invoke(request).unwrap_err();
    assert_eq!(err.kind, CallErrorKind::Timeout, "{err}");
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "answered after {:?}",
        started.elapsed()
    );
    // Until the plugin returns, the call is listed as running, timed out, and stuck.
    let running = host.running_calls();
    assert!(
        running.iter().any(|c| c.plugin == "tough" && c.timed_out),
        "{running:?}"
    );
    let stuck: u64 = host
        .status()
        .iter()
        .filter_map(|f| f.serving.as_ref())
        .map(|s| s.stuck)
        .sum();
    assert_eq!(stuck, 1);

    // A call that finishes in time is answered with its result, through the same path.
    let outcome = host
        .invoke(CallRequest::new("tough", "greet", "null"))
        .unwrap();
    assert!(outcome.result().is_ok(), "{outcome:?}");
}

/// counter 0.3.0 whose `save_state` takes 2.5 s: a handover from it holds calls that long.
fn slow_saving_counter() -> std::path::PathBuf {
    Variant::of("example-plugins/counter")
        .edit("Cargo.toml", "version = \"0.2.0\"", "version = \"0.3.0\"")
        .edit(
            "src/lib.rs",
            "        Ok(Some(serde_json::json!({ \"count\": count })))",
            "        std::thread::sleep(std::time::Duration::from_millis(2500));\n        \
             Ok(Some(serde_json::json!({ \"count\": count })))",
        )
        .build()
}

#[test]
fn callers_held_by_a_handover_get_timeout_at_their_deadline() {
    let dir = plugins_dir();
    let file = install(&slow_saving_counter(), dir.path(), "libcounter.so");
    let host = Host::new(HostOptions::default()).unwrap();
    host.load_file(&file).unwrap();
    host.call("counter", "hit", "null").unwrap();

    install(counter(), dir.path(), "libcounter.so");
    let reloading = {
        let (host, file) = (host.clone(), file.clone());
        std::thread::spawn(move || host.load_file(&file))
    };
    let (mut held, mut longest) = (0, Duration::ZERO);
    while !reloading.is_finished() {
        let started = Instant::now();
        let deadline = SystemTime::now() + Duration::from_millis(200);
        let result = host.call_with(
            "counter",
            "hit",
            "null",
            &AtomicBool::new(false),
            Some(deadline),
        );
        longest = longest.max(started.elapsed());
        if let Err(err) = &result {
            assert_eq!(err.kind, CallErrorKind::Timeout, "{err}");
            assert!(err.message.contains("handover"), "{err}");
            held += 1;
        }
    }
    reloading.join().unwrap().unwrap();
    assert!(held > 0, "no call was held by the handover");
    assert!(
        longest < Duration::from_millis(1500),
        "a caller with a 200 ms deadline was held {longest:?}"
    );
    // The new version serves with the count handed over.
    let outcome = host.call("counter", "get", "null").unwrap();
    assert!(outcome.result().is_ok(), "{outcome:?}");
}

#[test]
fn a_rollback_waits_for_a_load_in_flight_and_never_is_undone_by_it() {
    let dir = plugins_dir();
    let file = install(counter(), dir.path(), "libcounter.so");
    let host = Host::new(HostOptions::default()).unwrap();
    host.load_file(&file).unwrap();
    let first = host.plugin("counter").unwrap().generation();
    // The slow saver replaces it and is on probation: the first one is on standby.
    install(&slow_saving_counter(), dir.path(), "libcounter.so");
    host.load_file(&file).unwrap();

    // A third version starts loading; the slow saver's handover holds it for 2.5 s.
    install(counter(), dir.path(), "libcounter.so");
    let reloading = {
        let (host, file) = (host.clone(), file.clone());
        std::thread::spawn(move || host.load_file(&file))
    };
    // Wait until the handover holds calls: the load is in flight.
    loop {
        let deadline = SystemTime::now() + Duration::from_millis(20);
        let held = host.call_with(
            "counter",
            "get",
            "null",
            &AtomicBool::new(false),
            Some(deadline),
        );
        if matches!(&held, Err(err) if err.kind == CallErrorKind::Timeout) {
            break;
        }
        assert!(
            !reloading.is_finished(),
            "the load ended before a call was held"
        );
    }
    let rollback = host.rollback("counter", None);
    reloading.join().unwrap().unwrap();
    let serving = host.plugin("counter").unwrap().generation();
    match rollback {
        // A rollback that said it was done is what serves after the load.
        Ok(line) => assert_eq!(serving, first, "`{line}`, but generation {serving} serves"),
        Err(err) => assert!(err.message.contains("meanwhile"), "{err}"),
    }
}
