//! From the desired state and the live nodes to what this node does: which Layer2 IPs it
//! answers for, on which interface, and which IPs it accepts traffic for.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use crate::desired::Desired;
use crate::owner;

/// The elected owner of one Layer2 IP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Election {
    /// The Service it belongs to.
    pub service: String,
    /// The interface spec it is answered on.
    pub interface: String,
    /// Its owner; `None` when no candidate is alive.
    pub owner: Option<String>,
}

/// What this node does for one state of (desired, alive).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Every Layer2 IP's election (for logs, metrics and Events).
    pub elections: BTreeMap<IpAddr, Election>,
    /// The IPs this node answers for, by interface spec; every interface where this node is
    /// a candidate is present, possibly with no IP, so its announcer is ready before a takeover.
    pub answer: BTreeMap<String, BTreeSet<IpAddr>>,
    /// The IPs this node accepts traffic for: `local_ips` and the Layer2 IPs it owns.
    pub local: BTreeSet<IpAddr>,
}

/// By node name, the interface specs it cannot answer on now (see `layer2::link`).
pub type Unable = BTreeMap<String, BTreeSet<String>>;

/// Computes the plan of node `me`. An IP listed by two Services is elected once, with the
/// first Service's candidates and interface (the operator never hands one IP to two). A
/// candidate that cannot answer on the Service's interface (`unable`) is left out of its
/// election, as if it were dead, but keeps its announcer ready there for when it can again.
pub fn plan(me: &str, desired: &Desired, alive: &BTreeSet<String>, unable: &Unable) -> Plan {
    let mut p = Plan {
        local: desired.local_ips.clone(),
        ..Plan::default()
    };
    for s in &desired.layer2 {
        if s.candidates.contains(me) {
            p.answer.entry(s.interface.clone()).or_default();
        }
        let able: BTreeSet<String> = s
            .candidates
            .iter()
            .filter(|c| !unable.get(*c).is_some_and(|u| u.contains(&s.interface)))
            .cloned()
            .collect();
        for ip in &s.ips {
            if p.elections.contains_key(ip) {
                continue;
            }
            let elected = owner::owner(*ip, &able, alive).map(str::to_owned);
            if elected.as_deref() == Some(me) {
                p.answer.entry(s.interface.clone()).or_default().insert(*ip);
                p.local.insert(*ip);
            }
            p.elections.insert(
                *ip,
                Election {
                    service: s.service.clone(),
                    interface: s.interface.clone(),
                    owner: elected,
                },
            );
        }
    }
    p
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::desired::Layer2Service;

    fn names(n: &[&str]) -> BTreeSet<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    fn desired() -> Desired {
        Desired {
            local_ips: ["198.51.100.10".parse().unwrap()].into(),
            layer2: vec![Layer2Service {
                service: "default/web".into(),
                ips: vec![
                    "192.168.1.240".parse().unwrap(),
                    "fd00::240".parse().unwrap(),
                ],
                interface: "eth0".into(),
                candidates: names(&["n1", "n2", "n3"]),
            }],
        }
    }

    #[test]
    fn exactly_one_node_answers_each_ip_and_accepts_it() {
        let d = desired();
        let alive = names(&["n1", "n2", "n3"]);
        let plans: Vec<Plan> = ["n1", "n2", "n3"]
            .iter()
            .map(|n| plan(n, &d, &alive, &Unable::new()))
            .collect();
        for ip in &d.layer2[0].ips {
            let answering: Vec<usize> = (0..3)
                .filter(|i| plans[*i].answer["eth0"].contains(ip))
                .collect();
            assert_eq!(answering.len(), 1, "{ip}: {answering:?}");
            let i = answering[0];
            assert!(plans[i].local.contains(ip));
            assert_eq!(
                plans[i].elections[ip].owner.as_deref(),
                Some(["n1", "n2", "n3"][i])
            );
            // Every agent elects the same owner.
            assert!(
                plans
                    .iter()
                    .all(|p| p.elections[ip] == plans[0].elections[ip])
            );
        }
        for p in &plans {
            assert!(p.local.contains(&"198.51.100.10".parse().unwrap()));
            assert!(
                p.answer.contains_key("eth0"),
                "announcer ready on every candidate"
            );
        }
    }

    #[test]
    fn a_dead_owner_hands_over_and_non_candidates_never_answer() {
        let d = desired();
        let ip: IpAddr = "192.168.1.240".parse().unwrap();
        let all = names(&["n1", "n2", "n3", "n4"]);
        let none = Unable::new();
        let first = plan("n1", &d, &all, &none).elections[&ip]
            .owner
            .clone()
            .unwrap();
        let mut alive = all.clone();
        alive.remove(&first);
        let second = plan("n1", &d, &alive, &none).elections[&ip]
            .owner
            .clone()
            .unwrap();
        assert_ne!(first, second);
        let p = plan(&second, &d, &alive, &none);
        assert!(p.answer["eth0"].contains(&ip));
        let outsider = plan("n4", &d, &all, &none);
        assert!(outsider.answer.is_empty());
        assert!(!outsider.local.contains(&ip));
        assert_eq!(
            plan("n1", &d, &names(&[]), &none).elections[&ip].owner,
            None
        );
    }

    #[test]
    fn a_node_that_cannot_answer_on_the_interface_is_left_out_until_it_can() {
        let d = desired();
        let alive = names(&["n1", "n2", "n3"]);
        let none = Unable::new();
        for ip in d.layer2[0].ips.clone() {
            let owner = plan("n1", &d, &alive, &none).elections[&ip]
                .owner
                .clone()
                .unwrap();
            let unable = Unable::from([(owner.clone(), BTreeSet::from(["eth0".to_owned()]))]);
            // Every node, the unable owner included, elects another one.
            let next: BTreeSet<Option<String>> = ["n1", "n2", "n3"]
                .iter()
                .map(|n| plan(n, &d, &alive, &unable).elections[&ip].owner.clone())
                .collect();
            assert_eq!(next.len(), 1, "{ip}: the nodes disagree: {next:?}");
            let next = next.into_iter().next().flatten().unwrap();
            assert_ne!(next, owner);
            // The same as if the owner were dead.
            let mut without = alive.clone();
            without.remove(&owner);
            assert_eq!(
                plan("n1", &d, &without, &none).elections[&ip].owner,
                Some(next.clone())
            );
            let p = plan(&owner, &d, &alive, &unable);
            assert!(!p.answer["eth0"].contains(&ip) && !p.local.contains(&ip));
            assert!(p.answer.contains_key("eth0"), "announcer kept ready");
            // Unable on another interface only: nothing changes here.
            let elsewhere = Unable::from([(owner.clone(), BTreeSet::from(["eth1".to_owned()]))]);
            assert_eq!(
                plan("n1", &d, &alive, &elsewhere).elections[&ip].owner,
                Some(owner)
            );
        }
    }
}
