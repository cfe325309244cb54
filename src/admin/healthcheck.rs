//! Health-check NodePort servers: per IP family, one HTTP server per `healthCheckNodePort`
//! of the eTP Local LoadBalancer services in [`HealthChecks`], telling cloud load
//! balancers whether this node has endpoints of the service. As upstream (one server
//! manager per proxier), a dual-stack service is served in each family on the same port,
//! each counting its own family's endpoints, and each family listens on its own
//! [`HealthCheckBind`]: `0.0.0.0`, `[::]` (v6-only), or exactly the addresses given (none:
//! no listener).
//!
//! Owns: opening a service's port when it appears in the set, closing it (releasing the
//! port) when it leaves or its family's addresses change, reporting a port that could not
//! be bound ([`HealthChecks::report_bind_failure`]) and retrying it at the next
//! [`HealthChecks::update`] or [`HealthChecks::retry`] (the sync loop calls one after
//! every successful sync, as upstream retries at every sync), and the response upstream
//! gives on those ports.
//!
//! Must not: decide which services or addresses are served (that is `sync`), or know how
//! a failure becomes an Event (the sink is wired by `app`).

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::State;
use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::listen::{listen_family, serve, stopped};
use crate::health::{
    HealthCheckBind, HealthCheckBindFailure, HealthCheckService, HealthChecks, ProxyHealth,
};
use crate::nft::Family;

/// Header carrying the local endpoint count, for load balancers that weigh nodes by it
/// (GCE's weighted load balancing reads it).
pub const WEIGHT_HEADER: &str = "x-load-balancing-endpoint-weight";

/// How long a reconcile waits for closed servers to release their ports before opening
/// others (a connection still busy past it may make a reopened port fail until the next
/// sync).
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// A service's port in one family.
type Key = (Family, u16);

/// Each family's addresses, as one reconcile pass sees them.
type Binds = BTreeMap<Family, HealthCheckBind>;

/// One open health-check port: dropping `stop` closes its listeners.
struct PortServer {
    /// The addresses it was opened on: a change reopens it.
    bind: HealthCheckBind,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// Keeps one server per family and health-check port of [`HealthChecks`].
pub(crate) struct HealthCheckServers {
    checks: Arc<HealthChecks>,
    health: Arc<ProxyHealth>,
    open: BTreeMap<Key, PortServer>,
    /// Ports that could not be bound, with the last error (logged once per error).
    failing: BTreeMap<Key, String>,
}

impl HealthCheckServers {
    pub(crate) fn new(checks: Arc<HealthChecks>, health: Arc<ProxyHealth>) -> HealthCheckServers {
        HealthCheckServers {
            checks,
            health,
            open: BTreeMap::new(),
            failing: BTreeMap::new(),
        }
    }

    /// Reconciles now and after every change of [`HealthChecks`] until `stop`; then
    /// closes every port and waits for the servers to finish.
    pub(crate) async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut generation = self.checks.subscribe();
        loop {
            let (wanted, binds) = self.wanted(&mut generation);
            // A port reopened on other addresses must be released first.
            let closing = self.close_gone(&wanted, &binds);
            let deadline = tokio::time::Instant::now() + CLOSE_WAIT;
            for task in closing {
                let _ = tokio::time::timeout_at(deadline, task).await;
            }
            self.open_wanted(&wanted, &binds);
            tokio::select! {
                changed = generation.changed() => if changed.is_err() { break },
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        let tasks: Vec<_> = std::mem::take(&mut self.open)
            .into_values()
            .flat_map(|s| {
                let _ = s.stop.send(true);
                s.tasks
            })
            .collect();
        for t in tasks {
            let _ = t.await;
        }
    }

    /// What [`HealthChecks`] asks for now: services by key, and each family's addresses;
    /// `seen` marked as having seen the wake-ups this answers (one consistent snapshot
    /// per pass).
    fn wanted(
        &self,
        seen: &mut watch::Receiver<u64>,
    ) -> (BTreeMap<Key, HealthCheckService>, Binds) {
        let (services, set) = self.checks.snapshot(seen);
        let wanted = services
            .into_iter()
            .map(|s| ((s.family, s.node_port), s))
            .collect();
        let binds = [Family::V4, Family::V6]
            .into_iter()
            .map(|f| (f, set.get(&f).cloned().unwrap_or_default()))
            .collect();
        (wanted, binds)
    }

    /// Stops the servers of services gone and of families whose addresses changed;
    /// returns their tasks (done once the ports are released).
    fn close_gone(
        &mut self,
        wanted: &BTreeMap<Key, HealthCheckService>,
        binds: &Binds,
    ) -> Vec<JoinHandle<()>> {
        let gone: Vec<Key> = self
            .open
            .iter()
            .filter(|(k, s)| !wanted.contains_key(k) || binds[&k.0] != s.bind)
            .map(|(k, _)| *k)
            .collect();
        let mut closing = Vec::new();
        for (family, port) in gone {
            tracing::info!(port, %family, "closing health check server");
            if let Some(s) = self.open.remove(&(family, port)) {
                let _ = s.stop.send(true);
                closing.extend(s.tasks);
            }
        }
        closing
    }

    /// Opens the ports wanted and not open.
    fn open_wanted(&mut self, wanted: &BTreeMap<Key, HealthCheckService>, binds: &Binds) {
        self.failing.retain(|k, _| wanted.contains_key(k));
        for (key, svc) in wanted {
            if !self.open.contains_key(key) {
                self.start(svc, &binds[&key.0]);
            }
        }
    }

    /// Opens `svc`'s port, or logs and reports why it cannot (then it is retried at the
    /// next reconcile).
    fn start(&mut self, svc: &HealthCheckService, bind: &HealthCheckBind) {
        let (family, port) = (svc.family, svc.node_port);
        let service = format!("{}/{}", svc.namespace, svc.name);
        match self.open_port(family, port, bind) {
            Ok(server) => {
                let retried = self.failing.remove(&(family, port)).is_some();
                tracing::info!(port, %family, %service, retried, "opened health check server");
                self.open.insert((family, port), server);
            }
            Err(e) => {
                let msg = e.to_string();
                if self.failing.get(&(family, port)) != Some(&msg) {
                    tracing::warn!(
                        port,
                        %family,
                        %service,
                        error = %msg,
                        "failed to start health check server; retrying at the next sync"
                    );
                } else {
                    tracing::debug!(port, %family, error = %msg, "health check port still unavailable");
                }
                self.checks.report_bind_failure(&HealthCheckBindFailure {
                    family,
                    namespace: svc.namespace.clone(),
                    name: svc.name.clone(),
                    port,
                    error: msg.clone(),
                });
                self.failing.insert((family, port), msg);
            }
        }
    }

    /// Binds `port` on every address of `bind` (all or nothing) and serves it. No
    /// address: an open server with no listener, as upstream.
    fn open_port(
        &self,
        family: Family,
        port: u16,
        bind: &HealthCheckBind,
    ) -> io::Result<PortServer> {
        let addresses: Vec<IpAddr> = match bind {
            HealthCheckBind::All => vec![match family {
                Family::V4 => Ipv4Addr::UNSPECIFIED.into(),
                Family::V6 => Ipv6Addr::UNSPECIFIED.into(),
            }],
            HealthCheckBind::Ips(ips) => ips.clone(),
        };
        let listeners = addresses
            .iter()
            .filter(|ip| family.contains(ip))
            .map(|ip| listen_family(SocketAddr::new(*ip, port)))
            .collect::<io::Result<Vec<_>>>()?;
        let (stop, stop_rx) = watch::channel(false);
        let state = Arc::new(PortState {
            key: (family, port),
            checks: self.checks.clone(),
            health: self.health.clone(),
        });
        let router = Router::new().fallback(answer).with_state(state);
        let tasks = listeners
            .into_iter()
            .map(|l| serve("health check", l, router.clone(), stopped(stop_rx.clone())))
            .collect();
        Ok(PortServer {
            bind: bind.clone(),
            stop,
            tasks,
        })
    }
}

struct PortState {
    key: Key,
    checks: Arc<HealthChecks>,
    health: Arc<ProxyHealth>,
}

/// Any method, any path.
async fn answer(State(s): State<Arc<PortState>>) -> Response {
    let healthy = s.health.status(SystemTime::now()).0;
    let Some(svc) = s.checks.get(s.key.0, s.key.1) else {
        // The service left the set and the port is closing: upstream writes nothing
        // (an empty 200).
        return StatusCode::OK.into_response();
    };
    let (code, body) = health_check_response(&svc, healthy);
    let mut r = (code, body).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        HeaderName::from_static(WEIGHT_HEADER),
        HeaderValue::from(svc.local_endpoints),
    );
    r
}

/// Upstream's answer: 200 when the service has local endpoints and the proxy is healthy
/// (node eligibility does not matter here), else 503; the JSON body laid out as
/// upstream's (tab-indented).
pub fn health_check_response(
    svc: &HealthCheckService,
    proxy_healthy: bool,
) -> (StatusCode, String) {
    let code = if svc.local_endpoints != 0 && proxy_healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let q = |s: &str| serde_json::to_string(s).expect("string serializes");
    let body = format!(
        "{{\n\t\"service\": {{\n\t\t\"namespace\": {},\n\t\t\"name\": {}\n\t}},\n\t\"localEndpoints\": {},\n\t\"serviceProxyHealthy\": {}\n}}",
        q(&svc.namespace),
        q(&svc.name),
        svc.local_endpoints,
        proxy_healthy
    );
    (code, body)
}
