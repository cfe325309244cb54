//! `render`: Model → nft::Ruleset (pure). One table per family, `ip kproxy` and
//! `ip6 kproxy`, implementing upstream kube-proxy's nftables behaviour with a layout
//! chosen for kernel cost (docs/ruleset.md explains both).
//!
//! Owns: chain, set and map names ([`names`]); which rules each service port gets; the
//! block of the sharded endpoint maps each endpoint list owns (through [`SlotAllocator`],
//! kept in a [`Renderer`] so that a later render moves nothing it need not).
//!
//! Must not: decide which endpoints a service uses (that is `model`), do I/O, or create a
//! set or map per service (kernel cost grows with the number of sets; see
//! notes/nftables-netlink.md). Session affinity too lives in sharded maps ([`affinity`]).

pub mod affinity;
pub mod incremental;
pub mod names;
pub mod slots;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use ipnetwork::IpNetwork;

use crate::model::{EndpointAddr, FamilySettings, LocalDetect, Model, NodePortIps, ServicePort};
use crate::nft::*;
pub use incremental::Renderer;
pub use names::chain_base;
use names::*;
pub use slots::{Existing, Policy, Ranges, SlotAllocator};

/// Name of kproxy's table in each family.
pub const TABLE: &str = "kproxy";

/// The tables kproxy owns: [`TABLE`] in each family (what `kproxy cleanup` removes).
pub fn own_tables() -> Vec<tx::TableRef> {
    [Family::V4, Family::V6]
        .into_iter()
        .map(|f| tx::TableRef::new(f, TABLE))
        .collect()
}

/// Priorities of the base chains, upstream's: the firewall check sees the address the
/// client used (dstnat - 10, before DNAT); the endpoint and ClusterIP checks run at the
/// filter priority, after DNAT in output (docs/ruleset.md, "Hooks and priorities").
const PRIO_FILTER_PRE_DNAT: i32 = priority::DSTNAT - 10;
const PRIO_FILTER: i32 = priority::FILTER;

/// Renders a model from scratch (fresh slot numbering). Deterministic: the same model
/// always gives the same ruleset.
pub fn render(model: &Model) -> Ruleset {
    render_chunked(std::iter::once(model))
}

/// [`render`] of a model that arrives in chunks (the same node-level part in each, the
/// services split in key order, as `model::build` gives them for consecutive runs of
/// service keys): each chunk can be dropped once its fragments exist, so rendering a
/// large cluster never holds the whole model beside the ruleset. Families come in the
/// order the first chunk that has them gives.
pub fn render_chunked<M: std::borrow::Borrow<Model>>(
    chunks: impl IntoIterator<Item = M>,
) -> Ruleset {
    render_chunked_over(None, chunks)
}

/// Whether [`incremental::Renderer::adopt`] (and [`render_chunked_over`]) read the
/// elements of the set `name` when adopting what the kernel holds: only the affinity
/// lists' live endpoints (`affinity-endpoints-K`); every other adoption fact is in the
/// rules. Callers reading the kernel for adoption can skip every other set's elements.
pub fn adoption_reads_elements(name: &str) -> bool {
    name.starts_with(affinity::AFFINITY_ENDPOINTS_PREFIX)
}

/// [`render_chunked`] for a kernel that already holds kproxy's tables (`kernel`, read
/// back): every endpoint list it holds keeps its block (and an affinity list its
/// constant and ids), so `kproxy apply` of a change moves nothing else, whatever the
/// order of the lists. New lists take free blocks.
pub fn render_chunked_over<M: std::borrow::Borrow<Model>>(
    kernel: Option<&Ruleset>,
    chunks: impl IntoIterator<Item = M>,
) -> Ruleset {
    let mut families: Vec<(FamilySettings, SlotAllocator, Vec<Fragment>)> = Vec::new();
    for chunk in chunks {
        for fm in &chunk.borrow().families {
            let at = match families
                .iter()
                .position(|(s, _, _)| s.family == fm.settings.family)
            {
                Some(at) => at,
                None => {
                    let mut slots = SlotAllocator::new();
                    if let Some(t) = kernel.and_then(|k| k.table(fm.settings.family)) {
                        slots.adopt_table(t);
                    }
                    families.push((fm.settings.clone(), slots, Vec::new()));
                    families.len() - 1
                }
            };
            let (settings, slots, frags) = &mut families[at];
            frags.extend(fragments(settings, &fm.services, slots));
        }
    }
    let tables = families
        .into_iter()
        .map(|(settings, mut slots, frags)| {
            slots.sweep();
            assemble(skeleton(&settings), &slots, frags)
        })
        .collect();
    Ruleset { tables }
}

/// A prefix as the kernel holds it: a full-length prefix (`/32`, `/128`) is an address, so
/// it is written as one (read back, it could not be told apart, and every apply would see
/// a difference).
fn net(n: IpNetwork) -> Value {
    let full = match n {
        IpNetwork::V4(_) => 32,
        IpNetwork::V6(_) => 128,
    };
    if n.prefix() == full {
        Value::Addr(n.ip())
    } else {
        Value::Net(n)
    }
}

fn addr_type(f: Family) -> DataType {
    DataType::addr(f)
}

/// The fixed sets and maps of a table, empty.
fn skeleton_sets(fm: &FamilySettings) -> Vec<Set> {
    let a = addr_type(fm.family);
    use DataType::{InetProto as P, InetService as S};
    let mut sets = vec![
        Set::new(CLUSTER_IPS, vec![a], SetData::None).with_comment("Active ClusterIPs"),
        {
            let mut s = Set::new(SERVICE_CIDRS, vec![a], SetData::None)
                .with_comment("Service CIDRs: unallocated addresses inside are dropped");
            s.flags.interval = true;
            s
        },
        Set::new(SERVICE_IPS, vec![a, P, S], SetData::Verdict)
            .with_comment("ClusterIP, ExternalIP and LoadBalancer IP traffic"),
        Set::new(SERVICE_NODEPORTS, vec![P, S], SetData::Verdict).with_comment("NodePort traffic"),
        Set::new(CLUSTERIP_MASQUERADE, vec![a, P, S], SetData::None).with_comment(
            "ClusterIP ports whose traffic from outside the pod network is masqueraded",
        ),
        Set::new(EXTERNAL_MASQUERADE, vec![a, P, S], SetData::None).with_comment(
            "externalIP and LoadBalancer IP ports with externalTrafficPolicy Cluster: masqueraded",
        ),
        Set::new(NODEPORT_MASQUERADE, vec![P, S], SetData::None)
            .with_comment("NodePorts with externalTrafficPolicy Cluster: masqueraded"),
        Set::new(NO_ENDPOINT_SERVICES, vec![a, P, S], SetData::Verdict)
            .with_comment("vmap to drop or reject packets to services with no endpoints"),
        Set::new(NO_ENDPOINT_NODEPORTS, vec![P, S], SetData::Verdict)
            .with_comment("vmap to drop or reject packets to service nodeports with no endpoints"),
        Set::new(FIREWALL_IPS, vec![a, P, S], SetData::None)
            .with_comment("destinations that are subject to LoadBalancerSourceRanges"),
        {
            let mut s = Set::new(FIREWALL_ALLOW, vec![a, P, S, a], SetData::None)
                .with_comment("allowed sources per LoadBalancer IP and port");
            s.flags.interval = true;
            s
        },
        Set::new(HAIRPIN, vec![a, a], SetData::None)
            .with_comment("endpoint . endpoint: a pod reaching itself through a service"),
    ];
    if let NodePortIps::Ips(_) = fm.nodeport_ips {
        sets.push(
            Set::new(NODEPORT_IPS, vec![a], SetData::None)
                .with_comment("IPs that accept NodePort traffic"),
        );
    }
    if let LocalDetect::SourceCidrs(c) = &fm.local_detect {
        if c.len() > 1 {
            let mut s = Set::new(POD_CIDRS, vec![a], SetData::None)
                .with_comment("sources that are pods (local traffic detector)");
            s.flags.interval = true;
            sets.push(s);
        }
    }
    sets
}

/// The endpoint map of one shard: ranges of numgen picks → endpoint address and port.
pub fn endpoint_map(family: Family, shard: u32) -> Set {
    let mut s = Set::new(
        format!("{ENDPOINTS_PREFIX}{shard}"),
        vec![DataType::Pick],
        SetData::Values(vec![addr_type(family), DataType::InetService]),
    )
    .with_comment(format!(
        "endpoints, shard {shard}: each service port's list owns a block of 65536 picks"
    ));
    s.flags.interval = true;
    s
}

/// Which table-wide set or map an element of a fragment goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SetRef {
    /// A skeleton set or map.
    Named(&'static str),
    /// The endpoint map of a shard.
    Endpoints(u32),
    /// The dynamic affinity map of an affinity shard (no elements from rendering).
    Affinity(u32),
    /// The pick map of an affinity shard.
    AffinityPick(u32),
    /// The live endpoint map of an affinity shard.
    AffinityEndpoints(u32),
}

impl SetRef {
    pub fn name(&self) -> std::borrow::Cow<'static, str> {
        use affinity::{AFFINITY_ENDPOINTS_PREFIX, AFFINITY_PICK_PREFIX};
        match self {
            SetRef::Named(n) => std::borrow::Cow::Borrowed(n),
            SetRef::Endpoints(s) => std::borrow::Cow::Owned(format!("{ENDPOINTS_PREFIX}{s}")),
            SetRef::Affinity(s) => std::borrow::Cow::Owned(format!("{PREFIX_AFFINITY}{s}")),
            SetRef::AffinityPick(s) => {
                std::borrow::Cow::Owned(format!("{AFFINITY_PICK_PREFIX}{s}"))
            }
            SetRef::AffinityEndpoints(s) => {
                std::borrow::Cow::Owned(format!("{AFFINITY_ENDPOINTS_PREFIX}{s}"))
            }
        }
    }

    /// Whether this map's elements each belong to one endpoint list (their keys lie in
    /// the list's block or carry its constant), as opposed to the table-wide sets whose
    /// keys several service ports may share.
    pub fn is_per_list(&self) -> bool {
        !matches!(self, SetRef::Named(_))
    }
}

/// Statements matching "the source is a pod" (`negate`: "is not a pod"), or `None`
/// without a detector.
fn local_match(fm: &FamilySettings, negate: bool) -> Option<Vec<Stmt>> {
    let op = if negate { CmpOp::Ne } else { CmpOp::Eq };
    match &fm.local_detect {
        LocalDetect::None => None,
        LocalDetect::SourceCidrs(c) if c.is_empty() => None,
        LocalDetect::SourceCidrs(c) if c.len() == 1 => Some(vec![Stmt::Cmp {
            field: Field::Saddr,
            op,
            value: net(c[0]),
        }]),
        LocalDetect::SourceCidrs(_) => Some(vec![Stmt::Lookup {
            key: vec![Field::Saddr],
            set: POD_CIDRS.into(),
            negate,
        }]),
        LocalDetect::Interface(i) => Some(vec![Stmt::Cmp {
            field: Field::Iifname,
            op,
            value: Value::Iface(i.as_str().into()),
        }]),
        LocalDetect::InterfacePrefix(p) => Some(vec![Stmt::Cmp {
            field: Field::Iifname,
            op,
            value: Value::Iface(format!("{p}*").into()),
        }]),
    }
}

/// The extra condition under which ClusterIP traffic is masqueraded: none with
/// masqueradeAll (everything is), "not from a pod" with a detector, and `None` (never)
/// without a detector.
fn clusterip_masquerade_condition(fm: &FamilySettings) -> Option<Vec<Stmt>> {
    if fm.masquerade_all {
        Some(Vec::new())
    } else {
        local_match(fm, true)
    }
}

/// Statements matching "the destination accepts NodePorts".
fn nodeport_dst(fm: &FamilySettings) -> Vec<Stmt> {
    match fm.nodeport_ips {
        NodePortIps::All => {
            let lo: IpNetwork = match fm.family {
                Family::V4 => "127.0.0.0/8".parse().expect("literal"),
                Family::V6 => "::1/128".parse().expect("literal"),
            };
            vec![
                Stmt::cmp(Field::FibDaddrType, Value::FibType(FibType::Local)),
                Stmt::cmp_ne(Field::Daddr, net(lo)),
            ]
        }
        NodePortIps::Ips(_) => vec![Stmt::Lookup {
            key: vec![Field::Daddr],
            set: NODEPORT_IPS.into(),
            negate: false,
        }],
    }
}

fn ct_new() -> Stmt {
    Stmt::cmp(Field::CtState, Value::CtState(CtState::New))
}

fn dst_key() -> Vec<Field> {
    vec![Field::Daddr, Field::L4Proto, Field::ThDport]
}

fn proto_port_key() -> Vec<Field> {
    vec![Field::L4Proto, Field::ThDport]
}

/// The fixed chains of a table.
fn skeleton_chains(fm: &FamilySettings) -> Vec<Chain> {
    let mut chains = hook_chains();
    chains.push(services_chain(fm));
    chains.extend(check_chains(fm));
    chains.extend(masquerade_chains(fm.masquerade_mark));
    chains
}

fn jump_new(c: &str) -> Rule {
    Rule::new(vec![ct_new(), Stmt::jump(c)])
}

fn in_set(key: Vec<Field>, set: &str) -> Stmt {
    Stmt::Lookup {
        key,
        set: set.into(),
        negate: false,
    }
}

/// The base chains, hooked into netfilter: each only jumps to the regular chains below.
/// Names, hooks, priorities and jumps are upstream's.
fn hook_chains() -> Vec<Chain> {
    use ChainType::{Filter, Nat};
    let pre_dnat = |name, hook| {
        let mut c = Chain::base(name, Filter, hook, PRIO_FILTER_PRE_DNAT);
        c.push(jump_new(FIREWALL_CHECK));
        c
    };
    let fpre = pre_dnat(FILTER_PREROUTING_PRE_DNAT, Hook::Prerouting);
    let fout_pre = pre_dnat(FILTER_OUTPUT_PRE_DNAT, Hook::Output);
    // The NodePort check runs in input only: traffic from the node itself to a NodePort is
    // DNATed (and short-circuited under eTP Local) in nat-output first, as upstream.
    let mut finput = Chain::base(FILTER_INPUT, Filter, Hook::Input, PRIO_FILTER);
    finput.push(jump_new(NODEPORT_ENDPOINTS_CHECK));
    finput.push(jump_new(ENDPOINTS_CHECK));
    // Forward and output: after DNAT, so a connection already DNATed to an endpoint no
    // longer matches the VIP-keyed no-endpoint and ClusterIP checks.
    let mut ffwd = Chain::base(FILTER_FORWARD, Filter, Hook::Forward, PRIO_FILTER);
    ffwd.push(jump_new(ENDPOINTS_CHECK));
    ffwd.push(jump_new(CLUSTER_IPS_CHECK));
    let mut fout = Chain::base(FILTER_OUTPUT, Filter, Hook::Output, PRIO_FILTER);
    fout.push(jump_new(ENDPOINTS_CHECK));
    fout.push(jump_new(CLUSTER_IPS_CHECK));

    let mut npre = Chain::base(NAT_PREROUTING, Nat, Hook::Prerouting, priority::DSTNAT);
    npre.push(Rule::new(vec![Stmt::jump(SERVICES)]));
    let mut nout = Chain::base(NAT_OUTPUT, Nat, Hook::Output, priority::DSTNAT);
    nout.push(Rule::new(vec![Stmt::jump(SERVICES)]));
    let mut npost = Chain::base(NAT_POSTROUTING, Nat, Hook::Postrouting, priority::SRCNAT);
    npost.push(Rule::new(vec![Stmt::jump(MASQUERADING)]));

    vec![fpre, fout_pre, finput, ffwd, fout, npre, nout, npost]
}

/// `services`: masquerade marks, then dispatch through the service maps.
fn services_chain(fm: &FamilySettings) -> Chain {
    // Masquerade marks first (table-wide sets instead of a rule per service: the mark is
    // only read in postrouting), then dispatch.
    let mut services = Chain::regular(SERVICES);
    if let Some(cond) = clusterip_masquerade_condition(fm) {
        let mut stmts = vec![in_set(dst_key(), CLUSTERIP_MASQUERADE)];
        stmts.extend(cond);
        stmts.push(Stmt::jump(MARK_FOR_MASQUERADE));
        services
            .push(Rule::new(stmts).with_comment("ClusterIP traffic from outside the pod network"));
    }
    services.push(
        Rule::new(vec![
            in_set(dst_key(), EXTERNAL_MASQUERADE),
            Stmt::jump(MARK_FOR_MASQUERADE),
        ])
        .with_comment("external traffic to externalTrafficPolicy Cluster services"),
    );
    services.push(Rule::new(vec![Stmt::Vmap {
        key: dst_key(),
        map: SERVICE_IPS.into(),
    }]));
    let mut np = nodeport_dst(fm);
    np.push(in_set(proto_port_key(), NODEPORT_MASQUERADE));
    np.push(Stmt::jump(MARK_FOR_MASQUERADE));
    services.push(
        Rule::new(np).with_comment("NodePort traffic to externalTrafficPolicy Cluster services"),
    );
    let mut np = nodeport_dst(fm);
    np.push(Stmt::Vmap {
        key: proto_port_key(),
        map: SERVICE_NODEPORTS.into(),
    });
    services.push(Rule::new(np));
    services
}

/// The filter chains' checks (no endpoints, NodePorts without endpoints, source ranges,
/// ClusterIPs) and the reject helper.
fn check_chains(fm: &FamilySettings) -> [Chain; 5] {
    let mut check = Chain::regular(ENDPOINTS_CHECK);
    check.push(Rule::new(vec![Stmt::Vmap {
        key: dst_key(),
        map: NO_ENDPOINT_SERVICES.into(),
    }]));
    let mut np = nodeport_dst(fm);
    np.push(Stmt::Vmap {
        key: proto_port_key(),
        map: NO_ENDPOINT_NODEPORTS.into(),
    });
    let mut np_check = Chain::regular(NODEPORT_ENDPOINTS_CHECK);
    np_check.push(Rule::new(np));

    let mut fw = Chain::regular(FIREWALL_CHECK);
    fw.push(
        Rule::new(vec![
            Stmt::Lookup {
                key: dst_key(),
                set: FIREWALL_IPS.into(),
                negate: false,
            },
            Stmt::Lookup {
                key: vec![Field::Daddr, Field::L4Proto, Field::ThDport, Field::Saddr],
                set: FIREWALL_ALLOW.into(),
                negate: true,
            },
            Stmt::Verdict(Verdict::Drop),
        ])
        .with_comment("loadBalancerSourceRanges"),
    );

    let mut cic = Chain::regular(CLUSTER_IPS_CHECK);
    cic.push(
        Rule::new(vec![
            Stmt::Lookup {
                key: vec![Field::Daddr],
                set: CLUSTER_IPS.into(),
                negate: false,
            },
            Stmt::Reject,
        ])
        .with_comment("Reject traffic to invalid ports of ClusterIPs"),
    );
    cic.push(
        Rule::new(vec![
            Stmt::Lookup {
                key: vec![Field::Daddr],
                set: SERVICE_CIDRS.into(),
                negate: false,
            },
            Stmt::Verdict(Verdict::Drop),
        ])
        .with_comment("Drop traffic to unallocated ClusterIPs"),
    );

    let mut reject = Chain::regular(REJECT)
        .with_comment("helper for @no-endpoint-services / @no-endpoint-nodeports");
    reject.push(Rule::new(vec![Stmt::Reject]));

    [check, np_check, fw, cic, reject]
}

/// Marking for masquerade, and masquerading in postrouting (hairpin and marked traffic).
fn masquerade_chains(mark: u32) -> [Chain; 2] {
    let mut markc = Chain::regular(MARK_FOR_MASQUERADE);
    markc.push(Rule::new(vec![Stmt::SetMark(MarkOp::Or(mark))]));

    let mut masq = Chain::regular(MASQUERADING);
    masq.push(
        Rule::new(vec![
            Stmt::cmp(Field::CtStatus, Value::CtStatus(CtStatus::Dnat)),
            Stmt::Lookup {
                key: vec![Field::Saddr, Field::Daddr],
                set: HAIRPIN.into(),
                negate: false,
            },
            Stmt::jump(MARK_FOR_MASQUERADE),
        ])
        .with_comment("hairpin: a pod reaching itself through a service"),
    );
    masq.push(Rule::new(vec![
        Stmt::cmp(Field::MarkAnd(mark), Value::Int(0)),
        Stmt::Verdict(Verdict::Return),
    ]));
    masq.push(Rule::new(vec![Stmt::SetMark(MarkOp::Xor(mark))]));
    masq.push(Rule::new(vec![Stmt::Masquerade]));

    [markc, masq]
}

/// A table from its skeleton and its service ports' fragments, in service-port order.
/// Where ports share an element key, the later port's element is kept (shared keys carry
/// equal elements except when Services collide, e.g. two claiming one externalIP).
pub fn assemble(
    mut t: Table,
    slots: &SlotAllocator,
    frags: impl IntoIterator<Item = Fragment>,
) -> Table {
    for shard in slots.shards_in_use() {
        t.add_set(endpoint_map(t.family, shard));
    }
    for shard in slots.affinity_shards_in_use() {
        for m in affinity::maps(t.family, shard) {
            t.add_set(m);
        }
    }
    let mut pending: HashMap<SetRef, Vec<Element>> = HashMap::new();
    for f in frags {
        for c in f.chains {
            t.add_chain(c);
        }
        for s in f.sets {
            t.add_set(s);
        }
        for (set, e) in f.elements {
            pending.entry(set).or_default().push(e);
        }
    }
    // One stable sort per set instead of half a million ordered inserts.
    for (set, elements) in pending {
        t.sets
            .get_mut(set.name().as_ref())
            .expect("fragments only add to declared sets")
            .extend(elements);
    }
    t
}

/// The fixed part of a family's table: base chains, dispatch chains, the table-wide sets
/// and maps, and the elements that come from node-level settings (NodePort addresses,
/// ServiceCIDRs, pod CIDRs).
pub fn skeleton(fm: &FamilySettings) -> Table {
    let mut t = Table::new(fm.family, TABLE);
    t.comment = Some("rules for kproxy".into());
    for s in skeleton_sets(fm) {
        t.add_set(s);
    }
    for c in skeleton_chains(fm) {
        t.add_chain(c);
    }
    fill_skeleton_sets(fm, &mut t);
    t
}

/// Everything one service port contributes to its family's table. Chains and sets are
/// its own (their names carry the port's identity); elements go into the skeleton's
/// table-wide sets and maps, where a few keys may be shared with other ports (a ClusterIP
/// used by several ports, a hairpin pair of an endpoint several services use): shared keys
/// always carry equal elements.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fragment {
    pub chains: Vec<Chain>,
    pub sets: Vec<Set>,
    pub elements: Vec<(SetRef, Element)>,
    /// The endpoint lists that hold a block in the `@endpoints-N` maps or (affinity) in
    /// the `@affinity-pick-N` maps.
    pub slot_lists: Vec<Policy>,
}

fn fill_skeleton_sets(fm: &FamilySettings, t: &mut Table) {
    if let NodePortIps::Ips(ips) = &fm.nodeport_ips {
        let s = t.sets.get_mut(NODEPORT_IPS).expect("skeleton set");
        for ip in ips.iter().filter(|ip| !ip.is_loopback()) {
            s.insert(Element::key(vec![Value::Addr(*ip)]));
        }
    }
    let s = t.sets.get_mut(SERVICE_CIDRS).expect("skeleton set");
    for c in merge_cidrs(&fm.service_cidrs) {
        s.insert(Element::key(vec![net(c)]));
    }
    if let LocalDetect::SourceCidrs(c) = &fm.local_detect {
        if let Some(s) = t.sets.get_mut(POD_CIDRS) {
            for c in merge_cidrs(c) {
                s.insert(Element::key(vec![net(c)]));
            }
        }
    }
}

/// Drops CIDRs contained in others: the kernel refuses overlapping interval elements.
fn merge_cidrs(cidrs: &[IpNetwork]) -> Vec<IpNetwork> {
    let mut v: Vec<IpNetwork> = cidrs
        .iter()
        .map(|c| IpNetwork::new(c.network(), c.prefix()).expect("same prefix is valid"))
        .collect();
    v.sort_by_key(|c| (c.prefix(), c.network()));
    let mut out: Vec<IpNetwork> = Vec::new();
    for c in v {
        if !out.iter().any(|o| o.contains(c.network())) {
            out.push(c);
        }
    }
    out.sort_by_key(|c| (c.network(), c.prefix()));
    out
}

fn svc_key(ip: IpAddr, proto: Protocol, port: u16) -> Vec<Value> {
    vec![Value::Addr(ip), Value::Proto(proto), Value::Port(port)]
}

/// Chain names of one service port.
struct PortChains {
    cluster: String,
    local: String,
    external: String,
}

/// What one service port gets: its chain names, which of them exist, and whether its
/// internal and external traffic have endpoints to go to.
struct PortPlan {
    ch: PortChains,
    /// `namespace/name:port`, the comment of the port's elements.
    label: Arc<str>,
    uses_cluster_chain: bool,
    has_internal: bool,
    has_external: bool,
    uses_external_chain: bool,
    /// The verdict of traffic without endpoints: drop while the service has endpoints
    /// elsewhere (the other policy's), else reject.
    no_endpoints: Verdict,
}

/// Whether the port's Cluster and Local endpoint lists get a chain (non-empty and in use).
fn lists_used(sp: &ServicePort) -> (bool, bool) {
    (
        !sp.cluster_endpoints.is_empty() && sp.uses_cluster_endpoints(),
        !sp.local_endpoints.is_empty() && sp.uses_local_endpoints(),
    )
}

/// The endpoint lists of `sp` that get a chain, with their endpoints: each owns a block of
/// an endpoint map, or (ClientIP affinity) a place in the affinity maps. What [`fragment`]
/// asks its [`Ranges`] for, so both can be handed out before fragments are rendered in
/// parallel.
fn used_lists(sp: &ServicePort) -> impl Iterator<Item = (Policy, &[EndpointAddr])> {
    let (cluster, local) = lists_used(sp);
    [
        (cluster, Policy::Cluster, &sp.cluster_endpoints[..]),
        (local, Policy::Local, &sp.local_endpoints[..]),
    ]
    .into_iter()
    .filter(|(used, _, _)| *used)
    .map(|(_, p, eps)| (p, eps))
}

/// The fragments of `services`, in order: blocks and affinity places first (in order,
/// from `slots`), then the fragments on every core (they only read them). A full render of 50k services
/// takes half the time on two cores.
pub fn fragments(
    fm: &FamilySettings,
    services: &[ServicePort],
    slots: &mut SlotAllocator,
) -> Vec<Fragment> {
    for sp in services {
        let name = Arc::new(sp.name.clone());
        for (policy, eps) in used_lists(sp) {
            let owner = (name.clone(), policy);
            match sp.affinity_timeout {
                None => {
                    slots.range(&owner);
                }
                Some(_) => {
                    Ranges::affinity(slots, &owner, eps);
                }
            }
        }
    }
    existing_fragments(fm, services, slots)
}

/// The fragments of `services` whose blocks and affinity places `slots` already holds,
/// in order, rendered on every core (they only read `slots`).
pub fn existing_fragments<S: std::borrow::Borrow<ServicePort> + Sync>(
    fm: &FamilySettings,
    services: &[S],
    slots: &SlotAllocator,
) -> Vec<Fragment> {
    on_every_core(services, |sp| fragment(fm, sp, &mut Existing(slots)))
}

/// `f` of each service port, in order, computed on every core.
pub fn on_every_core<S: std::borrow::Borrow<ServicePort> + Sync, T: Send>(
    services: &[S],
    f: impl Fn(&ServicePort) -> T + Sync,
) -> Vec<T> {
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    let per = services.len().div_ceil(workers).max(256);
    if services.len() <= per {
        return services.iter().map(|sp| f(sp.borrow())).collect();
    }
    let f = &f;
    std::thread::scope(|scope| {
        let parts: Vec<_> = services
            .chunks(per)
            .map(|part| {
                scope.spawn(move || part.iter().map(|sp| f(sp.borrow())).collect::<Vec<_>>())
            })
            .collect();
        parts
            .into_iter()
            .flat_map(|h| h.join().expect("a render worker panicked"))
            .collect()
    })
}

/// The elements one service port adds to the table-wide sets and maps (those of its
/// [`Fragment`] under [`SetRef::Named`], in the same order), without rendering the rest
/// of the fragment: what a drift repair of one table-wide set needs of every port.
pub fn table_wide_elements(fm: &FamilySettings, sp: &ServicePort) -> Vec<(SetRef, Element)> {
    let plan = PortPlan::new(sp);
    let mut out = Vec::new();
    dispatch_elements(fm, sp, &plan, &mut out);
    for (_, eps) in used_lists(sp) {
        out.extend(hairpin_elements(sp, eps));
    }
    out
}

/// The hairpin pairs of an endpoint list's endpoints that may hairpin.
fn hairpin_elements<'a>(
    sp: &'a ServicePort,
    eps: &'a [EndpointAddr],
) -> impl Iterator<Item = (SetRef, Element)> + 'a {
    eps.iter().filter(|e| may_hairpin(sp, e)).map(|e| {
        (
            SetRef::Named(HAIRPIN),
            Element::key(vec![Value::Addr(e.ip), Value::Addr(e.ip)]),
        )
    })
}

impl PortPlan {
    fn new(sp: &ServicePort) -> PortPlan {
        let base = chain_base(&sp.name);
        let has_endpoints = sp.has_endpoints;
        let (uses_cluster_chain, uses_local_chain) = lists_used(sp);
        let has = |local: bool| {
            has_endpoints
                && if local {
                    uses_local_chain
                } else {
                    uses_cluster_chain
                }
        };
        PortPlan {
            ch: PortChains {
                cluster: format!("{PREFIX_CLUSTER}{base}"),
                local: format!("{PREFIX_LOCAL}{base}"),
                external: format!("{PREFIX_EXTERNAL}{base}"),
            },
            label: sp.name.to_string().into(),
            uses_cluster_chain,
            has_internal: has(sp.internal_policy_local),
            has_external: has(sp.external_policy_local),
            uses_external_chain: has_endpoints && sp.externally_accessible(),
            no_endpoints: if has_endpoints {
                Verdict::Drop
            } else {
                Verdict::Goto(REJECT.into())
            },
        }
    }

    /// The Local or the Cluster chain.
    fn policy_chain(&self, local: bool) -> &String {
        if local {
            &self.ch.local
        } else {
            &self.ch.cluster
        }
    }

    /// Queues `e` for the named set, commented with the service port.
    fn add(&self, p: &mut Vec<(SetRef, Element)>, set: &'static str, e: Element) {
        p.push((SetRef::Named(set), e.with_comment(self.label.clone())));
    }

    /// An entry point for external traffic (externalIP, LB IP, NodePort). With
    /// externalTrafficPolicy Cluster it is marked for masquerade and dispatched straight to
    /// the Cluster chain; with Local it goes to the external chain (short-circuits for pods
    /// and the node, then the Local chain). Either way it is dispatched while the service
    /// has endpoints anywhere, and gets the no-endpoint verdict while external traffic has
    /// none.
    fn external_entry(
        &self,
        sp: &ServicePort,
        p: &mut Vec<(SetRef, Element)>,
        dispatch: &'static str,
        masq: &'static str,
        none: &'static str,
        key: Vec<Value>,
    ) {
        if self.uses_external_chain {
            if !sp.external_policy_local {
                if self.has_external {
                    let goto = Verdict::Goto(self.ch.cluster.clone());
                    self.add(p, dispatch, Element::verdict(key.clone(), goto));
                    self.add(p, masq, Element::key(key.clone()));
                }
            } else {
                let goto = Verdict::Goto(self.ch.external.clone());
                self.add(p, dispatch, Element::verdict(key.clone(), goto));
            }
        }
        if !self.has_external {
            let verdict = self.no_endpoints.clone();
            self.add(p, none, Element::verdict(key, verdict));
        }
    }
}

/// Renders one service port's [`Fragment`], taking its endpoint slot ranges from `slots`.
pub fn fragment(fm: &FamilySettings, sp: &ServicePort, slots: &mut dyn Ranges) -> Fragment {
    let plan = PortPlan::new(sp);
    let mut frag = Fragment::default();
    dispatch_elements(fm, sp, &plan, &mut frag.elements);
    if plan.uses_external_chain && sp.external_policy_local {
        frag.chains.push(external_chain(fm, sp, &plan));
    }
    endpoint_chains(sp, &plan, slots, &mut frag);
    frag
}

/// The elements that send a service port's traffic on: its ClusterIP, external entry
/// points, firewall and masquerade markers, in the table-wide sets and maps.
fn dispatch_elements(
    fm: &FamilySettings,
    sp: &ServicePort,
    plan: &PortPlan,
    pending: &mut Vec<(SetRef, Element)>,
) {
    let proto = sp.name.protocol;
    // Shared by all ports of the service: commented with the service, not the port.
    pending.push((
        SetRef::Named(CLUSTER_IPS),
        Element::key(vec![Value::Addr(sp.cluster_ip)])
            .with_comment(format!("{}/{}", sp.name.namespace, sp.name.name)),
    ));
    // ClusterIP.
    let cip = svc_key(sp.cluster_ip, proto, sp.port);
    if plan.has_internal {
        let internal_chain = plan.policy_chain(sp.internal_policy_local);
        plan.add(
            pending,
            SERVICE_IPS,
            Element::verdict(cip, Verdict::Goto(internal_chain.clone())),
        );
    } else {
        plan.add(
            pending,
            NO_ENDPOINT_SERVICES,
            Element::verdict(cip, plan.no_endpoints.clone()),
        );
    }
    for ip in sp.external_ips.iter().chain(&sp.load_balancer_ips) {
        let key = svc_key(*ip, proto, sp.port);
        plan.external_entry(
            sp,
            pending,
            SERVICE_IPS,
            EXTERNAL_MASQUERADE,
            NO_ENDPOINT_SERVICES,
            key,
        );
    }
    firewall_elements(fm, sp, plan, pending);
    if sp.node_port != 0 {
        let key = vec![Value::Proto(proto), Value::Port(sp.node_port)];
        plan.external_entry(
            sp,
            pending,
            SERVICE_NODEPORTS,
            NODEPORT_MASQUERADE,
            NO_ENDPOINT_NODEPORTS,
            key,
        );
    }
    // Internal traffic: masquerade what does not come from a pod (or everything), through
    // the table-wide rule in `services`.
    if plan.has_internal && clusterip_masquerade_condition(fm).is_some() {
        plan.add(
            pending,
            CLUSTERIP_MASQUERADE,
            Element::key(svc_key(sp.cluster_ip, proto, sp.port)),
        );
    }
}

/// loadBalancerSourceRanges: the LB IPs only (not NodePorts, not externalIPs).
fn firewall_elements(
    fm: &FamilySettings,
    sp: &ServicePort,
    plan: &PortPlan,
    pending: &mut Vec<(SetRef, Element)>,
) {
    if sp.load_balancer_ips.is_empty() || sp.source_ranges.is_empty() {
        return;
    }
    let proto = sp.name.protocol;
    let from_node = fm
        .node_ip
        .is_some_and(|n| sp.source_ranges.iter().any(|r| r.contains(n)));
    let mut sources = sp.source_ranges.clone();
    if from_node {
        sources.extend(sp.load_balancer_ips.iter().map(|ip| IpNetwork::from(*ip)));
    }
    let sources = merge_cidrs(&sources);
    for lb in &sp.load_balancer_ips {
        plan.add(
            pending,
            FIREWALL_IPS,
            Element::key(svc_key(*lb, proto, sp.port)),
        );
        for src in &sources {
            let mut k = svc_key(*lb, proto, sp.port);
            k.push(net(*src));
            plan.add(pending, FIREWALL_ALLOW, Element::key(k));
        }
    }
}

/// External traffic under externalTrafficPolicy Local: pods and the node itself
/// short-circuit to the Cluster chain (the node masqueraded); everyone else goes to the
/// Local chain, or falls through to the no-endpoint drop when there is none.
fn external_chain(fm: &FamilySettings, sp: &ServicePort, plan: &PortPlan) -> Chain {
    let ch = &plan.ch;
    let mut ext = Chain::regular(ch.external.clone());
    if plan.uses_cluster_chain {
        if let Some(mut is_pod) = local_match(fm, false) {
            is_pod.push(Stmt::goto(ch.cluster.clone()));
            ext.push(Rule::new(is_pod).with_comment("short-circuit pod traffic"));
        }
        let local_src = || Stmt::cmp(Field::FibSaddrType, Value::FibType(FibType::Local));
        ext.push(
            Rule::new(vec![local_src(), Stmt::jump(MARK_FOR_MASQUERADE)])
                .with_comment("masquerade local traffic"),
        );
        ext.push(
            Rule::new(vec![local_src(), Stmt::goto(ch.cluster.clone())])
                .with_comment("short-circuit local traffic"),
        );
    }
    if plan.has_external {
        let external_policy_chain = plan.policy_chain(sp.external_policy_local);
        ext.push(Rule::new(vec![Stmt::goto(external_policy_chain.clone())]));
    }
    ext
}

/// The Cluster and Local policy chains that exist, with their endpoints: hairpin set
/// elements, and either the list's ranges in its block of the endpoint map and its DNAT
/// rule or (ClientIP affinity) the affinity rules.
fn endpoint_chains(sp: &ServicePort, plan: &PortPlan, slots: &mut dyn Ranges, frag: &mut Fragment) {
    let proto = sp.name.protocol;
    let owner = Arc::new(sp.name.clone());
    let label = &plan.label;
    // The same lists `fragments` hands out places for before rendering in parallel.
    for (policy, eps) in used_lists(sp) {
        let mut chain = Chain::regular(plan.policy_chain(policy == Policy::Local).clone());
        frag.elements.extend(hairpin_elements(sp, eps));
        frag.slot_lists.push(policy);
        let what: Arc<str> = match policy {
            Policy::Cluster => format!("{label} cluster"),
            Policy::Local => format!("{label} local"),
        }
        .into();
        match sp.affinity_timeout {
            None => {
                let range = slots.range(&(owner.clone(), policy));
                let ranges = pick_ranges(range.base, eps.len() as u32);
                frag.elements.extend(ranges.zip(eps).map(|((lo, hi), ep)| {
                    let e = Element::values(
                        vec![Value::Range(lo, hi)],
                        vec![Value::Addr(ep.ip), Value::Port(ep.port)],
                    );
                    (SetRef::Endpoints(range.shard), e.with_comment(what.clone()))
                }));
                chain.push(Rule::new(vec![Stmt::DnatPick {
                    proto,
                    offset: range.base,
                    map: SetRef::Endpoints(range.shard).name().into_owned(),
                }]));
            }
            Some(timeout) => {
                let a = slots.affinity(&(owner.clone(), policy), eps);
                affinity::elements(&a, eps, &what, &mut frag.elements);
                chain.rules.extend(affinity::rules(proto, &a, timeout));
            }
        }
        frag.chains.push(chain);
    }
}

/// Whether a connection from this endpoint to its own service can pass through this node's
/// rules: only a client on this node is DNATed here (a pod elsewhere goes through its own
/// node's rules), so only endpoints on this node, or of unknown node, go into the hairpin
/// set. Upstream marks every endpoint; the packets affected are the same, and the set is a
/// tenth of the size in a ten-node cluster (each element costs kernel time at every load).
fn may_hairpin(sp: &ServicePort, ep: &EndpointAddr) -> bool {
    // `endpoints` is sorted, address and port first.
    let start = sp
        .endpoints
        .partition_point(|e| (e.ip, e.port) < (ep.ip, ep.port));
    sp.endpoints[start..]
        .iter()
        .take_while(|e| e.ip == ep.ip && e.port == ep.port)
        .any(|e| e.local || e.node.is_none())
}
