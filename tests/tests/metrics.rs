//! `/metrics` against a real `host serve --http 127.0.0.1:0`: the by-plugin event counters
//! (crashes, quarantines, loads) are kept since the host started, so a new version of a
//! plugin does not start them again, as a Prometheus counter must only grow.

use std::time::{Duration, Instant};

use e2e::{install, plugins_dir, tough, Server, Variant};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);
const TOKEN: &str = "test-token-0123456789";

/// An answer's status and body, whatever the status.
fn request(agent: &ureq::Agent, method: &str, url: &str) -> (u16, String) {
    let auth = format!("Bearer {TOKEN}");
    let response = match method {
        "POST" => agent.post(url).header("Authorization", &auth).send(""),
        _ => agent.get(url).header("Authorization", &auth).call(),
    };
    let mut response = response.expect("an HTTP answer");
    let status = response.status().as_u16();
    (
        status,
        response.body_mut().read_to_string().unwrap_or_default(),
    )
}

/// The value of the sample `name{plugin="tough"}` in `text`; `None` if it is not there.
fn sample(text: &str, name: &str) -> Option<f64> {
    let prefix = format!("{name}{{plugin=\"tough\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(prefix.as_str()))
        .and_then(|value| value.trim().parse().ok())
}

#[test]
fn crashes_and_quarantines_are_counted_since_start_across_a_new_version() {
    // tough 0.2.0: the same plugin, a new version that answers `greet` differently.
    let v2 = Variant::of("tests/fixtures/tough")
        .edit("src/lib.rs", "Ok(\"still here\")", "Ok(\"still here, v2\")")
        .edit("Cargo.toml", "version = \"0.1.0\"", "version = \"0.2.0\"")
        .build();
    let dir = plugins_dir();
    install(tough(), dir.path(), "libtough.so");
    // One crash quarantines it (max_restarts = 1); no probation, so the new version is
    // the only one serving as soon as it is loaded.
    let conf = dir.path().join("host.toml");
    std::fs::write(
        &conf,
        "[plugins.tough]\nisolation = \"process\"\nmax_restarts = 1\nprobation_ms = 0\n",
    )
    .expect("write host.toml");
    let conf = conf.display().to_string();
    let args = ["--config", conf.as_str(), "--http", "127.0.0.1:0"];
    let server = Server::start_with_env(dir.path(), &args, &[("HOST_HTTP_TOKEN", TOKEN)]);
    let base = server.http_base();
    let agent = e2e::http_agent(Duration::from_secs(30));
    let metrics = || request(&agent, "GET", &format!("{base}/metrics")).1;
    // A crash is counted by the thread that watches the worker, which may come just after
    // the call's answer: poll until the plugin reads `quarantined` as expected.
    let metrics_when_quarantined = |expected: f64| {
        let start = Instant::now();
        loop {
            let text = metrics();
            if sample(&text, "host_plugin_quarantined") == Some(expected) {
                return text;
            }
            assert!(
                start.elapsed() < WAIT,
                "quarantined is not {expected}:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    let crash = || {
        let (status, body) = request(&agent, "POST", &format!("{base}/v1/plugins/tough/segv"));
        let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        assert_eq!(status, 502, "{body}");
        assert_eq!(body["error"]["kind"], "crashed", "{body}");
    };
    server.wait_until(WAIT, "tough to serve", |s| {
        s.call("tough", "greet", "null")
            .is_ok_and(|v| v == "still here")
    });

    crash();
    let text = metrics_when_quarantined(1.0);
    assert_eq!(
        sample(&text, "host_plugin_crashes_total"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "host_plugin_quarantines_total"),
        Some(1.0),
        "{text}"
    );

    // A new version: a new generation with a supervisor of its own, not quarantined.
    install(&v2, dir.path(), "libtough.so");
    server.wait_until(WAIT, "tough 0.2.0 to serve", |s| {
        s.call("tough", "greet", "null")
            .is_ok_and(|v| v == "still here, v2")
    });
    let text = metrics_when_quarantined(0.0);
    assert_eq!(
        sample(&text, "host_plugin_crashes_total"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "host_plugin_loads_total"),
        Some(2.0),
        "{text}"
    );

    // It crashes again: the counters go on from where they were, they do not read 1.
    crash();
    let text = metrics_when_quarantined(1.0);
    assert_eq!(
        sample(&text, "host_plugin_crashes_total"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "host_plugin_quarantines_total"),
        Some(2.0),
        "{text}"
    );
    assert!(
        text.contains("# TYPE host_plugin_crashes counter"),
        "{text}"
    );
}
