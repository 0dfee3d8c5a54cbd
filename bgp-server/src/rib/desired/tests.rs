use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use proptest::prelude::*;

use super::*;
use crate::rib::PathAttrs;

fn prefix(n: u16) -> IpNet {
    IpNet::new(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | u32::from(n))), 32).unwrap_or_default()
}

fn via(n: u8) -> Paths {
    [(
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, n)),
        PathAttrs::default(),
    )]
    .into_iter()
    .collect()
}

/// The chunks keep what the rest of the module relies on.
fn check(d: &Desired) {
    let mut total = 0;
    let mut previous: Option<IpNet> = None;
    for (key, chunk) in d.index.iter() {
        assert!(!chunk.is_empty(), "an empty chunk at {key}");
        assert!(chunk.len() <= CHUNK, "a chunk of {} at {key}", chunk.len());
        assert_eq!(
            chunk.first().map(|(p, _)| *p),
            Some(*key),
            "keyed by its first"
        );
        for (p, _) in chunk.iter() {
            assert!(previous.is_none_or(|q| q < *p), "{p} out of order");
            previous = Some(*p);
        }
        total += chunk.len();
    }
    assert_eq!(total, d.len());
}

#[derive(Debug, Clone)]
enum Op {
    Insert(u16, u8),
    Remove(u16),
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(
        prop_oneof![
            3 => (0u16..600, 0u8..4).prop_map(|(p, n)| Op::Insert(p, n)),
            2 => (0u16..600).prop_map(Op::Remove),
        ],
        0..1500,
    )
}

fn apply(d: &mut Desired, model: &mut BTreeMap<IpNet, Paths>, ops: &[Op]) {
    for op in ops {
        match op {
            Op::Insert(p, n) => {
                assert_eq!(
                    d.insert(prefix(*p), via(*n)),
                    model.insert(prefix(*p), via(*n))
                );
            }
            Op::Remove(p) => assert_eq!(d.remove(&prefix(*p)), model.remove(&prefix(*p))),
        }
    }
}

proptest! {
    #[test]
    fn edits_match_a_sorted_map_and_leave_clones_alone(first in ops(), second in ops()) {
        let mut d = Desired::new();
        let mut model = BTreeMap::new();
        apply(&mut d, &mut model, &first);
        check(&d);
        d.compact();
        check(&d);
        let before = d.clone();
        let model_before = model.clone();
        apply(&mut d, &mut model, &second);
        check(&d);
        // The table is the model.
        let got: Vec<_> = d.iter().map(|(p, v)| (*p, v.clone())).collect();
        let want: Vec<_> = model.iter().map(|(p, v)| (*p, v.clone())).collect();
        prop_assert_eq!(got, want);
        for n in 0..600 {
            prop_assert_eq!(d.get(&prefix(n)), model.get(&prefix(n)));
        }
        // The clone taken before is untouched (persistence).
        let old: Vec<_> = before.iter().map(|(p, v)| (*p, v.clone())).collect();
        let old_want: Vec<_> = model_before.iter().map(|(p, v)| (*p, v.clone())).collect();
        prop_assert_eq!(old, old_want);
        // The structural diff says what a walk over both would, from any starting point.
        for after in [None, Some(prefix(0)), Some(prefix(123)), Some(prefix(599))] {
            let got: Vec<_> = before
                .diff(&d, after.as_ref())
                .map(|(p, a, b)| (p, a.cloned(), b.cloned()))
                .collect();
            let mut keys: Vec<IpNet> =
                model_before.keys().chain(model.keys()).copied().collect();
            keys.sort();
            keys.dedup();
            let want: Vec<_> = keys
                .into_iter()
                .filter(|k| after.is_none_or(|a| *k > a))
                .map(|k| (k, model_before.get(&k).cloned(), model.get(&k).cloned()))
                .filter(|(_, a, b)| a != b)
                .collect();
            prop_assert_eq!(got, want);
        }
        prop_assert_eq!(before == d, model_before == model);
    }
}

#[test]
fn in_order_loading_fills_every_chunk() {
    let d: Desired = (0..1000u16).map(|n| (prefix(n), via(1))).collect();
    check(&d);
    assert_eq!(d.index.len(), 1000usize.div_ceil(CHUNK));
    assert!(
        d.index.values().all(|c| c.capacity() <= CHUNK),
        "no chunk holds spare room past its size"
    );
}

#[test]
fn compacting_after_scattered_inserts_makes_it_dense() {
    // Reverse order splits chunks in halves.
    let mut d: Desired = (0..1000u16).rev().map(|n| (prefix(n), via(1))).collect();
    assert!(
        d.index.len() > 1000usize.div_ceil(CHUNK) * 4 / 3,
        "{}",
        d.index.len()
    );
    d.compact();
    check(&d);
    assert_eq!(d.index.len(), 1000usize.div_ceil(CHUNK));
    // Removing most routes merges chunks instead of leaving a trail of tiny ones.
    for n in 0..1000u16 {
        if n % 16 != 0 {
            d.remove(&prefix(n));
        }
    }
    check(&d);
    assert!(
        d.index.len() <= 1000 / 16 / (CHUNK / 4) + 2,
        "{} chunks",
        d.index.len()
    );
}

#[test]
fn one_edit_copies_one_chunk_and_the_diff_finds_only_it() {
    let before: Desired = (0..10_000u16).map(|n| (prefix(n), via(1))).collect();
    let mut after = before.clone();
    after.insert(prefix(5_000), via(2));
    let shared = before
        .index
        .values()
        .zip(after.index.values())
        .filter(|(a, b)| Arc::ptr_eq(a, b))
        .count();
    assert_eq!(shared, before.index.len() - 1, "the edit copied one chunk");
    let diff: Vec<_> = before.diff(&after, None).map(|(p, _, _)| p).collect();
    assert_eq!(diff, vec![prefix(5_000)]);
}
