//! The YAML that `kubectl get -o yaml` and most tools write, turned into JSON text without a
//! YAML parser (reading it with libyaml costs four times what reading the JSON costs).
//!
//! Owns: [`to_json`] for the block-style subset: block mappings with plain keys, block
//! sequences (`- ` at the key's indentation or deeper), `{}` / `[]`, one-line single- and
//! double-quoted scalars (no escapes), and plain scalars resolved as YAML 1.2's core schema
//! (and `serde_yaml_ng`) resolves them: `null`, `~`, `true`, `false`, decimal integers,
//! strings.
//!
//! Must not: guess. Anything outside the subset (anchors, tags, block scalars, flow
//! collections, multi-line scalars, escapes, comments after values, a scalar that might be
//! a float or an unusual spelling of a boolean or null, nesting deeper than
//! [`MAX_DEPTH`]) gives `None`, and the document is read by `serde_yaml_ng`. When it gives JSON, that JSON is the value `serde_yaml_ng`
//! reads from the document (tests/ compare the two on every manifest in the repository).

use std::fmt::Write;

/// Deepest nesting of collections read here: `serde_yaml_ng` refuses deeper documents
/// (its recursion limit), and the recursive reading here must not run out of stack on
/// them.
pub(super) const MAX_DEPTH: usize = 128;

/// The document as JSON text, or `None` when it is not in the subset.
pub(super) fn to_json(text: &str) -> Option<String> {
    let mut lines = Vec::new();
    for line in text.lines() {
        let content = line.trim_start_matches(' ');
        if content.is_empty() || content.starts_with('#') {
            continue;
        }
        if content.starts_with('\t') || content.ends_with([' ', '\t']) {
            return None;
        }
        lines.push(Line {
            indent: line.len() - content.len(),
            content,
        });
    }
    if lines.first()?.indent != 0 {
        return None;
    }
    let mut p = Parser {
        lines,
        pos: 0,
        depth: 0,
        out: String::with_capacity(text.len()),
    };
    p.node(0)?;
    (p.pos == p.lines.len()).then_some(p.out)
}

struct Line<'a> {
    indent: usize,
    content: &'a str,
}

struct Parser<'a> {
    lines: Vec<Line<'a>>,
    pos: usize,
    /// Collections open around the current one.
    depth: usize,
    out: String,
}

/// `- x` or `-` alone: a sequence entry.
fn is_item(content: &str) -> bool {
    content == "-" || content.starts_with("- ")
}

impl Parser<'_> {
    /// The block node whose first line is the current one, at `indent`.
    fn node(&mut self, indent: usize) -> Option<()> {
        if is_item(self.lines[self.pos].content) {
            self.sequence(indent)
        } else {
            self.mapping(indent)
        }
    }

    /// `read` of one more level of nesting, `None` beyond [`MAX_DEPTH`].
    fn nested(&mut self, read: impl FnOnce(&mut Self) -> Option<()>) -> Option<()> {
        if self.depth >= MAX_DEPTH {
            return None;
        }
        self.depth += 1;
        let r = read(self);
        self.depth -= 1;
        r
    }

    fn mapping(&mut self, indent: usize) -> Option<()> {
        self.nested(|p| p.mapping_at(indent))
    }

    fn sequence(&mut self, indent: usize) -> Option<()> {
        self.nested(|p| p.sequence_at(indent))
    }

    fn mapping_at(&mut self, indent: usize) -> Option<()> {
        self.out.push('{');
        let mut first = true;
        while let Some(line) = self.lines.get(self.pos) {
            if line.indent < indent || (line.indent == indent && is_item(line.content)) {
                break;
            }
            if line.indent > indent {
                return None; // a continuation line: a multi-line scalar
            }
            let (key, rest) = entry(line.content)?;
            if !first {
                self.out.push(',');
            }
            first = false;
            string(&mut self.out, key);
            self.out.push(':');
            self.pos += 1;
            if !rest.is_empty() {
                scalar(&mut self.out, rest)?;
                continue;
            }
            match self.lines.get(self.pos) {
                Some(next) if next.indent > indent => self.node(next.indent)?,
                Some(next) if next.indent == indent && is_item(next.content) => {
                    self.sequence(indent)?
                }
                _ => self.out.push_str("null"),
            }
        }
        self.out.push('}');
        Some(())
    }

    fn sequence_at(&mut self, indent: usize) -> Option<()> {
        self.out.push('[');
        let mut first = true;
        while let Some(line) = self.lines.get(self.pos) {
            if line.indent < indent || (line.indent == indent && !is_item(line.content)) {
                break;
            }
            if line.indent > indent {
                return None;
            }
            let rest = line.content.strip_prefix("- ")?.trim_start_matches(' ');
            if !first {
                self.out.push(',');
            }
            first = false;
            let inner = indent + (line.content.len() - rest.len());
            if rest.is_empty() || rest.starts_with("- ") {
                return None; // an item on the next lines, or a sequence in a sequence
            }
            if entry(rest).is_some() {
                // `- key: value`: a mapping whose keys line up under `key`.
                self.lines[self.pos] = Line {
                    indent: inner,
                    content: rest,
                };
                self.mapping(inner)?;
            } else {
                scalar(&mut self.out, rest)?;
                self.pos += 1;
            }
        }
        self.out.push(']');
        Some(())
    }
}

/// `key: rest` or `key:` with a plain key (`metadata`, `kubernetes.io/service-name`).
fn entry(content: &str) -> Option<(&str, &str)> {
    let colon = content.find(':')?;
    let (key, rest) = (&content[..colon], &content[colon + 1..]);
    let key_char = |c: char| c.is_ascii_alphanumeric() || "_.-/".contains(c);
    let plain = key.starts_with(|c: char| c.is_ascii_alphabetic())
        && key.chars().all(key_char)
        && !matches!(key.to_ascii_lowercase().as_str(), "true" | "false" | "null");
    if !plain {
        return None;
    }
    match rest.strip_prefix(' ') {
        Some(rest) => Some((key, rest.trim_start_matches(' '))),
        None if rest.is_empty() => Some((key, "")),
        None => None,
    }
}

/// One scalar (the rest of a line) as JSON.
fn scalar(out: &mut String, s: &str) -> Option<()> {
    match s {
        "{}" | "[]" => out.push_str(s),
        "null" | "~" => out.push_str("null"),
        "true" | "false" => out.push_str(s),
        _ if s.starts_with('\'') => {
            let inner = s.strip_prefix('\'')?.strip_suffix('\'')?;
            // Inside, a quote is written twice; a lone one ends the scalar early.
            if inner.replace("''", "").contains('\'') {
                return None;
            }
            string(out, &inner.replace("''", "'"));
        }
        _ if s.starts_with('"') => {
            let inner = s.strip_prefix('"')?.strip_suffix('"')?;
            if inner.contains(['"', '\\']) {
                return None;
            }
            string(out, inner);
        }
        _ => plain(out, s)?,
    }
    Some(())
}

/// A plain scalar: a decimal integer, or a string that cannot be read as anything else.
fn plain(out: &mut String, s: &str) -> Option<()> {
    let first = s.chars().next()?;
    if "[]{}|>&*!%@`'\"?#,:-".contains(first) && !(first == '-' && s.len() > 1) {
        return None;
    }
    let comment = s.contains(" #") || s.contains("\t#");
    if s.starts_with("- ") || s.contains(": ") || comment || s.ends_with(':') {
        return None;
    }
    let digits = s.strip_prefix('-').unwrap_or(s);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        // Leading zeros, or beyond i64: leave it to serde_yaml_ng.
        if (digits.len() > 1 && digits.starts_with('0')) || s.parse::<i64>().is_err() {
            return None;
        }
        out.push_str(s);
        return Some(());
    }
    let lower = s.to_ascii_lowercase();
    if matches!(lower.as_str(), "true" | "false" | "null") {
        return None; // `True`, `NULL`: left to serde_yaml_ng
    }
    if could_be_number(s) {
        return None; // a float, hex, octal: left to serde_yaml_ng
    }
    string(out, s);
    Some(())
}

/// True when `s` has the shape of a YAML number of any kind (`1.5`, `-1e3`, `.inf`,
/// `0x1f`, `0o17`, `007`); a string that cannot be one (`10.96.0.1`, a uid, a timestamp) is
/// false.
fn could_be_number(s: &str) -> bool {
    let s = s.strip_prefix(['+', '-']).unwrap_or(s);
    let lower = s.to_ascii_lowercase();
    if ["0x", "0o", "0b"].iter().any(|p| lower.starts_with(p)) {
        return true;
    }
    if let Some(rest) = lower.strip_prefix('.') {
        if rest.chars().all(|c| c.is_ascii_alphabetic()) {
            return true; // .inf, .nan
        }
    }
    let b = s.as_bytes();
    let digits = |mut i: usize| {
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        i
    };
    let mut i = digits(0);
    if b.get(i) == Some(&b'.') {
        i = digits(i + 1);
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        i = digits(i);
    }
    i == b.len()
}

/// `s` as a JSON string.
fn string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The deepest nesting of flow collections (`[`, `{`) in a YAML document, as a YAML
/// scanner reads it closely enough to bound it: brackets in quoted scalars and comments do
/// not count, and a bracket or a quote opens a collection or a quoted scalar only where a
/// node can start (not in `it's` or `x[1]`). Checked before the YAML parser runs: its scanner re-walks every open flow
/// level for each token (libyaml's simple keys), so a document nested 16k deep took
/// seconds and 100k deep minutes, only to be refused at its recursion limit (128).
pub(super) fn flow_depth(text: &str) -> usize {
    let b = text.as_bytes();
    let (mut depth, mut max) = (0usize, 0usize);
    // The last byte on this line that was not a space (`\n` at the start of a line).
    let mut prev = b'\n';
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b'\n' => prev = b'\n',
            b' ' | b'\t' | b'\r' => {}
            b'#' if i == 0 || b[i - 1].is_ascii_whitespace() => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'\'' | b'"' if matches!(prev, b'\n' | b':' | b'-' | b',' | b'[' | b'{' | b'?') => {
                i += 1;
                while i < b.len() {
                    match b[i] {
                        b'\\' if c == b'"' => i += 1,
                        b'\'' if c == b'\'' && b.get(i + 1) == Some(&b'\'') => i += 1,
                        q if q == c => break,
                        _ => {}
                    }
                    i += 1;
                }
                prev = c;
            }
            b'[' | b'{' if matches!(prev, b'\n' | b':' | b'-' | b',' | b'[' | b'{' | b'?') => {
                depth += 1;
                max = max.max(depth);
                prev = c;
            }
            b']' | b'}' => {
                depth = depth.saturating_sub(1);
                prev = c;
            }
            // Inside a plain scalar (`x[[`): no bracket after it opens anything.
            b'[' | b'{' => prev = b'x',
            _ => prev = c,
        }
        i += 1;
    }
    max
}
