//! Health state: when rules were last programmed, the oldest update still waiting, and
//! whether this node may receive traffic; plus the health-check services to serve.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

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
    /// queued for longer than the timeout. `last_updated` is the latest programming time.
    pub fn status(&self, now: SystemTime) -> (bool, Option<SystemTime>) {
        let f = self.families.lock().expect("health lock");
        let mut healthy = true;
        let mut last = None;
        for e in f.values() {
            if let Some(q) = e.oldest_pending {
                if now.duration_since(q).unwrap_or_default() > self.timeout {
                    healthy = false;
                }
            }
            last = last.max(e.last_updated);
        }
        (healthy, last)
    }
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
#[derive(Debug, Default)]
pub struct HealthChecks {
    services: Mutex<BTreeMap<u16, HealthCheckService>>,
}

impl HealthChecks {
    /// Replaces the whole set.
    pub fn update(&self, services: Vec<HealthCheckService>) {
        let mut s = self.services.lock().expect("health check lock");
        *s = services.into_iter().map(|h| (h.node_port, h)).collect();
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
