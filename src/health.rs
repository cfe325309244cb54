//! Health state: when rules were last programmed, the oldest update still waiting, and
//! whether this node may receive traffic; plus the health-check services to serve.
//!
//! Owns: the shared state between the sync loop (which records) and the HTTP servers
//! (which report): `sync` updates it, [`crate::admin`] serves it, neither imports the other.
//!
//! Must not: open sockets or know about HTTP (that is `admin`), or decide when rules are
//! programmed (that is `sync`).

use std::collections::BTreeMap;
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

/// One eTP Local LoadBalancer service's health check: an HTTP server on `node_port`
/// answering with the number of local endpoints.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct HealthCheckService {
    pub namespace: String,
    pub name: String,
    pub node_port: u16,
    pub local_endpoints: usize,
}

/// The set of health-check services the servers should answer for.
///
/// Every [`HealthChecks::update`] bumps a generation number that
/// [`HealthChecks::subscribe`]rs see, so the server manager opens and closes ports (and
/// retries ports it could not bind) without polling.
#[derive(Debug)]
pub struct HealthChecks {
    services: Mutex<BTreeMap<u16, HealthCheckService>>,
    generation: watch::Sender<u64>,
}

impl Default for HealthChecks {
    fn default() -> Self {
        HealthChecks {
            services: Mutex::new(BTreeMap::new()),
            generation: watch::channel(0).0,
        }
    }
}

impl HealthChecks {
    /// Replaces the whole set and wakes the servers' reconciler (even when nothing
    /// changed: that is when ports that failed to bind are retried).
    pub fn update(&self, services: Vec<HealthCheckService>) {
        {
            let mut s = self.services.lock().expect("health check lock");
            *s = services.into_iter().map(|h| (h.node_port, h)).collect();
        }
        self.generation.send_modify(|g| *g += 1);
    }

    /// A receiver that changes after every [`HealthChecks::update`].
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Every service in the set, by port.
    pub fn services(&self) -> Vec<HealthCheckService> {
        self.services
            .lock()
            .expect("health check lock")
            .values()
            .cloned()
            .collect()
    }

    pub fn get(&self, port: u16) -> Option<HealthCheckService> {
        self.services
            .lock()
            .expect("health check lock")
            .get(&port)
            .cloned()
    }

    pub fn ports(&self) -> Vec<u16> {
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
