//! The interpreter's mechanics: jump depth, return, NAT order, loop-back, maps.

use super::*;
use crate::nft::{pick_ranges, PICK_SPACE};

/// `base` jumps through a chain of `n` regular chains; the last accepts... by policy.
fn nested(n: usize, goto: bool) -> Ruleset {
    let mut t = Table::new(Family::V4, "deep");
    t.add_chain(base(
        "in",
        ChainType::Filter,
        Hook::Prerouting,
        0,
        vec![rule(vec![Stmt::jump("c1")])],
    ));
    for i in 1..=n {
        let next = if i == n {
            vec![rule(vec![Stmt::Verdict(Verdict::Accept)])]
        } else if goto {
            vec![rule(vec![Stmt::goto(format!("c{}", i + 1))])]
        } else {
            vec![rule(vec![Stmt::jump(format!("c{}", i + 1))])]
        };
        t.add_chain(chain(&format!("c{i}"), next));
    }
    Ruleset { tables: vec![t] }
}

#[test]
fn jump_depth_is_capped_at_the_kernel_stack_size() {
    let probe = ext("eth0", "203.0.113.7", "10.0.0.1", 80);
    let t = trace(&nested(16, false), &host(), &probe);
    assert_eq!(t.verdict, TraceVerdict::Accept);
    let t = trace(&nested(17, false), &host(), &probe);
    assert_eq!(t.verdict, TraceVerdict::Drop);
    let last = t.paths[0].steps.last().unwrap();
    assert_eq!(last.chain, "c16");
    assert!(last.text.contains("deeper than 16"), "{}", last.text);
    // A goto loop terminates too.
    let mut rs = nested(1, false);
    rs.tables[0].add_chain(chain("c1", vec![rule(vec![Stmt::goto("c1")])]));
    let t = trace(&rs, &host(), &probe);
    assert_eq!(t.verdict, TraceVerdict::Drop);
    // A jump to a missing chain is reported, not a panic.
    let mut rs = nested(1, false);
    rs.tables[0].add_chain(chain("c1", vec![rule(vec![Stmt::jump("nowhere")])]));
    let t = trace(&rs, &host(), &probe);
    assert_eq!(t.verdict, TraceVerdict::Drop);
    assert!(t.paths[0].steps.last().unwrap().text.contains("nowhere"));
}

#[test]
fn return_and_fall_through_resume_the_caller() {
    let mut t = Table::new(Family::V4, "flow");
    t.add_chain(base(
        "in",
        ChainType::Filter,
        Hook::Prerouting,
        0,
        vec![
            rule(vec![Stmt::jump("a")]),
            rule(vec![Stmt::jump("b")]),
            rule(vec![
                Stmt::cmp(Field::Mark, Value::Int(3)),
                Stmt::Verdict(Verdict::Drop),
            ]),
        ],
    ));
    t.add_chain(chain(
        "a",
        vec![
            rule(vec![Stmt::SetMark(MarkOp::Or(1))]),
            rule(vec![Stmt::Verdict(Verdict::Return)]),
            rule(vec![Stmt::Verdict(Verdict::Accept)]),
        ],
    ));
    t.add_chain(chain("b", vec![rule(vec![Stmt::SetMark(MarkOp::Or(2))])]));
    let rs = Ruleset { tables: vec![t] };
    let tr = trace(&rs, &host(), &ext("eth0", "203.0.113.7", "10.0.0.1", 80));
    assert_eq!(tr.verdict, TraceVerdict::Drop);
    // Return from a base chain is its policy (accept).
    let mut rs2 = rs.clone();
    rs2.tables[0].chains.get_mut("in").unwrap().rules[0] =
        rule(vec![Stmt::Verdict(Verdict::Return)]);
    let tr = trace(&rs2, &host(), &ext("eth0", "203.0.113.7", "10.0.0.1", 80));
    assert_eq!(tr.verdict, TraceVerdict::Accept);
}

#[test]
fn nat_chains_run_at_the_nat_priority_and_only_once() {
    // A nat chain at -200 still runs after a filter chain at -150 (NAT core at -100),
    // and a second nat chain does not run once the first DNATed.
    let mut t = Table::new(Family::V4, "order");
    t.add_chain(base(
        "early-nat",
        ChainType::Nat,
        Hook::Prerouting,
        -200,
        vec![rule(vec![Stmt::DnatTo {
            proto: Protocol::Tcp,
            addr: ip("10.244.1.5"),
            port: 8080,
        }])],
    ));
    t.add_chain(base(
        "second-nat",
        ChainType::Nat,
        Hook::Prerouting,
        -150,
        vec![rule(vec![Stmt::DnatTo {
            proto: Protocol::Tcp,
            addr: ip("10.244.9.9"),
            port: 1,
        }])],
    ));
    t.add_chain(base(
        "before",
        ChainType::Filter,
        Hook::Prerouting,
        -150,
        vec![rule(vec![
            Stmt::cmp(Field::CtStatus, Value::CtStatus(CtStatus::Dnat)),
            Stmt::Verdict(Verdict::Drop),
        ])],
    ));
    t.add_chain(base(
        "after",
        ChainType::Filter,
        Hook::Forward,
        0,
        vec![rule(vec![
            Stmt::cmp(Field::CtStatus, Value::CtStatus(CtStatus::Dnat)),
            Stmt::cmp(Field::Daddr, a("10.244.1.5")),
            Stmt::cmp(Field::Dport(Protocol::Tcp), Value::Port(8080)),
            Stmt::Verdict(Verdict::Accept),
        ])],
    ));
    let rs = Ruleset { tables: vec![t] };
    let tr = trace(&rs, &host(), &ext("eth0", "203.0.113.7", "10.96.0.10", 80));
    assert_eq!(tr.verdict, TraceVerdict::Dnat);
    assert_eq!(eps(&tr), ["10.244.1.5:8080"]);
    let steps = &tr.paths[0].steps;
    let chains: Vec<&str> = steps.iter().map(|s| s.chain.as_str()).collect();
    assert_eq!(chains, ["before", "early-nat", "second-nat", "after"]);
    assert!(steps[2].text.starts_with("not evaluated"));
    assert_eq!(steps[3].rule, Some(0), "forward sees the DNATed packet");
}

/// `nat-output` DNATs `vip` to `ep`:8080; a filter output chain at `filter_prio` drops
/// packets still addressed to `vip`.
fn output_check_at(family: Family, vip: &str, ep: &str, filter_prio: i32) -> Ruleset {
    let mut t = Table::new(family, "out");
    t.add_chain(base(
        "nat-output",
        ChainType::Nat,
        Hook::Output,
        -100,
        vec![rule(vec![
            Stmt::cmp(Field::Daddr, a(vip)),
            Stmt::DnatTo {
                proto: Protocol::Tcp,
                addr: ip(ep),
                port: 8080,
            },
        ])],
    ));
    t.add_chain(base(
        "filter-output",
        ChainType::Filter,
        Hook::Output,
        filter_prio,
        vec![rule(vec![
            Stmt::cmp(Field::Daddr, a(vip)),
            Stmt::Verdict(Verdict::Drop),
        ])],
    ));
    Ruleset { tables: vec![t] }
}

#[test]
fn output_filter_at_filter_priority_sees_the_dnated_address() {
    for (family, vip, ep, src) in [
        (Family::V4, "203.0.113.6", "10.244.2.11", NODE_IP),
        (
            Family::V6,
            "2001:db8:113::6",
            "fd00:10:244:2::11",
            "fd00:50::10",
        ),
    ] {
        let probe = Probe {
            src: ip(src),
            ..node(vip, Protocol::Tcp, 80)
        };
        // Filter priority (0): after the NAT core (-100), the check sees the endpoint.
        let tr = trace(&output_check_at(family, vip, ep, 0), &host(), &probe);
        assert_eq!(tr.verdict, TraceVerdict::Dnat, "{family:?}");
        assert_eq!(
            tr.endpoints,
            [EndpointAddr {
                ip: ip(ep),
                port: 8080
            }]
        );
        let chains: Vec<&str> = tr.paths[0].steps.iter().map(|s| s.chain.as_str()).collect();
        assert_eq!(chains, ["nat-output", "filter-output"], "{family:?}");
        // Before DNAT (-110) the same check sees the address the node dialled.
        let tr = trace(&output_check_at(family, vip, ep, -110), &host(), &probe);
        assert_eq!(tr.verdict, TraceVerdict::Drop, "{family:?}");
    }
}

#[test]
fn node_to_local_address_loops_back_through_lo() {
    let mut t = Table::new(Family::V4, "lo");
    t.add_chain(base(
        "nat-out",
        ChainType::Nat,
        Hook::Output,
        -100,
        vec![rule(vec![
            Stmt::cmp(Field::Dport(Protocol::Tcp), Value::Port(30080)),
            Stmt::DnatTo {
                proto: Protocol::Tcp,
                addr: ip(NODE_IP),
                port: 8080,
            },
        ])],
    ));
    t.add_chain(base(
        "nat-pre",
        ChainType::Nat,
        Hook::Prerouting,
        -100,
        vec![rule(vec![Stmt::Verdict(Verdict::Drop)])],
    ));
    t.add_chain(base(
        "in",
        ChainType::Filter,
        Hook::Input,
        0,
        vec![rule(vec![
            Stmt::cmp(Field::Iifname, Value::Iface("lo".into())),
            Stmt::cmp(Field::CtState, Value::CtState(CtState::New)),
            Stmt::cmp(Field::Dport(Protocol::Tcp), Value::Port(9999)),
            Stmt::Reject,
        ])],
    ));
    let rs = Ruleset { tables: vec![t] };
    // Local delivery from the node: input sees iifname lo; nat prerouting is not run.
    let tr = trace(&rs, &host(), &node(NODE_IP, Protocol::Tcp, 9999));
    assert_eq!(tr.verdict, TraceVerdict::Reject);
    let hooks: Vec<Hook> = tr.paths[0].steps.iter().map(|s| s.hook).collect();
    assert_eq!(hooks, [Hook::Output, Hook::Prerouting, Hook::Input]);
    assert!(tr.paths[0].steps[1].text.starts_with("not evaluated"));
    // The same port from outside arrives on eth0: not rejected, but nat-pre drops it.
    let tr = trace(&rs, &host(), &ext("eth0", "203.0.113.7", NODE_IP, 9999));
    assert_eq!(tr.verdict, TraceVerdict::Drop);
    // DNAT in output to a local address.
    let tr = trace(&rs, &host(), &node("10.0.0.1", Protocol::Tcp, 30080));
    assert_eq!(tr.verdict, TraceVerdict::Dnat);
    assert_eq!(eps(&tr), ["192.168.1.10:8080"]);
}

#[test]
fn numgen_vmap_keys_branch_per_value() {
    let mut t = Table::new(Family::V4, "ng");
    let mut m = Set::new("pick", vec![DataType::Mark], SetData::Verdict);
    m.insert(Element::verdict(vec![Value::Int(0)], Verdict::Accept));
    m.insert(Element::verdict(vec![Value::Int(1)], Verdict::Drop));
    t.add_set(m);
    t.add_chain(base(
        "in",
        ChainType::Filter,
        Hook::Prerouting,
        0,
        vec![rule(vec![Stmt::Vmap {
            key: vec![Field::Numgen {
                modulus: 3,
                offset: 0,
            }],
            map: "pick".into(),
        }])],
    ));
    let rs = Ruleset { tables: vec![t] };
    let tr = trace(&rs, &host(), &ext("eth0", "203.0.113.7", "10.0.0.1", 80));
    let verdicts: Vec<TraceVerdict> = tr.paths.iter().map(|p| p.verdict).collect();
    // value 0 accept, 1 drop, 2 miss → policy accept.
    assert_eq!(
        verdicts,
        [
            TraceVerdict::Accept,
            TraceVerdict::Drop,
            TraceVerdict::Accept
        ]
    );
    assert_eq!(tr.verdict, TraceVerdict::Accept);
}

#[test]
fn set_lookups_match_prefixes_by_containment() {
    let mut t = Table::new(Family::V4, "ranges");
    let mut s = Set::new(
        "lb-sources",
        vec![DataType::Ipv4Addr, DataType::Ipv4Addr],
        SetData::None,
    );
    s.flags.interval = true;
    s.insert(Element::key(vec![a("10.96.0.50"), net("203.0.113.0/24")]));
    t.add_set(s);
    t.add_chain(base(
        "in",
        ChainType::Filter,
        Hook::Prerouting,
        0,
        vec![rule(vec![
            Stmt::cmp(Field::Daddr, a("10.96.0.50")),
            Stmt::Lookup {
                key: vec![Field::Daddr, Field::Saddr],
                set: "lb-sources".into(),
                negate: true,
            },
            Stmt::Verdict(Verdict::Drop),
        ])],
    ));
    let rs = Ruleset { tables: vec![t] };
    let inside = trace(
        &rs,
        &host(),
        &ext("eth0", "203.0.113.200", "10.96.0.50", 80),
    );
    assert_eq!(inside.verdict, TraceVerdict::Accept);
    let outside = trace(&rs, &host(), &ext("eth0", "198.51.100.1", "10.96.0.50", 80));
    assert_eq!(outside.verdict, TraceVerdict::Drop);
    let other = trace(&rs, &host(), &ext("eth0", "198.51.100.1", "10.96.0.51", 80));
    assert_eq!(other.verdict, TraceVerdict::Accept);
}

#[test]
fn large_endpoint_maps_are_traced_quickly() {
    // 6250 blocks of 32 endpoints (200k ranges); the rule picks from block 4687.
    let mut t = Table::new(Family::V4, "big");
    let mut m = Set::new(
        "endpoints",
        vec![DataType::Pick],
        SetData::Values(vec![DataType::Ipv4Addr, DataType::InetService]),
    );
    m.flags.interval = true;
    let mut elements = Vec::new();
    for block in 0..6250u32 {
        for (i, (lo, hi)) in pick_ranges(block * PICK_SPACE, 32).enumerate() {
            let ip = std::net::Ipv4Addr::from(0x0af4_0000 + block * 32 + i as u32);
            elements.push(Element::values(
                vec![Value::Range(lo, hi)],
                vec![Value::Addr(ip.into()), Value::Port(80)],
            ));
        }
    }
    m.extend(elements);
    t.add_set(m);
    t.add_chain(base(
        "nat-prerouting",
        ChainType::Nat,
        Hook::Prerouting,
        -100,
        vec![rule(vec![Stmt::DnatPick {
            proto: Protocol::Tcp,
            offset: 4687 * PICK_SPACE,
            map: "endpoints".into(),
        }])],
    ));
    let rs = Ruleset { tables: vec![t] };
    let tr = trace(&rs, &host(), &ext("eth0", "203.0.113.7", "10.96.0.10", 80));
    assert_eq!(tr.endpoints.len(), 32);
    assert_eq!(tr.paths.len(), 32);
    assert_eq!(
        tr.endpoints[0],
        ep(&format!(
            "{}:80",
            std::net::Ipv4Addr::from(0x0af4_0000u32 + 4687 * 32)
        ))
    );
}
