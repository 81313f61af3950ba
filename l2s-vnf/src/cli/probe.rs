//! `l2s-vnf probe`: path health to the peers, asked of the daemon or measured here.

use std::process::ExitCode;

use crate::apply::{self, ApplyError};
use crate::cli::{offline_backend, print_json, CliError};
use crate::config::SiteConfig;
use crate::daemon::{self, control};
use crate::linux::{discover, Netlink};
use crate::model::DesiredState;
use crate::status;

/// `probe`: asked of the daemon (it owns the probe port), or done here when none runs.
pub async fn exec(
    cfg: &SiteConfig,
    peer: Option<String>,
    secs: u64,
    throughput: bool,
    json: bool,
) -> Result<ExitCode, CliError> {
    if let Some(p) = &peer {
        if cfg.peer(p).is_none() {
            let known: Vec<&str> = cfg.peers.iter().map(|x| x.name.as_str()).collect();
            eprintln!(
                "error: unknown peer `{p}`; configured peers: {}",
                if known.is_empty() {
                    "none".into()
                } else {
                    known.join(", ")
                }
            );
            return Ok(ExitCode::from(2));
        }
    }
    let wait = std::time::Duration::from_secs(secs.saturating_mul(2).saturating_add(60));
    let request = control::Request::Probe {
        peer: peer.clone(),
        secs,
        throughput,
    };
    let results = match control::request(&cfg.daemon.control_socket, request, wait).await {
        Ok(r) if r.ok => r.probe.unwrap_or_default(),
        Ok(r) => return Err(CliError::DaemonRefused(r.error.unwrap_or_default())),
        Err(control::ControlError::NotRunning { .. }) => {
            probe_here(cfg, peer, secs, throughput).await?
        }
        Err(e) => return Err(CliError::Control(e)),
    };
    if json {
        let doc = serde_json::json!({"schema": 1, "paths": results});
        print_json(&doc, "")?;
    } else {
        for (name, h) in &results {
            println!("{name:<16} {}", status::path_text(h));
        }
    }
    let healthy = results.values().all(|h| h.loss_pct < 100.0 && h.mtu_ok);
    Ok(if healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Probe without a daemon: bind the probe port here (the peers' daemons answer).
async fn probe_here(
    cfg: &SiteConfig,
    peer: Option<String>,
    secs: u64,
    throughput: bool,
) -> Result<std::collections::BTreeMap<String, crate::status::probe::PathHealth>, CliError> {
    let nl = Netlink::connect()?;
    let mut facts = discover::facts(cfg, &nl).await?;
    if cfg.ipsec.enabled {
        facts.ipsec_backend = Some(
            match crate::ipsec::vici::Client::connect(&cfg.ipsec.vici).await {
                Ok(v) => apply::resolve_backend(cfg, &v).await?,
                Err(_) => offline_backend(cfg),
            },
        );
    }
    let desired = DesiredState::build(cfg, &facts).map_err(ApplyError::Config)?;
    let paths = daemon::network_paths::NetworkPaths::bind(facts.vtep_ip, cfg.vxlan_port)
        .await
        .map_err(CliError::ProbePort)?;
    paths.configure(
        cfg.peers
            .iter()
            .map(|p| (p.name.clone(), p.address))
            .collect(),
        desired.access_mtu,
    );
    paths
        .measure(peer.as_deref(), secs, throughput)
        .await
        .map_err(CliError::Probe)
}
