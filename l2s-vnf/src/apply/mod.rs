//! Converging the system: observe → diff → execute, with rollback.
//!
//! The netlink steps (phases 1 and 3) are `linux::links`. [`system`] connects and observes,
//! [`prepare`] diffs, [`execute`] carries a plan out.
//!
//! Execution runs in three phases so that nothing is left half-applied:
//! 1. **netlink** (VXLAN devices, MTUs, flood entries), each step recorded in an undo log;
//! 2. **one OVSDB transaction** for the bridge and all ports, then a wait until ovs-vswitchd
//!    has applied it — if this fails, phase 1 is undone;
//! 3. **finishing** steps that only make sense once the switch is wired: links up, VXLAN
//!    devices deleted after their ports left the bridge, MTUs given back to released ports.
//!    Errors here are collected (every step is still tried) and reported.

pub mod evpn;
mod execute;
mod prepare;
mod system;

pub use execute::{execute, Report};
pub use prepare::{charon_can_negotiate, prepare, prepare_with, resolve_backend, Prepared};
pub use system::System;

use crate::config::ConfigIssue;
use crate::guard::GuardError;
use crate::ipsec::vici::ViciError;
use crate::ipsec::IpsecError;
use crate::linux::NetlinkError;
use crate::ovs::OvsdbError;
use crate::plan::Conflict;

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("{}", render_issues(.0))]
    Config(Vec<ConfigIssue>),
    #[error("cannot converge; nothing was changed:{}", render_conflicts(.0))]
    Conflicts(Vec<Conflict>),
    #[error(transparent)]
    Ovsdb(#[from] OvsdbError),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(transparent)]
    Vici(#[from] ViciError),
    #[error(transparent)]
    Guard(#[from] GuardError),
    #[error(transparent)]
    Ipsec(#[from] IpsecError),
    #[error(transparent)]
    Storm(#[from] crate::ovs::storm::StormError),
    #[error("charon is not reachable")]
    CharonUnreachable,
    #[error("EVPN: {0}")]
    Evpn(String),
    /// The daemon lost its connections to the system (it makes them again).
    #[error("no system connection")]
    NotConnected,
    #[error("applying failed: {cause}; rolled back: {rollback}")]
    RolledBack { cause: String, rollback: String },
    #[error("the switch is wired but {} finishing step(s) failed:{}", .0.len(), .0.iter().map(|e| format!("\n  {e}")).collect::<String>())]
    Finishing(Vec<String>),
}

fn render_issues(issues: &[ConfigIssue]) -> String {
    let mut s = String::from("the config does not fit this system; nothing was changed:");
    for i in issues {
        s.push_str("\n  ");
        s.push_str(&i.to_string());
    }
    s
}

fn render_conflicts(c: &[Conflict]) -> String {
    c.iter().map(|c| format!("\n  {c}")).collect()
}
