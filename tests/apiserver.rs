//! The API server stand-in (`kproxy::testutil::apiserver`) driven by an unmodified kube-rs
//! client: lists with selectors and pages, watchers and reflectors through drops,
//! compaction, outages, bookmarks and selector transitions. Not root tests, except the
//! network-namespace one (skipped with one line when not root and CI is unset).

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kproxy::testutil::apiserver::{ApiServer, Kind, Verb};
use kproxy::testutil::fixtures as fx;
use kube::api::ListParams;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::{json, Value};

/// A Service with these labels (an empty `labels` map when none) and one TCP port 80.
fn svc(ns: &str, name: &str, labels: &[(&str, &str)], ip: &str) -> Service {
    fx::svc(ns, name)
        .with(|s| s.metadata.labels = Some(Default::default()))
        .labels(labels)
        .cluster_ip(ip)
        .port("", 80, "TCP")
        .build()
}

fn node(name: &str) -> Node {
    fx::node(name).pod_cidrs(&["10.128.0.0/24"]).build()
}

fn client(server: &ApiServer) -> Client {
    let cfg = kube::Config::new(server.url().parse().expect("url"));
    Client::try_from(cfg).expect("client")
}

async fn wait_until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < within, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn names(store: &Store<Service>) -> BTreeSet<String> {
    store.state().iter().map(|s| s.name_any()).collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn count(server: &ApiServer, verb: Verb, resource: &str) -> usize {
    server
        .request_log()
        .iter()
        .filter(|r| r.is(verb, resource))
        .count()
}

/// A reflector over all Services, driven in the background; errors (expected during
/// faults) are retried with kube's default backoff.
fn reflect_services(client: Client, cfg: watcher::Config) -> Store<Service> {
    let (reader, writer) = reflector::store::<Service>();
    let stream = watcher(Api::<Service>::all(client), cfg)
        .default_backoff()
        .reflect(writer);
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while stream.next().await.is_some() {}
    });
    reader
}

/// [`reflect_services`] with the default config, once ready and its first watch is open.
async fn watching(server: &ApiServer) -> Store<Service> {
    let store = reflect_services(client(server), watcher::Config::default());
    store.wait_until_ready().await.unwrap();
    wait_until("the first watch", Duration::from_secs(10), || {
        server.open_watches() == 1
    })
    .await;
    store
}

/// One HTTP/1.0 GET (the body then ends with the connection): status and body.
fn raw_get(server: &ApiServer, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(server.addr()).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    let code = out[9..12].parse().expect("status code");
    let body = out
        .split_once("\r\n\r\n")
        .map(|x| x.1)
        .unwrap_or("")
        .to_string();
    (code, body)
}

#[tokio::test]
async fn lists_with_selectors_pages_and_gets() {
    let server = ApiServer::start();
    for i in 0..25 {
        let mut labels = vec![("app", if i % 2 == 0 { "web" } else { "db" })];
        if i % 5 == 0 {
            labels.push(("service.kubernetes.io/headless", ""));
        }
        server.apply(&svc(
            &format!("ns-{}", i % 3),
            &format!("s{i:02}"),
            &labels,
            "10.0.0.1",
        ));
    }
    server.apply(&node("node-a"));
    let c = client(&server);
    let all: Api<Service> = Api::all(c.clone());

    for (selector, count) in [
        ("app=web", 13),
        ("app==web,app!=db", 13),
        ("!service.kubernetes.io/headless,app", 20),
        ("service.kubernetes.io/headless", 5),
        ("app in (web,db),app notin (db)", 13),
    ] {
        let listed = all
            .list(&ListParams::default().labels(selector))
            .await
            .unwrap();
        assert_eq!(listed.items.len(), count, "{selector}");
    }
    let bad = all.list(&ListParams::default().labels("a b")).await;
    assert!(matches!(bad, Err(kube::Error::Api(s)) if s.code == 400));

    // Pages of 7 from one snapshot: a change between pages is not seen by the list.
    let rv0 = server.resource_version();
    let mut seen = Vec::new();
    let mut lp = ListParams::default().limit(7);
    let mut pages = 0;
    loop {
        let page = all.list(&lp).await.unwrap();
        pages += 1;
        assert_eq!(
            page.metadata.resource_version.as_deref(),
            Some(&*rv0.to_string())
        );
        seen.extend(page.items.iter().map(|s| s.name_any()));
        if pages == 1 {
            server.apply(&svc("ns-0", "zz-late", &[], "10.0.0.2"));
            assert_eq!(page.metadata.remaining_item_count, Some(18));
        }
        match page.metadata.continue_ {
            Some(t) if !t.is_empty() => lp = lp.continue_token(&t),
            _ => break,
        }
    }
    assert_eq!(pages, 4);
    assert_eq!(seen.len(), 25);
    assert_eq!(seen.iter().collect::<BTreeSet<_>>().len(), 25);

    // Namespaced lists, field selectors, single objects.
    let ns0: Api<Service> = Api::namespaced(c.clone(), "ns-0");
    assert_eq!(
        ns0.list(&ListParams::default()).await.unwrap().items.len(),
        10
    );
    let by_name = all
        .list(&ListParams::default().fields("metadata.name=s03"))
        .await
        .unwrap();
    assert_eq!(by_name.items.len(), 1);
    assert_eq!(by_name.items[0].namespace().as_deref(), Some("ns-0"));
    let s03 = ns0.get("s03").await.unwrap();
    assert_eq!(s03.metadata.generation, Some(1));
    assert!(s03.metadata.uid.is_some() && s03.metadata.creation_timestamp.is_some());
    assert!(matches!(ns0.get("nope").await, Err(kube::Error::Api(s)) if s.code == 404));
    let nodes: Api<Node> = Api::all(c.clone());
    assert_eq!(nodes.get("node-a").await.unwrap().name_any(), "node-a");
    let unsupported = all
        .list(&ListParams::default().fields("spec.clusterIP=1"))
        .await;
    assert!(matches!(unsupported, Err(kube::Error::Api(s)) if s.code == 400));

    // A replaced object keeps its uid and bumps generation only when its spec changes.
    let uid = s03.metadata.uid.clone();
    server.apply(&svc("ns-0", "s03", &[("app", "db")], "10.0.0.1"));
    let relabelled = ns0.get("s03").await.unwrap();
    assert_eq!(
        (relabelled.metadata.uid, relabelled.metadata.generation),
        (uid, Some(1))
    );
    server.apply(&svc("ns-0", "s03", &[("app", "db")], "10.0.0.9"));
    assert_eq!(ns0.get("s03").await.unwrap().metadata.generation, Some(2));

    let log = server.request_log();
    assert!(log
        .iter()
        .any(|r| r.verb == Verb::List && r.param("limit") == Some("7")));
}

#[test]
fn raw_protocol_details() {
    let server = ApiServer::builder()
        .bookmark_interval(Duration::from_millis(100))
        .start();
    server.apply(&svc("default", "a", &[], "10.0.0.1"));

    let (code, body) = raw_get(&server, "/api/v1/pods");
    assert_eq!(code, 404);
    let status: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (status["kind"].as_str(), status["code"].as_u64()),
        (Some("Status"), Some(404))
    );
    assert_eq!(raw_get(&server, "/api/v1/namespaces/x/nodes").0, 404);
    assert_eq!(raw_get(&server, "/version").0, 200);
    assert_eq!(raw_get(&server, "/apis").0, 200);
    assert_eq!(raw_get(&server, "/apis/discovery.k8s.io/v1").0, 200);

    // A watch from "now" ends after timeoutSeconds with bookmarks on the way.
    let start = Instant::now();
    let rv = server.resource_version();
    let (code, body) = raw_get(
        &server,
        &format!("/api/v1/services?watch=1&resourceVersion={rv}&allowWatchBookmarks=true&timeoutSeconds=1"),
    );
    assert_eq!(code, 200);
    assert!(start.elapsed() >= Duration::from_secs(1));
    let lines: Vec<Value> = body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.len() >= 3, "{body}");
    assert!(lines.iter().all(|l| l["type"] == "BOOKMARK"
        && l["object"]["metadata"]["resourceVersion"].as_str() == Some(&*rv.to_string())));

    // A watch from an RV older than the compaction point: 200, then one ERROR 410 event.
    server.compact();
    let (code, body) = raw_get(
        &server,
        &format!("/api/v1/services?watch=true&resourceVersion={rv}"),
    );
    assert_eq!(code, 200);
    let ev: Value = serde_json::from_str(body.trim()).unwrap();
    assert_eq!(ev["type"], "ERROR");
    assert_eq!(ev["object"]["code"], 410);
    assert_eq!(ev["object"]["reason"], "Expired");

    // A watch without RV starts with the current state.
    let (_, body) = raw_get(&server, "/api/v1/services?watch=true&timeoutSeconds=1");
    assert!(
        body.lines()
            .next()
            .unwrap()
            .starts_with(r#"{"type":"ADDED""#),
        "{body}"
    );

    // drop_watches cuts a stream mid-way: no terminating zero-length chunk.
    let mut s = TcpStream::connect(server.addr()).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /api/v1/services?watch=1 HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    .unwrap();
    let mut buf = [0u8; 4096];
    let first = s.read(&mut buf).unwrap();
    let head = String::from_utf8_lossy(&buf[..first]).into_owned();
    assert!(
        head.to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{head}"
    );
    let started = Instant::now();
    server.drop_watches();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(started.elapsed() < Duration::from_secs(5));
    let all = format!("{head}{}", String::from_utf8_lossy(&rest));
    assert!(!all.ends_with("0\r\n\r\n"), "{all}");

    // Down: connections are closed at once.
    server.set_down(true);
    let mut s = TcpStream::connect(server.addr()).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = write!(s, "GET /version HTTP/1.0\r\n\r\n");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    assert!(out.is_empty());
    server.set_down(false);
    assert_eq!(raw_get(&server, "/version").0, 200);
}

#[tokio::test]
async fn watcher_sees_changes_in_order() {
    let server = ApiServer::start();
    server.apply(&svc("default", "a", &[], "10.0.0.1"));
    let api: Api<Service> = Api::all(client(&server));
    let mut events = std::pin::pin!(watcher(api, watcher::Config::default()));
    let mut seen = Vec::new();
    let mut step = 0;
    while let Some(ev) = events.try_next().await.unwrap() {
        match ev {
            watcher::Event::Init => seen.push("init".to_string()),
            watcher::Event::InitApply(s) => seen.push(format!("init-apply {}", s.name_any())),
            watcher::Event::InitDone => {
                seen.push("init-done".into());
                // The watch request follows InitDone; changes before it are replayed from
                // the list's RV.
                server.apply(&svc("default", "b", &[], "10.0.0.2"));
                server.apply(&svc("default", "a", &[], "10.0.0.3"));
                server.delete(Kind::Service, "default", "b");
                server.delete(Kind::Service, "default", "missing");
            }
            watcher::Event::Apply(s) => seen.push(format!(
                "apply {} {}",
                s.name_any(),
                s.spec.unwrap().cluster_ip.unwrap()
            )),
            watcher::Event::Delete(s) => {
                seen.push(format!("delete {}", s.name_any()));
                step += 1;
            }
        }
        if step == 1 {
            break;
        }
    }
    assert_eq!(
        seen,
        [
            "init",
            "init-apply a",
            "init-done",
            "apply b 10.0.0.2",
            "apply a 10.0.0.3",
            "delete b"
        ]
    );
    let lists = count(&server, Verb::List, "services");
    let watches = count(&server, Verb::Watch, "services");
    assert_eq!((lists, watches), (1, 1));
    let w = server
        .request_log()
        .into_iter()
        .find(|r| r.verb == Verb::Watch)
        .unwrap();
    assert_eq!(w.param("allowWatchBookmarks"), Some("true"));
    assert_eq!(w.param("timeoutSeconds"), Some("290"));
}

#[tokio::test]
async fn resumes_from_resource_version_after_dropped_watch() {
    let server = ApiServer::start();
    for n in ["a", "b", "c"] {
        server.apply(&svc("default", n, &[], "10.0.0.1"));
    }
    let store = watching(&server).await;
    let lists = count(&server, Verb::List, "services");
    let watches = server.watch_count();
    let rv_before = server.resource_version();

    // The re-watch is held back by latency, so these changes happen while disconnected.
    server.set_latency(Duration::from_millis(400));
    server.drop_watches();
    server.apply(&svc("default", "d", &[], "10.0.0.4"));
    server.delete(Kind::Service, "default", "a");
    server.set_latency(Duration::ZERO);

    wait_until("the store to catch up", Duration::from_secs(10), || {
        names(&store) == set(&["b", "c", "d"])
    })
    .await;
    assert_eq!(count(&server, Verb::List, "services"), lists, "no relist");
    assert!(server.watch_count() > watches);
    let resumed: Vec<u64> = server
        .request_log()
        .iter()
        .filter(|r| r.is(Verb::Watch, "services"))
        .skip(watches)
        .map(|r| {
            r.resource_version()
                .expect("watch resumed with a resourceVersion")
        })
        .collect();
    assert!(
        !resumed.is_empty() && resumed[0] <= rv_before,
        "{resumed:?} vs {rv_before}"
    );
}

#[tokio::test]
async fn relists_after_compaction() {
    let server = ApiServer::start();
    for n in ["a", "b", "c"] {
        server.apply(&svc("default", n, &[], "10.0.0.1"));
    }
    let store = watching(&server).await;
    let lists = count(&server, Verb::List, "services");

    server.set_latency(Duration::from_millis(400));
    server.drop_watches();
    server.delete(Kind::Service, "default", "a");
    server.apply(&svc("default", "d", &[], "10.0.0.4"));
    server.compact();
    server.set_latency(Duration::ZERO);

    wait_until("a relist", Duration::from_secs(20), || {
        count(&server, Verb::List, "services") > lists
    })
    .await;
    wait_until("the store to be right", Duration::from_secs(10), || {
        names(&store) == set(&["b", "c", "d"])
    })
    .await;
    // Watching resumes after the relist.
    wait_until("a watch again", Duration::from_secs(10), || {
        server.open_watches() == 1
    })
    .await;
    server.apply(&svc("default", "e", &[], "10.0.0.5"));
    wait_until("e", Duration::from_secs(10), || names(&store).contains("e")).await;
}

#[tokio::test]
async fn recovers_after_outage_without_relisting() {
    let server = ApiServer::start();
    server.apply(&svc("default", "a", &[], "10.0.0.1"));
    let store = watching(&server).await;
    let lists = count(&server, Verb::List, "services");

    server.set_down(true);
    wait_until("the watch to be cut", Duration::from_secs(5), || {
        server.open_watches() == 0
    })
    .await;
    server.apply(&svc("default", "b", &[], "10.0.0.2"));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(names(&store), set(&["a"]));
    server.set_down(false);
    wait_until("recovery", Duration::from_secs(45), || {
        names(&store) == set(&["a", "b"])
    })
    .await;
    assert_eq!(
        count(&server, Verb::List, "services"),
        lists,
        "resumed, not relisted"
    );
}

#[tokio::test]
async fn bookmarks_advance_the_resume_point() {
    let server = ApiServer::builder()
        .bookmark_interval(Duration::from_millis(100))
        .start();
    server.apply(&svc("default", "a", &[], "10.0.0.1"));
    let _store = watching(&server).await;
    let watches = server.watch_count();
    // Changes to other resources move the global RV; the Service watch only learns of it
    // through bookmarks.
    let node_rv = server.apply(&node("node-a"));
    let sent = server.bookmarks_sent();
    wait_until("bookmarks", Duration::from_secs(5), || {
        server.bookmarks_sent() >= sent + 3
    })
    .await;
    server.drop_watches();
    wait_until("the re-watch", Duration::from_secs(10), || {
        server.watch_count() > watches
    })
    .await;
    let rewatch = server
        .request_log()
        .into_iter()
        .filter(|r| r.is(Verb::Watch, "services"))
        .nth(watches)
        .unwrap();
    assert!(
        rewatch.resource_version().unwrap() >= node_rv,
        "{rewatch:?} vs {node_rv}"
    );
}

#[tokio::test]
async fn selector_transitions_are_added_and_deleted() {
    let server = ApiServer::start();
    server.apply(&svc("default", "a", &[("app", "web")], "10.0.0.1"));
    server.apply(&svc("default", "other", &[("app", "db")], "10.0.0.9"));
    let api: Api<Service> = Api::all(client(&server));
    let cfg = watcher::Config::default().labels("app=web");
    let mut events = std::pin::pin!(watcher(api, cfg));
    let mut seen = Vec::new();
    while let Some(ev) = events.try_next().await.unwrap() {
        match ev {
            watcher::Event::InitApply(s) => seen.push(format!("init {}", s.name_any())),
            watcher::Event::InitDone => {
                server.apply(&svc("default", "a", &[("app", "db")], "10.0.0.1"));
                server.apply(&svc("default", "other", &[("app", "db")], "10.0.0.8"));
                server.apply(&svc("default", "a", &[("app", "web")], "10.0.0.1"));
                server.apply(&svc("default", "a", &[("app", "web")], "10.0.0.2"));
                server.delete(Kind::Service, "default", "other");
                server.delete(Kind::Service, "default", "a");
            }
            watcher::Event::Apply(s) => seen.push(format!(
                "apply {} {}",
                s.name_any(),
                s.spec.unwrap().cluster_ip.unwrap()
            )),
            watcher::Event::Delete(s) => {
                let rv: u64 = s.resource_version().unwrap().parse().unwrap();
                seen.push(format!("delete {} {}", s.name_any(), s.labels()["app"]));
                assert!(rv > 2, "a DELETED carries the change's resourceVersion");
                if seen.len() == 5 {
                    break;
                }
            }
            watcher::Event::Init => {}
        }
    }
    assert_eq!(
        seen,
        [
            "init a",
            "delete a web", // stopped matching: DELETED with the last matching state
            "apply a 10.0.0.1",
            "apply a 10.0.0.2",
            "delete a web",
        ]
    );
}

#[tokio::test]
async fn streaming_list_and_namespaced_watch() {
    let server = ApiServer::start();
    server.apply(&svc("ns1", "a", &[], "10.0.0.1"));
    server.apply(&svc("ns2", "b", &[], "10.0.0.2"));
    let (reader, writer) = reflector::store::<Service>();
    let api: Api<Service> = Api::namespaced(client(&server), "ns1");
    let stream = watcher(api, watcher::Config::default().streaming_lists())
        .default_backoff()
        .reflect(writer);
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while stream.next().await.is_some() {}
    });
    reader.wait_until_ready().await.unwrap();
    assert_eq!(names(&reader), set(&["a"]));
    server.apply(&svc("ns2", "c", &[], "10.0.0.3"));
    server.apply(&svc("ns1", "d", &[], "10.0.0.4"));
    wait_until("d", Duration::from_secs(10), || {
        names(&reader) == set(&["a", "d"])
    })
    .await;
    assert_eq!(count(&server, Verb::List, "services"), 0);
    let w = server
        .request_log()
        .into_iter()
        .find(|r| r.verb == Verb::Watch)
        .unwrap();
    assert_eq!(w.path, "/api/v1/namespaces/ns1/services");
    assert_eq!(w.param("sendInitialEvents"), Some("true"));
}

#[tokio::test]
async fn events_and_kubeconfig() {
    use kube::runtime::events::{Event, EventType, Recorder, Reporter};
    let server = ApiServer::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    server.write_kubeconfig(&path).unwrap();
    let kc = kube::config::Kubeconfig::read_from(&path).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    let c = Client::try_from(cfg).unwrap();
    assert_eq!(c.apiserver_version().await.unwrap().git_version, "v1.34.0");

    let s = server.apply(&svc("default", "a", &[], "10.0.0.1"));
    assert!(s > 1);
    let obj = Api::<Service>::namespaced(c.clone(), "default")
        .get("a")
        .await
        .unwrap();
    let recorder = Recorder::new(
        c.clone(),
        Reporter {
            controller: "kproxy".into(),
            instance: Some("node-a".into()),
        },
    );
    let ev = Event {
        type_: EventType::Normal,
        reason: "Synced".into(),
        note: Some("rules programmed".into()),
        action: "Sync".into(),
        secondary: None,
    };
    let reference = obj.object_ref(&());
    recorder.publish(&ev, &reference).await.unwrap();
    recorder.publish(&ev, &reference).await.unwrap(); // a series: PATCH
    let events = server.events();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["apiVersion"], "events.k8s.io/v1");
    assert_eq!(events[0]["reason"], "Synced");
    assert_eq!(events[0]["series"]["count"], 2);
    assert_eq!(events[0]["regarding"]["name"], "a");
    assert_eq!(count(&server, Verb::Create, "events"), 1);
    assert_eq!(count(&server, Verb::Patch, "events"), 1);

    // core/v1 Events too.
    let core: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(c, "default");
    let e: k8s_openapi::api::core::v1::Event = serde_json::from_value(json!({
        "metadata": {"generateName": "a-"}, "reason": "Old", "involvedObject": {"name": "a"},
    }))
    .unwrap();
    let created = core.create(&Default::default(), &e).await.unwrap();
    assert!(created.name_any().starts_with("a-"));
    assert_eq!(server.events().len(), 2);
}

#[tokio::test]
async fn endpointslices_nodes_and_servicecidrs() {
    let server = ApiServer::start();
    let slice = fx::slice("default", "a-x", "a")
        .endpoint("10.1.0.1")
        .build();
    server.apply(&slice);
    server.apply(&node("node-a"));
    server.apply(&node("node-b"));
    server.apply(&fx::service_cidr("kubernetes", &["10.96.0.0/12"]).build());
    assert!(server
        .try_apply(&json!({"kind": "Pod", "metadata": {"name": "p"}}))
        .is_err());
    let c = client(&server);
    let slices: Api<EndpointSlice> = Api::all(c.clone());
    let l = slices
        .list(&ListParams::default().labels("kubernetes.io/service-name=a"))
        .await
        .unwrap();
    assert_eq!(l.items.len(), 1);
    let nodes: Api<Node> = Api::all(c.clone());
    let mine = nodes
        .list(&ListParams::default().fields("metadata.name=node-b"))
        .await
        .unwrap();
    assert_eq!(mine.items.len(), 1);
    let cidrs: Api<k8s_openapi::api::networking::v1::ServiceCIDR> = Api::all(c);
    assert_eq!(
        cidrs
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        1
    );
    assert_eq!(server.count(Kind::Node), 2);
    assert_eq!(
        server.delete(Kind::Node, "", "node-a").map(|rv| rv > 0),
        Some(true)
    );
    assert!(server.get(Kind::Node, "", "node-a").is_none());
}

#[test]
fn serves_inside_a_network_namespace() {
    if !common::kernel_tests_enabled("serves_inside_a_network_namespace") {
        return;
    }
    let ns = common::Netns::new("apisrv");
    common::run_ok("ip", &["-n", &ns.name, "link", "set", "lo", "up"]);
    let server = ApiServer::start_in_netns(&ns.name).expect("start in netns");
    server.apply(&node("node-a"));
    // A client thread inside the namespace reaches it at 127.0.0.1:port.
    let addr = server.addr();
    let body = ns.run_in(move || {
        let mut s = TcpStream::connect(addr).expect("connect inside the namespace");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(s, "GET /api/v1/nodes/node-a HTTP/1.0\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    });
    assert!(body.starts_with("HTTP/1.0 200"), "{body}");
    let v: Value = serde_json::from_str(body.split_once("\r\n\r\n").unwrap().1).unwrap();
    assert_eq!(v["metadata"]["name"], "node-a");
    // Not reachable from the host's namespace (nothing listens there on that port, or at
    // least not this server).
    let host = TcpStream::connect_timeout(&server.addr(), Duration::from_secs(1));
    assert!(host.is_err() || count(&server, Verb::Get, "nodes") == 1);
    assert!(ApiServer::start_in_netns("kpx-no-such-namespace").is_err());
}

/// 50k Services and 50k EndpointSlices (10 endpoints each), listed in kube's pages of 500.
/// Prints timings; run in release: `cargo test --release --test apiserver -- --ignored`.
#[tokio::test]
#[ignore]
async fn large_cluster_lists() {
    let server = ApiServer::start();
    let objs = kproxy::testutil::synthetic_cluster(50_000, 10, false);
    let t = Instant::now();
    server.apply_all(&objs.services);
    server.apply_all(&objs.slices);
    println!("apply 100k objects: {:?}", t.elapsed());
    let c = client(&server);
    for kind in ["services", "endpointslices"] {
        let t = Instant::now();
        let n = if kind == "services" {
            let (reader, writer) = reflector::store::<Service>();
            let s =
                watcher(Api::<Service>::all(c.clone()), watcher::Config::default()).reflect(writer);
            tokio::spawn(async move {
                let mut s = std::pin::pin!(s);
                while s.next().await.is_some() {}
            });
            reader.wait_until_ready().await.unwrap();
            reader.state().len()
        } else {
            let (reader, writer) = reflector::store::<EndpointSlice>();
            let s = watcher(
                Api::<EndpointSlice>::all(c.clone()),
                watcher::Config::default(),
            )
            .reflect(writer);
            tokio::spawn(async move {
                let mut s = std::pin::pin!(s);
                while s.next().await.is_some() {}
            });
            reader.wait_until_ready().await.unwrap();
            reader.state().len()
        };
        assert_eq!(n, 50_000);
        println!("watcher initial list of 50k {kind}: {:?}", t.elapsed());
    }
    assert_eq!(count(&server, Verb::List, "services"), 100);
}
