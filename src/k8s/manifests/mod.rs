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
//!
//! Reading is fast (issue #10: `render -f` of 10k Services × 10 endpoints from 18 MB of
//! YAML takes 0.57 s of CPU in all, was 0.93 s): documents are read on every core
//! (`parallel`), YAML in the block style kubectl prints is turned into JSON without a YAML
//! parser (`yaml`), and JSON goes straight into the types (`fast`). Whatever those decline
//! takes the careful way, so what loads and what is warned about never depends on which
//! way a document went.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::ServiceCIDR;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::model::Objects;

mod fast;
mod parallel;
mod yaml;

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
///
/// The documents are read on every core (a large JSON List's items too), each the fast way
/// when it can be (YAML in kubectl's block style turned into JSON by [`yaml`], JSON read
/// straight into the types by [`fast`]), else the careful way (through
/// `serde_json::Value`); objects and warnings come out in document order either way.
pub fn load_str(name: &str, text: &str) -> Loaded {
    // A `.json` file is only JSON: YAML would read some broken JSON (`"kind": }`) as
    // valid YAML with a null, hiding the real mistake.
    let json_file = name.to_ascii_lowercase().ends_with(".json");
    let segments = split_documents(text);
    let runs = parallel::runs(
        &segments,
        |s| s.text.len(),
        |run, _| {
            // The run's objects, and its warnings with their document's number in the run.
            let (mut objects, mut warnings, mut docs) = (Loaded::default(), Vec::new(), 0);
            for doc in run.iter().flat_map(|s| read_segment(s, json_file)) {
                docs += 1;
                warnings.extend(doc.warnings.into_iter().map(|w| (docs, w)));
                objects.extend(Loaded {
                    objects: doc.objects,
                    warnings: Vec::new(),
                });
            }
            (objects, warnings, docs)
        },
    );
    let mut before = 0; // documents in the runs before
    let runs = runs.into_iter().map(|(mut run, warnings, docs)| {
        let at = |n| format!("{name}: document {}", before + n);
        run.warnings = warnings.into_iter().map(|(n, w)| at(n) + &w).collect();
        before += docs;
        run
    });
    concat(runs.collect())
}

/// The parts one after the other, moved behind the first part's objects (its lists grown
/// once: moving every object into new lists would hold them all twice at the peak).
fn concat(parts: Vec<Loaded>) -> Loaded {
    let sum = |len: fn(&Objects) -> usize| parts.iter().skip(1).map(|p| len(&p.objects)).sum();
    let more = (
        sum(|o| o.services.len()),
        sum(|o| o.slices.len()),
        sum(|o| o.nodes.len()),
        sum(|o| o.service_cidrs.len()),
    );
    let mut parts = parts.into_iter();
    let mut out = parts.next().unwrap_or_default();
    let o = &mut out.objects;
    o.services.reserve(more.0);
    o.slices.reserve(more.1);
    o.nodes.reserve(more.2);
    o.service_cidrs.reserve(more.3);
    parts.for_each(|part| out.extend(part));
    out
}

/// The documents of one segment (none, one, or for JSON one per concatenated value), each
/// with warnings that follow `"{file}: document {n}"`.
fn read_segment(segment: &Segment<'_>, json_file: bool) -> Vec<Loaded> {
    if is_blank(segment.text) {
        return Vec::new();
    }
    if let Some(values) = json_values(segment, json_file) {
        // JSON (possibly several concatenated values). A syntax error after the
        // first value ends the segment: a JSON stream cannot be resynchronised.
        return values
            .into_iter()
            .map(|value| {
                let mut doc = Loaded::default();
                match value {
                    Ok(raw) => read_json(raw.get(), &Location::default(), None, &mut doc),
                    Err(e) => doc.warnings.push(format!(": not valid JSON: {e}")),
                }
                doc
            })
            .collect();
    }
    let mut doc = Loaded::default();
    if let Some(json) = yaml::to_json(segment.text) {
        read_json(&json, &Location::default(), None, &mut doc);
        return vec![doc];
    }
    if yaml::flow_depth(segment.text) > yaml::MAX_DEPTH {
        doc.warnings.push(format!(
            ": not valid YAML: flow collections nest deeper than {} levels",
            yaml::MAX_DEPTH
        ));
        return vec![doc];
    }
    match serde_yaml_ng::from_str::<Value>(segment.text) {
        Ok(Value::Null) => return Vec::new(), // e.g. a document holding only `~`
        Ok(value) => take_document(value, &Location::default(), &mut doc),
        Err(_) => {
            // Parse again with the document at its place in the file, so that the
            // error's "at line L column C" counts lines of the file (errors are rare;
            // padding every document would cost time quadratic in the file length).
            let padded = "\n".repeat(segment.line - 1) + segment.text;
            let e = serde_yaml_ng::from_str::<Value>(&padded)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            doc.warnings.push(format!(": not valid YAML: {e}"));
        }
    }
    vec![doc]
}

/// A List's `apiVersion` and the kind its items are when they do not say (`ServiceList`:
/// `Service`; `List`: none).
struct ListOf<'a> {
    api_version: &'a str,
    item_kind: Option<&'a str>,
}

impl<'a> ListOf<'a> {
    fn new(api_version: &'a str, kind: &'a str) -> ListOf<'a> {
        ListOf {
            api_version,
            item_kind: kind.strip_suffix("List").filter(|k| !k.is_empty()),
        }
    }

    /// Items of a typed list (`ServiceList` from the API) carry no apiVersion/kind.
    fn complete(&self, item: &mut Value) {
        if let (Some(item_kind), Value::Object(m)) = (self.item_kind, item) {
            m.entry("kind")
                .or_insert_with(|| Value::String(item_kind.to_string()));
            if !self.api_version.is_empty() {
                m.entry("apiVersion")
                    .or_insert_with(|| Value::String(self.api_version.to_string()));
            }
        }
    }
}

/// One JSON value (valid JSON): the fast way, a List's items on every core, else the
/// careful way. `list` is the List `raw` is an item of.
fn read_json(raw: &str, at: &Location, list: Option<&ListOf<'_>>, out: &mut Loaded) {
    match fast::json(raw) {
        fast::Json::Object(objects) => out.extend(Loaded {
            objects,
            warnings: Vec::new(),
        }),
        fast::Json::List {
            api_version,
            kind,
            items,
        } => {
            let of = ListOf::new(&api_version, &kind);
            let runs = parallel::runs(
                &items,
                |item| item.get().len(),
                |run, first| {
                    let mut read = Loaded::default();
                    for (i, item) in run.iter().enumerate() {
                        read_json(item.get(), &at.item(first + i + 1), Some(&of), &mut read);
                    }
                    read
                },
            );
            out.extend(concat(runs));
        }
        fast::Json::Slow => match serde_json::from_str::<Value>(raw) {
            Ok(mut value) => {
                if let Some(list) = list {
                    list.complete(&mut value);
                }
                take_document(value, at, out);
            }
            Err(e) => out.warnings.push(format!("{at}: not valid JSON: {e}")),
        },
    }
}

/// The segment read as a stream of JSON values, when it starts like JSON and its first
/// value is JSON (else `None`: YAML flow style such as `{apiVersion: v1}` starts with `{`
/// too, and the YAML parser reads it), or always when `json_only`. Errors carry file line
/// numbers.
fn json_values<'a>(
    segment: &Segment<'a>,
    json_only: bool,
) -> Option<Vec<Result<&'a RawValue, String>>> {
    let trimmed = segment.text.trim_start();
    if !(json_only || trimmed.starts_with('{') || trimmed.starts_with('[')) {
        return None;
    }
    let mut values = Vec::new();
    for value in serde_json::Deserializer::from_str(segment.text).into_iter::<&RawValue>() {
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

/// Where an object sits inside its document: the item indexes inside Lists. Displayed
/// as what follows `"{file}: document {n}"` in a warning (empty, or `" item 3"`).
#[derive(Clone, Default)]
struct Location {
    items: Vec<usize>,
}

impl Location {
    fn item(&self, i: usize) -> Location {
        let mut l = self.clone();
        l.items.push(i);
        l
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for i in &self.items {
            write!(f, " item {i}")?;
        }
        Ok(())
    }
}

/// Sorts one parsed document into `out`: a recognised object, a List, or a warning.
fn take_document(value: Value, at: &Location, out: &mut Loaded) {
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
        let of = ListOf::new(api_version, kind);
        for (i, mut item) in items.into_iter().enumerate() {
            of.complete(&mut item);
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
    at: &Location,
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

/// `namespace/name` or `name`, read leniently from `metadata`: a name or namespace that is
/// not a string is shown as its JSON text (the warning is about that object), a missing
/// name as `<unnamed>`.
fn object_name(value: &Value) -> String {
    let meta = value.get("metadata");
    let get = |k: &str| match meta.and_then(|m| m.get(k)) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => Some(other.to_string()),
    };
    let name = get("name").unwrap_or_else(|| "<unnamed>".to_string());
    match get("namespace") {
        Some(ns) if !ns.is_empty() => format!("{ns}/{name}"),
        _ => name,
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
mod tests;
