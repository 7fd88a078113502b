//! Publish to served on every host of a fleet of 3: `host publish` through one host's
//! socket until all three hosts answer from the published bytes (their agents woken by
//! NOTIFY, the file written, checked and hot-loaded). Needs a PostgreSQL server, as the
//! fleet group does ([`super::fleet::server_url`]); a database of its own is created on it for the run.

use std::time::{Duration, Instant};

use host::control::Publish;
use host::postgres::Database;

use super::{fresh_dir, percentile, row, Args, Row, Serve};

const FIGURE: &str = "publish to served on every host of 3 (host publish through one host's \
                      socket until all three serve the new bytes)";

pub(super) fn figures(args: &Args, rows: &mut Vec<Row>) {
    let server = super::fleet::server_url();
    let Some(server) = server else {
        rows.push(row(
            FIGURE,
            "not measured: no PostgreSQL server (--database URL, BENCH_DATABASE_URL or \
             E2E_DATABASE_URL)"
                .into(),
            "p50 <= 2 s",
            None,
        ));
        return;
    };
    let url = fresh_database(&server);
    let n = if args.smoke { 3 } else { 20 };
    let source = std::fs::read(&args.plugin).expect("the benchmark plugin");
    let hosts: Vec<Serve> = (0..3)
        .map(|i| {
            let dir = fresh_dir(&format!("catalogue-{i}"));
            let config = dir.with_extension("toml");
            std::fs::write(&config, format!("[tasks]\ndatabase = \"{url}\"\n")).expect("host.toml");
            Serve::start_with(&args.host, dir, &["--config".as_ref(), config.as_os_str()]).0
        })
        .collect();
    let mut clients: Vec<_> = hosts.iter().map(Serve::client).collect();
    let files = fresh_dir("catalogue-files");
    let mut took = Vec::with_capacity(n);
    for i in 0..n {
        // Each version differs from the last by its padding.
        let file = files.join(format!("v{i}.so"));
        let mut bytes = source.clone();
        bytes.resize(source.len() + i + 1, 0);
        std::fs::write(&file, &bytes).expect("write plugin");
        let started = Instant::now();
        let (_, published) = clients[0]
            .publish(Publish {
                path: file.clone(),
                name: None,
                canary: 0,
                publisher: "bench@localhost".into(),
            })
            .expect("host publish");
        let deadline = started + Duration::from_secs(60);
        for client in &mut clients {
            loop {
                assert!(
                    Instant::now() < deadline,
                    "publish {i}: not served within 60 s"
                );
                let served = client.list().expect("host list").iter().any(|f| {
                    f.serving
                        .as_ref()
                        .is_some_and(|s| s.sha256.as_deref() == Some(&published.sha256))
                });
                if served {
                    break;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        took.push(started.elapsed().as_secs_f64() * 1e3);
    }
    took.sort_by(f64::total_cmp);
    let p50 = percentile(&took, 0.5);
    rows.push(row(
        &format!("{FIGURE}, {n} publishes"),
        format!("p50 {p50:.0} ms, p99 {:.0} ms", percentile(&took, 0.99)),
        "p50 <= 2 s",
        Some(p50 <= 2000.0),
    ));
    // Serve removes each host's plugins directory; its host.toml and state are ours.
    let dirs: Vec<_> = hosts.iter().map(|h| h.dir.clone()).collect();
    drop(hosts);
    for dir in dirs {
        let _ = std::fs::remove_file(dir.with_extension("toml"));
        let _ = std::fs::remove_dir_all(dir.with_extension("state"));
    }
    let _ = std::fs::remove_dir_all(files);
}

/// A new database on the server at `server`; its URL.
fn fresh_database(server: &str) -> String {
    let name = format!("bench_catalogue_{}", std::process::id());
    let db = Database::open(server, 1, Duration::from_secs(5)).expect("BENCH_DATABASE_URL");
    db.block_on(async {
        let client = db
            .client("bench")
            .await
            .expect("the bench database answers");
        // One statement each: DROP and CREATE DATABASE refuse to run in a transaction.
        for statement in [
            format!("DROP DATABASE IF EXISTS {name}"),
            format!("CREATE DATABASE {name}"),
        ] {
            client
                .batch_execute(&statement)
                .await
                .expect("create the bench database");
        }
    });
    let (prefix, _) = server.rsplit_once('/').expect("a URL with a database");
    format!("{prefix}/{name}")
}
