//! The sandbox's file and TCP rules: one Landlock ruleset, enforced on the worker before
//! the plugin is opened (and so on every thread and process it starts).
//!
//! Handled (and so denied unless a rule allows it): every file right the kernel's ABI
//! knows, and, when `net` is not `any` and the ABI has them (4+), TCP bind and connect
//! (with no port allowed: none at all); from ABI 6 on, the worker is also scoped: it cannot
//! signal processes outside its sandbox (the host among them) nor connect to abstract Unix
//! sockets created outside it.
//!
//! Allowed: the plugin's `read`, `write` and `exec` lists, and what a worker itself needs
//! ([`WORKER_READS`], its private copy, `/proc/self`, `/dev/null`).

use std::path::{Path, PathBuf};

use landlock::{
    Access, AccessFs, AccessNet, BitFlags, PathBeneath, PathFd, Ruleset, RulesetAttr,
    RulesetCreatedAttr, RulesetStatus, Scope, ABI,
};

use crate::types::sandbox::{NetAccess, SandboxSettings};

/// What every worker reads: the dynamic loader's cache and the system's shared libraries
/// (the plugin's own dependencies are opened after the rules apply), the CPUs the C library
/// counts, and randomness. Those that do not exist on this machine are skipped.
const WORKER_READS: &[&str] = &[
    "/etc/ld.so.cache",
    "/lib",
    "/lib64",
    "/usr/lib",
    "/usr/lib64",
    "/usr/local/lib",
    "/sys/devices/system/cpu",
    "/dev/urandom",
    "/dev/random",
];

/// The dynamic loaders a program the plugin may run needs to *execute* (the kernel opens
/// the program's interpreter for execution); given only when `exec` lists something.
const LOADERS: &[&str] = &[
    "/lib64/ld-linux-x86-64.so.2",
    "/lib/ld-linux-aarch64.so.1",
    "/lib/ld-linux-x86-64.so.2",
];

/// The Landlock ABI this kernel offers (`landlock_create_ruleset` with the version flag),
/// or `None` where it has no Landlock (or it is disabled).
pub(crate) fn kernel_abi() -> Option<i32> {
    // SAFETY: with a null attribute, size 0 and the version flag, the call only returns the
    // ABI version (or -1); it reads and writes no memory of ours.
    let version = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            1u32, // LANDLOCK_CREATE_RULESET_VERSION
        )
    };
    (version > 0).then_some(version as i32)
}

/// Enforces the rules on this thread and every thread and process it starts from now on.
/// `copy` is the plugin's private copy. Returns the ABI used.
pub(crate) fn restrict(
    settings: &SandboxSettings,
    copy: &Path,
    kernel: i32,
) -> Result<ABI, String> {
    let abi = ABI::from(kernel);
    // (The crate's `from_read` counts execution as reading.)
    let read = AccessFs::ReadFile | AccessFs::ReadDir;
    let all = AccessFs::from_all(abi);
    let write = all & !AccessFs::Execute;
    let fail = |what: &str, err: &dyn std::fmt::Display| format!("landlock: {what}: {err}");
    let mut ruleset = Ruleset::default()
        .handle_access(all)
        .map_err(|e| fail("handling file rights", &e))?;
    if settings.net == NetAccess::None && kernel >= 4 {
        ruleset = ruleset
            .handle_access(AccessNet::BindTcp | AccessNet::ConnectTcp)
            .map_err(|e| fail("handling TCP rights", &e))?;
    }
    if kernel >= 6 {
        ruleset = ruleset
            .scope(Scope::from_all(abi))
            .map_err(|e| fail("scoping signals and abstract sockets", &e))?;
    }
    let mut created = ruleset
        .create()
        .map_err(|e| fail("creating the ruleset", &e))?;
    let mut rules: Vec<(PathBuf, BitFlags<AccessFs>, bool)> = Vec::new();
    for path in WORKER_READS {
        rules.push((PathBuf::from(path), read, false));
    }
    rules.push((copy.to_owned(), read, true));
    rules.push(("/proc/self".into(), read, true));
    rules.push(("/dev/null".into(), write, true));
    if !settings.exec.is_empty() {
        for loader in LOADERS {
            rules.push((PathBuf::from(loader), read | AccessFs::Execute, false));
        }
    }
    let listed = [
        (&settings.read, read),
        (&settings.write, write),
        (&settings.exec, read | AccessFs::Execute),
    ];
    for (paths, access) in listed {
        for path in paths {
            rules.push((path.clone(), access, true));
        }
    }
    for (path, access, required) in rules {
        let fd = match PathFd::new(&path) {
            Ok(fd) => fd,
            Err(_) if !required => continue,
            Err(err) => return Err(format!("cannot open {}: {err}", path.display())),
        };
        // A file takes only the rights that apply to files.
        let access = if path.is_dir() {
            access
        } else {
            access & AccessFs::from_file(abi)
        };
        created = created
            .add_rule(PathBeneath::new(fd, access))
            .map_err(|e| fail(&format!("allowing {}", path.display()), &e))?;
    }
    let status = created
        .restrict_self()
        .map_err(|e| fail("enforcing the ruleset", &e))?;
    if status.ruleset == RulesetStatus::NotEnforced {
        return Err("landlock: the kernel did not enforce the ruleset".to_owned());
    }
    Ok(abi)
}
