//! An Apply's desired state converted from its encoded form (`berth.bgp.v1.DesiredState`
//! bytes) one route at a time, merged into the routes applied now.
//!
//! Memory is the point: decoding the whole message first held the API's copy of every route
//! (strings for prefixes and next hops) beside the model's and the RIB's, about 8 times the
//! routes' own size at 100,000 routes. Here the global settings and peers are decoded as usual
//! (they are small), and each route is decoded, checked by the same rules as the standalone
//! file ([`crate::config::check_route`]), and compared with the applied route of that prefix;
//! only a route that differs is inserted into the new map, which starts as a clone of the
//! applied one (persistent: the clone shares everything). An identical state therefore costs
//! no new route memory at all, and the result says which prefixes changed.
//!
//! Pure: no I/O; the service runs it on the blocking pool.

use std::collections::HashSet;

use berth_proto::v1;
use ipnet::IpNet;
use prost::Message;

use super::convert::{self, InvalidArgument};
use crate::config::{self, SpeakerConfig};
use crate::rib::{Desired, Interner};

/// `DesiredState.routes`' field number.
const ROUTES_FIELD: u64 = 4;

/// Changed prefixes up to which the result lists them (so sessions send only those); above
/// it, sessions walk the table in bounded batches.
pub const DELTA_MAX: usize = 4096;

/// What decides an encoded state's routes: a SHA-256 of every field but the generation, the
/// global settings and the peers, as sent. Equal digests: the same routes, which need not be
/// converted again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoutesDigest([u8; 32]);

/// `DesiredState` fields that do not decide the routes: generation, global, peers.
const NOT_ROUTES: [u64; 3] = [1, 2, 3];

/// The digest of the routes of the encoded state `bytes`.
pub fn routes_digest(bytes: &[u8]) -> Result<RoutesDigest, InvalidArgument> {
    let mut sha = ring::digest::Context::new(&ring::digest::SHA256);
    for f in fields(bytes) {
        let f = f?;
        if !NOT_ROUTES.contains(&f.number) {
            sha.update(bytes.get(f.start..f.value.end).unwrap_or_default());
        }
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(sha.finish().as_ref());
    Ok(RoutesDigest(out))
}

/// A converted state.
#[derive(Debug, Clone)]
pub struct Converted {
    /// Its generation.
    pub generation: u64,
    /// Global settings and peers (`routes` empty: the routes are in `desired`).
    pub settings: SpeakerConfig,
    /// The routes: the applied map with the differences made.
    pub desired: Desired,
    /// Prefixes added, removed or changed.
    pub changed: usize,
    /// Those prefixes, when there are at most [`DELTA_MAX`].
    pub touched: Option<Vec<IpNet>>,
    /// What decided the routes.
    pub digest: RoutesDigest,
}

fn invalid(field: impl Into<String>, why: impl Into<String>) -> InvalidArgument {
    InvalidArgument {
        field: field.into(),
        why: why.into(),
    }
}

fn not_a_state(why: &str) -> InvalidArgument {
    invalid("state", format!("not a berth.bgp.v1.DesiredState: {why}"))
}

/// A base-128 varint at `*pos`.
fn varint(bytes: &[u8], pos: &mut usize) -> Result<u64, InvalidArgument> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *bytes
            .get(*pos)
            .ok_or_else(|| not_a_state("truncated varint"))?;
        *pos += 1;
        value |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(not_a_state("varint longer than 10 bytes"))
}

/// One top-level field: its number, the range its value spans (the payload of a
/// length-delimited field, else the value itself), and where the field ends.
struct Field {
    number: u64,
    length_delimited: bool,
    start: usize,
    value: std::ops::Range<usize>,
}

/// The top-level fields of an encoded message, in order.
fn fields(bytes: &[u8]) -> impl Iterator<Item = Result<Field, InvalidArgument>> + '_ {
    let mut pos = 0usize;
    std::iter::from_fn(move || {
        if pos >= bytes.len() {
            return None;
        }
        let start = pos;
        let field = (|| {
            let key = varint(bytes, &mut pos)?;
            let (number, wire) = (key >> 3, key & 7);
            let fixed = |n: usize| (pos, n);
            let (from, len) = match wire {
                0 => {
                    let from = pos;
                    varint(bytes, &mut pos)?;
                    (from, pos - from)
                }
                1 => fixed(8),
                2 => {
                    let len = usize::try_from(varint(bytes, &mut pos)?)
                        .map_err(|_| not_a_state("length out of range"))?;
                    (pos, len)
                }
                5 => fixed(4),
                w => return Err(not_a_state(&format!("wire type {w}"))),
            };
            let end = from
                .checked_add(len)
                .filter(|e| *e <= bytes.len())
                .ok_or_else(|| not_a_state("a field runs past the end"))?;
            pos = end;
            Ok(Field {
                number,
                length_delimited: wire == 2,
                start,
                value: from..end,
            })
        })();
        if field.is_err() {
            // One error ends the walk.
            pos = bytes.len();
        }
        Some(field)
    })
}

/// Whether a message's prefixes came in strictly increasing order.
enum Order {
    /// So far yes; the last prefix.
    Increasing(Option<IpNet>),
    /// No (or a prefix did not parse: the conversion then says why).
    Any,
}

impl Order {
    fn next(&mut self, prefix: Option<IpNet>) {
        *self = match (&*self, prefix) {
            (Order::Increasing(last), Some(p)) if last.is_none_or(|l| l < p) => {
                Order::Increasing(Some(p))
            }
            _ => Order::Any,
        };
    }
}

/// The encoded state `bytes` merged into `applied`: checked by the same rules, with the same
/// field names in errors, as [`convert::desired_state`]. When `applied` came from routes with
/// the digest `known` and these routes have it too, they are not converted again: the result
/// is `applied`, unchanged (the routes were checked when they were first accepted).
pub fn convert(
    bytes: &[u8],
    applied: &Desired,
    known: Option<RoutesDigest>,
) -> Result<Converted, InvalidArgument> {
    // First everything but the routes (small), so settings errors come first as before.
    let mut head = Vec::new();
    for f in fields(bytes) {
        let f = f?;
        if !(f.number == ROUTES_FIELD && f.length_delimited) {
            head.extend_from_slice(bytes.get(f.start..f.value.end).unwrap_or_default());
        }
    }
    let state =
        v1::DesiredState::decode(head.as_slice()).map_err(|e| not_a_state(&e.to_string()))?;
    drop(head);
    let settings = convert::desired_state(&state)?;
    let digest = routes_digest(bytes)?;
    if known == Some(digest) {
        return Ok(Converted {
            generation: state.generation,
            settings,
            desired: applied.clone(),
            changed: 0,
            touched: Some(Vec::new()),
            digest,
        });
    }
    let groups = convert::next_hop_groups(&state.next_hop_groups, "next_hop_groups")?;

    let mut desired = applied.clone();
    let mut interned = Interner::default();
    let mut changed = 0usize;
    let mut touched = Some(Vec::new());
    let mut touch = |p: IpNet, changed: &mut usize| {
        *changed += 1;
        if let Some(t) = touched.as_mut() {
            if t.len() < DELTA_MAX {
                t.push(p);
            } else {
                touched = None;
            }
        }
    };
    // First the routes' next hops in all, each route decoded and dropped: a message over
    // the bound is refused before anything is held. The same pass finds out whether the
    // prefixes come in strictly increasing order (the operator sends them so): then no set of
    // the prefixes seen is needed, for duplicates or for what is gone.
    let mut paths = 0usize;
    let mut order = Order::Increasing(None);
    let routes = fields(bytes).filter(|f| {
        f.as_ref()
            .map_or(true, |f| f.number == ROUTES_FIELD && f.length_delimited)
    });
    for (i, f) in routes.enumerate() {
        let f = f?;
        let r = v1::Route::decode(bytes.get(f.value).unwrap_or_default())
            .map_err(|e| invalid(format!("routes[{i}]"), format!("not a Route: {e}")))?;
        convert::count_paths(&mut paths, &r, &groups, &format!("routes[{i}]"))?;
        order.next(r.prefix.parse().ok());
    }
    let mut seen = match order {
        Order::Increasing(_) => None,
        Order::Any => Some(HashSet::new()),
    };
    // In increasing order, the applied prefixes that are gone are those the walk passes by.
    let mut applied_keys = applied.keys().copied().peekable();
    let mut gone = Vec::new();
    let mut last: Option<IpNet> = None;
    let mut i = 0usize;
    for f in fields(bytes) {
        let f = f?;
        if !(f.number == ROUTES_FIELD && f.length_delimited) {
            continue;
        }
        let body = bytes.get(f.value).unwrap_or_default();
        let r = v1::Route::decode(body)
            .map_err(|e| invalid(format!("routes[{i}]"), format!("not a Route: {e}")))?;
        let r = convert::route(i, &r, "routes", &groups)?;
        config::check_route(i, &r).map_err(|e| convert::api_error(&e))?;
        let duplicate = match seen.as_mut() {
            Some(seen) => !seen.insert(r.prefix),
            // Cannot be true when the first pass found the order increasing (both passes parse
            // a prefix alike); kept so a change to either pass cannot let a duplicate in.
            None => last.is_some_and(|l| l >= r.prefix),
        };
        if duplicate {
            return Err(convert::api_error(&config::duplicate(i, r.prefix)));
        }
        if seen.is_none() {
            while let Some(p) = applied_keys.next_if(|p| *p <= r.prefix) {
                if p != r.prefix {
                    gone.push(p);
                }
            }
        }
        last = Some(r.prefix);
        i += 1;
        let paths = config::route_paths(&r, &mut interned);
        if desired.get(&r.prefix) != Some(&paths) {
            touch(r.prefix, &mut changed);
            desired.insert(r.prefix, paths);
        }
    }
    // The interning tables hold a reference to every distinct list: freed before the
    // removals and the compaction, which may copy chunks.
    drop(interned);
    match seen {
        None => gone.extend(applied_keys),
        Some(seen) if seen.len() < desired.len() => {
            gone.extend(desired.keys().filter(|p| !seen.contains(p)).copied());
        }
        Some(_) => {}
    }
    for p in gone {
        desired.remove(&p);
        touch(p, &mut changed);
    }
    if changed > 0 {
        desired.compact();
    }
    Ok(Converted {
        generation: state.generation,
        settings,
        desired,
        changed,
        touched,
        digest,
    })
}

#[cfg(test)]
mod tests;
