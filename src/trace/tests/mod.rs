//! Unit tests of the tracer: shared helpers and the kube-proxy-shaped fixture here; the
//! tests by topic in `kube` (services, NodePorts, output) and `chains` (hooks, jumps, NAT
//! order, maps).

use std::net::IpAddr;

use super::*;
use crate::model::EndpointAddr;
use crate::nft::{
    Chain, ChainType, CtState, CtStatus, DataType, Element, Family, FibType, Field, MarkOp, Rule,
    Set, SetData, SetFlags, Stmt, Table, Value, Verdict,
};

const MASQ: u32 = 0x4000;
const POD_CIDR: &str = "10.244.0.0/16";
const NODE_IP: &str = "192.168.1.10";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}
fn a(s: &str) -> Value {
    Value::Addr(ip(s))
}
fn net(s: &str) -> Value {
    Value::Net(s.parse().unwrap())
}
fn ep(s: &str) -> EndpointAddr {
    let (i, p) = s.rsplit_once(':').unwrap();
    EndpointAddr {
        ip: i.trim_matches(|c| c == '[' || c == ']').parse().unwrap(),
        port: p.parse().unwrap(),
    }
}
fn rule(stmts: Vec<Stmt>) -> Rule {
    Rule::new(stmts)
}
fn chain(name: &str, rules: Vec<Rule>) -> Chain {
    let mut c = Chain::regular(name);
    c.rules = rules;
    c
}
fn base(name: &str, kind: ChainType, hook: Hook, prio: i32, rules: Vec<Rule>) -> Chain {
    let mut c = Chain::base(name, kind, hook, prio);
    c.rules = rules;
    c
}
fn svc_key(addr: &str, proto: Protocol, port: u16) -> Vec<Value> {
    vec![a(addr), Value::Proto(proto), Value::Port(port)]
}
fn host() -> Host {
    Host {
        local_addrs: vec![ip(NODE_IP)],
    }
}
fn pod(src: &str, dst: &str, proto: Protocol, port: u16) -> Probe {
    Probe {
        origin: Origin::Pod {
            iifname: "veth1234".into(),
        },
        src: ip(src),
        dst: ip(dst),
        proto,
        port,
    }
}
fn ext(iif: &str, src: &str, dst: &str, port: u16) -> Probe {
    Probe {
        origin: Origin::External {
            iifname: iif.into(),
        },
        src: ip(src),
        dst: ip(dst),
        proto: Protocol::Tcp,
        port,
    }
}
fn node(dst: &str, proto: Protocol, port: u16) -> Probe {
    Probe {
        origin: Origin::Node,
        src: ip(NODE_IP),
        dst: ip(dst),
        proto,
        port,
    }
}
fn eps(t: &Trace) -> Vec<String> {
    t.endpoints.iter().map(|e| e.to_string()).collect()
}

/// A kube-proxy-shaped `ip` table:
/// - 10.96.0.10 tcp 80 → svc-web (slots 0,1: 10.244.1.5:8080, 10.244.2.6:8080)
/// - 10.96.0.20 tcp 80 → svc-aff (affinity + numgen goto chain, 3 endpoints)
/// - 10.96.0.30 udp 53 → svc-gap (slots 2..4, slot 3 missing)
/// - 10.96.0.40 tcp 80 has no endpoints → reject
/// - NodePort tcp 30080 → ext-web (eTP Cluster: masquerade, svc-web)
/// - NodePort tcp 30090 → ext-local (eTP Local without local endpoints: drop)
/// - `iifname "eth*"` from 198.51.100.0/24 dropped in filter-prerouting.
fn kube_like() -> Ruleset {
    let mut t = Table::new(Family::V4, "kproxy");
    add_service_maps(&mut t);
    add_endpoint_sets(&mut t);
    add_filter_chains(&mut t);
    add_nat_chains(&mut t);
    add_service_chains(&mut t);
    add_affinity_chains(&mut t);
    add_nodeport_chains(&mut t);
    Ruleset { tables: vec![t] }
}

/// `kube_like`'s dispatch maps: service-ips, no-endpoint-services, service-nodeports.
fn add_service_maps(t: &mut Table) {
    let mut service_ips = Set::new(
        "service-ips",
        vec![
            DataType::Ipv4Addr,
            DataType::InetProto,
            DataType::InetService,
        ],
        SetData::Verdict,
    );
    for (addr, proto, port, target) in [
        ("10.96.0.10", Protocol::Tcp, 80, "svc-web"),
        ("10.96.0.20", Protocol::Tcp, 80, "svc-aff"),
        ("10.96.0.30", Protocol::Udp, 53, "svc-gap"),
    ] {
        service_ips.insert(Element::verdict(
            svc_key(addr, proto, port),
            Verdict::Goto(target.into()),
        ));
    }
    t.add_set(service_ips);

    let mut no_eps = Set::new(
        "no-endpoint-services",
        vec![
            DataType::Ipv4Addr,
            DataType::InetProto,
            DataType::InetService,
        ],
        SetData::Verdict,
    );
    no_eps.insert(Element::verdict(
        svc_key("10.96.0.40", Protocol::Tcp, 80),
        Verdict::Goto("reject-chain".into()),
    ));
    t.add_set(no_eps);

    let mut nodeports = Set::new(
        "service-nodeports",
        vec![DataType::InetProto, DataType::InetService],
        SetData::Verdict,
    );
    nodeports.insert(Element::verdict(
        vec![Value::Proto(Protocol::Tcp), Value::Port(30080)],
        Verdict::Goto("ext-web".into()),
    ));
    nodeports.insert(Element::verdict(
        vec![Value::Proto(Protocol::Tcp), Value::Port(30090)],
        Verdict::Goto("ext-local".into()),
    ));
    t.add_set(nodeports);
}

/// `kube_like`'s endpoint map and its (dynamic, stale) affinity sets. svc-web owns block
/// 0 (two endpoints), svc-gap block 1 with a hole in the middle of its three ranges.
fn add_endpoint_sets(t: &mut Table) {
    let mut endpoints = Set::new(
        "endpoints",
        vec![DataType::Pick],
        SetData::Values(vec![DataType::Ipv4Addr, DataType::InetService]),
    );
    endpoints.flags.interval = true;
    for (lo, hi, addr, port) in [
        (0, 32767, "10.244.1.5", 8080),
        (32768, 65535, "10.244.2.6", 8080),
        (65536, 87381, "10.244.3.7", 53),
        (109227, 131071, "10.244.4.8", 53),
    ] {
        endpoints.insert(Element::values(
            vec![Value::Range(lo, hi)],
            vec![a(addr), Value::Port(port)],
        ));
    }
    t.add_set(endpoints);

    for name in ["affinity-a", "affinity-b", "affinity-c"] {
        let mut s = Set::new(name, vec![DataType::Ipv4Addr], SetData::None);
        s.flags = SetFlags {
            interval: false,
            timeout: true,
            dynamic: true,
        };
        s.timeout = Some(10800);
        // A stale entry for the client used in the tests: must be ignored.
        s.insert(Element::key(vec![a("10.244.9.9")]));
        t.add_set(s);
    }
}

/// `kube_like`'s filter base chains, the no-endpoints check and the reject chain.
fn add_filter_chains(t: &mut Table) {
    let ct_new_jump = |target: &str| {
        rule(vec![
            Stmt::cmp(Field::CtState, Value::CtState(CtState::New)),
            Stmt::jump(target),
        ])
    };
    t.add_chain(base(
        "filter-prerouting",
        ChainType::Filter,
        Hook::Prerouting,
        -110,
        vec![rule(vec![
            Stmt::cmp(Field::Iifname, Value::Iface("eth*".into())),
            Stmt::cmp(Field::Saddr, net("198.51.100.0/24")),
            Stmt::Verdict(Verdict::Drop),
        ])],
    ));
    for (name, hook) in [
        ("filter-input", Hook::Input),
        ("filter-forward", Hook::Forward),
        ("filter-output", Hook::Output),
    ] {
        t.add_chain(base(
            name,
            ChainType::Filter,
            hook,
            -110,
            vec![ct_new_jump("service-endpoints-check")],
        ));
    }
    t.add_chain(chain(
        "service-endpoints-check",
        vec![rule(vec![Stmt::Vmap {
            key: vec![Field::Daddr, Field::L4Proto, Field::ThDport],
            map: "no-endpoint-services".into(),
        }])],
    ));
    t.add_chain(chain("reject-chain", vec![rule(vec![Stmt::Reject])]));
}

/// `kube_like`'s NAT base chains and the masquerade marking chains.
fn add_nat_chains(t: &mut Table) {
    t.add_chain(base(
        "nat-prerouting",
        ChainType::Nat,
        Hook::Prerouting,
        -100,
        vec![rule(vec![Stmt::jump("services")])],
    ));
    t.add_chain(base(
        "nat-output",
        ChainType::Nat,
        Hook::Output,
        -100,
        vec![rule(vec![Stmt::jump("services")])],
    ));
    t.add_chain(base(
        "nat-postrouting",
        ChainType::Nat,
        Hook::Postrouting,
        100,
        vec![rule(vec![Stmt::jump("masquerading")])],
    ));
    t.add_chain(chain(
        "masquerading",
        vec![
            rule(vec![
                Stmt::cmp(Field::MarkAnd(MASQ), Value::Int(0)),
                Stmt::Verdict(Verdict::Return),
            ]),
            rule(vec![Stmt::SetMark(MarkOp::Xor(MASQ))]),
            rule(vec![Stmt::Masquerade]),
        ],
    ));
    t.add_chain(chain(
        "mark-for-masquerade",
        vec![rule(vec![Stmt::SetMark(MarkOp::Or(MASQ))])],
    ));
}

/// Masquerade what does not come from the pod network.
fn not_pod_masq() -> Rule {
    rule(vec![
        Stmt::cmp_ne(Field::Saddr, net(POD_CIDR)),
        Stmt::jump("mark-for-masquerade"),
    ])
}

/// `kube_like`'s `services` dispatch chain and the slot services svc-web and svc-gap.
fn add_service_chains(t: &mut Table) {
    t.add_chain(chain(
        "services",
        vec![
            rule(vec![Stmt::Vmap {
                key: vec![Field::Daddr, Field::L4Proto, Field::ThDport],
                map: "service-ips".into(),
            }]),
            rule(vec![
                Stmt::cmp(Field::FibDaddrType, Value::FibType(FibType::Local)),
                Stmt::cmp_ne(Field::Daddr, net("127.0.0.0/8")),
                Stmt::Vmap {
                    key: vec![Field::L4Proto, Field::ThDport],
                    map: "service-nodeports".into(),
                },
            ]),
        ],
    ));
    t.add_chain(chain(
        "svc-web",
        vec![
            not_pod_masq(),
            rule(vec![Stmt::DnatPick {
                proto: Protocol::Tcp,
                offset: 0,
                map: "endpoints".into(),
            }]),
        ],
    ));
    t.add_chain(chain(
        "svc-gap",
        vec![
            not_pod_masq(),
            rule(vec![Stmt::DnatPick {
                proto: Protocol::Udp,
                offset: 65536,
                map: "endpoints".into(),
            }]),
        ],
    ));
}

/// `kube_like`'s affinity service svc-aff and its endpoint chains ep-a, ep-b, ep-c.
fn add_affinity_chains(t: &mut Table) {
    let mut aff = vec![not_pod_masq()];
    for x in ["a", "b", "c"] {
        aff.push(rule(vec![
            Stmt::Lookup {
                key: vec![Field::Saddr],
                set: format!("affinity-{x}"),
                negate: false,
            },
            Stmt::goto(format!("ep-{x}")),
        ]));
    }
    aff.push(rule(vec![
        Stmt::cmp(
            Field::Numgen {
                modulus: 3,
                offset: 0,
            },
            Value::Int(0),
        ),
        Stmt::goto("ep-a"),
    ]));
    aff.push(rule(vec![
        Stmt::cmp(
            Field::Numgen {
                modulus: 2,
                offset: 0,
            },
            Value::Int(0),
        ),
        Stmt::goto("ep-b"),
    ]));
    aff.push(rule(vec![Stmt::goto("ep-c")]));
    t.add_chain(chain("svc-aff", aff));
    for (x, addr) in [
        ("a", "10.244.5.1"),
        ("b", "10.244.5.2"),
        ("c", "10.244.5.3"),
    ] {
        t.add_chain(chain(
            &format!("ep-{x}"),
            vec![
                rule(vec![Stmt::Update {
                    set: format!("affinity-{x}"),
                    key: vec![Field::Saddr],
                }]),
                rule(vec![Stmt::DnatTo {
                    proto: Protocol::Tcp,
                    addr: ip(addr),
                    port: 8080,
                }]),
            ],
        ));
    }
}

/// `kube_like`'s NodePort chains: ext-web (eTP Cluster), ext-local (eTP Local).
fn add_nodeport_chains(t: &mut Table) {
    t.add_chain(chain(
        "ext-web",
        vec![
            rule(vec![Stmt::jump("mark-for-masquerade")]),
            rule(vec![Stmt::goto("svc-web")]),
        ],
    ));
    t.add_chain(chain(
        "ext-local",
        vec![
            rule(vec![
                Stmt::cmp(Field::Saddr, net(POD_CIDR)),
                Stmt::goto("svc-web"),
            ]),
            rule(vec![
                Stmt::cmp(Field::FibSaddrType, Value::FibType(FibType::Local)),
                Stmt::jump("mark-for-masquerade"),
            ]),
            rule(vec![
                Stmt::cmp(Field::FibSaddrType, Value::FibType(FibType::Local)),
                Stmt::goto("svc-web"),
            ]),
            rule(vec![Stmt::Verdict(Verdict::Drop)]),
        ],
    ));
}

mod affinity;
mod chains;
mod kube;
