use super::*;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::sync::atomic::{AtomicUsize, Ordering};

const SVC: &str = "\
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: default
spec:
  clusterIP: 10.96.0.10
  ports:
  - name: http
    port: 80
    protocol: TCP
    targetPort: 8080
";

const SLICE: &str = "\
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-abc
  namespace: default
  labels:
    kubernetes.io/service-name: web
addressType: IPv4
endpoints:
- addresses: [10.244.1.5]
  conditions: {ready: true}
  nodeName: node-a
ports:
- name: http
  port: 8080
  protocol: TCP
";

const NODE: &str = "\
apiVersion: v1
kind: Node
metadata:
  name: node-a
spec:
  podCIDRs: [10.244.1.0/24]
status:
  addresses:
  - type: InternalIP
    address: 192.168.1.10
";

const CIDR: &str = "\
apiVersion: networking.k8s.io/v1
kind: ServiceCIDR
metadata:
  name: kubernetes
spec:
  cidrs: [10.96.0.0/16, fd00:10:96::/108]
";

fn counts(l: &Loaded) -> (usize, usize, usize, usize) {
    (
        l.objects.services.len(),
        l.objects.slices.len(),
        l.objects.nodes.len(),
        l.objects.service_cidrs.len(),
    )
}

#[test]
fn multi_document_yaml_loads_every_kind() {
    let text =
        format!("---\n{SVC}---\n{SLICE}\n---\n# only a comment\n---\n{NODE}...\n---\n{CIDR}");
    let l = load_str("all.yaml", &text);
    assert_eq!(l.warnings, Vec::<String>::new());
    assert_eq!(counts(&l), (1, 1, 1, 1));
    let svc = &l.objects.services[0];
    assert_eq!(svc.metadata.name.as_deref(), Some("web"));
    assert_eq!(svc.metadata.namespace.as_deref(), Some("default"));
    let spec = svc.spec.as_ref().unwrap();
    assert_eq!(spec.cluster_ip.as_deref(), Some("10.96.0.10"));
    let port = &spec.ports.as_ref().unwrap()[0];
    assert_eq!(port.port, 80);
    assert_eq!(port.target_port, Some(IntOrString::Int(8080)));
    let slice = &l.objects.slices[0];
    assert_eq!(slice.address_type, "IPv4");
    assert_eq!(
        slice.endpoints.as_ref().unwrap()[0].addresses,
        vec!["10.244.1.5".to_string()]
    );
    assert_eq!(
        slice.endpoints.as_ref().unwrap()[0].node_name.as_deref(),
        Some("node-a")
    );
    let node = &l.objects.nodes[0];
    assert_eq!(
        node.spec.as_ref().unwrap().pod_cidrs,
        Some(vec!["10.244.1.0/24".to_string()])
    );
    let cidr = &l.objects.service_cidrs[0];
    assert_eq!(
        cidr.spec.as_ref().unwrap().cidrs,
        Some(vec![
            "10.96.0.0/16".to_string(),
            "fd00:10:96::/108".to_string()
        ])
    );
}

#[test]
fn empty_input_and_empty_documents() {
    assert_eq!(counts(&load_str("e.yaml", "")), (0, 0, 0, 0));
    let l = load_str("e.yaml", "---\n---\n\n# x\n---\n~\n");
    assert_eq!(counts(&l), (0, 0, 0, 0));
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);
}

#[test]
fn marker_lookalikes_are_not_split() {
    // `----` and `---x` are content, not markers; a block scalar holding `  ---` too.
    let text = "apiVersion: v1\nkind: Service\nmetadata:\n  name: a\n  annotations:\n    note: |\n      ---\n      ----x\nspec: {}\n";
    let l = load_str("m.yaml", text);
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);
    assert_eq!(counts(&l), (1, 0, 0, 0));
    let ann = l.objects.services[0].metadata.annotations.as_ref().unwrap();
    assert_eq!(ann["note"], "---\n----x\n");
}

#[test]
fn inline_document_after_marker() {
    let l = load_str(
        "i.yaml",
        "--- {apiVersion: v1, kind: Node, metadata: {name: n1}}\n--- {apiVersion: v1, kind: Node, metadata: {name: n2}}\n",
    );
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);
    let names: Vec<_> = l
        .objects
        .nodes
        .iter()
        .map(|n| n.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(names, ["n1", "n2"]);
}

#[test]
fn list_and_typed_list() {
    let text = "\
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: a, namespace: ns}
- apiVersion: v1
  kind: ConfigMap
  metadata: {name: cm, namespace: ns}
- apiVersion: v1
  kind: List
  items:
  - {apiVersion: v1, kind: Node, metadata: {name: nested}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSliceList
metadata: {resourceVersion: \"5\"}
items:
- metadata: {name: s1, namespace: ns}
  addressType: IPv4
  endpoints: []
- metadata: {name: s2, namespace: ns}
  addressType: IPv6
  endpoints: []
---
apiVersion: v1
kind: ServiceList
items: []
";
    let l = load_str("list.yaml", text);
    assert_eq!(counts(&l), (1, 2, 1, 0));
    assert_eq!(
        l.warnings,
        vec!["list.yaml: document 1 item 2: ignoring v1 ConfigMap ns/cm".to_string()]
    );
    assert_eq!(l.objects.nodes[0].metadata.name.as_deref(), Some("nested"));
    assert_eq!(l.objects.slices[1].address_type, "IPv6");

    let l = load_str("l.yaml", "apiVersion: v1\nkind: List\nitems: {a: 1}\n");
    assert_eq!(
        l.warnings,
        vec!["l.yaml: document 1: v1 List: items is a mapping, not a list"]
    );
}

#[test]
fn json_single_list_and_concatenated() {
    let text = r#"{"apiVersion":"v1","kind":"List","items":[
            {"apiVersion":"v1","kind":"Service","metadata":{"name":"j","namespace":"d"},
             "spec":{"ports":[{"port":53,"protocol":"UDP"}]}}]}
            {"apiVersion":"v1","kind":"Node","metadata":{"name":"n"}}"#;
    let l = load_str("x.json", text);
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);
    assert_eq!(counts(&l), (1, 0, 1, 0));
    let port = &l.objects.services[0]
        .spec
        .as_ref()
        .unwrap()
        .ports
        .as_ref()
        .unwrap()[0];
    assert_eq!((port.port, port.protocol.as_deref()), (53, Some("UDP")));
}

#[test]
fn invalid_json_is_a_warning() {
    let l = load_str("bad.json", "{\"apiVersion\": \"v1\",\n \"kind\": }");
    assert_eq!(counts(&l), (0, 0, 0, 0));
    assert_eq!(l.warnings.len(), 1);
    assert!(
        l.warnings[0].starts_with("bad.json: document 1: not valid JSON: ")
            && l.warnings[0].ends_with("at line 2 column 10"),
        "{}",
        l.warnings[0]
    );
    // A broken value after a good one: the good one loads.
    let l = load_str(
        "two.json",
        "{\"apiVersion\":\"v1\",\"kind\":\"Node\",\"metadata\":{\"name\":\"n\"}}\n\n{\"kind\" 1}",
    );
    assert_eq!(counts(&l), (0, 0, 1, 0));
    assert_eq!(
        l.warnings,
        vec!["two.json: document 2: not valid JSON: expected `:` at line 3 column 9"]
    );
}

#[test]
fn unknown_kinds_warn_once_each() {
    let text = "\
apiVersion: apps/v1
kind: Deployment
metadata: {name: d, namespace: ns}
---
apiVersion: v2
kind: Service
metadata: {name: future}
---
apiVersion: discovery.k8s.io/v1beta1
kind: EndpointSlice
metadata: {name: old, namespace: ns}
---
metadata: {name: nokind}
---
- just
- a list
---
plain scalar
";
    let l = load_str("u.yaml", text);
    assert_eq!(counts(&l), (0, 0, 0, 0));
    assert_eq!(
            l.warnings,
            vec![
                "u.yaml: document 1: ignoring apps/v1 Deployment ns/d",
                "u.yaml: document 2: ignoring v2 Service future",
                "u.yaml: document 3: ignoring discovery.k8s.io/v1beta1 EndpointSlice ns/old",
                "u.yaml: document 4: ignoring <no apiVersion> <no kind> nokind",
                "u.yaml: document 5: not a Kubernetes object (expected a mapping with apiVersion and kind, found a list)",
                "u.yaml: document 6: not a Kubernetes object (expected a mapping with apiVersion and kind, found a string)",
            ]
        );
}

#[test]
fn malformed_documents_warn_and_the_rest_still_load() {
    let text = format!(
            "{SVC}---\napiVersion: v1\nkind: Service\nmetadata: {{name: broken\n  bad: [\n---\n\
apiVersion: v1\nkind: Service\nmetadata: {{name: strport, namespace: ns}}\nspec:\n  ports:\n  - port: \"80\"\n---\n\
apiVersion: v1\nkind: Node\nmetadata: nope\n---\n{NODE}"
        );
    let l = load_str("bad.yaml", &text);
    assert_eq!(counts(&l), (1, 0, 1, 0), "{:?}", l.warnings);
    assert_eq!(l.objects.services[0].metadata.name.as_deref(), Some("web"));
    assert_eq!(l.objects.nodes[0].metadata.name.as_deref(), Some("node-a"));
    assert_eq!(l.warnings.len(), 3, "{:?}", l.warnings);
    assert!(
        l.warnings[0].starts_with("bad.yaml: document 2: not valid YAML: ")
            && l.warnings[0].contains("at line 17 column 6"),
        "{}",
        l.warnings[0]
    );
    assert!(
        l.warnings[1].starts_with("bad.yaml: document 3: Service ns/strport: cannot read: ")
            && l.warnings[1].contains("invalid type: string \"80\", expected i32"),
        "{}",
        l.warnings[1]
    );
    assert!(
        l.warnings[2].starts_with("bad.yaml: document 4: Node <unnamed>: cannot read: "),
        "{}",
        l.warnings[2]
    );
}

#[test]
fn semantically_invalid_values_still_load() {
    let text = "\
apiVersion: v1
kind: Service
metadata: {name: odd, namespace: ns}
spec:
  clusterIP: 10.0.0.300
  externalIPs: [not-an-ip]
  ports:
  - port: 70000
    protocol: ICMP
    targetPort: -5
    nodePort: 0
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: odd-1, namespace: ns}
addressType: IPv5
endpoints:
- addresses: [\"999.1.1.1\"]
ports:
- port: 123456
  protocol: icmp
";
    let l = load_str("odd.yaml", text);
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);
    let spec = l.objects.services[0].spec.as_ref().unwrap();
    assert_eq!(spec.cluster_ip.as_deref(), Some("10.0.0.300"));
    assert_eq!(spec.external_ips, Some(vec!["not-an-ip".to_string()]));
    let port = &spec.ports.as_ref().unwrap()[0];
    assert_eq!(port.port, 70000);
    assert_eq!(port.protocol.as_deref(), Some("ICMP"));
    assert_eq!(port.target_port, Some(IntOrString::Int(-5)));
    let slice = &l.objects.slices[0];
    assert_eq!(slice.address_type, "IPv5");
    assert_eq!(
        slice.endpoints.as_ref().unwrap()[0].addresses,
        vec!["999.1.1.1".to_string()]
    );
    assert_eq!(slice.ports.as_ref().unwrap()[0].port, Some(123456));
}

/// A unique scratch directory, removed on drop.
struct TempDir(PathBuf);
impl TempDir {
    fn new() -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "kproxy-manifests-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
    fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.0.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, text).unwrap();
        p
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn node(name: &str) -> String {
    format!("apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n")
}

#[test]
fn directories_are_walked_recursively_in_path_order() {
    let t = TempDir::new();
    t.write("b.yaml", &node("b"));
    t.write("a/z.yml", &node("az"));
    t.write(
        "a/y/x.json",
        r#"{"apiVersion":"v1","kind":"Node","metadata":{"name":"ayx"}}"#,
    );
    t.write("c.YAML", &node("c"));
    t.write("notes.txt", &node("txt"));
    t.write(".hidden.yaml", &node("hidden"));
    t.write("..data/d.yaml", &node("configmap-copy"));
    t.write("e.yaml", "kind: [\n");
    let extra = t.write("extra.txt", &node("explicit"));

    let l = load_paths(&[t.0.clone(), extra]).unwrap();
    let names: Vec<_> = l
        .objects
        .nodes
        .iter()
        .map(|n| n.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(names, ["ayx", "az", "b", "c", "explicit"]);
    assert_eq!(l.warnings.len(), 1, "{:?}", l.warnings);
    let e = t.0.join("e.yaml").display().to_string();
    assert!(
        l.warnings[0].starts_with(&format!("{e}: document 1: not valid YAML: ")),
        "{}",
        l.warnings[0]
    );
}

#[test]
fn file_warnings_name_the_file() {
    let t = TempDir::new();
    let p = t.write(
        "svc.yaml",
        "apiVersion: v1\nkind: Secret\nmetadata: {name: s, namespace: ns}\n",
    );
    let l = load_paths(std::slice::from_ref(&p)).unwrap();
    assert_eq!(
        l.warnings,
        vec![format!(
            "{}: document 1: ignoring v1 Secret ns/s",
            p.display()
        )]
    );
}

#[test]
fn non_utf8_file_is_a_warning() {
    let t = TempDir::new();
    let p = t.0.join("bin.yaml");
    fs::write(&p, [0xff, 0xfe, 0x00]).unwrap();
    let l = load_paths(std::slice::from_ref(&p)).unwrap();
    assert_eq!(l.warnings.len(), 1);
    assert!(
        l.warnings[0].contains("not UTF-8 text"),
        "{}",
        l.warnings[0]
    );
}

#[test]
fn missing_path_is_an_error() {
    let t = TempDir::new();
    let missing = t.0.join("nope.yaml");
    let err = load_paths(std::slice::from_ref(&missing)).unwrap_err();
    assert!(matches!(err, ManifestError::NotFound { .. }));
    assert_eq!(
        err.to_string(),
        format!("{}: no such file or directory", missing.display())
    );
}

#[cfg(unix)]
#[test]
fn symlink_loops_terminate() {
    let t = TempDir::new();
    t.write("d/n.yaml", &node("n"));
    std::os::unix::fs::symlink(&t.0, t.0.join("d/loop")).unwrap();
    let l = load_paths(std::slice::from_ref(&t.0)).unwrap();
    assert_eq!(l.objects.nodes.len(), 1);
}

#[test]
fn split_documents_lines() {
    let segs = split_documents("a: 1\n---\nb: 2\n--- c\n...\nd: 4\n");
    let got: Vec<_> = segs.iter().map(|s| (s.text, s.line)).collect();
    assert_eq!(
        got,
        vec![("a: 1\n", 1), ("\nb: 2\n", 2), (" c\n", 4), ("d: 4\n", 6)]
    );
}
