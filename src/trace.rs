//! A pure packet tracer: where would the first packet of a new connection go through a
//! [`Ruleset`]?
//!
//! Owns: simulating netfilter hook traversal over the typed ruleset value, generically (no
//! knowledge of kproxy's chain names), the way the kernel's nftables evaluates it. Every
//! nondeterministic choice (`numgen`, endpoint slots) is explored, so a [`Trace`] lists
//! every possible outcome. `kproxy trace` prints it and tests use it as the behavioural
//! oracle for rendered rules.
//!
//! Must not: do I/O, read clocks or random numbers, or know what kproxy's chains mean.
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

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write;
use std::net::IpAddr;

use serde::Serialize;
use serde_json::json;

use crate::model::EndpointAddr;
use crate::nft::{
    text, Chain, ChainType, CmpOp, CtState, CtStatus, DataType, Element, ElementData, Family,
    FibType, Field, Hook, MarkOp, Protocol, Rule, Ruleset, Set, Stmt, Table, Value, Verdict,
};

/// The kernel's jump stack size (`NFT_JUMP_STACK_SIZE`).
pub const MAX_DEPTH: usize = 16;

/// Where the probed packet comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A process on the node itself (OUTPUT path).
    Node,
    /// A pod on this node, arriving on `iifname` (its veth or the bridge).
    Pod { iifname: String },
    /// Anything else, arriving on `iifname`.
    External { iifname: String },
}

/// What the tracer needs to know about the node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Host {
    /// Addresses `fib … type local` (and routing) treat as local: node IPs etc. Loopback
    /// addresses are always local.
    pub local_addrs: Vec<IpAddr>,
}

impl Host {
    fn is_local(&self, ip: &IpAddr) -> bool {
        ip.is_loopback() || self.local_addrs.contains(ip)
    }
}

/// The first packet of a new connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    pub origin: Origin,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: Protocol,
    pub port: u16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TraceVerdict {
    Dnat,
    Reject,
    Drop,
    Accept,
}

impl TraceVerdict {
    pub fn name(self) -> &'static str {
        match self {
            TraceVerdict::Dnat => "dnat",
            TraceVerdict::Reject => "reject",
            TraceVerdict::Drop => "drop",
            TraceVerdict::Accept => "accept",
        }
    }
}

/// One possible outcome and how it came about.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Path {
    pub verdict: TraceVerdict,
    /// The DNAT target, if the packet was DNATed (also when it was dropped afterwards).
    pub endpoint: Option<EndpointAddr>,
    pub masquerade: bool,
    pub steps: Vec<Step>,
}

/// Something that happened: a rule that matched (or whose map lookup missed), a chain
/// policy, a chain that was not evaluated.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Step {
    pub hook: Hook,
    pub chain: String,
    /// Index of the rule in its chain; `None` for chain-level events (policy, skipped).
    pub rule: Option<usize>,
    pub text: String,
}

/// Every outcome of a probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trace {
    /// `Dnat` if any path DNATs, else the first path's verdict.
    pub verdict: TraceVerdict,
    /// Endpoints reached by the DNAT paths, sorted and deduplicated.
    pub endpoints: Vec<EndpointAddr>,
    /// Some path with the overall verdict masquerades (always false for drop/reject).
    pub masquerade: bool,
    /// Distinct paths, in evaluation order.
    pub paths: Vec<Path>,
}

/// Traces `probe` through the tables of `rs` of the probe's destination family.
pub fn trace(rs: &Ruleset, host: &Host, probe: &Probe) -> Trace {
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
    let mut seen: HashSet<Path> = HashSet::new();
    let mut paths: Vec<Path> = Vec::new();
    for p in tracer.walk(start, first) {
        if seen.insert(p.clone()) {
            paths.push(p);
        }
    }
    aggregate(paths)
}

fn aggregate(paths: Vec<Path>) -> Trace {
    let verdict = if paths.iter().any(|p| p.verdict == TraceVerdict::Dnat) {
        TraceVerdict::Dnat
    } else {
        paths.first().map_or(TraceVerdict::Accept, |p| p.verdict)
    };
    let mut endpoints: Vec<EndpointAddr> = paths
        .iter()
        .filter(|p| p.verdict == TraceVerdict::Dnat)
        .filter_map(|p| p.endpoint)
        .collect();
    endpoints.sort();
    endpoints.dedup();
    let masquerade = matches!(verdict, TraceVerdict::Dnat | TraceVerdict::Accept)
        && paths.iter().any(|p| p.verdict == verdict && p.masquerade);
    Trace {
        verdict,
        endpoints,
        masquerade,
        paths,
    }
}

impl Trace {
    /// `{"verdict", "endpoints", "masquerade", "paths": [{"verdict", "endpoint",
    /// "masquerade", "steps": [{"hook", "chain", "rule", "text"}]}]}`.
    pub fn to_json(&self) -> serde_json::Value {
        let paths: Vec<serde_json::Value> = self
            .paths
            .iter()
            .map(|p| {
                let steps: Vec<serde_json::Value> = p
                    .steps
                    .iter()
                    .map(|s| {
                        json!({
                            "hook": s.hook.name(),
                            "chain": s.chain,
                            "rule": s.rule,
                            "text": s.text,
                        })
                    })
                    .collect();
                json!({
                    "verdict": p.verdict,
                    "endpoint": p.endpoint.map(|e| e.to_string()),
                    "masquerade": p.masquerade,
                    "steps": steps,
                })
            })
            .collect();
        json!({
            "verdict": self.verdict,
            "endpoints": self.endpoints.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
            "masquerade": self.masquerade,
            "paths": paths,
        })
    }

    /// Human-readable: the probe, each path's steps, the verdict line.
    pub fn render_text(&self, probe: &Probe) -> String {
        let mut out = String::new();
        let origin = match &probe.origin {
            Origin::Node => "node".to_string(),
            Origin::Pod { iifname } => format!("pod via {}", text::quote(iifname)),
            Origin::External { iifname } => format!("external via {}", text::quote(iifname)),
        };
        let dst = EndpointAddr {
            ip: probe.dst,
            port: probe.port,
        };
        let _ = writeln!(
            out,
            "probe: {} from {origin}: {} -> {dst}",
            probe.proto, probe.src
        );
        let n = self.paths.len();
        for (i, p) in self.paths.iter().enumerate() {
            let _ = writeln!(out);
            let _ = writeln!(out, "path {}/{n}: {}", i + 1, path_summary(p));
            for s in &p.steps {
                let loc = match s.rule {
                    Some(r) => format!("{}[{r}]", s.chain),
                    None => s.chain.clone(),
                };
                let _ = writeln!(out, "  {:<11} {loc}: {}", s.hook.name(), s.text);
            }
        }
        let _ = writeln!(out);
        let mut line = format!("verdict: {}", self.verdict.name());
        if !self.endpoints.is_empty() {
            let eps: Vec<String> = self.endpoints.iter().map(|e| e.to_string()).collect();
            let _ = write!(line, " to {}", eps.join(", "));
        }
        if self.masquerade {
            line.push_str(" (masquerade)");
        }
        out.push_str(&line);
        out.push('\n');
        out
    }
}

fn path_summary(p: &Path) -> String {
    let mut s = p.verdict.name().to_string();
    if let Some(e) = p.endpoint {
        if p.verdict == TraceVerdict::Dnat {
            let _ = write!(s, " to {e}");
        } else {
            let _ = write!(s, " (after dnat to {e})");
        }
    }
    if p.masquerade {
        s.push_str(", masquerade");
    }
    s
}

// ---------------------------------------------------------------------------------------
// The interpreter.

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

    fn eval_stmts(&self, mut t: Thread, ctx: &RuleCtx<'a>, from: usize) -> Vec<(Thread, Flow)> {
        let stmts = &ctx.rule.stmts;
        let mut i = from;
        loop {
            let Some(stmt) = stmts.get(i) else {
                // Every statement matched and none ended the rule.
                self.record(&mut t, ctx, None);
                return vec![(t, Flow::Next)];
            };
            match stmt {
                // A statement kproxy did not write: its effect is unknown, so the rule is
                // treated as not matching (the step records it).
                Stmt::Foreign(_) => {
                    self.record(
                        &mut t,
                        ctx,
                        Some("statement not kproxy's: treated as no match".into()),
                    );
                    return vec![(t, Flow::Next)];
                }
                Stmt::Cmp { field, op, value } => {
                    let Some(vals) = self.field_values(&t.pkt, field) else {
                        return vec![(t, Flow::Next)];
                    };
                    let hit = vals.iter().any(|v| cmp(v, *op, value));
                    let miss = vals.iter().any(|v| !cmp(v, *op, value));
                    match (hit, miss) {
                        (true, false) => i += 1,
                        (false, _) => return vec![(t, Flow::Next)],
                        (true, true) => {
                            let other = t.clone();
                            let mut res = self.eval_stmts(t, ctx, i + 1);
                            res.push((other, Flow::Next));
                            return res;
                        }
                    }
                }
                Stmt::Lookup { key, set, negate } => {
                    let Some(keys) = self.key_values(&t.pkt, key) else {
                        return vec![(t, Flow::Next)];
                    };
                    let s = ctx.table.set(set);
                    let found = |k: &Vec<Pv>| s.and_then(|s| find(s, k)).is_some() != *negate;
                    let hit = keys.iter().any(found);
                    let miss = keys.iter().any(|k| !found(k));
                    match (hit, miss) {
                        (true, false) => i += 1,
                        (false, _) => return vec![(t, Flow::Next)],
                        (true, true) => {
                            let other = t.clone();
                            let mut res = self.eval_stmts(t, ctx, i + 1);
                            res.push((other, Flow::Next));
                            return res;
                        }
                    }
                }
                Stmt::Vmap { key, map } => {
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
                    return res;
                }
                Stmt::Update { .. } => i += 1,
                Stmt::SetMark(op) => {
                    t.pkt.mark = match op {
                        MarkOp::Or(m) => t.pkt.mark | m,
                        MarkOp::Xor(m) => t.pkt.mark ^ m,
                    };
                    i += 1;
                }
                Stmt::DnatTo { proto, addr, port } => {
                    if t.pkt.proto != *proto {
                        return vec![(t, Flow::Next)];
                    }
                    t.pkt.do_dnat(*addr, *port);
                    self.record(&mut t, ctx, None);
                    return vec![(t, Flow::Nat)];
                }
                Stmt::DnatSlot {
                    proto,
                    modulus,
                    offset,
                    map,
                } => {
                    if t.pkt.proto != *proto {
                        return vec![(t, Flow::Next)];
                    }
                    let s = ctx.table.set(map);
                    let mut by_target: BTreeMap<Option<EndpointAddr>, Vec<u64>> = BTreeMap::new();
                    for slot in u64::from(*offset)..u64::from(*offset) + u64::from(*modulus) {
                        let target = s
                            .and_then(|s| find(s, &[Pv::Num(slot)]))
                            .and_then(slot_target);
                        by_target.entry(target).or_default().push(slot);
                    }
                    let mut res = Vec::new();
                    // Endpoints first (sorted), then the miss branch.
                    let mut entries: Vec<_> = by_target.into_iter().collect();
                    entries.sort_by_key(|(k, _)| k.is_none());
                    for (target, slots) in entries {
                        let mut t1 = t.clone();
                        let slots = slots
                            .iter()
                            .map(|s| s.to_string())
                            .collect::<Vec<_>>()
                            .join(", ");
                        match target {
                            Some(ep) => {
                                t1.pkt.do_dnat(ep.ip, ep.port);
                                self.record(&mut t1, ctx, Some(format!("{ep} (slot {slots})")));
                                res.push((t1, Flow::Nat));
                            }
                            None => {
                                self.record(
                                    &mut t1,
                                    ctx,
                                    Some(format!("slot {slots} not in @{map}: no match")),
                                );
                                res.push((t1, Flow::Next));
                            }
                        }
                    }
                    return res;
                }
                Stmt::Masquerade => {
                    t.pkt.masq = true;
                    t.pkt.src_nat_set = true;
                    self.record(&mut t, ctx, None);
                    return vec![(t, Flow::Nat)];
                }
                Stmt::Reject => {
                    self.record(&mut t, ctx, None);
                    return vec![(t, Flow::Reject)];
                }
                Stmt::Verdict(v) => {
                    self.record(&mut t, ctx, None);
                    return vec![(t, Flow::Verdict(v.clone()))];
                }
            }
        }
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
        (DataType::Mark | DataType::Slot, Pv::Num(n)) => Some(Value::Int(u32::try_from(*n).ok()?)),
        _ => None,
    }
}

/// The `addr . port` a slot element maps to.
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
        (Pv::Num(n), Value::Proto(p)) => *n == u64::from(p.number()),
        (Pv::Str(s), Value::Iface(pat)) => match pat.strip_suffix('*') {
            Some(prefix) => s.starts_with(prefix),
            None => s == pat,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nft::{SetData, SetFlags};

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

        let mut endpoints = Set::new(
            "endpoints",
            vec![DataType::Slot],
            SetData::Values(vec![DataType::Ipv4Addr, DataType::InetService]),
        );
        for (slot, addr, port) in [
            (0, "10.244.1.5", 8080),
            (1, "10.244.2.6", 8080),
            (2, "10.244.3.7", 53),
            (4, "10.244.4.8", 53),
        ] {
            endpoints.insert(Element::values(
                vec![Value::Int(slot)],
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
        let not_pod_masq = rule(vec![
            Stmt::cmp_ne(Field::Saddr, net(POD_CIDR)),
            Stmt::jump("mark-for-masquerade"),
        ]);
        t.add_chain(chain(
            "svc-web",
            vec![
                not_pod_masq.clone(),
                rule(vec![Stmt::DnatSlot {
                    proto: Protocol::Tcp,
                    modulus: 2,
                    offset: 0,
                    map: "endpoints".into(),
                }]),
            ],
        ));
        t.add_chain(chain(
            "svc-gap",
            vec![
                not_pod_masq.clone(),
                rule(vec![Stmt::DnatSlot {
                    proto: Protocol::Udp,
                    modulus: 3,
                    offset: 2,
                    map: "endpoints".into(),
                }]),
            ],
        ));
        let mut aff = vec![not_pod_masq];
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
        Ruleset { tables: vec![t] }
    }

    #[test]
    fn clusterip_from_pod_reaches_every_endpoint_without_masquerade() {
        let t = trace(
            &kube_like(),
            &host(),
            &pod("10.244.1.9", "10.96.0.10", Protocol::Tcp, 80),
        );
        assert_eq!(t.verdict, TraceVerdict::Dnat);
        assert_eq!(eps(&t), ["10.244.1.5:8080", "10.244.2.6:8080"]);
        assert!(!t.masquerade);
        assert_eq!(t.paths.len(), 2);
        for p in &t.paths {
            assert_eq!(p.verdict, TraceVerdict::Dnat);
            assert!(!p.masquerade);
            // Forwarded: prerouting, forward, postrouting; never input or output.
            assert!(p.steps.iter().any(|s| s.hook == Hook::Forward));
            assert!(p.steps.iter().any(|s| s.hook == Hook::Postrouting));
            assert!(!p
                .steps
                .iter()
                .any(|s| matches!(s.hook, Hook::Input | Hook::Output)));
            let vmap = p
                .steps
                .iter()
                .find(|s| s.chain == "services" && s.rule == Some(0))
                .unwrap();
            assert!(vmap.text.contains("vmap @service-ips"), "{}", vmap.text);
            assert!(vmap.text.contains("goto svc-web"), "{}", vmap.text);
        }
        // The masquerading chain returned early (mark not set): nothing masqueraded.
        assert!(t.paths[0]
            .steps
            .iter()
            .any(|s| s.chain == "masquerading" && s.text.ends_with("return")));
    }

    #[test]
    fn clusterip_from_outside_the_pod_network_is_masqueraded() {
        let t = trace(
            &kube_like(),
            &host(),
            &ext("ens3", "192.168.1.50", "10.96.0.10", 80),
        );
        assert_eq!(t.verdict, TraceVerdict::Dnat);
        assert_eq!(eps(&t), ["10.244.1.5:8080", "10.244.2.6:8080"]);
        assert!(t.masquerade);
        assert!(t.paths.iter().all(|p| p.masquerade));
    }

    #[test]
    fn unknown_port_matches_nothing_and_is_accepted() {
        let t = trace(
            &kube_like(),
            &host(),
            &pod("10.244.1.9", "10.96.0.10", Protocol::Tcp, 81),
        );
        assert_eq!(t.verdict, TraceVerdict::Accept);
        assert!(t.endpoints.is_empty());
        assert!(!t.masquerade);
        assert_eq!(t.paths.len(), 1);
        assert_eq!(t.paths[0].endpoint, None);
        assert!(t.paths[0]
            .steps
            .iter()
            .any(|s| s.chain == "services" && s.text.contains("no element in @service-ips")));
        // UDP to a TCP service port does not match either.
        let t = trace(
            &kube_like(),
            &host(),
            &pod("10.244.1.9", "10.96.0.10", Protocol::Udp, 80),
        );
        assert_eq!(t.verdict, TraceVerdict::Accept);
        assert!(t.endpoints.is_empty());
    }

    #[test]
    fn service_without_endpoints_is_rejected_on_every_path() {
        let rs = kube_like();
        let t = trace(
            &rs,
            &host(),
            &pod("10.244.1.9", "10.96.0.40", Protocol::Tcp, 80),
        );
        assert_eq!(t.verdict, TraceVerdict::Reject);
        assert!(t.endpoints.is_empty());
        assert!(!t.masquerade);
        let last = t.paths[0].steps.last().unwrap();
        assert_eq!(
            (last.hook, last.chain.as_str()),
            (Hook::Forward, "reject-chain")
        );
        // From the node the check runs in output.
        let t = trace(&rs, &host(), &node("10.96.0.40", Protocol::Tcp, 80));
        assert_eq!(t.verdict, TraceVerdict::Reject);
        let last = t.paths[0].steps.last().unwrap();
        assert_eq!((last.hook, last.text.as_str()), (Hook::Output, "reject"));
    }

    #[test]
    fn affinity_chain_ignores_dynamic_sets_and_branches_over_numgen() {
        // 10.244.9.9 has a (stale) entry in every affinity set: a new client has none.
        let t = trace(
            &kube_like(),
            &host(),
            &pod("10.244.9.9", "10.96.0.20", Protocol::Tcp, 80),
        );
        assert_eq!(t.verdict, TraceVerdict::Dnat);
        assert_eq!(
            eps(&t),
            ["10.244.5.1:8080", "10.244.5.2:8080", "10.244.5.3:8080"]
        );
        assert_eq!(t.paths.len(), 3);
        assert!(!t.masquerade);
        // Each path refreshed its affinity set before the DNAT.
        for p in &t.paths {
            assert!(p
                .steps
                .iter()
                .any(|s| s.text.starts_with("update @affinity-")));
        }
    }

    #[test]
    fn missing_slot_falls_through_to_the_next_rule() {
        let t = trace(
            &kube_like(),
            &host(),
            &pod("10.244.1.9", "10.96.0.30", Protocol::Udp, 53),
        );
        assert_eq!(t.verdict, TraceVerdict::Dnat);
        assert_eq!(eps(&t), ["10.244.3.7:53", "10.244.4.8:53"]);
        let verdicts: Vec<TraceVerdict> = t.paths.iter().map(|p| p.verdict).collect();
        assert_eq!(
            verdicts,
            [TraceVerdict::Dnat, TraceVerdict::Dnat, TraceVerdict::Accept]
        );
        assert!(t.paths[2]
            .steps
            .iter()
            .any(|s| s.text.contains("slot 3 not in @endpoints")));
        // TCP to the same address: the vmap key differs, nothing matches.
        let t = trace(
            &kube_like(),
            &host(),
            &pod("10.244.1.9", "10.96.0.30", Protocol::Tcp, 53),
        );
        assert_eq!(t.verdict, TraceVerdict::Accept);
    }

    #[test]
    fn nodeport_needs_a_local_destination() {
        let rs = kube_like();
        let probe = ext("eth0", "203.0.113.7", NODE_IP, 30080);
        let t = trace(&rs, &host(), &probe);
        assert_eq!(t.verdict, TraceVerdict::Dnat);
        assert_eq!(eps(&t), ["10.244.1.5:8080", "10.244.2.6:8080"]);
        assert!(t.masquerade);
        // After DNAT the endpoint is not local: forwarded, not delivered to input.
        assert!(t
            .paths
            .iter()
            .all(|p| p.steps.iter().any(|s| s.hook == Hook::Forward)));
        // The same address not being local: no NodePort; routed to input? No: forwarded.
        let t = trace(&rs, &Host::default(), &probe);
        assert_eq!(t.verdict, TraceVerdict::Accept);
        assert!(t.endpoints.is_empty());
        // A local address that is not a NodePort: delivered locally.
        let t = trace(&rs, &host(), &ext("eth0", "203.0.113.7", NODE_IP, 22));
        assert_eq!(t.verdict, TraceVerdict::Accept);
        assert!(t.paths[0].steps.iter().any(|s| s.hook == Hook::Input));
        assert!(!t.paths[0].steps.iter().any(|s| s.hook == Hook::Forward));
    }

    #[test]
    fn local_policy_nodeport_drops_external_but_serves_pods_and_node() {
        let rs = kube_like();
        let t = trace(&rs, &host(), &ext("eth0", "203.0.113.7", NODE_IP, 30090));
        assert_eq!(t.verdict, TraceVerdict::Drop);
        assert!(t.endpoints.is_empty());
        assert!(!t.masquerade);
        // Pods short-circuit to the cluster endpoints, source kept.
        let mut p = pod("10.244.1.9", NODE_IP, Protocol::Tcp, 30090);
        let t = trace(&rs, &host(), &p);
        assert_eq!(t.verdict, TraceVerdict::Dnat);
        assert_eq!(eps(&t), ["10.244.1.5:8080", "10.244.2.6:8080"]);
        assert!(!t.masquerade);
        // The node itself (`fib saddr type local`): masqueraded.
        p.origin = Origin::Node;
        p.src = ip(NODE_IP);
        let t = trace(&rs, &host(), &p);
        assert_eq!(t.verdict, TraceVerdict::Dnat);
        assert_eq!(eps(&t), ["10.244.1.5:8080", "10.244.2.6:8080"]);
        assert!(t.masquerade);
    }

    #[test]
    fn node_traffic_goes_through_output_and_postrouting() {
        let t = trace(
            &kube_like(),
            &host(),
            &node("10.96.0.10", Protocol::Tcp, 80),
        );
        assert_eq!(t.verdict, TraceVerdict::Dnat);
        assert_eq!(eps(&t), ["10.244.1.5:8080", "10.244.2.6:8080"]);
        assert!(t.masquerade, "node source is outside the pod network");
        for p in &t.paths {
            let hooks: Vec<Hook> = p.steps.iter().map(|s| s.hook).collect();
            assert!(hooks.contains(&Hook::Output));
            assert!(hooks.contains(&Hook::Postrouting));
            assert!(!hooks.contains(&Hook::Prerouting));
            assert!(!hooks.contains(&Hook::Forward));
            assert!(p.steps.iter().any(|s| s.chain == "nat-output"));
        }
    }

    #[test]
    fn iifname_wildcards_match_by_prefix() {
        let rs = kube_like();
        let t = trace(&rs, &host(), &ext("eth1", "198.51.100.7", "10.96.0.10", 80));
        assert_eq!(t.verdict, TraceVerdict::Drop);
        assert_eq!(t.paths.len(), 1);
        assert_eq!(t.paths[0].steps.len(), 1);
        assert_eq!(t.paths[0].steps[0].chain, "filter-prerouting");
        // Not an eth* interface: served.
        let t = trace(&rs, &host(), &ext("ens3", "198.51.100.7", "10.96.0.10", 80));
        assert_eq!(t.verdict, TraceVerdict::Dnat);
        // An exact name does not match a longer one.
        let mut rs2 = rs.clone();
        let c = rs2.tables[0].chains.get_mut("filter-prerouting").unwrap();
        c.rules[0].stmts[0] = Stmt::cmp(Field::Iifname, Value::Iface("eth".into()));
        let t = trace(
            &rs2,
            &host(),
            &ext("eth1", "198.51.100.7", "10.96.0.10", 80),
        );
        assert_eq!(t.verdict, TraceVerdict::Dnat);
        let t = trace(&rs2, &host(), &ext("eth", "198.51.100.7", "10.96.0.10", 80));
        assert_eq!(t.verdict, TraceVerdict::Drop);
    }

    fn v6_table() -> Table {
        let mut t = Table::new(Family::V6, "kproxy");
        let mut ips = Set::new(
            "service-ips",
            vec![
                DataType::Ipv6Addr,
                DataType::InetProto,
                DataType::InetService,
            ],
            SetData::Verdict,
        );
        ips.insert(Element::verdict(
            svc_key("fd00:10::10", Protocol::Tcp, 80),
            Verdict::Goto("svc-web6".into()),
        ));
        t.add_set(ips);
        let mut eps = Set::new(
            "endpoints",
            vec![DataType::Slot],
            SetData::Values(vec![DataType::Ipv6Addr, DataType::InetService]),
        );
        eps.insert(Element::values(
            vec![Value::Int(0)],
            vec![a("fd00:1::5"), Value::Port(8080)],
        ));
        t.add_set(eps);
        t.add_chain(base(
            "nat-prerouting",
            ChainType::Nat,
            Hook::Prerouting,
            -100,
            vec![rule(vec![Stmt::Vmap {
                key: vec![Field::Daddr, Field::L4Proto, Field::ThDport],
                map: "service-ips".into(),
            }])],
        ));
        t.add_chain(chain(
            "svc-web6",
            vec![
                rule(vec![
                    Stmt::cmp_ne(Field::Saddr, net("fd00:244::/48")),
                    Stmt::SetMark(MarkOp::Or(MASQ)),
                ]),
                rule(vec![Stmt::DnatSlot {
                    proto: Protocol::Tcp,
                    modulus: 1,
                    offset: 0,
                    map: "endpoints".into(),
                }]),
            ],
        ));
        t.add_chain(base(
            "nat-postrouting",
            ChainType::Nat,
            Hook::Postrouting,
            100,
            vec![rule(vec![
                Stmt::cmp_ne(Field::MarkAnd(MASQ), Value::Int(0)),
                Stmt::Masquerade,
            ])],
        ));
        t
    }

    #[test]
    fn ipv6_uses_only_ip6_tables() {
        let mut rs = kube_like();
        // An ip table that would drop everything v6 if it were (wrongly) evaluated.
        rs.tables[0].add_chain(base(
            "drop-all",
            ChainType::Filter,
            Hook::Prerouting,
            -300,
            vec![rule(vec![
                Stmt::cmp(Field::Saddr, net("::/0")),
                Stmt::Verdict(Verdict::Drop),
            ])],
        ));
        rs.tables.push(v6_table());
        let probe = Probe {
            origin: Origin::Pod {
                iifname: "veth1".into(),
            },
            src: ip("fd00:244::9"),
            dst: ip("fd00:10::10"),
            proto: Protocol::Tcp,
            port: 80,
        };
        let t = trace(&rs, &Host::default(), &probe);
        assert_eq!(t.verdict, TraceVerdict::Dnat);
        assert_eq!(eps(&t), ["[fd00:1::5]:8080"]);
        assert_eq!(t.endpoints, [ep("[fd00:1::5]:8080")]);
        assert!(!t.masquerade);
        let probe = Probe {
            src: ip("2001:db8::1"),
            origin: Origin::External {
                iifname: "eth0".into(),
            },
            ..probe
        };
        let t = trace(&rs, &Host::default(), &probe);
        assert!(t.masquerade);
        // An IPv4 probe never sees the ip6 table.
        let rs6 = Ruleset {
            tables: vec![v6_table()],
        };
        let t = trace(
            &rs6,
            &host(),
            &pod("10.244.1.9", "10.96.0.10", Protocol::Tcp, 80),
        );
        assert_eq!(t.verdict, TraceVerdict::Accept);
        assert!(t.paths[0].steps.is_empty());
    }

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
        let mut m = Set::new("pick", vec![DataType::Slot], SetData::Verdict);
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
    fn json_and_text_output() {
        let probe = ext("ens3", "192.168.1.50", "10.96.0.10", 80);
        let t = trace(&kube_like(), &host(), &probe);
        let j = t.to_json();
        assert_eq!(j["verdict"], "dnat");
        assert_eq!(
            j["endpoints"],
            json!(["10.244.1.5:8080", "10.244.2.6:8080"])
        );
        assert_eq!(j["masquerade"], true);
        let obj = j.as_object().unwrap();
        let mut keys: Vec<&String> = obj.keys().collect();
        keys.sort();
        assert_eq!(keys, ["endpoints", "masquerade", "paths", "verdict"]);
        assert_eq!(j["paths"].as_array().unwrap().len(), 2);
        assert_eq!(j["paths"][0]["verdict"], "dnat");
        assert_eq!(j["paths"][0]["endpoint"], "10.244.1.5:8080");
        assert_eq!(j["paths"][0]["steps"][0]["hook"], "prerouting");
        assert_eq!(j["paths"][0]["steps"][0]["chain"], "filter-prerouting");
        assert!(j["paths"][0]["steps"][0]["rule"].is_null());
        let txt = t.render_text(&probe);
        assert!(
            txt.starts_with("probe: tcp from external via \"ens3\": 192.168.1.50 -> 10.96.0.10:80")
        );
        assert!(txt.contains("path 2/2: dnat to 10.244.2.6:8080, masquerade"));
        assert!(txt.contains("masquerading[2]: masquerade fully-random"));
        assert!(txt
            .trim_end()
            .ends_with("verdict: dnat to 10.244.1.5:8080, 10.244.2.6:8080 (masquerade)"));
        let reject = trace(
            &kube_like(),
            &host(),
            &pod("10.244.1.9", "10.96.0.40", Protocol::Tcp, 80),
        );
        assert_eq!(reject.to_json()["verdict"], "reject");
        assert_eq!(reject.to_json()["masquerade"], false);
        assert_eq!(reject.to_json()["endpoints"], json!([]));
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
    fn large_slot_maps_are_traced_quickly() {
        let mut t = Table::new(Family::V4, "big");
        let mut m = Set::new(
            "endpoints",
            vec![DataType::Slot],
            SetData::Values(vec![DataType::Ipv4Addr, DataType::InetService]),
        );
        for slot in 0..200_000u32 {
            let ip = std::net::Ipv4Addr::from(0x0af4_0000 + slot);
            m.insert(Element::values(
                vec![Value::Int(slot)],
                vec![Value::Addr(ip.into()), Value::Port(80)],
            ));
        }
        t.add_set(m);
        t.add_chain(base(
            "nat-prerouting",
            ChainType::Nat,
            Hook::Prerouting,
            -100,
            vec![rule(vec![Stmt::DnatSlot {
                proto: Protocol::Tcp,
                modulus: 1000,
                offset: 150_000,
                map: "endpoints".into(),
            }])],
        ));
        let rs = Ruleset { tables: vec![t] };
        let tr = trace(&rs, &host(), &ext("eth0", "203.0.113.7", "10.96.0.10", 80));
        assert_eq!(tr.endpoints.len(), 1000);
        assert_eq!(tr.paths.len(), 1000);
        assert_eq!(
            tr.endpoints[0],
            ep(&format!(
                "{}:80",
                std::net::Ipv4Addr::from(0x0af4_0000u32 + 150_000)
            ))
        );
    }
}
