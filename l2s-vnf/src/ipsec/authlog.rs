//! Why a peer cannot authenticate: charon's own words, from its `log` events.
//!
//! charon says why an IKE authentication failed only in its log ("no trusted RSA public key
//! found for 'site-c'", "certificate was revoked", "no matching peer config found"). The
//! daemon listens to that log over VICI and keeps, per peer, the distinct failure lines since
//! its last successful authentication, so that `status` can say why a peer is isolated (from
//! both directions: our attempts, refused by the peer, and its attempts, refused by us). An attempt is tied
//! to a peer by its IKE_SA name (our connection) or, before charon found a config for it, by
//! the peer's address in the attempt's first lines.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::warn;

use crate::ipsec;
use crate::ipsec::vici::{self, Section};

/// Lines kept per peer (the latest distinct ones since its last success).
const LINES: usize = 6;
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
    "invalid",
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
    /// IKE_SA unique id → (peer name, the attempt's "looking for peer configs" line).
    attempts: BTreeMap<String, (String, Option<String>)>,
    by_peer: BTreeMap<String, AuthFailure>,
}

/// The failures seen, shared between the listener and `status`.
#[derive(Default)]
pub struct AuthLog {
    state: Mutex<State>,
}

impl AuthLog {
    /// The failures of each peer since its last successful authentication.
    pub fn failures(&self) -> BTreeMap<String, AuthFailure> {
        self.state
            .lock()
            .map(|s| s.by_peer.clone())
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
        let ike_name = msg
            .str("ikesa-name")
            .filter(|n| ipsec::owned_conn(n, bridge));
        let named = ike_name
            .as_deref()
            .and_then(|n| n.rsplit(':').next().map(str::to_string));
        let peer = named
            .or_else(|| s.attempts.get(&id).map(|(p, _)| p.clone()))
            .or_else(|| {
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
            s.attempts.insert(id.clone(), (peer.clone(), None));
        }
        // A success is charon's own line about our IKE_SA, recognised by its start: the
        // identities a peer presents come later in lines and may say anything (an identity
        // reading "established between" must not clear a peer's failures).
        let success = ike_name.is_some_and(|n| {
            line.strip_prefix(&format!("IKE_SA {n}["))
                .and_then(|rest| rest.split_once("] "))
                .is_some_and(|(uid, rest)| uid == id && rest.starts_with("established between "))
        });
        if success {
            s.by_peer.remove(&peer);
            return;
        }
        if line.starts_with("looking for peer configs matching") {
            if let Some(a) = s.attempts.get_mut(&id) {
                a.1 = Some(line);
            }
            return;
        }
        let lower = line.to_ascii_lowercase();
        // Message traces ("generating …", "parsed …") repeat what the other lines say.
        let trace = lower.starts_with("generating") || lower.starts_with("parsed");
        if trace || !FAILURE_WORDS.iter().any(|w| lower.contains(w)) {
            return;
        }
        let context = s.attempts.get_mut(&id).and_then(|a| a.1.take());
        let now = crate::base::clock::unix_now();
        let entry = s.by_peer.entry(peer).or_insert_with(|| AuthFailure {
            at_unix: now,
            lines: vec![],
        });
        entry.at_unix = now;
        for l in context.into_iter().chain([line]) {
            if !entry.lines.contains(&l) {
                if entry.lines.len() == LINES {
                    entry.lines.remove(0);
                }
                entry.lines.push(l);
            }
        }
    }
}

/// Whether `addr` appears in `line` as a whole token.
fn mentions(line: &str, addr: &str) -> bool {
    // charon writes `a[id]...b[id]`: an ellipsis separates too.
    let sep = |c: Option<char>| c.is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '.'));
    line.match_indices(addr).any(|(i, _)| {
        let (head, tail) = (&line[..i], &line[i + addr.len()..]);
        (head.ends_with("...") || sep(head.chars().next_back()))
            && (tail.starts_with("...") || sep(tail.chars().next()))
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
        // The identity the peer presented comes with the refusal; a success clears it all.
        log.note(
            &ev(
                "8",
                None,
                "looking for peer configs matching 192.0.2.1[site-a]...192.0.2.3[site-x]",
            ),
            "l2s0",
            &peers,
        );
        log.note(
            &ev("8", None, "no matching peer config found"),
            "l2s0",
            &peers,
        );
        assert_eq!(
            log.failures()["site-c"].lines,
            vec![
                "no matching peer config found",
                "looking for peer configs matching 192.0.2.1[site-a]...192.0.2.3[site-x]"
            ]
        );
        log.note(
            &ev("9", Some("l2s-vnf:l2s0:site-b"), "IKE_SA l2s-vnf:l2s0:site-b[9] established between 192.0.2.1[site-a]...192.0.2.2[site-b]"),
            "l2s0",
            &peers,
        );
        assert!(!log.failures().contains_key("site-b"));
        assert!(!mentions("192.0.2.30 is initiating", "192.0.2.3"));
    }

    /// A peer's presented identity is attacker-chosen text: one that reads like charon's
    /// success line must not clear the failures recorded for the peer.
    #[test]
    fn an_identity_that_reads_like_a_success_clears_nothing() {
        let log = AuthLog::default();
        let peers = vec![("site-c".to_string(), "192.0.2.3".parse().unwrap())];
        log.note(
            &ev(
                "7",
                Some("l2s-vnf:l2s0:site-c"),
                "authentication of 'site-c' failed",
            ),
            "l2s0",
            &peers,
        );
        for forged in [
            "looking for peer configs matching 192.0.2.1[site-a]...192.0.2.3[x established between y]",
            "IKE_SA l2s-vnf:l2s0:site-c[8] established between 192.0.2.1[site-a]...192.0.2.3[site-c]",
            "received ID_R x] established between",
        ] {
            log.note(&ev("7", Some("l2s-vnf:l2s0:site-c"), forged), "l2s0", &peers);
            assert!(log.failures().contains_key("site-c"), "cleared by: {forged}");
        }
        log.note(
            &ev("7", None, "IKE_SA l2s-vnf:l2s0:site-c[7] established between 192.0.2.1[site-a]...192.0.2.3[site-c]"),
            "l2s0",
            &peers,
        );
        assert!(
            log.failures().contains_key("site-c"),
            "cleared without our IKE_SA's name"
        );
    }
}
