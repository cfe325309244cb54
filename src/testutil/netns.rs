//! Throwaway network namespaces for kernel tests and benchmarks (`ip netns add`), removed
//! on drop, also when a test fails.
//!
//! Owns: creating and deleting a namespace, running a command or a closure inside one, and
//! moving the calling thread into one for a while ([`InNetns`]). Must not: touch the
//! host's namespace beyond `ip netns add`/`del` of the names it made.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::netlink::enter_netns;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Where `ip netns add NAME` pins a namespace.
pub fn netns_path(name: &str) -> PathBuf {
    Path::new("/var/run/netns").join(name)
}

/// Runs `nft ARGS` inside the named network namespace (the test oracle, and the neighbour
/// of the neighbour tests); panics when it fails. Its standard output.
pub fn nft_in(name: &str, args: &[&str]) -> String {
    let o = Command::new("ip")
        .args(["netns", "exec", name, "nft"])
        .args(args)
        .output()
        .expect("ip netns exec nft");
    assert!(
        o.status.success(),
        "nft {args:?} in {name}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Runs `f` on a fresh thread inside the named network namespace (sockets opened there
/// stay in it, whatever thread uses them later).
pub fn in_netns<T: Send + 'static>(name: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = netns_path(name);
    std::thread::spawn(move || {
        enter_netns(&path).expect("enter netns");
        f()
    })
    .join()
    .expect("netns thread")
}

/// A network namespace that exists for the lifetime of this value: `kpx-TAG-PID-N`, unique
/// within the process (tests run in parallel) and across processes.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// Creates the namespace (panics when `ip netns add` fails).
    pub fn new(tag: &str) -> Netns {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("kpx-{tag}-{}-{n}", std::process::id());
        let o = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .expect("ip netns add");
        assert!(
            o.status.success(),
            "ip netns add {name} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        Netns { name }
    }

    /// Runs a command inside the namespace.
    pub fn exec(&self, cmd: &str, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name, cmd])
            .args(args)
            .output()
            .expect("ip netns exec")
    }

    /// Runs `f` on a fresh thread inside the namespace; see [`in_netns`].
    pub fn run_in<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        in_netns(&self.name, f)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A throwaway network namespace the calling thread lives in until dropped (benchmarks):
/// a [`Netns`] with loopback up; the thread goes back to where it came from on drop,
/// then the namespace is deleted.
pub struct InNetns {
    home: std::fs::File,
    ns: Netns,
}

impl InNetns {
    /// Creates `kpx-bench-TAG-…` and moves this thread into it.
    pub fn enter(tag: &str) -> InNetns {
        let ns = Netns::new(&format!("bench-{tag}"));
        // Loopback comes down in a new namespace; servers inside listen on 127.0.0.1.
        let _ = Command::new("ip")
            .args(["-n", &ns.name, "link", "set", "lo", "up"])
            .status();
        let home = std::fs::File::open("/proc/thread-self/ns/net").expect("own netns");
        enter_netns(&netns_path(&ns.name)).expect("enter the new netns");
        InNetns { home, ns }
    }

    pub fn name(&self) -> &str {
        &self.ns.name
    }
}

impl Drop for InNetns {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        // Back home first: the namespace is deleted when `self.ns` drops after this.
        let home = format!("/proc/thread-self/fd/{}", self.home.as_raw_fd());
        let _ = enter_netns(Path::new(&home));
    }
}
