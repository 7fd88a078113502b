//! The sandbox of isolated plugins (issue 20, items 5 and 6): a real `host serve` runs the
//! probe plugin in a worker process under `[plugins.probe.sandbox]` (Landlock, seccomp,
//! `no_new_privs`), and the plugin tries to read, write, connect, run programs and trace.
//! Every test shares one build of the probe plugin.

use std::fs;
use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::Duration;

use e2e::{install, plugins_dir, probe, Server};
use host::control::ClientError;
use host::CallErrorKind;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);
const DENIED: &str = "Permission denied (os error 13)";

/// A program every machine has, and one it may run when its sandbox lists it.
const TRUE: &str = "/usr/bin/true";
const LS: &str = "/usr/bin/ls";
const CAT: &str = "/usr/bin/cat";

/// Files and directories the probe is pointed at: one it may read, one it may write, and
/// one outside both lists.
struct Places {
    _dir: tempfile::TempDir,
    readable: PathBuf,
    writable: PathBuf,
    outside: PathBuf,
}

impl Places {
    fn new() -> Places {
        let dir = tempfile::tempdir().unwrap();
        let [readable, writable, outside] = ["readable", "writable", "outside"].map(|name| {
            let path = dir.path().join(name);
            fs::create_dir(&path).unwrap();
            fs::write(path.join("file"), "twelve bytes").unwrap();
            path
        });
        Places {
            _dir: dir,
            readable,
            writable,
            outside,
        }
    }

    fn sandbox(&self, net: &str, exec: &[&str]) -> String {
        format!(
            "[plugins.probe.sandbox]\nread = [{:?}]\nwrite = [{:?}]\nexec = {exec:?}\nnet = {net:?}\n",
            self.readable, self.writable
        )
    }
}

/// `host serve` with the probe plugin and `config` as its host.toml, once probe answers (or,
/// with `loaded` false, once the host answers).
fn serve(config: &str, loaded: bool) -> (tempfile::TempDir, Server) {
    let dir = plugins_dir();
    install(probe(), dir.path(), "libprobe.so");
    let conf = dir.path().join("host.toml");
    fs::write(&conf, config).unwrap();
    let server = Server::start(dir.path(), &["--config", conf.to_str().unwrap()]);
    if loaded {
        server.wait_until(WAIT, "the probe plugin", |s| {
            s.call("probe", "execute", "null").is_ok()
        });
    }
    (dir, server)
}

fn isolated(extra: &str) -> String {
    format!("[plugins.probe]\nisolation = \"process\"\n{extra}")
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn read(server: &Server, file: &Path) -> Result<serde_json::Value, String> {
    server.call("probe", "read", &json!({ "path": path(file) }).to_string())
}

fn write(server: &Server, file: &Path) -> Result<serde_json::Value, String> {
    let input = json!({ "path": path(file), "text": "written" });
    server.call("probe", "write", &input.to_string())
}

fn connect(server: &Server, listener: &TcpListener) -> Result<serde_json::Value, String> {
    let addr = listener.local_addr().unwrap().to_string();
    server.call("probe", "connect", &json!({ "addr": addr }).to_string())
}

fn connect_to(server: &Server, addr: SocketAddr) -> Result<serde_json::Value, String> {
    let input = json!({ "addr": addr.to_string() });
    server.call("probe", "connect", &input.to_string())
}

fn udp_send(server: &Server, addr: SocketAddr) -> Result<serde_json::Value, String> {
    let input = json!({ "addr": addr.to_string() });
    server.call("probe", "udp_send", &input.to_string())
}

fn bind(server: &Server, addr: &str) -> Result<serde_json::Value, String> {
    server.call("probe", "bind", &json!({ "addr": addr }).to_string())
}

/// This machine's address on its way out, not a loopback one: the local address of a UDP
/// socket connected (which sends nothing) to a documentation address off this machine.
fn outside_ip() -> IpAddr {
    let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
    socket
        .connect("192.0.2.1:9")
        .expect("this machine has a route off it");
    let ip = socket.local_addr().unwrap().ip();
    assert!(!ip.is_loopback() && !ip.is_unspecified(), "{ip}");
    ip
}

/// Whether `listener` (non-blocking) has a connection waiting, within a moment.
fn accepts(listener: &TcpListener) -> bool {
    listener.set_nonblocking(true).unwrap();
    for _ in 0..20 {
        if listener.accept().is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// The datagram `socket` receives within a second, and who sent it.
fn received(socket: &UdpSocket) -> Option<(Vec<u8>, SocketAddr)> {
    socket
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let mut buf = [0u8; 64];
    let (len, from) = socket.recv_from(&mut buf).ok()?;
    Some((buf[..len].to_vec(), from))
}

fn connect_unix(server: &Server, socket: &Path) -> Result<serde_json::Value, String> {
    server.call(
        "probe",
        "connect",
        &json!({ "addr": path(socket) }).to_string(),
    )
}

fn signal(server: &Server, pid: u32) -> Result<serde_json::Value, String> {
    server.call("probe", "signal", &json!({ "pid": pid }).to_string())
}

fn run(server: &Server, program: &str) -> Result<serde_json::Value, String> {
    server.call("probe", "run", &json!({ "program": program }).to_string())
}

fn refused(result: Result<serde_json::Value, String>, what: &str) -> String {
    let err = result.expect_err(&format!("{what} was allowed"));
    assert!(err.contains(DENIED), "{what}: {err}");
    err
}

/// The `host list` line of the probe plugin.
fn listed(server: &Server) -> String {
    let list = server.cli(&["list"]);
    list.lines()
        .filter(|l| l.contains("probe") || l.contains("sandbox") || l.contains("process"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn a_sandboxed_plugin_reads_writes_and_runs_only_what_its_lists_allow_and_has_no_network() {
    let places = Places::new();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let (_dir, server) = serve(&isolated(&places.sandbox("none", &[TRUE, CAT])), true);

    // Inside its lists.
    assert_eq!(
        read(&server, &places.readable.join("file")).unwrap(),
        json!({ "bytes": 12 })
    );
    assert_eq!(
        write(&server, &places.writable.join("new")).unwrap(),
        json!({ "written": 7 })
    );
    assert_eq!(
        fs::read_to_string(places.writable.join("new")).unwrap(),
        "written"
    );
    assert_eq!(
        read(&server, &places.writable.join("new")).unwrap(),
        json!({ "bytes": 7 })
    );
    assert_eq!(run(&server, TRUE).unwrap(), json!({ "status": 0 }));
    // A program it runs is in the sandbox too: cat reads the readable file, not the other.
    let cat = |file: &Path| {
        let input = json!({ "program": CAT, "args": [path(file)] });
        server.call("probe", "run", &input.to_string()).unwrap()
    };
    assert_eq!(cat(&places.readable.join("file")), json!({ "status": 0 }));
    assert_eq!(cat(&places.outside.join("file")), json!({ "status": 1 }));

    // Outside them: the plugin's ordinary error, the worker keeps serving.
    let err = refused(
        read(&server, &places.outside.join("file")),
        "reading outside",
    );
    assert!(err.starts_with("cannot read "), "{err}");
    refused(
        read(&server, Path::new("/etc/passwd")),
        "reading /etc/passwd",
    );
    refused(
        write(&server, &places.outside.join("new")),
        "writing outside",
    );
    refused(
        write(&server, &places.readable.join("new")),
        "writing where it may only read",
    );
    assert!(!places.outside.join("new").exists());
    refused(run(&server, LS), "running a program outside exec");
    let err = refused(connect(&server, &listener), "connecting with net = none");
    assert!(err.contains("cannot connect to 127.0.0.1:"), "{err}");
    // Nor to the host's own control socket, nor may it signal the host (Landlock scope).
    refused(
        connect_unix(&server, &server.socket),
        "connecting to the control socket",
    );
    let err = signal(&server, server.pid()).expect_err("signalling the host was allowed");
    assert!(err.contains("Operation not permitted"), "{err}");

    let list = listed(&server);
    assert!(
        list.contains("sandbox: landlock abi ") && list.contains(", seccomp, net none"),
        "{list}"
    );
    let files = server.files();
    let worker = files[0].serving.as_ref().unwrap().worker.as_ref().unwrap();
    assert!(
        worker
            .sandbox
            .as_deref()
            .is_some_and(|s| s.ends_with("seccomp, net none")),
        "{worker:?}"
    );
    assert_eq!(worker.crashes, 0, "{worker:?}");
}

#[test]
fn ptrace_in_a_sandbox_ends_the_worker_as_crashed_naming_the_call_and_the_host_keeps_serving() {
    let places = Places::new();
    let (_dir, server) = serve(&isolated(&places.sandbox("none", &[])), true);
    let mut client = server.client().unwrap();
    let err = match client.call("probe", "ptrace", "{}") {
        Err(ClientError::Refused(err)) => err,
        other => panic!("ptrace was not refused: {other:?}"),
    };
    assert_eq!(err.kind, CallErrorKind::Crashed, "{err}");
    assert!(
        err.message
            .contains("its sandbox denied system call ptrace (")
            && err.message.contains("killed by signal SIGSYS")
            && err.message.contains("in callback `ptrace`"),
        "{err}"
    );
    // The host serves on, the plugin from a fresh worker in the same sandbox.
    assert_eq!(
        read(&server, &places.readable.join("file")).unwrap(),
        json!({ "bytes": 12 })
    );
    refused(
        read(&server, &places.outside.join("file")),
        "reading outside",
    );
    let list = listed(&server);
    assert!(
        list.contains("last crash: its sandbox denied system call ptrace"),
        "{list}"
    );
    assert!(list.contains("sandbox: landlock abi"), "{list}");
    assert!(
        server.log().contains("seccomp: denied system call ptrace"),
        "{}",
        server.log()
    );
}

#[test]
fn net_loopback_connects_to_a_listener_on_the_loopback_interface() {
    let places = Places::new();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let (_dir, server) = serve(&isolated(&places.sandbox("loopback", &[])), true);
    let addr = listener.local_addr().unwrap().to_string();
    assert_eq!(
        connect(&server, &listener).unwrap(),
        json!({ "connected": addr })
    );
    listener.set_nonblocking(false).unwrap();
    let (_accepted, peer) = listener.accept().unwrap();
    assert!(peer.ip().is_loopback(), "{peer}");
    // Its files stay fenced in.
    refused(
        read(&server, &places.outside.join("file")),
        "reading outside",
    );
    assert!(listed(&server).contains("net loopback"));
}

#[test]
fn net_loopback_refuses_a_connection_to_this_machines_outside_address_which_net_any_makes() {
    let places = Places::new();
    // On every address: the outside one as well as loopback.
    let listener = TcpListener::bind("0.0.0.0:0").unwrap();
    let outside = SocketAddr::new(outside_ip(), listener.local_addr().unwrap().port());
    let (_dir, server) = serve(&isolated(&places.sandbox("loopback", &[])), true);
    let err = refused(
        connect_to(&server, outside),
        "connecting to the outside address with net = loopback",
    );
    assert!(
        err.starts_with(&format!("cannot connect to {outside}: ")),
        "{err}"
    );
    assert!(!accepts(&listener), "the listener got a connection");
    // The same listener on loopback is fine.
    let local = SocketAddr::from(([127, 0, 0, 1], outside.port()));
    assert_eq!(
        connect_to(&server, local).unwrap(),
        json!({ "connected": local.to_string() })
    );
    assert!(accepts(&listener));
    drop(server);

    // The refusal is the sandbox's: without it, the same plugin connects there.
    let (_dir, server) = serve(&isolated(&places.sandbox("any", &[])), true);
    assert_eq!(
        connect_to(&server, outside).unwrap(),
        json!({ "connected": outside.to_string() })
    );
    assert!(accepts(&listener));
    // And sends to it, and binds every address.
    let anywhere = UdpSocket::bind("0.0.0.0:0").unwrap();
    let to = SocketAddr::new(outside.ip(), anywhere.local_addr().unwrap().port());
    assert_eq!(udp_send(&server, to).unwrap(), json!({ "sent": 5 }));
    assert_eq!(received(&anywhere).unwrap().0, b"probe");
    assert!(bind(&server, "0.0.0.0:0").unwrap()["bound"]
        .as_str()
        .is_some_and(|b| b.starts_with("0.0.0.0:")));
}

#[test]
fn net_loopback_sends_datagrams_to_loopback_addresses_only() {
    let places = Places::new();
    let (_dir, server) = serve(&isolated(&places.sandbox("loopback", &[])), true);
    let local = UdpSocket::bind("127.0.0.1:0").unwrap();
    let to = local.local_addr().unwrap();
    assert_eq!(udp_send(&server, to).unwrap(), json!({ "sent": 5 }));
    let (data, from) = received(&local).expect("the datagram arrived");
    assert_eq!(data, b"probe");
    assert!(from.ip().is_loopback(), "{from}");

    let anywhere = UdpSocket::bind("0.0.0.0:0").unwrap();
    let outside = SocketAddr::new(outside_ip(), anywhere.local_addr().unwrap().port());
    let err = refused(
        udp_send(&server, outside),
        "sending to the outside address with net = loopback",
    );
    assert!(
        err.starts_with(&format!("cannot send to {outside}: ")),
        "{err}"
    );
    assert_eq!(received(&anywhere), None);
    // The worker serves on.
    assert_eq!(udp_send(&server, to).unwrap(), json!({ "sent": 5 }));
    assert_eq!(received(&local).unwrap().0, b"probe");
}

#[test]
fn net_loopback_binds_loopback_addresses_only() {
    let places = Places::new();
    let (_dir, server) = serve(&isolated(&places.sandbox("loopback", &[])), true);
    let bound = bind(&server, "127.0.0.1:0").unwrap();
    let bound: SocketAddr = bound["bound"].as_str().unwrap().parse().unwrap();
    assert!(bound.ip().is_loopback() && bound.port() != 0, "{bound}");
    let err = refused(
        bind(&server, "0.0.0.0:0"),
        "binding every address with net = loopback",
    );
    assert!(err.starts_with("cannot bind 0.0.0.0:0: "), "{err}");
    let outside = SocketAddr::new(outside_ip(), 0);
    refused(
        bind(&server, &outside.to_string()),
        "binding the outside address with net = loopback",
    );
}

#[test]
fn net_loopback_holds_ipv6_and_ipv4_mapped_addresses_and_the_programs_it_runs_to_loopback() {
    const BASH: &str = "/usr/bin/bash";
    let places = Places::new();
    let listener = TcpListener::bind("0.0.0.0:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let outside = outside_ip();
    let (_dir, server) = serve(&isolated(&places.sandbox("loopback", &[BASH])), true);

    let six = TcpListener::bind("[::1]:0").unwrap();
    let local6 = six.local_addr().unwrap();
    assert_eq!(
        connect_to(&server, local6).unwrap(),
        json!({ "connected": local6.to_string() })
    );
    assert!(accepts(&six));
    // An IPv6 socket to IPv4 addresses, written IPv4-mapped.
    let mapped = |ip: std::net::Ipv4Addr| SocketAddr::from((ip.to_ipv6_mapped(), port));
    let local_mapped = mapped(std::net::Ipv4Addr::LOCALHOST);
    assert_eq!(
        connect_to(&server, local_mapped).unwrap(),
        json!({ "connected": local_mapped.to_string() })
    );
    assert!(accepts(&listener));
    if let IpAddr::V4(outside) = outside {
        refused(
            connect_to(&server, mapped(outside)),
            "connecting IPv4-mapped to the outside address",
        );
        assert!(!accepts(&listener));
    }

    // A program it runs (bash opening /dev/tcp/HOST/PORT: socket and connect) inherits the
    // filter, and the host decides its calls on its own sockets.
    let bash = |ip: IpAddr| {
        let line = format!("exec 3<>/dev/tcp/{ip}/{port}");
        let input = json!({ "program": BASH, "args": ["-c", line] });
        server.call("probe", "run", &input.to_string()).unwrap()
    };
    assert_eq!(bash(IpAddr::from([127, 0, 0, 1])), json!({ "status": 0 }));
    assert!(accepts(&listener));
    assert_eq!(bash(outside), json!({ "status": 1 }));
    assert!(!accepts(&listener), "the program connected outside");
}

#[test]
fn net_loopback_refuses_ip_source_routes_which_net_any_sets() {
    let places = Places::new();
    // IPv4 loose source route through 192.0.2.2 (type 131, length 7, pointer 4, the
    // address, then end of options); an IPv6 segment routing header (type 4) through
    // 2001:db8::1.
    let lsrr = json!({ "level": 0, "name": 4, "value": [131, 7, 4, 192, 0, 2, 2, 0] });
    let mut srh = vec![0u8, 2, 4, 0, 0, 0, 0, 0];
    srh.extend(
        "2001:db8::1"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets(),
    );
    let rthdr = json!({ "ipv6": true, "level": 41, "name": 57, "value": srh });
    let (_dir, server) = serve(&isolated(&places.sandbox("loopback", &[])), true);
    for (option, what) in [(&lsrr, "IP_OPTIONS"), (&rthdr, "IPV6_RTHDR")] {
        let err = refused(
            server.call("probe", "sockopt", &option.to_string()),
            &format!("setting {what} with net = loopback"),
        );
        assert!(err.starts_with("cannot set option "), "{err}");
    }
    // Other options are the kernel's to answer.
    let broadcast = json!({ "level": 1, "name": 6, "value": [1, 0, 0, 0] });
    server
        .call("probe", "sockopt", &broadcast.to_string())
        .unwrap();
    drop(server);
    let (_dir, server) = serve(&isolated(&places.sandbox("any", &[])), true);
    assert_eq!(
        server.call("probe", "sockopt", &lsrr.to_string()).unwrap(),
        json!({ "set": 4 })
    );
}

/// How many threads of process `pid` serve a worker's `net = "loopback"` calls.
fn gate_threads(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|task| fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with("gate-"))
        .count()
}

#[test]
fn each_loopback_worker_has_one_gate_thread_in_the_host_which_ends_with_it() {
    let places = Places::new();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let (_dir, server) = serve(&isolated(&places.sandbox("loopback", &[])), true);
    assert_eq!(gate_threads(server.pid()), 1);
    connect(&server, &listener).unwrap();
    // The worker dies (ptrace is fatal in a sandbox); its gate goes with it, and the next
    // worker has its own.
    let err = server.call("probe", "ptrace", "{}").unwrap_err();
    assert!(err.contains("denied system call ptrace"), "{err}");
    connect(&server, &listener).unwrap();
    server.wait_until(WAIT, "one gate thread", |s| gate_threads(s.pid()) == 1);
    let outside = SocketAddr::new(outside_ip(), listener.local_addr().unwrap().port());
    refused(
        connect_to(&server, outside),
        "connecting outside from a new worker",
    );
}

#[test]
fn the_same_plugin_without_a_sandbox_can_do_all_of_it() {
    let places = Places::new();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let (_dir, server) = serve(&isolated(""), true);
    read(&server, &places.outside.join("file")).unwrap();
    read(&server, Path::new("/etc/passwd")).unwrap();
    write(&server, &places.outside.join("new")).unwrap();
    assert_eq!(run(&server, LS).unwrap(), json!({ "status": 0 }));
    connect(&server, &listener).unwrap();
    connect_unix(&server, &server.socket).unwrap();
    signal(&server, server.pid()).unwrap();
    // The kernel answers the call itself: no process has that pid.
    let err = server.call("probe", "ptrace", "{}").unwrap_err();
    assert!(err.contains("No such process"), "{err}");
    assert!(!listed(&server).contains("sandbox"));
}

#[test]
fn an_in_process_plugin_with_a_sandbox_is_refused_saying_it_needs_process_isolation() {
    let places = Places::new();
    let line = "plugin probe has a [plugins.probe.sandbox] section, which applies only in a \
                worker process, but it would run in the host's process: it needs \
                isolation = \"process\"";
    for isolation in ["isolation = \"in-process\"\n", ""] {
        let config = format!(
            "[plugins.probe]\n{isolation}{}",
            places.sandbox("none", &[])
        );
        let (_dir, server) = serve(&config, false);
        server.wait_until(WAIT, "the refusal", |s| {
            s.files()
                .first()
                .and_then(|f| f.last_error.clone())
                .is_some_and(|e| e.contains(line))
        });
        assert!(server.call("probe", "execute", "null").is_err());
    }
}

#[test]
fn adding_a_sandbox_to_an_in_process_plugin_is_refused_and_the_previous_version_keeps_serving() {
    let places = Places::new();
    let (dir, server) = serve("[plugins.probe]\n", true);
    let conf = dir.path().join("host.toml");
    fs::write(
        &conf,
        format!("[plugins.probe]\n{}", places.sandbox("none", &[])),
    )
    .unwrap();
    server.wait_until(WAIT, "the refusal", |s| {
        s.log().contains("needs isolation = \"process\"")
    });
    // Still the unsandboxed in-process version: it reads what a sandbox would refuse.
    read(&server, &places.outside.join("file")).unwrap();
}

#[test]
fn a_listed_path_that_does_not_exist_refuses_the_load_in_one_line_naming_it() {
    let places = Places::new();
    let missing = places.outside.join("not-there");
    let config = isolated(&format!(
        "[plugins.probe.sandbox]\nread = [{:?}]\n",
        missing
    ));
    let (_dir, server) = serve(&config, false);
    let wanted = format!("cannot open {}", missing.display());
    server.wait_until(WAIT, "the refusal", |s| {
        s.files()
            .first()
            .and_then(|f| f.last_error.clone())
            .is_some_and(|e| e.contains(&wanted) && !e.contains('\n'))
    });
    assert!(server.call("probe", "execute", "null").is_err());
}

#[test]
fn a_reloaded_sandboxed_plugin_runs_its_new_version_in_the_same_sandbox() {
    let places = Places::new();
    let (dir, server) = serve(&isolated(&places.sandbox("none", &[])), true);
    let generation = |s: &Server| {
        s.files()
            .first()
            .and_then(|f| f.serving.as_ref().map(|v| v.generation))
    };
    assert_eq!(generation(&server), Some(1));
    // Another version: the same library with one byte more at its end (another content).
    let mut bytes = fs::read(probe()).unwrap();
    bytes.push(0);
    let tmp = dir.path().join(".libprobe.so.tmp");
    fs::write(&tmp, &bytes).unwrap();
    fs::rename(&tmp, dir.path().join("libprobe.so")).unwrap();
    server.wait_until(WAIT, "the new version", |s| generation(s) == Some(2));
    assert_eq!(
        read(&server, &places.readable.join("file")).unwrap(),
        json!({ "bytes": 12 })
    );
    refused(
        read(&server, &places.outside.join("file")),
        "reading outside",
    );
    assert!(listed(&server).contains("sandbox: landlock abi"));
}

#[test]
fn a_bad_sandbox_setting_stops_host_serve_in_one_line_naming_the_field() {
    for (setting, key, says) in [
        ("net = \"lan\"", "plugins.probe.sandbox.net", "lan"),
        (
            "write = [\"out\"]",
            "plugins.probe.sandbox.write[0]",
            "relative path",
        ),
        ("reads = []", "plugins.probe.sandbox.reads", "unknown field"),
    ] {
        let dir = plugins_dir();
        install(probe(), dir.path(), "libprobe.so");
        let conf = dir.path().join("host.toml");
        fs::write(
            &conf,
            isolated(&format!("[plugins.probe.sandbox]\n{setting}\n")),
        )
        .unwrap();
        let mut server = Server::spawn(
            None,
            dir.path(),
            &["--config", conf.to_str().unwrap()],
            |_| {},
        );
        let status = server
            .wait_timeout(WAIT)
            .expect("host serve exits on a bad host.toml");
        assert!(!status.success());
        let log = server.log();
        let line = log
            .lines()
            .find(|l| l.contains(&format!("key `{key}`")))
            .unwrap_or_else(|| panic!("{setting}: no line names {key}:\n{log}"));
        assert!(line.contains(says), "{setting}: {line}");
    }
}

/// `host serve` with the probe plugin and `config`, started under a seccomp filter that
/// answers `ENOSYS` to Landlock's three system calls, as a kernel without Landlock does;
/// the filter is inherited by the host's workers.
fn serve_without_landlock(config: &str) -> (tempfile::TempDir, Server) {
    use std::os::unix::process::CommandExt;
    let dir = plugins_dir();
    install(probe(), dir.path(), "libprobe.so");
    let conf = dir.path().join("host.toml");
    fs::write(&conf, config).unwrap();
    // nr = seccomp_data.nr; 444 <= nr <= 446 (landlock_create_ruleset, _add_rule,
    // _restrict_self, the same numbers on every architecture): ENOSYS; else allow.
    let op = |code: u32, k: u32, jt: u8, jf: u8| libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    let filter = [
        op(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0, 0, 0),
        op(libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K, 444, 0, 2),
        op(libc::BPF_JMP | libc::BPF_JGT | libc::BPF_K, 446, 1, 0),
        op(
            libc::BPF_RET | libc::BPF_K,
            libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32,
            0,
            0,
        ),
        op(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW, 0, 0),
    ];
    let server = Server::start_configured(dir.path(), &["--config", conf.to_str().unwrap()], |c| {
        // SAFETY: the closure runs in the child between fork and exec, where only
        // async-signal-safe calls are allowed: prctl and the seccomp system call are, and
        // it allocates nothing (`filter` was built before the fork and is only read).
        unsafe {
            c.pre_exec(move || {
                let program = libc::sock_fprog {
                    len: filter.len() as u16,
                    filter: filter.as_ptr().cast_mut(),
                };
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                    || libc::syscall(
                        libc::SYS_seccomp,
                        libc::SECCOMP_SET_MODE_FILTER,
                        0,
                        &program as *const libc::sock_fprog,
                    ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    });
    (dir, server)
}

#[test]
fn without_landlock_a_sandboxed_plugin_is_refused_naming_the_kernel_unless_best_effort() {
    let places = Places::new();
    let (_dir, server) = serve_without_landlock(&isolated(&places.sandbox("none", &[])));
    server.wait_until(WAIT, "the load refused", |s| {
        s.log().contains("its sandbox needs Landlock")
    });
    let log = server.log();
    let line = log
        .lines()
        .find(|l| l.contains("its sandbox needs Landlock"))
        .unwrap();
    assert!(
        line.contains("which this kernel (Linux ")
            && line.contains("set best_effort = true in its [plugins.NAME.sandbox]"),
        "{line}"
    );
    assert!(
        server.call("probe", "execute", "null").is_err(),
        "probe was loaded"
    );
    assert!(server.client().and_then(|mut c| c.ping().ok()).is_some());
}

#[test]
fn without_landlock_best_effort_runs_it_under_seccomp_alone_and_says_so() {
    let places = Places::new();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let config = isolated(&format!(
        "{}best_effort = true\n",
        places.sandbox("none", &[])
    ));
    let (_dir, server) = serve_without_landlock(&config);
    server.wait_until(WAIT, "the probe plugin", |s| {
        s.call("probe", "execute", "null").is_ok()
    });
    assert!(
        server
            .log()
            .contains("its sandbox runs without Landlock (this kernel, Linux "),
        "{}",
        server.log()
    );
    let list = listed(&server);
    assert!(
        list.contains("sandbox: seccomp, net none, best effort") && !list.contains("landlock"),
        "{list}"
    );
    // Without Landlock, no file rules: it reads outside its lists (what best_effort means).
    assert_eq!(
        read(&server, &places.outside.join("file")).unwrap(),
        json!({ "bytes": 12 })
    );
    // seccomp still refuses every socket with net = "none", and kills for ptrace.
    refused(connect(&server, &listener), "connecting with net = none");
    let mut client = server.client().unwrap();
    match client.call("probe", "ptrace", "{}") {
        Err(ClientError::Refused(err)) => {
            assert_eq!(err.kind, CallErrorKind::Crashed, "{err}");
            assert!(err.message.contains("denied system call ptrace ("), "{err}");
        }
        other => panic!("ptrace was not refused: {other:?}"),
    }
}
