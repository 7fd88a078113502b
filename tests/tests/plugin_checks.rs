//! What the host learns from a plugin before it runs it (issue 16 r): a plugin built with
//! `panic = "abort"` would end the host at its first panic in-process, so it runs in a worker
//! process (automatically), or is refused where its isolation is set to in-process; and
//! `host check` says how it was built.

use std::fs;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use e2e::{built, host, install, plugins_dir, text, Server, Variant};
use host::config::Isolation;
use host::control::ClientError;
use host::CallErrorKind;

const WAIT: Duration = Duration::from_secs(30);
const ADA: &str = r#"{"name":"Ada"}"#;
const ABORT_NOTE: &str = r#"built with panic = "abort""#;

/// hello, built with `panic = "abort"` in its profile (a common setting for smaller
/// binaries).
fn hello_abort() -> &'static Path {
    static BUILT: OnceLock<std::path::PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        Variant::of("example-plugins/hello")
            .edit(
                "Cargo.toml",
                "[lib]",
                "[profile.dev]\npanic = \"abort\"\n\n[lib]",
            )
            .build()
    })
}

/// `host serve` on the panic = "abort" hello, with `config` as its host.toml (if any).
fn serve(config: Option<&str>) -> (tempfile::TempDir, Server) {
    let dir = plugins_dir();
    install(hello_abort(), dir.path(), "libhello.so");
    let conf = dir.path().join("host.toml");
    let mut args = Vec::new();
    if let Some(config) = config {
        fs::write(&conf, config).unwrap();
        args = vec!["--config", conf.to_str().unwrap()];
    }
    let server = Server::start(dir.path(), &args);
    (dir, server)
}

#[test]
fn a_panic_abort_plugin_runs_isolated_and_its_panic_is_a_crash_not_the_host_s_end() {
    let (_dir, mut server) = serve(None);
    server.wait_until(WAIT, "hello to serve", |s| {
        s.call("hello", "greet", ADA).is_ok()
    });
    let host_pid = server.pid();

    let mut client = server.client().unwrap();
    match client.call("hello", "panic", "null") {
        Err(ClientError::Refused(err)) => {
            assert_eq!(err.kind, CallErrorKind::Crashed, "{err}");
            assert!(
                err.message.contains("in callback `panic`"),
                "{}",
                err.message
            );
        }
        other => panic!(
            "the panic was not answered `crashed`: {other:?}; host log:\n{}",
            server.log()
        ),
    }
    assert!(server.is_running(), "the host died:\n{}", server.log());
    assert_eq!(server.pid(), host_pid);
    assert_eq!(
        server.call("hello", "greet", ADA).unwrap()["message"],
        "Hello, Ada!",
        "a fresh worker serves the next call"
    );

    // Where it runs, and why, in the listing.
    let files = server.files();
    let serving = files[0].serving.as_ref().expect("hello serves");
    assert_eq!(serving.isolation, Isolation::Process);
    let socket = server.socket.to_str().unwrap();
    let (listing, stderr) = text(&host(&["list", "--socket", socket]));
    let row = listing
        .lines()
        .find(|l| l.starts_with("libhello.so"))
        .unwrap_or_else(|| panic!("no row for libhello.so:\n{listing}{stderr}"));
    assert!(row.contains("process, pid"), "{row}");
    assert!(row.contains(ABORT_NOTE), "{row}");
    let (json, _) = text(&host(&["list", "--json", "--socket", socket]));
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json[0]["metadata"]["panic"], "abort", "{json:#}");

    // The panic's own line, from the worker (nothing caught it to put it in an answer).
    server.wait_until(WAIT, "the panic's line in the log", |s| {
        s.log()
            .contains("plugin hello: thread panicked at src/lib.rs:")
    });
    // Logged once: at its load, not at the crash or the worker's restart.
    let log = server.log();
    assert_eq!(log.matches(ABORT_NOTE).count(), 1, "{log}");
    assert!(server.stop());
}

#[test]
fn a_panic_abort_plugin_set_to_run_in_process_is_refused_in_one_line() {
    let (_dir, server) = serve(Some("[plugins.hello]\nisolation = \"in-process\"\n"));
    server.wait_until(WAIT, "hello to be refused", |s| {
        s.files().iter().any(|f| f.last_error.is_some())
    });
    let files = server.files();
    let error = files[0].last_error.clone().unwrap();
    assert!(
        error.contains(ABORT_NOTE) && error.contains("isolation = \"in-process\""),
        "{error}"
    );
    assert!(!error.contains('\n'), "{error}");
    assert!(files[0].serving.is_none(), "{:?}", files[0].serving);
    let log = server.log();
    let rejected = log
        .lines()
        .filter(|l| l.contains("rejected") && l.contains(ABORT_NOTE))
        .count();
    assert_eq!(rejected, 1, "{log}");
    let err = server.call("hello", "greet", ADA).unwrap_err();
    assert!(err.contains("hello"), "{err}");
}

#[test]
fn host_check_prints_the_panic_strategy() {
    let (out, err) = text(&host(&["check", hello_abort().to_str().unwrap()]));
    assert!(out.lines().any(|l| l == "panic:       abort"), "{out}{err}");
    let (out, err) = text(&host(&["check", built().hello.to_str().unwrap()]));
    assert!(
        out.lines().any(|l| l == "panic:       unwind"),
        "{out}{err}"
    );
    let (json, err) = text(&host(&["check", "--json", hello_abort().to_str().unwrap()]));
    let json: serde_json::Value =
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {err}"));
    assert_eq!(json["panic"], "abort", "{json:#}");
}
