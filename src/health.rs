//! Health state: when rules were last programmed, the oldest update still waiting, and
//! whether this node may receive traffic; plus the health-check services to serve, per
//! family, where each family's health-check servers listen, and who hears of a port that
//! could not be opened.
//!
//! Owns: the shared state between the sync loop (which records) and the HTTP servers
//! (which report): `sync` updates it, [`crate::admin`] serves it, neither imports the other.
//!
//! Must not: open sockets or know about HTTP (that is `admin`), or decide when rules are
//! programmed (that is `sync`).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use crate::nft::Family;

#[derive(Debug, Default)]
struct FamilyHealth {
    last_updated: Option<SystemTime>,
    oldest_pending: Option<SystemTime>,
}

/// Upstream's proxier health: healthy while no queued update has waited longer than the
/// timeout (2 × syncPeriod) in any family.
#[derive(Debug)]
pub struct ProxyHealth {
    timeout: Duration,
    families: Mutex<BTreeMap<Family, FamilyHealth>>,
    node_eligible: Mutex<bool>,
}

impl ProxyHealth {
    pub fn new(timeout: Duration) -> ProxyHealth {
        ProxyHealth {
            timeout,
            families: Mutex::new(BTreeMap::new()),
            node_eligible: Mutex::new(true),
        }
    }

    /// A change is waiting to be programmed (keeps the oldest such time).
    pub fn queued_update(&self, family: Family, now: SystemTime) {
        let mut f = self.families.lock().expect("health lock");
        let e = f.entry(family).or_default();
        e.oldest_pending.get_or_insert(now);
    }

    /// Rules were programmed: nothing is waiting any more.
    pub fn updated(&self, family: Family, now: SystemTime) {
        let mut f = self.families.lock().expect("health lock");
        let e = f.entry(family).or_default();
        e.oldest_pending = None;
        e.last_updated = Some(now);
    }

    /// Whether the node exists and is not being deleted (only `/healthz` looks at it).
    pub fn set_node_eligible(&self, eligible: bool) {
        *self.node_eligible.lock().expect("health lock") = eligible;
    }

    pub fn node_eligible(&self) -> bool {
        *self.node_eligible.lock().expect("health lock")
    }

    /// `(healthy, last_updated)` at `now`: healthy unless some family has an update
    /// queued for at least the timeout. `last_updated` is the latest programming time.
    ///
    /// As upstream, a family that has never been programmed counts as healthy (the proxy
    /// is starting up: the first sync waits for the informers' first complete list), so
    /// `/livez` does not get a slow-starting proxy restarted.
    pub fn status(&self, now: SystemTime) -> (bool, Option<SystemTime>) {
        let s = self.snapshot(now);
        (s.healthy, s.last_updated)
    }

    /// The health of each family at `now` (what `/healthz`'s `status` field reports).
    pub fn snapshot(&self, now: SystemTime) -> HealthSnapshot {
        let f = self.families.lock().expect("health lock");
        let mut out = HealthSnapshot {
            healthy: true,
            last_updated: None,
            families: Vec::new(),
        };
        for (family, e) in f.iter() {
            // Only families that have been programmed at least once are judged.
            let Some(last) = e.last_updated else { continue };
            let late = e
                .oldest_pending
                .is_some_and(|q| now.duration_since(q).unwrap_or_default() >= self.timeout);
            out.healthy &= !late;
            out.last_updated = out.last_updated.max(Some(last));
            out.families.push(FamilyStatus {
                family: *family,
                last_updated: last,
                healthy: !late,
            });
        }
        out
    }

    /// The timeout (2 × syncPeriod in the daemon).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

/// [`ProxyHealth::snapshot`]: the proxy's health, and each programmed family's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthSnapshot {
    /// No programmed family has an update queued for longer than the timeout.
    pub healthy: bool,
    /// The latest time any family was programmed (`None` before the first sync).
    pub last_updated: Option<SystemTime>,
    /// Families that have been programmed at least once, in [`Family`] order.
    pub families: Vec<FamilyStatus>,
}

/// One family's part of a [`HealthSnapshot`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FamilyStatus {
    pub family: Family,
    pub last_updated: SystemTime,
    pub healthy: bool,
}

/// One eTP Local LoadBalancer service's health check in one family: an HTTP server on
/// `node_port` answering with the number of local endpoints. A dual-stack service has
/// one per family, on the same port (upstream runs one server manager per proxier).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct HealthCheckService {
    pub family: Family,
    pub namespace: String,
    pub name: String,
    pub node_port: u16,
    /// Local ready endpoints of this family: distinct IPs across the service's ports,
    /// terminating ones left out (upstream's `LocalReadyEndpoints`).
    pub local_endpoints: usize,
}

/// Where one family's health-check servers listen (upstream's `nodePortAddresses`
/// reading for them).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum HealthCheckBind {
    /// Every address of the family: `0.0.0.0`, or `[::]` v6-only (no CIDR of the family
    /// in nodePortAddresses, or the family has no primary node IP).
    #[default]
    All,
    /// Exactly these local addresses; none means no listener in this family.
    Ips(Vec<IpAddr>),
}

/// A health-check port that could not be opened (the servers retry it at the next
/// [`HealthChecks::update`] or [`HealthChecks::retry`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheckBindFailure {
    pub family: Family,
    pub namespace: String,
    pub name: String,
    pub port: u16,
    /// The listen error, worded as Go's (`listen tcp4 0.0.0.0:32000: bind: address
    /// already in use`).
    pub error: String,
}

impl HealthCheckBindFailure {
    /// Upstream's Event note: `node N failed to start healthcheck "ns/name" on port P: E`.
    pub fn note(&self, node: &str) -> String {
        let service = format!("{}/{}", self.namespace, self.name);
        format!(
            "node {node} failed to start healthcheck {} on port {}: {}",
            serde_json::to_string(&service).expect("string serializes"),
            self.port,
            self.error
        )
    }
}

/// Told about every failed health-check bind (the daemon turns it into an Event).
pub type BindFailureSink = Box<dyn Fn(&HealthCheckBindFailure) + Send + Sync>;

type CheckKey = (Family, u16);

/// The set of health-check services the servers should answer for, per family, and
/// where each family's servers listen.
///
/// Every [`HealthChecks::update`] (and [`HealthChecks::retry`], and a changed
/// [`HealthChecks::set_bind`]) bumps a generation number that
/// [`HealthChecks::subscribe`]rs see, so the server manager opens and closes ports (and
/// retries ports it could not bind) without polling.
pub struct HealthChecks {
    services: Mutex<BTreeMap<CheckKey, HealthCheckService>>,
    binds: Mutex<BTreeMap<Family, HealthCheckBind>>,
    on_bind_failure: Mutex<Option<BindFailureSink>>,
    generation: watch::Sender<u64>,
}

impl std::fmt::Debug for HealthChecks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthChecks")
            .field("services", &self.services)
            .field("binds", &self.binds)
            .finish_non_exhaustive()
    }
}

impl Default for HealthChecks {
    fn default() -> Self {
        HealthChecks {
            services: Mutex::new(BTreeMap::new()),
            binds: Mutex::new(BTreeMap::new()),
            on_bind_failure: Mutex::new(None),
            generation: watch::channel(0).0,
        }
    }
}

impl HealthChecks {
    /// Replaces the whole set and wakes the servers' reconciler (even when nothing
    /// changed: that is when ports that failed to bind are retried).
    pub fn update(&self, services: Vec<HealthCheckService>) {
        let mut s = self.services.lock().expect("health check lock");
        *s = services
            .into_iter()
            .map(|h| ((h.family, h.node_port), h))
            .collect();
        // Woken under the lock: a reconciler's [`HealthChecks::snapshot`] sees the new
        // set and this wake-up together, or neither (no pass over a set already seen).
        self.generation.send_modify(|g| *g += 1);
    }

    /// Wakes the reconciler without changing the set: ports that could not be bound are
    /// tried again (the sync loop calls it after every successful sync, as upstream
    /// retries at every sync).
    pub fn retry(&self) {
        let _set = self.services.lock().expect("health check lock");
        self.generation.send_modify(|g| *g += 1);
    }

    /// Where `family`'s servers listen from now on (open ones move when it changes).
    pub fn set_bind(&self, family: Family, bind: HealthCheckBind) {
        // Lock order: services, then binds (as in `snapshot`).
        let _set = self.services.lock().expect("health check lock");
        let mut b = self.binds.lock().expect("health check lock");
        let old = b.insert(family, bind.clone());
        if old.unwrap_or_default() != bind {
            self.generation.send_modify(|g| *g += 1);
        }
    }

    /// Where `family`'s servers listen ([`HealthCheckBind::All`] until set).
    pub fn bind(&self, family: Family) -> HealthCheckBind {
        self.binds
            .lock()
            .expect("health check lock")
            .get(&family)
            .cloned()
            .unwrap_or_default()
    }

    /// Who hears of failed binds (replaces the previous sink).
    pub fn set_bind_failure_sink(&self, sink: BindFailureSink) {
        *self.on_bind_failure.lock().expect("health check lock") = Some(sink);
    }

    /// A port could not be opened: tells the sink, if any.
    pub fn report_bind_failure(&self, failure: &HealthCheckBindFailure) {
        if let Some(sink) = self
            .on_bind_failure
            .lock()
            .expect("health check lock")
            .as_ref()
        {
            sink(failure);
        }
    }

    /// A receiver that changes after every [`HealthChecks::update`].
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// What a reconciler must serve now, and `seen` marked as having seen every wake-up
    /// up to it, atomically: a change after this call wakes `seen` again, a change before
    /// it is in what this returns (so one change never costs two passes, nor a failing
    /// bind two reports).
    pub fn snapshot(
        &self,
        seen: &mut watch::Receiver<u64>,
    ) -> (Vec<HealthCheckService>, BTreeMap<Family, HealthCheckBind>) {
        let set = self.services.lock().expect("health check lock");
        let binds = self.binds.lock().expect("health check lock");
        seen.borrow_and_update();
        (set.values().cloned().collect(), binds.clone())
    }

    pub fn get(&self, family: Family, port: u16) -> Option<HealthCheckService> {
        self.services
            .lock()
            .expect("health check lock")
            .get(&(family, port))
            .cloned()
    }

    /// The (family, port) of every service in the set.
    pub fn ports(&self) -> Vec<(Family, u16)> {
        self.services
            .lock()
            .expect("health check lock")
            .keys()
            .copied()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn late_at_exactly_the_timeout_and_only_once_programmed() {
        let h = ProxyHealth::new(Duration::from_secs(60));
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        h.queued_update(Family::V4, t0);
        // Never programmed: starting up, healthy however old the queued update.
        assert_eq!(h.status(t0 + Duration::from_secs(3600)), (true, None));
        h.updated(Family::V4, t0);
        h.queued_update(Family::V4, t0 + Duration::from_secs(1));
        h.queued_update(Family::V4, t0 + Duration::from_secs(30)); // keeps the oldest
        assert_eq!(h.status(t0 + Duration::from_secs(60)), (true, Some(t0)));
        assert_eq!(h.status(t0 + Duration::from_secs(61)), (false, Some(t0)));
        let s = h.snapshot(t0 + Duration::from_secs(61));
        assert_eq!(
            s.families,
            vec![FamilyStatus {
                family: Family::V4,
                last_updated: t0,
                healthy: false
            }]
        );
        h.updated(Family::V4, t0 + Duration::from_secs(62));
        assert!(h.status(t0 + Duration::from_secs(1000)).0);
    }

    #[test]
    fn every_update_is_announced() {
        let c = HealthChecks::default();
        let rx = c.subscribe();
        assert!(!rx.has_changed().unwrap());
        c.update(vec![]);
        assert!(rx.has_changed().unwrap());
        assert_eq!(*rx.borrow(), 1);
    }
}
