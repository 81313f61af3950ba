//! `l2s-vnf check`: validate the config and print what it derives (plan summary, MTU).

use std::path::Path;
use std::process::ExitCode;

use tracing::warn;

use crate::apply::{self, ApplyError};
use crate::cli::{offline_backend, print_json, CliError};
use crate::config::SiteConfig;
use crate::linux::{discover, Facts, Netlink};
use crate::model::DesiredState;

pub async fn exec(
    path: &Path,
    cfg: &SiteConfig,
    offline: bool,
    json: bool,
) -> Result<ExitCode, CliError> {
    let facts = if offline {
        let vtep = cfg
            .site
            .vtep_ip
            .or(cfg.peers.first().map(|p| match p.address {
                std::net::IpAddr::V4(_) => std::net::IpAddr::from([192, 0, 2, 0]),
                std::net::IpAddr::V6(_) => {
                    std::net::IpAddr::from([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0])
                }
            }));
        Facts {
            underlay_index: 0,
            vtep_ip: vtep.unwrap_or(std::net::IpAddr::from([192, 0, 2, 0])),
            underlay_mtu: cfg.site.underlay_mtu.unwrap_or(1500),
            kernel_has_ovs_datapath: discover::kernel_has_ovs_datapath(),
            // Offline, charon cannot be asked: `auto` is taken as libipsec, whose MTU is the
            // smaller of the two (the derivation says so).
            ipsec_backend: cfg.ipsec.enabled.then(|| offline_backend(cfg)),
        }
    } else {
        let nl = Netlink::connect()?;
        let mut facts = discover::facts(cfg, &nl).await?;
        if cfg.ipsec.enabled {
            // Ask charon which backend it runs (`auto`) and whether it can negotiate the
            // proposals; without charon, assume as offline.
            let backend = match crate::ipsec::vici::Client::connect(&cfg.ipsec.vici).await {
                Ok(v) => {
                    let backend = apply::resolve_backend(cfg, &v).await?;
                    apply::charon_can_negotiate(cfg, &v, backend).await?;
                    backend
                }
                Err(_) => {
                    warn!(
                        "charon is not reachable at {}: its backend and algorithms were not checked",
                        cfg.ipsec.vici.display()
                    );
                    offline_backend(cfg)
                }
            };
            facts.ipsec_backend = Some(backend);
            if backend == crate::base::kinds::IpsecBackend::Kernel {
                bypass_check(cfg, &facts)?;
            }
        }
        facts
    };
    let desired = DesiredState::build(cfg, &facts).map_err(ApplyError::Config)?;
    if json {
        let doc = check_json(path, cfg, &facts, &desired, offline);
        print_json(&doc, "")?;
        return Ok(ExitCode::SUCCESS);
    }
    println!("{}: valid", path.display());
    println!(
        "site {} (underlay {}, VTEP {}{})",
        cfg.site.name,
        cfg.site.underlay,
        if offline && cfg.site.vtep_ip.is_none() {
            "discovered at apply".to_string()
        } else {
            facts.vtep_ip.to_string()
        },
        if offline { ", offline" } else { "" }
    );
    println!(
        "bridge {} datapath {} ({})",
        desired.bridge, desired.datapath, desired.datapath_reason
    );
    if cfg.ipsec.enabled {
        println!(
            "ipsec: enabled, backend {:?}, ESP {}",
            cfg.ipsec.backend,
            cfg.ipsec
                .esp_proposals
                .iter()
                .map(|e| e.proposal.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    } else {
        println!("ipsec: DISABLED (insecure lab mode: clear-text VXLAN)");
    }
    if let Some(pki) = &cfg.ipsec.pki {
        let c = &pki.creds.cert;
        let now = crate::base::clock::unix_now_signed();
        println!(
            "certificate {} as `{}`, expires in {} days ({}); {} CA(s), {} CRL(s)",
            c.describe(),
            cfg.site.id,
            c.days_left(now),
            crate::pki::utc_date(c.not_after_unix),
            pki.creds.cas.len(),
            pki.creds.crls.len()
        );
    }
    println!("peers:");
    for p in &cfg.peers {
        println!(
            "  {:<16} {:<40} id {} ({})",
            p.name, p.address, p.id, p.auth
        );
    }
    if let Some(e) = &cfg.evpn {
        let whom = match e.role {
            crate::config::EvpnRole::Site => format!(
                "reflectors {}",
                e.reflectors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            crate::config::EvpnRole::Reflector => format!(
                "sites from {}",
                e.listen_range.map(|r| r.to_string()).unwrap_or_default()
            ),
        };
        println!(
            "evpn: {} in AS {}, {whom}, hold time {} s (BGP inside IPsec; discovered sites need a certificate from the configured CA carrying their VTEP address)",
            e.role,
            e.asn,
            e.hold_time.as_secs()
        );
        let missing = crate::evpn::frr::missing();
        if !missing.is_empty() {
            println!(
                "evpn: MISSING {} (install Debian's `frr` package; its own service may stay disabled)",
                missing.join(", ")
            );
        }
        if let Some(why) = crate::evpn::frr::sandbox_problem() {
            println!("evpn: NOT PERMITTED: {why}");
        }
    }
    println!("vlans:");
    for v in desired.vlans.values() {
        let peers: Vec<&str> = v.flood.values().map(String::as_str).collect();
        let ports: Vec<&str> = v.access_ports.iter().map(String::as_str).collect();
        println!(
            "  vlan {:>4}  vni {:<8} device {:<15} ports [{}]  peers [{}]",
            v.id,
            v.vni,
            v.vxlan.name,
            ports.join(", "),
            peers.join(", ")
        );
    }
    println!(
        "access MTU {} (underlay MTU {}{})",
        desired.access_mtu,
        facts.underlay_mtu,
        if offline && cfg.site.underlay_mtu.is_none() {
            " assumed"
        } else {
            ""
        }
    );
    for step in &desired.mtu.derivation {
        println!("  {step}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Refuse when a kernel IPsec policy would divert VXLAN to a peer around its SA.
fn bypass_check(cfg: &SiteConfig, facts: &Facts) -> Result<(), CliError> {
    let policies = crate::xfrm::dump().map_err(CliError::Policies)?;
    let issues: Vec<_> = cfg
        .peers
        .iter()
        .enumerate()
        .filter_map(|(i, p)| {
            crate::status::health::bypass_reason(
                &policies,
                facts.vtep_ip,
                Some(facts.underlay_index),
                &p.name,
                p.address,
                cfg.vxlan_port,
            )
            .map(|why| cfg.issue(&format!("peer[{i}].address"), why))
        })
        .collect();
    if issues.is_empty() {
        Ok(())
    } else {
        Err(ApplyError::Config(issues).into())
    }
}

/// `check --json`: the validated config (no secrets: PSK *paths* only) and what was derived.
fn check_json(
    path: &Path,
    cfg: &SiteConfig,
    facts: &Facts,
    desired: &DesiredState,
    offline: bool,
) -> serde_json::Value {
    use serde_json::json;
    json!({
        "schema": 1,
        "config": path.display().to_string(),
        "valid": true,
        "offline": offline,
        "site": {
            "name": cfg.site.name,
            "id": cfg.site.id,
            "underlay": cfg.site.underlay,
            "vtep_ip": cfg.site.vtep_ip,
            "underlay_mtu": cfg.site.underlay_mtu,
        },
        "vtep_ip": (!offline || cfg.site.vtep_ip.is_some()).then_some(facts.vtep_ip),
        "underlay_mtu": facts.underlay_mtu,
        "access_mtu": desired.access_mtu,
        "mtu_derivation": desired.mtu.derivation,
        "bridge": desired.bridge,
        "datapath": desired.datapath.to_string(),
        "ipsec": {
            "enabled": cfg.ipsec.enabled,
            "backend": format!("{:?}", cfg.ipsec.backend).to_lowercase(),
            "esp_proposals": cfg.ipsec.esp_proposals.iter().map(|e| e.proposal.clone()).collect::<Vec<_>>(),
            "ike_proposals": cfg.ipsec.ike_proposals,
            "auth": cfg.ipsec.auth,
            "certificate": cfg.ipsec.pki.as_ref().map(|p| json!({
                "path": p.files.cert.display().to_string(),
                "key_path": p.files.key.display().to_string(),
                "subject": p.creds.cert.subject,
                "issuer": p.creds.cert.issuer,
                "serial": p.creds.cert.serial,
                "not_after_unix": p.creds.cert.not_after_unix,
                "cacerts": p.creds.cas.iter().map(|c| json!({"path": c.path.display().to_string(), "subject": c.info.subject})).collect::<Vec<_>>(),
                "crls": p.creds.crls.iter().map(|c| json!({"path": c.path.display().to_string(), "issuer": c.issuer, "revoked": c.revoked.len()})).collect::<Vec<_>>(),
            })),
        },
        "warnings": cfg.warnings.iter().map(|w| w.to_string()).collect::<Vec<_>>(),
        "peers": cfg.peers.iter().map(|p| json!({
            "name": p.name,
            "address": p.address,
            "id": p.id,
            "auth": p.auth,
            "psk_file": (p.auth == crate::config::AuthMethod::Psk).then(|| p.psk_file.display().to_string()),
        })).collect::<Vec<_>>(),
        "vlans": desired.vlans.values().map(|v| json!({
            "id": v.id,
            "vni": v.vni,
            "device": v.vxlan.name,
            "ports": v.access_ports,
            "peers": v.flood.values().collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "evpn": cfg.evpn.as_ref().map(|e| json!({
            "role": e.role,
            "asn": e.asn,
            "reflectors": e.reflectors,
            "listen_range": e.listen_range.map(|r| r.to_string()),
            "hold_time_secs": e.hold_time.as_secs(),
            "frr_missing": crate::evpn::frr::missing(),
        })),
    })
}
