//! The objects, one global resourceVersion counter, and the history of changes watches read.
//! Pure state behind one mutex: no I/O, no awaiting while it is held.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Mutex, MutexGuard};

use serde_json::{Value, json};
use tokio::sync::watch;

use super::admission;
use super::object::{meta_str, name_suffix, new_uid, now_unix, rfc3339};
use super::patch::PatchType;
use super::resources::{ResourceType, apply_defaults};
use super::selector::Selectors;
use super::status::ApiError;

/// What happened to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeType {
    /// Created.
    Added,
    /// Written.
    Modified,
    /// Removed.
    Deleted,
}

/// One change, as watches replay it.
#[derive(Debug, Clone)]
pub struct Change {
    /// The resourceVersion the change made.
    pub rv: u64,
    /// [`ResourceType::storage_key`] of the object.
    pub storage: String,
    /// What happened.
    pub kind: ChangeType,
    /// The object after the change (for deletions: as it was, with the deletion's version).
    pub object: Value,
    /// The object before a modification (selectors may stop or start matching).
    pub old: Option<Value>,
}

/// Which part of an object a write addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sub {
    /// The object (its `.status` is kept as it was when the type has a status subresource).
    Main,
    /// `/status`: only `.status` changes.
    Status,
}

type Key = (String, String, String);

struct Inner {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    history: VecDeque<Change>,
    /// Changes up to this version may be gone from `history`.
    compacted: u64,
    next_cluster_ip: u32,
    next_node_port: u16,
}

/// The in-memory object store.
pub struct Store {
    inner: Mutex<Inner>,
    notify: watch::Sender<u64>,
    history_limit: usize,
}

/// Namespaces every cluster has.
const INITIAL_NAMESPACES: [&str; 4] = ["default", "kube-system", "kube-public", "kube-node-lease"];

fn key(rt: &ResourceType, ns: &str, name: &str) -> Key {
    (rt.storage_key(), ns.to_owned(), name.to_owned())
}

fn set_meta(obj: &mut Value, field: &str, v: Value) {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    obj["metadata"][field] = v;
}

fn remove_meta(obj: &mut Value, field: &str) {
    if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove(field);
    }
}

fn finalizers_empty(obj: &Value) -> bool {
    obj.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_none_or(Vec::is_empty)
}

/// The object without metadata (and without status when status is a subresource): what
/// `metadata.generation` counts changes of.
fn spec_part(rt: &ResourceType, obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("metadata");
        if rt.status {
            m.remove("status");
        }
    }
    v
}

impl Store {
    /// An empty store holding the usual namespaces; `history_limit` changes are kept for
    /// watches (an older resourceVersion gets 410 Gone).
    pub fn new(history_limit: usize) -> Self {
        let (notify, _) = watch::channel(0);
        let store = Store {
            inner: Mutex::new(Inner {
                rv: 0,
                objects: BTreeMap::new(),
                history: VecDeque::new(),
                compacted: 0,
                next_cluster_ip: 10,
                next_node_port: 30000,
            }),
            notify,
            history_limit: history_limit.max(1),
        };
        let ns_type = super::resources::Registry::builtin()
            .find("", "v1", "namespaces")
            .cloned();
        if let Some(rt) = ns_type {
            for ns in INITIAL_NAMESPACES {
                let _ = store.create(&rt, "", json!({"metadata": {"name": ns}}));
            }
        }
        store
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave half-written state: every write is a
        // single insert or remove after all checks.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The latest resourceVersion.
    pub fn current_rv(&self) -> u64 {
        self.lock().rv
    }

    /// The oldest resourceVersion the history still covers (older continue tokens and
    /// watches get 410).
    pub fn oldest_rv(&self) -> u64 {
        self.lock().compacted
    }

    /// A receiver that changes whenever the store does.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.notify.subscribe()
    }

    /// Forgets the whole change history (a test hook for 410 Gone).
    pub fn compact(&self) {
        let mut inner = self.lock();
        inner.history.clear();
        inner.compacted = inner.rv;
    }

    /// The changes after `rv`, or 410 Gone when some of them are no longer kept.
    pub fn changes_since(&self, rv: u64) -> Result<Vec<Change>, ApiError> {
        let inner = self.lock();
        if rv < inner.compacted {
            return Err(ApiError::Gone {
                requested: rv,
                oldest: inner.compacted,
            });
        }
        // History is in version order: skip what the caller has seen without scanning it
        // (many watchers times a long history adds up in the benches).
        let start = inner.history.partition_point(|c| c.rv <= rv);
        Ok(inner.history.range(start..).cloned().collect())
    }

    /// One object.
    pub fn get(&self, rt: &ResourceType, ns: &str, name: &str) -> Result<Value, ApiError> {
        self.lock()
            .objects
            .get(&key(rt, ns, name))
            .cloned()
            .ok_or_else(|| not_found(rt, name))
    }

    /// The objects of a type (in one namespace or all), selected, with the list's version.
    pub fn list(&self, rt: &ResourceType, ns: Option<&str>, sel: &Selectors) -> (Vec<Value>, u64) {
        let inner = self.lock();
        let storage = rt.storage_key();
        let start = (storage.clone(), String::new(), String::new());
        let items = inner
            .objects
            .range(start..)
            .take_while(|((s, _, _), _)| *s == storage)
            .filter(|((_, n, _), _)| ns.is_none_or(|want| want == n))
            .filter(|(_, o)| sel.matches(o))
            .map(|(_, o)| o.clone())
            .collect();
        (items, inner.rv)
    }

    /// Creates an object (`ns` empty for cluster-scoped types).
    pub fn create(&self, rt: &ResourceType, ns: &str, obj: Value) -> Result<Value, ApiError> {
        let mut inner = self.lock();
        let out = self.insert_new(&mut inner, rt, ns, obj)?;
        drop(inner);
        Ok(out)
    }

    /// Replaces an object (PUT), or its status.
    pub fn update(
        &self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        obj: Value,
        sub: Sub,
    ) -> Result<Value, ApiError> {
        let mut inner = self.lock();
        let old = inner
            .objects
            .get(&key(rt, ns, name))
            .cloned()
            .ok_or_else(|| not_found(rt, name))?;
        self.replace_existing(&mut inner, rt, ns, name, old, obj, sub)
    }

    /// Patches an object or its status; server-side apply creates a missing object. Returns
    /// the object and whether it was created.
    #[allow(clippy::too_many_arguments)]
    pub fn patch(
        &self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        pt: PatchType,
        patch: &Value,
        sub: Sub,
    ) -> Result<(Value, bool), ApiError> {
        let mut inner = self.lock();
        let Some(old) = inner.objects.get(&key(rt, ns, name)).cloned() else {
            if pt == PatchType::Apply && sub == Sub::Main {
                let mut obj = patch.clone();
                if !obj.is_object() {
                    return Err(ApiError::BadRequest(
                        "an applied configuration must be an object".into(),
                    ));
                }
                if meta_str(&obj, "name").is_empty() {
                    set_meta(&mut obj, "name", json!(name));
                }
                if meta_str(&obj, "name") != name {
                    return Err(name_mismatch(meta_str(&obj, "name"), name));
                }
                return Ok((self.insert_new(&mut inner, rt, ns, obj)?, true));
            }
            return Err(not_found(rt, name));
        };
        let new = pt.apply(&old, patch).map_err(|e| match e {
            ApiError::Invalid { why, .. } => ApiError::Invalid {
                resource: rt.qualified(),
                name: name.to_owned(),
                why,
            },
            other => other,
        })?;
        Ok((
            self.replace_existing(&mut inner, rt, ns, name, old, new, sub)?,
            false,
        ))
    }

    /// Deletes an object: with finalizers it only gets a deletionTimestamp and goes when the
    /// last finalizer is removed. `options` is the DeleteOptions body (preconditions honoured).
    pub fn delete(
        &self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        options: &Value,
    ) -> Result<Value, ApiError> {
        let mut inner = self.lock();
        let k = key(rt, ns, name);
        let old = inner
            .objects
            .get(&k)
            .cloned()
            .ok_or_else(|| not_found(rt, name))?;
        for (field, what) in [("uid", "UID"), ("resourceVersion", "ResourceVersion")] {
            if let Some(want) = options
                .pointer(&format!("/preconditions/{field}"))
                .and_then(Value::as_str)
                && want != meta_str(&old, field)
            {
                return Err(ApiError::Conflict {
                    resource: rt.qualified(),
                    name: name.to_owned(),
                    why: format!(
                        "Precondition failed: {what} in precondition: {want}, {what} in object meta: {}",
                        meta_str(&old, field)
                    ),
                });
            }
        }
        if !finalizers_empty(&old) {
            if old.pointer("/metadata/deletionTimestamp").is_some() {
                return Ok(old);
            }
            let mut obj = old.clone();
            set_meta(&mut obj, "deletionTimestamp", json!(rfc3339(now_unix())));
            set_meta(&mut obj, "deletionGracePeriodSeconds", json!(0));
            return Ok(self.commit(&mut inner, rt, k, ChangeType::Modified, obj, Some(old)));
        }
        inner.objects.remove(&k);
        Ok(self.commit(&mut inner, rt, k, ChangeType::Deleted, old, None))
    }

    /// Stores (or for deletions, has removed) `obj` under a new resourceVersion, records the
    /// change and wakes watches.
    fn commit(
        &self,
        inner: &mut Inner,
        rt: &ResourceType,
        k: Key,
        kind: ChangeType,
        mut obj: Value,
        old: Option<Value>,
    ) -> Value {
        inner.rv += 1;
        let rv = inner.rv;
        set_meta(&mut obj, "resourceVersion", json!(rv.to_string()));
        if kind != ChangeType::Deleted {
            inner.objects.insert(k, obj.clone());
        }
        inner.history.push_back(Change {
            rv,
            storage: rt.storage_key(),
            kind,
            object: obj.clone(),
            old,
        });
        while inner.history.len() > self.history_limit {
            if let Some(c) = inner.history.pop_front() {
                inner.compacted = c.rv;
            }
        }
        self.notify.send_replace(rv);
        obj
    }

    fn insert_new(
        &self,
        inner: &mut Inner,
        rt: &ResourceType,
        ns: &str,
        mut obj: Value,
    ) -> Result<Value, ApiError> {
        check_type(rt, &obj)?;
        if !obj.get("metadata").is_some_and(Value::is_object) {
            obj["metadata"] = json!({});
        }
        let mut name = meta_str(&obj, "name").to_owned();
        if name.is_empty() {
            let prefix = meta_str(&obj, "generateName");
            if prefix.is_empty() {
                return Err(ApiError::Invalid {
                    resource: rt.qualified(),
                    name: String::new(),
                    why: "metadata.name: Required value: name or generateName is required".into(),
                });
            }
            name = format!("{prefix}{}", name_suffix());
        }
        if rt.namespaced {
            let body_ns = meta_str(&obj, "namespace");
            if !body_ns.is_empty() && body_ns != ns {
                return Err(ApiError::BadRequest(format!(
                    "the namespace of the provided object ({body_ns}) does not match the namespace sent on the request ({ns})"
                )));
            }
            if !inner
                .objects
                .contains_key(&("/namespaces".into(), String::new(), ns.to_owned()))
            {
                return Err(ApiError::NotFound {
                    resource: "namespaces".into(),
                    name: ns.to_owned(),
                });
            }
            set_meta(&mut obj, "namespace", json!(ns));
        } else {
            remove_meta(&mut obj, "namespace");
        }
        let k = key(rt, ns, &name);
        if inner.objects.contains_key(&k) {
            return Err(ApiError::AlreadyExists {
                resource: rt.qualified(),
                name,
            });
        }
        obj["apiVersion"] = json!(rt.api_version());
        obj["kind"] = json!(rt.kind);
        if rt.status
            && let Some(m) = obj.as_object_mut()
        {
            m.remove("status");
        }
        for f in [
            "managedFields",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "selfLink",
        ] {
            remove_meta(&mut obj, f);
        }
        set_meta(&mut obj, "name", json!(name));
        set_meta(&mut obj, "uid", json!(new_uid()));
        set_meta(&mut obj, "creationTimestamp", json!(rfc3339(now_unix())));
        set_meta(&mut obj, "generation", json!(1));
        defaults_on_create(inner, rt, &mut obj);
        if let Some(schema) = &rt.schema {
            apply_defaults(schema, &mut obj);
        }
        admit(rt, &name, &mut obj, None)?;
        Ok(self.commit(inner, rt, k, ChangeType::Added, obj, None))
    }

    #[allow(clippy::too_many_arguments)]
    fn replace_existing(
        &self,
        inner: &mut Inner,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        old: Value,
        new: Value,
        sub: Sub,
    ) -> Result<Value, ApiError> {
        check_type(rt, &new)?;
        let body_name = meta_str(&new, "name");
        if !body_name.is_empty() && body_name != name {
            return Err(name_mismatch(body_name, name));
        }
        let want_rv = meta_str(&new, "resourceVersion");
        if !want_rv.is_empty() && want_rv != meta_str(&old, "resourceVersion") {
            return Err(ApiError::Conflict {
                resource: rt.qualified(),
                name: name.to_owned(),
                why: "the object has been modified; please apply your changes to the latest version and try again".into(),
            });
        }
        let mut obj = match sub {
            Sub::Status => {
                let mut o = old.clone();
                match (o.as_object_mut(), new.get("status")) {
                    (Some(m), Some(s)) => {
                        m.insert("status".into(), s.clone());
                    }
                    (Some(m), None) => {
                        m.remove("status");
                    }
                    _ => {}
                }
                o
            }
            Sub::Main => {
                let mut o = new;
                if !o.get("metadata").is_some_and(Value::is_object) {
                    o["metadata"] = json!({});
                }
                if rt.status
                    && let Some(m) = o.as_object_mut()
                {
                    match old.get("status") {
                        Some(s) => m.insert("status".into(), s.clone()),
                        None => m.remove("status"),
                    };
                }
                // What clients cannot change with a write.
                for f in [
                    "name",
                    "namespace",
                    "uid",
                    "creationTimestamp",
                    "deletionTimestamp",
                    "deletionGracePeriodSeconds",
                    "generation",
                ] {
                    match old.pointer(&format!("/metadata/{f}")) {
                        Some(v) => set_meta(&mut o, f, v.clone()),
                        None => remove_meta(&mut o, f),
                    }
                }
                remove_meta(&mut o, "managedFields");
                o["apiVersion"] = json!(rt.api_version());
                o["kind"] = json!(rt.kind);
                defaults_on_update(rt, &old, &mut o);
                o
            }
        };
        set_meta(
            &mut obj,
            "resourceVersion",
            json!(meta_str(&old, "resourceVersion")),
        );
        if let Some(schema) = &rt.schema {
            apply_defaults(schema, &mut obj);
        }
        admit(rt, name, &mut obj, Some(&old))?;
        if obj == old {
            // A no-op write keeps the version (and wakes no watch), as the real server does.
            return Ok(old);
        }
        if spec_part(rt, &obj) != spec_part(rt, &old) {
            let g = old
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            set_meta(&mut obj, "generation", json!(g + 1));
        }
        let k = key(rt, ns, name);
        let written = self.commit(inner, rt, k.clone(), ChangeType::Modified, obj, Some(old));
        if written.pointer("/metadata/deletionTimestamp").is_some() && finalizers_empty(&written) {
            inner.objects.remove(&k);
            return Ok(self.commit(inner, rt, k, ChangeType::Deleted, written, None));
        }
        Ok(written)
    }
}

fn not_found(rt: &ResourceType, name: &str) -> ApiError {
    ApiError::NotFound {
        resource: rt.qualified(),
        name: name.to_owned(),
    }
}

fn name_mismatch(body: &str, url: &str) -> ApiError {
    ApiError::BadRequest(format!(
        "the name of the object ({body}) does not match the name on the URL ({url})"
    ))
}

/// The body must be an object of this kind and group (any version of the group).
/// Admission after defaulting: the CRD's schema (pruning, validation, CEL rules) and the
/// built-in checks; 422 Invalid with the real message otherwise.
fn admit(
    rt: &ResourceType,
    name: &str,
    obj: &mut Value,
    old: Option<&Value>,
) -> Result<(), ApiError> {
    let mut errs = match &rt.schema {
        Some(schema) => admission::admit(schema, obj, old),
        None => Vec::new(),
    };
    errs.extend(admission::validate_builtin(&rt.group, &rt.kind, obj));
    if errs.is_empty() {
        return Ok(());
    }
    Err(ApiError::InvalidFields {
        resource: if rt.group.is_empty() {
            rt.kind.clone()
        } else {
            format!("{}.{}", rt.kind, rt.group)
        },
        name: name.to_owned(),
        errors: errs,
    })
}

fn check_type(rt: &ResourceType, obj: &Value) -> Result<(), ApiError> {
    if !obj.is_object() {
        return Err(ApiError::BadRequest(
            "the body must be a JSON object".into(),
        ));
    }
    if let Some(kind) = obj.get("kind").and_then(Value::as_str)
        && kind != rt.kind
    {
        return Err(ApiError::BadRequest(format!(
            "the kind {kind} does not match the kind {} of the requested resource",
            rt.kind
        )));
    }
    if let Some(av) = obj.get("apiVersion").and_then(Value::as_str) {
        let group = av.rsplit_once('/').map(|(g, _)| g).unwrap_or("");
        if group != rt.group {
            return Err(ApiError::BadRequest(format!(
                "the apiVersion {av} does not match the group {:?} of the requested resource",
                rt.group
            )));
        }
    }
    Ok(())
}

/// What the real API server fills in on create for the types Berth reads: namespace and
/// Pod phases, a Service's cluster IP, type and node ports.
fn defaults_on_create(inner: &mut Inner, rt: &ResourceType, obj: &mut Value) {
    if !rt.group.is_empty() {
        return;
    }
    match rt.kind.as_str() {
        "Namespace" => obj["status"] = json!({"phase": "Active"}),
        "Pod" => obj["status"] = json!({"phase": "Pending"}),
        "Service" => {
            if !obj.get("spec").is_some_and(Value::is_object) {
                obj["spec"] = json!({});
            }
            let spec = &mut obj["spec"];
            let ty = spec
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("ClusterIP")
                .to_owned();
            spec["type"] = json!(ty);
            if ty != "ExternalName" && spec.get("clusterIP").and_then(Value::as_str).is_none() {
                let n = inner.next_cluster_ip;
                inner.next_cluster_ip += 1;
                let ip = format!("10.96.{}.{}", (n >> 8) & 0xff, n & 0xff);
                spec["clusterIP"] = json!(ip);
                spec["clusterIPs"] = json!([ip]);
            }
            let node_ports = matches!(ty.as_str(), "NodePort" | "LoadBalancer")
                && spec
                    .get("allocateLoadBalancerNodePorts")
                    .and_then(Value::as_bool)
                    != Some(false);
            if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
                for p in ports {
                    if p.get("protocol").is_none() {
                        p["protocol"] = json!("TCP");
                    }
                    if node_ports && p.get("nodePort").is_none() {
                        p["nodePort"] = json!(inner.next_node_port);
                        inner.next_node_port = inner.next_node_port.saturating_add(1);
                    }
                }
            }
            obj["status"] = json!({"loadBalancer": {}});
        }
        _ => {}
    }
}

/// A Service keeps its allocated cluster IP when an update leaves it out.
fn defaults_on_update(rt: &ResourceType, old: &Value, new: &mut Value) {
    if rt.group.is_empty() && rt.kind == "Service" {
        for f in ["clusterIP", "clusterIPs"] {
            if new.pointer(&format!("/spec/{f}")).is_none()
                && let Some(v) = old.pointer(&format!("/spec/{f}"))
                && new.get("spec").is_some_and(Value::is_object)
            {
                new["spec"][f] = v.clone();
            }
        }
    }
}
