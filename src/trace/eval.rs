//! The netfilter interpreter behind [`trace`](super::trace): walks the hooks and base
//! chains of one family's tables, evaluates each rule's statements against one packet, and
//! forks a path at every nondeterministic choice.
//!
//! Owns: packet and connection state along a path, hook order and the NAT core, the chain
//! call stack (jump, goto, return), statement and expression evaluation, set lookups.
//!
//! Must not: do I/O, know what kproxy's chains mean, or format output beyond the step
//! texts (`nft::text` spells the rules).
//!
//! Kernel behaviour simulated (beyond plain rule evaluation):
//! - Hooks: pod/external packets run PREROUTING, then INPUT when the (possibly DNATed)
//!   destination is local, else FORWARD and POSTROUTING. Node packets run OUTPUT and
//!   POSTROUTING; a local destination then loops back through `lo`: PREROUTING and INPUT
//!   run with `iifname "lo"` (the conntrack entry already exists, so `ct state` is still
//!   `new`, but NAT chains are not evaluated: both bindings were set up on the way out).
//! - NAT chains of a hook do not run at their own priority: the kernel's NAT core runs all
//!   of them, ordered by their priorities, at the fixed NAT priority of the hook (-100 for
//!   prerouting/output, 100 for input/postrouting), and stops after the first one that sets
//!   up a binding (DNAT, masquerade). After the hook a null binding exists, so NAT chains
//!   for the same direction never run twice for one connection. At equal priority filter
//!   chains are placed before the NAT block (the kernel's order depends on registration).
//! - `iifname` is the input interface in prerouting/input/forward/postrouting for pod and
//!   external packets (postrouting sees the input device since Linux 5.x), empty in
//!   output/postrouting for node packets, `lo` on the loop-back pass.
//! - Jumps nest at most 16 deep (the kernel's jump stack). Gotos count towards the same
//!   depth here: the kernel refuses to load deeper (or looping) chain graphs, and the cap
//!   keeps a looping value from hanging the tracer.
//! - Sets flagged dynamic (affinity) are treated as empty: a new client has no affinity.
//!   An affinity rule ([`Stmt::DnatAffinity`]) is traced for a new client: it branches
//!   over the live endpoints its pick reaches, with their shares; a known client returns
//!   to its (live) endpoint, which the trace says without following it.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::{Host, Origin, Path, Probe, Step, TraceVerdict, MAX_DEPTH};
use crate::model::EndpointAddr;
use crate::nft::{
    text, AffinityStep, Chain, ChainType, CmpOp, CtState, CtStatus, DataType, Element, ElementData,
    Family, FibType, Field, Hook, MarkOp, Protocol, Rule, Ruleset, Set, Stmt, Table, Value,
    Verdict, PICK_SPACE,
};

/// Every path `probe` can take through the tables of `rs` of the probe's destination
/// family, in branch order (duplicates included).
pub(super) fn paths(rs: &Ruleset, host: &Host, probe: &Probe) -> Vec<Path> {
    let family = Family::of(&probe.dst);
    let tracer = Tracer::new(rs, family, host, &probe.origin);
    let start = Thread {
        pkt: Pkt {
            src: probe.src,
            dst: probe.dst,
            proto: probe.proto,
            port: probe.port,
            mark: 0,
            iif: String::new(),
            ct_dnat: false,
            dnat: None,
            masq: false,
            dst_nat_set: false,
            src_nat_set: false,
        },
        steps: Vec::new(),
    };
    let first = match probe.origin {
        Origin::Node => Hook::Output,
        Origin::Pod { .. } | Origin::External { .. } => Hook::Prerouting,
    };
    tracer.walk(start, first)
}

/// Packet and connection state along one path.
#[derive(Clone, Debug)]
struct Pkt {
    src: IpAddr,
    dst: IpAddr,
    proto: Protocol,
    port: u16,
    mark: u32,
    iif: String,
    /// `ct status dnat`: a DNAT changed the destination.
    ct_dnat: bool,
    dnat: Option<EndpointAddr>,
    masq: bool,
    /// NAT bindings for the destination / source exist (NAT chains no longer run).
    dst_nat_set: bool,
    src_nat_set: bool,
}

impl Pkt {
    fn do_dnat(&mut self, addr: IpAddr, port: u16) {
        if self.dst != addr || self.port != port {
            self.ct_dnat = true;
        }
        self.dst = addr;
        self.port = port;
        self.dnat = Some(EndpointAddr { ip: addr, port });
        self.dst_nat_set = true;
    }
}

#[derive(Clone, Debug)]
struct Thread {
    pkt: Pkt,
    steps: Vec<Step>,
}

impl Thread {
    fn step(&mut self, hook: Hook, chain: &str, rule: Option<usize>, text: String) {
        self.steps.push(Step {
            hook,
            chain: chain.to_string(),
            rule,
            text,
        });
    }
}

/// What a rule leaves the chain walker to do.
#[derive(Clone, Debug)]
enum Flow {
    /// Continue with the next rule (no match, or matched without a verdict).
    Next,
    Verdict(Verdict),
    Reject,
    /// A NAT statement: accept, ending this base chain.
    Nat,
}

/// What one statement leaves the statement walker to do.
enum Next {
    /// The statement matched (or only had a side effect): go on with the next one.
    Continue(Thread),
    /// The rule is decided: these are its outcomes.
    Done(Vec<(Thread, Flow)>),
}

/// How a base chain ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    Accept,
    Drop,
    Reject,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Manip {
    Dst,
    Src,
}

/// The NAT core's priority and direction for a hook (none for forward).
fn nat_hook(hook: Hook) -> Option<(i32, Manip)> {
    match hook {
        Hook::Prerouting | Hook::Output => Some((-100, Manip::Dst)),
        Hook::Input | Hook::Postrouting => Some((100, Manip::Src)),
        Hook::Forward => None,
    }
}

#[derive(Clone, Copy)]
struct Frame<'a> {
    chain: &'a Chain,
    next: usize,
    level: usize,
}

/// One base chain as the hook runs it.
struct HookChain<'a> {
    table: &'a Table,
    chain: &'a Chain,
    /// Part of the NAT block (skipped once the binding for the hook's direction exists).
    nat: Option<Manip>,
}

/// Where a base chain runs within its hook: effective priority, NAT block (after filter
/// chains of equal priority), own priority (orders the NAT block), table, chain.
type OrderKey<'a> = (i32, bool, i32, &'a str, &'a str);

/// A field's possible values (several for `numgen`).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Pv {
    Addr(IpAddr),
    Num(u64),
    Str(String),
    FibLocal(bool),
    CtNew,
    CtDnat(bool),
}

struct Tracer<'a> {
    family: Family,
    host: &'a Host,
    node: bool,
    iifname: String,
    hooks: BTreeMap<Hook, Vec<HookChain<'a>>>,
}

impl<'a> Tracer<'a> {
    fn new(rs: &'a Ruleset, family: Family, host: &'a Host, origin: &Origin) -> Tracer<'a> {
        let mut hooks = BTreeMap::new();
        for hook in [
            Hook::Prerouting,
            Hook::Input,
            Hook::Forward,
            Hook::Output,
            Hook::Postrouting,
        ] {
            let mut v: Vec<(OrderKey<'a>, HookChain<'a>)> = Vec::new();
            for t in rs.tables.iter().filter(|t| t.family == family) {
                for c in t.base_chains(hook) {
                    let Some(b) = &c.base else { continue };
                    let nat = match (b.kind, nat_hook(hook)) {
                        (ChainType::Nat, Some((prio, m))) => Some((prio, m)),
                        _ => None,
                    };
                    let key = match nat {
                        Some((prio, _)) => {
                            (prio, true, b.priority, t.name.as_str(), c.name.as_str())
                        }
                        None => (b.priority, false, 0, t.name.as_str(), c.name.as_str()),
                    };
                    v.push((
                        key,
                        HookChain {
                            table: t,
                            chain: c,
                            nat: nat.map(|(_, m)| m),
                        },
                    ));
                }
            }
            v.sort_by(|a, b| a.0.cmp(&b.0));
            hooks.insert(hook, v.into_iter().map(|(_, hc)| hc).collect());
        }
        let (node, iifname) = match origin {
            Origin::Node => (true, String::new()),
            Origin::Pod { iifname } | Origin::External { iifname } => (false, iifname.clone()),
        };
        Tracer {
            family,
            host,
            node,
            iifname,
            hooks,
        }
    }

    /// Runs `hook` and every hook after it; returns the finished paths in branch order.
    fn walk(&self, mut t: Thread, hook: Hook) -> Vec<Path> {
        t.pkt.iif = match (self.node, hook) {
            (true, Hook::Output | Hook::Postrouting) => String::new(),
            (true, _) => "lo".to_string(),
            (false, _) => self.iifname.clone(),
        };
        let chains = &self.hooks[&hook];
        let mut out = Vec::new();
        for (t, end) in self.run_hook(t, hook, chains, 0) {
            match end {
                End::Drop => out.push(finish(t, Some(TraceVerdict::Drop))),
                End::Reject => out.push(finish(t, Some(TraceVerdict::Reject))),
                End::Accept => match self.next_hook(hook, &t.pkt) {
                    Some(h) => out.extend(self.walk(t, h)),
                    None => out.push(finish(t, None)),
                },
            }
        }
        out
    }

    /// The routing decision after `hook`.
    fn next_hook(&self, hook: Hook, pkt: &Pkt) -> Option<Hook> {
        let local = self.host.is_local(&pkt.dst);
        match (self.node, hook) {
            (false, Hook::Prerouting) => Some(if local { Hook::Input } else { Hook::Forward }),
            (false, Hook::Forward) => Some(Hook::Postrouting),
            (true, Hook::Output) => Some(Hook::Postrouting),
            (true, Hook::Postrouting) => local.then_some(Hook::Prerouting),
            (true, Hook::Prerouting) => Some(Hook::Input),
            _ => None,
        }
    }

    /// Runs the base chains of one hook from index `from`.
    fn run_hook(
        &self,
        mut t: Thread,
        hook: Hook,
        chains: &[HookChain<'a>],
        from: usize,
    ) -> Vec<(Thread, End)> {
        for (i, hc) in chains.iter().enumerate().skip(from) {
            if let Some(m) = hc.nat {
                let set = match m {
                    Manip::Dst => t.pkt.dst_nat_set,
                    Manip::Src => t.pkt.src_nat_set,
                };
                if set {
                    t.step(
                        hook,
                        &hc.chain.name,
                        None,
                        "not evaluated: the NAT binding for this connection already exists".into(),
                    );
                    continue;
                }
            }
            let mut outs = self.run_base(t, hook, hc);
            if outs.len() == 1 {
                let (t1, end) = outs.pop().expect("one outcome");
                if end != End::Accept {
                    return vec![(t1, end)];
                }
                t = t1;
                continue;
            }
            let mut res = Vec::new();
            for (t1, end) in outs {
                if end == End::Accept {
                    res.extend(self.run_hook(t1, hook, chains, i + 1));
                } else {
                    res.push((t1, end));
                }
            }
            return res;
        }
        // The NAT core allocates a null binding once the hook's NAT chains have run.
        match nat_hook(hook) {
            Some((_, Manip::Dst)) => t.pkt.dst_nat_set = true,
            Some((_, Manip::Src)) => t.pkt.src_nat_set = true,
            None => {}
        }
        vec![(t, End::Accept)]
    }

    fn run_base(&self, t: Thread, hook: Hook, hc: &HookChain<'a>) -> Vec<(Thread, End)> {
        let stack = vec![Frame {
            chain: hc.chain,
            next: 0,
            level: 0,
        }];
        self.exec(t, hook, hc.table, stack)
    }

    /// Walks chains from the top of `stack` until the base chain ends (forking at
    /// nondeterministic rules).
    fn exec(
        &self,
        mut t: Thread,
        hook: Hook,
        table: &'a Table,
        mut stack: Vec<Frame<'a>>,
    ) -> Vec<(Thread, End)> {
        loop {
            let top = stack.last_mut().expect("non-empty call stack");
            let chain = top.chain;
            if top.next >= chain.rules.len() {
                if stack.len() == 1 {
                    t.step(hook, &chain.name, None, "policy accept".into());
                    return vec![(t, End::Accept)];
                }
                stack.pop();
                continue;
            }
            let idx = top.next;
            top.next += 1;
            let mut outs = self.eval_rule(t, hook, table, chain, idx);
            if outs.len() == 1 {
                let (mut t1, flow) = outs.pop().expect("one outcome");
                match self.apply(&mut t1, flow, hook, table, &mut stack) {
                    None => {
                        t = t1;
                        continue;
                    }
                    Some(end) => return vec![(t1, end)],
                }
            }
            let mut res = Vec::new();
            for (mut t1, flow) in outs {
                let mut st = stack.clone();
                match self.apply(&mut t1, flow, hook, table, &mut st) {
                    None => res.extend(self.exec(t1, hook, table, st)),
                    Some(end) => res.push((t1, end)),
                }
            }
            return res;
        }
    }

    /// Applies a rule's flow to the call stack; `Some` when the base chain is done.
    fn apply(
        &self,
        t: &mut Thread,
        flow: Flow,
        hook: Hook,
        table: &'a Table,
        stack: &mut Vec<Frame<'a>>,
    ) -> Option<End> {
        let v = match flow {
            Flow::Next => return None,
            Flow::Reject => return Some(End::Reject),
            Flow::Nat => return Some(End::Accept),
            Flow::Verdict(v) => v,
        };
        match v {
            Verdict::Accept => Some(End::Accept),
            Verdict::Drop => Some(End::Drop),
            Verdict::Return => {
                let frame = stack.pop().expect("non-empty call stack");
                if stack.is_empty() {
                    t.step(hook, &frame.chain.name, None, "policy accept".into());
                    return Some(End::Accept);
                }
                None
            }
            Verdict::Jump(name) => self.enter(t, hook, table, stack, &name, false),
            Verdict::Goto(name) => self.enter(t, hook, table, stack, &name, true),
        }
    }

    /// Enters chain `name` by jump (push) or goto (replace the current frame).
    fn enter(
        &self,
        t: &mut Thread,
        hook: Hook,
        table: &'a Table,
        stack: &mut Vec<Frame<'a>>,
        name: &str,
        goto: bool,
    ) -> Option<End> {
        let top = *stack.last().expect("non-empty call stack");
        let Some(target) = table.chain(name) else {
            t.step(
                hook,
                &top.chain.name,
                None,
                format!("chain {name} does not exist (the kernel refuses such a ruleset): drop"),
            );
            return Some(End::Drop);
        };
        let level = top.level + 1;
        if level > MAX_DEPTH {
            t.step(
                hook,
                &top.chain.name,
                None,
                format!(
                    "chain nesting deeper than {MAX_DEPTH} (kernel jump stack) entering {name}: drop"
                ),
            );
            return Some(End::Drop);
        }
        let frame = Frame {
            chain: target,
            next: 0,
            level,
        };
        if goto {
            *stack.last_mut().expect("non-empty call stack") = frame;
        } else {
            stack.push(frame);
        }
        None
    }

    /// Evaluates rule `idx` of `chain`: one outcome per distinguishable branch.
    fn eval_rule(
        &self,
        t: Thread,
        hook: Hook,
        table: &'a Table,
        chain: &'a Chain,
        idx: usize,
    ) -> Vec<(Thread, Flow)> {
        let ctx = RuleCtx {
            hook,
            table,
            chain,
            idx,
            rule: &chain.rules[idx],
        };
        self.eval_stmts(t, &ctx, 0)
    }

    fn record(&self, t: &mut Thread, ctx: &RuleCtx<'a>, note: Option<String>) {
        let mut text = text::rule(self.family, ctx.rule);
        if let Some(n) = note {
            text.push_str(" \u{2192} ");
            text.push_str(&n);
        }
        t.step(ctx.hook, &ctx.chain.name, Some(ctx.idx), text);
    }

    /// Evaluates the statements of `ctx.rule` from `from` on: one outcome per branch.
    fn eval_stmts(&self, mut t: Thread, ctx: &RuleCtx<'a>, from: usize) -> Vec<(Thread, Flow)> {
        for (i, stmt) in ctx.rule.stmts.iter().enumerate().skip(from) {
            t = match self.eval_stmt(t, ctx, stmt, i) {
                Next::Continue(t) => t,
                Next::Done(res) => return res,
            };
        }
        // Every statement matched and none ended the rule.
        self.record(&mut t, ctx, None);
        vec![(t, Flow::Next)]
    }

    /// Evaluates statement `i` (`stmt`) of the rule.
    fn eval_stmt(&self, mut t: Thread, ctx: &RuleCtx<'a>, stmt: &Stmt, i: usize) -> Next {
        match stmt {
            // A statement kproxy did not write: its effect is unknown, so the rule is
            // treated as not matching (the step records it).
            Stmt::Foreign(_) => {
                self.record(
                    &mut t,
                    ctx,
                    Some("statement not kproxy's: treated as no match".into()),
                );
                Next::Done(vec![(t, Flow::Next)])
            }
            Stmt::Cmp { field, op, value } => {
                let Some(vals) = self.field_values(&t.pkt, field) else {
                    return Next::Done(vec![(t, Flow::Next)]);
                };
                let hit = vals.iter().any(|v| cmp(v, *op, value));
                let miss = vals.iter().any(|v| !cmp(v, *op, value));
                self.branch_on_match(t, ctx, i, hit, miss)
            }
            Stmt::Lookup { key, set, negate } => {
                let Some(keys) = self.key_values(&t.pkt, key) else {
                    return Next::Done(vec![(t, Flow::Next)]);
                };
                let s = ctx.table.set(set);
                let found = |k: &Vec<Pv>| s.and_then(|s| find(s, k)).is_some() != *negate;
                let hit = keys.iter().any(found);
                let miss = keys.iter().any(|k| !found(k));
                self.branch_on_match(t, ctx, i, hit, miss)
            }
            Stmt::Vmap { key, map } => Next::Done(self.eval_vmap(t, ctx, key, map)),
            Stmt::Update { .. } => Next::Continue(t),
            Stmt::SetMark(op) => {
                t.pkt.mark = match op {
                    MarkOp::Or(m) => t.pkt.mark | m,
                    MarkOp::Xor(m) => t.pkt.mark ^ m,
                };
                Next::Continue(t)
            }
            Stmt::DnatTo { proto, addr, port } => {
                if t.pkt.proto != *proto {
                    return Next::Done(vec![(t, Flow::Next)]);
                }
                t.pkt.do_dnat(*addr, *port);
                self.record(&mut t, ctx, None);
                Next::Done(vec![(t, Flow::Nat)])
            }
            Stmt::DnatPick { proto, offset, map } => {
                if t.pkt.proto != *proto {
                    return Next::Done(vec![(t, Flow::Next)]);
                }
                Next::Done(self.eval_dnat_pick(t, ctx, *offset, map, &slot_target, ""))
            }
            Stmt::DnatAffinity {
                proto,
                list,
                offset,
                pick,
                endpoints,
                step,
            } => {
                if t.pkt.proto != *proto {
                    return Next::Done(vec![(t, Flow::Next)]);
                }
                // A new client: the pick decides (a known client returns to its endpoint,
                // which the dynamic map holds and the tracer does not know).
                let live = ctx.table.set(endpoints);
                let target = |e: &Element| {
                    let ElementData::Values(id) = &e.data else {
                        return None;
                    };
                    let [Value::Int(id)] = id.as_slice() else {
                        return None;
                    };
                    live?
                        .elements
                        .get(&[Value::Int(*list), Value::Int(*id)])
                        .and_then(slot_target)
                };
                let note = match step {
                    AffinityStep::Full => "; the affinity map is full: no affinity",
                    _ => "; a new client (a known client returns to its live endpoint)",
                };
                Next::Done(self.eval_dnat_pick(t, ctx, *offset, pick, &target, note))
            }
            Stmt::Masquerade => {
                t.pkt.masq = true;
                t.pkt.src_nat_set = true;
                self.record(&mut t, ctx, None);
                Next::Done(vec![(t, Flow::Nat)])
            }
            Stmt::Reject => {
                self.record(&mut t, ctx, None);
                Next::Done(vec![(t, Flow::Reject)])
            }
            Stmt::Verdict(v) => {
                self.record(&mut t, ctx, None);
                Next::Done(vec![(t, Flow::Verdict(v.clone()))])
            }
        }
    }

    /// A match statement (statement `i`) whose possible values `hit` and/or `miss`: go on,
    /// fail the rule, or fork (the rest of the rule on one branch, no match on the other).
    fn branch_on_match(
        &self,
        t: Thread,
        ctx: &RuleCtx<'a>,
        i: usize,
        hit: bool,
        miss: bool,
    ) -> Next {
        match (hit, miss) {
            (true, false) => Next::Continue(t),
            (false, _) => Next::Done(vec![(t, Flow::Next)]),
            (true, true) => {
                let other = t.clone();
                let mut res = self.eval_stmts(t, ctx, i + 1);
                res.push((other, Flow::Next));
                Next::Done(res)
            }
        }
    }

    /// `KEY vmap @map`: one outcome per distinct element the possible keys reach (a miss
    /// goes on with the next rule).
    fn eval_vmap(
        &self,
        t: Thread,
        ctx: &RuleCtx<'a>,
        key: &[Field],
        map: &str,
    ) -> Vec<(Thread, Flow)> {
        let Some(keys) = self.key_values(&t.pkt, key) else {
            return vec![(t, Flow::Next)];
        };
        let s = ctx.table.set(map);
        // Distinct outcomes, in key order; `None` is a miss.
        let mut outcomes: Vec<Option<&Element>> = Vec::new();
        for k in &keys {
            let e = s
                .and_then(|s| find(s, k))
                .filter(|e| matches!(e.data, ElementData::Verdict(_)));
            if !outcomes.contains(&e) {
                outcomes.push(e);
            }
        }
        let mut res = Vec::new();
        for e in outcomes {
            let mut t1 = t.clone();
            match e {
                Some(e) => {
                    let ElementData::Verdict(v) = &e.data else {
                        unreachable!("filtered to verdict elements")
                    };
                    self.record(&mut t1, ctx, Some(text::element(e)));
                    res.push((t1, Flow::Verdict(v.clone())));
                }
                None => {
                    let why = match s {
                        None => format!("@{map} does not exist: no match"),
                        Some(s) if s.flags.dynamic => {
                            format!("@{map} is dynamic (assumed empty): no match")
                        }
                        Some(_) => format!("no element in @{map}: no match"),
                    };
                    self.record(&mut t1, ctx, Some(why));
                    res.push((t1, Flow::Next));
                }
            }
        }
        res
    }

    /// `dnat to numgen random mod N offset O map @map` (protocol already checked): one
    /// outcome per endpoint the slots reach, then one for the slots that miss.
    /// `numgen random mod 65536 offset O map @M`: one branch per endpoint whose range lies
    /// in the block `O ..= O + 65535` (with its keys and its share of the picks), and a
    /// no-match branch for keys that no range covers.
    fn eval_dnat_pick(
        &self,
        t: Thread,
        ctx: &RuleCtx<'a>,
        offset: u32,
        map: &str,
        target: &dyn Fn(&Element) -> Option<EndpointAddr>,
        note: &str,
    ) -> Vec<(Thread, Flow)> {
        let (first, last) = (
            u64::from(offset),
            u64::from(offset) + u64::from(PICK_SPACE) - 1,
        );
        let mut by_target: BTreeMap<Option<EndpointAddr>, Vec<(u64, u64)>> = BTreeMap::new();
        let mut next = first;
        let elements = ctx.table.set(map).map(|s| s.elements.iter());
        for e in elements.into_iter().flatten() {
            let [Value::Range(lo, hi)] = e.key.as_slice() else {
                continue;
            };
            let (lo, hi) = (u64::from(*lo).max(first), u64::from(*hi).min(last));
            if lo > hi {
                continue;
            }
            if lo > next {
                by_target.entry(None).or_default().push((next, lo - 1));
            }
            by_target.entry(target(e)).or_default().push((lo, hi));
            next = next.max(hi + 1);
        }
        if next <= last {
            by_target.entry(None).or_default().push((next, last));
        }
        let mut res = Vec::new();
        // Endpoints first (sorted), then the miss branch.
        let mut entries: Vec<_> = by_target.into_iter().collect();
        entries.sort_by_key(|(k, _)| k.is_none());
        for (target, ranges) in entries {
            let mut t1 = t.clone();
            let keys: u64 = ranges.iter().map(|(lo, hi)| hi - lo + 1).sum();
            let share = 100.0 * keys as f64 / f64::from(PICK_SPACE);
            let ranges = ranges
                .iter()
                .map(|(lo, hi)| format!("{lo}-{hi}"))
                .collect::<Vec<_>>()
                .join(", ");
            match target {
                Some(ep) => {
                    t1.pkt.do_dnat(ep.ip, ep.port);
                    self.record(
                        &mut t1,
                        ctx,
                        Some(format!("{ep} (keys {ranges}, {share:.2}%){note}")),
                    );
                    res.push((t1, Flow::Nat));
                }
                None => {
                    self.record(
                        &mut t1,
                        ctx,
                        Some(format!("keys {ranges} not in @{map}: no match{note}")),
                    );
                    res.push((t1, Flow::Next));
                }
            }
        }
        res
    }

    /// The values a field can have for this packet; `None` when the field does not exist
    /// (`tcp dport` on a UDP packet), which fails the statement whatever its operator.
    fn field_values(&self, pkt: &Pkt, f: &Field) -> Option<Vec<Pv>> {
        let v = match f {
            Field::Saddr => Pv::Addr(pkt.src),
            Field::Daddr => Pv::Addr(pkt.dst),
            Field::L4Proto => Pv::Num(u64::from(pkt.proto.number())),
            Field::ThDport => Pv::Num(u64::from(pkt.port)),
            Field::Dport(p) => {
                if *p != pkt.proto {
                    return None;
                }
                Pv::Num(u64::from(pkt.port))
            }
            Field::Mark => Pv::Num(u64::from(pkt.mark)),
            Field::MarkAnd(m) => Pv::Num(u64::from(pkt.mark & m)),
            Field::Iifname => Pv::Str(pkt.iif.clone()),
            Field::FibSaddrType => Pv::FibLocal(self.host.is_local(&pkt.src)),
            Field::FibDaddrType => Pv::FibLocal(self.host.is_local(&pkt.dst)),
            Field::CtState => Pv::CtNew,
            Field::CtStatus => Pv::CtDnat(pkt.ct_dnat),
            Field::Numgen { modulus, offset } => {
                if *modulus == 0 {
                    return None;
                }
                let lo = u64::from(*offset);
                return Some((lo..lo + u64::from(*modulus)).map(Pv::Num).collect());
            }
        };
        Some(vec![v])
    }

    /// Every possible concatenated key (the product of the fields' possible values).
    fn key_values(&self, pkt: &Pkt, key: &[Field]) -> Option<Vec<Vec<Pv>>> {
        let mut keys: Vec<Vec<Pv>> = vec![Vec::new()];
        for f in key {
            let vals = self.field_values(pkt, f)?;
            let mut next = Vec::with_capacity(keys.len() * vals.len());
            for k in &keys {
                for v in &vals {
                    let mut k2 = k.clone();
                    k2.push(v.clone());
                    next.push(k2);
                }
            }
            keys = next;
        }
        Some(keys)
    }
}

struct RuleCtx<'a> {
    hook: Hook,
    table: &'a Table,
    chain: &'a Chain,
    idx: usize,
    rule: &'a Rule,
}

/// The element whose key matches (dynamic sets hold nothing for a new client).
fn find<'s>(set: &'s Set, key: &[Pv]) -> Option<&'s Element> {
    if set.flags.dynamic {
        return None;
    }
    // Fast path: the key spelled with the set's declared types, looked up exactly.
    if !set.flags.interval && set.key.len() == key.len() {
        let exact: Option<Vec<Value>> =
            set.key.iter().zip(key).map(|(t, v)| typed(*t, v)).collect();
        if let Some(e) = exact.and_then(|k| set.elements.get(&k)) {
            return Some(e);
        }
    }
    set.elements
        .iter()
        .find(|e| e.key.len() == key.len() && e.key.iter().zip(key).all(|(lit, v)| matches(v, lit)))
}

/// A packet value as an element part of type `t` holds it.
fn typed(t: DataType, v: &Pv) -> Option<Value> {
    match (t, v) {
        (DataType::Ipv4Addr | DataType::Ipv6Addr, Pv::Addr(a)) => Some(Value::Addr(*a)),
        (DataType::InetProto, Pv::Num(n)) => {
            Protocol::from_number(u8::try_from(*n).ok()?).map(Value::Proto)
        }
        (DataType::InetService, Pv::Num(n)) => Some(Value::Port(u16::try_from(*n).ok()?)),
        (DataType::Mark | DataType::Pick, Pv::Num(n)) => Some(Value::Int(u32::try_from(*n).ok()?)),
        _ => None,
    }
}

/// The `addr . port` an endpoint map element maps to.
fn slot_target(e: &Element) -> Option<EndpointAddr> {
    let ElementData::Values(vs) = &e.data else {
        return None;
    };
    match vs.as_slice() {
        [Value::Addr(ip), Value::Port(port)] => Some(EndpointAddr {
            ip: *ip,
            port: *port,
        }),
        [Value::Addr(ip), Value::Int(port)] => Some(EndpointAddr {
            ip: *ip,
            port: u16::try_from(*port).ok()?,
        }),
        _ => None,
    }
}

fn cmp(v: &Pv, op: CmpOp, lit: &Value) -> bool {
    match op {
        CmpOp::Eq => matches(v, lit),
        CmpOp::Ne => !matches(v, lit),
    }
}

/// Does a packet value match a literal (or element part)? Prefixes match by containment,
/// interface names ending in `*` by prefix, bit fields (`ct state`/`ct status`) when the
/// bit is set.
fn matches(v: &Pv, lit: &Value) -> bool {
    match (v, lit) {
        (Pv::Addr(a), Value::Addr(b)) => a == b,
        (Pv::Addr(a), Value::Net(n)) => n.contains(*a),
        (Pv::Num(n), Value::Port(p)) => *n == u64::from(*p),
        (Pv::Num(n), Value::Int(i)) => *n == u64::from(*i),
        (Pv::Num(n), Value::Range(lo, hi)) => (u64::from(*lo)..=u64::from(*hi)).contains(n),
        (Pv::Num(n), Value::Proto(p)) => *n == u64::from(p.number()),
        (Pv::Str(s), Value::Iface(pat)) => match pat.strip_suffix('*') {
            Some(prefix) => s.starts_with(prefix),
            None => s.as_str() == &**pat,
        },
        (Pv::FibLocal(local), Value::FibType(FibType::Local)) => *local,
        (Pv::CtNew, Value::CtState(CtState::New)) => true,
        (Pv::CtDnat(d), Value::CtStatus(CtStatus::Dnat)) => *d,
        _ => false,
    }
}

fn finish(t: Thread, end: Option<TraceVerdict>) -> Path {
    let verdict = match end {
        Some(v) => v,
        None if t.pkt.dnat.is_some() => TraceVerdict::Dnat,
        None => TraceVerdict::Accept,
    };
    Path {
        verdict,
        endpoint: t.pkt.dnat,
        masquerade: t.pkt.masq,
        steps: t.steps,
    }
}
