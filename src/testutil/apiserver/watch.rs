//! Watch streams: the initial ADDED events, replaying history from a resourceVersion,
//! selector transitions, bookmarks, `410 Expired`, timeouts, cuts and kills.
//!
//! Owns: turning one watch request into a streaming body and the task that feeds it.
//!
//! Must not: change the store (it only reads objects and history) or parse paths.

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::json;
use tokio::sync::{mpsc, watch};

use super::http::{filter_from, is_true, json_response, status, status_value};
use super::select::Filter;
use super::store::{Change, Obj};
use super::{Kind, Shared};

fn watch_line(typ: &str, object: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(object.len() + 32);
    out.extend_from_slice(br#"{"type":""#);
    out.extend_from_slice(typ.as_bytes());
    out.extend_from_slice(br#"","object":"#);
    out.extend_from_slice(object);
    out.extend_from_slice(b"}\n");
    Bytes::from(out)
}

fn bookmark_line(kind: Kind, rv: u64, initial_end: bool) -> Bytes {
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if initial_end {
        meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    let obj = json!({"kind": kind.name(), "apiVersion": kind.api_version(), "metadata": meta});
    watch_line("BOOKMARK", &serde_json::to_vec(&obj).unwrap_or_default())
}

fn expired_line(rv: u64, oldest: u64) -> Bytes {
    let st = status_value(
        410,
        "Expired",
        &format!("too old resource version: {rv} ({oldest})"),
    );
    watch_line("ERROR", &serde_json::to_vec(&st).unwrap_or_default())
}

/// The watch event a change is, for a watch with `filter`: the real server's rules for
/// objects entering and leaving a selector.
fn event_for(c: &Change, filter: &Filter) -> Option<Bytes> {
    let was = c.prev.as_ref().is_some_and(|p| filter.matches(p));
    if c.deleted {
        return was.then(|| watch_line("DELETED", &c.next.bytes));
    }
    let is = filter.matches(&c.next);
    match (was, is) {
        (true, true) => Some(watch_line("MODIFIED", &c.next.bytes)),
        (false, true) => Some(watch_line("ADDED", &c.next.bytes)),
        (true, false) => {
            let prev = c.prev.as_ref().expect("was matching");
            Some(watch_line("DELETED", &prev.bytes_with_rv(c.rv)))
        }
        (false, false) => None,
    }
}

struct WatchPlan {
    kind: Kind,
    filter: Filter,
    initial: Vec<Arc<Obj>>,
    initial_end_bookmark: bool,
    cursor: u64,
    expired: Option<u64>,
    bookmarks: bool,
    timeout: Option<Duration>,
    bookmark_every: Duration,
}

/// What wakes or ends a watch; subscribed before the response head is sent, so a cut or a
/// kill right after the client saw the stream start is not missed.
struct WatchSignals {
    changed: watch::Receiver<u64>,
    cut: watch::Receiver<u64>,
    kill: watch::Receiver<u64>,
}

pub(super) fn start_watch(
    shared: &Arc<Shared>,
    kind: Kind,
    ns: Option<String>,
    name: Option<String>,
    params: &BTreeMap<String, String>,
) -> Response {
    let filter = match filter_from(ns, name, params) {
        Ok(f) => f,
        Err(m) => return status(StatusCode::BAD_REQUEST, "BadRequest", &m),
    };
    let rv_param = params
        .get("resourceVersion")
        .map(String::as_str)
        .unwrap_or("");
    let from_any = rv_param.is_empty() || rv_param == "0";
    let send_initial = match params.get("sendInitialEvents") {
        Some(_) => is_true(params.get("sendInitialEvents")),
        None => from_any,
    };
    let cursor_param = if from_any {
        None
    } else {
        match rv_param.parse::<u64>() {
            Ok(n) => Some(n),
            Err(_) => {
                return status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    &format!("invalid resource version: {rv_param:?}"),
                )
            }
        }
    };
    let timeout = params
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .filter(|t| *t > 0)
        .map(Duration::from_secs);
    let plan = {
        let st = shared.state();
        let store = &st.kinds[kind.idx()];
        let oldest = st.floor.max(store.evicted_upto);
        let expired = cursor_param
            .filter(|n| !send_initial && *n < oldest)
            .map(|_| oldest);
        let initial = if send_initial && expired.is_none() {
            store
                .objects
                .values()
                .filter(|o| filter.matches(o))
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        let cursor = if send_initial {
            st.rv
        } else {
            cursor_param.unwrap_or(st.rv)
        };
        WatchPlan {
            kind,
            filter,
            initial,
            initial_end_bookmark: send_initial && params.contains_key("sendInitialEvents"),
            cursor,
            expired,
            bookmarks: is_true(params.get("allowWatchBookmarks")),
            timeout,
            bookmark_every: Duration::from_millis(shared.bookmark_ms.load(Ordering::SeqCst)),
        }
    };
    shared.watches.fetch_add(1, Ordering::SeqCst);
    shared.open_watches.fetch_add(1, Ordering::SeqCst);
    let signals = WatchSignals {
        changed: shared.changed.subscribe(),
        cut: shared.cut.subscribe(),
        kill: shared.kill.subscribe(),
    };
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    // The body watches cut and kill itself, ahead of buffered lines: the stream then fails,
    // and hyper aborts the connection without the terminating chunk.
    let body = BodyState {
        rx,
        cut: shared.cut.subscribe(),
        kill: shared.kill.subscribe(),
    };
    tokio::spawn(run_watch(shared.clone(), plan, signals, tx));
    let stream = futures::stream::unfold(Some(body), |state| async move {
        let mut b = state?;
        let aborted = || io::Error::new(io::ErrorKind::ConnectionAborted, "watch cut");
        tokio::select! {
            biased;
            _ = b.cut.changed() => Some((Err(aborted()), None)),
            _ = b.kill.changed() => Some((Err(aborted()), None)),
            line = b.rx.recv() => line.map(|l| (Ok(l), Some(b))),
        }
    });
    json_response(StatusCode::OK, Body::from_stream(stream))
}

struct BodyState {
    rx: mpsc::Receiver<Bytes>,
    cut: watch::Receiver<u64>,
    kill: watch::Receiver<u64>,
}

struct OpenWatch<'a>(&'a Shared);

impl Drop for OpenWatch<'_> {
    fn drop(&mut self) {
        self.0.open_watches.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Streams one watch until its timeout, a cut, a kill, history loss or the client leaving.
async fn run_watch(
    shared: Arc<Shared>,
    plan: WatchPlan,
    signals: WatchSignals,
    tx: mpsc::Sender<Bytes>,
) {
    let _open = OpenWatch(&shared);
    let WatchPlan {
        kind,
        filter,
        initial,
        initial_end_bookmark,
        mut cursor,
        expired,
        bookmarks,
        timeout,
        bookmark_every,
    } = plan;
    let WatchSignals {
        mut changed,
        mut cut,
        mut kill,
    } = signals;
    // Sends one line unless the stream is cut, killed or gone; false: stop.
    macro_rules! send {
        ($line:expr) => {
            tokio::select! {
                biased;
                _ = cut.changed() => false,
                _ = kill.changed() => false,
                r = tx.send($line) => r.is_ok(),
            }
        };
    }
    let bookmark = |rv: u64, initial_end: bool| {
        shared.bookmarks.fetch_add(1, Ordering::SeqCst);
        bookmark_line(kind, rv, initial_end)
    };

    if let Some(oldest) = expired {
        send!(expired_line(cursor, oldest));
        return;
    }
    for o in initial {
        if !send!(watch_line("ADDED", &o.bytes)) {
            return;
        }
    }
    if initial_end_bookmark && !send!(bookmark(cursor, true)) {
        return;
    }
    let deadline = tokio::time::sleep(timeout.unwrap_or(Duration::from_secs(365 * 86_400)));
    tokio::pin!(deadline);
    let mut ticker =
        tokio::time::interval_at(tokio::time::Instant::now() + bookmark_every, bookmark_every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let (batch, gone) = {
            let st = shared.state();
            let store = &st.kinds[kind.idx()];
            if cursor < store.evicted_upto {
                (Vec::new(), Some(store.evicted_upto))
            } else {
                let from = store.history.partition_point(|c| c.rv <= cursor);
                let batch: Vec<Arc<Change>> = store.history.range(from..).cloned().collect();
                cursor = st.rv;
                (batch, None)
            }
        };
        if let Some(oldest) = gone {
            send!(expired_line(cursor, oldest));
            return;
        }
        for c in batch {
            if let Some(line) = event_for(&c, &filter) {
                if !send!(line) {
                    return;
                }
            }
        }
        tokio::select! {
            biased;
            _ = cut.changed() => return,
            _ = kill.changed() => return,
            _ = tx.closed() => return,
            r = changed.changed() => if r.is_err() { return },
            _ = &mut deadline => {
                if bookmarks {
                    send!(bookmark(cursor, false));
                }
                return;
            }
            _ = ticker.tick() => {
                if bookmarks && !send!(bookmark(cursor, false)) {
                    return;
                }
            }
        }
    }
}
