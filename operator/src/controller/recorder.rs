//! Kubernetes Events (`events.k8s.io/v1`) on Services, BgpPeers and the rest. A repeat of an
//! Event within [`SERIES_WINDOW`] patches the first one's series count instead of creating
//! another, so `kubectl describe` shows `x5 over 2m` and the API server holds one object.
//!
//! kube-runtime's `Recorder` does the same, but keeps a whole copy of every Event it wrote for
//! six minutes and walks all of them on every publish: at the start of the scale bench (10,000
//! Services, an `IPAllocated` Event each) its map held 70 MB, the operator's largest single
//! use of memory. [`Series`] keeps a 64-bit key, the Event's name and its count, and forgets
//! old entries once a minute. Same RBAC (`create` and `patch` on `events.k8s.io` events).

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event as K8sEvent;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType};
use serde_json::json;

/// How long a repeat of an Event counts into its series (kube-runtime and client-go: 6 min).
pub const SERIES_WINDOW: Duration = Duration::from_secs(6 * 60);

/// How often entries older than [`SERIES_WINDOW`] are dropped (not on every publish: that
/// walk is what made kube-runtime's recorder cost CPU in proportion to its Events).
const GC_EVERY: Duration = Duration::from_secs(60);

/// One Event written, as far as its repeats need it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    namespace: String,
    name: String,
    count: i32,
    last: Instant,
}

/// The Events written recently, by what makes two of them the same (the object, type,
/// reason, action and note). Pure: tested without an API server.
#[derive(Debug)]
pub struct Series {
    entries: HashMap<u64, Entry>,
    last_gc: Instant,
}

/// What to do with an Event: create it, or raise the count of one written before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// A new Event object.
    Create,
    /// The Event `name` in `namespace` seen `count` times now.
    Repeat {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// How often it happened, this time included.
        count: i32,
    },
}

impl Series {
    /// No Event written yet.
    pub fn new(now: Instant) -> Self {
        Self {
            entries: HashMap::new(),
            last_gc: now,
        }
    }

    /// The key of `ev` on `regarding`.
    pub fn key(ev: &Event, regarding: &ObjectReference) -> u64 {
        let mut h = DefaultHasher::new();
        regarding.kind.hash(&mut h);
        regarding.namespace.hash(&mut h);
        regarding.name.hash(&mut h);
        regarding.uid.hash(&mut h);
        matches!(ev.type_, EventType::Warning).hash(&mut h);
        ev.reason.hash(&mut h);
        ev.action.hash(&mut h);
        ev.note.hash(&mut h);
        h.finish()
    }

    /// What to write for an Event with `key` at `now`. A repeat is counted here, before its
    /// PATCH: two racing repeats may reach the server out of order (the count shown is then
    /// one low until the next), and a failed PATCH is not taken back. Two racing first
    /// occurrences are both created. None of it loses an Event, only exactness of a count.
    pub fn observe(&mut self, key: u64, now: Instant) -> Write {
        if now.saturating_duration_since(self.last_gc) >= GC_EVERY {
            self.entries
                .retain(|_, e| now.saturating_duration_since(e.last) < SERIES_WINDOW);
            self.entries.shrink_to_fit();
            self.last_gc = now;
        }
        match self.entries.get_mut(&key) {
            Some(e) if now.saturating_duration_since(e.last) < SERIES_WINDOW => {
                e.count = e.count.saturating_add(1);
                e.last = now;
                Write::Repeat {
                    namespace: e.namespace.clone(),
                    name: e.name.clone(),
                    count: e.count,
                }
            }
            _ => Write::Create,
        }
    }

    /// Remembers an Event created as `namespace/name` (its first occurrence).
    pub fn created(&mut self, key: u64, namespace: String, name: String, now: Instant) {
        self.entries.insert(
            key,
            Entry {
                namespace,
                name,
                count: 1,
                last: now,
            },
        );
    }

    /// Forgets `key` (its Event is gone from the API server).
    pub fn forget(&mut self, key: u64) {
        self.entries.remove(&key);
    }

    /// Events remembered.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when none is remembered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Writes Events as `controller` (`reportingController`), from `instance` (this Pod).
pub struct Recorder {
    client: Client,
    controller: String,
    instance: String,
    series: Mutex<Series>,
}

impl Recorder {
    /// A recorder writing through `client`.
    pub fn new(client: Client, controller: &str, instance: &str) -> Self {
        Self {
            client,
            controller: controller.to_owned(),
            instance: instance.to_owned(),
            series: Mutex::new(Series::new(Instant::now())),
        }
    }

    /// Writes `ev` on the object `regarding` names (cluster-scoped objects' Events go to
    /// `default`, as kubectl looks for them there).
    pub async fn publish(&self, ev: &Event, regarding: &ObjectReference) -> kube::Result<()> {
        let key = Series::key(ev, regarding);
        let write = match self.series.lock() {
            Ok(mut s) => s.observe(key, Instant::now()),
            Err(_) => Write::Create,
        };
        if let Write::Repeat {
            namespace,
            name,
            count,
        } = write
        {
            let api: Api<K8sEvent> = Api::namespaced(self.client.clone(), &namespace);
            let patch = json!({"series": {"count": count,
                "lastObservedTime": MicroTime(Timestamp::now())}});
            match api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => return Ok(()),
                // Expired on the server (Events live an hour there): written anew below.
                Err(kube::Error::Api(s)) if s.code == 404 => {
                    if let Ok(mut s) = self.series.lock() {
                        s.forget(key);
                    }
                }
                Err(e) => return Err(e),
            }
        }
        let now = Timestamp::now();
        let namespace = regarding
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_owned());
        let name = format!(
            "{}.{:x}",
            regarding.name.as_deref().unwrap_or(&self.controller),
            now.as_nanosecond()
        );
        let event = K8sEvent {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(namespace.clone()),
                ..Default::default()
            },
            action: Some(ev.action.clone()),
            reason: Some(ev.reason.clone()),
            note: ev.note.clone(),
            event_time: Some(MicroTime(now)),
            regarding: Some(regarding.clone()),
            related: ev.secondary.clone(),
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            type_: Some(
                match ev.type_ {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .to_owned(),
            ),
            ..Default::default()
        };
        let api: Api<K8sEvent> = Api::namespaced(self.client.clone(), &namespace);
        api.create(&PostParams::default(), &event).await?;
        if let Ok(mut s) = self.series.lock() {
            s.created(key, namespace, name, Instant::now());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ev(reason: &str, note: &str) -> Event {
        Event {
            type_: EventType::Normal,
            reason: reason.into(),
            note: Some(note.into()),
            action: "Reconcile".into(),
            secondary: None,
        }
    }

    fn svc(name: &str) -> ObjectReference {
        ObjectReference {
            kind: Some("Service".into()),
            namespace: Some("shop".into()),
            name: Some(name.into()),
            uid: Some(format!("uid-{name}")),
            ..Default::default()
        }
    }

    #[test]
    fn a_repeat_within_the_window_counts_into_the_first_event() {
        let t0 = Instant::now();
        let mut s = Series::new(t0);
        let k = Series::key(&ev("IPAllocated", "10.0.0.1"), &svc("web"));
        assert_eq!(s.observe(k, t0), Write::Create);
        s.created(k, "shop".into(), "web.1".into(), t0);
        let repeat = |count| Write::Repeat {
            namespace: "shop".into(),
            name: "web.1".into(),
            count,
        };
        assert_eq!(s.observe(k, t0 + Duration::from_secs(10)), repeat(2));
        assert_eq!(s.observe(k, t0 + Duration::from_secs(20)), repeat(3));
        // The window runs from the last repeat, not from the first.
        assert_eq!(s.observe(k, t0 + Duration::from_secs(20 + 359)), repeat(4));
        assert_eq!(
            s.observe(k, t0 + Duration::from_secs(20 + 359 + 360)),
            Write::Create
        );
    }

    #[test]
    fn the_object_reason_and_note_each_make_another_event() {
        let k = Series::key(&ev("IPAllocated", "10.0.0.1"), &svc("web"));
        assert_ne!(k, Series::key(&ev("IPAllocated", "10.0.0.2"), &svc("web")));
        assert_ne!(k, Series::key(&ev("IPReleased", "10.0.0.1"), &svc("web")));
        assert_ne!(k, Series::key(&ev("IPAllocated", "10.0.0.1"), &svc("db")));
        let mut recreated = svc("web");
        recreated.uid = Some("uid-2".into());
        assert_ne!(k, Series::key(&ev("IPAllocated", "10.0.0.1"), &recreated));
        assert_eq!(k, Series::key(&ev("IPAllocated", "10.0.0.1"), &svc("web")));
    }

    #[test]
    fn old_entries_are_dropped_once_a_minute_and_memory_stays_bounded() {
        let t0 = Instant::now();
        let mut s = Series::new(t0);
        for i in 0..10_000 {
            let k = Series::key(&ev("IPAllocated", "x"), &svc(&format!("s{i}")));
            s.created(k, "shop".into(), format!("s{i}.1"), t0);
        }
        assert_eq!(s.len(), 10_000);
        // Within the minute nothing is walked; after the window, everything old goes.
        let k = Series::key(&ev("IPAllocated", "x"), &svc("new"));
        s.observe(k, t0 + Duration::from_secs(30));
        assert_eq!(s.len(), 10_000);
        s.observe(k, t0 + SERIES_WINDOW + Duration::from_secs(1));
        assert!(s.is_empty());
        // A forgotten Event (gone from the server) is created again.
        s.created(k, "shop".into(), "new.1".into(), t0);
        s.forget(k);
        assert_eq!(s.observe(k, t0), Write::Create);
    }
}
