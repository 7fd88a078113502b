//! Running under systemd (issue 20, items 1-2): the notify protocol seen from a fake
//! service manager (a datagram socket the test binds), the watchdog, and control and HTTP
//! sockets passed by socket activation. JSON logs: `json_logs.rs`; the printed units:
//! `service_unit.rs`.
//!
//! Every wait has a deadline, and every host is killed when its test fails (`Server`'s
//! drop): a passed-socket host that never answers fails the test, it does not hang it.

use std::fs;
use std::os::fd::{AsRawFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram, UnixListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use e2e::{built, install, plugins_dir, Server, Variant};

const WAIT: Duration = Duration::from_secs(60);

/// A plugins directory with hello in it.
fn with_hello() -> tempfile::TempDir {
    let dir = plugins_dir();
    install(&built().hello, dir.path(), "libhello.so");
    dir
}

/// The service manager's end of `NOTIFY_SOCKET`: every datagram received, in order.
struct FakeManager {
    socket: UnixDatagram,
    seen: Vec<String>,
}

impl FakeManager {
    fn bind(path: &Path) -> FakeManager {
        FakeManager::from(UnixDatagram::bind(path).expect("bind the notify socket"))
    }

    fn from(socket: UnixDatagram) -> FakeManager {
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("read timeout");
        FakeManager {
            socket,
            seen: Vec::new(),
        }
    }

    /// Receives until a message has a line starting with `line`; returns that message.
    /// Panics (with everything seen and the host's log) after `WAIT`.
    fn wait_for(&mut self, line: &str, server: &Server) -> String {
        let start = Instant::now();
        let mut buf = vec![0u8; 4096];
        loop {
            assert!(
                start.elapsed() < WAIT,
                "no {line:?} from the host; seen: {:?}\nhost log:\n{}",
                self.seen,
                server.log()
            );
            if let Ok(n) = self.socket.recv(&mut buf) {
                let message = String::from_utf8_lossy(&buf[..n]).into_owned();
                self.seen.push(message.clone());
                if message.lines().any(|l| l.starts_with(line)) {
                    return message;
                }
            }
        }
    }

    /// How many messages seen so far have a line starting with `line`.
    fn count(&self, line: &str) -> usize {
        self.seen
            .iter()
            .filter(|m| m.lines().any(|l| l.starts_with(line)))
            .count()
    }
}

#[test]
fn a_service_manager_hears_ready_watchdog_status_reloading_and_stopping() {
    let plugins = plugins_dir();
    install(hello_slow_spawning(), plugins.path(), "libhello.so");
    let dir = tempfile::tempdir().unwrap();
    let notify = dir.path().join("notify");
    let mut manager = FakeManager::bind(&notify);
    let config = dir.path().join("host.toml");
    fs::write(&config, "[plugins.hello]\ntimeout_ms = 30000\n").unwrap();
    let mut server = Server::spawn(
        None,
        plugins.path(),
        &["--config", config.to_str().unwrap()],
        |command| {
            command
                .env("NOTIFY_SOCKET", &notify)
                .env("WATCHDOG_USEC", "400000");
        },
    );

    // READY=1 means serving, with the plugins present at start loaded (this one's init
    // takes a second): a call at once works.
    manager.wait_for("READY=1", &server);
    // Logged before READY=1 was sent, so in the log by the time it arrives. (A call alone
    // would not tell: a client connecting early waits in the socket's backlog.)
    let log = server.log();
    assert!(
        log.contains("loaded hello"),
        "READY=1 before the load:\n{log}"
    );
    let answer = server.call("hello", "greet", r#"{"name":"Ada"}"#);
    assert!(answer.is_ok(), "{answer:?}\n{}", server.log());
    let status = manager.wait_for("STATUS=", &server);
    assert!(
        status.contains("STATUS=serving 1 plugin, 0 tasks queued"),
        "{status}"
    );
    // Every 200 ms while healthy: several in a row.
    for _ in 0..3 {
        manager.wait_for("WATCHDOG=1", &server);
    }

    // A reload of host.toml: RELOADING=1, then READY=1 once applied.
    fs::write(&config, "[plugins.hello]\ntimeout_ms = 20000\n").unwrap();
    let reloading = manager.wait_for("RELOADING=1", &server);
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
    manager.wait_for("READY=1", &server);

    // The status line follows what is served.
    fs::remove_file(plugins.path().join("libhello.so")).unwrap();
    let status = manager.wait_for("STATUS=serving 0 plugins", &server);
    assert_eq!(status, "STATUS=serving 0 plugins, 0 tasks queued");
    // A task for a plugin not served waits, queued.
    server.cli(&["submit", "hello", "greet", "--input", r#"{"name":"Ida"}"#]);
    let status = manager.wait_for("STATUS=serving 0 plugins, 1", &server);
    assert_eq!(status, "STATUS=serving 0 plugins, 1 task queued");

    server.signal(libc::SIGTERM);
    manager.wait_for("STOPPING=1", &server);
    let status = server.wait_timeout(WAIT).expect("the host stops");
    assert!(status.success(), "{status:?}\n{}", server.log());
    assert!(manager.count("WATCHDOG=1") >= 3, "{:?}", manager.seen);
}

#[test]
fn an_abstract_notify_socket_hears_ready() {
    let plugins = with_hello();
    let name = format!("plugin-host-e2e-{}", std::process::id());
    let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let mut manager = FakeManager::from(UnixDatagram::bind_addr(&addr).unwrap());
    let mut server = Server::spawn(None, plugins.path(), &[], |command| {
        command.env("NOTIFY_SOCKET", format!("@{name}"));
    });
    manager.wait_for("READY=1", &server);
    assert!(server.call("hello", "greet", r#"{"name":"Bo"}"#).is_ok());
    // No WATCHDOG_USEC: no watchdog pings, only the status line.
    manager.wait_for("STATUS=", &server);
    assert!(server.stop(), "{}", server.log());
    assert_eq!(manager.count("WATCHDOG=1"), 0, "{:?}", manager.seen);
}

/// The script that makes LISTEN_PID the host's own pid: sh sets it to its pid, then
/// becomes the host (exec keeps the pid).
const WITH_OWN_PID: &str = r#"LISTEN_PID=$$ exec "$0" "$@""#;

/// Starts `host serve` with `fd` as descriptor 3 and `env` set, through [`WITH_OWN_PID`].
fn spawn_with_fd3(
    fd: &impl AsRawFd,
    socket: &Path,
    plugins: &Path,
    env: &[(&str, &str)],
) -> Server {
    spawn_with_fds(&[fd.as_raw_fd()], socket, plugins, env)
}

/// Starts `host serve` with `fds` as descriptors 3, 4, ... and `env` set, through
/// [`WITH_OWN_PID`].
fn spawn_with_fds(fds: &[RawFd], socket: &Path, plugins: &Path, env: &[(&str, &str)]) -> Server {
    let fds = fds.to_vec();
    Server::spawn_via(
        &["sh", "-c", WITH_OWN_PID],
        Some(socket),
        plugins,
        &[],
        |command: &mut Command| {
            command.envs(env.iter().copied());
            // SAFETY: the closure runs in the forked child before exec and calls only fcntl
            // and dup2, which are async-signal-safe; it reads `fds` (allocated before the
            // fork) and allocates nothing. Each descriptor is first copied above 100 (close-
            // on-exec), so that moving one into place never overwrites another; dup2 then
            // leaves its copy at 3 + i without close-on-exec, so it survives exec.
            unsafe {
                command.pre_exec(move || {
                    let mut high = [0; 8];
                    for (i, fd) in fds.iter().enumerate() {
                        high[i] = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 100);
                        if high[i] < 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    for (i, fd) in high[..fds.len()].iter().enumerate() {
                        if libc::dup2(*fd, 3 + i as RawFd) < 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    Ok(())
                });
            }
        },
    )
}

/// Waits until `host call hello greet` answers on `socket`; panics with the log after
/// `WAIT`.
fn wait_for_a_call(server: &Server) {
    server.wait_until(WAIT, "a call on the passed socket", |s| {
        s.call("hello", "greet", r#"{"name":"Cy"}"#).is_ok()
    });
}

#[test]
fn a_passed_control_socket_is_served_and_left_in_place() {
    for names in [None, Some("control")] {
        let plugins = with_hello();
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("host.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let mut env = vec![("LISTEN_FDS", "1")];
        env.extend(names.map(|n| ("LISTEN_FDNAMES", n)));
        let mut server = spawn_with_fd3(&listener, &socket, plugins.path(), &env);
        drop(listener);
        wait_for_a_call(&server);
        // The CLI too, on the same socket.
        let out = server.cli(&["call", "hello", "greet", "--input", r#"{"name":"Di"}"#]);
        assert!(out.contains("Hello, Di!"), "{out}");
        assert!(
            server.log().contains("passed by the service manager"),
            "{}",
            server.log()
        );
        assert!(server.stop(), "{}", server.log());
        // systemd owns the file: still there after the host exits.
        assert!(
            socket.exists(),
            "names {names:?}: the socket file was removed"
        );
    }
}

/// hello whose `init` takes a second (so that `READY=1` is seen to wait for the plugins
/// present at start), and whose `greet` answers with what a process it starts inherited: the
/// targets of its descriptors and its environment.
fn hello_slow_spawning() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        Variant::of("example-plugins/hello")
            .edit(
                "src/lib.rs",
                "let config: Config = ctx.config()?;",
                "let config: Config = ctx.config()?;\
                 std::thread::sleep(std::time::Duration::from_secs(1));",
            )
            .edit(
                "src/lib.rs",
                "message: format!(\"{}, {}!\", self.greeting, input.name),",
                "message: String::from_utf8_lossy(&std::process::Command::new(\"sh\")\
                 .args([\"-c\", \"for f in /proc/$$/fd/*; do readlink $f; done; env\"])\
                 .output().map(|o| o.stdout).unwrap_or_default()).into_owned(),",
            )
            .build()
    })
}

/// A process a plugin starts (here an in-process one, the worst case: workers get a clean
/// environment and descriptors anyway) inherits neither the passed socket nor the
/// variables that were for the host.
#[test]
fn children_inherit_neither_the_passed_socket_nor_the_variables() {
    use std::os::unix::fs::MetadataExt;
    let plugins = plugins_dir();
    install(hello_slow_spawning(), plugins.path(), "libhello.so");
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("host.sock");
    let notify = dir.path().join("notify");
    let mut manager = FakeManager::bind(&notify);
    let listener = UnixListener::bind(&socket).unwrap();
    let inode = fs::metadata(format!("/proc/self/fd/{}", listener.as_raw_fd()))
        .unwrap()
        .ino();
    let env = [
        ("LISTEN_FDS", "1"),
        ("LISTEN_FDNAMES", "control"),
        ("NOTIFY_SOCKET", notify.to_str().unwrap()),
        ("WATCHDOG_USEC", "10000000"),
    ];
    let server = spawn_with_fd3(&listener, &socket, plugins.path(), &env);
    drop(listener);
    manager.wait_for("READY=1", &server);
    let answer = server
        .call("hello", "greet", r#"{"name":"Fay"}"#)
        .unwrap_or_else(|err| panic!("{err}\n{}", server.log()));
    let seen = answer["message"].as_str().unwrap_or_default();
    // The child did run and report (its own stdout pipe is among its descriptors).
    assert!(seen.contains("pipe:["), "{seen}");
    for name in [
        "LISTEN_FDS=",
        "LISTEN_PID=",
        "LISTEN_FDNAMES=",
        "NOTIFY_SOCKET=",
        "WATCHDOG_USEC=",
    ] {
        assert!(
            !seen.lines().any(|l| l.starts_with(name)),
            "the child inherited {name}:\n{seen}"
        );
    }
    assert!(
        !seen.contains(&format!("socket:[{inode}]")),
        "the child inherited the passed socket:\n{seen}"
    );
}

/// A TCP socket passed beside the control socket (`control:http`), or alone without a name,
/// is taken as the HTTP listener, not refused; the control socket is served.
#[test]
fn a_passed_tcp_socket_is_taken_for_http() {
    let plugins = with_hello();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("host.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let env = [("LISTEN_FDS", "2"), ("LISTEN_FDNAMES", "control:http")];
    let fds = [listener.as_raw_fd(), tcp.as_raw_fd()];
    let mut server = spawn_with_fds(&fds, &socket, plugins.path(), &env);
    wait_for_a_call(&server);
    let port = tcp.local_addr().unwrap().port();
    assert_eq!(healthz(port), "HTTP/1.1 200 OK", "{}", server.log());
    assert!(server.stop(), "{}", server.log());
    assert!(socket.exists());

    // Unnamed, by type: the TCP socket is the HTTP one, and the host binds its own control
    // socket.
    let own = dir.path().join("own.sock");
    let mut server = spawn_with_fds(
        &[tcp.as_raw_fd()],
        &own,
        plugins.path(),
        &[("LISTEN_FDS", "1")],
    );
    wait_for_a_call(&server);
    assert_eq!(healthz(port), "HTTP/1.1 200 OK", "{}", server.log());
    assert!(server.stop(), "{}", server.log());
    // The host's own socket: removed at exit.
    assert!(!own.exists());
}

/// The status line of `GET /healthz` on the loopback `port`.
fn healthz(port: u16) -> String {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.lines().next().unwrap_or_default().to_owned()
}

/// Variables inherited from a socket-activated parent (LISTEN_PID is another process's):
/// the descriptors are not the host's; it binds its own socket and says why in the log.
#[test]
fn another_process_s_descriptors_are_left_alone() {
    let plugins = with_hello();
    let mut server = Server::start_with_env(
        plugins.path(),
        &[],
        &[("LISTEN_FDS", "1"), ("LISTEN_PID", "1")],
    );
    assert!(server.call("hello", "greet", r#"{"name":"Gus"}"#).is_ok());
    let log = server.log();
    assert!(
        log.contains("socket activation: LISTEN_PID=1 is not this host's pid"),
        "{log}"
    );
    assert!(server.stop(), "{}", server.log());
    assert!(!server.socket.exists(), "its own socket is removed at exit");
}

/// Runs `host serve` with `fd` as descriptor 3 and `env`; its exit within `WAIT` and log.
fn refused(fd: &impl AsRawFd, env: &[(&str, &str)]) -> (std::process::ExitStatus, String) {
    let plugins = with_hello();
    let dir = tempfile::tempdir().unwrap();
    let mut server = spawn_with_fd3(fd, &dir.path().join("host.sock"), plugins.path(), env);
    let status = server
        .wait_timeout(WAIT)
        .unwrap_or_else(|| panic!("the host did not refuse {env:?}:\n{}", server.log()));
    (status, server.log())
}

/// An environment variable: name and value.
type Env<'a> = (&'a str, &'a str);

#[test]
fn bad_passed_descriptors_are_refused_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let listener = UnixListener::bind(dir.path().join("passed.sock")).unwrap();
    let file = fs::File::create(dir.path().join("not-a-socket")).unwrap();
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let datagram = UnixDatagram::unbound().unwrap();
    let cases: [(&dyn AsRawFd, &[Env], &str); 5] = [
        (
            &listener,
            &[("LISTEN_FDS", "one")],
            "error: LISTEN_FDS=\"one\": not a number of descriptors\n",
        ),
        (
            &file,
            &[("LISTEN_FDS", "1")],
            "error: socket activation: descriptor 3: not a socket: the host takes a listening \
             Unix stream socket (control) or TCP socket (http)\n",
        ),
        (
            &listener,
            &[("LISTEN_FDS", "1"), ("LISTEN_FDNAMES", "metrics")],
            "error: socket activation: descriptor 3 (named \"metrics\"): unknown name: the \
             host takes `control` and `http` (FileDescriptorName=)\n",
        ),
        (
            &tcp,
            &[("LISTEN_FDS", "1"), ("LISTEN_FDNAMES", "control")],
            "error: socket activation: descriptor 3 (named \"control\"): the control socket \
             must be a listening Unix stream socket, not a TCP socket\n",
        ),
        (
            &datagram,
            &[("LISTEN_FDS", "1")],
            "error: socket activation: descriptor 3: not a stream socket: the host takes a \
             listening Unix stream socket (control) or TCP socket (http)\n",
        ),
    ];
    for (fd, env, line) in cases {
        let (status, log) = refused(&fd.as_raw_fd(), env);
        assert_eq!(status.code(), Some(2), "{env:?}: {log}");
        assert_eq!(log, line, "{env:?}");
    }
}
