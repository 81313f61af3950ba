use std::time::Instant;
#[tokio::main(flavor = "current_thread")]
async fn main() {
    let nl = l2s_vnf::netlink::Netlink::connect().unwrap();
    for _ in 0..3 {
        let t = Instant::now();
        let l = nl.observe().await.unwrap();
        println!("netlink observe: {} links {:?}", l.links.len(), t.elapsed());
    }
    let t = Instant::now();
    let p = tokio::task::spawn_blocking(l2s_vnf::xfrm::dump)
        .await
        .unwrap()
        .unwrap();
    println!("xfrm {} {:?}", p.len(), t.elapsed());
    let t = Instant::now();
    let g = l2s_vnf::guard::observe("l2s_vnf_l2s0");
    println!("nft {:?} {:?}", g.is_some(), t.elapsed());
    if let Some(sock) = std::env::args().nth(1) {
        let c = l2s_vnf::ovsdb::Client::connect(std::path::Path::new(&sock))
            .await
            .unwrap();
        for _ in 0..3 {
            let t = Instant::now();
            let s = l2s_vnf::ovsdb::switch::observe(&c, "l2s0").await.unwrap();
            println!(
                "ovsdb observe: {} ports {:?}",
                s.bridge.map(|b| b.ports.len()).unwrap_or(0),
                t.elapsed()
            );
        }
    }
}
