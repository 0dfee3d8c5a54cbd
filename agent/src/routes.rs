//! Local routes: make this node accept traffic for the Service IPs (EIPs) delivered here,
//! without putting the IPs on an interface.
//!
//! For each wanted IP Berth keeps, through rtnetlink (no `ip` commands):
//!
//! ```text
//! IPv4: ip route add local <ip> dev lo table local proto 66
//! IPv6: ip -6 rule add to <ip>/128 lookup <table> priority <priority> proto 66
//!       ip -6 route add local <ip> dev lo table <table> proto 66
//! ```
//!
//! The `local` route makes the kernel deliver packets for the IP to this host (INPUT /
//! LOCAL_IN, where IPVS, nftables or a local socket bound to the wildcard address take them).
//! IPv6 routes live in a Berth-owned table behind a rule, as designed. IPv4 routes cannot: a
//! host socket may send from an IPv4 address only if it is on an interface or in table
//! `local` (`__ip_dev_find`), so with the route in Berth's table a listener on `0.0.0.0`
//! receives the SYN but its SYN-ACK is dropped (measured with two namespaces and a veth).
//!
//! ARP: the kernel answers ARP requests for any address its input route lookup finds local,
//! policy rules included (`arp_process` uses `ip_route_input`; measured: a custom-table local
//! route is answered exactly like a table-`local` one). A separate table therefore does not
//! keep the kernel quiet, and the agent installs a Layer2 IP's route only on the node that
//! owns the IP. NDP is different: the kernel answers Neighbor Solicitations only for
//! addresses on an interface, so IPv6 Layer2 IPs are answered by Berth's responder alone.
//!
//! Everything Berth creates carries protocol 66 ([`BERTH_PROTOCOL`]); that is how Berth
//! recognises its entries, and the only entries it ever deletes. Reconciling reads the
//! kernel's rules and routes each time, so leftovers of a previous run (a crash, a changed
//! `--route-table` or `--rule-priority`) are removed by the first reconcile, and
//! [`LocalRoutes::remove_all`] leaves nothing of Berth's on clean shutdown.

mod kernel;
mod plan;

pub use kernel::BERTH_PROTOCOL;
pub use plan::{Plan, plan};

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;

use futures::TryStreamExt;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::route::RouteMessage;
use rtnetlink::packet_route::rule::RuleMessage;
use rtnetlink::{Handle, IpVersion};

use kernel::Ownership;

/// Default routing table for Berth's local routes (`--route-table`): unused by common
/// distributions and CNIs (which use 1-255 or their own well-known numbers).
pub const DEFAULT_TABLE: u32 = 2430;

/// Default priority of Berth's rules (`--rule-priority`): after the kernel's `local` table
/// rule (0), before `main` (32766) so a default route cannot send the traffic away.
pub const DEFAULT_PRIORITY: u32 = 1000;

/// Where Berth puts its rules and routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoutesConfig {
    /// Routing table holding the `local` routes (1-251 or 256 and up; the kernel's own
    /// tables 0 and 252-255 are refused).
    pub table: u32,
    /// Priority of the `to <ip> lookup <table>` rules, 1-32765 (before table `main`).
    pub priority: u32,
}

impl Default for RoutesConfig {
    fn default() -> Self {
        Self {
            table: DEFAULT_TABLE,
            priority: DEFAULT_PRIORITY,
        }
    }
}

impl RoutesConfig {
    /// Refuses tables and priorities that would mix Berth's entries with the kernel's own or
    /// let table `main` see the traffic first.
    pub fn validate(&self) -> Result<(), RoutesError> {
        if self.table == 0 || (252..=255).contains(&self.table) {
            return Err(RoutesError::Config(format!(
                "route table {} is reserved by the kernel (0 unspec, 252 compat, 253 default, \
                 254 main, 255 local); choose another --route-table, e.g. {DEFAULT_TABLE}",
                self.table
            )));
        }
        if self.priority == 0 || self.priority >= 32766 {
            return Err(RoutesError::Config(format!(
                "rule priority {} must be between 1 and 32765 (after the `local` rule at 0, \
                 before `main` at 32766); choose another --rule-priority, e.g. \
                 {DEFAULT_PRIORITY}",
                self.priority
            )));
        }
        Ok(())
    }
}

/// What a reconcile changed, for logs and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// IPs that got a rule or route (now delivered on this node).
    pub added: Vec<IpAddr>,
    /// IPs whose Berth rule or route was removed (no longer delivered here).
    pub removed: Vec<IpAddr>,
}

impl Changes {
    /// True when the kernel was already as wanted.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }
}

/// One netlink request that failed.
#[derive(Debug)]
pub struct Failure {
    /// What was being done, e.g. "add rule for 192.0.2.1".
    pub what: String,
    /// The kernel's (or the netlink library's) answer.
    pub source: rtnetlink::Error,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}{}", self.what, self.source, hint(&self.source))
    }
}

/// Errors from programming local routes.
#[derive(Debug, thiserror::Error)]
pub enum RoutesError {
    /// The table or priority is unusable.
    #[error("{0}")]
    Config(String),
    /// The netlink socket could not be opened.
    #[error("cannot open a netlink socket for local routes: {0}")]
    Connect(#[source] std::io::Error),
    /// Reading the kernel's rules or routes failed.
    #[error("cannot read the kernel's {what}: {source}{hint}", hint = hint(source))]
    Dump {
        /// "IPv4 rules", "IPv6 routes", ...
        what: &'static str,
        /// The netlink error.
        #[source]
        source: rtnetlink::Error,
    },
    /// Some changes were not applied (the others were); the next reconcile retries them.
    #[error(
        "{} local route change(s) failed (the next reconcile retries): {}",
        failures.len(),
        failures.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
    )]
    Apply {
        /// Each failed request.
        failures: Vec<Failure>,
        /// The changes attempted; those named in `failures` did not happen.
        applied: Changes,
    },
}

/// What the operator can do about the common netlink errors.
fn hint(e: &rtnetlink::Error) -> &'static str {
    match errno(e) {
        Some(EPERM) => {
            " (berth-agent needs CAP_NET_ADMIN in the host network namespace: run it as root \
             or with that capability, and hostNetwork: true)"
        }
        Some(EAFNOSUPPORT) => " (is IPv6 disabled on this node?)",
        _ => "",
    }
}

const EPERM: i32 = 1;
const ENOENT: i32 = 2;
const ESRCH: i32 = 3;
const EEXIST: i32 = 17;
const EAFNOSUPPORT: i32 = 97;

/// The positive errno of a kernel refusal, if that is what `e` is.
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(m.raw_code().abs()),
        _ => None,
    }
}

/// What the kernel holds of Berth's, from one dump.
#[derive(Debug, Default)]
struct Observed {
    /// Destinations of rules in the current shape.
    rules: BTreeSet<IpAddr>,
    /// Destinations of routes in the current shape.
    routes: BTreeSet<IpAddr>,
    /// Berth rules in any other shape (or duplicates): removed.
    stale_rules: Vec<RuleMessage>,
    /// Berth routes in any other shape (or duplicates): removed.
    stale_routes: Vec<RouteMessage>,
}

/// Berth's local rules and routes on this node, reconciled through an rtnetlink connection.
pub struct LocalRoutes {
    cfg: RoutesConfig,
    handle: Handle,
    connection: tokio::task::JoinHandle<()>,
}

impl fmt::Debug for LocalRoutes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalRoutes")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl Drop for LocalRoutes {
    fn drop(&mut self) {
        // The connection task only serves this handle.
        self.connection.abort();
    }
}

impl LocalRoutes {
    /// Opens a netlink socket in the caller's network namespace and spawns its connection
    /// task on the current tokio runtime. Changes nothing in the kernel.
    pub async fn connect(cfg: RoutesConfig) -> Result<Self, RoutesError> {
        cfg.validate()?;
        // Strict checking lets the kernel (4.20 and later) filter route dumps by protocol, so
        // a node with a large routing table (a full BGP feed) does not send all of it on each
        // reconcile. Older kernels refuse the option: plain dumps, filtered here, still work.
        let (connection, handle, _) = match rtnetlink::new_connection_with_strict_check() {
            Ok(c) => c,
            Err(_) => rtnetlink::new_connection().map_err(RoutesError::Connect)?,
        };
        let connection = tokio::spawn(connection);
        Ok(Self {
            cfg,
            handle,
            connection,
        })
    }

    /// The table and priority in use.
    pub fn config(&self) -> RoutesConfig {
        self.cfg
    }

    /// Makes the kernel hold exactly one rule and one route for each IP in `wanted`, and
    /// nothing else of Berth's: reads Berth's entries from the kernel, removes stale ones
    /// (leftovers of another configuration), then applies [`plan`]. Idempotent; the first
    /// call after start also removes what a previous run left behind.
    ///
    /// A failed request does not stop the others; they are reported together in
    /// [`RoutesError::Apply`] and the next call retries them.
    pub async fn reconcile(&mut self, wanted: &BTreeSet<IpAddr>) -> Result<Changes, RoutesError> {
        let observed = self.observe().await?;
        let plan = plan(&observed.rules, &observed.routes, wanted);
        let mut failures = Vec::new();
        let mut removed: BTreeSet<IpAddr> = plan.removed().into_iter().collect();
        removed.extend(self.remove_stale(&observed, &mut failures).await);
        removed.retain(|ip| !wanted.contains(ip));

        for &ip in &plan.add_routes {
            let req = self
                .handle
                .route()
                .add(kernel::route_message(ip, &self.cfg));
            ok_if(
                req.execute().await,
                EEXIST,
                format!("add route for {ip}"),
                &mut failures,
            );
        }
        for &ip in &plan.add_rules {
            let mut req = self.handle.rule().add();
            *req.message_mut() = kernel::rule_message(ip, &self.cfg);
            ok_if(
                req.execute().await,
                EEXIST,
                format!("add rule for {ip}"),
                &mut failures,
            );
        }
        for &ip in &plan.remove_rules {
            self.delete_rule(kernel::rule_message(ip, &self.cfg), ip, &mut failures)
                .await;
        }
        for &ip in &plan.remove_routes {
            self.delete_route(kernel::route_message(ip, &self.cfg), ip, &mut failures)
                .await;
        }

        let changes = Changes {
            added: plan.added(),
            removed: removed.into_iter().collect(),
        };
        if failures.is_empty() {
            Ok(changes)
        } else {
            Err(RoutesError::Apply {
                failures,
                applied: changes,
            })
        }
    }

    /// Removes every rule and route of Berth's (any table or priority): for clean shutdown,
    /// or to start from nothing.
    pub async fn remove_all(&mut self) -> Result<Changes, RoutesError> {
        self.reconcile(&BTreeSet::new()).await
    }

    /// Dumps rules and routes of both families and keeps Berth's.
    async fn observe(&self) -> Result<Observed, RoutesError> {
        let mut o = Observed::default();
        for (version, family, rules_what, routes_what) in [
            (
                IpVersion::V4,
                AddressFamily::Inet,
                "IPv4 rules",
                "IPv4 routes",
            ),
            (
                IpVersion::V6,
                AddressFamily::Inet6,
                "IPv6 rules",
                "IPv6 routes",
            ),
        ] {
            let rules: Vec<RuleMessage> = match self
                .handle
                .rule()
                .get(version)
                .execute()
                .try_collect()
                .await
            {
                Ok(r) => r,
                // A kernel without IPv6 has no IPv6 rules to own.
                Err(e) if family == AddressFamily::Inet6 && errno(&e) == Some(EAFNOSUPPORT) => {
                    Vec::new()
                }
                Err(source) => {
                    return Err(RoutesError::Dump {
                        what: rules_what,
                        source,
                    });
                }
            };
            for r in rules.into_iter().filter(|r| r.header.family == family) {
                match kernel::classify_rule(&r, &self.cfg) {
                    Ownership::Foreign => {}
                    // A second rule for the same IP (from another priority is already
                    // stale) can only be a duplicate: remove it.
                    Ownership::Current(ip) if o.rules.insert(ip) => {}
                    Ownership::Current(_) | Ownership::Stale => o.stale_rules.push(r),
                }
            }
            let routes: Vec<RouteMessage> = match self
                .handle
                .route()
                .get(kernel::route_dump_message(family))
                .execute()
                .try_collect()
                .await
            {
                Ok(r) => r,
                Err(e) if family == AddressFamily::Inet6 && errno(&e) == Some(EAFNOSUPPORT) => {
                    Vec::new()
                }
                Err(source) => {
                    return Err(RoutesError::Dump {
                        what: routes_what,
                        source,
                    });
                }
            };
            // Without IPv6 the kernel may answer an IPv6 dump with every family's routes.
            for r in routes
                .into_iter()
                .filter(|r| r.header.address_family == family)
            {
                match kernel::classify_route(&r, &self.cfg) {
                    Ownership::Foreign => {}
                    Ownership::Current(ip) if o.routes.insert(ip) => {}
                    Ownership::Current(_) | Ownership::Stale => o.stale_routes.push(r),
                }
            }
        }
        Ok(o)
    }

    /// Deletes Berth entries not in the current shape, rules first; returns their IPs.
    async fn remove_stale(&self, o: &Observed, failures: &mut Vec<Failure>) -> Vec<IpAddr> {
        let mut removed = Vec::new();
        for r in &o.stale_rules {
            let ip = kernel::rule_destination(r);
            let what = format!("remove stale rule {}", describe(ip));
            let before = failures.len();
            ok_if(
                self.handle.rule().del(r.clone()).execute().await,
                ENOENT,
                what,
                failures,
            );
            if failures.len() == before {
                removed.extend(ip);
            }
        }
        for r in &o.stale_routes {
            let ip = kernel::route_destination(r);
            let what = format!("remove stale route {}", describe(ip));
            let before = failures.len();
            let res = self
                .handle
                .route()
                .del(kernel::route_delete_message(r))
                .execute()
                .await;
            ok_if(not_found_ok(res), 0, what, failures);
            if failures.len() == before {
                removed.extend(ip);
            }
        }
        removed
    }

    async fn delete_rule(&self, m: RuleMessage, ip: IpAddr, failures: &mut Vec<Failure>) {
        let res = self.handle.rule().del(m).execute().await;
        ok_if(res, ENOENT, format!("remove rule for {ip}"), failures);
    }

    async fn delete_route(&self, m: RouteMessage, ip: IpAddr, failures: &mut Vec<Failure>) {
        let res = self.handle.route().del(m).execute().await;
        ok_if(
            not_found_ok(res),
            0,
            format!("remove route for {ip}"),
            failures,
        );
    }
}

/// A route that is already gone (ESRCH from IPv4, ENOENT from IPv6) is what was wanted.
fn not_found_ok(res: Result<(), rtnetlink::Error>) -> Result<(), rtnetlink::Error> {
    match res {
        Err(e) if matches!(errno(&e), Some(ESRCH | ENOENT)) => Ok(()),
        other => other,
    }
}

/// Records a failure unless the request succeeded or failed with `benign` (e.g. EEXIST when
/// adding: someone, or an earlier half-finished call, already did it).
fn ok_if(
    res: Result<(), rtnetlink::Error>,
    benign: i32,
    what: String,
    failures: &mut Vec<Failure>,
) {
    match res {
        Ok(()) => {}
        Err(e) if benign != 0 && errno(&e) == Some(benign) => {}
        Err(source) => failures.push(Failure { what, source }),
    }
}

fn describe(ip: Option<IpAddr>) -> String {
    ip.map_or_else(
        || "without destination".to_owned(),
        |ip| format!("for {ip}"),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn kernel_tables_and_late_priorities_are_refused_with_advice() {
        for table in [0, 252, 253, 254, 255] {
            let e = RoutesConfig {
                table,
                priority: 1000,
            }
            .validate()
            .unwrap_err();
            assert!(e.to_string().contains("--route-table"), "{e}");
        }
        for priority in [0, 32766, 40000] {
            let e = RoutesConfig {
                table: 2430,
                priority,
            }
            .validate()
            .unwrap_err();
            assert!(e.to_string().contains("--rule-priority"), "{e}");
        }
        assert!(RoutesConfig::default().validate().is_ok());
        assert!(
            RoutesConfig {
                table: 100,
                priority: 1
            }
            .validate()
            .is_ok()
        );
    }

    fn kernel_error(errno: i32) -> rtnetlink::Error {
        let mut m = rtnetlink::packet_core::ErrorMessage::default();
        m.code = std::num::NonZeroI32::new(-errno);
        rtnetlink::Error::NetlinkError(m)
    }

    #[test]
    fn permission_errors_say_which_capability_is_missing() {
        let e = RoutesError::Apply {
            failures: vec![
                Failure {
                    what: "add route for 192.0.2.1".into(),
                    source: kernel_error(EPERM),
                },
                Failure {
                    what: "add rule for 192.0.2.1".into(),
                    source: kernel_error(EPERM),
                },
            ],
            applied: Changes::default(),
        };
        let text = e.to_string();
        assert!(text.starts_with("2 local route change(s) failed"), "{text}");
        assert!(text.contains("add route for 192.0.2.1: "), "{text}");
        assert!(text.contains("add rule for 192.0.2.1: "), "{text}");
        assert!(text.contains("CAP_NET_ADMIN"), "{text}");
    }

    #[test]
    fn already_done_is_success_and_other_errors_are_kept() {
        let mut failures = Vec::new();
        ok_if(
            Err(kernel_error(EEXIST)),
            EEXIST,
            "add".into(),
            &mut failures,
        );
        ok_if(
            not_found_ok(Err(kernel_error(ESRCH))),
            0,
            "del v4".into(),
            &mut failures,
        );
        ok_if(
            not_found_ok(Err(kernel_error(ENOENT))),
            0,
            "del v6".into(),
            &mut failures,
        );
        assert!(failures.is_empty());
        ok_if(
            Err(kernel_error(EPERM)),
            EEXIST,
            "add".into(),
            &mut failures,
        );
        ok_if(
            not_found_ok(Err(kernel_error(EEXIST))),
            0,
            "del".into(),
            &mut failures,
        );
        assert_eq!(failures.len(), 2);
    }
}
