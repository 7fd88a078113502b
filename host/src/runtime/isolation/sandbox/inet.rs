//! Reading the socket addresses a worker names (plain bytes, as the kernel takes them) and
//! deciding which `net = "loopback"` allows: IPv4 127.0.0.0/8, IPv6 `::1`, and IPv4-mapped
//! `::ffff:127.0.0.0/104`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// `sizeof(struct sockaddr_in)`.
const SOCKADDR_IN: usize = 16;
/// The shortest `sockaddr_in6` the kernel takes (`SIN6_LEN_RFC2133`: no scope id).
const SOCKADDR_IN6: usize = 24;

/// The IP address in `addr`, a socket address as the kernel reads it: `None` unless it is
/// an `AF_INET` or `AF_INET6` one long enough for the kernel to take.
pub(crate) fn ip_of(addr: &[u8]) -> Option<IpAddr> {
    let family = u16::from_ne_bytes([*addr.first()?, *addr.get(1)?]);
    match i32::from(family) {
        libc::AF_INET if addr.len() >= SOCKADDR_IN => {
            let octets: [u8; 4] = addr[4..8].try_into().ok()?;
            Some(IpAddr::V4(Ipv4Addr::from(octets)))
        }
        libc::AF_INET6 if addr.len() >= SOCKADDR_IN6 => {
            let octets: [u8; 16] = addr[8..24].try_into().ok()?;
            Some(IpAddr::V6(Ipv6Addr::from(octets)))
        }
        _ => None,
    }
}

/// Whether `ip` is a loopback address, IPv4-mapped ones included.
pub(crate) fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// Whether `addr` is an IPv4 or IPv6 socket address on loopback.
pub(crate) fn loopback(addr: &[u8]) -> bool {
    ip_of(addr).is_some_and(is_loopback)
}

/// The socket address of `ip`, port 0 (any), as the kernel takes it: a `sockaddr_in` or a
/// `sockaddr_in6`.
pub(crate) fn sockaddr(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => {
            let mut addr = vec![0u8; SOCKADDR_IN];
            addr[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
            addr[4..8].copy_from_slice(&v4.octets());
            addr
        }
        IpAddr::V6(v6) => {
            let mut addr = vec![0u8; std::mem::size_of::<libc::sockaddr_in6>()];
            addr[..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
            addr[8..24].copy_from_slice(&v6.octets());
            addr
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(ip: [u8; 4], len: usize) -> Vec<u8> {
        let mut addr = vec![0u8; len];
        addr[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        addr[2..4].copy_from_slice(&80u16.to_be_bytes());
        addr[4..8].copy_from_slice(&ip);
        addr
    }

    fn v6(ip: Ipv6Addr, len: usize) -> Vec<u8> {
        let mut addr = vec![0u8; len];
        addr[..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
        addr[8..24].copy_from_slice(&ip.octets());
        addr
    }

    #[test]
    fn loopback_is_127_8_and_its_ipv6_forms() {
        assert!(loopback(&v4([127, 0, 0, 1], 16)));
        assert!(loopback(&v4([127, 255, 3, 4], 16)));
        assert!(loopback(&v6(Ipv6Addr::LOCALHOST, 28)));
        assert!(loopback(&v6(Ipv6Addr::LOCALHOST, 24)));
        assert!(loopback(&v6("::ffff:127.0.0.9".parse().unwrap(), 28)));
    }

    #[test]
    fn an_address_made_here_reads_back() {
        for ip in ["127.0.0.1", "::1", "::ffff:127.0.0.1", "192.0.2.2"] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_of(&sockaddr(ip)), Some(ip));
        }
    }

    #[test]
    fn every_other_address_is_not() {
        for ip in [[0, 0, 0, 0], [192, 0, 2, 2], [10, 0, 0, 1], [128, 0, 0, 1]] {
            assert!(!loopback(&v4(ip, 16)), "{ip:?}");
        }
        for ip in [
            "::",
            "::ffff:192.0.2.2",
            "::127.0.0.1",
            "fe80::1",
            "2001:db8::1",
        ] {
            assert!(!loopback(&v6(ip.parse().unwrap(), 28)), "{ip}");
        }
    }

    #[test]
    fn short_or_foreign_addresses_are_not() {
        assert!(!loopback(&v4([127, 0, 0, 1], 15)));
        assert!(!loopback(&v6(Ipv6Addr::LOCALHOST, 28)[..23]));
        assert!(!loopback(&[]));
        assert!(!loopback(&[1]));
        let mut unspec = v4([127, 0, 0, 1], 16);
        unspec[..2].copy_from_slice(&(libc::AF_UNSPEC as u16).to_ne_bytes());
        assert!(!loopback(&unspec));
        let mut unix = vec![0u8; 110];
        unix[..2].copy_from_slice(&(libc::AF_UNIX as u16).to_ne_bytes());
        assert!(!loopback(&unix));
    }
}
