//! What an Apply of a large table costs in heap, counted by an instrumented allocator (bytes,
//! not time: the figures do not depend on the machine).
//!
//! Issue 13 found the production path holding 145 MiB at the peak of a 100,000-route Apply.
//! The table's shape and the conversion decide most of it: these tests hold them to a budget
//! per route, and to no new route memory for a state that did not change.

use berth_bgp_server::control::apply::convert;
use berth_bgp_server::rib::Desired;
use berth_proto::v1;
use peakmem_alloc::{INSTRUMENTED_SYSTEM, PeakMemAlloc, PeakMemAllocTrait};
use prost::Message;

#[global_allocator]
static HEAP: &PeakMemAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

const ROUTES: u32 = 100_000;

/// The operator's Apply: host routes in order over a few next hops.
fn state(generation: u64, next_hops: usize) -> Vec<u8> {
    let hops: Vec<v1::NextHop> = (0..next_hops)
        .map(|i| v1::NextHop {
            address: format!("10.0.0.{}", 11 + i),
            weight: 0,
        })
        .collect();
    v1::DesiredState {
        generation,
        global: Some(v1::Global {
            asn: 64512,
            router_id: "10.0.0.11".into(),
            ..Default::default()
        }),
        routes: (0..ROUTES)
            .map(|i| v1::Route {
                prefix: format!("{}/32", std::net::Ipv4Addr::from(0x6440_0000 + i)),
                next_hops: hops.clone(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
    .encode_to_vec()
}

/// Runs `f`; the most it had allocated at once (what it returns included, as it is still
/// held at the end).
fn peak_of<T>(f: impl FnOnce() -> T) -> (T, usize) {
    HEAP.reset_peak_memory();
    let out = f();
    (out, HEAP.get_peak_memory())
}

// One test, not several: the counter is the process's, and tests run on threads.
#[test]
fn a_large_apply_holds_little_per_route_and_an_identical_one_nothing() {
    for next_hops in [1, 4] {
        let bytes = state(1, next_hops);
        let (converted, peak) = peak_of(|| convert(&bytes, &Desired::new(), None));
        let Ok(converted) = converted else {
            panic!("the state was refused: {converted:?}");
        };
        assert_eq!(converted.desired.len(), ROUTES as usize);
        let per_route = peak as f64 / f64::from(ROUTES);
        eprintln!("{next_hops} next hop(s): {per_route:.1} bytes per route at the peak");
        // A table entry is 32 bytes and equal paths are shared, and nothing per route is kept
        // beside the table while it is built. Before: ~130 bytes per route in the table (a
        // B-tree of 16-entry nodes, half full, and a list of paths per route) and a set of
        // every prefix seen.
        assert!(
            per_route <= 40.0,
            "{next_hops} next hop(s): {per_route:.1} bytes per route at the peak"
        );

        // The operator's resync: the same routes again under a new generation.
        let again = state(2, next_hops);
        let (reconverted, peak) = peak_of(|| convert(&again, &converted.desired, None));
        let Ok(reconverted) = reconverted else {
            panic!("the state was refused: {reconverted:?}");
        };
        assert_eq!(reconverted.changed, 0);
        assert!(
            peak <= 256 * 1024,
            "{next_hops} next hop(s): an identical state took {peak} bytes at the peak"
        );
    }
}
