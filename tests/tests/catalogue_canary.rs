//! Canary rollouts of the plugin catalogue (issue 18, item 7), three real hosts on one fresh
//! database each time: a canary whose self-test fails, one whose probation trips a rollback
//! and one killed on probation fail the rollout (the others never load it); a good one
//! reaches every host after probation, and so does one whose canary is restarted on
//! probation (it keeps its id).

use std::fs;
use std::path::Path;

use e2e::catalogue::{
    failing_self_test, fleet, fleet_with, panicking_greet, passing_self_test, publish, published,
    sha256_hex, wait, Member, FLEET_CONFIG,
};
use e2e::postgres::fresh_database;
use e2e::{built, text};

/// Three hosts with `config` on `database`, serving hello 0.1.0 from the catalogue; then
/// `next` published with `--canary 1`, once the canary serves it on probation.
struct CanaryRollout {
    hosts: Vec<Member>,
    /// Which of `hosts` is the canary, and its id.
    canary: usize,
    canary_id: String,
    /// The SHA-256 of 0.1.0 and of `next`.
    sha1: String,
    sha2: String,
}

fn canary_rollout(database: &str, config: &str, next: &Path) -> CanaryRollout {
    let hosts = fleet_with(database, config);
    let v1 = &built().hello;
    let (sha1, sha2) = (sha256_hex(v1), sha256_hex(next));
    publish(&hosts[0].server, v1, &[]);
    wait("every host to serve 0.1.0", || {
        hosts
            .iter()
            .all(|h| h.serving_sha256().as_deref() == Some(sha1.as_str()))
    });
    publish(&hosts[0].server, next, &["--canary", "1"]);
    let canaries: Vec<String> =
        serde_json::from_value(published(&hosts[0].server)[0]["canaries"].clone()).unwrap();
    let canary = hosts
        .iter()
        .position(|h| h.is(&canaries[0]))
        .expect("the canary is one of the three");
    wait("the canary to serve the new version on probation", || {
        hosts[canary].serving_sha256().as_deref() == Some(sha2.as_str())
    });
    CanaryRollout {
        hosts,
        canary,
        canary_id: canaries[0].clone(),
        sha1,
        sha2,
    }
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
    let ids: Vec<String> = hosts.iter().map(Member::id).collect();
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
    // The same in `--json`, still an array of hosts with "alive": each host says what it
    // made of the plugin, and carries its rollout and why it stopped.
    let fleet = e2e::host(&["fleet", "--json", "--database", &database]);
    let (stdout, stderr) = text(&fleet);
    assert!(fleet.status.success(), "{stderr}");
    let listed: Vec<serde_json::Value> = serde_json::from_str(&stdout).unwrap();
    assert_eq!(listed.len(), 3, "{stdout}");
    for row in &listed {
        assert_eq!(row["alive"], true, "{stdout}");
        let plugin = &row["published"][0];
        assert_eq!(plugin["name"], "hello", "{stdout}");
        assert_eq!(plugin["sha256"], sha256_hex(bad).as_str(), "{stdout}");
        assert_eq!(plugin["rollout"], "failed", "{stdout}");
        assert_eq!(plugin["rollout_reason"], reason, "{stdout}");
        let canary = row["id"] == canaries[0].as_str();
        assert_eq!(plugin["canary"], canary, "{stdout}");
        if canary {
            assert_eq!(plugin["state"], "failed", "{stdout}");
            assert!(
                plugin["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("the greeting table is empty")),
                "{stdout}"
            );
        } else {
            assert_eq!(plugin["state"], serde_json::Value::Null, "{stdout}");
        }
    }
}

#[test]
fn a_good_canary_rollout_reaches_every_host_after_probation() {
    let database = fresh_database();
    let CanaryRollout {
        hosts,
        canary_id,
        sha1,
        sha2,
        ..
    } = canary_rollout(&database, FLEET_CONFIG, passing_self_test());
    // On probation there (1.5 s): the others still serve 0.1.0.
    if published(&hosts[0].server)[0]["rollout"] == "canary" {
        for host in hosts.iter().filter(|h| !h.is(&canary_id)) {
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
    let CanaryRollout {
        mut hosts,
        canary,
        canary_id,
        sha1,
        ..
    } = canary_rollout(&database, config, passing_self_test());
    let mut canary = hosts.remove(canary);
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
            "canary {canary_id} is gone (no heartbeat within 2000 ms) before it passed \
             probation"
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
    let CanaryRollout {
        hosts,
        canary,
        canary_id,
        sha1,
        ..
    } = canary_rollout(&database, config, panicking_greet());
    let canary = &hosts[canary];
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
        reason.starts_with(&format!("canary {canary_id}: ")) && reason.contains("rolled back"),
        "{reason}"
    );
    for host in &hosts {
        assert_eq!(host.serving_sha256().as_deref(), Some(sha1.as_str()));
    }
    // The canary goes back to the last good version on disk too: a restart would not load
    // the failed file afresh.
    let file = canary.dir.path().join("hello.catalogue.so");
    wait("the canary's file to be 0.1.0 again", || {
        fs::read(&file).ok() == fs::read(&built().hello).ok()
    });
}

/// A canary restarted on probation comes back under the id kept in its state directory, so
/// the rollout goes on waiting for it and completes once it served a whole probation
/// again. (Before the id was kept, it came back under a new one, the old one went quiet,
/// and the rollout failed: "canary ... is gone".)
#[test]
fn a_canary_restarted_on_probation_keeps_its_id_and_completes_the_rollout() {
    let database = fresh_database();
    // A host is gone 6 s after its last heartbeat; the probation (10 s) outlasts that.
    let config = "[tasks]\nlease_ms = 6000\n\n[catalogue]\npoll_ms = 200\n\n\
                  [plugins.hello]\nprobation_ms = 10000\n";
    let CanaryRollout {
        mut hosts,
        canary: at,
        sha2,
        ..
    } = canary_rollout(&database, config, passing_self_test());
    assert_eq!(published(&hosts[0].server)[0]["rollout"], "canary");
    let before = hosts[at].id();
    let restarted = std::time::Instant::now();
    hosts[at].restart(libc::SIGKILL);
    wait("the rollout to be decided", || {
        published(&hosts[0].server)[0]["rollout"] != "canary"
    });
    let listed = published(&hosts[1].server);
    assert_eq!(listed[0]["rollout"], "everywhere", "{listed}");
    assert_eq!(hosts[at].id(), before, "the restarted canary took a new id");
    // It loaded 0.2.0 at start, where a load has no probation of its own (nothing to roll
    // back to): it passed only after serving it a whole probation again.
    assert!(
        restarted.elapsed() >= std::time::Duration::from_secs(10),
        "the restarted canary passed {:?} after its restart, within its probation",
        restarted.elapsed()
    );
    wait("every host to serve 0.2.0", || {
        hosts
            .iter()
            .all(|h| h.serving_sha256().as_deref() == Some(sha2.as_str()))
    });
    // One row per host: the restart left no dead row behind, and the canary's row is its
    // new process's.
    let fleet = e2e::host(&["fleet", "--json", "--database", &database]);
    let (stdout, stderr) = text(&fleet);
    assert!(fleet.status.success(), "{stderr}");
    let rows: Vec<serde_json::Value> = serde_json::from_str(&stdout).unwrap();
    assert_eq!(rows.len(), 3, "{stdout}");
    let row = rows
        .iter()
        .find(|r| r["id"] == before.as_str())
        .unwrap_or_else(|| panic!("{before} missing: {stdout}"));
    assert_eq!(row["pid"], hosts[at].server.pid(), "{stdout}");
    assert_eq!(row["alive"], true, "{stdout}");
}
