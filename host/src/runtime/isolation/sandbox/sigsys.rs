//! The worker's SIGSYS handler: a system call the sandbox's seccomp filter traps ends the
//! worker, after one line on stderr naming the call, which the host keeps as the worker's
//! last words and puts in its crash reason. The handler makes only async-signal-safe calls
//! (write, setrlimit, sigaction, sigprocmask, raise, _exit) and allocates nothing.

use std::io;

use super::seccomp::denied_name;

/// `si_code` of a SIGSYS sent by seccomp.
const SYS_SECCOMP: libc::c_int = 1;

/// The start of a `siginfo_t` for SIGSYS on 64-bit Linux: three ints, then the union
/// (aligned to 8), whose `_sigsys` member is the calling address, the system call and the
/// architecture.
#[repr(C)]
struct SigsysInfo {
    signo: libc::c_int,
    errno: libc::c_int,
    code: libc::c_int,
    _pad: libc::c_int,
    call_addr: *mut libc::c_void,
    syscall: libc::c_int,
    arch: libc::c_uint,
}

/// Installs the handler.
pub(crate) fn install() -> io::Result<()> {
    // SAFETY: a zeroed sigaction is a valid value (no handler, no flags, empty mask) that
    // is filled in before use; sigaction only reads it.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = handler as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

extern "C" fn handler(
    _signal: libc::c_int,
    info: *mut libc::siginfo_t,
    _context: *mut libc::c_void,
) {
    let mut line = Line::default();
    // SAFETY: the kernel hands a SA_SIGINFO handler a valid siginfo_t, which is at least as
    // large as `SigsysInfo` and laid out as it says for SIGSYS.
    let (code, nr) = unsafe {
        let info = &*(info as *const SigsysInfo);
        (info.code, info.syscall)
    };
    if code == SYS_SECCOMP {
        line.push(b"seccomp: denied system call ");
        line.push(denied_name(nr as libc::c_long).unwrap_or("?").as_bytes());
        line.push(b" (");
        line.number(nr);
        line.push(b")\n");
    } else {
        line.push(b"SIGSYS: bad system call\n");
    }
    // SAFETY: only async-signal-safe calls, on values of this frame. The core limit keeps a
    // denied call from leaving a core file; SIG_DFL then unblocking and raising SIGSYS ends
    // the process by that signal, which the host reads from its exit status.
    unsafe {
        libc::write(2, line.bytes.as_ptr().cast(), line.len);
        let none = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::setrlimit(libc::RLIMIT_CORE, &none);
        let mut default: libc::sigaction = std::mem::zeroed();
        default.sa_sigaction = libc::SIG_DFL;
        libc::sigaction(libc::SIGSYS, &default, std::ptr::null_mut());
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGSYS);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::raise(libc::SIGSYS);
        libc::_exit(128 + libc::SIGSYS);
    }
}

/// A line built on the stack.
struct Line {
    bytes: [u8; 128],
    len: usize,
}

impl Default for Line {
    fn default() -> Self {
        Line {
            bytes: [0; 128],
            len: 0,
        }
    }
}

impl Line {
    fn push(&mut self, text: &[u8]) {
        for byte in text {
            if self.len < self.bytes.len() {
                self.bytes[self.len] = *byte;
                self.len += 1;
            }
        }
    }

    fn number(&mut self, n: libc::c_int) {
        let mut digits = [0u8; 12];
        let mut at = digits.len();
        let mut rest = i64::from(n).unsigned_abs();
        loop {
            at -= 1;
            digits[at] = b'0' + (rest % 10) as u8;
            rest /= 10;
            if rest == 0 {
                break;
            }
        }
        if n < 0 {
            self.push(b"-");
        }
        self.push(&digits[at..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_holds_a_name_and_a_number() {
        let mut line = Line::default();
        line.push(b"call ");
        line.number(101);
        line.push(b" ");
        line.number(0);
        line.push(b" ");
        line.number(-7);
        assert_eq!(&line.bytes[..line.len], b"call 101 0 -7");
    }
}
