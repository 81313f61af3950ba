//! `l2s-vnf down`: remove every object this instance owns, nothing else.

use std::process::ExitCode;

use tracing::warn;

use crate::apply::{self, System};
use crate::cli::CliError;
use crate::config::SiteConfig;
use crate::plan;

pub async fn exec(cfg: &SiteConfig) -> Result<ExitCode, CliError> {
    let sys = System::connect_lenient(cfg).await?;
    if sys.vici.is_none() && cfg.ipsec.enabled {
        warn!("charon is not reachable: its l2s-vnf connections cannot be unloaded now");
    }
    let actual = sys.observe(cfg).await?;
    let p = plan::teardown(&cfg.switch.bridge, &cfg.site.name, &actual);
    // EVPN: the control namespace and FRR's files (FRR itself ends with its daemon).
    let ctl = crate::evpn::ControlNs::for_instance(&cfg.daemon.control_socket);
    let frr_dir = crate::base::names::evpn_dir(&cfg.daemon.control_socket);
    let evpn_left = ctl.exists() || frr_dir.exists();
    if evpn_left {
        ctl.remove()?;
        let _ = std::fs::remove_dir_all(&frr_dir);
        println!(
            "- EVPN control namespace {} and {}",
            ctl.name,
            frr_dir.display()
        );
    }
    if p.is_empty() {
        if !evpn_left {
            println!("nothing to remove: this instance owns nothing here");
        }
        return Ok(ExitCode::SUCCESS);
    }
    print!("{p}");
    let report = apply::execute(&sys, &p, &actual).await?;
    println!("removed in {} ms", report.elapsed.as_millis());
    Ok(ExitCode::SUCCESS)
}
