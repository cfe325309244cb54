//! Kubernetes Events for invalid objects (the daemon's [`WarningSink`]) and for other
//! Warnings the daemon reports ([`EventRecorder::record`]: a health-check NodePort that
//! could not be opened, with upstream's [`REASON_HEALTHCHECK`] and [`ACTION_LISTEN`]).
//!
//! Owns: turning a model [`Warning`] into an `events.k8s.io/v1` Event (the API upstream
//! components record through client-go's `tools/events`), rate limiting, and sending.
//!
//! Event shape: `type: Warning`, `reason: InvalidObject`, `action: Sync`, `note` = the
//! reason text (cut to the API's 1 KiB), `reportingController: kproxy`,
//! `reportingInstance` = the node name, `regarding` = the object the warning names
//! (`Service ns/name`, `EndpointSlice ns/name`, `Node name`, `ServiceCIDR name`; uid from
//! the cache when known). A warning naming anything else (the proxy configuration) regards
//! this node's Node, with the object's name prefixed to the note. Events of cluster-scoped
//! objects go to namespace `default`, and are named `<regarding name>.<unix nanos, hex>`,
//! as client-go does.
//!
//! Rate limits ([`RateLimiter`]): the same (object, note) at most once per
//! [`DEDUP_WINDOW`], and a global token bucket of [`RATE_PER_SEC`]/s with burst
//! [`BURST`]. [`WarningSink::warn`] never blocks: it hands the Event to a bounded channel
//! ([`QUEUE`]) drained by one tokio task; a full queue or a failed create is logged and
//! dropped.
//!
//! Must not: retry, aggregate into series, or block the sync thread.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::cache::Cache;
use crate::model::Warning;
use crate::sync::WarningSink;

/// The same (object, note) is reported at most once per this long.
pub const DEDUP_WINDOW: Duration = Duration::from_secs(600);
/// Global Event rate (token bucket refill per second) ...
pub const RATE_PER_SEC: f64 = 10.0;
/// ... and bucket size.
pub const BURST: u32 = 25;
/// Events waiting to be sent; more are dropped.
pub const QUEUE: usize = 256;
/// `reportingController`.
pub const CONTROLLER: &str = "kproxy";
/// `reason`.
pub const REASON: &str = "InvalidObject";
/// `action` (required by events.k8s.io/v1).
pub const ACTION: &str = "Sync";
/// Upstream's `reason` for a health-check NodePort that could not be opened.
pub const REASON_HEALTHCHECK: &str = "FailedToStartServiceHealthcheck";
/// Upstream's `action` for it.
pub const ACTION_LISTEN: &str = "Listen";
/// The API's limit on `note`.
const NOTE_MAX: usize = 1024;
/// Remembered (object, note) pairs beyond which expired ones are forgotten.
const SEEN_PRUNE_AT: usize = 4096;

/// Per-(object, note) suppression plus a global token bucket, on an injected clock.
#[derive(Debug)]
pub struct RateLimiter {
    window: Duration,
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Option<Instant>,
    seen: HashMap<(String, String), Instant>,
}

impl Default for RateLimiter {
    fn default() -> Self {
        RateLimiter::new(DEDUP_WINDOW, RATE_PER_SEC, BURST)
    }
}

impl RateLimiter {
    pub fn new(window: Duration, rate_per_sec: f64, burst: u32) -> RateLimiter {
        RateLimiter {
            window,
            rate: rate_per_sec,
            burst: f64::from(burst),
            tokens: f64::from(burst),
            last: None,
            seen: HashMap::new(),
        }
    }

    /// Whether an Event for (object, note) may be sent at `now`; records it if so. A pair
    /// refused by the global bucket is not remembered (it may go once tokens are back).
    pub fn allow(&mut self, object: &str, note: &str, now: Instant) -> bool {
        let key = (object.to_string(), note.to_string());
        if let Some(t) = self.seen.get(&key) {
            if now.saturating_duration_since(*t) < self.window {
                return false;
            }
        }
        if let Some(last) = self.last {
            let refill = now.saturating_duration_since(last).as_secs_f64() * self.rate;
            self.tokens = (self.tokens + refill).min(self.burst);
        }
        self.last = Some(now);
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        if self.seen.len() >= SEEN_PRUNE_AT {
            let window = self.window;
            self.seen
                .retain(|_, t| now.saturating_duration_since(*t) < window);
        }
        self.seen.insert(key, now);
        true
    }
}

/// What a warning's `object` names.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Regarding {
    api_version: &'static str,
    kind: &'static str,
    namespace: Option<String>,
    name: String,
}

fn regarding_of(object: &str) -> Option<Regarding> {
    let (kind, rest) = object.split_once(' ')?;
    let (api_version, kind, namespaced) = match kind {
        "Service" => ("v1", "Service", true),
        "EndpointSlice" => ("discovery.k8s.io/v1", "EndpointSlice", true),
        "Node" => ("v1", "Node", false),
        "ServiceCIDR" => ("networking.k8s.io/v1", "ServiceCIDR", false),
        _ => return None,
    };
    let (namespace, name) = if namespaced {
        let (ns, name) = rest.split_once('/')?;
        (Some(ns.to_string()), name)
    } else {
        (None, rest)
    };
    if name.is_empty() || namespace.as_deref() == Some("") {
        return None;
    }
    Some(Regarding {
        api_version,
        kind,
        namespace,
        name: name.to_string(),
    })
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// The Event for a warning (pure: the uid lookup and the time are passed in).
pub fn to_event(
    warning: &Warning,
    node_name: &str,
    uid: impl FnOnce(&str, Option<&str>, &str) -> Option<String>,
    now: SystemTime,
) -> Event {
    notice_event(&Notice::of(warning), node_name, uid, now)
}

/// A Warning Event's content: `object` as a [`Warning`]'s (`Service ns/name`, …).
#[derive(Clone, Copy, Debug)]
pub struct Notice<'a> {
    pub object: &'a str,
    pub reason: &'a str,
    pub action: &'a str,
    pub note: &'a str,
}

impl Notice<'_> {
    /// An invalid object's notice: [`REASON`], [`ACTION`], the warning's reason as note.
    pub fn of(warning: &Warning) -> Notice<'_> {
        Notice {
            object: &warning.object,
            reason: REASON,
            action: ACTION,
            note: &warning.reason,
        }
    }
}

/// The Event for a notice (pure, as [`to_event`]).
pub fn notice_event(
    notice: &Notice<'_>,
    node_name: &str,
    uid: impl FnOnce(&str, Option<&str>, &str) -> Option<String>,
    now: SystemTime,
) -> Event {
    let (regarding, note) = match regarding_of(notice.object) {
        Some(r) => (r, notice.note.to_string()),
        None => (
            Regarding {
                api_version: "v1",
                kind: "Node",
                namespace: None,
                name: node_name.to_string(),
            },
            format!("{}: {}", notice.object, notice.note),
        ),
    };
    let uid = uid(
        regarding.kind,
        regarding.namespace.as_deref(),
        &regarding.name,
    );
    let nanos = now
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let name = format!("{}.{nanos:x}", truncate(&regarding.name, 253 - 33));
    let namespace = regarding
        .namespace
        .clone()
        .unwrap_or_else(|| "default".to_string());
    Event {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(namespace),
            ..ObjectMeta::default()
        },
        event_time: Some(MicroTime(
            k8s_openapi::jiff::Timestamp::try_from(now).unwrap_or_default(),
        )),
        type_: Some("Warning".to_string()),
        reason: Some(notice.reason.to_string()),
        action: Some(notice.action.to_string()),
        note: Some(truncate(&note, NOTE_MAX)),
        reporting_controller: Some(CONTROLLER.to_string()),
        reporting_instance: Some(node_name.to_string()),
        regarding: Some(ObjectReference {
            api_version: Some(regarding.api_version.to_string()),
            kind: Some(regarding.kind.to_string()),
            namespace: regarding.namespace,
            name: Some(regarding.name),
            uid,
            ..ObjectReference::default()
        }),
        ..Event::default()
    }
}

/// A clock returning monotonic instants (injected in tests).
pub type Clock = Arc<dyn Fn() -> Instant + Send + Sync>;

/// Records warnings as Events. See the module documentation.
pub struct EventRecorder {
    node_name: String,
    cache: Option<Arc<Cache>>,
    limiter: Mutex<RateLimiter>,
    clock: Clock,
    tx: mpsc::Sender<Event>,
}

impl EventRecorder {
    /// A recorder sending through `client`, and the task that sends (it ends when the
    /// recorder is dropped). Needs a tokio runtime. `cache` supplies uids.
    pub fn start(
        client: Client,
        node_name: &str,
        cache: Option<Arc<Cache>>,
    ) -> (EventRecorder, JoinHandle<()>) {
        let (recorder, mut rx) =
            EventRecorder::with_channel(node_name, cache, Arc::new(Instant::now), QUEUE);
        let task = tokio::spawn(async move {
            while let Some(ev) = rx.recv().await {
                let ns = ev.metadata.namespace.clone().unwrap_or_default();
                let api: Api<Event> = Api::namespaced(client.clone(), &ns);
                if let Err(e) = api.create(&PostParams::default(), &ev).await {
                    tracing::warn!(error = %e, event = ?ev.metadata.name, "creating Event failed; dropped");
                }
            }
        });
        (recorder, task)
    }

    /// A recorder whose Events go to the returned receiver (tests, or a custom sender).
    pub fn with_channel(
        node_name: &str,
        cache: Option<Arc<Cache>>,
        clock: Clock,
        capacity: usize,
    ) -> (EventRecorder, mpsc::Receiver<Event>) {
        let (tx, rx) = mpsc::channel(capacity);
        (
            EventRecorder {
                node_name: node_name.to_string(),
                cache,
                limiter: Mutex::new(RateLimiter::default()),
                clock,
                tx,
            },
            rx,
        )
    }

    /// Replaces the rate limiter (tests).
    pub fn with_limiter(self, limiter: RateLimiter) -> EventRecorder {
        EventRecorder {
            limiter: Mutex::new(limiter),
            ..self
        }
    }
}

impl EventRecorder {
    /// Records a Warning Event, rate limited as every other (never blocks).
    pub fn record(&self, notice: &Notice<'_>) {
        let now = (self.clock)();
        let allowed = self
            .limiter
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .allow(notice.object, notice.note, now);
        if !allowed {
            return;
        }
        let cache = self.cache.as_deref();
        let ev = notice_event(
            notice,
            &self.node_name,
            |kind, ns, name| cache.and_then(|c| c.uid(kind, ns.unwrap_or(""), name)),
            SystemTime::now(),
        );
        if let Err(e) = self.tx.try_send(ev) {
            tracing::debug!(error = %e, object = %notice.object, "Event queue full or closed; dropped");
        }
    }

    /// This node's name (`reportingInstance`, and upstream's notes name it).
    pub fn node_name(&self) -> &str {
        &self.node_name
    }
}

impl WarningSink for EventRecorder {
    fn warn(&self, warning: &Warning) {
        self.record(&Notice::of(warning));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(object: &str, reason: &str) -> Warning {
        Warning {
            object: object.to_string(),
            reason: reason.to_string(),
        }
    }

    #[test]
    fn same_object_and_note_once_per_window() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(Duration::from_secs(600), 10.0, 25);
        assert!(rl.allow("Service a/b", "bad", t0));
        assert!(!rl.allow("Service a/b", "bad", t0 + Duration::from_secs(599)));
        assert!(rl.allow("Service a/b", "other", t0 + Duration::from_secs(1)));
        assert!(rl.allow("Service a/c", "bad", t0 + Duration::from_secs(1)));
        assert!(rl.allow("Service a/b", "bad", t0 + Duration::from_secs(600)));
    }

    #[test]
    fn token_bucket_bursts_then_refills() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(Duration::from_secs(600), 10.0, 25);
        let sent = (0..100)
            .filter(|i| rl.allow(&format!("Service ns/s{i}"), "bad", t0))
            .count();
        assert_eq!(sent, 25);
        // A refused pair is not remembered: it goes once tokens are back.
        assert!(!rl.allow("Service ns/s99", "bad", t0));
        let t1 = t0 + Duration::from_millis(100);
        assert!(rl.allow("Service ns/s99", "bad", t1));
        assert!(!rl.allow("Service ns/s98", "bad", t1));
        // Ten seconds refill the whole bucket, not more.
        let t2 = t1 + Duration::from_secs(10);
        let sent = (0..100)
            .filter(|i| rl.allow(&format!("Service ns/t{i}"), "bad", t2))
            .count();
        assert_eq!(sent, 25);
    }

    #[test]
    fn event_for_a_service() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let ev = to_event(
            &w(
                "Service ns/web",
                "spec.ports[0].port 0 is outside 1..65535; port ignored",
            ),
            "node-a",
            |kind, ns, name| {
                assert_eq!((kind, ns, name), ("Service", Some("ns"), "web"));
                Some("uid-1".to_string())
            },
            now,
        );
        assert_eq!(ev.metadata.namespace.as_deref(), Some("ns"));
        assert_eq!(
            ev.metadata.name.as_deref(),
            Some(format!("web.{:x}", 1_700_000_000u128 * 1_000_000_000).as_str())
        );
        assert_eq!(ev.type_.as_deref(), Some("Warning"));
        assert_eq!(ev.reason.as_deref(), Some("InvalidObject"));
        assert_eq!(ev.reporting_controller.as_deref(), Some("kproxy"));
        assert_eq!(ev.reporting_instance.as_deref(), Some("node-a"));
        assert!(ev.note.as_deref().unwrap().starts_with("spec.ports[0]"));
        let r = ev.regarding.unwrap();
        assert_eq!(r.kind.as_deref(), Some("Service"));
        assert_eq!(r.api_version.as_deref(), Some("v1"));
        assert_eq!(r.uid.as_deref(), Some("uid-1"));
        assert!(ev.event_time.is_some() && ev.action.is_some());
    }

    #[test]
    fn cluster_scoped_and_unknown_objects() {
        let now = SystemTime::now();
        let ev = to_event(&w("Node node-a", "x"), "node-a", |_, _, _| None, now);
        assert_eq!(ev.metadata.namespace.as_deref(), Some("default"));
        assert_eq!(ev.regarding.unwrap().namespace, None);

        let ev = to_event(
            &w("EndpointSlice ns/web-1", "y"),
            "node-a",
            |_, _, _| None,
            now,
        );
        let r = ev.regarding.unwrap();
        assert_eq!(r.api_version.as_deref(), Some("discovery.k8s.io/v1"));
        assert_eq!(r.namespace.as_deref(), Some("ns"));

        for object in ["KubeProxyConfiguration", "Service ns/"] {
            let ev = to_event(&w(object, "z"), "node-a", |_, _, _| None, now);
            let r = ev.regarding.unwrap();
            assert_eq!(
                (r.kind.as_deref(), r.name.as_deref()),
                (Some("Node"), Some("node-a"))
            );
            assert_eq!(ev.note.unwrap(), format!("{object}: z"));
        }

        let long = "é".repeat(2000);
        let ev = to_event(&w("Node n", &long), "n", |_, _, _| None, now);
        assert!(ev.note.unwrap().len() <= 1024);
    }

    #[test]
    fn warn_never_blocks_and_rate_limits() {
        let t = Arc::new(Mutex::new(Instant::now()));
        let clock_t = t.clone();
        let clock: Clock = Arc::new(move || *clock_t.lock().unwrap());
        let (rec, mut rx) = EventRecorder::with_channel("node-a", None, clock, 2);
        let rec = rec.with_limiter(RateLimiter::new(Duration::from_secs(600), 1.0, 5));
        rec.warn(&w("Service ns/a", "bad"));
        rec.warn(&w("Service ns/a", "bad")); // duplicate: suppressed
        rec.warn(&w("Service ns/b", "bad"));
        rec.warn(&w("Service ns/c", "bad")); // queue (2) full: dropped, no blocking
        assert_eq!(
            rx.try_recv().unwrap().regarding.unwrap().name.as_deref(),
            Some("a")
        );
        assert_eq!(
            rx.try_recv().unwrap().regarding.unwrap().name.as_deref(),
            Some("b")
        );
        assert!(rx.try_recv().is_err());
        *t.lock().unwrap() += Duration::from_secs(601);
        rec.warn(&w("Service ns/a", "bad"));
        assert!(rx.try_recv().is_ok());
    }
}
