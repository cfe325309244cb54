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
//! Layout: this file is the API and its output ([`Probe`], [`Host`], [`Trace`], JSON and
//! text); `eval` is the interpreter (hooks, chains, statements against one packet);
//! `tests` holds the unit tests.

use std::collections::HashSet;
use std::fmt::Write;
use std::net::IpAddr;

use serde::Serialize;
use serde_json::json;

use crate::model::EndpointAddr;
use crate::nft::{text, Hook, Protocol, Ruleset};

mod eval;
#[cfg(test)]
mod tests;

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
    let mut seen: HashSet<Path> = HashSet::new();
    let mut paths: Vec<Path> = Vec::new();
    for p in eval::paths(rs, host, probe) {
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
