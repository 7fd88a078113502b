//! Logs for machines (issue 20, item 4): `--log-format json` writes one JSON object per
//! line naming the plugin, generation and call; no colours when stderr is not a terminal; a
//! bad value is one line naming the flag or the host.toml key.

use std::fs;

use e2e::{built, host, install, plugins_dir, text, Server};
use serde_json::Value;

/// A plugins directory with hello in it.
fn with_hello() -> tempfile::TempDir {
    let dir = plugins_dir();
    install(&built().hello, dir.path(), "libhello.so");
    dir
}

#[test]
fn json_logs_parse_line_by_line_and_name_the_call() {
    let plugins = with_hello();
    let mut server = Server::start(plugins.path(), &["--log-format", "json"]);
    let out = server.call("hello", "greet", r#"{"name":"Ada"}"#);
    assert!(out.is_ok(), "{out:?}");
    assert!(server.stop());
    let log = server.log();
    let lines: Vec<Value> = log
        .lines()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|err| panic!("not JSON ({err}): {line}"))
        })
        .collect();
    // hello logs `greeting Ada` during the call: tagged with plugin, generation and the
    // call's span (its id).
    let greeting = lines
        .iter()
        .find(|l| l["fields"]["message"] == "greeting Ada")
        .unwrap_or_else(|| panic!("no line of the call in:\n{log}"));
    assert_eq!(greeting["fields"]["plugin"], "hello", "{greeting}");
    assert_eq!(greeting["fields"]["generation"], 1, "{greeting}");
    assert_eq!(greeting["span"]["name"], "call", "{greeting}");
    assert!(greeting["span"]["id"].is_u64(), "{greeting}");
    assert_eq!(greeting["span"]["callback"], "greet", "{greeting}");
    // Not a terminal: no colours anywhere.
    assert!(!log.contains('\u{1b}'), "{log}");
}

#[test]
fn text_logs_to_a_file_have_no_colours() {
    let plugins = with_hello();
    let mut server = Server::start(plugins.path(), &[]);
    assert!(server.call("hello", "greet", r#"{"name":"Ada"}"#).is_ok());
    assert!(server.stop());
    let log = server.log();
    assert!(log.contains("greeting Ada"), "{log}");
    assert!(!log.contains('\u{1b}'), "{log}");
}

#[test]
fn a_bad_log_format_is_one_line_naming_the_flag_or_the_field() {
    let plugins = with_hello();
    let dir = plugins.path().to_str().unwrap();
    let (_, stderr) = text(&host(&["serve", "--plugins", dir, "--log-format", "xml"]));
    assert_eq!(
        stderr,
        "error: --log-format \"xml\": expected text or json\n"
    );
    let config = plugins.path().join("host.toml");
    fs::write(&config, "log_format = \"xml\"\n").unwrap();
    let output = host(&[
        "serve",
        "--plugins",
        dir,
        "--config",
        config.to_str().unwrap(),
    ]);
    let (_, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("key `log_format`"), "{stderr}");
}

#[test]
fn rust_log_still_filters_json_logs() {
    let plugins = with_hello();
    let mut server = Server::start_with_env(
        plugins.path(),
        &["--log-format", "json"],
        &[("RUST_LOG", "warn,plugin=info")],
    );
    assert!(server.call("hello", "greet", r#"{"name":"Ada"}"#).is_ok());
    assert!(server.stop());
    let log = server.log();
    let levels: Vec<(String, String)> = log
        .lines()
        .map(|line| {
            let value: Value =
                serde_json::from_str(line).unwrap_or_else(|err| panic!("not JSON ({err}): {line}"));
            (
                value["level"].as_str().unwrap_or_default().to_owned(),
                value["target"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    // The plugin's records at info, the host's own only from warn up.
    assert!(
        levels.iter().any(|(l, t)| l == "INFO" && t == "plugin"),
        "{log}"
    );
    assert!(
        !levels.iter().any(|(l, t)| l == "INFO" && t != "plugin"),
        "{log}"
    );
}
