//! An in-memory Kubernetes API server: a **test double** for the lab and the end-to-end
//! tests, not a Kubernetes implementation. It serves exactly what `berth-operator`,
//! `berth-agent` (kube-rs clients and kube-runtime watchers) and `kubectl` use, over HTTP/1.1,
//! plain or with TLS ([`Config::tls`]; kubectl sends bearer tokens only over TLS).
//!
//! What it implements:
//! - discovery: `/version`, `/api`, `/api/v1`, `/apis`, `/apis/<group>[/<version>]` in the
//!   legacy (unaggregated) form, which kubectl accepts; `/healthz`, `/readyz`, `/livez`.
//!   OpenAPI v3 (`/openapi/v3` and one document per group/version, see [`openapi`]) so plain
//!   `kubectl apply` works: kubectl learns the server validates fields and sends
//!   `fieldValidation=Strict`, which refuses fields a CRD's schema does not name with the real
//!   400 message. `/openapi/v2` is an empty document: kubectl's client-side validation (which
//!   it uses only for `kind: List` files) checks nothing.
//! - authentication and authorization when [`Config::admin_token`] is set (the lab sets it;
//!   without it every request is the admin's): bearer tokens (the admin's, in
//!   `system:masters`; ServiceAccount tokens from the TokenRequest API, `kubectl create
//!   token`), 401 without a valid token except on `/version` and the health endpoints, and RBAC
//!   from the stored Roles, ClusterRoles, RoleBindings and ClusterRoleBindings with the real
//!   403 message (see [`rbac`] for what of RBAC is implemented). Every refusal is printed
//!   (`REFUSED 403 <user>: <message>`) and listed at `/debug/berth/refusals`.
//! - built-in types: Namespace, Node, Service, Pod, Secret, ConfigMap, Endpoints, Event,
//!   ServiceAccount (core/v1), EndpointSlice, Lease, events.k8s.io Event, StatefulSet,
//!   Deployment, DaemonSet, Role, ClusterRole, RoleBinding, ClusterRoleBinding; custom
//!   resources read from CRD YAML files (group, names, scope, served versions, status
//!   subresource, printer columns, schema `default` values); the ServiceAccount `token`
//!   subresource (TokenRequest; tokens last as long as their ServiceAccount).
//! - verbs: list (label selectors with `=`, `==`, `!=`, `in`, `notin`, `key`, `!key`; field
//!   selectors on any dotted path), watch (replay from a resourceVersion, 410 Gone beyond the
//!   retained history, bookmarks, `sendInitialEvents`, `timeoutSeconds`), get, create
//!   (`generateName`, uid, creationTimestamp, generation), update (409 on a stale
//!   resourceVersion; spec changes bump generation), patch (merge, JSON patch; strategic merge
//!   and server-side apply approximated by merge patch), delete (finalizers give a
//!   deletionTimestamp; the object goes when its last finalizer does), the `/status`
//!   subresource, one global resourceVersion counter; no-op writes keep the version.
//! - `kubectl get` Tables (also on watches, `kubectl get -w`): CRD printer columns, Service
//!   and Event columns, NAME/AGE otherwise.
//! - admission: custom resources are pruned of unknown fields and validated against their
//!   CRD's OpenAPI schema and `x-kubernetes-validations` CEL rules (kube-cel) after defaulting,
//!   on create, update, patch and status writes, with the real field errors and 422
//!   (see [`admission`] for what of the schema is checked); Event notes longer than 1 KiB are
//!   refused as the real Event validation does.
//! - errors as `metav1.Status` (NotFound, AlreadyExists, Conflict, Invalid with
//!   `details.causes` from admission, BadRequest, Expired/410, MethodNotAllowed, Unauthorized,
//!   Forbidden).
//! - pagination: `limit` and `continue` on lists (and Tables), `remainingItemCount`; the
//!   token expires (410 Expired, the real message) once the history is compacted past its
//!   resourceVersion. Later pages show objects as they are then, not a snapshot (see
//!   [`paging`]).
//!
//! What it does not: client certificates, impersonation, aggregated ClusterRoles, RBAC
//! escalation checks, authorization before routing (a path that names no resource gets 404
//! where a real server answers an unauthorized user 403), token expiry and audiences, admission webhooks, validation of built-in
//! types (beyond the Event note limit), field management (`managedFields`, apply conflicts,
//! removal of fields a manager stopped applying), list merging by key in strategic merge
//! patch, `dryRun` (refused with 400), deletecollection, garbage collection and namespace
//! cascading deletion, protobuf, aggregated discovery, OpenAPI schemas of built-in kinds (no
//! `kubectl explain` for them), controllers (no Endpoints or EndpointSlices derived from Pods,
//! no scheduling, no kubelet). Namespaced objects need their Namespace to exist (`default`,
//! `kube-system`, `kube-public` and `kube-node-lease` always do). core/v1 and events.k8s.io
//! Events are stored separately; lists of core/v1 Events include the events.k8s.io ones
//! converted, so `kubectl describe` shows what the operator recorded (watches of core/v1
//! Events do not).

pub mod admission;
pub mod auth;
mod discovery;
mod events;
pub mod http;
mod object;
pub mod openapi;
pub mod paging;
pub mod patch;
pub mod protobuf;
pub mod rbac;
pub mod resources;
pub mod selector;
pub mod status;
pub mod store;
mod table;
pub mod watch;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

pub use http::Server;
pub use resources::{LoadError, Registry};
pub use store::Store;

/// Settings of a server.
#[derive(Debug, Clone)]
pub struct Config {
    /// How many changes are kept for watches to resume from.
    pub history_limit: usize,
    /// How often an idle watch with bookmarks gets one.
    pub bookmark_every: Duration,
    /// The longest a watch lasts (and the default when the client sets no timeout).
    pub max_watch: Duration,
    /// Print one line per request to stderr.
    pub log_requests: bool,
    /// The administrator's bearer token; with one, every request is authenticated and
    /// authorized by RBAC (see [`auth`]), without one nothing is.
    pub admin_token: Option<String>,
    /// Serve HTTPS with this certificate and key (PEM files) instead of plain HTTP. kubectl
    /// sends bearer tokens only over TLS, so authenticated use needs it.
    pub tls: Option<TlsFiles>,
}

/// The server's certificate and key (PEM files).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Certificate chain.
    pub cert: std::path::PathBuf,
    /// Private key.
    pub key: std::path::PathBuf,
}

/// Why the TLS files cannot serve.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {why}")]
pub struct TlsError {
    file: String,
    why: String,
}

/// A rustls server configuration (HTTP/1.1 by ALPN) from the files.
fn tls_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let err = |f: &Path, why: String| TlsError {
        file: f.display().to_string(),
        why,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|x| err(&files.cert, x.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|x| err(&files.cert, x.to_string()))?;
    let key =
        PrivateKeyDer::from_pem_file(&files.key).map_err(|x| err(&files.key, x.to_string()))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|x| err(&files.cert, x.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|x| err(&files.key, x.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

impl Default for Config {
    fn default() -> Self {
        Config {
            history_limit: 10_000,
            bookmark_every: Duration::from_secs(30),
            max_watch: Duration::from_secs(1800),
            log_requests: false,
            admin_token: None,
            tls: None,
        }
    }
}

impl Server {
    /// A server for the built-in types and the CRDs in `crds` (a directory of YAML files).
    pub fn new(crds: Option<&Path>, config: Config) -> Result<Arc<Self>, LoadError> {
        let mut registry = Registry::builtin();
        if let Some(dir) = crds {
            registry.load_crd_dir(dir)?;
        }
        let store = Arc::new(Store::new(config.history_limit));
        if let Some(rt) = registry.find("apiextensions.k8s.io", "v1", "customresourcedefinitions") {
            for crd in registry.crds() {
                // Two files defining one CRD: the API server serves the later (as loaded).
                let _ = store.create(rt, "", crd.clone());
            }
        }
        Ok(Arc::new(Server {
            registry,
            store,
            auth: auth::Auth::new(config.admin_token.clone()),
            config,
        }))
    }

    /// Serves connections from `listener` until the task is dropped (HTTPS when the config
    /// names TLS files).
    pub async fn serve(self: Arc<Self>, listener: TcpListener) -> Result<(), TlsError> {
        let tls = match &self.config.tls {
            Some(files) => Some(TlsAcceptor::from(tls_config(files)?)),
            None => None,
        };
        loop {
            let stream = match listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    // Out of descriptors and the like: wait rather than spin.
                    eprintln!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let me = self.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let me = me.clone();
                    async move { Ok::<_, std::convert::Infallible>(me.handle(req).await) }
                });
                match tls {
                    Some(acceptor) => {
                        // A client that never finishes its handshake holds only its own task.
                        let handshake =
                            tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream));
                        if let Ok(Ok(stream)) = handshake.await {
                            let _ = http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), svc)
                                .await;
                        }
                    }
                    None => {
                        let _ = http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), svc)
                            .await;
                    }
                }
            });
        }
    }

    /// Binds `addr` and serves in a background task; returns the bound address (use port 0
    /// in tests).
    pub async fn spawn(self: &Arc<Self>, addr: SocketAddr) -> std::io::Result<SocketAddr> {
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        if let Some(files) = &self.config.tls {
            tls_config(files).map_err(std::io::Error::other)?;
        }
        let me = self.clone();
        tokio::spawn(async move {
            if let Err(e) = me.serve(listener).await {
                eprintln!("the API server cannot serve TLS: {e}");
            }
        });
        Ok(local)
    }
}
