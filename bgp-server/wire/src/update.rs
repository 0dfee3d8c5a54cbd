//! UPDATE: path attributes, NLRI with ADD-PATH path IDs, End-of-RIB, RFC 7606 error handling,
//! and the packer that fits as many prefixes as possible into each message.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::error::DecodeError;
use crate::reader::Reader;
use crate::{AS_TRANS, DecodeContext, EncodeContext, Family, HEADER_LEN, set_length};

/// ORIGIN values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Origin {
    /// Learned from an interior protocol (Berth's choice: the route is the cluster's own).
    Igp,
    /// Learned from EGP.
    Egp,
    /// Anything else.
    Incomplete,
}

/// One AS_PATH segment.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AsSegment {
    /// AS_SET (type 1).
    Set(Vec<u32>),
    /// AS_SEQUENCE (type 2).
    Sequence(Vec<u32>),
}

/// An AS_PATH (or AS4_PATH).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct AsPath(pub Vec<AsSegment>);

/// A next hop for announced NLRI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NextHop {
    /// IPv4 next hop.
    V4(Ipv4Addr),
    /// IPv6 next hop: global, and link-local when on a shared link (RFC 2545).
    V6 {
        /// Global address.
        global: Ipv6Addr,
        /// Link-local address.
        link_local: Option<Ipv6Addr>,
    },
}

/// A prefix, with its ADD-PATH path ID when the session uses them for its family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Nlri {
    /// Path ID (RFC 7911).
    pub path_id: Option<u32>,
    /// The prefix.
    pub prefix: IpNet,
}

/// MP_REACH_NLRI (RFC 4760).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MpReach {
    /// Family of the NLRI.
    pub family: Family,
    /// Next hop for all of them.
    pub next_hop: NextHop,
    /// Announced prefixes.
    pub nlri: Vec<Nlri>,
}

/// MP_UNREACH_NLRI (RFC 4760).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MpUnreach {
    /// Family of the prefixes.
    pub family: Family,
    /// Withdrawn prefixes.
    pub withdrawn: Vec<Nlri>,
}

/// An extended community (RFC 4360).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExtCommunity {
    /// Link bandwidth (type 0x40, subtype 0x04): weighted ECMP.
    LinkBandwidth {
        /// The advertising AS (2 octets).
        asn: u16,
        /// Bandwidth in bytes per second, as IEEE 754 single-precision bits.
        bandwidth: u32,
    },
    /// Any other, kept as received.
    Other([u8; 8]),
}

/// A path attribute.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Attribute {
    /// ORIGIN (1).
    Origin(Origin),
    /// AS_PATH (2).
    AsPath(AsPath),
    /// NEXT_HOP (3).
    NextHop(Ipv4Addr),
    /// MULTI_EXIT_DISC (4).
    Med(u32),
    /// LOCAL_PREF (5).
    LocalPref(u32),
    /// ATOMIC_AGGREGATE (6).
    AtomicAggregate,
    /// AGGREGATOR (7).
    Aggregator {
        /// Aggregating AS.
        asn: u32,
        /// Aggregating router.
        address: Ipv4Addr,
    },
    /// COMMUNITIES (8, RFC 1997).
    Communities(Vec<u32>),
    /// MP_REACH_NLRI (14).
    MpReach(MpReach),
    /// MP_UNREACH_NLRI (15).
    MpUnreach(MpUnreach),
    /// EXTENDED_COMMUNITIES (16).
    ExtendedCommunities(Vec<ExtCommunity>),
    /// AS4_PATH (17, RFC 6793).
    As4Path(AsPath),
    /// LARGE_COMMUNITY (32, RFC 8092).
    LargeCommunities(Vec<[u32; 3]>),
    /// An optional transitive attribute Berth does not know, passed on with Partial set.
    Unknown {
        /// Flags as received.
        flags: u8,
        /// Type code.
        code: u8,
        /// Value.
        value: Vec<u8>,
    },
}

const OPTIONAL: u8 = 0x80;
const TRANSITIVE: u8 = 0x40;
const PARTIAL: u8 = 0x20;
const EXTENDED: u8 = 0x10;

impl Attribute {
    fn code(&self) -> u8 {
        match self {
            Attribute::Origin(_) => 1,
            Attribute::AsPath(_) => 2,
            Attribute::NextHop(_) => 3,
            Attribute::Med(_) => 4,
            Attribute::LocalPref(_) => 5,
            Attribute::AtomicAggregate => 6,
            Attribute::Aggregator { .. } => 7,
            Attribute::Communities(_) => 8,
            Attribute::MpReach(_) => 14,
            Attribute::MpUnreach(_) => 15,
            Attribute::ExtendedCommunities(_) => 16,
            Attribute::As4Path(_) => 17,
            Attribute::LargeCommunities(_) => 32,
            Attribute::Unknown { code, .. } => *code,
        }
    }

    fn flags(&self) -> u8 {
        match self {
            Attribute::Origin(_)
            | Attribute::AsPath(_)
            | Attribute::NextHop(_)
            | Attribute::LocalPref(_)
            | Attribute::AtomicAggregate => TRANSITIVE,
            Attribute::Med(_) | Attribute::MpReach(_) | Attribute::MpUnreach(_) => OPTIONAL,
            Attribute::Aggregator { .. }
            | Attribute::Communities(_)
            | Attribute::ExtendedCommunities(_)
            | Attribute::As4Path(_)
            | Attribute::LargeCommunities(_) => OPTIONAL | TRANSITIVE,
            Attribute::Unknown { flags, .. } => (flags & (OPTIONAL | TRANSITIVE)) | PARTIAL,
        }
    }

    fn encode(&self, ctx: &EncodeContext, out: &mut Vec<u8>) {
        let mut value = Vec::new();
        match self {
            Attribute::Origin(o) => value.push(match o {
                Origin::Igp => 0,
                Origin::Egp => 1,
                Origin::Incomplete => 2,
            }),
            Attribute::AsPath(p) => encode_as_path(p, ctx.four_octet_as, &mut value),
            Attribute::As4Path(p) => encode_as_path(p, true, &mut value),
            Attribute::NextHop(a) => value.extend_from_slice(&a.octets()),
            Attribute::Med(v) | Attribute::LocalPref(v) => {
                value.extend_from_slice(&v.to_be_bytes())
            }
            Attribute::AtomicAggregate => {}
            Attribute::Aggregator { asn, address } => {
                if ctx.four_octet_as {
                    value.extend_from_slice(&asn.to_be_bytes());
                } else {
                    value.extend_from_slice(&u16::try_from(*asn).unwrap_or(AS_TRANS).to_be_bytes());
                }
                value.extend_from_slice(&address.octets());
            }
            Attribute::Communities(c) => c
                .iter()
                .for_each(|v| value.extend_from_slice(&v.to_be_bytes())),
            Attribute::ExtendedCommunities(c) => c.iter().for_each(|e| match e {
                ExtCommunity::LinkBandwidth { asn, bandwidth } => {
                    value.extend_from_slice(&[0x40, 0x04]);
                    value.extend_from_slice(&asn.to_be_bytes());
                    value.extend_from_slice(&bandwidth.to_be_bytes());
                }
                ExtCommunity::Other(raw) => value.extend_from_slice(raw),
            }),
            Attribute::LargeCommunities(c) => c
                .iter()
                .flatten()
                .for_each(|v| value.extend_from_slice(&v.to_be_bytes())),
            Attribute::MpReach(m) => {
                let (afi, safi) = m.family.afi_safi();
                value.extend_from_slice(&afi.to_be_bytes());
                value.push(safi);
                encode_next_hop(&m.next_hop, &mut value);
                value.push(0);
                let add_path = ctx.add_path(m.family);
                m.nlri
                    .iter()
                    .for_each(|n| encode_nlri(n, add_path, &mut value));
            }
            Attribute::MpUnreach(m) => {
                let (afi, safi) = m.family.afi_safi();
                value.extend_from_slice(&afi.to_be_bytes());
                value.push(safi);
                let add_path = ctx.add_path(m.family);
                m.withdrawn
                    .iter()
                    .for_each(|n| encode_nlri(n, add_path, &mut value));
            }
            Attribute::Unknown { value: v, .. } => value.extend_from_slice(v),
        }
        write_attribute(self.flags(), self.code(), &value, out);
    }
}

fn write_attribute(flags: u8, code: u8, value: &[u8], out: &mut Vec<u8>) {
    // MP attributes always use the 2-octet length so the packer's arithmetic is fixed.
    let extended = value.len() > 255 || matches!(code, 14 | 15);
    if extended {
        out.push(flags | EXTENDED);
        out.push(code);
        out.extend_from_slice(&u16::try_from(value.len()).unwrap_or(u16::MAX).to_be_bytes());
    } else {
        out.push(flags & !EXTENDED);
        out.push(code);
        out.push(u8::try_from(value.len()).unwrap_or(u8::MAX));
    }
    out.extend_from_slice(value);
}

fn encode_as_path(p: &AsPath, four: bool, out: &mut Vec<u8>) {
    for seg in &p.0 {
        let (kind, asns) = match seg {
            AsSegment::Set(a) => (1, a),
            AsSegment::Sequence(a) => (2, a),
        };
        // A segment holds at most 255 ASNs; longer ones are split.
        for chunk in asns.chunks(255) {
            out.push(kind);
            out.push(u8::try_from(chunk.len()).unwrap_or(u8::MAX));
            for asn in chunk {
                if four {
                    out.extend_from_slice(&asn.to_be_bytes());
                } else {
                    out.extend_from_slice(&u16::try_from(*asn).unwrap_or(AS_TRANS).to_be_bytes());
                }
            }
        }
    }
}

fn encode_next_hop(nh: &NextHop, out: &mut Vec<u8>) {
    match nh {
        NextHop::V4(a) => {
            out.push(4);
            out.extend_from_slice(&a.octets());
        }
        NextHop::V6 {
            global,
            link_local: None,
        } => {
            out.push(16);
            out.extend_from_slice(&global.octets());
        }
        NextHop::V6 {
            global,
            link_local: Some(ll),
        } => {
            out.push(32);
            out.extend_from_slice(&global.octets());
            out.extend_from_slice(&ll.octets());
        }
    }
}

fn nlri_len(n: &Nlri, add_path: bool) -> usize {
    usize::from(add_path) * 4 + 1 + usize::from(n.prefix.prefix_len()).div_ceil(8)
}

fn encode_nlri(n: &Nlri, add_path: bool, out: &mut Vec<u8>) {
    if add_path {
        out.extend_from_slice(&n.path_id.unwrap_or(0).to_be_bytes());
    }
    let len = n.prefix.prefix_len();
    out.push(len);
    let bytes = usize::from(len).div_ceil(8);
    match n.prefix.network() {
        IpAddr::V4(a) => out.extend_from_slice(a.octets().get(..bytes).unwrap_or_default()),
        IpAddr::V6(a) => out.extend_from_slice(a.octets().get(..bytes).unwrap_or_default()),
    }
}

/// Reads NLRI until `r` is empty; `None` on a malformed prefix (RFC 7606 resets for these).
fn decode_nlri(mut r: Reader<'_>, family: Family, add_path: bool) -> Option<Vec<Nlri>> {
    let mut out = Vec::new();
    while !r.is_empty() {
        let path_id = if add_path { Some(r.u32().ok()?) } else { None };
        let len = r.u8().ok()?;
        let bytes = r.take(usize::from(len).div_ceil(8)).ok()?;
        let prefix = match family {
            Family::Ipv4Unicast => {
                let mut o = [0u8; 4];
                o.get_mut(..bytes.len())?.copy_from_slice(bytes);
                IpNet::V4(Ipv4Net::new(Ipv4Addr::from(o), len).ok()?.trunc())
            }
            Family::Ipv6Unicast => {
                let mut o = [0u8; 16];
                o.get_mut(..bytes.len())?.copy_from_slice(bytes);
                IpNet::V6(Ipv6Net::new(Ipv6Addr::from(o), len).ok()?.trunc())
            }
        };
        out.push(Nlri { path_id, prefix });
    }
    Some(out)
}

fn decode_as_path(mut r: Reader<'_>, four: bool) -> Option<AsPath> {
    let mut segs = Vec::new();
    while !r.is_empty() {
        let kind = r.u8().ok()?;
        let n = usize::from(r.u8().ok()?);
        if n == 0 {
            return None;
        }
        let mut asns = Vec::with_capacity(n);
        for _ in 0..n {
            asns.push(if four {
                r.u32().ok()?
            } else {
                u32::from(r.u16().ok()?)
            });
        }
        segs.push(match kind {
            1 => AsSegment::Set(asns),
            2 => AsSegment::Sequence(asns),
            _ => return None,
        });
    }
    Some(AsPath(segs))
}

fn decode_next_hop(r: &mut Reader<'_>, family: Family) -> Option<NextHop> {
    let len = r.u8().ok()?;
    let v = r.take(usize::from(len)).ok()?;
    let v6 = |b: &[u8]| <[u8; 16]>::try_from(b).ok().map(Ipv6Addr::from);
    match (family, len) {
        (_, 4) => <[u8; 4]>::try_from(v)
            .ok()
            .map(|o| NextHop::V4(Ipv4Addr::from(o))),
        (Family::Ipv6Unicast, 16) => Some(NextHop::V6 {
            global: v6(v)?,
            link_local: None,
        }),
        (Family::Ipv6Unicast, 32) => Some(NextHop::V6 {
            global: v6(v.get(..16)?)?,
            link_local: Some(v6(v.get(16..)?)?),
        }),
        _ => None,
    }
}

/// An UPDATE message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Update {
    /// Withdrawn IPv4 prefixes.
    pub withdrawn: Vec<Nlri>,
    /// Path attributes (MP_REACH/MP_UNREACH among them).
    pub attributes: Vec<Attribute>,
    /// Announced IPv4 prefixes.
    pub nlri: Vec<Nlri>,
    /// RFC 7606: an attribute was malformed; every prefix announced here is to be treated as
    /// withdrawn. Set by decoding only.
    pub treat_as_withdraw: bool,
    /// RFC 7606: type codes of attributes discarded as malformed. Set by decoding only.
    pub discarded: Vec<u8>,
}

impl Update {
    /// The End-of-RIB marker of a family (RFC 4724).
    pub fn end_of_rib(family: Family) -> Update {
        match family {
            Family::Ipv4Unicast => Update::default(),
            Family::Ipv6Unicast => Update {
                attributes: vec![Attribute::MpUnreach(MpUnreach {
                    family,
                    withdrawn: vec![],
                })],
                ..Update::default()
            },
        }
    }

    /// The family this UPDATE ends the initial table of, if it is an End-of-RIB marker.
    pub fn is_end_of_rib(&self) -> Option<Family> {
        if !self.withdrawn.is_empty() || !self.nlri.is_empty() {
            return None;
        }
        match self.attributes.as_slice() {
            [] => Some(Family::Ipv4Unicast),
            [Attribute::MpUnreach(m)] if m.withdrawn.is_empty() => Some(m.family),
            _ => None,
        }
    }

    pub(crate) fn decode(body: &[u8], ctx: &DecodeContext) -> Result<Update, DecodeError> {
        let list = |why: &str| DecodeError::update(1, why);
        let mut r = Reader::new(body);
        let wlen = usize::from(
            r.u16()
                .map_err(|_| list("truncated withdrawn routes length"))?,
        );
        let w = r
            .sub(wlen)
            .map_err(|_| list("withdrawn routes overrun the message"))?;
        let withdrawn = decode_nlri(w, Family::Ipv4Unicast, ctx.add_path(Family::Ipv4Unicast))
            .ok_or_else(|| DecodeError::update(10, "malformed withdrawn prefix"))?;
        let alen = usize::from(
            r.u16()
                .map_err(|_| list("truncated path attribute length"))?,
        );
        let a = r
            .sub(alen)
            .map_err(|_| list("path attributes overrun the message"))?;
        let nlri = decode_nlri(r, Family::Ipv4Unicast, ctx.add_path(Family::Ipv4Unicast))
            .ok_or_else(|| DecodeError::update(10, "malformed NLRI prefix"))?;
        let mut u = Update {
            withdrawn,
            nlri,
            ..Update::default()
        };
        u.decode_attributes(a, ctx)?;
        let has = |code: u8| u.attributes.iter().any(|at| at.code() == code);
        let mp_reach = has(14);
        if (!u.nlri.is_empty() || mp_reach) && !(has(1) && has(2)) {
            u.treat_as_withdraw = true;
        }
        if !u.nlri.is_empty() && !has(3) {
            u.treat_as_withdraw = true;
        }
        Ok(u)
    }

    fn decode_attributes(
        &mut self,
        mut r: Reader<'_>,
        ctx: &DecodeContext,
    ) -> Result<(), DecodeError> {
        let mut seen = [false; 256];
        while !r.is_empty() {
            let Some((flags, code, value)) = read_attribute(&mut r) else {
                // The attribute overruns the list: the NLRI are still found, so treat-as-withdraw.
                self.treat_as_withdraw = true;
                return Ok(());
            };
            let first = !std::mem::replace(&mut seen[usize::from(code)], true);
            if !first {
                if matches!(code, 14 | 15) {
                    return Err(DecodeError::update(
                        1,
                        "MP_REACH_NLRI or MP_UNREACH_NLRI appears twice",
                    ));
                }
                self.discarded.push(code);
                continue;
            }
            match decode_attribute(flags, code, value, ctx) {
                Ok(Some(attr)) => self.attributes.push(attr),
                Ok(None) => {}
                Err(Verdict::TreatAsWithdraw) => self.treat_as_withdraw = true,
                Err(Verdict::Discard) => self.discarded.push(code),
                Err(Verdict::Reset(e)) => return Err(e),
            }
        }
        Ok(())
    }

    pub(crate) fn encode_body(&self, ctx: &EncodeContext, out: &mut Vec<u8>) {
        let v4_ap = ctx.add_path(Family::Ipv4Unicast);
        let wlen = self
            .withdrawn
            .iter()
            .map(|n| nlri_len(n, v4_ap))
            .sum::<usize>();
        out.extend_from_slice(&u16::try_from(wlen).unwrap_or(u16::MAX).to_be_bytes());
        self.withdrawn
            .iter()
            .for_each(|n| encode_nlri(n, v4_ap, out));
        let mut attrs = Vec::new();
        encode_attributes(&self.attributes, ctx, &mut attrs);
        out.extend_from_slice(&u16::try_from(attrs.len()).unwrap_or(u16::MAX).to_be_bytes());
        out.extend_from_slice(&attrs);
        self.nlri.iter().for_each(|n| encode_nlri(n, v4_ap, out));
    }
}

/// Encodes `attributes` in order, adding AS4_PATH after an AS_PATH that holds an ASN above
/// 65535 when the session is not 4-octet on both sides (RFC 6793 §4.2.2: the 2-octet AS_PATH
/// carries AS_TRANS in its place, and the peer rebuilds the real path from AS4_PATH).
fn encode_attributes(attributes: &[Attribute], ctx: &EncodeContext, out: &mut Vec<u8>) {
    let has_as4 = attributes
        .iter()
        .any(|x| matches!(x, Attribute::As4Path(_)));
    for a in attributes {
        a.encode(ctx, out);
        if let Attribute::AsPath(p) = a
            && !ctx.four_octet_as
            && !has_as4
            && needs_as4(p)
        {
            Attribute::As4Path(p.clone()).encode(ctx, out);
        }
    }
}

fn needs_as4(p: &AsPath) -> bool {
    p.0.iter().any(|s| match s {
        AsSegment::Set(a) | AsSegment::Sequence(a) => a.iter().any(|asn| *asn > 0xffff),
    })
}

fn read_attribute<'a>(r: &mut Reader<'a>) -> Option<(u8, u8, Reader<'a>)> {
    let flags = r.u8().ok()?;
    let code = r.u8().ok()?;
    let len = if flags & EXTENDED != 0 {
        usize::from(r.u16().ok()?)
    } else {
        usize::from(r.u8().ok()?)
    };
    Some((flags, code, r.sub(len).ok()?))
}

/// How RFC 7606 resolves a malformed attribute.
enum Verdict {
    TreatAsWithdraw,
    Discard,
    Reset(DecodeError),
}

fn decode_attribute(
    flags: u8,
    code: u8,
    mut v: Reader<'_>,
    ctx: &DecodeContext,
) -> Result<Option<Attribute>, Verdict> {
    use Verdict::{Discard, TreatAsWithdraw as Taw};
    let expect = |want: u8| {
        if flags & (OPTIONAL | TRANSITIVE) == want {
            Ok(())
        } else {
            Err(Taw)
        }
    };
    let exact = |v: &Reader<'_>, n: usize| if v.remaining() == n { Ok(()) } else { Err(Taw) };
    let attr = match code {
        1 => {
            expect(TRANSITIVE)?;
            exact(&v, 1)?;
            Attribute::Origin(match v.u8().map_err(|_| Taw)? {
                0 => Origin::Igp,
                1 => Origin::Egp,
                2 => Origin::Incomplete,
                _ => return Err(Taw),
            })
        }
        2 => {
            expect(TRANSITIVE)?;
            Attribute::AsPath(decode_as_path(v, ctx.four_octet_as).ok_or(Taw)?)
        }
        3 => {
            expect(TRANSITIVE)?;
            exact(&v, 4)?;
            Attribute::NextHop(Ipv4Addr::from(v.u32().map_err(|_| Taw)?))
        }
        4 => {
            expect(OPTIONAL)?;
            exact(&v, 4)?;
            Attribute::Med(v.u32().map_err(|_| Taw)?)
        }
        5 => {
            expect(TRANSITIVE)?;
            exact(&v, 4)?;
            Attribute::LocalPref(v.u32().map_err(|_| Taw)?)
        }
        6 => {
            if v.remaining() != 0 {
                return Err(Discard);
            }
            Attribute::AtomicAggregate
        }
        7 => {
            let asn = match (ctx.four_octet_as, v.remaining()) {
                (true, 8) => v.u32().map_err(|_| Discard)?,
                (false, 6) => u32::from(v.u16().map_err(|_| Discard)?),
                _ => return Err(Discard),
            };
            Attribute::Aggregator {
                asn,
                address: Ipv4Addr::from(v.u32().map_err(|_| Discard)?),
            }
        }
        8 => {
            if v.remaining() == 0 || !v.remaining().is_multiple_of(4) {
                return Err(Taw);
            }
            let mut c = Vec::with_capacity(v.remaining() / 4);
            while let Ok(x) = v.u32() {
                c.push(x);
            }
            Attribute::Communities(c)
        }
        14 | 15 => {
            let reset = || {
                Verdict::Reset(DecodeError::update(
                    9,
                    "malformed MP_REACH_NLRI or MP_UNREACH_NLRI",
                ))
            };
            let afi = v.u16().map_err(|_| reset())?;
            let safi = v.u8().map_err(|_| reset())?;
            let Some(family) = Family::from_afi_safi(afi, safi) else {
                // A family we never negotiated: nothing of ours; ignore it.
                return Ok(None);
            };
            let add_path = ctx.add_path(family);
            if code == 14 {
                let next_hop = decode_next_hop(&mut v, family).ok_or_else(reset)?;
                v.u8().map_err(|_| reset())?;
                let nlri = decode_nlri(v, family, add_path).ok_or_else(reset)?;
                Attribute::MpReach(MpReach {
                    family,
                    next_hop,
                    nlri,
                })
            } else {
                let withdrawn = decode_nlri(v, family, add_path).ok_or_else(reset)?;
                Attribute::MpUnreach(MpUnreach { family, withdrawn })
            }
        }
        16 => {
            if !v.remaining().is_multiple_of(8) {
                return Err(Taw);
            }
            let mut c = Vec::with_capacity(v.remaining() / 8);
            while let Ok(raw) = v.take(8) {
                let mut o = [0u8; 8];
                o.copy_from_slice(raw);
                c.push(match o {
                    [0x40, 0x04, a0, a1, b0, b1, b2, b3] => ExtCommunity::LinkBandwidth {
                        asn: u16::from_be_bytes([a0, a1]),
                        bandwidth: u32::from_be_bytes([b0, b1, b2, b3]),
                    },
                    _ => ExtCommunity::Other(o),
                });
            }
            Attribute::ExtendedCommunities(c)
        }
        17 => Attribute::As4Path(decode_as_path(v, true).ok_or(Discard)?),
        32 => {
            if v.remaining() == 0 || !v.remaining().is_multiple_of(12) {
                return Err(Taw);
            }
            let mut c = Vec::with_capacity(v.remaining() / 12);
            while let (Ok(a), Ok(b), Ok(d)) = (v.u32(), v.u32(), v.u32()) {
                c.push([a, b, d]);
            }
            Attribute::LargeCommunities(c)
        }
        _ if flags & OPTIONAL == 0 => {
            let mut data = vec![flags, code];
            data.extend_from_slice(v.rest());
            return Err(Verdict::Reset(DecodeError::Update {
                subcode: 2,
                data,
                reason: format!("unrecognized well-known attribute {code}"),
            }));
        }
        // Unknown optional non-transitive attributes are quietly ignored (RFC 4271 §5).
        _ if flags & TRANSITIVE == 0 => return Ok(None),
        _ => Attribute::Unknown {
            flags,
            code,
            value: v.rest().to_vec(),
        },
    };
    Ok(Some(attr))
}

/// Encodes announcements and withdrawals of one family into as few UPDATEs as fit the
/// session's message size. Each group is one attribute set (without NEXT_HOP or MP
/// attributes: the packer adds them) with its next hop and prefixes; groups never share a
/// message. Withdrawals ride in the first messages, beside announcements when they fit, so a
/// small change (one path out, one in) is one UPDATE. MP_REACH_NLRI and MP_UNREACH_NLRI come
/// first among the attributes (RFC 7606 §5.1), and AS4_PATH follows an AS_PATH that needs it.
/// A group whose attributes alone leave no room for one prefix cannot be sent: its prefixes
/// are counted in [`Packed::unsendable`], never put on the wire.
pub fn pack_updates(
    ctx: &EncodeContext,
    family: Family,
    withdrawn: &[Nlri],
    groups: &[(Vec<Attribute>, NextHop, Vec<Nlri>)],
) -> Packed {
    let max = ctx.max_len();
    let ap = ctx.add_path(family);
    let v4 = family == Family::Ipv4Unicast;
    // Header plus the two length fields; MP_UNREACH costs its 4-byte header and AFI/SAFI.
    let base = HEADER_LEN + 4;
    let unreach_fixed = 7;
    let mut packed = Packed::default();
    let (mut wi, mut gi, mut ni) = (0usize, 0usize, 0usize);
    let skip_empty = |gi: &mut usize, ni: &mut usize| {
        while groups.get(*gi).is_some_and(|g| *ni >= g.2.len()) {
            *gi += 1;
            *ni = 0;
        }
    };
    skip_empty(&mut gi, &mut ni);
    while wi < withdrawn.len() || gi < groups.len() {
        let mut used = base;
        let mut wpart = Vec::new();
        while let Some(n) = withdrawn.get(wi) {
            let l = nlri_len(n, ap)
                + if !v4 && wpart.is_empty() {
                    unreach_fixed
                } else {
                    0
                };
            if used + l > max {
                break;
            }
            used += l;
            encode_nlri(n, ap, &mut wpart);
            wi += 1;
        }
        let mut reach = Vec::new();
        let mut mp_reach = Vec::new();
        let mut npart = Vec::new();
        if let Some((group_attrs, next_hop, prefixes)) = groups.get(gi) {
            let mut common = Vec::new();
            encode_attributes(group_attrs, ctx, &mut common);
            let mut nh = Vec::new();
            match (v4, next_hop) {
                (true, NextHop::V4(a)) => Attribute::NextHop(*a).encode(ctx, &mut nh),
                (true, _) => {}
                (false, _) => encode_next_hop(next_hop, &mut nh),
            }
            let fixed = common.len() + if v4 { nh.len() } else { 4 + 3 + nh.len() + 1 };
            if prefixes
                .get(ni)
                .is_some_and(|n| used + fixed + nlri_len(n, ap) <= max)
            {
                used += fixed;
                while let Some(n) = prefixes.get(ni) {
                    let l = nlri_len(n, ap);
                    if used + l > max {
                        break;
                    }
                    used += l;
                    encode_nlri(n, ap, &mut npart);
                    ni += 1;
                }
                if v4 {
                    reach = common;
                    reach.extend_from_slice(&nh);
                } else {
                    let (afi, safi) = family.afi_safi();
                    let mut value = Vec::with_capacity(4 + nh.len() + npart.len());
                    value.extend_from_slice(&afi.to_be_bytes());
                    value.push(safi);
                    value.extend_from_slice(&nh);
                    value.push(0);
                    value.append(&mut npart);
                    write_attribute(OPTIONAL, 14, &value, &mut mp_reach);
                    reach = common;
                }
                skip_empty(&mut gi, &mut ni);
            } else if wpart.is_empty() {
                // Not even one prefix fits beside these attributes: this group cannot be sent.
                packed.unsendable += prefixes.len() - ni;
                gi += 1;
                ni = 0;
                skip_empty(&mut gi, &mut ni);
                continue;
            }
        }
        let mut msg = Vec::with_capacity(used);
        msg.extend_from_slice(&crate::MARKER);
        msg.extend_from_slice(&[0, 0, 2]);
        // RFC 7606 §5.1: MP_REACH_NLRI first, then MP_UNREACH_NLRI, then the rest.
        let mut attrs = mp_reach;
        if v4 {
            msg.extend_from_slice(&u16::try_from(wpart.len()).unwrap_or(u16::MAX).to_be_bytes());
            msg.extend_from_slice(&wpart);
        } else {
            msg.extend_from_slice(&[0, 0]);
            if !wpart.is_empty() {
                let (afi, safi) = family.afi_safi();
                let mut value = Vec::with_capacity(3 + wpart.len());
                value.extend_from_slice(&afi.to_be_bytes());
                value.push(safi);
                value.append(&mut wpart);
                write_attribute(OPTIONAL, 15, &value, &mut attrs);
            }
        }
        attrs.append(&mut reach);
        msg.extend_from_slice(&u16::try_from(attrs.len()).unwrap_or(u16::MAX).to_be_bytes());
        msg.extend_from_slice(&attrs);
        msg.extend_from_slice(&npart);
        set_length(&mut msg, 0);
        packed.messages.push(msg);
    }
    packed
}

/// What [`pack_updates`] made.
#[derive(Debug, Default)]
pub struct Packed {
    /// The UPDATE messages, in order.
    pub messages: Vec<Vec<u8>>,
    /// Prefixes (paths) not sent: their group's attributes leave no room for them in one
    /// message.
    pub unsendable: usize,
}
