//! The `l2s-vnf` command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use l2s_vnf::apply::{self, ApplyError, System};
use l2s_vnf::config::{self, SiteConfig};
use l2s_vnf::daemon::{self, control};
use l2s_vnf::model::{DesiredState, Facts};
use l2s_vnf::{discover, netlink, plan, status};
use tracing::warn;

/// Secure multi-site layer-2 switch for NFV: one site's OVS bridge, VXLAN VTEPs per VLAN and
/// IPsec between sites, converged from a site config.
#[derive(Parser)]
#[command(name = "l2s-vnf", version, about, long_about = None)]
struct Cli {
    /// Site config file.
    #[arg(short, long, global = true, env = "L2S_VNF_CONFIG", default_value = config::DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the config and print the derived plan summary (VLANs, peers, computed MTU).
    Check {
        /// Do not look at this machine (underlay MTU and address from the config, or assumed).
        #[arg(long)]
        offline: bool,
        /// Print the validated config and the computed MTUs as JSON (for orchestrators and
        /// the Ansible day-2 playbooks).
        #[arg(long)]
        json: bool,
    },
    /// Show what `apply` would create, change and remove; touches nothing.
    Plan,
    /// Converge the system to the config once, then exit.
    Apply,
    /// Remove every object this instance owns, nothing else.
    Down,
    /// Daemon: converge, then stay converged (events, periodic checks); reload on SIGHUP.
    Run,
    /// Ask the running daemon to reread its config and apply the difference (as SIGHUP does).
    Reload,
    /// Show the bridge, VLANs, VTEPs, ports, peers and MTUs: from the running daemon, or read
    /// from the system directly when no daemon runs.
    Status {
        /// Machine-readable output (stable schema, documented in the README).
        #[arg(long)]
        json: bool,
    },
    /// Path health to every peer (or one) over the protected path: RTT, jitter, loss, and
    /// whether a full-size frame passes. Exit 0 when every path is healthy.
    Probe {
        /// Only this peer (by name).
        peer: Option<String>,
        /// Seconds of small probes (10 a second; default: the periodic five); at most 600.
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=l2s_vnf::probe::MAX_PROBE_SECS))]
        secs: u64,
        /// Add a bandwidth test of as many seconds (at least one).
        #[arg(long)]
        throughput: bool,
        /// `{"schema":1,"paths":{"<peer>":{…}}}`.
        #[arg(long)]
        json: bool,
    },
    /// The MAC table: each MAC by VLAN, behind a local access port or a peer site, and its age.
    Macs {
        /// Only this VLAN.
        #[arg(long)]
        vlan: Option<u16>,
        /// `{"schema":1,"macs":[{"vlan","mac","port","peer","age_secs"}]}`.
        #[arg(long)]
        json: bool,
    },
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("L2S_VNF_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}

/// A command whose output is piped into `head` ends quietly when the reader goes, as any Unix
/// tool does (Rust ignores SIGPIPE, which turns a closed pipe into a panic). Not for the
/// daemon: a control client that hangs up must not kill it.
fn restore_sigpipe() {
    // SAFETY: called first thing in main, before any other thread exists; SIG_DFL is a valid
    // disposition for SIGPIPE.
    #[allow(unsafe_code)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run) {
        restore_sigpipe();
    }
    init_logging();
    let loaded = SiteConfig::load(&cli.config);
    // Two workers: the kernel's dumps and ovsdb-server's answers of a large observation
    // are read side by side (the machines are 2-core VMs).
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // `reload` and `status` talk to the daemon even when the file on disk is broken (the
    // daemon validates a reload itself and keeps its running config).
    let socket = config::control_socket_hint(&cli.config);
    let cfg = match (loaded, &cli.command) {
        (Ok(c), _) => c,
        (Err(_), Command::Reload) => return rt.block_on(reload_cmd(&socket)),
        (Err(e), Command::Status { json }) => {
            return match rt.block_on(daemon_status(&socket, *json)) {
                Ok(Some(code)) => code,
                Ok(None) => {
                    eprintln!("error: {e}");
                    ExitCode::from(2)
                }
                Err(err) => {
                    eprintln!("error: {err}");
                    ExitCode::FAILURE
                }
            };
        }
        (Err(e), _) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    // What is valid but needs attention soon (a certificate about to expire).
    for w in &cfg.warnings {
        if matches!(cli.command, Command::Run) {
            warn!("{w}");
        } else {
            eprintln!("warning: {w}");
        }
    }
    let r = rt.block_on(async {
        match cli.command {
            Command::Check { offline, json } => check(&cli.config, &cfg, offline, json).await,
            Command::Plan => plan_cmd(&cfg).await,
            Command::Apply => apply_cmd(&cfg).await,
            Command::Down => down(&cfg).await,
            Command::Status { json } => status_cmd(&cfg, json).await,
            Command::Run => {
                warn_insecure(&cfg);
                daemon::run(cli.config.clone(), cfg).await?;
                Ok(ExitCode::SUCCESS)
            }
            Command::Reload => Ok(reload_cmd(&cfg.daemon.control_socket).await),
            Command::Macs { vlan, json } => macs_cmd(&cfg, vlan, json).await,
            Command::Probe {
                peer,
                secs,
                throughput,
                json,
            } => probe_cmd(&cfg, peer, secs, throughput, json).await,
        }
    });
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            match e {
                ApplyError::Config(_) => ExitCode::from(2),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

fn warn_insecure(cfg: &SiteConfig) {
    if !cfg.ipsec.enabled {
        warn!("IPsec is disabled ([ipsec] enabled = false, insecure = true): VXLAN crosses the underlay in clear text; lab use only");
    }
}

async fn check(
    path: &Path,
    cfg: &SiteConfig,
    offline: bool,
    json: bool,
) -> Result<ExitCode, ApplyError> {
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
        let nl = netlink::Netlink::connect()?;
        let mut facts = discover::facts(cfg, &nl).await?;
        if cfg.ipsec.enabled {
            // Ask charon which backend it runs (`auto`) and whether it can negotiate the
            // proposals; without charon, assume as offline.
            let backend = match l2s_vnf::vici::Client::connect(&cfg.ipsec.vici).await {
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
            if backend == l2s_vnf::model::IpsecBackend::Kernel {
                bypass_check(cfg, &facts)?;
            }
        }
        facts
    };
    let desired = DesiredState::build(cfg, &facts).map_err(ApplyError::Config)?;
    if json {
        let doc = check_json(path, cfg, &facts, &desired, offline);
        match serde_json::to_string_pretty(&doc) {
            Ok(j) => println!("{j}"),
            Err(e) => return Err(ApplyError::Refused(format!("cannot encode: {e}"))),
        }
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
        let now = l2s_vnf::pki::now_unix();
        println!(
            "certificate {} as `{}`, expires in {} days ({}); {} CA(s), {} CRL(s)",
            c.describe(),
            cfg.site.id,
            c.days_left(now),
            l2s_vnf::pki::utc_date(c.not_after_unix),
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
fn bypass_check(cfg: &SiteConfig, facts: &Facts) -> Result<(), ApplyError> {
    let policies = l2s_vnf::xfrm::dump().map_err(|e| {
        ApplyError::Refused(format!("cannot read the kernel's IPsec policies: {e}"))
    })?;
    let issues: Vec<_> = cfg
        .peers
        .iter()
        .enumerate()
        .filter_map(|(i, p)| {
            l2s_vnf::health::bypass_reason(
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
        Err(ApplyError::Config(issues))
    }
}

/// The backend when charon cannot be asked: `auto` is taken as libipsec, whose MTU is the
/// smaller of the two.
fn offline_backend(cfg: &SiteConfig) -> l2s_vnf::model::IpsecBackend {
    match cfg.ipsec.backend {
        l2s_vnf::config::BackendChoice::Kernel => l2s_vnf::model::IpsecBackend::Kernel,
        _ => l2s_vnf::model::IpsecBackend::Libipsec,
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
            "psk_file": (p.auth == l2s_vnf::config::AuthMethod::Psk).then(|| p.psk_file.display().to_string()),
        })).collect::<Vec<_>>(),
        "vlans": desired.vlans.values().map(|v| json!({
            "id": v.id,
            "vni": v.vni,
            "device": v.vxlan.name,
            "ports": v.access_ports,
            "peers": v.flood.values().collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

async fn plan_cmd(cfg: &SiteConfig) -> Result<ExitCode, ApplyError> {
    let sys = System::connect(cfg).await?;
    let p = apply::prepare(cfg, &sys).await?;
    println!(
        "plan for site {} (bridge {}, access MTU {}):",
        cfg.site.name, cfg.switch.bridge, p.desired.access_mtu
    );
    print!("{}", p.plan);
    Ok(ExitCode::SUCCESS)
}

async fn apply_cmd(cfg: &SiteConfig) -> Result<ExitCode, ApplyError> {
    warn_insecure(cfg);
    let sys = System::connect(cfg).await?;
    let p = apply::prepare(cfg, &sys).await?;
    if p.plan.is_empty() {
        println!(
            "no changes: the system matches the config (access MTU {})",
            p.desired.access_mtu
        );
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", p.plan);
    let report = apply::execute(&sys, &p.plan, &p.actual).await?;
    println!(
        "applied {} change(s) in {} ms (access MTU {})",
        report.changes,
        report.elapsed.as_millis(),
        p.desired.access_mtu
    );
    Ok(ExitCode::SUCCESS)
}

async fn down(cfg: &SiteConfig) -> Result<ExitCode, ApplyError> {
    let sys = System::connect_lenient(cfg).await?;
    if sys.vici.is_none() && cfg.ipsec.enabled {
        warn!("charon is not reachable: its l2s-vnf connections cannot be unloaded now");
    }
    let actual = sys.observe(cfg).await?;
    let p = plan::teardown(&cfg.switch.bridge, &cfg.site.name, &actual);
    if p.is_empty() {
        println!("nothing to remove: this instance owns nothing here");
        return Ok(ExitCode::SUCCESS);
    }
    print!("{p}");
    let report = apply::execute(&sys, &p, &actual).await?;
    println!("removed in {} ms", report.elapsed.as_millis());
    Ok(ExitCode::SUCCESS)
}

/// Ask the daemon to reload; prints what it applied or why it refused.
async fn reload_cmd(socket: &Path) -> ExitCode {
    let reply = match control::request(
        socket,
        control::Request::Reload,
        std::time::Duration::from_secs(120),
    )
    .await
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if !reply.ok {
        eprintln!(
            "error: {}",
            reply.error.as_deref().unwrap_or("the daemon refused")
        );
        return ExitCode::from(2);
    }
    let r = reply.reload.unwrap_or_default();
    if r.changes.is_empty() {
        println!("reloaded: no changes ({:.1} ms)", r.duration_ms);
    } else {
        for c in &r.changes {
            println!("  {c}");
        }
        println!(
            "reloaded: {} change(s) applied in {:.1} ms",
            r.changes.len(),
            r.duration_ms
        );
    }
    ExitCode::SUCCESS
}

/// The running daemon's status, printed; `None` when no daemon runs.
async fn daemon_status(socket: &Path, json: bool) -> Result<Option<ExitCode>, ApplyError> {
    match control::request(
        socket,
        control::Request::Status,
        std::time::Duration::from_secs(15),
    )
    .await
    {
        Ok(reply) => match reply.status {
            Some(s) if reply.ok => {
                print_status(&s, json)?;
                Ok(Some(ExitCode::SUCCESS))
            }
            _ => Err(ApplyError::Refused(format!(
                "the daemon did not give its status: {}",
                reply.error.unwrap_or_default()
            ))),
        },
        Err(control::ControlError::NotRunning { .. }) => Ok(None),
        Err(e) => Err(ApplyError::Refused(e.to_string())),
    }
}

fn print_status(s: &status::Status, json: bool) -> Result<(), ApplyError> {
    if json {
        match serde_json::to_string_pretty(s) {
            Ok(j) => println!("{j}"),
            Err(e) => return Err(ApplyError::Refused(format!("cannot encode status: {e}"))),
        }
    } else {
        print!("{s}");
    }
    Ok(())
}

async fn status_cmd(cfg: &SiteConfig, json: bool) -> Result<ExitCode, ApplyError> {
    if let Some(code) = daemon_status(&cfg.daemon.control_socket, json).await? {
        return Ok(code);
    }
    let sys = System::connect_lenient(cfg).await?;
    let actual = sys.observe(cfg).await?;
    let mut s = status::build(cfg, &actual, actual.security.reachable_sas());
    s.warn_refused_frames(None);
    print_status(&s, json)?;
    Ok(ExitCode::SUCCESS)
}

async fn macs_cmd(cfg: &SiteConfig, vlan: Option<u16>, json: bool) -> Result<ExitCode, ApplyError> {
    let sys = System::connect_lenient(cfg).await?;
    let entries = l2s_vnf::macs::table(cfg, &sys, vlan).await?;
    if json {
        let doc = serde_json::json!({"schema": 1, "macs": entries});
        match serde_json::to_string_pretty(&doc) {
            Ok(j) => println!("{j}"),
            Err(e) => return Err(ApplyError::Refused(format!("cannot encode: {e}"))),
        }
    } else {
        print!("{}", l2s_vnf::macs::render(&entries));
    }
    Ok(ExitCode::SUCCESS)
}

/// `probe`: asked of the daemon (it owns the probe port), or done here when none runs.
async fn probe_cmd(
    cfg: &SiteConfig,
    peer: Option<String>,
    secs: u64,
    throughput: bool,
    json: bool,
) -> Result<ExitCode, ApplyError> {
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
        Ok(r) => return Err(ApplyError::Refused(r.error.unwrap_or_default())),
        Err(control::ControlError::NotRunning { .. }) => {
            probe_here(cfg, peer, secs, throughput).await?
        }
        Err(e) => return Err(ApplyError::Refused(e.to_string())),
    };
    if json {
        let doc = serde_json::json!({"schema": 1, "paths": results});
        match serde_json::to_string_pretty(&doc) {
            Ok(j) => println!("{j}"),
            Err(e) => return Err(ApplyError::Refused(format!("cannot encode: {e}"))),
        }
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
) -> Result<std::collections::BTreeMap<String, l2s_vnf::probe::PathHealth>, ApplyError> {
    let nl = netlink::Netlink::connect()?;
    let mut facts = discover::facts(cfg, &nl).await?;
    if cfg.ipsec.enabled {
        facts.ipsec_backend = Some(
            match l2s_vnf::vici::Client::connect(&cfg.ipsec.vici).await {
                Ok(v) => apply::resolve_backend(cfg, &v).await?,
                Err(_) => offline_backend(cfg),
            },
        );
    }
    let desired = DesiredState::build(cfg, &facts).map_err(ApplyError::Config)?;
    let paths = daemon::paths::Paths::bind(facts.vtep_ip, cfg.vxlan_port)
        .await
        .map_err(|e| ApplyError::Refused(format!("cannot bind the probe port: {e}")))?;
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
        .map_err(ApplyError::Refused)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_durations_are_bounded_on_the_command_line() {
        assert!(Cli::try_parse_from(["l2s-vnf", "probe", "--secs", "600"]).is_ok());
        let e = Cli::try_parse_from(["l2s-vnf", "probe", "--secs", "99999999999"])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("not in 0..=600"), "{e}");
    }
}
