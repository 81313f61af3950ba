//! The EVPN control plane's foundation on real FRR (Debian's `frr` 8.4), through the
//! product's own code: `evpn::ControlNs` makes each site's control namespace and shadow
//! devices, `evpn::Frr` writes the configs `evpn::frr_config` generates and supervises real
//! zebra and bgpd (zebra in the control namespace, bgpd in the site's namespace, a reflector
//! with bgpd alone that names no site), and `evpn::routes` reads what bgpd learned.
//!
//! What this does not prove yet (issue 21 stays open): the daemon running FRR itself, BGP
//! inside IPsec (here BGP crosses the lab's underlay in clear text), SAs and flood entries
//! following discovery.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use l2s_lab::frr_lab::{FrrLab, FrrSite, ASN};
use l2s_lab::{netns, require_lab, sh, Capture, Lab, TestCa, VlanSpec, Vnf, CLEAR_TEXT_VXLAN};

const HOLD: Duration = Duration::from_secs(9);

/// The two federation tests each run five sites (OVS, charon, the daemon, FRR) and measure
/// join and withdrawal times: one at a time, so that neither measures the other's load.
static FEDERATION: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_federation_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    FEDERATION
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What a site's daemon said about EVPN and IKE (for a failure's message).
fn evpn_log(lab: &Lab, site: &str) -> String {
    lab.daemon_log(site)
        .lines()
        .filter(|l| l.contains("EVPN") || l.contains("IKE_SA") || l.contains("evpn-"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// zebra's flood entries on a shadow VXLAN device (the design's proof that zebra took the
/// VNI and the routes).
fn shadow_flood(s: &FrrSite, vni: u32) -> BTreeSet<IpAddr> {
    s.ctl.shadow_flood(vni).unwrap()
}

fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) -> Duration {
    let t = Instant::now();
    while !ok() {
        assert!(t.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    t.elapsed()
}

/// Whether FRR is installed; when it is not, the test fails (or is skipped, when asked).
fn frr_here() -> bool {
    let missing = l2s_vnf::evpn::frr::missing();
    if missing.is_empty() {
        return true;
    }
    l2s_lab::skip_or_fail(&format!(
        "{} not installed (Debian's `frr`; run tests/deps.sh)",
        missing.join(", ")
    ));
    false
}

/// Stop the underlay capture and prove neither VXLAN nor BGP ever crossed it in clear text.
fn nothing_in_clear_text(mut cap: Capture) -> Capture {
    cap.stop();
    assert_eq!(
        cap.count(CLEAR_TEXT_VXLAN),
        0,
        "clear-text VXLAN on the underlay"
    );
    assert_eq!(
        cap.count("tcp port 179"),
        0,
        "clear-text BGP on the underlay"
    );
    cap
}

/// A reflector naming no site, two sites naming only it (VNIs 101+102 at A, 101+102 at B,
/// 101 at C, one VNI of which C alone has): each site learns exactly the others' VTEPs per
/// VNI, zebra writes them on the shadow devices, and a site cut off the underlay is withdrawn
/// from the others within the hold time plus a few seconds.
#[test]
fn sites_naming_only_a_reflector_find_each_other_per_vni() {
    require_lab!();
    if !frr_here() {
        return;
    }
    let mut lab = FrrLab::new(HOLD).unwrap();
    let rr = lab.reflector("r", "192.0.2.10", "192.0.2.0/24").unwrap();
    let mut site = |name: &str, vtep: &str, vnis: [u32; 2]| {
        let (s, made) = lab
            .site(name, vtep, &vnis.into_iter().collect(), &["192.0.2.10"])
            .unwrap();
        assert_eq!(made, 2, "{name}'s shadow VNIs");
        s
    };
    let a = site("a", "192.0.2.1", [101, 102]);
    let b = site("b", "192.0.2.2", [101, 102]);
    let c = site("c", "192.0.2.3", [101, 103]);
    let want = |s: &FrrSite| -> Vec<(IpAddr, Vec<u32>)> {
        let all = [
            (&a, vec![101, 102]),
            (&b, vec![101, 102]),
            (&c, vec![101, 103]),
        ];
        let own: BTreeSet<u32> = all
            .iter()
            .find(|(x, _)| x.vtep == s.vtep)
            .unwrap()
            .1
            .iter()
            .copied()
            .collect();
        all.iter()
            .filter(|(x, _)| x.vtep != s.vtep)
            .map(|(x, v)| {
                (
                    x.vtep,
                    v.iter()
                        .copied()
                        .filter(|n| own.contains(n))
                        .collect::<Vec<_>>(),
                )
            })
            .filter(|(_, v)| !v.is_empty())
            .collect()
    };
    // bgpd holds every route the reflector sent (C's VNI 103 at A too); what matters is that
    // each VTEP is known with at least the VNIs this site shares with it.
    let got = |s: &FrrSite| -> Vec<(IpAddr, Vec<u32>)> {
        lab.discovered(s)
            .vteps
            .into_iter()
            .map(|(ip, v)| (ip, v.into_iter().collect()))
            .collect()
    };
    let converged = wait_for("every site's EVPN view", Duration::from_secs(30), || {
        [&a, &b, &c].iter().all(|s| {
            let all: Vec<(IpAddr, Vec<u32>)> = got(s);
            want(s).iter().all(|(ip, vnis)| {
                all.iter()
                    .any(|(i, v)| i == ip && vnis.iter().all(|n| v.contains(n)))
            })
        }) && [(&a, 101), (&a, 102), (&b, 102), (&c, 101)]
            .iter()
            .all(|(s, vni)| {
                let expect: BTreeSet<IpAddr> = want(s)
                    .into_iter()
                    .filter(|(_, v)| v.contains(vni))
                    .map(|(ip, _)| ip)
                    .collect();
                shadow_flood(s, *vni) == expect
            })
    });
    eprintln!(
        "3 sites and a reflector: every flood list converged {converged:?} after FRR started"
    );
    // Exact flood lists, per VNI: A's VNI 102 holds B alone (C has no 102); C's 103 is empty.
    let at_a = |vni| lab.discovered(&a).flood_list(vni);
    assert_eq!(at_a(102), BTreeSet::from([b.vtep]));
    assert_eq!(at_a(101), BTreeSet::from([b.vtep, c.vtep]));
    assert_eq!(shadow_flood(&c, 103), BTreeSet::new());
    assert_eq!(shadow_flood(&a, 102), BTreeSet::from([b.vtep]));
    // The reflector named no site, yet holds a dynamic session with each.
    let rs = lab.sessions(rr);
    assert_eq!(rs.len(), 3, "{rs:?}");
    assert!(rs.iter().all(|s| s.established), "{rs:?}");
    let sa = lab.sessions(a.frr);
    assert_eq!(
        sa.iter().map(|s| s.peer.to_string()).collect::<Vec<_>>(),
        vec!["192.0.2.10"]
    );
    assert!(sa[0].established, "{sa:?}");

    // C vanishes from the underlay (no TCP close reaches anyone): the hold timer withdraws it.
    lab.set_uplink("c", false).unwrap();
    let gone = wait_for(
        "C withdrawn at A and B",
        HOLD + Duration::from_secs(6),
        || {
            !lab.discovered(&a).vteps.contains_key(&c.vtep)
                && !lab.discovered(&b).vteps.contains_key(&c.vtep)
                && !shadow_flood(&a, 101).contains(&c.vtep)
        },
    );
    eprintln!("C cut off: withdrawn at A and B {gone:?} later (hold time {HOLD:?})");
    assert!(
        gone >= Duration::from_secs(3),
        "withdrawn before any hold timer could expire ({gone:?}): something else cut C"
    );
    // Nothing else moved.
    assert_eq!(at_a(101), BTreeSet::from([b.vtep]));
    assert_eq!(at_a(102), BTreeSet::from([b.vtep]));

    // bgpd killed at A: supervision notices the exit and starts bgpd again, zebra is left
    // alone, and A learns B again.
    let (bgpd, zebra) = lab.frr[a.frr].pids();
    let (bgpd, zebra) = (bgpd.unwrap(), zebra.unwrap());
    sh(Command::new("kill").args(["-9", &bgpd.to_string()])).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let st = lab.frr[a.frr].state();
    assert!(!st.bgpd_running, "{st:?}");
    assert_eq!(st.zebra_running, Some(true), "{st:?}");
    assert!(
        st.last_exit
            .as_deref()
            .unwrap_or("")
            .contains("bgpd exited"),
        "{st:?}"
    );
    // zebra drops what a dead bgpd had it install, so the daemon must hold the last routes
    // itself: reading them now is an error, never an empty (all withdrawn) answer.
    assert!(
        lab.frr[a.frr].discovered(ASN, a.vtep).is_err(),
        "with bgpd gone, the routes are unknown, not empty"
    );
    let back = wait_for("bgpd started again at A", Duration::from_secs(5), || {
        lab.supervise(&a, "a").unwrap();
        lab.frr[a.frr].state().bgpd_running
    });
    let st = lab.frr[a.frr].state();
    assert_eq!(st.restarts, 1, "{st:?}");
    assert_ne!(lab.frr[a.frr].pids().0, Some(bgpd));
    assert_eq!(lab.frr[a.frr].pids().1, Some(zebra), "zebra untouched");
    // The first restart is at once; a daemon that keeps exiting waits longer each time.
    assert!(
        back < Duration::from_secs(2),
        "restarted only after {back:?}"
    );
    let relearned = wait_for("A learns B again", Duration::from_secs(20), || {
        lab.discovered(&a).flood_list(102) == BTreeSet::from([b.vtep])
    });
    eprintln!(
        "bgpd killed at A: started again after {back:?}, B learned again {relearned:?} later"
    );
}

/// The flood entries (remote VTEPs) of a VXLAN device at a lab site.
fn flood(lab: &Lab, site: &str, dev: &str) -> BTreeSet<String> {
    let out =
        sh(netns(&lab.site(site).ns, "bridge").args(["-j", "fdb", "show", "dev", dev])).unwrap();
    let v: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    v.iter()
        .filter(|e| e["mac"] == "00:00:00:00:00:00")
        .filter_map(|e| Some(e["dst"].as_str()?.to_string()))
        .collect()
}

/// The VTEPs a site's status lists as discovered, with their VNIs and whether their SA is up.
fn discovered_status(lab: &Lab, site: &str) -> Vec<(String, Vec<u64>, bool)> {
    let st = lab.status_json(site).unwrap();
    st["evpn"]["discovered"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| {
            (
                d["vtep"].as_str().unwrap_or("").to_string(),
                d["vnis"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|v| v.as_u64())
                    .collect(),
                d["sa_up"] == true,
            )
        })
        .collect()
}

fn pings_within(lab: &Lab, pairs: &[(&Vnf, &Vnf, &str)], limit: Duration) -> Duration {
    let t = Instant::now();
    let failed: Vec<&str> = pairs
        .iter()
        .filter(|(f, to, _)| !lab.ping_eventually(f, &to.ip, limit))
        .map(|(_, _, w)| *w)
        .collect();
    assert!(
        failed.is_empty(),
        "no traffic: {failed:?}\nA's log:\n{}",
        lab.daemon_log("a")
    );
    t.elapsed()
}

/// Write an EVPN site's (or reflector's) config: IPsec with a certificate from `ca` carrying
/// the site's VTEP address (issued the first time, kept when the config is rewritten), the
/// VTEP address as its identity, and `evpn` (the `[evpn]` table) appended.
fn write_evpn_config(
    lab: &Lab,
    psk: &std::path::Path,
    site: &str,
    ca: &TestCa,
    vlans: &[VlanSpec<'_>],
    evpn: &str,
) {
    let ip = lab.site(site).underlay_ip.clone();
    let file = format!("{}-{site}", ca.name);
    let issued = match ca.dir.join(format!("{file}.crt")) {
        cert if cert.exists() => l2s_lab::Issued {
            cert,
            key: ca.dir.join(format!("{file}.key")),
        },
        _ => ca.issue(&file, &ip, 365).unwrap(),
    };
    let more = format!(
        "auth = \"pubkey\"\ncert = \"{}\"\nkey = \"{}\"\ncacerts = [\"{}\"]\n",
        issued.cert.display(),
        issued.key.display(),
        ca.cert.display()
    );
    let cfg = lab
        .secure(site, &lab.config(site, &[], vlans), psk, &more)
        .replace(
            &format!("name = \"site-{site}\"\n"),
            &format!("name = \"site-{site}\"\nid = \"{ip}\"\n"),
        )
        + evpn;
    lab.write_config(site, &cfg).unwrap();
}

/// A reflector and sites A, B, C, all run by `l2s-vnf run` as deployed (charon, certificates
/// from one federation CA carrying each VTEP address, the guard), every site naming only the
/// reflector: VLAN 101 at A, B and C, VLAN 102 at A and B. A and B find each other; C joins
/// alone later; each site gets an SA with each other, floods to it once that SA is up, and the
/// VNFs reach each other (ping and TCP) with every byte inside ESP: no clear-text VXLAN and no
/// clear-text BGP on the underlay, ever. Status says where each peer came from. bgpd killed
/// at A empties nothing and comes back; a site whose certificate comes from another CA enters
/// no flood list; C vanishing (daemon killed, underlay cut) is withdrawn everywhere.
#[test]
fn sites_naming_only_the_reflector_carry_traffic_inside_ipsec() {
    require_lab!();
    if !frr_here() {
        return;
    }
    let _alone = one_federation_at_a_time();
    let mut lab = Lab::new(5).unwrap();
    let a101 = lab.add_vnf("a", "acc101", "10.101.0.1/24").unwrap();
    let b101 = lab.add_vnf("b", "acc101", "10.101.0.2/24").unwrap();
    let c101 = lab.add_vnf("c", "acc101", "10.101.0.3/24").unwrap();
    let a102 = lab.add_vnf("a", "acc102", "10.102.0.1/24").unwrap();
    let b102 = lab.add_vnf("b", "acc102", "10.102.0.2/24").unwrap();
    let e101 = lab.add_vnf("e", "acc101", "10.101.0.5/24").unwrap();
    let ca = TestCa::new(&lab.dir, "federation-ca").unwrap();
    let rogue = TestCa::new(&lab.dir, "another-ca").unwrap();
    let psk = lab.psk_file("psk", "unused-with-certificates\n").unwrap();
    let reflector = lab.site("d").underlay_ip.clone();
    let write = |lab: &Lab, site: &str, ca: &TestCa, vlans: &[VlanSpec<'_>], evpn: &str| {
        write_evpn_config(lab, &psk, site, ca, vlans, evpn)
    };
    let site_evpn =
        format!("\n[evpn]\nenabled = true\nreflectors = [\"{reflector}\"]\nhold_time = \"9s\"\n");
    write(
        &lab,
        "d",
        &ca,
        &[],
        "\n[evpn]\nenabled = true\nrole = \"reflector\"\nlisten_range = \"192.0.2.0/24\"\n",
    );
    write(
        &lab,
        "a",
        &ca,
        &[(101, &["acc101"], None), (102, &["acc102"], None)],
        &site_evpn,
    );
    write(
        &lab,
        "b",
        &ca,
        &[(101, &["acc101"], None), (102, &["acc102"], None)],
        &site_evpn,
    );
    write(&lab, "c", &ca, &[(101, &["acc101"], None)], &site_evpn);
    write(&lab, "e", &rogue, &[(101, &["acc101"], None)], &site_evpn);
    // `check` says what EVPN will do.
    let check = lab.l2s_ok("a", &["check", "--offline"]).unwrap();
    assert!(
        check.contains(&format!(
            "evpn: site in AS 65000, reflectors {reflector}, hold time 9 s"
        )),
        "{check}"
    );

    let cap = Capture::start(&lab, "evpn").unwrap();
    for s in ["a", "b", "c", "d", "e"] {
        lab.start_charon(s).unwrap();
    }
    lab.start_daemon("d").unwrap();
    let t0 = Instant::now();
    for s in ["a", "b"] {
        lab.start_daemon(s).unwrap();
    }
    let mtu = lab.status_json("a").unwrap()["access_mtu"]
        .as_u64()
        .unwrap() as u32;
    lab.set_vnf_mtu(&[&a101, &b101, &c101, &a102, &b102, &e101], mtu)
        .unwrap();
    pings_within(
        &lab,
        &[
            (&a101, &b101, "VLAN 101 A -> B"),
            (&a102, &b102, "VLAN 102 A -> B"),
        ],
        Duration::from_secs(40),
    );
    let two = t0.elapsed();

    // C joins: configured with the reflector alone, nobody else touched.
    let t1 = Instant::now();
    lab.start_daemon("c").unwrap();
    pings_within(
        &lab,
        &[
            (&c101, &a101, "VLAN 101 C -> A"),
            (&c101, &b101, "VLAN 101 C -> B"),
        ],
        Duration::from_secs(30),
    );
    let joined = t1.elapsed();
    eprintln!("A and B (naming only the reflector) ping {two:?} after their daemons started; C joined alone: traffic with A and B {joined:?} after its daemon started");
    // The 10 s goal is a speed target, proven by a benchmark (l2s-evpn-scale); here the join
    // must merely work, within a bound two shared cores under test load always meet.
    assert!(
        joined < Duration::from_secs(30),
        "C carried traffic only {joined:?} after its start\nA:\n{}\nC:\n{}",
        evpn_log(&lab, "a"),
        evpn_log(&lab, "c")
    );

    // Status tells where each peer came from, and the control plane's state.
    let st = lab.status_json("a").unwrap();
    let kinds: Vec<(String, String, bool)> = st["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["kind"].as_str().unwrap_or("").to_string(),
                p["up"] == true,
            )
        })
        .collect();
    for want in [
        (format!("reflector-{reflector}"), "reflector"),
        ("evpn-192.0.2.2".to_string(), "discovered"),
        ("evpn-192.0.2.3".to_string(), "discovered"),
    ] {
        assert!(
            kinds
                .iter()
                .any(|(n, k, up)| *n == want.0 && k == want.1 && *up),
            "{want:?} not up in {kinds:?}"
        );
    }
    assert_eq!(
        st["evpn"]["sessions"][0]["established"], true,
        "{:#}",
        st["evpn"]
    );
    let both = vec![
        ("192.0.2.2".to_string(), vec![101, 102], true),
        ("192.0.2.3".to_string(), vec![101], true),
    ];
    assert_eq!(discovered_status(&lab, "a"), both);
    assert_eq!(
        flood(&lab, "a", "l2s-vx101"),
        BTreeSet::from(["192.0.2.2".to_string(), "192.0.2.3".to_string()])
    );
    assert_eq!(
        flood(&lab, "a", "l2s-vx102"),
        BTreeSet::from(["192.0.2.2".to_string()])
    );
    let text = String::from_utf8_lossy(&lab.l2s("a", &["status"]).unwrap().stdout).into_owned();
    assert!(
        text.contains("discovered through EVPN") && text.contains("discovered 192.0.2.2"),
        "{text}"
    );
    let rs = lab.status_json("d").unwrap();
    let established = rs["evpn"]["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["established"] == true)
        .count();
    assert_eq!(established, 3, "the reflector's sessions: {:#}", rs["evpn"]);

    // Quiet, the route table is not read each second (only bgpd's UPDATE count is asked),
    // yet the routes are known current.
    let reads = |lab: &Lab| {
        lab.status_json("a").unwrap()["evpn"]["route_reads"]
            .as_u64()
            .unwrap()
    };
    let before = reads(&lab);
    std::thread::sleep(Duration::from_secs(12));
    let quiet = reads(&lab) - before;
    let st = lab.status_json("a").unwrap();
    assert!(
        quiet <= 4
            && st["evpn"]["routes_age_secs"]
                .as_u64()
                .is_some_and(|a| a <= 2),
        "{quiet} route reads in 12 quiet seconds: {:#}",
        st["evpn"]
    );
    eprintln!("quiet: {quiet} reads of the route table in 12 s (checks each second)");

    // One converge path: `apply` and `plan`, run beside the daemon, find nothing to change.
    for cmd in ["plan", "apply"] {
        let out = lab.l2s_ok("a", &[cmd]).unwrap();
        assert!(
            out.contains("no changes"),
            "`{cmd}` beside the daemon:\n{out}"
        );
    }

    // A TCP transfer inside ESP, per peer SA, both VLANs.
    for (server, client, site, peer) in [
        (&b101, &a101, "a", "b"),
        (&c101, &b101, "b", "c"),
        (&b102, &a102, "a", "b"),
    ] {
        let ip = lab.site(peer).underlay_ip.clone();
        let e = lab
            .encrypted_transfer_to(
                &cap,
                server,
                client,
                site,
                (peer, &format!("evpn-{ip}")),
                "1M",
                Duration::from_secs(10),
            )
            .unwrap();
        eprintln!(
            "{} -> {}: {} bytes, SA counted {}, ESP {}",
            client.ip, server.ip, e.got, e.sa, e.esp
        );
    }

    // C adds VLAN 102 by a reload of its own config: its route follows, A and B flood to it.
    let c102 = lab.add_vnf("c", "acc102", "10.102.0.3/24").unwrap();
    lab.set_vnf_mtu(&[&c102], mtu).unwrap();
    write(
        &lab,
        "c",
        &ca,
        &[(101, &["acc101"], None), (102, &["acc102"], None)],
        &site_evpn,
    );
    let t3 = Instant::now();
    lab.l2s_ok("c", &["reload"]).unwrap();
    pings_within(
        &lab,
        &[
            (&c102, &a102, "VLAN 102 C -> A"),
            (&c102, &b102, "VLAN 102 C -> B"),
        ],
        Duration::from_secs(20),
    );
    let added = t3.elapsed();
    // C's frames reach A through C's own flood list, and A answers C's learned MAC: the ping
    // can pass before A follows C's new route. A's flood list must follow too.
    wait_for("A floods VLAN 102 to C", Duration::from_secs(15), || {
        flood(&lab, "a", "l2s-vx102")
            == BTreeSet::from(["192.0.2.2".to_string(), "192.0.2.3".to_string()])
    });
    let in_list = t3.elapsed();
    eprintln!("C added VLAN 102 by reload: traffic with A and B on it {added:?} later, in A's flood list {in_list:?} after the reload");
    // And removes it again: A and B stop flooding VLAN 102 to C (after the grace).
    write(&lab, "c", &ca, &[(101, &["acc101"], None)], &site_evpn);
    lab.l2s_ok("c", &["reload"]).unwrap();
    let removed = wait_for("C out of VLAN 102 at A", Duration::from_secs(15), || {
        flood(&lab, "a", "l2s-vx102") == BTreeSet::from(["192.0.2.2".to_string()])
    });
    assert_eq!(
        flood(&lab, "a", "l2s-vx101").len(),
        2,
        "VLAN 101 must not move"
    );
    eprintln!("C removed VLAN 102 by reload: out of A's flood list {removed:?} later");

    // bgpd killed at A: the data plane holds (the daemon keeps the last routes), status says
    // why, bgpd is started again and the routes are read afresh.
    let frr_dir = lab.site("a").dir.join("control.sock.frr");
    let bgpd = std::fs::read_to_string(frr_dir.join("bgpd.pid")).unwrap();
    sh(Command::new("kill").args(["-9", bgpd.trim()])).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        discovered_status(&lab, "a"),
        both,
        "A forgot its peers when bgpd died"
    );
    assert_eq!(flood(&lab, "a", "l2s-vx101").len(), 2);
    lab.service_within(&a101, &c101, Duration::from_secs(10))
        .unwrap();
    let back = wait_for(
        "bgpd back at A, routes current",
        Duration::from_secs(40),
        || {
            let st = lab.status_json("a").unwrap();
            let e = &st["evpn"];
            e["frr"]["bgpd_running"] == true
                && e["frr"]["restarts"].as_u64().unwrap_or(0) >= 1
                && e["sessions"][0]["established"] == true
                && e["routes_age_secs"].as_u64().is_some_and(|a| a <= 2)
                && e["problem"].is_null()
        },
    );
    let st = lab.status_json("a").unwrap();
    assert!(
        st["evpn"]["frr"]["last_exit"]
            .as_str()
            .unwrap_or("")
            .contains("bgpd exited"),
        "{:#}",
        st["evpn"]
    );
    assert_eq!(discovered_status(&lab, "a"), both);
    eprintln!("bgpd killed at A: the data plane held, BGP established again {back:?} later");

    // The site with another CA's certificate: no session with the reflector, never in a
    // flood list, its VNF reaches nobody.
    lab.start_daemon("e").unwrap();
    std::thread::sleep(Duration::from_secs(12));
    assert!(
        !discovered_status(&lab, "a")
            .iter()
            .any(|d| d.0 == "192.0.2.5"),
        "the rogue site was discovered"
    );
    assert!(!flood(&lab, "a", "l2s-vx101").contains("192.0.2.5"));
    let es = lab.status_json("e").unwrap();
    assert_ne!(
        es["evpn"]["sessions"][0]["established"], true,
        "{:#}",
        es["evpn"]
    );
    assert!(
        !lab.ping(&e101, &a101.ip, 3),
        "the rogue site's VNF reached A's"
    );
    assert!(lab.ping(&b101, &a101.ip, 1), "the federation still works");

    // C vanishes: its daemon killed and its underlay cut. The reflector's hold timer withdraws
    // its routes, and A and B drop its flood entry and its connection.
    lab.stop_daemon("c", SIGKILL).unwrap();
    lab.set_underlay("c", false).unwrap();
    let gone = wait_for(
        "C withdrawn at A and B",
        Duration::from_secs(9 + 16),
        || {
            ["a", "b"].iter().all(|s| {
                !flood(&lab, s, "l2s-vx101").contains("192.0.2.3")
                    && !discovered_status(&lab, s)
                        .iter()
                        .any(|d| d.0 == "192.0.2.3")
            })
        },
    );
    assert!(
        gone >= Duration::from_secs(3),
        "C withdrawn after {gone:?}: before any hold timer expired"
    );
    let st = lab.status_json("a").unwrap();
    assert!(
        !st["peers"].to_string().contains("evpn-192.0.2.3"),
        "C's connection stayed: {:#}",
        st["peers"]
    );
    lab.service_within(&a101, &b101, Duration::from_secs(10))
        .unwrap();
    eprintln!("C vanished: withdrawn at A and B {gone:?} later (hold time 9 s)");

    let cap = nothing_in_clear_text(cap);
    assert!(
        cap.esp_bytes("192.0.2.1", "192.0.2.4") > 0,
        "no ESP from A to the reflector: BGP went where?"
    );
}

const SIGKILL: i32 = 9;

/// Two reflectors (D and E), sites A and B naming both: losing one reflector (its underlay
/// cut) loses nothing — a ping stream across the sites drops nothing and no flood list moves —
/// and a reflector restarted (its daemon stopped and started) comes back without a moment of
/// lost traffic either. A site's daemon restarted (at each end) holds what it had until its
/// new bgpd's routes are complete: no ping lost either.
#[test]
fn two_reflectors_losing_or_restarting_one_loses_nothing() {
    require_lab!();
    if !frr_here() {
        return;
    }
    let _alone = one_federation_at_a_time();
    let mut lab = Lab::new(5).unwrap();
    let a101 = lab.add_vnf("a", "acc101", "10.101.0.1/24").unwrap();
    let b101 = lab.add_vnf("b", "acc101", "10.101.0.2/24").unwrap();
    let ca = TestCa::new(&lab.dir, "federation-ca").unwrap();
    let psk = lab.psk_file("psk", "unused-with-certificates\n").unwrap();
    let (d, e) = (
        lab.site("d").underlay_ip.clone(),
        lab.site("e").underlay_ip.clone(),
    );
    let reflector =
        "\n[evpn]\nenabled = true\nrole = \"reflector\"\nlisten_range = \"192.0.2.0/24\"\n";
    let site =
        format!("\n[evpn]\nenabled = true\nreflectors = [\"{d}\", \"{e}\"]\nhold_time = \"9s\"\n");
    for r in ["d", "e"] {
        write_evpn_config(&lab, &psk, r, &ca, &[], reflector);
    }
    for s in ["a", "b"] {
        write_evpn_config(&lab, &psk, s, &ca, &[(101, &["acc101"], None)], &site);
    }
    for s in ["a", "b", "d", "e"] {
        lab.start_charon(s).unwrap();
    }
    for s in ["d", "e", "a", "b"] {
        lab.start_daemon(s).unwrap();
    }
    let mtu = lab.status_json("a").unwrap()["access_mtu"]
        .as_u64()
        .unwrap() as u32;
    lab.set_vnf_mtu(&[&a101, &b101], mtu).unwrap();
    pings_within(
        &lab,
        &[(&a101, &b101, "VLAN 101 A -> B")],
        Duration::from_secs(40),
    );
    wait_for(
        "both sites in session with both reflectors",
        Duration::from_secs(20),
        || {
            ["a", "b"].iter().all(|s| {
                let st = lab.status_json(s).unwrap();
                st["evpn"]["sessions"]
                    .as_array()
                    .is_some_and(|v| v.len() == 2 && v.iter().all(|x| x["established"] == true))
            })
        },
    );
    let cap = Capture::start(&lab, "two-reflectors").unwrap();
    let stream = l2s_lab::PingStream::start(&a101, &b101, 1000, 50).unwrap();

    // D vanishes: its sessions expire (hold time), E still reflects everything.
    lab.set_underlay("d", false).unwrap();
    wait_for("A's session with D down", Duration::from_secs(20), || {
        let st = lab.status_json("a").unwrap();
        st["evpn"]["sessions"].as_array().is_some_and(|v| {
            v.iter()
                .any(|x| x["peer"] == d.as_str() && x["established"] == false)
        })
    });
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(
        flood(&lab, "a", "l2s-vx101"),
        BTreeSet::from(["192.0.2.2".to_string()])
    );
    assert_eq!(
        flood(&lab, "b", "l2s-vx101"),
        BTreeSet::from(["192.0.2.1".to_string()])
    );
    lab.set_underlay("d", true).unwrap();

    // E restarted: stopped cleanly (its bgpd ends with it) and started again.
    lab.stop_daemon("e", 15).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        flood(&lab, "a", "l2s-vx101"),
        BTreeSet::from(["192.0.2.2".to_string()])
    );
    lab.start_daemon("e").unwrap();
    let back = wait_for("both sessions back at A", Duration::from_secs(30), || {
        let st = lab.status_json("a").unwrap();
        st["evpn"]["sessions"]
            .as_array()
            .is_some_and(|v| v.len() == 2 && v.iter().all(|x| x["established"] == true))
    });
    let (sent, got) = stream.finish().unwrap();
    eprintln!("two reflectors, one lost then the other restarted: {got} of {sent} pings answered; both sessions back {back:?} after E's restart");
    assert_eq!(got, sent, "traffic was lost while a reflector was away");

    // A site's daemon restarted, from each end in turn: its FRR starts afresh and knows no
    // route for seconds, yet the sites an earlier run left are held until bgpd's routes are
    // complete. The flood list never loses the other site, and no ping is lost.
    for (site, other) in [("a", "192.0.2.2"), ("b", "192.0.2.1")] {
        let stream = l2s_lab::PingStream::start(&a101, &b101, 400, 50).unwrap();
        lab.stop_daemon(site, 15).unwrap();
        lab.start_daemon(site).unwrap();
        // `plan` beside a daemon whose bgpd is just starting: it refuses, or keeps the site.
        let out = lab.l2s(site, &["plan"]).unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !text.contains(&format!("- ipsec l2s-vnf:l2s0:evpn-{other}"))
                && !text.contains(&format!("-> {other}")),
            "`plan` at {site} during its restart would remove the other site:\n{text}"
        );
        // Both flood lists are watched until the routes are complete and a withdrawal grace
        // after (the other site must not drop this one while its new bgpd starts).
        let mut samples = 0;
        let mut same_flood = || {
            samples += 1;
            for (at, want) in [(site, other), (if site == "a" { "b" } else { "a" }, "")] {
                let want = if want.is_empty() {
                    lab.site(site).underlay_ip.clone()
                } else {
                    want.to_string()
                };
                assert_eq!(
                    flood(&lab, at, "l2s-vx101"),
                    BTreeSet::from([want]),
                    "{at}'s flood list moved during {site}'s restart\nA:\n{}\nB:\n{}",
                    evpn_log(&lab, "a"),
                    evpn_log(&lab, "b")
                );
            }
        };
        let settled = wait_for(
            &format!("{site}'s routes complete after its restart"),
            Duration::from_secs(40),
            || {
                same_flood();
                let st = lab.status_json(site).unwrap();
                st["evpn"]["problem"].is_null()
                    && st["evpn"]["sessions"]
                        .as_array()
                        .is_some_and(|v| v.len() == 2 && v.iter().all(|x| x["established"] == true))
            },
        );
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(7) {
            same_flood();
            std::thread::sleep(Duration::from_millis(200));
        }
        let log = lab.daemon_log(site);
        assert!(
            log.contains("holding the discovered sites found on the system"),
            "{site} did not adopt what its earlier run left:\n{log}"
        );
        let (sent, got) = stream.finish().unwrap();
        eprintln!("{site}'s daemon restarted: routes complete {settled:?} later ({samples} samples of its flood list, none without the other site); {got} of {sent} pings answered");
        assert_eq!(
            got,
            sent,
            "traffic was lost while {site}'s daemon restarted\nA:\n{}\nB:\n{}",
            lab.daemon_log("a"),
            lab.daemon_log("b")
        );
        let plan = lab.l2s_ok(site, &["plan"]).unwrap();
        assert!(plan.contains("no changes"), "{plan}");
    }
    lab.service_within(&a101, &b101, Duration::from_secs(10))
        .unwrap();
    nothing_in_clear_text(cap);
}

/// The MACs a VNF that left a site takes there (locally administered).
const SPARE_B: &str = "02:00:00:0b:0b:0b";
const SPARE_C: &str = "02:00:00:0c:0c:0c";

/// What every site's bgpd, status and devices say about MACs (for a failure's report).
fn mac_routes(lab: &Lab) -> String {
    let mut out = String::new();
    for s in ["a", "b", "c"] {
        let dir = lab.site(s).dir.join("control.sock.frr");
        let routes = Command::new("vtysh")
            .args(["--vty_socket", &dir.display().to_string()])
            .args(["-c", "show bgp l2vpn evpn route type macip"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let fdb = sh(netns(&lab.site(s).ns, "bridge").args(["fdb", "show", "dev", "l2s-vx101"]))
            .unwrap_or_default();
        let st = lab
            .status_json(s)
            .map(|v| v["evpn"].to_string())
            .unwrap_or_default();
        let macs = lab.l2s_ok(s, &["macs"]).unwrap_or_default();
        out += &format!(
            "--- {s}\nbgpd:\n{routes}\nl2s-vx101:\n{fdb}\nmacs:\n{macs}\nstatus: {st}\nlog:\n{}\n",
            evpn_log(lab, s)
        );
    }
    for ns in sh(Command::new("ip").args(["netns", "list"]))
        .unwrap_or_default()
        .lines()
    {
        let ns = ns.split_whitespace().next().unwrap_or("");
        if ns.starts_with("l2s-evpn") {
            let f = sh(Command::new("bridge").args(["-n", ns, "fdb", "show"])).unwrap_or_default();
            let shadow: Vec<&str> = f
                .lines()
                .filter(|l| l.contains("l2s-ea") || l.contains("l2s-ex"))
                .collect();
            out += &format!("--- {ns}\n{}\n", shadow.join("\n"));
        }
    }
    out
}

/// The remote MACs EVPN placed on a site's VXLAN device (`extern_learn` entries): MAC → VTEP.
fn placed(lab: &Lab, site: &str, dev: &str) -> std::collections::BTreeMap<String, String> {
    let out = sh(netns(&lab.site(site).ns, "bridge").args(["-j", "fdb", "show", "dev", dev]))
        .unwrap_or_default();
    let v: Vec<serde_json::Value> = serde_json::from_str(out.trim()).unwrap_or_default();
    v.iter()
        .filter(|e| {
            e["flags"]
                .as_array()
                .is_some_and(|f| f.iter().any(|x| x == "extern_learn"))
        })
        .filter_map(|e| {
            Some((
                e["mac"].as_str()?.to_string(),
                e["dst"].as_str()?.to_string(),
            ))
        })
        .collect()
}

/// Type-2 routes and MAC mobility: a reflector and sites A, B, C on VLAN 101, naming only the
/// reflector. A VNF (M) at B is advertised by B, and every other site places its MAC behind
/// B's VTEP (a permanent, externally learned entry that traffic cannot move). M moves to C (it
/// goes quiet at B, whose port stays up and whose switch still remembers it, and starts at C
/// with the same MAC and address): C advertises it, B stops, A and B place it behind C, and A's traffic follows —
/// then back to B. After each move: ping and a TCP transfer inside the new site's SA, `macs`
/// tells where M is and that EVPN put it there; the underlay carries no clear text.
#[test]
fn a_vnf_moving_between_sites_is_followed_by_its_mac_route() {
    require_lab!();
    if !frr_here() {
        return;
    }
    let _alone = one_federation_at_a_time();
    let mut lab = Lab::new(4).unwrap();
    let a101 = lab.add_vnf("a", "acc101", "10.101.0.1/24").unwrap();
    let m_b = lab.add_vnf("b", "mov101", "10.101.0.9/24").unwrap();
    let m_c = lab.add_vnf("c", "mov101", "10.101.0.9/24").unwrap();
    let mac = lab.vnf_mac(&m_b).unwrap();
    for m in [&m_b, &m_c] {
        lab.vnf_without_ipv6(m).unwrap();
    }
    lab.vnf_leaves(&m_c, SPARE_C).unwrap();
    let ca = TestCa::new(&lab.dir, "federation-ca").unwrap();
    let psk = lab.psk_file("psk", "unused-with-certificates\n").unwrap();
    let reflector = lab.site("d").underlay_ip.clone();
    write_evpn_config(
        &lab,
        &psk,
        "d",
        &ca,
        &[],
        "\n[evpn]\nenabled = true\nrole = \"reflector\"\nlisten_range = \"192.0.2.0/24\"\n",
    );
    let site_evpn =
        format!("\n[evpn]\nenabled = true\nreflectors = [\"{reflector}\"]\nhold_time = \"9s\"\n");
    write_evpn_config(
        &lab,
        &psk,
        "a",
        &ca,
        &[(101, &["acc101"], None)],
        &site_evpn,
    );
    for s in ["b", "c"] {
        write_evpn_config(&lab, &psk, s, &ca, &[(101, &["mov101"], None)], &site_evpn);
    }
    let cap = Capture::start(&lab, "mobility").unwrap();
    for s in ["a", "b", "c", "d"] {
        lab.start_charon(s).unwrap();
    }
    for s in ["d", "a", "b", "c"] {
        lab.start_daemon(s).unwrap();
    }
    let mtu = lab.status_json("a").unwrap()["access_mtu"]
        .as_u64()
        .unwrap() as u32;
    lab.set_vnf_mtu(&[&a101, &m_b, &m_c], mtu).unwrap();
    let (b_ip, c_ip) = ("192.0.2.2".to_string(), "192.0.2.3".to_string());
    pings_within(
        &lab,
        &[(&a101, &m_b, "A -> M at B")],
        Duration::from_secs(40),
    );
    wait_for("A and C in B's flood list", Duration::from_secs(30), || {
        flood(&lab, "b", "l2s-vx101").len() == 2
    });

    // Where each site places M, and whether A's traffic reaches M where it is now.
    let placed_everywhere = |at: &str, others: &[&str], limit: Duration| {
        let t = Instant::now();
        while t.elapsed() < limit {
            if others
                .iter()
                .all(|s| placed(&lab, s, "l2s-vx101").get(&mac) == Some(&at.to_string()))
            {
                return t.elapsed();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "M ({mac}) not placed behind {at} at {others:?} within {limit:?}\n{}",
            mac_routes(&lab)
        );
    };
    placed_everywhere(&b_ip, &["a", "c"], Duration::from_secs(20));

    let judge = |lab: &Lab, m: &Vnf, site: &str, name: &str| {
        lab.service_within(&a101, m, Duration::from_secs(15))
            .unwrap();
        let e = lab
            .encrypted_transfer_to(
                &cap,
                m,
                &a101,
                "a",
                (site, name),
                "1M",
                Duration::from_secs(10),
            )
            .unwrap();
        eprintln!(
            "A -> M: {} bytes, SA evpn with {site} counted {}, ESP {}",
            e.got, e.sa, e.esp
        );
        // `macs` at A: M behind that site, put there by EVPN.
        let table = lab.l2s_ok("a", &["macs", "--json"]).unwrap();
        let doc: serde_json::Value = serde_json::from_str(&table).unwrap();
        let rows = doc["macs"].as_array().unwrap();
        let ip = lab.site(site).underlay_ip.clone();
        assert!(
            rows.iter().any(|r| r["mac"] == mac.as_str()
                && r["peer"].as_str().is_some_and(|p| p.contains(&ip))
                && r["evpn"] == true),
            "A's `macs` does not place {mac} behind {site} through EVPN: {table}"
        );
    };
    judge(&lab, &m_b, "b", &format!("evpn-{b_ip}"));

    // M moves to C: it goes quiet at B, whose port stays up and whose switch still remembers
    // M (B's routes must yield to C's newer one, not to B forgetting it), and starts at C,
    // which hears from it first (a migrated VM announces itself).
    let in_switch = |site: &str| {
        let t = lab.l2s_ok(site, &["macs"]).unwrap();
        t.lines()
            .any(|l| l.contains(mac.as_str()) && l.contains("port mov101"))
    };
    let t = Instant::now();
    lab.vnf_leaves(&m_b, SPARE_B).unwrap();
    lab.vnf_arrives(&m_c, &mac, &a101).unwrap();
    placed_everywhere(&c_ip, &["a", "b"], Duration::from_secs(20));
    let moved = t.elapsed();
    let reached = {
        assert!(
            lab.ping_eventually(&a101, &m_c.ip, Duration::from_secs(10)),
            "A cannot reach M at C\nB's log:\n{}",
            evpn_log(&lab, "b")
        );
        t.elapsed()
    };
    eprintln!("M moved to C: placed behind C at A and B {moved:?} after the move, A reached it {reached:?} after it");
    assert!(
        in_switch("b"),
        "B's switch forgot M: the move did not test the mobility rule"
    );
    let st = lab.status_json("b").unwrap();
    assert_eq!(
        st["evpn"]["local_macs"], 0,
        "B still advertises M: {:#}",
        st["evpn"]
    );
    judge(&lab, &m_c, "c", &format!("evpn-{c_ip}"));

    // And back to B.
    let t = Instant::now();
    lab.vnf_leaves(&m_c, SPARE_C).unwrap();
    lab.vnf_arrives(&m_b, &mac, &a101).unwrap();
    placed_everywhere(&b_ip, &["a", "c"], Duration::from_secs(20));
    let back = t.elapsed();
    assert!(lab.ping_eventually(&a101, &m_b.ip, Duration::from_secs(10)));
    eprintln!(
        "M moved back to B: placed behind B at A and C {back:?} after the move, A reached it {:?} after it",
        t.elapsed()
    );
    judge(&lab, &m_b, "b", &format!("evpn-{b_ip}"));
    assert!(in_switch("c"), "C's switch forgot M");
    let st = lab.status_json("c").unwrap();
    assert_eq!(st["evpn"]["local_macs"], 0, "{:#}", st["evpn"]);
    let st = lab.status_json("b").unwrap();
    assert_eq!(st["evpn"]["local_macs"], 1, "{:#}", st["evpn"]);
    // One converge path: `plan` beside the daemon finds the same MACs placed.
    let out = lab.l2s_ok("a", &["plan"]).unwrap();
    assert!(out.contains("no changes"), "{out}");
    nothing_in_clear_text(cap);
}
