//! The netlink side of [`super::link`]: wakes the agent whenever a link or an address changes
//! (a link going down or up, an interface deleted or created, a MAC changed), so it looks at
//! its announcing interfaces again at once instead of at its next periodic check.

use std::sync::Arc;

use futures::StreamExt;
use rtnetlink::MulticastGroup;
use tokio::sync::Notify;

use super::interface::{self, Interface, InterfaceError};
use super::link::{Observed, usable};

/// Why the watch could not start.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot subscribe to netlink link and address events ({0}): a link that goes down will be noticed only at the next periodic check (5 s)"
)]
pub struct WatchError(std::io::Error);

/// Subscribes to the link and address events of this network namespace and notifies
/// `changed` on each one (the message itself is not needed: the agent re-reads the state).
/// The returned task ends when the netlink socket fails.
pub fn spawn(changed: Arc<Notify>) -> Result<tokio::task::JoinHandle<()>, WatchError> {
    let (connection, _handle, mut messages) = rtnetlink::new_multicast_connection(&[
        MulticastGroup::Link,
        MulticastGroup::Ipv4Ifaddr,
        MulticastGroup::Ipv6Ifaddr,
    ])
    .map_err(WatchError)?;
    Ok(tokio::spawn(async move {
        let connection = tokio::spawn(connection);
        while messages.next().await.is_some() {
            changed.notify_one();
        }
        connection.abort();
        tracing::warn!("netlink link events stopped: links are checked every 5 s only");
    }))
}

/// What `spec` resolves to now, with its operational state from sysfs.
pub fn observe(spec: &str) -> (Observed, Option<InterfaceError>) {
    match interface::resolve(spec) {
        Ok(i) => {
            let up = operstate(&i).is_some_and(|s| usable(&s));
            (
                Observed::Seen {
                    interface: i,
                    usable: up,
                },
                None,
            )
        }
        Err(e) => (Observed::Missing, Some(e)),
    }
}

fn operstate(i: &Interface) -> Option<String> {
    std::fs::read_to_string(format!("/sys/class/net/{}/operstate", i.name)).ok()
}
