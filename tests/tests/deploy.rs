//! Deploying like a VNF: the Debian package, the OSM descriptors (SOL006 YANG), the Heat
//! template, the cloud-init user-data, and every YAML file linted. The tools come from
//! tests/deps.sh (cargo-deb, cloud-init, yamllint, yangson, pyang, python-heatclient).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use l2s_lab::{l2s_bin, run, TestCa};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn ok(what: &str, cmd: &mut Command) -> String {
    let out = run(cmd.current_dir(root())).unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{what} failed:\n{text}");
    text
}

/// Render the cloud-init template for one site of the NS parameters (certificates from a
/// throw-away federation CA, as the NS example uses); returns (user-data path, site.toml
/// path), the config pointing at the credential files the user-data writes.
fn render_site(dir: &Path, member: &str) -> (PathBuf, PathBuf) {
    render_member(
        dir,
        Path::new("descriptors/osm/l2s_ns/params-3sites.yaml"),
        member,
        member,
    )
}

/// Render one member of a parameter file with a certificate for `id` from a fresh CA, and
/// write the config it installs (with its credential files) beside it.
fn render_member(dir: &Path, params: &Path, member: &str, id: &str) -> (PathBuf, PathBuf) {
    let ca = match TestCa::new(dir, &format!("ca-{member}")) {
        Ok(ca) => ca,
        Err(e) => panic!("{e:#}"),
    };
    let site = ca.issue(member, id, 365).unwrap();
    let read = |p: &Path| std::fs::read_to_string(p).unwrap();
    let ud = dir.join(format!("{member}.user-data"));
    ok(
        "rendering cloud-init",
        Command::new("python3")
            .arg("tests/deploy/render_cloud_init.py")
            .arg("cloud-init/l2s-user-data.yaml")
            .arg(params)
            .arg(member)
            .arg(&ud)
            .arg(format!("site_cert={}", read(&site.cert)))
            .arg(format!("site_key={}", read(&site.key)))
            .arg(format!("ca_cert={}", read(&ca.cert))),
    );
    let doc: serde_json::Value = serde_json::from_str(&ok(
        "reading the user-data",
        Command::new("python3").arg("-c").arg(format!(
            "import json,yaml;print(json.dumps(yaml.safe_load(open('{}'))))",
            ud.display()
        )),
    ))
    .unwrap();
    let file = |path: &str| -> (String, String) {
        let f = doc["write_files"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["path"] == path)
            .unwrap_or_else(|| panic!("{path} not written by the user-data"));
        (
            f["content"].as_str().unwrap().to_string(),
            f["permissions"].as_str().unwrap_or_default().to_string(),
        )
    };
    let (mut toml, _) = file("/etc/l2s-vnf/site.toml");
    for (path, mode) in [
        ("/etc/l2s-vnf/site.crt", "0644"),
        ("/etc/l2s-vnf/site.key", "0600"),
        ("/etc/l2s-vnf/ca.crt", "0644"),
    ] {
        let (content, written) = file(path);
        assert_eq!(written, mode, "{path} must be written with mode {mode}");
        let local = dir.join(format!("{member}-{}", path.rsplit('/').next().unwrap()));
        std::fs::write(&local, content).unwrap();
        let m = u32::from_str_radix(mode, 8).unwrap();
        std::fs::set_permissions(&local, std::fs::Permissions::from_mode(m)).unwrap();
        toml = toml.replace(path, &local.display().to_string());
    }
    assert_eq!(
        file("/etc/l2s-vnf/psk").1,
        "0600",
        "the PSK must be written with mode 0600"
    );
    let cfg = dir.join(format!("{member}.toml"));
    std::fs::write(&cfg, toml).unwrap();
    (ud, cfg)
}

/// The rendered user-data, once cloud-init's own schema check has accepted it.
fn valid_user_data(ud: &Path) -> String {
    let schema = ok(
        "cloud-init schema",
        Command::new("cloud-init")
            .args(["schema", "--config-file"])
            .arg(ud),
    );
    assert!(schema.contains("Valid cloud-config"), "{schema}");
    std::fs::read_to_string(ud).unwrap()
}

fn check_json(cfg: &Path) -> serde_json::Value {
    let out = ok(
        "l2s-vnf check",
        Command::new(l2s_bin().unwrap())
            .arg("-c")
            .arg(cfg)
            .args(["check", "--offline", "--json"]),
    );
    serde_json::from_str(&out).unwrap()
}

/// EVPN through the same day-1 path: the reflector and a site of the EVPN NS package
/// (`descriptors/osm/l2s_evpn_ns`), each rendered from its instantiation parameters (no peers;
/// the reflector without VLANs), valid for cloud-init, and accepted by `check` as EVPN with
/// the VTEP address as identity.
#[test]
fn cloud_init_renders_an_evpn_reflector_and_a_site_naming_only_it() {
    let d = tempfile::tempdir().unwrap();
    let params = root().join("descriptors/osm/l2s_evpn_ns/params-evpn.yaml");
    for (member, ip) in [("rr-1", "198.51.100.10"), ("site-a", "198.51.100.1")] {
        let (ud, cfg) = render_member(d.path(), &params, member, ip);
        let text = valid_user_data(&ud);
        assert!(
            text.contains("\n  - frr\n"),
            "FRR is installed with EVPN:\n{text}"
        );
        let c = check_json(&cfg);
        assert_eq!(c["site"]["id"], ip, "{c:#}");
        assert_eq!(c["peers"], serde_json::json!([]), "{c:#}");
        let e = &c["evpn"];
        if member == "rr-1" {
            assert_eq!(e["role"], "reflector", "{c:#}");
            assert_eq!(e["listen_range"], "198.51.100.0/24", "{c:#}");
            assert_eq!(c["vlans"], serde_json::json!([]), "{c:#}");
        } else {
            assert_eq!(e["role"], "site", "{c:#}");
            assert_eq!(
                e["reflectors"],
                serde_json::json!(["198.51.100.10"]),
                "{c:#}"
            );
            assert_eq!(e["hold_time_secs"], 9, "{c:#}");
            assert_eq!(c["vlans"][0]["id"], 101, "{c:#}");
        }
    }
}

#[test]
fn cloud_init_renders_to_schema_valid_user_data_and_an_accepted_config() {
    let d = tempfile::tempdir().unwrap();
    // The OSM package carries the same file (OSM looks for it in the package).
    assert_eq!(
        std::fs::read(root().join("cloud-init/l2s-user-data.yaml")).unwrap(),
        std::fs::read(root().join("descriptors/osm/l2s_vnf/cloud_init/l2s-cloud-init.yaml"))
            .unwrap(),
        "descriptors/osm/l2s_vnf/cloud_init/ has drifted from cloud-init/"
    );
    for (member, peers) in [
        ("site-a", ["site-b", "site-c"]),
        ("site-b", ["site-a", "site-c"]),
        ("site-c", ["site-a", "site-b"]),
    ] {
        let (ud, cfg) = render_site(d.path(), member);
        let text = valid_user_data(&ud);
        assert!(
            !text.contains("- frr"),
            "FRR installed without EVPN:\n{text}"
        );
        let c = check_json(&cfg);
        assert_eq!(c["site"]["name"], member);
        assert_eq!(c["ipsec"]["backend"], "kernel");
        assert_eq!(c["ipsec"]["auth"], "pubkey");
        assert_eq!(
            c["ipsec"]["certificate"]["subject"],
            format!("O=L2S Test, CN={member}"),
            "{c:#}"
        );
        let names: Vec<&str> = c["peers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, peers);
        assert_eq!(c["vlans"][0]["id"], 101);
        assert_eq!(c["vlans"][0]["ports"][0], "ens5");
        assert_eq!(c["access_mtu"], 1408, "{c:#}");
    }
    // A broken parameter set is caught by the same path: a non-numeric MTU.
    let bad = d.path().join("bad-params.yaml");
    std::fs::write(
        &bad,
        std::fs::read_to_string(root().join("descriptors/osm/l2s_ns/params-3sites.yaml"))
            .unwrap()
            .replace("access_mtu: 1408", "access_mtu: lots"),
    )
    .unwrap();
    let ud = d.path().join("bad.user-data");
    ok(
        "rendering",
        Command::new("python3")
            .arg("tests/deploy/render_cloud_init.py")
            .arg("cloud-init/l2s-user-data.yaml")
            .arg(&bad)
            .args(["site-a"])
            .arg(&ud)
            .args(["auth=psk", "psk=x"]),
    );
    let text = std::fs::read_to_string(&ud).unwrap();
    let toml = text
        .split("content: |\n")
        .nth(1)
        .unwrap()
        .lines()
        .take_while(|l| l.starts_with("      ") || l.is_empty())
        .map(|l| l.trim_start())
        .collect::<Vec<_>>()
        .join("\n");
    let cfg = d.path().join("bad.toml");
    std::fs::write(&cfg, toml).unwrap();
    let out = run(Command::new(l2s_bin().unwrap())
        .arg("-c")
        .arg(&cfg)
        .args(["check", "--offline"]))
    .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml"), "{err}");
}

#[test]
fn descriptors_are_sol006_valid_and_carry_the_computed_mtu() {
    let d = tempfile::tempdir().unwrap();
    let (_, cfg) = render_site(d.path(), "site-a");
    let mtu = check_json(&cfg)["access_mtu"].as_u64().unwrap().to_string();
    // ETSI's SOL006 v2.7.1 modules, as published (see their LICENSE).
    let yang = root().join("tests/deploy/etsi-sol006-v2.7.1");
    let out = ok(
        "SOL006 validation",
        Command::new("python3")
            .arg("tests/deploy/validate_descriptors.py")
            .arg(".")
            .arg(&yang)
            .arg(&mtu),
    );
    assert!(out.contains("SOL006 valid"), "{out}");
    let out = ok(
        "HOT validation",
        Command::new("python3")
            .arg("tests/deploy/validate_hot.py")
            .arg("descriptors/openstack/l2s-site.yaml")
            .arg(&mtu),
    );
    assert!(out.contains("parsed by heatclient"), "{out}");
}

#[test]
fn every_yaml_file_is_lint_clean() {
    let out = ok(
        "yamllint",
        Command::new("yamllint").args([
            "-s",
            "-c",
            ".yamllint",
            "descriptors",
            "cloud-init",
            "ansible",
            ".yamllint",
        ]),
    );
    assert!(out.trim().is_empty(), "{out}");
}

/// Build the package, install it here, run the installed binary on the installed example,
/// verify the installed unit, and purge it again.
#[test]
fn debian_package_builds_installs_and_checks_its_example() {
    if run(Command::new("dpkg-query").args(["-W", "l2s-vnf"]))
        .map(|o| o.status.success())
        .unwrap_or(false)
    {
        panic!(
            "an l2s-vnf package is already installed here; this test installs and purges its own"
        );
    }
    let out = ok(
        "cargo deb",
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["deb", "-p", "l2s-vnf", "--locked"]),
    );
    let deb = out
        .lines()
        .rev()
        .find(|l| l.trim_end().ends_with(".deb"))
        .unwrap()
        .trim()
        .to_string();
    struct Purge;
    impl Drop for Purge {
        fn drop(&mut self) {
            let _ = Command::new("dpkg").args(["--purge", "l2s-vnf"]).output();
        }
    }
    let _purge = Purge;
    ok("dpkg -i", Command::new("dpkg").args(["-i", &deb]));
    let out = ok(
        "installed check",
        Command::new("/usr/sbin/l2s-vnf").args([
            "-c",
            "/etc/l2s-vnf/site.toml",
            "check",
            "--offline",
        ]),
    );
    assert!(out.contains("valid"), "{out}");
    let mode = std::fs::metadata("/etc/l2s-vnf/psk")
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    assert!(Path::new("/usr/share/man/man8/l2s-vnf.8.gz").exists());
    let unit = [
        "/usr/lib/systemd/system/l2s-vnf.service",
        "/lib/systemd/system/l2s-vnf.service",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists())
    .expect("unit installed");
    ok(
        "systemd-analyze verify of the installed unit",
        Command::new("systemd-analyze").args(["verify", "--man=no", unit]),
    );
    // EVPN's drop-in, as cloud-init, Heat and Ansible install it: the merged unit verifies
    // with every key known, the drop-in is really read (it widens the sandbox: the exposure
    // grows), and the sandbox stays tight ("OK" is below 5 on systemd's scale).
    let dropin = "/usr/share/l2s-vnf/systemd/l2s-vnf-evpn.conf";
    let (alone, merged) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for d in [&alone, &merged] {
        std::fs::copy(unit, d.path().join("l2s-vnf.service")).unwrap();
    }
    std::fs::create_dir(merged.path().join("l2s-vnf.service.d")).unwrap();
    std::fs::copy(dropin, merged.path().join("l2s-vnf.service.d/evpn.conf"))
        .expect("the package ships the EVPN drop-in");
    let merged_unit = merged.path().join("l2s-vnf.service");
    let verify = run(Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&merged_unit))
    .unwrap();
    let said = String::from_utf8_lossy(&verify.stderr).into_owned();
    assert!(
        verify.status.success() && !said.contains("Unknown") && !said.contains("ignoring"),
        "the unit with the EVPN drop-in:\n{said}"
    );
    let exposure = |dir: &Path| -> f64 {
        let out = run(Command::new("systemd-analyze")
            .args(["security", "--offline=yes", "--no-pager"])
            .arg(dir.join("l2s-vnf.service")))
        .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines()
            .find_map(|l| l.split("l2s-vnf.service: ").nth(1))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no exposure level in:\n{text}"))
    };
    let (base, with_evpn) = (exposure(alone.path()), exposure(merged.path()));
    eprintln!("systemd exposure: {base} alone, {with_evpn} with the EVPN drop-in");
    assert!(
        with_evpn > base && with_evpn < 5.0,
        "exposure {base} alone, {with_evpn} with the EVPN drop-in"
    );
    let deps = ok("dpkg -s", Command::new("dpkg").args(["-s", "l2s-vnf"]));
    for dep in [
        "openvswitch-switch",
        "strongswan-swanctl",
        "nftables",
        "charon-systemd | strongswan-charon",
        "libstrongswan-standard-plugins",
    ] {
        assert!(deps.contains(dep), "{dep} missing in Depends:\n{deps}");
    }
    ok(
        "dpkg --purge",
        Command::new("dpkg").args(["--purge", "l2s-vnf"]),
    );
    assert!(!Path::new("/usr/sbin/l2s-vnf").exists());
    assert!(!Path::new("/etc/l2s-vnf/psk").exists());
}

/// README's certificate commands work as written, and what they make is what `check` wants.
#[test]
fn readme_certificate_commands_issue_what_check_accepts() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let block = readme
        .split("<!-- certificate-commands:begin -->")
        .nth(1)
        .and_then(|r| r.split("<!-- certificate-commands:end -->").next())
        .expect("README has the certificate commands");
    let script: String = block
        .lines()
        .filter(|l| !l.starts_with("```"))
        .map(|l| format!("{l}\n"))
        .collect();
    let d = tempfile::tempdir().unwrap();
    let out = run(Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(d.path()))
    .unwrap();
    assert!(
        out.status.success(),
        "README's commands failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let p = |f: &str| d.path().join(f).display().to_string();
    let cfg = d.path().join("site.toml");
    std::fs::write(
        &cfg,
        format!(
            "[site]\nname = \"site-b\"\nunderlay = \"eth1\"\nvtep_ip = \"198.51.100.2\"\nunderlay_mtu = 1500\n[ipsec]\nbackend = \"kernel\"\nauth = \"pubkey\"\ncert = \"{}\"\nkey = \"{}\"\ncacerts = [\"{}\"]\ncrls = [\"{}\"]\n[[peer]]\nname = \"site-a\"\naddress = \"198.51.100.1\"\n[[vlan]]\nid = 101\n",
            p("site-b.crt"),
            p("site.key"),
            p("ca.crt"),
            p("ca.crl")
        ),
    )
    .unwrap();
    let c = check_json(&cfg);
    assert_eq!(
        c["ipsec"]["certificate"]["subject"], "O=Operator B, CN=site-b",
        "{c:#}"
    );
    assert_eq!(
        c["ipsec"]["certificate"]["issuer"],
        "O=L2S Federation, CN=L2S Federation CA"
    );
    assert_eq!(c["ipsec"]["certificate"]["crls"][0]["revoked"], 0);
    assert!(c["warnings"].as_array().unwrap().is_empty(), "{c:#}");
}

/// cloud-init (OSM's copy is the same file) and Heat install the package only when its
/// SHA-256 is the one the operator gave: the very command they run, with the package and the
/// install pointed at a scratch directory, installs the right file and refuses a changed one
/// (or a missing checksum).
#[test]
fn the_package_is_installed_only_when_its_checksum_matches() {
    let gate = |file: &str| -> String {
        let text = std::fs::read_to_string(root().join(file)).unwrap();
        let line = text
            .lines()
            .find(|l| l.contains("sha256sum -c -"))
            .unwrap_or_else(|| panic!("{file} installs the package without a checksum"));
        line.split('\'').nth(1).unwrap().to_string()
    };
    let script = gate("cloud-init/l2s-user-data.yaml");
    assert_eq!(script, gate("descriptors/openstack/l2s-site.yaml"));
    let d = tempfile::tempdir().unwrap();
    let deb = d.path().join("l2s-vnf.deb");
    let local = script
        .replace("/var/tmp/l2s-vnf.deb", &deb.display().to_string())
        .replace(
            "apt-get install -y --no-install-recommends -o Dpkg::Options::=--force-confold",
            &format!("cp -t {}", d.path().join("dpkg").display()),
        );
    std::fs::create_dir(d.path().join("dpkg")).unwrap();
    let install = |sum: &str| {
        let _ = std::fs::remove_file(d.path().join("dpkg/l2s-vnf.deb"));
        let out = run(Command::new("sh").args(["-c", &local, "sh", sum])).unwrap();
        d.path().join("dpkg/l2s-vnf.deb").exists() && out.status.success()
    };
    std::fs::write(&deb, b"the package as published").unwrap();
    let good = String::from_utf8(run(Command::new("sha256sum").arg(&deb)).unwrap().stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    assert!(install(&good), "the published package was not installed");
    std::fs::write(&deb, b"the package, changed on the way").unwrap();
    assert!(!install(&good), "a changed package was installed");
    assert!(!install(""), "a package was installed without a checksum");
}
