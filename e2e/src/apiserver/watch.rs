//! Watch streams: newline-delimited `WatchEvent`s (ADDED, MODIFIED, DELETED, BOOKMARK, ERROR)
//! replayed from the store's history and then followed live.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::object::{meta_str, now_unix};
use super::resources::ResourceType;
use super::selector::Selectors;
use super::store::{Change, ChangeType, Store};
use super::table::table;

/// What a watch request asks for.
#[derive(Debug, Clone)]
pub struct WatchSpec {
    /// The resource watched.
    pub rt: ResourceType,
    /// One namespace, or all.
    pub namespace: Option<String>,
    /// Label and field selectors.
    pub selectors: Selectors,
    /// Start after this version; `None` or 0: first an ADDED event per existing object.
    pub resource_version: Option<u64>,
    /// `sendInitialEvents=true` (streaming lists): ADDED events for the current state, then
    /// a bookmark marking their end.
    pub send_initial_events: bool,
    /// `allowWatchBookmarks=true`.
    pub bookmarks: bool,
    /// When the stream ends (`timeoutSeconds`).
    pub timeout: Duration,
    /// How often a bookmark is sent while nothing else happens.
    pub bookmark_every: Duration,
    /// Send each object as a one-row Table (`kubectl get -w`); column definitions only in
    /// the first event, as the real server does.
    pub table: bool,
}

/// Turns objects into what the watch sends.
struct Encoder<'s> {
    spec: &'s WatchSpec,
    headers_sent: bool,
}

impl Encoder<'_> {
    fn event(&mut self, kind: &str, obj: &Value) -> Bytes {
        if !self.spec.table {
            return line(kind, obj);
        }
        let rv = meta_str(obj, "resourceVersion").parse().unwrap_or(0);
        let mut t = table(&self.spec.rt, std::slice::from_ref(obj), rv, now_unix());
        if self.headers_sent {
            t["columnDefinitions"] = json!([]);
        }
        self.headers_sent = true;
        line(kind, &t)
    }
}

fn line(kind: &str, object: &Value) -> Bytes {
    let mut v = serde_json::to_vec(&json!({ "type": kind, "object": object })).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

fn bookmark(rt: &ResourceType, rv: u64, initial_end: bool) -> Bytes {
    let mut meta = json!({ "resourceVersion": rv.to_string() });
    if initial_end {
        meta["annotations"] = json!({ "k8s.io/initial-events-end": "true" });
    }
    line(
        "BOOKMARK",
        &json!({ "apiVersion": rt.api_version(), "kind": rt.kind, "metadata": meta }),
    )
}

/// Whether an object is in the watched set.
fn selected(spec: &WatchSpec, obj: &Value) -> bool {
    spec.namespace
        .as_deref()
        .is_none_or(|ns| meta_str(obj, "namespace") == ns)
        && spec.selectors.matches(obj)
}

/// The event a change is for this watch: an object that stops matching the selector is
/// DELETED for it, one that starts matching is ADDED.
pub fn classify<'c>(spec: &WatchSpec, c: &'c Change) -> Option<(&'static str, &'c Value)> {
    if c.storage != spec.rt.storage_key() {
        return None;
    }
    let now = selected(spec, &c.object);
    match c.kind {
        ChangeType::Added => now.then_some(("ADDED", &c.object)),
        ChangeType::Deleted => now.then_some(("DELETED", &c.object)),
        ChangeType::Modified => {
            let before = c.old.as_ref().is_some_and(|o| selected(spec, o));
            match (before, now) {
                (true, true) => Some(("MODIFIED", &c.object)),
                (true, false) => Some(("DELETED", &c.object)),
                (false, true) => Some(("ADDED", &c.object)),
                (false, false) => None,
            }
        }
    }
}

/// Starts a watch; the receiver yields the body's chunks and ends with the stream. Dropping
/// it (the client went away) stops the task.
pub fn start(store: Arc<Store>, spec: WatchSpec) -> mpsc::Receiver<Bytes> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let _ = run(&store, &spec, &tx).await;
    });
    rx
}

/// Sends until the timeout, an error event or the client leaving (`Err`).
async fn run(store: &Store, spec: &WatchSpec, tx: &mpsc::Sender<Bytes>) -> Result<(), ()> {
    let mut enc = Encoder {
        spec,
        headers_sent: false,
    };
    let mut changed = store.subscribe();
    let deadline = Instant::now() + spec.timeout;
    let initial = spec.send_initial_events || spec.resource_version.unwrap_or(0) == 0;
    let mut cursor = if initial {
        let (items, rv) = store.list(&spec.rt, spec.namespace.as_deref(), &spec.selectors);
        for o in &items {
            tx.send(enc.event("ADDED", o)).await.map_err(|_| ())?;
        }
        if spec.send_initial_events && spec.bookmarks {
            tx.send(bookmark(&spec.rt, rv, true))
                .await
                .map_err(|_| ())?;
        }
        rv
    } else {
        spec.resource_version.unwrap_or(0)
    };
    let mut next_bookmark = Instant::now() + spec.bookmark_every;
    loop {
        changed.borrow_and_update();
        match store.changes_since(cursor) {
            Err(e) => {
                let _ = tx.send(line("ERROR", &e.to_status())).await;
                return Ok(());
            }
            Ok(changes) => {
                for c in &changes {
                    if let Some((kind, obj)) = classify(spec, c) {
                        tx.send(enc.event(kind, obj)).await.map_err(|_| ())?;
                    }
                    cursor = c.rv;
                }
            }
        }
        tokio::select! {
            r = changed.changed() => if r.is_err() { return Ok(()) },
            _ = tokio::time::sleep_until(next_bookmark) => {
                if spec.bookmarks {
                    tx.send(bookmark(&spec.rt, cursor, false)).await.map_err(|_| ())?;
                }
                next_bookmark = Instant::now() + spec.bookmark_every;
            }
            _ = tokio::time::sleep_until(deadline) => return Ok(()),
            _ = tx.closed() => return Err(()),
        }
    }
}
