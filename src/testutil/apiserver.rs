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

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderValue, Method, Request, StatusCode};
use axum::response::Response;
use axum::Router;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};

/// How many changes per resource are kept for resuming watches, unless configured. Each
/// keeps the object version it wrote alive, so this bounds memory in long benchmarks.
pub const DEFAULT_HISTORY_LIMIT: usize = 200_000;
/// How often an idle watch gets a BOOKMARK, unless configured.
pub const DEFAULT_BOOKMARK_INTERVAL: Duration = Duration::from_secs(1);
/// Paginated-list snapshots kept at once; the oldest is forgotten first (its continue
/// token then answers 410).
const MAX_SNAPSHOTS: usize = 64;
/// The version `/version` reports.
const GIT_VERSION: &str = "v1.34.0";

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
}

impl Kind {
    /// Every kind, in storage order.
    pub const ALL: [Kind; 4] = [
        Kind::Service,
        Kind::EndpointSlice,
        Kind::Node,
        Kind::ServiceCIDR,
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
        }
    }

    /// The resource name in URLs, e.g. `services`.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Service => "services",
            Kind::EndpointSlice => "endpointslices",
            Kind::Node => "nodes",
            Kind::ServiceCIDR => "servicecidrs",
        }
    }

    /// `apiVersion`, e.g. `discovery.k8s.io/v1`.
    pub fn api_version(self) -> &'static str {
        match self {
            Kind::Service | Kind::Node => "v1",
            Kind::EndpointSlice => "discovery.k8s.io/v1",
            Kind::ServiceCIDR => "networking.k8s.io/v1",
        }
    }

    /// Whether objects of this kind live in a namespace.
    pub fn namespaced(self) -> bool {
        matches!(self, Kind::Service | Kind::EndpointSlice)
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

// ---------------------------------------------------------------------------------------
// Storage

/// One stored object: its JSON bytes and what selectors need, parsed once.
#[derive(Debug)]
struct Obj {
    ns: String,
    name: String,
    labels: BTreeMap<String, String>,
    uid: String,
    created: String,
    generation: i64,
    /// Hash of everything but metadata and status: a change bumps `generation`.
    content_hash: u64,
    bytes: Bytes,
}

impl Obj {
    /// The same object's JSON with `metadata.resourceVersion` set to `rv` (DELETED events
    /// carry the deletion's resourceVersion).
    fn bytes_with_rv(&self, rv: u64) -> Bytes {
        let mut v: Value = serde_json::from_slice(&self.bytes).expect("stored JSON parses");
        v["metadata"]["resourceVersion"] = Value::String(rv.to_string());
        Bytes::from(serde_json::to_vec(&v).expect("JSON serializes"))
    }
}

/// One change, as a watch replays it.
#[derive(Debug)]
struct Change {
    rv: u64,
    /// The object before the change (None for a create).
    prev: Option<Arc<Obj>>,
    /// The object after the change; for a delete, the last state with the deletion's RV.
    next: Arc<Obj>,
    deleted: bool,
}

#[derive(Default)]
struct KindStore {
    objects: BTreeMap<(String, String), Arc<Obj>>,
    history: VecDeque<Arc<Change>>,
    /// Highest RV forgotten from `history`: a watch behind it has missed changes.
    evicted_upto: u64,
}

/// The frozen result of a paginated list's first page.
struct Snapshot {
    kind: Kind,
    rv: u64,
    items: Arc<Vec<Arc<Obj>>>,
}

struct StoredEvent {
    key: (String, String, String),
    value: Value,
}

struct State {
    rv: u64,
    /// A watch may start at RV N only if N >= floor (raised by `compact`).
    floor: u64,
    kinds: [KindStore; 4],
    snapshots: BTreeMap<u64, Snapshot>,
    next_snapshot: u64,
    events: Vec<StoredEvent>,
    uids: u64,
    history_limit: usize,
}

impl State {
    fn next_uid(&mut self) -> String {
        self.uids += 1;
        format!("6b70726f-7879-4000-8000-{:012x}", self.uids)
    }

    fn record(&mut self, kind: Kind, change: Change) {
        let limit = self.history_limit;
        let store = &mut self.kinds[kind.idx()];
        store.history.push_back(Arc::new(change));
        while store.history.len() > limit {
            if let Some(old) = store.history.pop_front() {
                store.evicted_upto = old.rv;
            }
        }
    }
}

struct Shared {
    state: Mutex<State>,
    /// The global RV after every mutation; wakes watch streams.
    changed: watch::Sender<u64>,
    /// Bumped to kill every connection (`set_down(true)`).
    kill: watch::Sender<u64>,
    /// Bumped to cut every watch stream (`drop_watches`).
    cut: watch::Sender<u64>,
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
            state: Mutex::new(State {
                rv: 1,
                floor: 0,
                kinds: Default::default(),
                snapshots: BTreeMap::new(),
                next_snapshot: 1,
                events: Vec::new(),
                uids: 0,
                history_limit: self.history_limit,
            }),
            changed: watch::Sender::new(1),
            kill: watch::Sender::new(0),
            cut: watch::Sender::new(0),
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
            .spawn(move || serve_thread(server_shared, netns, ready_tx, stop_rx))?;
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

fn serve_thread(
    shared: Arc<Shared>,
    netns: Option<String>,
    ready: std::sync::mpsc::Sender<io::Result<SocketAddr>>,
    stop: oneshot::Receiver<()>,
) {
    if let Some(ns) = netns {
        let path = Path::new("/var/run/netns").join(ns);
        if let Err(e) = crate::backend::netlink::enter_netns(&path) {
            let _ = ready.send(Err(io::Error::new(
                e.kind(),
                format!("entering {}: {e}", path.display()),
            )));
            return;
        }
    }
    // Built after setns: the runtime's threads are spawned from this one and so share its
    // namespace; the listener is bound in it either way.
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("kproxy-apiserver-rt")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    rt.block_on(async move {
        let listener = match TcpListener::bind("127.0.0.1:0").await {
            Ok(l) => l,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        let addr = listener.local_addr();
        let ok = addr.is_ok();
        let _ = ready.send(addr);
        if !ok {
            return;
        }
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let listener = KillableListener {
            inner: listener,
            shared,
        };
        tokio::select! {
            _ = async { axum::serve(listener, app).await } => {}
            _ = stop => {}
        }
    });
    // Drops every connection and watch task.
    rt.shutdown_background();
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
        let rv = {
            let mut st = self.shared.state();
            let ns = if kind.namespaced() { ns } else { "" };
            let key = (ns.to_string(), name.to_string());
            let old = st.kinds[kind.idx()].objects.remove(&key)?;
            st.rv += 1;
            let rv = st.rv;
            let tomb = Arc::new(Obj {
                ns: old.ns.clone(),
                name: old.name.clone(),
                labels: old.labels.clone(),
                uid: old.uid.clone(),
                created: old.created.clone(),
                generation: old.generation,
                content_hash: old.content_hash,
                bytes: old.bytes_with_rv(rv),
            });
            st.record(
                kind,
                Change {
                    rv,
                    prev: Some(old),
                    next: tomb,
                    deleted: true,
                },
            );
            rv
        };
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

    /// While down, new connections are closed as soon as they are accepted and requests
    /// that still arrive get 503. Going down also closes every open connection (watch
    /// streams are cut without their final chunk).
    pub fn set_down(&self, down: bool) {
        self.shared.down.store(down, Ordering::SeqCst);
        if down {
            self.shared.kill.send_modify(|e| *e += 1);
        }
    }

    /// Whether [`Self::set_down`] is in force.
    pub fn is_down(&self) -> bool {
        self.shared.down.load(Ordering::SeqCst)
    }

    /// Cuts every open watch stream mid-way (the connection is aborted, no final chunk),
    /// as a load balancer or apiserver restart would.
    pub fn drop_watches(&self) {
        self.shared.cut.send_modify(|e| *e += 1);
    }

    /// Forgets all history, as etcd compaction does: a watch (new or resuming) from any
    /// resourceVersion issued before this call gets `410 Expired`, and continue tokens of
    /// lists in progress stop working. Watches already streaming and caught up go on.
    pub fn compact(&self) {
        let rv = {
            let mut st = self.shared.state();
            // A tick of the clock, so the next list's RV is the first one still valid.
            st.rv += 1;
            st.floor = st.rv;
            for k in &mut st.kinds {
                if let Some(last) = k.history.back() {
                    k.evicted_upto = k.evicted_upto.max(last.rv);
                }
                k.history.clear();
            }
            st.snapshots.clear();
            st.rv
        };
        self.shared.notify(rv);
    }

    /// Delays every response by `delay` (zero turns it off).
    pub fn set_latency(&self, delay: Duration) {
        self.shared
            .latency_us
            .store(delay.as_micros() as u64, Ordering::SeqCst);
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

fn apply_value(shared: &Shared, mut v: Value) -> Result<u64, ApiServerError> {
    let kind_name = v
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let kind = Kind::ALL
        .into_iter()
        .find(|k| k.name() == kind_name)
        .ok_or_else(|| ApiServerError::UnknownKind(kind_name.clone()))?;
    let Some(top) = v.as_object_mut() else {
        return Err(ApiServerError::UnknownKind(kind_name));
    };
    top.insert(
        "apiVersion".into(),
        Value::String(kind.api_version().into()),
    );
    let content_hash = {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for (k, val) in top.iter() {
            if !matches!(k.as_str(), "metadata" | "status" | "apiVersion" | "kind") {
                k.hash(&mut h);
                serde_json::to_vec(val)?.hash(&mut h);
            }
        }
        h.finish()
    };
    let meta = top
        .entry("metadata")
        .or_insert_with(|| Value::Object(Default::default()));
    if !meta.is_object() {
        *meta = Value::Object(Default::default());
    }
    let meta = meta.as_object_mut().expect("metadata is an object");
    let name = meta
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or(ApiServerError::NoName)?
        .to_string();
    let ns = if kind.namespaced() {
        let ns = meta
            .get("namespace")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .unwrap_or("default")
            .to_string();
        meta.insert("namespace".into(), Value::String(ns.clone()));
        ns
    } else {
        meta.remove("namespace");
        String::new()
    };
    let labels: BTreeMap<String, String> = meta
        .get("labels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default();

    let mut st = shared.state();
    let key = (ns.clone(), name.clone());
    let prev = st.kinds[kind.idx()].objects.get(&key).cloned();
    let given = |f: &str| {
        meta.get(f)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let uid = match &prev {
        Some(p) => p.uid.clone(),
        None => given("uid").unwrap_or_else(|| st.next_uid()),
    };
    let created = match &prev {
        Some(p) => p.created.clone(),
        None => given("creationTimestamp").unwrap_or_else(rfc3339_now),
    };
    let generation = match &prev {
        Some(p) if p.content_hash == content_hash => p.generation,
        Some(p) => p.generation + 1,
        None => 1,
    };
    st.rv += 1;
    let rv = st.rv;
    meta.insert("resourceVersion".into(), Value::String(rv.to_string()));
    meta.insert("uid".into(), Value::String(uid.clone()));
    meta.insert("creationTimestamp".into(), Value::String(created.clone()));
    meta.insert("generation".into(), Value::from(generation));
    let bytes = Bytes::from(serde_json::to_vec(&v)?);
    let obj = Arc::new(Obj {
        ns,
        name,
        labels,
        uid,
        created,
        generation,
        content_hash,
        bytes,
    });
    st.kinds[kind.idx()].objects.insert(key, obj.clone());
    st.record(
        kind,
        Change {
            rv,
            prev,
            next: obj,
            deleted: false,
        },
    );
    Ok(rv)
}

/// Now as RFC 3339 UTC with second precision, as Kubernetes writes timestamps.
fn rfc3339_now() -> String {
    let now = k8s_openapi::jiff::Timestamp::now().as_second();
    k8s_openapi::jiff::Timestamp::from_second(now)
        .unwrap_or_default()
        .to_string()
}

// ---------------------------------------------------------------------------------------
// Connections: a listener whose connections the control API can kill.

struct KillableListener {
    inner: TcpListener,
    shared: Arc<Shared>,
}

impl axum::serve::Listener for KillableListener {
    type Io = KillableConn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    if self.shared.down.load(Ordering::SeqCst) {
                        drop(stream);
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    let mut rx = self.shared.kill.subscribe();
                    let killed = Box::pin(async move {
                        let _ = rx.changed().await;
                    });
                    return (
                        KillableConn {
                            inner: stream,
                            killed_fut: killed,
                            killed: false,
                        },
                        addr,
                    );
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A TCP connection that fails every read and write once the server's kill epoch moves.
struct KillableConn {
    inner: TcpStream,
    killed_fut: Pin<Box<dyn Future<Output = ()> + Send>>,
    killed: bool,
}

impl KillableConn {
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if !self.killed && self.killed_fut.as_mut().poll(cx).is_ready() {
            self.killed = true;
        }
        if self.killed {
            Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "connection killed by the API server stand-in",
            ))
        } else {
            Ok(())
        }
    }
}

impl AsyncRead for KillableConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Err(e) = this.check(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for KillableConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Err(e) = this.check(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Err(e) = this.check(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

// ---------------------------------------------------------------------------------------
// Selectors

#[derive(Debug, Clone)]
enum LabelReq {
    Exists(String),
    NotExists(String),
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

impl LabelReq {
    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            LabelReq::Exists(k) => labels.contains_key(k),
            LabelReq::NotExists(k) => !labels.contains_key(k),
            LabelReq::Eq(k, v) => labels.get(k) == Some(v),
            LabelReq::NotEq(k, v) => labels.get(k) != Some(v),
            LabelReq::In(k, vs) => labels.get(k).is_some_and(|l| vs.contains(l)),
            LabelReq::NotIn(k, vs) => labels.get(k).is_none_or(|l| !vs.contains(l)),
        }
    }
}

fn valid_label_key(k: &str) -> bool {
    !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

/// Parses a label selector: `k`, `!k`, `k=v`, `k==v`, `k!=v`, `k in (a,b)`,
/// `k notin (a,b)`, joined by commas.
fn parse_label_selector(s: &str) -> Result<Vec<LabelReq>, String> {
    let mut terms = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                terms.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&s[start..]);
    let bad = |t: &str| format!("unable to parse requirement: invalid label selector term {t:?}");
    let mut out = Vec::new();
    for t in terms.into_iter().map(str::trim).filter(|t| !t.is_empty()) {
        let req = if let Some(k) = t.strip_prefix('!') {
            LabelReq::NotExists(k.trim().to_string())
        } else if let Some(open) = t.find('(') {
            let inner = t[open + 1..].strip_suffix(')').ok_or_else(|| bad(t))?;
            let vals: Vec<String> = inner
                .split(',')
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
                .collect();
            let mut lhs = t[..open].split_whitespace();
            let (Some(k), Some(op), None) = (lhs.next(), lhs.next(), lhs.next()) else {
                return Err(bad(t));
            };
            match op {
                "in" => LabelReq::In(k.to_string(), vals),
                "notin" => LabelReq::NotIn(k.to_string(), vals),
                _ => return Err(bad(t)),
            }
        } else if let Some((k, v)) = t.split_once("!=") {
            LabelReq::NotEq(k.trim().to_string(), v.trim().to_string())
        } else if let Some((k, v)) = t.split_once("==") {
            LabelReq::Eq(k.trim().to_string(), v.trim().to_string())
        } else if let Some((k, v)) = t.split_once('=') {
            LabelReq::Eq(k.trim().to_string(), v.trim().to_string())
        } else {
            LabelReq::Exists(t.to_string())
        };
        let key = match &req {
            LabelReq::Exists(k)
            | LabelReq::NotExists(k)
            | LabelReq::Eq(k, _)
            | LabelReq::NotEq(k, _)
            | LabelReq::In(k, _)
            | LabelReq::NotIn(k, _) => k,
        };
        if !valid_label_key(key) {
            return Err(bad(t));
        }
        out.push(req);
    }
    Ok(out)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Name,
    Namespace,
}

/// Parses a field selector over `metadata.name` / `metadata.namespace` (`=`, `==`, `!=`).
fn parse_field_selector(s: &str) -> Result<Vec<(Field, bool, String)>, String> {
    let mut out = Vec::new();
    for t in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let (f, eq, v) = if let Some((f, v)) = t.split_once("!=") {
            (f, false, v)
        } else if let Some((f, v)) = t.split_once("==") {
            (f, true, v)
        } else if let Some((f, v)) = t.split_once('=') {
            (f, true, v)
        } else {
            return Err(format!("invalid field selector term {t:?}"));
        };
        let field = match f.trim() {
            "metadata.name" => Field::Name,
            "metadata.namespace" => Field::Namespace,
            other => return Err(format!("field label not supported: {other}")),
        };
        out.push((field, eq, v.trim().to_string()));
    }
    Ok(out)
}

/// Which objects a list or watch sees: path namespace/name plus selectors.
#[derive(Debug, Clone, Default)]
struct Filter {
    ns: Option<String>,
    name: Option<String>,
    labels: Vec<LabelReq>,
    fields: Vec<(Field, bool, String)>,
}

impl Filter {
    fn matches(&self, o: &Obj) -> bool {
        self.ns.as_ref().is_none_or(|n| *n == o.ns)
            && self.name.as_ref().is_none_or(|n| *n == o.name)
            && self.labels.iter().all(|r| r.matches(&o.labels))
            && self.fields.iter().all(|(f, eq, v)| {
                let have = match f {
                    Field::Name => &o.name,
                    Field::Namespace => &o.ns,
                };
                (have == v) == *eq
            })
    }
}

// ---------------------------------------------------------------------------------------
// HTTP

fn parse_query(q: &str) -> BTreeMap<String, String> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => match (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            ) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn json_response(code: StatusCode, body: impl Into<Body>) -> Response {
    let mut r = Response::new(body.into());
    *r.status_mut() = code;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn status_value(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response {
    let v = status_value(code.as_u16(), reason, message);
    json_response(code, serde_json::to_vec(&v).unwrap_or_default())
}

fn value_response(code: StatusCode, v: &Value) -> Response {
    json_response(code, serde_json::to_vec(v).unwrap_or_default())
}

/// What a path names.
enum Route {
    Version,
    ApiVersions,
    ApiGroups,
    Health,
    GroupVersion(&'static str),
    Resource {
        kind: Kind,
        ns: Option<String>,
        name: Option<String>,
    },
    Events {
        api_version: &'static str,
        ns: Option<String>,
        name: Option<String>,
    },
    NotFound,
}

const GROUP_VERSIONS: [&str; 4] = [
    "v1",
    "discovery.k8s.io/v1",
    "networking.k8s.io/v1",
    "events.k8s.io/v1",
];

fn route(path: &str) -> Route {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (gv, rest): (&str, &[&str]) = match segs.as_slice() {
        ["version"] => return Route::Version,
        ["api"] => return Route::ApiVersions,
        ["apis"] => return Route::ApiGroups,
        ["healthz" | "livez" | "readyz"] => return Route::Health,
        ["api", "v1", rest @ ..] => ("v1", rest),
        ["apis", g, v, rest @ ..] => {
            let gv = format!("{g}/{v}");
            match GROUP_VERSIONS.iter().find(|x| **x == gv) {
                Some(x) => (x, rest),
                None => return Route::NotFound,
            }
        }
        _ => return Route::NotFound,
    };
    let (ns, plural, name) = match rest {
        [] => return Route::GroupVersion(gv),
        ["namespaces", ns, plural] => (Some(ns.to_string()), *plural, None),
        ["namespaces", ns, plural, name] => (Some(ns.to_string()), *plural, Some(name.to_string())),
        [plural] => (None, *plural, None),
        [plural, name] if *plural != "namespaces" => (None, *plural, Some(name.to_string())),
        _ => return Route::NotFound,
    };
    if plural == "events" && (gv == "v1" || gv == "events.k8s.io/v1") {
        return Route::Events {
            api_version: gv,
            ns,
            name,
        };
    }
    match Kind::from_group_version(gv, plural) {
        Some(kind) if ns.is_none() || kind.namespaced() => Route::Resource { kind, ns, name },
        _ => Route::NotFound,
    }
}

fn is_true(v: Option<&String>) -> bool {
    matches!(v.map(String::as_str), Some("1" | "true" | "True"))
}

async fn handle(
    axum::extract::State(shared): axum::extract::State<Arc<Shared>>,
    req: Request<Body>,
) -> Response {
    let latency = Duration::from_micros(shared.latency_us.load(Ordering::SeqCst));
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let at = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let params = parse_query(&query);
    let route = route(&path);
    let (verb, resource) = match &route {
        Route::Resource { kind, name, .. } => {
            let verb = if method != Method::GET {
                Verb::Other
            } else if is_true(params.get("watch")) {
                Verb::Watch
            } else if name.is_some() {
                Verb::Get
            } else {
                Verb::List
            };
            (verb, Some(kind.plural().to_string()))
        }
        Route::Events { name, .. } => {
            let verb = match (&method, name) {
                (&Method::POST, _) => Verb::Create,
                (&Method::PATCH, _) => Verb::Patch,
                (&Method::GET, None) => Verb::List,
                (&Method::GET, Some(_)) => Verb::Get,
                _ => Verb::Other,
            };
            (verb, Some("events".to_string()))
        }
        Route::NotFound => (Verb::Other, None),
        _ => (Verb::Discovery, None),
    };

    let resp = if shared.down.load(Ordering::SeqCst) {
        status(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "the API server stand-in is down",
        )
    } else {
        match route {
            Route::Version => value_response(
                StatusCode::OK,
                &json!({
                    "major": "1", "minor": "34", "gitVersion": GIT_VERSION,
                    "gitCommit": "0000000000000000000000000000000000000000",
                    "gitTreeState": "clean", "buildDate": "2025-01-01T00:00:00Z",
                    "goVersion": "go1.24", "compiler": "gc", "platform": "linux/amd64",
                }),
            ),
            Route::ApiVersions => value_response(
                StatusCode::OK,
                &json!({"kind": "APIVersions", "versions": ["v1"],
                        "serverAddressByClientCIDRs": []}),
            ),
            Route::ApiGroups => {
                let groups: Vec<Value> = GROUP_VERSIONS[1..]
                    .iter()
                    .map(|gv| {
                        let (g, v) = gv.split_once('/').expect("group/version");
                        let ver = json!({"groupVersion": gv, "version": v});
                        json!({"name": g, "versions": [ver.clone()], "preferredVersion": ver})
                    })
                    .collect();
                value_response(
                    StatusCode::OK,
                    &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}),
                )
            }
            Route::Health => {
                let mut r = Response::new(Body::from("ok"));
                r.headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
                r
            }
            Route::GroupVersion(gv) => group_version_resources(gv),
            Route::NotFound => status(
                StatusCode::NOT_FOUND,
                "NotFound",
                &format!("the server could not find the requested resource ({path})"),
            ),
            Route::Resource { kind, ns, name } => match verb {
                Verb::Watch => start_watch(&shared, kind, ns, name, &params),
                Verb::Get => get_object(&shared, kind, ns, name.unwrap_or_default()),
                Verb::List => list(&shared, kind, ns, &params),
                _ => status(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "MethodNotAllowed",
                    &format!("the API server stand-in serves {} read-only", kind.plural()),
                ),
            },
            Route::Events {
                api_version,
                ns,
                name,
            } => {
                let body = match axum::body::to_bytes(req.into_body(), 64 << 20).await {
                    Ok(b) => b,
                    Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", &e.to_string()),
                };
                events(&shared, verb, api_version, ns, name, &body)
            }
        }
    };
    lock(&shared.log).push(LoggedRequest {
        method: method.to_string(),
        path,
        query,
        params,
        verb,
        resource,
        status: resp.status().as_u16(),
        at,
    });
    resp
}

fn group_version_resources(gv: &str) -> Response {
    let mut resources: Vec<Value> = Kind::ALL
        .into_iter()
        .filter(|k| k.api_version() == gv)
        .map(|k| {
            json!({"name": k.plural(), "singularName": k.name().to_lowercase(),
                   "namespaced": k.namespaced(), "kind": k.name(),
                   "verbs": ["get", "list", "watch"]})
        })
        .collect();
    if gv == "v1" || gv == "events.k8s.io/v1" {
        resources.push(
            json!({"name": "events", "singularName": "event", "namespaced": true,
                              "kind": "Event", "verbs": ["create", "get", "list", "patch"]}),
        );
    }
    value_response(
        StatusCode::OK,
        &json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv,
                "resources": resources}),
    )
}

fn filter_from(
    ns: Option<String>,
    name: Option<String>,
    params: &BTreeMap<String, String>,
) -> Result<Filter, String> {
    let labels = match params.get("labelSelector") {
        Some(s) => parse_label_selector(s)?,
        None => Vec::new(),
    };
    let fields = match params.get("fieldSelector") {
        Some(s) => parse_field_selector(s)?,
        None => Vec::new(),
    };
    Ok(Filter {
        ns,
        name,
        labels,
        fields,
    })
}

fn get_object(shared: &Shared, kind: Kind, ns: Option<String>, name: String) -> Response {
    let st = shared.state();
    let key = (ns.unwrap_or_default(), name);
    match st.kinds[kind.idx()].objects.get(&key) {
        Some(o) => json_response(StatusCode::OK, o.bytes.clone()),
        None => {
            let mut v = status_value(
                404,
                "NotFound",
                &format!("{} \"{}\" not found", kind.plural(), key.1),
            );
            v["details"] = json!({"name": key.1, "kind": kind.plural(),
                                  "group": kind.api_version().rsplit_once('/').map(|x| x.0).unwrap_or("")});
            value_response(StatusCode::NOT_FOUND, &v)
        }
    }
}

fn list(
    shared: &Shared,
    kind: Kind,
    ns: Option<String>,
    params: &BTreeMap<String, String>,
) -> Response {
    let filter = match filter_from(ns, None, params) {
        Ok(f) => f,
        Err(m) => return status(StatusCode::BAD_REQUEST, "BadRequest", &m),
    };
    let limit = params
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0);
    let expired = |m: &str| status(StatusCode::GONE, "Expired", m);
    let mut st = shared.state();
    let (rv, items, offset, snap_id) = match params.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => {
            let parsed = token
                .strip_prefix("kp")
                .and_then(|t| t.split_once('.'))
                .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<usize>().ok()?)));
            let Some((id, offset)) = parsed else {
                return status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "invalid continue token",
                );
            };
            match st.snapshots.get(&id) {
                Some(s) if s.kind == kind => (s.rv, s.items.clone(), offset, Some(id)),
                _ => {
                    return expired(
                        "The provided continue parameter is too old to display a consistent \
                         list result. You can start a new list without the continue parameter.",
                    )
                }
            }
        }
        None => {
            // resourceVersion / resourceVersionMatch are tolerated: every list is served from
            // the current state, except an Exact match older than the compaction floor.
            if params.get("resourceVersionMatch").map(String::as_str) == Some("Exact") {
                if let Some(rv) = params
                    .get("resourceVersion")
                    .and_then(|r| r.parse::<u64>().ok())
                {
                    if rv < st.floor {
                        return expired(&format!("too old resource version: {rv} ({})", st.floor));
                    }
                }
            }
            let items: Vec<Arc<Obj>> = st.kinds[kind.idx()]
                .objects
                .values()
                .filter(|o| filter.matches(o))
                .cloned()
                .collect();
            (st.rv, Arc::new(items), 0, None)
        }
    };
    let end = match limit {
        Some(l) => offset.saturating_add(l).min(items.len()),
        None => items.len(),
    };
    let start = offset.min(end);
    let more = end < items.len();
    let token = if more {
        let id = match snap_id {
            Some(id) => id,
            None => {
                let id = st.next_snapshot;
                st.next_snapshot += 1;
                st.snapshots.insert(
                    id,
                    Snapshot {
                        kind,
                        rv,
                        items: items.clone(),
                    },
                );
                while st.snapshots.len() > MAX_SNAPSHOTS {
                    st.snapshots.pop_first();
                }
                id
            }
        };
        Some(format!("kp{id}.{end}"))
    } else {
        if let Some(id) = snap_id {
            st.snapshots.remove(&id);
        }
        None
    };
    drop(st);

    let mut meta = json!({"resourceVersion": rv.to_string()});
    if let Some(t) = token {
        meta["continue"] = Value::String(t);
        meta["remainingItemCount"] = Value::from((items.len() - end) as u64);
    }
    let page = &items[start..end];
    let mut out = Vec::with_capacity(page.iter().map(|o| o.bytes.len() + 1).sum::<usize>() + 256);
    out.extend_from_slice(
        format!(
            r#"{{"kind":"{}List","apiVersion":"{}","metadata":{},"items":["#,
            kind.name(),
            kind.api_version(),
            meta
        )
        .as_bytes(),
    );
    for (i, o) in page.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&o.bytes);
    }
    out.extend_from_slice(b"]}");
    json_response(StatusCode::OK, out)
}

fn watch_line(typ: &str, object: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(object.len() + 32);
    out.extend_from_slice(br#"{"type":""#);
    out.extend_from_slice(typ.as_bytes());
    out.extend_from_slice(br#"","object":"#);
    out.extend_from_slice(object);
    out.extend_from_slice(b"}\n");
    Bytes::from(out)
}

fn bookmark_line(kind: Kind, rv: u64, initial_end: bool) -> Bytes {
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if initial_end {
        meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    let obj = json!({"kind": kind.name(), "apiVersion": kind.api_version(), "metadata": meta});
    watch_line("BOOKMARK", &serde_json::to_vec(&obj).unwrap_or_default())
}

fn expired_line(rv: u64, oldest: u64) -> Bytes {
    let st = status_value(
        410,
        "Expired",
        &format!("too old resource version: {rv} ({oldest})"),
    );
    watch_line("ERROR", &serde_json::to_vec(&st).unwrap_or_default())
}

/// The watch event a change is, for a watch with `filter`: the real server's rules for
/// objects entering and leaving a selector.
fn event_for(c: &Change, filter: &Filter) -> Option<Bytes> {
    let was = c.prev.as_ref().is_some_and(|p| filter.matches(p));
    if c.deleted {
        return was.then(|| watch_line("DELETED", &c.next.bytes));
    }
    let is = filter.matches(&c.next);
    match (was, is) {
        (true, true) => Some(watch_line("MODIFIED", &c.next.bytes)),
        (false, true) => Some(watch_line("ADDED", &c.next.bytes)),
        (true, false) => {
            let prev = c.prev.as_ref().expect("was matching");
            Some(watch_line("DELETED", &prev.bytes_with_rv(c.rv)))
        }
        (false, false) => None,
    }
}

struct WatchPlan {
    kind: Kind,
    filter: Filter,
    initial: Vec<Arc<Obj>>,
    initial_end_bookmark: bool,
    cursor: u64,
    expired: Option<u64>,
    bookmarks: bool,
    timeout: Option<Duration>,
    bookmark_every: Duration,
}

/// What wakes or ends a watch; subscribed before the response head is sent, so a cut or a
/// kill right after the client saw the stream start is not missed.
struct WatchSignals {
    changed: watch::Receiver<u64>,
    cut: watch::Receiver<u64>,
    kill: watch::Receiver<u64>,
}

fn start_watch(
    shared: &Arc<Shared>,
    kind: Kind,
    ns: Option<String>,
    name: Option<String>,
    params: &BTreeMap<String, String>,
) -> Response {
    let filter = match filter_from(ns, name, params) {
        Ok(f) => f,
        Err(m) => return status(StatusCode::BAD_REQUEST, "BadRequest", &m),
    };
    let rv_param = params
        .get("resourceVersion")
        .map(String::as_str)
        .unwrap_or("");
    let from_any = rv_param.is_empty() || rv_param == "0";
    let send_initial = match params.get("sendInitialEvents") {
        Some(_) => is_true(params.get("sendInitialEvents")),
        None => from_any,
    };
    let cursor_param = if from_any {
        None
    } else {
        match rv_param.parse::<u64>() {
            Ok(n) => Some(n),
            Err(_) => {
                return status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    &format!("invalid resource version: {rv_param:?}"),
                )
            }
        }
    };
    let timeout = params
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .filter(|t| *t > 0)
        .map(Duration::from_secs);
    let plan = {
        let st = shared.state();
        let store = &st.kinds[kind.idx()];
        let oldest = st.floor.max(store.evicted_upto);
        let expired = cursor_param
            .filter(|n| !send_initial && *n < oldest)
            .map(|_| oldest);
        let initial = if send_initial && expired.is_none() {
            store
                .objects
                .values()
                .filter(|o| filter.matches(o))
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        let cursor = if send_initial {
            st.rv
        } else {
            cursor_param.unwrap_or(st.rv)
        };
        WatchPlan {
            kind,
            filter,
            initial,
            initial_end_bookmark: send_initial && params.contains_key("sendInitialEvents"),
            cursor,
            expired,
            bookmarks: is_true(params.get("allowWatchBookmarks")),
            timeout,
            bookmark_every: Duration::from_millis(shared.bookmark_ms.load(Ordering::SeqCst)),
        }
    };
    shared.watches.fetch_add(1, Ordering::SeqCst);
    shared.open_watches.fetch_add(1, Ordering::SeqCst);
    let signals = WatchSignals {
        changed: shared.changed.subscribe(),
        cut: shared.cut.subscribe(),
        kill: shared.kill.subscribe(),
    };
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    // The body watches cut and kill itself, ahead of buffered lines: the stream then fails,
    // and hyper aborts the connection without the terminating chunk.
    let body = BodyState {
        rx,
        cut: shared.cut.subscribe(),
        kill: shared.kill.subscribe(),
    };
    tokio::spawn(run_watch(shared.clone(), plan, signals, tx));
    let stream = futures::stream::unfold(Some(body), |state| async move {
        let mut b = state?;
        let aborted = || io::Error::new(io::ErrorKind::ConnectionAborted, "watch cut");
        tokio::select! {
            biased;
            _ = b.cut.changed() => Some((Err(aborted()), None)),
            _ = b.kill.changed() => Some((Err(aborted()), None)),
            line = b.rx.recv() => line.map(|l| (Ok(l), Some(b))),
        }
    });
    json_response(StatusCode::OK, Body::from_stream(stream))
}

struct BodyState {
    rx: mpsc::Receiver<Bytes>,
    cut: watch::Receiver<u64>,
    kill: watch::Receiver<u64>,
}

struct OpenWatch<'a>(&'a Shared);

impl Drop for OpenWatch<'_> {
    fn drop(&mut self) {
        self.0.open_watches.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Streams one watch until its timeout, a cut, a kill, history loss or the client leaving.
async fn run_watch(
    shared: Arc<Shared>,
    plan: WatchPlan,
    signals: WatchSignals,
    tx: mpsc::Sender<Bytes>,
) {
    let _open = OpenWatch(&shared);
    let WatchPlan {
        kind,
        filter,
        initial,
        initial_end_bookmark,
        mut cursor,
        expired,
        bookmarks,
        timeout,
        bookmark_every,
    } = plan;
    let WatchSignals {
        mut changed,
        mut cut,
        mut kill,
    } = signals;
    // Sends one line unless the stream is cut, killed or gone; false: stop.
    macro_rules! send {
        ($line:expr) => {
            tokio::select! {
                biased;
                _ = cut.changed() => false,
                _ = kill.changed() => false,
                r = tx.send($line) => r.is_ok(),
            }
        };
    }
    let bookmark = |rv: u64, initial_end: bool| {
        shared.bookmarks.fetch_add(1, Ordering::SeqCst);
        bookmark_line(kind, rv, initial_end)
    };

    if let Some(oldest) = expired {
        send!(expired_line(cursor, oldest));
        return;
    }
    for o in initial {
        if !send!(watch_line("ADDED", &o.bytes)) {
            return;
        }
    }
    if initial_end_bookmark && !send!(bookmark(cursor, true)) {
        return;
    }
    let deadline = tokio::time::sleep(timeout.unwrap_or(Duration::from_secs(365 * 86_400)));
    tokio::pin!(deadline);
    let mut ticker =
        tokio::time::interval_at(tokio::time::Instant::now() + bookmark_every, bookmark_every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let (batch, gone) = {
            let st = shared.state();
            let store = &st.kinds[kind.idx()];
            if cursor < store.evicted_upto {
                (Vec::new(), Some(store.evicted_upto))
            } else {
                let from = store.history.partition_point(|c| c.rv <= cursor);
                let batch: Vec<Arc<Change>> = store.history.range(from..).cloned().collect();
                cursor = st.rv;
                (batch, None)
            }
        };
        if let Some(oldest) = gone {
            send!(expired_line(cursor, oldest));
            return;
        }
        for c in batch {
            if let Some(line) = event_for(&c, &filter) {
                if !send!(line) {
                    return;
                }
            }
        }
        tokio::select! {
            biased;
            _ = cut.changed() => return,
            _ = kill.changed() => return,
            _ = tx.closed() => return,
            r = changed.changed() => if r.is_err() { return },
            _ = &mut deadline => {
                if bookmarks {
                    send!(bookmark(cursor, false));
                }
                return;
            }
            _ = ticker.tick() => {
                if bookmarks && !send!(bookmark(cursor, false)) {
                    return;
                }
            }
        }
    }
}

fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = Value::Object(Default::default());
            }
            let t = target.as_object_mut().expect("object");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

fn events(
    shared: &Shared,
    verb: Verb,
    api_version: &'static str,
    ns: Option<String>,
    name: Option<String>,
    body: &[u8],
) -> Response {
    let ns_or_all = ns.clone();
    let parse = || -> Result<Value, String> {
        serde_json::from_slice(body).map_err(|e| format!("invalid JSON body: {e}"))
    };
    match verb {
        Verb::Create => {
            let (Some(ns), None) = (ns, name) else {
                return status(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "MethodNotAllowed",
                    "POST events to /namespaces/{ns}/events",
                );
            };
            let mut v = match parse() {
                Ok(v) => v,
                Err(m) => return status(StatusCode::BAD_REQUEST, "BadRequest", &m),
            };
            if !v.is_object() {
                return status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "event is not an object",
                );
            }
            let mut st = shared.state();
            v["apiVersion"] = Value::String(api_version.into());
            v["kind"] = Value::String("Event".into());
            if !v["metadata"].is_object() {
                v["metadata"] = json!({});
            }
            let name = match v["metadata"]["name"].as_str().filter(|n| !n.is_empty()) {
                Some(n) => n.to_string(),
                None => {
                    let prefix = v["metadata"]["generateName"]
                        .as_str()
                        .unwrap_or("")
                        .to_string();
                    if prefix.is_empty() {
                        return status(
                            StatusCode::UNPROCESSABLE_ENTITY,
                            "Invalid",
                            "metadata.name or metadata.generateName is required",
                        );
                    }
                    format!("{prefix}{:05x}", st.uids + 1)
                }
            };
            let key = (api_version.to_string(), ns.clone(), name.clone());
            if st.events.iter().any(|e| e.key == key) {
                return status(
                    StatusCode::CONFLICT,
                    "AlreadyExists",
                    &format!("events \"{name}\" already exists"),
                );
            }
            st.rv += 1;
            let uid = st.next_uid();
            let m = &mut v["metadata"];
            m["name"] = Value::String(name);
            m["namespace"] = Value::String(ns);
            m["resourceVersion"] = Value::String(st.rv.to_string());
            m["uid"] = Value::String(uid);
            m["creationTimestamp"] = Value::String(rfc3339_now());
            st.events.push(StoredEvent {
                key,
                value: v.clone(),
            });
            value_response(StatusCode::CREATED, &v)
        }
        Verb::Patch | Verb::Get => {
            let (Some(ns), Some(name)) = (ns, name) else {
                return status(StatusCode::NOT_FOUND, "NotFound", "no such event");
            };
            let patch = if verb == Verb::Patch {
                match parse() {
                    Ok(v) => Some(v),
                    Err(m) => return status(StatusCode::BAD_REQUEST, "BadRequest", &m),
                }
            } else {
                None
            };
            let mut st = shared.state();
            let key = (api_version.to_string(), ns, name.clone());
            let next_rv = st.rv + 1;
            let Some(e) = st.events.iter_mut().find(|e| e.key == key) else {
                return status(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    &format!("events \"{name}\" not found"),
                );
            };
            if let Some(p) = patch {
                merge_patch(&mut e.value, &p);
                e.value["metadata"]["resourceVersion"] = Value::String(next_rv.to_string());
                let v = e.value.clone();
                st.rv = next_rv;
                value_response(StatusCode::OK, &v)
            } else {
                value_response(StatusCode::OK, &e.value)
            }
        }
        Verb::List => {
            let st = shared.state();
            let items: Vec<&Value> = st
                .events
                .iter()
                .filter(|e| {
                    e.key.0 == api_version && ns_or_all.as_ref().is_none_or(|n| *n == e.key.1)
                })
                .map(|e| &e.value)
                .collect();
            value_response(
                StatusCode::OK,
                &json!({"kind": "EventList", "apiVersion": api_version,
                        "metadata": {"resourceVersion": st.rv.to_string()}, "items": items}),
            )
        }
        _ => status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "events accept GET, POST and PATCH",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn label_selectors() {
        let l = labels(&[("app", "web"), ("tier", "front")]);
        let m = |s: &str| {
            parse_label_selector(s)
                .unwrap()
                .iter()
                .all(|r| r.matches(&l))
        };
        assert!(m(""));
        assert!(m("app"));
        assert!(!m("!app"));
        assert!(m(
            "!service.kubernetes.io/headless,!service.kubernetes.io/service-proxy-name"
        ));
        assert!(m("app=web,tier==front"));
        assert!(!m("app!=web"));
        assert!(m("missing!=x"));
        assert!(m("app in (web, db),tier notin (back)"));
        assert!(!m("app notin (web)"));
        assert!(parse_label_selector("a b").is_err());
        assert!(parse_label_selector("a in b").is_err());
    }

    #[test]
    fn field_selectors() {
        assert!(parse_field_selector("spec.clusterIP=1").is_err());
        let f = parse_field_selector("metadata.name=a,metadata.namespace!=b").unwrap();
        assert_eq!(f.len(), 2);
    }

    #[test]
    fn query_decoding() {
        let q = parse_query("labelSelector=%21a%2Cb%3Dc&limit=5&x");
        assert_eq!(q["labelSelector"], "!a,b=c");
        assert_eq!(q["limit"], "5");
        assert_eq!(q["x"], "");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }

    #[test]
    fn timestamps() {
        let t = rfc3339_now();
        assert_eq!(t.len(), 20, "{t}");
        assert!(t.starts_with("20") && t.ends_with('Z'));
    }

    #[test]
    fn routes() {
        assert!(matches!(
            route("/api/v1/services"),
            Route::Resource {
                kind: Kind::Service,
                ns: None,
                name: None
            }
        ));
        assert!(matches!(
            route("/apis/discovery.k8s.io/v1/namespaces/a/endpointslices/b"),
            Route::Resource {
                kind: Kind::EndpointSlice,
                ..
            }
        ));
        assert!(matches!(
            route("/api/v1/namespaces/a/nodes"),
            Route::NotFound
        ));
        assert!(matches!(
            route("/api/v1/nodes/n1"),
            Route::Resource {
                kind: Kind::Node,
                ..
            }
        ));
        assert!(matches!(
            route("/apis/events.k8s.io/v1/namespaces/a/events"),
            Route::Events { .. }
        ));
        assert!(matches!(route("/api/v1/pods"), Route::NotFound));
    }
}
