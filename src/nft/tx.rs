//! A transaction: the ordered operations that turn what the kernel holds into what was
//! meant, applied atomically (one netlink batch).
//!
//! Owns: the operation vocabulary shared by `diff` (produces it), `backend::fake` and
//! `backend::netlink` (apply it) and `nft::text` (prints it as `nft -f` commands for
//! `--dry-run` and logs).
//!
//! Semantics of each operation are the kernel's (as `nft` commands):
//! - `AddTable`, `AddChain`, `AddSet` create the object if missing and leave an existing
//!   one alone (no `NLM_F_EXCL`), like `nft add`.
//! - `AddRule` appends to the chain. `FlushChain` removes every rule of the chain.
//! - `AddElements` adds elements; an existing key is an error unless the element is
//!   identical (kernel: `EEXIST` with `NLM_F_EXCL`, which kproxy never sets, so it is not
//!   an error). To change an element's data, delete then add it in the same transaction.
//! - `DeleteElements`, `DeleteChain`, `DeleteSet`, `DeleteTable` fail on missing objects
//!   (`ENOENT`); deleting a chain or set that something still references fails (`EBUSY`).
//!
//! Must not: do I/O.

use super::{BaseChain, Element, Family, Rule, Set, Value};

/// Which table an operation works on.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TableRef {
    pub family: Family,
    pub name: String,
}

impl TableRef {
    pub fn new(family: Family, name: impl Into<String>) -> TableRef {
        TableRef {
            family,
            name: name.into(),
        }
    }
}

/// A chain's declaration without its rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainDecl {
    pub name: String,
    pub base: Option<BaseChain>,
    pub comment: Option<String>,
}

/// One operation of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    AddTable {
        table: TableRef,
        comment: Option<String>,
    },
    DeleteTable {
        table: TableRef,
    },
    AddChain {
        table: TableRef,
        chain: ChainDecl,
    },
    FlushChain {
        table: TableRef,
        chain: String,
    },
    DeleteChain {
        table: TableRef,
        chain: String,
    },
    AddRule {
        table: TableRef,
        chain: String,
        rule: Rule,
    },
    /// Declares a set or map; its `elements` are ignored (use `AddElements`). Boxed: the
    /// declaration is the largest payload, and every operation is as large as the
    /// largest variant (a full sync at 50k services holds ~140k operations).
    AddSet {
        table: TableRef,
        set: Box<Set>,
    },
    DeleteSet {
        table: TableRef,
        set: String,
    },
    AddElements {
        table: TableRef,
        set: String,
        elements: Vec<Element>,
    },
    DeleteElements {
        table: TableRef,
        set: String,
        keys: Vec<Vec<Value>>,
    },
}

impl Op {
    pub fn table(&self) -> &TableRef {
        match self {
            Op::AddTable { table, .. }
            | Op::DeleteTable { table }
            | Op::AddChain { table, .. }
            | Op::FlushChain { table, .. }
            | Op::DeleteChain { table, .. }
            | Op::AddRule { table, .. }
            | Op::AddSet { table, .. }
            | Op::DeleteSet { table, .. }
            | Op::AddElements { table, .. }
            | Op::DeleteElements { table, .. } => table,
        }
    }

    /// A short description for logs and error messages, e.g.
    /// `add rule ip kproxy services` or `delete element ip kproxy endpoints (3 elements)`.
    pub fn describe(&self) -> String {
        self.describe_with(self.items())
    }

    /// How many elements (or keys) the operation carries; 0 for other kinds.
    pub fn items(&self) -> usize {
        match self {
            Op::AddElements { elements, .. } => elements.len(),
            Op::DeleteElements { keys, .. } => keys.len(),
            _ => 0,
        }
    }

    /// [`Op::describe`] with the element count given: for an operation whose payload a
    /// backend already dropped ([`Op::shed_payload`]).
    pub fn describe_with(&self, items: usize) -> String {
        let t = self.table();
        let tn = format!("{} {}", t.family, t.name);
        match self {
            Op::AddTable { .. } => format!("add table {tn}"),
            Op::DeleteTable { .. } => format!("delete table {tn}"),
            Op::AddChain { chain, .. } => format!("add chain {tn} {}", chain.name),
            Op::FlushChain { chain, .. } => format!("flush chain {tn} {chain}"),
            Op::DeleteChain { chain, .. } => format!("delete chain {tn} {chain}"),
            Op::AddRule { chain, .. } => format!("add rule {tn} {chain}"),
            Op::AddSet { set, .. } => format!(
                "add {} {tn} {}",
                if set.is_map() { "map" } else { "set" },
                set.name
            ),
            Op::DeleteSet { set, .. } => format!("delete set {tn} {set}"),
            Op::AddElements { set, .. } => format!("add element {tn} {set} ({items} elements)"),
            Op::DeleteElements { set, .. } => {
                format!("delete element {tn} {set} ({items} elements)")
            }
        }
    }

    /// Drops the operation's bulk — a rule's statements, the elements, the keys — once a
    /// backend has encoded it, keeping what names the operation (table, chain, set, a set
    /// declaration). At 50k services the operations hold ~200 MiB that the encoded batch
    /// repeats in a third of the space; shedding each one as it is encoded keeps the two
    /// from being held at once.
    pub fn shed_payload(&mut self) {
        match self {
            Op::AddRule { rule, .. } => rule.stmts = Vec::new(),
            Op::AddElements { elements, .. } => *elements = Vec::new(),
            Op::DeleteElements { keys, .. } => *keys = Vec::new(),
            _ => {}
        }
    }
}

/// Counts that say how big a transaction is (for logs and metrics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TxStats {
    /// Operations (each becomes one or more netlink messages).
    pub ops: usize,
    pub chains_added: usize,
    pub chains_flushed: usize,
    pub chains_deleted: usize,
    pub rules: usize,
    pub sets_added: usize,
    pub sets_deleted: usize,
    pub elements_added: usize,
    pub elements_deleted: usize,
}

/// An ordered list of operations, applied all-or-nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Transaction {
    pub ops: Vec<Op>,
}

impl Transaction {
    pub fn new() -> Transaction {
        Transaction::default()
    }
    pub fn push(&mut self, op: Op) {
        self.ops.push(op);
    }
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
    pub fn len(&self) -> usize {
        self.ops.len()
    }
    pub fn stats(&self) -> TxStats {
        let mut s = TxStats {
            ops: self.ops.len(),
            ..TxStats::default()
        };
        for op in &self.ops {
            match op {
                Op::AddChain { .. } => s.chains_added += 1,
                Op::FlushChain { .. } => s.chains_flushed += 1,
                Op::DeleteChain { .. } => s.chains_deleted += 1,
                Op::AddRule { .. } => s.rules += 1,
                Op::AddSet { .. } => s.sets_added += 1,
                Op::DeleteSet { .. } => s.sets_deleted += 1,
                Op::AddElements { elements, .. } => s.elements_added += elements.len(),
                Op::DeleteElements { keys, .. } => s.elements_deleted += keys.len(),
                Op::AddTable { .. } | Op::DeleteTable { .. } => {}
            }
        }
        s
    }
}

/// A table with one interval endpoint map of `n` ranges (`4i-4i+3 : 10.0.0.0+i . 8080`,
/// commented): a
/// transaction large enough to span many batch pages (tests of big transactions).
#[cfg(any(test, feature = "test-util"))]
pub fn slot_map_load(table: &TableRef, n: u32) -> Transaction {
    use super::{DataType, SetData};
    let mut set = Set::new(
        "endpoints",
        vec![DataType::Pick],
        SetData::Values(vec![DataType::Ipv4Addr, DataType::InetService]),
    );
    set.flags.interval = true;
    set.comment = Some("slots".into());
    let elements = (0..n)
        .map(|i| {
            Element::values(
                vec![Value::Range(4 * i, 4 * i + 3)],
                vec![
                    Value::Addr(std::net::IpAddr::from((0x0a00_0000 + i).to_be_bytes())),
                    Value::Port(8080),
                ],
            )
            .with_comment("ns/svc:http")
        })
        .collect();
    let mut tx = Transaction::new();
    tx.push(Op::AddTable {
        table: table.clone(),
        comment: None,
    });
    tx.push(Op::AddSet {
        table: table.clone(),
        set: Box::new(set),
    });
    tx.push(Op::AddElements {
        table: table.clone(),
        set: "endpoints".into(),
        elements,
    });
    tx
}
