//! The production stack, the whole way: a Debian 12 guest on Debian's own kernel (OVS kernel
//! datapath, kernel ESP in transport mode), site A configured by the project's cloud-init
//! user-data rendered from the NS parameters — which installs the .deb and starts the
//! packaged systemd unit — and the paper's sites B and C in namespaces of the same guest,
//! each with its own OVS, a stock-configured charon and l2s-vnf under systemd. An underlay
//! capture runs throughout: after every event the VLANs must carry ping, TCP and multicast,
//! and the underlay only ESP (IP protocol 50) between the VTEPs.
//!
//! Slow by nature (TCG on these machines: the image build, when not cached, ~2 min; boot
//! and cloud-init ~2 min; the scenario several minutes): one guest, one test.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::time::{Duration, Instant};

use l2s_lab::guest::{self, Boot, Guest};

const DEB_URL: &str = "http://10.0.2.100/l2s-vnf.deb";
/// The VLAN pairs of the paper's scenario: (from VNF, to VNF, to address, VLAN).
const PAIRS: [(&str, &str, &str, u16); 4] = [
    ("a101", "b101", "10.101.0.2", 101),
    ("a101", "c101", "10.101.0.3", 101),
    ("b101", "c101", "10.101.0.3", 101),
    ("a102", "b102", "10.102.0.2", 102),
];
const ACCESS_MTU: u32 = 1408;

/// The guest and what the scenario knows about it.
struct Stack {
    g: Guest,
}

/// `l2s-vnf` for a site: A runs with the packaged defaults; B and C in their namespaces.
fn l2s_cmd(site: &str) -> String {
    match site {
        "site-a" => "l2s-vnf".into(),
        s => format!("ip netns exec {s} l2s-vnf -c /etc/l2s-lab/{s}/site.toml"),
    }
}

impl Stack {
    fn sh(&self, cmd: &str) -> String {
        self.g.sh(cmd).unwrap_or_else(|e| panic!("{e}"))
    }

    fn ok(&self, cmd: &str) -> bool {
        self.g.run(cmd).is_ok_and(|o| o.status.success())
    }

    fn status(&self, site: &str) -> serde_json::Value {
        let text = self.sh(&format!("{} status --json", l2s_cmd(site)));
        serde_json::from_str(&text).unwrap()
    }

    fn all_up(&self) -> bool {
        ["site-a", "site-b", "site-c"].iter().all(|s| {
            self.g
                .sh(&format!("{} status --json", l2s_cmd(s)))
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                .is_some_and(|st| {
                    st["vlans"]
                        .as_array()
                        .is_some_and(|v| !v.is_empty() && v.iter().all(|v| v["up"] == true))
                })
        })
    }

    /// Every site reports every VLAN up (data path and SAs) within `limit`.
    fn wait_up(&self, what: &str, limit: Duration) -> Duration {
        let t = Instant::now();
        while !self.all_up() {
            if t.elapsed() > limit {
                let st: Vec<String> = ["site-a", "site-b", "site-c"]
                    .iter()
                    .map(|s| {
                        self.g
                            .sh(&format!("{} status", l2s_cmd(s)))
                            .unwrap_or_else(|e| e.to_string())
                    })
                    .collect();
                panic!(
                    "{what}: not every VLAN up within {limit:?}:\n{}",
                    st.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        t.elapsed()
    }

    /// Ping and TCP across the sites on both VLANs, and multicast on VLAN 101.
    fn service(&self, what: &str) -> Duration {
        let t = Instant::now();
        for (from, to, ip, vlan) in PAIRS {
            let out = self
                .g
                .run(&format!("/root/lab/service.sh {from} {to} {ip}"))
                .unwrap();
            assert!(
                out.status.success(),
                "{what}: VLAN {vlan} {from} -> {to}: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        self.multicast(what);
        t.elapsed()
    }

    fn multicast(&self, what: &str) {
        let got = self.sh(
            "ip netns exec b101 /root/lab/multicast.py recv 10.101.0.2 > /tmp/mc-b & \
             ip netns exec c101 /root/lab/multicast.py recv 10.101.0.3 > /tmp/mc-c & \
             sleep 1; ip netns exec a101 /root/lab/multicast.py send 10.101.0.1; wait; \
             cat /tmp/mc-b /tmp/mc-c",
        );
        assert_eq!(
            got.matches("l2s-multicast").count(),
            2,
            "{what}: multicast from A did not reach both B and C: {got:?}"
        );
    }

    /// Packets in the underlay capture matching a tcpdump filter.
    fn captured(&self, filter: &str) -> usize {
        self.sh(&format!(
            "tcpdump -n -r /root/underlay.pcap '{filter}' 2>/dev/null | wc -l"
        ))
        .trim()
        .parse()
        .unwrap()
    }

    /// The underlay so far: no clear-text VXLAN between the VTEPs, no outer fragments, ESP only as protocol
    /// 50 (no NAT, so no UDP encapsulation). Returns the ESP packets seen.
    fn capture_clean(&self, what: &str) -> usize {
        // (The rogue host's forged frames are clear text by design; the guard drops them.)
        assert_eq!(
            self.captured("udp port 4789 and not host 198.51.100.66"),
            0,
            "{what}: clear-text VXLAN between the VTEPs on the underlay"
        );
        assert_eq!(
            self.captured("ip[6:2] & 0x3fff != 0"),
            0,
            "{what}: outer fragments on the underlay"
        );
        assert_eq!(
            self.captured("udp port 4500"),
            0,
            "{what}: ESP in UDP, expected plain ESP"
        );
        self.captured("ip proto 50")
    }

    /// An event under test: do it, wait for every VLAN up, then judge the service and the
    /// capture. Prints how long the way back took.
    fn event(&self, what: &str, act: &str) {
        let t = Instant::now();
        self.sh(act);
        let up = self.wait_up(what, Duration::from_secs(90));
        let svc = self.service(what);
        let esp = self.capture_clean(what);
        eprintln!(
            "guest: {what}: all VLANs up {:.1} s after, service checked in {:.1} s ({esp} ESP packets so far)",
            up.as_secs_f64(),
            svc.as_secs_f64()
        );
        let _ = t;
    }

    /// A drift at site A: done, then repaired (`repaired` holds in the guest and every VLAN
    /// is up), then the service.
    fn drift(&self, what: &str, act: &str, repaired: &str, limit: Duration) {
        let before = self.status("site-a")["daemon"]["repairs_total"]
            .as_u64()
            .unwrap();
        self.sh(act);
        let t = Instant::now();
        self.g
            .wait_until(what, limit, repaired)
            .unwrap_or_else(|e| panic!("{e}"));
        let up = self.wait_up(what, limit);
        let repaired_in = t.elapsed();
        let svc = Instant::now();
        self.service(what);
        let after = self.status("site-a")["daemon"]["repairs_total"]
            .as_u64()
            .unwrap();
        assert!(after > before, "{what}: no repair counted");
        self.capture_clean(what);
        eprintln!(
            "guest drift: {what}: repaired in {:.1} s (VLANs up {:.1} s), service {:.1} s",
            repaired_in.as_secs_f64(),
            up.as_secs_f64(),
            svc.elapsed().as_secs_f64()
        );
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for cmd in [
            "cloud-init status --long",
            "tail -30 /var/log/cloud-init-output.log",
            "journalctl -u l2s-vnf --no-pager | tail -40",
            "journalctl -u l2s-vnf-site-b --no-pager | tail -20",
            "journalctl -u strongswan --no-pager | tail -20",
            "l2s-vnf status",
            "ip netns exec site-b l2s-vnf -c /etc/l2s-lab/site-b/site.toml status",
            "ip netns exec site-c l2s-vnf -c /etc/l2s-lab/site-c/site.toml status",
        ] {
            if let Ok(o) = self.g.run(cmd) {
                eprintln!(
                    "---- guest: {cmd}\n{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                );
            }
        }
        eprintln!(
            "---- guest console (tail)\n{}",
            self.g
                .console()
                .lines()
                .rev()
                .take(20)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

/// The VNFs of VLAN 103 (added by a reload in step 5), each on a new access interface ens7
/// at A and at B.
fn plug_vlan103(s: &Stack) {
    for (ns, site, addr) in [("a103", "", "10.103.0.1"), ("b103", "site-b", "10.103.0.2")] {
        s.sh(&format!(
            "ip netns add {ns} && ip -n {ns} link set lo up && \
             ip link add t-{ns} type veth peer name eth0 netns {ns} && \
             {move_it} ip {n} link set t-{ns} name ens7 && ip {n} link set ens7 up && \
             ip -n {ns} addr add {addr}/24 dev eth0 && ip -n {ns} link set eth0 mtu {ACCESS_MTU} up",
            move_it = if site.is_empty() { String::new() } else { format!("ip link set t-{ns} netns {site} &&") },
            n = if site.is_empty() { String::new() } else { format!("-n {site}") },
        ));
    }
}

#[test]
fn the_paper_sites_on_the_production_stack() {
    let Some((image, deb)) = guest::prepare().unwrap() else {
        return;
    };
    let t0 = Instant::now();
    // The sites authenticate with certificates from a throw-away federation CA, as the NS
    // parameters say (the recommended mode).
    let pki = guest::GuestCa::new().unwrap();
    let user_data = guest::user_data("site-a", &pki.ca, DEB_URL).unwrap();
    let g = Guest::boot(
        &image,
        Boot {
            user_data: Some(&user_data),
            serve: Some(&deb),
            memory_mib: 2048,
            cpus: 2,
            ..Default::default()
        },
    )
    .unwrap();
    eprintln!(
        "guest: booted ({:?}) in {:.0} s",
        g.accel,
        t0.elapsed().as_secs_f64()
    );
    let mut s = Stack { g };

    // 1. The whole way at site A: cloud-init → .deb → systemctl → READY.
    s.g.cloud_init_done().unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "guest: cloud-init done {:.0} s after boot began",
        t0.elapsed().as_secs_f64()
    );
    let unit = s.sh("systemctl show -p Type,ActiveState,SubState,UnitFileState,StatusText l2s-vnf");
    for want in [
        "Type=notify",
        "ActiveState=active",
        "SubState=running",
        "UnitFileState=enabled",
    ] {
        assert!(unit.contains(want), "{want} not in:\n{unit}");
    }
    assert!(s.ok("dpkg-query -W -f='${Status}' l2s-vnf | grep -q 'install ok installed'"));
    let depends = s.sh("dpkg-query -W -f='${Depends}' l2s-vnf");
    assert!(
        depends.contains("libstrongswan-standard-plugins"),
        "{depends}"
    );
    // The stock charon: charon-systemd, Debian's /etc/strongswan.conf, nothing of ours in it.
    assert!(s.ok("systemctl is-active strongswan"));
    assert_eq!(
        s.sh("grep -rl l2s /etc/strongswan.conf /etc/strongswan.d /etc/swanctl 2>/dev/null | grep -v zz-l2s-vnf.conf | wc -l").trim(),
        "0"
    );
    assert_eq!(
        s.sh("stat -c %a /etc/l2s-vnf/site.key").trim(),
        "600",
        "cloud-init writes the private key 0600"
    );
    assert!(
        s.sh("l2s-vnf check --json")
            .contains("\"auth\": \"pubkey\""),
        "site A runs on certificates"
    );
    let check = s.sh("l2s-vnf check");
    assert!(
        check.contains("access MTU 1408") && check.contains("1416 would fit"),
        "{check}"
    );

    // 2. The peer sites, and the underlay capture for everything that follows.
    guest::install_lab_scripts(&s.g).unwrap();
    s.sh("systemd-run --quiet --unit=l2s-lab-capture --collect ip netns exec ul tcpdump -i ul0 -n -U -s 128 -w /root/underlay.pcap; sleep 2");
    for site in ["site-b", "site-c"] {
        guest::start_peer(
            &s.g,
            site,
            &guest::user_data(site, &pki.ca, DEB_URL).unwrap(),
        )
        .unwrap();
    }
    let up = s.wait_up("first convergence", Duration::from_secs(120));
    eprintln!(
        "guest: all three sites up {:.1} s after B and C started",
        up.as_secs_f64()
    );
    let unit_b = s.sh("systemctl show -p ActiveState,StatusText l2s-vnf-site-b");
    assert!(unit_b.contains("ActiveState=active"), "{unit_b}");
    // Certificates on the stock charon: each peer's, as charon verified it, in A's status.
    let st = s.status("site-a");
    for p in ["site-b", "site-c"] {
        let peer = st["peers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == p)
            .unwrap();
        assert_eq!(peer["auth"], "pubkey", "{st:#}");
        assert_eq!(
            peer["certificate"]["subject"],
            format!("O=L2S Test, CN={p}"),
            "{st:#}"
        );
    }
    assert!(st["ipsec"]["certificate"]["days_left"].as_i64().unwrap() >= 363);
    // VNFs use the access MTU, as their access network's DHCP tells them.
    s.sh(&format!(
        "for n in a101 a102 b101 b102 c101; do ip -n $n link set eth0 mtu {ACCESS_MTU}; done"
    ));
    s.service("first traffic");
    // Transport-mode ESP with the kernel, and the SA counters grow with the traffic.
    let states = s.sh("ip -s xfrm state | grep -E '^src|mode|bytes'");
    assert!(
        states.contains("mode transport") && !states.contains("mode tunnel"),
        "{states}"
    );
    // A don't-fragment ping of exactly the access MTU passes; one byte more is refused at
    // the sender, before any encapsulation.
    let payload = ACCESS_MTU - 28;
    assert!(
        s.ok(&format!(
            "ip netns exec a101 ping -M do -s {payload} -c 3 -W 2 10.101.0.2"
        )),
        "DF ping of {ACCESS_MTU} bytes"
    );
    let big =
        s.g.run(&format!(
            "ip netns exec a101 ping -M do -s {} -c 1 -W 2 10.101.0.2",
            payload + 1
        ))
        .unwrap();
    assert!(
        !big.status.success(),
        "a DF ping of {} bytes passed",
        ACCESS_MTU + 1
    );
    assert!(
        String::from_utf8_lossy(&big.stdout).contains("+1 errors")
            || String::from_utf8_lossy(&big.stderr).contains("too long"),
        "the sender must refuse it: {}",
        String::from_utf8_lossy(&big.stdout)
    );
    let esp = s.capture_clean("first traffic");
    assert!(esp > 100, "the traffic must be ESP: {esp} packets");

    // 3. A charon that loads bypass-lan (Debian ships it with load = no; upstream and other
    // distributions load it): it exempts the underlay subnet, and our policies still win.
    s.sh("printf 'bypass-lan {\\n  load = yes\\n}\\n' > /etc/strongswan.d/charon/zz-test-bypass-lan.conf");
    s.event(
        "charon restarted with bypass-lan loaded",
        "systemctl restart strongswan",
    );
    assert!(
        s.ok("journalctl -u strongswan --no-pager | grep 'loaded plugins' | tail -1 | grep -q bypass-lan"),
        "charon did not load bypass-lan"
    );
    let policies = s.sh("ip xfrm policy");
    assert!(
        policies.contains("src 198.51.100.0/24 dst 198.51.100.0/24"),
        "bypass-lan installed no pass policy for the underlay:\n{policies}"
    );
    s.sh("rm /etc/strongswan.d/charon/zz-test-bypass-lan.conf");

    // 4. Rekeys forced under traffic.
    let sas = s.sh("swanctl --list-sas --ike l2s-vnf:l2s0:site-b 2>/dev/null");
    let child = sas
        .split_whitespace()
        .find(|w| w.starts_with("vxlan-"))
        .and_then(|w| w.split(':').next())
        .unwrap()
        .to_string();
    s.event(
        "CHILD_SA rekeyed",
        &format!("swanctl --rekey --child {child} --ike l2s-vnf:l2s0:site-b 2>/dev/null"),
    );
    s.event(
        "IKE_SA rekeyed",
        "swanctl --rekey --ike l2s-vnf:l2s0:site-b 2>/dev/null",
    );

    // 5. systemd: restart is a no-op, reload applies a new VLAN, stop leaves the data plane.
    s.event("systemctl restart l2s-vnf", "systemctl restart l2s-vnf");
    let st = s.status("site-a");
    assert_eq!(st["daemon"]["last_reconcile"]["trigger"], "start", "{st:#}");
    assert_eq!(
        st["daemon"]["last_reconcile"]["changes"],
        serde_json::json!([]),
        "the restart was not a no-op"
    );
    // A VNF on a new access interface at A and at B.
    plug_vlan103(&s);
    let vlan103 =
        |peer: &str| format!("\n[[vlan]]\nid = 103\nports = [\"ens7\"]\npeers = [\"{peer}\"]\n");
    s.sh(&format!(
        "printf '{}' >> /etc/l2s-vnf/site.toml && printf '{}' >> /etc/l2s-lab/site-b/site.toml",
        vlan103("site-b").replace('\n', "\\n"),
        vlan103("site-a").replace('\n', "\\n")
    ));
    s.event(
        "systemctl reload l2s-vnf with VLAN 103 added",
        "systemctl reload l2s-vnf && ip netns exec site-b l2s-vnf -c /etc/l2s-lab/site-b/site.toml reload",
    );
    let out =
        s.g.run("/root/lab/service.sh a103 b103 10.103.0.2")
            .unwrap();
    assert!(out.status.success(), "VLAN 103 after the reload: {:?}", out);
    s.sh("systemctl stop l2s-vnf");
    assert!(
        s.ok("nft list table inet l2s_vnf_l2s0 >/dev/null"),
        "the guard went with the daemon"
    );
    s.service("with l2s-vnf stopped");
    s.capture_clean("with l2s-vnf stopped");

    // 5b. The guard's second layer alone: l2s-vnf stopped, every nftables rule flushed and
    // charon stopped (its per-peer policies gone with it) at site A. Only the xfrm block
    // policies are left, and they keep VXLAN off the underlay in both directions.
    let blocks = s.sh("ip xfrm policy list priority 4993619 action block | grep -c '^src'");
    assert_eq!(blocks.trim(), "8", "xfrm block policies at site A");
    let xfrm_stat = |name: &str| -> u64 {
        s.sh(&format!(
            "awk '$1 == \"{name}\" {{ print $2 }}' /proc/net/xfrm_stat"
        ))
        .trim()
        .parse()
        .unwrap()
    };
    s.sh("nft flush ruleset && systemctl stop strongswan");
    assert!(
        !s.ok("ip xfrm policy list | grep -q 'priority 1000 '"),
        "charon's per-peer policies outlived charon"
    );
    let (out0, in0) = (xfrm_stat("XfrmOutPolBlock"), xfrm_stat("XfrmInPolBlock"));
    assert!(
        !s.ok("ip netns exec a101 ping -c 3 -W 1 10.101.0.2 >/dev/null"),
        "a VNF at A reached B with charon and the nftables guard gone"
    );
    let heard = s
        .g
        .run("ip netns exec a101 /root/lab/listen.py 9997 4 & sleep 1; ip netns exec rogue /root/lab/forge-vxlan.py 198.51.100.1 9997; wait $!")
        .unwrap();
    assert!(
        !heard.status.success(),
        "a forged clear-text VXLAN frame reached a VNF at A with only the xfrm layer left"
    );
    let (out1, in1) = (xfrm_stat("XfrmOutPolBlock"), xfrm_stat("XfrmInPolBlock"));
    eprintln!(
        "guest: xfrm layer alone (daemon, nftables and charon gone at A): {} VXLAN datagrams out and {} forged in stopped by the block policies",
        out1 - out0,
        in1 - in0
    );
    assert!(out1 > out0, "the block policies stopped nothing going out");
    assert!(
        in1 >= in0 + 5,
        "the block policies stopped {} of 5 forged frames",
        in1 - in0
    );
    s.capture_clean("with only the xfrm layer left");
    // Negative control: the inbound blocks deleted by hand, the same forged frames arrive.
    // The outbound ones stay: with charon, nftables and the daemon gone, they are all that
    // keeps A's own VTEPs (a VNF's chatter) from sending clear text meanwhile (deleting them
    // too once leaked 6 datagrams into the capture, found by a full run).
    s.sh("for p in 4789 4790; do ip xfrm policy delete src 0.0.0.0/0 dst 0.0.0.0/0 proto udp dport $p dir in; ip xfrm policy delete src ::/0 dst ::/0 proto udp dport $p dir in; done");
    let heard = s
        .g
        .run("ip netns exec a101 /root/lab/listen.py 9997 4 & sleep 1; ip netns exec rogue /root/lab/forge-vxlan.py 198.51.100.1 9997; wait $!")
        .unwrap();
    assert!(
        heard.status.success(),
        "control: without the block policies (and nothing else) a forged frame must arrive"
    );
    s.sh("systemctl start strongswan");
    s.event("systemctl start l2s-vnf", "systemctl start l2s-vnf");
    assert!(
        s.ok("nft list table inet l2s_vnf_l2s0 >/dev/null"),
        "the guard table is back with the daemon"
    );

    // 6. Forged clear-text VXLAN from a rogue underlay host never reaches a VNF.
    let heard = s.g.run(
        "ip netns exec b101 /root/lab/listen.py 9998 6 & sleep 1; ip netns exec rogue /root/lab/forge-vxlan.py 198.51.100.2 9998; wait $!",
    ).unwrap();
    assert!(
        !heard.status.success(),
        "a forged clear-text VXLAN frame reached a VNF"
    );
    let guard_b = s.sh("ip netns exec site-b nft list table inet l2s_vnf_l2s0");
    assert!(
        guard_b
            .lines()
            .any(|l| l.contains("meta ipsec missing") && !l.contains("packets 0 ")),
        "site B's guard counted no drops:\n{guard_b}"
    );

    // 7. Each drift kind at site A on the kernel datapath: repaired, and the VLANs carry
    // traffic again.
    let quick = Duration::from_secs(30);
    let periodic = Duration::from_secs(60);
    s.drift(
        "VXLAN device deleted",
        "ip link del l2s-vx101",
        "[ $(bridge fdb show dev l2s-vx101 | grep -c 'dst 198.51.100') = 2 ] && ovs-vsctl list-ports l2s0 | grep -qx l2s-vx101",
        quick,
    );
    s.drift(
        "flood entry deleted",
        "bridge fdb del 00:00:00:00:00:00 dev l2s-vx101 dst 198.51.100.3",
        "bridge fdb show dev l2s-vx101 | grep -q 'dst 198.51.100.3'",
        quick,
    );
    s.drift(
        "VTEP MTU changed",
        "ip link set l2s-vx101 mtu 1280",
        &format!("[ $(cat /sys/class/net/l2s-vx101/mtu) = {ACCESS_MTU} ]"),
        quick,
    );
    s.drift(
        "access port deleted from the bridge",
        "ovs-vsctl del-port l2s0 ens5",
        "[ $(ovs-vsctl get port ens5 tag) = 101 ]",
        quick,
    );
    s.drift(
        "access port retagged",
        "ovs-vsctl set port ens6 tag=999",
        "[ $(ovs-vsctl get port ens6 tag) = 102 ]",
        quick,
    );
    s.drift(
        "bridge deleted",
        "ovs-vsctl del-br l2s0",
        "ovs-vsctl list-ports l2s0 | grep -qx l2s-vx102",
        quick,
    );
    s.drift(
        "guard table deleted",
        "nft delete table inet l2s_vnf_l2s0",
        "nft list table inet l2s_vnf_l2s0 >/dev/null",
        quick,
    );
    s.drift(
        "nftables restarted (Debian's nftables.conf flushes the whole ruleset)",
        "systemctl restart nftables",
        "nft list table inet l2s_vnf_l2s0 >/dev/null",
        quick,
    );
    s.drift(
        "SA deleted in charon",
        "swanctl --terminate --ike l2s-vnf:l2s0:site-c --force 2>/dev/null",
        "swanctl --list-sas --ike l2s-vnf:l2s0:site-c 2>/dev/null | grep -q INSTALLED",
        quick,
    );
    s.drift(
        "connections unloaded by systemctl reload strongswan (swanctl --load-all)",
        "systemctl reload strongswan",
        "[ $(swanctl --list-conns 2>/dev/null | grep -c '^l2s-vnf:') = 2 ]",
        periodic,
    );
    s.drift(
        "access interface re-created (VNF re-plugged)",
        &format!(
            "ip link del ens5; sleep 1; ip link add ens5 type veth peer name eth0 netns a101; ip link set ens5 up; \
             ip -n a101 addr add 10.101.0.1/24 dev eth0; ip -n a101 link set eth0 mtu {ACCESS_MTU} up"
        ),
        &format!("[ $(cat /sys/class/net/ens5/mtu) = {ACCESS_MTU} ] && [ $(ovs-vsctl get port ens5 tag) = 101 ]"),
        quick,
    );
    s.event(
        "Open vSwitch restarted",
        "systemctl restart openvswitch-switch",
    );

    // 8. Running it like a switch, on the kernel datapath: the MAC table, path health inside
    // the SAs, counters, and storm control by reload (OpenFlow meters in the kernel datapath).
    s.service("before the switch checks");
    let mac = |ns: &str| {
        s.sh(&format!(
            "ip netns exec {ns} cat /sys/class/net/eth0/address"
        ))
        .trim()
        .to_string()
    };
    let (a_mac, b_mac) = (mac("a101"), mac("b101"));
    let macs: serde_json::Value =
        serde_json::from_str(&s.sh("l2s-vnf macs --vlan 101 --json")).unwrap();
    let at = |m: &str| {
        macs["macs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["mac"] == m)
            .cloned()
            .unwrap_or_else(|| panic!("{m} not in the MAC table: {macs:#}"))
    };
    assert!(at(&a_mac)["port"].is_string(), "{macs:#}");
    assert_eq!(at(&b_mac)["peer"], "site-b", "{macs:#}");
    let probe: serde_json::Value =
        serde_json::from_str(&s.sh("l2s-vnf probe --secs 2 --json")).unwrap();
    let paths = probe["paths"].as_object().map(|o| o.len()).unwrap_or(0);
    assert!(paths >= 2, "probe: {probe:#}");
    for (peer, h) in probe["paths"].as_object().unwrap() {
        assert_eq!(h["mtu_ok"], true, "{peer}: {h:#}");
        // As in the namespace lab: a healthy path loses nothing.
        assert_eq!(h["loss_pct"].as_f64(), Some(0.0), "{peer}: {h:#}");
    }
    let vlan101 = |st: &serde_json::Value| {
        st["vlans"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["id"] == 101)
            .cloned()
            .unwrap()
    };
    // The access ports' counters count what the VNFs send: 20 pings from a101 add at least 20.
    let rx_packets = |st: &serde_json::Value| {
        vlan101(st)["counters"]["rx_packets"]
            .as_u64()
            .unwrap_or_else(|| panic!("no rx_packets counter: {st:#}"))
    };
    let before = rx_packets(&s.status("site-a"));
    s.sh("ip netns exec a101 ping -c 20 -i 0.2 -W 2 10.101.0.2 >/dev/null");
    let after = rx_packets(&s.status("site-a"));
    assert!(
        after >= before + 20,
        "VLAN 101's rx_packets went from {before} to {after} across 20 pings"
    );
    s.sh("sed -i 's/^\\[ipsec\\]$/[switch]\\nbum_limit_pps = 200\\n\\n[ipsec]/' /etc/l2s-vnf/site.toml && systemctl reload l2s-vnf");
    let meters = s.sh("ovs-ofctl -O OpenFlow13 dump-meters l2s0");
    assert!(
        meters.contains("rate=200"),
        "no meter after the reload: {meters}"
    );
    let rx = || -> u64 {
        s.sh("ip netns exec b101 cat /sys/class/net/eth0/statistics/rx_packets")
            .trim()
            .parse()
            .unwrap()
    };
    let rx0 = rx();
    let t = Instant::now();
    s.sh("ip netns exec a101 /root/lab/storm.py 5 eth0");
    let rate = (rx() - rx0) as f64 / t.elapsed().as_secs_f64();
    let limited = vlan101(&s.status("site-a"))["counters"]["bum_limited"]
        .as_u64()
        .unwrap();
    eprintln!(
        "guest: a broadcast storm at site A, limited to 200 pps per port: site B received {rate:.0} frames/s, {limited} dropped by the meter"
    );
    assert!(limited > 0, "the meter dropped nothing");
    assert!(rate < 300.0, "site B received {rate:.0} frames/s");
    s.event(
        "storm control removed by reload",
        "sed -i '/^bum_limit_pps = 200$/d' /etc/l2s-vnf/site.toml && systemctl reload l2s-vnf",
    );
    assert!(
        !s.sh("ovs-ofctl -O OpenFlow13 dump-meters l2s0")
            .contains("meter="),
        "the meter stayed"
    );

    // 9. A real reboot of site A's VM with the packaged unit: after the first boot, systemd
    //    starts l2s-vnf after nftables, Open vSwitch and charon, and it brings the site back
    //    (the peers' L2S VMs, namespaces here, are started again as their own VMs would be).
    let esp = s.capture_clean("before the reboot");
    eprintln!("guest: {esp} ESP packets on the underlay before the reboot");
    let took = s.g.reboot().unwrap_or_else(|e| panic!("reboot: {e:#}"));
    eprintln!("guest: rebooted in {:.0} s", took.as_secs_f64());
    s.sh("mv /root/underlay.pcap /root/underlay-before-reboot.pcap 2>/dev/null || true");
    s.sh("systemd-run --quiet --unit=l2s-lab-capture --collect ip netns exec ul tcpdump -i ul0 -n -U -s 128 -w /root/underlay.pcap; sleep 2");
    // ssh answers before systemd has finished starting everything: the unit is judged once
    // it has left `activating` (Type=notify: READY after its first converge).
    s.g.wait_until(
        "l2s-vnf started at boot",
        Duration::from_secs(120),
        "test \"$(systemctl show -P ActiveState l2s-vnf)\" != activating",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let unit = s.sh("systemctl show -p ActiveState,SubState,NRestarts l2s-vnf");
    assert!(
        unit.contains("ActiveState=active")
            && unit.contains("SubState=running")
            && unit.contains("NRestarts=0"),
        "after the reboot: {unit}"
    );
    let mono = |unit: &str, prop: &str| -> u64 {
        s.sh(&format!("systemctl show -P {prop} {unit}"))
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("{unit} {prop}: {e}"))
    };
    let started = mono("l2s-vnf", "InactiveExitTimestampMonotonic");
    assert!(started > 0, "l2s-vnf did not start at boot");
    for dep in ["nftables", "ovs-vswitchd", "strongswan"] {
        let up = mono(dep, "ActiveEnterTimestampMonotonic");
        assert!(
            up <= started,
            "after the reboot l2s-vnf started at {started} us, before {dep} was up ({up} us)"
        );
    }
    for site in ["site-b", "site-c"] {
        s.sh(&format!("/root/lab/start-site.sh {site}"));
    }
    // The VNFs came back with the machine too (VLAN 103's are plugged again), and their
    // access network tells them the MTU again.
    plug_vlan103(&s);
    s.sh(&format!(
        "for n in a101 a102 b101 b102 c101; do ip -n $n link set eth0 mtu {ACCESS_MTU}; done"
    ));
    s.event("site A's VM rebooted", "true");

    // 10. The capture over the whole scenario, and every SA counts the bytes sent through it
    //     (not clear text): a transfer to each peer, and its SA's counters at A grow by at
    //     least what the receiver got.
    let esp = s.capture_clean("the whole scenario");
    eprintln!("guest: {esp} ESP packets on the underlay since the reboot, no clear-text VXLAN, no fragments");
    for (to, ip, peer) in [
        ("b101", "10.101.0.2", "site-b"),
        ("c101", "10.101.0.3", "site-c"),
    ] {
        let sa = || guest::sa_bytes(&s.status("site-a"), peer).unwrap();
        let before = sa();
        let out = s.sh(&format!("/root/lab/tcp.sh a101 {to} {ip} 1M"));
        let got: u64 = out
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("tcp.sh: {e}: {out}"));
        assert!(got > 0, "A -> {peer}: the transfer delivered nothing");
        let grew = sa() - before;
        assert!(
            grew >= got,
            "A's SA with {peer} counted {grew} bytes for {got} bytes received (clear text?)"
        );
        eprintln!("guest: A -> {peer}: {got} bytes received, the SA counted {grew}");
    }

    // 11. down, then purge: nothing of ours is left.
    s.sh("systemctl stop l2s-vnf");
    let down = s.sh("l2s-vnf down");
    assert!(
        down.contains("- bridge l2s0") && down.contains("- guard"),
        "{down}"
    );
    s.sh("DEBIAN_FRONTEND=noninteractive apt-get purge -y -q l2s-vnf >/dev/null");
    assert!(!s.ok("ovs-vsctl br-exists l2s0"), "bridge left behind");
    assert_eq!(
        s.sh("ip -o link show | grep -c l2s-vx || true").trim(),
        "0",
        "VXLAN devices left"
    );
    assert!(
        !s.ok("nft list table inet l2s_vnf_l2s0 >/dev/null 2>&1"),
        "guard left"
    );
    assert_eq!(
        s.sh("ip xfrm policy list action block | grep -c '^src' || true")
            .trim(),
        "0",
        "the guard's xfrm block policies left"
    );
    assert_eq!(
        s.sh("swanctl --list-conns 2>/dev/null | grep -c '^l2s-vnf:' || true")
            .trim(),
        "0",
        "connections left in charon"
    );
    assert_eq!(
        s.sh("ip xfrm policy | grep -c 'priority 1000' || true")
            .trim(),
        "0",
        "IPsec policies left"
    );
    assert!(
        !s.ok("test -e /etc/l2s-vnf/psk || test -e /usr/sbin/l2s-vnf"),
        "package files left"
    );
    eprintln!(
        "guest: scenario done in {:.0} s",
        t0.elapsed().as_secs_f64()
    );
}
