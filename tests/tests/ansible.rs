//! Ansible, tried as an operator would: the role and playbooks configure two lab sites (each
//! host is the local machine; `l2s_vnf_exec_prefix` runs every command inside the site's
//! namespace), with the PSK from an Ansible Vault. VLAN 101 comes up and carries pings; then
//! `add-vlan.yml` adds VLAN 102 and that carries pings too. Also lint (production profile).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use l2s_lab::{l2s_bin, require_lab, run, Lab, TestCa};

fn ansible_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../ansible")
}

/// What a task printed for each host (`ok: [host] => {…}`, JSON as the default callback
/// writes it), by host.
fn task_results(out: &str, task: &str) -> std::collections::BTreeMap<String, serde_json::Value> {
    let start = out
        .find(&format!("TASK [{task}]"))
        .unwrap_or_else(|| panic!("no task `{task}` in:\n{out}"));
    let section = &out[start..];
    let end = section[1..].find("TASK [").map_or(section.len(), |e| e + 1);
    let mut results = std::collections::BTreeMap::new();
    let mut rest = &section[..end];
    while let Some(i) = rest.find("ok: [") {
        let after = &rest[i + 5..];
        let host = after.split(']').next().unwrap_or("").to_string();
        let json_at = after.find('{').unwrap_or(after.len());
        let value = serde_json::Deserializer::from_str(&after[json_at..])
            .into_iter::<serde_json::Value>()
            .next()
            .and_then(Result::ok)
            .unwrap_or_else(|| panic!("{task} for {host}: no JSON in:\n{out}"));
        results.insert(host, value);
        rest = &after[json_at..];
    }
    results
}

/// Per host, the changed-task count of a run's recap (`PLAY RECAP`).
fn changed_per_host(recap: &str) -> Vec<(String, u32)> {
    recap
        .lines()
        .filter(|l| l.contains(" : ok="))
        .map(|l| {
            let host = l.split(" : ").next().unwrap_or("").trim().to_string();
            let changed = l
                .split_whitespace()
                .find_map(|w| w.strip_prefix("changed="))
                .and_then(|n| n.parse().ok())
                .unwrap_or(u32::MAX);
            (host, changed)
        })
        .collect()
}

fn playbook(inv: &Path, pw: &Path, book: &str, extra: &[&str]) -> String {
    let out = run(Command::new("ansible-playbook")
        .current_dir(ansible_dir())
        .arg("-i")
        .arg(inv)
        .arg("--vault-password-file")
        .arg(pw)
        .arg(book)
        .args(extra)
        .env("ANSIBLE_NOCOLOR", "1"))
    .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{book} failed:\n{text}");
    text
}

/// Stops the daemons the playbooks started (by the pid their status gives, only if that
/// process runs our binary on this lab's config).
struct Daemons<'a>(&'a Lab);

impl Drop for Daemons<'_> {
    fn drop(&mut self) {
        for site in ["a", "b"] {
            let Ok(out) = self.0.l2s(site, &["status", "--json"]) else {
                continue;
            };
            let Ok(s) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
                continue;
            };
            let Some(pid) = s["daemon"]["pid"].as_i64() else {
                continue;
            };
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&*self.0.dir.to_string_lossy()) {
                // SAFETY: kill(2) on a daemon of this lab (checked through its command line).
                #[allow(unsafe_code)]
                unsafe {
                    libc::kill(pid as i32, libc::SIGTERM);
                }
            }
        }
    }
}

#[test]
fn ansible_lint_production_profile_and_syntax() {
    let out = run(Command::new("ansible-lint")
        .current_dir(ansible_dir())
        .args(["--profile", "production", "--nocolor"]))
    .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "ansible-lint:\n{text}");
    for book in [
        "site.yml",
        "add-vlan.yml",
        "remove-vlan.yml",
        "add-peer.yml",
        "remove-peer.yml",
        "status.yml",
    ] {
        let out = run(Command::new("ansible-playbook")
            .current_dir(ansible_dir())
            .args(["--syntax-check", book]))
        .unwrap();
        assert!(
            out.status.success(),
            "{book}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn playbooks_configure_two_lab_sites_and_add_a_vlan() {
    require_lab!();
    let mut lab = Lab::new(2).unwrap();
    let a101 = lab.add_vnf("a", "acc101", "10.101.0.1/24").unwrap();
    let b101 = lab.add_vnf("b", "acc101", "10.101.0.2/24").unwrap();
    let a102 = lab.add_vnf("a", "acc102", "10.102.0.1/24").unwrap();
    let b102 = lab.add_vnf("b", "acc102", "10.102.0.2/24").unwrap();
    for s in ["a", "b"] {
        lab.start_charon(s).unwrap();
    }
    // The sites authenticate with certificates from a throw-away CA; each site's private
    // key lives in an Ansible Vault (host_vars/<site>/vault.yml beside the inventory).
    let pw = lab.dir.join("vault-password");
    std::fs::write(&pw, "lab-vault-password-only-for-this-test\n").unwrap();
    let ca = TestCa::new(&lab.dir, "federation-ca").unwrap();
    let mut certs = std::collections::BTreeMap::new();
    for s in ["a", "b"] {
        let issued = ca
            .issue(&format!("site-{s}"), &format!("site-{s}"), 365)
            .unwrap();
        let key = std::fs::read_to_string(&issued.key).unwrap();
        let dir = lab.dir.join("host_vars").join(format!("site-{s}"));
        std::fs::create_dir_all(&dir).unwrap();
        let vault = dir.join("vault.yml");
        let indented: String = key.lines().map(|l| format!("  {l}\n")).collect();
        std::fs::write(&vault, format!("l2s_vnf_site_key: |\n{indented}")).unwrap();
        let out = run(Command::new("ansible-vault")
            .args(["encrypt", "--vault-password-file"])
            .arg(&pw)
            .arg(&vault))
        .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(std::fs::read_to_string(&vault)
            .unwrap()
            .starts_with("$ANSIBLE_VAULT"));
        certs.insert(s, issued.cert);
    }
    // The PSK of peers still on PSK: in a Vault too (unused here, written 0600).
    let vault = lab.dir.join("vault.yml");
    std::fs::write(
        &vault,
        "l2s_vnf_psk: correct-horse-battery-staple-ansible\n",
    )
    .unwrap();
    let out = run(Command::new("ansible-vault")
        .args(["encrypt", "--vault-password-file"])
        .arg(&pw)
        .arg(&vault))
    .unwrap();
    assert!(out.status.success());

    let bin = l2s_bin().unwrap();
    let host = |s: &str, peer: &str| {
        let site = lab.site(s);
        format!(
            "    site-{s}:\n      ansible_connection: local\n      ansible_become: false\n      ansible_python_interpreter: python3\n      l2s_vnf_install: false\n      l2s_vnf_service_mode: command\n      l2s_vnf_bin: {bin}\n      l2s_vnf_exec_prefix: ip netns exec {ns}\n      l2s_vnf_config_path: {dir}/site.toml\n      l2s_vnf_psk_path: {dir}/psk\n      l2s_vnf_control_socket: {dir}/control.sock\n      l2s_vnf_daemon_log: {dir}/daemon.log\n      l2s_vnf_ovsdb: unix:{ovsdb}\n      l2s_vnf_vici: unix://{dir}/charon.vici\n      l2s_vnf_ipsec_backend: auto\n      l2s_vnf_underlay: eth1\n      l2s_vnf_auth: pubkey\n      l2s_vnf_cert_path: {dir}/site.crt\n      l2s_vnf_key_path: {dir}/site.key\n      l2s_vnf_ca_path: {dir}/ca.crt\n      l2s_vnf_site_cert: \"{{{{ lookup('ansible.builtin.file', '{cert}') }}}}\"\n      l2s_vnf_ca_cert: \"{{{{ lookup('ansible.builtin.file', '{ca}') }}}}\"\n      l2s_vnf_peers:\n        - {{name: site-{peer}, address: {addr}}}\n      l2s_vnf_vlans:\n        - {{id: 101, ports: [acc101]}}\n",
            bin = bin.display(),
            ns = site.ns,
            dir = site.dir.display(),
            ovsdb = site.ovsdb_sock.display(),
            addr = lab.site(peer).underlay_ip,
            cert = certs[s].display(),
            ca = ca.cert.display(),
        )
    };
    let inv = lab.dir.join("inventory.yml");
    std::fs::write(
        &inv,
        format!("l2s_sites:\n  hosts:\n{}{}", host("a", "b"), host("b", "a")),
    )
    .unwrap();
    let vault_arg = format!("@{}", vault.display());
    let _daemons = Daemons(&lab);

    let out = playbook(&inv, &pw, "site.yml", &["-e", &vault_arg]);
    assert!(
        !out.contains("correct-horse") && !out.contains("PRIVATE KEY"),
        "a secret was printed:\n{out}"
    );
    let key_mode = std::fs::metadata(lab.site("a").dir.join("site.key"))
        .unwrap()
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&key_mode) & 0o777,
        0o600
    );
    let psk_mode = std::fs::metadata(lab.site("a").dir.join("psk"))
        .unwrap()
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&psk_mode) & 0o777,
        0o600
    );
    let st: serde_json::Value =
        serde_json::from_str(&lab.l2s_ok("a", &["status", "--json"]).unwrap()).unwrap();
    assert_eq!(st["source"], "daemon", "{st:#}");
    assert_eq!(
        st["ipsec"]["certificate"]["subject"], "O=L2S Test, CN=site-a",
        "{st:#}"
    );
    let mtu = st["access_mtu"].as_u64().unwrap() as u32;
    lab.set_vnf_mtu(&[&a101, &b101, &a102, &b102], mtu).unwrap();
    assert!(
        lab.ping_eventually(&a101, &b101.ip, Duration::from_secs(20)),
        "VLAN 101"
    );

    // A second run changes nothing.
    let again = playbook(&inv, &pw, "site.yml", &["-e", &vault_arg]);
    assert_eq!(
        changed_per_host(&again),
        [("site-a".to_string(), 0), ("site-b".to_string(), 0)],
        "{again}"
    );

    // Day 2: add VLAN 102 at both sites.
    let out = playbook(
        &inv,
        &pw,
        "add-vlan.yml",
        &["-e", &vault_arg, "-e", "vlan_id=102", "-e", "ports=acc102"],
    );
    assert!(
        out.contains("RUNNING HANDLER [l2s_vnf : Reload l2s-vnf]"),
        "{out}"
    );
    assert!(
        lab.ping_eventually(&a102, &b102.ip, Duration::from_secs(20)),
        "VLAN 102"
    );
    assert!(lab.ping(&a101, &b101.ip, 3), "VLAN 101 after the reload");
    // Each site's daemon, asked by status.yml (strict: no warning anywhere), serves both VLANs
    // and sees its peer up.
    let out = playbook(&inv, &pw, "status.yml", &["-e", "strict=true"]);
    let summary = task_results(&out, "Summary");
    assert_eq!(summary.len(), 2, "{out}");
    for (host, peer) in [("site-a", "site-b"), ("site-b", "site-a")] {
        let msg = &summary[host]["msg"];
        assert_eq!(msg["source"], "daemon", "{host}: {msg:#}");
        assert_eq!(
            msg["vlans"],
            serde_json::json!([101, 102]),
            "{host}: {msg:#}"
        );
        assert_eq!(
            msg["peers_up"],
            serde_json::json!([peer]),
            "{host}: {msg:#}"
        );
        assert_eq!(msg["warnings"], serde_json::json!([]), "{host}: {msg:#}");
    }
}
