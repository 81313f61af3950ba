//! `l2s-vnf status`: from the running daemon, or read from the system when none runs.

use std::path::Path;
use std::process::ExitCode;

use crate::apply::System;
use crate::cli::{print_json, CliError};
use crate::config::SiteConfig;
use crate::daemon::control;
use crate::status;

/// The running daemon's status, printed; `None` when no daemon runs.
pub async fn from_daemon(socket: &Path, json: bool) -> Result<Option<ExitCode>, CliError> {
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
            _ => Err(CliError::NoDaemonStatus(reply.error.unwrap_or_default())),
        },
        Err(control::ControlError::NotRunning { .. }) => Ok(None),
        Err(e) => Err(CliError::Control(e)),
    }
}

fn print_status(s: &status::Status, json: bool) -> Result<(), CliError> {
    if json {
        print_json(s, " status")?;
    } else {
        print!("{s}");
    }
    Ok(())
}

pub async fn exec(cfg: &SiteConfig, json: bool) -> Result<ExitCode, CliError> {
    if let Some(code) = from_daemon(&cfg.daemon.control_socket, json).await? {
        return Ok(code);
    }
    let sys = System::connect_lenient(cfg).await?;
    let actual = sys.observe(cfg).await?;
    let mut s = status::build(cfg, &actual, actual.ipsec.reachable_sas());
    s.warn_refused_frames(None);
    print_status(&s, json)?;
    Ok(ExitCode::SUCCESS)
}
