//! Interface versions: plugins built against the frozen copies of earlier plugin-apis under
//! `tests/fixtures` keep loading and answering in the current host, through the path for
//! older ABI minors (their layout is checked against no newer type, and the methods a later
//! minor added fall back to what the older ones can do). These tests stay forever: an
//! interface change that breaks them is a breaking release, on purpose only.
//!
//! * `plugin-api-0.1.0`: as first released, ABI 1.0;
//! * `plugin-api-1.0-note`: ABI 1.0 with the plugin-name ELF note and the plugin's own panic
//!   hook, as on main before ABI 1.1;
//! * `plugin-api-1.1`: ABI 1.1 (typed calls), as on main before ABI 1.2 (state handover);
//! * `plugin-api-1.2`: ABI 1.2 (state handover), as on main before ABI 1.3 (declared
//!   schedules);
//! * `plugin-api-1.3`: ABI 1.3 (declared schedules), as on main before ABI 1.4 (the stop
//!   signal). Replacing any of them retires it without a stop signal (the default body);
//! * `plugin-api-1.4`: ABI 1.4 (the stop signal), as on main before ABI 1.5 (log records
//!   sent live while a call runs).

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use e2e::{host, install, plugins_dir, root, text};
use host::{CallRequest, Host, HostOptions, LogSink};
use plugin_api::{ErrorKind, Level};
use serde_json::{json, Value};

/// Builds `tests/fixtures/frozen-plugin` against the frozen plugin-api in
/// `tests/fixtures/{api}`.
fn frozen_plugin_against(api: &str) -> PathBuf {
    let work = tempfile::tempdir().unwrap().keep();
    e2e::copy_dir(&root().join("tests/fixtures"), &work);
    let crate_dir = work.join("frozen-plugin");
    e2e::replace_in(
        &crate_dir.join("Cargo.toml"),
        "path = \"../plugin-api-0.1.0\"",
        &format!("path = \"../{api}\""),
    );
    std::fs::copy(root().join("Cargo.lock"), crate_dir.join("Cargo.lock")).unwrap();
    let target = e2e::target_dir().join(format!("e2e-frozen-{api}"));
    e2e::cargo(&["build"], &crate_dir, Some(&target));
    install(&target.join("debug/libfrozen.so"), &work, "libfrozen.so")
}

fn frozen_plugin() -> &'static PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| frozen_plugin_against("plugin-api-0.1.0"))
}

fn frozen_plugin_with_note() -> &'static PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| frozen_plugin_against("plugin-api-1.0-note"))
}

#[test]
fn a_plugin_built_against_plugin_api_0_1_0_loads_and_answers() {
    frozen_plugin_loads_and_answers(frozen_plugin(), "1.0");
}

#[test]
fn a_plugin_built_against_abi_1_0_with_the_note_loads_and_answers() {
    frozen_plugin_loads_and_answers(frozen_plugin_with_note(), "1.0");
    // The note is read without loading it.
    let name = host::loader::declared_name(frozen_plugin_with_note()).unwrap();
    assert_eq!(name.as_deref(), Some("frozen"));
}

#[test]
fn a_plugin_built_against_abi_1_1_loads_and_answers() {
    let plugin = frozen_plugin_against("plugin-api-1.1");
    frozen_plugin_loads_and_answers(&plugin, "1.1");
    let name = host::loader::declared_name(&plugin).unwrap();
    assert_eq!(name.as_deref(), Some("frozen"));
}

#[test]
fn a_plugin_built_against_abi_1_2_loads_and_answers() {
    let plugin = frozen_plugin_against("plugin-api-1.2");
    frozen_plugin_loads_and_answers(&plugin, "1.2");
}

#[test]
fn a_plugin_built_against_abi_1_3_loads_and_answers() {
    let plugin = frozen_plugin_against("plugin-api-1.3");
    frozen_plugin_loads_and_answers(&plugin, "1.3");
}

#[test]
fn a_plugin_built_against_abi_1_4_loads_and_answers() {
    let plugin = frozen_plugin_against("plugin-api-1.4");
    frozen_plugin_loads_and_answers(&plugin, "1.4");
}

fn frozen_plugin_loads_and_answers(plugin: &std::path::Path, abi: &str) {
    let dir = plugins_dir();
    let file = install(plugin, dir.path(), "libfrozen.so");
    let mut settings = host::config::PluginSettings::default();
    settings.config.insert("suffix".into(), "!".into());
    let host = Host::new(HostOptions {
        plugins: [("frozen".to_owned(), settings)].into(),
        ..HostOptions::default()
    })
    .unwrap();
    host.load_file(&file).expect("the frozen plugin loads");
    let meta = host.status()[0].metadata.clone().unwrap();
    assert_eq!(
        (
            meta.name.as_str(),
            meta.api_version.as_str(),
            meta.abi_version.as_str()
        ),
        ("frozen", "0.1.0", abi)
    );
    assert_eq!(meta.callbacks, ["echo", "fail"]);
    assert!(
        meta.schedules.is_empty(),
        "an older plugin declares no schedule"
    );

    let outcome = host.call("frozen", "echo", r#"{"text":"hi"}"#).unwrap();
    let result: Value = serde_json::from_str(outcome.result().unwrap().get()).unwrap();
    assert_eq!(result, json!({"text": "hi!", "generation": 1}));
    assert_eq!(outcome.logs[0].level, Level::Warn);
    assert_eq!(outcome.logs[0].message, "echoing hi");
    assert_eq!(outcome.follow_ups[0].callback, "echo");
    assert_eq!(outcome.follow_ups[0].input, json!({"text": "again"}));

    let failed = host.call("frozen", "fail", "null").unwrap();
    assert_eq!(failed.result().unwrap_err().kind(), ErrorKind::InvalidInput);
    let about = host.call("frozen", "execute", "null").unwrap();
    assert_eq!(
        about.result().unwrap().get(),
        r#""frozen at plugin-api 0.1.0""#
    );
    // Typed calls came with ABI 1.1: an older plugin has none, and says so (and this one
    // registers none).
    let err = host.typed("frozen", "echo").unwrap_err();
    assert_eq!(err.kind, host::CallErrorKind::UnknownCallback);
    let unknown = host.call("frozen", "nope", "null").unwrap();
    assert!(unknown
        .result()
        .unwrap_err()
        .message()
        .ends_with("it has: execute, echo, fail"));

    // Log records sent live came with ABI 1.5: a call that asks for them is answered as
    // before, its records only with the outcome.
    let live = Arc::new(Mutex::new(Vec::new()));
    let into = live.clone();
    let request = CallRequest::new("frozen", "echo", r#"{"text":"live"}"#).live_logs(LogSink::new(
        move |r| into.lock().unwrap().push(r.message.clone()),
    ));
    let outcome = host.invoke(request).unwrap();
    assert_eq!(outcome.logs[0].message, "echoing live");
    assert!(live.lock().unwrap().is_empty(), "{live:?}");

    // Replacing it asks it for its state (ABI 1.2), which a plugin of an older minor does
    // not have: it answers none, and the next generation starts as before.
    let restarted = host.restart_plugin("frozen").unwrap();
    assert_eq!(restarted, "restarted plugin frozen: generation 1 -> 2");
    let outcome = host.call("frozen", "echo", r#"{"text":"hi"}"#).unwrap();
    let result: Value = serde_json::from_str(outcome.result().unwrap().get()).unwrap();
    assert_eq!(result, json!({"text": "hi!", "generation": 2}));
}

#[test]
fn host_check_reports_the_frozen_plugins_versions() {
    let out = host(&["check", frozen_plugin().to_str().unwrap()]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("plugin-api:  0.1.0 (ABI 1.0)"), "{stdout}");
}
