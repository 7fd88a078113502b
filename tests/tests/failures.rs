//! Reliability and security: whatever is dropped into the plugins directory or sent to the
//! socket, the host keeps serving, says clearly what is wrong, and loses no call.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use e2e::{built, install, plugins_dir, text, Server, Variant};
use host::{Host, HostOptions, LoadErrorKind, LoadOptions};

const WAIT: Duration = Duration::from_secs(20);
const ADA: &str = r#"{"name":"Ada"}"#;

/// Variants of hello under other names that misbehave in one way each.
struct Misfits {
    _dir: tempfile::TempDir,
    init_error: PathBuf,
    init_panic: PathBuf,
    bad_metadata: PathBuf,
    drop_panic: PathBuf,
    sleepy: PathBuf,
}

fn misfits() -> &'static Misfits {
    static BUILT: OnceLock<Misfits> = OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let renamed = |name: &'static str| {
            Variant::of("example-plugins/hello").edit("Cargo.toml", "name = \"hello\"", format!("name = \"{name}\""))
        };
        let init = "        Ok(Hello {\n            greeting: config.greeting,\n        })";
        Misfits {
            init_error: renamed("initerror")
                .edit("src/lib.rs", init, "        Err(PluginError::failed(format!(\"no {} today\", config.greeting)))")
                .build_into(dir.path(), "libinit_error.so"),
            init_panic: renamed("initpanic")
                .edit("src/lib.rs", init, "        panic!(\"init exploded\")")
                .build_into(dir.path(), "libinit_panic.so"),
            bad_metadata: renamed("badmeta")
                .edit("src/lib.rs", ".add(\"fail\", Hello::fail)", ".add(\"no good\", Hello::fail)")
                .build_into(dir.path(), "libbad_metadata.so"),
            drop_panic: renamed("droppanic")
                .edit("src/lib.rs", "    ) -> Result<Self::Output, PluginError> {\n        Ok(serde_json::json!({", "    ) -> Result<Self::Output, PluginError> {\n        if _input.is_null() {\n            panic!(\"execute exploded\");\n        }\n        Ok(serde_json::json!({")
                .edit("src/lib.rs", "export_plugin!(Hello);", "export_plugin!(Hello);\nimpl Drop for Hello {\n    fn drop(&mut self) {\n        panic!(\"drop exploded\")\n    }\n}")
                .build_into(dir.path(), "libdrop_panic.so"),
            sleepy: renamed("sleepy")
                .edit("src/lib.rs", "            ctx.check_cancelled()?;\n", "")
                .build_into(dir.path(), "libsleepy.so"),
            _dir: dir,
        }
    })
}

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

fn wait_for_error(server: &Server, file: &str) -> String {
    server.wait_until(WAIT, &format!("{file} to be rejected"), |s| {
        error_of(s, file).is_some()
    });
    error_of(server, file).unwrap()
}

#[test]
fn bad_files_are_reported_one_line_each_and_the_host_keeps_serving() {
    let dir = plugins_dir();
    let d = dir.path();
    install(&built().hello, d, "libhello.so");
    let server = Server::start(d, &[]);
    server.wait_until(WAIT, "hello", |s| greet(s).is_ok());

    let libz = e2e::libz();
    let hello = fs::read(&built().hello).unwrap();
    let random: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    fs::write(d.join("empty.so"), b"").unwrap();
    fs::write(d.join("random.so"), &random).unwrap();
    fs::write(d.join("text.so"), "#!/bin/sh\necho not a plugin\n").unwrap();
    fs::write(d.join("truncated.so"), &hello[..8192]).unwrap();
    install(libz, d, "libz.so");
    fs::create_dir(d.join("dir.so")).unwrap();
    symlink("loop.so", d.join("loop.so")).unwrap();
    symlink("/nonexistent/target.so", d.join("dangling.so")).unwrap();
    let fifo =
        std::ffi::CString::new(d.join("fifo.so").into_os_string().into_encoded_bytes()).unwrap();
    // SAFETY: `fifo` is a NUL-terminated path that outlives the call.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    install(&misfits().init_error, d, "init_error.so");
    install(&misfits().init_panic, d, "init_panic.so");
    install(&misfits().bad_metadata, d, "bad_metadata.so");
    install(&built().hello, d, "second_hello.so");
    // Ignored quietly: not *.so, or hidden.
    for name in [
        "notes.txt",
        ".libhello.so.swp",
        "libhello.so.tmp",
        ".hidden.so",
        "libx.so~",
    ] {
        fs::write(d.join(name), b"junk").unwrap();
    }

    let expected = [
        ("empty.so", "not a shared library: no ELF header"),
        ("random.so", "not a shared library: no ELF header"),
        ("text.so", "not a shared library: no ELF header"),
        ("truncated.so", "truncated: segment"),
        ("libz.so", "not a plugin: it exports no plugin root module"),
        ("dir.so", "not a regular file"),
        ("loop.so", "cannot open: Too many levels of symbolic links"),
        ("dangling.so", "cannot open: No such file or directory"),
        ("fifo.so", "not a regular file"),
        (
            "init_error.so",
            "plugin initerror: init failed: no Hello today",
        ),
        (
            "init_panic.so",
            "plugin initpanic panicked in init: init exploded",
        ),
        (
            "bad_metadata.so",
            "callback name \"no good\" is not 1 to 64 characters",
        ),
        ("second_hello.so", "declares plugin hello, which"),
    ];
    for (file, message) in expected {
        let error = wait_for_error(&server, file);
        assert!(error.contains(message), "{file}: {error}");
        assert_eq!(error.lines().count(), 1, "{file}: {error}");
    }
    assert_eq!(greet(&server).unwrap(), "Hello, Ada!");
    let log = server.log();
    for (file, _) in expected {
        let lines = log
            .lines()
            .filter(|l| l.contains("rejected") && l.contains(&format!("/{file}")))
            .count();
        assert_eq!(lines, 1, "{file} is reported once:\n{log}");
    }
    for ignored in [
        "notes.txt",
        ".libhello.so.swp",
        "libhello.so.tmp",
        ".hidden.so",
        "libx.so~",
    ] {
        assert!(
            !log.contains(ignored),
            "{ignored} should be ignored quietly:\n{log}"
        );
    }
}

#[test]
fn panics_in_execute_and_drop_are_reported_and_the_host_goes_on() {
    let dir = plugins_dir();
    let file = install(&misfits().drop_panic, dir.path(), "libdroppanic.so");
    install(&built().hello, dir.path(), "libhello.so");
    let server = Server::start(dir.path(), &[]);
    server.wait_until(WAIT, "droppanic", |s| {
        s.call("droppanic", "greet", ADA).is_ok()
    });
    let err = server.call("droppanic", "execute", "null").unwrap_err();
    assert!(
        err.starts_with("plugin droppanic panicked in execute: execute exploded (at src/lib.rs:"),
        "{err}"
    );
    assert!(server.call("droppanic", "execute", "{}").is_ok());
    fs::remove_file(file).unwrap();
    server.wait_until(WAIT, "the drop panic to be reported", |s| {
        s.log()
            .contains("plugin droppanic panicked in drop: drop exploded")
    });
    assert_eq!(greet(&server).unwrap(), "Hello, Ada!");
}

#[test]
fn timeouts_stuck_calls_and_the_concurrency_limit() {
    let dir = plugins_dir();
    install(&built().hello, dir.path(), "libhello.so");
    install(&misfits().sleepy, dir.path(), "libsleepy.so");
    let conf = dir.path().join("host.toml");
    fs::write(
        &conf,
        "[plugins.hello]\ntimeout_ms = 300\nmax_concurrent_calls = 1\n[plugins.sleepy]\ntimeout_ms = 200\n",
    )
    .unwrap();
    let server = Server::start(dir.path(), &["--config", conf.to_str().unwrap()]);
    server.wait_until(WAIT, "both plugins", |s| {
        greet(s).is_ok() && s.call("sleepy", "greet", ADA).is_ok()
    });

    // A well-behaved plugin: the caller gets the timeout on time, the plugin sees the
    // cancellation and stops.
    let start = Instant::now();
    let err = server.call("hello", "wait", r#"{"ms":5000}"#).unwrap_err();
    assert!(err.contains("`wait` did not finish within 300 ms"), "{err}");
    assert!(
        start.elapsed() < Duration::from_millis(1500),
        "answered after {:?}",
        start.elapsed()
    );
    // Whether the plugin noticed its deadline first or the watchdog did, nothing stays stuck.
    server.wait_until(WAIT, "hello's cancelled call to return", |s| {
        s.files()
            .iter()
            .all(|f| f.serving.as_ref().is_none_or(|g| g.stuck == 0))
    });

    // A plugin that ignores cancellation: counted as stuck, while others keep serving and
    // reloading.
    let mut stuck_client = server.client().unwrap();
    let stuck = std::thread::spawn(move || {
        stuck_client
            .call("sleepy", "wait", r#"{"ms":1500}"#)
            .map_err(|e| e.to_string())
    });
    server.wait_until(WAIT, "sleepy to be counted stuck", |s| {
        s.files()
            .iter()
            .any(|f| f.serving.as_ref().is_some_and(|g| g.stuck == 1))
    });
    let out = e2e::host(&["list", "--socket", server.socket.to_str().unwrap()]);
    assert!(
        text(&out)
            .0
            .lines()
            .any(|l| l.starts_with("libsleepy.so") && l.contains("(1 stuck)")),
        "{}",
        text(&out).0
    );
    assert_eq!(greet(&server).unwrap(), "Hello, Ada!");
    let err = stuck.join().unwrap().unwrap_err();
    assert!(err.contains("did not finish within 200 ms"), "{err}");

    // One call at a time for hello: a second one is refused as busy.
    let mut long_client = server.client().unwrap();
    let long = std::thread::spawn(move || {
        long_client
            .call("hello", "wait", r#"{"ms":250}"#)
            .map(|o| o.result().is_ok())
    });
    server.wait_until(WAIT, "the long call to start", |s| {
        s.files()
            .iter()
            .filter(|f| f.path.ends_with("libhello.so"))
            .any(|f| f.serving.as_ref().is_some_and(|g| g.in_flight == 1))
    });
    // It runs for 250 ms: keep calling until it ends.
    let mut busy = None;
    while !long.is_finished() {
        match greet(&server) {
            Err(err) if err.contains("plugin hello is busy") => busy = Some(err),
            Err(err) => panic!("expected a busy error, got {err}"),
            Ok(_) => {}
        }
    }
    assert!(
        busy.is_some(),
        "no call was refused as busy while the long call ran"
    );
    assert!(long.join().unwrap().unwrap());
    server.wait_until(WAIT, "sleepy to return", |s| {
        s.log().contains("stuck call `wait` returned after")
    });
}

#[test]
fn oversized_requests_and_results_are_refused() {
    let dir = plugins_dir();
    install(&built().hello, dir.path(), "libhello.so");
    install(e2e::sysinfo(), dir.path(), "libsysinfo.so");
    let conf = dir.path().join("host.toml");
    fs::write(&conf, "max_message_bytes = 4096\n").unwrap();
    let server = Server::start(dir.path(), &["--config", conf.to_str().unwrap()]);
    server.wait_until(WAIT, "hello", |s| greet(s).is_ok());

    // 500 paths in under 4 KiB of input ask for a report far over 4 KiB.
    let paths = vec!["/"; 500];
    let input = serde_json::json!({ "paths": paths }).to_string();
    let err = server.call("sysinfo", "execute", &input).unwrap_err();
    assert!(
        err.contains("over the limit of 4096 (max_message_bytes)"),
        "{err}"
    );

    let mut stream = UnixStream::connect(&server.socket).unwrap();
    let huge = format!("{{\"v\":1,\"op\":\"call\",\"plugin\":\"hello\",\"callback\":\"greet\",\"input\":{{\"name\":\"{}\"}}}}\n", "a".repeat(10_000));
    stream.write_all(huge.as_bytes()).unwrap();
    let mut reply = String::new();
    BufReader::new(&stream).read_line(&mut reply).unwrap();
    assert!(
        reply.contains("message larger than the limit of 4096 bytes"),
        "{reply}"
    );
    assert_eq!(greet(&server).unwrap(), "Hello, Ada!");
}

#[test]
fn malformed_requests_get_errors_and_never_a_crash() {
    let dir = plugins_dir();
    install(&built().hello, dir.path(), "libhello.so");
    let mut server = Server::start(dir.path(), &[]);
    server.wait_until(WAIT, "hello", |s| greet(s).is_ok());

    let stream = UnixStream::connect(&server.socket).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    let cases = [
        ("\u{0}\u{1}binary", "malformed request"),
        ("{\"v\":1}", "malformed request"),
        ("{\"v\":9,\"op\":\"ping\"}", "protocol version 9"),
        ("{\"v\":1,\"op\":\"call\",\"plugin\":\"../../etc/passwd\",\"callback\":\"x\"}", "invalid plugin name"),
        ("{\"v\":1,\"op\":\"call\",\"plugin\":\"hello\",\"callback\":\"greet\",\"input\":{\"name\":7}}", "invalid type: integer `7`"),
        ("{\"v\":1,\"op\":\"call\",\"plugin\":\"ghost\",\"callback\":\"x\"}", "no plugin named ghost"),
    ];
    for (request, expected) in cases {
        writer.write_all(format!("{request}\n").as_bytes()).unwrap();
        let mut reply = String::new();
        reader.read_line(&mut reply).unwrap();
        assert!(reply.contains(expected), "{request}: {reply}");
    }
    assert!(server.is_running());
    assert_eq!(greet(&server).unwrap(), "Hello, Ada!");
}

#[test]
fn the_socket_is_private_and_other_users_are_refused() {
    let dir = plugins_dir();
    install(&built().hello, dir.path(), "libhello.so");
    let server = Server::start(dir.path(), &[]);
    let socket = &server.socket;
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(socket), 0o600);
    assert_eq!(mode(socket.parent().unwrap()), 0o700);

    // Open the doors on purpose, so that only the peer-credential check stands.
    for dir in socket.ancestors().skip(1).take(2) {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
    }
    fs::set_permissions(socket, fs::Permissions::from_mode(0o666)).unwrap();
    let out = Command::new(&built().host)
        .args(["list", "--socket", socket.to_str().unwrap()])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(
        stderr.contains("peer uid 65534 is not this host's uid"),
        "{stderr}"
    );
    assert_eq!(greet(&server).unwrap(), "Hello, Ada!");
}

#[test]
fn files_others_could_write_are_refused_unless_allowed() {
    let dir = plugins_dir();
    let file = install(&built().hello, dir.path(), "libhello.so");
    let host = Host::new(HostOptions::default()).unwrap();

    fs::set_permissions(&file, fs::Permissions::from_mode(0o666)).unwrap();
    let err = host.load_file(&file).unwrap_err();
    assert_eq!(err.kind(), LoadErrorKind::InsecurePermissions);
    assert!(
        err.message()
            .contains("writable by group or others (mode 666): chmod go-w it"),
        "{err}"
    );
    assert!(
        err.message().contains("--allow-insecure-permissions"),
        "{err}"
    );

    fs::set_permissions(&file, fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
    let err = host.load_file(&file).unwrap_err();
    assert!(
        err.message().contains(&format!(
            "{} is writable by group or others",
            dir.path().display()
        )),
        "{err}"
    );
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700)).unwrap();

    std::os::unix::fs::chown(&file, Some(65534), Some(65534)).unwrap();
    let err = host.load_file(&file).unwrap_err();
    assert!(
        err.message()
            .contains("is owned by uid 65534, not by this host's user"),
        "{err}"
    );

    let lenient = Host::new(HostOptions {
        load: LoadOptions {
            allow_insecure_permissions: true,
            ..LoadOptions::default()
        },
        ..HostOptions::default()
    })
    .unwrap();
    lenient.load_file(&file).expect("allowed with a warning");
    let out = e2e::host(&[
        "check",
        file.to_str().unwrap(),
        "--allow-insecure-permissions",
    ]);
    assert!(out.status.success(), "{}", text(&out).1);
    let out = e2e::host(&["check", file.to_str().unwrap()]);
    assert!(!out.status.success());
}

#[test]
fn a_pinned_hash_refuses_other_files_and_keeps_the_old_version() {
    let dir = plugins_dir();
    install(&built().hello, dir.path(), "libhello.so");
    let sha = {
        let out = Command::new("sha256sum")
            .arg(&built().hello)
            .output()
            .unwrap();
        text(&out).0.split_whitespace().next().unwrap().to_owned()
    };
    let conf = dir.path().join("host.toml");
    fs::write(&conf, format!("[plugins.hello]\nsha256 = \"{sha}\"\n")).unwrap();
    let server = Server::start(dir.path(), &["--config", conf.to_str().unwrap()]);
    server.wait_until(WAIT, "pinned hello", |s| greet(s).is_ok());

    let staging = tempfile::tempdir().unwrap();
    let other = Variant::of("example-plugins/hello")
        .edit("src/lib.rs", "\"Hello\".to_owned()", "\"Howdy\".to_owned()")
        .build_into(staging.path(), "libhello.so");
    install(&other, dir.path(), "libhello.so");
    let error = wait_for_error(&server, "libhello.so");
    assert!(
        error.contains(&format!("but host.toml pins {sha}")),
        "{error}"
    );
    assert_eq!(greet(&server).unwrap(), "Hello, Ada!");
}

#[test]
fn a_thread_left_running_by_a_replaced_version_keeps_it_mapped_and_is_reported() {
    let staging = tempfile::tempdir().unwrap();
    let threaded = Variant::of("example-plugins/hello")
        .edit(
            "src/lib.rs",
            "        ctx.info(format_args!(\"greeting {}\", input.name));",
            "        std::thread::spawn(|| std::thread::sleep(std::time::Duration::from_millis(1500)));\n        ctx.info(format_args!(\"greeting {}\", input.name));",
        )
        .build_into(staging.path(), "libhello.so");
    let dir = plugins_dir();
    install(&threaded, dir.path(), "libhello.so");
    let config = e2e::no_probation(dir.path(), &["hello"]);
    let mut server = Server::start(dir.path(), &[&config[0], &config[1]]);
    server.wait_until(WAIT, "hello", |s| greet(s).is_ok());

    // The old version is replaced while its thread still sleeps in its code.
    install(&built().hello, dir.path(), "libhello.so");
    server.wait_until(WAIT, "the old version to be reported still mapped", |s| {
        s.log().contains("still mapped")
    });
    let files = server.files();
    assert!(
        files[0]
            .retired
            .iter()
            .any(|r| r.generation == 1 && r.state == host::RetiredState::StillMapped),
        "{files:?}"
    );
    // Once its threads have ended, the library leaves memory, and the log says so (every
    // reload looks again; so does a timer, every minute).
    let mut round = 0;
    server.wait_until(Duration::from_secs(60), "the release to be logged", |s| {
        round += 1;
        let source = if round % 2 == 0 {
            e2e::hello_hi()
        } else {
            built().hello.as_path()
        };
        install(source, dir.path(), "libhello.so");
        std::thread::sleep(Duration::from_millis(100));
        s.log()
            .contains("released: the library that stayed mapped after unload has left memory")
    });
    assert!(
        server.is_running(),
        "the host survives the thread's end:\n{}",
        server.log()
    );
    assert!(greet(&server).is_ok());
}
