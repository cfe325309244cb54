//! `kproxy-apiserver`: the API server stand-in (`kproxy::testutil::apiserver`) as a
//! process, for the demo and for trying `kproxy run` without a cluster. Not part of the
//! product (built only with the `test-util` feature).
//!
//! ```text
//! kproxy-apiserver --kubeconfig PATH [-f MANIFESTS …]
//! ```
//!
//! Serves Services, EndpointSlices, Nodes and ServiceCIDRs (real list/watch over plain
//! HTTP on 127.0.0.1, a free port) loaded from the manifests, writes a kubeconfig for it,
//! prints `ready <url>`, then reads commands on stdin, one per line, answering `ok` or
//! `error: …`:
//!
//! - `apply PATH` — create or replace every object in the file;
//! - `delete KIND NAMESPACE NAME` — KIND is Service, EndpointSlice, Node or ServiceCIDR
//!   (NAMESPACE `-` for cluster-scoped kinds);
//! - `events` — print the Events kproxy posted, one JSON object per line.
//!
//! It exits at end of input.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use kproxy::k8s::manifests;
use kproxy::testutil::apiserver::{ApiServer, Kind};

fn apply_file(api: &ApiServer, path: &str) -> Result<usize, String> {
    let loaded = manifests::load_paths(&[PathBuf::from(path)]).map_err(|e| e.to_string())?;
    for w in &loaded.warnings {
        eprintln!("kproxy-apiserver: {w}");
    }
    let o = loaded.objects;
    let values: Vec<serde_json::Result<serde_json::Value>> = (o.nodes.iter())
        .map(serde_json::to_value)
        .chain(o.service_cidrs.iter().map(serde_json::to_value))
        .chain(o.services.iter().map(serde_json::to_value))
        .chain(o.slices.iter().map(serde_json::to_value))
        .collect();
    for v in &values {
        let v = v.as_ref().map_err(|e| e.to_string())?;
        api.try_apply(v).map_err(|e| e.to_string())?;
    }
    Ok(values.len())
}

fn command(api: &ApiServer, line: &str, out: &mut impl Write) -> Result<(), String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        ["apply", path] => apply_file(api, path).map(|_| ()),
        ["delete", kind, ns, name] => {
            let kind = Kind::parse(kind).ok_or_else(|| format!("unknown kind {kind}"))?;
            let ns = if *ns == "-" { "" } else { ns };
            api.delete(kind, ns, name)
                .map(|_| ())
                .ok_or_else(|| format!("no such object {ns}/{name}"))
        }
        ["events"] => {
            for e in api.events() {
                writeln!(out, "{e}").map_err(|e| e.to_string())?;
            }
            Ok(())
        }
        [] => Ok(()),
        _ => Err(format!("unknown command {line:?}")),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut kubeconfig = None;
    let mut files = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--kubeconfig" => kubeconfig = it.next().cloned(),
            "-f" => files.extend(it.next().cloned()),
            _ => {
                eprintln!("usage: kproxy-apiserver --kubeconfig PATH [-f MANIFESTS …]");
                std::process::exit(64);
            }
        }
    }
    let Some(kubeconfig) = kubeconfig else {
        eprintln!("usage: kproxy-apiserver --kubeconfig PATH [-f MANIFESTS …]");
        std::process::exit(64);
    };
    let api = ApiServer::start();
    for f in &files {
        if let Err(e) = apply_file(&api, f) {
            eprintln!("kproxy-apiserver: {f}: {e}");
            std::process::exit(66);
        }
    }
    if let Err(e) = api.write_kubeconfig(&kubeconfig) {
        eprintln!("kproxy-apiserver: {kubeconfig}: {e}");
        std::process::exit(66);
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let _ = writeln!(out, "ready {}", api.url());
    let _ = out.flush();
    for line in std::io::stdin().lock().lines().map_while(Result::ok) {
        let reply = match command(&api, &line, &mut out) {
            Ok(()) => "ok".to_string(),
            Err(e) => format!("error: {e}"),
        };
        let _ = writeln!(out, "{reply}");
        let _ = out.flush();
    }
}
