use super::*;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::json;
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

/// `text` as `serde_yaml_ng` reads it and as [`yaml::to_json`] reads it (`None` when it
/// declines).
fn both_ways(text: &str) -> (Value, Option<Value>) {
    let careful = serde_yaml_ng::from_str::<Value>(text).unwrap();
    let fast = yaml::to_json(text).map(|j| serde_json::from_str::<Value>(&j).expect(&j));
    (careful, fast)
}

/// Every `*.yaml` below `dir`.
fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            yaml_files(&path, out);
        } else if has_manifest_extension(&path) && !path.to_string_lossy().ends_with(".json") {
            out.push(path);
        }
    }
}

#[test]
fn yaml_subset_reads_as_serde_yaml_ng_does() {
    assert!(yaml::to_json(SVC).is_some());
    for doc in [SVC, SLICE, NODE, CIDR] {
        if let (careful, Some(fast)) = both_ways(doc) {
            assert_eq!(fast, careful, "{doc}");
        }
    }
    // Every document of every manifest in the repository, read either way, is the same
    // value.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    yaml_files(&root.join("rules"), &mut files);
    yaml_files(&root.join("deploy"), &mut files);
    let (mut docs, mut fast_docs, mut block_docs) = (0, 0, 0);
    for file in &files {
        let text = fs::read_to_string(file).unwrap();
        for segment in split_documents(&text) {
            if is_blank(segment.text) || serde_yaml_ng::from_str::<Value>(segment.text).is_err() {
                continue;
            }
            let (careful, fast) = both_ways(segment.text);
            docs += 1;
            if let Some(fast) = fast {
                fast_docs += 1;
                assert_eq!(fast, careful, "{}:{}", file.display(), segment.line);
            }
            // The same document as kubectl would print it (block style throughout).
            let block = serde_yaml_ng::to_string(&careful).unwrap();
            let (again, fast) = both_ways(&block);
            assert_eq!(again, careful, "{block}");
            if let Some(fast) = fast {
                block_docs += 1;
                assert_eq!(fast, careful, "{block}");
            }
        }
    }
    // Hand-written manifests like flow style (`[a, b]`), which the subset leaves alone;
    // printed as kubectl prints them, nearly all are in it.
    assert!(
        fast_docs > 0,
        "{fast_docs} of {docs} documents in the subset"
    );
    assert!(
        block_docs * 10 > docs * 9,
        "{block_docs} of {docs} printed documents in the subset"
    );
}

#[test]
fn yaml_subset_scalars() {
    let cases = [
        // (value, read by the subset as)
        ("a", Some(json!("a"))),
        ("10.96.0.1", Some(json!("10.96.0.1"))),
        ("10.0.0.0/8", Some(json!("10.0.0.0/8"))),
        ("fd00::1", Some(json!("fd00::1"))),
        ("'1000'", Some(json!("1000"))),
        ("'it''s'", Some(json!("it's"))),
        (
            "\"2026-01-01T00:00:00Z\"",
            Some(json!("2026-01-01T00:00:00Z")),
        ),
        ("8080", Some(json!(8080))),
        ("-5", Some(json!(-5))),
        ("0", Some(json!(0))),
        ("true", Some(json!(true))),
        ("~", Some(Value::Null)),
        ("", Some(Value::Null)),
        ("{}", Some(json!({}))),
        ("[]", Some(json!([]))),
        ("http://x:80/p", Some(json!("http://x:80/p"))),
        ("inf", Some(json!("inf"))),
        (
            "00000001-0000-4000-8000-000000000000",
            Some(json!("00000001-0000-4000-8000-000000000000")),
        ),
        ("2026-01-01T00:00:00Z", Some(json!("2026-01-01T00:00:00Z"))),
        ("1.2.3", Some(json!("1.2.3"))),
        ("1_000", Some(json!("1_000"))),
        ("-x", Some(json!("-x"))),
        ("+.inf", None),
        (".5", None),
        ("-1.5e-3", None),
        ("1.", None),
        // Left to serde_yaml_ng: floats, odd spellings, escapes, flow, anchors, tags.
        ("1.5", None),
        ("1e3", None),
        ("0x1f", None),
        ("007", None),
        ("True", None),
        ("NULL", None),
        ("\"a\\tb\"", None),
        ("[a, b]", None),
        ("{a: 1}", None),
        ("&x a", None),
        ("!!str 1", None),
        ("|", None),
        ("a # c", None),
        ("a\t# c", None),
    ];
    for (value, want) in cases {
        let text = format!("k:{}{value}\n", if value.is_empty() { "" } else { " " });
        let (careful, fast) = both_ways(&text);
        assert_eq!(fast.as_ref().map(|f| &f["k"]), want.as_ref(), "{value:?}");
        if let Some(fast) = fast {
            assert_eq!(fast, careful, "{value:?}");
        }
    }
}

#[test]
fn yaml_subset_structure() {
    let text = "\
# kubectl's layout: sequences at their key's indentation
a:
  b:
  - x: 1
    y:
    - 2
    -   3
  - z
  c: {}
d:
    deep:
        deeper: 'q'
e:
";
    let (careful, fast) = both_ways(text);
    assert_eq!(fast, Some(careful));
    let declined = [
        "a: 1\n  b: 2\n", // continuation line
        "a: |\n  text\n", // block scalar
        "- a\n- b\n",     // not a mapping: fine, but a list
        "a:\n- - 1\n",    // a sequence in a sequence
        "'q': 1\n",       // quoted key
        "1: a\n",         // a number as key
        "a: x\n\tb: y\n", // tab
        "a: 1 \n",        // trailing space
        " a: 1\n",        // indented document
        "a: 1\na: 2\n",   // accepted (serde_json reads the last)
    ];
    for text in declined {
        match (text, yaml::to_json(text)) {
            ("- a\n- b\n", fast) => assert_eq!(fast.as_deref(), Some("[\"a\",\"b\"]")),
            ("a: 1\na: 2\n", _) => {
                // A key given twice: the last one, as serde_yaml_ng reads it.
                let (careful, fast) = both_ways(text);
                assert_eq!(
                    (fast, careful["a"].clone()),
                    (Some(json!({"a": 2})), json!(2))
                );
            }
            (_, fast) => assert_eq!(fast, None, "{text:?}"),
        }
    }
}

/// Enough documents that they are read on several threads.
const MANY: usize = 4_000;

#[test]
fn many_documents_keep_their_order_and_numbers() {
    let mut text = String::new();
    for i in 0..MANY {
        match i {
            1_000 => text.push_str("apiVersion: v1\nkind: Node\nmetadata: {name: [\n"),
            2_000 => text.push_str("apiVersion: v1\nkind: Secret\nmetadata: {name: s}\n"),
            3_000 => text.push_str("~\n"), // not a document: numbers do not count it
            _ => text.push_str(&node(&format!("n{i}"))),
        }
        text.push_str("# the comments take a document past 64 bytes, the file past 256 KiB\n---\n");
    }
    assert!(text.len() > 256 * 1024);
    let l = load_str("many.yaml", &text);
    let names: Vec<_> = l
        .objects
        .nodes
        .iter()
        .map(|n| n.metadata.name.clone().unwrap())
        .collect();
    let want: Vec<_> = (0..MANY)
        .filter(|i| ![1_000, 2_000, 3_000].contains(i))
        .map(|i| format!("n{i}"))
        .collect();
    assert_eq!(names, want);
    assert_eq!(l.warnings.len(), 2, "{:?}", l.warnings);
    assert!(
        l.warnings[0].starts_with("many.yaml: document 1001: not valid YAML: "),
        "{}",
        l.warnings[0]
    );
    assert_eq!(
        l.warnings[1],
        "many.yaml: document 2001: ignoring v1 Secret s"
    );
    // After the `~`, a document's number is one less than its index.
    let text = format!("{text}{}", node("last"));
    let l = load_str("many.yaml", &format!("{text}---\nkind: X\n"));
    assert_eq!(
        l.warnings[2],
        format!(
            "many.yaml: document {}: ignoring <no apiVersion> X <unnamed>",
            MANY + 1
        )
    );
}

#[test]
fn large_json_lists_keep_their_order_and_item_numbers() {
    let items: Vec<String> = (0..MANY)
        .map(|i| match i {
            // A typed list's items carry no kind: the list's name gives it.
            7 => r#"{"metadata":"nope"}"#.to_string(),
            8 => r#"{"apiVersion":"v1","kind":"Secret","metadata":{"name":"s"}}"#.to_string(),
            _ => {
                format!(r#"{{"metadata":{{"name":"n{i}"}},"spec":{{"podCIDRs":["10.0.0.0/24"]}}}}"#)
            }
        })
        .collect();
    let text = format!(
        "{{\"apiVersion\":\"v1\",\"kind\":\"NodeList\",\"items\":[\n{}\n]}}\n{}",
        items.join(",\n"),
        r#"{"apiVersion":"v1","kind":"List","items":[{"apiVersion":"v1","kind":"Node","metadata":{"name":"z"}}]}"#
    );
    assert!(text.len() > 256 * 1024);
    let l = load_str("many.json", &text);
    let names: Vec<_> = l
        .objects
        .nodes
        .iter()
        .map(|n| n.metadata.name.clone().unwrap())
        .collect();
    let mut want: Vec<_> = (0..MANY)
        .filter(|i| ![7, 8].contains(i))
        .map(|i| format!("n{i}"))
        .collect();
    want.push("z".into());
    assert_eq!(names, want);
    assert_eq!(l.warnings.len(), 2, "{:?}", l.warnings);
    assert!(
        l.warnings[0].starts_with("many.json: document 1 item 8: Node <unnamed>: cannot read: "),
        "{}",
        l.warnings[0]
    );
    assert_eq!(
        l.warnings[1],
        "many.json: document 1 item 9: ignoring v1 Secret s"
    );
}

/// The YAML kubectl prints (as the synthetic clusters are written) is read the fast way,
/// every document of it.
#[cfg(feature = "test-util")]
#[test]
fn kubectl_style_yaml_is_in_the_subset() {
    let o = crate::testutil::synthetic_cluster(20, 3, true);
    let text = crate::testutil::manifests::synthetic_yaml(&o);
    for segment in split_documents(&text).iter().filter(|s| !is_blank(s.text)) {
        let json = yaml::to_json(segment.text).expect(segment.text);
        assert!(matches!(fast::json(&json), fast::Json::Object(_)), "{json}");
        let (careful, fast) = both_ways(segment.text);
        assert_eq!(fast, Some(careful));
    }
}

/// Regression (tests/bad_input.rs): a name of the wrong type made the warning say
/// `<unnamed>` (and drop the namespace), naming no object.
#[test]
fn unreadable_objects_are_named_even_by_a_name_of_the_wrong_type() {
    let text = "apiVersion: v1\nkind: Service\nmetadata: {name: 42, namespace: ns}\nspec: 7\n\
                ---\napiVersion: v1\nkind: Service\nmetadata: {namespace: ns}\nspec: 7\n";
    let l = load_str("odd.yaml", text);
    assert_eq!(l.warnings.len(), 2, "{:?}", l.warnings);
    assert!(
        l.warnings[0].starts_with("odd.yaml: document 1: Service ns/42: cannot read: "),
        "{}",
        l.warnings[0]
    );
    assert!(
        l.warnings[1].starts_with("odd.yaml: document 2: Service ns/<unnamed>: cannot read: "),
        "{}",
        l.warnings[1]
    );
}

/// Regression: the fast YAML reading recursed once per level of nesting without a limit,
/// so a document nested 30k levels deep overflowed the main thread's stack (`kproxy render
/// -f` aborted). Deeper than the YAML parser's own limit, it now declines, and the
/// parser's warning names the document.
#[test]
fn deeply_nested_yaml_is_a_warning_not_a_stack_overflow() {
    const DEPTH: usize = 3000;
    let mut text = String::from("apiVersion: v1\nkind: Service\nmetadata:\n");
    for i in 0..DEPTH {
        text.push_str(&" ".repeat(i + 1));
        text.push_str("a:\n");
    }
    text.push_str(&" ".repeat(DEPTH + 1));
    text.push_str("x: 1\n");
    // A thread with a small stack: the recursion of the old code overflowed it.
    let l = std::thread::Builder::new()
        .stack_size(1024 * 1024)
        .spawn(move || load_str("deep.yaml", &text))
        .unwrap()
        .join()
        .expect("no stack overflow");
    assert_eq!(counts(&l), (0, 0, 0, 0));
    assert_eq!(l.warnings.len(), 1, "{:?}", l.warnings);
    assert!(
        l.warnings[0].starts_with("deep.yaml: document 1: not valid YAML: recursion limit"),
        "{}",
        l.warnings[0]
    );
}

/// Regression: deep flow nesting (`a: [[[[…`) cost the YAML parser's scanner time
/// quadratic in the depth (16k levels: 6.6 s, 100k: minutes), only for the parser to refuse
/// the document at its recursion limit. It is now refused before the parser runs; quotes
/// and comments holding brackets do not count.
#[test]
fn deep_flow_nesting_is_refused_before_parsing() {
    let deep = format!("a: {}{}\n", "[".repeat(100_000), "]".repeat(100_000));
    let l = load_str("flow.yaml", &deep);
    assert_eq!(
        l.warnings,
        vec!["flow.yaml: document 1: not valid YAML: flow collections nest deeper than 128 levels"]
    );
    // Brackets that are not flow collections.
    let text = format!(
        "{SVC}  annotations:\n    a: '{0}'\n    b: \"{0}\\\"{0}\"\n    c: it's {0}\n    # {0}\n",
        "[".repeat(500)
    );
    assert_eq!(super::yaml::flow_depth(&text), 0);
    let deep_json_in_yaml = format!("{}{}", "[".repeat(200), "]".repeat(200));
    assert_eq!(super::yaml::flow_depth(&deep_json_in_yaml), 200);
}
