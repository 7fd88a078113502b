//! Start-up (issue 16, defects a, i, p, q): what a host must own before it touches
//! anything (its state directory, its socket), and the private copies a host leaves when
//! it dies. Each test failed on the code before the fix.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use e2e::{built, host, install, plugins_dir, tasker, text, Server};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);

/// A plugins directory with tasker in it.
fn with_tasker() -> tempfile::TempDir {
    let dir = plugins_dir();
    install(tasker(), dir.path(), "libtasker.so");
    dir
}

/// A plugins directory with hello in it.
fn with_hello() -> tempfile::TempDir {
    let dir = plugins_dir();
    install(&built().hello, dir.path(), "libhello.so");
    dir
}

/// Runs `host ARGS --socket SOCKET`; its stdout, or a panic with its stderr.
fn cli(socket: &Path, args: &[&str]) -> String {
    let mut all = args.to_vec();
    all.extend(["--socket", socket.to_str().unwrap()]);
    let output = host(&all);
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "host {args:?}: {stderr}");
    stdout
}

fn task(socket: &Path, id: i64) -> Value {
    serde_json::from_str(&cli(socket, &["task", &id.to_string(), "--json"])).unwrap()
}

/// Waits up to `timeout` for `server` to exit, or for `stop` to be true; whether it exited.
fn exited_or(server: &mut Server, timeout: Duration, mut stop: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if !server.is_running() {
            return true;
        }
        if stop() {
            return !server.is_running();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    !server.is_running()
}

/// The lines of a refused host's log that are neither blank nor its own `error:` line.
fn lines_besides_the_error(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("error: "))
        .collect()
}

/// Entries of `dir` whose name starts with `prefix`.
fn entries(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

#[test]
fn a_second_host_on_the_same_state_dir_is_refused_and_the_first_hosts_task_runs_once() {
    // Defect a: the second host's start-up queued the first host's running task again, and
    // both ran it.
    let state = tempfile::tempdir().unwrap();
    let state_arg = ["--state-dir", state.path().to_str().unwrap()];
    let first_plugins = with_tasker();
    let first = Server::start(first_plugins.path(), &state_arg);
    first.wait_until(WAIT, "tasker", |s| s.call("tasker", "echo", "1").is_ok());
    let out = cli(
        &first.socket,
        &["submit", "tasker", "slow", "--input", r#"{"ms":3000}"#],
    );
    let id: i64 = out
        .trim()
        .strip_prefix("queued task ")
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("not queued: {out}"));
    first.wait_until(WAIT, "the task to run", |_| {
        task(&first.socket, id)["task"]["status"] == "running"
    });

    let second_plugins = with_tasker();
    let mut second = Server::spawn(None, second_plugins.path(), &state_arg, |_| {});
    let exited = exited_or(&mut second, WAIT, || {
        task(&first.socket, id)["task"]["status"] != "running"
    });
    assert!(
        exited,
        "the second host on {} kept running; its log:\n{}",
        state.path().display(),
        second.log()
    );
    let status = second.exit_status().unwrap();
    assert_eq!(status.code(), Some(1), "{}", second.log());
    let log = second.log();
    let errors: Vec<&str> = log.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(errors.len(), 1, "{log}");
    assert!(
        errors[0].contains(&format!(
            "state directory {} is in use by another host (pid {})",
            state.path().display(),
            first.pid()
        )) && errors[0].contains("--state-dir"),
        "{log}"
    );
    // Refused before it loaded anything or opened the task database.
    assert_eq!(lines_besides_the_error(&log), Vec::<&str>::new(), "{log}");

    first.wait_until(WAIT, "the task to succeed", |_| {
        task(&first.socket, id)["task"]["status"] == "success"
    });
    let record = task(&first.socket, id);
    assert_eq!(record["task"]["attempts"], 1, "{record}");
    assert!(!first.log().contains("queued again"), "{}", first.log());
}

#[test]
fn a_second_host_on_the_same_socket_touches_nothing_before_it_is_refused() {
    // Defect q: it loaded every plugin, opened its task database and started schedules
    // first; and (defect p) its private copies stayed behind.
    let first_plugins = with_tasker();
    let first = Server::start(first_plugins.path(), &[]);
    let second_plugins = with_tasker();
    let state = tempfile::tempdir().unwrap();
    let state_dir = state.path().join("second");
    let mut second = Server::spawn(
        Some(&first.socket),
        second_plugins.path(),
        &["--state-dir", state_dir.to_str().unwrap()],
        |_| {},
    );
    assert!(exited_or(&mut second, WAIT, || false), "{}", second.log());
    let log = second.log();
    assert_eq!(second.exit_status().unwrap().code(), Some(1), "{log}");
    let errors: Vec<&str> = log.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(errors.len(), 1, "{log}");
    assert!(
        errors[0].contains("another host is already serving on"),
        "{log}"
    );
    assert_eq!(lines_besides_the_error(&log), Vec::<&str>::new(), "{log}");
    assert!(
        !state_dir.join("tasks.db").exists(),
        "the refused host opened its task database"
    );
    // Its temporary directory (TMPDIR, see Server::spawn) is next to its log.
    let tmp = second.log.parent().unwrap().join("tmp");
    assert_eq!(entries(&tmp, "plugin-host-"), Vec::<PathBuf>::new());
    // The first host still answers.
    assert!(first.call("tasker", "echo", "2").is_ok());
}

#[test]
fn two_hosts_with_their_own_sockets_and_no_settings_have_their_own_state() {
    // Defect a: the default state directory was one per user.
    let home = tempfile::tempdir().unwrap();
    let state_home = home.path().join("state");
    let env = |command: &mut std::process::Command| {
        command.env("XDG_STATE_HOME", &state_home);
    };
    let (a_plugins, b_plugins) = (with_tasker(), with_tasker());
    let a = Server::start_configured(a_plugins.path(), &[], env);
    let b = Server::start_configured(b_plugins.path(), &[], env);
    a.wait_until(WAIT, "tasker", |s| s.call("tasker", "echo", "1").is_ok());
    b.wait_until(WAIT, "tasker", |s| s.call("tasker", "echo", "1").is_ok());
    let dirs = entries(&state_home, "plugin-host");
    assert_eq!(dirs.len(), 2, "{dirs:?}\n{}\n{}", a.log(), b.log());
    for dir in &dirs {
        assert!(dir.join("tasks.db").exists(), "{}", dir.display());
    }
}

#[test]
fn a_state_dir_of_another_user_or_open_to_others_is_refused() {
    // Defect i: the state directory was used whoever owned it.
    let plugins = with_hello();
    let work = tempfile::tempdir().unwrap();
    let refused = |args: &[&str], env: &[(&str, &str)], expected: &str| {
        let mut server = Server::spawn(None, plugins.path(), args, |command| {
            command.envs(env.iter().copied());
        });
        assert!(
            exited_or(&mut server, WAIT, || false),
            "{args:?} {env:?}: the host started; its log:\n{}",
            server.log()
        );
        let log = server.log();
        assert!(!server.exit_status().unwrap().success(), "{log}");
        let errors: Vec<&str> = log.lines().filter(|l| l.starts_with("error: ")).collect();
        assert_eq!(errors.len(), 1, "{log}");
        assert!(errors[0].contains(expected), "{log}");
        assert_eq!(lines_besides_the_error(&log), Vec::<&str>::new(), "{log}");
    };

    let theirs = work.path().join("theirs");
    fs::create_dir(&theirs).unwrap();
    std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
    refused(
        &["--state-dir", theirs.to_str().unwrap()],
        &[],
        "owned by uid 65534",
    );

    let open = work.path().join("open");
    fs::create_dir(&open).unwrap();
    fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
    refused(&["--state-dir", open.to_str().unwrap()], &[], "chmod go-w");
    let group = work.path().join("group");
    fs::create_dir(&group).unwrap();
    fs::set_permissions(&group, fs::Permissions::from_mode(0o770)).unwrap();
    refused(&["--state-dir", group.to_str().unwrap()], &[], "chmod go-w");

    // The fallback in the temporary directory, made first by another user.
    let tmp = work.path().join("tmp");
    fs::create_dir(&tmp).unwrap();
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o1777)).unwrap();
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    let planted = tmp.join(format!("plugin-host-{uid}"));
    fs::create_dir(&planted).unwrap();
    fs::set_permissions(&planted, fs::Permissions::from_mode(0o777)).unwrap();
    std::os::unix::fs::chown(&planted, Some(65534), Some(65534)).unwrap();
    refused(
        &[],
        &[
            ("TMPDIR", tmp.to_str().unwrap()),
            ("XDG_STATE_HOME", ""),
            ("HOME", ""),
        ],
        "owned by uid 65534",
    );
}

#[test]
fn a_killed_hosts_private_copies_are_removed_by_the_next_host_and_a_live_ones_are_kept() {
    // Defect p: the private copies of a host that died stayed in the temporary directory.
    let plugins = with_hello();
    let tmp = tempfile::tempdir().unwrap();
    let env = |command: &mut std::process::Command| {
        command.env("TMPDIR", tmp.path());
    };
    let start = || {
        let server = Server::start_configured(plugins.path(), &[], env);
        server.wait_until(WAIT, "hello", |s| {
            s.call("hello", "greet", r#"{"name":"Ada"}"#).is_ok()
        });
        server
    };

    let mut killed = start();
    let killed_dirs = entries(tmp.path(), "plugin-host-");
    assert_eq!(killed_dirs.len(), 1, "{killed_dirs:?}");
    killed.signal(libc::SIGKILL);
    killed.wait();
    assert!(killed_dirs[0].exists());

    // The next host to start removes them.
    let mut live = start();
    assert!(
        !killed_dirs[0].exists(),
        "{} (of the killed host) is still there",
        killed_dirs[0].display()
    );
    assert!(
        live.log()
            .contains("left by hosts that are no longer running: removed 1 in"),
        "{}",
        live.log()
    );
    let live_dirs = entries(tmp.path(), "plugin-host-");
    assert_eq!(live_dirs.len(), 1, "{live_dirs:?}");

    // Those of a host still running are kept.
    let mut next = start();
    assert!(live_dirs[0].exists(), "the live host's copies were removed");
    assert!(
        fs::read_dir(&live_dirs[0])
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().ends_with(".so")),
        "the live host's copy of hello is gone"
    );
    assert_eq!(entries(tmp.path(), "plugin-host-").len(), 2);

    // Hosts that stop the ordinary way remove their own.
    assert!(live.stop());
    assert!(next.stop());
    assert_eq!(entries(tmp.path(), "plugin-host-"), Vec::<PathBuf>::new());
}

#[test]
fn client_commands_find_the_socket_in_host_toml() {
    // Item 6: `--config host.toml` was ignored by client commands.
    let plugins = with_hello();
    let server = Server::start(plugins.path(), &[]);
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("host.toml");
    fs::write(
        &config,
        format!("socket = {:?}\n", server.socket.to_str().unwrap()),
    )
    .unwrap();
    let config = config.to_str().unwrap();
    // Nobody serves the default socket.
    let nowhere = work.path().join("no-runtime-dir");
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let out = std::process::Command::new(&built().host)
            .args(args)
            .env("XDG_RUNTIME_DIR", &nowhere)
            .envs(env.iter().copied())
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "host {args:?} {env:?}: {stderr}");
        stdout
    };
    let out = run(
        &[
            "call",
            "hello",
            "greet",
            "--input",
            r#"{"name":"Ada"}"#,
            "--config",
            config,
        ],
        &[],
    );
    assert!(out.contains("Hello, Ada!"), "{out}");
    let out = run(&["list", "--config", config], &[]);
    assert!(out.contains("libhello.so"), "{out}");
    let out = run(&["history", "hello", "--config", config], &[]);
    assert!(out.starts_with("GEN"), "{out}");
    let out = run(&["tasks", "--config", config], &[]);
    assert!(out.starts_with("ID"), "{out}");
    let out = run(&["restart", "hello"], &[("HOST_CONFIG", config)]);
    assert!(out.contains("restarted plugin hello"), "{out}");
    // A relative `socket` is relative to the file, as `host serve` reads it.
    let sock_dir = server.socket.parent().unwrap();
    let relative = sock_dir.parent().unwrap().join("relative.toml");
    fs::write(&relative, "socket = \"sock/host.sock\"\n").unwrap();
    let out = run(&["list", "--config", relative.to_str().unwrap()], &[]);
    assert!(out.contains("libhello.so"), "{out}");

    // The help names the real default, the fallback without XDG_RUNTIME_DIR included.
    let help = text(&host(&["call", "--help"])).0;
    for words in [
        "--config",
        "HOST_CONFIG",
        "$XDG_RUNTIME_DIR/plugin-host/host.sock",
        "plugin-host-UID/host.sock",
    ] {
        assert!(help.contains(words), "{words}: {help}");
    }
}
