//! `host service unit` (issue 20, item 3): the printed units name this binary, set
//! `Type=notify`, the watchdog and `KillMode=mixed`, and pass `systemd-analyze verify` where
//! the tool exists (skipped, saying so, where it does not).

use std::fs;
use std::process::{Command, Output};

use e2e::{built, host, install, plugins_dir, text};

/// A plugins directory with hello in it.
fn with_hello() -> tempfile::TempDir {
    let dir = plugins_dir();
    install(&built().hello, dir.path(), "libhello.so");
    dir
}

/// `systemd-analyze verify` on `units` (written into a directory under their names), with
/// `--user` for a user unit; `None` (and a line saying so) where the tool is missing.
fn verify(units: &[(&str, &str)], user: bool) -> Option<Output> {
    let found = Command::new("sh")
        .args(["-c", "command -v systemd-analyze"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        println!("SKIPPED: systemd-analyze is not installed; the units were not verified");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let runtime = dir.path().join("runtime");
    fs::create_dir(&runtime).unwrap();
    let mut command = Command::new("systemd-analyze");
    if user {
        // A user manager needs a runtime directory, which a test machine may not have.
        command.arg("--user").env("XDG_RUNTIME_DIR", &runtime);
    }
    command.arg("verify");
    for (name, text) in units {
        let path = dir.path().join(name);
        fs::write(&path, text).unwrap();
        command.arg(path);
    }
    Some(command.output().expect("systemd-analyze runs"))
}

fn unit(args: &[&str]) -> String {
    let output = host(&[&["service", "unit"], args].concat());
    let (stdout, stderr) = text(&output);
    assert!(
        output.status.success(),
        "host service unit {args:?}: {stderr}"
    );
    stdout
}

#[test]
fn printed_units_pass_systemd_analyze_verify() {
    let plugins = with_hello();
    let dir = plugins.path().to_str().unwrap();
    let binary = fs::canonicalize(&built().host).unwrap();
    for user in [false, true] {
        let mut args = vec!["--plugins", dir];
        if user {
            args.push("--user");
        }
        let service = unit(&args);
        assert!(
            service.contains(&format!("ExecStart={} serve --plugins ", binary.display())),
            "{service}"
        );
        for line in ["Type=notify\n", "KillMode=mixed\n", "WatchdogSec=30\n"] {
            assert!(service.contains(line), "{line}: {service}");
        }
        args.push("--socket-unit");
        let socket = unit(&args);
        assert!(socket.contains("FileDescriptorName=control\n"), "{socket}");
        assert!(socket.contains("ListenStream=/"), "{socket}");
        let units = [
            ("plugin-host.service", service.as_str()),
            ("plugin-host.socket", socket.as_str()),
        ];
        if let Some(output) = verify(&units, user) {
            let (stdout, stderr) = text(&output);
            // It exits 0 on a setting it ignores: what it says counts too.
            assert!(
                output.status.success() && stderr.is_empty(),
                "user {user}: {stdout}{stderr}\n{service}\n{socket}"
            );
        }
    }
}

/// With `--http`, the service passes it on and the socket unit binds the address too, with
/// no name: the host tells the two sockets by type.
#[test]
fn an_http_address_is_passed_on_and_bound_by_the_socket_unit() {
    let plugins = with_hello();
    let dir = plugins.path().to_str().unwrap();
    let args = ["--plugins", dir, "--http", "127.0.0.1:8080"];
    let service = unit(&args);
    assert!(service.contains(" --http 127.0.0.1:8080\n"), "{service}");
    let socket = unit(&[&args[..], &["--socket-unit"]].concat());
    assert!(socket.contains("ListenStream=127.0.0.1:8080\n"), "{socket}");
    assert!(!socket.contains("FileDescriptorName="), "{socket}");
    let units = [
        ("plugin-host.service", service.as_str()),
        ("plugin-host.socket", socket.as_str()),
    ];
    if let Some(output) = verify(&units, false) {
        let (stdout, stderr) = text(&output);
        assert!(
            output.status.success() && stderr.is_empty(),
            "{stdout}{stderr}\n{service}\n{socket}"
        );
    }
}

/// Paths with spaces, `%` (a specifier) and `$` (a variable on command lines) are escaped
/// so that systemd reads them back as given.
#[test]
fn odd_paths_are_escaped() {
    let base = plugins_dir();
    let plugins = base.path().join("my plugins 100%$x");
    fs::create_dir(&plugins).unwrap();
    let socket = base.path().join("run dir/host.sock");
    let args = [
        "--plugins",
        plugins.to_str().unwrap(),
        "--socket",
        socket.to_str().unwrap(),
        "--state-dir",
        "/srv/state",
    ];
    let service = unit(&args);
    let plugins_text = plugins.to_str().unwrap();
    let on_command_line = plugins_text.replace('%', "%%").replace('$', "$$");
    assert!(
        service.contains(&format!("--plugins \"{on_command_line}\" ")),
        "{service}"
    );
    // `$` is literal in ReadWritePaths=.
    let listed = plugins_text.replace('%', "%%");
    assert!(
        service.contains(&format!("ReadWritePaths=\"{listed}\" /srv/state ")),
        "{service}"
    );
    let socket_unit = unit(&[&args[..], &["--socket-unit"]].concat());
    assert!(
        socket_unit.contains(&format!("ListenStream={}\n", socket.display())),
        "{socket_unit}"
    );
    let units = [
        ("plugin-host.service", service.as_str()),
        ("plugin-host.socket", socket_unit.as_str()),
    ];
    if let Some(output) = verify(&units, false) {
        let (stdout, stderr) = text(&output);
        assert!(
            output.status.success() && stderr.is_empty(),
            "{stdout}{stderr}\n{service}\n{socket_unit}"
        );
    }
}
