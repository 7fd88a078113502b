//! Loads prepared outside every lock and committed in a moment, the registry's bookkeeping,
//! and the private directories the host trusts (issue 8, defects 5, 9, 10 and 12). Each test
//! failed on the code before the fix.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

use e2e::{built, hello_hi, install, plugins_dir, text, tough, Server, Variant};

const WAIT: Duration = Duration::from_secs(30);
const ADA: &str = r#"{"name":"Ada"}"#;

fn greet(server: &Server) -> Result<String, String> {
    server
        .call("hello", "greet", ADA)
        .map(|v| v["message"].as_str().unwrap_or_default().to_owned())
}

fn error_of(server: &Server, file: &str) -> Option<String> {
    server
        .files()
        .into_iter()
        .find(|f| f.path.ends_with(file))
        .and_then(|f| f.last_error)
}

#[test]
fn a_slow_init_holds_up_neither_listing_nor_other_plugins() {
    // Defect 5: reading, copying, dlopen and init ran under the registry's lock: an init
    // that slept 4 s blocked `host list` for 3.5 s and another plugin's reload for 4 s.
    let dir = plugins_dir();
    install(&built().hello, dir.path(), "libhello.so");
    let conf = dir.path().join("host.toml");
    fs::write(
        &conf,
        "[plugins.tough]\nconfig = { init_sleep_ms = 4000 }\n",
    )
    .unwrap();
    let server = Server::start(dir.path(), &["--config", conf.to_str().unwrap()]);
    server.wait_until(WAIT, "hello", |s| greet(s).is_ok());

    install(tough(), dir.path(), "libtough.so");
    server.wait_until(WAIT, "tough's init to start", |s| {
        e2e::thread_names(s.pid()).iter().any(|n| n == "init-tough")
    });
    let start = Instant::now();
    assert!(!server.files().is_empty());
    assert!(
        start.elapsed() < Duration::from_millis(500),
        "{:?}",
        start.elapsed()
    );

    let start = Instant::now();
    install(hello_hi(), dir.path(), "libhello.so");
    server.wait_until(WAIT, "hello to reload", |s| {
        greet(s).as_deref() == Ok("Hi, Ada!")
    });
    assert!(
        start.elapsed() < Duration::from_millis(2000),
        "hello reloaded after {:?}, while tough's init ran",
        start.elapsed()
    );
    assert!(
        !server.log().contains("loaded tough"),
        "tough's init was still running"
    );
    server.wait_until(WAIT, "tough", |s| s.call("tough", "greet", "null").is_ok());
}

#[test]
fn an_init_that_overruns_its_timeout_is_abandoned_and_shutdown_stays_quick() {
    // Defect 5: there was no init timeout; with a 60 s init, SIGTERM took 49 s.
    let dir = plugins_dir();
    install(&built().hello, dir.path(), "libhello.so");
    install(tough(), dir.path(), "libtough.so");
    let conf = dir.path().join("host.toml");
    fs::write(
        &conf,
        "[plugins.tough]\ninit_timeout_ms = 300\nconfig = { init_sleep_ms = 60000 }\n",
    )
    .unwrap();
    let start = Instant::now();
    let mut server = Server::start(dir.path(), &["--config", conf.to_str().unwrap()]);
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    let error = error_of(&server, "libtough.so").expect("tough is refused");
    assert!(
        error.contains("plugin tough: init did not return within 300 ms (init_timeout_ms)"),
        "{error}"
    );
    let files = server.files();
    let file = files
        .iter()
        .find(|f| f.path.ends_with("libtough.so"))
        .unwrap();
    assert_eq!(file.stuck_inits, 1);
    let out = e2e::host(&["list", "--socket", server.socket.to_str().unwrap()]);
    assert!(text(&out).0.contains("1 init stuck"), "{}", text(&out).0);
    assert_eq!(greet(&server).unwrap(), "Hello, Ada!");

    let start = Instant::now();
    assert!(server.stop(), "{}", server.log());
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn a_rejected_file_never_unloads_what_another_file_serves() {
    // Defect 10a: a file refused for a name conflict, then rebuilt to declare another name,
    // unloaded the plugin the other file served.
    let dir = plugins_dir();
    install(&built().hello, dir.path(), "liba.so");
    let server = Server::start(dir.path(), &[]);
    server.wait_until(WAIT, "hello", |s| greet(s).is_ok());
    install(&built().hello, dir.path(), "libb.so");
    server.wait_until(WAIT, "libb.so to be refused", |s| {
        error_of(s, "libb.so").is_some_and(|e| e.contains("declares plugin hello"))
    });
    let howdy = Variant::of("example-plugins/hello")
        .edit("Cargo.toml", "name = \"hello\"", "name = \"howdy\"")
        .build();
    install(&howdy, dir.path(), "libb.so");
    server.wait_until(WAIT, "howdy", |s| s.call("howdy", "greet", ADA).is_ok());
    assert_eq!(greet(&server).unwrap(), "Hello, Ada!");
}

#[test]
fn a_pin_applies_at_runtime_both_ways() {
    // Defect 10b: a sha256 pin added to host.toml at runtime did not evict a library that
    // does not match it, and a fixed configuration did not clear the failure.
    let dir = plugins_dir();
    install(&built().hello, dir.path(), "libhello.so");
    let conf_dir = tempfile::tempdir().unwrap();
    let conf = conf_dir.path().join("host.toml");
    let write = |text: String| {
        let tmp = conf_dir.path().join(".host.toml.tmp");
        fs::write(&tmp, text).unwrap();
        fs::rename(&tmp, &conf).unwrap();
    };
    write(String::new());
    let server = Server::start(dir.path(), &["--config", conf.to_str().unwrap()]);
    server.wait_until(WAIT, "hello", |s| greet(s).is_ok());

    write(format!(
        "[plugins.hello]\nsha256 = \"{}\"\n",
        "0".repeat(64)
    ));
    server.wait_until(WAIT, "hello to be evicted", |s| greet(s).is_err());
    let error = error_of(&server, "libhello.so").unwrap();
    assert!(error.contains("but host.toml pins 0000"), "{error}");

    let sha = sha256(&built().hello);
    write(format!("[plugins.hello]\nsha256 = \"{sha}\"\n"));
    server.wait_until(WAIT, "hello to serve again", |s| greet(s).is_ok());
    assert_eq!(error_of(&server, "libhello.so"), None);
}

fn sha256(path: &std::path::Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    text(&out).0.split_whitespace().next().unwrap().to_owned()
}

#[test]
fn the_listing_shows_what_serves_not_what_was_rejected() {
    // Defect 10c: `host list` showed a rejected version's metadata next to the old
    // generation.
    let dir = plugins_dir();
    install(&built().hello, dir.path(), "libhello.so");
    let server = Server::start(dir.path(), &[]);
    server.wait_until(WAIT, "hello", |s| greet(s).is_ok());
    let broken = Variant::of("example-plugins/hello")
        .edit("Cargo.toml", "version = \"0.1.0\"", "version = \"0.9.0\"")
        .edit(
            "src/lib.rs",
            "        Ok(Hello {\n            greeting: config.greeting,\n        })",
            "        Err(PluginError::failed(format!(\"not today, {}\", config.greeting)))",
        )
        .build();
    install(&broken, dir.path(), "libhello.so");
    server.wait_until(WAIT, "the new version to be refused", |s| {
        error_of(s, "libhello.so").is_some()
    });
    let files = server.files();
    assert_eq!(files[0].metadata.as_ref().unwrap().version, "0.1.0");
    assert_eq!(files[0].serving.as_ref().unwrap().generation, 1);
    assert!(files[0]
        .last_error
        .as_ref()
        .unwrap()
        .contains("init failed: not today"));
}

#[test]
fn private_directories_are_made_fresh_or_refused() {
    // Defect 9: the copy directory /tmp/plugin-host-PID-N was accepted whoever made it, the
    // socket directory was not checked, and binding removed whatever was at the socket path,
    // a regular file included (`--socket host.toml` deleted the configuration).
    let dir = plugins_dir();
    install(&built().hello, dir.path(), "libhello.so");
    let plugins = dir.path().to_str().unwrap();
    let work = tempfile::tempdir().unwrap();

    let theirs = work.path().join("theirs");
    fs::create_dir(&theirs).unwrap();
    std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
    let socket = work.path().join("s/host.sock");
    let out = serve_once(&[
        "--plugins",
        plugins,
        "--copy-dir",
        theirs.to_str().unwrap(),
        "--socket",
        socket.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out).1);
    let stderr = text(&out).1;
    assert!(stderr.contains("is owned by uid 65534"), "{stderr}");
    assert_eq!(
        stderr.matches("owned by uid 65534").count(),
        1,
        "the cause is printed once: {stderr}"
    );

    let open = work.path().join("open");
    fs::create_dir(&open).unwrap();
    fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
    let out = serve_once(&[
        "--plugins",
        plugins,
        "--socket",
        open.join("host.sock").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out).1.contains("open to other users: chmod go-w"),
        "{}",
        text(&out).1
    );

    let config = work.path().join("host.toml");
    fs::write(&config, "# keep me\n").unwrap();
    let out = serve_once(&["--plugins", plugins, "--socket", config.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        text(&out)
            .1
            .contains("is not a socket: refusing to replace it"),
        "{}",
        text(&out).1
    );
    assert_eq!(fs::read_to_string(&config).unwrap(), "# keep me\n");

    // The default copy directory is new and private for every host.
    let host = host::Host::new(host::HostOptions::default()).unwrap();
    host.load_file(&dir.path().join("libhello.so")).unwrap();
    let maps = fs::read_to_string("/proc/self/maps").unwrap();
    let copy = maps
        .lines()
        .find_map(|l| {
            l.split_whitespace()
                .nth(5)
                .filter(|p| p.contains("/plugin-host-"))
        })
        .expect("the private copy is mapped");
    let copy_dir = std::path::Path::new(copy).parent().unwrap();
    let mode = fs::metadata(copy_dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    let name = copy_dir.file_name().unwrap().to_str().unwrap();
    assert!(
        !name.contains(&std::process::id().to_string()),
        "{name}: not named after the pid"
    );
}

/// Runs `host serve` that is expected to fail at start.
fn serve_once(args: &[&str]) -> std::process::Output {
    let mut all = vec!["serve"];
    all.extend(args);
    let mut child = Command::new(&built().host)
        .args(&all)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("host serve {args:?} did not fail at start");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}
