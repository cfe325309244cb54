//! What the run measured of kproxy: RSS and /metrics sampled every second from the node
//! namespace, and the arithmetic of the summary (percentiles, the RSS window).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kproxy::testutil::proc_status_kib;

use crate::common::daemon::METRICS;
use crate::plan::every;

pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Sum of every series of a family (`name{…} v` lines).
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let rest = rest
                .strip_prefix('{')
                .map_or(Some(rest), |r| r.split_once('}').map(|(_, v)| v))?;
            rest.trim().parse::<f64>().ok()
        })
        .sum()
}

pub const FAILURES: &str = "kubeproxy_sync_proxy_rules_nftables_sync_failures_total";
pub const SYNCED_V4: &str = "kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family=\"IPv4\"}";

#[derive(Clone, Debug)]
pub struct Sample {
    pub at: Instant,
    pub pid: u32,
    pub rss_kib: u64,
}

#[derive(Default)]
pub struct Samples {
    pub rss: Vec<Sample>,
    /// Per pid: the last /metrics seen, and when it first showed a successful sync.
    pub last_metrics: HashMap<u32, String>,
    pub synced_at: HashMap<u32, Instant>,
    pub hwm_kib: HashMap<u32, u64>,
}

/// How often RSS is sampled (/metrics: every fourth time, once a second).
pub const RSS_EVERY: Duration = Duration::from_millis(250);

/// Samples kproxy (the pid in `pid`, 0 while none runs) from inside `netns` until `stop`.
pub fn run_sampler(
    netns: String,
    pid: Arc<AtomicU32>,
    samples: Arc<Mutex<Samples>>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        kproxy::netlink::enter_netns(&kproxy::testutil::netns_path(&netns)).expect("enter netns");
        let mut tick = 0u64;
        every(RSS_EVERY, &stop, || {
            let p = pid.load(Ordering::SeqCst);
            tick += 1;
            if p == 0 {
                return;
            }
            let rss = proc_status_kib(p, "VmRSS");
            let hwm = proc_status_kib(p, "VmHWM");
            let metrics = (tick % 4 == 1)
                .then(|| kproxy::testutil::http_get(METRICS, "/metrics").map(|(_, b)| b))
                .flatten();
            let at = Instant::now();
            let mut s = samples.lock().unwrap();
            // The pid may have died between the read and now: keep what was read.
            if let Some(rss) = rss {
                s.rss.push(Sample {
                    at,
                    pid: p,
                    rss_kib: rss,
                });
            }
            if let Some(h) = hwm {
                s.hwm_kib.insert(p, h);
            }
            if let Some(m) = metrics {
                if metric_value(&m, SYNCED_V4).is_some() {
                    s.synced_at.entry(p).or_insert(at);
                }
                s.last_metrics.insert(p, m);
            }
        });
    })
}

pub fn percentiles(mut v: Vec<Duration>) -> String {
    if v.is_empty() {
        return "n=0".into();
    }
    v.sort();
    let p = |q: f64| v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1];
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    format!(
        "n={} p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        v.len(),
        ms(p(0.5)),
        ms(p(0.9)),
        ms(p(0.99)),
        ms(v[v.len() - 1])
    )
}

/// `network_programming_duration_seconds` (IPv4) of one /metrics text: count and the
/// bucket bounds of p50/p90/p99.
pub fn programming_histogram(text: &str) -> String {
    let prefix = "kubeproxy_network_programming_duration_seconds_bucket{ip_family=\"IPv4\",le=\"";
    let buckets: Vec<(String, f64)> = text
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(prefix)?;
            let (le, v) = rest.split_once("\"} ")?;
            Some((le.to_string(), v.trim().parse().ok()?))
        })
        .collect();
    let Some(total) = buckets.last().map(|b| b.1) else {
        return "no samples".into();
    };
    if total == 0.0 {
        return "no samples".into();
    }
    let q = |q: f64| {
        buckets
            .iter()
            .find(|(_, c)| *c >= q * total)
            .map_or("?".to_string(), |(le, _)| format!("≤ {le} s"))
    };
    format!("n={total} p50 {}, p90 {}, p99 {}", q(0.5), q(0.9), q(0.99))
}

pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Counts from kproxy's logs (every life's): failed transactions (their lines), syncs
/// (full, partial) and drift repairs.
#[derive(Default)]
pub struct LogCounts {
    pub failures: Vec<String>,
    pub full: usize,
    pub partial: usize,
    pub repairs: usize,
}

pub fn log_counts<'a>(logs: impl IntoIterator<Item = &'a str>) -> LogCounts {
    let mut c = LogCounts::default();
    for l in logs.into_iter().flat_map(str::lines) {
        if l.contains("sync failed") || l.contains("repairing kproxy's tables failed") {
            c.failures.push(l.to_string());
        }
        if l.contains(" synced") {
            if l.contains("full=true") {
                c.full += 1;
            } else {
                c.partial += 1;
            }
        }
        if l.contains("changed by someone else; repaired") {
            c.repairs += 1;
        }
    }
    c
}

/// The `q`-quantile of `v` (sorted in place).
pub fn quantile(v: &mut [u64], q: f64) -> u64 {
    v.sort_unstable();
    v[((v.len() as f64 * q) as usize).min(v.len() - 1)]
}

/// RSS over the second half of one life (`pid`, from `started` to `until`, the end of
/// churn): the summary line and the growth of its floor, the 10th percentile of the
/// window's last third over that of its first third (None with fewer than 16 samples).
/// The floor, not the mean: a full render and dump after something drifted, or a relist,
/// is a peak of a few seconds that comes and goes; a leak raises the floor.
pub fn rss_second_half(
    samples: &Samples,
    pid: u32,
    started: Instant,
    until: Instant,
) -> (String, Option<f64>) {
    let mid = started + until.saturating_duration_since(started) / 2;
    let window: Vec<u64> = samples
        .rss
        .iter()
        .filter(|x| x.pid == pid && x.at >= mid && x.at <= until)
        .map(|x| x.rss_kib)
        .collect();
    if window.len() < 16 {
        return (
            format!(
                "only {} samples in the second half of the last life's churn",
                window.len()
            ),
            None,
        );
    }
    let third = window.len() / 3;
    let first = quantile(&mut window[..third].to_vec(), 0.1);
    let last = quantile(&mut window[window.len() - third..].to_vec(), 0.1);
    let growth = last as f64 / first as f64 - 1.0;
    let mut all = window.clone();
    (
        format!(
            "second half of the last life's churn ({:.0}–{:.0} s of the life, {} samples): floor (p10) {:.1} MiB in its first third, {:.1} MiB in its last third, growth {:+.1}%; median {:.1}, min {:.1}, max {:.1} MiB",
            (mid - started).as_secs_f64(),
            (until - started).as_secs_f64(),
            window.len(),
            mib(first),
            mib(last),
            growth * 100.0,
            mib(quantile(&mut all, 0.5)),
            mib(all[0]),
            mib(all[all.len() - 1]),
        ),
        Some(growth),
    )
}

/// One life's RSS every so often: `12s:231 24s:240 …` (MiB), about `points` of them.
pub fn rss_curve(samples: &Samples, pid: u32, started: Instant, points: usize) -> String {
    let life: Vec<&Sample> = samples.rss.iter().filter(|x| x.pid == pid).collect();
    let step = (life.len() / points.max(1)).max(1);
    life.iter()
        .step_by(step)
        .map(|x| {
            format!(
                "{:.0}s:{:.0}",
                (x.at - started).as_secs_f64(),
                mib(x.rss_kib)
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The largest RSS sampled in one life.
pub fn rss_peak(samples: &Samples, pid: u32) -> u64 {
    samples
        .rss
        .iter()
        .filter(|x| x.pid == pid)
        .map(|x| x.rss_kib)
        .max()
        .unwrap_or(0)
}
