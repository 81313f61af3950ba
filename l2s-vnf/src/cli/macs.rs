//! `l2s-vnf macs`: the MAC table, each MAC behind a local port or a peer site.

use std::process::ExitCode;

use crate::apply::System;
use crate::cli::{print_json, CliError};
use crate::config::SiteConfig;

pub async fn exec(cfg: &SiteConfig, vlan: Option<u16>, json: bool) -> Result<ExitCode, CliError> {
    let sys = System::connect_lenient(cfg).await?;
    let entries = crate::status::macs::table(cfg, &sys, vlan).await?;
    if json {
        let doc = serde_json::json!({"schema": 1, "macs": entries});
        print_json(&doc, "")?;
    } else {
        print!("{}", crate::status::macs::render(&entries));
    }
    Ok(ExitCode::SUCCESS)
}
