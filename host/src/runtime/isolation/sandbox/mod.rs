//! The sandbox of an isolated plugin (`[plugins.NAME.sandbox]`), applied in its worker
//! process before the plugin is opened: `no_new_privs`, Landlock file and TCP rules, and
//! seccomp filters.
//!
//! * `apply`: what the kernel offers against what the settings need, the order of the
//!   steps, and the one-line description `host list` shows;
//! * `landlock`: the file and TCP rules;
//! * `seccomp`: the filters (calls that end the worker, sockets that fail);
//! * `sigsys`: the handler that names a trapped call before the worker dies of it;
//! * `notify`: with `net = "loopback"`, the filter that sends every call naming an address
//!   to the host (the worker's side);
//! * `gate`: the host's thread that decides those calls and makes them for the worker;
//! * `inet`: which socket addresses are loopback;
//! * `remote`: a worker's descriptors and memory, seen from the host.
//!
//! All of it is Linux only (Landlock, seccomp, pidfds).

mod apply;
mod gate;
mod inet;
mod landlock;
mod notify;
mod remote;
mod seccomp;
mod sigsys;

pub(crate) use apply::{apply, Applied};
pub(crate) use gate::spawn as spawn_gate;
pub(crate) use remote::take_fd;
