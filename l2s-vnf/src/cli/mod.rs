//! The `l2s-vnf` command line: one file per subcommand, each with an `exec`. This module
//! parses the arguments, loads the config and maps errors to exit codes (2: the config or the
//! command line is wrong; 1: the system refused).

mod apply;
mod check;
mod down;
mod macs;
mod plan;
mod probe;
mod reload;
mod run;
mod status;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing::warn;

use crate::apply::ApplyError;
use crate::base::kinds::{BackendChoice, IpsecBackend};
use crate::config::{self, SiteConfig};
use crate::daemon::control::ControlError;

/// Why a command failed (each says what was being done).
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error(transparent)]
    Daemon(#[from] crate::daemon::DaemonError),
    #[error(transparent)]
    Macs(#[from] crate::status::macs::MacsError),
    #[error("cannot encode{what}: {source}")]
    Encode {
        what: &'static str,
        source: serde_json::Error,
    },
    #[error("the daemon did not give its status: {0}")]
    NoDaemonStatus(String),
    /// The daemon refused a request; its own words.
    #[error("{0}")]
    DaemonRefused(String),
    #[error("cannot read the kernel's IPsec policies: {0}")]
    Policies(std::io::Error),
    #[error(transparent)]
    Evpn(#[from] crate::evpn::EvpnError),
    #[error("cannot bind the probe port: {0}")]
    ProbePort(std::io::Error),
    /// A measurement that could not be made; the prober's own words.
    #[error("{0}")]
    Probe(String),
}

/// Print a document as pretty JSON (`what` names it in the error: "" or " status").
pub(crate) fn print_json(doc: &impl serde::Serialize, what: &'static str) -> Result<(), CliError> {
    let text =
        serde_json::to_string_pretty(doc).map_err(|source| CliError::Encode { what, source })?;
    println!("{text}");
    Ok(())
}

impl From<crate::linux::NetlinkError> for CliError {
    fn from(e: crate::linux::NetlinkError) -> Self {
        CliError::Apply(e.into())
    }
}

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
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=crate::status::probe::MAX_PROBE_SECS))]
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
        /// `{"schema":1,"macs":[{"vlan","mac","port","peer","age_secs","evpn"}]}`.
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

/// The whole command line: parse, load the config, run the subcommand; the exit code.
pub fn main() -> ExitCode {
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
        (Err(_), Command::Reload) => return rt.block_on(reload::exec(&socket)),
        (Err(e), Command::Status { json }) => {
            return match rt.block_on(status::from_daemon(&socket, *json)) {
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
            Command::Check { offline, json } => check::exec(&cli.config, &cfg, offline, json).await,
            Command::Plan => plan::exec(&cfg).await,
            Command::Apply => apply::exec(&cfg).await,
            Command::Down => down::exec(&cfg).await,
            Command::Status { json } => status::exec(&cfg, json).await,
            Command::Run => run::exec(cli.config.clone(), cfg).await,
            Command::Reload => Ok(reload::exec(&cfg.daemon.control_socket).await),
            Command::Macs { vlan, json } => macs::exec(&cfg, vlan, json).await,
            Command::Probe {
                peer,
                secs,
                throughput,
                json,
            } => probe::exec(&cfg, peer, secs, throughput, json).await,
        }
    });
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            match e {
                CliError::Apply(ApplyError::Config(_)) => ExitCode::from(2),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

pub(crate) fn warn_insecure(cfg: &SiteConfig) {
    if !cfg.ipsec.enabled {
        warn!("IPsec is disabled ([ipsec] enabled = false, insecure = true): VXLAN crosses the underlay in clear text; lab use only");
    }
}

/// The backend when charon cannot be asked: `auto` is taken as libipsec, whose MTU is the
/// smaller of the two.
pub(crate) fn offline_backend(cfg: &SiteConfig) -> IpsecBackend {
    match cfg.ipsec.backend {
        BackendChoice::Kernel => IpsecBackend::Kernel,
        _ => IpsecBackend::Libipsec,
    }
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
