//! The session-affinity layout of `render::affinity` (sharded maps, endpoint ids): a new
//! client picks among the live endpoints with their shares, and the trace says that a
//! known client returns to its endpoint.

use super::*;
use crate::nft::AffinityStep;

/// `kube_like` with svc-aff (10.96.0.20 tcp 80) in the affinity layout: list 7 owns block
/// 1 of shard 0's picks, in thirds for ids 1, 2, 3; `live` ids are in the live map.
fn sharded(live: &[u32]) -> Ruleset {
    let mut rs = kube_like();
    let t = &mut rs.tables[0];
    let [state, mut pick, mut endpoints] = crate::render::affinity::maps(Family::V4, 0);
    let base = crate::nft::PICK_SPACE;
    for (id, (lo, hi)) in (1..).zip(crate::nft::pick_ranges(base, 3)) {
        pick.insert(Element::values(
            vec![Value::Range(lo, hi)],
            vec![Value::Int(id)],
        ));
        if live.contains(&id) {
            endpoints.insert(Element::values(
                vec![Value::Int(7), Value::Int(id)],
                vec![a(&format!("10.244.5.{id}")), Value::Port(8080)],
            ));
        }
    }
    let stmt = |step| {
        rule(vec![Stmt::DnatAffinity {
            proto: Protocol::Tcp,
            list: 7,
            offset: base,
            pick: pick.name.clone(),
            endpoints: endpoints.name.clone(),
            step,
        }])
    };
    let known = AffinityStep::Known {
        map: state.name.clone(),
        timeout: 600,
    };
    let repick = AffinityStep::Repick {
        map: state.name.clone(),
        timeout: 600,
    };
    let rules = vec![stmt(known), stmt(repick), stmt(AffinityStep::Full)];
    t.add_chain(chain("svc-aff", rules));
    for s in [state, pick, endpoints] {
        t.add_set(s);
    }
    rs
}

#[test]
fn a_new_client_picks_among_live_endpoints_with_their_shares() {
    let t = trace(
        &sharded(&[1, 2, 3]),
        &host(),
        &pod("10.244.9.9", "10.96.0.20", Protocol::Tcp, 80),
    );
    assert_eq!(t.verdict, TraceVerdict::Dnat);
    assert_eq!(
        eps(&t),
        ["10.244.5.1:8080", "10.244.5.2:8080", "10.244.5.3:8080"]
    );
    // All from the first rule, each a third of the picks, each saying what a known
    // client does instead.
    assert_eq!(t.paths.len(), 3);
    for p in &t.paths {
        let last = p.steps.iter().rev().find(|s| s.chain == "svc-aff").unwrap();
        assert_eq!(last.rule, Some(0));
        assert!(last.text.contains("33.33%"), "{}", last.text);
        assert!(
            last.text
                .contains("a known client returns to its live endpoint"),
            "{}",
            last.text
        );
        assert!(last.text.starts_with("meta l4proto tcp update @affinity-0"));
    }
}

#[test]
fn a_dead_id_is_never_a_target() {
    // Id 2's endpoint is gone from the live map (its picks not yet re-pointed): its third
    // of the picks matches no rule and falls through; only live endpoints are reached.
    let t = trace(
        &sharded(&[1, 3]),
        &host(),
        &pod("10.244.9.9", "10.96.0.20", Protocol::Tcp, 80),
    );
    assert_eq!(eps(&t), ["10.244.5.1:8080", "10.244.5.3:8080"]);
    assert!(t
        .paths
        .iter()
        .flat_map(|p| &p.steps)
        .any(|s| s.rule == Some(2) && s.text.contains("no match; the affinity map is full")));
}
