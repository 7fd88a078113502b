//! The systemd notification protocol (`sd_notify`): newline-separated `KEY=VALUE` lines in
//! one datagram to the Unix socket named by `NOTIFY_SOCKET`. A name starting with `@` is an
//! abstract socket. No libsystemd: a datagram socket is all it takes.

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

/// The environment variable systemd sets for a `Type=notify` service.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// Why the notify socket named by `NOTIFY_SOCKET` cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NotifyError {
    /// `NOTIFY_SOCKET` is neither an absolute path nor an abstract name (`@...`).
    #[error("NOTIFY_SOCKET={0:?}: expected an absolute path or an abstract name starting with @")]
    BadAddress(String),
    /// The address could not be built or the socket not opened.
    #[error("NOTIFY_SOCKET={address:?}: {source}")]
    Socket {
        /// The value of `NOTIFY_SOCKET`.
        address: String,
        /// What the system said.
        source: io::Error,
    },
}

/// Sends notifications to the service manager; does nothing when none asked for them.
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr, String)>,
    /// The last send failed (logged once until one succeeds again).
    failing: AtomicBool,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field("address", &self.target.as_ref().map(|t| &t.2))
            .finish()
    }
}

impl Notifier {
    /// A notifier that sends nothing (no service manager is listening).
    pub fn disabled() -> Notifier {
        Notifier {
            target: None,
            failing: AtomicBool::new(false),
        }
    }

    /// The notifier `NOTIFY_SOCKET` asks for, or a disabled one when it is unset or empty.
    /// The variable is left in place; see [`Notifier::from_env_taken`] to clear it.
    pub fn from_env() -> Result<Notifier, NotifyError> {
        match std::env::var(NOTIFY_SOCKET) {
            Ok(address) if !address.is_empty() => Notifier::connect(&address),
            _ => Ok(Notifier::disabled()),
        }
    }

    /// [`Notifier::from_env`], then removes `NOTIFY_SOCKET` from the environment so that
    /// processes this one starts (isolated workers) do not talk to the service manager.
    /// Call it before any other thread runs: it changes the environment.
    pub fn from_env_taken() -> Result<Notifier, NotifyError> {
        let notifier = Notifier::from_env();
        std::env::remove_var(NOTIFY_SOCKET);
        notifier
    }

    /// A notifier sending to `address`: an absolute path, or `@name` for an abstract socket.
    pub fn connect(address: &str) -> Result<Notifier, NotifyError> {
        let socket_error = |source| NotifyError::Socket {
            address: address.to_owned(),
            source,
        };
        let addr = if let Some(name) = address.strip_prefix('@') {
            SocketAddr::from_abstract_name(name.as_bytes()).map_err(socket_error)?
        } else if address.starts_with('/') {
            SocketAddr::from_pathname(PathBuf::from(address)).map_err(socket_error)?
        } else {
            return Err(NotifyError::BadAddress(address.to_owned()));
        };
        // std opens it close-on-exec. Non-blocking: a manager that stops reading never
        // holds up the thread that notifies (the watcher's, the main one).
        let socket = UnixDatagram::unbound().map_err(socket_error)?;
        socket.set_nonblocking(true).map_err(socket_error)?;
        Ok(Notifier {
            target: Some((socket, addr, address.to_owned())),
            failing: AtomicBool::new(false),
        })
    }

    /// Whether a service manager listens (`NOTIFY_SOCKET` was set).
    pub fn is_enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Sends `state` (lines such as `READY=1\nSTATUS=...`) without waiting. A failure is
    /// logged once until a send succeeds again, never fatal: the service manager may be
    /// gone, or slow to read, while the host goes on.
    pub fn notify(&self, state: &str) {
        if let Some((socket, addr, address)) = &self.target {
            match socket.send_to_addr(state.as_bytes(), addr) {
                Ok(_) => self.failing.store(false, Ordering::Relaxed),
                Err(err) => {
                    if !self.failing.swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            "cannot notify the service manager at {address}: {err} (said once \
                             until a notification goes through)"
                        );
                    }
                }
            }
        }
    }

    /// `READY=1`: start-up is done, the host serves.
    pub fn ready(&self) {
        self.notify("READY=1");
    }

    /// `RELOADING=1` with the monotonic time systemd wants beside it: the configuration is
    /// being applied. Follow it with [`Notifier::ready`].
    pub fn reloading(&self) {
        self.notify(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()));
    }

    /// `STOPPING=1`: shutdown began.
    pub fn stopping(&self) {
        self.notify("STOPPING=1");
    }

    /// `WATCHDOG=1`: the host's loops are healthy.
    pub fn watchdog(&self) {
        self.notify("WATCHDOG=1");
    }

    /// `STATUS=...`: one line for `systemctl status` (line breaks become spaces).
    pub fn status(&self, status: &str) {
        self.notify(&format!("STATUS={}", status.replace('\n', " ")));
    }
}

/// CLOCK_MONOTONIC in microseconds, as `MONOTONIC_USEC=` wants it.
fn monotonic_usec() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec for clock_gettime to fill; CLOCK_MONOTONIC always
    // exists on Linux, and on failure `now` stays zero.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    (now.tv_sec as u64) * 1_000_000 + (now.tv_nsec as u64) / 1_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_to_a_path_and_to_an_abstract_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        Notifier::connect(path.to_str().unwrap()).unwrap().ready();
        let mut buf = [0u8; 256];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");

        let name = format!("plugin-host-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let abstract_listener = UnixDatagram::bind_addr(&addr).unwrap();
        let notifier = Notifier::connect(&format!("@{name}")).unwrap();
        notifier.status("serving 2 plugins\nnow");
        let n = abstract_listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STATUS=serving 2 plugins now");
        notifier.reloading();
        let n = abstract_listener.recv(&mut buf).unwrap();
        let text = std::str::from_utf8(&buf[..n]).unwrap();
        assert!(text.starts_with("RELOADING=1\nMONOTONIC_USEC="), "{text}");
    }

    /// A manager that does not read (its queue full after about 10 datagrams) never blocks
    /// the notifying thread.
    #[test]
    fn a_manager_that_does_not_read_holds_up_nobody() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let _unread = UnixDatagram::bind(&path).unwrap();
        let notifier = Notifier::connect(path.to_str().unwrap()).unwrap();
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for _ in 0..1000 {
                notifier.watchdog();
            }
            let _ = done.send(());
        });
        // Generous: 1,000 sends take microseconds each; a blocked send never returns.
        assert!(finished
            .recv_timeout(std::time::Duration::from_secs(30))
            .is_ok());
    }

    #[test]
    fn a_relative_address_is_refused_in_one_line() {
        let err = Notifier::connect("run/notify").unwrap_err();
        assert_eq!(
            err.to_string(),
            "NOTIFY_SOCKET=\"run/notify\": expected an absolute path or an abstract name starting with @"
        );
        assert!(!Notifier::disabled().is_enabled());
    }
}
