//! The plan of one run: sizes, rates and fault counts, from the form (short or long) and
//! the `KPROXY_SOAK_*` environment; and the seeded random numbers every choice comes from.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct Plan {
    pub form: &'static str,
    pub services: usize,
    pub endpoints: usize,
    /// How long churn and faults go on.
    pub churn: Duration,
    /// Endpoint changes per second (added, removed, readiness flipped).
    pub endpoint_rate: f64,
    /// Service creations and deletions per second (alternating).
    pub service_rate: f64,
    /// Changes per second to the services that point at the topology's real pods.
    pub real_rate: f64,
    /// SIGKILLs right after a big change reached the stand-in.
    pub kills: usize,
    /// SIGKILLs during a restarted kproxy's first sync (each after one of `kills`).
    pub startup_kills: usize,
    /// Services changed at once before each kill.
    pub big_change: usize,
    /// The kills happen between 5% of the churn and this fraction of it, so that the last
    /// life covers the rest (its RSS is judged over the second half of that).
    pub kills_until: f64,
    pub flushes: usize,
    pub drops: usize,
    pub compactions: usize,
    pub outages: usize,
    pub slowdowns: usize,
    /// How long every change may take to reach the kernel once churn stops.
    pub settle: Duration,
    /// Largest RSS growth over the second half of the last life's churn (see
    /// `report::rss_second_half`).
    pub rss_limit: f64,
    pub seed: u64,
}

fn env_u64(key: &str) -> Option<u64> {
    std::env::var(key).ok().and_then(|v| {
        let v = v.trim();
        v.strip_prefix("0x")
            .map_or_else(|| v.parse().ok(), |h| u64::from_str_radix(h, 16).ok())
    })
}

impl Plan {
    pub fn from_env() -> Plan {
        let long = std::env::var("KPROXY_SOAK").is_ok_and(|v| v == "long");
        let mut p = if long {
            Plan {
                form: "long",
                services: 50_000,
                endpoints: 10,
                churn: Duration::from_secs(25 * 60),
                endpoint_rate: 50.0,
                service_rate: 2.0,
                real_rate: 0.5,
                kills: 6,
                startup_kills: 2,
                big_change: 5_000,
                kills_until: 0.35,
                flushes: 60,
                drops: 12,
                compactions: 8,
                outages: 4,
                slowdowns: 4,
                settle: Duration::from_secs(300),
                rss_limit: 0.05,
                seed: 0,
            }
        } else {
            // About a minute of wall time in a debug build on 2 cores, loading and the
            // first sync included. 3k services, not the 10k: at 10k a debug
            // build takes 13 s for the first sync and ~25 s for each restart's (a dump
            // of the kernel while the neighbour commits), so the run took 90 s with most
            // of its churn waiting for a restart, and the final checks 30 s.
            Plan {
                form: "short",
                services: 3_000,
                endpoints: 10,
                churn: Duration::from_secs(40),
                endpoint_rate: 20.0,
                service_rate: 2.0,
                real_rate: 0.5,
                kills: 1,
                startup_kills: 1,
                big_change: 300,
                kills_until: 0.15,
                flushes: 3,
                drops: 1,
                compactions: 1,
                outages: 1,
                slowdowns: 1,
                settle: Duration::from_secs(60),
                // Its window is ~15 s of a debug build, where a relist or a restart's
                // leftovers move RSS by steps: the floor of a third of it moved by -5.5%
                // to +9.2% in runs without any leak (-26% to +45% before drift checks
                // stopped reading the whole kernel on every neighbour commit). A
                // gross-leak guard; 5% in the long form.
                rss_limit: 0.25,
                seed: 0,
            }
        };
        if let Some(secs) = env_u64("KPROXY_SOAK_SECS") {
            let ratio = secs as f64 / p.churn.as_secs_f64();
            let scale = |n: usize| ((n as f64 * ratio).round() as usize).max(1);
            p.churn = Duration::from_secs(secs.max(10));
            p.kills = scale(p.kills);
            p.startup_kills = scale(p.startup_kills).min(p.kills);
            p.flushes = scale(p.flushes);
            p.drops = scale(p.drops);
            p.compactions = scale(p.compactions);
            p.outages = scale(p.outages);
            p.slowdowns = scale(p.slowdowns);
        }
        if let Some(n) = env_u64("KPROXY_SOAK_SERVICES") {
            p.big_change = (p.big_change * n as usize / p.services).max(1);
            p.services = n as usize;
        }
        if let Some(n) = env_u64("KPROXY_SOAK_ENDPOINTS") {
            p.endpoints = (n as usize).max(1);
        }
        if let Some(r) = env_u64("KPROXY_SOAK_RATE") {
            p.endpoint_rate = r as f64;
        }
        p.seed = env_u64("KPROXY_SOAK_SEED").unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
        p
    }
}

/// splitmix64: small, seeded, reproducible.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn between(&mut self, a: f64, b: f64) -> f64 {
        a + (b - a) * self.unit()
    }
}

/// Calls `f` on a fixed schedule, once per `period`, until `stop`; a call that overruns
/// its period moves the schedule instead of calling again at once.
pub fn every(period: Duration, stop: &AtomicBool, mut f: impl FnMut()) {
    let mut next = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        f();
        next += period;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else {
            next = now;
        }
    }
}
