//! Events: the one resource clients write (core/v1 and events.k8s.io/v1), kept so tests
//! can read what the daemon reported.
//!
//! Owns: creating (POST, with `generateName`), reading, listing and merge-patching
//! Events in the store.
//!
//! Must not: serve Events to watches (they are not watchable) or touch other objects.

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{json, Value};

use super::http::{status, value_response, Failure};
use super::store::{rfc3339_now, State, StoredEvent};
use super::{Shared, Verb};

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

/// An Events request (`verb` as `http` classified it) on `api_version`'s events.
pub(super) fn events(
    shared: &Shared,
    verb: Verb,
    api_version: &'static str,
    ns: Option<String>,
    name: Option<String>,
    body: &[u8],
) -> Response {
    match verb {
        Verb::Create => create_event(shared, api_version, ns, name, body),
        Verb::Patch | Verb::Get => get_or_patch_event(shared, verb, api_version, ns, name, body),
        Verb::List => list_events(shared, api_version, ns),
        _ => status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "events accept GET, POST and PATCH",
        ),
    }
}

fn parse_body(body: &[u8]) -> Result<Value, String> {
    serde_json::from_slice(body).map_err(|e| format!("invalid JSON body: {e}"))
}

/// POST `/namespaces/{ns}/events`: stores the Event with server-set metadata.
fn create_event(
    shared: &Shared,
    api_version: &'static str,
    ns: Option<String>,
    name: Option<String>,
    body: &[u8],
) -> Response {
    let (Some(ns), None) = (ns, name) else {
        return status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "POST events to /namespaces/{ns}/events",
        );
    };
    let mut v = match parse_body(body) {
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
    let name = match new_event_name(&st, &v) {
        Ok(n) => n,
        Err(f) => return f.response(),
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

/// `metadata.name`, or one made from `metadata.generateName`.
fn new_event_name(st: &State, v: &Value) -> Result<String, Failure> {
    match v["metadata"]["name"].as_str().filter(|n| !n.is_empty()) {
        Some(n) => Ok(n.to_string()),
        None => {
            let prefix = v["metadata"]["generateName"]
                .as_str()
                .unwrap_or("")
                .to_string();
            if prefix.is_empty() {
                return Err(Failure(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Invalid",
                    "metadata.name or metadata.generateName is required".to_string(),
                ));
            }
            Ok(format!("{prefix}{:05x}", st.uids + 1))
        }
    }
}

/// GET or (JSON merge) PATCH of one named Event.
fn get_or_patch_event(
    shared: &Shared,
    verb: Verb,
    api_version: &'static str,
    ns: Option<String>,
    name: Option<String>,
    body: &[u8],
) -> Response {
    let (Some(ns), Some(name)) = (ns, name) else {
        return status(StatusCode::NOT_FOUND, "NotFound", "no such event");
    };
    let patch = if verb == Verb::Patch {
        match parse_body(body) {
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

/// The Events of `api_version`, in one namespace or all.
fn list_events(shared: &Shared, api_version: &'static str, ns: Option<String>) -> Response {
    let st = shared.state();
    let items: Vec<&Value> = st
        .events
        .iter()
        .filter(|e| e.key.0 == api_version && ns.as_ref().is_none_or(|n| *n == e.key.1))
        .map(|e| &e.value)
        .collect();
    value_response(
        StatusCode::OK,
        &json!({"kind": "EventList", "apiVersion": api_version,
                "metadata": {"resourceVersion": st.rv.to_string()}, "items": items}),
    )
}
