//! OPEN and its capabilities (RFC 5492): multiprotocol, route refresh, extended message,
//! graceful restart, 4-octet ASN, ADD-PATH.

use std::net::Ipv4Addr;

use crate::AS_TRANS;
use crate::error::DecodeError;
use crate::reader::Reader;

/// ADD-PATH direction for one family (RFC 7911).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddPathMode {
    /// Able to receive multiple paths.
    Receive,
    /// Able to send multiple paths.
    Send,
    /// Both.
    Both,
}

impl AddPathMode {
    fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(AddPathMode::Receive),
            2 => Some(AddPathMode::Send),
            3 => Some(AddPathMode::Both),
            _ => None,
        }
    }

    fn to_u8(self) -> u8 {
        match self {
            AddPathMode::Receive => 1,
            AddPathMode::Send => 2,
            AddPathMode::Both => 3,
        }
    }

    /// Whether this side may send multiple paths.
    pub fn sends(self) -> bool {
        matches!(self, AddPathMode::Send | AddPathMode::Both)
    }

    /// Whether this side accepts multiple paths.
    pub fn receives(self) -> bool {
        matches!(self, AddPathMode::Receive | AddPathMode::Both)
    }
}

/// One family in the graceful restart capability.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GracefulRestartFamily {
    /// AFI.
    pub afi: u16,
    /// SAFI.
    pub safi: u8,
    /// Forwarding state was preserved across the restart.
    pub forwarding_preserved: bool,
}

/// A capability advertised in OPEN.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Capability {
    /// Multiprotocol extensions (code 1, RFC 4760).
    Multiprotocol {
        /// AFI.
        afi: u16,
        /// SAFI.
        safi: u8,
    },
    /// Route refresh (code 2, RFC 2918).
    RouteRefresh,
    /// Pre-standard route refresh (code 128), still sent by some routers.
    RouteRefreshCisco,
    /// Extended message (code 6, RFC 8654).
    ExtendedMessage,
    /// Graceful restart (code 64, RFC 4724).
    GracefulRestart {
        /// The R bit: the sender has restarted.
        restarting: bool,
        /// The N bit (RFC 8538): a NOTIFICATION other than Hard Reset keeps the routes too.
        notification: bool,
        /// Seconds the peer should keep our routes (12 bits).
        restart_time: u16,
        /// Families and whether forwarding survived.
        families: Vec<GracefulRestartFamily>,
    },
    /// 4-octet ASN (code 65, RFC 6793).
    FourOctetAs(u32),
    /// ADD-PATH (code 69, RFC 7911): (AFI, SAFI, mode) per family.
    AddPath(Vec<(u16, u8, AddPathMode)>),
    /// Anything else, kept as received.
    Unknown {
        /// Capability code.
        code: u8,
        /// Value.
        value: Vec<u8>,
    },
}

/// An OPEN message.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Open {
    /// The sender's ASN: the 4-octet capability's value when present, else My Autonomous
    /// System. Encoding writes AS_TRANS in My Autonomous System when it needs 4 octets.
    pub asn: u32,
    /// Proposed hold time (0 or >= 3).
    pub hold_time: u16,
    /// BGP identifier.
    pub router_id: Ipv4Addr,
    /// Capabilities, in order.
    pub capabilities: Vec<Capability>,
}

fn bad(subcode: u8, reason: &str) -> DecodeError {
    DecodeError::open(subcode, Vec::new(), reason)
}

impl Open {
    pub(crate) fn decode(body: &[u8]) -> Result<Open, DecodeError> {
        let mut r = Reader::new(body);
        let short = |_| bad(0, "message too short");
        let version = r.u8().map_err(short)?;
        if version != 4 {
            // Data: the highest version we support (RFC 4271 §6.2).
            return Err(DecodeError::open(
                1,
                vec![0, 4],
                format!("unsupported version {version}"),
            ));
        }
        let my_as = r.u16().map_err(short)?;
        let hold_time = r.u16().map_err(short)?;
        if hold_time == 1 || hold_time == 2 {
            return Err(bad(6, "hold time 1 or 2 seconds is not allowed"));
        }
        let router_id = Ipv4Addr::from(r.u32().map_err(short)?);
        if router_id.is_unspecified() {
            return Err(bad(3, "BGP identifier 0.0.0.0"));
        }
        let mut opt_len = usize::from(r.u8().map_err(short)?);
        // RFC 9072: a length of 255 followed by type 255 announces 2-octet lengths.
        let extended = opt_len == 255 && r.rest().first() == Some(&255);
        if extended {
            r.u8().map_err(short)?;
            opt_len = usize::from(r.u16().map_err(short)?);
        }
        if opt_len != r.remaining() {
            return Err(bad(
                0,
                "optional parameters length does not match the message",
            ));
        }
        let mut capabilities = Vec::new();
        while !r.is_empty() {
            let kind = r.u8().map_err(short)?;
            let len = if extended {
                usize::from(r.u16().map_err(short)?)
            } else {
                usize::from(r.u8().map_err(short)?)
            };
            let mut p = r
                .sub(len)
                .map_err(|_| bad(0, "optional parameter overruns the message"))?;
            if kind != 2 {
                return Err(bad(
                    4,
                    "unsupported optional parameter (only capabilities are)",
                ));
            }
            while !p.is_empty() {
                let code = p.u8().map_err(|_| bad(0, "truncated capability"))?;
                let clen = usize::from(p.u8().map_err(|_| bad(0, "truncated capability"))?);
                let value = p
                    .take(clen)
                    .map_err(|_| bad(0, "capability overruns its parameter"))?;
                capabilities.push(
                    Capability::decode(code, value)
                        .ok_or_else(|| bad(0, "malformed capability"))?,
                );
            }
        }
        let asn = capabilities
            .iter()
            .find_map(|c| match c {
                Capability::FourOctetAs(a) => Some(*a),
                _ => None,
            })
            .unwrap_or(u32::from(my_as));
        if asn == 0 {
            return Err(bad(2, "peer AS 0"));
        }
        Ok(Open {
            asn,
            hold_time,
            router_id,
            capabilities,
        })
    }

    pub(crate) fn encode_body(&self, out: &mut Vec<u8>) {
        out.push(4);
        let my_as = u16::try_from(self.asn).unwrap_or(AS_TRANS);
        out.extend_from_slice(&my_as.to_be_bytes());
        out.extend_from_slice(&self.hold_time.to_be_bytes());
        out.extend_from_slice(&self.router_id.octets());
        let mut params = Vec::new();
        for c in &self.capabilities {
            let mut value = Vec::new();
            let code = c.encode_value(&mut value);
            // One capability per parameter, as most implementations send them.
            params.push(2);
            params.push(u8::try_from(value.len() + 2).unwrap_or(u8::MAX));
            params.push(code);
            params.push(u8::try_from(value.len()).unwrap_or(u8::MAX));
            params.extend_from_slice(&value);
        }
        out.push(u8::try_from(params.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(&params);
    }

    /// The capabilities of one kind.
    pub fn add_path(&self) -> impl Iterator<Item = &(u16, u8, AddPathMode)> {
        self.capabilities.iter().flat_map(|c| match c {
            Capability::AddPath(v) => v.as_slice(),
            _ => &[],
        })
    }

    /// Whether the 4-octet ASN capability is present.
    pub fn four_octet_as(&self) -> bool {
        self.capabilities
            .iter()
            .any(|c| matches!(c, Capability::FourOctetAs(_)))
    }
}

impl Capability {
    fn decode(code: u8, value: &[u8]) -> Option<Capability> {
        let mut r = Reader::new(value);
        let cap = match code {
            1 => {
                let afi = r.u16().ok()?;
                r.u8().ok()?;
                let safi = r.u8().ok()?;
                Capability::Multiprotocol { afi, safi }
            }
            2 => Capability::RouteRefresh,
            128 => Capability::RouteRefreshCisco,
            6 => Capability::ExtendedMessage,
            64 => {
                let flags = r.u16().ok()?;
                let mut families = Vec::new();
                while !r.is_empty() {
                    let afi = r.u16().ok()?;
                    let safi = r.u8().ok()?;
                    let f = r.u8().ok()?;
                    families.push(GracefulRestartFamily {
                        afi,
                        safi,
                        forwarding_preserved: f & 0x80 != 0,
                    });
                }
                Capability::GracefulRestart {
                    restarting: flags & 0x8000 != 0,
                    notification: flags & 0x4000 != 0,
                    restart_time: flags & 0x0fff,
                    families,
                }
            }
            65 => Capability::FourOctetAs(r.u32().ok()?),
            69 => {
                let mut v = Vec::new();
                while !r.is_empty() {
                    let afi = r.u16().ok()?;
                    let safi = r.u8().ok()?;
                    let Some(mode) = AddPathMode::from_u8(r.u8().ok()?) else {
                        // RFC 7911 §4: a Send/Receive value other than 1-3 makes the
                        // capability "not understood and ignored", not a session reset.
                        return Some(Capability::Unknown {
                            code,
                            value: value.to_vec(),
                        });
                    };
                    v.push((afi, safi, mode));
                }
                Capability::AddPath(v)
            }
            _ => {
                return Some(Capability::Unknown {
                    code,
                    value: value.to_vec(),
                });
            }
        };
        // Fixed-size capabilities must not carry trailing bytes.
        r.is_empty().then_some(cap)
    }

    fn encode_value(&self, out: &mut Vec<u8>) -> u8 {
        match self {
            Capability::Multiprotocol { afi, safi } => {
                out.extend_from_slice(&afi.to_be_bytes());
                out.push(0);
                out.push(*safi);
                1
            }
            Capability::RouteRefresh => 2,
            Capability::RouteRefreshCisco => 128,
            Capability::ExtendedMessage => 6,
            Capability::GracefulRestart {
                restarting,
                notification,
                restart_time,
                families,
            } => {
                let flags = (if *restarting { 0x8000 } else { 0 })
                    | (if *notification { 0x4000 } else { 0 })
                    | (restart_time & 0x0fff);
                out.extend_from_slice(&flags.to_be_bytes());
                for f in families {
                    out.extend_from_slice(&f.afi.to_be_bytes());
                    out.push(f.safi);
                    out.push(if f.forwarding_preserved { 0x80 } else { 0 });
                }
                64
            }
            Capability::FourOctetAs(asn) => {
                out.extend_from_slice(&asn.to_be_bytes());
                65
            }
            Capability::AddPath(v) => {
                for (afi, safi, mode) in v {
                    out.extend_from_slice(&afi.to_be_bytes());
                    out.push(*safi);
                    out.push(mode.to_u8());
                }
                69
            }
            Capability::Unknown { code, value } => {
                out.extend_from_slice(value);
                *code
            }
        }
    }
}
