//! Taking a node over from kube-proxy.
//!
//! - `kproxy run --cleanup --cleanup-kube-proxy` removes upstream kube-proxy's nftables
//!   tables and iptables `KUBE-*` chains (nft and legacy backends) and kproxy's own
//!   tables, and nothing else: another program's nftables table and iptables chains stay.
//! - `kproxy run --cleanup-kube-proxy` on a node where a kube-proxy table serves a
//!   ClusterIP and a NodePort, under a steady stream of new connections to both: kproxy
//!   commits its first full sync before removing kube-proxy's tables, so not one
//!   connection fails, and at the end only kproxy's rules serve.
//!
//! Needs root (throwaway network namespaces).

mod common;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use common::daemon::*;
use common::topology::{cidr, node_ip, outside_ip, pod_ip, Client, Outcome, Stream};
use common::{kernel_tests_enabled, Netns};
use kproxy::nft::Family;

fn sh(ns: &Netns, script: &str) -> String {
    let o = ns.exec("sh", &["-ec", script]);
    assert!(
        o.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn have(tool: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn cleanup_kube_proxy_removes_upstreams_rules_and_nothing_else() {
    if !kernel_tests_enabled("takeover::cleanup_kube_proxy") {
        return;
    }
    let ns = Netns::new("takeover");
    // Upstream's nftables mode, kproxy's own table, and someone else's table.
    sh(
        &ns,
        "nft add table ip kube-proxy; nft add chain ip kube-proxy services; \
         nft add table ip6 kube-proxy; \
         nft add table ip kproxy; nft add table ip6 kproxy; \
         nft add table inet firewall; nft add chain inet firewall input '{ type filter hook input priority 0; }'",
    );
    let iptables = have("iptables-nft") && have("iptables-legacy");
    if iptables {
        for v in ["nft", "legacy"] {
            sh(
                &ns,
                &format!(
                    "iptables-{v} -t nat -N KUBE-SERVICES; iptables-{v} -t nat -A PREROUTING -j KUBE-SERVICES; \
                     iptables-{v} -t nat -N KUBE-SVC-X; iptables-{v} -t nat -A KUBE-SERVICES -j KUBE-SVC-X; \
                     iptables-{v} -t filter -N KUBE-FORWARD; iptables-{v} -A FORWARD -m comment --comment 'kubernetes forwarding rules' -j KUBE-FORWARD; \
                     iptables-{v} -t nat -N DOCKER; iptables-{v} -t nat -A PREROUTING -j DOCKER; \
                     ip6tables-{v} -t nat -N KUBE-SERVICES; ip6tables-{v} -t nat -A OUTPUT -j KUBE-SERVICES"
                ),
            );
        }
    } else {
        println!("takeover: iptables-nft/iptables-legacy not installed; checking nftables only");
    }

    takeover(&ns);

    let tables = sh(&ns, "nft list tables");
    assert!(!tables.contains("kube-proxy"), "{tables}");
    assert!(!tables.contains("kproxy"), "{tables}");
    assert!(
        tables.contains("table inet firewall"),
        "someone else's table stays: {tables}"
    );
    if iptables {
        for v in ["nft", "legacy"] {
            let saved = sh(&ns, &format!("iptables-{v}-save; ip6tables-{v}-save"));
            assert!(
                !saved.contains("KUBE-"),
                "iptables-{v} still has KUBE-*:\n{saved}"
            );
            assert!(
                saved.contains(":DOCKER") && saved.contains("-A PREROUTING -j DOCKER"),
                "iptables-{v}: other chains and jumps stay:\n{saved}"
            );
        }
    }

    // A second run finds nothing and still succeeds.
    takeover(&ns);
}

fn takeover(ns: &Netns) {
    let o = ns.exec(
        env!("CARGO_BIN_EXE_kproxy"),
        &[
            "run",
            "--cleanup",
            "--cleanup-kube-proxy",
            "--hostname-override=node-a",
        ],
    );
    assert!(
        o.status.success(),
        "kproxy run --cleanup --cleanup-kube-proxy: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A kube-proxy table of `family` as upstream's nftables mode writes it (same table, chain,
/// set and map names and hooks; the filter side reduced to its ClusterIP port check)
/// serving service `demo/web`: ClusterIP `S10`:80 and NodePort 30080 on the node's address
/// → `pods`:8080, external and off-pod-network traffic masqueraded.
fn kube_proxy_table(f: Family, pods: &[&str]) -> String {
    let (fam, addr) = match f {
        Family::V4 => ("ip", "ipv4_addr"),
        Family::V6 => ("ip6", "ipv6_addr"),
    };
    let (cip, node, cluster) = (cluster_ip(f, 10), node_ip(f), cidr(f, "cluster"));
    let svc = "service-ULMVA6XW-demo/web/tcp/http";
    let ext = "external-ULMVA6XW-demo/web/tcp/http";
    let mut endpoint_chains = String::new();
    let mut picks = Vec::new();
    for (i, p) in pods.iter().enumerate() {
        let ip = pod_ip(f, p);
        let to = match f {
            Family::V4 => format!("{ip}:8080"),
            Family::V6 => format!("[{ip}]:8080"),
        };
        // Upstream writes an IPv6 address with dots for colons in a chain name.
        let name = ip.to_string().replace(':', ".");
        let chain = format!("endpoint-{i}OJB2KTY-demo/web/tcp/http__{name}/8080");
        endpoint_chains.push_str(&format!(
            "\tchain {chain} {{\n\t\t{fam} saddr {ip} jump mark-for-masquerade\n\
             \t\tmeta l4proto tcp dnat to {to}\n\t}}\n"
        ));
        picks.push(format!("{i} : goto {chain}"));
    }
    let n = pods.len();
    let picks = picks.join(", ");
    format!(
        "table {fam} kube-proxy {{
	comment \"rules for kube-proxy\"
	set cluster-ips {{ type {addr}; elements = {{ {cip} }} }}
	set nodeport-ips {{ type {addr}; elements = {{ {node} }} }}
	map service-ips {{ type {addr} . inet_proto . inet_service : verdict; elements = {{ {cip} . tcp . 80 : goto {svc} }} }}
	map service-nodeports {{ type inet_proto . inet_service : verdict; elements = {{ tcp . 30080 : goto {ext} }} }}
	chain filter-forward {{ type filter hook forward priority -110; policy accept; ct state new jump cluster-ips-check; }}
	chain filter-output-post-dnat {{ type filter hook output priority -90; policy accept; ct state new jump cluster-ips-check; }}
	chain nat-prerouting {{ type nat hook prerouting priority dstnat; policy accept; jump services; }}
	chain nat-output {{ type nat hook output priority -100; policy accept; jump services; }}
	chain nat-postrouting {{ type nat hook postrouting priority srcnat; policy accept; jump masquerading; }}
	chain cluster-ips-check {{ {fam} daddr @cluster-ips reject comment \"Reject traffic to invalid ports of ClusterIPs\"; }}
	chain mark-for-masquerade {{ meta mark set meta mark | 0x4000; }}
	chain masquerading {{
		meta mark & 0x4000 == 0 return
		meta mark set meta mark ^ 0x4000
		masquerade fully-random
	}}
	chain services {{
		{fam} daddr . meta l4proto . th dport vmap @service-ips
		{fam} daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports
	}}
	chain {svc} {{
		{fam} daddr {cip} tcp dport 80 {fam} saddr != {cluster} jump mark-for-masquerade
		numgen random mod {n} vmap {{ {picks} }}
	}}
	chain {ext} {{
		jump mark-for-masquerade
		goto {svc}
	}}
{endpoint_chains}}}
"
    )
}

/// Whether the node has the table `family name`.
fn has_table(t: &common::topology::Topology, family: &str, name: &str) -> bool {
    let o = t.node.exec("nft", &["list", "tables"]);
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .any(|l| l.trim() == format!("table {family} {name}"))
}

/// The outcomes of `stream` that did not reach one of `pods`, with when they came.
fn failures(outcomes: &[(Instant, Outcome)], pods: &[IpAddr]) -> Vec<(Instant, Outcome)> {
    outcomes
        .iter()
        .filter(|(_, o)| !o.server().is_some_and(|s| pods.contains(&s)))
        .cloned()
        .collect()
}

#[test]
fn cleanup_kube_proxy_swaps_the_tables_under_a_stream_of_connections_without_one_failing() {
    let Some(s) = setup_for("takeover::without_a_gap") else {
        return;
    };
    let (t, api) = (&s.t, &s.api);
    let endpoints = ["A1", "A2"];
    let want = pods(Family::V4, &endpoints);
    let script = s._dir.path().join("kube-proxy.nft");
    std::fs::write(
        &script,
        kube_proxy_table(Family::V4, &endpoints) + &kube_proxy_table(Family::V6, &endpoints),
    )
    .unwrap();
    let o = t.node.exec("nft", &["-f", script.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // kube-proxy's table alone serves both (it is the only one yet).
    let cip = cluster_ip(Family::V4, 10);
    let outside = Client::Outside(outside_ip(Family::V4, "O"));
    let node = node_ip(Family::V4);
    assert_eq!(reached(t, &cip), want, "kube-proxy's ClusterIP");
    let np = t.connect(outside, node, 30080, kproxy::nft::Protocol::Tcp);
    assert!(
        np.server().is_some_and(|s| want.contains(&s)),
        "kube-proxy's NodePort: {np:?}"
    );

    // The same Service in the API server, which answers slowly, as a big cluster's lists
    // take time (the window in which the old order left the node without rules).
    api.apply(&service("web", 10, Some(30080)).build());
    slices(api, "web", &endpoints);
    api.set_latency(Duration::from_millis(300));

    let every = Duration::from_millis(20);
    let timeout = Duration::from_secs(1);
    let streams: Vec<(&str, Stream)> = vec![
        (
            "ClusterIP",
            t.stream(Client::Pod("A3"), cip.parse().unwrap(), 80, every, timeout),
        ),
        ("NodePort", t.stream(outside, node, 30080, every, timeout)),
    ];
    std::thread::sleep(Duration::from_millis(300));
    let d = Daemon::start(t, &s.kubeconfig, &["--cleanup-kube-proxy"]);

    let deadline = Instant::now() + Duration::from_secs(30);
    let swapped = || {
        !has_table(t, "ip", "kube-proxy")
            && !has_table(t, "ip6", "kube-proxy")
            && has_table(t, "ip", "kproxy")
            && has_table(t, "ip6", "kproxy")
    };
    while !swapped() {
        assert!(
            Instant::now() < deadline,
            "not swapped within 30 s:\n{}\nkproxy log:\n{}",
            t.node_ruleset_text(),
            d.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let gone = Instant::now();
    // Another second with kproxy's rules alone.
    std::thread::sleep(Duration::from_secs(1));

    for (what, stream) in streams {
        let outcomes = stream.stop();
        let failed = failures(&outcomes, &want);
        let after = outcomes.iter().filter(|(at, _)| *at > gone).count();
        println!(
            "takeover: {what}: {} connections, {} failed, {after} after kube-proxy's tables went",
            outcomes.len(),
            failed.len()
        );
        assert!(
            failed.is_empty(),
            "{what}: {} of {} new connections failed during the takeover: {:?}\nkproxy log:\n{}",
            failed.len(),
            outcomes.len(),
            failed.iter().map(|(_, o)| o).collect::<Vec<_>>(),
            d.log()
        );
        assert!(
            after >= 10,
            "{what}: only {after} connections once kproxy served alone"
        );
    }
    let log = d.log();
    let synced = log
        .find("synced full=true")
        .expect("a full sync in the log");
    let removed = log
        .find("removed kube-proxy's nftables table")
        .expect("the removal in the log");
    assert!(synced < removed, "removed before the first sync:\n{log}");
    d.stop();
}

/// The longest stretch without a successful new connection that had failures in it, from
/// the success before the first failure to the success after the last (zero when none
/// failed), and how many failed.
fn gap(outcomes: &[(Instant, Outcome)], pods: &[IpAddr]) -> (Duration, usize) {
    let ok = |o: &Outcome| o.server().is_some_and(|s| pods.contains(&s));
    let (mut longest, mut failed) = (Duration::ZERO, 0);
    let mut last_ok: Option<Instant> = None;
    let mut failing_since: Option<Instant> = None;
    for (at, o) in outcomes {
        if ok(o) {
            if let Some(since) = failing_since.take() {
                longest = longest.max(*at - last_ok.unwrap_or(since));
            }
            last_ok = Some(*at);
        } else {
            failed += 1;
            failing_since.get_or_insert(*at);
        }
    }
    if let (Some(since), Some((end, _))) = (failing_since, outcomes.last()) {
        longest = longest.max(*end - last_ok.unwrap_or(since));
    }
    (longest, failed)
}

/// The same swap at scale: `KPROXY_TAKEOVER_SERVICES` (default 50 000) services × 10
/// endpoints in the API server, and kube-proxy's "old" tables are kproxy's own rendering
/// of the same cluster loaded under the name `kube-proxy` (so they serve the test's
/// Service too). Prints the gap (ms without a working new connection: 0 expected) and how
/// long both tables coexisted. Release build, minutes:
/// `cargo test --release --features test-util --test takeover -- --ignored --nocapture at_scale`
#[test]
#[ignore = "minutes, and a release build to mean anything"]
fn cleanup_kube_proxy_at_scale() {
    if !kernel_tests_enabled("takeover::at_scale") {
        return;
    }
    use kproxy::apply::{self, Base, Options};
    use kproxy::backend::netlink::NetlinkBackend;
    let services: usize = std::env::var("KPROXY_TAKEOVER_SERVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000);
    let s = setup();
    let (t, api) = (&s.t, &s.api);
    let endpoints = ["A1", "A2"];
    let want = pods(Family::V4, &endpoints);
    // The synthetic cluster's NodePorts are 30000–32699.
    const NODE_PORT: u16 = 32750;
    let mut cluster = common::node_objects();
    let synthetic = kproxy::testutil::synthetic_cluster(services, 10, false);
    cluster.services = synthetic.services;
    cluster.slices = synthetic.slices;
    cluster
        .services
        .push(service("web", 10, Some(NODE_PORT)).build());
    for f in [Family::V4, Family::V6] {
        cluster.slices.push(slice("web", f, &endpoints));
    }

    let started = Instant::now();
    let flags = [
        "--hostname-override=node-a".to_string(),
        format!(
            "--cluster-cidr={},{}",
            cidr(Family::V4, "cluster"),
            cidr(Family::V6, "cluster")
        ),
    ];
    let config = common::config_from_flags(&flags);
    let (model, _) = kproxy::model::build(&cluster, &config.settings);
    let mut old = kproxy::render::render(&model);
    drop(model);
    for table in &mut old.tables {
        table.name = "kube-proxy".into();
    }
    common::in_netns(&t.node.name, move || {
        let mut b = NetlinkBackend::new("kube-proxy").expect("netlink");
        apply::apply(
            &mut b,
            Base::Given(Default::default()),
            old,
            &Options::default(),
        )
        .expect("load the old table");
    });
    println!(
        "at_scale: {services} services × 10: kube-proxy's tables loaded in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let started = Instant::now();
    api.apply_all(&cluster.services);
    api.apply_all(&cluster.slices);
    drop(cluster);
    println!(
        "at_scale: stand-in loaded in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let cip = cluster_ip(Family::V4, 10);
    let outside = Client::Outside(outside_ip(Family::V4, "O"));
    let node = node_ip(Family::V4);
    assert_eq!(reached(t, &cip), want, "kube-proxy's ClusterIP");
    // A generous timeout: kproxy's first full sync keeps this 2-core machine's CPUs busy
    // and a starved echo server must not count as a gap. A real gap still shows: a
    // NodePort without rules is refused at once, a ClusterIP answer comes late (the SYN is
    // retransmitted after 1 s), and the stalls are printed with their time.
    let every = Duration::from_millis(10);
    let timeout = Duration::from_secs(3);
    let streams: Vec<(&str, Stream)> = vec![
        (
            "ClusterIP",
            t.stream(Client::Pod("A3"), cip.parse().unwrap(), 80, every, timeout),
        ),
        (
            "NodePort",
            t.stream(outside, node, NODE_PORT, every, timeout),
        ),
    ];
    std::thread::sleep(Duration::from_millis(500));
    let d = Daemon::start(t, &s.kubeconfig, &["--cleanup-kube-proxy"]);
    // When kproxy logged a line containing `what` (its log's clock is this process's).
    let (now, wall) = (Instant::now(), std::time::SystemTime::now());
    let logged = |what: &str| {
        d.log().lines().find(|l| l.contains(what)).and_then(|l| {
            let t = kproxy::k8s::cache::parse_rfc3339(l.split_whitespace().next()?)?;
            Some(match t.duration_since(wall) {
                Ok(after) => now + after,
                Err(e) => now - e.duration(),
            })
        })
    };
    let deadline = Instant::now() + Duration::from_secs(600);
    let (committed, removed) = loop {
        if let (Some(c), Some(r)) = (
            logged("first full sync committed"),
            logged("removed kube-proxy's nftables table table=ip kube-proxy"),
        ) {
            break (c, r);
        }
        assert!(
            Instant::now() < deadline,
            "not swapped in 600 s:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    std::thread::sleep(Duration::from_secs(2));
    println!(
        "at_scale: kproxy's first full sync committed {:.1} s after start; kube-proxy's ip \
         table deleted {:.0} ms later (both coexisted that long; kproxy's log)",
        (committed - now).as_secs_f64(),
        (removed - committed).as_secs_f64() * 1e3,
    );
    for l in d.log().lines().filter(|l| {
        l.contains("synced full=true") || l.contains("kube-proxy") || l.contains("API server")
    }) {
        println!("  kproxy: {l}");
    }
    let since = |at: Instant| match at.checked_duration_since(committed) {
        Some(d) => d.as_secs_f64(),
        None => -(committed - at).as_secs_f64(),
    };
    for (what, stream) in streams {
        let outcomes = stream.stop();
        let (longest, failed) = gap(&outcomes, &want);
        let stalls: Vec<String> = outcomes
            .windows(2)
            .filter(|w| w[1].0 - w[0].0 > Duration::from_millis(200))
            .map(|w| {
                format!(
                    "{:.0} ms at {:+.2} s",
                    (w[1].0 - w[0].0).as_secs_f64() * 1e3,
                    since(w[0].0)
                )
            })
            .collect();
        println!(
            "at_scale: {what}: {} new connections every {every:?}, {failed} failed, gap {} ms; \
             answers more than 200 ms apart (time from the commit): {stalls:?}",
            outcomes.len(),
            longest.as_millis(),
        );
        let failures: Vec<String> = failures(&outcomes, &want)
            .iter()
            .map(|(at, o)| format!("{o:?} at {:+.2} s", since(*at)))
            .collect();
        assert_eq!(failed, 0, "{what}: connections failed: {failures:?}");
    }
    assert!(!has_table(t, "ip6", "kube-proxy") && has_table(t, "ip6", "kproxy"));
    d.stop();
}
