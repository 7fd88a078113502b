//! Safe rollout (issue 11): a new version's self-test runs before it serves, and a version
//! that fails during its probation is rolled back to the one it replaced.

use std::fs;
use std::path::Path;
use std::time::Duration;

use e2e::variants::{failing_self_test, panicking_greet, passing_self_test};
use e2e::{built, host, install, plugins_dir, text, Server};

const WAIT: Duration = Duration::from_secs(30);
const ADA: &str = r#"{"name":"Ada"}"#;

fn greet(server: &Server) -> Result<String, String> {
    server
        .call("hello", "greet", ADA)
        .map(|v| v["message"].as_str().unwrap_or_default().to_owned())
}

fn serve(config: &str, extra: &[&str]) -> (tempfile::TempDir, Server) {
    let dir = plugins_dir();
    install(&built().hello, dir.path(), "libhello.so");
    let conf = dir.path().join("host.toml");
    fs::write(&conf, config).unwrap();
    let mut args = vec!["--config", conf.to_str().unwrap()];
    args.extend_from_slice(extra);
    let server = Server::start(dir.path(), &args);
    server.wait_until(WAIT, "hello", |s| greet(s).is_ok());
    (dir, server)
}

fn last_error(server: &Server) -> Option<String> {
    server.files().into_iter().find_map(|f| f.last_error)
}

#[test]
fn a_failing_self_test_refuses_the_swap_and_a_passing_one_lets_it_through() {
    let (dir, server) = serve("", &[]);
    install(failing_self_test(), dir.path(), "libhello.so");
    server.wait_until(WAIT, "the swap to be refused", |s| last_error(s).is_some());
    let error = last_error(&server).unwrap();
    assert!(
        error.contains("self_test failed, so the swap is refused: the greeting table is empty"),
        "{error}"
    );
    assert_eq!(
        greet(&server).unwrap(),
        "Hello, Ada!",
        "the old version serves"
    );
    assert!(
        server.log().contains("self_test failed"),
        "{}",
        server.log()
    );

    install(passing_self_test(), dir.path(), "libhello.so");
    server.wait_until(WAIT, "the new version", |s| {
        greet(s).is_ok_and(|m| m == "Yo, Ada!")
    });
    assert!(server.log().contains("self-test passed"));
}

/// Calls greet until it answers `expected`; returns the failures seen before.
fn failures_until(server: &Server, expected: &str) -> Vec<String> {
    let mut failures = Vec::new();
    server.wait_until(WAIT, expected, |s| match greet(s) {
        Ok(message) if message == expected => true,
        Ok(_) => false,
        Err(err) => {
            failures.push(err);
            false
        }
    });
    failures
}

fn assert_rolled_back(server: &Server, dir: &Path) {
    // The new version serves until its calls fail...
    server.wait_until(WAIT, "the broken version", |s| {
        s.files()
            .iter()
            .any(|f| f.serving.as_ref().is_some_and(|g| g.generation == 2))
    });
    // ... three times: then the old one serves again, and no call fails after the third.
    let failures = failures_until(server, "Hello, Ada!");
    assert_eq!(failures.len(), 3, "{failures:#?}");
    assert!(
        failures
            .iter()
            .all(|f| f.contains("greet is broken in 0.2.0")),
        "{failures:#?}"
    );
    for _ in 0..20 {
        assert_eq!(greet(server).unwrap(), "Hello, Ada!");
    }
    let log = server.log();
    let line = log
        .lines()
        .find(|l| {
            l.contains(
                "rolled back hello 0.2.0 (generation 2) -> 0.1.0 (generation 1): 3 panics in",
            )
        })
        .unwrap_or_else(|| panic!("no rollback line:\n{log}"));
    assert!(line.contains("ERROR"), "{line}");
    let error = last_error(server).unwrap();
    assert!(
        error.starts_with("rolled back to generation 1: 3 panics in"),
        "{error}"
    );

    // The same bad content again is not loaded; new content is.
    install(panicking_greet(), dir, "libhello.so");
    install(passing_self_test(), dir, "libhello.so");
    server.wait_until(WAIT, "the next version", |s| {
        greet(s).is_ok_and(|m| m == "Yo, Ada!")
    });
}

#[test]
fn a_version_that_panics_is_rolled_back_within_its_probation() {
    let (dir, server) = serve(
        "[plugins.hello]\nprobation_ms = 60000\nrollback_after = 3\n",
        &[],
    );
    install(panicking_greet(), dir.path(), "libhello.so");
    assert_rolled_back(&server, dir.path());
}

#[test]
fn an_isolated_version_that_panics_is_rolled_back_too() {
    let (dir, server) = serve(
        "[plugins.hello]\nprobation_ms = 60000\nrollback_after = 3\n",
        &["--isolate-all"],
    );
    install(panicking_greet(), dir.path(), "libhello.so");
    assert_rolled_back(&server, dir.path());
}

/// `host history PLUGIN --json`, parsed.
fn history(server: &Server) -> Vec<serde_json::Value> {
    let socket = server.socket.to_str().unwrap();
    let output = host(&["history", "hello", "--json", "--socket", socket]);
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stderr}");
    serde_json::from_str(&stdout).expect("history is JSON")
}

/// `host rollback hello [ARGS]`: its one line.
fn rollback(server: &Server, args: &[&str]) -> Result<String, String> {
    let socket = server.socket.to_str().unwrap();
    let mut all = vec!["rollback", "hello", "--socket", socket];
    all.extend_from_slice(args);
    let output = host(&all);
    let (stdout, stderr) = text(&output);
    match output.status.success() {
        true => Ok(stdout.trim().to_owned()),
        false => Err(stderr.trim().to_owned()),
    }
}

fn field<'a>(
    history: &'a [serde_json::Value],
    generation: u64,
    key: &str,
) -> &'a serde_json::Value {
    let entry = history
        .iter()
        .find(|e| e["generation"] == generation)
        .unwrap_or_else(|| panic!("no generation {generation}: {history:#?}"));
    &entry[key]
}

fn rollback_and_history(extra: &[&str]) {
    let (dir, server) = serve("[plugins.hello]\nprobation_ms = 60000\n", extra);
    install(passing_self_test(), dir.path(), "libhello.so");
    server.wait_until(WAIT, "0.2.0", |s| greet(s).is_ok_and(|m| m == "Yo, Ada!"));
    for _ in 0..5 {
        greet(&server).unwrap();
    }

    // The version on standby is put back at once.
    let line = rollback(&server, &[]).unwrap();
    assert_eq!(
        line,
        "rolled back hello 0.2.0 (generation 2) -> 0.1.0 (generation 1): by request"
    );
    assert_eq!(greet(&server).unwrap(), "Hello, Ada!");
    let error = last_error(&server).unwrap();
    assert!(
        error.starts_with("rolled back by request to generation 1"),
        "{error}"
    );
    let entries = history(&server);
    assert_eq!(entries.len(), 2, "{entries:#?}");
    assert_eq!(field(&entries, 2, "ended"), "rolled_back");
    assert!(field(&entries, 2, "calls").as_u64().unwrap() >= 6);
    assert_eq!(field(&entries, 2, "kept"), true);
    assert!(field(&entries, 2, "retired_at_unix_ms").is_u64());
    assert!(field(&entries, 1, "ended").is_null(), "generation 1 serves");
    assert_eq!(field(&entries, 1, "version"), "0.1.0");
    let sha256 = field(&entries, 1, "sha256").as_str().unwrap();
    assert_eq!(sha256.len(), 64);

    // A version no longer loaded is loaded again from its kept copy, as a new generation.
    let line = rollback(&server, &["--to", "2"]).unwrap();
    assert_eq!(
        line,
        "rolled back hello 0.1.0 (generation 1) -> 0.2.0 (generation 3, from generation 2's \
         copy): by request"
    );
    assert_eq!(greet(&server).unwrap(), "Yo, Ada!");
    // With no generation named: the newest kept version with other content than what
    // serves (generation 2 has the same).
    let line = rollback(&server, &[]).unwrap();
    assert!(
        line.ends_with("-> 0.1.0 (generation 4, from generation 1's copy): by request"),
        "{line}"
    );
    assert_eq!(greet(&server).unwrap(), "Hello, Ada!");
    let entries = history(&server);
    assert_eq!(field(&entries, 4, "rollback_of"), 1);
    assert_eq!(field(&entries, 3, "ended"), "rolled_back");

    let table = host(&[
        "history",
        "hello",
        "--socket",
        server.socket.to_str().unwrap(),
    ]);
    let (table, _) = text(&table);
    let row = |generation: &str| {
        table
            .lines()
            .find(|l| l.starts_with(&format!("{generation} ")))
            .unwrap_or_else(|| panic!("no row {generation}:\n{table}"))
            .to_owned()
    };
    assert!(table.starts_with("GEN"), "{table}");
    assert!(
        row("4").contains("serving (a rollback to generation 1), copy kept"),
        "{table}"
    );
    assert!(row("3").contains("rolled back"), "{table}");

    // Refusals name what is wrong.
    let err = rollback(&server, &["--to", "4"]).unwrap_err();
    assert!(err.contains("generation 4 is the one serving"), "{err}");
    let err = rollback(&server, &["--to", "99"]).unwrap_err();
    assert!(err.contains("generation 99 is not in its history"), "{err}");

    // The file still holds 0.2.0: it is not loaded again until it changes.
    fs::write(dir.path().join("unrelated.txt"), "x").unwrap();
    for _ in 0..20 {
        assert_eq!(greet(&server).unwrap(), "Hello, Ada!");
    }
    install(e2e::hello_hi(), dir.path(), "libhello.so");
    server.wait_until(WAIT, "the file's new content", |s| {
        greet(s).is_ok_and(|m| m == "Hi, Ada!")
    });
}

#[test]
fn host_rollback_serves_a_kept_version_again_and_host_history_lists_them() {
    rollback_and_history(&[]);
}

#[test]
fn host_rollback_and_history_work_for_isolated_plugins() {
    rollback_and_history(&["--isolate-all"]);
}
