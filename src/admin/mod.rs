//! The operator's HTTP surface: `/healthz` and `/livez` (health port, 10256), `/metrics`
//! and `/proxyMode` (metrics port, 10249), and the per-service health-check NodePort
//! servers of eTP Local LoadBalancer services.
//!
//! Owns: every listening socket kproxy opens, and the health state those endpoints report
//! ([`ProxyHealth`], fed by `sync`; [`HealthChecks`], the set of health-check services,
//! also fed by `sync`).
//!
//! Must not: touch the kernel's rules or the API server.

pub mod health;

pub use health::{HealthCheckService, HealthChecks, ProxyHealth};
