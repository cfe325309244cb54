//! The nftables ruleset as a typed value: tables, chains, sets, maps, elements and rules
//! built from typed statements (never strings).
//!
//! Owns: the vocabulary every other layer speaks about nftables. `render` produces a
//! [`Ruleset`], `nft::text` prints it for `nft -f`, `trace` interprets it, `diff` turns two
//! of them into a [`tx::Transaction`], and `backend::netlink` encodes transactions for the
//! kernel and decodes what the kernel holds back into a [`Ruleset`].
//!
//! Must not: do I/O, know about Kubernetes, or accept free-form rule strings. Everything
//! a rule can say is an enum variant here, so every consumer can match on it exhaustively.
//!
//! Names (tables, chains, sets) are limited by the kernel to 255 bytes
//! (`NFT_NAME_MAXLEN` 256 including the NUL, kernel >= 5.0); [`NAME_MAX`] is enforced by
//! [`valid_name`].

pub mod text;
pub mod tx;

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use ipnetwork::IpNetwork;
use serde::Serialize;

/// Longest table, chain or set name the kernel accepts (bytes, without the NUL).
pub const NAME_MAX: usize = 255;

/// Characters nft's parser accepts in an unquoted identifier after the first one.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphabetic() || c == '_' || c == '.' => {}
        _ => return false,
    }
    name.len() <= NAME_MAX
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '/'))
}

/// Address family of a table. kproxy only uses `ip` and `ip6` tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    #[serde(rename = "ip")]
    V4,
    #[serde(rename = "ip6")]
    V6,
}

impl Family {
    pub fn of(ip: &IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }
    /// nft's keyword for the family and for its address payload (`ip` / `ip6`).
    pub fn keyword(self) -> &'static str {
        match self {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        }
    }
    pub fn contains(self, ip: &IpAddr) -> bool {
        Family::of(ip) == self
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.keyword())
    }
}

/// Transport protocols a Service port can use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
    /// IANA protocol number (`meta l4proto` value).
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }
    pub fn from_number(n: u8) -> Option<Protocol> {
        match n {
            6 => Some(Protocol::Tcp),
            17 => Some(Protocol::Udp),
            132 => Some(Protocol::Sctp),
            _ => None,
        }
    }
    /// Parses the Kubernetes spelling (`TCP`, `UDP`, `SCTP`) or nft's (`tcp`, …).
    pub fn parse(s: &str) -> Option<Protocol> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Some(Protocol::Tcp),
            "udp" => Some(Protocol::Udp),
            "sctp" => Some(Protocol::Sctp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A whole ruleset: the tables kproxy owns. Other tables are never represented.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ruleset {
    pub tables: Vec<Table>,
}

impl Ruleset {
    pub fn table(&self, family: Family) -> Option<&Table> {
        self.tables.iter().find(|t| t.family == family)
    }

    /// The ruleset with every set's elements dropped: declarations, chains and rules
    /// only (what a diff reading each set's elements on demand starts from).
    pub fn without_elements(mut self) -> Ruleset {
        for t in &mut self.tables {
            for s in t.sets.values_mut() {
                s.elements = Elements::default();
            }
        }
        self
    }
}

/// One table. Sets and chains are keyed by name so that lookups, diffs and printing are
/// deterministic and O(log n).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    pub family: Family,
    pub name: String,
    pub comment: Option<String>,
    pub sets: BTreeMap<String, Set>,
    pub chains: BTreeMap<String, Chain>,
}

impl Table {
    pub fn new(family: Family, name: impl Into<String>) -> Table {
        Table {
            family,
            name: name.into(),
            comment: None,
            sets: BTreeMap::new(),
            chains: BTreeMap::new(),
        }
    }
    pub fn add_set(&mut self, set: Set) {
        self.sets.insert(set.name.clone(), set);
    }
    pub fn add_chain(&mut self, chain: Chain) {
        self.chains.insert(chain.name.clone(), chain);
    }
    pub fn chain(&self, name: &str) -> Option<&Chain> {
        self.chains.get(name)
    }
    pub fn set(&self, name: &str) -> Option<&Set> {
        self.sets.get(name)
    }
    /// Base chains ordered as the kernel runs them for a hook: by priority, then name.
    pub fn base_chains(&self, hook: Hook) -> Vec<&Chain> {
        let mut v: Vec<&Chain> = self
            .chains
            .values()
            .filter(|c| c.base.as_ref().is_some_and(|b| b.hook == hook))
            .collect();
        v.sort_by_key(|c| (c.base.as_ref().map(|b| b.priority), c.name.clone()));
        v
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ChainType {
    Filter,
    Nat,
}

impl ChainType {
    pub fn name(self) -> &'static str {
        match self {
            ChainType::Filter => "filter",
            ChainType::Nat => "nat",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Hook {
    Prerouting,
    Input,
    Forward,
    Output,
    Postrouting,
}

impl Hook {
    pub fn name(self) -> &'static str {
        match self {
            Hook::Prerouting => "prerouting",
            Hook::Input => "input",
            Hook::Forward => "forward",
            Hook::Output => "output",
            Hook::Postrouting => "postrouting",
        }
    }
}

/// How many keys one endpoint list's block of an interval endpoint map spans: the
/// modulus of every [`Stmt::DnatPick`].
pub const PICK_SPACE: u32 = 65536;

/// Splits a block of [`PICK_SPACE`] keys starting at `offset` into `n` ranges whose sizes
/// differ by at most one (the `i`-th endpoint's range is the `i`-th). At most
/// [`PICK_SPACE`] ranges: a list longer than that uses its first 65536 endpoints.
pub fn pick_ranges(offset: u32, n: u32) -> impl Iterator<Item = (u32, u32)> {
    let n = n.min(PICK_SPACE) as u64;
    let space = PICK_SPACE as u64;
    (0..n).map(move |i| {
        let lo = i * space / n;
        let hi = (i + 1) * space / n - 1;
        (offset + lo as u32, offset + hi as u32)
    })
}

/// Standard priorities (same numbers for `ip` and `ip6`).
pub mod priority {
    pub const DSTNAT: i32 = -100;
    pub const FILTER: i32 = 0;
    pub const SRCNAT: i32 = 100;
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BaseChain {
    pub kind: ChainType,
    pub hook: Hook,
    pub priority: i32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    pub name: String,
    pub base: Option<BaseChain>,
    pub comment: Option<String>,
    pub rules: Vec<Rule>,
}

impl Chain {
    pub fn regular(name: impl Into<String>) -> Chain {
        Chain {
            name: name.into(),
            base: None,
            comment: None,
            rules: Vec::new(),
        }
    }
    pub fn base(name: impl Into<String>, kind: ChainType, hook: Hook, priority: i32) -> Chain {
        Chain {
            name: name.into(),
            base: Some(BaseChain {
                kind,
                hook,
                priority,
            }),
            comment: None,
            rules: Vec::new(),
        }
    }
    pub fn with_comment(mut self, c: impl Into<String>) -> Chain {
        self.comment = Some(c.into());
        self
    }
    pub fn push(&mut self, rule: Rule) {
        self.rules.push(rule);
    }
}

/// One rule: statements evaluated left to right, as the kernel does. A statement that does
/// not match ends the rule; a verdict (or a terminal NAT/reject statement) ends the chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub stmts: Vec<Stmt>,
    pub comment: Option<String>,
}

impl Rule {
    pub fn new(stmts: Vec<Stmt>) -> Rule {
        Rule {
            stmts,
            comment: None,
        }
    }
    pub fn with_comment(mut self, c: impl Into<String>) -> Rule {
        self.comment = Some(c.into());
        self
    }
}

/// A value read from the packet or its metadata.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Field {
    /// `ip saddr` / `ip6 saddr` (family from the table).
    Saddr,
    /// `ip daddr` / `ip6 daddr`.
    Daddr,
    /// `meta l4proto`.
    L4Proto,
    /// `th dport`: transport destination port, any protocol.
    ThDport,
    /// `tcp dport` / `udp dport` / `sctp dport`: implies `meta l4proto` equals it.
    Dport(Protocol),
    /// `meta mark`.
    Mark,
    /// `meta mark & MASK`.
    MarkAnd(u32),
    /// `meta iifname`.
    Iifname,
    /// `fib saddr type` (address type of the source on this host).
    FibSaddrType,
    /// `fib daddr type`.
    FibDaddrType,
    /// `ct state`.
    CtState,
    /// `ct status`.
    CtStatus,
    /// `numgen random mod N offset O` (a fresh random number per evaluation).
    Numgen { modulus: u32, offset: u32 },
}

/// A literal a field is compared with, or one part of a set element.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Value {
    Addr(IpAddr),
    /// An address prefix (matches every address inside it).
    Net(IpNetwork),
    Proto(Protocol),
    Port(u16),
    /// A plain 32-bit integer (marks, numgen results).
    Int(u32),
    /// An inclusive range of integers, `LO-HI`: a key of an interval map over numgen
    /// results (the endpoint maps' picks).
    Range(u32, u32),
    /// An interface name; a trailing `*` makes it a prefix wildcard, as in nft. Boxed
    /// (not a `String`): every value is 24 bytes instead of 32, and rulesets hold
    /// millions of them (element keys and data).
    Iface(Box<str>),
    FibType(FibType),
    CtState(CtState),
    CtStatus(CtStatus),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FibType {
    Local,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CtState {
    New,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CtStatus {
    /// The connection's destination was NATed.
    Dnat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CmpOp {
    Eq,
    Ne,
}

/// Where a verdict sends evaluation.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verdict {
    Accept,
    Drop,
    Return,
    Jump(String),
    Goto(String),
}

impl Verdict {
    /// The chain this verdict enters, if any.
    pub fn target(&self) -> Option<&str> {
        match self {
            Verdict::Jump(c) | Verdict::Goto(c) => Some(c),
            _ => None,
        }
    }
}

/// How the mark is rewritten.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MarkOp {
    Or(u32),
    Xor(u32),
}

/// One statement of a rule.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stmt {
    /// `FIELD VALUE` / `FIELD != VALUE`. For `Ct*` fields, `Eq` means "has the bit".
    Cmp {
        field: Field,
        op: CmpOp,
        value: Value,
    },
    /// `F1 . F2 … @set` / `… != @set`: membership of the concatenated key.
    Lookup {
        key: Vec<Field>,
        set: String,
        negate: bool,
    },
    /// `F1 . F2 … vmap @map`: the element's verdict; no match continues with the next rule.
    Vmap {
        key: Vec<Field>,
        map: String,
    },
    /// `update @set { F1 . F2 … }`: add or refresh the key in a dynamic set (its timeout is
    /// the set's).
    Update {
        set: String,
        key: Vec<Field>,
    },
    /// `meta mark set meta mark | X` / `^ X`.
    SetMark(MarkOp),
    /// `meta l4proto P dnat to ADDR:PORT` (the l4proto match is part of the statement, as
    /// nft needs it to rewrite the port). Terminal.
    DnatTo {
        proto: Protocol,
        addr: IpAddr,
        port: u16,
    },
    /// `meta l4proto P dnat ip addr . port to numgen random mod 65536 offset O map @MAP`:
    /// draws a key uniformly from the block `O ..= O + 65535` of an interval endpoint map,
    /// where each endpoint of the list owns a range of about 65536/N keys. The rule never
    /// changes when the endpoints do (only the map's elements). Terminal; a key in no range
    /// does not match.
    DnatPick {
        proto: Protocol,
        offset: u32,
        map: String,
    },
    /// One rule of a ClientIP session-affinity chain (docs/ruleset.md "Session
    /// affinity"): the list's pick (`numgen random mod 65536 offset OFFSET` looked up in the
    /// interval map `pick`, giving an endpoint id), kept per client in the dynamic map of
    /// [`AffinityStep`], then `list . id` looked up in `endpoints` (live endpoints only)
    /// and DNATed to. `meta l4proto P` first. Terminal; no match when the id is not live.
    /// nft 1.0.6 cannot parse this rule (a map lookup as dynset data, nested map lookups):
    /// it exists over netlink only, and `nft::text` prints an nft-like notation.
    DnatAffinity {
        proto: Protocol,
        /// The list's constant in the affinity map's key (`client . list`).
        list: u32,
        offset: u32,
        pick: String,
        endpoints: String,
        step: AffinityStep,
    },
    /// `masquerade fully-random`. Terminal.
    Masquerade,
    /// `reject` (ICMP port unreachable for IPv4, ICMPv6 port unreachable for IPv6). Terminal.
    Reject,
    Verdict(Verdict),
    /// A statement read back from the kernel that this vocabulary does not describe
    /// (someone else's rule, or a hand edit), with the best description available. Never
    /// rendered by kproxy: a chain holding one differs from anything kproxy means.
    Foreign(String),
}

impl Stmt {
    pub fn cmp(field: Field, value: Value) -> Stmt {
        Stmt::Cmp {
            field,
            op: CmpOp::Eq,
            value,
        }
    }
    pub fn cmp_ne(field: Field, value: Value) -> Stmt {
        Stmt::Cmp {
            field,
            op: CmpOp::Ne,
            value,
        }
    }
    pub fn jump(chain: impl Into<String>) -> Stmt {
        Stmt::Verdict(Verdict::Jump(chain.into()))
    }
    pub fn goto(chain: impl Into<String>) -> Stmt {
        Stmt::Verdict(Verdict::Goto(chain.into()))
    }
    /// Chains this statement may enter (directly; vmap targets live in set elements).
    pub fn target(&self) -> Option<&str> {
        match self {
            Stmt::Verdict(v) => v.target(),
            _ => None,
        }
    }
    /// The set or map this statement reads or updates, if any (the pick map of an
    /// affinity rule: [`Stmt::sets`] gives all of them).
    pub fn set(&self) -> Option<&str> {
        match self {
            Stmt::Lookup { set, .. } | Stmt::Update { set, .. } => Some(set),
            Stmt::Vmap { map, .. } | Stmt::DnatPick { map, .. } => Some(map),
            Stmt::DnatAffinity { pick, .. } => Some(pick),
            _ => None,
        }
    }
    /// Every set or map this statement reads or updates.
    pub fn sets(&self) -> impl Iterator<Item = &str> {
        let (a, b) = match self {
            Stmt::DnatAffinity {
                endpoints, step, ..
            } => (
                Some(endpoints.as_str()),
                match step {
                    AffinityStep::Known { map, .. } | AffinityStep::Repick { map, .. } => {
                        Some(map.as_str())
                    }
                    AffinityStep::Full => None,
                },
            ),
            _ => (None, None),
        };
        self.set().into_iter().chain(a).chain(b)
    }
}

/// What an affinity rule ([`Stmt::DnatAffinity`]) does with the client's entry in the
/// shard's dynamic map `map` (key `saddr . list`, data an endpoint id).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AffinityStep {
    /// `update @map { saddr . list timeout T : pick }` (keeps a known client's endpoint and
    /// refreshes its timer, stores the pick for a new one), then DNAT to the stored id.
    Known { map: String, timeout: u32 },
    /// The stored endpoint is gone: `delete @map { saddr . list }`, then as `Known`.
    Repick { map: String, timeout: u32 },
    /// The map is full (the update failed): DNAT to the pick, without affinity.
    Full,
}

/// The type of one part of a set key or map value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DataType {
    Ipv4Addr,
    Ipv6Addr,
    InetProto,
    InetService,
    Mark,
    /// A numgen result as the key of an interval map, in network byte order (interval
    /// sets compare keys as big-endian bytes): declared `typeof numgen random mod 65536`
    /// because nft's `mark` type does not accept numgen's integer.
    Pick,
    Verdict,
}

impl DataType {
    pub fn addr(family: Family) -> DataType {
        match family {
            Family::V4 => DataType::Ipv4Addr,
            Family::V6 => DataType::Ipv6Addr,
        }
    }
    /// Bytes the kernel stores for this part (before 4-byte register padding).
    pub fn byte_len(self) -> usize {
        match self {
            DataType::Ipv4Addr => 4,
            DataType::Ipv6Addr => 16,
            DataType::InetProto => 1,
            DataType::InetService => 2,
            DataType::Mark | DataType::Pick => 4,
            DataType::Verdict => 4,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SetFlags {
    pub interval: bool,
    pub timeout: bool,
    pub dynamic: bool,
}

/// What a map's elements carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SetData {
    /// A plain set.
    None,
    /// A verdict map.
    Verdict,
    /// A data map whose values have these parts.
    Values(Vec<DataType>),
}

/// A named set or map. Elements are keyed by their key for determinism and fast diffs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Set {
    pub name: String,
    pub key: Vec<DataType>,
    pub data: SetData,
    pub flags: SetFlags,
    /// Default element timeout in seconds (dynamic sets).
    pub timeout: Option<u32>,
    pub size: Option<u32>,
    pub comment: Option<String>,
    pub elements: Elements,
}

impl Set {
    pub fn new(name: impl Into<String>, key: Vec<DataType>, data: SetData) -> Set {
        Set {
            name: name.into(),
            key,
            data,
            flags: SetFlags::default(),
            timeout: None,
            size: None,
            comment: None,
            elements: Elements::default(),
        }
    }
    pub fn with_comment(mut self, c: impl Into<String>) -> Set {
        self.comment = Some(c.into());
        self
    }
    pub fn is_map(&self) -> bool {
        !matches!(self.data, SetData::None)
    }
    pub fn insert(&mut self, element: Element) {
        self.elements.insert(element);
    }

    /// Adds many elements at once (sorted and merged in one pass).
    pub fn extend(&mut self, elements: Vec<Element>) {
        self.elements.extend(elements);
    }
}

/// A set's elements: sorted by key, keys unique. One contiguous allocation per set, binary
/// search for lookups, ordered iteration for printing and for merge-walking two versions
/// (diffs). Of equal keys inserted, the last one wins.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Elements(Vec<Element>);

impl Elements {
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// The elements, sorted by key (consuming).
    pub fn into_vec(self) -> Vec<Element> {
        self.0
    }
    pub fn iter(&self) -> std::slice::Iter<'_, Element> {
        self.0.iter()
    }
    pub fn keys(&self) -> impl Iterator<Item = &Vec<Value>> {
        self.0.iter().map(|e| &e.key)
    }
    fn position(&self, key: &[Value]) -> Result<usize, usize> {
        self.0.binary_search_by(|e| e.key.as_slice().cmp(key))
    }
    pub fn get(&self, key: &[Value]) -> Option<&Element> {
        self.position(key).ok().map(|i| &self.0[i])
    }
    pub fn contains_key(&self, key: &[Value]) -> bool {
        self.position(key).is_ok()
    }
    /// Inserts or replaces one element (O(n) shift: for small sets and single updates).
    pub fn insert(&mut self, e: Element) {
        match self.position(&e.key) {
            Ok(i) => self.0[i] = e,
            Err(i) => self.0.insert(i, e),
        }
    }
    /// Removes the element with this key, if any.
    pub fn remove(&mut self, key: &[Value]) -> Option<Element> {
        self.position(key).ok().map(|i| self.0.remove(i))
    }
    /// Adds many elements: one stable sort and a merge, O(n log n) overall.
    pub fn extend(&mut self, more: Vec<Element>) {
        let mut v = std::mem::take(&mut self.0);
        v.extend(more);
        // Stable: among equal keys the later one stays later, and the dedup keeps it.
        v.sort_by(|a, b| a.key.cmp(&b.key));
        let mut out: Vec<Element> = Vec::with_capacity(v.len());
        for e in v {
            match out.last_mut() {
                Some(last) if last.key == e.key => *last = e,
                _ => out.push(e),
            }
        }
        self.0 = out;
    }
}

impl<'a> IntoIterator for &'a Elements {
    type Item = &'a Element;
    type IntoIter = std::slice::Iter<'a, Element>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl FromIterator<Element> for Elements {
    fn from_iter<I: IntoIterator<Item = Element>>(iter: I) -> Elements {
        let mut e = Elements::default();
        e.extend(iter.into_iter().collect());
        e
    }
}

/// What an element maps to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ElementData {
    None,
    Verdict(Verdict),
    Values(Vec<Value>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Element {
    pub key: Vec<Value>,
    pub data: ElementData,
    /// Shared: many elements carry the same `namespace/service:port` comment.
    pub comment: Option<Arc<str>>,
}

impl Element {
    /// The chain this element's verdict enters, if any (verdict maps).
    pub fn target(&self) -> Option<&str> {
        match &self.data {
            ElementData::Verdict(v) => v.target(),
            _ => None,
        }
    }
    pub fn key(key: Vec<Value>) -> Element {
        Element {
            key,
            data: ElementData::None,
            comment: None,
        }
    }
    pub fn verdict(key: Vec<Value>, v: Verdict) -> Element {
        Element {
            key,
            data: ElementData::Verdict(v),
            comment: None,
        }
    }
    pub fn values(key: Vec<Value>, values: Vec<Value>) -> Element {
        Element {
            key,
            data: ElementData::Values(values),
            comment: None,
        }
    }
    pub fn with_comment(mut self, c: impl Into<Arc<str>>) -> Element {
        self.comment = Some(c.into());
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(valid_name("svc-ABCD1234-default/web/tcp/http"));
        assert!(!valid_name("1abc"));
        assert!(!valid_name("a b"));
        assert!(!valid_name(&"a".repeat(256)));
        assert!(valid_name(&"a".repeat(255)));
    }

    #[test]
    fn protocol_roundtrip() {
        for p in [Protocol::Tcp, Protocol::Udp, Protocol::Sctp] {
            assert_eq!(Protocol::from_number(p.number()), Some(p));
            assert_eq!(Protocol::parse(&p.name().to_uppercase()), Some(p));
        }
        assert_eq!(Protocol::parse("icmp"), None);
    }
}
