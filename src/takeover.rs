//! Taking a node over from upstream kube-proxy: removing what it left in the kernel.
//!
//! Owns: `--cleanup-kube-proxy`. Upstream's nftables mode keeps its rules in the tables
//! `ip kube-proxy` and `ip6 kube-proxy`: each is deleted over netlink in a transaction of
//! its own (a missing one is skipped), without reading it back first. Its iptables mode leaves `KUBE-*` chains in the `filter`,
//! `nat` and `mangle` tables plus jumps to them from the built-in chains; those are
//! removed the way upstream removes them itself, through `iptables-save` /
//! `iptables-restore --noflush` (both the nft and the legacy variant, each family), because
//! the rules may be in either backend and iptables-legacy has no netlink interface. The
//! plan of what to delete is computed by a pure function ([`iptables_cleanup_plan`]) from
//! the save output: only jumps to `KUBE-*` chains and the `KUBE-*` chains themselves are
//! touched, never anyone else's rules.
//!
//! When: `kproxy run` calls [`cleanup_kube_proxy`] once its first full sync is committed
//! (so both rule sets coexist for a moment and a Service is never without one; why that is
//! harmless: docs/daemon.md, "Taking over from kube-proxy"), `kproxy run --cleanup` at once.
//!
//! A use case like [`crate::apply`], not a backend: it drives the netlink backend and runs
//! external tools. Must not: touch kproxy's own tables or any table or chain that is not
//! kube-proxy's.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::backend::netlink::NetlinkBackend;
use crate::backend::{Backend, BackendError};
use crate::nft::tx::{Op, TableRef, Transaction};
use crate::nft::Family;

/// Upstream kube-proxy's nftables table name.
pub const UPSTREAM_TABLE: &str = "kube-proxy";

/// What a takeover removed.
#[derive(Debug, Default)]
pub struct TakeoverReport {
    pub nft_tables: Vec<TableRef>,
    /// `(tool, chains deleted)` per iptables variant that had any.
    pub iptables: Vec<(String, usize)>,
    /// Problems that did not stop the rest (a tool that failed, say).
    pub warnings: Vec<String>,
}

/// Removes upstream kube-proxy's nftables tables and iptables `KUBE-*` chains;
/// `table_removed` is told of each table as soon as it is gone (before the slower
/// iptables part).
pub fn cleanup_kube_proxy(
    table_removed: &mut dyn FnMut(&TableRef),
) -> Result<TakeoverReport, BackendError> {
    let mut report = TakeoverReport::default();
    let mut backend = NetlinkBackend::new(UPSTREAM_TABLE)?;
    let tables = [
        TableRef::new(Family::V4, UPSTREAM_TABLE.to_string()),
        TableRef::new(Family::V6, UPSTREAM_TABLE.to_string()),
    ];
    for table in tables {
        if delete_table(&mut backend, &table)? {
            table_removed(&table);
            report.nft_tables.push(table);
        }
    }
    for (save, restore) in [
        ("iptables-nft-save", "iptables-nft-restore"),
        ("ip6tables-nft-save", "ip6tables-nft-restore"),
        ("iptables-legacy-save", "iptables-legacy-restore"),
        ("ip6tables-legacy-save", "ip6tables-legacy-restore"),
    ] {
        match cleanup_iptables(save, restore) {
            Ok(0) => {}
            Ok(n) => report
                .iptables
                .push((save.trim_end_matches("-save").into(), n)),
            Err(e) => report.warnings.push(e),
        }
    }
    Ok(report)
}

/// Deletes `table` in a transaction of its own; false when there was no such table. No
/// dump first (`apply::cleanup`'s way): at 50k services kube-proxy's table is hundreds of
/// MiB to read back, and this runs right after kproxy's own first full sync, its memory
/// peak.
fn delete_table(backend: &mut NetlinkBackend, table: &TableRef) -> Result<bool, BackendError> {
    let mut tx = Transaction::new();
    tx.push(Op::DeleteTable {
        table: table.clone(),
    });
    match backend.apply(&tx) {
        Ok(_) => Ok(true),
        Err(BackendError::Rejected { failures })
            if failures.iter().all(|f| f.errno == libc::ENOENT) =>
        {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// One iptables variant: save, plan, restore. A tool that is not installed is skipped.
fn cleanup_iptables(save: &str, restore: &str) -> Result<usize, String> {
    let out = match Command::new(save).stderr(Stdio::null()).output() {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(format!("{save}: {e}")),
    };
    if !out.status.success() {
        return Err(format!("{save} exited with {}", out.status));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let Some((plan, chains)) = iptables_cleanup_plan(&text) else {
        return Ok(0);
    };
    let mut child = Command::new(restore)
        .arg("--noflush")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{restore}: {e}"))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(plan.as_bytes())
        .map_err(|e| format!("{restore}: {e}"))?;
    let done = child
        .wait_with_output()
        .map_err(|e| format!("{restore}: {e}"))?;
    if !done.status.success() {
        return Err(format!(
            "{restore} refused the cleanup: {}",
            String::from_utf8_lossy(&done.stderr).trim()
        ));
    }
    Ok(chains)
}

/// From `iptables-save` output, the `iptables-restore --noflush` input that deletes every
/// rule jumping to a `KUBE-*` chain (from chains that stay), then flushes and deletes the
/// `KUBE-*` chains; and how many chains that is. `None` when there is nothing to do.
pub fn iptables_cleanup_plan(save: &str) -> Option<(String, usize)> {
    let mut out = String::new();
    let mut total = 0;
    let mut table: Option<&str> = None;
    let mut chains: Vec<&str> = Vec::new();
    let mut deletes: Vec<&str> = Vec::new();
    let flush = |out: &mut String, table: &str, chains: &[&str], deletes: &[&str]| {
        if chains.is_empty() && deletes.is_empty() {
            return;
        }
        out.push_str(&format!("*{table}\n"));
        for rule in deletes {
            out.push_str(&format!("-D {rule}\n"));
        }
        for c in chains {
            out.push_str(&format!("-F {c}\n"));
        }
        for c in chains {
            out.push_str(&format!("-X {c}\n"));
        }
        out.push_str("COMMIT\n");
    };
    for line in save.lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = Some(t.trim());
            chains.clear();
            deletes.clear();
        } else if line.starts_with("COMMIT") {
            if let Some(t) = table.take() {
                flush(&mut out, t, &chains, &deletes);
                total += chains.len();
            }
        } else if let Some(decl) = line.strip_prefix(':') {
            let name = decl.split_whitespace().next().unwrap_or("");
            if name.starts_with("KUBE-") {
                chains.push(name);
            }
        } else if let Some(rule) = line.strip_prefix("-A ") {
            let chain = rule.split_whitespace().next().unwrap_or("");
            let target = jump_target(rule);
            if !chain.starts_with("KUBE-") && target.is_some_and(|t| t.starts_with("KUBE-")) {
                deletes.push(rule);
            }
        }
    }
    (!out.is_empty()).then_some((out, total))
}

/// The `-j` / `-g` target of a saved rule.
fn jump_target(rule: &str) -> Option<&str> {
    let mut words = rule.split_whitespace();
    while let Some(w) = words.next() {
        if w == "-j" || w == "-g" || w == "--jump" || w == "--goto" {
            return words.next();
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAVE: &str = "\
# Generated by iptables-nft-save v1.8.9 (nf_tables)
*mangle
:PREROUTING ACCEPT [0:0]
:KUBE-IPTABLES-HINT - [0:0]
:KUBE-KUBELET-CANARY - [0:0]
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:KUBE-FORWARD - [0:0]
:KUBE-SERVICES - [0:0]
:DOCKER-USER - [0:0]
-A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD
-A FORWARD -j DOCKER-USER
-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE
COMMIT
";

    #[test]
    fn plan_touches_only_kube_chains_and_jumps_to_them() {
        let (plan, chains) = iptables_cleanup_plan(SAVE).unwrap();
        assert_eq!(chains, 4);
        assert_eq!(
            plan,
            "*mangle
-F KUBE-IPTABLES-HINT
-F KUBE-KUBELET-CANARY
-X KUBE-IPTABLES-HINT
-X KUBE-KUBELET-CANARY
COMMIT
*filter
-D INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-D FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD
-F KUBE-FORWARD
-F KUBE-SERVICES
-X KUBE-FORWARD
-X KUBE-SERVICES
COMMIT
"
        );
    }

    #[test]
    fn nothing_to_do_without_kube_chains() {
        assert!(iptables_cleanup_plan(
            "*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -j DOCKER\nCOMMIT\n"
        )
        .is_none());
        assert!(iptables_cleanup_plan("").is_none());
    }
}
