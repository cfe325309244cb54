//! The informer cache: watch streams from the API server → the sync loop's [`Source`].
//!
//! Owns: the in-memory copy of the cluster kproxy acts on (Services, EndpointSlices, this
//! node's Node, ServiceCIDRs), what changed since the last sync, readiness, and the tokio
//! tasks that watch the API server ([`Cache::start`]).
//!
//! Four kube-runtime watchers (Services, EndpointSlices and ServiceCIDRs with upstream's
//! label selector [`PROXY_LABEL_SELECTOR`], this Node by name) feed [`Cache::apply`].
//! What the watchers do on relists, 410s and errors, what `apply` marks as changed, and the
//! metrics it counts: docs/daemon.md, "The informer cache".
//!
//! Must not: interpret objects (that is `model::build`), or block the sync thread for
//! long: [`Source::objects`] copies `Arc`s under the lock and converts outside it.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::ServiceCIDR;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client};
use serde::de::DeserializeOwned;
use tokio::task::JoinHandle;

use super::client::{is_dead_connection, DEAD_AFTER};
use super::compact::{
    address_family, prune_node, prune_service_cidr, Interner, ServiceLite, SliceLite,
};
use crate::metrics::Metrics;
use crate::model::build::Objects;
use crate::model::{ServiceKey, LABEL_SERVICE_NAME};
use crate::nft::Family;
use crate::sync::{Changes, Families, Source, Trigger};

/// Upstream kube-proxy's label selector for Services, EndpointSlices (and, through the
/// shared informer factory, ServiceCIDRs): not handed to another proxy, not the slices of
/// a headless Service. Written as Go's `labels.Selector.String()` orders it.
pub const PROXY_LABEL_SELECTOR: &str =
    "!service.kubernetes.io/headless,!service.kubernetes.io/service-proxy-name";

/// Annotation carrying when the EndpointSlice controller saw the change.
pub const TRIGGER_TIME_ANNOTATION: &str = "endpoints.kubernetes.io/last-change-trigger-time";

/// How long to wait before asking again for a resource the API server does not serve.
const NOT_SERVED_RETRY: Duration = Duration::from_secs(300);

/// One watch event, tagged with its resource.
// Transient (moved once, from the stream into `apply`): boxing the Node buys nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum Update {
    Service(Event<Service>),
    Slice(Event<EndpointSlice>),
    Node(Event<Node>),
    ServiceCidr(Event<ServiceCIDR>),
}

/// A Service's objects in the cache.
#[derive(Default, Debug)]
struct Entry {
    service: Option<Arc<ServiceLite>>,
    slices: Slices,
}

/// A Service's slices, sorted by name. A Vec, not a map: most Services have one or two
/// slices, and a one-element `BTreeMap` allocates a whole ~300-byte node.
#[derive(Default, Debug)]
struct Slices(Vec<Arc<SliceLite>>);

impl Slices {
    fn find(&self, name: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|s| (*s.name).cmp(name))
    }

    fn get(&self, name: &str) -> Option<&Arc<SliceLite>> {
        self.find(name).ok().map(|i| &self.0[i])
    }

    fn insert(&mut self, slice: Arc<SliceLite>) {
        match self.find(&slice.name) {
            Ok(i) => self.0[i] = slice,
            Err(i) => self.0.insert(i, slice),
        }
    }

    fn remove(&mut self, name: &str) {
        if let Ok(i) = self.find(name) {
            self.0.remove(i);
            if self.0.is_empty() {
                self.0 = Vec::new();
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn values(&self) -> impl Iterator<Item = &Arc<SliceLite>> {
        self.0.iter()
    }
}

impl Entry {
    fn is_empty(&self) -> bool {
        self.service.is_none() && self.slices.is_empty()
    }
}

/// `(namespace, slice name)`.
type SliceKey = (Arc<str>, Box<str>);

#[derive(Default)]
struct State {
    entries: BTreeMap<ServiceKey, Entry>,
    /// Which Service (name) each slice is filed under.
    slice_owner: HashMap<SliceKey, Box<str>>,
    node: Option<Arc<Node>>,
    cidrs: BTreeMap<String, Arc<ServiceCIDR>>,
    interner: Interner,

    /// Open relists: the keys listed so far.
    services_seen: Option<HashSet<ServiceKey>>,
    slices_seen: Option<HashSet<SliceKey>>,
    node_seen: Option<bool>,
    cidrs_seen: Option<HashSet<String>>,
    services_synced: bool,
    slices_synced: bool,
    node_synced: bool,
    cidrs_synced: bool,

    /// Changes since the last `take_changes`.
    service_changed: BTreeSet<ServiceKey>,
    endpoints_changed: BTreeSet<ServiceKey>,
    node_changed: bool,
    cidrs_changed: bool,
    /// The families those changes affect.
    families: Families,
    /// The families changed but not yet announced ([`Trigger::notify`]).
    unannounced: Families,
    /// Services whose IPv6 side changed: upstream's IPv6 change tracker's pending items,
    /// which `sync_proxy_rules_service_changes_pending` shows (it is written by the IPv4
    /// tracker, then the IPv6 one, on every Service event: the last writer wins).
    service_changed_v6: BTreeSet<ServiceKey>,
    /// EndpointSlice events that changed something (upstream's pending gauge counts
    /// events, not services).
    endpoint_events: i64,
    trigger_times: BTreeMap<(Family, ServiceKey), Vec<SystemTime>>,
}

impl State {
    /// Every watcher finished its first list: the Node and the ServiceCIDRs too, so the
    /// first sync already has the node's IPs and the CIDRs (otherwise their arrival a
    /// moment later would force a second full sync, and a missing Node an Event).
    fn synced(&self) -> bool {
        self.services_synced && self.slices_synced && self.node_synced && self.cidrs_synced
    }

    /// A relist of this resource is open (`Init` seen, `InitDone` not yet).
    fn relisting(&self, resource: &str) -> bool {
        match resource {
            "services" => self.services_seen.is_some(),
            "endpointslices" => self.slices_seen.is_some(),
            "nodes" => self.node_seen.is_some(),
            _ => self.cidrs_seen.is_some(),
        }
    }

    /// Records that a change affecting `families` is pending.
    fn mark(&mut self, families: Families) {
        self.families = self.families.union(families);
        self.unannounced = self.unannounced.union(families);
    }

    /// Records a Service change between `old` and `new` (either may be absent): it affects
    /// the families of their ClusterIPs, as upstream's per-family trackers see it.
    fn mark_service(
        &mut self,
        key: &ServiceKey,
        old: Option<&ServiceLite>,
        new: Option<&ServiceLite>,
    ) {
        let families = old
            .map_or(Families::NONE, ServiceLite::families)
            .union(new.map_or(Families::NONE, ServiceLite::families));
        if families.contains(Family::V6) {
            self.service_changed_v6.insert(key.clone());
        }
        self.service_changed.insert(key.clone());
        self.mark(families);
    }

    fn prune_entry(&mut self, key: &ServiceKey) {
        if self.entries.get(key).is_some_and(Entry::is_empty) {
            self.entries.remove(key);
        }
    }

    /// Stores a Service; true when it changed.
    fn put_service(&mut self, svc: Service) -> bool {
        let lite = ServiceLite::from_k8s(svc, &mut self.interner);
        if lite.name.is_empty() {
            return false;
        }
        let key = ServiceKey::new(&*lite.namespace, &*lite.name);
        if let Some(seen) = self.services_seen.as_mut() {
            seen.insert(key.clone());
        }
        let entry = self.entries.entry(key.clone()).or_default();
        if entry.service.as_deref() == Some(&lite) {
            return false;
        }
        let old = entry.service.replace(Arc::new(lite));
        let new = entry.service.clone();
        self.mark_service(&key, old.as_deref(), new.as_deref());
        true
    }

    fn delete_service(&mut self, key: &ServiceKey) -> bool {
        let Some(entry) = self.entries.get_mut(key) else {
            return false;
        };
        let Some(old) = entry.service.take() else {
            return false;
        };
        self.prune_entry(key);
        self.mark_service(key, Some(&old), None);
        true
    }

    /// Stores a slice; true when it changed (in content or in owner).
    fn put_slice(&mut self, slice: EndpointSlice, started: SystemTime) -> bool {
        let trigger = trigger_time(&slice);
        let lite = SliceLite::from_k8s(slice, &mut self.interner);
        if lite.name.is_empty() {
            return false;
        }
        let skey: SliceKey = (lite.namespace.clone(), lite.name.clone());
        if let Some(seen) = self.slices_seen.as_mut() {
            seen.insert(skey.clone());
        }
        let owner = match lite.service_name.as_deref() {
            Some(s) if !s.is_empty() && &*lite.address_type != "FQDN" => s.to_string(),
            _ => {
                if lite.service_name.as_deref().unwrap_or("").is_empty() {
                    tracing::debug!(
                        slice = %format!("{}/{}", lite.namespace, lite.name),
                        "EndpointSlice has no kubernetes.io/service-name label; ignored"
                    );
                }
                // Not (or no longer) usable: forget any stored copy.
                return self.delete_slice(&skey);
            }
        };
        let key = ServiceKey::new(&*lite.namespace, owner);
        let family = lite.family();
        let mut changed = false;
        if let Some(old_owner) = self.slice_owner.get(&skey) {
            if **old_owner != *key.name {
                // The slice moved to another Service: remove it from the old one.
                changed |= self.delete_slice(&skey);
            }
        }
        let entry = self.entries.entry(key.clone()).or_default();
        if entry.slices.get(&lite.name).map(|s| &**s) != Some(&lite) {
            entry.slices.insert(Arc::new(lite));
            self.slice_owner
                .insert(skey, key.name.clone().into_boxed_str());
            changed = true;
        }
        if changed {
            if let (Some(t), Some(f)) = (trigger.filter(|t| *t > started), family) {
                self.trigger_times
                    .entry((f, key.clone()))
                    .or_default()
                    .push(t);
            }
            self.mark(family.into_iter().collect());
            self.endpoints_changed.insert(key);
        }
        changed
    }

    fn delete_slice(&mut self, skey: &SliceKey) -> bool {
        let Some(owner) = self.slice_owner.remove(skey) else {
            return false;
        };
        let key = ServiceKey::new(&*skey.0, &*owner);
        let mut family = None;
        if let Some(entry) = self.entries.get_mut(&key) {
            family = entry.slices.get(&skey.1).and_then(|s| s.family());
            entry.slices.remove(&skey.1);
        }
        self.prune_entry(&key);
        if let Some(f) = family {
            // Upstream's tracker of the slice's family forgets the service's times.
            self.trigger_times.remove(&(f, key.clone()));
        }
        self.mark(family.into_iter().collect());
        self.endpoints_changed.insert(key);
        true
    }
}

/// When the EndpointSlice controller saw the change that produced this slice.
pub fn trigger_time(slice: &EndpointSlice) -> Option<SystemTime> {
    let raw = slice
        .metadata
        .annotations
        .as_ref()?
        .get(TRIGGER_TIME_ANNOTATION)?;
    parse_rfc3339(raw)
}

/// RFC 3339 with optional fractional seconds, as Go's `time.RFC3339Nano` parses.
pub fn parse_rfc3339(raw: &str) -> Option<SystemTime> {
    let ts: k8s_openapi::jiff::Timestamp = raw.trim().parse().ok()?;
    Some(SystemTime::from(ts))
}

/// The informer cache. See the module documentation.
pub struct Cache {
    node_name: String,
    /// Trigger times from before this are not measured (upstream's `trackerStartTime`).
    started: SystemTime,
    trigger: Arc<Trigger>,
    metrics: Arc<Metrics>,
    state: Mutex<State>,
}

/// The watch tasks of a [`Cache`]. Dropping this (or calling [`Watchers::stop`]) aborts
/// them; the cache keeps its contents.
pub struct Watchers {
    tasks: Vec<JoinHandle<()>>,
}

impl Watchers {
    pub fn stop(self) {}
}

impl Drop for Watchers {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Cache {
    /// An empty cache fed by nothing (tests, or a caller driving [`Cache::apply`]).
    pub fn new(node_name: &str, trigger: Arc<Trigger>, metrics: Arc<Metrics>) -> Cache {
        Cache::with_start_time(node_name, trigger, metrics, SystemTime::now())
    }

    /// [`Cache::new`] with the time before which trigger times are ignored.
    pub fn with_start_time(
        node_name: &str,
        trigger: Arc<Trigger>,
        metrics: Arc<Metrics>,
        started: SystemTime,
    ) -> Cache {
        Cache {
            node_name: node_name.to_string(),
            started,
            trigger,
            metrics,
            state: Mutex::new(State::default()),
        }
    }

    /// Creates the cache and spawns its four watch tasks on the current tokio runtime
    /// (panics outside one). The tasks run until the returned [`Watchers`] is dropped.
    pub fn start(
        client: Client,
        node_name: &str,
        trigger: Arc<Trigger>,
        metrics: Arc<Metrics>,
    ) -> (Arc<Cache>, Watchers) {
        let cache = Arc::new(Cache::new(node_name, trigger, metrics));
        let labels = watcher::Config::default().labels(PROXY_LABEL_SELECTOR);
        let tasks = vec![
            tokio::spawn(watch(
                Api::<Service>::all(client.clone()),
                labels.clone(),
                cache.clone(),
                Update::Service,
                "services",
                false,
            )),
            tokio::spawn(watch(
                Api::<EndpointSlice>::all(client.clone()),
                labels.clone(),
                cache.clone(),
                Update::Slice,
                "endpointslices",
                false,
            )),
            tokio::spawn(watch(
                Api::<Node>::all(client.clone()),
                watcher::Config::default().fields(&format!("metadata.name={node_name}")),
                cache.clone(),
                Update::Node,
                "nodes",
                false,
            )),
            tokio::spawn(watch(
                Api::<ServiceCIDR>::all(client),
                labels,
                cache.clone(),
                Update::ServiceCidr,
                "servicecidrs",
                true,
            )),
        ];
        (cache, Watchers { tasks })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind; keep serving it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Feeds `objects` as each watcher's first complete list (Node, ServiceCIDRs,
    /// Services, EndpointSlices, in that order), as the watchers do at start: afterwards
    /// the cache is synced. For tests and benchmarks.
    #[cfg(any(test, feature = "test-util"))]
    pub fn list_all(&self, objects: Objects) {
        fn list<T>(c: &Cache, wrap: fn(Event<T>) -> Update, items: Vec<T>) {
            c.apply(wrap(Event::Init));
            for item in items {
                c.apply(wrap(Event::InitApply(item)));
            }
            c.apply(wrap(Event::InitDone));
        }
        list(self, Update::Node, objects.nodes);
        list(self, Update::ServiceCidr, objects.service_cidrs);
        list(self, Update::Service, objects.services);
        list(self, Update::Slice, objects.slices);
    }

    /// Applies one watch event (synchronously; no I/O). Returns whether anything changed.
    pub fn apply(&self, update: Update) -> bool {
        let (resource, kind) = describe(&update);
        self.metrics
            .api_events
            .with_label_values(&[resource, kind])
            .inc();
        let mut st = self.lock();
        let was_synced = st.synced();
        let changed = match update {
            Update::Service(ev) => self.apply_services(&mut st, ev),
            Update::Slice(ev) => self.apply_slices(&mut st, ev),
            Update::Node(ev) => self.apply_node(&mut st, ev),
            Update::ServiceCidr(ev) => self.apply_cidrs(&mut st, ev),
        };
        self.metrics
            .service_changes_pending
            .set(st.service_changed_v6.len() as i64);
        self.metrics
            .endpoint_changes_pending
            .set(st.endpoint_events);
        let pending = !st.service_changed.is_empty()
            || !st.endpoints_changed.is_empty()
            || st.node_changed
            || st.cidrs_changed;
        // Wake the loop on a change, except in the middle of a relist (its changes are
        // announced at its InitDone), and once when the cache becomes synced.
        let wake = st.synced()
            && !st.relisting(resource)
            && (changed || (kind == "InitDone" && pending) || !was_synced);
        // Queued for the families changed since the last announcement; the changes that
        // came before the first complete list queue nothing (upstream syncs them from its
        // "synced" callbacks, without `Sync()`).
        let families = match (wake, was_synced) {
            (false, _) => Families::NONE,
            (true, true) => std::mem::take(&mut st.unannounced),
            (true, false) => {
                st.unannounced = Families::NONE;
                Families::NONE
            }
        };
        drop(st);
        if wake {
            self.trigger.notify(families);
        }
        changed
    }

    fn apply_services(&self, st: &mut State, ev: Event<Service>) -> bool {
        let m = &self.metrics.service_changes_total;
        match ev {
            Event::Init => {
                st.services_seen = Some(HashSet::new());
                false
            }
            Event::Apply(svc) | Event::InitApply(svc) => {
                count_service(m, &svc);
                st.put_service(svc)
            }
            Event::Delete(svc) => {
                count_service(m, &svc);
                let key = ServiceKey::new(
                    svc.metadata.namespace.unwrap_or_default(),
                    svc.metadata.name.unwrap_or_default(),
                );
                st.delete_service(&key)
            }
            Event::InitDone => {
                st.services_synced = true;
                let Some(seen) = st.services_seen.take() else {
                    return false;
                };
                let gone: Vec<ServiceKey> = st
                    .entries
                    .iter()
                    .filter(|(k, e)| e.service.is_some() && !seen.contains(*k))
                    .map(|(k, _)| k.clone())
                    .collect();
                let mut changed = false;
                for key in gone {
                    let headless = st.entries[&key]
                        .service
                        .as_ref()
                        .is_some_and(|s| s.headless());
                    if !headless {
                        m.inc_by(CHANGE_TRACKERS);
                    }
                    changed |= st.delete_service(&key);
                }
                changed
            }
        }
    }

    fn apply_slices(&self, st: &mut State, ev: Event<EndpointSlice>) -> bool {
        let m = &self.metrics.endpoint_changes_total;
        match ev {
            Event::Init => {
                st.slices_seen = Some(HashSet::new());
                false
            }
            Event::Apply(slice) | Event::InitApply(slice) => {
                count_slice(m, &slice);
                let changed = st.put_slice(slice, self.started);
                st.endpoint_events += changed as i64;
                changed
            }
            Event::Delete(slice) => {
                count_slice(m, &slice);
                let ns = slice.metadata.namespace.unwrap_or_default();
                let skey: SliceKey = (
                    st.interner.atom(&ns),
                    slice.metadata.name.unwrap_or_default().into_boxed_str(),
                );
                let changed = st.delete_slice(&skey);
                st.endpoint_events += changed as i64;
                changed
            }
            Event::InitDone => {
                st.slices_synced = true;
                let Some(seen) = st.slices_seen.take() else {
                    return false;
                };
                let gone: Vec<SliceKey> = st
                    .slice_owner
                    .keys()
                    .filter(|k| !seen.contains(*k))
                    .cloned()
                    .collect();
                let mut changed = false;
                for skey in gone {
                    // Stored, so it has a service name and an IP address type: counted.
                    m.inc();
                    let gone = st.delete_slice(&skey);
                    st.endpoint_events += gone as i64;
                    changed |= gone;
                }
                st.interner.gc();
                changed
            }
        }
    }

    fn apply_node(&self, st: &mut State, ev: Event<Node>) -> bool {
        let changed = match ev {
            Event::Init => {
                st.node_seen = Some(false);
                false
            }
            Event::Apply(node) | Event::InitApply(node) => {
                if node.metadata.name.as_deref() != Some(self.node_name.as_str()) {
                    return false;
                }
                if let Some(seen) = st.node_seen.as_mut() {
                    *seen = true;
                }
                let node = prune_node(node);
                if st.node.as_deref() == Some(&node) {
                    false
                } else {
                    st.node = Some(Arc::new(node));
                    true
                }
            }
            Event::Delete(node) => {
                node.metadata.name.as_deref() == Some(self.node_name.as_str())
                    && st.node.take().is_some()
            }
            Event::InitDone => {
                st.node_synced = true;
                match st.node_seen.take() {
                    Some(false) => st.node.take().is_some(),
                    _ => false,
                }
            }
        };
        st.node_changed |= changed;
        if changed {
            // Upstream's topology change: both proxiers `Sync()`.
            st.mark(Families::BOTH);
        }
        changed
    }

    fn apply_cidrs(&self, st: &mut State, ev: Event<ServiceCIDR>) -> bool {
        let changed = match ev {
            Event::Init => {
                st.cidrs_seen = Some(HashSet::new());
                false
            }
            Event::Apply(sc) | Event::InitApply(sc) => {
                let sc = prune_service_cidr(sc);
                let name = sc.metadata.name.clone().unwrap_or_default();
                if let Some(seen) = st.cidrs_seen.as_mut() {
                    seen.insert(name.clone());
                }
                if st.cidrs.get(&name).map(|s| &**s) == Some(&sc) {
                    false
                } else {
                    st.cidrs.insert(name, Arc::new(sc));
                    true
                }
            }
            Event::Delete(sc) => {
                let name = sc.metadata.name.unwrap_or_default();
                st.cidrs.remove(&name).is_some()
            }
            Event::InitDone => {
                st.cidrs_synced = true;
                let Some(seen) = st.cidrs_seen.take() else {
                    return false;
                };
                let before = st.cidrs.len();
                st.cidrs.retain(|name, _| seen.contains(name));
                st.cidrs.len() != before
            }
        };
        st.cidrs_changed |= changed;
        changed
    }

    /// The uid of a cached object (`kind` as in a [`Warning`](crate::model::Warning):
    /// `Service`, `EndpointSlice`, `Node`, `ServiceCIDR`), for Event references.
    pub fn uid(&self, kind: &str, namespace: &str, name: &str) -> Option<String> {
        let st = self.lock();
        match kind {
            "Service" => st
                .entries
                .get(&ServiceKey::new(namespace, name))?
                .service
                .as_ref()?
                .uid
                .as_deref()
                .map(str::to_string),
            "EndpointSlice" => {
                let skey: SliceKey = (Arc::from(namespace), Box::from(name));
                let owner = st.slice_owner.get(&skey)?;
                st.entries
                    .get(&ServiceKey::new(namespace, &**owner))?
                    .slices
                    .get(name)?
                    .uid
                    .as_deref()
                    .map(str::to_string)
            }
            "Node" => st
                .node
                .as_ref()
                .filter(|n| n.metadata.name.as_deref() == Some(name))?
                .metadata
                .uid
                .clone(),
            "ServiceCIDR" => st.cidrs.get(name)?.metadata.uid.clone(),
            _ => None,
        }
    }

    /// Number of services (keys with a Service or a slice) and slices held.
    pub fn len(&self) -> (usize, usize) {
        let st = self.lock();
        (st.entries.len(), st.slice_owner.len())
    }
}

/// Upstream's change trackers per Service event: one per family, and kproxy (like
/// upstream on an IPv6-capable kernel) always runs both.
const CHANGE_TRACKERS: u64 = 2;

/// `sync_proxy_rules_service_changes_total` for one Service event: once per family's
/// change tracker; a headless Service never reaches upstream (its informer's field
/// selector `spec.clusterIP!=None`).
fn count_service(m: &prometheus::IntCounter, svc: &Service) {
    let headless = svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None");
    if !headless {
        m.inc_by(CHANGE_TRACKERS);
    }
}

/// `sync_proxy_rules_endpoint_changes_total` for one EndpointSlice event: once, by the
/// tracker of its family, when it has a service name and an IP address type (upstream
/// drops FQDN and unnamed slices before counting).
fn count_slice(m: &prometheus::IntCounter, slice: &EndpointSlice) {
    let named = slice
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(LABEL_SERVICE_NAME))
        .is_some_and(|n| !n.is_empty());
    if named && address_family(&slice.address_type).is_some() {
        m.inc();
    }
}

/// `(resource, type)` labels of `kproxy_watch_events_total`.
fn describe(u: &Update) -> (&'static str, &'static str) {
    fn kind<K>(e: &Event<K>) -> &'static str {
        match e {
            Event::Apply(_) => "Apply",
            Event::Delete(_) => "Delete",
            Event::Init => "Init",
            Event::InitApply(_) => "InitApply",
            Event::InitDone => "InitDone",
        }
    }
    match u {
        Update::Service(e) => ("services", kind(e)),
        Update::Slice(e) => ("endpointslices", kind(e)),
        Update::Node(e) => ("nodes", kind(e)),
        Update::ServiceCidr(e) => ("servicecidrs", kind(e)),
    }
}

impl Source for Cache {
    fn synced(&self) -> bool {
        self.lock().synced()
    }

    fn take_changes(&self) -> Changes {
        let mut st = self.lock();
        let mut services = std::mem::take(&mut st.service_changed);
        services.append(&mut std::mem::take(&mut st.endpoints_changed));
        st.service_changed_v6.clear();
        st.endpoint_events = 0;
        let changes = Changes {
            services,
            families: std::mem::take(&mut st.families),
            node: std::mem::take(&mut st.node_changed),
            service_cidrs: std::mem::take(&mut st.cidrs_changed),
            trigger_times: std::mem::take(&mut st.trigger_times)
                .into_iter()
                .flat_map(|((f, _), times)| times.into_iter().map(move |t| (f, t)))
                .collect(),
        };
        drop(st);
        self.metrics.service_changes_pending.set(0);
        self.metrics.endpoint_changes_pending.set(0);
        changes
    }

    fn service_keys(&self) -> Option<Vec<ServiceKey>> {
        Some(self.lock().entries.keys().cloned().collect())
    }

    fn objects(&self, only: Option<&BTreeSet<ServiceKey>>) -> Objects {
        let mut services = Vec::new();
        let mut slices = Vec::new();
        let (node, cidrs) = {
            let st = self.lock();
            let mut take = |e: &Entry| {
                services.extend(e.service.clone());
                slices.extend(e.slices.values().cloned());
            };
            match only {
                None => st.entries.values().for_each(&mut take),
                Some(keys) => keys
                    .iter()
                    .filter_map(|k| st.entries.get(k))
                    .for_each(&mut take),
            }
            (
                st.node.clone(),
                st.cidrs.values().cloned().collect::<Vec<_>>(),
            )
        };
        Objects {
            services: services.iter().map(|s| s.to_k8s()).collect(),
            slices: slices.iter().map(|s| s.to_k8s()).collect(),
            nodes: node.map(|n| (*n).clone()).into_iter().collect(),
            service_cidrs: cidrs.iter().map(|c| (**c).clone()).collect(),
        }
    }
}

/// The HTTP status of an API error, if the error is one.
fn api_code(e: &watcher::Error) -> Option<u16> {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => Some(s.code),
        watcher::Error::WatchError(s) => Some(s.code),
        _ => None,
    }
}

/// Runs one watcher into the cache until aborted.
async fn watch<K>(
    api: Api<K>,
    config: watcher::Config,
    cache: Arc<Cache>,
    wrap: fn(Event<K>) -> Update,
    resource: &'static str,
    optional: bool,
) where
    K: kube::Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    loop {
        let mut stream = watcher::watcher(api.clone(), config.clone())
            .default_backoff()
            .boxed();
        let pause = loop {
            match stream.next().await {
                Some(Ok(ev)) => {
                    cache.apply(wrap(ev));
                }
                Some(Err(e)) => {
                    let dead = is_dead_connection(&e);
                    let kind = if dead { "ConnectionLost" } else { "Error" };
                    cache
                        .metrics
                        .api_events
                        .with_label_values(&[resource, kind])
                        .inc();
                    if dead {
                        tracing::warn!(
                            resource,
                            error = %e,
                            "the connection to the API server stopped answering (no reply for {} s); reconnecting",
                            DEAD_AFTER.as_secs()
                        );
                        continue;
                    }
                    let code = api_code(&e);
                    if optional && matches!(code, Some(404) | Some(403)) {
                        tracing::info!(
                            resource,
                            "the API server does not serve this resource; treating it as empty"
                        );
                        cache.apply(wrap(Event::Init));
                        cache.apply(wrap(Event::InitDone));
                        break NOT_SERVED_RETRY;
                    }
                    if code == Some(410) && matches!(e, watcher::Error::WatchStartFailed(_)) {
                        tracing::info!(resource, "resourceVersion too old; relisting");
                        break Duration::ZERO;
                    }
                    tracing::warn!(resource, error = %e, "watch failed; retrying with backoff (the cache keeps its contents)");
                }
                None => break Duration::from_secs(1),
            }
        };
        drop(stream);
        tokio::time::sleep(pause).await;
    }
}

#[cfg(test)]
mod tests;
