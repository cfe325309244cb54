//! Reading Kubernetes objects from manifest files (`kproxy render`, `diff`, `trace`).
//!
//! Owns: finding manifest files (files and directories, recursively), splitting them into
//! documents (multi-document YAML, JSON, `kind: List` / `*List` with `items`), and turning
//! the documents kproxy cares about (`v1 Service`, `discovery.k8s.io/v1 EndpointSlice`,
//! `v1 Node`, `networking.k8s.io/v1 ServiceCIDR`) into the k8s-openapi types collected in
//! [`Objects`].
//!
//! Must not: interpret the objects. Semantically odd values (an IP like `10.0.0.300`,
//! port 70000, protocol `ICMP`) load as they are, so that `model::build` can warn about
//! them with the full context. Only a document that cannot be read *structurally* (not
//! YAML, or not shaped like the k8s-openapi type) is dropped here, with a warning; one bad
//! document never hides the others. The only hard errors are I/O errors on the paths
//! given.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::ServiceCIDR;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::model::Objects;

/// File extensions picked up when a directory is given.
const EXTENSIONS: [&str; 3] = ["yaml", "yml", "json"];

/// What was loaded, and what was skipped (one human-readable line per skipped object).
#[derive(Clone, Debug, Default)]
pub struct Loaded {
    pub objects: Objects,
    /// `"{file}: document {n}: …"` lines, in file and document order.
    pub warnings: Vec<String>,
}

impl Loaded {
    /// Appends `other` (objects and warnings) after `self`'s.
    fn extend(&mut self, other: Loaded) {
        let Loaded { objects, warnings } = other;
        self.objects.services.extend(objects.services);
        self.objects.slices.extend(objects.slices);
        self.objects.nodes.extend(objects.nodes);
        self.objects.service_cidrs.extend(objects.service_cidrs);
        self.warnings.extend(warnings);
    }
}

/// A path that could not be read. Content problems are never errors (see [`Loaded`]).
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{}: no such file or directory", path.display())]
    NotFound { path: PathBuf },
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl ManifestError {
    fn from_io(path: &Path, source: io::Error) -> ManifestError {
        if source.kind() == io::ErrorKind::NotFound {
            ManifestError::NotFound {
                path: path.to_path_buf(),
            }
        } else {
            ManifestError::Read {
                path: path.to_path_buf(),
                source,
            }
        }
    }
}

/// Loads every path in order. A file is read whatever its extension; a directory
/// contributes every `*.yaml`, `*.yml` and `*.json` file below it, recursively, sorted by
/// path. Entries whose name starts with `.` are skipped inside directories (this keeps
/// the `..data` / `..2024_…` copies of a mounted ConfigMap from loading twice).
pub fn load_paths(paths: &[PathBuf]) -> Result<Loaded, ManifestError> {
    let mut loaded = Loaded::default();
    for path in paths {
        let meta = fs::metadata(path).map_err(|e| ManifestError::from_io(path, e))?;
        let files = if meta.is_dir() {
            let mut files = Vec::new();
            let mut visited = HashSet::new();
            collect_dir(path, &mut files, &mut visited)?;
            files.sort();
            files
        } else {
            vec![path.clone()]
        };
        for file in files {
            let bytes = fs::read(&file).map_err(|e| ManifestError::from_io(&file, e))?;
            let name = file.display().to_string();
            match String::from_utf8(bytes) {
                Ok(text) => loaded.extend(load_str(&name, &text)),
                Err(e) => loaded
                    .warnings
                    .push(format!("{name}: not UTF-8 text ({e}); file skipped")),
            }
        }
    }
    Ok(loaded)
}

fn collect_dir(
    dir: &Path,
    files: &mut Vec<PathBuf>,
    visited: &mut HashSet<PathBuf>,
) -> Result<(), ManifestError> {
    // Guard against symlink loops: each real directory is walked once.
    let real = fs::canonicalize(dir).map_err(|e| ManifestError::from_io(dir, e))?;
    if !visited.insert(real) {
        return Ok(());
    }
    let entries = fs::read_dir(dir).map_err(|e| ManifestError::from_io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| ManifestError::from_io(dir, e))?;
        let path = entry.path();
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let meta = fs::metadata(&path).map_err(|e| ManifestError::from_io(&path, e))?;
        if meta.is_dir() {
            collect_dir(&path, files, visited)?;
        } else if has_manifest_extension(&path) {
            files.push(path);
        }
    }
    Ok(())
}

fn has_manifest_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

/// Loads the objects in one file's text. `name` is the file name used in warnings.
/// The text is multi-document YAML (`---` separated) or JSON (one or more concatenated
/// values); empty documents are skipped. Documents are numbered from 1.
pub fn load_str(name: &str, text: &str) -> Loaded {
    let mut out = Loaded::default();
    let mut n = 0usize;
    // A `.json` file is only JSON: YAML would read some broken JSON (`"kind": }`) as
    // valid YAML with a null, hiding the real mistake.
    let json_file = name.to_ascii_lowercase().ends_with(".json");
    for segment in split_documents(text) {
        if is_blank(segment.text) {
            continue;
        }
        if let Some(values) = json_values(&segment, json_file) {
            // JSON (possibly several concatenated values). A syntax error after the
            // first value ends the segment: a JSON stream cannot be resynchronised.
            for value in values {
                n += 1;
                match value {
                    Ok(value) => take_document(value, &Location::doc(name, n), &mut out),
                    Err(e) => out
                        .warnings
                        .push(format!("{name}: document {n}: not valid JSON: {e}")),
                }
            }
            continue;
        }
        match serde_yaml_ng::from_str::<Value>(segment.text) {
            Ok(Value::Null) => {} // e.g. a document holding only `~`
            Ok(value) => {
                n += 1;
                take_document(value, &Location::doc(name, n), &mut out);
            }
            Err(_) => {
                n += 1;
                // Parse again with the document at its place in the file, so that the
                // error's "at line L column C" counts lines of the file (errors are rare;
                // padding every document would cost time quadratic in the file length).
                let padded = "\n".repeat(segment.line - 1) + segment.text;
                let e = serde_yaml_ng::from_str::<Value>(&padded)
                    .err()
                    .map(|e| e.to_string())
                    .unwrap_or_default();
                out.warnings
                    .push(format!("{name}: document {n}: not valid YAML: {e}"));
            }
        }
    }
    out
}

/// The segment read as a stream of JSON values, when it starts like JSON and its first
/// value is JSON (else `None`: YAML flow style such as `{apiVersion: v1}` starts with `{`
/// too, and the YAML parser reads it), or always when `json_only`. Errors carry file line
/// numbers.
fn json_values(segment: &Segment<'_>, json_only: bool) -> Option<Vec<Result<Value, String>>> {
    let trimmed = segment.text.trim_start();
    if !(json_only || trimmed.starts_with('{') || trimmed.starts_with('[')) {
        return None;
    }
    let mut values = Vec::new();
    for value in serde_json::Deserializer::from_str(segment.text).into_iter::<Value>() {
        match value {
            Ok(v) => values.push(Ok(v)),
            Err(_) if values.is_empty() && !json_only => return None,
            Err(e) => {
                let suffix = format!(" at line {} column {}", e.line(), e.column());
                let msg = e.to_string();
                let msg = msg.strip_suffix(&suffix).unwrap_or(&msg).to_string();
                let line = segment.line + e.line().saturating_sub(1);
                values.push(Err(format!("{msg} at line {line} column {}", e.column())));
                break;
            }
        }
    }
    Some(values)
}

/// One YAML document's text and the 1-based line it starts on.
struct Segment<'a> {
    text: &'a str,
    line: usize,
}

/// Splits a YAML stream at document markers: a line starting with `---` or `...`
/// followed by whitespace or the end of the line. YAML forbids such lines inside any
/// content (they always end a document), so this split is exact without a YAML parser,
/// and lets a broken document be reported without losing the ones after it. Text after
/// `--- ` on the marker line (e.g. `--- {a: 1}`) stays with the document it starts.
fn split_documents(text: &str) -> Vec<Segment<'_>> {
    let mut segments = Vec::new();
    let mut start = 0usize; // byte offset of the current segment
    let mut start_line = 1usize;
    let mut offset = 0usize;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let content = line.trim_end_matches(['\n', '\r']);
        let marker = ["---", "..."].iter().find(|m| {
            content.starts_with(**m)
                && content[3..]
                    .chars()
                    .next()
                    .is_none_or(|c| c == ' ' || c == '\t')
        });
        if let Some(m) = marker {
            segments.push(Segment {
                text: &text[start..offset],
                line: start_line,
            });
            if *m == "---" {
                // Keep the rest of the marker line (an inline document) in the next one.
                start = offset + 3;
                start_line = i + 1;
            } else {
                start = offset + line.len();
                start_line = i + 2;
            }
        }
        offset += line.len();
    }
    segments.push(Segment {
        text: &text[start..],
        line: start_line,
    });
    segments
}

/// True when a document holds nothing but whitespace, comments and directives.
fn is_blank(text: &str) -> bool {
    text.lines().all(|l| {
        let l = l.trim();
        l.is_empty() || l.starts_with('#') || l.starts_with('%')
    })
}

/// Where an object sits: file, document, and the item index inside a List.
#[derive(Clone)]
struct Location<'a> {
    file: &'a str,
    doc: usize,
    items: Vec<usize>,
}

impl<'a> Location<'a> {
    fn doc(file: &'a str, doc: usize) -> Location<'a> {
        Location {
            file,
            doc,
            items: Vec::new(),
        }
    }
    fn item(&self, i: usize) -> Location<'a> {
        let mut l = self.clone();
        l.items.push(i);
        l
    }
}

impl std::fmt::Display for Location<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: document {}", self.file, self.doc)?;
        for i in &self.items {
            write!(f, " item {i}")?;
        }
        Ok(())
    }
}

/// Sorts one parsed document into `out`: a recognised object, a List, or a warning.
fn take_document(value: Value, at: &Location<'_>, out: &mut Loaded) {
    let Value::Object(map) = &value else {
        out.warnings.push(format!(
            "{at}: not a Kubernetes object (expected a mapping with apiVersion and kind, found {})",
            json_type(&value)
        ));
        return;
    };
    let field = |k: &str| map.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let (api_version, kind) = (field("apiVersion"), field("kind"));
    let (api_version, kind) = (api_version.as_str(), kind.as_str());
    let name = object_name(&value);

    if kind == "List" || (kind.ends_with("List") && map.contains_key("items")) {
        let items = match value {
            // Take the items out of the document rather than copying them: lists from
            // `kubectl get -A -o yaml` can be large.
            Value::Object(mut map) => map.remove("items"),
            _ => None,
        };
        let items = match items {
            Some(Value::Array(items)) => items,
            Some(Value::Null) | None => Vec::new(),
            Some(other) => {
                out.warnings.push(format!(
                    "{at}: {api_version} {kind}: items is {}, not a list",
                    json_type(&other)
                ));
                return;
            }
        };
        // Items of a typed list (`ServiceList` from the API) carry no apiVersion/kind.
        let item_kind = kind.strip_suffix("List").filter(|k| !k.is_empty());
        for (i, mut item) in items.into_iter().enumerate() {
            if let (Some(item_kind), Value::Object(m)) = (item_kind, &mut item) {
                m.entry("kind")
                    .or_insert_with(|| Value::String(item_kind.to_string()));
                if !api_version.is_empty() {
                    m.entry("apiVersion")
                        .or_insert_with(|| Value::String(api_version.to_string()));
                }
            }
            take_document(item, &at.item(i + 1), out);
        }
        return;
    }

    match (api_version, kind) {
        ("v1", "Service") => push::<Service>(value, at, kind, &name, out, |o| &mut o.services),
        ("discovery.k8s.io/v1", "EndpointSlice") => {
            push::<EndpointSlice>(value, at, kind, &name, out, |o| &mut o.slices)
        }
        ("v1", "Node") => push::<Node>(value, at, kind, &name, out, |o| &mut o.nodes),
        ("networking.k8s.io/v1", "ServiceCIDR") => {
            push::<ServiceCIDR>(value, at, kind, &name, out, |o| &mut o.service_cidrs)
        }
        _ => {
            let api_version = if api_version.is_empty() {
                "<no apiVersion>"
            } else {
                api_version
            };
            let kind = if kind.is_empty() { "<no kind>" } else { kind };
            out.warnings
                .push(format!("{at}: ignoring {api_version} {kind} {name}"));
        }
    }
}

/// Deserializes a recognised object into its k8s-openapi type and appends it.
fn push<T: DeserializeOwned>(
    value: Value,
    at: &Location<'_>,
    kind: &str,
    name: &str,
    out: &mut Loaded,
    list: impl FnOnce(&mut Objects) -> &mut Vec<T>,
) {
    match serde_json::from_value::<T>(value) {
        Ok(object) => list(&mut out.objects).push(object),
        Err(e) => out
            .warnings
            .push(format!("{at}: {kind} {name}: cannot read: {e}")),
    }
}

/// `namespace/name`, `name`, or `<unnamed>`, read leniently from `metadata`.
fn object_name(value: &Value) -> String {
    let meta = value.get("metadata");
    let get = |k: &str| meta.and_then(|m| m.get(k)).and_then(Value::as_str);
    match (get("namespace"), get("name")) {
        (Some(ns), Some(name)) if !ns.is_empty() => format!("{ns}/{name}"),
        (_, Some(name)) => name.to_string(),
        (_, None) => "<unnamed>".to_string(),
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

#[cfg(test)]
mod tests {
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
}
