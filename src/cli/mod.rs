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
//! Installed as `kubectl-kproxy` (a link to the same binary), it is a kubectl plugin: the
//! program name it is called by picks that, and help and usage say `kubectl kproxy`.
//!
//! Exit codes: 0 success (also when objects were skipped with warnings), 1 the kernel
//! refused or could not be reached (nothing changed), 64 usage error,
//! 66 an input path (manifest or `--config` file) cannot be read, or no host name is known.
//! `kproxy diff` (as `diff` and `kubectl diff` do): 0 nothing changes, 1 something changes
//! (or the node's kernel has drifted), 64 usage error, 66 unreadable input, 2 any other
//! error (e.g. the kernel's tables cannot be read).

mod apply;
mod diff;
mod input;
mod render;
mod trace;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::config::{Config, ProxyFlags};

use self::apply::{cmd_apply, cmd_cleanup, ApplyArgs};
use self::diff::{cmd_diff, DiffArgs};
use self::render::{cmd_render, RenderArgs};
use self::trace::{cmd_trace, TraceArgs};

pub use self::trace::parse_destination;

/// The file name that makes the binary a kubectl plugin (`kubectl kproxy …`).
pub const PLUGIN_FILE_NAME: &str = "kubectl-kproxy";

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
    /// What a change would do to a node's rules (--base/--change), or how this node's
    /// kernel drifted from what it should hold (--node). Exit 0: no change; 1: changes.
    Diff(DiffArgs),
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
    /// Remove upstream kube-proxy's rules (nftables tables `ip/ip6 kube-proxy`, iptables
    /// `KUBE-*` chains) once kproxy's first full sync is committed, so Services never go
    /// unserved: for taking a node over from kube-proxy. With --cleanup: at once.
    #[arg(long)]
    cleanup_kube_proxy: bool,
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
    let args: Vec<std::ffi::OsString> = args.into_iter().map(Into::into).collect();
    let mut cmd = Cli::command();
    let argv0 = args.first().map(std::path::Path::new);
    if argv0.and_then(|p| p.file_name()) == Some(PLUGIN_FILE_NAME.as_ref()) {
        cmd = cmd
            .bin_name("kubectl kproxy")
            .display_name("kubectl kproxy");
    }
    let parsed = cmd
        .try_get_matches_from(args)
        .and_then(|m| Cli::from_arg_matches(&m));
    let cli = match parsed {
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
        Command::Diff(a) => cmd_diff(a),
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

pub(crate) struct Failure {
    pub(crate) code: i32,
    pub(crate) message: String,
}

pub(crate) fn usage(message: impl Into<String>) -> Failure {
    Failure {
        code: EXIT_USAGE,
        message: message.into(),
    }
}

pub(crate) fn config_failure(e: crate::config::ConfigError) -> Failure {
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
