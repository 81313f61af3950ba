//! `l2s-vnf plan`: what `apply` would create, change and remove; touches nothing.

use std::process::ExitCode;

use crate::apply::{self, System};
use crate::cli::CliError;
use crate::config::SiteConfig;

pub async fn exec(cfg: &SiteConfig) -> Result<ExitCode, CliError> {
    let sys = System::connect(cfg).await?;
    let cfg = &apply::evpn::effective_for_apply(cfg, &sys).await?;
    let p = apply::prepare(cfg, &sys).await?;
    println!(
        "plan for site {} (bridge {}, access MTU {}):",
        cfg.site.name, cfg.switch.bridge, p.desired.access_mtu
    );
    print!("{}", p.plan);
    Ok(ExitCode::SUCCESS)
}
