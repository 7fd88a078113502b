//! State handover (issue 11): what a plugin keeps in memory survives its new versions, with
//! no update lost, in process and in a worker process; a `save_state` that fails never
//! blocks a swap.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::Duration;

use e2e::{counter, install, plugins_dir, Server, Variant};

const WAIT: Duration = Duration::from_secs(30);

/// counter 0.3.0: another file, for a swap, that takes the state 0.2.0 hands over.
fn counter_next() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        Variant::of("example-plugins/counter")
            .edit("Cargo.toml", "version = \"0.2.0\"", "version = \"0.3.0\"")
            .build()
    })
}

/// counter 0.3.0 whose `save_state` does `body` instead of saving the count.
fn counter_saving(body: &str) -> PathBuf {
    Variant::of("example-plugins/counter")
        .edit("Cargo.toml", "version = \"0.2.0\"", "version = \"0.3.0\"")
        .edit(
            "src/lib.rs",
            "        Ok(Some(serde_json::json!({ \"count\": count })))",
            format!("        let _ = count;\n        {body}"),
        )
        .build()
}

fn serve(library: &Path, config: &str, extra: &[&str]) -> (tempfile::TempDir, Server) {
    let dir = plugins_dir();
    install(library, dir.path(), "libcounter.so");
    let conf = dir.path().join("host.toml");
    fs::write(&conf, config).unwrap();
    let mut args = vec!["--config", conf.to_str().unwrap()];
    args.extend_from_slice(extra);
    let server = Server::start(dir.path(), &args);
    server.wait_until(WAIT, "counter", |s| {
        s.call("counter", "get", "null").is_ok()
    });
    (dir, server)
}

fn count(server: &Server, callback: &str) -> u64 {
    server.call("counter", callback, "null").unwrap()["count"]
        .as_u64()
        .unwrap()
}

/// The generation serving `counter` now.
fn generation(server: &Server) -> u64 {
    server
        .call_raw("counter", "get", "null")
        .unwrap()
        .generation
}

/// Two callers hit the counter without pause while it is replaced ten times: every hit is
/// answered, each caller sees its counts only grow, and together they saw every number from
/// 1 to the final count once.
fn keeps_counting_across_ten_swaps(extra: &[&str]) {
    let (dir, server) = serve(counter(), "", extra);
    let first = generation(&server);
    let stop = Arc::new(AtomicBool::new(false));
    let callers: Vec<_> = (0..2)
        .map(|_| {
            let mut client = server.client().unwrap();
            let stop = stop.clone();
            thread::spawn(move || {
                let (mut counts, mut errors) = (Vec::new(), Vec::new());
                while !stop.load(Ordering::Relaxed) {
                    match client.call("counter", "hit", "null") {
                        Ok(outcome) => match outcome.result() {
                            Ok(raw) => {
                                let value: serde_json::Value =
                                    serde_json::from_str(raw.get()).unwrap();
                                counts.push(value["count"].as_u64().unwrap());
                            }
                            Err(err) => errors.push(err.to_string()),
                        },
                        Err(err) => errors.push(err.to_string()),
                    }
                }
                (counts, errors)
            })
        })
        .collect();
    let versions = [counter_next(), counter()];
    for round in 0..10u64 {
        install(versions[round as usize % 2], dir.path(), "libcounter.so");
        server.wait_until(WAIT, "the next version", |s| generation(s) > first + round);
    }
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for caller in callers {
        let (counts, errors) = caller.join().unwrap();
        assert!(errors.is_empty(), "{errors:#?}");
        assert!(
            counts.windows(2).all(|w| w[0] < w[1]),
            "a caller saw its count go back"
        );
        all.extend(counts);
    }
    assert!(all.len() > 100, "only {} hits", all.len());
    all.sort_unstable();
    let total = all.len() as u64;
    assert_eq!(
        all,
        (1..=total).collect::<Vec<_>>(),
        "a hit was lost or counted twice"
    );
    assert_eq!(count(&server, "get"), total);
    assert_eq!(generation(&server), first + 10);
    // The host writes its handover line after the new version serves: wait for the last.
    server.wait_until(WAIT, "the tenth handover's log line", |s| {
        s.log().matches("bytes of state from generation").count() >= 10
    });
    let log = server.log();
    assert_eq!(log.matches("took over count").count(), 10, "{log}");
    assert_eq!(
        log.matches("bytes of state from generation").count(),
        10,
        "{log}"
    );
}

#[test]
fn a_counter_keeps_counting_across_ten_swaps_under_load_in_process() {
    keeps_counting_across_ten_swaps(&[]);
}

#[test]
fn a_counter_keeps_counting_across_ten_swaps_under_load_isolated() {
    keeps_counting_across_ten_swaps(&["--isolate-all"]);
}

#[test]
fn a_save_state_that_panics_or_is_too_big_does_not_block_the_swap() {
    for (what, library, logged) in [
        (
            "panics",
            counter_saving("panic!(\"the state is corrupt\")"),
            "the state is corrupt",
        ),
        (
            "is too big",
            counter_saving("Ok(Some(serde_json::json!(\"x\".repeat(4096))))"),
            "over the limit of 2048 (max_message_bytes)",
        ),
    ] {
        for extra in [&[][..], &["--isolate-all"][..]] {
            let (dir, server) = serve(&library, "max_message_bytes = 2048\n", extra);
            for _ in 0..5 {
                count(&server, "hit");
            }
            install(counter(), dir.path(), "libcounter.so");
            server.wait_until(WAIT, "the next version", |s| generation(s) == 2);
            // The next version serves, without state.
            assert_eq!(count(&server, "get"), 0, "save_state {what} {extra:?}");
            let log = server.log();
            assert!(
                log.contains("save_state failed, the next version starts without state")
                    && log.contains(logged),
                "save_state {what} {extra:?}: {log}"
            );
        }
    }
}

#[test]
fn a_failed_start_of_the_next_version_leaves_the_old_one_serving_with_its_state() {
    // The next version's init fails: the old one's gate opens again, its count intact.
    let failing = Variant::of("example-plugins/counter")
        .edit("Cargo.toml", "version = \"0.2.0\"", "version = \"0.3.0\"")
        .edit(
            "src/lib.rs",
            "        if let Some(version) = ctx.previous_version() {",
            "        return Err(PluginError::failed(format!(\"refusing count {count}\")));\n        #[allow(unreachable_code)]\n        if let Some(version) = ctx.previous_version() {",
        )
        .build();
    let (dir, server) = serve(counter(), "", &[]);
    for _ in 0..7 {
        count(&server, "hit");
    }
    install(&failing, dir.path(), "libcounter.so");
    server.wait_until(WAIT, "the refusal", |s| {
        s.log().contains("refusing count 7")
    });
    assert_eq!(count(&server, "hit"), 8);
    assert_eq!(generation(&server), 1);
}
