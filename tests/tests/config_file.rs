//! A host.toml that is not a regular file (found while building the systemd watchdog, issue
//! 20). A plain read of a FIFO nobody writes blocked for good: `host serve --config FIFO`
//! hung at start, a host.toml replaced by a FIFO wedged the watcher's thread at the reload,
//! and SIGTERM then hung joining it. Both tests failed (timed out) on the code before the fix.
//!
//! Every wait has a deadline; a host that hangs fails the test and is killed (`Server`'s
//! drop), it does not hang the test.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use e2e::{built, install, plugins_dir, Server};

const WAIT: Duration = Duration::from_secs(20);

/// A plugins directory with hello in it.
fn with_hello() -> tempfile::TempDir {
    let dir = plugins_dir();
    install(&built().hello, dir.path(), "libhello.so");
    dir
}

fn mkfifo(path: &Path) {
    let c_path = std::ffi::CString::new(path.to_str().expect("a UTF-8 path")).expect("no NUL");
    // SAFETY: mkfifo reads the NUL-terminated path, which outlives the call.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0, "mkfifo");
}

/// The greeting hello answers with.
fn greeting(server: &Server) -> String {
    let answer = server
        .call("hello", "greet", r#"{"name":"Ed"}"#)
        .unwrap_or_else(|err| panic!("greet: {err}\n{}", server.log()));
    answer["message"].as_str().unwrap_or_default().to_owned()
}

#[test]
fn a_host_toml_replaced_by_a_fifo_is_refused_and_sigterm_still_stops_the_host() {
    let plugins = with_hello();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("host.toml");
    fs::write(&config, "[plugins.hello]\nconfig = { greeting = \"Hi\" }\n").unwrap();
    let mut server = Server::start(plugins.path(), &["--config", config.to_str().unwrap()]);
    assert_eq!(greeting(&server), "Hi, Ed!");

    // An atomic replacement, as an editor or a deploy tool makes: a FIFO renamed over it.
    let fifo = dir.path().join("host.toml.fifo");
    mkfifo(&fifo);
    fs::rename(&fifo, &config).unwrap();
    let refusal = format!(
        "{}: not a regular file (a FIFO); keeping the previous configuration",
        config.display()
    );
    server.wait_until(WAIT, "the reload to be refused", |s| {
        s.log().contains(&refusal)
    });
    let line = server.log();
    let line = line.lines().find(|l| l.contains(&refusal)).unwrap_or("");
    assert!(line.contains("ERROR"), "one error line: {line}");
    // The previous settings keep serving.
    assert_eq!(greeting(&server), "Hi, Ed!");

    let start = Instant::now();
    server.signal(libc::SIGTERM);
    let status = server.wait_timeout(WAIT);
    assert!(
        status.is_some_and(|s| s.success()),
        "SIGTERM did not stop the host within {WAIT:?}: {status:?}\n{}",
        server.log()
    );
    println!("stopped {:?} after SIGTERM", start.elapsed());
}

#[test]
fn host_serve_and_a_client_refuse_a_config_that_is_a_fifo_in_one_line() {
    let plugins = with_hello();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("host.toml");
    mkfifo(&config);
    let expected = format!("{}: not a regular file (a FIFO)", config.display());

    let mut server = Server::spawn(
        None,
        plugins.path(),
        &["--config", config.to_str().unwrap()],
        |_| {},
    );
    let status = server.wait_timeout(WAIT);
    assert!(
        status.is_some_and(|s| !s.success()),
        "host serve --config FIFO did not refuse within {WAIT:?}: {status:?}\n{}",
        server.log()
    );
    let log = server.log();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line: {log}");
    assert!(lines[0].contains(&expected), "{log}");

    // A client command reading the same --config (to find the socket) refuses it too.
    let mut client = Command::new(&built().host)
        .args(["list", "--config", config.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("host list starts");
    let start = Instant::now();
    while client.try_wait().expect("wait for host list").is_none() {
        if start.elapsed() > WAIT {
            let _ = client.kill();
            let _ = client.wait();
            panic!("host list --config FIFO did not refuse within {WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let output = client.wait_with_output().expect("host list output");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains(&expected), "{stderr}");
}
