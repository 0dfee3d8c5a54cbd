//! Authentication by bearer token, ServiceAccount tokens issued through the TokenRequest API
//! (`kubectl create token`), and the record of every request the server refused.
//!
//! With an admin token configured the server behaves like a kube-apiserver with
//! `--anonymous-auth` limited to the health endpoints: the admin token is a member of
//! `system:masters`; a ServiceAccount token is valid while its ServiceAccount exists (as a
//! bound token is) and makes the request as `system:serviceaccount:<ns>:<name>`; no token
//! means `system:anonymous`, who may read `/version` and the health endpoints and gets 401
//! elsewhere; an unknown token gets 401. Without an admin token there is no authentication and
//! every request is made as the admin (tests that do not care about RBAC).

use std::collections::HashMap;
use std::sync::Mutex;

use super::rbac::User;

/// One refused request: what the client got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// 401 or 403.
    pub code: u16,
    /// The user (`system:anonymous` for a 401).
    pub user: String,
    /// The Status message.
    pub message: String,
}

/// Tokens and refusals.
#[derive(Debug, Default)]
pub struct Auth {
    admin_token: Option<String>,
    /// token -> (namespace, ServiceAccount name).
    tokens: Mutex<HashMap<String, (String, String)>>,
    refusals: Mutex<Vec<Refusal>>,
}

/// What a bearer token says about its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// Authentication is off, or the admin token.
    Admin,
    /// A ServiceAccount token: its namespace and name (valid only while it exists).
    ServiceAccount(String, String),
    /// No token.
    Anonymous,
    /// A token this server did not issue.
    Invalid,
}

impl Auth {
    /// Authentication with `admin_token` as the administrator's token; `None` turns it off.
    pub fn new(admin_token: Option<String>) -> Self {
        Auth {
            admin_token,
            ..Auth::default()
        }
    }

    /// Whether requests are authenticated and authorized at all.
    pub fn enabled(&self) -> bool {
        self.admin_token.is_some()
    }

    /// Who holds the `Authorization` header's value (`Bearer <token>`), if anything.
    pub fn identify(&self, authorization: Option<&str>) -> Identity {
        let Some(admin) = &self.admin_token else {
            return Identity::Admin;
        };
        let Some(header) = authorization else {
            return Identity::Anonymous;
        };
        let Some(token) = header.strip_prefix("Bearer ").map(str::trim) else {
            return Identity::Invalid;
        };
        if token == admin {
            return Identity::Admin;
        }
        match self.lock_tokens().get(token) {
            Some((ns, name)) => Identity::ServiceAccount(ns.clone(), name.clone()),
            None => Identity::Invalid,
        }
    }

    /// Issues a token for a ServiceAccount (the caller checked that it exists).
    pub fn issue(&self, ns: &str, name: &str) -> String {
        let token = random_token();
        self.lock_tokens()
            .insert(token.clone(), (ns.to_owned(), name.to_owned()));
        token
    }

    /// Records a refused request (and prints it: the server's log names every refusal).
    pub fn refuse(&self, code: u16, user: &User, message: &str) {
        eprintln!("REFUSED {code} {}: {message}", user.name);
        let mut r = self
            .refusals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        r.push(Refusal {
            code,
            user: user.name.clone(),
            message: message.to_owned(),
        });
    }

    /// Every refusal so far, oldest first.
    pub fn refusals(&self) -> Vec<Refusal> {
        self.refusals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn lock_tokens(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, String)>> {
        self.tokens
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// 32 random bytes as hex (from /dev/urandom; a clock-derived fallback keeps a test double
/// running where it is missing: these tokens guard nothing but a test's honesty).
fn random_token() -> String {
    use std::io::Read;
    let mut buf = [0u8; 32];
    let ok = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .is_ok();
    if !ok {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        buf[..16].copy_from_slice(&t.to_le_bytes());
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_identify_their_holders() {
        let off = Auth::new(None);
        assert_eq!(off.identify(None), Identity::Admin);
        let auth = Auth::new(Some("root".into()));
        assert_eq!(auth.identify(Some("Bearer root")), Identity::Admin);
        assert_eq!(auth.identify(None), Identity::Anonymous);
        assert_eq!(auth.identify(Some("Bearer nope")), Identity::Invalid);
        assert_eq!(auth.identify(Some("Basic cm9vdA==")), Identity::Invalid);
        let t = auth.issue("berth-system", "berth-agent");
        assert_ne!(t, auth.issue("berth-system", "berth-agent"));
        assert_eq!(
            auth.identify(Some(&format!("Bearer {t}"))),
            Identity::ServiceAccount("berth-system".into(), "berth-agent".into())
        );
    }
}
