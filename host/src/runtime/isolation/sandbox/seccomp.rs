//! The sandbox's seccomp filters, installed on every thread of the worker (TSYNC) before
//! the plugin is opened, after `no_new_privs`.
//!
//! Two filters, because each has one action:
//!
//! * system calls a plugin never needs ([`DENIED`]: debugging other processes, mounts,
//!   kexec, BPF, the kernel keyring, modules, namespaces, reboot ...) *trap*: the kernel
//!   sends SIGSYS, whose handler (`sigsys`) writes `seccomp: denied system call NAME (NR)`
//!   on stderr and lets the worker die of it, so the host reports it `crashed`, naming the
//!   call;
//! * sockets `net` does not allow, and io_uring (whose operations open sockets and files
//!   without the system calls this filter sees), fail with `EACCES`: the plugin's ordinary
//!   `Permission denied`. With `net = "loopback"`, that is every socket but TCP and UDP
//!   over IPv4 and IPv6 (SCTP, say, connects through `setsockopt`, which the host's check
//!   of addresses, `notify` and `gate`, does not see), and IP source routes (IPv4
//!   options, IPv6 routing headers) fail too: a packet with one goes to its first hop,
//!   not to the address the host checked.
//!
//! A third filter, with `net = "loopback"` only, sends the calls that name an address to
//! the host: see `notify`.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use crate::types::sandbox::NetAccess;

/// The system calls that end the worker, with their names (for the SIGSYS handler's line).
pub(crate) const DENIED: &[(&str, libc::c_long)] = &[
    ("ptrace", libc::SYS_ptrace),
    ("process_vm_readv", libc::SYS_process_vm_readv),
    ("process_vm_writev", libc::SYS_process_vm_writev),
    // Takes a descriptor of another process of this user: the host's among them.
    ("pidfd_getfd", libc::SYS_pidfd_getfd),
    ("mount", libc::SYS_mount),
    ("umount2", libc::SYS_umount2),
    ("pivot_root", libc::SYS_pivot_root),
    ("chroot", libc::SYS_chroot),
    ("fsopen", libc::SYS_fsopen),
    ("fsconfig", libc::SYS_fsconfig),
    ("fsmount", libc::SYS_fsmount),
    ("fspick", libc::SYS_fspick),
    ("move_mount", libc::SYS_move_mount),
    ("open_tree", libc::SYS_open_tree),
    ("mount_setattr", libc::SYS_mount_setattr),
    ("kexec_load", libc::SYS_kexec_load),
    ("kexec_file_load", libc::SYS_kexec_file_load),
    ("bpf", libc::SYS_bpf),
    ("perf_event_open", libc::SYS_perf_event_open),
    ("userfaultfd", libc::SYS_userfaultfd),
    ("keyctl", libc::SYS_keyctl),
    ("add_key", libc::SYS_add_key),
    ("request_key", libc::SYS_request_key),
    ("init_module", libc::SYS_init_module),
    ("finit_module", libc::SYS_finit_module),
    ("delete_module", libc::SYS_delete_module),
    ("unshare", libc::SYS_unshare),
    ("setns", libc::SYS_setns),
    ("reboot", libc::SYS_reboot),
    ("swapon", libc::SYS_swapon),
    ("swapoff", libc::SYS_swapoff),
    ("acct", libc::SYS_acct),
    ("quotactl", libc::SYS_quotactl),
    ("open_by_handle_at", libc::SYS_open_by_handle_at),
    ("settimeofday", libc::SYS_settimeofday),
    ("clock_settime", libc::SYS_clock_settime),
    ("sethostname", libc::SYS_sethostname),
    ("setdomainname", libc::SYS_setdomainname),
    #[cfg(target_arch = "x86_64")]
    ("iopl", libc::SYS_iopl),
    #[cfg(target_arch = "x86_64")]
    ("ioperm", libc::SYS_ioperm),
];

/// The name of denied system call `nr`, if it is one of [`DENIED`]. Async-signal-safe (a
/// scan of a static table).
pub(crate) fn denied_name(nr: libc::c_long) -> Option<&'static str> {
    DENIED.iter().find(|(_, n)| *n == nr).map(|(name, _)| *name)
}

fn arch() -> Result<TargetArch, String> {
    TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|_| format!("seccomp: no filter for {}", std::env::consts::ARCH))
}

/// The two filters, compiled: (the trapping one, the `EACCES` one).
pub(crate) fn filters(net: NetAccess) -> Result<(BpfProgram, BpfProgram), String> {
    let fail = |err: seccompiler::BackendError| format!("seccomp: {err}");
    let arch = arch()?;
    let trapped: BTreeMap<i64, Vec<SeccompRule>> =
        DENIED.iter().map(|(_, nr)| (*nr, Vec::new())).collect();
    let trap = SeccompFilter::new(trapped, SeccompAction::Allow, SeccompAction::Trap, arch)
        .map_err(fail)?;
    let mut refused: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for nr in [
        libc::SYS_io_uring_setup,
        libc::SYS_io_uring_enter,
        libc::SYS_io_uring_register,
    ] {
        refused.insert(nr, Vec::new());
    }
    match net {
        // Every family: the worker's own channel was inherited, it opens none.
        NetAccess::None => {
            refused.insert(libc::SYS_socket, Vec::new());
        }
        NetAccess::Loopback => {
            let not = |arg: u8, value: libc::c_int| {
                SeccompCondition::new(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, value as u64)
                    .map_err(fail)
            };
            // Refused when any rule matches: a family other than IPv4 and IPv6, a type
            // other than stream and datagram (its low four bits; the rest are flags), a
            // protocol other than the default, TCP and UDP.
            let mut rules = vec![
                SeccompRule::new(vec![not(0, libc::AF_INET)?, not(0, libc::AF_INET6)?])
                    .map_err(fail)?,
                SeccompRule::new(vec![
                    not(2, 0)?,
                    not(2, libc::IPPROTO_TCP)?,
                    not(2, libc::IPPROTO_UDP)?,
                ])
                .map_err(fail)?,
            ];
            for kind in 0..16 {
                if kind == libc::SOCK_STREAM as u64 || kind == libc::SOCK_DGRAM as u64 {
                    continue;
                }
                let masked = SeccompCmpOp::MaskedEq(0xf);
                let condition = SeccompCondition::new(1, SeccompCmpArgLen::Dword, masked, kind)
                    .map_err(fail)?;
                rules.push(SeccompRule::new(vec![condition]).map_err(fail)?);
            }
            refused.insert(libc::SYS_socket, rules);
            // Source routes: a socket with one sends to its first hop, whatever address
            // `connect` or `sendto` (which the host checks) names.
            let eq = |arg: u8, value: libc::c_int| {
                SeccompCondition::new(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value as u64)
                    .map_err(fail)
            };
            let mut routes = Vec::new();
            for (level, name) in [
                (libc::IPPROTO_IP, libc::IP_OPTIONS),
                (libc::IPPROTO_IPV6, libc::IPV6_RTHDR),
                (libc::IPPROTO_IPV6, libc::IPV6_2292RTHDR),
                (libc::IPPROTO_IPV6, libc::IPV6_2292PKTOPTIONS),
            ] {
                routes.push(SeccompRule::new(vec![eq(1, level)?, eq(2, name)?]).map_err(fail)?);
            }
            refused.insert(libc::SYS_setsockopt, routes);
        }
        NetAccess::Any => {}
    }
    let errno = SeccompFilter::new(
        refused,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EACCES as u32),
        arch,
    )
    .map_err(fail)?;
    let compile = |filter: SeccompFilter| {
        BpfProgram::try_from(filter).map_err(|e| format!("seccomp: compiling a filter: {e}"))
    };
    Ok((compile(trap)?, compile(errno)?))
}

/// Installs both filters on every thread of this process. Needs `no_new_privs`.
pub(crate) fn install(net: NetAccess) -> Result<(), String> {
    let (trap, errno) = filters(net)?;
    for filter in [&trap, &errno] {
        seccompiler::apply_filter_all_threads(filter)
            .map_err(|e| format!("seccomp: installing a filter: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_setting_compiles_and_denied_calls_have_names() {
        for net in [NetAccess::None, NetAccess::Loopback, NetAccess::Any] {
            let (trap, errno) = filters(net).unwrap();
            assert!(!trap.is_empty() && !errno.is_empty());
        }
        assert_eq!(denied_name(libc::SYS_ptrace), Some("ptrace"));
        assert_eq!(denied_name(libc::SYS_read), None);
    }
}
