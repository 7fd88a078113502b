//! `probe`: tries the things a sandbox (`[plugins.probe.sandbox]`) allows or refuses, and
//! answers with what happened. Each refusal comes back as the plugin's ordinary error
//! (kind `failed`), carrying the system's own text (`Permission denied (os error 13)`).
//!
//! * `read` `{"path": "/etc/hostname"}`: the file's length in bytes.
//! * `write` `{"path": "/var/tmp/probe/out", "text": "hi"}`: writes (creates) the file.
//! * `connect` `{"addr": "127.0.0.1:8080"}`: opens a TCP connection and closes it; an
//!   `addr` that starts with `/` is a Unix socket's path.
//! * `udp_send` `{"addr": "127.0.0.1:9999"}`: sends one datagram (`probe`) from a UDP
//!   socket it does not bind first (the kernel picks its port), its length.
//! * `bind` `{"addr": "127.0.0.1:0"}`: binds a TCP listener there and closes it, the
//!   address it got.
//! * `sockopt` `{"ipv6": false, "level": 0, "name": 4, "value": [131, 7, 4, 127, 0, 0, 1, 0]}`:
//!   sets a socket option on a new UDP socket (IPv6 with `ipv6`), and closes it.
//! * `signal` `{"pid": 4242}`: sends signal 0 (no signal, only the permission check).
//! * `run` `{"program": "/usr/bin/true", "args": []}`: runs a program, its exit status.
//! * `ptrace` `{}`: asks the kernel to trace a process that does not exist. Unsandboxed
//!   that is an ordinary `No such process`; the sandbox's seccomp filter ends the worker
//!   for it (`crashed`, naming `ptrace`).

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use plugin_api::{export_plugin, Callbacks, Context, InitContext, Plugin, PluginError};
use serde::Deserialize;
use serde_json::{json, Value};

/// The plugin: no state.
pub struct Probe;

/// Input of `read`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadInput {
    path: String,
}

/// Input of `write`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WriteInput {
    path: String,
    #[serde(default)]
    text: String,
}

/// Input of `connect`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectInput {
    addr: String,
}

/// Input of `udp_send` and `bind`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddrInput {
    addr: String,
}

/// Input of `sockopt`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SockoptInput {
    #[serde(default)]
    ipv6: bool,
    level: i32,
    name: i32,
    value: Vec<u8>,
}

/// Input of `signal`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignalInput {
    pid: i32,
}

/// Input of `run`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunInput {
    program: String,
    #[serde(default)]
    args: Vec<String>,
}

impl Plugin for Probe {
    type Input = Value;
    type Output = Value;

    fn init(_ctx: &InitContext<'_>) -> Result<Self, PluginError> {
        Ok(Probe)
    }

    fn execute(&self, _ctx: &Context<'_>, _input: Value) -> Result<Value, PluginError> {
        Ok(json!({
            "plugin": "probe",
            "about": "Tries what a sandbox allows: read, write, connect, send, bind, run, ptrace.",
            "callbacks": ["read", "write", "connect", "udp_send", "bind", "sockopt", "signal", "run", "ptrace"],
        }))
    }

    fn callbacks(callbacks: &mut Callbacks<Self>) {
        callbacks
            .add("read", Probe::read)
            .add("write", Probe::write)
            .add("connect", Probe::connect)
            .add("udp_send", Probe::udp_send)
            .add("bind", Probe::bind)
            .add("sockopt", Probe::sockopt)
            .add("run", Probe::run)
            .add("signal", Probe::signal)
            .add("ptrace", Probe::ptrace);
    }
}

fn failed(what: String, err: std::io::Error) -> PluginError {
    PluginError::failed(format!("{what}: {err}"))
}

fn parse(addr: &str) -> Result<SocketAddr, PluginError> {
    addr.parse()
        .map_err(|e| PluginError::invalid_input(format!("addr {addr}: {e}")))
}

/// `addr` as the C library takes it: a `sockaddr_in` or `sockaddr_in6`, and its length.
fn sockaddr(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: an all-zero sockaddr_storage is a valid (unspecified) address.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in and at least as aligned.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: v6.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in6 and at least as aligned.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

impl Probe {
    fn read(&self, _ctx: &Context<'_>, input: ReadInput) -> Result<Value, PluginError> {
        let bytes = std::fs::read(&input.path)
            .map_err(|e| failed(format!("cannot read {}", input.path), e))?;
        Ok(json!({ "bytes": bytes.len() }))
    }

    fn write(&self, _ctx: &Context<'_>, input: WriteInput) -> Result<Value, PluginError> {
        let mut file = std::fs::File::create(&input.path)
            .map_err(|e| failed(format!("cannot create {}", input.path), e))?;
        file.write_all(input.text.as_bytes())
            .map_err(|e| failed(format!("cannot write {}", input.path), e))?;
        Ok(json!({ "written": input.text.len() }))
    }

    fn connect(&self, _ctx: &Context<'_>, input: ConnectInput) -> Result<Value, PluginError> {
        if input.addr.starts_with('/') {
            std::os::unix::net::UnixStream::connect(&input.addr)
                .map_err(|e| failed(format!("cannot connect to {}", input.addr), e))?;
            return Ok(json!({ "connected": input.addr }));
        }
        let addr: SocketAddr = input
            .addr
            .parse()
            .map_err(|e| PluginError::invalid_input(format!("addr {}: {e}", input.addr)))?;
        TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .map_err(|e| failed(format!("cannot connect to {addr}"), e))?;
        Ok(json!({ "connected": addr.to_string() }))
    }

    fn udp_send(&self, _ctx: &Context<'_>, input: AddrInput) -> Result<Value, PluginError> {
        let addr = parse(&input.addr)?;
        let family = if addr.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        };
        let cannot = |e| failed(format!("cannot send to {addr}"), e);
        // Not std's UdpSocket, which binds before it sends: this is the plain sendto of an
        // unbound socket.
        // SAFETY: socket takes plain integers and returns a new descriptor or -1.
        let fd = unsafe { libc::socket(family, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(cannot(std::io::Error::last_os_error()));
        }
        // SAFETY: `fd` was just opened and nothing else owns it.
        let socket = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let (storage, len) = sockaddr(&addr);
        let data = b"probe";
        // SAFETY: the buffer and the address are valid for the lengths given, for the call.
        let sent = unsafe {
            libc::sendto(
                std::os::fd::AsRawFd::as_raw_fd(&socket),
                data.as_ptr().cast(),
                data.len(),
                0,
                (&storage as *const libc::sockaddr_storage).cast(),
                len,
            )
        };
        if sent < 0 {
            return Err(cannot(std::io::Error::last_os_error()));
        }
        Ok(json!({ "sent": sent }))
    }

    fn bind(&self, _ctx: &Context<'_>, input: AddrInput) -> Result<Value, PluginError> {
        let addr = parse(&input.addr)?;
        let listener =
            TcpListener::bind(addr).map_err(|e| failed(format!("cannot bind {addr}"), e))?;
        let bound = listener
            .local_addr()
            .map_err(|e| failed(format!("cannot bind {addr}"), e))?;
        Ok(json!({ "bound": bound.to_string() }))
    }

    fn sockopt(&self, _ctx: &Context<'_>, input: SockoptInput) -> Result<Value, PluginError> {
        let family = if input.ipv6 {
            libc::AF_INET6
        } else {
            libc::AF_INET
        };
        let what = format!("cannot set option {} of level {}", input.name, input.level);
        // SAFETY: socket takes plain integers and returns a new descriptor or -1.
        let fd = unsafe { libc::socket(family, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(failed(what, std::io::Error::last_os_error()));
        }
        // SAFETY: `fd` was just opened and nothing else owns it.
        let socket = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        // SAFETY: the value is valid for its length, for the call.
        let set = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&socket),
                input.level,
                input.name,
                input.value.as_ptr().cast(),
                input.value.len() as libc::socklen_t,
            )
        };
        if set != 0 {
            return Err(failed(what, std::io::Error::last_os_error()));
        }
        Ok(json!({ "set": input.name }))
    }

    fn signal(&self, _ctx: &Context<'_>, input: SignalInput) -> Result<Value, PluginError> {
        // SAFETY: kill with signal 0 sends nothing; it only checks that the process exists
        // and may be signalled.
        if unsafe { libc::kill(input.pid, 0) } != 0 {
            return Err(failed(
                format!("cannot signal pid {}", input.pid),
                std::io::Error::last_os_error(),
            ));
        }
        Ok(json!({ "signalled": input.pid }))
    }

    fn run(&self, _ctx: &Context<'_>, input: RunInput) -> Result<Value, PluginError> {
        let status = std::process::Command::new(&input.program)
            .args(&input.args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .map_err(|e| failed(format!("cannot run {}", input.program), e))?;
        Ok(json!({ "status": status.code() }))
    }

    fn ptrace(&self, _ctx: &Context<'_>, _input: Value) -> Result<Value, PluginError> {
        // A pid above the kernel's largest (2^22): never a process.
        let nobody: libc::pid_t = 0x3fff_ffff;
        // SAFETY: PTRACE_ATTACH takes a pid and two ignored arguments; it reads no memory
        // of ours, and fails for a process that does not exist.
        let result = unsafe {
            libc::syscall(
                libc::SYS_ptrace,
                libc::PTRACE_ATTACH,
                nobody,
                std::ptr::null::<libc::c_void>(),
                std::ptr::null::<libc::c_void>(),
            )
        };
        if result != 0 {
            return Err(failed(
                format!("ptrace of pid {nobody}"),
                std::io::Error::last_os_error(),
            ));
        }
        Ok(json!({ "traced": nobody }))
    }
}

export_plugin!(Probe);

#[cfg(test)]
mod tests {
    use super::*;
    use plugin_api::testing::Harness;

    #[test]
    fn reads_writes_and_reports_errors_as_plugin_errors() {
        let probe = Harness::<Probe>::new("probe", json!({})).unwrap();
        let dir = std::env::temp_dir().join(format!("probe-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("out");
        let path = file.to_str().unwrap();
        let written = probe.call("write", json!({ "path": path, "text": "hi" }));
        assert_eq!(written.result.unwrap(), json!({ "written": 2 }));
        let read = probe.call("read", json!({ "path": path }));
        assert_eq!(read.result.unwrap(), json!({ "bytes": 2 }));
        let missing = probe.call(
            "read",
            json!({ "path": dir.join("nope").to_str().unwrap() }),
        );
        let err = missing.result.unwrap_err();
        assert!(err.message().contains("No such file"), "{err}");
        let traced = probe.call("ptrace", json!({})).result.unwrap_err();
        assert!(traced.message().contains("No such process"), "{traced}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
