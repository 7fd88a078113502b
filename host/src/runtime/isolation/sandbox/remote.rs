//! A worker's thread seen from the host (Linux only): its descriptors, taken with
//! `pidfd_getfd`, and its memory, copied with `process_vm_readv` (written with
//! `process_vm_writev`). The worker is the host's child and runs as its user, so the host
//! may do both (the kernel's ptrace access check).
//!
//! A thread id can be reused once its thread is gone: whoever reads through one must then
//! check that the notification it serves is still pending (`gate`), which proves the thread
//! was alive meanwhile.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// The largest iovec array the kernel takes (`UIO_MAXIOV`).
pub(crate) const MAX_IOV: usize = 1024;

/// A pidfd for thread `tid` (`PIDFD_THREAD`, Linux 6.9), or for it as a process where the
/// kernel is older (which works for a process's first thread).
pub(crate) fn open_thread(tid: u32) -> io::Result<OwnedFd> {
    let open = |flags: libc::c_uint| {
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, tid as libc::pid_t, flags) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the call returned a new open descriptor that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
    };
    match open(libc::PIDFD_THREAD) {
        Err(err) if err.raw_os_error() == Some(libc::EINVAL) => open(0),
        other => other,
    }
}

/// A copy (close-on-exec) of descriptor `fd` of the process `pidfd` refers to.
pub(crate) fn take_fd(pidfd: &impl AsRawFd, fd: u64) -> io::Result<OwnedFd> {
    let fd = RawFd::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: pidfd_getfd takes a descriptor we own, a descriptor number of the other
    // process and no flags; it returns a new descriptor or -1.
    let copy = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    if copy < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the call returned a new open descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(copy as RawFd) })
}

/// Copies `len` bytes at `addr` in thread `tid`'s memory: all of them, or `EFAULT`.
pub(crate) fn read(tid: u32, addr: u64, len: usize) -> io::Result<Vec<u8>> {
    read_pieces(tid, &[(addr, len as u64)], len)
}

/// Copies the memory `pieces` (address, length) of thread `tid` name, in order, up to
/// `max` bytes in all: all of those bytes, or `EFAULT`.
pub(crate) fn read_pieces(tid: u32, pieces: &[(u64, u64)], max: usize) -> io::Result<Vec<u8>> {
    let mut remote = Vec::new();
    let mut total = 0usize;
    for &(addr, len) in pieces.iter().take(MAX_IOV) {
        let len = usize::try_from(len).unwrap_or(usize::MAX).min(max - total);
        if len == 0 {
            continue;
        }
        remote.push(libc::iovec {
            iov_base: addr as *mut libc::c_void,
            iov_len: len,
        });
        total += len;
        if total == max {
            break;
        }
    }
    let mut buf = vec![0u8; total];
    if total == 0 {
        return Ok(buf);
    }
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: `local` is `buf`, writable for its length; the remote iovecs name the other
    // process's memory, which the kernel checks (it never writes there). No flags.
    let copied = unsafe {
        libc::process_vm_readv(
            tid as libc::pid_t,
            &local,
            1,
            remote.as_ptr(),
            remote.len() as libc::c_ulong,
            0,
        )
    };
    if copied < 0 {
        return Err(io::Error::last_os_error());
    }
    if copied as usize != total {
        return Err(io::Error::from_raw_os_error(libc::EFAULT));
    }
    Ok(buf)
}

/// Writes `bytes` at `addr` in thread `tid`'s memory.
pub(crate) fn write(tid: u32, addr: u64, bytes: &[u8]) -> io::Result<()> {
    let local = libc::iovec {
        iov_base: bytes.as_ptr().cast_mut().cast(),
        iov_len: bytes.len(),
    };
    let remote = libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    // SAFETY: `local` is `bytes`, which the kernel only reads; `remote` names the other
    // process's memory, checked by the kernel. No flags.
    let written = unsafe { libc::process_vm_writev(tid as libc::pid_t, &local, 1, &remote, 1, 0) };
    if written < 0 {
        return Err(io::Error::last_os_error());
    }
    if written as usize != bytes.len() {
        return Err(io::Error::from_raw_os_error(libc::EFAULT));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> u32 {
        // SAFETY: gettid has no arguments and cannot fail.
        unsafe { libc::gettid() as u32 }
    }

    #[test]
    fn reads_and_writes_a_threads_memory_and_refuses_what_is_not_mapped() {
        let source = *b"hello, gate";
        let copy = read(me(), source.as_ptr() as u64, source.len()).unwrap();
        assert_eq!(copy, source);
        let pieces = [(source.as_ptr() as u64, 5), (source.as_ptr() as u64 + 7, 4)];
        assert_eq!(read_pieces(me(), &pieces, 64).unwrap(), b"hellogate");
        assert_eq!(read_pieces(me(), &pieces, 7).unwrap(), b"helloga");
        let err = read(me(), 8, 4).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EFAULT));
        let mut target = [0u8; 4];
        write(me(), target.as_mut_ptr() as u64, b"abcd").unwrap();
        assert_eq!(std::hint::black_box(target), *b"abcd");
    }

    #[test]
    fn takes_a_copy_of_a_descriptor_of_a_process() {
        let (a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
        let pidfd = open_thread(me()).unwrap();
        let copy = take_fd(&pidfd, a.as_raw_fd() as u64).unwrap();
        let copy = std::os::unix::net::UnixStream::from(copy);
        std::io::Write::write_all(&mut &copy, b"x").unwrap();
        let mut got = [0u8; 1];
        std::io::Read::read_exact(&mut b, &mut got).unwrap();
        assert_eq!(&got, b"x");
        assert!(take_fd(&pidfd, u64::MAX).is_err());
    }
}
