//! kproxy: a Kubernetes kube-proxy replacement that programs nftables over netlink.
//!
//! ```text
//!  API server ──list/watch──▶ k8s::cache (watchers → compact store; implements sync::Source)
//!  manifests ──load──▶ k8s::manifests ─┐
//!                                      ▼ Objects (Service, EndpointSlice, Node, ServiceCIDR)
//!  config (flags + KubeProxyConfiguration) ──▶ model::Settings
//!                                      │
//!  model::build  (pure)  objects + settings → Model: ServicePorts with categorised
//!                        endpoints, per IP family; bad objects → Warnings
//!                                      ▼
//!  render        (pure)  Model → nft::Ruleset (one `ip kproxy` + one `ip6 kproxy` table)
//!                                      ▼
//!  nft::text             Ruleset → `nft -f` text (render output, golden tests)
//!  render::Renderer      keeps per-service fragments: a change to a few services
//!                        re-renders only those (incremental syncs)
//!                                      ▼
//!  diff          (pure)  (what the kernel holds, what is meant) → nft::tx::Transaction:
//!                        minimal, ordered so the kernel accepts every step
//!                                      ▼
//!  backend               Backend trait: netlink (the only code touching the kernel's
//!                        nftables: one atomic batch per transaction, read-back) and
//!                        fake (validating, all-or-nothing test double)
//!  apply                 the one sync step: base (kernel dump, or Renderer::update's
//!                        "before") → diff → commit; `kproxy apply`, `cleanup`
//!  takeover              `--cleanup-kube-proxy`: kube-proxy's tables and iptables chains
//!  trace         (pure)  Ruleset + a packet → where a new connection goes
//!  report                Model → the reviewer's summary / JSON
//!  sync                  the daemon's loop: readiness gate, coalescing, minSyncPeriod,
//!                        partial (Renderer::update) or full (Renderer::full) syncs,
//!                        both committed by apply; retries, drift repair; feeds
//!                        conntrack, k8s::events, health, metrics
//!  netlink               the socket and message layer shared by backend and conntrack
//!  conntrack             stale UDP flows deleted over ctnetlink after endpoint changes
//!  health                health state: sync records it, admin serves it
//!  admin, metrics        /healthz /livez (10256), /metrics /proxyMode (10249),
//!                        health-check NodePorts; upstream's metric names
//!  cli, app              `kproxy render | trace | apply | cleanup | run`: flags → Config →
//!                        the above; `app` wires the daemon (tokio runtime, signals)
//! ```
//!
//! The pure core (`model`, `nft`, `render`, `diff`, `trace`) does no I/O, reads no clocks
//! and spawns nothing; only `k8s` talks to the API server, only `backend` (netlink, and
//! `takeover` through it for kube-proxy's leftovers) and `conntrack` change the kernel's tables
//! (`app` sets the conntrack sysctls), only `admin` listens on ports, and only `main`
//! exits.

pub mod admin;
pub mod app;
pub mod apply;
pub mod backend;
pub mod cli;
pub mod config;
pub mod conntrack;
pub mod diff;
pub mod health;
pub mod k8s;
pub mod metrics;
pub mod model;
pub mod netlink;
pub mod nft;
pub mod render;
pub mod report;
pub mod sync;
pub mod takeover;
#[cfg(feature = "test-util")]
pub mod testutil;
pub mod trace;
