//! The sync loop's part of the health-check NodePorts: which services each family
//! serves, the count each answers with, and where each family listens, published to
//! [`HealthChecks`] after every successful sync (as upstream's proxiers call
//! `SyncServices`/`SyncEndpoints` after each successful transaction).
//!
//! Owns: upstream's per-family reading. A service is served in a family when it has a
//! port of that family with a `healthCheckNodePort`; its count is the family's local
//! ready endpoints, distinct IPs across the service's ports, terminating ones left out
//! (`LocalReadyEndpoints`). A family listens on the addresses nodePortAddresses selects
//! for it, as upstream's `newServiceHealthServer` reads them: `primary` → the node's
//! primary IP of the family if it is on a local interface; CIDRs → every local IP of the
//! family inside them (loopback included: only NodePort rules leave it out); no CIDR of
//! the family, or no primary IP → every address of the family.
//!
//! Must not: open sockets (that is `admin`), or report failures (the servers do).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use super::{PortKey, Source, Syncer};
use crate::backend::Backend;
use crate::health::{HealthCheckBind, HealthCheckService};
use crate::model::build::{NodePortAddresses, Settings};
use crate::model::{FamilySettings, Model, NodePortIps, ServicePort};
use crate::nft::Family;

/// One service port's part of its service's health check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct HealthCheckPort {
    pub(super) node_port: u16,
    /// Local ready endpoint IPs of this port, sorted and distinct.
    pub(super) local_ready: Vec<IpAddr>,
}

impl HealthCheckPort {
    /// `None` for ports of services without a health check.
    pub(super) fn of(sp: &ServicePort) -> Option<HealthCheckPort> {
        if sp.health_check_node_port == 0 {
            return None;
        }
        let local_ready: BTreeSet<IpAddr> = sp
            .endpoints
            .iter()
            .filter(|e| e.local && e.ready)
            .map(|e| e.ip)
            .collect();
        Some(HealthCheckPort {
            node_port: sp.health_check_node_port,
            local_ready: local_ready.into_iter().collect(),
        })
    }
}

/// One [`HealthCheckService`] per family and service of `ports`, counting the distinct
/// local ready IPs of all its ports.
pub(super) fn services(ports: &BTreeMap<PortKey, HealthCheckPort>) -> Vec<HealthCheckService> {
    let mut by_service: BTreeMap<(Family, &str, &str), (u16, BTreeSet<IpAddr>)> = BTreeMap::new();
    for ((family, name), hc) in ports {
        let e = by_service
            .entry((*family, &name.namespace, &name.name))
            .or_insert((hc.node_port, BTreeSet::new()));
        e.1.extend(hc.local_ready.iter().copied());
    }
    by_service
        .into_iter()
        .map(
            |((family, namespace, name), (node_port, ips))| HealthCheckService {
                family,
                namespace: namespace.to_string(),
                name: name.to_string(),
                node_port,
                local_endpoints: ips.len(),
            },
        )
        .collect()
}

/// Where each family of `model` listens.
pub(super) fn binds(model: &Model, settings: &Settings) -> BTreeMap<Family, HealthCheckBind> {
    model
        .families
        .iter()
        .map(|fm| (fm.settings.family, bind_of(&fm.settings, settings)))
        .collect()
}

/// Where one family's health-check servers listen. Starts from the model's NodePort
/// addresses (the same nodePortAddresses reading) and differs where upstream's servers
/// do: the primary IP only when it is on a local interface, loopback IPs inside the CIDRs
/// kept.
pub(super) fn bind_of(fs: &FamilySettings, settings: &Settings) -> HealthCheckBind {
    let NodePortIps::Ips(ips) = &fs.nodeport_ips else {
        return HealthCheckBind::All;
    };
    let local = settings.local_addresses.as_deref();
    let mut out: Vec<IpAddr> = match &settings.nodeport_addresses {
        NodePortAddresses::Primary => ips
            .iter()
            .copied()
            .filter(|ip| local.is_none_or(|l| l.contains(ip)))
            .collect(),
        NodePortAddresses::Cidrs(cidrs) => {
            let loopback = local.into_iter().flatten().filter(|ip| {
                ip.is_loopback()
                    && fs.family.contains(ip)
                    && cidrs.iter().any(|net| net.contains(**ip))
            });
            ips.iter().chain(loopback).copied().collect()
        }
    };
    out.sort();
    out.dedup();
    HealthCheckBind::Ips(out)
}

impl<S: Source + ?Sized, B: Backend> Syncer<S, B> {
    /// After a successful sync: each family's addresses, the services if they changed,
    /// and in any case a retry of ports that could not be bound.
    pub(super) fn publish_health_checks(&mut self) {
        for (family, bind) in &self.health_check_binds {
            self.health_checks.set_bind(*family, bind.clone());
        }
        if std::mem::take(&mut self.facts.health_checks_changed) {
            self.health_checks
                .update(services(&self.facts.health_checks));
        } else {
            self.health_checks.retry();
        }
    }
}
