//! One bad-input fixture per validation error (`tests/fixtures/bad/*.toml`). Each fixture
//! states the exact messages it must produce in `# expect:` lines; all of them, and nothing
//! else, must be reported in one run. `@DIR@` stands for a directory holding PSK files with
//! various modes.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use l2s_vnf::config::SiteConfig;

fn psk_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, content: &str, mode: u32| {
        let p = dir.path().join(name);
        std::fs::write(&p, content).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    write("good", "a-long-random-secret\n", 0o600);
    write("empty", "", 0o600);
    write("short", "five5\n", 0o600);
    write("readable", "a-long-random-secret\n", 0o644);
    dir
}

#[test]
fn every_bad_fixture_reports_exactly_its_errors() {
    let dir = psk_dir();
    let d = dir.path().display().to_string();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bad");
    let mut names: Vec<_> = std::fs::read_dir(&fixtures)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    names.sort();
    assert!(
        names.len() >= 30,
        "expected one fixture per validation error"
    );
    let mut failures = vec![];
    for path in names {
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        let original = std::fs::read_to_string(&path).unwrap();
        let text = original.replace("@DIR@", &d);
        let mut expected: Vec<String> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# expect: "))
            .map(str::to_string)
            .collect();
        assert!(!expected.is_empty(), "{file} has no # expect: line");
        let got: Vec<String> = match SiteConfig::from_str_at(Path::new(&file), &text) {
            Ok(_) => vec!["<accepted>".into()],
            Err(e) => e.issues().iter().map(|i| i.to_string()).collect(),
        };
        // The TOML parser's own wording is not ours to pin: match its prefix only.
        if let Some(e) = expected.iter_mut().find(|e| e.ends_with("@SYNTAX@")) {
            let prefix = e.trim_end_matches("@SYNTAX@").to_string();
            if got.len() == 1 && got[0].starts_with(&prefix) && got[0].len() > prefix.len() {
                continue;
            }
            *e = prefix + "…";
        }
        if std::env::var_os("L2S_BLESS").is_some() && got != expected {
            let body: String = original
                .lines()
                .filter(|l| !l.starts_with("# expect: "))
                .map(|l| format!("{l}\n"))
                .collect();
            let head: String = got
                .iter()
                .map(|g| format!("# expect: {}\n", g.replace(&d, "@DIR@")))
                .collect();
            std::fs::write(&path, head + &body).unwrap();
            continue;
        }
        if got != expected {
            failures.push(format!(
                "{file}:\n  expected: {expected:#?}\n  got:      {got:#?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_annotated_example_is_valid() {
    let dir = psk_dir();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/site.toml");
    let text = std::fs::read_to_string(&example).unwrap().replace(
        "/etc/l2s-vnf/psk",
        &dir.path().join("good").display().to_string(),
    );
    let cfg = SiteConfig::from_str_at(&example, &text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.vlans.len(), 2);
    assert!(cfg.ipsec.enabled);
}

#[test]
fn defaults_follow_the_spec() {
    let text = "[site]\nname = \"a\"\nunderlay = \"eth1\"\n[ipsec]\nenabled = false\ninsecure = true\n[[peer]]\nname = \"b\"\naddress = \"192.0.2.2\"\n[[vlan]]\nid = 7\n";
    let cfg = SiteConfig::from_str_at(Path::new("x.toml"), text).unwrap();
    assert_eq!(cfg.switch.bridge, "l2s0");
    assert_eq!(cfg.switch.ovsdb, Path::new("/run/openvswitch/db.sock"));
    assert_eq!(cfg.ipsec.vici, Path::new("/run/charon.vici"));
    assert_eq!(cfg.vxlan_port, 4789);
    assert_eq!(cfg.vlans[0].vni, 7, "vni defaults to the VLAN id");
    assert_eq!(
        cfg.vlans[0].peers,
        vec!["b".to_string()],
        "peers default to all peers"
    );
    assert_eq!(cfg.peers[0].id, "b", "IKE id defaults to the name");
    assert_eq!(cfg.daemon.reconcile_interval.as_secs(), 30);
    assert!(cfg.metrics.is_none());
}

#[test]
fn no_secret_in_errors() {
    // A PSK's content never appears in any message, even when its file is wrong.
    let dir = psk_dir();
    let p = dir.path().join("readable");
    let text = format!("[site]\nname = \"a\"\nunderlay = \"eth1\"\n[ipsec]\npsk_file = \"{}\"\n[[peer]]\nname = \"b\"\naddress = \"192.0.2.2\"\n", p.display());
    let e = SiteConfig::from_str_at(Path::new("x.toml"), &text)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("mode 0644"), "{e}");
    assert!(!e.contains("a-long-random-secret"), "{e}");
}
