//! `l2s-vnf run`: the daemon (converge, then stay converged; reload on SIGHUP).

use std::path::PathBuf;
use std::process::ExitCode;

use crate::cli::{warn_insecure, CliError};
use crate::config::SiteConfig;
use crate::daemon;

pub async fn exec(config_path: PathBuf, cfg: SiteConfig) -> Result<ExitCode, CliError> {
    warn_insecure(&cfg);
    daemon::run(config_path, cfg).await?;
    Ok(ExitCode::SUCCESS)
}
