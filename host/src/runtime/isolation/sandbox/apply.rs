//! Applying a plugin's sandbox in its worker: first what the kernel offers against what
//! the settings need (refused in one line naming the kernel, unless `best_effort`), then,
//! in this order, the SIGSYS handler, `no_new_privs`, Landlock, seccomp, and with
//! `net = "loopback"` the notify filter, whose listener the worker hands to the host. Runs
//! on the worker's only thread, before the plugin is opened, so everything the plugin ever
//! runs is under it.

use std::os::fd::OwnedFd;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{landlock, notify, seccomp, sigsys};
use crate::types::sandbox::{NetAccess, SandboxSettings};

/// What a worker applied, as it tells the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Applied {
    /// One line for `host list`: `landlock abi 7, seccomp, net none`.
    pub(crate) description: String,
    /// What `best_effort` went without, if anything (logged by the host once per load).
    pub(crate) missing: Option<String>,
}

/// The Landlock ABI that brought TCP bind and connect rules.
const TCP_ABI: i32 = 4;

/// Decides, from the kernel's Landlock ABI (`None`: no Landlock) and release, whether
/// `settings` can be applied: `Ok(None)` in full, `Ok(Some(missing))` in part (only with
/// `best_effort`), or `Err(one line)`.
pub(crate) fn check(
    settings: &SandboxSettings,
    kernel: Option<i32>,
    release: &str,
) -> Result<Option<String>, String> {
    let (missing, needs) = match kernel {
        None => (
            format!("Landlock (this kernel, Linux {release}, has none, or has it disabled): no file rules"),
            format!("Landlock, which this kernel (Linux {release}) does not offer or has disabled"),
        ),
        Some(abi) if settings.net == NetAccess::None && abi < TCP_ABI => (
            format!("Landlock TCP rules (ABI {TCP_ABI}; this kernel, Linux {release}, has ABI {abi})"),
            format!(
                "Landlock ABI {TCP_ABI} for its TCP rules (net = \"none\"), and this kernel \
                 (Linux {release}) offers ABI {abi}"
            ),
        ),
        Some(_) => return Ok(None),
    };
    if settings.best_effort {
        Ok(Some(missing))
    } else {
        Err(format!(
            "its sandbox needs {needs}: upgrade the kernel, or set best_effort = true in its \
             [plugins.NAME.sandbox] to run it with what the kernel offers"
        ))
    }
}

/// Applies `settings` to this process; `copy` is the plugin's private copy. Must run while
/// the process has one thread. Returns what was applied, and with `net = "loopback"` the
/// notify filter's listener, for the host (see `gate`).
pub(crate) fn apply(
    settings: &SandboxSettings,
    copy: &Path,
) -> Result<(Applied, Option<OwnedFd>), String> {
    let kernel = landlock::kernel_abi();
    let missing = check(settings, kernel, &kernel_release())?;
    // Landlock restricts the calling thread (and what it starts from now on): a thread
    // already running would stay outside.
    let threads = std::fs::read_dir("/proc/self/task").map_or(0, |tasks| tasks.count());
    if threads != 1 {
        return Err(format!(
            "the worker runs {threads} threads before its sandbox applies, where it must run \
             one: the sandbox would not cover them"
        ));
    }
    sigsys::install().map_err(|e| format!("cannot install the SIGSYS handler: {e}"))?;
    // SAFETY: PR_SET_NO_NEW_PRIVS takes plain integers and only sets a flag of this process.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(format!(
            "cannot set no_new_privs: {}",
            std::io::Error::last_os_error()
        ));
    }
    let mut parts = Vec::new();
    if let Some(kernel) = kernel {
        landlock::restrict(settings, copy, kernel)?;
        parts.push(format!("landlock abi {kernel}"));
    }
    seccomp::install(settings.net)?;
    // Last: its calls go to the host only when no other filter refuses them first.
    let listener = match settings.net {
        NetAccess::Loopback => Some(notify::install()?),
        NetAccess::None | NetAccess::Any => None,
    };
    parts.push("seccomp".to_owned());
    parts.push(format!("net {}", settings.net));
    if missing.is_some() {
        parts.push("best effort".to_owned());
    }
    let applied = Applied {
        description: parts.join(", "),
        missing,
    };
    Ok((applied, listener))
}

/// `uname -r`.
fn kernel_release() -> String {
    // SAFETY: uname fills the zeroed struct it is given; its fields are NUL-terminated.
    unsafe {
        let mut name: libc::utsname = std::mem::zeroed();
        if libc::uname(&mut name) != 0 {
            return "of unknown release".to_owned();
        }
        std::ffi::CStr::from_ptr(name.release.as_ptr())
            .to_string_lossy()
            .into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(net: NetAccess, best_effort: bool) -> SandboxSettings {
        SandboxSettings {
            net,
            best_effort,
            ..SandboxSettings::default()
        }
    }

    #[test]
    fn a_kernel_without_landlock_refuses_in_one_line_naming_it_unless_best_effort() {
        let err = check(&settings(NetAccess::Any, false), None, "5.4.0-1").unwrap_err();
        assert!(err.contains("Landlock"), "{err}");
        assert!(err.contains("Linux 5.4.0-1"), "{err}");
        assert!(err.contains("best_effort = true"), "{err}");
        assert!(!err.contains('\n'));
        let missing = check(&settings(NetAccess::Any, true), None, "5.4.0-1")
            .unwrap()
            .unwrap();
        assert!(missing.contains("Linux 5.4.0-1"), "{missing}");
    }

    #[test]
    fn net_none_needs_the_tcp_abi_and_anything_else_any_landlock() {
        let err = check(&settings(NetAccess::None, false), Some(3), "6.1").unwrap_err();
        assert!(
            err.contains("ABI 4") && err.contains("offers ABI 3"),
            "{err}"
        );
        assert_eq!(
            check(&settings(NetAccess::None, false), Some(4), "6.7"),
            Ok(None)
        );
        assert_eq!(
            check(&settings(NetAccess::Loopback, false), Some(1), "5.13"),
            Ok(None)
        );
        assert!(check(&settings(NetAccess::None, true), Some(3), "6.1")
            .unwrap()
            .is_some_and(|m| m.contains("TCP")));
    }

    #[test]
    fn this_kernel_reports_its_landlock_abi() {
        // What the sandbox tests run on (DESIGN-NOTES: ABI 7); anything is fine elsewhere,
        // but the call must not fail in a way that reads as "no Landlock" when there is one.
        if let Ok(release) = std::fs::read_to_string("/sys/kernel/security/lsm") {
            if release.contains("landlock") {
                assert!(landlock::kernel_abi().is_some_and(|abi| abi >= 1));
            }
        }
    }
}
