//! The foundation, end to end: real cdylib plugins loaded and called through the host
//! library and through the `host` binary.

use std::fs;
use std::path::Path;

use e2e::{built, host, install, plugins_dir, text};
use host::{CallErrorKind, Host, HostOptions, LoadErrorKind, LoadOptions};
use plugin_api::{ErrorKind, Level};
use serde_json::{json, Value};

fn new_host(copy_dir: &Path) -> Host {
    Host::new(HostOptions {
        load: LoadOptions {
            copy_dir: Some(copy_dir.to_owned()),
            ..LoadOptions::default()
        },
        ..HostOptions::default()
    })
    .expect("host")
}

fn result(outcome: &host::CallOutcome) -> Value {
    serde_json::from_str(outcome.result().expect("call succeeded").get()).expect("JSON result")
}

fn mapped(dir: &Path) -> bool {
    let maps = fs::read_to_string("/proc/self/maps").expect("maps");
    maps.contains(dir.to_str().expect("utf-8 path"))
}

#[test]
fn library_loads_calls_and_unloads_a_plugin() {
    let dir = plugins_dir();
    let copies = tempfile::tempdir().unwrap();
    let file = install(&built().hello, dir.path(), "libhello.so");
    let host = new_host(copies.path());

    host.load_file(&file).expect("hello loads");
    assert!(
        mapped(copies.path()),
        "the private copy is mapped while loaded"
    );
    assert_eq!(
        fs::read_dir(copies.path()).unwrap().count(),
        1,
        "the private copy is kept (to roll back to) while it serves"
    );

    let outcome = host.call("hello", "greet", r#"{"name":"Ada"}"#).unwrap();
    assert_eq!(result(&outcome), json!({"message": "Hello, Ada!"}));
    assert_eq!((outcome.plugin.as_str(), outcome.generation), ("hello", 1));
    assert_eq!(outcome.logs.len(), 1);
    assert_eq!(outcome.logs[0].level, Level::Info);
    assert_eq!(outcome.logs[0].message, "greeting Ada");

    let about = result(&host.call("hello", "execute", "null").unwrap());
    assert_eq!(
        about["callbacks"],
        json!(["greet", "wait", "fail", "panic", "shout"])
    );

    assert_eq!(host.remove_file(&file).as_deref(), Some("hello"));
    let err = host
        .call("hello", "greet", r#"{"name":"Ada"}"#)
        .unwrap_err();
    assert_eq!(err.kind, CallErrorKind::UnknownPlugin);
    assert!(host.wait_for_unloads(std::time::Duration::from_secs(10)));
    assert!(
        !mapped(copies.path()),
        "the library left memory after unload"
    );
    assert_eq!(
        fs::read_dir(copies.path()).unwrap().count(),
        0,
        "a removed plugin's copies are removed"
    );
}

#[test]
fn typed_calls_take_and_give_bytes_and_follow_reloads() {
    let dir = plugins_dir();
    let copies = tempfile::tempdir().unwrap();
    let file = install(&built().hello, dir.path(), "libhello.so");
    let host = new_host(copies.path());
    host.load_file(&file).unwrap();

    let mut shout = host.typed("hello", "shout").unwrap();
    let mut out = Vec::new();
    let outcome = shout.call(b"Ada", &mut out).unwrap();
    assert_eq!(out, b"HELLO, ADA!");
    assert!(outcome.logs.is_empty() && outcome.follow_ups.is_empty());
    // Output is appended to what the buffer holds.
    shout.call(b"Bo", &mut out).unwrap();
    assert_eq!(out, b"HELLO, ADA!HELLO, BO!");

    // A reload: the same handle calls the new version.
    install(e2e::hello_hi(), dir.path(), "libhello.so");
    host.load_file(&file).unwrap();
    out.clear();
    shout.call(b"Ada", &mut out).unwrap();
    assert_eq!(out, b"HI, ADA!");

    // A JSON callback is not a typed one, and the other way round.
    let err = host.typed("hello", "greet").unwrap_err();
    assert_eq!(err.kind, CallErrorKind::UnknownCallback);
    assert!(
        err.message.contains("has no typed callback `greet`"),
        "{err}"
    );
    let json = host.call("hello", "shout", "null").unwrap();
    let err = json.result().unwrap_err();
    assert!(
        err.message()
            .contains("`shout` is typed (bytes in, bytes out)"),
        "{err}"
    );
    assert_eq!(
        host.typed("nope", "shout").unwrap_err().kind,
        CallErrorKind::UnknownPlugin
    );

    // Unloaded: the handle says so; loaded again: it serves again.
    host.remove_file(&file);
    match shout.call(b"Ada", &mut out) {
        Err(host::TypedError::Host(err)) => assert_eq!(err.kind, CallErrorKind::UnknownPlugin),
        other => panic!("{other:?}"),
    }
    host.load_file(&file).unwrap();
    out.clear();
    shout.call(b"Ada", &mut out).unwrap();
    assert_eq!(out, b"HI, ADA!");
}

#[test]
fn plugin_errors_panics_and_bad_input_leave_the_host_serving() {
    let dir = plugins_dir();
    let copies = tempfile::tempdir().unwrap();
    let host = new_host(copies.path());
    host.load_file(&install(&built().hello, dir.path(), "libhello.so"))
        .unwrap();

    let panicked = host.call("hello", "panic", "null").unwrap();
    let err = panicked.result().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Panicked);
    assert!(err.message().contains("hello"), "{err}");
    assert!(err.message().contains("`panic`"), "{err}");
    assert!(err.message().contains("hello panicked on purpose"), "{err}");

    let failed = host.call("hello", "fail", "{}").unwrap();
    assert_eq!(failed.result().unwrap_err().kind(), ErrorKind::Failed);
    assert_eq!(failed.logs[0].message, "about to fail on purpose");
    assert_eq!(failed.logs[0].level, Level::Warn);

    let unknown = host.call("hello", "yell", "{}").unwrap();
    let err = unknown.result().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::UnknownCallback);
    assert!(
        err.message()
            .ends_with("it has: execute, greet, wait, fail, panic, shout"),
        "{err}"
    );

    let bad = host.call("hello", "greet", r#"{"nom":"Ada"}"#).unwrap();
    let err = bad.result().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(err.message().contains("missing field `name`"), "{err}");

    let outcome = host.call("hello", "greet", r#"{"name":"Bo"}"#).unwrap();
    assert_eq!(result(&outcome)["message"], "Hello, Bo!");
}

#[test]
fn configuration_reaches_the_plugin_and_bad_configuration_rejects_the_load() {
    let dir = plugins_dir();
    let file = install(&built().hello, dir.path(), "libhello.so");
    let mut settings = host::config::PluginSettings::default();
    settings.config.insert("greeting".into(), "Hi".into());
    let host = Host::new(HostOptions {
        plugins: [("hello".to_owned(), settings.clone())].into(),
        ..HostOptions::default()
    })
    .unwrap();
    host.load_file(&file).unwrap();
    let outcome = host.call("hello", "greet", r#"{"name":"Ada"}"#).unwrap();
    assert_eq!(result(&outcome)["message"], "Hi, Ada!");

    settings.config.insert("greting".into(), "typo".into());
    let host = Host::new(HostOptions {
        plugins: [("hello".to_owned(), settings)].into(),
        ..HostOptions::default()
    })
    .unwrap();
    let err = host.load_file(&file).unwrap_err();
    assert_eq!(err.kind(), LoadErrorKind::InitFailed);
    assert!(err.to_string().contains("unknown field `greting`"), "{err}");
    assert!(
        err.to_string().starts_with(&file.display().to_string()),
        "{err}"
    );
}

#[test]
fn sysinfo_reports_on_this_machine() {
    let dir = plugins_dir();
    let host = Host::new(HostOptions::default()).unwrap();
    host.load_file(&install(e2e::sysinfo(), dir.path(), "libsysinfo.so"))
        .unwrap();
    let memory = result(&host.call("sysinfo", "memory", "null").unwrap());
    assert!(memory["total_kib"].as_u64().unwrap() > 0, "{memory}");
    let disk = host.call("sysinfo", "disk", r#"{"path":"/"}"#).unwrap();
    let disk_result = result(&disk);
    assert!(
        disk_result["total_bytes"].as_u64().unwrap() > 0,
        "{disk_result}"
    );
    assert!(!disk.logs.is_empty(), "disk logs its finding");
    let missing = host
        .call("sysinfo", "disk", r#"{"path":"/no/such/path"}"#)
        .unwrap();
    assert_eq!(
        missing.result().unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
}

#[test]
fn load_errors_are_one_line_naming_the_file() {
    let dir = plugins_dir();
    let host = Host::new(HostOptions::default()).unwrap();
    let text_file = dir.path().join("notes.so");
    fs::write(&text_file, "not a library\n").unwrap();
    let err = host.load_file(&text_file).unwrap_err();
    assert_eq!(err.kind(), LoadErrorKind::NotALibrary);
    assert_eq!(err.to_string().lines().count(), 1, "{err}");
    assert!(
        err.to_string()
            .starts_with(&text_file.display().to_string()),
        "{err}"
    );

    let libz = e2e::libz();
    let not_plugin = install(libz, dir.path(), "libz.so");
    let err = host.load_file(&not_plugin).unwrap_err();
    assert_eq!(err.kind(), LoadErrorKind::NotAPlugin);
    assert!(err.message().contains("export_plugin!"), "{err}");
}

#[test]
fn binary_calls_a_plugin_from_a_directory() {
    let dir = plugins_dir();
    install(&built().hello, dir.path(), "libhello.so");
    let plugins = dir.path().to_str().unwrap();
    // No running host answers on this socket, so the call is one-shot from --plugins.
    let no_host = ["--socket", "/nonexistent/host.sock"];

    let out = host(
        &[
            &[
                "call",
                "hello",
                "greet",
                "--input",
                r#"{"name":"Ada"}"#,
                "--plugins",
                plugins,
            ][..],
            &no_host,
        ]
        .concat(),
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        serde_json::from_str::<Value>(&stdout).unwrap(),
        json!({"message": "Hello, Ada!"})
    );

    let input = dir.path().join("input.json");
    fs::write(&input, r#"{"name":"Bo"}"#).unwrap();
    let out = host(
        &[
            &[
                "call",
                "hello",
                "greet",
                "--json",
                "--input-file",
                input.to_str().unwrap(),
                "--plugins",
                plugins,
            ][..],
            &no_host,
        ]
        .concat(),
    );
    let (stdout, _) = text(&out);
    let outcome: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(outcome["result"]["message"], "Hello, Bo!");
    assert_eq!(outcome["logs"][0]["message"], "greeting Bo");
    assert_eq!(outcome["generation"], 1);
    assert!(outcome["elapsed_us"].is_u64());

    let out = host(
        &[
            &["call", "hello", "panic", "--plugins", plugins][..],
            &no_host,
        ]
        .concat(),
    );
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    let last = stderr.lines().last().unwrap();
    assert!(last.starts_with("error: plugin hello"), "{stderr}");
    assert!(last.contains("hello panicked on purpose"), "{stderr}");

    let out = host(
        &[
            &["call", "hello", "nope", "--plugins", plugins][..],
            &no_host,
        ]
        .concat(),
    );
    assert!(!out.status.success());
    assert!(text(&out)
        .1
        .contains("it has: execute, greet, wait, fail, panic, shout"));

    let out = host(
        &[
            &["call", "ghost", "greet", "--plugins", plugins][..],
            &no_host,
        ]
        .concat(),
    );
    assert!(!out.status.success());
    assert_eq!(
        text(&out).1.trim(),
        format!("error: no plugin named ghost in {plugins}")
    );

    let out = host(
        &[
            &[
                "call",
                "hello",
                "greet",
                "--input",
                "{nope",
                "--plugins",
                plugins,
            ][..],
            &no_host,
        ]
        .concat(),
    );
    assert!(!out.status.success());
    assert!(text(&out)
        .1
        .starts_with("error: the input from --input is not valid JSON"));
}

#[test]
fn binary_lists_and_checks_plugin_files() {
    let dir = plugins_dir();
    install(&built().hello, dir.path(), "libhello.so");
    install(e2e::sysinfo(), dir.path(), "libsysinfo.so");
    fs::write(dir.path().join("broken.so"), b"\x7fELF garbage").unwrap();
    fs::write(dir.path().join(".hidden.so"), b"ignored").unwrap();
    let plugins = dir.path().to_str().unwrap();

    let out = host(&[
        "list",
        "--plugins",
        plugins,
        "--json",
        "--socket",
        "/nonexistent/host.sock",
    ]);
    assert!(out.status.success(), "{}", text(&out).1);
    let files: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = files
        .iter()
        .map(|f| f["path"].as_str().unwrap().rsplit('/').next().unwrap())
        .collect();
    assert_eq!(names, ["broken.so", "libhello.so", "libsysinfo.so"]);
    assert!(files[0]["last_error"]
        .as_str()
        .unwrap()
        .contains("truncated: 12 bytes, shorter than an ELF header"));
    assert_eq!(files[1]["metadata"]["name"], "hello");
    assert_eq!(
        files[1]["metadata"]["callbacks"],
        json!(["greet", "wait", "fail", "panic", "shout"])
    );
    assert_eq!(files[2]["metadata"]["name"], "sysinfo");

    let out = host(&[
        "list",
        "--plugins",
        plugins,
        "--socket",
        "/nonexistent/host.sock",
    ]);
    let (table, _) = text(&out);
    assert!(
        table.lines().any(|l| l.starts_with("libhello.so")
            && l.contains("execute, greet, wait, fail, panic, shout")),
        "{table}"
    );

    let out = host(&[
        "check",
        &dir.path().join("libhello.so").display().to_string(),
    ]);
    let (stdout, _) = text(&out);
    assert!(out.status.success());
    assert!(stdout.contains("name:        hello"), "{stdout}");
    let abi = format!(
        "(ABI {}.{})",
        plugin_api::abi::ABI_MAJOR,
        plugin_api::abi::ABI_MINOR
    );
    assert!(stdout.contains(&abi), "{stdout}");

    let broken = dir.path().join("broken.so").display().to_string();
    let out = host(&["check", &broken]);
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with(&format!("error: {broken}: truncated: 12 bytes")),
        "{stderr}"
    );
}
