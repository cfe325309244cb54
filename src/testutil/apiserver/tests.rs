use std::collections::BTreeMap;

use super::http::{parse_query, percent_decode, route, Route};
use super::select::{parse_field_selector, parse_label_selector};
use super::store::rfc3339_now;
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
