//! The object store: objects of each kind as pre-serialized JSON, the one global
//! resourceVersion, per-kind change history for resuming watches, paginated-list snapshots
//! and the Events clients wrote.
//!
//! Owns: every mutation of objects (`apply_value`, `State::delete`): the metadata the
//! server sets (uid, creationTimestamp, generation, resourceVersion, namespace) and the
//! change recorded for watches; history eviction; list snapshots.
//!
//! Must not: parse requests or build responses (`http`, `watch`, `events`), or wake
//! watches (the caller notifies once the lock is released).

use std::collections::{BTreeMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use axum::body::Bytes;
use serde_json::{Map, Value};

use super::{ApiServerError, Kind, Shared};

/// Paginated-list snapshots kept at once; the oldest is forgotten first (its continue
/// token then answers 410).
const MAX_SNAPSHOTS: usize = 64;

/// One stored object: its JSON bytes and what selectors need, parsed once.
#[derive(Debug)]
pub(super) struct Obj {
    pub(super) ns: String,
    pub(super) name: String,
    pub(super) labels: BTreeMap<String, String>,
    pub(super) uid: String,
    pub(super) created: String,
    pub(super) generation: i64,
    /// Hash of everything but metadata and status: a change bumps `generation`.
    pub(super) content_hash: u64,
    pub(super) bytes: Bytes,
}

impl Obj {
    /// The same object's JSON with `metadata.resourceVersion` set to `rv` (DELETED events
    /// carry the deletion's resourceVersion).
    pub(super) fn bytes_with_rv(&self, rv: u64) -> Bytes {
        let mut v: Value = serde_json::from_slice(&self.bytes).expect("stored JSON parses");
        v["metadata"]["resourceVersion"] = Value::String(rv.to_string());
        Bytes::from(serde_json::to_vec(&v).expect("JSON serializes"))
    }
}

/// One change, as a watch replays it.
#[derive(Debug)]
pub(super) struct Change {
    pub(super) rv: u64,
    /// The object before the change (None for a create).
    pub(super) prev: Option<Arc<Obj>>,
    /// The object after the change; for a delete, the last state with the deletion's RV.
    pub(super) next: Arc<Obj>,
    pub(super) deleted: bool,
}

#[derive(Default)]
pub(super) struct KindStore {
    pub(super) objects: BTreeMap<(String, String), Arc<Obj>>,
    pub(super) history: VecDeque<Arc<Change>>,
    /// Highest RV forgotten from `history`: a watch behind it has missed changes.
    pub(super) evicted_upto: u64,
}

/// The frozen result of a paginated list's first page.
pub(super) struct Snapshot {
    pub(super) kind: Kind,
    pub(super) rv: u64,
    pub(super) items: Arc<Vec<Arc<Obj>>>,
}

pub(super) struct StoredEvent {
    pub(super) key: (String, String, String),
    pub(super) value: Value,
}

pub(super) struct State {
    pub(super) rv: u64,
    /// A watch may start at RV N only if N >= floor (raised by `compact`).
    pub(super) floor: u64,
    pub(super) kinds: [KindStore; 5],
    pub(super) snapshots: BTreeMap<u64, Snapshot>,
    pub(super) next_snapshot: u64,
    pub(super) events: Vec<StoredEvent>,
    pub(super) uids: u64,
    pub(super) history_limit: usize,
}

impl State {
    pub(super) fn next_uid(&mut self) -> String {
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

    /// An empty store at resourceVersion 1 keeping `history_limit` changes per kind.
    pub(super) fn new(history_limit: usize) -> State {
        State {
            rv: 1,
            floor: 0,
            kinds: Default::default(),
            snapshots: BTreeMap::new(),
            next_snapshot: 1,
            events: Vec::new(),
            uids: 0,
            history_limit,
        }
    }

    /// Deletes an object (`ns` is ignored for cluster-scoped kinds). Returns the deletion's
    /// resourceVersion, or None when there was no such object.
    pub(super) fn delete(&mut self, kind: Kind, ns: &str, name: &str) -> Option<u64> {
        let ns = if kind.namespaced() { ns } else { "" };
        let key = (ns.to_string(), name.to_string());
        let old = self.kinds[kind.idx()].objects.remove(&key)?;
        self.rv += 1;
        let rv = self.rv;
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
        self.record(
            kind,
            Change {
                rv,
                prev: Some(old),
                next: tomb,
                deleted: true,
            },
        );
        Some(rv)
    }

    /// Keeps the frozen result of a paginated list's first page; returns its id (the
    /// continue token names it).
    pub(super) fn save_snapshot(&mut self, kind: Kind, rv: u64, items: Arc<Vec<Arc<Obj>>>) -> u64 {
        let id = self.next_snapshot;
        self.next_snapshot += 1;
        self.snapshots.insert(id, Snapshot { kind, rv, items });
        while self.snapshots.len() > MAX_SNAPSHOTS {
            self.snapshots.pop_first();
        }
        id
    }
}

/// Creates or replaces the object `v` (see `ApiServer::apply`); returns the change's
/// resourceVersion. The caller wakes watches.
pub(super) fn apply_value(shared: &Shared, mut v: Value) -> Result<u64, ApiServerError> {
    let kind = kind_of(&v)?;
    let Some(top) = v.as_object_mut() else {
        return Err(ApiServerError::UnknownKind(kind.name().to_string()));
    };
    top.insert(
        "apiVersion".into(),
        Value::String(kind.api_version().into()),
    );
    let content_hash = content_hash(top)?;
    let meta = metadata_of(top);
    let (ns, name) = object_key(kind, meta)?;
    let labels = labels_of(meta);

    let mut st = shared.state();
    let key = (ns.clone(), name.clone());
    let prev = st.kinds[kind.idx()].objects.get(&key).cloned();
    let kept = Kept::for_write(&mut st, prev.as_deref(), meta, content_hash);
    st.rv += 1;
    let rv = st.rv;
    kept.write_to(meta, rv);
    let bytes = Bytes::from(serde_json::to_vec(&v)?);
    let obj = Arc::new(Obj {
        ns,
        name,
        labels,
        uid: kept.uid,
        created: kept.created,
        generation: kept.generation,
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

/// The served kind an object's `kind` names.
fn kind_of(v: &Value) -> Result<Kind, ApiServerError> {
    let kind_name = v
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    Kind::ALL
        .into_iter()
        .find(|k| k.name() == kind_name)
        .ok_or(ApiServerError::UnknownKind(kind_name))
}

/// Hash of everything but metadata and status: a change bumps `generation`.
fn content_hash(top: &Map<String, Value>) -> Result<u64, serde_json::Error> {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for (k, val) in top.iter() {
        if !matches!(k.as_str(), "metadata" | "status" | "apiVersion" | "kind") {
            k.hash(&mut h);
            serde_json::to_vec(val)?.hash(&mut h);
        }
    }
    Ok(h.finish())
}

/// `metadata`, made an object when missing or not one.
fn metadata_of(top: &mut Map<String, Value>) -> &mut Map<String, Value> {
    let meta = top
        .entry("metadata")
        .or_insert_with(|| Value::Object(Default::default()));
    if !meta.is_object() {
        *meta = Value::Object(Default::default());
    }
    meta.as_object_mut().expect("metadata is an object")
}

/// The object's (namespace, name): a namespaced object without a namespace goes to
/// `default`, a cluster-scoped one loses its namespace.
fn object_key(
    kind: Kind,
    meta: &mut Map<String, Value>,
) -> Result<(String, String), ApiServerError> {
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
    Ok((ns, name))
}

/// `metadata.labels`, parsed once for selectors.
fn labels_of(meta: &Map<String, Value>) -> BTreeMap<String, String> {
    meta.get("labels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// The metadata a write keeps from the object it replaces (or takes from the object
/// given, or makes up, for a new one).
struct Kept {
    uid: String,
    created: String,
    generation: i64,
}

impl Kept {
    fn for_write(
        st: &mut State,
        prev: Option<&Obj>,
        meta: &Map<String, Value>,
        content_hash: u64,
    ) -> Kept {
        let given = |f: &str| {
            meta.get(f)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
        let uid = match prev {
            Some(p) => p.uid.clone(),
            None => given("uid").unwrap_or_else(|| st.next_uid()),
        };
        let created = match prev {
            Some(p) => p.created.clone(),
            None => given("creationTimestamp").unwrap_or_else(rfc3339_now),
        };
        let generation = match prev {
            Some(p) if p.content_hash == content_hash => p.generation,
            Some(p) => p.generation + 1,
            None => 1,
        };
        Kept {
            uid,
            created,
            generation,
        }
    }

    /// Sets `resourceVersion`, `uid`, `creationTimestamp` and `generation`.
    fn write_to(&self, meta: &mut Map<String, Value>, rv: u64) {
        meta.insert("resourceVersion".into(), Value::String(rv.to_string()));
        meta.insert("uid".into(), Value::String(self.uid.clone()));
        meta.insert(
            "creationTimestamp".into(),
            Value::String(self.created.clone()),
        );
        meta.insert("generation".into(), Value::from(self.generation));
    }
}

/// Now as RFC 3339 UTC with second precision, as Kubernetes writes timestamps.
pub(super) fn rfc3339_now() -> String {
    let now = k8s_openapi::jiff::Timestamp::now().as_second();
    k8s_openapi::jiff::Timestamp::from_second(now)
        .unwrap_or_default()
        .to_string()
}
