//! The operator's HTTP surface: `/healthz` and `/livez` (health port, 10256), `/metrics`,
//! `/proxyMode` and `/healthz` (metrics port, 10249), and the per-service health-check
//! NodePort servers of eTP Local LoadBalancer services.
//!
//! Owns: every listening socket kproxy opens. The health state those endpoints report
//! lives in [`crate::health`]: `sync` updates it, `admin` serves it, and neither imports
//! the other.
//!
//! Must not: touch the kernel's rules or the API server, or read the configuration (`app`
//! hands it the addresses in an [`AdminConfig`]).
//!
//! The daemon creates the shared state, hands it to the sync loop, and starts the servers
//! on its tokio runtime:
//!
//! ```no_run
//! # use std::{net::SocketAddr, time::Duration};
//! # async fn run(
//! #     healthz_bind: SocketAddr,
//! #     metrics_bind: SocketAddr,
//! #     sync_period: Duration,
//! # ) -> std::io::Result<()> {
//! use std::sync::Arc;
//! use kproxy::admin::{self, AdminConfig};
//! use kproxy::health::{HealthChecks, ProxyHealth};
//! use kproxy::metrics::Metrics;
//!
//! let metrics = Arc::new(Metrics::new());
//! let health = Arc::new(ProxyHealth::new(2 * sync_period));
//! let checks = Arc::new(HealthChecks::default());
//! // Fails (address in use, permission denied…) before anything else starts.
//! let config = AdminConfig { healthz_bind, metrics_bind, health_check_addresses: Vec::new() };
//! let admin = admin::spawn(config, health, checks, metrics)?;
//! // … run the sync loop with the same Arcs …
//! admin.shutdown().await; // closes every admin port
//! # Ok(())
//! # }
//! ```

pub mod healthcheck;
mod listen;
mod rfc3339;
pub mod server;

pub use server::{
    register_process_metrics, spawn, AdminConfig, AdminHandle, METRICS_CONTENT_TYPE, PROXY_MODE,
};
