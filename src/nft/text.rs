//! `nft -f` text for a [`Ruleset`]: what `kproxy render` prints, what golden tests compare
//! and what a reviewer reads.
//!
//! Owns: the exact syntax. The output must load with the oldest nft we support (Debian 12's
//! nft 1.0.6), so a few spellings are chosen for that parser:
//! - maps keyed by numgen slots are declared with `typeof numgen random mod 1 : …`, because
//!   `type mark` does not accept numgen's plain integer ("datatype mismatch");
//! - priorities are printed as numbers (valid for every chain type);
//! - every element and rule sits on its own line (1.0.6 mis-parses some one-line blocks).
//!
//! Must not: decide what the rules are. Comments are sanitised (no `"`, at most
//! [`COMMENT_MAX`] bytes) since the kernel keeps them in 256-byte userdata.

use std::fmt::Write;
use std::net::IpAddr;

use super::*;

/// Longest comment printed (the kernel's userdata limit is 256 bytes incl. framing).
pub const COMMENT_MAX: usize = 128;

/// The whole ruleset, one table after another.
pub fn ruleset(rs: &Ruleset) -> String {
    let mut out = String::new();
    let _ = write_ruleset(rs, &mut out);
    out
}

/// [`ruleset`] written piece by piece into `out` (a whole 50k-service ruleset is tens of
/// megabytes of text: a reviewer's `kproxy render` streams it instead of holding it).
pub fn write_ruleset(rs: &Ruleset, out: &mut impl Write) -> std::fmt::Result {
    for (i, t) in rs.tables.iter().enumerate() {
        if i > 0 {
            out.write_char('\n')?;
        }
        write_table(t, out)?;
    }
    Ok(())
}

/// One table block. Sets and maps first (rules refer to them), then base chains in hook
/// order, then regular chains by name.
pub fn table(t: &Table) -> String {
    let mut out = String::new();
    let _ = write_table(t, &mut out);
    out
}

fn write_table(t: &Table, out: &mut impl Write) -> std::fmt::Result {
    writeln!(out, "table {} {} {{", t.family, t.name)?;
    if let Some(c) = &t.comment {
        writeln!(out, "\tcomment {}", quote(c))?;
    }
    for s in t.sets.values() {
        out.write_str(&set(t.family, s))?;
    }
    let mut chains: Vec<&Chain> = t.chains.values().collect();
    chains.sort_by_key(|c| {
        (
            c.base.is_none(),
            c.base.as_ref().map(|b| (b.hook, b.priority)),
            c.name.clone(),
        )
    });
    for c in chains {
        out.write_str(&chain(t.family, c))?;
    }
    out.write_str("}\n")
}

fn set(family: Family, s: &Set) -> String {
    let mut out = String::new();
    let kw = if s.is_map() { "map" } else { "set" };
    let _ = writeln!(out, "\t{kw} {} {{", s.name);
    for line in set_decl(family, s) {
        let _ = writeln!(out, "\t\t{line}");
    }
    if !s.elements.is_empty() {
        out.push_str("\t\telements = {\n");
        let n = s.elements.len();
        for (i, e) in s.elements.iter().enumerate() {
            out.push_str("\t\t\t");
            out.push_str(&element(e));
            out.push_str(if i + 1 < n { ",\n" } else { "\n" });
        }
        out.push_str("\t\t}\n");
    }
    out.push_str("\t}\n\n");
    out
}

/// The declaration lines of a set or map (type, flags, timeout, size, comment).
fn set_decl(family: Family, s: &Set) -> Vec<String> {
    let mut lines = Vec::new();
    let mut out = String::new();
    let data_types: &[DataType] = match &s.data {
        SetData::Values(v) => v,
        _ => &[],
    };
    let use_typeof = s.key.contains(&DataType::Pick) || data_types.contains(&DataType::Pick);
    let _ = write!(out, "{} ", if use_typeof { "typeof" } else { "type" });
    out.push_str(&types(family, &s.key, use_typeof));
    match &s.data {
        SetData::None => {}
        SetData::Verdict => out.push_str(" : verdict"),
        SetData::Values(v) => {
            out.push_str(" : ");
            out.push_str(&types(family, v, use_typeof));
        }
    }
    lines.push(out);
    let mut flags = Vec::new();
    if s.flags.dynamic {
        flags.push("dynamic");
    }
    if s.flags.interval {
        flags.push("interval");
    }
    if s.flags.timeout {
        flags.push("timeout");
    }
    if !flags.is_empty() {
        lines.push(format!("flags {}", flags.join(",")));
    }
    if let Some(t) = s.timeout {
        lines.push(format!("timeout {t}s"));
    }
    if let Some(n) = s.size {
        lines.push(format!("size {n}"));
    }
    if let Some(c) = &s.comment {
        lines.push(format!("comment {}", quote(c)));
    }
    lines
}

fn types(family: Family, parts: &[DataType], use_typeof: bool) -> String {
    parts
        .iter()
        .map(|t| {
            if use_typeof {
                typeof_expr(family, *t)
            } else {
                type_name(*t)
            }
        })
        .collect::<Vec<_>>()
        .join(" . ")
}

fn type_name(t: DataType) -> &'static str {
    match t {
        DataType::Ipv4Addr => "ipv4_addr",
        DataType::Ipv6Addr => "ipv6_addr",
        DataType::InetProto => "inet_proto",
        DataType::InetService => "inet_service",
        DataType::Mark | DataType::Pick => "mark",
        DataType::Verdict => "verdict",
    }
}

fn typeof_expr(_family: Family, t: DataType) -> &'static str {
    match t {
        DataType::Ipv4Addr => "ip daddr",
        DataType::Ipv6Addr => "ip6 daddr",
        DataType::InetProto => "meta l4proto",
        // `th dport`, not `tcp dport`: nft 1.0.6 refuses a UDP/SCTP rule whose map data
        // carries a TCP dependency in ip6 tables ("conflicting protocols").
        DataType::InetService => "th dport",
        DataType::Mark => "meta mark",
        DataType::Pick => "numgen random mod 65536",
        DataType::Verdict => "verdict",
    }
}

/// A concatenation of values (a key, a map's data): `10.0.0.1 . tcp . 80`.
pub fn values(vs: &[Value]) -> String {
    vs.iter().map(value).collect::<Vec<_>>().join(" . ")
}

/// One element as it appears inside `elements = { … }`.
pub fn element(e: &Element) -> String {
    let mut out = values(&e.key);
    if let Some(c) = &e.comment {
        out.push_str(" comment ");
        out.push_str(&quote(c));
    }
    match &e.data {
        ElementData::None => {}
        ElementData::Verdict(v) => {
            out.push_str(" : ");
            out.push_str(&verdict(v));
        }
        ElementData::Values(vs) => {
            out.push_str(" : ");
            out.push_str(&values(vs));
        }
    }
    out
}

fn chain(family: Family, c: &Chain) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "\tchain {} {{", c.name);
    for line in chain_decl(&c.base, &c.comment) {
        let _ = writeln!(out, "\t\t{line}");
    }
    for r in &c.rules {
        out.push_str("\t\t");
        out.push_str(&rule(family, r));
        out.push('\n');
    }
    out.push_str("\t}\n\n");
    out
}

/// The declaration lines of a chain (base chain type/hook/priority, comment).
fn chain_decl(base: &Option<BaseChain>, comment: &Option<String>) -> Vec<String> {
    let mut lines = Vec::new();
    if let Some(b) = base {
        lines.push(format!(
            "type {} hook {} priority {}; policy accept;",
            b.kind.name(),
            b.hook.name(),
            b.priority
        ));
    }
    if let Some(c) = comment {
        lines.push(format!("comment {};", quote(c)));
    }
    lines
}

/// A transaction as `nft -f` commands, one per line (elements one per line inside their
/// braces). What `--dry-run` prints and trace-level logs show.
pub fn transaction(tx: &tx::Transaction) -> String {
    use tx::Op;
    let mut out = String::new();
    for op in &tx.ops {
        let t = op.table();
        let tn = format!("{} {}", t.family, t.name);
        match op {
            Op::AddTable { comment, .. } => match comment {
                Some(c) => {
                    let _ = writeln!(out, "add table {tn} {{ comment {}; }}", quote(c));
                }
                None => {
                    let _ = writeln!(out, "add table {tn}");
                }
            },
            Op::DeleteTable { .. } => {
                let _ = writeln!(out, "delete table {tn}");
            }
            Op::AddChain { chain, .. } => {
                let decl = chain_decl(&chain.base, &chain.comment);
                if decl.is_empty() {
                    let _ = writeln!(out, "add chain {tn} {}", chain.name);
                } else {
                    let _ = writeln!(
                        out,
                        "add chain {tn} {} {{ {} }}",
                        chain.name,
                        decl.join(" ")
                    );
                }
            }
            Op::FlushChain { chain, .. } => {
                let _ = writeln!(out, "flush chain {tn} {chain}");
            }
            Op::DeleteChain { chain, .. } => {
                let _ = writeln!(out, "delete chain {tn} {chain}");
            }
            Op::AddRule { chain, rule: r, .. } => {
                let _ = writeln!(out, "add rule {tn} {chain} {}", rule(t.family, r));
            }
            Op::AddSet { set, .. } => {
                let kw = if set.is_map() { "map" } else { "set" };
                let _ = writeln!(
                    out,
                    "add {kw} {tn} {} {{ {}; }}",
                    set.name,
                    set_decl(t.family, set).join("; ")
                );
            }
            Op::DeleteSet { set, .. } => {
                let _ = writeln!(out, "delete set {tn} {set}");
            }
            Op::AddElements { set, elements, .. } => {
                let _ = writeln!(out, "add element {tn} {set} {{");
                let n = elements.len();
                for (i, e) in elements.iter().enumerate() {
                    let _ = writeln!(out, "\t{}{}", element(e), if i + 1 < n { "," } else { "" });
                }
                out.push_str("}\n");
            }
            Op::DeleteElements { set, keys, .. } => {
                let _ = writeln!(out, "delete element {tn} {set} {{");
                let n = keys.len();
                for (i, k) in keys.iter().enumerate() {
                    let _ = writeln!(out, "\t{}{}", values(k), if i + 1 < n { "," } else { "" });
                }
                out.push_str("}\n");
            }
        }
    }
    out
}

/// One rule on one line, as in `nft list`.
pub fn rule(family: Family, r: &Rule) -> String {
    let mut parts: Vec<String> = r.stmts.iter().map(|s| stmt(family, s)).collect();
    if let Some(c) = &r.comment {
        parts.push(format!("comment {}", quote(c)));
    }
    parts.join(" ")
}

/// One statement.
pub fn stmt(family: Family, s: &Stmt) -> String {
    match s {
        Stmt::Cmp {
            field: f,
            op,
            value: v,
        } => {
            let lhs = field(family, f);
            let rhs = value(v);
            match (f, op) {
                // Bit tests read naturally without an operator.
                (Field::CtState | Field::CtStatus, CmpOp::Eq) => format!("{lhs} {rhs}"),
                (Field::MarkAnd(_) | Field::Numgen { .. }, CmpOp::Eq) => format!("{lhs} == {rhs}"),
                (_, CmpOp::Eq) => format!("{lhs} {rhs}"),
                (_, CmpOp::Ne) => format!("{lhs} != {rhs}"),
            }
        }
        Stmt::Lookup { key, set, negate } => {
            let neg = if *negate { "!= " } else { "" };
            format!("{} {neg}@{set}", fields(family, key))
        }
        Stmt::Vmap { key, map } => format!("{} vmap @{map}", fields(family, key)),
        Stmt::Update { set, key } => format!("update @{set} {{ {} }}", fields(family, key)),
        Stmt::SetMark(MarkOp::Or(m)) => format!("meta mark set meta mark | {}", hex(*m)),
        Stmt::SetMark(MarkOp::Xor(m)) => format!("meta mark set meta mark ^ {}", hex(*m)),
        Stmt::DnatTo { proto, addr, port } => match addr {
            IpAddr::V4(a) => format!("meta l4proto {proto} dnat to {a}:{port}"),
            IpAddr::V6(a) => format!("meta l4proto {proto} dnat to [{a}]:{port}"),
        },
        Stmt::DnatPick { proto, offset, map } => format!(
            "meta l4proto {proto} dnat {} addr . port to {} map @{map}",
            family.keyword(),
            numgen(PICK_SPACE, *offset)
        ),
        Stmt::DnatAffinity {
            proto,
            list,
            offset,
            pick,
            endpoints,
            step,
        } => affinity(family, *proto, *list, *offset, pick, endpoints, step),
        Stmt::Masquerade => "masquerade fully-random".to_string(),
        Stmt::Reject => "reject".to_string(),
        Stmt::Verdict(v) => verdict(v),
        Stmt::Foreign(d) => format!("# not kproxy's: {d}"),
    }
}

/// An affinity rule in an nft-like notation. nft 1.0.6 cannot parse it (a map lookup as
/// the data of `update`, a map lookup inside a concatenation): these rules exist over
/// netlink only, and a ruleset holding them does not load with `nft -f`.
/// `LIST . (KEY map @M)` is the endpoints map's key: the list's constant and an endpoint id.
fn affinity(
    family: Family,
    proto: Protocol,
    list: u32,
    offset: u32,
    pick: &str,
    endpoints: &str,
    step: &AffinityStep,
) -> String {
    let ip = family.keyword();
    let pick = format!("{} map @{pick}", numgen(PICK_SPACE, offset));
    let dnat = |id: &str| format!("dnat {ip} addr . port to {list} . ({id}) map @{endpoints}");
    let client = format!("{ip} saddr . {list}");
    let rest = match step {
        AffinityStep::Known { map, timeout } => format!(
            "update @{map} {{ {client} timeout {timeout}s : {pick} }} {}",
            dnat(&format!("{client} map @{map}"))
        ),
        AffinityStep::Repick { map, timeout } => format!(
            "delete @{map} {{ {client} }} update @{map} {{ {client} timeout {timeout}s : {pick} }} {}",
            dnat("that pick")
        ),
        AffinityStep::Full => dnat(&pick),
    };
    format!("meta l4proto {proto} {rest}")
}

fn numgen(modulus: u32, offset: u32) -> String {
    if offset == 0 {
        format!("numgen random mod {modulus}")
    } else {
        format!("numgen random mod {modulus} offset {offset}")
    }
}

fn fields(family: Family, key: &[Field]) -> String {
    key.iter()
        .map(|f| field(family, f))
        .collect::<Vec<_>>()
        .join(" . ")
}

/// A packet field in nft syntax.
pub fn field(family: Family, f: &Field) -> String {
    let ip = family.keyword();
    match f {
        Field::Saddr => format!("{ip} saddr"),
        Field::Daddr => format!("{ip} daddr"),
        Field::L4Proto => "meta l4proto".into(),
        Field::ThDport => "th dport".into(),
        Field::Dport(p) => format!("{p} dport"),
        Field::Mark => "meta mark".into(),
        Field::MarkAnd(m) => format!("meta mark & {}", hex(*m)),
        Field::Iifname => "iifname".into(),
        Field::FibSaddrType => "fib saddr type".into(),
        Field::FibDaddrType => "fib daddr type".into(),
        Field::CtState => "ct state".into(),
        Field::CtStatus => "ct status".into(),
        Field::Numgen { modulus, offset } => numgen(*modulus, *offset),
    }
}

/// A literal in nft syntax.
pub fn value(v: &Value) -> String {
    match v {
        Value::Addr(a) => a.to_string(),
        Value::Net(n) => format!("{}/{}", n.network(), n.prefix()),
        Value::Proto(p) => p.name().to_string(),
        Value::Port(p) => p.to_string(),
        Value::Int(i) => i.to_string(),
        Value::Range(lo, hi) => format!("{lo}-{hi}"),
        Value::Iface(s) => quote(s),
        Value::FibType(FibType::Local) => "local".into(),
        Value::CtState(CtState::New) => "new".into(),
        Value::CtStatus(CtStatus::Dnat) => "dnat".into(),
    }
}

pub fn verdict(v: &Verdict) -> String {
    match v {
        Verdict::Accept => "accept".into(),
        Verdict::Drop => "drop".into(),
        Verdict::Return => "return".into(),
        Verdict::Jump(c) => format!("jump {c}"),
        Verdict::Goto(c) => format!("goto {c}"),
    }
}

fn hex(m: u32) -> String {
    format!("{m:#010x}")
}

/// A quoted string, safe for nft: no `"` or control characters, at most [`COMMENT_MAX`]
/// bytes (cut on a character boundary).
pub fn quote(s: &str) -> String {
    let mut clean: String = s
        .chars()
        .map(|c| if c == '"' || c.is_control() { '\'' } else { c })
        .collect();
    if clean.len() > COMMENT_MAX {
        let mut cut = COMMENT_MAX;
        while !clean.is_char_boundary(cut) {
            cut -= 1;
        }
        clean.truncate(cut);
    }
    format!("\"{clean}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_print_as_nft_syntax() {
        let r = Rule::new(vec![
            Stmt::cmp(Field::Daddr, Value::Addr("10.96.0.10".parse().unwrap())),
            Stmt::cmp(Field::Dport(Protocol::Tcp), Value::Port(53)),
            Stmt::cmp_ne(Field::Saddr, Value::Net("10.244.0.0/16".parse().unwrap())),
            Stmt::jump("mark-for-masquerade"),
        ]);
        assert_eq!(
            rule(Family::V4, &r),
            "ip daddr 10.96.0.10 tcp dport 53 ip saddr != 10.244.0.0/16 jump mark-for-masquerade"
        );
        let d = Stmt::DnatPick {
            proto: Protocol::Udp,
            offset: 131072,
            map: "endpoints".into(),
        };
        assert_eq!(
            stmt(Family::V6, &d),
            "meta l4proto udp dnat ip6 addr . port to numgen random mod 65536 offset 131072 map @endpoints"
        );
        let d = Stmt::DnatTo {
            proto: Protocol::Tcp,
            addr: "fd00::5".parse().unwrap(),
            port: 80,
        };
        assert_eq!(
            stmt(Family::V6, &d),
            "meta l4proto tcp dnat to [fd00::5]:80"
        );
        assert_eq!(
            stmt(
                Family::V4,
                &Stmt::cmp(Field::MarkAnd(0x4000), Value::Int(0))
            ),
            "meta mark & 0x00004000 == 0"
        );
    }

    #[test]
    fn quoting_is_safe() {
        assert_eq!(quote("a\"b"), "\"a'b\"");
        let long = "é".repeat(100);
        let q = quote(&long);
        assert!(q.len() <= COMMENT_MAX + 2);
    }

    #[test]
    fn pick_maps_use_typeof() {
        let mut s = Set::new(
            "endpoints",
            vec![DataType::Pick],
            SetData::Values(vec![DataType::Ipv4Addr, DataType::InetService]),
        );
        s.insert(
            Element::values(
                vec![Value::Range(0, 21845)],
                vec![Value::Addr("10.0.0.1".parse().unwrap()), Value::Port(80)],
            )
            .with_comment("ns/a:http"),
        );
        let txt = set(Family::V4, &s);
        assert!(txt.contains("typeof numgen random mod 65536 : ip daddr . th dport"));
        assert!(txt.contains("0-21845 comment \"ns/a:http\" : 10.0.0.1 . 80"));
    }
}
