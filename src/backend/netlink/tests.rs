//! Encoder tests without a kernel: every operation and statement encodes, the sequence
//! table covers every message, large batches page correctly, and what is encoded decodes
//! back to the same value.

use std::net::IpAddr;

use super::decode;
use super::encode::*;
use super::nf_tables::c;
use crate::netlink::wire::messages;
use crate::nft::tx::{ChainDecl, Op, TableRef, Transaction};
use crate::nft::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn net(s: &str) -> Value {
    Value::Net(s.parse().unwrap())
}

/// Addresses of `family`: a service IP, an endpoint IP, a byte-aligned and an odd prefix.
fn sample_addrs(family: Family) -> (IpAddr, IpAddr, &'static str, &'static str) {
    match family {
        Family::V4 => (
            ip("10.96.0.10"),
            ip("10.244.1.5"),
            "10.244.0.0/16",
            "10.240.0.0/12",
        ),
        Family::V6 => (
            ip("fd00::10"),
            ip("fd00:1::5"),
            "fd00:1::/64",
            "fd00:1::/33",
        ),
    }
}

fn every_stmt(family: Family) -> Vec<Rule> {
    let (a, _, _, _) = sample_addrs(family);
    let fields = [Field::Saddr, Field::Daddr];
    let mut rules = compare_rules(family);
    rules.extend(set_and_action_rules(family));
    for f in fields {
        rules.push(Rule::new(vec![
            Stmt::cmp(f.clone(), Value::Addr(a)),
            Stmt::jump("mark"),
        ]));
    }
    rules
}

/// Every field compared (equal and not equal) with every kind of value.
fn compare_rules(family: Family) -> Vec<Rule> {
    let (a, _, n, odd) = sample_addrs(family);
    vec![
        Rule::new(vec![
            Stmt::cmp(Field::Daddr, Value::Addr(a)),
            Stmt::cmp(Field::Dport(Protocol::Tcp), Value::Port(80)),
            Stmt::cmp_ne(Field::Saddr, net(n)),
            Stmt::jump("mark"),
        ])
        .with_comment("masquerade \"quoted\""),
        Rule::new(vec![
            Stmt::cmp(Field::Saddr, net(odd)),
            Stmt::Verdict(Verdict::Accept),
        ]),
        Rule::new(vec![
            Stmt::cmp_ne(Field::Dport(Protocol::Udp), Value::Port(53)),
            Stmt::cmp(Field::Dport(Protocol::Sctp), Value::Port(9)),
            Stmt::Verdict(Verdict::Drop),
        ]),
        Rule::new(vec![
            Stmt::cmp(Field::L4Proto, Value::Proto(Protocol::Udp)),
            Stmt::cmp_ne(Field::Mark, Value::Int(5)),
            Stmt::cmp(Field::MarkAnd(0x4000), Value::Int(0)),
            Stmt::Verdict(Verdict::Return),
        ]),
        Rule::new(vec![
            Stmt::cmp(Field::Iifname, Value::Iface("cni0".into())),
            Stmt::cmp_ne(Field::Iifname, Value::Iface("veth*".into())),
            Stmt::goto("svc"),
        ]),
        Rule::new(vec![
            Stmt::cmp(Field::FibSaddrType, Value::FibType(FibType::Local)),
            Stmt::cmp_ne(Field::FibDaddrType, Value::FibType(FibType::Local)),
            Stmt::cmp(Field::CtState, Value::CtState(CtState::New)),
            Stmt::cmp_ne(Field::CtState, Value::CtState(CtState::New)),
            Stmt::cmp(Field::CtStatus, Value::CtStatus(CtStatus::Dnat)),
            Stmt::cmp_ne(Field::CtStatus, Value::CtStatus(CtStatus::Dnat)),
            Stmt::cmp(
                Field::Numgen {
                    modulus: 3,
                    offset: 0,
                },
                Value::Int(0),
            ),
            Stmt::cmp_ne(
                Field::Numgen {
                    modulus: 4,
                    offset: 7,
                },
                Value::Int(9),
            ),
            Stmt::goto("svc"),
        ]),
    ]
}

/// Set lookups, verdict maps, set updates, NAT, marks, masquerade and reject.
fn set_and_action_rules(family: Family) -> Vec<Rule> {
    let (_, b, _, _) = sample_addrs(family);
    vec![
        Rule::new(vec![
            Stmt::Lookup {
                key: vec![Field::Daddr, Field::L4Proto, Field::ThDport],
                set: "fw".into(),
                negate: false,
            },
            Stmt::Lookup {
                key: vec![Field::Daddr, Field::L4Proto, Field::ThDport, Field::Saddr],
                set: "allow".into(),
                negate: true,
            },
            Stmt::Verdict(Verdict::Drop),
        ]),
        Rule::new(vec![
            Stmt::Lookup {
                key: vec![Field::Daddr],
                set: "cidrs".into(),
                negate: false,
            },
            Stmt::Vmap {
                key: vec![Field::L4Proto, Field::ThDport],
                map: "vm".into(),
            },
        ]),
        Rule::new(vec![Stmt::Vmap {
            key: vec![Field::Daddr, Field::L4Proto, Field::ThDport],
            map: "vm3".into(),
        }]),
        Rule::new(vec![
            Stmt::Update {
                set: "aff".into(),
                key: vec![Field::Saddr],
            },
            Stmt::DnatTo {
                proto: Protocol::Tcp,
                addr: b,
                port: 8080,
            },
        ]),
        Rule::new(vec![Stmt::DnatPick {
            proto: Protocol::Udp,
            offset: 65536,
            map: "endpoints".into(),
        }]),
        Rule::new(vec![affinity_rule(AffinityStep::Known {
            map: "aff-state".into(),
            timeout: 600,
        })]),
        Rule::new(vec![affinity_rule(AffinityStep::Repick {
            map: "aff-state".into(),
            timeout: 86400,
        })]),
        Rule::new(vec![affinity_rule(AffinityStep::Full)]),
        Rule::new(vec![Stmt::SetMark(MarkOp::Or(0x4000))]),
        Rule::new(vec![Stmt::SetMark(MarkOp::Xor(0x4000))]),
        Rule::new(vec![Stmt::Masquerade]),
        Rule::new(vec![Stmt::Reject]).with_comment("reject"),
        Rule::new(vec![Stmt::Lookup {
            key: vec![Field::Saddr, Field::Daddr],
            set: "hairpin".into(),
            negate: false,
        }]),
    ]
}

fn affinity_rule(step: AffinityStep) -> Stmt {
    Stmt::DnatAffinity {
        proto: Protocol::Tcp,
        list: 7,
        offset: 131072,
        pick: "aff-pick".into(),
        endpoints: "aff-live".into(),
        step,
    }
}

fn every_set(family: Family) -> Vec<Set> {
    let addr = DataType::addr(family);
    let mut fw = Set::new(
        "fw",
        vec![addr, DataType::InetProto, DataType::InetService],
        SetData::None,
    );
    fw.comment = Some("fw".into());
    let mut allow = Set::new(
        "allow",
        vec![addr, DataType::InetProto, DataType::InetService, addr],
        SetData::None,
    );
    allow.flags.interval = true;
    let mut cidrs = Set::new("cidrs", vec![addr], SetData::None);
    cidrs.flags.interval = true;
    let vm = Set::new(
        "vm",
        vec![DataType::InetProto, DataType::InetService],
        SetData::Verdict,
    );
    let vm3 = Set::new(
        "vm3",
        vec![addr, DataType::InetProto, DataType::InetService],
        SetData::Verdict,
    );
    let mut aff = Set::new("aff", vec![addr], SetData::None);
    aff.flags.dynamic = true;
    aff.flags.timeout = true;
    aff.timeout = Some(600);
    aff.size = Some(1000); // 65535 on a dynamic set reads back as None (the kernel default)
    let mut endpoints = Set::new(
        "endpoints",
        vec![DataType::Pick],
        SetData::Values(vec![addr, DataType::InetService]),
    )
    .with_comment("picks");
    endpoints.flags.interval = true;
    let hairpin = Set::new("hairpin", vec![addr, addr], SetData::None);
    let marks = Set::new("marks", vec![DataType::Mark], SetData::None);
    let mut aff_state = Set::new(
        "aff-state",
        vec![addr, DataType::Mark],
        SetData::Values(vec![DataType::Mark]),
    );
    aff_state.flags.dynamic = true;
    aff_state.flags.timeout = true;
    aff_state.timeout = Some(10800);
    aff_state.size = Some(1 << 20);
    let mut aff_pick = Set::new(
        "aff-pick",
        vec![DataType::Pick],
        SetData::Values(vec![DataType::Mark]),
    );
    aff_pick.flags.interval = true;
    let aff_live = Set::new(
        "aff-live",
        vec![DataType::Mark, DataType::Mark],
        SetData::Values(vec![addr, DataType::InetService]),
    );
    vec![
        fw, allow, cidrs, vm, vm3, aff, endpoints, hairpin, marks, aff_state, aff_pick, aff_live,
    ]
}

fn every_element(family: Family, set: &Set) -> Vec<Element> {
    let (a, b, n1, n2, top) = match family {
        Family::V4 => (
            ip("10.0.0.1"),
            ip("10.0.0.2"),
            "10.96.0.0/16",
            "192.168.0.0/24",
            "255.0.0.0/8",
        ),
        Family::V6 => (
            ip("fd00::1"),
            ip("fd00::2"),
            "fd00:10:96::/112",
            "fd00:1::/64",
            "ff00::/8",
        ),
    };
    match set.name.as_str() {
        "fw" => vec![Element::key(vec![
            Value::Addr(a),
            Value::Proto(Protocol::Tcp),
            Value::Port(80),
        ])
        .with_comment("ns/svc:http")],
        "allow" => vec![
            Element::key(vec![
                Value::Addr(a),
                Value::Proto(Protocol::Tcp),
                Value::Port(80),
                net(n2),
            ])
            .with_comment("x"),
            Element::key(vec![
                Value::Addr(a),
                Value::Proto(Protocol::Udp),
                Value::Port(53),
                Value::Addr(b),
            ]),
        ],
        "cidrs" => vec![
            Element::key(vec![net(n1)]).with_comment("cidr"),
            Element::key(vec![Value::Addr(b)]),
            Element::key(vec![net(top)]),
        ],
        "vm" => vec![
            Element::verdict(
                vec![Value::Proto(Protocol::Tcp), Value::Port(30080)],
                Verdict::Goto("svc".into()),
            )
            .with_comment("ns/svc:http"),
            Element::verdict(
                vec![Value::Proto(Protocol::Udp), Value::Port(30053)],
                Verdict::Drop,
            ),
        ],
        "vm3" => vec![Element::verdict(
            vec![Value::Addr(a), Value::Proto(Protocol::Tcp), Value::Port(80)],
            Verdict::Jump("mark".into()),
        )],
        "endpoints" => vec![
            Element::values(
                vec![Value::Range(65536, 98303)],
                vec![Value::Addr(a), Value::Port(8080)],
            )
            .with_comment("ns/svc:http cluster 1/2"),
            Element::values(
                vec![Value::Range(98304, 131071)],
                vec![Value::Addr(b), Value::Port(8080)],
            ),
        ],
        "hairpin" => vec![Element::key(vec![Value::Addr(a), Value::Addr(a)])],
        "marks" => vec![Element::key(vec![Value::Int(0x4000)])],
        "aff-pick" => vec![
            Element::values(vec![Value::Range(131072, 163839)], vec![Value::Int(1)])
                .with_comment("ns/svc:http cluster"),
            Element::values(vec![Value::Range(163840, 196607)], vec![Value::Int(2)]),
        ],
        "aff-live" => vec![
            Element::values(
                vec![Value::Int(7), Value::Int(1)],
                vec![Value::Addr(a), Value::Port(8080)],
            ),
            Element::values(
                vec![Value::Int(7), Value::Int(2)],
                vec![Value::Addr(b), Value::Port(8080)],
            ),
        ],
        _ => vec![],
    }
}

/// A transaction with every operation kind, every statement, every set shape.
fn full_tx() -> Transaction {
    let mut tx = Transaction::new();
    for family in [Family::V4, Family::V6] {
        let t = TableRef::new(family, "kproxy");
        tx.push(Op::AddTable {
            table: t.clone(),
            comment: Some("rules for kproxy".into()),
        });
        for s in every_set(family) {
            tx.push(Op::AddSet {
                table: t.clone(),
                set: Box::new(s),
            });
        }
        tx.push(Op::AddChain {
            table: t.clone(),
            chain: ChainDecl {
                name: "nat-prerouting".into(),
                base: Some(BaseChain {
                    kind: ChainType::Nat,
                    hook: Hook::Prerouting,
                    priority: -100,
                }),
                comment: Some("base".into()),
            },
        });
        for name in ["mark", "svc", "rules"] {
            tx.push(Op::AddChain {
                table: t.clone(),
                chain: ChainDecl {
                    name: name.into(),
                    base: None,
                    comment: (name == "svc").then(|| "a service".into()),
                },
            });
        }
        for r in every_stmt(family) {
            tx.push(Op::AddRule {
                table: t.clone(),
                chain: "rules".into(),
                rule: r,
            });
        }
        for s in every_set(family) {
            tx.push(Op::AddElements {
                table: t.clone(),
                set: s.name.clone(),
                elements: every_element(family, &s),
            });
        }
        for s in every_set(family) {
            tx.push(Op::DeleteElements {
                table: t.clone(),
                set: s.name.clone(),
                keys: every_element(family, &s)
                    .into_iter()
                    .map(|e| e.key)
                    .collect(),
            });
        }
        tx.push(Op::FlushChain {
            table: t.clone(),
            chain: "rules".into(),
        });
        tx.push(Op::DeleteChain {
            table: t.clone(),
            chain: "rules".into(),
        });
        tx.push(Op::DeleteSet {
            table: t.clone(),
            set: "marks".into(),
        });
        tx.push(Op::DeleteTable { table: t });
    }
    tx
}

#[test]
fn every_op_and_statement_encodes_and_every_message_is_mapped() {
    let tx = full_tx();
    let batch = encode(&tx).expect("encodes");
    let bytes = batch.to_vec();
    let msgs: Vec<_> = messages(&bytes).collect();
    assert_eq!(msgs.len(), batch.messages());
    let mut seen = vec![false; tx.len()];
    for (i, m) in msgs.iter().enumerate() {
        assert_eq!(m.seq, batch.first_seq() + i as u32);
        let info = batch.message(m.seq).expect("every seq is in the table");
        match info.kind {
            MsgKind::BatchBegin => assert_eq!(i, 0),
            MsgKind::BatchEnd => {
                assert_eq!(i, msgs.len() - 1);
                assert_eq!(m.seq, batch.end_seq());
                assert_ne!(m.flags & c::NLM_F_ACK, 0, "BATCH_END asks for the ACK");
            }
            MsgKind::Op => {
                seen[info.op.unwrap()] = true;
                assert_eq!(m.flags & c::NLM_F_ACK, 0, "no per-message ACKs");
                assert_eq!(m.flags & c::NLM_F_EXCL, 0, "no NLM_F_EXCL");
            }
        }
    }
    assert!(seen.iter().all(|s| *s), "every op has a message");
}

#[test]
fn rules_roundtrip_through_bytes() {
    for family in [Family::V4, Family::V6] {
        let t = TableRef::new(family, "kproxy");
        let mut tx = Transaction::new();
        for s in every_set(family) {
            tx.push(Op::AddSet {
                table: t.clone(),
                set: Box::new(s),
            });
        }
        let rules = every_stmt(family);
        for r in &rules {
            tx.push(Op::AddRule {
                table: t.clone(),
                chain: "rules".into(),
                rule: r.clone(),
            });
        }
        let bytes = encode(&tx).unwrap().to_vec();
        let got: Vec<Rule> = messages(&bytes)
            .filter(|m| m.ty == (10 << 8) | c::NFT_MSG_NEWRULE)
            .map(|m| decode::rule(&m, family).2)
            .collect();
        assert_eq!(got.len(), rules.len());
        for (g, r) in got.iter().zip(&rules) {
            let mut want = r.clone();
            // Comments are stored as nft stores them (sanitised).
            want.comment = want.comment.map(|c| clean_comment(&c).into_owned());
            assert_eq!(g, &want, "{family}: {}", text::rule(family, r));
        }
    }
}

#[test]
fn sets_and_elements_roundtrip_through_bytes() {
    for family in [Family::V4, Family::V6] {
        let t = TableRef::new(family, "kproxy");
        let mut tx = Transaction::new();
        let sets = every_set(family);
        for s in &sets {
            tx.push(Op::AddSet {
                table: t.clone(),
                set: Box::new(s.clone()),
            });
            tx.push(Op::AddElements {
                table: t.clone(),
                set: s.name.clone(),
                elements: every_element(family, s),
            });
        }
        let bytes = encode(&tx).unwrap().to_vec();
        let mut decoded: Vec<Set> = Vec::new();
        for m in messages(&bytes) {
            if m.ty == (10 << 8) | c::NFT_MSG_NEWSET {
                decoded.push(decode::set(&m).expect("decodes").1);
            }
            if m.ty == (10 << 8) | c::NFT_MSG_NEWSETELEM {
                let s = decoded.last_mut().unwrap();
                let mut raw = Vec::new();
                decode::raw_elements(&m, &mut raw);
                let els = decode::fold_elements(s, raw, &mut decode::Comments::default());
                s.extend(els);
            }
        }
        for (got, want) in decoded.iter().zip(&sets) {
            let mut want = want.clone();
            want.extend(every_element(family, &want.clone()));
            assert_eq!(got, &want, "{family} set {}", want.name);
        }
    }
}

#[test]
fn large_batches_span_pages() {
    const N: usize = 20_000;
    let tx = crate::nft::tx::slot_map_load(&TableRef::new(Family::V4, "kproxy"), N as u32);
    let batch = encode(&tx).unwrap();
    assert!(batch.len_bytes() > 4 * PAGE_SIZE);
    assert!(batch.pages().len() > 4);
    for p in batch.pages() {
        // Every page holds whole messages.
        let n: usize = messages(p)
            .map(|m| super::wire::align4(16 + m.payload.len()))
            .sum();
        assert_eq!(n, p.len());
    }
    let bytes = batch.to_vec();
    let msgs: Vec<_> = messages(&bytes).collect();
    assert_eq!(msgs.len(), batch.messages());
    // Elements come back complete, and ext-ack offsets map to the right element.
    let mut count = 0;
    for m in &msgs {
        if m.ty == (10 << 8) | c::NFT_MSG_NEWSETELEM {
            let mut raw = Vec::new();
            decode::raw_elements(m, &mut raw);
            let info = batch.message(m.seq).unwrap();
            // Every range is a start and an end element on the wire.
            assert_eq!(2 * info.elems.len(), raw.len());
            let (off, idx) = info.elems[1];
            assert_eq!(batch.element_at(m.seq, off + 4), Some(idx));
            count += raw.len();
        }
    }
    assert_eq!(count, 2 * N);
}

#[test]
fn mistyped_values_are_refused_not_sent() {
    let t = TableRef::new(Family::V4, "kproxy");
    let mut tx = Transaction::new();
    tx.push(Op::AddRule {
        table: t.clone(),
        chain: "c".into(),
        rule: Rule::new(vec![Stmt::cmp(Field::Saddr, Value::Port(1))]),
    });
    let e = encode(&tx).unwrap_err();
    assert_eq!(e.index, 0);
    let mut tx = Transaction::new();
    tx.push(Op::AddRule {
        table: t.clone(),
        chain: "c".into(),
        rule: Rule::new(vec![Stmt::cmp(Field::Saddr, Value::Addr(ip("fd00::1")))]),
    });
    assert!(encode(&tx).is_err());
    let mut tx = Transaction::new();
    tx.push(Op::AddElements {
        table: t,
        set: "unknown".into(),
        elements: vec![],
    });
    assert!(encode(&tx).is_err(), "elements need a known set");
}

#[test]
fn foreign_expressions_decode_to_foreign() {
    use super::expr::Expr;
    let exprs = vec![
        Expr::Other {
            name: "counter".into(),
        },
        Expr::Meta { key: 16, dreg: 1 },
        Expr::Cmp {
            sreg: 1,
            op: 4,
            data: vec![6],
        },
        Expr::Immediate {
            dreg: 0,
            data: super::expr::ImmData::Verdict {
                code: 1,
                chain: None,
            },
        },
    ];
    let s = super::rule::decode_stmts(Family::V4, &exprs);
    assert_eq!(s.len(), 3);
    assert!(matches!(&s[0], Stmt::Foreign(d) if d.contains("counter")));
    assert!(matches!(&s[1], Stmt::Foreign(_)));
    assert_eq!(s[2], Stmt::Verdict(Verdict::Accept));
}

#[test]
fn empty_transaction_is_just_the_batch_frame() {
    let b = encode(&Transaction::new()).unwrap();
    assert_eq!(b.messages(), 2);
    let _ = decode::rule_exprs;
}

/// Regression (tests/decode_fuzz.rs): an NLMSG_ERROR whose code is i32::MIN made `-err`
/// panic ("attempt to negate with overflow").
#[test]
fn an_error_code_of_i32_min_does_not_panic() {
    // A bare NLMSG_ERROR header and its code.
    let mut buf = 20u32.to_ne_bytes().to_vec();
    buf.extend_from_slice(&crate::netlink::wire::c::NLMSG_ERROR.to_ne_bytes());
    buf.extend_from_slice(&[0; 10]);
    buf.extend_from_slice(&i32::MIN.to_ne_bytes());
    let msg = messages(&buf).next().unwrap();
    assert_eq!(super::parse_error(&msg), (i32::MIN, None));
}
