//! The daemon's control socket (`[daemon] control_socket`): a Unix stream socket, mode 0600,
//! only root or the daemon's own user may talk to it. One JSON request per connection, one
//! JSON reply, each on one line:
//!
//! ```text
//! → {"command":"status"}          ← {"ok":true,"status":{…}}
//! → {"command":"reload"}          ← {"ok":true,"reload":{"changes":[…],"duration_ms":…}}
//! → {"command":"probe","peer":"site-b","secs":2,"throughput":false}
//!                                 ← {"ok":true,"probe":{"site-b":{"rtt_ms":…,…}}}
//!                                 ← {"ok":false,"error":"…"}
//! ```

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use crate::status::Status;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "kebab-case")]
pub enum Request {
    Status,
    Reload,
    /// Probe the path to every peer (or one) now.
    Probe {
        #[serde(default)]
        peer: Option<String>,
        #[serde(default)]
        secs: u64,
        #[serde(default)]
        throughput: bool,
    },
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReloadOutcome {
    /// The changes the reload applied, as `plan` prints them (empty: nothing to do).
    pub changes: Vec<String>,
    pub duration_ms: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Box<Status>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reload: Option<ReloadOutcome>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<std::collections::BTreeMap<String, crate::status::probe::PathHealth>>,
}

impl Reply {
    pub fn error(e: impl Into<String>) -> Self {
        Reply {
            ok: false,
            error: Some(e.into()),
            ..Default::default()
        }
    }
}

/// A request handed to the daemon's loop, with the way back.
pub type Job = (Request, oneshot::Sender<Reply>);

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("no l2s-vnf daemon is running for this config (control socket {path}: {source})")]
    NotRunning {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("control socket {path}: {what}")]
    Io { path: PathBuf, what: String },
    #[error("cannot set up the control socket {path}: {source}")]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Bind the control socket (the caller holds the instance lock, so a file already there is
/// a leftover of a daemon that died) with mode 0600.
pub fn bind(path: &Path) -> Result<UnixListener, ControlError> {
    let err = |source| ControlError::Bind {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        super::lock::create_private_dir(dir).map_err(err)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => debug!(path = %path.display(), "removed a stale control socket"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    Ok(listener)
}

const MAX_REQUEST: u64 = 4096;
/// Clients served at once; one more is told the daemon is busy and let go.
pub const MAX_CLIENTS: usize = 16;
/// How long a client may take to send its request, or to take its reply.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

/// Accept clients until the daemon ends; each request goes to `jobs`.
pub async fn serve(listener: UnixListener, jobs: mpsc::Sender<Job>) {
    let me = nix::unistd::geteuid().as_raw();
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CLIENTS));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        match stream.peer_cred() {
            Ok(c) if c.uid() == 0 || c.uid() == me => {}
            Ok(c) => {
                warn!(
                    uid = c.uid(),
                    "control socket: refused a client that is not root"
                );
                continue;
            }
            Err(_) => continue,
        }
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            warn!("control socket: {MAX_CLIENTS} clients already; one more turned away");
            tokio::spawn(busy(stream));
            continue;
        };
        let jobs = jobs.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, jobs).await {
                debug!(error = %e, "control client");
            }
            drop(slot);
        });
    }
}

/// Tell a client over the cap so, without reading its request (bounded in time).
async fn busy(mut stream: UnixStream) {
    let reply = Reply::error(format!(
        "the daemon is busy: {MAX_CLIENTS} control clients already; try again"
    ));
    if let Ok(mut out) = serde_json::to_vec(&reply) {
        out.push(b'\n');
        let _ = tokio::time::timeout(CLIENT_TIMEOUT, stream.write_all(&out)).await;
    }
}

async fn handle(stream: UnixStream, jobs: mpsc::Sender<Job>) -> std::io::Result<()> {
    let (rd, mut wr) = stream.into_split();
    let mut line = String::new();
    let n = tokio::time::timeout(
        CLIENT_TIMEOUT,
        BufReader::new(rd.take(MAX_REQUEST)).read_line(&mut line),
    )
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no request"))??;
    let reply = match serde_json::from_str::<Request>(line.trim()) {
        _ if n == 0 => return Ok(()),
        Ok(req) => {
            let (tx, rx) = oneshot::channel();
            if jobs.send((req, tx)).await.is_err() {
                Reply::error("the daemon is shutting down")
            } else {
                rx.await
                    .unwrap_or_else(|_| Reply::error("the daemon dropped the request"))
            }
        }
        Err(e) => Reply::error(format!(
            "bad request ({e}); send {{\"command\":\"status\"}} or {{\"command\":\"reload\"}}"
        )),
    };
    let mut out = serde_json::to_vec(&reply).map_err(std::io::Error::other)?;
    out.push(b'\n');
    tokio::time::timeout(CLIENT_TIMEOUT, async {
        wr.write_all(&out).await?;
        wr.shutdown().await
    })
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "reply not taken"))?
}

/// Ask the daemon behind `path`. `timeout` covers the whole exchange.
pub async fn request(path: &Path, req: Request, timeout: Duration) -> Result<Reply, ControlError> {
    let io = |what: String| ControlError::Io {
        path: path.to_path_buf(),
        what,
    };
    let stream = UnixStream::connect(path)
        .await
        .map_err(|source| ControlError::NotRunning {
            path: path.to_path_buf(),
            source,
        })?;
    let exchange = async {
        let (rd, mut wr) = stream.into_split();
        let mut msg = serde_json::to_vec(&req).map_err(|e| io(e.to_string()))?;
        msg.push(b'\n');
        wr.write_all(&msg).await.map_err(|e| io(e.to_string()))?;
        let mut line = String::new();
        BufReader::new(rd)
            .read_line(&mut line)
            .await
            .map_err(|e| io(e.to_string()))?;
        serde_json::from_str::<Reply>(line.trim())
            .map_err(|e| io(format!("unreadable reply from the daemon: {e}")))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| io(format!("no reply within {} s", timeout.as_secs())))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_have_a_stable_wire_form() {
        assert_eq!(
            serde_json::to_string(&Request::Status).unwrap(),
            r#"{"command":"status"}"#
        );
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"command":"reload"}"#).unwrap(),
            Request::Reload
        );
        assert!(serde_json::from_str::<Request>(r#"{"command":"down"}"#).is_err());
    }

    #[tokio::test]
    async fn clients_over_the_cap_are_told_the_daemon_is_busy() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("control.sock");
        let (tx, mut rx) = mpsc::channel::<Job>(1);
        tokio::spawn(serve(bind(&path).unwrap(), tx));
        tokio::spawn(async move {
            while let Some((_, back)) = rx.recv().await {
                let _ = back.send(Reply {
                    ok: true,
                    ..Default::default()
                });
            }
        });
        // Clients that connect and say nothing hold every slot…
        let mut idle = vec![];
        for _ in 0..MAX_CLIENTS {
            idle.push(UnixStream::connect(&path).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let r = request(&path, Request::Status, Duration::from_secs(2))
            .await
            .unwrap();
        assert!(
            r.error.as_deref().is_some_and(|e| e.contains("busy")),
            "{r:?}"
        );
        // …until they go.
        drop(idle);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let r = request(&path, Request::Status, Duration::from_secs(2))
            .await
            .unwrap();
        assert!(r.ok, "{r:?}");
    }

    #[tokio::test]
    async fn round_trip_over_a_private_socket() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("ctl/control.sock");
        let listener = bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (tx, mut rx) = mpsc::channel::<Job>(1);
        tokio::spawn(serve(listener, tx));
        tokio::spawn(async move {
            while let Some((req, back)) = rx.recv().await {
                let _ = back.send(match req {
                    Request::Reload => Reply {
                        ok: true,
                        reload: Some(ReloadOutcome {
                            changes: vec!["+ x".into()],
                            duration_ms: 1.0,
                        }),
                        ..Default::default()
                    },
                    Request::Status | Request::Probe { .. } => {
                        Reply::error("no status in this test")
                    }
                });
            }
        });
        let r = request(&path, Request::Reload, Duration::from_secs(5))
            .await
            .unwrap();
        assert!(r.ok);
        assert_eq!(r.reload.unwrap().changes, vec!["+ x".to_string()]);
        let r = request(&path, Request::Status, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(r.error.as_deref(), Some("no status in this test"));
        // A second bind (a restarted daemon) replaces the stale socket.
        drop(bind(&path).unwrap());
        let missing = d.path().join("none.sock");
        assert!(matches!(
            request(&missing, Request::Status, Duration::from_secs(1)).await,
            Err(ControlError::NotRunning { .. })
        ));
    }
}
