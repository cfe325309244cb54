//! The sync loop: keeps the kernel's rules equal to what the cluster says, through every
//! change and fault.
//!
//! Owns: when to sync and how much. Nothing is programmed before the source has its first
//! complete list; changes coalesce; at least `min_sync_period` separates syncs; a sync is
//! partial (only changed services re-rendered, [`Renderer::update`]) unless node-level
//! inputs changed, the hourly full resync is due, or the previous sync failed. Every sync
//! then takes the same step, [`apply::apply`]: diff a base against the target and commit.
//! A partial sync's base is the renderer's "before" of the touched objects; a full sync
//! diffs against what the kernel really holds, so the first one adopts existing rules
//! without a flush. A failed transaction is counted and retried as a full sync with
//! backoff, always within `sync_period`.
//!
//! Drift (others changing kproxy's tables): with a backend that watches the kernel's
//! change notifications ([`Syncer::watch_kernel`]), commits to other tables cost nothing,
//! and the chains and sets others touched are read back and repaired alone
//! ([`Renderer::objects`], [`Backend::dump_objects`]); a change to the table itself,
//! lost notifications, or a backend that cannot watch (the generation id moved) compare
//! both tables whole. The hourly full resync stays the safety net.
//!
//! Metrics and health are recorded per family as upstream's two proxiers would: a sync
//! covers both families when full, its changes' [`Families`] when partial, and records
//! its series for those only (docs/daemon.md, "Metrics per family").
//!
//! [`Syncer`] is generic over a [`Source`] (the informer cache, or a test's in-memory
//! one) and a [`Backend`] (netlink, or the fake): no kube client, no sockets of its own.
//! Conntrack cleanup and Kubernetes Events reach it as trait objects ([`FlowCleaner`],
//! [`WarningSink`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::apply::{self, Applied, Base, ChainDeletes, STALE_CHAIN_DELAY};
use crate::backend::{Backend, BackendError, Touched};
use crate::health::{HealthCheckBind, HealthChecks, ProxyHealth};
use crate::metrics::{family_label, Metrics};
use crate::model::build::{Objects, Settings};
use crate::model::{self, Model, ServiceKey, ServicePort, ServicePortName, Warning};
use crate::nft::tx::TableRef;
use crate::nft::{Family, Protocol, Ruleset};
use crate::render;
use crate::render::incremental::Renderer;

mod families;
mod healthcheck;
pub use families::Families;
use healthcheck::HealthCheckPort;

/// Upstream's full resync period.
pub const FULL_SYNC_PERIOD: Duration = Duration::from_secs(3600);
/// Services per model-building chunk in full syncs.
pub const BUILD_CHUNK: usize = 2048;
/// How often the kernel's nftables generation is compared with ours.
pub const DRIFT_CHECK_PERIOD: Duration = Duration::from_secs(1);

/// What changed in the cluster since the last [`Source::take_changes`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Services whose Service object or EndpointSlices changed (added, updated, deleted).
    pub services: BTreeSet<ServiceKey>,
    /// The families `services`' changes affect: a Service change the families of its
    /// ClusterIPs (before and after), an EndpointSlice change its address type's family.
    /// A partial sync records its series for these families only.
    pub families: Families,
    /// This node's Node object changed (addresses, labels, deletion).
    pub node: bool,
    /// A ServiceCIDR changed.
    pub service_cidrs: bool,
    /// `endpoints.kubernetes.io/last-change-trigger-time` of the EndpointSlice changes
    /// included, with the slice's family, for `network_programming_duration_seconds`
    /// (upstream records no other times there: Service creation is not measured).
    pub trigger_times: Vec<(Family, SystemTime)>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.services.is_empty() && !self.node && !self.service_cidrs
    }
}

/// Where the sync loop reads the cluster from.
pub trait Source: Send + Sync {
    /// True once the first complete list of Services and EndpointSlices is in.
    fn synced(&self) -> bool;
    /// The changes recorded since the last call (and forgets them).
    fn take_changes(&self) -> Changes;
    /// Objects to build the model from: the given services (all when `None`) with their
    /// EndpointSlices, plus this node's Node and every ServiceCIDR.
    fn objects(&self, only: Option<&BTreeSet<ServiceKey>>) -> Objects;
    /// Every service key held, sorted, when the source can list them: full syncs then
    /// build the model a chunk of services at a time, so the objects handed to
    /// `model::build` (owned Kubernetes types, several KB per service) never exist for
    /// all services at once.
    fn service_keys(&self) -> Option<Vec<ServiceKey>> {
        None
    }
}

/// Deletes stale UDP conntrack entries (the `conntrack` module over netlink; a recorder in
/// tests).
pub trait FlowCleaner: Send {
    /// Deletes UDP flows to the given service ports (cluster IP, external IPs, LB IPs,
    /// and NodePorts on `node_addresses`) whose reply source is not one of the port's
    /// serving endpoints, and, for ports that have endpoints, flows that were never
    /// DNATed. Returns the number of entries deleted.
    fn clean(
        &mut self,
        family: Family,
        ports: &[ServicePort],
        node_addresses: &[IpAddr],
    ) -> Result<usize, String>;
}

/// Reports skipped invalid objects (Kubernetes Events in the daemon).
pub trait WarningSink: Send + Sync {
    fn warn(&self, warning: &Warning);
}

/// Wakes the sync loop: the source calls [`Trigger::notify`] on every change.
pub struct Trigger {
    pending: Mutex<bool>,
    /// The backend's watch saw others change kproxy's tables (or lost track).
    kernel: AtomicBool,
    cv: Condvar,
    health: Arc<ProxyHealth>,
    metrics: Arc<Metrics>,
}

impl Trigger {
    pub fn new(health: Arc<ProxyHealth>, metrics: Arc<Metrics>) -> Arc<Trigger> {
        Arc::new(Trigger {
            pending: Mutex::new(false),
            kernel: AtomicBool::new(false),
            cv: Condvar::new(),
            health,
            metrics,
        })
    }

    /// A change is queued for `families` (upstream's `Sync()` of those families'
    /// proxiers): records the time for `/healthz` and
    /// `sync_proxy_rules_last_queued_timestamp_seconds` of those families only, and wakes
    /// the loop. [`Families::NONE`] just wakes it (as upstream's informer-synced and
    /// ServiceCIDR callbacks, which sync without queuing).
    pub fn notify(&self, families: Families) {
        queued(&self.health, &self.metrics, families, SystemTime::now());
        *self.pending.lock().expect("trigger lock") = true;
        self.cv.notify_all();
    }

    /// Wakes the loop without queuing anything (shutdown).
    pub fn wake(&self) {
        self.cv.notify_all();
    }

    /// The backend's watch has news of kproxy's tables: wakes the loop for a drift check
    /// (called from the watch's thread).
    pub fn kernel_changed(&self) {
        let _g = self.pending.lock().expect("trigger lock");
        self.kernel.store(true, Ordering::SeqCst);
        self.cv.notify_all();
    }

    fn take(&self) -> bool {
        std::mem::take(&mut *self.pending.lock().expect("trigger lock"))
    }

    fn take_kernel(&self) -> bool {
        self.kernel.swap(false, Ordering::SeqCst)
    }

    pub(crate) fn is_pending(&self) -> bool {
        *self.pending.lock().expect("trigger lock")
    }

    fn wait(&self, timeout: Duration) {
        let g = self.pending.lock().expect("trigger lock");
        if !*g && !self.kernel.load(Ordering::SeqCst) {
            let _ = self.cv.wait_timeout(g, timeout).expect("trigger lock");
        }
    }
}

/// Timing and kernel knobs of the loop.
#[derive(Clone, Debug)]
pub struct SyncConfig {
    pub min_sync_period: Duration,
    pub sync_period: Duration,
    pub full_sync_period: Duration,
    pub drift_check_period: Duration,
    /// Kernel < 6.2: delete unreferenced chains in a second transaction a moment later.
    pub defer_chain_deletes: bool,
    /// Services per model-building chunk in full syncs (see [`Source::service_keys`]).
    pub build_chunk: usize,
}

impl SyncConfig {
    /// The wait before retrying a failed sync: at least a second, at least
    /// minSyncPeriod; it doubles with each failure up to `sync_period`.
    fn first_backoff(&self) -> Duration {
        self.min_sync_period.max(Duration::from_secs(1))
    }

    pub fn new(min_sync_period: Duration, sync_period: Duration) -> SyncConfig {
        SyncConfig {
            min_sync_period,
            sync_period,
            full_sync_period: FULL_SYNC_PERIOD,
            drift_check_period: DRIFT_CHECK_PERIOD,
            defer_chain_deletes: apply::kernel_needs_deferred_chain_deletes(
                &apply::kernel_release(),
            ),
            build_chunk: BUILD_CHUNK,
        }
    }
}

/// What one sync did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub full: bool,
    pub services_changed: usize,
    /// Service ports programmed after the sync (all families).
    pub service_ports: usize,
    pub operations: usize,
    pub elements: usize,
    pub chains: usize,
    pub conntrack_deleted: usize,
    pub warnings: usize,
    pub elapsed: Duration,
}

/// Per-service-port facts kept between syncs, so partial syncs can update the
/// no-local-endpoints gauge, health checks and conntrack without the full model.
#[derive(Clone, Debug)]
struct PortFacts {
    no_local_internal: bool,
    no_local_external: bool,
    /// Boxed, as is `udp`: most ports have neither, and the map holds 50k+ entries.
    health_check: Option<Box<HealthCheckPort>>,
    /// Kept only for UDP ports: conntrack needs the old addresses when a service goes.
    udp: Option<Box<ServicePort>>,
}

impl PortFacts {
    fn of(sp: &ServicePort) -> PortFacts {
        let none_local = sp.local_endpoints.is_empty();
        PortFacts {
            no_local_internal: sp.internal_policy_local && none_local,
            no_local_external: sp.external_policy_local && sp.externally_accessible() && none_local,
            health_check: HealthCheckPort::of(sp).map(Box::new),
            udp: (sp.name.protocol == Protocol::Udp).then(|| Box::new(sp.clone())),
        }
    }
}

type PortKey = (Family, ServicePortName);

/// Every programmed port's facts, with running totals so a partial sync updates the gauges
/// and health checks in time proportional to what changed, not to the cluster.
#[derive(Debug, Default)]
struct Facts {
    ports: BTreeMap<PortKey, PortFacts>,
    /// Per family: ports, no-local (internal), no-local (external).
    totals: BTreeMap<Family, [i64; 3]>,
    health_checks: BTreeMap<PortKey, HealthCheckPort>,
    health_checks_changed: bool,
}

impl Facts {
    fn account(&mut self, family: Family, f: &PortFacts, sign: i64) {
        let t = self.totals.entry(family).or_default();
        t[0] += sign;
        t[1] += sign * f.no_local_internal as i64;
        t[2] += sign * f.no_local_external as i64;
    }

    fn insert(&mut self, key: PortKey, f: PortFacts) {
        self.remove(&key);
        self.account(key.0, &f, 1);
        if let Some(hc) = &f.health_check {
            self.health_checks.insert(key.clone(), (**hc).clone());
            self.health_checks_changed = true;
        }
        self.ports.insert(key, f);
    }

    fn remove(&mut self, key: &PortKey) -> Option<PortFacts> {
        let f = self.ports.remove(key)?;
        self.account(key.0, &f, -1);
        if self.health_checks.remove(key).is_some() {
            self.health_checks_changed = true;
        }
        Some(f)
    }

    fn len(&self) -> usize {
        self.ports.len()
    }

    /// The ports of these services (range lookups: ports sort by namespace, name first).
    fn keys_of(&self, services: &BTreeSet<ServiceKey>) -> Vec<PortKey> {
        let mut out = Vec::new();
        for family in [Family::V4, Family::V6] {
            for key in services {
                out.extend(
                    self.ports
                        .range((family, key.first_port())..)
                        .map(|(k, _)| k)
                        .take_while(|(f, n)| *f == family && key.owns(n))
                        .cloned(),
                );
            }
        }
        out
    }

    fn total(&self, family: Family, i: usize) -> i64 {
        self.totals.get(&family).map_or(0, |t| t[i])
    }
}

/// The sync loop's state.
pub struct Syncer<S: Source + ?Sized, B: Backend> {
    source: Arc<S>,
    backend: B,
    settings: Settings,
    config: SyncConfig,
    renderer: Renderer,
    metrics: Arc<Metrics>,
    health: Arc<ProxyHealth>,
    health_checks: Arc<HealthChecks>,
    cleaner: Option<Box<dyn FlowCleaner>>,
    warnings: Option<Box<dyn WarningSink>>,
    /// Called on the sync thread after each full sync (the daemon has its allocator
    /// return the full sync's freed peak to the OS there; see `app`).
    after_full_sync: Option<Box<dyn FnMut() + Send>>,
    /// Returns the host's addresses (for nodePortAddresses CIDRs and conntrack); `None`
    /// leaves `settings.local_addresses` as given.
    local_addresses: Option<Box<dyn Fn() -> Vec<IpAddr> + Send>>,
    facts: Facts,
    needs_full: bool,
    /// The sync under way is (or turned into) a full one: it covers both families.
    attempt_full: bool,
    last_sync: Option<Instant>,
    last_full: Option<Instant>,
    retry_at: Option<Instant>,
    backoff: Duration,
    generation: Option<u32>,
    /// The backend watches the kernel's change notifications ([`Syncer::watch_kernel`]):
    /// drift checks look only at what others touched, and no generation is polled.
    watching: bool,
    deferred: Vec<(TableRef, String)>,
    deferred_at: Option<Instant>,
    node_addresses: Vec<IpAddr>,
    /// Where each family's health-check servers listen (from the last model built).
    health_check_binds: BTreeMap<Family, HealthCheckBind>,
}

/// Why a sync failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// Counts one event in the series of each of `families`.
fn inc_per_family(counter: &prometheus::IntCounterVec, families: Families) {
    for family in families.iter() {
        counter.with_label_values(&[family_label(family)]).inc();
    }
}

/// Upstream's `Sync()` bookkeeping for `families`: the health's oldest queued update and
/// `sync_proxy_rules_last_queued_timestamp_seconds`.
fn queued(health: &ProxyHealth, metrics: &Metrics, families: Families, now: SystemTime) {
    for family in families.iter() {
        health.queued_update(family, now);
        metrics
            .last_queued_timestamp
            .with_label_values(&[family_label(family)])
            .set(unix_seconds(now));
    }
}

fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

impl<S: Source + ?Sized, B: Backend> Syncer<S, B> {
    pub fn new(
        source: Arc<S>,
        backend: B,
        settings: Settings,
        config: SyncConfig,
        metrics: Arc<Metrics>,
        health: Arc<ProxyHealth>,
        health_checks: Arc<HealthChecks>,
    ) -> Syncer<S, B> {
        let backoff = config.first_backoff();
        Syncer {
            source,
            backend,
            settings,
            config,
            renderer: Renderer::new(),
            metrics,
            health,
            health_checks,
            cleaner: None,
            warnings: None,
            local_addresses: None,
            after_full_sync: None,
            facts: Facts::default(),
            needs_full: true,
            attempt_full: false,
            last_sync: None,
            last_full: None,
            retry_at: None,
            backoff,
            generation: None,
            watching: false,
            deferred: Vec::new(),
            deferred_at: None,
            node_addresses: Vec::new(),
            health_check_binds: BTreeMap::new(),
        }
    }

    pub fn with_cleaner(mut self, cleaner: Box<dyn FlowCleaner>) -> Self {
        self.cleaner = Some(cleaner);
        self
    }

    pub fn with_warnings(mut self, sink: Box<dyn WarningSink>) -> Self {
        self.warnings = Some(sink);
        self
    }

    pub fn with_after_full_sync(mut self, f: Box<dyn FnMut() + Send>) -> Self {
        self.after_full_sync = Some(f);
        self
    }

    pub fn with_local_addresses(mut self, f: Box<dyn Fn() -> Vec<IpAddr> + Send>) -> Self {
        self.local_addresses = Some(f);
        self
    }

    pub fn backend(&mut self) -> &mut B {
        &mut self.backend
    }

    /// Has the backend watch the kernel's nftables change notifications, waking the loop
    /// through `trigger` when other programs touch kproxy's tables. `Ok(false)`: the
    /// backend cannot watch, and drift is found by comparing generation ids every
    /// `drift_check_period` instead.
    pub fn watch_kernel(&mut self, trigger: &Arc<Trigger>) -> Result<bool, BackendError> {
        let t = trigger.clone();
        self.watching = self.backend.watch(Box::new(move || t.kernel_changed()))?;
        Ok(self.watching)
    }

    /// Runs until `stop` is set: waits for changes, respects the periods, syncs, checks
    /// for drift. Blocking; the daemon gives it a thread of its own.
    pub fn run(&mut self, trigger: &Trigger, stop: &AtomicBool) {
        self.loop_started();
        let mut next_drift = Instant::now() + self.config.drift_check_period;
        while !stop.load(Ordering::SeqCst) {
            let now = Instant::now();
            if !self.source.synced() {
                trigger.wait(Duration::from_millis(100));
                continue;
            }
            let earliest = self
                .last_sync
                .map_or(now, |t| t + self.config.min_sync_period);
            let full_due = self.needs_full
                || self
                    .last_full
                    .is_none_or(|t| now >= t + self.config.full_sync_period);
            let retry_ok = self.retry_at.is_none_or(|t| now >= t);
            if (trigger.is_pending() || full_due) && now >= earliest && retry_ok {
                trigger.take();
                self.sync_logged(full_due);
                continue;
            }
            if let Some(at) = self.deferred_at {
                if now >= at {
                    self.delete_deferred();
                }
            }
            if trigger.take_kernel() || now >= next_drift {
                self.check_drift();
                next_drift = now + self.config.drift_check_period;
            }
            let mut wake = next_drift;
            if trigger.is_pending() {
                wake = wake.min(earliest);
            }
            if let Some(t) = self.retry_at {
                wake = wake.min(t);
            }
            if let Some(t) = self.deferred_at {
                wake = wake.min(t);
            }
            if let Some(t) = self.last_full {
                wake = wake.min(t + self.config.full_sync_period);
            }
            trigger.wait(wake.saturating_duration_since(Instant::now()));
        }
    }

    /// What upstream's `SyncLoop` does as it starts, in each family's proxier: the health
    /// counts the family as updated (nothing queued) and
    /// `sync_proxy_rules_last_queued_timestamp_seconds` is set, "as the informers are
    /// syncing". [`Syncer::run`] calls it first.
    pub fn loop_started(&self) {
        let now = SystemTime::now();
        for family in Families::BOTH.iter() {
            self.health.updated(family, now);
            self.metrics
                .last_queued_timestamp
                .with_label_values(&[family_label(family)])
                .set(unix_seconds(now));
        }
    }

    fn sync_logged(&mut self, full: bool) {
        match self.sync(full) {
            Ok(r) => {
                tracing::info!(
                    full = r.full,
                    services_changed = r.services_changed,
                    service_ports = r.service_ports,
                    operations = r.operations,
                    elements = r.elements,
                    chains = r.chains,
                    conntrack_deleted = r.conntrack_deleted,
                    warnings = r.warnings,
                    elapsed_ms = r.elapsed.as_secs_f64() * 1e3,
                    "synced"
                );
            }
            Err(e) => {
                tracing::error!(error = %e, retry_in_ms = self.backoff.as_millis() as u64, "sync failed; retrying as a full sync");
            }
        }
    }

    /// One sync now: full when `full` or when the renderer cannot update in place.
    /// On failure the next sync is full, after a backoff (doubling up to `sync_period`).
    ///
    /// Its series are recorded for the families it covers, as upstream's per-family
    /// proxiers would: both for a full sync, the changes' families for a partial one.
    pub fn sync(&mut self, full: bool) -> Result<SyncReport, SyncError> {
        let start = Instant::now();
        let changes = self.source.take_changes();
        self.metrics.service_changes_pending.set(0);
        self.metrics.endpoint_changes_pending.set(0);
        if let Some(f) = &self.local_addresses {
            let addrs = f();
            if self.settings.local_addresses.as_ref() != Some(&addrs) {
                self.settings.local_addresses = Some(addrs);
            }
        }
        let full = full || self.needs_full || changes.node || changes.service_cidrs;
        self.attempt_full = full;
        let result = if full {
            self.full_sync(&changes)
        } else {
            self.partial_sync(&changes)
        };
        self.last_sync = Some(Instant::now());
        // A partial sync that had to render everything counts as full.
        let covered = if self.attempt_full {
            Families::BOTH
        } else {
            changes.families
        };
        let elapsed = start.elapsed();
        match result {
            Ok(mut report) => {
                let now = SystemTime::now();
                report.elapsed = elapsed;
                report.services_changed = changes.services.len();
                self.record_success(&report, &changes, covered, now);
                self.record_duration(covered, report.full, elapsed);
                self.needs_full = false;
                self.retry_at = None;
                self.backoff = self.config.first_backoff();
                Ok(report)
            }
            Err(e) => {
                // As upstream: the failure and the attempt's duration are recorded; the
                // changes' trigger times are lost.
                inc_per_family(&self.metrics.sync_failures, covered);
                self.record_duration(covered, self.attempt_full, elapsed);
                self.needs_full = true;
                self.retry_at = Some(Instant::now() + self.backoff);
                self.backoff = (self.backoff * 2).min(self.config.sync_period);
                Err(e)
            }
        }
    }

    /// `sync_proxy_rules_duration_seconds` and its full or partial twin, for `families`
    /// (upstream's deferred observation: successful and failed syncs alike).
    fn record_duration(&self, families: Families, full: bool, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let kind = if full {
            &self.metrics.sync_full_duration
        } else {
            &self.metrics.sync_partial_duration
        };
        for family in families.iter() {
            let l = [family_label(family)];
            self.metrics
                .sync_duration
                .with_label_values(&l)
                .observe(secs);
            kind.with_label_values(&l).observe(secs);
        }
    }

    /// Upstream's end of a successful sync, per covered family: network programming
    /// latency of the trigger times of that family, the no-local-endpoints gauges, the
    /// health's update and `sync_proxy_rules_last_timestamp_seconds`.
    fn record_success(
        &mut self,
        r: &SyncReport,
        changes: &Changes,
        covered: Families,
        now: SystemTime,
    ) {
        for family in covered.iter() {
            let l = family_label(family);
            for (_, t) in changes.trigger_times.iter().filter(|(f, _)| *f == family) {
                if let Ok(d) = now.duration_since(*t) {
                    self.metrics
                        .network_programming_duration
                        .with_label_values(&[l])
                        .observe(d.as_secs_f64());
                }
            }
            for (i, policy) in [(1, "internal"), (2, "external")] {
                self.metrics
                    .no_local_endpoints
                    .with_label_values(&[l, policy])
                    .set(self.facts.total(family, i));
            }
            self.health.updated(family, now);
            self.metrics
                .last_sync_timestamp
                .with_label_values(&[l])
                .set(unix_seconds(now));
        }
        self.metrics
            .last_sync_kind
            .set(if r.full { 1.0 } else { 0.0 });
        for family in [Family::V4, Family::V6] {
            self.metrics
                .programmed_service_ports
                .with_label_values(&[family_label(family)])
                .set(self.facts.total(family, 0));
        }
        self.publish_health_checks();
    }

    /// The service keys of each model-building chunk: `only` as one chunk, or every
    /// service in chunks of `build_chunk` (one unfiltered chunk if the source cannot list
    /// its keys). Never empty.
    fn chunks(&self, only: Option<&BTreeSet<ServiceKey>>) -> Vec<Option<BTreeSet<ServiceKey>>> {
        if let Some(keys) = only {
            // Not `service_keys()`: listing every key costs ~5 ms at 50k services.
            return vec![Some(keys.clone())];
        }
        match self.source.service_keys() {
            None => vec![None],
            Some(mut keys) => {
                keys.sort();
                let mut chunks: Vec<Option<BTreeSet<ServiceKey>>> = keys
                    .chunks(self.config.build_chunk.max(1))
                    .map(|c| Some(c.iter().cloned().collect()))
                    .collect();
                if chunks.is_empty() {
                    chunks.push(Some(BTreeSet::new()));
                }
                chunks
            }
        }
    }

    /// The model, a chunk at a time. Services only ever look at their own slices (and
    /// the node-level inputs every chunk shares), so the chunks, in key order, are the
    /// model a single build would give, split. Invalid inputs met go to `warnings`.
    fn model_chunks<'s>(
        &'s mut self,
        only: Option<&BTreeSet<ServiceKey>>,
        warnings: &'s mut Vec<Warning>,
    ) -> impl Iterator<Item = Model> + 's {
        let mut chunks = self.chunks(only).into_iter();
        let mut first = true;
        std::iter::from_fn(move || {
            let chunk = chunks.next()?;
            let objects = self.source.objects(chunk.as_ref());
            let (m, w) = model::build(&objects, &self.settings);
            if std::mem::take(&mut first) {
                let eligible =
                    model::NodeFacts::of(&objects.nodes, &self.settings.hostname).eligible;
                self.health.set_node_eligible(eligible);
                self.node_addresses = node_addresses(&m, &self.settings);
                self.health_check_binds = healthcheck::binds(&m, &self.settings);
            }
            warnings.extend(w);
            Some(m)
        })
    }

    /// Logs, counts and reports (Events) invalid inputs once each; returns how many.
    fn report_warnings(&mut self, mut warnings: Vec<Warning>) -> usize {
        warnings.sort();
        warnings.dedup();
        for w in &warnings {
            tracing::warn!(object = %w.object, reason = %w.reason, "skipping invalid input");
            let kind = w.object.split(' ').next().unwrap_or("Unknown");
            self.metrics
                .invalid_objects
                .with_label_values(&[kind])
                .inc();
            if let Some(sink) = &self.warnings {
                sink.warn(w);
            }
        }
        warnings.len()
    }

    /// The model of `only` (partial syncs): one chunk.
    fn build(&mut self, only: &BTreeSet<ServiceKey>) -> (Model, usize) {
        let mut warnings = Vec::new();
        let model = self
            .model_chunks(Some(only), &mut warnings)
            .next()
            .unwrap_or_default();
        let n = self.report_warnings(warnings);
        (model, n)
    }

    fn full_sync(&mut self, _changes: &Changes) -> Result<SyncReport, SyncError> {
        self.attempt_full = true;
        // The model is built and rendered a chunk at a time and each chunk dropped once
        // rendered, keeping what later partial syncs need of it: the commit is the sync's
        // memory peak, and the whole model would add ~110 MiB to the render's (50k × 10).
        let mut facts = Facts::default();
        let mut udp: BTreeMap<Family, Vec<ServicePort>> = BTreeMap::new();
        let mut warnings = Vec::new();
        let mut renderer = std::mem::take(&mut self.renderer);
        // At start (or after the renderer was reset) the kernel may hold what a previous
        // kproxy programmed: read it first and take over its endpoint lists (blocks, and
        // the affinity lists' constants and endpoint ids: render::affinity), so that a
        // restart rewrites nothing that did not change and keeps every client's
        // endpoint; the diff then uses that read.
        let base = if renderer.is_fresh() {
            let kernel = match self.read_for_adoption() {
                Ok(k) => k,
                Err(e) => {
                    self.renderer = renderer;
                    return Err(e.into());
                }
            };
            renderer.adopt(&kernel);
            Base::Declarations(kernel.without_elements())
        } else {
            Base::Kernel
        };
        let ruleset =
            renderer.full_chunked(self.model_chunks(None, &mut warnings).inspect(|model| {
                for fm in &model.families {
                    for sp in &fm.services {
                        facts.insert((fm.settings.family, sp.name.clone()), PortFacts::of(sp));
                        if sp.name.protocol == Protocol::Udp {
                            udp.entry(fm.settings.family).or_default().push(sp.clone());
                        }
                    }
                }
            }));
        self.renderer = renderer;
        let warnings = self.report_warnings(warnings);
        let applied = self.commit(base, ruleset, ChainDeletes::AfterDelay)?;
        self.deferred.clear();
        self.deferred_at = None;
        self.last_full = Some(Instant::now());
        self.facts = facts;
        let mut deleted = 0;
        for (family, ports) in udp {
            deleted += self.clean_conntrack(family, &ports);
        }
        if let Some(f) = self.after_full_sync.as_mut() {
            f();
        }
        Ok(SyncReport {
            full: true,
            service_ports: self.facts.len(),
            operations: applied.stats.ops,
            elements: applied.stats.elements_added + applied.stats.elements_deleted,
            chains: applied.stats.chains_added
                + applied.stats.chains_flushed
                + applied.stats.chains_deleted,
            conntrack_deleted: deleted,
            warnings,
            ..SyncReport::default()
        })
    }

    /// What [`Renderer::adopt`] reads of kproxy's tables: every declaration, chain and
    /// rule, and the elements of only the sets adoption looks at
    /// ([`render::adoption_reads_elements`]: the affinity lists' live endpoints). The
    /// rest of the elements (at 50k × 10, three quarters of the tables) are read set by
    /// set by the diff, so a restart's peak is no higher than a cold start's.
    fn read_for_adoption(&mut self) -> Result<Ruleset, BackendError> {
        let mut kernel = self.backend.dump_declarations()?;
        for t in &mut kernel.tables {
            let tref = TableRef::new(t.family, t.name.clone());
            for s in t.sets.values_mut() {
                if render::adoption_reads_elements(&s.name) {
                    s.elements = self.backend.set_elements(&tref, s)?;
                }
            }
        }
        Ok(kernel)
    }

    fn partial_sync(&mut self, changes: &Changes) -> Result<SyncReport, SyncError> {
        if changes.services.is_empty() {
            return Ok(SyncReport {
                service_ports: self.facts.len(),
                ..SyncReport::default()
            });
        }
        let (model, warnings) = self.build(&changes.services);
        let Some(partial) = self.renderer.update(&model, &changes.services) else {
            // Node-level settings moved: render everything.
            return self.full_sync(changes);
        };
        let applied = self.commit(
            Base::Given(partial.before),
            partial.after,
            ChainDeletes::Return,
        )?;
        let stats = applied.stats;

        // Update the per-port facts of the changed services, remembering UDP ports that
        // went away for conntrack.
        let mut gone: BTreeMap<Family, Vec<ServicePort>> = BTreeMap::new();
        let changed_keys = self.facts.keys_of(&changes.services);
        for key in changed_keys {
            let f = self.facts.remove(&key).expect("listed");
            if let Some(mut sp) = f.udp {
                sp.cluster_endpoints.clear();
                sp.local_endpoints.clear();
                sp.endpoints.clear();
                sp.has_endpoints = false;
                gone.entry(key.0).or_default().push(*sp);
            }
        }
        let mut deleted = 0;
        for fm in &model.families {
            let mut udp = Vec::new();
            for sp in &fm.services {
                self.facts
                    .insert((fm.settings.family, sp.name.clone()), PortFacts::of(sp));
                if sp.name.protocol == Protocol::Udp {
                    udp.push(sp.clone());
                }
            }
            let mut all = gone.remove(&fm.settings.family).unwrap_or_default();
            all.retain(|old| !udp.iter().any(|n| n.name == old.name));
            all.extend(udp);
            deleted += self.clean_conntrack(fm.settings.family, &all);
        }
        Ok(SyncReport {
            full: false,
            service_ports: self.facts.len(),
            operations: stats.ops,
            elements: stats.elements_added + stats.elements_deleted,
            chains: stats.chains_added + stats.chains_flushed + stats.chains_deleted,
            conntrack_deleted: deleted,
            warnings,
            ..SyncReport::default()
        })
    }

    /// The sync step after rendering, the same for every kind of sync: diffs `target`
    /// against `base`, commits ([`apply::apply`]), and records the transaction's size, the
    /// kernel's time, the chains left to delete later and the generation it left.
    /// `deferred` says what to do with those chains on kernels < 6.2.
    fn commit(
        &mut self,
        base: Base,
        target: Ruleset,
        deferred: ChainDeletes,
    ) -> Result<Applied, BackendError> {
        let opts = apply::Options {
            chain_deletes: ChainDeletes::for_kernel(self.config.defer_chain_deletes, deferred),
            dry_run: false,
        };
        let mut applied = apply::apply(&mut self.backend, base, target, &opts)?;
        let ops = applied.report.messages;
        if ops > 0 {
            for family in [Family::V4, Family::V6] {
                let l = [family_label(family)];
                self.metrics
                    .transaction_operations
                    .with_label_values(&l)
                    .observe(ops as f64);
                self.metrics
                    .kernel_commit_duration
                    .with_label_values(&l)
                    .observe(applied.commit_elapsed.as_secs_f64());
            }
        }
        if !applied.deferred.is_empty() {
            self.deferred.append(&mut applied.deferred);
            self.deferred_at = Some(Instant::now() + STALE_CHAIN_DELAY);
        }
        if !self.watching {
            self.generation = self.backend_generation();
        }
        Ok(applied)
    }

    fn clean_conntrack(&mut self, family: Family, ports: &[ServicePort]) -> usize {
        let Some(cleaner) = self.cleaner.as_mut() else {
            return 0;
        };
        if ports.is_empty() {
            return 0;
        }
        let l = [family_label(family)];
        let start = Instant::now();
        let addrs: Vec<IpAddr> = self
            .node_addresses
            .iter()
            .copied()
            .filter(|a| Family::of(a) == family)
            .collect();
        match cleaner.clean(family, ports, &addrs) {
            Ok(n) => {
                self.metrics
                    .conntrack_reconcile_duration
                    .with_label_values(&l)
                    .observe(start.elapsed().as_secs_f64());
                self.metrics
                    .conntrack_deleted_entries
                    .with_label_values(&l)
                    .inc_by(n as u64);
                n
            }
            Err(e) => {
                tracing::warn!(error = %e, family = family_label(family), "conntrack cleanup failed");
                0
            }
        }
    }

    fn delete_deferred(&mut self) {
        self.deferred_at = None;
        let chains = std::mem::take(&mut self.deferred);
        let failed: Families = chains.iter().map(|(t, _)| t.family).collect();
        if let Err(e) = apply::delete_chains(&mut self.backend, chains) {
            tracing::warn!(error = %e, "deleting stale chains failed; the next full sync retries");
            inc_per_family(&self.metrics.cleanup_failures, failed);
            self.needs_full = true;
        }
        if !self.watching {
            self.generation = self.backend_generation();
        }
    }

    fn backend_generation(&mut self) -> Option<u32> {
        self.backend.nft_generation().ok().flatten()
    }

    /// Looks for changes others made to kproxy's tables and repairs them. Watching
    /// ([`Syncer::watch_kernel`]): what the backend saw since the last check; commits to
    /// other tables cost nothing, chains and sets others touched are read back and
    /// repaired alone ([`Syncer::repair_objects`]), and only a change to the table itself,
    /// to something kproxy does not read back, or lost notifications compare everything
    /// ([`Syncer::full_check`]). Not watching: the generation id after kproxy's last commit
    /// against the kernel's, and everything compared when it moved.
    fn check_drift(&mut self) {
        let Some(seen) = self.backend.drift() else {
            return self.check_generation();
        };
        for (tables, n) in [("kproxy", seen.kproxy_tables), ("other", seen.other_tables)] {
            self.metrics
                .foreign_commits
                .with_label_values(&[tables])
                .inc_by(n);
        }
        if self.last_full.is_none() {
            // The first full sync reads what the kernel holds anyway.
            return;
        }
        let by = seen
            .touched
            .by
            .iter()
            .cloned()
            .collect::<Vec<_>>()
            .join(", ");
        if let Some(why) = seen.lost.as_deref().or(seen.touched.whole.as_deref()) {
            self.full_check(why, &by);
        } else if !seen.touched.is_empty() {
            self.repair_objects(seen.touched, &by);
        }
    }

    /// The drift check without a watch: compares the kernel's nftables generation with
    /// the one after kproxy's last commit, and everything when it moved.
    fn check_generation(&mut self) {
        let Some(ours) = self.generation else {
            return;
        };
        let Some(now) = self.backend_generation() else {
            return;
        };
        if now == ours || self.last_full.is_none() {
            return;
        }
        self.full_check("the nftables generation moved", "");
    }

    /// Diffs both of kproxy's tables, read back whole, against the renderer's ruleset and
    /// repairs the difference: the check when nothing says what changed (a dump and a
    /// render of everything: ~5 s at 50k services).
    fn full_check(&mut self, why: &str, by: &str) {
        self.metrics.drift_checks.with_label_values(&["full"]).inc();
        let start = Instant::now();
        let ruleset = self.renderer.ruleset();
        match self.commit(Base::Kernel, ruleset, ChainDeletes::AfterDelay) {
            Ok(applied) => self.log_repair(&applied, start, "full", why, by),
            Err(e) => {
                tracing::error!(error = %e, "repairing kproxy's tables failed; retrying as a full sync");
                self.needs_full = true;
            }
        }
    }

    /// Reads back only the chains and sets others touched, diffs them against the
    /// renderer's version of only those objects, and commits the difference: work in
    /// proportion to what drifted. Anything it cannot settle (kproxy's table gone, a
    /// family not rendered, a read or a commit that fails) falls back to
    /// [`Syncer::full_check`].
    fn repair_objects(&mut self, touched: Touched, by: &str) {
        self.metrics
            .drift_checks
            .with_label_values(&["objects"])
            .inc();
        let start = Instant::now();
        let mut target = Ruleset::default();
        for family in touched.families() {
            let (chains, sets) = (touched.names(family, true), touched.names(family, false));
            match self.renderer.objects(family, &chains, &sets) {
                Some(t) => target.tables.push(t),
                None => return self.full_check("a table kproxy does not render was touched", by),
            }
        }
        let rendered = start.elapsed();
        let mut kernel = match self.backend.dump_objects(&touched) {
            Ok(k) => k,
            Err(e) => {
                tracing::warn!(error = %e, "reading back the objects others touched failed");
                return self.full_check("reading back the touched objects failed", by);
            }
        };
        let read = start.elapsed() - rendered;
        for t in &target.tables {
            match kernel.tables.iter_mut().find(|k| k.family == t.family) {
                // The table's own attributes are not compared here: a change to them is
                // notified as the table's and compared in full.
                Some(k) => k.comment = t.comment.clone(),
                None => return self.full_check("kproxy's table is gone", by),
            }
        }
        let why = format!(
            "{} chain(s), {} set(s) touched (render {:.0} ms, read back {:.0} ms)",
            touched.chains.len(),
            touched.sets.len(),
            rendered.as_secs_f64() * 1e3,
            read.as_secs_f64() * 1e3
        );
        match self.commit(Base::Given(kernel), target, ChainDeletes::AfterDelay) {
            Ok(applied) => self.log_repair(&applied, start, "objects", &why, by),
            Err(e) => {
                tracing::warn!(error = %e, "repairing the objects others touched failed");
                self.full_check("the targeted repair failed", by);
            }
        }
    }

    /// Counts and logs a drift repair that changed something.
    fn log_repair(&self, applied: &Applied, start: Instant, scope: &str, why: &str, by: &str) {
        let elapsed_ms = start.elapsed().as_secs_f64() * 1e3;
        if applied.stats.ops > 0 {
            self.metrics.drift_repairs.inc();
            tracing::warn!(
                operations = applied.stats.ops,
                elapsed_ms,
                scope,
                reason = why,
                by,
                "kproxy's tables were changed by someone else; repaired"
            );
        } else {
            tracing::debug!(
                elapsed_ms,
                scope,
                reason = why,
                by,
                "drift check: nothing to repair"
            );
        }
    }
}

/// The addresses NodePorts answer on in the model (for conntrack): the explicit list,
/// or every local address.
fn node_addresses(model: &Model, settings: &Settings) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for fm in &model.families {
        match &fm.settings.nodeport_ips {
            model::NodePortIps::Ips(ips) => out.extend(ips.iter().copied()),
            model::NodePortIps::All => out.extend(
                settings
                    .local_addresses
                    .iter()
                    .flatten()
                    .copied()
                    .filter(|a| Family::of(a) == fm.settings.family && !a.is_loopback()),
            ),
        }
    }
    out
}

#[cfg(test)]
mod tests;
