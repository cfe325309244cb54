//! Tracing kube-proxy-shaped rules: ClusterIPs, NodePorts, policies, IPv6, output.

use super::*;

#[test]
fn clusterip_from_pod_reaches_every_endpoint_without_masquerade() {
    let t = trace(
        &kube_like(),
        &host(),
        &pod("10.244.1.9", "10.96.0.10", Protocol::Tcp, 80),
    );
    assert_eq!(t.verdict, TraceVerdict::Dnat);
    assert_eq!(eps(&t), ["10.244.1.5:8080", "10.244.2.6:8080"]);
    assert!(!t.masquerade);
    assert_eq!(t.paths.len(), 2);
    for p in &t.paths {
        assert_eq!(p.verdict, TraceVerdict::Dnat);
        assert!(!p.masquerade);
        // Forwarded: prerouting, forward, postrouting; never input or output.
        assert!(p.steps.iter().any(|s| s.hook == Hook::Forward));
        assert!(p.steps.iter().any(|s| s.hook == Hook::Postrouting));
        assert!(!p
            .steps
            .iter()
            .any(|s| matches!(s.hook, Hook::Input | Hook::Output)));
        let vmap = p
            .steps
            .iter()
            .find(|s| s.chain == "services" && s.rule == Some(0))
            .unwrap();
        assert!(vmap.text.contains("vmap @service-ips"), "{}", vmap.text);
        assert!(vmap.text.contains("goto svc-web"), "{}", vmap.text);
    }
    // The masquerading chain returned early (mark not set): nothing masqueraded.
    assert!(t.paths[0]
        .steps
        .iter()
        .any(|s| s.chain == "masquerading" && s.text.ends_with("return")));
}

#[test]
fn clusterip_from_outside_the_pod_network_is_masqueraded() {
    let t = trace(
        &kube_like(),
        &host(),
        &ext("ens3", "192.168.1.50", "10.96.0.10", 80),
    );
    assert_eq!(t.verdict, TraceVerdict::Dnat);
    assert_eq!(eps(&t), ["10.244.1.5:8080", "10.244.2.6:8080"]);
    assert!(t.masquerade);
    assert!(t.paths.iter().all(|p| p.masquerade));
}

#[test]
fn unknown_port_matches_nothing_and_is_accepted() {
    let t = trace(
        &kube_like(),
        &host(),
        &pod("10.244.1.9", "10.96.0.10", Protocol::Tcp, 81),
    );
    assert_eq!(t.verdict, TraceVerdict::Accept);
    assert!(t.endpoints.is_empty());
    assert!(!t.masquerade);
    assert_eq!(t.paths.len(), 1);
    assert_eq!(t.paths[0].endpoint, None);
    assert!(t.paths[0]
        .steps
        .iter()
        .any(|s| s.chain == "services" && s.text.contains("no element in @service-ips")));
    // UDP to a TCP service port does not match either.
    let t = trace(
        &kube_like(),
        &host(),
        &pod("10.244.1.9", "10.96.0.10", Protocol::Udp, 80),
    );
    assert_eq!(t.verdict, TraceVerdict::Accept);
    assert!(t.endpoints.is_empty());
}

#[test]
fn service_without_endpoints_is_rejected_on_every_path() {
    let rs = kube_like();
    let t = trace(
        &rs,
        &host(),
        &pod("10.244.1.9", "10.96.0.40", Protocol::Tcp, 80),
    );
    assert_eq!(t.verdict, TraceVerdict::Reject);
    assert!(t.endpoints.is_empty());
    assert!(!t.masquerade);
    let last = t.paths[0].steps.last().unwrap();
    assert_eq!(
        (last.hook, last.chain.as_str()),
        (Hook::Forward, "reject-chain")
    );
    // From the node the check runs in output.
    let t = trace(&rs, &host(), &node("10.96.0.40", Protocol::Tcp, 80));
    assert_eq!(t.verdict, TraceVerdict::Reject);
    let last = t.paths[0].steps.last().unwrap();
    assert_eq!((last.hook, last.text.as_str()), (Hook::Output, "reject"));
}

#[test]
fn affinity_chain_ignores_dynamic_sets_and_branches_over_numgen() {
    // 10.244.9.9 has a (stale) entry in every affinity set: a new client has none.
    let t = trace(
        &kube_like(),
        &host(),
        &pod("10.244.9.9", "10.96.0.20", Protocol::Tcp, 80),
    );
    assert_eq!(t.verdict, TraceVerdict::Dnat);
    assert_eq!(
        eps(&t),
        ["10.244.5.1:8080", "10.244.5.2:8080", "10.244.5.3:8080"]
    );
    assert_eq!(t.paths.len(), 3);
    assert!(!t.masquerade);
    // Each path refreshed its affinity set before the DNAT.
    for p in &t.paths {
        assert!(p
            .steps
            .iter()
            .any(|s| s.text.starts_with("update @affinity-")));
    }
}

#[test]
fn missing_slot_falls_through_to_the_next_rule() {
    let t = trace(
        &kube_like(),
        &host(),
        &pod("10.244.1.9", "10.96.0.30", Protocol::Udp, 53),
    );
    assert_eq!(t.verdict, TraceVerdict::Dnat);
    assert_eq!(eps(&t), ["10.244.3.7:53", "10.244.4.8:53"]);
    let verdicts: Vec<TraceVerdict> = t.paths.iter().map(|p| p.verdict).collect();
    assert_eq!(
        verdicts,
        [TraceVerdict::Dnat, TraceVerdict::Dnat, TraceVerdict::Accept]
    );
    assert!(t.paths[2]
        .steps
        .iter()
        .any(|s| s.text.contains("keys 87382-109226 not in @endpoints")));
    // TCP to the same address: the vmap key differs, nothing matches.
    let t = trace(
        &kube_like(),
        &host(),
        &pod("10.244.1.9", "10.96.0.30", Protocol::Tcp, 53),
    );
    assert_eq!(t.verdict, TraceVerdict::Accept);
}

#[test]
fn nodeport_needs_a_local_destination() {
    let rs = kube_like();
    let probe = ext("eth0", "203.0.113.7", NODE_IP, 30080);
    let t = trace(&rs, &host(), &probe);
    assert_eq!(t.verdict, TraceVerdict::Dnat);
    assert_eq!(eps(&t), ["10.244.1.5:8080", "10.244.2.6:8080"]);
    assert!(t.masquerade);
    // After DNAT the endpoint is not local: forwarded, not delivered to input.
    assert!(t
        .paths
        .iter()
        .all(|p| p.steps.iter().any(|s| s.hook == Hook::Forward)));
    // The same address not being local: no NodePort; routed to input? No: forwarded.
    let t = trace(&rs, &Host::default(), &probe);
    assert_eq!(t.verdict, TraceVerdict::Accept);
    assert!(t.endpoints.is_empty());
    // A local address that is not a NodePort: delivered locally.
    let t = trace(&rs, &host(), &ext("eth0", "203.0.113.7", NODE_IP, 22));
    assert_eq!(t.verdict, TraceVerdict::Accept);
    assert!(t.paths[0].steps.iter().any(|s| s.hook == Hook::Input));
    assert!(!t.paths[0].steps.iter().any(|s| s.hook == Hook::Forward));
}

#[test]
fn local_policy_nodeport_drops_external_but_serves_pods_and_node() {
    let rs = kube_like();
    let t = trace(&rs, &host(), &ext("eth0", "203.0.113.7", NODE_IP, 30090));
    assert_eq!(t.verdict, TraceVerdict::Drop);
    assert!(t.endpoints.is_empty());
    assert!(!t.masquerade);
    // Pods short-circuit to the cluster endpoints, source kept.
    let mut p = pod("10.244.1.9", NODE_IP, Protocol::Tcp, 30090);
    let t = trace(&rs, &host(), &p);
    assert_eq!(t.verdict, TraceVerdict::Dnat);
    assert_eq!(eps(&t), ["10.244.1.5:8080", "10.244.2.6:8080"]);
    assert!(!t.masquerade);
    // The node itself (`fib saddr type local`): masqueraded.
    p.origin = Origin::Node;
    p.src = ip(NODE_IP);
    let t = trace(&rs, &host(), &p);
    assert_eq!(t.verdict, TraceVerdict::Dnat);
    assert_eq!(eps(&t), ["10.244.1.5:8080", "10.244.2.6:8080"]);
    assert!(t.masquerade);
}

#[test]
fn node_traffic_goes_through_output_and_postrouting() {
    let t = trace(
        &kube_like(),
        &host(),
        &node("10.96.0.10", Protocol::Tcp, 80),
    );
    assert_eq!(t.verdict, TraceVerdict::Dnat);
    assert_eq!(eps(&t), ["10.244.1.5:8080", "10.244.2.6:8080"]);
    assert!(t.masquerade, "node source is outside the pod network");
    for p in &t.paths {
        let hooks: Vec<Hook> = p.steps.iter().map(|s| s.hook).collect();
        assert!(hooks.contains(&Hook::Output));
        assert!(hooks.contains(&Hook::Postrouting));
        assert!(!hooks.contains(&Hook::Prerouting));
        assert!(!hooks.contains(&Hook::Forward));
        assert!(p.steps.iter().any(|s| s.chain == "nat-output"));
    }
}

#[test]
fn iifname_wildcards_match_by_prefix() {
    let rs = kube_like();
    let t = trace(&rs, &host(), &ext("eth1", "198.51.100.7", "10.96.0.10", 80));
    assert_eq!(t.verdict, TraceVerdict::Drop);
    assert_eq!(t.paths.len(), 1);
    assert_eq!(t.paths[0].steps.len(), 1);
    assert_eq!(t.paths[0].steps[0].chain, "filter-prerouting");
    // Not an eth* interface: served.
    let t = trace(&rs, &host(), &ext("ens3", "198.51.100.7", "10.96.0.10", 80));
    assert_eq!(t.verdict, TraceVerdict::Dnat);
    // An exact name does not match a longer one.
    let mut rs2 = rs.clone();
    let c = rs2.tables[0].chains.get_mut("filter-prerouting").unwrap();
    c.rules[0].stmts[0] = Stmt::cmp(Field::Iifname, Value::Iface("eth".into()));
    let t = trace(
        &rs2,
        &host(),
        &ext("eth1", "198.51.100.7", "10.96.0.10", 80),
    );
    assert_eq!(t.verdict, TraceVerdict::Dnat);
    let t = trace(&rs2, &host(), &ext("eth", "198.51.100.7", "10.96.0.10", 80));
    assert_eq!(t.verdict, TraceVerdict::Drop);
}

fn v6_table() -> Table {
    let mut t = Table::new(Family::V6, "kproxy");
    let mut ips = Set::new(
        "service-ips",
        vec![
            DataType::Ipv6Addr,
            DataType::InetProto,
            DataType::InetService,
        ],
        SetData::Verdict,
    );
    ips.insert(Element::verdict(
        svc_key("fd00:10::10", Protocol::Tcp, 80),
        Verdict::Goto("svc-web6".into()),
    ));
    t.add_set(ips);
    let mut eps = Set::new(
        "endpoints",
        vec![DataType::Pick],
        SetData::Values(vec![DataType::Ipv6Addr, DataType::InetService]),
    );
    eps.flags.interval = true;
    eps.insert(Element::values(
        vec![Value::Range(0, 65535)],
        vec![a("fd00:1::5"), Value::Port(8080)],
    ));
    t.add_set(eps);
    t.add_chain(base(
        "nat-prerouting",
        ChainType::Nat,
        Hook::Prerouting,
        -100,
        vec![rule(vec![Stmt::Vmap {
            key: vec![Field::Daddr, Field::L4Proto, Field::ThDport],
            map: "service-ips".into(),
        }])],
    ));
    t.add_chain(chain(
        "svc-web6",
        vec![
            rule(vec![
                Stmt::cmp_ne(Field::Saddr, net("fd00:244::/48")),
                Stmt::SetMark(MarkOp::Or(MASQ)),
            ]),
            rule(vec![Stmt::DnatPick {
                proto: Protocol::Tcp,
                offset: 0,
                map: "endpoints".into(),
            }]),
        ],
    ));
    t.add_chain(base(
        "nat-postrouting",
        ChainType::Nat,
        Hook::Postrouting,
        100,
        vec![rule(vec![
            Stmt::cmp_ne(Field::MarkAnd(MASQ), Value::Int(0)),
            Stmt::Masquerade,
        ])],
    ));
    t
}

#[test]
fn ipv6_uses_only_ip6_tables() {
    let mut rs = kube_like();
    // An ip table that would drop everything v6 if it were (wrongly) evaluated.
    rs.tables[0].add_chain(base(
        "drop-all",
        ChainType::Filter,
        Hook::Prerouting,
        -300,
        vec![rule(vec![
            Stmt::cmp(Field::Saddr, net("::/0")),
            Stmt::Verdict(Verdict::Drop),
        ])],
    ));
    rs.tables.push(v6_table());
    let probe = Probe {
        origin: Origin::Pod {
            iifname: "veth1".into(),
        },
        src: ip("fd00:244::9"),
        dst: ip("fd00:10::10"),
        proto: Protocol::Tcp,
        port: 80,
    };
    let t = trace(&rs, &Host::default(), &probe);
    assert_eq!(t.verdict, TraceVerdict::Dnat);
    assert_eq!(eps(&t), ["[fd00:1::5]:8080"]);
    assert_eq!(t.endpoints, [ep("[fd00:1::5]:8080")]);
    assert!(!t.masquerade);
    let probe = Probe {
        src: ip("2001:db8::1"),
        origin: Origin::External {
            iifname: "eth0".into(),
        },
        ..probe
    };
    let t = trace(&rs, &Host::default(), &probe);
    assert!(t.masquerade);
    // An IPv4 probe never sees the ip6 table.
    let rs6 = Ruleset {
        tables: vec![v6_table()],
    };
    let t = trace(
        &rs6,
        &host(),
        &pod("10.244.1.9", "10.96.0.10", Protocol::Tcp, 80),
    );
    assert_eq!(t.verdict, TraceVerdict::Accept);
    assert!(t.paths[0].steps.is_empty());
}

#[test]
fn json_and_text_output() {
    let probe = ext("ens3", "192.168.1.50", "10.96.0.10", 80);
    let t = trace(&kube_like(), &host(), &probe);
    let j = t.to_json();
    assert_eq!(j["verdict"], "dnat");
    assert_eq!(
        j["endpoints"],
        json!(["10.244.1.5:8080", "10.244.2.6:8080"])
    );
    assert_eq!(j["masquerade"], true);
    let obj = j.as_object().unwrap();
    let mut keys: Vec<&String> = obj.keys().collect();
    keys.sort();
    assert_eq!(keys, ["endpoints", "masquerade", "paths", "verdict"]);
    assert_eq!(j["paths"].as_array().unwrap().len(), 2);
    assert_eq!(j["paths"][0]["verdict"], "dnat");
    assert_eq!(j["paths"][0]["endpoint"], "10.244.1.5:8080");
    assert_eq!(j["paths"][0]["steps"][0]["hook"], "prerouting");
    assert_eq!(j["paths"][0]["steps"][0]["chain"], "filter-prerouting");
    assert!(j["paths"][0]["steps"][0]["rule"].is_null());
    let txt = t.render_text(&probe);
    assert!(txt.starts_with("probe: tcp from external via \"ens3\": 192.168.1.50 -> 10.96.0.10:80"));
    assert!(txt.contains("path 2/2: dnat to 10.244.2.6:8080, masquerade"));
    assert!(txt.contains("masquerading[2]: masquerade fully-random"));
    assert!(txt
        .trim_end()
        .ends_with("verdict: dnat to 10.244.1.5:8080, 10.244.2.6:8080 (masquerade)"));
    let reject = trace(
        &kube_like(),
        &host(),
        &pod("10.244.1.9", "10.96.0.40", Protocol::Tcp, 80),
    );
    assert_eq!(reject.to_json()["verdict"], "reject");
    assert_eq!(reject.to_json()["masquerade"], false);
    assert_eq!(reject.to_json()["endpoints"], json!([]));
}
