//! The control interface: a Unix socket speaking a small line-based JSON protocol.
//!
//! Three pieces: the messages ([`protocol`](self::Request)), the [`ControlServer`] that
//! `host serve` runs, and the blocking [`Client`] that `host call` uses. The server is split
//! by what each part does: `server` (start and shutdown), `accept` (the accept loop),
//! `connection` (reading and writing one connection, its buffers charged to the shared
//! pool), `dispatch` (answering one request), `task_ops` and `task_listing` (the task
//! operations).
//!
//! # Protocol, version 1
//!
//! A client connects to the socket and sends requests, one JSON object per line; the host
//! answers each with one JSON object on one line, in order. A connection may carry any
//! number of requests. Every message carries `"v": 1`; a request with another version gets
//! an error naming the versions this host speaks.
//!
//! ```text
//! -> {"v":1,"op":"call","plugin":"hello","callback":"greet","input":{"name":"Ada"}}
//! <- {"v":1,"ok":true,"outcome":{"plugin":"hello","callback":"greet","generation":1,
//!     "result":{"message":"Hello, Ada!"},"follow_ups":[],"logs":[...],"elapsed_us":12}}
//! -> {"v":1,"op":"list"}
//! <- {"v":1,"ok":true,"files":[{"path":"plugins/libhello.so","plugin":{...}}]}
//! -> {"v":1,"op":"ping"}
//! <- {"v":1,"ok":true,"host":{"version":"0.1.0","pid":4242,"plugins_dir":"/srv/plugins"}}
//! -> {"v":1,"op":"call","plugin":"nope","callback":"x"}
//! <- {"v":1,"ok":false,"error":{"kind":"unknown_plugin","message":"no plugin named nope ..."}}
//! -> {"v":1,"op":"restart","plugin":"tough"}            (also history, rollback + generation)
//! <- {"v":1,"ok":true,"message":"restarted plugin tough (generation 1): worker pid 4242"}
//! -> {"v":1,"op":"submit","plugin":"fanout","callback":"execute","input":{"items":["a"]},
//!     "options":{"key":"k","priority":5,"not_before_unix_ms":1796000000000,"age_ms":3600000}}
//! <- {"v":1,"ok":true,"submitted":{"outcome":"queued","id":7}}   (duplicate, skipped, refused)
//! -> {"v":1,"op":"tasks","filter":{"status":"failed","plugin":"fanout","since_unix_ms":0,"limit":50}}
//! <- {"v":1,"ok":true,"tasks":[{"id":7,"status":"failed","attempts":4,...}]}
//! -> {"v":1,"op":"task","task":7}                       (also cancel, retry)
//! <- {"v":1,"ok":true,"task":{"task":{...},"children":[{"task":{...},"children":[]}]}}
//! ```
//!
//! The task operations need a host that runs tasks (`host serve` opens its task database at
//! start); otherwise they are refused, saying why.
//!
//! A call whose plugin returned an error is still `"ok": true`: the request was served, and
//! the plugin's error is in `outcome.error`. `"ok": false` means the host could not serve the
//! request (unknown plugin, malformed request, oversized message, timeout, busy, shutting
//! down ...).
//!
//! # Who may connect
//!
//! The socket is created with mode 0600 in a directory only the user can enter (created
//! fresh, or checked to be the user's and closed to others), and a connection from another
//! user id is refused (peer credentials). A client checks the same of the server.
//!
//! # Limits and timeouts
//!
//! Every resource a client can take is bounded (see [`ServerLimits`]): connections, request
//! size, the time a started request may take to arrive, idle time, the time a client may
//! take to read its answer, the request and answer buffers of all connections together, and
//! the threads plugin calls run on. Each call has its plugin's `timeout_ms`; the connection
//! that made the call answers it with a `timeout` error on time, sets the call's cancellation
//! flag (a well-written plugin stops), and counts the call as *stuck* until it returns
//! (`host list` shows it). The plugin's late answer is dropped. A slow or stuck client or
//! call holds up nobody else.

mod accept;
mod catalogue_ops;
mod client;
mod connection;
mod dispatch;
mod protocol;
mod server;
mod task_listing;
mod task_ops;

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

pub use crate::registry::RunningCall;
pub use crate::services::config::ServerLimits;
pub use client::{Client, ClientError};
pub use protocol::{decode_request, HostInfo, Op, Publish, Request, Response, PROTOCOL_VERSION};
pub use server::ControlServer;

/// The default socket path: `$XDG_RUNTIME_DIR/plugin-host/host.sock`, or
/// `/tmp/plugin-host-UID/host.sock` without a runtime directory.
pub fn default_socket_path() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("plugin-host").join("host.sock"),
        None => {
            // SAFETY: getuid has no preconditions and cannot fail.
            let uid = unsafe { libc::getuid() };
            std::env::temp_dir()
                .join(format!("plugin-host-{uid}"))
                .join("host.sock")
        }
    }
}

/// A control socket bound, not yet served: `host serve` binds it before it loads anything
/// (so a second host on the same socket is refused at once) and serves it with
/// [`ControlServer::serve`] once its plugins and tasks are ready. Clients that connect
/// meanwhile wait in the backlog. Dropped unserved, it removes its socket file, unless the
/// socket was passed by the service manager ([`ControlSocket::adopt`]), which owns the file.
#[derive(Debug)]
pub struct ControlSocket {
    listener: Option<UnixListener>,
    path: PathBuf,
    owns_file: bool,
}

impl ControlSocket {
    /// Binds the socket at `path`: see the module docs for the checks on its directory, and
    /// on what is already there (a socket another host answers on is refused).
    pub fn bind(path: &Path) -> io::Result<ControlSocket> {
        Ok(ControlSocket {
            listener: Some(bind(path)?),
            path: path.to_owned(),
            owns_file: true,
        })
    }

    /// A listening socket bound by someone else (systemd's socket activation): served as it
    /// is, and its file is left in place at exit. It must have a path, since clients connect
    /// by path.
    pub fn adopt(listener: UnixListener) -> io::Result<ControlSocket> {
        let address = listener.local_addr()?;
        let path = address.as_pathname().map(Path::to_owned).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "the passed control socket has no path (abstract or unnamed): clients connect by path",
            )
        })?;
        Ok(ControlSocket {
            listener: Some(listener),
            path,
            owns_file: false,
        })
    }

    /// Whether the host created the socket file (and removes it when it stops serving).
    pub fn owns_file(&self) -> bool {
        self.owns_file
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The listener, for the server that takes over the socket file.
    fn take(mut self) -> Option<UnixListener> {
        self.listener.take()
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        if self.listener.take().is_some() && self.owns_file {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Binds the socket at `path`, mode 0600. Its directory is created (mode 0700) if missing,
/// and otherwise must be this user's and closed to others. An existing entry at `path` is
/// replaced only if it is a socket nobody answers on.
fn bind(path: &Path) -> io::Result<UnixListener> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    crate::files::private_dir::ensure_owned(dir, false)?;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("another host is already serving on {}", path.display()),
                ));
            }
            std::fs::remove_file(path)?;
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{} exists and is not a socket: refusing to replace it",
                    path.display()
                ),
            ))
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => return Err(err),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// The user id of the process at the other end of a Unix socket.
fn peer_uid(stream: &impl AsRawFd) -> io::Result<u32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes and `len` holds the size of `cred`, as
    // getsockopt(SO_PEERCRED) requires; the descriptor is owned by `stream` and open.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cred.uid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_replaces_only_a_dead_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("host.sock");
        let first = bind(&path).unwrap();
        let err = bind(&path).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        drop(first);
        // Nobody answers on it any more: replaced.
        let _second = bind(&path).unwrap();

        // Defect: `--socket host.toml` used to delete the configuration.
        let config = dir.path().join("host.toml");
        std::fs::write(&config, "plugins_dir = \"p\"\n").unwrap();
        let err = bind(&config).unwrap_err();
        assert!(err.to_string().contains("is not a socket"), "{err}");
        assert_eq!(
            std::fs::read_to_string(&config).unwrap(),
            "plugins_dir = \"p\"\n"
        );
    }

    #[test]
    fn bind_refuses_a_directory_open_to_others() {
        let dir = tempfile::tempdir().unwrap();
        let open = dir.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = bind(&open.join("host.sock")).unwrap_err();
        assert!(err.to_string().contains("chmod go-w"), "{err}");
    }
}
