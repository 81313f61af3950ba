//! `l2s-guest`: the guest lab by hand — one L2S VM (site A of the paper's NS) on Debian's own
//! kernel, configured by the project's cloud-init from the .deb, with the peer sites' and
//! VNFs' namespaces wired inside it.
//!
//! ```text
//! l2s-guest image          build (or find) the guest image and print where it is
//! l2s-guest up [SECS]      boot site A, print the ssh command for a shell in it, keep it up
//!                          until Enter (or SECS seconds), then remove it
//! ```
//! Needs root and tests/deps.sh's packages.

use std::io::BufRead as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use l2s_lab::guest::{self, Boot, Guest, Image};

/// Set when the wait for the user ends: Enter, SIGTERM or SIGINT.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

fn stop_on_signals() {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        #[allow(unsafe_code)]
        unsafe {
            libc::signal(sig, on_signal as *const () as libc::sighandler_t);
        }
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let missing = guest::missing_tools();
    if !missing.is_empty() {
        bail!("missing tools: {} (run tests/deps.sh)", missing.join(", "));
    }
    let deb = l2s_lab::package()?;
    let image = Image::ensure(&deb)?;
    match args.first().map(String::as_str) {
        Some("image") => println!("{}", image.dir.display()),
        Some("up") => {
            let pki = guest::GuestCa::new()?;
            let ud = guest::user_data("site-a", &pki.ca, "http://10.0.2.100/l2s-vnf.deb")?;
            println!("booting site A ({:?})…", guest::Accel::probe(&image));
            let g = Guest::boot(
                &image,
                Boot {
                    user_data: Some(&ud),
                    serve: Some(&deb),
                    memory_mib: 2048,
                    cpus: 2,
                    ..Default::default()
                },
            )?;
            println!(
                "guest up; cloud-init is configuring site A. A shell:\n  {}",
                g.ssh_command()
            );
            println!("in it: cloud-init status --wait; systemctl status l2s-vnf; l2s-vnf status");
            let limit = args.get(1).and_then(|s| s.parse::<u64>().ok());
            if limit.is_none() {
                println!("press Enter to remove the guest");
                std::thread::spawn(|| {
                    let _ = std::io::stdin().lock().lines().next();
                    STOP.store(true, Ordering::Relaxed);
                });
            }
            // SIGTERM and SIGINT end the wait too, so the guest is removed (by its Drop).
            stop_on_signals();
            let t = Instant::now();
            while !STOP.load(Ordering::Relaxed)
                && limit.is_none_or(|secs| t.elapsed() < Duration::from_secs(secs))
            {
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        _ => bail!("usage: l2s-guest image | up [SECS]"),
    }
    Ok(())
}
