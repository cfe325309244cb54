//! What a change does, for a reviewer: `kproxy diff`'s three outputs.
//!
//! Owns: [`summary`] (per service port, what was and what will be: VIPs, node ports,
//! policies, masquerading, affinity, endpoints and whether this node uses them) from two
//! models; [`nft`] (a transaction as `nft -f` text with comments naming each service);
//! [`node_summary`] (a drift report: which chains, sets and elements of the kernel differ
//! from what is meant, by service); [`json`] (all of it for CI bots).
//!
//! Must not: compute the models, rulesets or transaction (the caller does, with `model`,
//! `render` and `diff`), or use more than `model` and `nft`. Pure: strings in, strings out.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;

use super::{endpoint_lines, family_facts, family_name, port_facts, port_title};
use crate::model::{EndpointAddr, FamilyModel, FamilySettings, LocalDetect, Model, ServicePort};
use crate::nft::tx::{Op, Transaction};
use crate::nft::{text, Family, Ruleset, Value};

/// One service port that a change adds, removes or alters (unchanged ports are not listed).
#[derive(Clone, Debug, Serialize)]
pub struct PortChange<'a> {
    pub family: Family,
    /// `namespace/name:port (protocol)`.
    pub port: String,
    /// `added`, `removed` or `changed`.
    pub change: &'static str,
    pub before: Option<&'a ServicePort>,
    pub after: Option<&'a ServicePort>,
}

/// Every service port whose model differs between `before` and `after`, per family in
/// family order, then by name.
pub fn port_changes<'a>(before: &'a Model, after: &'a Model) -> Vec<PortChange<'a>> {
    let mut out = Vec::new();
    for (family, b, a) in families(before, after) {
        let mut ports: BTreeMap<String, (Option<&ServicePort>, Option<&ServicePort>)> =
            BTreeMap::new();
        for sp in b.map(|f| f.services.as_slice()).unwrap_or_default() {
            ports.entry(port_title(sp)).or_default().0 = Some(sp);
        }
        for sp in a.map(|f| f.services.as_slice()).unwrap_or_default() {
            ports.entry(port_title(sp)).or_default().1 = Some(sp);
        }
        for (port, (b, a)) in ports {
            let change = match (b, a) {
                (Some(x), Some(y)) if x == y => continue,
                (Some(_), Some(_)) => "changed",
                (None, _) => "added",
                (_, None) => "removed",
            };
            out.push(PortChange {
                family,
                port,
                change,
                before: b,
                after: a,
            });
        }
    }
    out
}

type FamilyPair<'a> = (Family, Option<&'a FamilyModel>, Option<&'a FamilyModel>);

fn families<'a>(before: &'a Model, after: &'a Model) -> Vec<FamilyPair<'a>> {
    let mut v = Vec::new();
    for family in [Family::V4, Family::V6] {
        let (b, a) = (before.family(family), after.family(family));
        if b.is_some() || a.is_some() {
            v.push((family, b, a));
        }
    }
    v
}

/// `--output summary` of `kproxy diff --base … --change …`: for each family the node's
/// facts, then every service port that changes, its lines marked `-` (was), `+` (will be)
/// or ` ` (unchanged, for context).
pub fn summary(before: &Model, after: &Model) -> String {
    let changes = port_changes(before, after);
    let mut out = String::new();
    for (family, b, a) in families(before, after) {
        let fm = a.or(b).expect("one side has the family");
        let mine: Vec<&PortChange> = changes.iter().filter(|c| c.family == family).collect();
        let (was, will) = (b.map(family_facts), a.map(family_facts));
        if mine.is_empty() && was == will {
            continue;
        }
        let _ = writeln!(
            out,
            "{}: {} service port(s) change",
            family_name(fm),
            mine.len()
        );
        pair(&mut out, was.as_deref(), will.as_deref());
        for c in mine {
            port_block(&mut out, c, &fm.settings);
        }
        out.push('\n');
    }
    if out.is_empty() {
        out.push_str("no change: every service port renders the same on this node\n");
    }
    out
}

/// `-    was` / `+    will be`, or one unchanged line.
fn pair(out: &mut String, was: Option<&str>, will: Option<&str>) {
    if was == will {
        if let Some(l) = will {
            let _ = writeln!(out, "    {l}");
        }
        return;
    }
    if let Some(l) = was {
        let _ = writeln!(out, "-   {l}");
    }
    if let Some(l) = will {
        let _ = writeln!(out, "+   {l}");
    }
}

fn port_block(out: &mut String, c: &PortChange, settings: &FamilySettings) {
    let mark = match c.change {
        "added" => '+',
        "removed" => '-',
        _ => '~',
    };
    let _ = writeln!(out, "{mark} {}: {}", c.port, c.change);
    let facts = |sp: Option<&ServicePort>| -> Vec<String> {
        sp.map(|sp| {
            let mut v = port_facts(sp);
            v.push(masquerade(sp, settings));
            v
        })
        .unwrap_or_default()
    };
    let (b, a) = (facts(c.before), facts(c.after));
    for i in 0..b.len().max(a.len()) {
        pair(
            out,
            b.get(i).map(String::as_str),
            a.get(i).map(String::as_str),
        );
    }
    let eps = |sp: Option<&ServicePort>| -> BTreeMap<EndpointAddr, String> {
        sp.map(endpoint_lines)
            .unwrap_or_default()
            .into_iter()
            .collect()
    };
    let (b, a) = (eps(c.before), eps(c.after));
    if b.is_empty() && a.is_empty() {
        out.push_str("    endpoints: none\n");
    }
    let mut addrs: Vec<&EndpointAddr> = b.keys().chain(a.keys()).collect();
    addrs.sort();
    addrs.dedup();
    for addr in addrs {
        pair(
            out,
            b.get(addr).map(String::as_str),
            a.get(addr).map(String::as_str),
        );
    }
}

/// Which of this port's traffic is masqueraded on this node.
fn masquerade(sp: &ServicePort, settings: &FamilySettings) -> String {
    if settings.masquerade_all {
        return "masquerade: all traffic (masqueradeAll)".into();
    }
    let mut line = String::from(match settings.local_detect {
        LocalDetect::None => "masquerade: ClusterIP traffic never (no local traffic detector)",
        LocalDetect::SourceCidrs(ref c) if c.is_empty() => {
            "masquerade: ClusterIP traffic never (no local traffic detector)"
        }
        _ => "masquerade: ClusterIP traffic not from local pods",
    });
    if sp.externally_accessible() {
        line.push_str(if sp.external_policy_local {
            "; external traffic keeps its source (external policy Local)"
        } else {
            "; all external traffic (external policy Cluster)"
        });
    }
    line
}

/// The service a chain belongs to, from its name (`PREFIX-HASH-ns/name/proto/port…`):
/// `ns/name:port`; `None` for the table-wide chains.
pub(super) fn chain_service(chain: &str) -> Option<String> {
    let (_, rest) = chain.split_once('-')?;
    let rest = rest
        .get(9..)
        .filter(|_| rest.as_bytes().get(8) == Some(&b'-'))?;
    let base = rest.split("__").next()?;
    let mut parts = base.split('/');
    let (ns, name, _proto, port) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    Some(if port.is_empty() {
        format!("{ns}/{name}")
    } else {
        format!("{ns}/{name}:{port}")
    })
}

/// The comment (`namespace/name:port`) of an element of `set` in `rs`, if it has one.
fn element_comment<'a>(rs: &'a Ruleset, op: &Op, set: &str, key: &[Value]) -> Option<&'a str> {
    let t = op.table();
    rs.tables
        .iter()
        .find(|x| x.family == t.family && x.name == t.name)?
        .sets
        .get(set)?
        .elements
        .get(key)?
        .comment
        .as_deref()
}

/// What an operation is about, for the `# …` line above it (`None`: the element lines
/// carry their own comments).
fn op_subject(op: &Op) -> Option<String> {
    let chain = match op {
        Op::AddChain { chain, .. } => chain.name.as_str(),
        Op::FlushChain { chain, .. }
        | Op::DeleteChain { chain, .. }
        | Op::AddRule { chain, .. } => chain.as_str(),
        _ => return None,
    };
    Some(chain_service(chain).unwrap_or_else(|| "table-wide".into()))
}

/// `--output nft`: `tx` as `nft -f` text, with a `# namespace/name:port` line above each
/// run of chain operations for one service, and each deleted element followed by the
/// comment it had in `before` (what the kernel holds, or the base's ruleset).
pub fn nft(tx: &Transaction, before: &Ruleset) -> String {
    let mut out = String::new();
    let mut last: Option<String> = None;
    for op in &tx.ops {
        let subject = op_subject(op);
        if subject.is_some() && subject != last {
            let _ = writeln!(out, "# {}", subject.as_deref().unwrap_or_default());
        }
        last = subject;
        let one = Transaction {
            ops: vec![op.clone()],
        };
        let textual = text::transaction(&one);
        match op {
            Op::DeleteElements { set, keys, .. } => {
                for (i, line) in textual.lines().enumerate() {
                    let comment = i
                        .checked_sub(1)
                        .and_then(|k| keys.get(k))
                        .and_then(|k| element_comment(before, op, set, k));
                    match comment {
                        Some(c) => {
                            let _ = writeln!(out, "{line} # {c}");
                        }
                        None => {
                            let _ = writeln!(out, "{line}");
                        }
                    }
                }
            }
            _ => out.push_str(&textual),
        }
    }
    out
}

/// `--output summary` of `kproxy diff --node`: what differs between the kernel's tables
/// (`kernel`) and what is meant (`meant`), as the transaction `tx` that would repair it
/// says, grouped by the service each chain, set element or rule belongs to.
pub fn node_summary(tx: &Transaction, kernel: &Ruleset, meant: &Ruleset) -> String {
    let mut by_service: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut note = |service: Option<&str>, line: String| {
        let key = service.unwrap_or("(table-wide)").to_string();
        let lines = by_service.entry(key).or_default();
        if !lines.contains(&line) {
            lines.push(line);
        }
    };
    for op in &tx.ops {
        let t = op.table();
        let tn = format!("{} {}", t.family, t.name);
        match op {
            Op::AddTable { .. } => note(None, format!("table {tn}: missing")),
            Op::DeleteTable { .. } => note(None, format!("table {tn}: not meant to exist")),
            Op::AddChain { chain, .. } => note(
                chain_service(&chain.name).as_deref(),
                format!("chain {}: missing from the kernel", chain.name),
            ),
            Op::DeleteChain { chain, .. } => note(
                chain_service(chain).as_deref(),
                format!("chain {chain}: in the kernel, not meant"),
            ),
            Op::FlushChain { chain, .. } | Op::AddRule { chain, .. } => {
                let count = |rs: &Ruleset| rule_count(rs, op, chain);
                note(
                    chain_service(chain).as_deref(),
                    format!(
                        "chain {chain}: rules differ (kernel {}, meant {})",
                        count(kernel),
                        count(meant)
                    ),
                )
            }
            Op::AddSet { set, .. } => note(None, format!("set {}: missing or different", set.name)),
            Op::DeleteSet { set, .. } => note(None, format!("set {set}: in the kernel, not meant")),
            Op::AddElements { set, elements, .. } => {
                for e in elements {
                    let line = format!("{set}: missing {}", text::element(e));
                    note(e.comment.as_deref(), line);
                }
            }
            Op::DeleteElements { set, keys, .. } => {
                for k in keys {
                    let line = format!("{set}: extra or stale {}", text::values(k));
                    note(element_comment(kernel, op, set, k), line);
                }
            }
        }
    }
    if by_service.is_empty() {
        return "no drift: the kernel holds exactly what is meant\n".into();
    }
    let mut out = format!(
        "drift: {} operation(s) would repair {} service(s)' rules\n",
        tx.ops.len(),
        by_service.len()
    );
    for (service, lines) in by_service {
        let _ = writeln!(out, "  {service}");
        for l in lines {
            let _ = writeln!(out, "    {l}");
        }
    }
    out
}

fn rule_count(rs: &Ruleset, op: &Op, chain: &str) -> usize {
    let t = op.table();
    rs.tables
        .iter()
        .find(|x| x.family == t.family && x.name == t.name)
        .and_then(|x| x.chains.get(chain))
        .map_or(0, |c| c.rules.len())
}

/// `--output json`: whether anything changes, the summary text, the per-port changes
/// (when two models are compared) and the transaction text.
pub fn json(changed: bool, summary: &str, ports: &[PortChange], nft: &str) -> serde_json::Value {
    serde_json::json!({
        "changed": changed,
        "summary": summary,
        "ports": ports,
        "nft": nft,
    })
}
