//! The fast way to read a JSON document (or a YAML one [`super::yaml`] turned into JSON):
//! straight from its text into its k8s-openapi type.
//!
//! Owns: telling a document's apiVersion and kind without building it (a first pass that
//! borrows those two strings and the items of a List, and skips everything else), then
//! deserializing the text once, into the type. The careful way (text →
//! `serde_json::Value` → type, see `mod.rs`) costs about twice as much.
//!
//! Must not: decide anything about a document it cannot read. Every doubt (a kind it does
//! not know, a field of the wrong type, an object that is not one) answers "slow", and the careful way reads the document and words the warnings, so that what
//! loads and what is warned about is the same either way.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::model::Objects;

/// What the fast pass made of one JSON value.
pub(super) enum Json<'a> {
    /// One object read into its type.
    Object(Objects),
    /// A `List` or `*List` with items: read each item (with the list's `apiVersion` and
    /// the item kind its name implies, for items that carry none).
    List {
        api_version: Cow<'a, str>,
        kind: Cow<'a, str>,
        items: Vec<&'a RawValue>,
    },
    /// Read it the careful way.
    Slow,
}

/// The first pass over a JSON value: apiVersion, kind and (borrowed) items only.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(rename = "apiVersion", default, borrow)]
    api_version: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    items: Option<Vec<&'a RawValue>>,
}

/// One JSON value (the text of a valid one) read the fast way.
pub(super) fn json(raw: &str) -> Json<'_> {
    let Ok(head) = serde_json::from_str::<Head<'_>>(raw) else {
        return Json::Slow;
    };
    let api_version = head.api_version.unwrap_or_default();
    let kind = head.kind.unwrap_or_default();
    let list = kind == "List" || kind.ends_with("List");
    match head.items {
        Some(items) if list => {
            return Json::List {
                api_version,
                kind,
                items,
            }
        }
        // `kind: List` without items (or with null items): an empty list; a `*List`
        // without items may be an object of its own, which the careful way names.
        None if kind == "List" => {
            return Json::List {
                api_version,
                kind,
                items: Vec::new(),
            }
        }
        _ => {}
    }
    read_typed(&api_version, &kind, raw).map_or(Json::Slow, Json::Object)
}

/// `text`, an object of `api_version` and `kind`, read into its type; `None` when it is
/// not one of the kinds kproxy reads, or does not read.
fn read_typed(api_version: &str, kind: &str, text: &str) -> Option<Objects> {
    let mut o = Objects::default();
    match (api_version, kind) {
        ("v1", "Service") => o.services.push(serde_json::from_str(text).ok()?),
        ("discovery.k8s.io/v1", "EndpointSlice") => o.slices.push(serde_json::from_str(text).ok()?),
        ("v1", "Node") => o.nodes.push(serde_json::from_str(text).ok()?),
        ("networking.k8s.io/v1", "ServiceCIDR") => {
            o.service_cidrs.push(serde_json::from_str(text).ok()?)
        }
        _ => return None,
    }
    Some(o)
}
