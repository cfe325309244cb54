//! The command line: `kproxy render` and `kproxy trace` (dry-run review; they never touch
//! the kernel), `kproxy apply` (program the current network namespace from manifests) and
//! `kproxy cleanup` (remove kproxy's tables), and `kproxy run` (the node daemon, in
//! [`crate::app`]).
//!
//! Owns: argument parsing (clap), the mapping of failures to exit codes, and printing.
//! Flags use kube-proxy's names (from [`crate::config::ProxyFlags`]) so an operator can
//! paste the DaemonSet's arguments. Must not: exit the process (it returns the code to
//! `main`) or hold logic the pure core should own.
//!
//! Exit codes: 0 success (also when objects were skipped with warnings), 1 the kernel
//! refused or could not be reached (nothing changed), 64 usage error,
//! 66 an input path (manifest or `--config` file) cannot be read, or no host name is known.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::apply;
use crate::backend::netlink::NetlinkBackend;
use crate::config::{Config, ProxyFlags};
use crate::k8s::manifests;
use crate::model::{self, build::Objects, Family, Model, Protocol};
use crate::nft::tx::TxStats;
use crate::nft::{text, Ruleset};
use crate::render;
use crate::report;
use crate::trace::{self, Host, Origin, Probe};

pub const EXIT_KERNEL: i32 = 1;
pub const EXIT_USAGE: i32 = 64;
pub const EXIT_NOINPUT: i32 = 66;

#[derive(Parser, Debug)]
#[command(
    name = "kproxy",
    version,
    about = "kube-proxy replacement that programs nftables over netlink",
    long_about = None
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the nftables ruleset kproxy would program for these manifests.
    Render(RenderArgs),
    /// Show where a new connection would go through the rendered rules.
    Trace(TraceArgs),
    /// Program this network namespace from manifests: the minimal change to what the
    /// kernel holds, as one atomic transaction.
    Apply(ApplyArgs),
    /// Remove kproxy's tables (`ip kproxy`, `ip6 kproxy`) and nothing else.
    Cleanup,
    /// The node daemon: watch the API server and keep this node's rules right (kube-proxy's
    /// flags and KubeProxyConfiguration; SIGTERM stops and leaves the rules in place).
    Run(RunArgs),
}

#[derive(Args, Debug)]
struct RunArgs {
    #[command(flatten)]
    proxy: ProxyFlags,
    /// Remove kproxy's tables and exit (with --cleanup-kube-proxy: upstream's too).
    #[arg(long)]
    cleanup: bool,
    /// Before starting, remove upstream kube-proxy's rules (nftables tables `ip/ip6
    /// kube-proxy`, iptables `KUBE-*` chains): for taking a node over from kube-proxy.
    #[arg(long)]
    cleanup_kube_proxy: bool,
}

#[derive(Args, Debug)]
struct ApplyArgs {
    #[command(flatten)]
    input: Input,
    /// Print the transaction (as `nft -f` commands) instead of sending it.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Args, Debug)]
struct Input {
    /// Manifest file or directory (YAML or JSON; multi-document and `kind: List` are fine).
    #[arg(short = 'f', long = "filename", required = true, value_name = "PATH")]
    files: Vec<PathBuf>,
    #[command(flatten)]
    proxy: ProxyFlags,
}

#[derive(Args, Debug)]
struct RenderArgs {
    #[command(flatten)]
    input: Input,
    /// nft: the exact ruleset (loadable with `nft -f`); summary: a table per service port;
    /// json: model, warnings and ruleset.
    #[arg(short = 'o', long, value_enum, default_value_t = RenderOutput::Nft)]
    output: RenderOutput,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum RenderOutput {
    Nft,
    Summary,
    Json,
}

#[derive(Args, Debug)]
struct TraceArgs {
    #[command(flatten)]
    input: Input,
    /// The client: `node` (a process on the node, using its primary address) or an IP
    /// address (a pod on this node if inside the node's pod CIDRs, else an outside client).
    #[arg(long, value_name = "ADDR|node")]
    from: String,
    /// Destination `ADDR:PORT/PROTO` (IPv6 as `[ADDR]:PORT/PROTO`; PROTO defaults to tcp).
    #[arg(long, value_name = "ADDR:PORT/PROTO")]
    to: String,
    /// Interface the packet arrives on (default: a pod interface for pod sources, eth0
    /// otherwise).
    #[arg(long, value_name = "NAME")]
    iif: Option<String>,
    #[arg(short = 'o', long, value_enum, default_value_t = TraceOutput::Text)]
    output: TraceOutput,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum TraceOutput {
    Text,
    Json,
}

/// Runs the command line; returns the process exit code.
pub fn main() -> i32 {
    run(std::env::args_os())
}

/// Runs with explicit arguments (the first is the program name).
pub fn run<I, T>(args: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = e.print();
            return code;
        }
    };
    let result = match cli.command {
        Command::Render(a) => cmd_render(a),
        Command::Trace(a) => cmd_trace(a),
        Command::Apply(a) => cmd_apply(a),
        Command::Cleanup => cmd_cleanup(),
        Command::Run(a) => cmd_run(a),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("kproxy: {}", e.message);
            e.code
        }
    }
}

struct Failure {
    code: i32,
    message: String,
}

fn usage(message: impl Into<String>) -> Failure {
    Failure {
        code: EXIT_USAGE,
        message: message.into(),
    }
}

/// Manifests loaded, model built and rendered.
struct Prepared {
    config: Config,
    objects: Objects,
    model: Model,
    warnings: Vec<model::Warning>,
    ruleset: Ruleset,
}

fn prepare(input: &Input) -> Result<Prepared, Failure> {
    let config = Config::from_flags(&input.proxy).map_err(config_failure)?;
    let loaded = manifests::load_paths(&input.files).map_err(|e| Failure {
        code: EXIT_NOINPUT,
        message: e.to_string(),
    })?;
    for w in &loaded.warnings {
        eprintln!("warning: {w}");
    }
    let (model, warnings) = model::build(&loaded.objects, &config.settings);
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    let ruleset = render::render(&model);
    Ok(Prepared {
        config,
        objects: loaded.objects,
        model,
        warnings,
        ruleset,
    })
}

fn cmd_render(a: RenderArgs) -> Result<(), Failure> {
    let p = prepare(&a.input)?;
    match a.output {
        RenderOutput::Nft => print!("{}", text::ruleset(&p.ruleset)),
        RenderOutput::Summary => print!("{}", report::summary(&p.model, &p.warnings)),
        RenderOutput::Json => println!(
            "{}",
            serde_json::to_string_pretty(&report::json(&p.model, &p.warnings, &p.ruleset))
                .expect("json")
        ),
    }
    Ok(())
}

fn kernel_failure(e: impl std::fmt::Display) -> Failure {
    Failure {
        code: EXIT_KERNEL,
        message: e.to_string(),
    }
}

/// `chains +2 ~1 -0, rules 14, sets +0 -0, elements +31 -2`
fn describe_stats(s: &TxStats) -> String {
    format!(
        "chains +{} ~{} -{}, rules {}, sets +{} -{}, elements +{} -{}",
        s.chains_added,
        s.chains_flushed,
        s.chains_deleted,
        s.rules,
        s.sets_added,
        s.sets_deleted,
        s.elements_added,
        s.elements_deleted
    )
}

fn cmd_apply(a: ApplyArgs) -> Result<(), Failure> {
    let p = prepare(&a.input)?;
    let mut backend = NetlinkBackend::new(render::TABLE).map_err(kernel_failure)?;
    let opts = apply::Options {
        chain_deletes: apply::ChainDeletes::for_kernel(
            apply::kernel_needs_deferred_chain_deletes(&apply::kernel_release()),
            apply::ChainDeletes::AfterDelay,
        ),
        dry_run: a.dry_run,
    };
    let done = apply::apply(&mut backend, apply::Base::Kernel, p.ruleset, &opts)
        .map_err(kernel_failure)?;
    let ms = done.elapsed.as_secs_f64() * 1e3;
    if a.dry_run {
        print!("{}", text::transaction(&done.tx));
        eprintln!(
            "kproxy apply --dry-run: would send {} operations ({})",
            done.stats.ops,
            describe_stats(&done.stats)
        );
    } else if done.stats.ops == 0 {
        eprintln!(
            "kproxy apply: nothing to do, the kernel already holds this ruleset (0 operations sent, {ms:.1} ms)"
        );
    } else {
        eprintln!(
            "kproxy apply: committed {} operations in {} netlink messages, {ms:.1} ms ({}){}",
            done.stats.ops,
            done.report.messages,
            describe_stats(&done.stats),
            if done.deferred_deleted > 0 {
                format!(
                    "; {} stale chains deleted afterwards",
                    done.deferred_deleted
                )
            } else {
                String::new()
            }
        );
    }
    Ok(())
}

fn config_failure(e: crate::config::ConfigError) -> Failure {
    Failure {
        code: if e.is_usage() {
            EXIT_USAGE
        } else {
            EXIT_NOINPUT
        },
        message: e.to_string(),
    }
}

fn cmd_run(a: RunArgs) -> Result<(), Failure> {
    let config = Config::from_flags(&a.proxy).map_err(config_failure)?;
    let mode = crate::app::RunMode {
        cleanup: a.cleanup,
        cleanup_kube_proxy: a.cleanup_kube_proxy,
    };
    crate::app::run(config, mode).map_err(|e| Failure {
        code: EXIT_KERNEL,
        message: e.to_string(),
    })
}

fn cmd_cleanup() -> Result<(), Failure> {
    let mut backend = NetlinkBackend::new(render::TABLE).map_err(kernel_failure)?;
    let removed = apply::cleanup(&mut backend, &render::own_tables()).map_err(kernel_failure)?;
    if removed.is_empty() {
        eprintln!("kproxy cleanup: no kproxy tables here");
    }
    for t in removed {
        eprintln!("kproxy cleanup: deleted table {} {}", t.family, t.name);
    }
    Ok(())
}

/// Parses `ADDR:PORT[/PROTO]` and `[V6ADDR]:PORT[/PROTO]`.
pub fn parse_destination(s: &str) -> Result<(IpAddr, u16, Protocol), String> {
    let (hostport, proto) = match s.rsplit_once('/') {
        Some((hp, p)) => (
            hp,
            Protocol::parse(p).ok_or_else(|| format!("unknown protocol {p:?} (tcp, udp, sctp)"))?,
        ),
        None => (s, Protocol::Tcp),
    };
    let sa: std::net::SocketAddr = hostport
        .parse()
        .map_err(|_| format!("{hostport:?} is not ADDR:PORT (IPv6: [ADDR]:PORT)"))?;
    Ok((sa.ip(), sa.port(), proto))
}

/// The node object's addresses and pod CIDRs (for `--from` classification and `fib`).
fn node_facts(config: &Config, objects: &Objects) -> (Vec<IpAddr>, Vec<ipnetwork::IpNetwork>) {
    let node = model::NodeFacts::of(&objects.nodes, &config.settings.hostname);
    let mut addrs: Vec<IpAddr> = node.addresses.iter().map(|(_, ip)| *ip).collect();
    if let Some(local) = &config.settings.local_addresses {
        addrs.extend(local.iter().copied());
    }
    (addrs, node.pod_cidrs)
}

fn cmd_trace(a: TraceArgs) -> Result<(), Failure> {
    let (dst, port, proto) = parse_destination(&a.to).map_err(|e| usage(format!("--to: {e}")))?;
    let family = Family::of(&dst);
    let p = prepare(&a.input)?;
    let (mut local_addrs, pod_cidrs) = node_facts(&p.config, &p.objects);
    let fm = p.model.family(family);
    if let Some(ip) = fm.and_then(|f| f.settings.node_ip) {
        local_addrs.push(ip);
    }
    local_addrs.sort();
    local_addrs.dedup();
    let (origin, src) = if a.from == "node" {
        let src = fm.and_then(|f| f.settings.node_ip).ok_or_else(|| {
            usage(format!(
                "--from node: the node has no {} address; give --from ADDR",
                if family == Family::V4 { "IPv4" } else { "IPv6" }
            ))
        })?;
        (Origin::Node, src)
    } else {
        let src: IpAddr = a.from.parse().map_err(|_| {
            usage(format!(
                "--from: {:?} is not an IP address or `node`",
                a.from
            ))
        })?;
        if Family::of(&src) != family {
            return Err(usage("--from and --to must be of the same IP family"));
        }
        if pod_cidrs.iter().any(|c| c.contains(src)) {
            let s = &p.config.settings;
            let iif = a.iif.clone().unwrap_or_else(|| match s.detect_local_mode {
                model::build::DetectLocalMode::BridgeInterface => s.bridge_interface.clone(),
                model::build::DetectLocalMode::InterfaceNamePrefix => {
                    format!("{}0", s.interface_name_prefix)
                }
                _ => "cni0".into(),
            });
            (Origin::Pod { iifname: iif }, src)
        } else {
            let iif = a.iif.clone().unwrap_or_else(|| "eth0".into());
            (Origin::External { iifname: iif }, src)
        }
    };
    let probe = Probe {
        origin,
        src,
        dst,
        proto,
        port,
    };
    let host = Host { local_addrs };
    let t = trace::trace(&p.ruleset, &host, &probe);
    match a.output {
        TraceOutput::Text => print!("{}", t.render_text(&probe)),
        TraceOutput::Json => println!(
            "{}",
            serde_json::to_string_pretty(&t.to_json()).expect("json")
        ),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations() {
        assert_eq!(
            parse_destination("10.96.0.10:53/udp").unwrap(),
            ("10.96.0.10".parse().unwrap(), 53, Protocol::Udp)
        );
        assert_eq!(
            parse_destination("[fd00::10]:80").unwrap(),
            ("fd00::10".parse().unwrap(), 80, Protocol::Tcp)
        );
        assert!(parse_destination("10.96.0.10:53/icmp").is_err());
        assert!(parse_destination("10.96.0.10").is_err());
        assert!(parse_destination("10.96.0.10:70000/tcp").is_err());
    }
}
