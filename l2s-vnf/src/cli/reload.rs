//! `l2s-vnf reload`: ask the running daemon to reread its config and apply the difference.

use std::path::Path;
use std::process::ExitCode;

use crate::daemon::control;

/// Ask the daemon to reload; prints what it applied or why it refused.
pub async fn exec(socket: &Path) -> ExitCode {
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
