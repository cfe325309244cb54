//! The architecture as a test: DESIGN §2's import rules and the pure core's limits,
//! checked on the source text of `src/`, so that a rule that exists only in a document
//! cannot erode unnoticed.
//!
//! Each file under `src/` belongs to its top-level module (`src/sync/tests.rs` → `sync`).
//! Every `crate::NAME` path in its code (comments and `#[cfg(test)] mod tests` blocks
//! left out: tests may reach further than the code they test) is an edge from that module
//! to `NAME`, and must be listed in [`ALLOWED`]. Modules of the pure core must not name
//! the runtime, the API client, sockets, files, processes or clocks, and only `main`
//! (and the test-only binaries) exit the process.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Which top-level modules each module may use (`crate::…`). The wiring modules (`app`,
/// `cli`) and the test seams (`testutil`) may use everything and are not listed.
const ALLOWED: &[(&str, &[&str])] = &[
    // The pure core.
    ("nft", &[]),
    ("model", &["nft"]),
    ("render", &["model", "nft"]),
    ("diff", &["nft"]),
    ("trace", &["model", "nft"]),
    ("report", &["model", "nft"]),
    // Configuration: flags and the KubeProxyConfiguration file → validated settings.
    ("config", &["model", "nft"]),
    // The kernel edges.
    ("netlink", &[]),
    ("backend", &["nft", "netlink"]),
    ("conntrack", &["netlink", "model", "nft"]),
    // Use cases on a backend.
    ("apply", &["backend", "diff", "nft"]),
    ("takeover", &["apply", "backend", "nft"]),
    // State and the operator's surface.
    ("health", &["nft"]),
    ("metrics", &["nft"]),
    ("admin", &["health", "metrics", "nft"]),
    // The daemon's loop and its source of objects.
    (
        "sync",
        &[
            "model", "render", "apply", "backend", "health", "metrics", "nft",
        ],
    ),
    ("k8s", &["model", "sync", "metrics", "nft"]),
];

/// Modules that may use anything in the crate.
const WIRING: &[&str] = &["app", "cli", "testutil"];

/// The pure core: no I/O, no clocks, nothing spawned.
const PURE: &[&str] = &["nft", "model", "render", "diff", "trace", "report"];

/// What the pure core must not name (needle, why).
const IMPURE: &[(&str, &str)] = &[
    ("tokio::", "the async runtime"),
    ("kube::", "the API client"),
    ("axum::", "an HTTP server"),
    ("socket2::", "sockets"),
    ("libc::", "system calls"),
    ("std::net::TcpStream", "sockets"),
    ("std::net::TcpListener", "sockets"),
    ("std::net::UdpSocket", "sockets"),
    ("std::fs", "files"),
    ("std::process", "processes"),
    ("std::thread", "threads"),
    ("std::env", "the environment"),
    ("Instant::now", "clocks"),
    ("SystemTime::now", "clocks"),
];

/// The one use of threads pure core may make: scoped workers that are joined before the
/// function returns (data parallelism over independent inputs, as `render::fragments`
/// does), and asking how many cores there are. No background work, no I/O, and the
/// output does not depend on scheduling.
const PURE_PARALLELISM: &[&str] = &[
    "std::thread::scope(",
    "std::thread::available_parallelism()",
];

/// A broken rule, said so that the fix is obvious.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Violation {
    file: String,
    line: usize,
    what: String,
}

/// The module a file under `src/` belongs to, or `None` for the crate root and binaries.
fn module_of(rel: &Path) -> Option<String> {
    let mut parts = rel.components().map(|c| c.as_os_str().to_string_lossy());
    let first = parts.next()?.to_string();
    if first == "bin" || first == "lib.rs" || first == "main.rs" {
        return None;
    }
    Some(first.trim_end_matches(".rs").to_string())
}

/// The file's code lines with their numbers; comments, the test module (`#[cfg(test)]`
/// followed by `mod tests`) and whole `tests.rs` files are left out.
fn code_lines(rel: &Path, text: &str) -> Vec<(usize, String)> {
    let is_test_file = rel
        .components()
        .any(|c| c.as_os_str() == "tests.rs" || c.as_os_str() == "tests");
    if is_test_file {
        return Vec::new();
    }
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let t = lines[i].trim();
        if t == "#[cfg(test)]"
            && lines
                .get(i + 1)
                .is_some_and(|n| n.trim_start().starts_with("mod tests"))
        {
            // The test module: to its closing brace at the same indentation.
            let indent = lines[i].len() - lines[i].trim_start().len();
            let close = format!("{}}}", " ".repeat(indent));
            i += 2;
            if lines[i - 1].trim_end().ends_with(';') {
                continue;
            }
            while i < lines.len() && lines[i] != close {
                i += 1;
            }
            i += 1;
            continue;
        }
        if !t.starts_with("//") {
            let code = match t.find("//") {
                Some(at) if !t[..at].contains('"') => &t[..at],
                _ => t,
            };
            out.push((i + 1, code.to_string()));
        }
        i += 1;
    }
    out
}

/// Every top-level module a line names with `crate::NAME` (also inside `use crate::{…}`).
fn crate_paths(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find("crate::") {
        let after = &rest[at + "crate::".len()..];
        if after.starts_with('{') {
            // `use crate::{a::b, c};`: the first segment of each item.
            let end = after.find('}').unwrap_or(after.len());
            for item in after[1..end].split(',') {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    out.push(name);
                }
            }
        } else {
            let name: String = after
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.push(name);
            }
        }
        rest = after;
    }
    out
}

/// Checks a tree laid out like `src/`; returns every broken rule.
fn check(src: &Path) -> Vec<Violation> {
    let allowed: BTreeMap<&str, BTreeSet<&str>> = ALLOWED
        .iter()
        .map(|(m, deps)| (*m, deps.iter().copied().collect()))
        .collect();
    let mut out = Vec::new();
    for file in rust_files(src) {
        let rel = file.strip_prefix(src).expect("under src");
        let text = std::fs::read_to_string(&file).expect("read source");
        let shown = format!("src/{}", rel.display());
        let Some(module) = module_of(rel) else {
            // The crate root and binaries: only main (and test-only bins) exit.
            check_exit(rel, &shown, &text, &mut out);
            continue;
        };
        check_exit(rel, &shown, &text, &mut out);
        if WIRING.contains(&module.as_str()) {
            continue;
        }
        let Some(may) = allowed.get(module.as_str()) else {
            out.push(Violation {
                file: shown.clone(),
                line: 0,
                what: format!(
                    "module `{module}` is not in the architecture test's ALLOWED table: \
                     add it with the modules it may use (and to DESIGN §2)"
                ),
            });
            continue;
        };
        for (n, line) in code_lines(rel, &text) {
            for target in crate_paths(&line) {
                if target == module || target == "self" || target == "super" {
                    continue;
                }
                if !may.contains(target.as_str()) {
                    out.push(Violation {
                        file: shown.clone(),
                        line: n,
                        what: format!("`{module}` must not use `crate::{target}`: {line}"),
                    });
                }
            }
            if PURE.contains(&module.as_str()) {
                for (needle, why) in IMPURE {
                    let scoped = PURE_PARALLELISM.iter().any(|p| line.contains(p));
                    if line.contains(needle) && !scoped {
                        out.push(Violation {
                            file: shown.clone(),
                            line: n,
                            what: format!(
                                "`{module}` is pure core and must not reach {why} ({needle}): {line}"
                            ),
                        });
                    }
                }
            }
        }
    }
    out.sort();
    out
}

/// Only `main.rs` and the test-only binaries end the process.
fn check_exit(rel: &Path, shown: &str, text: &str, out: &mut Vec<Violation>) {
    let may_exit = rel == Path::new("main.rs") || rel.starts_with("bin");
    if may_exit {
        return;
    }
    for (n, line) in code_lines(rel, text) {
        if line.contains("process::exit") {
            out.push(Violation {
                file: shown.to_string(),
                line: n,
                what: format!("only main exits the process: {line}"),
            });
        }
    }
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn src_keeps_the_design_import_rules() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let violations = check(&src);
    assert!(
        violations.is_empty(),
        "DESIGN §2 broken in {} place(s):\n{}",
        violations.len(),
        violations
            .iter()
            .map(|v| format!("  {}:{}: {}", v.file, v.line, v.what))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn every_module_of_src_is_in_the_table() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let known: BTreeSet<&str> = ALLOWED
        .iter()
        .map(|(m, _)| *m)
        .chain(WIRING.iter().copied())
        .collect();
    for file in rust_files(&src) {
        let rel = file.strip_prefix(&src).expect("under src");
        if let Some(m) = module_of(rel) {
            assert!(
                known.contains(m.as_str()),
                "{} belongs to no known module",
                rel.display()
            );
        }
    }
}

/// A throwaway `src/` tree with the given files (removed on drop).
struct Tree(tempfile::TempDir);

impl Tree {
    fn new(files: &[(&str, &str)]) -> Tree {
        let dir = tempfile::tempdir().expect("temp dir");
        for (path, text) in files {
            let p = dir.path().join(path);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(p, text).expect("write");
        }
        Tree(dir)
    }

    fn check(&self) -> Vec<Violation> {
        check(self.0.path())
    }
}

#[test]
fn a_forbidden_import_is_caught() {
    let t = Tree::new(&[
        (
            "render/mod.rs",
            "use crate::model::Model;\nuse crate::diff::diff;\n",
        ),
        ("diff.rs", "use crate::nft::Ruleset;\n"),
    ]);
    let v = t.check();
    assert_eq!(v.len(), 1, "{v:?}");
    assert_eq!(v[0].file, "src/render/mod.rs");
    assert_eq!(v[0].line, 2);
    assert!(v[0].what.contains("crate::diff"), "{}", v[0].what);
}

#[test]
fn grouped_and_inline_paths_are_caught() {
    let t = Tree::new(&[
        (
            "sync/mod.rs",
            "use crate::{model::Model, admin::Server};\nfn f() { crate::k8s::x(); }\n",
        ),
        (
            "conntrack/netlink.rs",
            "use crate::backend::netlink::socket::NlSocket;\n",
        ),
    ]);
    let v = t.check();
    let whats: Vec<&str> = v.iter().map(|v| v.what.as_str()).collect();
    assert_eq!(v.len(), 3, "{whats:?}");
    assert!(whats
        .iter()
        .any(|w| w.contains("`conntrack` must not use `crate::backend`")));
    assert!(whats
        .iter()
        .any(|w| w.contains("`sync` must not use `crate::admin`")));
    assert!(whats
        .iter()
        .any(|w| w.contains("`sync` must not use `crate::k8s`")));
}

#[test]
fn the_pure_core_must_not_reach_io_or_clocks() {
    let t = Tree::new(&[
        (
            "model/build.rs",
            "fn f() { let _ = std::fs::read(\"x\"); }\n",
        ),
        (
            "trace/mod.rs",
            "fn g() { let _ = std::time::Instant::now(); }\n",
        ),
        ("nft/mod.rs", "use tokio::sync::watch;\n"),
        (
            "metrics.rs",
            "fn h() { let _ = std::time::Instant::now(); }\n",
        ),
    ]);
    let v = t.check();
    let files: Vec<&str> = v.iter().map(|v| v.file.as_str()).collect();
    assert_eq!(
        files,
        ["src/model/build.rs", "src/nft/mod.rs", "src/trace/mod.rs"],
        "{v:?}"
    );
}

#[test]
fn comments_and_test_modules_do_not_count() {
    let t = Tree::new(&[(
        "render/mod.rs",
        "//! Uses [`crate::diff`] in docs only.\n\
         use crate::model::Model; // not crate::diff\n\
         #[cfg(test)]\n\
         mod tests {\n    use crate::backend::fake::FakeBackend;\n}\n",
    )]);
    assert_eq!(t.check(), Vec::new());
}

#[test]
fn only_main_exits() {
    let t = Tree::new(&[
        ("main.rs", "fn main() { std::process::exit(0) }\n"),
        ("cli.rs", "fn f() { std::process::exit(1) }\n"),
    ]);
    let v = t.check();
    assert_eq!(v.len(), 1, "{v:?}");
    assert_eq!(v[0].file, "src/cli.rs");
}

/// Where `unsafe` may appear (code, not comments). The kernel libraries: libnftnl only
/// through `backend/netlink/libnftnl.rs`, libmnl and the raw socket only in `netlink/`
/// (issue 11: one safe wrapper owns the FFI). The rest is OS calls no safe crate offers,
/// each named in `netlink/mod.rs`'s list: mimalloc's options and collection (`main`,
/// `app`), `getifaddrs` (`app`), a borrowed socket for TCP options (`k8s/client.rs`), the
/// test-only namespace switch and counting allocator (`testutil`) and the echo server's
/// packet-info sockets.
const UNSAFE_ALLOWED: &[&str] = &[
    "src/backend/netlink/libnftnl.rs",
    "src/netlink/",
    "src/main.rs",
    "src/app.rs",
    "src/k8s/client.rs",
    "src/testutil/",
    "src/bin/kproxy-echo.rs",
];

#[test]
fn unsafe_lives_only_in_the_ffi_wrappers() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut found = Vec::new();
    for path in rust_files(&root.join("src")) {
        let rel = path.strip_prefix(root).expect("under the root");
        let shown = rel.to_string_lossy().to_string();
        let text = std::fs::read_to_string(&path).expect("read");
        let uses = code_lines(rel, &text).iter().any(|(_, l)| {
            l.split(|c: char| !(c.is_alphanumeric() || c == '_'))
                .any(|w| w == "unsafe")
        });
        if uses && !UNSAFE_ALLOWED.iter().any(|a| shown.starts_with(a)) {
            found.push(shown);
        }
    }
    assert!(
        found.is_empty(),
        "unsafe outside the FFI wrappers: {found:?}"
    );
    // The nftables backend's encoder, decoder and rule compiler stay safe code.
    let lib = std::fs::read_to_string(root.join("src/backend/netlink/libnftnl.rs")).unwrap();
    assert!(lib.contains("// SAFETY:"));
}
