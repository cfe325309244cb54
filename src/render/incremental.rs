//! Incremental rendering: a change to a few services re-renders and diffs only their
//! fragments, so its cost does not grow with the number of services programmed.
//!
//! Owns: the [`Renderer`] state between syncs: a fingerprint of each service port's model
//! and a slimmed copy of it (its [`Fragment`] is rendered again from that when needed:
//! a fifth of the memory of keeping fragments), its slot ranges, and who contributes each
//! element of the table-wide sets (a key can be shared: a ClusterIP by the ports of one service, a hairpin
//! pair by every service using that endpoint). An update returns two *partial* rulesets
//! ([`Partial`]: the touched objects before and after); the caller diffs them exactly as
//! it diffs the kernel's dump against a full render, so incremental and full syncs share
//! one diff and one commit path (`crate::apply::apply`).
//!
//! Must not: do I/O or decide anything the full render would decide differently: after any
//! sequence of updates, [`Renderer::ruleset`] equals a full render of the same model with
//! the same slot ranges (tested).

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::Arc;

use crate::model::{FamilyModel, FamilySettings, Model, ServiceKey, ServicePort, ServicePortName};
use crate::nft::{Element, Family, Ruleset, Set, Table, Value};

use super::names::{
    chain_base, ENDPOINTS_PREFIX, HAIRPIN, PREFIX_AFFINITY, PREFIX_CLUSTER, PREFIX_EXTERNAL,
    PREFIX_LOCAL,
};
use super::{
    assemble, endpoint_map, existing_fragments, fragment, fragments, on_every_core, skeleton,
    table_wide_elements, Existing, Fragment, Policy, SetRef, SlotAllocator,
};

type ElementKey = (SetRef, Vec<Value>);

/// What the renderer keeps of a service port between syncs: the port itself, slimmed to
/// what [`fragment`] reads (endpoints other than hairpin candidates dropped, those kept
/// stripped of node names and hints). The fragment is rendered again from it, with the
/// slot ranges the allocator still holds, whenever it is needed (the old side of an
/// update, the owner of a shared element, a full [`Renderer::ruleset`]). Keeping the
/// rendered fragments instead cost about 3 KB per port (160 MiB at 50k × 10); this is a
/// fifth of that.
fn slim(sp: &ServicePort) -> ServicePort {
    ServicePort {
        name: sp.name.clone(),
        cluster_ip: sp.cluster_ip,
        port: sp.port,
        node_port: sp.node_port,
        external_ips: sp.external_ips.clone(),
        load_balancer_ips: sp.load_balancer_ips.clone(),
        source_ranges: sp.source_ranges.clone(),
        affinity_timeout: sp.affinity_timeout,
        external_policy_local: sp.external_policy_local,
        internal_policy_local: sp.internal_policy_local,
        health_check_node_port: sp.health_check_node_port,
        endpoints: sp
            .endpoints
            .iter()
            .filter(|e| e.local || e.node.is_none())
            .map(|e| crate::model::Endpoint {
                ip: e.ip,
                port: e.port,
                node: None,
                local: e.local,
                ready: e.ready,
                serving: e.serving,
                terminating: e.terminating,
                zone_hints: Vec::new(),
                node_hints: Vec::new(),
            })
            .collect(),
        cluster_endpoints: sp.cluster_endpoints.clone(),
        local_endpoints: sp.local_endpoints.clone(),
        has_endpoints: sp.has_endpoints,
    }
}

type PortName = Arc<ServicePortName>;

/// A port rendered in an update: its fingerprint, fragment, and what is kept of it.
type Rendered = (Fingerprint, Fragment, Box<ServicePort>);

#[derive(Clone, Debug, Default)]
struct FamilyState {
    /// The node-level part of the model the skeleton was rendered from (no services).
    settings: Option<FamilySettings>,
    skeleton: Option<Table>,
    slots: SlotAllocator,
    /// Each port's fingerprint (of the `ServicePort` it was rendered from) and what it
    /// was rendered from ([`slim`]).
    ports: BTreeMap<PortName, (Fingerprint, Box<ServicePort>)>,
    /// Who contributes each element of a table-wide set, by a 64-bit hash of (set, key),
    /// names sorted: the last one holding the exact key gives the element the table holds
    /// (its comment). Hashes instead of keys save ~30 MiB at 50k services; two keys whose
    /// hashes collide only share a list, which [`FamilyState::shared`] tells apart by
    /// rendering the candidates.
    contributors: HashMap<u64, Vec<PortName>>,
    key_hasher: RandomState,
    /// Mask applied to those hashes: all ones, except in tests that force collisions.
    key_mask: u64,
    hairpin: HashMap<IpAddr, u32>,
}

fn hairpin_ip(e: &Element) -> Option<IpAddr> {
    match e.key.first() {
        Some(Value::Addr(ip)) => Some(*ip),
        _ => None,
    }
}

impl FamilyState {
    /// The element the full table holds for `key` now (not for `@endpoints-N`).
    fn shared(&self, key: &ElementKey) -> Option<Element> {
        if key.0 == SetRef::Named(HAIRPIN) {
            let ip = match key.1.first() {
                Some(Value::Addr(ip)) => *ip,
                _ => return None,
            };
            return (self.hairpin.get(&ip).copied().unwrap_or(0) > 0)
                .then(|| Element::key(key.1.clone()));
        }
        let candidates = self.contributors.get(&self.key_hash(&key.0, &key.1))?;
        candidates.iter().rev().find_map(|name| {
            let (_, sp) = self.ports.get(name)?;
            self.render_again(sp)
                .elements
                .into_iter()
                .find(|(set, e)| *set == key.0 && e.key == key.1)
                .map(|(_, e)| e)
        })
    }

    /// The ports owning these chains (`service-`, `local-`, `external-` + the port's
    /// [`chain_base`]): read from the name where it is whole, else found by computing
    /// every port's base (a name cut to nft's length limit).
    fn ports_of_chains(&self, chains: &BTreeSet<String>) -> BTreeSet<PortName> {
        let prefixes = [PREFIX_CLUSTER, PREFIX_LOCAL, PREFIX_EXTERNAL];
        let mut out = BTreeSet::new();
        let mut unresolved: BTreeSet<&str> = BTreeSet::new();
        for chain in chains {
            let Some(base) = prefixes.iter().find_map(|p| chain.strip_prefix(p)) else {
                continue;
            };
            match self.port_of_base(base) {
                Some(name) => {
                    out.insert(name);
                }
                None => {
                    unresolved.insert(base);
                }
            }
        }
        if !unresolved.is_empty() {
            out.extend(
                self.ports
                    .keys()
                    .filter(|n| unresolved.contains(chain_base(n).as_str()))
                    .cloned(),
            );
        }
        out
    }

    /// The port whose [`chain_base`] is `base` (`HASH-namespace/name/protocol/port`),
    /// when the name is whole.
    fn port_of_base(&self, base: &str) -> Option<PortName> {
        let (_, rest) = base.split_once('-')?;
        let mut parts = rest.split('/');
        let (namespace, name, protocol, port) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let key = ServicePortName {
            namespace: namespace.into(),
            name: name.into(),
            port: port.into(),
            protocol: crate::nft::Protocol::parse(protocol)?,
        };
        let (found, _) = self.ports.get_key_value(&key)?;
        (chain_base(found) == base).then(|| found.clone())
    }

    fn key_hash(&self, set: &SetRef, key: &[Value]) -> u64 {
        self.key_hasher.hash_one((set, key)) & self.key_mask
    }

    /// The fragment of a port rendered before, from what was kept of it.
    fn render_again(&self, sp: &ServicePort) -> Fragment {
        let settings = self.settings.as_ref().expect("rendered before");
        fragment(settings, sp, &mut Existing(&self.slots))
    }

    fn add_contributions(&mut self, name: &PortName, frag: &Fragment) {
        for (set, e) in frag.elements.iter() {
            match *set {
                s if s.is_per_list() => {}
                SetRef::Named(HAIRPIN) => {
                    if let Some(ip) = hairpin_ip(e) {
                        *self.hairpin.entry(ip).or_default() += 1;
                    }
                }
                _ => {
                    let h = self.key_hash(set, &e.key);
                    let c = self.contributors.entry(h).or_default();
                    let at = c.partition_point(|n| n < name);
                    c.insert(at, name.clone());
                }
            }
        }
    }

    fn remove_contributions(&mut self, name: &PortName, frag: &Fragment) {
        for (set, e) in frag.elements.iter() {
            match *set {
                s if s.is_per_list() => {}
                SetRef::Named(HAIRPIN) => {
                    if let Some(ip) = hairpin_ip(e) {
                        if let Some(n) = self.hairpin.get_mut(&ip) {
                            *n -= 1;
                            if *n == 0 {
                                self.hairpin.remove(&ip);
                            }
                        }
                    }
                }
                _ => {
                    // One occurrence: with a collision the same port may be listed twice.
                    let h = self.key_hash(set, &e.key);
                    if let Some(c) = self.contributors.get_mut(&h) {
                        if let Some(at) = c.iter().position(|n| n == name) {
                            c.remove(at);
                        }
                        if c.is_empty() {
                            self.contributors.remove(&h);
                        }
                    }
                }
            }
        }
    }
}

/// Which `ServicePort` a fragment was rendered from: two independent, randomly keyed
/// SipHash values (128 bits), so keeping a whole copy of every port just to notice changes
/// is not needed; an unnoticed change would take a 128-bit collision.
type Fingerprint = (u64, u64);

#[derive(Clone, Debug, Default)]
struct Fingerprinter(RandomState, RandomState);

impl Fingerprinter {
    fn of(&self, sp: &ServicePort) -> Fingerprint {
        (self.0.hash_one(sp), self.1.hash_one(sp))
    }
}

/// What an update changed: the objects it touched (chains, sets, elements) as the full
/// ruleset held them before ([`Partial::before`]) and holds them after
/// ([`Partial::after`]). Diffing the two gives the transaction that makes a kernel
/// holding the previous full ruleset hold the next one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Partial {
    pub before: Ruleset,
    pub after: Ruleset,
}

/// Keeps what was rendered so that later changes cost only what they touch.
#[derive(Clone, Debug, Default)]
pub struct Renderer {
    families: BTreeMap<Family, FamilyState>,
    fingerprint: Fingerprinter,
    /// Bits of the contributor hashes kept (64 unless a test narrows them).
    key_bits: Option<u32>,
}

impl Renderer {
    pub fn new() -> Renderer {
        Renderer::default()
    }

    /// Whether nothing has been rendered yet (a fresh renderer, as at start).
    pub fn is_fresh(&self) -> bool {
        self.families.is_empty()
    }

    /// Takes over what `kernel` (kproxy's tables as a previous process left them, read
    /// back) says about the endpoint lists: each plain list's block of the endpoint maps,
    /// and each session-affinity list's block, list constant and endpoint ids
    /// (`render::affinity`). The next full render gives every list still there what it
    /// has in the kernel, so a restart rewrites nothing that did not change and keeps
    /// every client's endpoint. Only for families not rendered yet; call it before that
    /// render.
    pub fn adopt(&mut self, kernel: &Ruleset) {
        for t in &kernel.tables {
            if self
                .families
                .get(&t.family)
                .is_some_and(|st| !st.ports.is_empty())
            {
                continue;
            }
            self.families
                .entry(t.family)
                .or_default()
                .slots
                .adopt_table(t);
        }
    }

    /// A renderer whose shared-element bookkeeping keeps only `bits` bits of each key's
    /// hash, so that distinct keys collide constantly (tests of the collision handling).
    #[cfg(feature = "test-util")]
    pub fn with_colliding_key_hashes(bits: u32) -> Renderer {
        Renderer {
            key_bits: Some(bits),
            ..Renderer::default()
        }
    }

    /// Renders the whole model, keeping slot ranges of service ports rendered before, and
    /// returns the full ruleset.
    pub fn full(&mut self, model: &Model) -> Ruleset {
        self.full_chunked(std::iter::once(model))
    }

    /// [`Renderer::full`] of a model that arrives in chunks: the same node-level part in
    /// each, the services split in order (as `model::build` gives them for consecutive
    /// runs of service keys). A chunk can be dropped once rendered, so a full sync never
    /// holds the whole model (~110 MiB at 50k × 10) next to the ruleset.
    pub fn full_chunked<M: Borrow<Model>>(
        &mut self,
        chunks: impl IntoIterator<Item = M>,
    ) -> Ruleset {
        let key_mask = match self.key_bits {
            Some(b) if b < 64 => (1u64 << b) - 1,
            _ => u64::MAX,
        };
        // Per family, in the order of the first chunk: the fragments rendered so far.
        let mut frags: Vec<(Family, Vec<Fragment>)> = Vec::new();
        let mut first = true;
        for chunk in chunks {
            let model = chunk.borrow();
            if std::mem::take(&mut first) {
                self.families.retain(|f, _| model.family(*f).is_some());
            }
            for fm in &model.families {
                let st = self.families.entry(fm.settings.family).or_default();
                let at = match frags.iter().position(|(f, _)| *f == fm.settings.family) {
                    Some(at) => at,
                    None => {
                        st.key_mask = key_mask;
                        st.ports.clear();
                        st.contributors.clear();
                        st.hairpin.clear();
                        st.settings = Some(fm.settings.clone());
                        st.skeleton = Some(skeleton(&fm.settings));
                        frags.push((fm.settings.family, Vec::with_capacity(fm.services.len())));
                        frags.len() - 1
                    }
                };
                let out = &mut frags[at].1;
                let rendered = fragments(&fm.settings, &fm.services, &mut st.slots);
                for (sp, frag) in fm.services.iter().zip(rendered) {
                    let name = Arc::new(sp.name.clone());
                    st.add_contributions(&name, &frag);
                    st.ports
                        .insert(name, (self.fingerprint.of(sp), Box::new(slim(sp))));
                    out.push(frag);
                }
            }
        }
        if first {
            self.families.clear();
        }
        let mut tables = Vec::new();
        for (family, frags) in frags {
            let st = self.families.get_mut(&family).expect("rendered above");
            st.slots.sweep();
            let skel = st.skeleton.clone().expect("just set");
            tables.push(assemble(skel, &st.slots, frags));
        }
        Ruleset { tables }
    }

    /// Brings the state to `model`, looking only at the service ports of `changed`
    /// services, and returns what changed as two partial rulesets: the touched objects
    /// before and after. `None` when node-level settings changed (node IPs, detector,
    /// ServiceCIDRs…) or a family appeared: then the caller renders in full and diffs
    /// against the kernel.
    pub fn update(&mut self, model: &Model, changed: &BTreeSet<ServiceKey>) -> Option<Partial> {
        if self.families.len() != model.families.len() {
            return None;
        }
        for fm in &model.families {
            let st = self.families.get(&fm.settings.family)?;
            if st.settings.as_ref() != Some(&fm.settings) {
                return None;
            }
        }
        let mut partial = Partial::default();
        for fm in &model.families {
            let st = self
                .families
                .get_mut(&fm.settings.family)
                .expect("checked above");
            let (before, after) = update_family(st, &self.fingerprint, fm, changed);
            partial.before.tables.push(before);
            partial.after.tables.push(after);
        }
        Some(partial)
    }

    /// The full ruleset of the current state (what a full render of the same model, with
    /// the same slot ranges, gives).
    pub fn ruleset(&self) -> Ruleset {
        let tables = self
            .families
            .values()
            .filter_map(|st| {
                let skel = st.skeleton.clone()?;
                Some(assemble(
                    skel,
                    &st.slots,
                    st.ports.values().map(|(_, sp)| st.render_again(sp)),
                ))
            })
            .collect();
        Ruleset { tables }
    }

    /// The chains and sets named, as [`Renderer::ruleset`] holds them (those it does not
    /// hold are absent), in a table of `family` with the table's own attributes: what a
    /// drift repair compares the kernel's read-back of the same objects with. Renders only
    /// what the named objects need: a port's chain its one fragment (found by name), an
    /// endpoint map the fragments of its shard's lists, an affinity map those of the
    /// affinity ports, a table-wide set (`service-ips`, …) every port's table-wide elements
    /// alone ([`table_wide_elements`]), a skeleton chain nothing. `None` when `family` is
    /// not rendered.
    pub fn objects(
        &self,
        family: Family,
        chains: &BTreeSet<String>,
        sets: &BTreeSet<String>,
    ) -> Option<Table> {
        let st = self.families.get(&family)?;
        let skel = st.skeleton.as_ref()?;
        let settings = st.settings.as_ref()?;
        let shards: BTreeSet<u32> = sets
            .iter()
            .filter_map(|s| s.strip_prefix(ENDPOINTS_PREFIX)?.parse().ok())
            .collect();
        let affinity = sets.iter().any(|s| s.starts_with(PREFIX_AFFINITY));
        let by_chain = st.ports_of_chains(chains);
        let whole: Vec<&ServicePort> = st
            .ports
            .iter()
            .filter(|(name, (_, sp))| {
                by_chain.contains(*name)
                    || (affinity && sp.affinity_timeout.is_some())
                    || (!shards.is_empty()
                        && [Policy::Cluster, Policy::Local].into_iter().any(|p| {
                            st.slots
                                .block_of(&((*name).clone(), p))
                                .is_some_and(|r| shards.contains(&r.shard))
                        }))
            })
            .map(|(_, (_, sp))| sp.as_ref())
            .collect();
        let frags = existing_fragments(settings, &whole, &st.slots);
        let mut t = assemble(skel.clone(), &st.slots, frags);
        let table_wide: Vec<&String> = sets.iter().filter(|s| skel.sets.contains_key(*s)).collect();
        if !table_wide.is_empty() {
            let ports: Vec<&ServicePort> = st.ports.values().map(|(_, sp)| sp.as_ref()).collect();
            let mut pending: HashMap<&str, Vec<Element>> = HashMap::new();
            for elements in on_every_core(&ports, |sp| table_wide_elements(settings, sp)) {
                for (set, e) in elements {
                    if let SetRef::Named(n) = set {
                        if sets.contains(n) {
                            pending.entry(n).or_default().push(e);
                        }
                    }
                }
            }
            for name in table_wide {
                let mut s = skel.sets[name].clone();
                s.extend(pending.remove(name.as_str()).unwrap_or_default());
                t.add_set(s);
            }
        }
        t.chains.retain(|n, _| chains.contains(n));
        t.sets.retain(|n, _| sets.contains(n));
        Some(t)
    }

    /// Number of service ports held (all families).    /// Number of service ports held (all families).
    pub fn len(&self) -> usize {
        self.families.values().map(|f| f.ports.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The service ports of `fm` that belong to one of `changed`, by name.
fn ports_of<'m>(
    fm: &'m FamilyModel,
    changed: &BTreeSet<ServiceKey>,
) -> BTreeMap<ServicePortName, &'m ServicePort> {
    let mut out = BTreeMap::new();
    for key in changed {
        // Services are sorted by (namespace, name, port, protocol): one contiguous run.
        let start = fm.services.partition_point(|sp| {
            (&sp.name.namespace, &sp.name.name) < (&key.namespace, &key.name)
        });
        for sp in &fm.services[start..] {
            if !key.owns(&sp.name) {
                break;
            }
            out.insert(sp.name.clone(), sp);
        }
    }
    out
}

/// Updates one family; returns the partial tables (touched objects before, after).
///
/// In phases: which ports change; their old fragments, rendered again while the slot
/// ranges are still theirs; their new fragments; the element keys either side touches,
/// with what the full table holds for each before; the swap of fragments (chains and sets
/// into the partial tables); the touched elements and endpoint maps of both sides.
fn update_family(
    st: &mut FamilyState,
    fingerprint: &Fingerprinter,
    fm: &FamilyModel,
    changed: &BTreeSet<ServiceKey>,
) -> (Table, Table) {
    let (mut prev, mut next) = partial_tables(st.skeleton.as_ref().expect("rendered before"));
    let shards_before = (st.slots.shards_in_use(), st.slots.affinity_shards_in_use());
    let new_ports = ports_of(fm, changed);
    let names = changed_ports(st, fingerprint, &new_ports, changed);
    let old_frags: BTreeMap<PortName, Fragment> = names
        .iter()
        .filter_map(|n| {
            st.ports
                .get(n)
                .map(|(_, sp)| (n.clone(), st.render_again(sp)))
        })
        .collect();
    let new_frags = render_new(st, fingerprint, fm, &names, &new_ports);
    let touched = Touched::of(st, &old_frags, &new_frags);
    swap_fragments(st, new_frags, old_frags, &mut prev, &mut next);
    touched.fill(
        st,
        (&shards_before.0, &shards_before.1),
        &mut prev,
        &mut next,
    );
    (prev, next)
}

/// Two empty partial tables shaped as `skel`: both declare every skeleton set (without
/// elements), so the diff sees no set changes, only the touched elements.
fn partial_tables(skel: &Table) -> (Table, Table) {
    let mut prev = Table::new(skel.family, skel.name.clone());
    prev.comment = skel.comment.clone();
    for s in skel.sets.values() {
        let mut decl = s.clone();
        decl.elements = Default::default();
        prev.add_set(decl);
    }
    let next = prev.clone();
    (prev, next)
}

/// Which ports change: the old ports of the changed services and their new ports, less
/// those whose fingerprint is the same.
fn changed_ports(
    st: &FamilyState,
    fingerprint: &Fingerprinter,
    new_ports: &BTreeMap<ServicePortName, &ServicePort>,
    changed: &BTreeSet<ServiceKey>,
) -> BTreeSet<PortName> {
    let mut old_names: BTreeSet<PortName> = BTreeSet::new();
    for key in changed {
        for (n, _) in st.ports.range::<ServicePortName, _>(key.first_port()..) {
            if !key.owns(n) {
                break;
            }
            old_names.insert(n.clone());
        }
    }
    old_names
        .into_iter()
        .chain(new_ports.keys().map(|n| Arc::new(n.clone())))
        .filter(|n| match (st.ports.get(n), new_ports.get(n.as_ref())) {
            (Some((old, _)), Some(new)) => *old != fingerprint.of(new),
            _ => true,
        })
        .collect()
}

/// Renders the new fragments of `names` (old ones stay in place for now), releasing the
/// slot ranges of policies a port no longer uses, and all of a port that is gone.
fn render_new(
    st: &mut FamilyState,
    fingerprint: &Fingerprinter,
    fm: &FamilyModel,
    names: &BTreeSet<PortName>,
    new_ports: &BTreeMap<ServicePortName, &ServicePort>,
) -> Vec<(PortName, Option<Rendered>)> {
    let mut new_frags = Vec::new();
    for n in names {
        let new = new_ports.get(n.as_ref()).map(|sp| {
            let frag = fragment(&fm.settings, sp, &mut st.slots);
            for policy in [Policy::Cluster, Policy::Local] {
                if !frag.slot_lists.contains(&policy) {
                    st.slots.release_owner(&(n.clone(), policy));
                }
            }
            (fingerprint.of(sp), frag, Box::new(slim(sp)))
        });
        if new.is_none() {
            for policy in [Policy::Cluster, Policy::Local] {
                st.slots.release_owner(&(n.clone(), policy));
            }
        }
        new_frags.push((n.clone(), new));
    }
    new_frags
}

/// Swaps the fragments in the state and its contributor lists; the chains and sets of
/// the old fragments go into `prev`, those of the new ones into `next`.
fn swap_fragments(
    st: &mut FamilyState,
    new_frags: Vec<(PortName, Option<Rendered>)>,
    mut old_frags: BTreeMap<PortName, Fragment>,
    prev: &mut Table,
    next: &mut Table,
) {
    for (n, new) in new_frags {
        if st.ports.remove(&n).is_some() {
            let old = old_frags.remove(&n).expect("rendered before the swap");
            st.remove_contributions(&n, &old);
            for c in old.chains {
                prev.add_chain(c);
            }
            for s in old.sets {
                prev.add_set(s);
            }
        }
        if let Some((fp, frag, kept)) = new {
            st.add_contributions(&n, &frag);
            for c in frag.chains {
                next.add_chain(c);
            }
            for s in frag.sets {
                next.add_set(s);
            }
            st.ports.insert(n, (fp, kept));
        }
    }
}

/// Every element key an update touches, with the element the full table holds for it
/// before. Slots come only from the changed ports' own fragments.
struct Touched {
    before: Vec<(ElementKey, Option<Element>)>,
    slots_before: HashMap<ElementKey, Element>,
    slots_after: HashMap<ElementKey, Element>,
}

impl Touched {
    /// Read before the swap, while the state still holds the old fragments.
    fn of(
        st: &FamilyState,
        old_frags: &BTreeMap<PortName, Fragment>,
        new_frags: &[(PortName, Option<Rendered>)],
    ) -> Touched {
        let mut touched: BTreeSet<ElementKey> = BTreeSet::new();
        let mut slots_before: HashMap<ElementKey, Element> = HashMap::new();
        let mut slots_after: HashMap<ElementKey, Element> = HashMap::new();
        for (n, new) in new_frags {
            let old = old_frags.get(n);
            for (f, slots) in [
                (old, &mut slots_before),
                (new.as_ref().map(|(_, f, _)| f), &mut slots_after),
            ] {
                for (set, e) in f.into_iter().flat_map(|f| &f.elements) {
                    if set.is_per_list() {
                        slots.insert((*set, e.key.clone()), e.clone());
                    } else {
                        touched.insert((*set, e.key.clone()));
                    }
                }
            }
        }
        let before = touched
            .into_iter()
            .map(|k| {
                let e = st.shared(&k);
                (k, e)
            })
            .collect();
        Touched {
            before,
            slots_before,
            slots_after,
        }
    }

    /// After the swap: the touched elements before and after, and the endpoint maps that
    /// matter: those with touched slots, and those that came into or went out of use.
    /// (Declaring all ~N/64 shards in both tables would cost the diff O(services) per
    /// update.)
    fn fill(
        self,
        st: &FamilyState,
        shards_before: (&[u32], &[u32]),
        prev: &mut Table,
        next: &mut Table,
    ) {
        let touched = |affinity: bool| -> BTreeSet<u32> {
            self.slots_before
                .keys()
                .chain(self.slots_after.keys())
                .filter_map(|(set, _)| match set {
                    SetRef::Endpoints(s) if !affinity => Some(*s),
                    SetRef::AffinityPick(s) | SetRef::AffinityEndpoints(s) if affinity => Some(*s),
                    _ => None,
                })
                .collect()
        };
        let maps = |family, shard, affinity: bool| -> Vec<Set> {
            if affinity {
                super::affinity::maps(family, shard).into()
            } else {
                vec![endpoint_map(family, shard)]
            }
        };
        for (affinity, before, after) in [
            (false, shards_before.0, st.slots.shards_in_use()),
            (true, shards_before.1, st.slots.affinity_shards_in_use()),
        ] {
            let touched_shards = touched(affinity);
            let wanted = |s: &u32, other_side: &[u32]| {
                touched_shards.contains(s) || other_side.binary_search(s).is_err()
            };
            for shard in before.iter().filter(|s| wanted(s, &after)) {
                for m in maps(prev.family, *shard, affinity) {
                    prev.add_set(m);
                }
            }
            for shard in after.iter().filter(|s| wanted(s, before)) {
                for m in maps(next.family, *shard, affinity) {
                    next.add_set(m);
                }
            }
        }
        for ((set, key), old) in self.before {
            let name = set.name();
            if let Some(e) = old {
                prev.sets
                    .get_mut(name.as_ref())
                    .expect("declared set")
                    .insert(e);
            }
            if let Some(e) = st.shared(&(set, key)) {
                next.sets
                    .get_mut(name.as_ref())
                    .expect("declared set")
                    .insert(e);
            }
        }
        for (t, slots) in [(prev, self.slots_before), (next, self.slots_after)] {
            let mut by_shard: BTreeMap<SetRef, Vec<Element>> = BTreeMap::new();
            for ((set, _), e) in slots {
                by_shard.entry(set).or_default().push(e);
            }
            for (set, elements) in by_shard {
                t.sets
                    .get_mut(set.name().as_ref())
                    .expect("shard map of a slot in use")
                    .extend(elements);
            }
        }
    }
}
