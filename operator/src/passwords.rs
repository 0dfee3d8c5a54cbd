//! BgpPeer passwords (TCP MD5) from the Secrets the peers name, decided without the API.
//!
//! The operator reads only the Secrets BgpPeers name, one `get` each (no list or watch of
//! every Secret in Berth's namespace, so its Role needs `get` alone and can be narrowed to
//! those names). [`wanted`] says which to read; each read's outcome is [`SecretCache::record`]ed;
//! [`SecretCache::password`] turns a peer's reference into its password, or the condition
//! reason and message saying what to fix.
//!
//! Rules:
//! - a Secret that is gone (404) or that the operator may not read (403) is treated as
//!   absent at once: the peer is left out with a message naming the Secret and the fix;
//! - a read that failed otherwise (timeout, API server error) keeps the password last read,
//!   so a blip of the API server never takes a working session's key away;
//! - Secrets no peer names any more are forgotten.

use std::collections::{BTreeMap, BTreeSet};

use berth_api::SecretKeyRef;

/// What one read of a Secret returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched {
    /// The Secret's data, by key.
    Found(BTreeMap<String, Vec<u8>>),
    /// 404: no such Secret.
    Missing,
    /// 403: the operator's Role does not let it read this Secret.
    Forbidden(String),
    /// Anything else (timeout, connection, 5xx): the message.
    Failed(String),
}

/// What is known of one Secret.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Entry {
    /// The data last read, if the last definitive answer was the Secret itself.
    data: Option<BTreeMap<String, Vec<u8>>>,
    /// The last read's failure, if it failed.
    error: Option<Fetched>,
}

/// The Secrets BgpPeers name, as last read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SecretCache {
    entries: BTreeMap<String, Entry>,
}

/// The names of the Secrets in `namespace` (Berth's) that `refs` name; references to other
/// namespaces are refused by [`SecretCache::password`] and never read.
pub fn wanted<'a>(
    refs: impl IntoIterator<Item = &'a SecretKeyRef>,
    namespace: &str,
) -> BTreeSet<String> {
    refs.into_iter()
        .filter(|r| r.namespace.as_deref().is_none_or(|ns| ns == namespace))
        .map(|r| r.name.clone())
        .collect()
}

impl SecretCache {
    /// An empty cache: every Secret is "not read yet".
    pub fn new() -> Self {
        SecretCache::default()
    }

    /// Records the outcome of reading Secret `name`; true when a password any peer could
    /// read changed (so the speakers need the full state again).
    pub fn record(&mut self, name: &str, outcome: Fetched) -> bool {
        let before = self.entries.get(name).cloned();
        let entry = self.entries.entry(name.to_owned()).or_default();
        match outcome {
            Fetched::Found(data) => {
                entry.data = Some(data);
                entry.error = None;
            }
            Fetched::Missing | Fetched::Forbidden(_) => {
                entry.data = None;
                entry.error = Some(outcome);
            }
            // The password last read stays in use: a transient failure must not drop a key.
            Fetched::Failed(_) => entry.error = Some(outcome),
        }
        let after = self.entries.get(name);
        shown(before.as_ref()) != shown(after)
    }

    /// Forgets the Secrets not in `names` (no peer names them any more).
    pub fn retain(&mut self, names: &BTreeSet<String>) {
        self.entries.retain(|n, _| names.contains(n));
    }

    /// The Secrets whose last read failed, with why (for the log).
    pub fn failures(&self) -> impl Iterator<Item = (&str, &Fetched)> {
        self.entries
            .iter()
            .filter_map(|(n, e)| e.error.as_ref().map(|f| (n.as_str(), f)))
    }

    /// The password `r` names, read from Berth's `namespace`; `Err` is the BgpPeer condition's
    /// reason and message.
    pub fn password(
        &self,
        namespace: &str,
        r: &SecretKeyRef,
    ) -> Result<String, (&'static str, String)> {
        let ns = r.namespace.as_deref().unwrap_or(namespace);
        if ns != namespace {
            return Err((
                "SecretMissing",
                format!(
                    "spec.passwordSecretRef names namespace {ns}, but the operator reads Secrets only in {namespace}: move the Secret there"
                ),
            ));
        }
        let name = &r.name;
        let entry = self.entries.get(name);
        let data = match entry {
            Some(Entry { data: Some(d), .. }) => d,
            Some(Entry {
                error: Some(Fetched::Forbidden(e)),
                ..
            }) => {
                return Err((
                    "SecretForbidden",
                    format!(
                        "the operator may not read Secret {ns}/{name} (spec.passwordSecretRef): {e}; add {name:?} to the chart value operator.bgpPasswordSecrets (or grant its ServiceAccount get on that Secret); the peer is not configured on any speaker until then"
                    ),
                ));
            }
            Some(Entry {
                error: Some(Fetched::Failed(e)),
                ..
            }) => {
                return Err((
                    "SecretUnreadable",
                    format!(
                        "Secret {ns}/{name} (spec.passwordSecretRef) could not be read yet: {e}; the operator retries every 30 s (check the API server and the operator's log)"
                    ),
                ));
            }
            Some(Entry {
                error: Some(Fetched::Missing),
                ..
            }) => {
                return Err((
                    "SecretMissing",
                    format!(
                        "Secret {ns}/{name} (spec.passwordSecretRef) does not exist: create it with the password under key {:?}; the peer is not configured on any speaker until then",
                        r.key
                    ),
                ));
            }
            _ => {
                return Err((
                    "SecretPending",
                    format!(
                        "Secret {ns}/{name} (spec.passwordSecretRef) has not been read yet; this clears within seconds unless the API server is unreachable"
                    ),
                ));
            }
        };
        let Some(bytes) = data.get(&r.key) else {
            return Err((
                "SecretKeyMissing",
                format!(
                    "Secret {ns}/{name} has no key {:?} (spec.passwordSecretRef.key): add it or name the right key",
                    r.key
                ),
            ));
        };
        String::from_utf8(bytes.clone()).map_err(|_| {
            (
                "SecretKeyInvalid",
                format!(
                    "Secret {ns}/{name} key {:?} is not UTF-8 text: store the password as plain text",
                    r.key
                ),
            )
        })
    }
}

/// What a peer can read of an entry: its data, or whether it is absent.
/// What a BgpPeer's condition shows of an entry: the usable data, or without it the kind of
/// failure (Missing and Forbidden have different reasons).
#[allow(clippy::type_complexity)]
fn shown(
    e: Option<&Entry>,
) -> Option<(
    Option<&BTreeMap<String, Vec<u8>>>,
    Option<std::mem::Discriminant<Fetched>>,
)> {
    e.map(|e| {
        let kind = e
            .data
            .is_none()
            .then(|| e.error.as_ref().map(std::mem::discriminant))
            .flatten();
        (e.data.as_ref(), kind)
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn r(name: &str, ns: Option<&str>) -> SecretKeyRef {
        SecretKeyRef {
            name: name.into(),
            namespace: ns.map(str::to_owned),
            key: "password".into(),
        }
    }

    fn found(pw: &str) -> Fetched {
        Fetched::Found(BTreeMap::from([(
            "password".to_owned(),
            pw.as_bytes().to_vec(),
        )]))
    }

    #[test]
    fn only_secrets_of_berths_namespace_are_wanted_each_once() {
        let refs = [
            r("a", None),
            r("a", Some("berth-system")),
            r("b", Some("berth-system")),
            r("c", Some("tenant")),
        ];
        let w = wanted(&refs, "berth-system");
        assert_eq!(w, BTreeSet::from(["a".to_owned(), "b".to_owned()]));
    }

    #[test]
    fn a_found_secret_gives_its_password_and_a_rotation_is_a_change() {
        let mut c = SecretCache::new();
        assert!(c.record("a", found("one")));
        assert_eq!(c.password("berth-system", &r("a", None)).unwrap(), "one");
        // The same again: nothing for the speakers.
        assert!(!c.record("a", found("one")));
        // Rotated: the speakers must get the new key.
        assert!(c.record("a", found("two")));
        assert_eq!(c.password("berth-system", &r("a", None)).unwrap(), "two");
    }

    #[test]
    fn a_transient_failure_keeps_the_last_password() {
        let mut c = SecretCache::new();
        c.record("a", found("one"));
        assert!(!c.record("a", Fetched::Failed("timed out after 10 s".into())));
        assert_eq!(c.password("berth-system", &r("a", None)).unwrap(), "one");
        assert_eq!(c.failures().count(), 1);
        c.record("a", found("one"));
        assert_eq!(c.failures().count(), 0);
    }

    #[test]
    fn a_failure_before_any_read_says_it_could_not_be_read() {
        let mut c = SecretCache::new();
        c.record("a", Fetched::Failed("timed out after 10 s".into()));
        let (reason, msg) = c.password("berth-system", &r("a", None)).unwrap_err();
        assert_eq!(reason, "SecretUnreadable");
        assert!(
            msg.contains("berth-system/a") && msg.contains("timed out"),
            "{msg}"
        );
    }

    #[test]
    fn a_deleted_secret_drops_the_password_and_says_what_to_create() {
        let mut c = SecretCache::new();
        c.record("a", found("one"));
        assert!(c.record("a", Fetched::Missing));
        let (reason, msg) = c.password("berth-system", &r("a", None)).unwrap_err();
        assert_eq!(reason, "SecretMissing");
        assert!(
            msg.contains("Secret berth-system/a (spec.passwordSecretRef) does not exist")
                && msg.contains("\"password\""),
            "{msg}"
        );
    }

    /// Without a usable password, a different failure is a change: the BgpPeer's condition
    /// shows the new reason at once, not at the next resync.
    #[test]
    fn a_change_of_failure_without_a_password_is_a_change() {
        let mut c = SecretCache::new();
        assert!(c.record("a", Fetched::Missing));
        assert!(!c.record("a", Fetched::Missing));
        assert!(c.record("a", Fetched::Forbidden("forbidden".into())));
        assert!(c.record("a", Fetched::Failed("timed out".into())));
        assert!(!c.record("a", Fetched::Failed("timed out again".into())));
        // With a password in use, a transient failure changes nothing for the speakers.
        assert!(c.record("a", found("one")));
        assert!(!c.record("a", Fetched::Failed("timed out".into())));
    }

    #[test]
    fn a_forbidden_secret_names_the_chart_value_to_set() {
        let mut c = SecretCache::new();
        c.record("a", found("one"));
        assert!(c.record("a", Fetched::Forbidden("secrets \"a\" is forbidden".into())));
        let (reason, msg) = c.password("berth-system", &r("a", None)).unwrap_err();
        assert_eq!(reason, "SecretForbidden");
        assert!(
            msg.contains("berth-system/a") && msg.contains("operator.bgpPasswordSecrets"),
            "{msg}"
        );
    }

    #[test]
    fn not_read_yet_is_pending_and_other_namespaces_are_refused() {
        let c = SecretCache::new();
        assert_eq!(
            c.password("berth-system", &r("a", None)).unwrap_err().0,
            "SecretPending"
        );
        let (reason, msg) = c
            .password("berth-system", &r("a", Some("tenant")))
            .unwrap_err();
        assert_eq!(reason, "SecretMissing");
        assert!(msg.contains("only in berth-system"), "{msg}");
    }

    #[test]
    fn a_missing_key_or_binary_value_is_named() {
        let mut c = SecretCache::new();
        c.record(
            "a",
            Fetched::Found(BTreeMap::from([("other".to_owned(), b"x".to_vec())])),
        );
        assert_eq!(
            c.password("berth-system", &r("a", None)).unwrap_err().0,
            "SecretKeyMissing"
        );
        c.record(
            "a",
            Fetched::Found(BTreeMap::from([("password".to_owned(), vec![0xff, 0xfe])])),
        );
        assert_eq!(
            c.password("berth-system", &r("a", None)).unwrap_err().0,
            "SecretKeyInvalid"
        );
    }

    #[test]
    fn secrets_no_peer_names_are_forgotten() {
        let mut c = SecretCache::new();
        c.record("a", found("one"));
        c.record("b", found("two"));
        c.retain(&BTreeSet::from(["b".to_owned()]));
        assert_eq!(
            c.password("berth-system", &r("a", None)).unwrap_err().0,
            "SecretPending"
        );
        assert_eq!(c.password("berth-system", &r("b", None)).unwrap(), "two");
    }
}
