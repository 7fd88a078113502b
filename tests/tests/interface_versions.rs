//! Interface versions: a plugin built against plugin-api 0.1.0 (the frozen copy under
//! `tests/fixtures`) keeps loading and answering in the current host. This test stays
//! forever: an interface change that breaks it is a breaking release, on purpose only.

use std::path::PathBuf;
use std::sync::OnceLock;

use e2e::{host, install, plugins_dir, root, text};
use host::{Host, HostOptions};
use plugin_api::{ErrorKind, Level};
use serde_json::{json, Value};

/// Builds `tests/fixtures/frozen-plugin` against `tests/fixtures/plugin-api-0.1.0`.
fn frozen_plugin() -> &'static PathBuf {
    static BUILT: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let (_, path) = BUILT.get_or_init(|| {
        let work = tempfile::tempdir().unwrap();
        e2e::copy_dir(&root().join("tests/fixtures"), work.path());
        let crate_dir = work.path().join("frozen-plugin");
        std::fs::copy(root().join("Cargo.lock"), crate_dir.join("Cargo.lock")).unwrap();
        let target = e2e::target_dir().join("e2e-variants");
        e2e::cargo(&["build"], &crate_dir, Some(&target));
        let out = install(
            &target.join("debug/libfrozen.so"),
            work.path(),
            "libfrozen.so",
        );
        (work, out)
    });
    path
}

#[test]
fn a_plugin_built_against_plugin_api_0_1_0_loads_and_answers() {
    let dir = plugins_dir();
    let file = install(frozen_plugin(), dir.path(), "libfrozen.so");
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
        ("frozen", "0.1.0", "1.0")
    );
    assert_eq!(meta.callbacks, ["echo", "fail"]);

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
    let unknown = host.call("frozen", "nope", "null").unwrap();
    assert!(unknown
        .result()
        .unwrap_err()
        .message()
        .ends_with("it has: execute, echo, fail"));
}

#[test]
fn host_check_reports_the_frozen_plugins_versions() {
    let out = host(&["check", frozen_plugin().to_str().unwrap()]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("plugin-api:  0.1.0 (ABI 1.0)"), "{stdout}");
}
