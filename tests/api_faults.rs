//! Faults on the connection to the API server, with `kproxy run` in the node namespace of a
//! throwaway topology against the API server stand-in (`tests/common/daemon.rs`).
//!
//! - A half-open connection: every connection open to the stand-in silently loses its
//!   packets in both directions while new connections work (what a dead API server, a
//!   failed-over load balancer or a dropped NAT entry looks like from the node). kproxy
//!   must notice within seconds (TCP keepalive and `TCP_USER_TIMEOUT`, `k8s::client`), not
//!   at the watch's 295 s idle timeout, reconnect, and program a change made meanwhile.
//! - A quiet but healthy watch (no events, no bookmarks) for longer than a dead connection
//!   is given: kept, and the next change arrives on it (the peer's kernel answers the
//!   keepalive probes; a read timeout would have cut it).
//!
//! Needs root; elsewhere (CI unset) each test prints one line and skips.

mod common;

use std::time::{Duration, Instant};

use common::daemon::*;
use common::topology::Client;
use kproxy::nft::{Family, Protocol};

/// The change must be programmed within this (kproxy's dead-connection bound is 30 s;
/// without it a watch notices at 295 s).
const NOTICED_WITHIN: Duration = Duration::from_secs(45);

/// The test's own table in the node namespace: connections to the stand-in's `port`
/// opened from now on get a conntrack mark; packets of any other connection to or from
/// that port are dropped on arrival (sent, never received: no RST, no ICMP).
fn half_open_script(port: u16) -> String {
    format!(
        "add table inet kproxy-test-half-open; \
         add chain inet kproxy-test-half-open output {{ type filter hook output priority 0; policy accept; }}; \
         add rule inet kproxy-test-half-open output tcp dport {port} tcp flags & (syn | ack) == syn ct mark set 0x2a; \
         add chain inet kproxy-test-half-open input {{ type filter hook input priority 0; policy accept; }}; \
         add rule inet kproxy-test-half-open input tcp dport {port} ct mark != 0x2a counter drop; \
         add rule inet kproxy-test-half-open input tcp sport {port} ct mark != 0x2a counter drop"
    )
}

#[test]
fn a_half_open_api_connection_is_noticed_in_seconds_and_the_change_made_meanwhile_programmed() {
    let Some(s) = setup_for("api_faults::half_open") else {
        return;
    };
    let (t, api) = (&s.t, &s.api);
    let (d, ip) = s.running_web(&["A1"]);
    let watches = api.watch_count();

    let o = t.node.exec("nft", &[&half_open_script(api.addr().port())]);
    assert!(
        o.status.success(),
        "nft: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let cut = Instant::now();
    // The change the old watches never deliver.
    slices(api, "web", &["B1"]);

    let want = pods(Family::V4, &["B1"]);
    loop {
        if reached(t, &ip) == want {
            break;
        }
        assert!(
            cut.elapsed() < NOTICED_WITHIN,
            "the endpoint change was not programmed within {NOTICED_WITHIN:?} of the \
             connections going dead\ntest table:\n{}\nkproxy log:\n{}",
            String::from_utf8_lossy(
                &t.node
                    .exec("nft", &["list", "table", "inet", "kproxy-test-half-open"])
                    .stdout
            ),
            d.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let took = cut.elapsed();
    println!("api_faults::half_open: change programmed {took:.1?} after the cut");

    // Noticed as a dead connection (not a server-side close), and on new watches.
    let log = d.log();
    assert!(
        log.contains("the connection to the API server stopped answering"),
        "no dead connection in the log:\n{log}"
    );
    assert!(api.watch_count() > watches, "no new watch request");
    // Every watch had its own connection, and each was noticed dead.
    for resource in ["services", "endpointslices", "nodes", "servicecidrs"] {
        let series =
            format!("kproxy_watch_events_total{{resource=\"{resource}\",type=\"ConnectionLost\"}}");
        eventually(&series, &d, || metric(t, &series).unwrap_or(0.0) >= 1.0);
    }
    // The Service watch is back too: a Service change (its port 80 → 81) is programmed
    // as fast as ever.
    api.apply(
        &service_base("web", 10)
            .port("http", 81, "TCP")
            .target_port(8080)
            .build(),
    );
    eventually("the Service's new port", &d, || {
        t.connect(Client::Pod("A3"), ip.parse().unwrap(), 81, Protocol::Tcp)
            .server()
            == Some(want[0])
    });
    d.stop();
}

#[test]
fn a_quiet_but_healthy_watch_is_kept_however_long_it_is_idle() {
    let Some(s) = setup_for("api_faults::quiet_watch") else {
        return;
    };
    let (t, api) = (&s.t, &s.api);
    // No bookmarks: the watches carry nothing at all while nothing changes.
    api.set_bookmark_interval(Duration::from_secs(3600));
    let (d, ip) = s.running_web(&["A1"]);
    let watches = api.watch_count();
    let bookmarks = api.bookmarks_sent();
    // Longer than a dead connection is given (30 s): only keepalive probes, answered.
    std::thread::sleep(Duration::from_secs(45));
    slices(api, "web", &["B1"]);
    eventually("the change, on the same watch", &d, || {
        reached(t, &ip) == pods(Family::V4, &["B1"])
    });
    assert_eq!(api.watch_count(), watches, "a watch was restarted");
    assert_eq!(api.bookmarks_sent(), bookmarks, "bookmarks were sent");
    let log = d.log();
    assert!(
        !log.contains("stopped answering") && !log.contains("watch failed"),
        "{log}"
    );
    d.stop();
}
