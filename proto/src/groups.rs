//! Next-hop groups (`NextHopGroup`): which next-hop lists a message names once instead of
//! repeating them per route, and routes with their groups written out again.
//!
//! Both ends group by the same rule so that equal states are equal messages: a list of two or
//! more next hops that at least two routes of the message share becomes a group, named `nh1`,
//! `nh2`, … in the order of the first route that uses it. A list of one next hop is shorter
//! inline than a reference to it.

use std::collections::BTreeMap;

use crate::v1;

/// The names of the keys that occur at least twice in `keys`, `nh1`, `nh2`, … in the order
/// each first occurs. The caller leaves out lists of fewer than two next hops.
pub fn shared<K: Ord>(keys: impl IntoIterator<Item = K>) -> BTreeMap<K, String> {
    let mut seen: BTreeMap<K, (usize, usize)> = BTreeMap::new();
    for (i, k) in keys.into_iter().enumerate() {
        seen.entry(k).or_insert((i, 0)).1 += 1;
    }
    let mut firsts: Vec<(usize, K)> = seen
        .into_iter()
        .filter(|(_, (_, count))| *count >= 2)
        .map(|(k, (first, _))| (first, k))
        .collect();
    firsts.sort_by_key(|(first, _)| *first);
    firsts
        .into_iter()
        .enumerate()
        .map(|(n, (_, k))| (k, format!("nh{}", n + 1)))
        .collect()
}

/// Routes that share a list of two or more next hops name a group instead (the message's
/// `next_hop_groups`, returned); the others keep their next hops inline.
pub fn share(routes: &mut [v1::Route]) -> Vec<v1::NextHopGroup> {
    let key = |r: &v1::Route| -> Option<Vec<(String, u32)>> {
        (r.next_hop_group.is_empty() && r.next_hops.len() >= 2).then(|| {
            r.next_hops
                .iter()
                .map(|h| (h.address.clone(), h.weight))
                .collect()
        })
    };
    let names = shared(routes.iter().filter_map(key));
    let mut groups: Vec<v1::NextHopGroup> = Vec::with_capacity(names.len());
    let mut defined = std::collections::BTreeSet::new();
    for r in routes.iter_mut() {
        let Some(name) = key(r).and_then(|k| names.get(&k)) else {
            continue;
        };
        let next_hops = std::mem::take(&mut r.next_hops);
        if defined.insert(name.as_str()) {
            groups.push(v1::NextHopGroup {
                name: name.clone(),
                next_hops,
            });
        }
        r.next_hop_group = name.clone();
    }
    groups
}

/// Every route's next hops written out: a route naming a group gets a copy of the group's
/// next hops and no name. A name `groups` lacks is an error naming the route.
pub fn resolve(routes: &mut [v1::Route], groups: &[v1::NextHopGroup]) -> Result<(), String> {
    let by_name: BTreeMap<&str, &v1::NextHopGroup> =
        groups.iter().map(|g| (g.name.as_str(), g)).collect();
    for r in routes.iter_mut().filter(|r| !r.next_hop_group.is_empty()) {
        let g = by_name.get(r.next_hop_group.as_str()).ok_or_else(|| {
            format!(
                "route {} names next-hop group {:?}, which the message does not define",
                r.prefix, r.next_hop_group
            )
        })?;
        r.next_hops = g.next_hops.clone();
        r.next_hop_group.clear();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(prefix: &str, hops: &[&str]) -> v1::Route {
        v1::Route {
            prefix: prefix.into(),
            next_hops: hops
                .iter()
                .map(|a| v1::NextHop {
                    address: (*a).into(),
                    weight: 0,
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn shared_lists_become_groups_in_order_and_resolve_back() {
        let original = vec![
            route("198.51.100.1/32", &["10.0.0.11", "10.0.0.12"]),
            route("198.51.100.2/32", &["10.0.0.13", "10.0.0.11"]),
            route("198.51.100.3/32", &["10.0.0.11", "10.0.0.12"]),
            route("198.51.100.4/32", &["10.0.0.13", "10.0.0.11"]),
            route("198.51.100.5/32", &["10.0.0.11"]),
            route("198.51.100.6/32", &["10.0.0.11"]),
            route("198.51.100.7/32", &["10.0.0.12", "10.0.0.13"]),
        ];
        let mut routes = original.clone();
        let groups = share(&mut routes);
        let names: Vec<&str> = routes.iter().map(|r| r.next_hop_group.as_str()).collect();
        // Single next hops stay inline even when shared; a list used once stays inline.
        assert_eq!(names, ["nh1", "nh2", "nh1", "nh2", "", "", ""]);
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].next_hops, original[0].next_hops);
        assert_eq!(groups[1].next_hops, original[1].next_hops);
        assert!(routes[0].next_hops.is_empty());
        resolve(&mut routes, &groups).unwrap();
        assert_eq!(routes, original);
    }

    #[test]
    fn weights_are_part_of_the_list() {
        let mut a = route("198.51.100.1/32", &["10.0.0.11", "10.0.0.12"]);
        let b = route("198.51.100.2/32", &["10.0.0.11", "10.0.0.12"]);
        a.next_hops[0].weight = 3;
        let mut routes = vec![a, b];
        assert!(share(&mut routes).is_empty());
    }

    #[test]
    fn an_undefined_group_names_the_route() {
        let mut routes = vec![v1::Route {
            prefix: "198.51.100.1/32".into(),
            next_hop_group: "nh9".into(),
            ..Default::default()
        }];
        let e = resolve(&mut routes, &[]).unwrap_err();
        assert!(e.contains("198.51.100.1/32") && e.contains("nh9"), "{e}");
    }
}
