//! Helpers for the isolation module's own tests: stand-in worker programs, and questions
//! about processes.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use super::spawn::{self, SpawnSpec, Spawned};

/// A shell script at `dir/name` running `body`: a stand-in for the worker program (it is
/// started as `PROGRAM __worker`, the channel on its descriptor 3).
pub(crate) fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// [`spawn::spawn`] of `program`, retried while the script is busy (another test's fork
/// may hold it open for writing for a moment: ETXTBSY).
pub(crate) fn spawn_script(program: &Path) -> Spawned {
    let spec = SpawnSpec {
        program: program.to_owned(),
        max_memory_mb: None,
    };
    let start = Instant::now();
    loop {
        match spawn::spawn(&spec) {
            Err(err)
                if err.raw_os_error() == Some(libc::ETXTBSY)
                    && start.elapsed() < Duration::from_secs(10) =>
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            other => return other.unwrap(),
        }
    }
}

/// Whether `pid` is a child of ours that has not been reaped (alive, or a zombie: then
/// this reaps it).
pub(crate) fn unreaped_child(pid: u32) -> bool {
    let mut status = 0;
    // SAFETY: waitpid with WNOHANG only writes into `status`.
    let got = unsafe { libc::waitpid(pid as libc::pid_t, &mut status, libc::WNOHANG) };
    // 0: alive; `pid`: a zombie; -1 (ECHILD): no such child.
    got >= 0
}

/// Starts `/bin/sleep 30` as process `pid`, just freed, by setting the kernel's last pid
/// (`/proc/sys/kernel/ns_last_pid`); retried while another process takes it first. `None`:
/// this process may not set it (it needs CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE).
pub(crate) fn sleep_as(pid: u32) -> Option<Child> {
    let start = Instant::now();
    loop {
        match std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::PermissionDenied => return None,
            Err(err) => panic!("cannot set ns_last_pid: {err}"),
        }
        let mut child = Command::new("/bin/sleep").arg("30").spawn().unwrap();
        if child.id() == pid {
            return Some(child);
        }
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "pid {pid} was never free again"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Whether `child` was sent SIGKILL: it has ended, or the signal is pending (the kernel
/// marks it pending before `kill` returns, so this needs no waiting).
pub(crate) fn was_killed(child: &mut Child) -> bool {
    if child.try_wait().unwrap().is_some() {
        return true;
    }
    let Ok(status) = std::fs::read_to_string(format!("/proc/{}/status", child.id())) else {
        return true;
    };
    status.lines().any(|line| {
        let pending = |name: &str| {
            line.strip_prefix(name)
                .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
                .is_some_and(|mask| mask & (1 << (libc::SIGKILL - 1)) != 0)
        };
        line.starts_with("State:\tZ") || pending("SigPnd:") || pending("ShdPnd:")
    })
}
