//! BGP-4 wire codec: messages, capabilities and path attributes.
//!
//! Decoding takes a [`DecodeContext`] of what the session negotiated (4-octet ASN, ADD-PATH
//! per family, extended messages), encoding an [`EncodeContext`]. Every read is bounds-checked:
//! no input panics. Errors are typed and carry the NOTIFICATION RFC 4271 and RFC 7606 require;
//! UPDATE errors that RFC 7606 resolves without a reset (treat-as-withdraw, attribute discard)
//! are not errors but flags on the decoded [`Update`].
//!
//! This crate depends on nothing else of Berth's.

mod error;
mod notification;
mod open;
mod reader;
mod update;

#[cfg(test)]
mod tests;

pub use error::DecodeError;
pub use notification::{Notification, RouteRefresh};
pub use open::{AddPathMode, Capability, GracefulRestartFamily, Open};
pub use update::{
    AsPath, AsSegment, Attribute, ExtCommunity, MpReach, MpUnreach, NextHop, Nlri, Origin, Packed,
    Update, pack_updates,
};

use reader::Reader;

/// The 16-byte all-ones marker of every message.
pub const MARKER: [u8; 16] = [0xff; 16];
/// Length of the message header.
pub const HEADER_LEN: usize = 19;
/// Largest message without the extended message capability (RFC 4271).
pub const MAX_LEN: usize = 4096;
/// Largest message with the extended message capability (RFC 8654).
pub const MAX_EXTENDED_LEN: usize = 65535;
/// AS_TRANS (RFC 6793): stands in for a 4-octet ASN in 2-octet fields.
pub const AS_TRANS: u16 = 23456;

/// An address family Berth announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    /// IPv4 unicast (AFI 1, SAFI 1).
    Ipv4Unicast,
    /// IPv6 unicast (AFI 2, SAFI 1).
    Ipv6Unicast,
}

impl Family {
    /// AFI and SAFI on the wire.
    pub fn afi_safi(self) -> (u16, u8) {
        match self {
            Family::Ipv4Unicast => (1, 1),
            Family::Ipv6Unicast => (2, 1),
        }
    }

    /// The family of an AFI/SAFI pair, if Berth knows it.
    pub fn from_afi_safi(afi: u16, safi: u8) -> Option<Family> {
        match (afi, safi) {
            (1, 1) => Some(Family::Ipv4Unicast),
            (2, 1) => Some(Family::Ipv6Unicast),
            _ => None,
        }
    }

    fn index(self) -> usize {
        match self {
            Family::Ipv4Unicast => 0,
            Family::Ipv6Unicast => 1,
        }
    }
}

/// What was negotiated, as needed to read a peer's messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DecodeContext {
    /// Both sides sent the 4-octet ASN capability: AS_PATH carries 4-octet ASNs.
    pub four_octet_as: bool,
    /// NLRI of these families carry path IDs (we advertised receive, the peer send).
    pub add_path: [bool; 2],
    /// Messages may be up to 65535 bytes.
    pub extended_message: bool,
}

impl DecodeContext {
    /// Whether NLRI of `family` carry path IDs.
    pub fn add_path(&self, family: Family) -> bool {
        self.add_path[family.index()]
    }

    fn max_len(&self) -> usize {
        if self.extended_message {
            MAX_EXTENDED_LEN
        } else {
            MAX_LEN
        }
    }
}

/// What was negotiated, as needed to write messages to a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EncodeContext {
    /// Both sides sent the 4-octet ASN capability.
    pub four_octet_as: bool,
    /// NLRI of these families carry path IDs (we advertised send, the peer receive).
    pub add_path: [bool; 2],
    /// Messages may be up to 65535 bytes.
    pub extended_message: bool,
}

impl EncodeContext {
    /// Whether NLRI of `family` carry path IDs.
    pub fn add_path(&self, family: Family) -> bool {
        self.add_path[family.index()]
    }

    /// The largest message this session allows.
    pub fn max_len(&self) -> usize {
        if self.extended_message {
            MAX_EXTENDED_LEN
        } else {
            MAX_LEN
        }
    }
}

/// A BGP message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// OPEN (type 1).
    Open(Open),
    /// UPDATE (type 2).
    Update(Update),
    /// NOTIFICATION (type 3).
    Notification(Notification),
    /// KEEPALIVE (type 4).
    Keepalive,
    /// ROUTE-REFRESH (type 5).
    RouteRefresh(RouteRefresh),
}

impl Message {
    /// Decodes one message from the front of `buf`. `Ok(None)`: `buf` holds less than the
    /// message; read more and call again. `Ok(Some((m, n)))`: `n` bytes were consumed.
    pub fn decode(
        buf: &[u8],
        ctx: &DecodeContext,
    ) -> Result<Option<(Message, usize)>, DecodeError> {
        if buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let mut r = Reader::new(buf);
        let marker = r.take(16).map_err(|_| DecodeError::BadMarker)?;
        if marker != MARKER {
            return Err(DecodeError::BadMarker);
        }
        let len = r.u16().map_err(|_| DecodeError::BadMarker)?;
        let kind = r.u8().map_err(|_| DecodeError::BadMarker)?;
        let total = usize::from(len);
        let min = match kind {
            1 => 29,
            2 => 23,
            3 => 21,
            4 => 19,
            5 => 23,
            other => return Err(DecodeError::BadType(other)),
        };
        // OPEN and KEEPALIVE are never extended (RFC 8654).
        let max = if matches!(kind, 1 | 4) {
            MAX_LEN
        } else {
            ctx.max_len()
        };
        if total < min || total > max || (kind == 4 && total != HEADER_LEN) {
            return Err(DecodeError::BadLength(len));
        }
        if buf.len() < total {
            return Ok(None);
        }
        let body = buf
            .get(HEADER_LEN..total)
            .ok_or(DecodeError::BadLength(len))?;
        let msg = match kind {
            1 => Message::Open(Open::decode(body)?),
            2 => Message::Update(Update::decode(body, ctx)?),
            3 => Message::Notification(Notification::decode(body)),
            4 => Message::Keepalive,
            _ => Message::RouteRefresh(
                RouteRefresh::decode(body).ok_or(DecodeError::BadLength(len))?,
            ),
        };
        Ok(Some((msg, total)))
    }

    /// Appends the encoded message to `out`.
    pub fn encode(&self, ctx: &EncodeContext, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&MARKER);
        out.extend_from_slice(&[0, 0]);
        let kind = match self {
            Message::Open(_) => 1,
            Message::Update(_) => 2,
            Message::Notification(_) => 3,
            Message::Keepalive => 4,
            Message::RouteRefresh(_) => 5,
        };
        out.push(kind);
        match self {
            Message::Open(o) => o.encode_body(out),
            Message::Update(u) => u.encode_body(ctx, out),
            Message::Notification(n) => n.encode_body(out),
            Message::Keepalive => {}
            Message::RouteRefresh(r) => r.encode_body(out),
        }
        set_length(out, start);
    }

    /// The encoded message as a new buffer.
    pub fn to_bytes(&self, ctx: &EncodeContext) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(ctx, &mut out);
        out
    }
}

/// Writes the message length into the header that starts at `start`.
fn set_length(out: &mut [u8], start: usize) {
    let len = u16::try_from(out.len() - start)
        .unwrap_or(u16::MAX)
        .to_be_bytes();
    if let Some(slot) = out.get_mut(start + 16..start + 18) {
        slot.copy_from_slice(&len);
    }
}
