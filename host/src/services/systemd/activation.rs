//! Socket activation (`sd_listen_fds`): the service manager binds the sockets and hands them
//! over as descriptors 3, 4, ... with `LISTEN_FDS` (how many), `LISTEN_PID` (whom they are
//! for) and optionally `LISTEN_FDNAMES` (colon-separated names).
//!
//! The host takes two: `control` (a listening Unix stream socket: the control socket) and
//! `http` (a listening TCP socket, for the HTTP front end). A descriptor named otherwise by
//! systemd's default (the socket unit's name, `NAME.socket`, or `unknown`) is taken by its
//! type: a Unix stream socket is the control socket, a TCP one the HTTP listener.

use std::io;
use std::net::TcpListener;
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::net::UnixListener;

/// The first descriptor passed (`SD_LISTEN_FDS_START`).
pub const LISTEN_FDS_START: RawFd = 3;
/// At most this many descriptors are taken (the host uses two; more is a mistake).
pub const MAX_LISTEN_FDS: usize = 16;

/// The sockets the service manager passed, by role.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct Activated {
    /// The control socket, served instead of binding `--socket`.
    pub control: Option<UnixListener>,
    /// The HTTP listener, for the HTTP front end.
    pub http: Option<TcpListener>,
    /// Why descriptors that were announced were not taken (they were another process's),
    /// for the log: this is read before logging is set up.
    pub ignored: Option<String>,
}

/// Passed descriptors that cannot be used: one line naming the variable or descriptor.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ActivationError {
    /// A variable is not what the protocol says.
    #[error("{name}={value:?}: {reason}")]
    BadVariable {
        /// The variable.
        name: &'static str,
        /// Its value.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A descriptor is not a listening socket of a kind the host serves.
    #[error("socket activation: descriptor {fd}{}: {reason}", name.as_deref().map(|n| format!(" (named {n:?})")).unwrap_or_default())]
    BadSocket {
        /// The descriptor.
        fd: RawFd,
        /// Its name in `LISTEN_FDNAMES`, if any.
        name: Option<String>,
        /// What is wrong with it.
        reason: String,
    },
}

/// What a passed descriptor is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Control,
    Http,
}

impl Activated {
    /// Reads `LISTEN_FDS`, `LISTEN_PID` and `LISTEN_FDNAMES`, takes the descriptors, marks
    /// them close-on-exec, and removes the variables so that processes this one starts do
    /// not believe they were passed sockets. Call it before any other thread runs: it changes
    /// the environment and takes ownership of descriptors 3 and up.
    ///
    /// Descriptors passed to another process (`LISTEN_PID` is not this one's, or is unset)
    /// are left alone: nothing was passed to this host.
    pub fn from_env() -> Result<Activated, ActivationError> {
        let fds = std::env::var("LISTEN_FDS").ok();
        let pid = std::env::var("LISTEN_PID").ok();
        let names = std::env::var("LISTEN_FDNAMES").ok();
        for name in ["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"] {
            std::env::remove_var(name);
        }
        Activated::take(
            fds.as_deref(),
            pid.as_deref(),
            names.as_deref(),
            std::process::id(),
        )
    }

    /// [`Activated::from_env`] with the variables given.
    fn take(
        fds: Option<&str>,
        pid: Option<&str>,
        names: Option<&str>,
        own_pid: u32,
    ) -> Result<Activated, ActivationError> {
        let Some(fds) = fds.filter(|v| !v.is_empty()) else {
            return Ok(Activated::default());
        };
        let count: usize = fds
            .trim()
            .parse()
            .map_err(|_| ActivationError::BadVariable {
                name: "LISTEN_FDS",
                value: fds.to_owned(),
                reason: "not a number of descriptors".to_owned(),
            })?;
        if count > MAX_LISTEN_FDS {
            return Err(ActivationError::BadVariable {
                name: "LISTEN_FDS",
                value: fds.to_owned(),
                reason: format!("more than {MAX_LISTEN_FDS} descriptors; the host takes at most a control and an http socket"),
            });
        }
        let ignored = |why: String| Activated {
            ignored: Some(why),
            ..Activated::default()
        };
        let Some(pid) = pid.filter(|v| !v.is_empty()) else {
            return Ok(ignored(
                "LISTEN_FDS is set without LISTEN_PID: the descriptors are not this host's; \
                 ignored"
                    .to_owned(),
            ));
        };
        let pid: u32 = pid
            .trim()
            .parse()
            .map_err(|_| ActivationError::BadVariable {
                name: "LISTEN_PID",
                value: pid.to_owned(),
                reason: "not a process id".to_owned(),
            })?;
        if pid != own_pid {
            return Ok(ignored(format!(
                "LISTEN_PID={pid} is not this host's pid ({own_pid}): the passed descriptors \
                 are another process's; ignored"
            )));
        }
        let names: Vec<Option<&str>> = match names.filter(|v| !v.is_empty()) {
            Some(names) => {
                let split: Vec<&str> = names.split(':').collect();
                if split.len() != count {
                    return Err(ActivationError::BadVariable {
                        name: "LISTEN_FDNAMES",
                        value: names.to_owned(),
                        reason: format!("{} names for LISTEN_FDS={count} descriptors", split.len()),
                    });
                }
                split.into_iter().map(Some).collect()
            }
            None => vec![None; count],
        };
        let mut activated = Activated::default();
        for (index, name) in names.into_iter().enumerate() {
            let fd = LISTEN_FDS_START + index as RawFd;
            let bad = |reason: String| ActivationError::BadSocket {
                fd,
                name: name.map(str::to_owned),
                reason,
            };
            let kind = socket_kind(fd).map_err(|err| bad(err.to_string()))?;
            let role = match name {
                Some("control") => Role::Control,
                Some("http") => Role::Http,
                Some(other) if other != "unknown" && !other.ends_with(".socket") => {
                    return Err(bad(
                        "unknown name: the host takes `control` and `http` (FileDescriptorName=)"
                            .to_owned(),
                    ))
                }
                _ => match kind {
                    Kind::Unix => Role::Control,
                    Kind::Tcp => Role::Http,
                    Kind::Other(what) => {
                        return Err(bad(format!(
                            "{what}: the host takes a listening Unix stream socket (control) or TCP socket (http)"
                        )))
                    }
                },
            };
            match (role, kind) {
                (Role::Control, Kind::Unix) | (Role::Http, Kind::Tcp) => {}
                (Role::Control, other) => {
                    return Err(bad(format!(
                        "the control socket must be a listening Unix stream socket, not {}",
                        other.describe()
                    )))
                }
                (Role::Http, other) => {
                    return Err(bad(format!(
                        "the http socket must be a listening TCP socket, not {}",
                        other.describe()
                    )))
                }
            }
            set_cloexec(fd).map_err(|err| bad(format!("cannot mark it close-on-exec: {err}")))?;
            let taken = match role {
                Role::Control => activated.control.is_some(),
                Role::Http => activated.http.is_some(),
            };
            if taken {
                return Err(bad(format!(
                    "a second {} socket; the host serves one",
                    if role == Role::Control {
                        "control"
                    } else {
                        "http"
                    }
                )));
            }
            match role {
                // SAFETY: `fd` is open and a listening socket of the right family (checked
                // above); the service manager passed it to this process alone (LISTEN_PID),
                // and each passed descriptor is taken here once, so the listener owns it.
                Role::Control => activated.control = Some(unsafe { UnixListener::from_raw_fd(fd) }),
                // SAFETY: as above, for the TCP listener.
                Role::Http => activated.http = Some(unsafe { TcpListener::from_raw_fd(fd) }),
            }
        }
        Ok(activated)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Unix,
    Tcp,
    Other(&'static str),
}

impl Kind {
    fn describe(self) -> &'static str {
        match self {
            Kind::Unix => "a Unix stream socket",
            Kind::Tcp => "a TCP socket",
            Kind::Other(what) => what,
        }
    }
}

/// What kind of listening socket `fd` is.
fn socket_kind(fd: RawFd) -> io::Result<Kind> {
    // SAFETY: fstat only writes into `stat`, a valid out pointer; a closed `fd` is EBADF.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: see above.
    if unsafe { libc::fstat(fd, &mut stat) } != 0 {
        let err = io::Error::last_os_error();
        return Err(io::Error::new(err.kind(), format!("not open: {err}")));
    }
    if stat.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Ok(Kind::Other("not a socket"));
    }
    let domain = sockopt(fd, libc::SO_DOMAIN)?;
    let kind = sockopt(fd, libc::SO_TYPE)?;
    let listening = sockopt(fd, libc::SO_ACCEPTCONN)?;
    if kind != libc::SOCK_STREAM {
        return Ok(Kind::Other("not a stream socket"));
    }
    if listening == 0 {
        return Ok(Kind::Other("a socket that is not listening"));
    }
    Ok(match domain {
        libc::AF_UNIX => Kind::Unix,
        libc::AF_INET | libc::AF_INET6 => Kind::Tcp,
        _ => Kind::Other("a socket of another address family"),
    })
}

fn sockopt(fd: RawFd, option: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` are valid for writes and `len` holds the size of `value`.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            option,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value)
}

fn set_cloexec(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor checked to be open; F_GETFD/F_SETFD touch only its flags.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_passed_or_passed_to_another_process() {
        let none = Activated::take(None, None, None, 7).unwrap();
        assert!(none.control.is_none() && none.http.is_none());
        // Another process's descriptors (an inherited environment): left alone.
        let other = Activated::take(Some("1"), Some("6"), None, 7).unwrap();
        assert!(other.control.is_none());
        assert_eq!(
            other.ignored.as_deref(),
            Some(
                "LISTEN_PID=6 is not this host's pid (7): the passed descriptors are another \
                 process's; ignored"
            )
        );
        assert!(none.ignored.is_none());
    }

    #[test]
    fn bad_variables_are_one_line_each() {
        let err = Activated::take(Some("two"), Some("7"), None, 7).unwrap_err();
        assert_eq!(
            err.to_string(),
            "LISTEN_FDS=\"two\": not a number of descriptors"
        );
        let err = Activated::take(Some("1"), Some("x"), None, 7).unwrap_err();
        assert_eq!(err.to_string(), "LISTEN_PID=\"x\": not a process id");
        let err = Activated::take(Some("2"), Some("7"), Some("control"), 7).unwrap_err();
        assert_eq!(
            err.to_string(),
            "LISTEN_FDNAMES=\"control\": 1 names for LISTEN_FDS=2 descriptors"
        );
    }
}
