//! `kproxy run`: the node daemon, wired from the pieces.
//!
//! Owns: the process-level sequence. Validate the configuration (before anything touches
//! the node); `--cleanup`; conntrack sysctls; the HTTP servers (`admin`, binding errors
//! are fatal so a misconfigured port is seen at once); the API client and informer cache
//! (`k8s`); the sync loop (`sync`) on a thread of its own over the netlink backend with
//! conntrack cleanup and Events attached; `--cleanup-kube-proxy` once the first full sync
//! is committed (docs/daemon.md, "Taking over from kube-proxy"); and the shutdown on
//! SIGTERM/SIGINT, which stops the loop between syncs and leaves the rules in place (a
//! restarted kproxy adopts them without disturbing a connection).
//!
//! Must not: decide anything the modules it wires own.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::admin;
use crate::apply;
use crate::backend::netlink::NetlinkBackend;
use crate::config::{self, Config, ConntrackConfig};
use crate::conntrack::{Conntrack, StaleFilter};
use crate::health::{HealthCheckBindFailure, HealthChecks, ProxyHealth};
use crate::k8s;
use crate::k8s::events::{EventRecorder, Notice};
use crate::metrics::Metrics;
use crate::model::{ServicePort, Warning};
use crate::nft::tx::TableRef;
use crate::nft::Family;
use crate::render;
use crate::sync::{FlowCleaner, SyncConfig, Syncer, Trigger, WarningSink};
use crate::takeover;

/// What `kproxy run` was asked to do besides running.
#[derive(Clone, Copy, Debug, Default)]
pub struct RunMode {
    /// `--cleanup`: remove kproxy's tables (and with `cleanup_kube_proxy`, upstream's)
    /// and exit.
    pub cleanup: bool,
    /// `--cleanup-kube-proxy`: remove upstream kube-proxy's nftables tables and iptables
    /// `KUBE-*` chains (taking a node over): once kproxy's first full sync is committed,
    /// or, with `cleanup`, at once.
    pub cleanup_kube_proxy: bool,
}

/// Why the daemon stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    Kernel(String),
    #[error("{0}")]
    Bind(String),
    #[error("{0}")]
    Api(String),
    #[error("{0}")]
    Runtime(String),
}

/// Maps `--v` to a tracing filter: 0–1 info, 2–4 debug for kproxy, 5+ trace for kproxy
/// (and debug for kube), as klog's levels read in practice.
pub fn log_filter(verbosity: u8) -> String {
    match verbosity {
        0 | 1 => "info".into(),
        2..=4 => "info,kproxy=debug".into(),
        _ => "debug,kproxy=trace,hyper=info,tower=info".into(),
    }
}

/// Installs the global tracing subscriber (`RUST_LOG` overrides `--v`).
pub fn init_logging(verbosity: u8) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(log_filter(verbosity)));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// Runs the daemon until SIGTERM/SIGINT (or only the cleanup, per `mode`).
pub fn run(config: Config, mode: RunMode) -> Result<(), RunError> {
    init_logging(config.verbosity);
    if mode.cleanup {
        if mode.cleanup_kube_proxy {
            let r = takeover::cleanup_kube_proxy(&mut log_table_removed)
                .map_err(|e| RunError::Kernel(e.to_string()))?;
            log_takeover(&r);
        }
        let mut backend =
            NetlinkBackend::new(render::TABLE).map_err(|e| RunError::Kernel(e.to_string()))?;
        let removed = apply::cleanup(&mut backend, &render::own_tables())
            .map_err(|e| RunError::Kernel(e.to_string()))?;
        tracing::info!(tables = removed.len(), "cleanup done");
        return Ok(());
    }
    set_conntrack_sysctls(&config.conntrack);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("kproxy-io")
        .build()
        .map_err(|e| RunError::Runtime(e.to_string()))?;
    runtime.block_on(run_async(config, mode.cleanup_kube_proxy))
}

fn log_table_removed(t: &TableRef) {
    tracing::info!(table = %format!("{} {}", t.family, t.name), "removed kube-proxy's nftables table");
}

fn log_takeover(r: &takeover::TakeoverReport) {
    for (tool, chains) in &r.iptables {
        tracing::info!(tool = %tool, chains, "removed kube-proxy's iptables chains");
    }
    for w in &r.warnings {
        tracing::warn!("{w}");
    }
}

/// What runs on the sync thread after every full sync: with `--cleanup-kube-proxy`, the
/// first one that committed starts the removal of kube-proxy's rules (on a thread of its
/// own: iptables-save/restore of a big ruleset takes seconds, and syncs must not wait),
/// so the node is never without a table that serves Services; a removal that fails is
/// tried again after the next full sync. Then the allocator returns the sync's freed
/// peak to the OS.
fn after_full_sync(cleanup_kube_proxy: bool) -> Box<dyn FnMut() + Send> {
    const DONE: u8 = 0;
    const PENDING: u8 = 1;
    const RUNNING: u8 = 2;
    let state = Arc::new(AtomicU8::new(if cleanup_kube_proxy {
        PENDING
    } else {
        DONE
    }));
    Box::new(move || {
        if state
            .compare_exchange(PENDING, RUNNING, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            let shared = state.clone();
            let spawned = std::thread::Builder::new()
                .name("kproxy-takeover".into())
                .spawn(move || {
                    tracing::info!("first full sync committed: removing kube-proxy's rules");
                    match takeover::cleanup_kube_proxy(&mut log_table_removed) {
                        Ok(r) => {
                            log_takeover(&r);
                            shared.store(DONE, Ordering::SeqCst);
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "removing kube-proxy's rules failed; trying again after the next full sync");
                            shared.store(PENDING, Ordering::SeqCst);
                        }
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start removing kube-proxy's rules; trying again after the next full sync");
                state.store(PENDING, Ordering::SeqCst);
            }
        }
        release_free_memory();
    })
}

async fn run_async(config: Config, cleanup_kube_proxy: bool) -> Result<(), RunError> {
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(ProxyHealth::new(config.sync_period * 2));
    // The sync loop says where each family's health checks listen; Events for the ports
    // that cannot be opened are wired once the API client is up.
    let checks = Arc::new(HealthChecks::default());
    let admin_config = admin::AdminConfig {
        healthz_bind: config.healthz_bind,
        metrics_bind: config.metrics_bind,
        configz: config::configz_json(&config),
    };
    let admin = admin::spawn(
        admin_config,
        health.clone(),
        checks.clone(),
        metrics.clone(),
    )
    .map_err(|e| RunError::Bind(e.to_string()))?;

    let node = config.settings.hostname.clone();
    let client = k8s::client::client(config.kubeconfig.as_deref())
        .await
        .map_err(|e| RunError::Api(e.to_string()))?;
    let trigger = Trigger::new(health.clone(), metrics.clone());
    let (cache, watchers) =
        k8s::cache::Cache::start(client.clone(), &node, trigger.clone(), metrics.clone());
    let (events, _events_task) =
        k8s::events::EventRecorder::start(client, &node, Some(cache.clone()));
    let events = Arc::new(events);
    let recorder = events.clone();
    checks.set_bind_failure_sink(Box::new(move |f| report_health_check_failure(&recorder, f)));

    let backend =
        NetlinkBackend::new(render::TABLE).map_err(|e| RunError::Kernel(e.to_string()))?;
    let sync_config = SyncConfig::new(config.min_sync_period, config.sync_period);
    let mut syncer = Syncer::new(
        cache.clone(),
        backend,
        config.settings.clone(),
        sync_config,
        metrics.clone(),
        health.clone(),
        checks.clone(),
    )
    .with_warnings(Box::new(SharedEvents(events)))
    .with_local_addresses(Box::new(local_addresses))
    .with_after_full_sync(after_full_sync(cleanup_kube_proxy));
    // Drift: other programs' commits are watched as the kernel announces them; without
    // the watch (or with KPROXY_NFT_WATCH=0, the escape hatch docs/daemon.md names) the
    // loop falls back to comparing generation ids every second.
    if std::env::var_os("KPROXY_NFT_WATCH").is_some_and(|v| v == "0") {
        tracing::warn!(
            "KPROXY_NFT_WATCH=0: not watching nftables changes; drift is found by polling"
        );
    } else {
        match syncer.watch_kernel(&trigger) {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!("not watching nftables changes; drift is found by polling")
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch nftables changes; drift is found by polling")
            }
        }
    }
    match Conntrack::open() {
        Ok(ct) => syncer = syncer.with_cleaner(Box::new(ct)),
        Err(e) => tracing::warn!(error = %e, "conntrack cleanup disabled: cannot open ctnetlink"),
    }

    let stop = Arc::new(AtomicBool::new(false));
    let sync_thread = {
        let stop = stop.clone();
        let trigger = trigger.clone();
        std::thread::Builder::new()
            .name("kproxy-sync".into())
            .spawn(move || syncer.run(&trigger, &stop))
            .map_err(|e| RunError::Runtime(e.to_string()))?
    };
    tracing::info!(node = %node, "kproxy running (nftables mode)");

    wait_for_signal().await;
    tracing::info!("stopping: the rules stay in place");
    stop.store(true, Ordering::SeqCst);
    trigger.wake();
    let joined = tokio::task::spawn_blocking(move || sync_thread.join()).await;
    if !matches!(joined, Ok(Ok(()))) {
        tracing::error!("the sync loop panicked");
    }
    admin.shutdown().await;
    watchers.stop();
    Ok(())
}

/// Has mimalloc return the memory this thread freed to the OS now. A full sync's peak is
/// several times the steady state; mimalloc purges freed pages lazily, when the owning
/// thread next allocates, and the sync thread then sleeps until the next change: measured
/// RSS after a 50k × 10 full sync stayed at ~755 MiB in some runs without this.
fn release_free_memory() {
    // SAFETY: mi_collect has no preconditions; it only releases memory mimalloc holds
    // unused (for the calling thread's heap and abandoned segments).
    unsafe { libmimalloc_sys::mi_collect(true) };
}

/// Upstream's Event for a health-check NodePort that could not be opened: Warning
/// `FailedToStartServiceHealthcheck`, action `Listen`, regarding the Service, note
/// `node N failed to start healthcheck "ns/name" on port P: <listen error>`.
pub fn report_health_check_failure(events: &EventRecorder, failure: &HealthCheckBindFailure) {
    let object = format!("Service {}/{}", failure.namespace, failure.name);
    let note = failure.note(events.node_name());
    events.record(&Notice {
        object: &object,
        reason: k8s::events::REASON_HEALTHCHECK,
        action: k8s::events::ACTION_LISTEN,
        note: &note,
    });
}

/// The recorder the sync loop's warnings and the health-check servers' failures share.
struct SharedEvents(Arc<EventRecorder>);

impl WarningSink for SharedEvents {
    fn warn(&self, warning: &Warning) {
        self.0.warn(warning)
    }
}

/// Conntrack cleanup as the sync loop asks for it: wired here so that neither `conntrack`
/// nor `sync` imports the other.
impl FlowCleaner for Conntrack {
    fn clean(
        &mut self,
        family: Family,
        ports: &[ServicePort],
        node_addresses: &[IpAddr],
    ) -> Result<usize, String> {
        let filter = StaleFilter::new(family, ports, node_addresses);
        let st = self
            .clean_stale(family, &filter)
            .map_err(|e| e.to_string())?;
        if st.stale > 0 {
            tracing::debug!(
                family = %family,
                examined = st.examined,
                stale = st.stale,
                deleted = st.deleted,
                gone = st.gone,
                failed = st.failed,
                "conntrack cleanup"
            );
        }
        Ok(st.deleted)
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// The host's interface addresses (for nodePortAddresses CIDRs and conntrack).
pub fn local_addresses() -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `ifap` with a list we only read and then free once.
    if unsafe { libc::getifaddrs(&mut ifap) } != 0 {
        return out;
    }
    let mut cur = ifap;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: ifa_addr points to a sockaddr whose family says which struct it is.
            let family = unsafe { (*ifa.ifa_addr).sa_family } as i32;
            if family == libc::AF_INET {
                // SAFETY: family AF_INET means a sockaddr_in.
                let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                out.push(IpAddr::from(
                    u32::from_be(sin.sin_addr.s_addr).to_be_bytes(),
                ));
            } else if family == libc::AF_INET6 {
                // SAFETY: family AF_INET6 means a sockaddr_in6.
                let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                out.push(IpAddr::from(sin6.sin6_addr.s6_addr));
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: `ifap` came from getifaddrs and is freed exactly once.
    unsafe { libc::freeifaddrs(ifap) };
    out.sort();
    out.dedup();
    out
}

/// Upstream's conntrack tuning: `nf_conntrack_max` = max(maxPerCore × CPUs, min) when
/// maxPerCore > 0, and the TCP/UDP timeouts when non-zero. Each write is skipped when the
/// value is already right and logged (not fatal) when the kernel refuses it (read-only
/// in a non-initial network namespace, say).
pub fn set_conntrack_sysctls(c: &ConntrackConfig) {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let mut writes: Vec<(&str, u64)> = Vec::new();
    if c.max_per_core > 0 {
        writes.push((
            "net/netfilter/nf_conntrack_max",
            (c.max_per_core as u64 * cpus).max(c.min as u64),
        ));
    }
    let secs = |d: Duration| d.as_secs();
    for (key, d) in [
        (
            "net/netfilter/nf_conntrack_tcp_timeout_established",
            c.tcp_established_timeout,
        ),
        (
            "net/netfilter/nf_conntrack_tcp_timeout_close_wait",
            c.tcp_close_wait_timeout,
        ),
        ("net/netfilter/nf_conntrack_udp_timeout", c.udp_timeout),
        (
            "net/netfilter/nf_conntrack_udp_timeout_stream",
            c.udp_stream_timeout,
        ),
    ] {
        if !d.is_zero() {
            writes.push((key, secs(d)));
        }
    }
    if c.tcp_be_liberal {
        writes.push(("net/netfilter/nf_conntrack_tcp_be_liberal", 1));
    }
    for (key, value) in writes {
        let path = format!("/proc/sys/{key}");
        let current = std::fs::read_to_string(&path)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok());
        if current == Some(value) {
            continue;
        }
        match std::fs::write(&path, value.to_string()) {
            Ok(()) => tracing::info!(sysctl = key, value, "set"),
            Err(e) => tracing::warn!(sysctl = key, value, error = %e, "cannot set"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbosity_maps_to_filters() {
        assert_eq!(log_filter(0), "info");
        assert_eq!(log_filter(2), "info,kproxy=debug");
        assert!(log_filter(6).contains("kproxy=trace"));
    }

    #[test]
    fn a_failed_health_check_bind_is_upstreams_event_on_the_service() {
        let clock: k8s::events::Clock = Arc::new(std::time::Instant::now);
        let (events, mut rx) = EventRecorder::with_channel("node-a", None, clock, 4);
        let failure = HealthCheckBindFailure {
            family: Family::V4,
            namespace: "shop".into(),
            name: "web".into(),
            port: 32000,
            error: "listen tcp4 0.0.0.0:32000: bind: address already in use".into(),
        };
        report_health_check_failure(&events, &failure);
        // The same failure again at once: rate limited, as every Event.
        report_health_check_failure(&events, &failure);
        let ev = rx.try_recv().expect("an Event");
        assert!(rx.try_recv().is_err());
        assert_eq!(ev.type_.as_deref(), Some("Warning"));
        assert_eq!(
            ev.reason.as_deref(),
            Some("FailedToStartServiceHealthcheck")
        );
        assert_eq!(ev.action.as_deref(), Some("Listen"));
        assert_eq!(
            ev.note.as_deref(),
            Some(
                "node node-a failed to start healthcheck \"shop/web\" on port 32000: \
                 listen tcp4 0.0.0.0:32000: bind: address already in use"
            )
        );
        assert_eq!(ev.metadata.namespace.as_deref(), Some("shop"));
        let r = ev.regarding.expect("regarding");
        assert_eq!(
            (r.kind.as_deref(), r.api_version.as_deref()),
            (Some("Service"), Some("v1"))
        );
        assert_eq!(
            (r.namespace.as_deref(), r.name.as_deref()),
            (Some("shop"), Some("web"))
        );
    }

    #[test]
    fn local_addresses_include_loopback() {
        let a = local_addresses();
        assert!(a.iter().any(|a| a.is_loopback()), "{a:?}");
    }
}
