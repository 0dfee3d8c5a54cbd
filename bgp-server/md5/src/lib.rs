//! TCP MD5 signatures (RFC 2385) for BGP sessions, on Linux.
//!
//! The kernel signs and checks every segment to or from `peer` with the key; a connection
//! with the wrong key never gets past SYN. Set it on a socket before `connect`, or on a
//! listening socket for the peers that may connect to it.

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, BorrowedFd};

/// Longest key Linux accepts.
pub const MAX_KEY_LEN: usize = 80;

// struct tcp_md5sig from <linux/tcp.h>: sockaddr_storage (128), flags (1), prefixlen (1),
// keylen (u16), ifindex (i32), key (80). Built as bytes so its layout is explicit.
const SIZE: usize = 216;
const KEYLEN_AT: usize = 130;
const KEY_AT: usize = 136;

/// Sets (or, with an empty key, removes) the MD5 key for `peer` on `socket`.
pub fn set_md5_key(socket: BorrowedFd<'_>, peer: IpAddr, key: &[u8]) -> io::Result<()> {
    if key.len() > MAX_KEY_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "TCP MD5 password is {} bytes; Linux accepts at most {MAX_KEY_LEN}",
                key.len()
            ),
        ));
    }
    let mut buf = [0u8; SIZE];
    match peer {
        IpAddr::V4(a) => {
            buf[0..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
            buf[4..8].copy_from_slice(&a.octets());
        }
        IpAddr::V6(a) => {
            buf[0..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
            buf[8..24].copy_from_slice(&a.octets());
        }
    }
    // key.len() <= 80 was checked above.
    buf[KEYLEN_AT..KEYLEN_AT + 2].copy_from_slice(&(key.len() as u16).to_ne_bytes());
    buf[KEY_AT..KEY_AT + key.len()].copy_from_slice(key);
    // SAFETY: `buf` is a live, initialised buffer of exactly the size passed, laid out as the
    // kernel's struct tcp_md5sig; the kernel only reads it during the call, and the descriptor
    // is borrowed, so it stays open for the call.
    #[allow(unsafe_code)]
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_MD5SIG,
            buf.as_ptr().cast::<libc::c_void>(),
            SIZE as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn sets_a_key_on_a_tcp_socket_and_refuses_long_keys() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        set_md5_key(listener.as_fd(), "127.0.0.1".parse().unwrap(), b"secret").unwrap();
        let err =
            set_md5_key(listener.as_fd(), "127.0.0.1".parse().unwrap(), &[b'x'; 81]).unwrap_err();
        assert!(err.to_string().contains("at most 80"));
    }
}
