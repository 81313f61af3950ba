//! `l2s-vnf apply`: converge the system to the config once.

use std::process::ExitCode;

use crate::apply::{self, System};
use crate::cli::{warn_insecure, CliError};
use crate::config::SiteConfig;

pub async fn exec(cfg: &SiteConfig) -> Result<ExitCode, CliError> {
    warn_insecure(cfg);
    let sys = System::connect(cfg).await?;
    let cfg = &apply::evpn::effective_for_apply(cfg, &sys).await?;
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
