//! `host new`: the generated crate builds with a plain `cargo build --release` and answers
//! `greet` through the host.

use std::fs;
use std::process::Command;

use e2e::{host, install, plugins_dir, root, text};

#[test]
fn host_new_creates_a_plugin_that_builds_and_answers() {
    let work = tempfile::tempdir().unwrap();
    let path = work.path().to_str().unwrap();
    let out = host(&["new", "ops-greeter", "--path", path]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("cargo build --release"), "{stdout}");
    let crate_dir = work.path().join("ops-greeter");
    let manifest = fs::read_to_string(crate_dir.join("Cargo.toml")).unwrap();
    assert!(manifest.contains("crate-type = [\"cdylib\"]"), "{manifest}");
    let api = fs::canonicalize(root().join("plugin-api")).unwrap();
    assert!(
        manifest.contains(&format!("plugin-api = {{ path = \"{}\" }}", api.display())),
        "{manifest}"
    );

    // A plain release build. The workspace's lock file and a shared target directory only
    // spare the test from resolving and compiling the dependencies again.
    fs::copy(root().join("Cargo.lock"), crate_dir.join("Cargo.lock")).unwrap();
    let target = e2e::target_dir().join("e2e-new");
    let build = Command::new(env!("CARGO"))
        .args(["build", "--release"])
        .current_dir(&crate_dir)
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .unwrap();
    assert!(
        build.status.success(),
        "{}",
        String::from_utf8_lossy(&build.stderr)
    );

    let dir = plugins_dir();
    install(
        &target.join("release/libops_greeter.so"),
        dir.path(),
        "libops_greeter.so",
    );
    let plugins = dir.path().to_str().unwrap();
    let out = host(&[
        "call",
        "ops-greeter",
        "greet",
        "--input",
        r#"{"name":"Ada"}"#,
        "--plugins",
        plugins,
        "--socket",
        "/nonexistent/h.sock",
    ]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("Hello, Ada!"), "{stdout}");

    let again = host(&["new", "ops-greeter", "--path", path]);
    assert!(!again.status.success());
    assert!(text(&again).1.contains("already exists"));
    let bad = host(&["new", "../escape", "--path", path]);
    assert!(!bad.status.success());
    assert!(text(&bad).1.contains("invalid plugin name"));
}
