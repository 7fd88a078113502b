//! The fleet's plugin catalogue (issue 18, item 7), against a real PostgreSQL server
//! (`.ci/test` starts one and exports E2E_DATABASE_URL): `host publish` through one host's
//! socket, three real `host serve` processes on one fresh database loading what is
//! published, `host unpublish`, the one-line refusals, and a database outage. The canary
//! rollouts are in `catalogue_canary.rs`; the helpers in `tests/src/catalogue.rs`.

use std::fs;
use std::time::Instant;

use e2e::catalogue::{
    fleet, member, passing_self_test, publish, published, sha256_hex, wait, Member, WAIT,
};
use e2e::postgres::fresh_database;
use e2e::{built, plugins_dir, text, Server};

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
    let host = Member {
        dir,
        state: tempfile::tempdir().expect("temp dir"),
        server,
        database: Some(url.clone()),
    };
    assert_eq!(host.greet().as_deref(), Ok("Hello, Ada!"));
    assert!(host.dir.path().join("hello.catalogue.so").exists());
}
