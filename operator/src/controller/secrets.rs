//! Reads the Secrets BgpPeers name (TCP MD5 passwords), one `get` each: when a BgpPeer
//! changes, and every [`REFRESH_EVERY`] so a rotated password reaches the speakers without
//! any watch. Least privilege: the operator's Role needs `get` on those Secrets only, not
//! list/watch of every Secret in Berth's namespace (its TLS and gossip keys among them).
//! What each outcome means for a peer is decided in [`crate::passwords`].

use std::sync::Arc;
use std::time::Duration;

use berth_api::BgpPeer;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::reflector::Store;
use kube::{Api, Client};
use tracing::{debug, warn};

use super::{Shared, SyncEvent};
use crate::passwords::{Fetched, wanted};

/// How often every named Secret is read again, so a rotated password is used within this.
pub const REFRESH_EVERY: Duration = Duration::from_secs(30);
/// The longest one read may take.
const GET_TIMEOUT: Duration = Duration::from_secs(10);
/// Reads in flight at once.
const PARALLEL: usize = 8;

/// Reads every Secret the peers in `peers` name (in `namespace`) into the shared cache and
/// forgets the others; true when a password changed.
pub async fn refresh(
    client: &Client,
    namespace: &str,
    peers: &Store<BgpPeer>,
    shared: &Shared,
) -> bool {
    let refs: Vec<_> = peers
        .state()
        .iter()
        .filter_map(|p| p.spec.password_secret_ref.clone())
        .collect();
    let names = wanted(&refs, namespace);
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let outcomes: Vec<(String, Fetched)> = futures::stream::iter(names.iter().cloned())
        .map(|name| {
            let api = api.clone();
            async move {
                let f = fetch(&api, &name).await;
                (name, f)
            }
        })
        .buffer_unordered(PARALLEL)
        .collect()
        .await;
    let Ok(mut cache) = shared.secrets.lock() else {
        return false;
    };
    cache.retain(&names);
    let mut changed = false;
    for (name, outcome) in outcomes {
        changed |= cache.record(&name, outcome);
    }
    for (name, f) in cache.failures() {
        match f {
            Fetched::Forbidden(e) => {
                warn!(secret = %format!("{namespace}/{name}"), error = %e, "cannot read a BgpPeer's password Secret (403): add it to the chart value operator.bgpPasswordSecrets")
            }
            Fetched::Failed(e) => {
                warn!(secret = %format!("{namespace}/{name}"), error = %e, "cannot read a BgpPeer's password Secret; the password last read stays in use, retrying")
            }
            Fetched::Missing => {
                debug!(secret = %format!("{namespace}/{name}"), "a BgpPeer's password Secret does not exist")
            }
            Fetched::Found(_) => {}
        }
    }
    changed
}

/// One bounded `get`.
async fn fetch(api: &Api<Secret>, name: &str) -> Fetched {
    match tokio::time::timeout(GET_TIMEOUT, api.get_opt(name)).await {
        Err(_) => Fetched::Failed(format!("no answer within {} s", GET_TIMEOUT.as_secs())),
        Ok(Ok(None)) => Fetched::Missing,
        Ok(Ok(Some(s))) => Fetched::Found(
            s.data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect(),
        ),
        Ok(Err(kube::Error::Api(e))) if e.code == 403 => Fetched::Forbidden(e.message),
        Ok(Err(e)) => Fetched::Failed(e.to_string()),
    }
}

/// Re-reads the Secrets when a BgpPeer changes (`peers_changed`) and every
/// [`REFRESH_EVERY`]; the speakers get the full state after a peer change, and after a
/// refresh only when a password changed.
pub async fn run(client: Client, namespace: String, peers: Store<BgpPeer>, shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(REFRESH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate; the caller has just refreshed.
    tick.tick().await;
    loop {
        let peer_changed = tokio::select! {
            () = shared.peers_changed.notified() => true,
            _ = tick.tick() => false,
        };
        let changed = refresh(&client, &namespace, &peers, &shared).await;
        if peer_changed || changed {
            let _ = shared.sync.send(SyncEvent::Full);
        }
    }
}
