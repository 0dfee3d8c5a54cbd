//! NOTIFICATION (RFC 4271 §4.5, shutdown communication RFC 9003) and ROUTE-REFRESH (RFC 2918).

use crate::reader::Reader;

/// A NOTIFICATION message.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Notification {
    /// Error code.
    pub code: u8,
    /// Error subcode.
    pub subcode: u8,
    /// Data.
    pub data: Vec<u8>,
}

impl Notification {
    /// A NOTIFICATION from its parts.
    pub fn new(code: u8, subcode: u8, data: Vec<u8>) -> Self {
        Notification {
            code,
            subcode,
            data,
        }
    }

    /// A NOTIFICATION with no data.
    pub fn bare(code: u8, subcode: u8) -> Self {
        Notification::new(code, subcode, Vec::new())
    }

    /// Hold Timer Expired (4).
    pub fn hold_timer_expired() -> Self {
        Notification::bare(4, 0)
    }

    /// Cease (6), Administrative Shutdown (2), without a message.
    pub fn admin_shutdown() -> Self {
        Notification::bare(6, 2)
    }

    /// Cease (6), Hard Reset (9, RFC 8538 §3): `inner` is what would have been sent; the peer
    /// must drop our routes even where graceful restart would keep them.
    pub fn hard_reset(inner: &Notification) -> Self {
        let mut data = vec![inner.code, inner.subcode];
        data.extend_from_slice(&inner.data);
        Notification::new(6, 9, data)
    }

    /// Cease (6), Connection Collision Resolution (7).
    pub fn collision() -> Self {
        Notification::bare(6, 7)
    }

    /// Cease / Administrative Shutdown with a shutdown communication (RFC 9003), truncated to
    /// 255 bytes on a character boundary.
    pub fn shutdown(message: &str) -> Self {
        let mut end = message.len().min(255);
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        let text = message.get(..end).unwrap_or_default();
        let mut data = Vec::with_capacity(text.len() + 1);
        data.push(u8::try_from(text.len()).unwrap_or(255));
        data.extend_from_slice(text.as_bytes());
        Notification {
            code: 6,
            subcode: 2,
            data,
        }
    }

    /// The shutdown communication of a Cease 2 or 4, if it is well-formed UTF-8.
    pub fn shutdown_message(&self) -> Option<&str> {
        if self.code != 6 || !matches!(self.subcode, 2 | 4) {
            return None;
        }
        let (&len, rest) = self.data.split_first()?;
        std::str::from_utf8(rest.get(..usize::from(len))?).ok()
    }

    pub(crate) fn decode(body: &[u8]) -> Notification {
        // The header checks guarantee two bytes.
        let mut r = Reader::new(body);
        let code = r.u8().unwrap_or(0);
        let subcode = r.u8().unwrap_or(0);
        Notification {
            code,
            subcode,
            data: r.rest().to_vec(),
        }
    }

    pub(crate) fn encode_body(&self, out: &mut Vec<u8>) {
        out.push(self.code);
        out.push(self.subcode);
        out.extend_from_slice(&self.data);
    }
}

/// A ROUTE-REFRESH message (RFC 2918; subtypes of RFC 7313).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RouteRefresh {
    /// AFI.
    pub afi: u16,
    /// 0: refresh request; 1/2: beginning/end of refresh (RFC 7313).
    pub subtype: u8,
    /// SAFI.
    pub safi: u8,
}

impl RouteRefresh {
    pub(crate) fn decode(body: &[u8]) -> Option<RouteRefresh> {
        let mut r = Reader::new(body);
        let rr = RouteRefresh {
            afi: r.u16().ok()?,
            subtype: r.u8().ok()?,
            safi: r.u8().ok()?,
        };
        r.is_empty().then_some(rr)
    }

    pub(crate) fn encode_body(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.afi.to_be_bytes());
        out.push(self.subtype);
        out.push(self.safi);
    }
}
