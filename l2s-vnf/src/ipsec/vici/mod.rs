//! strongSwan VICI: our own small codec ([`codec`]) and an async client ([`Client`]) for the
//! commands l2s-vnf needs, plus event subscriptions on a separate connection.
//!
//! Every command reply that carries `success` is checked; a `no` becomes
//! [`ViciError::Failed`] with charon's `errmsg`. Secrets (PSKs) are sent but never logged or
//! shown in errors.

pub mod codec;

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, Mutex};

pub use codec::{Item, PacketType, Section};

#[derive(Debug, thiserror::Error)]
pub enum ViciError {
    #[error("cannot connect to charon's VICI socket {path}: {source} (is charon running with the vici plugin, and is [ipsec].vici right?)")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("VICI connection to {0} lost: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("charon did not answer {cmd} within {timeout:?}")]
    Timeout { cmd: String, timeout: Duration },
    #[error("charon does not know the command `{0}`")]
    UnknownCommand(String),
    #[error("charon does not know the event `{0}`")]
    UnknownEvent(String),
    #[error("charon refused {cmd}: {errmsg}")]
    Failed { cmd: String, errmsg: String },
    #[error(transparent)]
    Codec(#[from] codec::CodecError),
    #[error("unexpected VICI packet {0:?} while waiting for {1}")]
    Unexpected(PacketType, String),
}

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);

/// A command connection to charon. Commands are serialized on it.
///
/// VICI replies carry no id: a reply belongs to the command before it. A connection is kept
/// only after a complete exchange; one left mid-exchange (a timeout, an I/O or decoding
/// error, a caller that gave up) is dropped, and the next command opens a new one — else it
/// would read the previous command's late reply as its own.
pub struct Client {
    path: PathBuf,
    conn: Mutex<Option<UnixStream>>,
}

async fn read_packet(
    s: &mut UnixStream,
    path: &Path,
) -> Result<(PacketType, Option<String>, Section), ViciError> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len)
        .await
        .map_err(|e| ViciError::Io(path.to_path_buf(), e))?;
    let len = u32::from_be_bytes(len) as usize;
    if len > codec::MAX_PACKET {
        return Err(codec::CodecError::Malformed(format!("packet of {len} bytes")).into());
    }
    let mut body = vec![0u8; len];
    s.read_exact(&mut body)
        .await
        .map_err(|e| ViciError::Io(path.to_path_buf(), e))?;
    Ok(codec::decode_packet(&body)?)
}

async fn write_packet(
    s: &mut UnixStream,
    path: &Path,
    ty: PacketType,
    name: Option<&str>,
    msg: Option<&Section>,
) -> Result<(), ViciError> {
    let p = codec::encode_packet(ty, name, msg)?;
    s.write_all(&p)
        .await
        .map_err(|e| ViciError::Io(path.to_path_buf(), e))
}

async fn connect_stream(path: &Path) -> Result<UnixStream, ViciError> {
    UnixStream::connect(path)
        .await
        .map_err(|source| ViciError::Connect {
            path: path.to_path_buf(),
            source,
        })
}

/// `success = no` → error with `errmsg`.
fn check_success(cmd: &str, reply: Section) -> Result<Section, ViciError> {
    match reply.str("success").as_deref() {
        Some("no") => Err(ViciError::Failed {
            cmd: cmd.to_string(),
            errmsg: reply
                .str("errmsg")
                .unwrap_or_else(|| "no reason given".into()),
        }),
        _ => Ok(reply),
    }
}

impl Client {
    pub async fn connect(path: &Path) -> Result<Self, ViciError> {
        Ok(Client {
            path: path.to_path_buf(),
            conn: Mutex::new(Some(connect_stream(path).await?)),
        })
    }

    /// Connect, retrying with exponential backoff for up to `total` (charon starting up).
    pub async fn connect_with_retry(path: &Path, total: Duration) -> Result<Self, ViciError> {
        let deadline = tokio::time::Instant::now() + total;
        let mut wait = Duration::from_millis(50);
        loop {
            match Self::connect(path).await {
                Ok(c) => return Ok(c),
                Err(e) if tokio::time::Instant::now() + wait > deadline => return Err(e),
                Err(_) => {
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Run a command; a streaming command's events (named `event`) are collected and returned
    /// with the final reply. `success` is checked.
    pub async fn call(
        &self,
        cmd: &str,
        msg: &Section,
        event: Option<&str>,
        timeout: Duration,
    ) -> Result<(Vec<Section>, Section), ViciError> {
        let mut kept = self.conn.lock().await;
        let mut s = match kept.take() {
            Some(s) => s,
            None => connect_stream(&self.path).await?,
        };
        let path = self.path.clone();
        let fut = async {
            if let Some(ev) = event {
                write_packet(&mut s, &path, PacketType::EventRegister, Some(ev), None).await?;
                match read_packet(&mut s, &path).await? {
                    (PacketType::EventConfirm, _, _) => {}
                    (PacketType::EventUnknown, _, _) => {
                        return Err(ViciError::UnknownEvent(ev.to_string()))
                    }
                    (t, _, _) => {
                        return Err(ViciError::Unexpected(t, format!("registration of {ev}")))
                    }
                }
            }
            write_packet(&mut s, &path, PacketType::CmdRequest, Some(cmd), Some(msg)).await?;
            let mut events = vec![];
            let reply = loop {
                match read_packet(&mut s, &path).await? {
                    (PacketType::CmdResponse, _, m) => break m,
                    (PacketType::CmdUnknown, _, _) => {
                        return Err(ViciError::UnknownCommand(cmd.to_string()))
                    }
                    (PacketType::Event, Some(name), m) if Some(name.as_str()) == event => {
                        events.push(m)
                    }
                    (PacketType::Event, _, _) => {}
                    (t, _, _) => return Err(ViciError::Unexpected(t, cmd.to_string())),
                }
            };
            if let Some(ev) = event {
                write_packet(&mut s, &path, PacketType::EventUnregister, Some(ev), None).await?;
                loop {
                    match read_packet(&mut s, &path).await? {
                        (PacketType::EventConfirm | PacketType::EventUnknown, _, _) => break,
                        (PacketType::Event, _, _) => {}
                        (t, _, _) => {
                            return Err(ViciError::Unexpected(t, format!("unregistration of {ev}")))
                        }
                    }
                }
            }
            Ok((events, reply))
        };
        let outcome = tokio::time::timeout(timeout, fut).await;
        match outcome {
            Ok(Ok((events, reply))) => {
                *kept = Some(s);
                Ok((events, check_success(cmd, reply)?))
            }
            // Answered in full: the connection is still in step.
            Ok(Err(e @ (ViciError::UnknownCommand(_) | ViciError::UnknownEvent(_)))) => {
                *kept = Some(s);
                Err(e)
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ViciError::Timeout {
                cmd: cmd.to_string(),
                timeout,
            }),
        }
    }

    pub async fn request(&self, cmd: &str, msg: &Section) -> Result<Section, ViciError> {
        Ok(self.call(cmd, msg, None, DEFAULT_TIMEOUT).await?.1)
    }

    pub async fn version(&self) -> Result<Section, ViciError> {
        self.request("version", &Section::new()).await
    }

    /// Names of the plugins charon loaded (from `stats`).
    pub async fn plugins(&self) -> Result<Vec<String>, ViciError> {
        Ok(self
            .request("stats", &Section::new())
            .await?
            .strings("plugins"))
    }

    /// The algorithms charon's plugins implement, by kind (`get-algorithms`).
    pub async fn algorithms(&self) -> Result<Section, ViciError> {
        self.request("get-algorithms", &Section::new()).await
    }

    /// Ids of the shared keys loaded over VICI (`get-shared`).
    pub async fn shared_keys(&self) -> Result<Vec<String>, ViciError> {
        Ok(self
            .request("get-shared", &Section::new())
            .await?
            .strings("keys"))
    }

    /// Load a PSK for the given owner identities, replacing an earlier one with the same `id`.
    /// The secret is sent to charon and nowhere else.
    pub async fn load_shared(
        &self,
        id: &str,
        secret: &[u8],
        owners: &[&str],
    ) -> Result<(), ViciError> {
        let msg = Section::new()
            .kv("id", id)
            .kv("type", "IKE")
            .kv("data", secret)
            .list("owners", owners.iter().copied());
        self.request("load-shared", &msg).await.map(|_| ())
    }

    /// Authenticate an IKE_SA again (a new IKE_SA with fresh authentication replaces it).
    pub async fn reauthenticate(&self, ike: &str) -> Result<(), ViciError> {
        let msg = Section::new().kv("ike", ike).kv("reauth", "yes");
        self.request("rekey", &msg).await.map(|_| ())
    }

    pub async fn unload_shared(&self, id: &str) -> Result<(), ViciError> {
        self.request("unload-shared", &Section::new().kv("id", id))
            .await
            .map(|_| ())
    }

    /// Load (or replace) a named certification authority (its CA certificate, DER or PEM).
    pub async fn load_authority(&self, name: &str, cacert: &[u8]) -> Result<(), ViciError> {
        self.request("load-authority", &messages::load_authority(name, cacert))
            .await
            .map(|_| ())
    }

    pub async fn unload_authority(&self, name: &str) -> Result<(), ViciError> {
        self.request("unload-authority", &Section::new().kv("name", name))
            .await
            .map(|_| ())
    }

    /// Names of the certification authorities loaded over VICI.
    pub async fn get_authorities(&self) -> Result<Vec<String>, ViciError> {
        Ok(self
            .request("get-authorities", &Section::new())
            .await?
            .strings("authorities"))
    }

    /// Load a certificate (`type` X509, flag NONE) or a CRL (`type` X509_CRL).
    pub async fn load_cert(&self, kind: &str, data: &[u8]) -> Result<(), ViciError> {
        self.request("load-cert", &messages::load_cert(kind, data))
            .await
            .map(|_| ())
    }

    /// Load a private key; returns charon's id for it. The key goes to charon and nowhere
    /// else (errors name the command, never the data).
    pub async fn load_key(&self, kind: &str, data: &[u8]) -> Result<String, ViciError> {
        Ok(self
            .request("load-key", &messages::load_key(kind, data))
            .await?
            .str("id")
            .unwrap_or_default())
    }

    pub async fn unload_key(&self, id: &str) -> Result<(), ViciError> {
        self.request("unload-key", &Section::new().kv("id", id))
            .await
            .map(|_| ())
    }

    /// Ids of the private keys loaded over VICI.
    pub async fn get_keys(&self) -> Result<Vec<String>, ViciError> {
        Ok(self
            .request("get-keys", &Section::new())
            .await?
            .strings("keys"))
    }

    /// X.509 end-entity certificates charon holds for an identity (loaded ones and those it
    /// verified for peers), DER.
    pub async fn certs_of(&self, subject: &str) -> Result<Vec<Vec<u8>>, ViciError> {
        self.list_certs("X509", Some(subject)).await
    }

    /// The certificate revocation lists charon holds, DER.
    pub async fn crls(&self) -> Result<Vec<Vec<u8>>, ViciError> {
        self.list_certs("X509_CRL", None).await
    }

    async fn list_certs(
        &self,
        kind: &str,
        subject: Option<&str>,
    ) -> Result<Vec<Vec<u8>>, ViciError> {
        let mut msg = Section::new().kv("type", kind).kv("flag", "NONE");
        if let Some(s) = subject {
            msg = msg.kv("subject", s);
        }
        let (events, _) = self
            .call("list-certs", &msg, Some("list-cert"), DEFAULT_TIMEOUT)
            .await?;
        Ok(events
            .into_iter()
            .filter_map(|e| match e.get("data") {
                Some(Item::Value(v)) => Some(v.clone()),
                _ => None,
            })
            .collect())
    }

    /// Load (or replace) one connection: `conn` is the section named after the connection.
    pub async fn load_conn(&self, name: &str, conn: Section) -> Result<(), ViciError> {
        self.request("load-conn", &Section::new().section(name, conn))
            .await
            .map(|_| ())
    }

    pub async fn unload_conn(&self, name: &str) -> Result<(), ViciError> {
        self.request("unload-conn", &Section::new().kv("name", name))
            .await
            .map(|_| ())
    }

    /// Connection names loaded over VICI.
    pub async fn get_conns(&self) -> Result<Vec<String>, ViciError> {
        Ok(self
            .request("get-conns", &Section::new())
            .await?
            .strings("conns"))
    }

    /// Initiate a CHILD_SA (and its IKE_SA); waits up to `timeout` for the result.
    pub async fn initiate(
        &self,
        ike: &str,
        child: &str,
        timeout: Duration,
    ) -> Result<(), ViciError> {
        let ms = timeout.as_millis().to_string();
        let msg = Section::new()
            .kv("ike", ike)
            .kv("child", child)
            .kv("timeout", ms)
            .kv("init-limits", "no");
        self.call("initiate", &msg, None, timeout + Duration::from_secs(2))
            .await
            .map(|_| ())
    }

    /// Start initiating without waiting for the result.
    pub async fn initiate_async(&self, ike: &str, child: &str) -> Result<(), ViciError> {
        let msg = Section::new()
            .kv("ike", ike)
            .kv("child", child)
            .kv("timeout", "-1");
        self.request("initiate", &msg).await.map(|_| ())
    }

    /// Terminate every IKE_SA of a connection (without waiting).
    pub async fn terminate_ike(&self, ike: &str) -> Result<(), ViciError> {
        let msg = Section::new().kv("ike", ike).kv("timeout", "-1");
        match self.request("terminate", &msg).await {
            // Nothing to terminate is not an error for "ensure absent".
            Err(ViciError::Failed { errmsg, .. }) if errmsg.contains("no matching") => Ok(()),
            other => other.map(|_| ()),
        }
    }

    /// Loaded connections with the names of their children (streams `list-conn` events).
    pub async fn list_conns(&self) -> Result<Vec<(String, Vec<String>)>, ViciError> {
        let (events, _) = self
            .call(
                "list-conns",
                &Section::new(),
                Some("list-conn"),
                DEFAULT_TIMEOUT,
            )
            .await?;
        Ok(events
            .into_iter()
            .flat_map(|e| e.items.into_iter())
            .filter_map(|(name, item)| match item {
                Item::Section(s) => {
                    let children = s
                        .sub("children")
                        .map(|c| c.items.iter().map(|(n, _)| n.clone()).collect())
                        .unwrap_or_default();
                    Some((name, children))
                }
                _ => None,
            })
            .collect())
    }

    /// IKE_SAs (each a section named after its connection), optionally for one connection.
    pub async fn list_sas(&self, ike: Option<&str>) -> Result<Vec<(String, Section)>, ViciError> {
        let mut msg = Section::new().kv("noblock", "yes");
        if let Some(i) = ike {
            msg = msg.kv("ike", i);
        }
        let (events, _) = self
            .call("list-sas", &msg, Some("list-sa"), DEFAULT_TIMEOUT)
            .await?;
        Ok(events
            .into_iter()
            .flat_map(|e| e.items.into_iter())
            .filter_map(|(name, item)| match item {
                Item::Section(s) => Some((name, s)),
                _ => None,
            })
            .collect())
    }
}

/// The bodies of the credential commands (kept apart for the snapshot tests).
pub mod messages {
    use super::Section;

    /// `load-authority`: one section named after the authority, holding its CA certificate.
    pub fn load_authority(name: &str, cacert: &[u8]) -> Section {
        Section::new().section(name, Section::new().kv("cacert", cacert))
    }

    /// `load-cert`: an end-entity certificate (`X509`) or a CRL (`X509_CRL`), never as a CA.
    pub fn load_cert(kind: &str, data: &[u8]) -> Section {
        Section::new()
            .kv("type", kind)
            .kv("flag", "NONE")
            .kv("data", data)
    }

    /// `load-key`: a private key of the given type.
    pub fn load_key(kind: &str, data: &[u8]) -> Section {
        Section::new().kv("type", kind).kv("data", data)
    }
}

/// Subscribe to events on a connection of its own; events arrive on the returned channel
/// until charon goes away (then the channel closes: reconnect).
pub async fn subscribe(
    path: &Path,
    events: &[&str],
) -> Result<mpsc::UnboundedReceiver<(String, Section)>, ViciError> {
    let mut s = connect_stream(path).await?;
    for ev in events {
        write_packet(&mut s, path, PacketType::EventRegister, Some(ev), None).await?;
        match read_packet(&mut s, path).await? {
            (PacketType::EventConfirm, _, _) => {}
            (PacketType::EventUnknown, _, _) => {
                return Err(ViciError::UnknownEvent(ev.to_string()))
            }
            (t, _, _) => return Err(ViciError::Unexpected(t, format!("registration of {ev}"))),
        }
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let path = path.to_path_buf();
    tokio::spawn(async move {
        loop {
            // Stop (and close the socket) as soon as the subscriber is gone.
            let packet = tokio::select! {
                p = read_packet(&mut s, &path) => p,
                _ = tx.closed() => break,
            };
            match packet {
                Ok((PacketType::Event, Some(name), msg)) => {
                    if tx.send((name, msg)).is_err() {
                        break;
                    }
                }
                _ => break,
            }
        }
    });
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixListener;

    /// A charon stand-in: on each connection, answers each command after `delay` with a
    /// section naming the command's sequence number.
    async fn slow_charon(listener: UnixListener, delay: Duration) {
        let mut n = 0;
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            n += 1;
            let conn = n;
            tokio::spawn(async move {
                let path = PathBuf::from("test");
                while let Ok((PacketType::CmdRequest, _, _)) = read_packet(&mut s, &path).await {
                    tokio::time::sleep(delay).await;
                    let reply = Section::new().kv("conn", conn.to_string());
                    let p =
                        codec::encode_packet(PacketType::CmdResponse, None, Some(&reply)).unwrap();
                    if s.write_all(&p).await.is_err() {
                        return;
                    }
                }
            });
        }
    }

    /// A command that timed out leaves its reply on the way: the next command must not take
    /// it for its own (VICI replies carry no id).
    #[tokio::test]
    async fn a_late_reply_is_never_read_as_the_next_commands() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("charon.vici");
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(slow_charon(listener, Duration::from_millis(300)));
        let c = Client::connect(&path).await.unwrap();
        let first = c
            .call("version", &Section::new(), None, Duration::from_millis(50))
            .await;
        assert!(matches!(first, Err(ViciError::Timeout { .. })), "{first:?}");
        // The late reply to the first command arrives meanwhile on the old connection.
        tokio::time::sleep(Duration::from_millis(400)).await;
        let (_, second) = c
            .call("version", &Section::new(), None, Duration::from_secs(2))
            .await
            .unwrap();
        assert_eq!(second.str("conn").as_deref(), Some("2"), "{second}");
    }
}
