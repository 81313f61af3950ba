//! Certificates between sites run by different operators, on real parts: the paper's three
//! sites, each with its own charon (kernel-libipsec) and `l2s-vnf run`, certificates issued by
//! throw-away CAs made with strongSwan's `pki`. After every event (rotation, CA rollover,
//! revocation, a bad certificate) the service is judged: ping and TCP on the VLANs, SA byte
//! counters growing, no clear-text VXLAN on the underlay, status telling the truth.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use l2s_lab::{
    cert_serial, require_lab, sh, within, Capture, Issued, Lab, PaperLab, PingStream, TestCa,
};

const SITES: [&str; 3] = ["a", "b", "c"];

/// Where each site keeps its credentials (the config names these paths; a rotation replaces
/// the files' content, as an operator's tooling would).
fn site_files(lab: &Lab, site: &str) -> Issued {
    let d = lab.site(site).dir.clone();
    Issued {
        cert: d.join("site.crt"),
        key: d.join("site.key"),
    }
}

fn install(lab: &Lab, site: &str, issued: &Issued) {
    let f = site_files(lab, site);
    std::fs::copy(&issued.cert, &f.cert).unwrap();
    std::fs::copy(&issued.key, &f.key).unwrap();
}

fn list(paths: &[&Path]) -> String {
    paths
        .iter()
        .map(|p| format!("\"{}\"", p.display()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Write `site`'s config: certificates from its files, `cas` trusted, `crls` loaded; `site_id`
/// replaces the identity; `peer_extra` is added to every `[[peer]]` named there.
fn configure(
    t: &PaperLab,
    site: &str,
    cas: &[&Path],
    crls: &[&Path],
    site_id: Option<&str>,
    peer_extra: &[(&str, &str)],
) {
    let (_, peers, vlans) = PaperLab::layout()
        .into_iter()
        .find(|(s, _, _)| *s == site)
        .unwrap();
    let psk = t
        .lab
        .psk_file("psk", "correct-horse-battery-staple-l2s\n")
        .unwrap();
    let f = site_files(&t.lab, site);
    let extra = format!(
        "auth = \"pubkey\"\ncert = \"{}\"\nkey = \"{}\"\ncacerts = [{}]\ncrls = [{}]\n",
        f.cert.display(),
        f.key.display(),
        list(cas),
        list(crls)
    );
    let mut cfg = t
        .lab
        .secure(site, &t.lab.config(site, &peers, vlans), &psk, &extra);
    // Quick retries after a refused authentication (the lab's faults are seconds long).
    cfg = cfg.replace("[daemon]\n", "[daemon]\nreconcile_interval = \"3s\"\n");
    if let Some(id) = site_id {
        cfg = cfg.replace(
            &format!("name = \"site-{site}\"\n"),
            &format!("name = \"site-{site}\"\nid = \"{id}\"\n"),
        );
    }
    for (peer, more) in peer_extra {
        cfg = cfg.replace(
            &format!("name = \"{peer}\"\n"),
            &format!("name = \"{peer}\"\n{more}\n"),
        );
    }
    t.lab.write_config(site, &cfg).unwrap();
}

/// Three sites with certificates from `ca`, charon and the daemon running, every SA up.
fn federation(name: &str) -> (PaperLab, TestCa, Capture) {
    let mut t = PaperLab::new().unwrap();
    let ca = TestCa::new(&t.lab.dir, "ca1").unwrap();
    for s in SITES {
        let issued = ca
            .issue(&format!("site-{s}"), &format!("site-{s}"), 365)
            .unwrap();
        install(&t.lab, s, &issued);
        t.lab.start_charon(s).unwrap();
        configure(&t, s, &[&ca.cert], &[], None, &[]);
        let check = t.lab.l2s(s, &["check"]).unwrap();
        assert!(
            check.status.success(),
            "check at {s}: {}",
            String::from_utf8_lossy(&check.stderr)
        );
    }
    let cap = start_daemons(&mut t, name);
    (t, ca, cap)
}

/// Start the capture and every site's daemon, wait for every SA, and give the VNFs the
/// access MTU (as their access network's DHCP would).
fn start_daemons(t: &mut PaperLab, name: &str) -> Capture {
    let cap = Capture::start(&t.lab, name).unwrap();
    for s in SITES {
        t.lab.start_daemon(s).unwrap();
    }
    all_up(&t.lab, &format!("the start of {name}"));
    let mtu = t.lab.status_json("a").unwrap()["access_mtu"]
        .as_u64()
        .unwrap() as u32;
    let vnfs = t.vnfs();
    t.lab.set_vnf_mtu(&vnfs, mtu).unwrap();
    cap
}

fn all_up(lab: &Lab, after: &str) {
    let took = within(
        Duration::from_secs(30),
        &format!("every SA up after {after}"),
        || SITES.iter().all(|s| lab.sas_up(s) == 2),
    );
    eprintln!("every SA up {took:?} after {after}");
}

/// The service as the VNFs see it: every pair pings on both VLANs, TCP crosses, the SAs'
/// byte counters grow, no clear-text VXLAN on the underlay, every VLAN reported up.
fn judge(t: &PaperLab, cap: &Capture, event: &str) {
    // One transfer per peer of A, each through its own SA: A -> C on VLAN 101, A -> B on
    // VLAN 102. Each SA must count every byte its receiver got, and the capture must see as
    // many ESP bytes from A's VTEP to that peer's, in this same interval (a VLAN bypassing its
    // SA fails here even when the other one's counters grew).
    let failed = t.ping_mesh();
    assert!(failed.is_empty(), "after {event}: no ping on {failed:?}");
    for (peer, server, client) in [("c", &t.c101, &t.a101), ("b", &t.b102, &t.a102)] {
        t.lab
            .encrypted_transfer(
                cap,
                server,
                client,
                "a",
                peer,
                "2M",
                Duration::from_secs(10),
            )
            .unwrap_or_else(|e| {
                panic!(
                    "after {event}: {e:#}\n{}\n{}",
                    t.lab.l2s_ok("a", &["status"]).unwrap_or_default(),
                    swanctl(&t.lab, "a", &["--list-sas"])
                )
            });
    }
    assert_eq!(
        cap.clear_text_vxlan(),
        0,
        "after {event}: clear-text VXLAN on the underlay"
    );
    for s in SITES {
        assert!(t.lab.vlan_up(s, 101), "after {event}: VLAN 101 down at {s}");
    }
}

fn peer<'a>(st: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    st["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap()
}

/// The serial `site` sees in `peer_name`'s certificate (as charon verified it).
fn peer_serial(lab: &Lab, site: &str, peer_name: &str) -> Option<String> {
    let st = lab.status_json(site).ok()?;
    peer(&st, peer_name)["certificate"]["serial"]
        .as_str()
        .map(str::to_string)
}

fn swanctl(lab: &Lab, site: &str, args: &[&str]) -> String {
    let vici = lab.site(site).dir.join("charon.vici");
    sh(Command::new("swanctl")
        .args(args)
        .args(["--uri", &format!("unix://{}", vici.display())]))
    .unwrap()
}

/// Make `site` authenticate again with each peer (a new IKE_SA, a fresh authentication).
fn reauthenticate(lab: &Lab, site: &str) {
    for p in SITES.iter().filter(|p| **p != site) {
        swanctl(
            lab,
            site,
            &[
                "--rekey",
                "--reauth",
                "--ike",
                &format!("l2s-vnf:l2s0:site-{p}"),
            ],
        );
    }
}

fn established(lab: &Lab, site: &str, peer_name: &str) -> u64 {
    let st = lab.status_json(site).unwrap();
    peer(&st, peer_name)["sa"]["established_secs"]
        .as_u64()
        .unwrap_or_else(|| panic!("{site}: no SA with {peer_name} in status: {st:#}"))
}

/// Ping streams (100 ms apart) on the given pairs while `event` runs; none may lose a packet.
fn lossless(t: &PaperLab, event: &str, run: impl FnOnce()) {
    let streams = [
        (
            PingStream::start(&t.a101, &t.b101, 60, 100).unwrap(),
            "A->B",
        ),
        (
            PingStream::start(&t.a101, &t.c101, 60, 100).unwrap(),
            "A->C",
        ),
        (
            PingStream::start(&t.b101, &t.c101, 60, 100).unwrap(),
            "B->C",
        ),
    ];
    std::thread::sleep(Duration::from_millis(500));
    run();
    for (s, what) in streams {
        let (sent, got) = s.finish().unwrap();
        assert_eq!(
            got,
            sent,
            "{event}: {what} lost {} of {sent} pings",
            sent - got
        );
    }
}

fn reload(lab: &Lab, site: &str) {
    let out = lab.l2s_ok(site, &["reload"]).unwrap();
    assert!(!out.contains("PRIVATE KEY"), "{out}");
}

#[test]
fn certificates_rotation_ca_rollover_and_revocation_keep_the_service() {
    require_lab!();
    let (mut t, ca1, mut cap) = federation("pki-lifecycle");
    judge(&t, &cap, "start with certificates");

    // 0. A reload with a key of another certificate is refused and changes nothing.
    let stray = ca1.issue("stray", "site-a", 365).unwrap();
    let a_files = site_files(&t.lab, "a");
    std::fs::copy(&stray.key, &a_files.key).unwrap();
    let out = t.lab.l2s("a", &["reload"]).unwrap();
    let err =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("does not belong to certificate"), "{err}");
    assert!(!err.contains("PRIVATE KEY"), "{err}");
    std::fs::copy(ca1.dir.join("site-a.key"), &a_files.key).unwrap();
    assert_eq!(t.lab.sas_up("a"), 2, "the refused reload touched the SAs");
    judge(&t, &cap, "a refused reload");

    // Status tells who is who, and how long each certificate has left.
    let st = t.lab.status_json("a").unwrap();
    let local = &st["ipsec"]["certificate"];
    assert_eq!(local["subject"], "O=L2S Test, CN=site-a", "{st:#}");
    assert!(
        (363..=365).contains(&local["days_left"].as_i64().unwrap()),
        "{st:#}"
    );
    for p in ["b", "c"] {
        let serial = cert_serial(&site_files(&t.lab, p).cert).unwrap();
        assert_eq!(
            peer_serial(&t.lab, "a", &format!("site-{p}")).as_deref(),
            Some(serial.as_str()),
            "A's status shows site-{p}'s certificate: {st:#}"
        );
        assert_eq!(peer(&st, &format!("site-{p}"))["auth"], "pubkey");
    }
    let text = t.lab.l2s_ok("a", &["status"]).unwrap();
    assert!(
        text.contains("certificate: \"O=L2S Test, CN=site-a\""),
        "{text}"
    );
    for s in SITES {
        let log = t.lab.daemon_log(s);
        assert!(
            !log.contains("PRIVATE KEY") && !log.contains("BEGIN"),
            "{log}"
        );
    }

    // 1. Rotation: A gets a new certificate and key; reload under ping streams.
    let (ab, since) = (
        established(&t.lab, "a", "site-b"),
        std::time::Instant::now(),
    );
    let rotated = ca1.issue("site-a-2", "site-a", 365).unwrap();
    let new_serial = cert_serial(&rotated.cert).unwrap();
    // The reload re-authenticates A's IKE_SAs with the new key (make-before-break: no ping
    // lost), so B sees A's new certificate without waiting for a reauthentication that
    // would never come (`reauth_time = 0`).
    lossless(&t, "rotation of A's certificate", || {
        install(&t.lab, "a", &rotated);
        reload(&t.lab, "a");
        let t0 = std::time::Instant::now();
        while peer_serial(&t.lab, "b", "site-a").as_deref() != Some(new_serial.as_str()) {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "B does not see A's new certificate 10 s after the reload alone:\n{}\n{}",
                t.lab.daemon_log("a"),
                t.lab.charon_log("a")
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        std::thread::sleep(Duration::from_secs(2));
    });
    // A new IKE_SA: younger than the time since the old one's age was read.
    let age = established(&t.lab, "a", "site-b");
    assert!(
        age <= since.elapsed().as_secs(),
        "the reload re-authenticated A's SA with B: it is {age} s old ({ab} s before the reload)"
    );
    let log = t.lab.daemon_log("a");
    assert!(
        log.contains("the replaced private key is no longer in charon"),
        "{log}"
    );
    assert!(
        log.contains("re-authenticate (this site's key changed)"),
        "{log}"
    );
    assert!(!log.contains("names this site's key differently"), "{log}");
    all_up(&t.lab, "A re-authenticated");
    judge(&t, &cap, "rotation and re-authentication");

    // A restarted charon has lost every credential: the daemon hands them over again.
    t.lab.kill_charon("b");
    t.lab.start_charon("b").unwrap();
    all_up(&t.lab, "charon at B restarted");
    judge(&t, &cap, "charon at B restarted");
    assert!(
        t.lab.daemon_log("b").contains("private key not in charon"),
        "{}",
        t.lab.daemon_log("b")
    );

    // 2. CA rollover: CA 2 is trusted beside CA 1 everywhere, then C moves to it.
    let ca2 = TestCa::new(&t.lab.dir, "ca2").unwrap();
    lossless(&t, "CA 2 added beside CA 1", || {
        for s in SITES {
            configure(&t, s, &[&ca1.cert, &ca2.cert], &[], None, &[]);
            reload(&t.lab, s);
        }
        std::thread::sleep(Duration::from_secs(2));
    });
    let c2 = ca2.issue("site-c-2", "site-c", 365).unwrap();
    lossless(&t, "C's certificate from CA 2", || {
        install(&t.lab, "c", &c2);
        reload(&t.lab, "c");
        std::thread::sleep(Duration::from_secs(2));
    });
    reauthenticate(&t.lab, "c");
    all_up(&t.lab, "C re-authenticated with CA 2's certificate");
    let c2_serial = cert_serial(&c2.cert).unwrap();
    within(
        Duration::from_secs(10),
        "A sees C's CA 2 certificate",
        || peer_serial(&t.lab, "a", "site-c").as_deref() == Some(c2_serial.as_str()),
    );
    let st = t.lab.status_json("a").unwrap();
    assert_eq!(
        peer(&st, "site-c")["certificate"]["issuer"],
        "O=L2S Test, CN=ca2"
    );
    judge(&t, &cap, "CA rollover");

    // 3. Revocation: CA 2 revokes C's certificate; A and B load the CRL. C is cut off at
    //    that reload and stays out; A and B keep every packet.
    let crl = ca2.crl(&[&c2.cert]).unwrap();
    let ab_stream = PingStream::start(&t.a101, &t.b101, 80, 100).unwrap();
    let ab102 = PingStream::start(&t.a102, &t.b102, 80, 100).unwrap();
    for s in ["a", "b"] {
        configure(&t, s, &[&ca1.cert, &ca2.cert], &[&crl], None, &[]);
        reload(&t.lab, s);
    }
    within(Duration::from_secs(10), "A and B drop C", || {
        !t.lab.sa_up("a", "site-c") && !t.lab.sa_up("b", "site-c")
    });
    let (sent, got) = ab_stream.finish().unwrap();
    assert_eq!(got, sent, "revocation of C: A->B lost {}", sent - got);
    let (sent, got) = ab102.finish().unwrap();
    assert_eq!(
        got,
        sent,
        "revocation of C: VLAN 102 A->B lost {}",
        sent - got
    );
    std::thread::sleep(Duration::from_secs(8));
    assert!(
        !t.lab.sa_up("a", "site-c") && !t.lab.sa_up("b", "site-c") && t.lab.sas_up("c") == 0,
        "C came back with a revoked certificate"
    );
    assert!(t.lab.sa_up("a", "site-b"), "A-B must stay up");
    let st = t.lab.status_json("a").unwrap();
    let why = peer(&st, "site-c")["problem"].as_str().unwrap_or_default();
    assert!(
        why.contains("revoked"),
        "A's status says why C is out: {st:#}"
    );
    let log = t.lab.daemon_log("a");
    assert!(
        log.contains("is revoked by CRL") && log.contains("its SAs are torn down"),
        "A tears C down at the reload itself: {log}"
    );
    eprintln!("A on C: {why}");
    assert!(!t.lab.ping(&t.a101, &t.c101.ip, 2), "A reached C's VNF");
    assert!(t.lab.ping(&t.a101, &t.b101.ip, 2), "A-B VLAN 101");
    assert!(t.lab.ping(&t.a102, &t.b102.ip, 2), "A-B VLAN 102");
    t.lab.tcp_transfer(&t.b101, &t.a101, "2M").unwrap();
    cap.stop();
    assert_eq!(cap.clear_text_vxlan(), 0, "clear text after the revocation");
}

/// The certificate fault of one site and how status must explain it at A.
struct BadCert {
    what: &'static str,
    /// Words one of which A's or B's status must give for site-c.
    reason: &'static [&'static str],
}

#[test]
fn a_site_with_a_bad_certificate_is_isolated_and_the_others_keep_working() {
    require_lab!();
    let (t, ca1, mut cap) = federation("pki-bad");
    judge(&t, &cap, "start with certificates");
    let good_c = Issued {
        cert: ca1.dir.join("site-c.crt"),
        key: ca1.dir.join("site-c.key"),
    };
    let rogue = TestCa::new(&t.lab.dir, "rogue").unwrap();
    let faults = [
        BadCert {
            what: "signed by an untrusted CA",
            reason: &["no trusted", "issuer", "untrusted"],
        },
        BadCert {
            what: "carrying the wrong identity",
            reason: &[
                "no matching peer config",
                "site-x",
                "constraint",
                "identity",
            ],
        },
        BadCert {
            what: "expired",
            reason: &["invalid (valid from", "expired"],
        },
    ];
    for f in faults {
        // Inflict the fault on C alone.
        match f.what {
            "signed by an untrusted CA" => {
                let c = rogue.issue("site-c-rogue", "site-c", 365).unwrap();
                install(&t.lab, "c", &c);
                configure(&t, "c", &[&ca1.cert, &rogue.cert], &[], None, &[]);
            }
            "carrying the wrong identity" => {
                let c = ca1.issue("site-x", "site-x", 365).unwrap();
                install(&t.lab, "c", &c);
                configure(&t, "c", &[&ca1.cert], &[], Some("site-x"), &[]);
            }
            _ => {
                let now = now_utc();
                let c = ca1
                    .issue_between(
                        "site-c-expiring",
                        "site-c",
                        &utc(now - 86_400),
                        &utc(now + 20),
                    )
                    .unwrap();
                install(&t.lab, "c", &c);
                configure(&t, "c", &[&ca1.cert], &[], None, &[]);
            }
        }
        reload(&t.lab, "c");
        if f.what == "expired" {
            let st = t.lab.l2s_ok("c", &["status"]).unwrap();
            assert!(st.contains("expires in 0 day(s)"), "C warns: {st}");
            std::thread::sleep(Duration::from_secs(22));
        }
        // Established SAs are kept until the next authentication: make it happen now.
        let ab = PingStream::start(&t.a101, &t.b101, 100, 100).unwrap();
        for p in ["a", "b"] {
            swanctl(
                &t.lab,
                "c",
                &["--terminate", "--ike", &format!("l2s-vnf:l2s0:site-{p}")],
            );
        }
        std::thread::sleep(Duration::from_secs(8));
        let (sent, got) = ab.finish().unwrap();
        assert_eq!(got, sent, "C {}: A->B lost {}", f.what, sent - got);
        assert!(
            !t.lab.sa_up("a", "site-c") && !t.lab.sa_up("b", "site-c"),
            "a site with a certificate {} got an SA",
            f.what
        );
        assert!(
            !t.lab.ping(&t.a101, &t.c101.ip, 2),
            "A reached C ({})",
            f.what
        );
        assert!(t.lab.ping(&t.a101, &t.b101.ip, 2), "A-B ({})", f.what);
        assert!(
            t.lab.ping(&t.a102, &t.b102.ip, 2),
            "A-B VLAN 102 ({})",
            f.what
        );
        t.lab.tcp_transfer(&t.b101, &t.a101, "1M").unwrap();
        let reasons: Vec<String> = ["a", "b"]
            .iter()
            .map(|s| {
                let st = t.lab.status_json(s).unwrap();
                peer(&st, "site-c")["problem"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect();
        eprintln!(
            "C {}: A says {:?}; B says {:?}",
            f.what, reasons[0], reasons[1]
        );
        assert!(
            reasons
                .iter()
                .any(|r| f.reason.iter().any(|w| r.contains(w))),
            "no reason for C ({}) in A's or B's status: {reasons:?}",
            f.what
        );
        assert_eq!(cap.clear_text_vxlan(), 0, "clear text with C {}", f.what);

        // Back to a good certificate: C rejoins by itself.
        install(&t.lab, "c", &good_c);
        configure(&t, "c", &[&ca1.cert], &[], None, &[]);
        reload(&t.lab, "c");
        all_up(&t.lab, &format!("C's certificate {} was replaced", f.what));
        judge(&t, &cap, &format!("C's certificate {} replaced", f.what));
    }
    cap.stop();
}

#[test]
fn a_mixed_federation_keeps_one_peer_on_psk() {
    require_lab!();
    let mut t = PaperLab::new().unwrap();
    let ca = TestCa::new(&t.lab.dir, "ca1").unwrap();
    for s in ["a", "b"] {
        install(
            &t.lab,
            s,
            &ca.issue(&format!("site-{s}"), &format!("site-{s}"), 365)
                .unwrap(),
        );
    }
    for s in SITES {
        t.lab.start_charon(s).unwrap();
    }
    // A and B use certificates between them and the PSK with C; C has no certificate.
    for s in ["a", "b"] {
        configure(
            &t,
            s,
            &[&ca.cert],
            &[],
            None,
            &[("site-c", "auth = \"psk\"")],
        );
    }
    let psk = t
        .lab
        .psk_file("psk", "correct-horse-battery-staple-l2s\n")
        .unwrap();
    let (_, peers, vlans) = PaperLab::layout()[2];
    let cfg = t
        .lab
        .secure("c", &t.lab.config("c", &peers, vlans), &psk, "");
    t.lab.write_config("c", &cfg).unwrap();
    let cap = start_daemons(&mut t, "pki-mixed");
    judge(&t, &cap, "a mixed federation");
    let st = t.lab.status_json("a").unwrap();
    assert_eq!(peer(&st, "site-b")["auth"], "pubkey");
    assert_eq!(peer(&st, "site-c")["auth"], "psk");
    assert!(
        peer(&st, "site-b")["certificate"]["serial"].is_string(),
        "{st:#}"
    );
    assert!(peer(&st, "site-c")["certificate"].is_null(), "{st:#}");
}

fn now_utc() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) of a Unix time, as `pki --dateform` reads it.
fn utc(t: i64) -> String {
    let out = Command::new("date")
        .args(["-u", "-d", &format!("@{t}"), "+%Y-%m-%d %H:%M:%S"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Site C as an operator without l2s-vnf builds it: a Linux bridge and VXLAN device, and
/// strongSwan configured by hand in swanctl.conf with its certificate files.
fn hand_configured_c(t: &PaperLab, ca: &TestCa, c: &Issued, mtu: u32) {
    let lab = &t.lab;
    let s = lab.site("c");
    let ip = |args: &str| {
        sh(Command::new("ip")
            .args(["netns", "exec", &s.ns, "sh", "-c"])
            .arg(args))
        .unwrap()
    };
    let (a_ip, b_ip, c_ip) = (
        &lab.site("a").underlay_ip,
        &lab.site("b").underlay_ip,
        &s.underlay_ip,
    );
    ip(&format!(
        "ip link add br101 type bridge && \
         ip link add vx101 type vxlan id 101 local {c_ip} dstport 4789 dev eth1 && \
         ip link set vx101 mtu {mtu} master br101 && ip link set acc101 mtu {mtu} master br101 && \
         bridge fdb append 00:00:00:00:00:00 dev vx101 dst {a_ip} && \
         bridge fdb append 00:00:00:00:00:00 dev vx101 dst {b_ip} && \
         ip link set br101 up && ip link set vx101 up && ip link set acc101 up && \
         ip rule add pref 100 not ipproto udp dport 4789 lookup main"
    ));
    // swanctl's own layout: the certificate in x509/, the CA in x509ca/, the key in ecdsa/.
    let dir = s.dir.join("swanctl");
    for (sub, from, name) in [
        ("x509", &c.cert, "site-c.crt"),
        ("x509ca", &ca.cert, "ca.crt"),
        ("ecdsa", &c.key, "site-c.key"),
    ] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
        std::fs::copy(from, dir.join(sub).join(name)).unwrap();
    }
    let conn = |name: &str, remote: &str, id: &str| {
        format!(
            "  {name} {{\n    local_addrs = {c_ip}\n    remote_addrs = {remote}\n    version = 2\n    \
             proposals = aes256gcm16-prfsha384-x25519\n    encap = yes\n    \
             local {{\n      auth = pubkey\n      certs = site-c.crt\n      id = site-c\n    }}\n    \
             remote {{\n      auth = pubkey\n      id = {id}\n    }}\n    children {{\n      vxlan {{\n        \
             local_ts = {c_ip}/32[udp]\n        remote_ts = {remote}/32[udp]\n        mode = tunnel\n        \
             esp_proposals = aes256gcm16-x25519\n      }}\n    }}\n  }}\n"
        )
    };
    let conf = dir.join("swanctl.conf");
    std::fs::write(
        &conf,
        format!(
            "connections {{\n{}{}}}\n",
            conn("to-a", a_ip, "site-a"),
            conn("to-b", b_ip, "site-b"),
        ),
    )
    .unwrap();
    let conf = conf.display().to_string();
    swanctl(lab, "c", &["--load-all", "--file", &conf]);
}

#[test]
fn a_hand_configured_strongswan_peer_with_certificates_interoperates() {
    require_lab!();
    let mut t = PaperLab::new().unwrap();
    let ca = TestCa::new(&t.lab.dir, "ca1").unwrap();
    let mut issued = vec![];
    for s in SITES {
        let i = ca
            .issue(&format!("site-{s}"), &format!("site-{s}"), 365)
            .unwrap();
        install(&t.lab, s, &i);
        issued.push(i);
        t.lab.start_charon(s).unwrap();
    }
    for s in ["a", "b"] {
        configure(&t, s, &[&ca.cert], &[], None, &[]);
        t.lab.start_daemon(s).unwrap();
    }
    let mtu = t.lab.status_json("a").unwrap()["access_mtu"]
        .as_u64()
        .unwrap() as u32;
    hand_configured_c(&t, &ca, &issued[2], mtu);
    all_up_ab_and_c(&t.lab);
    let vnfs = t.vnfs();
    t.lab.set_vnf_mtu(&vnfs, mtu).unwrap();
    let mut cap = Capture::start(&t.lab, "pki-interop").unwrap();
    let before = t.lab.sa_bytes("a", Some("site-c")).unwrap();
    let failed = t.ping_mesh();
    assert!(failed.is_empty(), "no ping on {failed:?}");
    // Every byte C received from A crossed A's SA with C (iperf3 -n may deliver less than
    // it was asked to send; libipsec's counters trail the traffic by a moment).
    let got = t.lab.tcp_received(&t.c101, &t.a101, "2M").unwrap();
    t.lab.tcp_transfer(&t.b101, &t.c101, "2M").unwrap();
    assert!(got > 0, "A -> C delivered nothing");
    within(
        Duration::from_secs(10),
        &format!("A's SA with C carries the {got} bytes C received"),
        || t.lab.sa_bytes("a", Some("site-c")).unwrap() - before >= got,
    );
    cap.stop();
    assert_eq!(
        cap.clear_text_vxlan(),
        0,
        "clear-text VXLAN with the stock peer"
    );
    let esp = cap.count("udp port 4500");
    assert!(
        esp > 1000,
        "only {esp} ESP packets for 4 MiB across the stock peer"
    );
    let serial = cert_serial(&issued[2].cert).unwrap();
    assert_eq!(
        peer_serial(&t.lab, "a", "site-c").as_deref(),
        Some(serial.as_str())
    );
    // The stock peer sees l2s-vnf's certificate as any strongSwan peer would.
    let sas = swanctl(&t.lab, "c", &["--list-sas"]);
    assert!(
        sas.contains("site-a") && sas.contains("site-b") && sas.contains("ESTABLISHED"),
        "{sas}"
    );
}

/// A and B up with each other and with the hand-configured C (its SAs are A's and B's to
/// start: they have the lower addresses).
fn all_up_ab_and_c(lab: &Lab) {
    let t = std::time::Instant::now();
    while !(lab.sas_up("a") == 2 && lab.sas_up("b") == 2) {
        if t.elapsed() > Duration::from_secs(30) {
            let log =
                std::fs::read_to_string(lab.site("c").dir.join("charon.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            panic!(
                "SAs with the stock peer not up within 30 s\n{}\nC's charon:\n{}",
                lab.l2s_ok("a", &["status"]).unwrap_or_default(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("SAs with the stock peer up {:?}", t.elapsed());
}

/// Ping and a TCP transfer from `from` to `to`, with no clear text on the underlay.
fn serves(t: &PaperLab, cap: &Capture, from: &l2s_lab::Vnf, to: &l2s_lab::Vnf, event: &str) {
    assert!(
        t.lab.ping_eventually(from, &to.ip, Duration::from_secs(10)),
        "after {event}: no ping {} -> {}",
        from.ip,
        to.ip
    );
    t.lab.tcp_transfer(to, from, "1M").unwrap();
    assert_eq!(
        cap.clear_text_vxlan(),
        0,
        "after {event}: clear-text VXLAN on the underlay"
    );
}

/// Whether `site` can reach `to` from `from` at all within `secs` (a revoked pair must not).
fn cut_off(t: &PaperLab, from: &l2s_lab::Vnf, to: &l2s_lab::Vnf, secs: u64) -> bool {
    !t.lab
        .ping_eventually(from, &to.ip, Duration::from_secs(secs))
}

/// `apply` converges credentials as the daemon does (one diff of what charon holds): a CRL
/// added to the config and applied with no daemon running reaches charon, the revoked peer's
/// IKE_SA ends at once and it stays out, and a second `apply` has nothing left to do. Each
/// end alone: the initiator of a pair revokes its responder (A revokes C), then a responder
/// revokes its initiator (C revokes B).
#[test]
fn apply_converges_a_new_crl_as_the_daemon_does() {
    require_lab!();
    let mut t = PaperLab::new().unwrap();
    let ca = TestCa::new(&t.lab.dir, "ca1").unwrap();
    let mut certs = vec![];
    for s in SITES {
        let issued = ca
            .issue(&format!("site-{s}"), &format!("site-{s}"), 365)
            .unwrap();
        install(&t.lab, s, &issued);
        certs.push(issued.cert.clone());
        t.lab.start_charon(s).unwrap();
        configure(&t, s, &[&ca.cert], &[], None, &[]);
    }
    for s in SITES {
        t.lab.l2s_ok(s, &["apply"]).unwrap();
    }
    all_up(&t.lab, "apply at every site");
    let mtu = t.lab.status_json("a").unwrap()["access_mtu"]
        .as_u64()
        .unwrap() as u32;
    let vnfs = t.vnfs();
    t.lab.set_vnf_mtu(&vnfs, mtu).unwrap();
    let cap = Capture::start(&t.lab, "pki-apply-crl").unwrap();
    serves(&t, &cap, &t.a101, &t.c101, "apply at every site");

    for (site, revoked, peer_name, crl) in [
        ("a", 2, "site-c", ca.crl(&[&certs[2]]).unwrap()),
        ("c", 1, "site-b", ca.crl_alone(&[&certs[1]]).unwrap()),
    ] {
        let event = format!("site {site} applied a CRL revoking {peer_name}");
        configure(&t, site, &[&ca.cert], &[&crl], None, &[]);
        let out = t.lab.l2s_ok(site, &["apply"]).unwrap();
        assert!(
            out.contains("(CRL not in charon)"),
            "{event}: the CRL was not handed to charon:\n{out}"
        );
        assert!(
            out.contains(&format!(
                "- ipsec l2s-vnf:l2s0:{peer_name}: IKE_SA ended (certificate"
            )),
            "{event}: the revoked peer's IKE_SA was not ended:\n{out}"
        );
        assert!(!out.contains("PRIVATE KEY"), "{out}");
        // Converged: a second look finds the CRL in charon and no SA to end (only the
        // revoked peer's missing SA, which charon refuses).
        let again = t.lab.l2s_ok(site, &["plan"]).unwrap();
        assert!(
            !again.contains("credentials") && !again.contains("IKE_SA ended"),
            "{event}: a second look still finds work:\n{again}"
        );
        let held = swanctl(&t.lab, site, &["--list-certs", "--type", "x509crl"]);
        assert!(
            held.contains("revoked"),
            "{event}: charon holds no CRL:\n{held}"
        );
        // The revoked peer keeps trying (its initiator retries for ever) and stays out.
        let (from, to) = match revoked {
            2 => (&t.a101, &t.c101),
            _ => (&t.b101, &t.c101),
        };
        std::thread::sleep(Duration::from_secs(2));
        assert!(
            cut_off(&t, from, to, 8),
            "{event}: the revoked pair still carries traffic"
        );
        assert!(
            !t.lab.sa_up(site, peer_name),
            "{event}: status shows the revoked peer's SA up"
        );
        // Every other pair keeps its service.
        serves(&t, &cap, &t.a101, &t.b101, &event);
        serves(&t, &cap, &t.a102, &t.b102, &event);
        if site == "a" {
            serves(&t, &cap, &t.b101, &t.c101, &event);
        }
    }
    assert!(
        cap.count("esp or udp port 4500") > 100,
        "hardly any ESP on the underlay"
    );
}
