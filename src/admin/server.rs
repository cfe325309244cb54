//! The health server (`/healthz`, `/livez`) and the metrics server (`/metrics`,
//! `/proxyMode`, `/healthz`), and [`spawn`], which starts them together with the
//! health-check NodePort servers ([`super::healthcheck`]).
//!
//! Owns: the two fixed listening sockets, the responses upstream kube-proxy gives on them
//! (status codes, JSON bodies, headers, the `kubeproxy_proxy_{healthz,livez}_total`
//! counters), and the lifetime of every admin server ([`AdminHandle`]).

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::healthcheck::HealthCheckServers;
use super::listen::{context, listen, serve, stopped};
use super::rfc3339;
use crate::health::{HealthChecks, ProxyHealth};
use crate::metrics::{family_label, Metrics};

/// What `/proxyMode` answers.
pub const PROXY_MODE: &str = "nftables";
/// Content type of `/metrics` (Prometheus text format 0.0.4).
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// How long [`AdminHandle::shutdown`] waits for open connections before dropping them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Where the admin servers listen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminConfig {
    /// `/healthz` and `/livez` (`--healthz-bind-address`, default `0.0.0.0:10256`).
    pub healthz_bind: SocketAddr,
    /// `/metrics`, `/proxyMode`, `/healthz` (`--metrics-bind-address`, default
    /// `127.0.0.1:10249`).
    pub metrics_bind: SocketAddr,
    /// The addresses health-check NodePort servers listen on: upstream uses the node IPs
    /// selected by `nodePortAddresses` when that does not match everything. Empty means
    /// every address (`[::]`, dual-stack, or `0.0.0.0` on hosts without IPv6).
    pub health_check_addresses: Vec<IpAddr>,
}

/// The running admin servers. Dropping it shuts them down too (without waiting); use
/// [`AdminHandle::shutdown`] to wait until every port is closed.
#[must_use = "dropping the AdminHandle shuts the admin servers down"]
#[derive(Debug)]
pub struct AdminHandle {
    healthz_addr: SocketAddr,
    metrics_addr: SocketAddr,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl AdminHandle {
    /// The health server's bound address (the real port when bound to port 0).
    pub fn healthz_addr(&self) -> SocketAddr {
        self.healthz_addr
    }

    /// The metrics server's bound address (the real port when bound to port 0).
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    /// Stops accepting connections on every admin port (health, metrics and health-check
    /// NodePorts), lets requests in flight finish (up to 5 s), and returns when all the
    /// servers have stopped.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        for mut task in std::mem::take(&mut self.tasks) {
            if tokio::time::timeout(SHUTDOWN_GRACE, &mut task)
                .await
                .is_err()
            {
                task.abort();
            }
        }
    }
}

impl Drop for AdminHandle {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Starts the health server, the metrics server and the health-check NodePort servers on
/// the current tokio runtime, and returns once the two fixed ports are bound.
///
/// - `health` is read on every `/healthz`, `/livez` and health-check request; the sync
///   loop keeps it current ([`ProxyHealth::queued_update`], [`ProxyHealth::updated`],
///   [`ProxyHealth::set_node_eligible`]).
/// - `checks`: every [`HealthChecks::update`] reconciles the health-check NodePort
///   servers: ports of new services are opened, ports of services gone are closed, ports
///   that could not be bound (logged with `warn`) are tried again.
/// - `metrics` is served on `/metrics`; the process collector (`process_*`: RSS, CPU, open
///   fds) is registered into its registry.
///
/// Errors: no tokio runtime is running, or either fixed port cannot be bound (the
/// message names the server and address), so `kproxy run` can exit with a clear message.
/// Health-check ports never fail this call.
pub fn spawn(
    config: AdminConfig,
    health: Arc<ProxyHealth>,
    checks: Arc<HealthChecks>,
    metrics: Arc<Metrics>,
) -> io::Result<AdminHandle> {
    let runtime = tokio::runtime::Handle::try_current()
        .map_err(|e| io::Error::other(format!("admin servers need a tokio runtime: {e}")))?;
    let _guard = runtime.enter();
    let healthz = listen(config.healthz_bind)
        .map_err(|e| context(e, "healthz server", config.healthz_bind))?;
    let metrics_listener = listen(config.metrics_bind)
        .map_err(|e| context(e, "metrics server", config.metrics_bind))?;
    let healthz_addr = healthz.local_addr()?;
    let metrics_addr = metrics_listener.local_addr()?;
    register_process_metrics(&metrics);

    let (stop, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    tasks.push(serve(
        "healthz",
        healthz,
        health_router(health.clone(), metrics.clone()),
        stopped(stop_rx.clone()),
    ));
    tasks.push(serve(
        "metrics",
        metrics_listener,
        metrics_router(metrics),
        stopped(stop_rx.clone()),
    ));
    let servers = HealthCheckServers::new(config.health_check_addresses, checks, health);
    tasks.push(tokio::spawn(servers.run(stop_rx)));
    tracing::info!(%healthz_addr, %metrics_addr, "admin servers listening");
    Ok(AdminHandle {
        healthz_addr,
        metrics_addr,
        stop,
        tasks,
    })
}

/// Registers upstream's `process_*` metrics (resident memory, CPU seconds, open fds,
/// start time) in `metrics`' registry. Returns false when they already are.
pub fn register_process_metrics(metrics: &Metrics) -> bool {
    let collector = prometheus::process_collector::ProcessCollector::for_self();
    metrics.registry().register(Box::new(collector)).is_ok()
}

fn with_headers(mut r: Response, content_type: &'static str) -> Response {
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

#[derive(Clone)]
struct HealthState {
    health: Arc<ProxyHealth>,
    metrics: Arc<Metrics>,
}

/// `/healthz` and `/livez` (any method, as upstream's mux); anything else is 404.
fn health_router(health: Arc<ProxyHealth>, metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/healthz", any(healthz))
        .route("/livez", any(livez))
        .with_state(HealthState { health, metrics })
}

async fn healthz(State(s): State<HealthState>) -> Response {
    let (code, body) = health_response(&s.health, true, SystemTime::now());
    s.metrics
        .healthz_total
        .with_label_values(&[code.as_str()])
        .inc();
    with_headers((code, body).into_response(), "application/json")
}

async fn livez(State(s): State<HealthState>) -> Response {
    let (code, body) = health_response(&s.health, false, SystemTime::now());
    s.metrics
        .livez_total
        .with_label_values(&[code.as_str()])
        .inc();
    with_headers((code, body).into_response(), "application/json")
}

/// Upstream's health body (`encoding/json` of its `ProxyHealth`, fields in its order).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct HealthBody {
    last_updated: String,
    current_time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    node_eligible: Option<bool>,
    healthy: bool,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    status: BTreeMap<&'static str, FamilyBody>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FamilyBody {
    last_updated: String,
    healthy: bool,
}

/// The status and JSON body of `/healthz` (`with_node`) or `/livez` at `now`.
///
/// 200 when no programmed family has had an update queued for the timeout or longer
/// (and, for `/healthz`, the node is eligible), else 503. Before the first sync the
/// proxy counts as healthy. As upstream, `lastUpdated` is `now` in a 200 (older
/// releases reported the last sync loop run there), the real last programming time
/// (Go's zero time before the first) in a 503; `healthy` is the proxy's health alone,
/// `nodeEligible` (only on `/healthz`) the node's.
pub fn health_response(
    health: &ProxyHealth,
    with_node: bool,
    now: SystemTime,
) -> (StatusCode, String) {
    let snap = health.snapshot(now);
    let node_eligible = with_node.then(|| health.node_eligible());
    let ok = snap.healthy && node_eligible.unwrap_or(true);
    let body = HealthBody {
        last_updated: rfc3339::format(if ok { Some(now) } else { snap.last_updated }),
        current_time: rfc3339::format(Some(now)),
        node_eligible,
        healthy: snap.healthy,
        status: snap
            .families
            .iter()
            .map(|f| {
                (
                    family_label(f.family),
                    FamilyBody {
                        last_updated: rfc3339::format(Some(f.last_updated)),
                        healthy: f.healthy,
                    },
                )
            })
            .collect(),
    };
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        serde_json::to_string(&body).expect("health body serializes"),
    )
}

/// `/metrics`, `/proxyMode`, and `/healthz` (the generic "ok" check upstream installs on
/// the metrics port: the process is up, nothing more).
fn metrics_router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/metrics", any(metrics_page))
        .route("/proxyMode", any(proxy_mode))
        .route("/healthz", any(ok))
        .with_state(metrics)
}

async fn metrics_page(State(m): State<Arc<Metrics>>) -> Response {
    with_headers(m.encode().into_response(), METRICS_CONTENT_TYPE)
}

async fn proxy_mode() -> Response {
    with_headers(PROXY_MODE.into_response(), "text/plain; charset=utf-8")
}

async fn ok() -> Response {
    with_headers("ok".into_response(), "text/plain; charset=utf-8")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nft::Family;

    #[test]
    fn health_body_before_first_sync_is_healthy() {
        let h = ProxyHealth::new(Duration::from_secs(60));
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_714_566_896);
        // Queued long ago but never programmed: starting up, healthy (upstream).
        h.queued_update(Family::V4, now - Duration::from_secs(600));
        let (code, body) = health_response(&h, true, now);
        assert_eq!(code, StatusCode::OK);
        assert_eq!(
            body,
            r#"{"lastUpdated":"2024-05-01T12:34:56Z","currentTime":"2024-05-01T12:34:56Z","nodeEligible":true,"healthy":true}"#
        );
    }

    #[test]
    fn stale_family_is_reported() {
        let h = ProxyHealth::new(Duration::from_secs(60));
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_714_566_896);
        h.updated(Family::V4, now - Duration::from_secs(120));
        h.updated(Family::V6, now - Duration::from_secs(120));
        h.queued_update(Family::V6, now - Duration::from_secs(60));
        let (code, body) = health_response(&h, false, now);
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            body,
            concat!(
                r#"{"lastUpdated":"2024-05-01T12:32:56Z","currentTime":"2024-05-01T12:34:56Z","#,
                r#""healthy":false,"status":{"IPv4":{"lastUpdated":"2024-05-01T12:32:56Z","healthy":true},"#,
                r#""IPv6":{"lastUpdated":"2024-05-01T12:32:56Z","healthy":false}}}"#
            )
        );
    }
}
