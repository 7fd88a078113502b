//! The sandbox of an isolated plugin (`[plugins.NAME.sandbox]`), applied in its worker
//! process before the plugin is opened: `no_new_privs`, Landlock file and TCP rules, and
//! seccomp filters.
//!
//! * `apply`: what the kernel offers against what the settings need, the order of the
//!   steps, and the one-line description `host list` shows;
//! * `landlock`: the file and TCP rules;
//! * `seccomp`: the filters (calls that end the worker, sockets that fail);
//! * `sigsys`: the handler that names a trapped call before the worker dies of it.

mod apply;
mod landlock;
mod seccomp;
mod sigsys;

pub(crate) use apply::{apply, Applied};
