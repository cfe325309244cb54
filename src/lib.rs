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
//!                        nftables: one atomic batch per transaction, read-back, the
//!                        watch of nftables change notifications) and fake (validating,
//!                        all-or-nothing test double)
//!  apply                 the one sync step: base (kernel dump, or Renderer::update's
//!                        "before") → diff → commit; `kproxy apply`, `cleanup`
//!  takeover              `--cleanup-kube-proxy`: kube-proxy's tables and iptables chains
//!  trace         (pure)  Ruleset + a packet → where a new connection goes
//!  report                Model → the reviewer's summary / JSON
//!  sync                  the daemon's loop: readiness gate, coalescing, minSyncPeriod,
//!                        partial (Renderer::update) or full (Renderer::full) syncs,
//!                        both committed by apply; retries, drift repair (only what
//!                        others touched, from the backend's watch); feeds
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
//! The pure core (`nft`, `model`, `render`, `diff`, `trace`, `report`) does no I/O, reads
//! no clocks and spawns nothing. Only `k8s` talks to the API server; only `netlink` (through
//! `backend::netlink` and `conntrack`) touches the kernel's tables, and `takeover` drives
//! the iptables tools for kube-proxy's leftovers; only `admin` listens on ports; only
//! `main` exits. Which module may use which is checked by `tests/architecture.rs` (its
//! `ALLOWED` table is the rule; DESIGN §2 is its prose).
//!
//! Modules, in pipeline order: the pure core first, then the use cases, the daemon's
//! loop, the edges to the kernel, the API server and the operator, and the wiring.

// The pure core.
pub mod nft;
pub mod model;
pub mod render;
pub mod diff;
pub mod trace;
pub mod report;

// Configuration: flags and KubeProxyConfiguration → validated settings.
pub mod config;

// Use cases on a backend.
pub mod apply;
pub mod takeover;

// The daemon's loop and the state it feeds.
pub mod sync;
pub mod health;
pub mod metrics;

// Edges: the kernel, the API server, the operator's HTTP surface.
pub mod backend;
pub mod netlink;
pub mod conntrack;
pub mod k8s;
pub mod admin;

// Wiring: the command line and the daemon.
pub mod cli;
pub mod app;

#[cfg(feature = "test-util")]
pub mod testutil;
