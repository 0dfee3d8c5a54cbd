//! AF_PACKET raw sockets (Linux) bound to one interface and one EtherType.
//!
//! The agent answers ARP and Neighbor Solicitations itself, so it needs whole Ethernet frames
//! of one EtherType from one interface, and to send whole frames back out of it. Reading and
//! writing go through the returned descriptor as a [`std::fs::File`] (`read` is `recv`,
//! `write` is `send` to the bound interface), so the only unsafe calls are the ones below:
//! opening, binding, two socket options, and registering with tokio's reactor.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// EtherType of ARP.
pub const ETH_P_ARP: u16 = 0x0806;
/// EtherType of IPv6.
pub const ETH_P_IPV6: u16 = 0x86DD;

const AF_PACKET: u16 = 17;
const SOL_PACKET: libc::c_int = 263;
const PACKET_ADD_MEMBERSHIP: libc::c_int = 1;
const PACKET_MR_ALLMULTI: u16 = 2;
const SO_ATTACH_FILTER: libc::c_int = 26;

/// One classic BPF instruction (`struct sock_filter`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Instruction {
    /// Opcode.
    pub code: u16,
    /// Jump offset when true.
    pub jt: u8,
    /// Jump offset when false.
    pub jf: u8,
    /// Operand.
    pub k: u32,
}

/// A raw packet socket bound to one interface and one EtherType, non-blocking.
#[derive(Debug)]
pub struct PacketSocket {
    fd: OwnedFd,
}

impl PacketSocket {
    /// Opens a non-blocking, close-on-exec `AF_PACKET`/`SOCK_RAW` socket receiving the frames
    /// of `ethertype` arriving on the interface `ifindex` that `filter` accepts. Needs
    /// `CAP_NET_RAW`.
    ///
    /// The socket is created with protocol 0 (it receives nothing), gets its filter, and only
    /// then is bound to the EtherType and interface: no frame the filter would refuse is ever
    /// queued, not even in the moment between socket creation and the filter.
    pub fn open(ifindex: u32, ethertype: u16, filter: &[Instruction]) -> io::Result<PacketSocket> {
        let ifindex = i32::try_from(ifindex).map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidInput, "interface index too large")
        })?;
        // SAFETY: plain syscall with integer arguments; the returned descriptor is checked and
        // owned at once.
        #[allow(unsafe_code)]
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a descriptor we just opened and own exclusively.
        #[allow(unsafe_code)]
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let socket = PacketSocket { fd };
        socket.attach_filter(filter)?;
        let fd = socket.fd;
        // struct sockaddr_ll: family u16, protocol u16 (network order), ifindex i32,
        // hatype u16, pkttype u8, halen u8, addr [u8; 8]. Built as bytes so its layout is
        // explicit.
        let mut sll = [0u8; 20];
        sll[0..2].copy_from_slice(&AF_PACKET.to_ne_bytes());
        sll[2..4].copy_from_slice(&ethertype.to_be_bytes());
        sll[4..8].copy_from_slice(&ifindex.to_ne_bytes());
        // SAFETY: `sll` is a live, initialised buffer of exactly the length passed, laid out
        // as struct sockaddr_ll; the kernel only reads it during the call.
        #[allow(unsafe_code)]
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                sll.as_ptr().cast::<libc::sockaddr>(),
                sll.len() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(PacketSocket { fd })
    }

    /// Receives every multicast frame on the interface (`PACKET_MR_ALLMULTI`): Neighbor
    /// Solicitations go to solicited-node multicast MACs that no address on the host joined.
    /// Undone by the kernel when the socket closes.
    pub fn set_all_multicast(&self, ifindex: u32) -> io::Result<()> {
        let ifindex = i32::try_from(ifindex).map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidInput, "interface index too large")
        })?;
        // struct packet_mreq: ifindex i32, type u16, alen u16, address [u8; 8].
        let mut mreq = [0u8; 16];
        mreq[0..4].copy_from_slice(&ifindex.to_ne_bytes());
        mreq[4..6].copy_from_slice(&PACKET_MR_ALLMULTI.to_ne_bytes());
        // SAFETY: `mreq` is a live, initialised buffer of exactly the length passed, laid out
        // as struct packet_mreq; the kernel only reads it during the call.
        #[allow(unsafe_code)]
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                SOL_PACKET,
                PACKET_ADD_MEMBERSHIP,
                mreq.as_ptr().cast::<libc::c_void>(),
                mreq.len() as libc::socklen_t,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Attaches a classic BPF filter so the kernel queues only the frames it accepts (an IPv6
    /// socket would otherwise copy every data packet of the interface to user space).
    pub fn attach_filter(&self, program: &[Instruction]) -> io::Result<()> {
        let mut filter: Vec<libc::sock_filter> = program
            .iter()
            .map(|i| libc::sock_filter {
                code: i.code,
                jt: i.jt,
                jf: i.jf,
                k: i.k,
            })
            .collect();
        let len = u16::try_from(filter.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "BPF program too long"))?;
        let prog = libc::sock_fprog {
            len,
            filter: filter.as_mut_ptr(),
        };
        // SAFETY: `prog` points at `filter`, which lives until after the call and holds
        // exactly `len` instructions; the kernel copies the program during the call.
        #[allow(unsafe_code)]
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                SO_ATTACH_FILTER,
                std::ptr::from_ref(&prog).cast::<libc::c_void>(),
                std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// The socket as a file: `read` receives one frame, `write` sends one frame.
    pub fn into_file(self) -> std::fs::File {
        std::fs::File::from(self.fd)
    }
}

/// A [`PacketSocket`] registered with tokio's reactor.
#[derive(Debug)]
pub struct AsyncPacketSocket {
    // Private, and never handed out mutably: the descriptor registered stays the one owned.
    fd: tokio::io::unix::AsyncFd<std::fs::File>,
}

impl AsyncPacketSocket {
    /// Registers the socket with the current tokio runtime's reactor.
    pub fn new(socket: PacketSocket) -> io::Result<AsyncPacketSocket> {
        let file = socket.into_file();
        // SAFETY: the `File` owns the descriptor and is moved into the `AsyncFd`, which this
        // type never exposes mutably, so it stays open and the same until the `AsyncFd` drops.
        #[allow(unsafe_code)]
        let fd = unsafe { tokio::io::unix::AsyncFd::register(file) }.map_err(io::Error::from)?;
        Ok(AsyncPacketSocket { fd })
    }

    /// Waits for frames, then hands every queued frame to `f` (in `buf`); returns when none is
    /// left.
    pub async fn recv_all(&self, buf: &mut [u8], mut f: impl FnMut(&[u8])) -> io::Result<()> {
        use std::io::Read;
        let mut guard = self.fd.readable().await?;
        loop {
            match guard.try_io(|inner| inner.get_ref().read(buf)) {
                Ok(Ok(n)) => f(buf.get(..n).unwrap_or_default()),
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => return Ok(()),
            }
        }
    }

    /// Sends one frame out of the bound interface (without waiting: a full queue is an error).
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        use std::io::Write;
        self.fd.get_ref().write(frame).map(|_| ())
    }
}

impl AsFd for PacketSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn is_root() -> bool {
        std::fs::read_to_string("/proc/self/status")
            .map(|s| {
                s.lines()
                    .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
            })
            .unwrap_or(false)
    }

    #[test]
    fn opens_on_loopback_with_filter_and_allmulti_or_is_refused_without_privilege() {
        let lo: u32 = std::fs::read_to_string("/sys/class/net/lo/ifindex")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // ret #0: accepts nothing.
        let nothing = [Instruction {
            code: 0x06,
            jt: 0,
            jf: 0,
            k: 0,
        }];
        match PacketSocket::open(lo, ETH_P_ARP, &nothing) {
            Ok(s) => {
                s.set_all_multicast(lo).unwrap();
                let _ = s.into_file();
            }
            Err(e) => {
                assert!(!is_root(), "root could not open a packet socket: {e}");
                assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
            }
        }
    }
}
