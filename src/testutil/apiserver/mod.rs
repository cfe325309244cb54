//! A local Kubernetes API server stand-in (feature `test-util`) for daemon tests and
//! benchmarks.
//!
//! Owns: serving, over plain HTTP/1.1, the list/watch protocol of the resources kproxy
//! reads (Services, EndpointSlices, Nodes, ServiceCIDRs) plus Event writes, closely enough
//! that an unmodified kube-rs client and `kube::runtime::watcher` work against it:
//! one global etcd-like resourceVersion, label and field selectors, paginated lists served
//! from a consistent snapshot, watches that resume from a resourceVersion, bookmarks,
//! `410 Expired` once history is gone, selector-transition events (an object that stops
//! matching is sent as DELETED, one that starts matching as ADDED). Tests drive it through a
//! synchronous Rust control API: object mutations, fault injection (down, dropped watch
//! streams, compaction, latency) and a request log to assert how the client behaved.
//!
//! Must not: be used by the daemon or the CLI; authenticate, authorise, validate objects
//! against their schema, or accept object writes over HTTP other than Events (tests change
//! objects through the control API).
//!
//! Protocol facts it follows (kube 5's watcher depends on them): a watch from a
//! resourceVersion older than the kept history is answered 200 with one `ERROR` event
//! whose `Status` has code 410, reason `Expired` (an HTTP 410 there would make the watcher
//! retry the same RV forever); an expired `continue` token is an HTTP 410 (the watcher then
//! lists from scratch); a watch without resourceVersion, or with `0`, starts with ADDED for
//! every current object; `sendInitialEvents=true` (streaming lists) ends them with a
//! BOOKMARK annotated `k8s.io/initial-events-end`; DELETED carries the deletion's RV.
//!
//! Limits, compared with a real API server: no MVCC (a list is served from the current
//! state whatever `resourceVersion`/`resourceVersionMatch` ask, except Exact older than a
//! compaction, which is 410; its later pages come from a snapshot taken at the first page);
//! field selectors only on `metadata.name` and `metadata.namespace`; a watch from a future
//! RV starts there instead of waiting; no protobuf, no gzip, no HTTP/2, no TLS, no auth;
//! objects are not validated or defaulted (only uid, creationTimestamp, generation,
//! resourceVersion and namespace are set); no deletionTimestamp/finalizers; Events are kept
//! but not watchable.
//!
//! Shape: the server runs on its own OS thread with its own tokio runtime, so it works
//! from sync tests, async tests, and inside another network namespace
//! ([`ApiServer::start_in_netns`]). Objects are kept as pre-serialized JSON bytes with their
//! labels parsed once, so a list or a watch event is a concatenation of byte slices.
//!
//! Layout (after kube-runtime's watcher / reflector store / dispatcher split): this file
//! is the public control API ([`ApiServer`], [`ApiServerBuilder`], [`Kind`], the request
//! log); `store` holds objects, resourceVersions and history; `http` routes and answers
//! requests; `select` parses label and field selectors; `watch` streams watches; `events`
//! keeps the Events clients write; `faults` injects failures.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::sync::watch::Sender;

use store::{apply_value, State};

mod events;
mod faults;
mod http;
mod select;
mod store;
#[cfg(test)]
mod tests;
mod watch;

/// How many changes per resource are kept for resuming watches, unless configured. Each
/// keeps the object version it wrote alive, so this bounds memory in long benchmarks.
pub const DEFAULT_HISTORY_LIMIT: usize = 200_000;
/// How often an idle watch gets a BOOKMARK, unless configured.
pub const DEFAULT_BOOKMARK_INTERVAL: Duration = Duration::from_secs(1);

/// Errors of the stand-in's control API.
#[derive(Debug, thiserror::Error)]
pub enum ApiServerError {
    /// The object's `kind` is not one the stand-in serves.
    #[error("the API server stand-in does not serve kind {0:?}")]
    UnknownKind(String),
    /// The object has no `metadata.name`.
    #[error("object has no metadata.name")]
    NoName,
    /// The object could not be turned into JSON.
    #[error("object is not serializable: {0}")]
    Json(#[from] serde_json::Error),
    /// Binding the listener, entering the namespace or starting the runtime failed.
    #[error("starting the API server stand-in: {0}")]
    Io(#[from] io::Error),
}

/// The watchable resources the stand-in serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// core/v1 `services` (namespaced).
    Service,
    /// discovery.k8s.io/v1 `endpointslices` (namespaced).
    EndpointSlice,
    /// core/v1 `nodes` (cluster-scoped).
    Node,
    /// networking.k8s.io/v1 `servicecidrs` (cluster-scoped).
    ServiceCIDR,
    /// core/v1 `configmaps` (namespaced; for `--config-from-cluster`).
    ConfigMap,
}

impl Kind {
    /// Every kind, in storage order.
    pub const ALL: [Kind; 5] = [
        Kind::Service,
        Kind::EndpointSlice,
        Kind::Node,
        Kind::ServiceCIDR,
        Kind::ConfigMap,
    ];

    fn idx(self) -> usize {
        self as usize
    }

    /// The object `kind`, e.g. `Service`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Node => "Node",
            Kind::ServiceCIDR => "ServiceCIDR",
            Kind::ConfigMap => "ConfigMap",
        }
    }

    /// The resource name in URLs, e.g. `services`.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Service => "services",
            Kind::EndpointSlice => "endpointslices",
            Kind::Node => "nodes",
            Kind::ServiceCIDR => "servicecidrs",
            Kind::ConfigMap => "configmaps",
        }
    }

    /// `apiVersion`, e.g. `discovery.k8s.io/v1`.
    pub fn api_version(self) -> &'static str {
        match self {
            Kind::Service | Kind::Node | Kind::ConfigMap => "v1",
            Kind::EndpointSlice => "discovery.k8s.io/v1",
            Kind::ServiceCIDR => "networking.k8s.io/v1",
        }
    }

    /// Whether objects of this kind live in a namespace.
    pub fn namespaced(self) -> bool {
        matches!(self, Kind::Service | Kind::EndpointSlice | Kind::ConfigMap)
    }

    /// A kind from its `kind` (`Service`) or resource name (`services`), any case.
    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .find(|k| s.eq_ignore_ascii_case(k.name()) || s.eq_ignore_ascii_case(k.plural()))
    }

    fn from_group_version(api_version: &str, plural: &str) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .find(|k| k.api_version() == api_version && k.plural() == plural)
    }
}

/// What a logged request did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    /// A collection GET without `watch`.
    List,
    /// A collection (or named) GET with `watch=1|true`.
    Watch,
    /// A GET of one named object.
    Get,
    /// A POST (Events).
    Create,
    /// A PATCH (Events).
    Patch,
    /// `/version`, `/api`, `/apis`, health endpoints and group discovery.
    Discovery,
    /// Anything else (unknown paths, unsupported methods).
    Other,
}

/// One request the stand-in answered, for tests to assert how a client behaved.
#[derive(Clone, Debug)]
pub struct LoggedRequest {
    /// HTTP method.
    pub method: String,
    /// URL path.
    pub path: String,
    /// Raw query string (may be empty).
    pub query: String,
    /// Decoded query parameters.
    pub params: BTreeMap<String, String>,
    /// What the request did.
    pub verb: Verb,
    /// The resource (`services`, `events`, …) when the path names one.
    pub resource: Option<String>,
    /// Response status (200 for a watch whose stream started).
    pub status: u16,
    /// When it arrived.
    pub at: Instant,
}

impl LoggedRequest {
    /// A decoded query parameter.
    pub fn param(&self, key: &str) -> Option<&str> {
        self.params.get(key).map(String::as_str)
    }

    /// The `resourceVersion` parameter as a number, when present and numeric.
    pub fn resource_version(&self) -> Option<u64> {
        self.param("resourceVersion").and_then(|v| v.parse().ok())
    }

    /// Whether this is a `verb` request on `resource` (e.g. `Verb::List`, `"services"`).
    pub fn is(&self, verb: Verb, resource: &str) -> bool {
        self.verb == verb && self.resource.as_deref() == Some(resource)
    }
}

/// What the server's tasks share with the control API.
pub(super) struct Shared {
    state: Mutex<State>,
    /// The global RV after every mutation; wakes watch streams.
    changed: Sender<u64>,
    /// Bumped to kill every connection (`set_down(true)`).
    kill: Sender<u64>,
    /// Bumped to cut every watch stream (`drop_watches`).
    cut: Sender<u64>,
    down: AtomicBool,
    latency_us: AtomicU64,
    bookmark_ms: AtomicU64,
    log: Mutex<Vec<LoggedRequest>>,
    watches: AtomicUsize,
    open_watches: AtomicUsize,
    bookmarks: AtomicUsize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    fn notify(&self, rv: u64) {
        self.changed.send_replace(rv);
    }
}

// ---------------------------------------------------------------------------------------
// Control API

/// Configures an [`ApiServer`] before it starts.
#[derive(Clone, Debug)]
pub struct ApiServerBuilder {
    history_limit: usize,
    bookmark_interval: Duration,
}

impl Default for ApiServerBuilder {
    fn default() -> Self {
        ApiServerBuilder {
            history_limit: DEFAULT_HISTORY_LIMIT,
            bookmark_interval: DEFAULT_BOOKMARK_INTERVAL,
        }
    }
}

impl ApiServerBuilder {
    /// Changes kept per resource for resuming watches; a watch that falls further behind,
    /// or starts from an older RV, gets `410 Expired`.
    pub fn history_limit(mut self, changes: usize) -> Self {
        self.history_limit = changes.max(1);
        self
    }

    /// How often watches that asked for bookmarks get one.
    pub fn bookmark_interval(mut self, every: Duration) -> Self {
        self.bookmark_interval = every;
        self
    }

    /// Starts the server on 127.0.0.1 (a free port) in the current network namespace.
    ///
    /// # Panics
    /// When no runtime or socket can be had.
    pub fn start(self) -> ApiServer {
        self.spawn(None).expect("start the API server stand-in")
    }

    /// Starts the server on 127.0.0.1 (a free port) inside the named network namespace
    /// (`/var/run/netns/NAME`, as `ip netns add` makes): the listening socket lives there,
    /// so a process started with `ip netns exec NAME` reaches it at [`ApiServer::url`].
    /// Needs CAP_SYS_ADMIN.
    pub fn start_in_netns(self, name: &str) -> Result<ApiServer, ApiServerError> {
        self.spawn(Some(name.to_string()))
    }

    fn spawn(self, netns: Option<String>) -> Result<ApiServer, ApiServerError> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::new(self.history_limit)),
            changed: Sender::new(1),
            kill: Sender::new(0),
            cut: Sender::new(0),
            down: AtomicBool::new(false),
            latency_us: AtomicU64::new(0),
            bookmark_ms: AtomicU64::new(self.bookmark_interval.as_millis().max(1) as u64),
            log: Mutex::new(Vec::new()),
            watches: AtomicUsize::new(0),
            open_watches: AtomicUsize::new(0),
            bookmarks: AtomicUsize::new(0),
        });
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<io::Result<SocketAddr>>();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let server_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("kproxy-apiserver".into())
            .spawn(move || http::serve_thread(server_shared, netns, ready_tx, stop_rx))?;
        let addr = match ready_rx.recv() {
            Ok(Ok(addr)) => addr,
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e.into());
            }
            Err(_) => {
                let _ = thread.join();
                return Err(io::Error::other("API server thread died while starting").into());
            }
        };
        Ok(ApiServer {
            shared,
            addr,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }
}

/// A running API server stand-in. Dropping it stops the server and closes every
/// connection.
pub struct ApiServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl ApiServer {
    /// A builder for non-default history window or bookmark interval.
    pub fn builder() -> ApiServerBuilder {
        ApiServerBuilder::default()
    }

    /// Starts a server with defaults in the current network namespace.
    ///
    /// # Panics
    /// When no runtime or socket can be had.
    pub fn start() -> ApiServer {
        ApiServerBuilder::default().start()
    }

    /// Starts a server with defaults inside the named network namespace; see
    /// [`ApiServerBuilder::start_in_netns`].
    pub fn start_in_netns(name: &str) -> Result<ApiServer, ApiServerError> {
        ApiServerBuilder::default().start_in_netns(name)
    }

    /// The listening address (127.0.0.1:port, in the server's namespace).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Writes a kubeconfig pointing at this server: no TLS, no credentials.
    pub fn write_kubeconfig(&self, path: impl AsRef<Path>) -> io::Result<()> {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: kproxy-test\n  cluster:\n    server: {}\ncontexts:\n- name: kproxy-test\n  context:\n    cluster: kproxy-test\n    user: kproxy-test\ncurrent-context: kproxy-test\nusers:\n- name: kproxy-test\n  user: {{}}\n",
            self.url()
        );
        std::fs::write(path, text)
    }

    /// Creates or replaces an object (a typed k8s-openapi object or a `serde_json::Value`
    /// with `apiVersion`/`kind`). Sets `metadata.resourceVersion`, and keeps or sets `uid`,
    /// `creationTimestamp` and `generation` (bumped when anything but metadata and status
    /// changed). A namespaced object without a namespace goes to `default`. Returns the
    /// change's resourceVersion.
    ///
    /// # Panics
    /// When the object is not of a served kind or has no name (see [`Self::try_apply`]).
    pub fn apply<T: Serialize + ?Sized>(&self, obj: &T) -> u64 {
        self.try_apply(obj)
            .expect("apply to the API server stand-in")
    }

    /// [`Self::apply`] returning errors instead of panicking.
    pub fn try_apply<T: Serialize + ?Sized>(&self, obj: &T) -> Result<u64, ApiServerError> {
        let v = serde_json::to_value(obj)?;
        let rv = apply_value(&self.shared, v)?;
        self.shared.notify(rv);
        Ok(rv)
    }

    /// Applies many objects, waking watches once; returns the last resourceVersion.
    ///
    /// # Panics
    /// As [`Self::apply`].
    pub fn apply_all<'a, T: Serialize + 'a>(&self, objs: impl IntoIterator<Item = &'a T>) -> u64 {
        let mut rv = self.resource_version();
        for o in objs {
            let v = serde_json::to_value(o).expect("object serializes");
            rv = apply_value(&self.shared, v).expect("apply to the API server stand-in");
        }
        self.shared.notify(rv);
        rv
    }

    /// Deletes an object (`ns` is ignored for cluster-scoped kinds). Returns the deletion's
    /// resourceVersion, or None when there was no such object.
    pub fn delete(&self, kind: Kind, ns: &str, name: &str) -> Option<u64> {
        let rv = self.shared.state().delete(kind, ns, name)?;
        self.shared.notify(rv);
        Some(rv)
    }

    /// The stored object, as a client would get it.
    pub fn get(&self, kind: Kind, ns: &str, name: &str) -> Option<Value> {
        let ns = if kind.namespaced() { ns } else { "" };
        let st = self.shared.state();
        let o = st.kinds[kind.idx()]
            .objects
            .get(&(ns.to_string(), name.to_string()))?;
        serde_json::from_slice(&o.bytes).ok()
    }

    /// How many objects of `kind` are stored.
    pub fn count(&self, kind: Kind) -> usize {
        self.shared.state().kinds[kind.idx()].objects.len()
    }

    /// The current global resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.state().rv
    }

    /// Every Event clients created (core/v1 and events.k8s.io/v1), in creation order, with
    /// later PATCHes merged in.
    pub fn events(&self) -> Vec<Value> {
        self.shared
            .state()
            .events
            .iter()
            .map(|e| e.value.clone())
            .collect()
    }

    /// How often watches started from now on get a BOOKMARK.
    pub fn set_bookmark_interval(&self, every: Duration) {
        self.shared
            .bookmark_ms
            .store(every.as_millis().max(1) as u64, Ordering::SeqCst);
    }

    /// Watch requests served since the start (including ones answered with 410).
    pub fn watch_count(&self) -> usize {
        self.shared.watches.load(Ordering::SeqCst)
    }

    /// Watch streams open now.
    pub fn open_watches(&self) -> usize {
        self.shared.open_watches.load(Ordering::SeqCst)
    }

    /// BOOKMARK events sent since the start.
    pub fn bookmarks_sent(&self) -> usize {
        self.shared.bookmarks.load(Ordering::SeqCst)
    }

    /// Every request answered so far, oldest first.
    pub fn request_log(&self) -> Vec<LoggedRequest> {
        lock(&self.shared.log).clone()
    }

    /// Forgets the request log.
    pub fn clear_request_log(&self) {
        lock(&self.shared.log).clear();
    }
}
