//! The worker's side of `net = "loopback"` (Linux only): one more seccomp filter, installed
//! after the others with `SECCOMP_FILTER_FLAG_NEW_LISTENER`, that sends every system call
//! able to name an address to the host (`SECCOMP_RET_USER_NOTIF`), where `gate` decides it
//! and answers.
//!
//! Sent to the host: `connect`, `bind`, `listen` (a socket not bound yet would be bound to
//! every address), `sendmsg`, `sendmmsg`, and `sendto` with a destination address. A
//! `sendto` without one (`send`, `write` on a socket) goes where the socket is connected,
//! which the host checked. `MSG_FASTOPEN` needs no check of its own: the calls that carry it
//! with an address are all sent to the host, which makes them itself with the address it
//! checked. The filter checks the architecture first (a call of another one, `int 0x80` on
//! x86_64, kills the worker) and refuses the x32 ABI's calls, which would have other
//! numbers.
//!
//! The program is written by hand (seccompiler has no `USER_NOTIF` action), and small: the
//! tests below run it through an interpreter.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// `AUDIT_ARCH_*` of this architecture (only those whose `seccomp_data` arguments are
/// little-endian: the filter reads an argument's two halves).
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: Option<u32> = Some(0xC000_003E);
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: Option<u32> = Some(0xC000_00B7);
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const AUDIT_ARCH: Option<u32> = None;

/// The x32 ABI's calls have this bit set (x86_64, same architecture value).
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// Offsets in `struct seccomp_data`: `nr`, `arch`, then `args[6]` from 16, 8 bytes each.
const NR: u32 = 0;
const ARCH: u32 = 4;
const fn arg_low(n: u32) -> u32 {
    16 + 8 * n
}
const fn arg_high(n: u32) -> u32 {
    20 + 8 * n
}

/// The calls always sent to the host.
const SUPERVISED: [libc::c_long; 5] = [
    libc::SYS_connect,
    libc::SYS_bind,
    libc::SYS_listen,
    libc::SYS_sendmsg,
    libc::SYS_sendmmsg,
];

fn op(code: u32, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    }
}

fn load(offset: u32) -> libc::sock_filter {
    op(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, offset, 0, 0)
}

fn jeq(k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    op(libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K, k, jt, jf)
}

fn ret(action: u32) -> libc::sock_filter {
    op(libc::BPF_RET | libc::BPF_K, action, 0, 0)
}

/// The jump offset from instruction `from` to instruction `to` (BPF counts from the next).
fn jump(from: usize, to: usize) -> u8 {
    (to - from - 1) as u8
}

/// The filter's program for architecture `arch`.
fn program(arch: u32) -> Vec<libc::sock_filter> {
    let head = 5;
    let sendto = head + SUPERVISED.len();
    let notify = sendto + 5;
    let allow = notify + 1;
    let enosys = allow + 1;
    let mut p = vec![
        load(ARCH),
        jeq(arch, 1, 0),
        ret(libc::SECCOMP_RET_KILL_PROCESS),
        load(NR),
        op(
            libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K,
            X32_SYSCALL_BIT,
            jump(4, enosys),
            0,
        ),
    ];
    for (i, nr) in SUPERVISED.iter().enumerate() {
        p.push(jeq(*nr as u32, jump(head + i, notify), 0));
    }
    p.extend([
        jeq(libc::SYS_sendto as u32, 0, jump(sendto, allow)),
        // sendto's fifth argument, the destination: null (both halves zero) goes on.
        load(arg_low(4)),
        jeq(0, 0, jump(sendto + 2, notify)),
        load(arg_high(4)),
        jeq(0, jump(sendto + 4, allow), jump(sendto + 4, notify)),
        ret(libc::SECCOMP_RET_USER_NOTIF),
        ret(libc::SECCOMP_RET_ALLOW),
        ret(libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32),
    ]);
    debug_assert_eq!(p.len(), enosys + 1);
    p
}

/// Installs the filter on this thread (the worker's only one: no TSYNC, which cannot be
/// combined with a listener) and returns its listener. Needs `no_new_privs`.
pub(crate) fn install() -> Result<OwnedFd, String> {
    let arch = AUDIT_ARCH.ok_or_else(|| {
        format!(
            "seccomp: net = \"loopback\" has no filter for {}",
            std::env::consts::ARCH
        )
    })?;
    let filter = program(arch);
    let program = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr().cast_mut(),
    };
    let install = |flags: libc::c_ulong| {
        // SAFETY: seccomp(SECCOMP_SET_MODE_FILTER) reads the program `program` points to,
        // which `filter` holds for the call; the kernel copies it. It returns a new
        // descriptor or -1.
        unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                flags,
                &program as *const libc::sock_fprog,
            )
        }
    };
    // Once the host has taken a call, only a fatal signal interrupts the wait for its
    // answer (Linux 5.19): a call the host made is not also answered EINTR to the worker.
    // Older kernels refuse the flag; the filter is the same without it.
    let mut fd = install(
        libc::SECCOMP_FILTER_FLAG_NEW_LISTENER | libc::SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV,
    );
    if fd < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
        fd = install(libc::SECCOMP_FILTER_FLAG_NEW_LISTENER);
    }
    if fd < 0 {
        return Err(format!(
            "seccomp: installing the filter of net = \"loopback\": {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: the call returned a new open descriptor (close-on-exec) that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `program` on a `seccomp_data` (only the instructions it uses).
    fn run(program: &[libc::sock_filter], nr: i64, arch: u32, args: [u64; 6]) -> u32 {
        let mut data = Vec::new();
        data.extend((nr as i32).to_le_bytes());
        data.extend(arch.to_le_bytes());
        data.extend(0u64.to_le_bytes());
        for arg in args {
            data.extend(arg.to_le_bytes());
        }
        let (mut pc, mut a) = (0usize, 0u32);
        loop {
            let i = program[pc];
            let code = u32::from(i.code);
            pc += 1;
            if code == libc::BPF_LD | libc::BPF_W | libc::BPF_ABS {
                let at = i.k as usize;
                a = u32::from_le_bytes(data[at..at + 4].try_into().unwrap());
            } else if code == libc::BPF_RET | libc::BPF_K {
                return i.k;
            } else {
                let taken = match code {
                    c if c == libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K => a == i.k,
                    c if c == libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K => a >= i.k,
                    other => panic!("instruction {other:#x}"),
                };
                pc += usize::from(if taken { i.jt } else { i.jf });
            }
        }
    }

    const ARCH_HERE: u32 = 0xC000_0001;

    #[test]
    fn calls_that_may_name_an_address_go_to_the_host_and_nothing_else() {
        let p = program(ARCH_HERE);
        let decide = |nr: libc::c_long, args| run(&p, nr, ARCH_HERE, args);
        for nr in SUPERVISED {
            assert_eq!(decide(nr, [0; 6]), libc::SECCOMP_RET_USER_NOTIF, "{nr}");
        }
        let address = [3, 0, 5, 0, 0x7ffd_0000_1000, 16];
        assert_eq!(
            decide(libc::SYS_sendto, address),
            libc::SECCOMP_RET_USER_NOTIF
        );
        // Only the high half of the pointer set: still an address.
        let high = [3, 0, 5, 0, 0x7ffd_0000_0000, 16];
        assert_eq!(decide(libc::SYS_sendto, high), libc::SECCOMP_RET_USER_NOTIF);
        assert_eq!(
            decide(libc::SYS_sendto, [3, 0, 5, 0, 0, 0]),
            libc::SECCOMP_RET_ALLOW
        );
        for nr in [
            libc::SYS_socket,
            libc::SYS_read,
            libc::SYS_write,
            libc::SYS_recvfrom,
        ] {
            assert_eq!(decide(nr, [0; 6]), libc::SECCOMP_RET_ALLOW, "{nr}");
        }
        assert_eq!(
            decide(libc::SYS_connect | 0x4000_0000, [0; 6]),
            libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32
        );
        assert_eq!(
            run(&p, libc::SYS_read, 0x4000_0003, [0; 6]),
            libc::SECCOMP_RET_KILL_PROCESS
        );
    }

    #[test]
    fn this_architecture_has_a_filter() {
        assert!(AUDIT_ARCH.is_some());
        assert!(program(AUDIT_ARCH.unwrap()).len() < 32);
    }
}
