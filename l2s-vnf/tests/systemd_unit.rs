//! The systemd unit: `systemd-analyze verify` accepts it (with ExecStart pointed at the binary
//! just built, since verify checks that the command exists), it is Type=notify with a
//! watchdog, ordered after OVS and strongSwan, and its hardening scores "OK" or better.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;

fn unit_text() -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("systemd/l2s-vnf.service");
    std::fs::read_to_string(p).unwrap()
}

fn local_copy(dir: &std::path::Path) -> PathBuf {
    let text = unit_text().replace("/usr/sbin/l2s-vnf", env!("CARGO_BIN_EXE_l2s-vnf"));
    let p = dir.join("l2s-vnf.service");
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn systemd_analyze_verify_accepts_the_unit() {
    let d = tempfile::tempdir().unwrap();
    let unit = local_copy(d.path());
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&unit)
        .output()
        .expect("systemd-analyze (package systemd) must be installed: run tests/deps.sh");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "verify failed:\n{stderr}");
    assert!(stderr.trim().is_empty(), "verify warned:\n{stderr}");
}

#[test]
fn unit_is_notify_with_watchdog_ordered_and_hardened() {
    let text = unit_text();
    for line in [
        "Type=notify",
        "WatchdogSec=",
        "ExecReload=/usr/sbin/l2s-vnf reload",
        "CapabilityBoundingSet=CAP_NET_ADMIN",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "RestrictAddressFamilies=AF_UNIX AF_NETLINK AF_INET AF_INET6",
        "LimitCORE=0",
        "LimitNOFILE=",
        "TasksMax=",
        "MemoryMax=",
        "ProtectProc=invisible",
    ] {
        assert!(text.contains(line), "{line} missing");
    }
    let after = text.lines().find(|l| l.starts_with("After=")).unwrap();
    assert!(after.contains("openvswitch-switch.service") && after.contains("strongswan.service"));
    // Debian's nftables.conf flushes the whole ruleset: the guard goes in after it.
    assert!(after.contains("nftables.service"), "{after}");

    let d = tempfile::tempdir().unwrap();
    let unit = local_copy(d.path());
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&unit)
        .output()
        .unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let score: f64 = all
        .split("exposure level for l2s-vnf.service: ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{all}"));
    assert!(score < 3.0, "exposure {score} (want < 3.0, 'OK'):\n{all}");
}
