//! The fleet's plugin catalogue (issue 18, item 7), against a real PostgreSQL server
//! (`.ci/test` starts one and exports E2E_DATABASE_URL): `host publish` through one host's
//! socket, three real `host serve` processes on one fresh database loading what is
//! published, canary rollouts, `host unpublish`, and the one-line refusals.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use e2e::postgres::{fresh_database, psql};
use e2e::{built, plugins_dir, text, Server, Variant};
use sha2::{Digest, Sha256};

const WAIT: Duration = Duration::from_secs(60);
const ADA: &str = r#"{"name":"Ada"}"#;

fn sha256_hex(path: &Path) -> String {
    let bytes = fs::read(path).expect("read the plugin");
    Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// hello 0.2.0 with a self-test that passes or fails.
fn hello_v2(greeting: &str, self_test: &str) -> PathBuf {
    Variant::of("example-plugins/hello")
        .edit("Cargo.toml", "version = \"0.1.0\"", "version = \"0.2.0\"")
        .edit(
            "src/lib.rs",
            "\"Hello\".to_owned()",
            format!("{greeting:?}.to_owned()"),
        )
        .edit(
            "src/lib.rs",
            "            .add(\"panic\", Hello::panic)",
            format!(
                "            .add(\"panic\", Hello::panic)\n            .add(\"self_test\", |_: &Hello, _: &Context<'_>, _: serde_json::Value| -> Result<(), PluginError> {{ {self_test} }})"
            ),
        )
        .build()
}

fn failing_self_test() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        hello_v2(
            "Hey",
            "Err(PluginError::failed(\"the greeting table is empty\"))",
        )
    })
}

/// hello 0.2.0 whose `greet` panics every time (its probation trips a rollback).
fn panicking_greet() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        Variant::of("example-plugins/hello")
            .edit("Cargo.toml", "version = \"0.1.0\"", "version = \"0.2.0\"")
            .edit(
                "src/lib.rs",
                "        if input.name.trim().is_empty() {",
                "        panic!(\"greet is broken in 0.2.0\");\n        if input.name.trim().is_empty() {",
            )
            .build()
    })
}

fn passing_self_test() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| hello_v2("Yo", "Ok(())"))
}

/// One host of the fleet: its plugins directory and its `host serve`.
struct Member {
    dir: tempfile::TempDir,
    server: Server,
}

impl Member {
    /// Whether `host_id` (`hostname-pid-random`) is this host's.
    fn is(&self, host_id: &str) -> bool {
        host_id.contains(&format!("-{}-", self.server.pid()))
    }

    /// The SHA-256 of the hello it serves, if it serves one.
    fn serving_sha256(&self) -> Option<String> {
        self.server.files().into_iter().find_map(|f| {
            let serving = f.serving?;
            (f.metadata?.name == "hello").then_some(serving.sha256?)
        })
    }

    fn greet(&self) -> Result<String, String> {
        self.server
            .call("hello", "greet", ADA)
            .map(|v| v["message"].as_str().unwrap_or_default().to_owned())
    }
}

/// Starts a host on `database` (or none) with `config` as its host.toml, and waits until
/// its catalogue agent reached the database.
fn member(database: Option<&str>, config: &str) -> Member {
    let dir = plugins_dir();
    let conf = dir.path().join("host.toml");
    fs::write(&conf, config).expect("write host.toml");
    let args = ["--config", conf.to_str().expect("UTF-8")];
    let server = Server::start_configured(dir.path(), &args, |command| {
        command.env_remove("HOST_DATABASE_URL");
        if let Some(url) = database {
            command.env("HOST_DATABASE_URL", url);
        }
    });
    if database.is_some() {
        server.wait_until(WAIT, "the catalogue agent to connect", |s| {
            s.log()
                .contains("catalogue: connected to the fleet database")
        });
    }
    Member { dir, server }
}

const FLEET_CONFIG: &str = "[catalogue]\npoll_ms = 500\n\n[plugins.hello]\nprobation_ms = 1500\n";

/// Three hosts on `database`, each with a plugins directory of its own, alive in the
/// `hosts` table (so that any of them may be chosen as a canary).
fn fleet(database: &str) -> Vec<Member> {
    let hosts: Vec<Member> = (0..3)
        .map(|_| member(Some(database), FLEET_CONFIG))
        .collect();
    wait("three hosts alive in the hosts table", || {
        psql(database, "SELECT count(*) FROM hosts") == "3"
    });
    hosts
}

fn published(server: &Server) -> serde_json::Value {
    let out = server.cli(&["published", "--json"]);
    serde_json::from_str(&out).expect("published --json is JSON")
}

fn publish(server: &Server, file: &Path, extra: &[&str]) -> String {
    let mut args = vec!["publish", file.to_str().expect("UTF-8")];
    args.extend_from_slice(extra);
    server.cli(&args)
}

fn wait(what: &str, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_published_plugin_is_served_by_every_host_byte_for_byte_and_unpublish_removes_it() {
    let database = fresh_database();
    let hosts = fleet(&database);
    let hello = &built().hello;
    let sha = sha256_hex(hello);

    let start = Instant::now();
    let said = publish(&hosts[0].server, hello, &[]);
    assert!(
        said.starts_with("published hello 0.1.0 (")
            && said.contains(&format!("sha256 {sha}"))
            && said.contains("every host loads it"),
        "{said}"
    );
    wait("every host to serve the published hello", || {
        hosts
            .iter()
            .all(|h| h.serving_sha256().as_deref() == Some(sha.as_str()))
    });
    println!(
        "published to served on all 3 hosts in {} ms",
        start.elapsed().as_millis()
    );
    for host in &hosts {
        assert_eq!(host.greet().as_deref(), Ok("Hello, Ada!"));
        let file = host.dir.path().join("hello.catalogue.so");
        assert_eq!(fs::read(&file).unwrap(), fs::read(hello).unwrap());
        // Nothing half-written was left for the watcher.
        let names: Vec<String> = fs::read_dir(host.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
    }
    let listed = published(&hosts[2].server);
    assert_eq!(listed[0]["name"], "hello");
    assert_eq!(listed[0]["sha256"], sha);
    assert_eq!(listed[0]["size"], fs::metadata(hello).unwrap().len());
    assert!(listed[0]["publisher"].as_str().unwrap().contains('@'));
    assert_eq!(listed[0]["rollout"], "everywhere");
    wait("every host to report it passed", || {
        let listed = published(&hosts[1].server);
        let reports = listed[0]["hosts"].as_array().cloned().unwrap_or_default();
        reports.len() == 3 && reports.iter().all(|r| r["state"] == "passed")
    });

    // Other bytes under the catalogue's name (by hand, a stray copy): refused by the pin,
    // the published version keeps serving.
    let file = hosts[2].dir.path().join("hello.catalogue.so");
    let tmp = hosts[2].dir.path().join(".stray.tmp");
    fs::copy(passing_self_test(), &tmp).unwrap();
    fs::rename(&tmp, &file).unwrap();
    hosts[2]
        .server
        .wait_until(WAIT, "the stray file to be refused", |s| {
            s.files().iter().any(|f| {
                f.path == file
                    && f.last_error
                        .as_deref()
                        .is_some_and(|e| e.contains(&format!("but the catalogue published {sha}")))
            })
        });
    assert_eq!(hosts[2].serving_sha256().as_deref(), Some(sha.as_str()));

    let said = hosts[1].server.cli(&["unpublish", "hello"]);
    assert_eq!(said.trim(), "unpublished hello: every host removes it");
    wait(
        "every host to stop serving hello and remove its file",
        || {
            hosts
                .iter()
                .all(|h| h.greet().is_err() && !h.dir.path().join("hello.catalogue.so").exists())
        },
    );
    assert_eq!(published(&hosts[0].server), serde_json::json!([]));
}

#[test]
fn a_canary_whose_self_test_fails_stops_the_rollout_and_the_others_never_load_it() {
    let database = fresh_database();
    let hosts = fleet(&database);
    let bad = failing_self_test();

    let said = publish(&hosts[2].server, bad, &["--canary", "1"]);
    assert!(said.contains("canaries"), "{said}");
    let listed = published(&hosts[0].server);
    let canaries: Vec<String> = serde_json::from_value(listed[0]["canaries"].clone()).unwrap();
    assert_eq!(canaries.len(), 1, "{listed}");
    // The lowest id among the hosts alive.
    let ids: Vec<String> = hosts
        .iter()
        .map(|h| {
            let log = h.server.log();
            let at = log.find("this host is ").expect("the host's id is logged") + 13;
            log[at..].split_whitespace().next().unwrap().to_owned()
        })
        .collect();
    assert_eq!(canaries[0], ids.iter().min().unwrap().clone(), "{ids:?}");

    wait("the rollout to fail", || {
        published(&hosts[1].server)[0]["rollout"] == "failed"
    });
    let listed = published(&hosts[1].server);
    let reason = listed[0]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with(&format!("canary {}: ", canaries[0]))
            && reason.contains("self_test failed")
            && reason.contains("the greeting table is empty"),
        "{reason}"
    );
    for host in &hosts {
        if host.is(&canaries[0]) {
            continue;
        }
        assert!(
            !host.dir.path().join("hello.catalogue.so").exists(),
            "a host that is not the canary wrote the plugin"
        );
        assert_eq!(host.serving_sha256(), None);
    }
    let table = hosts[0].server.cli(&["published"]);
    assert!(
        table.contains("failed: canary") && table.contains("self_test failed"),
        "{table}"
    );
    let fleet = e2e::host(&["fleet", "--database", &database]);
    let (stdout, stderr) = text(&fleet);
    assert!(fleet.status.success(), "{stderr}");
    assert!(
        stdout.contains(&format!(
            "catalogue: hello 0.2.0 ({}): rollout failed: canary {}: ",
            &sha256_hex(bad)[..12],
            canaries[0]
        )) && stdout.contains("self_test failed"),
        "{stdout}"
    );
}

#[test]
fn a_good_canary_rollout_reaches_every_host_after_probation() {
    let database = fresh_database();
    let hosts = fleet(&database);
    let v1 = &built().hello;
    let v2 = passing_self_test();
    let (sha1, sha2) = (sha256_hex(v1), sha256_hex(v2));

    publish(&hosts[0].server, v1, &[]);
    wait("every host to serve 0.1.0", || {
        hosts
            .iter()
            .all(|h| h.serving_sha256().as_deref() == Some(sha1.as_str()))
    });
    publish(&hosts[0].server, v2, &["--canary", "1"]);
    let canaries: Vec<String> =
        serde_json::from_value(published(&hosts[0].server)[0]["canaries"].clone()).unwrap();
    let canary = hosts
        .iter()
        .find(|h| h.is(&canaries[0]))
        .expect("the canary is one of the three");
    wait("the canary to serve 0.2.0", || {
        canary.serving_sha256().as_deref() == Some(sha2.as_str())
    });
    // On probation there (1.5 s): the others still serve 0.1.0.
    if published(&hosts[0].server)[0]["rollout"] == "canary" {
        for host in hosts.iter().filter(|h| !h.is(&canaries[0])) {
            assert_eq!(host.serving_sha256().as_deref(), Some(sha1.as_str()));
        }
    }
    wait("every host to serve 0.2.0", || {
        hosts
            .iter()
            .all(|h| h.serving_sha256().as_deref() == Some(sha2.as_str()))
    });
    assert_eq!(published(&hosts[1].server)[0]["rollout"], "everywhere");
    for host in &hosts {
        assert_eq!(host.greet().as_deref(), Ok("Yo, Ada!"));
    }
}

#[test]
fn a_canary_that_dies_before_it_passed_fails_the_rollout_and_the_others_never_load_it() {
    let database = fresh_database();
    // A short lease: a host is gone 2 s after its last heartbeat. A long probation: the
    // canary cannot pass before it is killed.
    let config = "[tasks]\nlease_ms = 2000\n\n[catalogue]\npoll_ms = 200\n\n\
                  [plugins.hello]\nprobation_ms = 600000\n";
    let mut hosts: Vec<Member> = (0..3).map(|_| member(Some(&database), config)).collect();
    wait("three hosts alive in the hosts table", || {
        psql(&database, "SELECT count(*) FROM hosts") == "3"
    });
    let v1 = &built().hello;
    let v2 = passing_self_test();
    let (sha1, sha2) = (sha256_hex(v1), sha256_hex(v2));
    publish(&hosts[0].server, v1, &[]);
    wait("every host to serve 0.1.0", || {
        hosts
            .iter()
            .all(|h| h.serving_sha256().as_deref() == Some(sha1.as_str()))
    });
    publish(&hosts[0].server, v2, &["--canary", "1"]);
    let canaries: Vec<String> =
        serde_json::from_value(published(&hosts[0].server)[0]["canaries"].clone()).unwrap();
    let at = hosts
        .iter()
        .position(|h| h.is(&canaries[0]))
        .expect("the canary is one of the three");
    let mut canary = hosts.remove(at);
    wait("the canary to serve 0.2.0 on probation", || {
        canary.serving_sha256().as_deref() == Some(sha2.as_str())
    });
    canary.server.signal(libc::SIGKILL);
    canary.server.wait();
    wait("the rollout to fail", || {
        published(&hosts[0].server)[0]["rollout"] == "failed"
    });
    let reason = published(&hosts[1].server)[0]["reason"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        reason,
        format!(
            "canary {} is gone (no heartbeat within 2000 ms) before it passed probation",
            canaries[0]
        )
    );
    for host in &hosts {
        assert_eq!(host.serving_sha256().as_deref(), Some(sha1.as_str()));
    }
}

#[test]
fn a_canary_whose_probation_trips_a_rollback_fails_the_rollout() {
    let database = fresh_database();
    let config = "[catalogue]\npoll_ms = 200\n\n[plugins.hello]\nprobation_ms = 600000\n";
    let hosts: Vec<Member> = (0..3).map(|_| member(Some(&database), config)).collect();
    wait("three hosts alive in the hosts table", || {
        psql(&database, "SELECT count(*) FROM hosts") == "3"
    });
    let v1 = &built().hello;
    let bad = panicking_greet();
    let (sha1, sha2) = (sha256_hex(v1), sha256_hex(bad));
    publish(&hosts[0].server, v1, &[]);
    wait("every host to serve 0.1.0", || {
        hosts
            .iter()
            .all(|h| h.serving_sha256().as_deref() == Some(sha1.as_str()))
    });
    publish(&hosts[0].server, bad, &["--canary", "1"]);
    let canaries: Vec<String> =
        serde_json::from_value(published(&hosts[0].server)[0]["canaries"].clone()).unwrap();
    let canary = hosts
        .iter()
        .find(|h| h.is(&canaries[0]))
        .expect("the canary is one of the three");
    wait("the canary to serve 0.2.0 on probation", || {
        canary.serving_sha256().as_deref() == Some(sha2.as_str())
    });
    // Three panics within the probation roll it back (rollback_after = 3).
    wait("the canary to roll back", || {
        let _ = canary.greet();
        canary.serving_sha256().as_deref() == Some(sha1.as_str())
    });
    wait("the rollout to fail", || {
        published(&hosts[0].server)[0]["rollout"] == "failed"
    });
    let reason = published(&hosts[1].server)[0]["reason"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        reason.starts_with(&format!("canary {}: ", canaries[0])) && reason.contains("rolled back"),
        "{reason}"
    );
    for host in &hosts {
        assert_eq!(host.serving_sha256().as_deref(), Some(sha1.as_str()));
    }
    // The canary goes back to the last good version on disk too: a restart would not load
    // the failed file afresh.
    let file = canary.dir.path().join("hello.catalogue.so");
    wait("the canary's file to be 0.1.0 again", || {
        fs::read(&file).ok() == fs::read(v1).ok()
    });
}

#[test]
fn too_big_not_a_plugin_unknown_name_and_no_database_are_one_line_errors() {
    let database = fresh_database();
    let host = member(
        Some(&database),
        "[catalogue]\nmax_plugin_bytes = 1000000\npoll_ms = 500\n",
    );
    let hello = &built().hello;
    let line = |args: &[&str]| {
        let output = host.server.run(args);
        assert!(!output.status.success(), "{args:?} succeeded");
        let (_, stderr) = text(&output);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        stderr
    };
    let size = fs::metadata(hello).unwrap().len();
    let err = line(&["publish", hello.to_str().unwrap()]);
    assert!(
        err.contains(&format!(
            "{size} bytes, over the catalogue's limit of 1000000 bytes ([catalogue] \
             max_plugin_bytes)"
        )),
        "{err}"
    );
    let text_file = host.dir.path().join("notes.txt");
    fs::write(&text_file, "not a library").unwrap();
    let err = line(&["publish", text_file.to_str().unwrap()]);
    assert!(
        err.contains("notes.txt is not a plugin: not a shared library: no ELF header"),
        "{err}"
    );
    let err = line(&["publish", e2e::libz().to_str().unwrap()]);
    assert!(
        err.contains("is not a plugin") && err.contains("exports no plugin root module"),
        "{err}"
    );
    let err = line(&["unpublish", "nope"]);
    assert!(err.contains("no plugin named nope is published"), "{err}");

    // The catalogue's size is bounded too.
    let small = member(
        Some(&database),
        "[catalogue]\nmax_plugins = 1\npoll_ms = 500\n",
    );
    small.server.cli(&["publish", hello.to_str().unwrap()]);
    let output = small
        .server
        .run(&["publish", e2e::counter().to_str().unwrap()]);
    let (_, stderr) = text(&output);
    assert!(!output.status.success());
    assert_eq!(
        stderr.trim(),
        "error: the catalogue holds 1 plugins, its limit ([catalogue] max_plugins): unpublish \
         one first"
    );

    let alone = member(None, "");
    let output = alone.server.run(&["publish", hello.to_str().unwrap()]);
    let (_, stderr) = text(&output);
    assert!(!output.status.success());
    assert_eq!(
        stderr.trim(),
        "error: no fleet database configured: set `database` in host.toml's [tasks] or \
         HOST_DATABASE_URL to a postgres:// URL"
    );
}

#[test]
fn an_unreachable_database_is_logged_once_and_the_plugins_the_host_has_keep_serving() {
    // A port nobody listens on: every connection is refused at once.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let url = format!("postgres://postgres@127.0.0.1:{port}/nowhere");
    let dir = plugins_dir();
    // What an earlier run of the agent wrote.
    fs::copy(&built().hello, dir.path().join("hello.catalogue.so")).expect("copy hello");
    let conf = dir.path().join("host.toml");
    fs::write(&conf, "[catalogue]\npoll_ms = 100\n").expect("write host.toml");
    let server = Server::start_configured(
        dir.path(),
        &["--config", conf.to_str().expect("UTF-8")],
        |command| {
            command
                .env("HOST_DATABASE_URL", &url)
                .env("RUST_LOG", "info,host::services::catalogue=debug");
        },
    );
    server.wait_until(WAIT, "five retries of the catalogue agent", |s| {
        s.log().matches("catalogue: still unreachable").count() >= 5
    });
    let log = server.log();
    assert_eq!(
        log.matches("keeping the plugins this host has").count(),
        1,
        "{log}"
    );
    let host = Member { dir, server };
    assert_eq!(host.greet().as_deref(), Ok("Hello, Ada!"));
    assert!(host.dir.path().join("hello.catalogue.so").exists());
}
