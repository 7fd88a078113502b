//! The command line as scripts see it: exit statuses, the listing, one-shot calls, and the
//! README's promises about `host new` (issue 8, defect 11). Each test failed on the code
//! before the fix.

use std::fs;
use std::process::Command;
use std::time::Duration;

use e2e::{built, host, install, plugins_dir, root, text, tough, Server, Variant};

const WAIT: Duration = Duration::from_secs(30);
const NO_HOST: [&str; 2] = ["--socket", "/nonexistent/host.sock"];

fn status(args: &[&str]) -> (Option<i32>, String) {
    let out = host(args);
    (out.status.code(), text(&out).1)
}

#[test]
fn exit_statuses_tell_failures_apart() {
    let dir = plugins_dir();
    install(&built().hello, dir.path(), "libhello.so");
    install(tough(), dir.path(), "libtough.so");
    fs::write(dir.path().join("broken.so"), b"\x7fELF garbage").unwrap();
    let conf = dir.path().join("host.toml");
    fs::write(&conf, "[plugins.tough]\ntimeout_ms = 200\n").unwrap();
    let plugins = dir.path().to_str().unwrap();
    let conf = conf.to_str().unwrap();
    let one_shot = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--plugins", plugins, "--config", conf]);
        all.extend(NO_HOST);
        status(&all)
    };

    // 2: usage.
    assert_eq!(status(&["call"]).0, Some(2));
    let (code, err) = one_shot(&["call", "hello", "greet", "--input", "{nope"]);
    assert_eq!(code, Some(2), "{err}");
    // 3: the plugin returned an error.
    let (code, err) = one_shot(&["call", "hello", "fail"]);
    assert_eq!(code, Some(3), "{err}");
    let (code, err) = one_shot(&["call", "hello", "panic"]);
    assert_eq!(code, Some(3), "{err}");
    // 4: no such plugin, no host.
    let (code, err) = one_shot(&["call", "ghost", "greet"]);
    assert_eq!(code, Some(4), "{err}");
    let mut list = vec!["list"];
    list.extend(NO_HOST);
    let (code, err) = status(&list);
    assert_eq!(code, Some(4), "{err}");
    // 5: timeout.
    let (code, err) = one_shot(&["call", "tough", "sleep", "--input", r#"{"ms":3000}"#]);
    assert_eq!(code, Some(5), "{err}");
    // 6: the plugin file failed its checks, or failed to load.
    let broken = dir.path().join("broken.so");
    let (code, err) = status(&["check", broken.to_str().unwrap()]);
    assert_eq!(code, Some(6), "{err}");
    let bad_config = dir.path().join("bad.toml");
    fs::write(
        &bad_config,
        "[plugins.hello]\nconfig = { greting = \"typo\" }\n",
    )
    .unwrap();
    let mut args = vec!["call", "hello", "greet", "--plugins", plugins];
    args.extend(["--config", bad_config.to_str().unwrap()]);
    args.extend(NO_HOST);
    let (code, err) = status(&args);
    assert_eq!(code, Some(6), "{err}");

    // The same through a running host.
    let server = Server::start(dir.path(), &["--config", conf]);
    server.wait_until(WAIT, "tough", |s| s.call("tough", "greet", "null").is_ok());
    let socket = server.socket.to_str().unwrap();
    let (code, err) = status(&[
        "call",
        "tough",
        "sleep",
        "--input",
        r#"{"ms":3000}"#,
        "--socket",
        socket,
    ]);
    assert_eq!(code, Some(5), "{err}");
    let (code, err) = status(&["call", "ghost", "x", "--socket", socket]);
    assert_eq!(code, Some(4), "{err}");
    let (code, err) = status(&["call", "hello", "fail", "--socket", socket]);
    assert_eq!(code, Some(3), "{err}");

    let help = text(&host(&["--help"])).0;
    for line in [
        "Exit status:",
        "3  the plugin returned an error",
        "6  a plugin file",
    ] {
        assert!(help.contains(line), "{help}");
    }
}

#[test]
fn the_listing_prints_every_column() {
    let dir = plugins_dir();
    install(&built().hello, dir.path(), "libhello.so");
    let server = Server::start(dir.path(), &[]);
    for _ in 0..3 {
        server.wait_until(WAIT, "a call", |s| {
            s.call("hello", "greet", r#"{"name":"Ada"}"#).is_ok()
        });
    }
    let out = host(&["list", "--socket", server.socket.to_str().unwrap()]);
    let table = text(&out).0;
    let mut lines = table.lines();
    let header = lines.next().unwrap();
    let row = lines.next().unwrap();
    let at = header.find("CALLS").expect("a CALLS column");
    let calls: String = row[at..]
        .chars()
        .take_while(|c| !c.is_whitespace())
        .collect();
    assert_eq!(calls, "3", "{table}");
    let status_at = header.find("CALLBACKS / STATUS").unwrap();
    assert!(row[status_at..].starts_with("execute, greet"), "{table}");
}

#[test]
fn check_lists_just_execute_for_a_plugin_without_callbacks() {
    let bare = Variant::of("example-plugins/hello")
        .edit(
            "src/lib.rs",
            "        callbacks\n            .add(\"greet\", Hello::greet)\n            .add(\"wait\", Hello::wait)\n            .add(\"fail\", Hello::fail)\n            .add(\"panic\", Hello::panic)\n            .add_bytes(\"shout\", Hello::shout);",
            "        let _ = (callbacks, Hello::greet, Hello::wait, Hello::fail, Hello::panic, Hello::shout);",
        )
        .build();
    let out = host(&["check", bare.to_str().unwrap()]);
    let stdout = text(&out).0;
    assert!(
        stdout.lines().any(|l| l == "callbacks:   execute"),
        "{stdout}"
    );
}

#[test]
fn a_one_shot_call_loads_only_the_file_that_declares_the_plugin() {
    let marker = Variant::of("example-plugins/hello")
        .edit("Cargo.toml", "name = \"hello\"", "name = \"marker\"")
        .edit(
            "src/lib.rs",
            "export_plugin!(Hello);",
            "export_plugin!(Hello);\n\n#[used]\n#[link_section = \".init_array\"]\nstatic MARK: extern \"C\" fn() = {\n    extern \"C\" fn mark() {\n        if let Some(path) = std::env::var_os(\"E2E_LOADED_MARKER\") {\n            let _ = std::fs::write(path, b\"loaded\");\n        }\n    }\n    mark\n};",
        )
        .build();
    let dir = plugins_dir();
    // Sorted first, and not named like the plugin called.
    install(&marker, dir.path(), "aaa.so");
    install(&built().hello, dir.path(), "greeter.so");
    let flag = dir.path().join("marker-loaded");
    let out = Command::new(&built().host)
        .args(["call", "hello", "greet", "--input", r#"{"name":"Ada"}"#])
        .args(["--plugins", dir.path().to_str().unwrap()])
        .args(NO_HOST)
        .env("E2E_LOADED_MARKER", &flag)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out).1);
    assert!(text(&out).0.contains("Hello, Ada!"));
    assert!(!flag.exists(), "the other plugin file was loaded");

    // The marker really writes its flag when loaded (so the check above means something).
    let out = Command::new(&built().host)
        .args(["check", dir.path().join("aaa.so").to_str().unwrap()])
        .env("E2E_LOADED_MARKER", &flag)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out).1);
    assert!(flag.exists());
}

#[test]
fn a_panic_in_a_one_shot_call_is_one_line() {
    let dir = plugins_dir();
    install(tough(), dir.path(), "libtough.so");
    let mut args = vec![
        "call",
        "tough",
        "panic",
        "--plugins",
        dir.path().to_str().unwrap(),
    ];
    args.extend(NO_HOST);
    let out = host(&args);
    let stderr = text(&out).1;
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("error: plugin tough (generation 1), `panic`: plugin tough panicked in callback `panic`: tough panicked on purpose with a second line (at src/lib.rs:"),
        "{stderr}"
    );
}

#[test]
fn the_readme_shows_what_host_new_writes() {
    let work = tempfile::tempdir().unwrap();
    let out = host(&[
        "new",
        "disk-report",
        "--path",
        work.path().to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out).1);
    let generated = fs::read_to_string(work.path().join("disk-report/src/lib.rs")).unwrap();
    let readme = fs::read_to_string(root().join("README.md")).unwrap();
    let listing = readme
        .split("The generated `src/lib.rs` is a complete plugin:\n\n```rust\n")
        .nth(1)
        .and_then(|rest| rest.split("\n```").next())
        .expect("the README lists the generated src/lib.rs");
    assert_eq!(listing.trim_end(), generated.trim_end());
    // The README installs the binary before it uses a bare `host`.
    let writing = readme.split("## Writing a plugin").nth(1).unwrap();
    let install_at = writing
        .find("cargo install --path host --locked")
        .expect("installs host");
    let first_use = writing.find("host new").unwrap();
    assert!(install_at < first_use);
}

#[test]
fn host_new_refuses_a_bad_name_as_a_usage_error_and_takes_plugin_api() {
    // Issue 16, item 6: an invalid name exited 1, and the crate always depended on the
    // plugin-api of the checkout the binary was built from.
    let work = tempfile::tempdir().unwrap();
    let path = work.path().to_str().unwrap();
    let (code, err) = status(&["new", "9lives", "--path", path]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("invalid plugin name"), "{err}");

    let missing = work.path().join("no-such-api");
    let (code, err) = status(&[
        "new",
        "elsewhere",
        "--path",
        path,
        "--plugin-api",
        missing.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("pass --plugin-api PATH"), "{err}");

    let api = work.path().join("vendored/plugin-api");
    e2e::copy_dir(&root().join("plugin-api"), &api);
    let out = host(&[
        "new",
        "vendored-user",
        "--path",
        path,
        "--plugin-api",
        api.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out).1);
    let manifest = fs::read_to_string(work.path().join("vendored-user/Cargo.toml")).unwrap();
    let api = fs::canonicalize(&api).unwrap();
    assert!(
        manifest.contains(&format!("plugin-api = {{ path = \"{}\" }}", api.display())),
        "{manifest}"
    );
}
