//! The host's side of `net = "loopback"` (Linux only): one thread per such worker serves
//! the listener of its `notify` filter. It ends when the worker does (the listener hangs
//! up once no task uses the filter), so there are never more than workers.
//!
//! For each call the filter sends (`connect`, `bind`, `listen`, `sendto` with an address,
//! `sendmsg`, `sendmmsg`), the thread:
//!
//! 1. takes the socket (`pidfd_getfd` through a pidfd of the calling thread) and reads its
//!    family, type and protocol from the kernel;
//! 2. copies what the call names out of the worker (`process_vm_readv`): the address, and
//!    for a send the `msghdr`, its iovecs and up to [`MAX_SEND`] bytes of data;
//! 3. decides on that copy: for TCP and UDP sockets, only loopback addresses (see `inet`);
//!    `listen` only on a socket bound to one (an unbound one would be bound to every
//!    address); a `sendmsg` with control data is refused;
//! 4. checks that the call is still pending (`SECCOMP_IOCTL_NOTIF_ID_VALID`), which also
//!    proves the thread id it read through was the caller's;
//! 5. makes the call itself, on its copy of the socket, with the copy it checked, and
//!    answers the worker with the result or `-errno` (after checking again that the call is
//!    pending).
//!
//! Nothing is decided on memory the worker could change afterwards: the kernel never reads
//! the worker's address again (no `SECCOMP_USER_NOTIF_FLAG_CONTINUE` for a call that names
//! one). The only calls let through (`CONTINUE`) are `sendmsg`/`sendmmsg` on a connected
//! stream socket of another family (a Unix socket pair), where the kernel refuses an
//! address. Any other socket (Unix, or a protocol other than TCP and UDP) is refused
//! `EACCES`, as is everything that is not loopback.
//!
//! A stream send is cut at [`MAX_SEND`] bytes (a short write, which callers of `send`
//! handle); a larger datagram is refused `EMSGSIZE`, as UDP would. Of a `sendmmsg`, the
//! first message is sent (the call answers 1, which callers handle as a partial send).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use super::{inet, remote};

/// The most bytes of one send the host copies out of a worker and sends for it.
pub(crate) const MAX_SEND: usize = 64 * 1024;
/// `sizeof(struct sockaddr_storage)`: the largest socket address the kernel takes.
const MAX_ADDR: usize = 128;
/// `sizeof(struct msghdr)` on 64-bit Linux, and so the offset of `msg_len` in an `mmsghdr`.
const MSGHDR: usize = 56;
/// `sizeof(struct iovec)` on 64-bit Linux.
const IOVEC: usize = 16;

/// Starts the thread serving `listener`, the notify filter's listener of worker `pid`.
pub(crate) fn spawn(listener: OwnedFd, pid: u32) -> io::Result<()> {
    std::thread::Builder::new()
        .name(format!("gate-{pid}"))
        .spawn(move || serve(&listener))
        .map(drop)
}

/// What the worker's call returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Value(i64),
    Errno(i32),
    /// Let the kernel make the call as the worker asked (only where no address counts).
    Continue,
}

const REFUSED: Answer = Answer::Errno(libc::EACCES);

/// A call checked and ready to make, or already answered.
enum Op {
    Connect(Vec<u8>),
    Bind(Vec<u8>),
    Listen(libc::c_int),
    Send {
        data: Vec<u8>,
        to: Option<Vec<u8>>,
        flags: libc::c_int,
        /// A `sendmmsg`: where its first message's `msg_len` goes (it answers 1).
        msg_len_at: Option<u64>,
    },
    Answer(Answer),
}

fn serve(listener: &OwnedFd) {
    let fd = listener.as_raw_fd();
    loop {
        let mut poll = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll reads and writes the one pollfd it is given.
        if unsafe { libc::poll(&mut poll, 1, -1) } < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        if poll.revents & libc::POLLIN == 0 {
            // Hung up: no task uses the filter any more, the worker is gone.
            return;
        }
        // SAFETY: an all-zero seccomp_notif is a valid value, and the one the kernel wants.
        let mut notif: libc::seccomp_notif = unsafe { std::mem::zeroed() };
        // SAFETY: NOTIF_RECV writes one seccomp_notif into the value it is given.
        if unsafe { libc::ioctl(fd, libc::SECCOMP_IOCTL_NOTIF_RECV, &mut notif) } != 0 {
            match io::Error::last_os_error().raw_os_error() {
                // Interrupted, or the call was abandoned (its thread got a signal) first.
                Some(libc::EINTR) | Some(libc::ENOENT) => continue,
                _ => return,
            }
        }
        let answer = decide(fd, &notif)
            .unwrap_or_else(|err| Answer::Errno(err.raw_os_error().unwrap_or(libc::EACCES)));
        if pending(fd, notif.id) {
            respond(fd, notif.id, answer);
        }
    }
}

/// Whether call `id` still waits for its answer (its thread is alive and in it).
fn pending(listener: RawFd, id: u64) -> bool {
    // SAFETY: NOTIF_ID_VALID reads the u64 it is given.
    unsafe { libc::ioctl(listener, libc::SECCOMP_IOCTL_NOTIF_ID_VALID, &id) == 0 }
}

fn respond(listener: RawFd, id: u64, answer: Answer) {
    // SAFETY: an all-zero seccomp_notif_resp is a valid value, filled in below.
    let mut resp: libc::seccomp_notif_resp = unsafe { std::mem::zeroed() };
    resp.id = id;
    match answer {
        Answer::Value(value) => resp.val = value,
        Answer::Errno(errno) => resp.error = -errno,
        Answer::Continue => resp.flags = libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32,
    }
    // SAFETY: NOTIF_SEND reads the seccomp_notif_resp it is given. It fails (ENOENT) for a
    // call no longer pending, which then needs no answer.
    unsafe { libc::ioctl(listener, libc::SECCOMP_IOCTL_NOTIF_SEND, &mut resp) };
}

/// Decides and makes call `notif`.
fn decide(listener: RawFd, notif: &libc::seccomp_notif) -> io::Result<Answer> {
    let tid = notif.pid;
    let thread = remote::open_thread(tid)?;
    // The pidfd is the calling thread's only if the call is still pending now.
    if !pending(listener, notif.id) {
        return Err(io::Error::from_raw_os_error(libc::ESRCH));
    }
    let socket = Socket::take(&thread, notif.data.args[0])?;
    let op = prepare(
        tid,
        libc::c_long::from(notif.data.nr),
        &notif.data.args,
        &socket,
    )?;
    if let Op::Answer(answer) = op {
        return Ok(answer);
    }
    // What was copied was the caller's (its thread id was not reused meanwhile).
    if !pending(listener, notif.id) {
        return Err(io::Error::from_raw_os_error(libc::ESRCH));
    }
    Ok(socket.perform(tid, op, &|| pending(listener, notif.id)))
}

/// Copies and checks what call `nr` names.
fn prepare(tid: u32, nr: libc::c_long, args: &[u64; 6], socket: &Socket) -> io::Result<Op> {
    let refused = Ok(Op::Answer(REFUSED));
    if !socket.is_tcp_or_udp() {
        if (nr == libc::SYS_sendmsg || nr == libc::SYS_sendmmsg) && socket.is_connected_stream() {
            return Ok(Op::Answer(Answer::Continue));
        }
        return refused;
    }
    match nr {
        libc::SYS_connect | libc::SYS_bind => {
            let addr = address(tid, args[1], args[2])?;
            if !inet::loopback(&addr) {
                return refused;
            }
            Ok(if nr == libc::SYS_connect {
                Op::Connect(addr)
            } else {
                Op::Bind(addr)
            })
        }
        libc::SYS_listen => {
            if !socket.is_bound_to_loopback() {
                return refused;
            }
            Ok(Op::Listen(args[1] as libc::c_int))
        }
        libc::SYS_sendto => {
            let to = address(tid, args[4], args[5])?;
            if !inet::loopback(&to) {
                return refused;
            }
            Ok(Op::Send {
                data: socket.data(tid, &[(args[1], args[2])])?,
                to: Some(to),
                flags: args[3] as libc::c_int,
                msg_len_at: None,
            })
        }
        libc::SYS_sendmsg => message(tid, args[1], args[2] as libc::c_int, socket, None),
        libc::SYS_sendmmsg if args[2] as u32 == 0 => Ok(Op::Answer(Answer::Value(0))),
        libc::SYS_sendmmsg => {
            let msg_len_at = args[1].saturating_add(MSGHDR as u64);
            message(
                tid,
                args[1],
                args[3] as libc::c_int,
                socket,
                Some(msg_len_at),
            )
        }
        _ => refused,
    }
}

/// Copies a socket address of `len` bytes at `at`.
fn address(tid: u32, at: u64, len: u64) -> io::Result<Vec<u8>> {
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    if len > MAX_ADDR {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    remote::read(tid, at, len)
}

/// Copies and checks the `msghdr` at `at` and what it names.
fn message(
    tid: u32,
    at: u64,
    flags: libc::c_int,
    socket: &Socket,
    msg_len_at: Option<u64>,
) -> io::Result<Op> {
    let header = remote::read(tid, at, MSGHDR)?;
    let word = |offset: usize| {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&header[offset..offset + 8]);
        u64::from_ne_bytes(bytes)
    };
    let (name, name_len) = (word(0), word(8) & 0xffff_ffff);
    let (iov, iov_len, control_len) = (word(16), word(24), word(40));
    if control_len != 0 {
        // Ancillary data (IP_PKTINFO and the like) can steer a datagram: not made for it.
        return Ok(Op::Answer(REFUSED));
    }
    let to = if name != 0 && name_len != 0 {
        // The kernel cuts a longer name to sockaddr_storage.
        let to = address(tid, name, name_len.min(MAX_ADDR as u64))?;
        if !inet::loopback(&to) {
            return Ok(Op::Answer(REFUSED));
        }
        Some(to)
    } else {
        None
    };
    let count = usize::try_from(iov_len).unwrap_or(usize::MAX);
    if count > remote::MAX_IOV {
        return Err(io::Error::from_raw_os_error(libc::EMSGSIZE));
    }
    let iovecs = remote::read(tid, iov, count * IOVEC)?;
    let pieces: Vec<(u64, u64)> = iovecs
        .chunks_exact(IOVEC)
        .map(|iovec| {
            let mut base = [0u8; 8];
            let mut len = [0u8; 8];
            base.copy_from_slice(&iovec[..8]);
            len.copy_from_slice(&iovec[8..]);
            (u64::from_ne_bytes(base), u64::from_ne_bytes(len))
        })
        .collect();
    Ok(Op::Send {
        data: socket.data(tid, &pieces)?,
        to,
        flags,
        msg_len_at,
    })
}

/// The host's copy of the socket a call names, and what the kernel says it is.
struct Socket {
    fd: OwnedFd,
    domain: libc::c_int,
    kind: libc::c_int,
    protocol: libc::c_int,
}

impl Socket {
    fn take(thread: &OwnedFd, fd: u64) -> io::Result<Socket> {
        let fd = remote::take_fd(thread, fd)?;
        let option = |name| int_option(fd.as_raw_fd(), name);
        Ok(Socket {
            domain: option(libc::SO_DOMAIN)?,
            kind: option(libc::SO_TYPE)?,
            protocol: option(libc::SO_PROTOCOL)?,
            fd,
        })
    }

    fn is_tcp_or_udp(&self) -> bool {
        matches!(self.domain, libc::AF_INET | libc::AF_INET6)
            && matches!(self.protocol, libc::IPPROTO_TCP | libc::IPPROTO_UDP)
    }

    fn is_connected_stream(&self) -> bool {
        self.kind == libc::SOCK_STREAM && self.name(libc::getpeername).is_some()
    }

    fn is_bound_to_loopback(&self) -> bool {
        self.name(libc::getsockname)
            .is_some_and(|addr| inet::loopback(&addr))
    }

    /// The socket's own (`getsockname`) or its peer's (`getpeername`) address.
    fn name(
        &self,
        call: unsafe extern "C" fn(
            libc::c_int,
            *mut libc::sockaddr,
            *mut libc::socklen_t,
        ) -> libc::c_int,
    ) -> Option<Vec<u8>> {
        let mut addr = [0u8; MAX_ADDR];
        let mut len = MAX_ADDR as libc::socklen_t;
        // SAFETY: getsockname and getpeername write at most `len` bytes into `addr`, and
        // the length into `len`.
        if unsafe { call(self.fd.as_raw_fd(), addr.as_mut_ptr().cast(), &mut len) } != 0 {
            return None;
        }
        Some(addr[..(len as usize).min(MAX_ADDR)].to_vec())
    }

    /// Copies the data of a send (`pieces` of the worker's memory): up to [`MAX_SEND`]
    /// bytes of a stream; a larger datagram is `EMSGSIZE`.
    fn data(&self, tid: u32, pieces: &[(u64, u64)]) -> io::Result<Vec<u8>> {
        let total = pieces
            .iter()
            .fold(0u64, |total, (_, len)| total.saturating_add(*len));
        if self.kind != libc::SOCK_STREAM && total > MAX_SEND as u64 {
            return Err(io::Error::from_raw_os_error(libc::EMSGSIZE));
        }
        remote::read_pieces(tid, pieces, MAX_SEND)
    }

    /// Makes the call `op` checked, on this socket, for thread `tid`; `pending` says
    /// whether the worker still waits for it.
    fn perform(&self, tid: u32, op: Op, pending: &dyn Fn() -> bool) -> Answer {
        let fd = self.fd.as_raw_fd();
        match op {
            // SAFETY: the address is our copy, valid for its length.
            Op::Connect(addr) => result(unsafe {
                libc::connect(fd, addr.as_ptr().cast(), addr.len() as libc::socklen_t)
            } as isize),
            // SAFETY: the address is our copy, valid for its length.
            Op::Bind(addr) => result(unsafe {
                libc::bind(fd, addr.as_ptr().cast(), addr.len() as libc::socklen_t)
            } as isize),
            // SAFETY: listen takes plain integers.
            Op::Listen(backlog) => result(unsafe { libc::listen(fd, backlog) } as isize),
            Op::Send {
                data,
                to,
                flags,
                msg_len_at,
            } => {
                if let Some(to) = &to {
                    if let Err(err) = self.bind_unbound_datagram(to) {
                        return Answer::Errno(err.raw_os_error().unwrap_or(libc::EACCES));
                    }
                }
                match (self.send(&data, to.as_deref(), flags, pending), msg_len_at) {
                    (Answer::Value(sent), Some(at)) => {
                        // The worker's own result field: if it cannot be written, the
                        // worker sees a length of 0 there.
                        let _ = remote::write(tid, at, &(sent as u32).to_ne_bytes());
                        Answer::Value(1)
                    }
                    (answer, _) => answer,
                }
            }
            Op::Answer(answer) => answer,
        }
    }

    /// Sends `data` (to `to`). Never blocks the thread for longer than the worker waits: a
    /// send the worker would block on is made without blocking, and tried again when the
    /// socket has room, while the call is pending. (`MSG_NOSIGNAL`: a broken connection is
    /// `EPIPE` for the worker, never a SIGPIPE for the host.)
    fn send(
        &self,
        data: &[u8],
        to: Option<&[u8]>,
        flags: libc::c_int,
        pending: &dyn Fn() -> bool,
    ) -> Answer {
        let fd = self.fd.as_raw_fd();
        let (to_ptr, to_len) = to.map_or((std::ptr::null(), 0), |a| (a.as_ptr(), a.len()));
        // SAFETY: F_GETFL takes no argument and reads the file's flags.
        let file_flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        let blocking = flags & libc::MSG_DONTWAIT == 0 && file_flags & libc::O_NONBLOCK == 0;
        loop {
            // SAFETY: the data and the address are our copies, valid for their lengths (a
            // null address with length 0 is "none").
            let sent = unsafe {
                libc::sendto(
                    fd,
                    data.as_ptr().cast(),
                    data.len(),
                    flags | libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
                    to_ptr.cast(),
                    to_len as libc::socklen_t,
                )
            };
            let answer = result(sent);
            if !blocking || answer != Answer::Errno(libc::EAGAIN) {
                return answer;
            }
            let mut poll = libc::pollfd {
                fd,
                events: libc::POLLOUT,
                revents: 0,
            };
            // SAFETY: poll reads and writes the one pollfd it is given.
            unsafe { libc::poll(&mut poll, 1, 100) };
            if !pending() {
                return Answer::Errno(libc::EINTR);
            }
        }
    }

    /// A datagram socket the kernel would bind to every address for a send (one not bound
    /// yet) is bound to loopback first, in the family `to` is sent in: otherwise it would
    /// receive from the network on that port.
    fn bind_unbound_datagram(&self, to: &[u8]) -> io::Result<()> {
        if self.kind != libc::SOCK_DGRAM {
            return Ok(());
        }
        let bound = self.name(libc::getsockname).unwrap_or_default();
        // The port, in both families at bytes 2..4: 0 until bound.
        if bound.get(2..4).is_some_and(|port| port != [0, 0]) {
            return Ok(());
        }
        let local = match (self.domain, inet::ip_of(to)) {
            (libc::AF_INET, _) => inet::sockaddr(std::net::Ipv4Addr::LOCALHOST.into()),
            (_, Some(std::net::IpAddr::V6(ip))) if ip.to_ipv4_mapped().is_none() => {
                inet::sockaddr(std::net::Ipv6Addr::LOCALHOST.into())
            }
            // An IPv6 socket sending to an IPv4 (or IPv4-mapped) address.
            _ => inet::sockaddr(std::net::Ipv4Addr::LOCALHOST.to_ipv6_mapped().into()),
        };
        // SAFETY: the address is ours, valid for its length.
        let bound =
            unsafe { libc::bind(self.fd.as_raw_fd(), local.as_ptr().cast(), local.len() as _) };
        match result(bound as isize) {
            Answer::Errno(errno) => Err(io::Error::from_raw_os_error(errno)),
            _ => Ok(()),
        }
    }
}

/// A system call's result as an answer: its value, or `-errno`.
fn result(value: isize) -> Answer {
    if value < 0 {
        Answer::Errno(
            io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO),
        )
    } else {
        Answer::Value(value as i64)
    }
}

fn int_option(fd: RawFd, name: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `value`, and the length into `len`.
    let got = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            name,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if got != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, UdpSocket};

    fn socket_of(fd: &impl AsRawFd) -> Socket {
        let pidfd = remote::open_thread(std::process::id()).unwrap();
        Socket::take(&pidfd, fd.as_raw_fd() as u64).unwrap()
    }

    fn me() -> u32 {
        // SAFETY: gettid has no arguments and cannot fail.
        unsafe { libc::gettid() as u32 }
    }

    fn sockaddr(addr: std::net::SocketAddrV4) -> Vec<u8> {
        let mut bytes = vec![0u8; 16];
        bytes[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        bytes[2..4].copy_from_slice(&addr.port().to_be_bytes());
        bytes[4..8].copy_from_slice(&addr.ip().octets());
        bytes
    }

    #[test]
    fn a_socket_is_read_from_the_kernel_and_only_tcp_and_udp_are_checked_here() {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let socket = socket_of(&udp);
        assert!(socket.is_tcp_or_udp() && socket.is_bound_to_loopback());
        assert_eq!(socket.kind, libc::SOCK_DGRAM);
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let unix = socket_of(&a);
        assert!(!unix.is_tcp_or_udp() && unix.is_connected_stream());
        let args = [0, 0, 0, 0, 0, 0];
        assert!(matches!(
            prepare(me(), libc::SYS_connect, &args, &unix),
            Ok(Op::Answer(REFUSED))
        ));
        assert!(matches!(
            prepare(me(), libc::SYS_sendmsg, &args, &unix),
            Ok(Op::Answer(Answer::Continue))
        ));
    }

    #[test]
    fn a_send_to_loopback_is_made_from_the_copy_and_elsewhere_is_refused() {
        let receiver = UdpSocket::bind("127.0.0.1:0").unwrap();
        let std::net::SocketAddr::V4(to) = receiver.local_addr().unwrap() else {
            panic!("not IPv4")
        };
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        let socket = socket_of(&sender);
        let data = *b"through the gate";
        let addr = sockaddr(to);
        let args = [
            0,
            data.as_ptr() as u64,
            data.len() as u64,
            0,
            addr.as_ptr() as u64,
            addr.len() as u64,
        ];
        let op = prepare(me(), libc::SYS_sendto, &args, &socket).unwrap();
        assert_eq!(
            socket.perform(me(), op, &|| true),
            Answer::Value(data.len() as i64)
        );
        let mut got = [0u8; 64];
        let (len, _) = receiver.recv_from(&mut got).unwrap();
        assert_eq!(&got[..len], &data);

        let outside = sockaddr("192.0.2.2:9".parse().unwrap());
        let args = [0, data.as_ptr() as u64, 16, 0, outside.as_ptr() as u64, 16];
        assert!(matches!(
            prepare(me(), libc::SYS_sendto, &args, &socket),
            Ok(Op::Answer(REFUSED))
        ));
        let too_long = [0, data.as_ptr() as u64, 16, 0, addr.as_ptr() as u64, 129];
        assert!(prepare(me(), libc::SYS_sendto, &too_long, &socket).is_err());
    }

    #[test]
    fn a_message_is_copied_with_its_iovecs_and_an_unbound_socket_is_bound_to_loopback() {
        let receiver = UdpSocket::bind("127.0.0.1:0").unwrap();
        let std::net::SocketAddr::V4(to) = receiver.local_addr().unwrap() else {
            panic!("not IPv4")
        };
        // SAFETY: socket takes plain integers and returns a new descriptor or -1.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        assert!(fd >= 0);
        // SAFETY: `fd` was just opened and nothing else owns it.
        let unbound = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let socket = socket_of(&unbound);
        let (first, second) = (*b"two ", *b"pieces");
        let mut iov = [
            libc::iovec {
                iov_base: first.as_ptr().cast_mut().cast(),
                iov_len: first.len(),
            },
            libc::iovec {
                iov_base: second.as_ptr().cast_mut().cast(),
                iov_len: second.len(),
            },
        ];
        let mut name = sockaddr(to);
        // SAFETY: an all-zero mmsghdr is valid; its pointers are set to live buffers below.
        let mut messages: [libc::mmsghdr; 1] = unsafe { std::mem::zeroed() };
        messages[0].msg_hdr.msg_name = name.as_mut_ptr().cast();
        messages[0].msg_hdr.msg_namelen = name.len() as libc::socklen_t;
        messages[0].msg_hdr.msg_iov = iov.as_mut_ptr();
        messages[0].msg_hdr.msg_iovlen = iov.len();
        let at = std::hint::black_box(&mut messages).as_ptr() as u64;
        for nr in [libc::SYS_sendmsg, libc::SYS_sendmmsg] {
            let args = if nr == libc::SYS_sendmsg {
                [0, at, 0, 0, 0, 0]
            } else {
                [0, at, 1, 0, 0, 0]
            };
            let op = prepare(me(), nr, &args, &socket).unwrap();
            let answer = socket.perform(me(), op, &|| true);
            let mut got = [0u8; 64];
            let (len, from) = receiver.recv_from(&mut got).unwrap();
            assert_eq!(&got[..len], b"two pieces");
            assert!(from.ip().is_loopback(), "{from}");
            if nr == libc::SYS_sendmsg {
                assert_eq!(answer, Answer::Value(10));
            } else {
                assert_eq!(answer, Answer::Value(1));
                assert_eq!(std::hint::black_box(&messages)[0].msg_len, 10);
            }
        }
        // The send bound it to loopback, not to every address.
        let bound = socket.name(libc::getsockname).unwrap();
        assert!(inet::loopback(&bound));
        // Control data is refused.
        let control = [0u8; 32];
        messages[0].msg_hdr.msg_control = control.as_ptr().cast_mut().cast();
        messages[0].msg_hdr.msg_controllen = control.len();
        // Read by the kernel, through `at`.
        std::hint::black_box(&mut messages);
        assert!(matches!(
            prepare(me(), libc::SYS_sendmsg, &[0, at, 0, 0, 0, 0], &socket),
            Ok(Op::Answer(REFUSED))
        ));
    }

    #[test]
    fn listen_needs_a_socket_bound_to_loopback() {
        let bound = TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(matches!(
            prepare(
                me(),
                libc::SYS_listen,
                &[0, 5, 0, 0, 0, 0],
                &socket_of(&bound)
            ),
            Ok(Op::Listen(5))
        ));
        let everywhere = TcpListener::bind("0.0.0.0:0").unwrap();
        assert!(matches!(
            prepare(
                me(),
                libc::SYS_listen,
                &[0, 5, 0, 0, 0, 0],
                &socket_of(&everywhere)
            ),
            Ok(Op::Answer(REFUSED))
        ));
    }
}
