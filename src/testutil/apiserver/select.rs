//! Label and field selectors: parsing `labelSelector` / `fieldSelector` and deciding
//! which stored objects a list or watch sees.
//!
//! Owns: the selector grammar the stand-in accepts and [`Filter`], the path namespace/name
//! plus selectors of one request.
//!
//! Must not: touch the store or build responses (errors are messages for `http`).

use std::collections::BTreeMap;

use super::store::Obj;

#[derive(Debug, Clone)]
pub(super) enum LabelReq {
    Exists(String),
    NotExists(String),
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

impl LabelReq {
    pub(super) fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            LabelReq::Exists(k) => labels.contains_key(k),
            LabelReq::NotExists(k) => !labels.contains_key(k),
            LabelReq::Eq(k, v) => labels.get(k) == Some(v),
            LabelReq::NotEq(k, v) => labels.get(k) != Some(v),
            LabelReq::In(k, vs) => labels.get(k).is_some_and(|l| vs.contains(l)),
            LabelReq::NotIn(k, vs) => labels.get(k).is_none_or(|l| !vs.contains(l)),
        }
    }
}

fn valid_label_key(k: &str) -> bool {
    !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

/// Parses a label selector: `k`, `!k`, `k=v`, `k==v`, `k!=v`, `k in (a,b)`,
/// `k notin (a,b)`, joined by commas.
pub(super) fn parse_label_selector(s: &str) -> Result<Vec<LabelReq>, String> {
    let mut terms = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                terms.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&s[start..]);
    let bad = |t: &str| format!("unable to parse requirement: invalid label selector term {t:?}");
    let mut out = Vec::new();
    for t in terms.into_iter().map(str::trim).filter(|t| !t.is_empty()) {
        let req = if let Some(k) = t.strip_prefix('!') {
            LabelReq::NotExists(k.trim().to_string())
        } else if let Some(open) = t.find('(') {
            let inner = t[open + 1..].strip_suffix(')').ok_or_else(|| bad(t))?;
            let vals: Vec<String> = inner
                .split(',')
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
                .collect();
            let mut lhs = t[..open].split_whitespace();
            let (Some(k), Some(op), None) = (lhs.next(), lhs.next(), lhs.next()) else {
                return Err(bad(t));
            };
            match op {
                "in" => LabelReq::In(k.to_string(), vals),
                "notin" => LabelReq::NotIn(k.to_string(), vals),
                _ => return Err(bad(t)),
            }
        } else if let Some((k, v)) = t.split_once("!=") {
            LabelReq::NotEq(k.trim().to_string(), v.trim().to_string())
        } else if let Some((k, v)) = t.split_once("==") {
            LabelReq::Eq(k.trim().to_string(), v.trim().to_string())
        } else if let Some((k, v)) = t.split_once('=') {
            LabelReq::Eq(k.trim().to_string(), v.trim().to_string())
        } else {
            LabelReq::Exists(t.to_string())
        };
        let key = match &req {
            LabelReq::Exists(k)
            | LabelReq::NotExists(k)
            | LabelReq::Eq(k, _)
            | LabelReq::NotEq(k, _)
            | LabelReq::In(k, _)
            | LabelReq::NotIn(k, _) => k,
        };
        if !valid_label_key(key) {
            return Err(bad(t));
        }
        out.push(req);
    }
    Ok(out)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Field {
    Name,
    Namespace,
}

/// Parses a field selector over `metadata.name` / `metadata.namespace` (`=`, `==`, `!=`).
pub(super) fn parse_field_selector(s: &str) -> Result<Vec<(Field, bool, String)>, String> {
    let mut out = Vec::new();
    for t in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let (f, eq, v) = if let Some((f, v)) = t.split_once("!=") {
            (f, false, v)
        } else if let Some((f, v)) = t.split_once("==") {
            (f, true, v)
        } else if let Some((f, v)) = t.split_once('=') {
            (f, true, v)
        } else {
            return Err(format!("invalid field selector term {t:?}"));
        };
        let field = match f.trim() {
            "metadata.name" => Field::Name,
            "metadata.namespace" => Field::Namespace,
            other => return Err(format!("field label not supported: {other}")),
        };
        out.push((field, eq, v.trim().to_string()));
    }
    Ok(out)
}

/// Which objects a list or watch sees: path namespace/name plus selectors.
#[derive(Debug, Clone, Default)]
pub(super) struct Filter {
    pub(super) ns: Option<String>,
    pub(super) name: Option<String>,
    pub(super) labels: Vec<LabelReq>,
    pub(super) fields: Vec<(Field, bool, String)>,
}

impl Filter {
    pub(super) fn matches(&self, o: &Obj) -> bool {
        self.ns.as_ref().is_none_or(|n| *n == o.ns)
            && self.name.as_ref().is_none_or(|n| *n == o.name)
            && self.labels.iter().all(|r| r.matches(&o.labels))
            && self.fields.iter().all(|(f, eq, v)| {
                let have = match f {
                    Field::Name => &o.name,
                    Field::Namespace => &o.ns,
                };
                (have == v) == *eq
            })
    }
}
