//! ovs-vswitchd's control socket (what `ovs-appctl` talks to): one JSON-RPC request, one
//! reply. l2s-vnf asks it for the bridge's MAC learning table (`fdb/show`), which OVSDB does
//! not hold.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use super::client::OvsdbError;
use super::vswitchd;

const TIMEOUT: Duration = Duration::from_secs(10);

/// The control socket of the ovs-vswitchd serving the OVSDB at `db_socket`: beside it,
/// `ovs-vswitchd.<pid>.ctl` (OVS's run directory).
pub fn socket(db_socket: &Path) -> Result<PathBuf, OvsdbError> {
    let pid = vswitchd::find(db_socket).ok_or_else(|| {
        OvsdbError::Protocol(format!(
            "no ovs-vswitchd found for {} (is it running?)",
            db_socket.display()
        ))
    })?;
    let dir = db_socket.parent().unwrap_or(Path::new("/run/openvswitch"));
    Ok(dir.join(format!("ovs-vswitchd.{pid}.ctl")))
}

/// Run one command (`fdb/show l2s0`); its text output.
pub async fn call(socket: &Path, method: &str, params: &[&str]) -> Result<String, OvsdbError> {
    let exchange = async {
        let mut s = UnixStream::connect(socket)
            .await
            .map_err(|source| OvsdbError::Connect {
                path: socket.to_path_buf(),
                source,
            })?;
        let req = json!({"method": method, "params": params, "id": 0}).to_string();
        s.write_all(req.as_bytes())
            .await
            .map_err(|_| OvsdbError::Closed(socket.to_path_buf()))?;
        let mut buf = vec![];
        let mut chunk = [0u8; 16 * 1024];
        loop {
            let n = s
                .read(&mut chunk)
                .await
                .map_err(|_| OvsdbError::Closed(socket.to_path_buf()))?;
            if n == 0 {
                return Err(OvsdbError::Closed(socket.to_path_buf()));
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(v) = reply_of(&buf) {
                return Ok(v);
            }
            if buf.len() > MAX_REPLY {
                return Err(OvsdbError::Closed(socket.to_path_buf()));
            }
        }
    };
    let reply = tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| OvsdbError::Timeout(socket.to_path_buf(), TIMEOUT))??;
    match reply.get("error") {
        Some(e) if !e.is_null() => Err(OvsdbError::Rpc {
            method: method.to_string(),
            error: e
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| e.to_string()),
        }),
        _ => Ok(reply
            .get("result")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()),
    }
}

/// The largest unixctl reply read (`fdb/show` of a full MAC table is a few MB).
const MAX_REPLY: usize = 64 * 1024 * 1024;

/// The reply, once the bytes hold one whole JSON value.
fn reply_of(buf: &[u8]) -> Option<Value> {
    serde_json::from_slice::<Value>(buf).ok()
}

/// One row of `fdb/show`: OpenFlow port number, VLAN, MAC, age in seconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdbRow {
    pub ofport: i64,
    pub vlan: u16,
    pub mac: String,
    pub age_secs: u64,
}

/// Parse `fdb/show`: a heading, then ` port  VLAN  MAC  Age` rows (port may be `LOCAL`).
pub fn parse_fdb(text: &str) -> Vec<FdbRow> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let [port, vlan, mac, age, ..] = f.as_slice() else {
                return None;
            };
            Some(FdbRow {
                ofport: port.parse().ok()?,
                vlan: vlan.parse().ok()?,
                mac: mac.to_string(),
                age_secs: age.parse().unwrap_or(0),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdb_show_is_parsed() {
        let text = " port  VLAN  MAC                Age\n    2   101  02:00:00:00:00:01    3\n LOCAL     0  aa:bb:cc:dd:ee:ff    1\n    5   102  02:00:00:00:00:02    0\n";
        assert_eq!(
            parse_fdb(text),
            vec![
                FdbRow {
                    ofport: 2,
                    vlan: 101,
                    mac: "02:00:00:00:00:01".into(),
                    age_secs: 3
                },
                FdbRow {
                    ofport: 5,
                    vlan: 102,
                    mac: "02:00:00:00:00:02".into(),
                    age_secs: 0
                }
            ]
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(4096))]

            /// ovs-vswitchd's replies and `fdb/show` text, random: parsed or refused, no panic.
            #[test]
            fn replies_and_fdb_text_never_panic(
                bytes in proptest::collection::vec(any::<u8>(), 0..512),
                text in "(?s).{0,400}",
                row in "[ 0-9A-Za-z:]{0,60}",
            ) {
                let _ = reply_of(&bytes);
                let _ = parse_fdb(&text);
                let _ = parse_fdb(&format!(" port  VLAN  MAC                Age\n{row}\n"));
            }
        }
    }
}
