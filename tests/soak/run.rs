//! The run: kproxy's lives (started, SIGKILLed, restarted), the churn applied to the
//! stand-in at fixed rates, and the faults injected at seeded random moments, each with
//! the window during which changes may be held up by it.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::discovery::v1::EndpointSlice;
use kproxy::nft::Family;
use kproxy::testutil::apiserver::Kind;
use kproxy::testutil::fixtures as fx;

use crate::cluster::{ip_string, Cluster, Hold, REAL_PODS, REAL_SERVICES};
use crate::common::daemon::{Daemon, Setup, NODE};
use crate::common::topology::pod_ip;
use crate::kernel::{Change, Ledger, Pending};
use crate::plan::{Plan, Rng};
use crate::report::Samples;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FaultKind {
    KillAfterBigChange,
    KillDuringStartup,
    FlushChain,
    DropWatches,
    Compact410,
    Outage,
    Slow,
}

impl FaultKind {
    pub fn label(self) -> &'static str {
        match self {
            FaultKind::KillAfterBigChange => "SIGKILL right after a big change",
            FaultKind::KillDuringStartup => "SIGKILL during a restart's first sync",
            FaultKind::FlushChain => "nft flush chain (a kproxy service chain)",
            FaultKind::DropWatches => "API drops every watch",
            FaultKind::Compact410 => "API compacts (watches answered 410, relist)",
            FaultKind::Outage => "API down (1-3 s)",
            FaultKind::Slow => "API slow (300 ms per response, 5 s)",
        }
    }
}

/// A time during which changes may be delayed by a fault: from the fault until kproxy is
/// back (synced after a restart; watches open again after an API fault).
#[derive(Clone, Debug)]
pub struct Window {
    pub kind: FaultKind,
    pub start: Instant,
    pub end: Option<Instant>,
    /// Closes once the stand-in has this many watches open again (API faults).
    pub watches: usize,
    /// Closes once this kproxy pid has synced (kills).
    pub pid: u32,
    /// Closes once kproxy repaired this chain (flushes).
    pub chain: Option<String>,
}

pub fn schedule(plan: &Plan, rng: &mut Rng) -> Vec<(Duration, FaultKind)> {
    let d = plan.churn.as_secs_f64();
    let mut v = Vec::new();
    let mut at = |lo: f64, hi: f64, n: usize, k: FaultKind, v: &mut Vec<(Duration, FaultKind)>| {
        for _ in 0..n {
            v.push((Duration::from_secs_f64(d * rng.between(lo, hi)), k));
        }
    };
    // Kills early, so that the last life covers most of the churn (RSS).
    at(
        0.05,
        plan.kills_until,
        plan.kills,
        FaultKind::KillAfterBigChange,
        &mut v,
    );
    at(0.05, 0.95, plan.flushes, FaultKind::FlushChain, &mut v);
    at(0.05, 0.9, plan.drops, FaultKind::DropWatches, &mut v);
    at(0.05, 0.9, plan.compactions, FaultKind::Compact410, &mut v);
    at(0.05, 0.9, plan.outages, FaultKind::Outage, &mut v);
    at(0.05, 0.9, plan.slowdowns, FaultKind::Slow, &mut v);
    v.sort_by_key(|(t, _)| *t);
    v
}

pub struct Lives {
    /// (pid, started, ended, log)
    pub done: Vec<(u32, Instant, Instant, String)>,
    pub current: Option<Daemon>,
    pub started: Instant,
}

pub struct Soak<'a> {
    pub plan: Plan,
    pub s: &'a Setup,
    pub rng: Rng,
    pub cluster: Cluster,
    pub ledger: Arc<Mutex<Ledger>>,
    pub samples: Arc<Mutex<Samples>>,
    pub pid: Arc<AtomicU32>,
    pub lives: Lives,
    pub windows: Vec<Window>,
    pub faults: HashMap<FaultKind, usize>,
    /// Per kill after a big change: (changes, seen before the kill).
    pub kill_landings: Vec<(usize, usize)>,
    /// Per start-up kill: whether the victim had synced already.
    pub startup_landings: Vec<bool>,
    pub applied: HashMap<&'static str, usize>,
    pub real_ready: Vec<Vec<bool>>,
    pub outage_total: Duration,
    /// Changes made now are a big change's (see [`Pending::burst`]).
    pub bursting: bool,
    /// Watches kproxy keeps open once synced (counted after the first sync).
    pub steady_watches: usize,
    /// The same moment on both clocks, to place kproxy's log lines among the windows.
    pub clocks: (Instant, SystemTime),
}

impl<'a> Soak<'a> {
    fn count(&mut self, what: &'static str, n: usize) {
        *self.applied.entry(what).or_default() += n;
    }

    pub fn start_daemon(&mut self) {
        let d = Daemon::start(&self.s.t, &self.s.kubeconfig, &[]);
        self.pid.store(d.pid(), Ordering::SeqCst);
        self.lives.current = Some(d);
        self.lives.started = Instant::now();
    }

    /// Starts kproxy again after `victim` was killed: windows waiting for the victim to
    /// be back (synced) now wait for this life. The new pid.
    fn restart(&mut self, victim: u32) -> u32 {
        self.start_daemon();
        let pid = self.pid.load(Ordering::SeqCst);
        for w in self.windows.iter_mut().filter(|w| w.pid == victim) {
            w.pid = pid;
        }
        pid
    }

    pub fn kill_daemon(&mut self) -> u32 {
        let d = self.lives.current.take().expect("kproxy running");
        let pid = d.pid();
        self.pid.store(0, Ordering::SeqCst);
        let log = d.log();
        d.kill();
        self.lives
            .done
            .push((pid, self.lives.started, Instant::now(), log));
        pid
    }

    pub fn synced(&self, pid: u32) -> bool {
        self.samples.lock().unwrap().synced_at.contains_key(&pid)
    }

    /// A random service that may change now (not waiting to be seen), with at least
    /// `min_ready` ready endpoints.
    fn pick(&mut self, min_ready: usize) -> Option<usize> {
        let l = self.ledger.lock().unwrap();
        for _ in 0..32 {
            let i = self.rng.below(self.cluster.svcs.len());
            let s = &self.cluster.svcs[i];
            if !l.is_pending(&s.hold) && s.ready() >= min_ready {
                return Some(i);
            }
        }
        None
    }

    fn expect(&mut self, key: u32, change: Change, what: String, applied: Instant) {
        self.ledger.lock().unwrap().pending.insert(
            key,
            Pending {
                change,
                applied,
                what,
                burst: self.bursting,
            },
        );
    }

    /// One endpoint change to service `i` (model only): what the kernel will show.
    fn mutate_endpoints(&mut self, i: usize) -> Option<(u32, Change, &'static str)> {
        let base = self.cluster.endpoints;
        let n = self.cluster.svcs[i].eps.len();
        let r = self.rng.below(100);
        if r < 35 && n < 2 * base {
            let e = self.cluster.fresh_endpoint(&mut self.rng);
            let ip = e.ip;
            self.cluster.svcs[i].eps.push(e);
            return Some((ip, Change::EndpointUp, "endpoint added"));
        }
        if r < 65 && n > 1 {
            let j = self.rng.below(n);
            let e = self.cluster.svcs[i].eps.remove(j);
            return e
                .ready
                .then_some((e.ip, Change::EndpointDown, "endpoint removed"));
        }
        if n == 0 {
            let e = self.cluster.fresh_endpoint(&mut self.rng);
            let ip = e.ip;
            self.cluster.svcs[i].eps.push(e);
            return Some((ip, Change::EndpointUp, "endpoint added"));
        }
        let j = self.rng.below(n);
        let e = &mut self.cluster.svcs[i].eps[j];
        e.ready = !e.ready;
        Some(if e.ready {
            (e.ip, Change::EndpointUp, "endpoint became ready")
        } else {
            (e.ip, Change::EndpointDown, "endpoint became not ready")
        })
    }

    /// Changes service `i`'s endpoints, records what to expect, and returns its slice.
    fn endpoint_change(&mut self, i: usize, applied: Instant) -> EndpointSlice {
        match self.mutate_endpoints(i) {
            Some((ip, change, what)) => {
                let svc = &self.cluster.svcs[i];
                let desc = format!("{what} {} in {}/{}", ip_string(ip), svc.ns, svc.name);
                self.cluster.svcs[i].hold = Some(Hold::Key(ip));
                self.expect(ip, change, desc, applied);
                self.count(what, 1);
            }
            None => self.count("endpoint removed (not ready: no kernel change)", 1),
        }
        self.cluster.svcs[i].slice()
    }

    pub fn endpoint_op(&mut self) {
        let Some(i) = self.pick(0) else {
            return;
        };
        let applied = Instant::now();
        let slice = self.endpoint_change(i, applied);
        self.s.api.apply(&slice);
    }

    pub fn service_op(&mut self, create: bool) {
        if create || self.cluster.svcs.len() < 2 {
            let svc = self.cluster.new_service(&mut self.rng);
            let applied = Instant::now();
            self.expect(
                svc.cip,
                Change::ServiceUp,
                format!("service {}/{} created", svc.ns, svc.name),
                applied,
            );
            let mut svc = svc;
            svc.hold = Some(Hold::Key(svc.cip));
            self.s.api.apply(&svc.service());
            self.s.api.apply(&svc.slice());
            self.cluster.svcs.push(svc);
            self.count("service created", 1);
        } else {
            let Some(i) = self.pick(0) else {
                return;
            };
            let svc = self.cluster.svcs.swap_remove(i);
            let applied = Instant::now();
            self.expect(
                svc.cip,
                Change::ServiceDown,
                format!("service {}/{} deleted", svc.ns, svc.name),
                applied,
            );
            self.s
                .api
                .delete(Kind::EndpointSlice, &svc.ns, &svc.slice_name());
            self.s.api.delete(Kind::Service, &svc.ns, &svc.name);
            if let Some(np) = svc.node_port {
                self.cluster.free_node_ports.push(np);
            }
            self.count("service deleted", 1);
        }
    }

    pub fn real_slices(&self, k: usize) -> Vec<EndpointSlice> {
        let name = format!("real-{k}");
        [Family::V4, Family::V6]
            .into_iter()
            .map(|f| {
                let (suffix, at) = match f {
                    Family::V4 => ("v4", "IPv4"),
                    Family::V6 => ("v6", "IPv6"),
                };
                fx::slice("demo", &format!("{name}-{suffix}"), &name)
                    .address_type(at)
                    .port("http", 8080, "TCP")
                    .endpoints(REAL_PODS.iter().zip(&self.real_ready[k]).map(|(p, r)| {
                        fx::ep(&pod_ip(f, p).to_string())
                            .node(if p.starts_with('A') { NODE } else { "node-b" })
                            .ready(*r)
                            .serving(*r)
                            .terminating(false)
                    }))
                    .build()
            })
            .collect()
    }

    pub fn real_op(&mut self) {
        let k = self.rng.below(REAL_SERVICES as usize);
        loop {
            let ready: Vec<bool> = REAL_PODS.iter().map(|_| self.rng.below(2) == 0).collect();
            if ready.iter().any(|r| *r) {
                self.real_ready[k] = ready;
                break;
            }
        }
        for s in self.real_slices(k) {
            self.s.api.apply(&s);
        }
        self.count("real-pod service changed", 1);
    }

    fn open_window(&mut self, kind: FaultKind, watches: usize, pid: u32) {
        self.windows.push(Window {
            kind,
            start: Instant::now(),
            end: None,
            watches,
            pid,
            chain: None,
        });
    }

    pub fn close_windows(&mut self) {
        let open = self.s.api.open_watches();
        let synced: HashSet<u32> = self
            .samples
            .lock()
            .unwrap()
            .synced_at
            .keys()
            .copied()
            .collect();
        let down = self.s.api.is_down();
        let ledger = self.ledger.lock().unwrap();
        for w in self.windows.iter_mut().filter(|w| w.end.is_none()) {
            let back = match (w.kind, &w.chain) {
                (FaultKind::KillAfterBigChange | FaultKind::KillDuringStartup, _) => {
                    synced.contains(&w.pid)
                }
                (FaultKind::FlushChain, Some(c)) => !ledger.flushes.contains_key(c),
                _ => !down && open >= w.watches,
            };
            if back {
                w.end = Some(Instant::now());
            }
        }
    }

    pub fn inject(&mut self, kind: FaultKind) {
        let watches = self.steady_watches;
        match kind {
            FaultKind::KillAfterBigChange => {
                // A big change reaches the stand-in; kproxy is killed while (most
                // likely) syncing it, and restarted.
                let applied = Instant::now();
                let mut slices = Vec::new();
                let mut keys = Vec::new();
                self.bursting = true;
                for _ in 0..self.plan.big_change {
                    let Some(i) = self.pick(0) else {
                        continue;
                    };
                    let before = self.ledger.lock().unwrap().pending.len();
                    slices.push(self.endpoint_change(i, applied));
                    if self.ledger.lock().unwrap().pending.len() > before {
                        if let Some(Hold::Key(k)) = &self.cluster.svcs[i].hold {
                            keys.push(*k);
                        }
                    }
                }
                self.bursting = false;
                self.s.api.apply_all(&slices);
                std::thread::sleep(Duration::from_secs_f64(self.rng.between(0.02, 0.6)));
                let seen = {
                    let l = self.ledger.lock().unwrap();
                    keys.iter().filter(|k| !l.pending.contains_key(k)).count()
                };
                self.kill_landings.push((keys.len(), seen));
                let victim = self.kill_daemon();
                std::thread::sleep(Duration::from_secs_f64(self.rng.between(0.0, 1.0)));
                let pid = self.restart(victim);
                self.open_window(kind, 0, pid);
                *self.faults.entry(kind).or_default() += 1;
                if self.startup_landings.len() < self.plan.startup_kills {
                    // And once more while it lists and runs its first full sync.
                    std::thread::sleep(Duration::from_secs_f64(self.rng.between(0.3, 3.0)));
                    let victim = self.pid.load(Ordering::SeqCst);
                    self.startup_landings.push(self.synced(victim));
                    self.kill_daemon();
                    let pid = self.restart(victim);
                    self.open_window(FaultKind::KillDuringStartup, 0, pid);
                    *self.faults.entry(FaultKind::KillDuringStartup).or_default() += 1;
                }
                return;
            }
            FaultKind::FlushChain => {
                let Some(i) = self.pick(1) else {
                    return;
                };
                let chain = self.cluster.svcs[i].chain();
                self.ledger
                    .lock()
                    .unwrap()
                    .flushes
                    .insert(chain.clone(), Instant::now());
                let o = self
                    .s
                    .t
                    .node
                    .exec("nft", &["flush", "chain", "ip", "kproxy", &chain]);
                if !o.status.success() {
                    self.ledger.lock().unwrap().flushes.remove(&chain);
                    println!(
                        "soak: flush of {chain} failed (not counted): {}",
                        String::from_utf8_lossy(&o.stderr).trim()
                    );
                    return;
                }
                self.open_window(kind, 0, 0);
                if let Some(w) = self.windows.last_mut() {
                    w.chain = Some(chain.clone());
                }
                self.cluster.svcs[i].hold = Some(Hold::Chain(chain));
            }
            FaultKind::DropWatches => {
                self.s.api.drop_watches();
                self.open_window(kind, watches, 0);
            }
            FaultKind::Compact410 => {
                self.s.api.compact();
                self.s.api.drop_watches();
                self.open_window(kind, watches, 0);
            }
            FaultKind::Outage => {
                let d = Duration::from_secs_f64(self.rng.between(1.0, 3.0));
                self.outage_total += d;
                self.open_window(kind, watches, 0);
                self.s.api.set_down(true);
                // Churn goes on meanwhile: the stand-in still takes changes.
                let until = Instant::now() + d;
                while Instant::now() < until {
                    self.endpoint_op();
                    std::thread::sleep(Duration::from_millis(50));
                }
                self.s.api.set_down(false);
            }
            FaultKind::Slow => {
                self.open_window(kind, watches, 0);
                self.s.api.set_latency(Duration::from_millis(300));
                let until = Instant::now() + Duration::from_secs(5);
                while Instant::now() < until {
                    self.endpoint_op();
                    std::thread::sleep(Duration::from_millis(50));
                }
                self.s.api.set_latency(Duration::ZERO);
            }
            FaultKind::KillDuringStartup => unreachable!("scheduled with a kill"),
        }
        *self.faults.entry(kind).or_default() += 1;
    }
}

impl<'a> Soak<'a> {
    pub fn new(
        plan: &Plan,
        s: &'a Setup,
        cluster: Cluster,
        ledger: Arc<Mutex<Ledger>>,
        samples: Arc<Mutex<Samples>>,
        pid: Arc<AtomicU32>,
    ) -> Soak<'a> {
        Soak {
            plan: plan.clone(),
            s,
            rng: Rng(plan.seed ^ 0x5eed),
            cluster,
            ledger,
            samples,
            pid,
            lives: Lives {
                done: Vec::new(),
                current: None,
                started: Instant::now(),
            },
            windows: Vec::new(),
            faults: HashMap::new(),
            kill_landings: Vec::new(),
            startup_landings: Vec::new(),
            applied: HashMap::new(),
            real_ready: (0..REAL_SERVICES).map(|_| vec![true; 4]).collect(),
            outage_total: Duration::ZERO,
            bursting: false,
            steady_watches: 1,
            clocks: (Instant::now(), SystemTime::now()),
        }
    }

    /// Starts kproxy and waits for its first sync (of the whole cluster).
    pub fn first_sync(&mut self) -> Duration {
        self.start_daemon();
        let pid = self.pid.load(Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(900);
        while !self.synced(pid) {
            assert!(
                Instant::now() < deadline,
                "kproxy did not finish its first sync in 900 s:\n{}",
                self.lives.current.as_ref().expect("running").log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let took = self.lives.started.elapsed();
        // Every watcher has listed by now; give their watches a moment to open.
        std::thread::sleep(Duration::from_secs(1));
        self.steady_watches = self.s.api.open_watches().max(1);
        took
    }

    /// Churn at the plan's rates, and the faults at their times, for the plan's duration.
    pub fn churn(&mut self, faults: &[(Duration, FaultKind)]) -> Duration {
        let start = Instant::now();
        let mut next_fault = 0;
        let (mut ep, mut svc, mut real) = (0.0f64, 0.0f64, 0.0f64);
        let mut create_next = true;
        let mut last = Instant::now();
        while start.elapsed() < self.plan.churn {
            let now = Instant::now();
            let dt = (now - last).as_secs_f64();
            last = now;
            ep += self.plan.endpoint_rate * dt;
            svc += self.plan.service_rate * dt;
            real += self.plan.real_rate * dt;
            while ep >= 1.0 {
                self.endpoint_op();
                ep -= 1.0;
            }
            while svc >= 1.0 {
                self.service_op(create_next);
                create_next = !create_next;
                svc -= 1.0;
            }
            while real >= 1.0 {
                self.real_op();
                real -= 1.0;
            }
            while next_fault < faults.len() && faults[next_fault].0 <= start.elapsed() {
                self.inject(faults[next_fault].1);
                next_fault += 1;
                // Time spent injecting is not paid back as a burst of churn.
                last = Instant::now();
            }
            self.close_windows();
            std::thread::sleep(Duration::from_millis(10));
        }
        start.elapsed()
    }

    /// Waits (at most the plan's bound) until every change and flush was seen in the
    /// kernel.
    pub fn settle(&mut self) -> Duration {
        let start = Instant::now();
        loop {
            self.close_windows();
            let l = self.ledger.lock().unwrap();
            if (l.pending.is_empty() && l.flushes.is_empty()) || start.elapsed() > self.plan.settle
            {
                return start.elapsed();
            }
            drop(l);
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Soak<'_> {
    /// Whether a transaction or repair that failed at `at` (kproxy's log clock) with
    /// `error` is one the test caused: a read of kproxy's tables that kept changing while
    /// a chain the test flushed was not yet repaired (the flush changes kproxy's own
    /// tables under the read, which the dump must refuse).
    pub fn injected_failure(&self, at: SystemTime, error: &str) -> bool {
        let (i0, s0) = self.clocks;
        let Some(at) = at.duration_since(s0).ok().and_then(|d| i0.checked_add(d)) else {
            return false;
        };
        error.contains("kept changing while it was read")
            && self.windows.iter().any(|w| {
                w.kind == FaultKind::FlushChain
                    && w.start <= at
                    && w.end.is_none_or(|e| at <= e + Duration::from_secs(1))
            })
    }

    /// The fault windows by kind: how many, and how long until kproxy was back (median,
    /// max; how many never closed).
    pub fn windows_summary(&self) -> String {
        let mut by: std::collections::BTreeMap<FaultKind, (Vec<Duration>, usize)> =
            Default::default();
        for w in &self.windows {
            let e = by.entry(w.kind).or_default();
            match w.end {
                Some(end) => e.0.push(end - w.start),
                None => e.1 += 1,
            }
        }
        by.into_iter()
            .map(|(k, (mut d, open))| {
                d.sort();
                let med = d.get(d.len() / 2).map_or(0.0, Duration::as_secs_f64);
                let max = d.last().map_or(0.0, Duration::as_secs_f64);
                let open = if open > 0 {
                    format!(", {open} never closed")
                } else {
                    String::new()
                };
                format!(
                    "{k:?} ×{}: median {med:.1} s, max {max:.1} s{open}",
                    d.len()
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}
