//! A thin asynchronous OVSDB (RFC 7047) JSON-RPC client over a unix socket: `transact`,
//! `monitor`/`monitor_cancel`, `echo`, and answers to the server's own `echo` requests.
//!
//! Messages are concatenated JSON values on the stream (no delimiter); a reader task splits
//! them with serde_json's streaming deserializer and routes replies by id, `update`
//! notifications by monitor id.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

pub const DATABASE: &str = "Open_vSwitch";
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum OvsdbError {
    #[error("cannot connect to OVSDB at {path}: {source} (is ovsdb-server running, and is [switch].ovsdb right?)")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("OVSDB connection to {0} closed")]
    Closed(PathBuf),
    #[error("OVSDB at {0} did not answer within {1:?}")]
    Timeout(PathBuf, Duration),
    #[error("OVSDB {method} failed: {error}")]
    Rpc { method: String, error: String },
    #[error("OVSDB transaction failed at operation {index} ({op}): {error}{details}")]
    Operation {
        index: usize,
        op: String,
        error: String,
        details: String,
    },
    #[error("unexpected OVSDB reply: {0}")]
    Protocol(String),
    /// A committed transaction that ovs-vswitchd did not apply, and whether its revert
    /// committed.
    #[error("{cause}; {}", match .reverted {
        Ok(()) => "the OVSDB transaction was reverted".to_string(),
        Err(e) => format!("reverting the OVSDB transaction FAILED ({e}): OVSDB holds the change, and the next apply converges it"),
    })]
    NotApplied {
        cause: String,
        reverted: Result<(), String>,
    },
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Value, OvsdbError>>>>>;
type Monitors = Arc<Mutex<HashMap<String, mpsc::UnboundedSender<Value>>>>;

/// A connected OVSDB client. Cheap to share by reference; dropped → connection closed.
pub struct Client {
    path: PathBuf,
    out: mpsc::UnboundedSender<Vec<u8>>,
    pending: Pending,
    monitors: Monitors,
    next_id: AtomicU64,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Client {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock only means another task panicked mid-update of a plain map; go on.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Client {
    pub async fn connect(path: &Path) -> Result<Self, OvsdbError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| OvsdbError::Connect {
                path: path.to_path_buf(),
                source,
            })?;
        let (mut rd, mut wr) = stream.into_split();
        let (out, mut out_rx) = mpsc::unbounded_channel::<Vec<u8>>();
        let pending: Pending = Arc::default();
        let monitors: Monitors = Arc::default();

        let writer = tokio::spawn(async move {
            while let Some(buf) = out_rx.recv().await {
                if wr.write_all(&buf).await.is_err() {
                    break;
                }
            }
        });
        let (p2, m2, out2, path2) = (
            pending.clone(),
            monitors.clone(),
            out.clone(),
            path.to_path_buf(),
        );
        let reader = tokio::spawn(async move {
            let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
            let mut chunk = vec![0u8; 64 * 1024];
            let mut framer = Framer::default();
            'read: loop {
                let n = match rd.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                buf.extend_from_slice(&chunk[..n]);
                if buf.len() > MAX_MESSAGE {
                    warn!(path = %path2.display(), "OVSDB sent a message over {MAX_MESSAGE} bytes; closing the connection");
                    break;
                }
                // Parse only what the framer saw complete: a large reply arrives in many
                // chunks, and re-parsing it from its start at each one costs quadratic time.
                let mut consumed = 0;
                for end in framer.feed(&buf) {
                    match serde_json::from_slice::<Value>(&buf[consumed..end]) {
                        Ok(msg) => dispatch(msg, &p2, &m2, &out2),
                        Err(_) => break 'read,
                    }
                    consumed = end;
                }
                buf.drain(..consumed);
                framer.consumed(consumed);
            }
            // Connection gone: fail every waiter, end every monitor stream.
            for (_, tx) in lock(&p2).drain() {
                let _ = tx.send(Err(OvsdbError::Closed(path2.clone())));
            }
            lock(&m2).clear();
        });
        Ok(Client {
            path: path.to_path_buf(),
            out,
            pending,
            monitors,
            next_id: AtomicU64::new(1),
            tasks: vec![writer, reader],
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// One JSON-RPC call; returns `result` or the server's `error`.
    pub async fn call(&self, method: &str, params: Value) -> Result<Value, OvsdbError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(id, tx);
        let msg = json!({"method": method, "params": params, "id": id});
        if self.out.send(msg.to_string().into_bytes()).is_err() {
            lock(&self.pending).remove(&id);
            return Err(OvsdbError::Closed(self.path.clone()));
        }
        let res = match tokio::time::timeout(CALL_TIMEOUT, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(OvsdbError::Closed(self.path.clone())),
            Err(_) => {
                lock(&self.pending).remove(&id);
                Err(OvsdbError::Timeout(self.path.clone(), CALL_TIMEOUT))
            }
        };
        res.map_err(|e| match e {
            OvsdbError::Rpc { error, .. } => OvsdbError::Rpc {
                method: method.to_string(),
                error,
            },
            other => other,
        })
    }

    pub async fn echo(&self) -> Result<(), OvsdbError> {
        let r = self.call("echo", json!(["l2s-vnf"])).await?;
        if r == json!(["l2s-vnf"]) {
            Ok(())
        } else {
            Err(OvsdbError::Protocol(format!("echo returned {r}")))
        }
    }

    /// Run a transaction; every element of the reply is checked for `error`.
    pub async fn transact(&self, ops: Vec<Value>) -> Result<Vec<Value>, OvsdbError> {
        // The operations' names are all an error needs; the operations themselves (thousands
        // at the whole VLAN space) move into the request without a copy.
        let names: Vec<String> = ops
            .iter()
            .map(|o| {
                o.get("op")
                    .and_then(Value::as_str)
                    .unwrap_or("?")
                    .to_string()
            })
            .collect();
        let mut params = Vec::with_capacity(ops.len() + 1);
        params.push(json!(DATABASE));
        params.extend(ops);
        let r = self.call("transact", Value::Array(params)).await?;
        let Value::Array(results) = r else {
            return Err(OvsdbError::Protocol(format!("transact returned {r}")));
        };
        check_transact_results(&names, &results)?;
        Ok(results)
    }

    /// Start a monitor; returns the initial contents and a stream of `update` notifications.
    pub async fn monitor(
        &self,
        monitor_id: &str,
        requests: Value,
    ) -> Result<(Value, mpsc::UnboundedReceiver<Value>), OvsdbError> {
        let (tx, rx) = mpsc::unbounded_channel();
        lock(&self.monitors).insert(monitor_id.to_string(), tx);
        match self
            .call("monitor", json!([DATABASE, monitor_id, requests]))
            .await
        {
            Ok(initial) => Ok((initial, rx)),
            Err(e) => {
                lock(&self.monitors).remove(monitor_id);
                Err(e)
            }
        }
    }

    pub async fn monitor_cancel(&self, monitor_id: &str) -> Result<(), OvsdbError> {
        lock(&self.monitors).remove(monitor_id);
        self.call("monitor_cancel", json!([monitor_id]))
            .await
            .map(|_| ())
    }
}

/// The largest message read from OVSDB (a monitor reply of 4094 VLANs is tens of MB): more
/// is a broken or hostile peer, and the connection is closed instead of growing without end.
const MAX_MESSAGE: usize = 256 * 1024 * 1024;

/// Finds where each top-level JSON value ends in a byte stream, looking at every byte once
/// (strings and escapes respected), so a message is parsed only once it is complete.
#[derive(Debug, Default)]
struct Framer {
    /// Bytes of the buffer already looked at.
    scanned: usize,
    depth: usize,
    in_string: bool,
    escaped: bool,
}

impl Framer {
    /// Scan `buf` from where the last call stopped; returns the end offsets of the values
    /// completed in it.
    fn feed(&mut self, buf: &[u8]) -> Vec<usize> {
        let mut ends = vec![];
        for (i, &b) in buf.iter().enumerate().skip(self.scanned) {
            if self.in_string {
                match b {
                    _ if self.escaped => self.escaped = false,
                    b'\\' => self.escaped = true,
                    b'"' => self.in_string = false,
                    _ => {}
                }
                continue;
            }
            match b {
                b'"' => self.in_string = true,
                b'{' | b'[' => self.depth += 1,
                b'}' | b']' => {
                    self.depth = self.depth.saturating_sub(1);
                    if self.depth == 0 {
                        ends.push(i + 1);
                    }
                }
                _ => {}
            }
        }
        self.scanned = buf.len();
        ends
    }

    /// The first `n` bytes of the buffer were removed.
    fn consumed(&mut self, n: usize) {
        self.scanned -= n;
    }
}

fn dispatch(
    msg: Value,
    pending: &Pending,
    monitors: &Monitors,
    out: &mpsc::UnboundedSender<Vec<u8>>,
) {
    let method = msg.get("method").and_then(Value::as_str);
    match method {
        Some("echo") => {
            let reply = json!({"result": msg.get("params").cloned().unwrap_or(json!([])), "error": null, "id": msg.get("id").cloned().unwrap_or(Value::Null)});
            let _ = out.send(reply.to_string().into_bytes());
        }
        Some("update") => {
            let params = msg.get("params").and_then(Value::as_array);
            if let Some([id, updates]) = params.map(Vec::as_slice) {
                let key = match id {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                if let Some(tx) = lock(monitors).get(&key) {
                    let _ = tx.send(updates.clone());
                }
            }
        }
        Some(_) => {}
        None => {
            let Some(id) = msg.get("id").and_then(Value::as_u64) else {
                return;
            };
            let Some(tx) = lock(pending).remove(&id) else {
                return;
            };
            let res = match msg.get("error") {
                Some(e) if !e.is_null() => Err(OvsdbError::Rpc {
                    method: String::new(),
                    error: e.to_string(),
                }),
                _ => Ok(msg.get("result").cloned().unwrap_or(Value::Null)),
            };
            let _ = tx.send(res);
        }
    }
}

/// RFC 7047 §4.1.3: a failed operation has an `error` member; the reply may also carry one
/// extra element with the commit error.
pub fn check_transact_results(ops: &[String], results: &[Value]) -> Result<(), OvsdbError> {
    for (index, r) in results.iter().enumerate() {
        if let Some(err) = r.get("error").filter(|e| !e.is_null()) {
            let op = ops
                .get(index)
                .cloned()
                .unwrap_or_else(|| "commit".to_string());
            let details = r
                .get("details")
                .and_then(Value::as_str)
                .map(|d| format!(": {d}"))
                .unwrap_or_default();
            return Err(OvsdbError::Operation {
                index,
                op,
                error: err
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| err.to_string()),
                details,
            });
        }
    }
    if results.len() < ops.len() {
        return Err(OvsdbError::Protocol(format!(
            "transaction of {} operations returned {} results",
            ops.len(),
            results.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The end offsets the framer finds in `bytes` fed in pieces cut at `cuts`, dropping what
    /// was framed as the reader does.
    fn ends_in_pieces(bytes: &[u8], cuts: &[usize]) -> Vec<usize> {
        let mut f = Framer::default();
        let (mut buf, mut ends, mut base, mut fed) = (vec![], vec![], 0, 0);
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        points.push(bytes.len());
        points.sort_unstable();
        for p in points {
            buf.extend_from_slice(&bytes[fed..p.max(fed)]);
            fed = fed.max(p);
            for e in f.feed(&buf) {
                ends.push(base + e);
            }
            if let Some(&last) = ends.last() {
                let cut = last - base;
                if cut > 0 {
                    buf.drain(..cut);
                    f.consumed(cut);
                    base = last;
                }
            }
        }
        ends
    }

    #[test]
    fn the_framer_finds_whole_values_across_chunks() {
        let text = br#"{"id":1,"result":[{"a":"}\"{"}]}{"method":"echo","params":[]}"#;
        let cuts: Vec<usize> = (5..text.len()).step_by(5).collect();
        let ends = ends_in_pieces(text, &cuts);
        assert_eq!(ends.len(), 2, "{ends:?}");
        let one: Value = serde_json::from_slice(&text[..ends[0]]).unwrap();
        assert_eq!(one["result"][0]["a"], "}\"{");
        let two: Value = serde_json::from_slice(&text[ends[0]..ends[1]]).unwrap();
        assert_eq!(two["method"], "echo");
    }

    #[test]
    fn every_result_is_checked() {
        let ops = vec!["insert".to_string(), "mutate".to_string()];
        assert!(check_transact_results(
            &ops,
            &[json!({"uuid": ["uuid", "x"]}), json!({"count": 1})]
        )
        .is_ok());
        let e = check_transact_results(
            &ops,
            &[
                json!({}),
                json!({"error": "constraint violation", "details": "bad tag"}),
            ],
        );
        assert!(
            matches!(e, Err(OvsdbError::Operation { index: 1, .. })),
            "{e:?}"
        );
        // commit error in the extra element
        let e = check_transact_results(
            &ops,
            &[
                json!({}),
                json!({}),
                json!({"error": "referential integrity violation"}),
            ],
        );
        assert!(
            matches!(e, Err(OvsdbError::Operation { index: 2, .. })),
            "{e:?}"
        );
        assert!(check_transact_results(&ops, &[json!({})]).is_err());
    }

    #[tokio::test]
    async fn talks_json_rpc_over_a_socket() {
        // A scripted server: answers echo, one transact with an error, then sends an echo request.
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("db.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap_or_else(|e| panic!("{e}"));
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap_or_else(|e| panic!("{e}"));
            let mut buf = vec![0u8; 4096];
            let mut seen = Vec::new();
            for _ in 0..3 {
                let n = s.read(&mut buf).await.unwrap_or(0);
                let v: Value = serde_json::from_slice(&buf[..n]).unwrap_or(Value::Null);
                seen.push(v.clone());
                let id = v["id"].clone();
                let reply = match v["method"].as_str() {
                    Some("echo") => json!({"id": id, "result": v["params"], "error": null}),
                    Some("transact") => {
                        json!({"id": id, "result": [{"error": "constraint violation", "details": "no"}], "error": null})
                    }
                    _ => json!({"id": id, "result": null, "error": "unknown"}),
                };
                // Split the reply in two writes to exercise the stream framing.
                let bytes = reply.to_string().into_bytes();
                let (a, b) = bytes.split_at(bytes.len() / 2);
                let _ = s.write_all(a).await;
                tokio::time::sleep(Duration::from_millis(5)).await;
                let _ = s.write_all(b).await;
            }
            seen
        });
        let c = Client::connect(&path)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        c.echo().await.unwrap_or_else(|e| panic!("{e}"));
        let e = c
            .transact(vec![json!({"op": "insert", "table": "Bridge", "row": {}})])
            .await;
        assert!(matches!(e, Err(OvsdbError::Operation { .. })), "{e:?}");
        let e = c.call("bogus", json!([])).await;
        assert!(matches!(e, Err(OvsdbError::Rpc { .. })), "{e:?}");
        let seen = server.await.unwrap_or_default();
        assert_eq!(seen[1]["params"][0], json!("Open_vSwitch"));
    }

    #[tokio::test]
    async fn missing_socket_is_a_clear_error() {
        let e = Client::connect(Path::new("/nonexistent/l2s/db.sock")).await;
        let msg = e.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            msg.contains("cannot connect to OVSDB at /nonexistent/l2s/db.sock"),
            "{msg}"
        );
    }

    /// OVSDB's byte stream cut anywhere: the framer never panics, and finds the same message
    /// ends whether the bytes come at once or in pieces.
    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(4096))]

            #[test]
            fn framing_never_panics_and_ignores_chunking(
                bytes in proptest::collection::vec(
                    prop_oneof![Just(b'{'), Just(b'}'), Just(b'['), Just(b']'), Just(b'"'), Just(b'\\'), any::<u8>()],
                    0..400,
                ),
                cuts in proptest::collection::vec(any::<usize>(), 0..8),
            ) {
                prop_assert_eq!(ends_in_pieces(&bytes, &cuts), ends_in_pieces(&bytes, &[]));
            }
        }
    }
}
