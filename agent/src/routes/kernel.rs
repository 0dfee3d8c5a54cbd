//! The netlink messages Berth sends for its rules and routes, and how it recognises its own
//! entries in the kernel's dumps. Pure functions on messages: no socket here.

use std::net::IpAddr;

use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};

use super::RoutesConfig;

/// The `rtm_protocol` Berth stamps on every rule and route it creates, and the only thing
/// cleanup trusts: entries with another protocol are never touched. 66 (0x42, "B") is neither
/// in linux/rtnetlink.h nor in iproute2's or FRR's `rt_protos` (FRR takes 186-197, so 190 = 0xbe
/// would show up as `proto ripng` on nodes running FRR), nor used by Calico (80) or BIRD (12).
/// `ip rule`/`ip route` show it as `proto 66`.
pub const BERTH_PROTOCOL: u8 = 66;

/// The loopback interface's index, which the kernel fixes at 1 in every network namespace
/// (`LOOPBACK_IFINDEX`), so there is no link lookup to do.
const LOOPBACK_IFINDEX: u32 = 1;

/// `rtm_table` when the real table number (above 255) travels in the `RTA_TABLE` attribute.
const RT_TABLE_UNSPEC: u8 = 0;

/// The prefix length that makes `ip` a single-host destination.
fn host_len(ip: IpAddr) -> u8 {
    if ip.is_ipv4() { 32 } else { 128 }
}

fn family(ip: IpAddr) -> AddressFamily {
    if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

/// The 8-bit header field for `table`: the number itself when it fits, else "see RTA_TABLE",
/// as iproute2 does.
fn header_table(table: u32) -> u8 {
    u8::try_from(table).unwrap_or(RT_TABLE_UNSPEC)
}

/// `ip rule add to <ip>/32 lookup <table> priority <priority> proto 66` (or /128).
pub fn rule_message(ip: IpAddr, cfg: &RoutesConfig) -> RuleMessage {
    let mut m = RuleMessage::default();
    m.header.family = family(ip);
    m.header.dst_len = host_len(ip);
    m.header.table = header_table(cfg.table);
    m.header.action = RuleAction::ToTable;
    m.attributes = vec![
        RuleAttribute::Destination(ip),
        RuleAttribute::Table(cfg.table),
        RuleAttribute::Priority(cfg.priority),
        RuleAttribute::Protocol(RouteProtocol::from(BERTH_PROTOCOL)),
    ];
    m
}

/// The kernel's `local` table.
pub const LOCAL_TABLE: u32 = 255;

/// Where `ip`'s local route lives: IPv4 in the kernel's `local` table (a host socket can send
/// from an IPv4 address only if it is there: `__ip_dev_find`), IPv6 in Berth's table behind a
/// rule (IPv6 has no such check).
pub fn route_table(ip: IpAddr, cfg: &RoutesConfig) -> u32 {
    if ip.is_ipv4() { LOCAL_TABLE } else { cfg.table }
}

/// Whether `ip` needs a `to <ip> lookup <table>` rule (IPv6 only, see [`route_table`]).
pub fn needs_rule(ip: IpAddr) -> bool {
    ip.is_ipv6()
}

/// `ip route add local <ip> dev lo table <table> proto 66`: type local (deliver to this host),
/// scope host, like the kernel's own entries in table `local`; the table is [`route_table`].
pub fn route_message(ip: IpAddr, cfg: &RoutesConfig) -> RouteMessage {
    let table = route_table(ip, cfg);
    let mut m = RouteMessage::default();
    m.header.address_family = family(ip);
    m.header.destination_prefix_length = host_len(ip);
    m.header.table = header_table(table);
    m.header.protocol = RouteProtocol::from(BERTH_PROTOCOL);
    m.header.scope = RouteScope::Host;
    m.header.kind = RouteType::Local;
    m.attributes = vec![
        RouteAttribute::Destination(RouteAddress::from(ip)),
        RouteAttribute::Table(table),
        RouteAttribute::Oif(LOOPBACK_IFINDEX),
    ];
    m
}

/// How an entry from a kernel dump relates to Berth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ownership {
    /// Not Berth's (another protocol): never touched.
    Foreign,
    /// Berth's, exactly as the current configuration would create it, for this IP.
    Current(IpAddr),
    /// Berth's, but not in the current shape (another table or priority from an earlier
    /// configuration, or not a single-host entry): always removed.
    Stale,
}

/// Classifies a rule from `ip rule` dump.
pub fn classify_rule(m: &RuleMessage, cfg: &RoutesConfig) -> Ownership {
    let mut protocol = None;
    let mut table = u32::from(m.header.table);
    let mut priority = 0;
    let mut dst = None;
    let mut extra_selector = false;
    for a in &m.attributes {
        match a {
            RuleAttribute::Protocol(p) => protocol = Some(u8::from(*p)),
            RuleAttribute::Table(t) => table = *t,
            RuleAttribute::Priority(p) => priority = *p,
            RuleAttribute::Destination(ip) => dst = Some(*ip),
            RuleAttribute::Source(_)
            | RuleAttribute::Iifname(_)
            | RuleAttribute::Oifname(_)
            | RuleAttribute::FwMark(_)
            | RuleAttribute::IpProtocol(_)
            | RuleAttribute::SourcePortRange(_)
            | RuleAttribute::DestinationPortRange(_)
            | RuleAttribute::UidRange(_) => extra_selector = true,
            _ => {}
        }
    }
    if protocol != Some(BERTH_PROTOCOL) {
        return Ownership::Foreign;
    }
    match dst {
        Some(ip)
            if needs_rule(ip)
                && m.header.action == RuleAction::ToTable
                && m.header.family == family(ip)
                && m.header.dst_len == host_len(ip)
                && m.header.src_len == 0
                && m.header.tos == 0
                && !extra_selector
                && table == cfg.table
                && priority == cfg.priority =>
        {
            Ownership::Current(ip)
        }
        _ => Ownership::Stale,
    }
}

/// Classifies a route from an `ip route show table all` dump.
pub fn classify_route(m: &RouteMessage, cfg: &RoutesConfig) -> Ownership {
    if u8::from(m.header.protocol) != BERTH_PROTOCOL {
        return Ownership::Foreign;
    }
    let mut table = u32::from(m.header.table);
    let mut dst = None;
    let mut oif = None;
    for a in &m.attributes {
        match a {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(RouteAddress::Inet(ip)) => dst = Some(IpAddr::V4(*ip)),
            RouteAttribute::Destination(RouteAddress::Inet6(ip)) => dst = Some(IpAddr::V6(*ip)),
            RouteAttribute::Oif(i) => oif = Some(*i),
            _ => {}
        }
    }
    match dst {
        Some(ip)
            if m.header.kind == RouteType::Local
                && m.header.address_family == family(ip)
                && m.header.destination_prefix_length == host_len(ip)
                && m.header.source_prefix_length == 0
                && m.header.tos == 0
                && oif == Some(LOOPBACK_IFINDEX)
                && table == route_table(ip, cfg) =>
        {
            Ownership::Current(ip)
        }
        _ => Ownership::Stale,
    }
}

/// The destination of a Berth entry that is being removed, for reporting.
pub fn rule_destination(m: &RuleMessage) -> Option<IpAddr> {
    m.attributes.iter().find_map(|a| match a {
        RuleAttribute::Destination(ip) => Some(*ip),
        _ => None,
    })
}

/// The destination of a Berth route that is being removed, for reporting.
pub fn route_destination(m: &RouteMessage) -> Option<IpAddr> {
    m.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(ip)) => Some(IpAddr::V4(*ip)),
        RouteAttribute::Destination(RouteAddress::Inet6(ip)) => Some(IpAddr::V6(*ip)),
        _ => None,
    })
}

/// A dumped route reduced to what identifies it, so it can be sent back as a delete request
/// (read-only attributes such as cache info have no business in a request).
pub fn route_delete_message(m: &RouteMessage) -> RouteMessage {
    let mut d = RouteMessage::default();
    d.header = m.header.clone();
    d.attributes = m
        .attributes
        .iter()
        .filter(|a| {
            matches!(
                a,
                RouteAttribute::Destination(_)
                    | RouteAttribute::Source(_)
                    | RouteAttribute::Table(_)
                    | RouteAttribute::Oif(_)
                    | RouteAttribute::Priority(_)
                    | RouteAttribute::Gateway(_)
            )
        })
        .cloned()
        .collect();
    d
}

/// A request to dump the routes of one family, all tables. With strict checking the kernel
/// returns only Berth's protocol; without, it ignores the filter and sends everything, which
/// [`classify_route`] sorts out.
pub fn route_dump_message(family: AddressFamily) -> RouteMessage {
    let mut m = RouteMessage::default();
    m.header.address_family = family;
    m.header.table = RouteHeader::RT_TABLE_UNSPEC;
    m.header.protocol = RouteProtocol::from(BERTH_PROTOCOL);
    m
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const CFG: RoutesConfig = RoutesConfig {
        table: 2430,
        priority: 1000,
    };

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn what_berth_creates_it_recognises_as_current() {
        for a in [ip("192.0.2.1"), ip("2001:db8::1")] {
            assert_eq!(
                classify_route(&route_message(a, &CFG), &CFG),
                Ownership::Current(a)
            );
        }
        let a = ip("2001:db8::1");
        assert_eq!(
            classify_rule(&rule_message(a, &CFG), &CFG),
            Ownership::Current(a)
        );
        // IPv4 needs no rule: one found is a leftover of an earlier build.
        let v4 = ip("192.0.2.1");
        assert_eq!(
            classify_rule(&rule_message(v4, &CFG), &CFG),
            Ownership::Stale
        );
    }

    #[test]
    fn ipv4_routes_live_in_table_local_and_ipv6_in_berths_table() {
        let m = route_message(ip("192.0.2.1"), &CFG);
        assert_eq!(m.header.table, 255);
        assert!(m.attributes.contains(&RouteAttribute::Table(LOCAL_TABLE)));
        let m = route_message(ip("2001:db8::1"), &CFG);
        assert!(m.attributes.contains(&RouteAttribute::Table(2430)));
    }

    #[test]
    fn big_table_numbers_travel_in_the_attribute() {
        let m = route_message(ip("2001:db8::1"), &CFG);
        assert_eq!(m.header.table, 0);
        assert!(m.attributes.contains(&RouteAttribute::Table(2430)));
        let small = RoutesConfig {
            table: 100,
            priority: 1000,
        };
        assert_eq!(route_message(ip("2001:db8::1"), &small).header.table, 100);
        assert_eq!(rule_message(ip("2001:db8::1"), &small).header.table, 100);
    }

    #[test]
    fn other_protocols_are_foreign_even_in_berths_table() {
        let mut r = rule_message(ip("192.0.2.1"), &CFG);
        for a in &mut r.attributes {
            if let RuleAttribute::Protocol(p) = a {
                *p = RouteProtocol::Static;
            }
        }
        assert_eq!(classify_rule(&r, &CFG), Ownership::Foreign);
        // A rule without any protocol (older `ip rule add`) is not Berth's either.
        r.attributes
            .retain(|a| !matches!(a, RuleAttribute::Protocol(_)));
        assert_eq!(classify_rule(&r, &CFG), Ownership::Foreign);

        let mut t = route_message(ip("192.0.2.1"), &CFG);
        t.header.protocol = RouteProtocol::Boot;
        assert_eq!(classify_route(&t, &CFG), Ownership::Foreign);
    }

    #[test]
    fn berth_entries_from_another_configuration_are_stale() {
        let old = RoutesConfig {
            table: 2431,
            priority: 999,
        };
        let a = ip("2001:db8::1");
        assert_eq!(
            classify_rule(&rule_message(a, &old), &CFG),
            Ownership::Stale
        );
        assert_eq!(
            classify_route(&route_message(a, &old), &CFG),
            Ownership::Stale
        );
        let mut wide = route_message(a, &CFG);
        wide.header.destination_prefix_length = 24;
        assert_eq!(classify_route(&wide, &CFG), Ownership::Stale);
        let mut unicast = route_message(a, &CFG);
        unicast.header.kind = RouteType::Unicast;
        assert_eq!(classify_route(&unicast, &CFG), Ownership::Stale);
        let mut with_iif = rule_message(a, &CFG);
        with_iif
            .attributes
            .push(RuleAttribute::Iifname("eth0".into()));
        assert_eq!(classify_rule(&with_iif, &CFG), Ownership::Stale);
    }

    #[test]
    fn delete_message_keeps_identity_and_drops_read_only_attributes() {
        let mut m = route_message(ip("2001:db8::1"), &CFG);
        m.attributes.push(RouteAttribute::Priority(1024));
        m.attributes.push(RouteAttribute::Mark(7));
        let d = route_delete_message(&m);
        assert_eq!(d.header, m.header);
        assert!(d.attributes.contains(&RouteAttribute::Priority(1024)));
        assert!(!d.attributes.contains(&RouteAttribute::Mark(7)));
        assert_eq!(route_destination(&d), Some(ip("2001:db8::1")));
    }
}
