//! Health-check NodePort servers: one HTTP server per `healthCheckNodePort` of the eTP
//! Local LoadBalancer services in [`HealthChecks`], telling cloud load balancers whether
//! this node has endpoints of the service.
//!
//! Owns: opening a service's port when it appears in the set, closing it (releasing the
//! port) when it leaves, retrying ports that could not be bound at the next
//! [`HealthChecks::update`] (or after [`RETRY_PERIOD`]), and the response upstream gives on
//! those ports.

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::State;
use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::listen::{listen, listen_any, serve, stopped};
use crate::health::{HealthCheckService, HealthChecks, ProxyHealth};

/// Header carrying the local endpoint count, for load balancers that weigh nodes by it
/// (GCE's weighted load balancing reads it).
pub const WEIGHT_HEADER: &str = "x-load-balancing-endpoint-weight";

/// How often ports that could not be bound are tried again between updates.
pub const RETRY_PERIOD: Duration = Duration::from_secs(30);

/// One open health-check port: dropping `stop` closes its listeners.
struct PortServer {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// Keeps one server per health-check port of [`HealthChecks`].
pub(crate) struct HealthCheckServers {
    addresses: Vec<IpAddr>,
    checks: Arc<HealthChecks>,
    health: Arc<ProxyHealth>,
    open: BTreeMap<u16, PortServer>,
    /// Ports that could not be bound, with the last error (logged once per error).
    failing: BTreeMap<u16, String>,
}

impl HealthCheckServers {
    pub(crate) fn new(
        addresses: Vec<IpAddr>,
        checks: Arc<HealthChecks>,
        health: Arc<ProxyHealth>,
    ) -> HealthCheckServers {
        HealthCheckServers {
            addresses,
            checks,
            health,
            open: BTreeMap::new(),
            failing: BTreeMap::new(),
        }
    }

    /// Reconciles now and after every [`HealthChecks::update`] until `stop`; then closes
    /// every port and waits for the servers to finish.
    pub(crate) async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut generation = self.checks.subscribe();
        loop {
            generation.borrow_and_update();
            self.reconcile();
            // Ports that failed are also retried on a timer: an idle cluster may not sync
            // (and so update) for a long time.
            let retry = !self.failing.is_empty();
            tokio::select! {
                changed = generation.changed() => if changed.is_err() { break },
                _ = tokio::time::sleep(RETRY_PERIOD), if retry => {},
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

    fn reconcile(&mut self) {
        let wanted: BTreeMap<u16, HealthCheckService> = self
            .checks
            .services()
            .into_iter()
            .map(|s| (s.node_port, s))
            .collect();
        let gone: Vec<u16> = self
            .open
            .keys()
            .filter(|p| !wanted.contains_key(p))
            .copied()
            .collect();
        for port in gone {
            tracing::info!(port, "closing health check server");
            if let Some(s) = self.open.remove(&port) {
                let _ = s.stop.send(true);
            }
        }
        self.failing.retain(|p, _| wanted.contains_key(p));
        for (port, svc) in &wanted {
            if self.open.contains_key(port) {
                continue;
            }
            let service = format!("{}/{}", svc.namespace, svc.name);
            match self.open_port(*port) {
                Ok(server) => {
                    let retried = self.failing.remove(port).is_some();
                    tracing::info!(port, %service, retried, "opened health check server");
                    self.open.insert(*port, server);
                }
                Err(e) => {
                    let msg = e.to_string();
                    if self.failing.get(port) != Some(&msg) {
                        tracing::warn!(
                            port,
                            %service,
                            error = %msg,
                            "failed to start health check server; retrying at the next sync"
                        );
                    } else {
                        tracing::debug!(port, error = %msg, "health check port still unavailable");
                    }
                    self.failing.insert(*port, msg);
                }
            }
        }
    }

    /// Binds `port` on every configured address (all or nothing) and serves it.
    fn open_port(&self, port: u16) -> io::Result<PortServer> {
        let listeners = if self.addresses.is_empty() {
            vec![listen_any(port)?]
        } else {
            self.addresses
                .iter()
                .map(|ip| listen(SocketAddr::new(*ip, port)))
                .collect::<io::Result<Vec<_>>>()?
        };
        let (stop, stop_rx) = watch::channel(false);
        let state = Arc::new(PortState {
            port,
            checks: self.checks.clone(),
            health: self.health.clone(),
        });
        let router = Router::new().fallback(answer).with_state(state);
        let tasks = listeners
            .into_iter()
            .map(|l| serve("health check", l, router.clone(), stopped(stop_rx.clone())))
            .collect();
        Ok(PortServer { stop, tasks })
    }
}

struct PortState {
    port: u16,
    checks: Arc<HealthChecks>,
    health: Arc<ProxyHealth>,
}

/// Any method, any path.
async fn answer(State(s): State<Arc<PortState>>) -> Response {
    let healthy = s.health.status(SystemTime::now()).0;
    let Some(svc) = s.checks.get(s.port) else {
        // The service left the set and the port is closing.
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
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
