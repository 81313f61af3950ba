//! Why a peer cannot authenticate: charon's own words, from its `log` events.
//!
//! charon says why an IKE authentication failed only in its log ("no trusted RSA public key
//! found for 'site-c'", "certificate was revoked", "no matching peer config found"). The
//! daemon listens to that log over VICI and keeps, per peer, the failure lines of the most
//! recent failed attempt, so that `status` can say why a peer is isolated. An attempt is tied
//! to a peer by its IKE_SA name (our connection) or, before charon found a config for it, by
//! the peer's address in the attempt's first lines.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::warn;

use crate::ipsec;
use crate::vici::{self, Section};

/// Lines kept per peer (the most telling ones of one attempt).
const LINES: usize = 4;
/// Attempts remembered while their peer is not known yet.
const PENDING: usize = 64;

/// Words of charon's log lines that explain a failed authentication.
const FAILURE_WORDS: &[&str] = &[
    "fail",
    "no trusted",
    "no issuer",
    "revoked",
    "expired",
    "not valid",
    "untrusted",
    "no matching peer config",
    "no private key",
    "constraint check",
    "no shared key",
];

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AuthFailure {
    pub at_unix: u64,
    pub lines: Vec<String>,
}

#[derive(Default)]
struct State {
    /// IKE_SA unique id → peer name.
    attempts: BTreeMap<String, String>,
    by_peer: BTreeMap<String, (String, AuthFailure)>,
}

/// The failures seen, shared between the listener and `status`.
#[derive(Default)]
pub struct AuthLog {
    state: Mutex<State>,
}

impl AuthLog {
    /// The latest failure of each peer.
    pub fn failures(&self) -> BTreeMap<String, AuthFailure> {
        self.state
            .lock()
            .map(|s| {
                s.by_peer
                    .iter()
                    .map(|(p, (_, f))| (p.clone(), f.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Take in one `log` event.
    pub fn note(&self, msg: &Section, bridge: &str, peers: &[(String, IpAddr)]) {
        let (Some(id), Some(line)) = (msg.str("ikesa-uniqueid"), msg.str("msg")) else {
            return;
        };
        let Ok(mut s) = self.state.lock() else {
            return;
        };
        let named = msg
            .str("ikesa-name")
            .filter(|n| ipsec::owned_conn(n, bridge))
            .and_then(|n| n.rsplit(':').next().map(str::to_string));
        let peer = named.or_else(|| s.attempts.get(&id).cloned()).or_else(|| {
            peers
                .iter()
                .find(|(_, a)| mentions(&line, &a.to_string()))
                .map(|(n, _)| n.clone())
        });
        let Some(peer) = peer else {
            return;
        };
        if !s.attempts.contains_key(&id) {
            if s.attempts.len() >= PENDING {
                s.attempts.pop_first();
            }
            s.attempts.insert(id.clone(), peer.clone());
        }
        let lower = line.to_ascii_lowercase();
        if !FAILURE_WORDS.iter().any(|w| lower.contains(w)) {
            return;
        }
        let now = crate::status::unix_now();
        let entry = s.by_peer.entry(peer).or_insert_with(|| {
            (
                id.clone(),
                AuthFailure {
                    at_unix: now,
                    lines: vec![],
                },
            )
        });
        if entry.0 != id {
            *entry = (
                id,
                AuthFailure {
                    at_unix: now,
                    lines: vec![],
                },
            );
        }
        entry.1.at_unix = now;
        if entry.1.lines.len() < LINES && !entry.1.lines.contains(&line) {
            entry.1.lines.push(line);
        }
    }
}

/// Whether `addr` appears in `line` as a whole token.
fn mentions(line: &str, addr: &str) -> bool {
    line.match_indices(addr).any(|(i, _)| {
        let before = line[..i].chars().next_back();
        let after = line[i + addr.len()..].chars().next();
        let sep = |c: Option<char>| c.is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '.'));
        sep(before) && sep(after)
    })
}

/// Listen to charon's log for as long as the task lives (reconnecting when charon restarts).
pub async fn listen(
    path: PathBuf,
    bridge: String,
    peers: Vec<(String, IpAddr)>,
    log: Arc<AuthLog>,
) {
    let mut warned = false;
    loop {
        match vici::subscribe(&path, &["log"]).await {
            Ok(mut rx) => {
                warned = false;
                while let Some((_, msg)) = rx.recv().await {
                    log.note(&msg, &bridge, &peers);
                }
            }
            Err(e) if !warned => {
                warn!(error = %e, "cannot listen to charon's log (authentication failures will not be explained in status)");
                warned = true;
            }
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(id: &str, name: Option<&str>, msg: &str) -> Section {
        let mut s = Section::new()
            .kv("group", "CFG")
            .kv("ikesa-uniqueid", id)
            .kv("msg", msg);
        if let Some(n) = name {
            s = s.kv("ikesa-name", n);
        }
        s
    }

    #[test]
    fn failures_are_tied_to_the_peer_by_name_or_address() {
        let log = AuthLog::default();
        let peers = vec![
            ("site-c".to_string(), "192.0.2.3".parse().unwrap()),
            ("site-b".to_string(), "192.0.2.2".parse().unwrap()),
        ];
        log.note(
            &ev("7", None, "192.0.2.3 is initiating an IKE_SA"),
            "l2s0",
            &peers,
        );
        log.note(
            &ev("7", None, "no matching peer config found"),
            "l2s0",
            &peers,
        );
        log.note(
            &ev(
                "9",
                Some("l2s-vnf:l2s0:site-b"),
                "no trusted ECDSA public key found for 'site-b'",
            ),
            "l2s0",
            &peers,
        );
        log.note(
            &ev("9", Some("l2s-vnf:l2s0:site-b"), "sending keep-alive"),
            "l2s0",
            &peers,
        );
        log.note(
            &ev("3", Some("other-vpn"), "authentication failed"),
            "l2s0",
            &peers,
        );
        let f = log.failures();
        assert_eq!(f["site-c"].lines, vec!["no matching peer config found"]);
        assert_eq!(
            f["site-b"].lines,
            vec!["no trusted ECDSA public key found for 'site-b'"]
        );
        assert_eq!(f.len(), 2);
        assert!(!mentions("192.0.2.30 is initiating", "192.0.2.3"));
    }
}
