//! The in-memory API server (test double) driven by the clients Berth uses: kube-rs,
//! kube-runtime's watcher, and the real `kubectl`. No root needed: it listens on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use berth_e2e::apiserver::{Config, Server};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service};
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch,
    PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde_json::json;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A server on 127.0.0.1 with the repository's CRDs, and a kube client for it.
async fn start(config: Config) -> (Arc<Server>, Client, String) {
    let server = Server::new(Some(&repo().join("config/crd")), config).unwrap();
    let addr = server.spawn("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let url = format!("http://{addr}");
    let client = Client::try_from(kube::Config::new(url.parse().unwrap())).unwrap();
    (server, client, url)
}

async fn namespace(client: &Client, name: &str) {
    let ns: Api<Namespace> = Api::all(client.clone());
    ns.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": name}})).unwrap(),
    )
    .await
    .unwrap();
}

fn cm(name: &str, labels: serde_json::Value) -> ConfigMap {
    serde_json::from_value(
        json!({"metadata": {"name": name, "labels": labels}, "data": {"k": "v"}}),
    )
    .unwrap()
}

fn api_code<T: std::fmt::Debug>(r: Result<T, kube::Error>) -> (u16, String) {
    match r {
        Err(kube::Error::Api(s)) => (s.code, s.reason),
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// Awaits with a guard so a broken server fails the test instead of hanging it.
async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .expect("the API server did not answer in time")
}

#[tokio::test]
async fn create_get_and_list_with_label_selectors() {
    let (_s, client, _) = start(Config::default()).await;
    namespace(&client, "t").await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "t");
    let pp = PostParams::default();
    api.create(&pp, &cm("a", json!({"app": "web", "tier": "front"})))
        .await
        .unwrap();
    api.create(&pp, &cm("b", json!({"app": "db", "tier": "back"})))
        .await
        .unwrap();
    let c = api
        .create(&pp, &cm("c", json!({"app": "web"})))
        .await
        .unwrap();
    assert!(c.metadata.uid.is_some() && c.metadata.creation_timestamp.is_some());
    assert_eq!(c.metadata.generation, Some(1));

    let names = |l: kube::core::ObjectList<ConfigMap>| -> Vec<String> {
        l.items.iter().map(|o| o.name_any()).collect()
    };
    for (sel, want) in [
        ("app=web", vec!["a", "c"]),
        ("app!=web", vec!["b"]),
        ("tier in (front,back)", vec!["a", "b"]),
        ("tier notin (front)", vec!["b", "c"]),
        ("!tier", vec!["c"]),
        ("tier,app==web", vec!["a"]),
    ] {
        let l = api.list(&ListParams::default().labels(sel)).await.unwrap();
        assert!(l.metadata.resource_version.is_some());
        assert_eq!(names(l), want, "{sel}");
    }
    let l = api
        .list(&ListParams::default().fields("metadata.name=b"))
        .await
        .unwrap();
    assert_eq!(names(l), vec!["b"]);
    let all: Api<ConfigMap> = Api::all(client.clone());
    assert_eq!(
        all.list(&ListParams::default()).await.unwrap().items.len(),
        3
    );

    assert_eq!(api.get("a").await.unwrap().data.unwrap()["k"], "v");
    assert_eq!(api_code(api.get("nope").await), (404, "NotFound".into()));
    assert_eq!(
        api_code(api.create(&pp, &cm("a", json!({}))).await),
        (409, "AlreadyExists".into())
    );
    let missing_ns: Api<ConfigMap> = Api::namespaced(client.clone(), "absent");
    assert_eq!(
        api_code(missing_ns.create(&pp, &cm("x", json!({}))).await).0,
        404
    );

    let generated: ConfigMap =
        serde_json::from_value(json!({"metadata": {"generateName": "gen-"}})).unwrap();
    let g = api.create(&pp, &generated).await.unwrap();
    assert!(g.name_any().starts_with("gen-") && g.name_any().len() == 9);
}

#[tokio::test]
async fn a_stale_resource_version_conflicts() {
    let (_s, client, _) = start(Config::default()).await;
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    let pp = PostParams::default();
    let first = api.create(&pp, &cm("x", json!({}))).await.unwrap();
    let mut fresh = first.clone();
    fresh.data = Some([("k".to_owned(), "new".to_owned())].into());
    let written = api.replace("x", &pp, &fresh).await.unwrap();
    assert_ne!(written.resource_version(), first.resource_version());

    let mut stale = first.clone();
    stale.data = Some([("k".to_owned(), "lost".to_owned())].into());
    assert_eq!(
        api_code(api.replace("x", &pp, &stale).await),
        (409, "Conflict".into())
    );
    // A merge patch carrying a resourceVersion is conditional too (the operator relies on it).
    let patch =
        json!({"metadata": {"resourceVersion": first.resource_version(), "labels": {"a": "b"}}});
    assert_eq!(
        api_code(
            api.patch("x", &PatchParams::default(), &Patch::Merge(&patch))
                .await
        )
        .0,
        409
    );
    assert_eq!(api.get("x").await.unwrap().data.unwrap()["k"], "new");

    // A write that changes nothing keeps the version.
    let again = api.replace("x", &pp, &written).await.unwrap();
    assert_eq!(again.resource_version(), written.resource_version());
}

#[tokio::test]
async fn status_is_a_subresource() {
    let (_s, client, _) = start(Config::default()).await;
    namespace(&client, "demo").await;
    let api: Api<Service> = Api::namespaced(client.clone(), "demo");
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]},
        "status": {"loadBalancer": {"ingress": [{"ip": "1.1.1.1"}]}}
    }))
    .unwrap();
    let created = api.create(&PostParams::default(), &svc).await.unwrap();
    // Status on create is dropped; the cluster IP and node port are allocated.
    assert!(
        created
            .status
            .unwrap()
            .load_balancer
            .unwrap()
            .ingress
            .is_none()
    );
    let spec = created.spec.unwrap();
    assert!(spec.cluster_ip.is_some());
    assert!(spec.ports.unwrap()[0].node_port.is_some());

    let pp = PatchParams::default();
    let status = json!({"status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.1", "ipMode": "VIP"}]}},
                        "spec": {"type": "ClusterIP"}});
    let s = api
        .patch_status("web", &pp, &Patch::Merge(&status))
        .await
        .unwrap();
    assert_eq!(
        s.spec.as_ref().unwrap().type_.as_deref(),
        Some("LoadBalancer")
    );
    let ingress = s.status.unwrap().load_balancer.unwrap().ingress.unwrap();
    assert_eq!(ingress[0].ip.as_deref(), Some("198.51.100.1"));
    assert_eq!(s.metadata.generation, Some(1));

    // A write of the main resource ignores .status and bumps generation on a spec change.
    let main = json!({"spec": {"externalTrafficPolicy": "Local"}, "status": {"loadBalancer": {}}});
    let m = api.patch("web", &pp, &Patch::Merge(&main)).await.unwrap();
    assert_eq!(m.metadata.generation, Some(2));
    assert!(m.status.unwrap().load_balancer.unwrap().ingress.is_some());

    // Custom resources: the same through the CRD's status subresource.
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("berth.dev", "v1alpha1", "Eip"),
        "eips",
    );
    let eips: Api<DynamicObject> = Api::all_with(client, &ar);
    let eip: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "berth.dev/v1alpha1", "kind": "Eip",
        "metadata": {"name": "pool"}, "spec": {"address": "10.0.0.0/28"}
    }))
    .unwrap();
    eips.create(&PostParams::default(), &eip).await.unwrap();
    let st = json!({"status": {"ready": true, "usage": "0/16"}});
    let e = eips
        .patch_status("pool", &pp, &Patch::Merge(&st))
        .await
        .unwrap();
    assert_eq!(e.data["status"]["usage"], "0/16");
    assert_eq!(e.data["spec"]["address"], "10.0.0.0/28");
    // The CRD schema's defaults are filled in, as a real API server does.
    assert_eq!(e.data["spec"]["disable"], false);
    let jp = json!([{"op": "replace", "path": "/status/usage", "value": "1/16"}]);
    let e = eips
        .patch_status(
            "pool",
            &pp,
            &Patch::<()>::Json(serde_json::from_value(jp).unwrap()),
        )
        .await
        .unwrap();
    assert_eq!(e.data["status"]["usage"], "1/16");
}

#[tokio::test]
async fn finalizers_hold_a_deleted_object_until_removed() {
    let (_s, client, _) = start(Config::default()).await;
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    let mut obj = cm("held", json!({}));
    obj.metadata.finalizers = Some(vec!["berth.dev/test".into()]);
    api.create(&PostParams::default(), &obj).await.unwrap();

    let deleted = api.delete("held", &DeleteParams::default()).await.unwrap();
    let still = deleted.left().expect("the object, not a Status");
    assert!(still.metadata.deletion_timestamp.is_some());
    let got = api.get("held").await.unwrap();
    assert!(got.metadata.deletion_timestamp.is_some());

    let patch = json!({"metadata": {"finalizers": null}});
    api.patch("held", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    assert_eq!(api_code(api.get("held").await).0, 404);

    // Without finalizers a delete removes at once.
    api.create(&PostParams::default(), &cm("free", json!({})))
        .await
        .unwrap();
    api.delete("free", &DeleteParams::default()).await.unwrap();
    assert_eq!(api_code(api.get("free").await).0, 404);
}

#[tokio::test]
async fn watch_streams_changes_and_bookmarks() {
    let config = Config {
        bookmark_every: Duration::from_millis(200),
        ..Config::default()
    };
    let (_s, client, _) = start(config).await;
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    let rv = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let wp = WatchParams::default()
        .labels("app=web")
        .timeout(30)
        .disable_bookmarks();
    let mut events = api.watch(&wp, &rv).await.unwrap().boxed();
    let pp = PostParams::default();
    api.create(&pp, &cm("w", json!({"app": "web"})))
        .await
        .unwrap();
    api.create(&pp, &cm("other", json!({"app": "db"})))
        .await
        .unwrap();
    api.patch(
        "w",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"k": "2"}})),
    )
    .await
    .unwrap();
    api.delete("w", &DeleteParams::default()).await.unwrap();
    let mut seen = Vec::new();
    for _ in 0..3 {
        match within(events.try_next()).await.unwrap().unwrap() {
            WatchEvent::Added(o) => seen.push(format!("ADDED {}", o.name_any())),
            WatchEvent::Modified(o) => seen.push(format!(
                "MODIFIED {} {}",
                o.name_any(),
                o.data.unwrap()["k"]
            )),
            WatchEvent::Deleted(o) => seen.push(format!("DELETED {}", o.name_any())),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seen, ["ADDED w", "MODIFIED w 2", "DELETED w"]);

    // kube-rs asks for bookmarks by default.
    let wp = WatchParams::default().timeout(30);
    let mut events = api.watch(&wp, &rv).await.unwrap().boxed();
    let mut bookmark = None;
    while bookmark.is_none() {
        if let WatchEvent::Bookmark(b) = within(events.try_next()).await.unwrap().unwrap() {
            bookmark = Some(b.metadata.resource_version);
        }
    }
    let latest = api.list(&ListParams::default()).await.unwrap();
    assert_eq!(bookmark, latest.metadata.resource_version);
}

#[tokio::test]
async fn a_resource_version_older_than_the_history_is_gone() {
    let (server, client, _) = start(Config::default()).await;
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    api.create(&PostParams::default(), &cm("a", json!({})))
        .await
        .unwrap();
    server.store.compact();
    let mut events = api
        .watch(&WatchParams::default().timeout(10), "1")
        .await
        .unwrap()
        .boxed();
    match within(events.try_next()).await.unwrap().unwrap() {
        WatchEvent::Error(e) => assert_eq!((e.code, e.reason.as_str()), (410, "Expired")),
        other => panic!("expected 410 Gone, got {other:?}"),
    }
}

#[tokio::test]
async fn kube_runtime_watcher_lists_then_follows() {
    let (_s, client, _) = start(Config::default()).await;
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    let pp = PostParams::default();
    api.create(&pp, &cm("before", json!({"app": "web"})))
        .await
        .unwrap();
    let mut stream = watcher(api.clone(), watcher::Config::default().labels("app=web")).boxed();
    let mut next = async || within(stream.try_next()).await.unwrap().unwrap();
    assert!(matches!(next().await, watcher::Event::Init));
    match next().await {
        watcher::Event::InitApply(o) => assert_eq!(o.name_any(), "before"),
        other => panic!("expected InitApply, got {other:?}"),
    }
    assert!(matches!(next().await, watcher::Event::InitDone));
    api.create(&pp, &cm("after", json!({"app": "web"})))
        .await
        .unwrap();
    match next().await {
        watcher::Event::Apply(o) => assert_eq!(o.name_any(), "after"),
        other => panic!("expected Apply, got {other:?}"),
    }
    api.delete("before", &DeleteParams::default())
        .await
        .unwrap();
    match next().await {
        watcher::Event::Delete(o) => assert_eq!(o.name_any(), "before"),
        other => panic!("expected Delete, got {other:?}"),
    }
}

fn kubectl(kubeconfig: &Path, cache: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--cache-dir")
        .arg(cache)
        .args(args)
        .output()
        .expect("kubectl runs");
    assert!(
        out.status.success(),
        "kubectl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_applies_the_lab_examples_and_prints_columns() {
    if std::process::Command::new("kubectl")
        .arg("version")
        .arg("--client")
        .output()
        .is_err()
    {
        assert!(std::env::var_os("CI").is_none(), "CI must have kubectl");
        eprintln!("skipped: kubectl is not installed");
        return;
    }
    let (_s, _client, url) = start(Config::default()).await;
    let dir = berth_e2e::test_dir("apiserver-kubectl").unwrap();
    std::fs::create_dir_all(&dir).unwrap();
    let kc = dir.join("kubeconfig");
    std::fs::write(
        &kc,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: t\n  cluster: {{server: \"{url}\"}}\nusers:\n- name: t\n  user: {{}}\ncontexts:\n- name: t\n  context: {{cluster: t, user: t}}\ncurrent-context: t\n"
        ),
    )
    .unwrap();
    let cache = dir.join("cache");
    let examples = repo().join("examples/lab").display().to_string();
    let outputs = tokio::task::spawn_blocking(move || {
        let k = |args: &[&str]| kubectl(&kc, &cache, args);
        let applied = k(&[
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            &examples,
        ]);
        // Again: applying what exists is a patch.
        k(&[
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            &examples,
        ]);
        k(&[
            "patch",
            "node",
            "node1",
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"addresses":[{"type":"InternalIP","address":"10.0.0.11"}]}}"#,
        ]);
        let node = k(&[
            "get",
            "node",
            "node1",
            "-o",
            "jsonpath={.status.addresses[0].address}",
        ]);
        let eips = k(&["get", "eip"]);
        let eips_wide = k(&["get", "beip", "-o", "wide"]);
        let svcs = k(&["get", "svc", "-A", "-o", "wide"]);
        let peers = k(&["get", "bgppeer"]);
        let _ = std::fs::remove_dir_all(&dir);
        (applied, node, eips, eips_wide, svcs, peers)
    })
    .await
    .unwrap();
    let (applied, node, eips, eips_wide, svcs, peers) = outputs;
    assert!(
        applied.contains("eip.berth.dev/lab-bgp serverside-applied"),
        "{applied}"
    );
    assert!(
        applied.contains("service/web serverside-applied"),
        "{applied}"
    );
    assert_eq!(node, "10.0.0.11");
    let header = eips.lines().next().unwrap_or("");
    for h in [
        "NAME", "ADDRESS", "PROTOCOL", "USAGE", "TOTAL", "READY", "AGE",
    ] {
        assert!(header.contains(h), "{eips}");
    }
    assert!(!header.contains("DISABLED"), "{eips}");
    assert!(eips.contains("lab-bgp") && eips.contains("198.51.100.0/28") && eips.contains("bgp"));
    assert!(eips.contains("10.0.0.240-10.0.0.247") && eips.contains("layer2"));
    assert!(
        eips_wide.lines().next().unwrap_or("").contains("DISABLED"),
        "{eips_wide}"
    );
    let svc_header = svcs.lines().next().unwrap_or("");
    for h in [
        "NAMESPACE",
        "NAME",
        "TYPE",
        "CLUSTER-IP",
        "EXTERNAL-IP",
        "PORT(S)",
        "AGE",
        "SELECTOR",
    ] {
        assert!(svc_header.contains(h), "{svcs}");
    }
    let web = svcs.lines().find(|l| l.contains(" web ")).unwrap_or("");
    assert!(
        web.starts_with("demo")
            && web.contains("LoadBalancer")
            && web.contains("<pending>")
            && web.contains("app=web"),
        "{svcs}"
    );
    assert!(
        peers.contains("PEER") && peers.contains("10.0.0.1") && peers.contains("64513"),
        "{peers}"
    );
}

#[tokio::test]
async fn kube_runtime_streaming_list_gets_initial_events_and_their_end() {
    let (_s, client, _) = start(Config::default()).await;
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    let pp = PostParams::default();
    api.create(&pp, &cm("one", json!({}))).await.unwrap();
    api.create(&pp, &cm("two", json!({}))).await.unwrap();
    let config = watcher::Config::default().streaming_lists();
    let mut stream = watcher(api.clone(), config).boxed();
    // A streaming list has no Init: the watch's ADDED events are the initial state.
    let mut next = async || within(stream.try_next()).await.unwrap().unwrap();
    let mut names = Vec::new();
    loop {
        match next().await {
            watcher::Event::InitApply(o) => names.push(o.name_any()),
            watcher::Event::InitDone => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(names, ["one", "two"]);
    api.create(&pp, &cm("three", json!({}))).await.unwrap();
    assert!(matches!(next().await, watcher::Event::Apply(o) if o.name_any() == "three"));
}

#[tokio::test]
async fn recorder_events_are_listed_as_core_events_for_kubectl_describe() {
    use kube::runtime::events::{Event, EventType, Recorder, Reporter};
    let (_s, client, _) = start(Config::default()).await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let obj = api
        .create(&PostParams::default(), &cm("noted", json!({})))
        .await
        .unwrap();
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "berth-operator".into(),
            instance: Some("berth-operator-0".into()),
        },
    );
    let ev = Event {
        type_: EventType::Warning,
        reason: "AllocationFailed".into(),
        note: Some("pool lab exhausted".into()),
        action: "Allocate".into(),
        secondary: None,
    };
    let reference = obj.object_ref(&());
    recorder.publish(&ev, &reference).await.unwrap();
    // The second time is a series: a merge patch of the same Event.
    recorder.publish(&ev, &reference).await.unwrap();

    let core: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client, "default");
    let selector = format!(
        "involvedObject.name=noted,involvedObject.kind=ConfigMap,involvedObject.uid={}",
        obj.uid().unwrap()
    );
    let listed = core
        .list(&ListParams::default().fields(&selector))
        .await
        .unwrap()
        .items;
    assert_eq!(listed.len(), 1);
    let e = &listed[0];
    assert_eq!(e.reason.as_deref(), Some("AllocationFailed"));
    assert_eq!(e.message.as_deref(), Some("pool lab exhausted"));
    assert_eq!(e.type_.as_deref(), Some("Warning"));
    assert_eq!(e.count, Some(2));
    let other = core
        .list(&ListParams::default().fields("involvedObject.name=else"))
        .await
        .unwrap();
    assert!(other.items.is_empty());
}

/// A kube client for `url` with a bearer token (or none).
fn client_with_token(url: &str, token: Option<&str>) -> Client {
    let mut config = kube::Config::new(url.parse().unwrap());
    config.auth_info.token = token.map(|t| t.to_owned().into());
    Client::try_from(config).unwrap()
}

/// A token for a ServiceAccount through the TokenRequest API, as `kubectl create token` gets it.
async fn sa_token(admin: &Client, ns: &str, name: &str) -> String {
    let sas: Api<k8s_openapi::api::core::v1::ServiceAccount> = Api::namespaced(admin.clone(), ns);
    let tr: k8s_openapi::api::authentication::v1::TokenRequest = serde_json::from_value(
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"audiences": []}}),
    )
    .unwrap();
    let out = sas
        .create_token_request(name, &PostParams::default(), &tr)
        .await
        .unwrap();
    out.status.unwrap().token
}

#[tokio::test]
async fn rbac_allows_what_roles_grant_and_refuses_the_rest_with_the_real_message() {
    let config = Config {
        admin_token: Some("admin-secret".into()),
        ..Config::default()
    };
    let (server, anonymous, url) = start(config).await;
    let admin = client_with_token(&url, Some("admin-secret"));
    within(async {
        namespace(&admin, "berth-system").await;
        namespace(&admin, "demo").await;
        let apply = |kind: &str, body: serde_json::Value| {
            let admin = admin.clone();
            let kind = kind.to_owned();
            async move {
                let (plural, namespaced) = match kind.as_str() {
                    "ClusterRole" => ("clusterroles", false),
                    "ClusterRoleBinding" => ("clusterrolebindings", false),
                    "Role" => ("roles", true),
                    _ => ("rolebindings", true),
                };
                let ar = ApiResource::from_gvk_with_plural(
                    &GroupVersionKind::gvk("rbac.authorization.k8s.io", "v1", &kind),
                    plural,
                );
                let api: Api<DynamicObject> = if namespaced {
                    Api::namespaced_with(admin, "berth-system", &ar)
                } else {
                    Api::all_with(admin, &ar)
                };
                let mut body = body;
                body["apiVersion"] = json!("rbac.authorization.k8s.io/v1");
                body["kind"] = json!(kind);
                api.create(&PostParams::default(), &serde_json::from_value(body).unwrap())
                    .await
                    .unwrap();
            }
        };
        let sas: Api<k8s_openapi::api::core::v1::ServiceAccount> =
            Api::namespaced(admin.clone(), "berth-system");
        sas.create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "berth-operator"}})).unwrap(),
        )
        .await
        .unwrap();
        apply("ClusterRole", json!({"metadata": {"name": "op"}, "rules": [
            {"apiGroups": [""], "resources": ["services"], "verbs": ["list", "watch"]},
        ]}))
        .await;
        apply("ClusterRoleBinding", json!({"metadata": {"name": "op"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "op"},
            "subjects": [{"kind": "ServiceAccount", "name": "berth-operator", "namespace": "berth-system"}]}))
        .await;
        apply("Role", json!({"metadata": {"name": "op"}, "rules": [
            {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["mine"], "verbs": ["get"]},
        ]}))
        .await;
        apply("RoleBinding", json!({"metadata": {"name": "op"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "op"},
            "subjects": [{"kind": "ServiceAccount", "name": "berth-operator"}]}))
        .await;
        let svcs: Api<Service> = Api::namespaced(admin.clone(), "demo");
        svcs.create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "web"}, "spec": {"ports": [{"port": 80}]}}))
                .unwrap(),
        )
        .await
        .unwrap();
        let cms: Api<ConfigMap> = Api::namespaced(admin.clone(), "berth-system");
        for n in ["mine", "other"] {
            cms.create(&PostParams::default(), &cm(n, json!({}))).await.unwrap();
        }

        let token = sa_token(&admin, "berth-system", "berth-operator").await;
        let op = client_with_token(&url, Some(&token));
        // Granted: list and watch of Services everywhere, get of one named ConfigMap.
        let all: Api<Service> = Api::all(op.clone());
        assert_eq!(all.list(&ListParams::default()).await.unwrap().items.len(), 1);
        let mut w = all
            .watch(&WatchParams::default().timeout(1), "0")
            .await
            .unwrap()
            .boxed();
        assert!(w.try_next().await.is_ok());
        let op_cms: Api<ConfigMap> = Api::namespaced(op.clone(), "berth-system");
        op_cms.get("mine").await.unwrap();

        // Refused: a verb, a subresource, a name and a namespace the roles do not grant.
        let in_demo: Api<Service> = Api::namespaced(op.clone(), "demo");
        let refused = |r: Result<Service, kube::Error>| match r {
            Err(kube::Error::Api(s)) => (s.code, s.reason, s.message),
            other => panic!("expected 403, got {other:?}"),
        };
        let (code, reason, message) = refused(in_demo.get("web").await);
        assert_eq!((code, reason.as_str()), (403, "Forbidden"));
        assert_eq!(
            message,
            r#"services "web" is forbidden: User "system:serviceaccount:berth-system:berth-operator" cannot get resource "services" in API group "" in the namespace "demo""#
        );
        let (code, _, message) = refused(
            in_demo
                .patch_status(
                    "web",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"status": {}})),
                )
                .await,
        );
        assert_eq!(code, 403);
        assert!(message.contains(r#"cannot patch resource "services/status""#), "{message}");
        assert_eq!(api_code(op_cms.get("other").await).0, 403);
        let elsewhere: Api<ConfigMap> = Api::namespaced(op.clone(), "demo");
        assert_eq!(api_code(elsewhere.get("mine").await).0, 403);
        assert_eq!(api_code(op_cms.list(&ListParams::default()).await).0, 403);

        // Without a valid token: 401.
        let anon: Api<Service> = Api::all(anonymous.clone());
        assert_eq!(api_code(anon.list(&ListParams::default()).await).0, 401);
        let forged: Api<Service> = Api::all(client_with_token(&url, Some("forged")));
        assert_eq!(api_code(forged.list(&ListParams::default()).await).0, 401);
        // A token dies with its ServiceAccount.
        sas.delete("berth-operator", &DeleteParams::default()).await.unwrap();
        assert_eq!(api_code(all.list(&ListParams::default()).await).0, 401);

        let refusals = server.auth.refusals();
        assert_eq!(
            refusals.iter().filter(|r| r.code == 403).count(),
            5,
            "{refusals:?}"
        );
        assert_eq!(refusals.iter().filter(|r| r.code == 401).count(), 3);
    })
    .await;
}

/// kubectl's output (stdout and stderr) and whether it succeeded.
fn kubectl_result(kubeconfig: &Path, cache: &Path, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--cache-dir")
        .arg(cache)
        .args(args)
        .output()
        .expect("kubectl runs");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Admission of custom resources: kubectl apply of an Eip whose address no CEL rule accepts is
/// refused with 422 and the rule's message as a real API server words it; schema errors and
/// pruning of unknown fields likewise; a valid Eip is stored with its defaults.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_resources_are_admitted_by_their_schema_and_cel_rules() {
    if std::process::Command::new("kubectl")
        .arg("version")
        .arg("--client")
        .output()
        .is_err()
    {
        assert!(std::env::var_os("CI").is_none(), "CI must have kubectl");
        eprintln!("skipped: kubectl is not installed");
        return;
    }
    let (_s, client, url) = start(Config::default()).await;
    let dir = berth_e2e::test_dir("apiserver-admission").unwrap();
    std::fs::create_dir_all(&dir).unwrap();
    let kc = dir.join("kubeconfig");
    std::fs::write(
        &kc,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: t\n  cluster: {{server: \"{url}\"}}\nusers:\n- name: t\n  user: {{}}\ncontexts:\n- name: t\n  context: {{cluster: t, user: t}}\ncurrent-context: t\n"
        ),
    )
    .unwrap();
    let cache = dir.join("cache");
    let file = |name: &str, yaml: &str| {
        let f = dir.join(name);
        std::fs::write(&f, yaml).unwrap();
        f.display().to_string()
    };
    let bad = file(
        "bad.yaml",
        "apiVersion: berth.dev/v1alpha1\nkind: Eip\nmetadata: {name: bad}\nspec: {address: 300.1.1.1/24}\n",
    );
    let typo = file(
        "typo.yaml",
        "apiVersion: berth.dev/v1alpha1\nkind: Eip\nmetadata: {name: typo}\nspec: {address: 10.9.0.0/24, protocol: ospf}\n",
    );
    let unknown = file(
        "unknown.yaml",
        "apiVersion: berth.dev/v1alpha1\nkind: Eip\nmetadata: {name: unknown}\nspec: {address: 10.9.1.0/24, colour: blue}\n",
    );
    let (kc2, cache2) = (kc.clone(), cache.clone());
    // Plain kubectl apply: validation on, as users run it.
    let (bad_out, typo_out, unknown_out, unknown_ssa) = tokio::task::spawn_blocking(move || {
        let k = |args: &[&str]| kubectl_result(&kc2, &cache2, args);
        (
            k(&["apply", "-f", &bad]),
            k(&["apply", "-f", &typo]),
            k(&["apply", "-f", &unknown]),
            k(&["apply", "--server-side", "-f", &unknown]),
        )
    })
    .await
    .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!bad_out.0, "300.1.1.1/24 was accepted: {}", bad_out.1);
    assert!(
        bad_out.1.contains(r#"spec.address: Invalid value: "string": spec.address must be an IP (10.0.0.5), a CIDR (10.0.0.0/24, fd00::/120) or a range of one family (10.0.0.10-10.0.0.20)"#),
        "{}",
        bad_out.1
    );
    assert!(bad_out.1.contains("is invalid"), "{}", bad_out.1);
    assert!(!typo_out.0, "protocol ospf was accepted: {}", typo_out.1);
    assert!(
        typo_out
            .1
            .contains(r#"spec.protocol: Unsupported value: "ospf": supported values: "#),
        "{}",
        typo_out.1
    );
    // kubectl's field validation: the server reports the unknown field (Strict).
    assert!(!unknown_out.0, "an unknown field passed: {}", unknown_out.1);
    assert!(
        unknown_out
            .1
            .contains(r#"strict decoding error: unknown field "spec.colour""#),
        "{}",
        unknown_out.1
    );
    assert!(
        !unknown_ssa.0
            && unknown_ssa
                .1
                .contains(".spec.colour: field not declared in schema"),
        "{}",
        unknown_ssa.1
    );
    // A client that asks for no field validation gets the unknown field pruned.
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("berth.dev", "v1alpha1", "Eip"),
        "eips",
    );
    let eips: Api<DynamicObject> = Api::all_with(client, &ar);
    eips.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "apiVersion": "berth.dev/v1alpha1", "kind": "Eip",
            "metadata": {"name": "good"},
            "spec": {"address": "10.9.1.0/24", "colour": "blue"},
        }))
        .unwrap(),
    )
    .await
    .unwrap();
    let stored = eips.get("good").await.unwrap();
    assert_eq!(stored.data["spec"]["address"], "10.9.1.0/24");
    assert!(
        stored.data["spec"].get("colour").is_none(),
        "unknown field kept: {:?}",
        stored.data
    );
    assert!(eips.get("bad").await.is_err());
}

/// Lists in pages: `limit` and `continue` cover every object once, and a continue token older
/// than the retained history gets 410 Expired (the client lists again), as etcd's compaction
/// does to a real server's tokens.
#[tokio::test]
async fn lists_are_paginated_and_continue_tokens_expire() {
    let (server, client, _) = start(Config::default()).await;
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    for i in 0..5 {
        api.create(&PostParams::default(), &cm(&format!("cm{i}"), json!({})))
            .await
            .unwrap();
    }
    let first = api.list(&ListParams::default().limit(2)).await.unwrap();
    assert_eq!(first.items.len(), 2);
    assert_eq!(first.metadata.remaining_item_count, Some(3));
    let mut names: Vec<String> = first.items.iter().map(|o| o.name_any()).collect();
    let mut token = first.metadata.continue_;
    while let Some(t) = token.filter(|t| !t.is_empty()) {
        let page = api
            .list(&ListParams::default().limit(2).continue_token(&t))
            .await
            .unwrap();
        assert_eq!(
            page.metadata.resource_version,
            first.metadata.resource_version
        );
        names.extend(page.items.iter().map(|o| o.name_any()));
        token = page.metadata.continue_;
    }
    assert_eq!(names, ["cm0", "cm1", "cm2", "cm3", "cm4"]);

    let page = api.list(&ListParams::default().limit(2)).await.unwrap();
    let t = page.metadata.continue_.unwrap();
    // A write, then the history is compacted past the token's version.
    api.create(&PostParams::default(), &cm("late", json!({})))
        .await
        .unwrap();
    server.store.compact();
    match api
        .list(&ListParams::default().limit(2).continue_token(&t))
        .await
    {
        Err(kube::Error::Api(s)) => {
            assert_eq!((s.code, s.reason.as_str()), (410, "Expired"));
            assert!(
                s.message
                    .starts_with("The provided continue parameter is too old")
            );
        }
        other => panic!("expected 410 Expired, got {other:?}"),
    }
    assert_eq!(
        api_code(
            api.list(&ListParams::default().continue_token("forged"))
                .await
        )
        .0,
        400
    );
}

/// An Event whose note is longer than 1 KiB is refused with 422, as the real Event
/// validation refuses it (kube-rs's recorder must truncate; the operator's notes are short).
#[tokio::test]
async fn event_notes_over_one_kib_are_refused() {
    let (_s, client, _) = start(Config::default()).await;
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("events.k8s.io", "v1", "Event"),
        "events",
    );
    let events: Api<DynamicObject> = Api::namespaced_with(client, "default", &ar);
    let event = |name: &str, note: String| -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"name": name},
            "eventTime": "2026-01-01T00:00:00.000000Z",
            "reportingController": "berth.dev/operator", "reportingInstance": "x",
            "action": "Allocate", "reason": "Allocated", "type": "Normal",
            "note": note,
        }))
        .unwrap()
    };
    events
        .create(&PostParams::default(), &event("ok", "n".repeat(1024)))
        .await
        .unwrap();
    match events
        .create(&PostParams::default(), &event("long", "n".repeat(1025)))
        .await
    {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 422);
            assert!(
                s.message
                    .ends_with("message: Invalid value: \"\": can have at most 1024 characters"),
                "{}",
                s.message
            );
        }
        other => panic!("expected 422, got {other:?}"),
    }
}
