use std::net::IpAddr;

use super::*;
use crate::nft::tx::ChainDecl;
use crate::nft::{ChainType, Hook, Protocol};
use crate::nft::{DataType, Family, Field, SetData, Stmt, Value, Verdict};

fn tref() -> TableRef {
    TableRef::new(Family::V4, "kproxy")
}

fn add_table() -> Op {
    Op::AddTable {
        table: tref(),
        comment: None,
    }
}

fn add_chain(name: &str) -> Op {
    Op::AddChain {
        table: tref(),
        chain: ChainDecl {
            name: name.into(),
            base: None,
            comment: None,
        },
    }
}

fn add_base(name: &str) -> Op {
    Op::AddChain {
        table: tref(),
        chain: ChainDecl {
            name: name.into(),
            base: Some(crate::nft::BaseChain {
                kind: ChainType::Nat,
                hook: Hook::Prerouting,
                priority: -100,
            }),
            comment: None,
        },
    }
}

fn rule(chain: &str, stmts: Vec<Stmt>) -> Op {
    Op::AddRule {
        table: tref(),
        chain: chain.into(),
        rule: Rule::new(stmts),
    }
}

fn vmap() -> Set {
    Set::new(
        "vmap",
        vec![
            DataType::Ipv4Addr,
            DataType::InetProto,
            DataType::InetService,
        ],
        SetData::Verdict,
    )
}

fn add_set(s: Set) -> Op {
    Op::AddSet {
        table: tref(),
        set: Box::new(s),
    }
}

fn key(i: u8) -> Vec<Value> {
    vec![
        Value::Addr(IpAddr::from([10, 0, 0, i])),
        Value::Proto(Protocol::Tcp),
        Value::Port(80),
    ]
}

fn add_el(set: &str, elements: Vec<Element>) -> Op {
    Op::AddElements {
        table: tref(),
        set: set.into(),
        elements,
    }
}

fn del_el(set: &str, keys: Vec<Vec<Value>>) -> Op {
    Op::DeleteElements {
        table: tref(),
        set: set.into(),
        keys,
    }
}

fn del_chain(name: &str) -> Op {
    Op::DeleteChain {
        table: tref(),
        chain: name.into(),
    }
}

fn flush(name: &str) -> Op {
    Op::FlushChain {
        table: tref(),
        chain: name.into(),
    }
}

fn tx(ops: Vec<Op>) -> Transaction {
    Transaction { ops }
}

/// The (index, errno) a transaction is refused with.
fn refused(b: &mut FakeBackend, t: &Transaction) -> (usize, i32) {
    let before = b.state().clone();
    match b.apply(t) {
        Err(BackendError::Rejected { failures }) => {
            assert_eq!(failures.len(), 1);
            assert!(failures[0]
                .op
                .starts_with(&t.ops[failures[0].index].describe()));
            assert_eq!(b.state(), &before, "a refused transaction changes nothing");
            (failures[0].index, failures[0].errno)
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// A table with a vmap entering chain `svc`, referenced from `services`.
fn base() -> FakeBackend {
    let mut b = FakeBackend::new();
    b.apply(&tx(vec![
        add_table(),
        add_set(vmap()),
        add_chain("services"),
        add_chain("svc"),
        add_base("nat-prerouting"),
        rule("nat-prerouting", vec![Stmt::jump("services")]),
        rule(
            "services",
            vec![Stmt::Vmap {
                key: vec![Field::Daddr, Field::L4Proto, Field::ThDport],
                map: "vmap".into(),
            }],
        ),
        rule("svc", vec![Stmt::Verdict(Verdict::Accept)]),
        add_el(
            "vmap",
            vec![Element::verdict(key(1), Verdict::Goto("svc".into()))],
        ),
    ]))
    .expect("valid");
    b
}

#[test]
fn applies_and_dumps() {
    let mut b = base();
    let rs = b.dump().unwrap();
    let t = rs.table(Family::V4).unwrap();
    assert_eq!(t.chains.len(), 3);
    assert_eq!(t.sets["vmap"].elements.len(), 1);
    assert_eq!(b.applies(), 1);
    assert_eq!(b.commits(), 1);
    assert_eq!(b.last_transaction().unwrap().len(), 9);
    // Empty transactions succeed and send nothing.
    assert_eq!(
        b.apply(&Transaction::new()).unwrap(),
        ApplyReport::default()
    );
    assert_eq!(b.commits(), 1);
}

#[test]
fn missing_objects_are_enoent() {
    let mut b = base();
    for op in [
        rule("nope", vec![]),
        rule("services", vec![Stmt::jump("later")]),
        rule(
            "services",
            vec![Stmt::Lookup {
                key: vec![Field::Daddr],
                set: "nope".into(),
                negate: false,
            }],
        ),
        add_el(
            "vmap",
            vec![Element::verdict(key(2), Verdict::Jump("later".into()))],
        ),
        add_el("nope", vec![]),
        del_el("vmap", vec![key(9)]),
        del_chain("nope"),
        flush("nope"),
        Op::DeleteSet {
            table: tref(),
            set: "nope".into(),
        },
        Op::DeleteTable {
            table: TableRef::new(Family::V6, "kproxy"),
        },
        Op::AddChain {
            table: TableRef::new(Family::V6, "kproxy"),
            chain: ChainDecl {
                name: "x".into(),
                base: None,
                comment: None,
            },
        },
    ] {
        assert_eq!(
            refused(&mut b, &tx(vec![op.clone()])),
            (0, libc::ENOENT),
            "{op:?}"
        );
    }
    // A target that exists only later in the transaction is refused too, at its index.
    let t = tx(vec![
        rule("services", vec![Stmt::jump("later")]),
        add_chain("later"),
    ]);
    assert_eq!(refused(&mut b, &t), (0, libc::ENOENT));
    let t = tx(vec![
        add_chain("later"),
        rule("services", vec![Stmt::jump("later")]),
    ]);
    b.apply(&t).unwrap();
    // The same key deleted twice in one op.
    let t = tx(vec![del_el("vmap", vec![key(1), key(1)])]);
    assert_eq!(refused(&mut b, &t), (0, libc::ENOENT));
}

#[test]
fn elements_exist_and_clash() {
    let mut b = base();
    // Identical re-add: accepted, no change (comment of the existing one kept).
    let same = Element::verdict(key(1), Verdict::Goto("svc".into())).with_comment("new");
    b.apply(&tx(vec![add_el("vmap", vec![same])])).unwrap();
    let t = b.state().table(Family::V4).unwrap();
    assert_eq!(t.sets["vmap"].elements.get(&key(1)).unwrap().comment, None);
    // Other data: EEXIST; delete then add: fine.
    let other = Element::verdict(key(1), Verdict::Drop);
    assert_eq!(
        refused(&mut b, &tx(vec![add_el("vmap", vec![other.clone()])])),
        (0, libc::EEXIST)
    );
    b.apply(&tx(vec![
        del_el("vmap", vec![key(1)]),
        add_el("vmap", vec![other]),
    ]))
    .unwrap();
}

#[test]
fn references_are_busy() {
    let mut b = base();
    // Chain entered by a vmap element.
    assert_eq!(
        refused(&mut b, &tx(vec![flush("svc"), del_chain("svc")])),
        (1, libc::EBUSY)
    );
    // Chain entered by a rule.
    assert_eq!(
        refused(&mut b, &tx(vec![del_chain("services")])),
        (0, libc::EBUSY)
    );
    // Set used by a rule.
    let del_set = Op::DeleteSet {
        table: tref(),
        set: "vmap".into(),
    };
    assert_eq!(
        refused(&mut b, &tx(vec![del_set.clone()])),
        (0, libc::EBUSY)
    );
    // Flushing the referrer first makes both deletions valid; a chain with rules may
    // be deleted (the kernel drops them with it).
    b.apply(&tx(vec![
        flush("nat-prerouting"),
        flush("services"),
        del_set,
        del_chain("services"),
        del_chain("svc"),
    ]))
    .unwrap();
    let t = b.state().table(Family::V4).unwrap();
    assert_eq!(t.chains.len(), 1);
    assert!(t.sets.is_empty());
}

#[test]
fn pre_6_2_refuses_chain_delete_after_element_delete() {
    let t = tx(vec![del_el("vmap", vec![key(1)]), del_chain("svc")]);
    let mut b = base();
    b.apply(&t).unwrap();
    let mut old = FakeBackend::with_state(base().state().clone()).kernel_pre_6_2();
    assert_eq!(refused(&mut old, &t), (1, libc::EBUSY));
    // In two transactions it works.
    old.apply(&tx(vec![del_el("vmap", vec![key(1)])])).unwrap();
    old.apply(&tx(vec![del_chain("svc")])).unwrap();
    // Replacing the element's verdict also pins the old target.
    let mut old = FakeBackend::with_state(base().state().clone()).kernel_pre_6_2();
    let t = tx(vec![
        del_el("vmap", vec![key(1)]),
        add_el("vmap", vec![Element::verdict(key(1), Verdict::Drop)]),
        del_chain("svc"),
    ]);
    assert_eq!(refused(&mut old, &t), (2, libc::EBUSY));
    assert_eq!(FakeBackend::pre_6_2().state(), &Ruleset::default());
}

#[test]
fn kinds_are_einval() {
    let mut b = base();
    let ips = Set::new("ips", vec![DataType::Ipv4Addr], SetData::None);
    b.apply(&tx(vec![add_set(ips)])).unwrap();
    let lookup = |set: &str, key: Vec<Field>| {
        rule(
            "services",
            vec![Stmt::Lookup {
                key,
                set: set.into(),
                negate: false,
            }],
        )
    };
    let net: ipnetwork::IpNetwork = "10.0.0.0/8".parse().unwrap();
    let bad = [
        // Map where a set is needed, and the reverse.
        lookup("vmap", vec![Field::Daddr, Field::L4Proto, Field::ThDport]),
        rule(
            "services",
            vec![Stmt::Vmap {
                key: vec![Field::Daddr],
                map: "ips".into(),
            }],
        ),
        // Key arity / length.
        lookup("ips", vec![Field::Daddr, Field::ThDport]),
        lookup("ips", vec![Field::ThDport]),
        // Element arity, kinds, data.
        add_el("ips", vec![Element::key(vec![Value::Port(1)])]),
        add_el("ips", vec![Element::key(vec![Value::Net(net)])]),
        add_el(
            "ips",
            vec![Element::verdict(
                vec![Value::Addr([1, 1, 1, 1].into())],
                Verdict::Drop,
            )],
        ),
        add_el("vmap", vec![Element::key(key(3))]),
        add_el(
            "vmap",
            vec![Element::verdict(key(3)[..2].to_vec(), Verdict::Drop)],
        ),
        add_el(
            "vmap",
            vec![Element::verdict(
                vec![
                    Value::Addr("::1".parse().unwrap()),
                    Value::Proto(Protocol::Tcp),
                    Value::Port(1),
                ],
                Verdict::Drop,
            )],
        ),
        rule(
            "services",
            vec![Stmt::DnatPick {
                proto: Protocol::Tcp,
                offset: 0,
                map: "vmap".into(),
            }],
        ),
    ];
    for op in bad {
        assert_eq!(
            refused(&mut b, &tx(vec![op.clone()])),
            (0, libc::EINVAL),
            "{op:?}"
        );
    }
    // Jumping to a base chain.
    let t = tx(vec![rule("services", vec![Stmt::jump("nat-prerouting")])]);
    assert_eq!(refused(&mut b, &t), (0, libc::EOPNOTSUPP));
}

#[test]
fn declarations_cannot_change_in_place() {
    let mut b = base();
    let mut s = vmap();
    s.comment = Some("a comment is ignored".into());
    b.apply(&tx(vec![
        add_set(s.clone()),
        add_chain("svc"),
        add_base("nat-prerouting"),
    ]))
    .unwrap();
    assert_eq!(
        b.state().table(Family::V4).unwrap().sets["vmap"].comment,
        None
    );
    s.flags.interval = true;
    assert_eq!(refused(&mut b, &tx(vec![add_set(s)])), (0, libc::EEXIST));
    let mut c = add_base("svc");
    assert_eq!(refused(&mut b, &tx(vec![c.clone()])), (0, libc::EEXIST));
    if let Op::AddChain { chain, .. } = &mut c {
        chain.name = "nat-prerouting".into();
        chain.base.as_mut().unwrap().priority = 0;
    }
    assert_eq!(refused(&mut b, &tx(vec![c])), (0, libc::EEXIST));
}

#[test]
fn intervals_do_not_overlap() {
    let mut b = base();
    let mut s = Set::new("cidrs", vec![DataType::Ipv4Addr], SetData::None);
    s.flags.interval = true;
    let net = |s: &str| Element::key(vec![Value::Net(s.parse().unwrap())]);
    b.apply(&tx(vec![
        add_set(s),
        add_el("cidrs", vec![net("10.0.0.0/16")]),
    ]))
    .unwrap();
    let t = tx(vec![add_el("cidrs", vec![net("10.0.0.0/8")])]);
    assert_eq!(refused(&mut b, &t), (0, libc::EEXIST));
    b.apply(&tx(vec![
        del_el("cidrs", vec![net("10.0.0.0/16").key]),
        add_el("cidrs", vec![net("10.0.0.0/8"), net("192.168.0.0/16")]),
    ]))
    .unwrap();
}

#[test]
fn injected_failure_then_retry() {
    let mut b = base();
    let before = b.state().clone();
    b.fail_next(libc::ENOBUFS);
    let t = tx(vec![add_chain("x")]);
    assert_eq!(refused(&mut b, &t), (0, libc::ENOBUFS));
    assert_eq!(b.state(), &before);
    b.apply(&t).unwrap();
    assert_eq!(b.applies(), 3);
    assert_eq!(b.commits(), 2);
    assert_eq!(b.last_transaction(), Some(&t));
}

#[test]
fn bulk_element_ops() {
    let mut b = base();
    let mut s = Set::new("marks", vec![DataType::Mark], SetData::None);
    s.size = Some(1000);
    let els: Vec<Element> = (0..500)
        .rev()
        .map(|i| Element::key(vec![Value::Int(i)]))
        .collect();
    b.apply(&tx(vec![add_set(s), add_el("marks", els)]))
        .unwrap();
    let keys: Vec<Vec<Value>> = (0..500).step_by(2).map(|i| vec![Value::Int(i)]).collect();
    b.apply(&tx(vec![del_el("marks", keys)])).unwrap();
    let t = b.state().table(Family::V4).unwrap();
    let left: Vec<u32> = t.sets["marks"]
        .elements
        .iter()
        .map(|e| match e.key[0] {
            Value::Int(i) => i,
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(left, (1..500).step_by(2).collect::<Vec<u32>>());
}
