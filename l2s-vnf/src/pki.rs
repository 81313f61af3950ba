//! X.509 for IKE authentication (`[ipsec] auth = "pubkey"`): read this site's certificate,
//! private key, trusted CAs and CRLs, check them before anything is touched, and describe
//! certificates for `status`.
//!
//! Everything here reads files only; handing them to charon is `apply`'s job (over VICI,
//! never through charon's directories). The private key is held as opaque bytes that are
//! never formatted ([`Secret`]).

use std::fmt;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use openssl::asn1::{Asn1Time, Asn1TimeRef};
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::stack::Stack;
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::verify::X509VerifyFlags;
use openssl::x509::{X509Crl, X509NameRef, X509StoreContext, X509};

/// A certificate is "expiring" this long before its end of validity (warnings in `check`,
/// status and logs).
pub const EXPIRY_WARNING_SECS: i64 = 30 * 86_400;

/// Bytes that must never be printed (a private key). `Debug` shows only their length.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(bytes: Vec<u8>) -> Self {
        Secret(bytes)
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

/// The bytes are wiped when the secret goes: no copy of a key lingers in freed memory.
impl Drop for Secret {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({} bytes)", self.0.len())
    }
}

/// What `status` and the metrics show of a certificate.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CertInfo {
    pub subject: String,
    pub issuer: String,
    /// Serial number, hex, as charon prints it (`01:a2:…` without colons).
    pub serial: String,
    pub not_before_unix: i64,
    pub not_after_unix: i64,
}

impl CertInfo {
    pub fn of(cert: &X509) -> Self {
        CertInfo {
            subject: dn_string(cert.subject_name()),
            issuer: dn_string(cert.issuer_name()),
            serial: serial_hex(cert),
            not_before_unix: unix_of(cert.not_before()),
            not_after_unix: unix_of(cert.not_after()),
        }
    }

    /// Seconds until the end of validity (negative once expired).
    pub fn expiry_secs(&self, now_unix: i64) -> i64 {
        self.not_after_unix - now_unix
    }

    /// Whole days until the end of validity (negative once expired).
    pub fn days_left(&self, now_unix: i64) -> i64 {
        self.expiry_secs(now_unix).div_euclid(86_400)
    }

    /// A problem with the validity period at `now`, or a warning when it ends soon.
    pub fn validity(&self, now_unix: i64) -> Validity {
        if now_unix < self.not_before_unix {
            Validity::NotYet
        } else if now_unix > self.not_after_unix {
            Validity::Expired
        } else if self.expiry_secs(now_unix) < EXPIRY_WARNING_SECS {
            Validity::Expiring
        } else {
            Validity::Valid
        }
    }

    pub fn describe(&self) -> String {
        format!(
            "\"{}\" (issuer \"{}\", serial {})",
            self.subject, self.issuer, self.serial
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    NotYet,
    Valid,
    Expiring,
    Expired,
}

fn unix_of(t: &Asn1TimeRef) -> i64 {
    match Asn1Time::from_unix(0).and_then(|epoch| epoch.diff(t)) {
        Ok(d) => i64::from(d.days) * 86_400 + i64::from(d.secs),
        Err(_) => 0,
    }
}

/// A UTC date for messages, e.g. `2026-12-24 10:00:00 UTC`.
pub fn utc_date(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

fn serial_hex(cert: &X509) -> String {
    cert.serial_number()
        .to_bn()
        .and_then(|bn| bn.to_hex_str().map(|s| s.to_ascii_lowercase()))
        .unwrap_or_default()
}

/// charon's short names of the RDN attributes it can parse in an identity.
const DN_ATTRIBUTES: &[(&str, Nid)] = &[
    ("CN", Nid::COMMONNAME),
    ("C", Nid::COUNTRYNAME),
    ("L", Nid::LOCALITYNAME),
    ("ST", Nid::STATEORPROVINCENAME),
    ("O", Nid::ORGANIZATIONNAME),
    ("OU", Nid::ORGANIZATIONALUNITNAME),
    ("DC", Nid::DOMAINCOMPONENT),
    ("UID", Nid::USERID),
    ("E", Nid::PKCS9_EMAILADDRESS),
    ("EMAIL", Nid::PKCS9_EMAILADDRESS),
    ("EMAILADDRESS", Nid::PKCS9_EMAILADDRESS),
    ("SERIALNUMBER", Nid::SERIALNUMBER),
    ("SN", Nid::SURNAME),
    ("G", Nid::GIVENNAME),
    ("T", Nid::TITLE),
    ("I", Nid::INITIALS),
    ("DNQUALIFIER", Nid::DNQUALIFIER),
    ("PSEUDONYM", Nid::PSEUDONYM),
];

fn attribute_name(nid: Nid) -> String {
    match DN_ATTRIBUTES.iter().find(|(_, n)| *n == nid) {
        Some((name, _)) if *name == "E" => "E".into(),
        Some((name, _)) => (*name).to_string(),
        None => nid.short_name().unwrap_or("?").to_string(),
    }
}

/// A DN as charon prints it: `C=CH, O=Operator B, CN=site-b`.
pub fn dn_string(name: &X509NameRef) -> String {
    name.entries()
        .map(|e| {
            let v = e.data().to_string().unwrap_or_default();
            format!("{}={v}", attribute_name(e.object().nid()))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn dn_entries(name: &X509NameRef) -> Vec<(Nid, String)> {
    name.entries()
        .map(|e| (e.object().nid(), e.data().to_string().unwrap_or_default()))
        .collect()
}

/// An IKE identity the way charon reads the string (strongSwan's identification parser).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// A distinguished name (the string holds `=`), matched against the subject.
    Dn(Vec<(Nid, String)>),
    /// An IP address, matched against an iPAddress subjectAltName.
    Ip(IpAddr),
    /// `user@domain`, matched against an rfc822Name subjectAltName.
    Email(String),
    /// Anything else (a leading `@` is dropped), matched against a dNSName subjectAltName.
    Fqdn(String),
}

impl Identity {
    /// Parse as charon would, refusing what charon would read differently from how it looks.
    pub fn parse(s: &str) -> Result<Identity, String> {
        if s.is_empty() {
            return Err("an identity cannot be empty".into());
        }
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(Identity::Ip(ip));
        }
        if s.starts_with('%') {
            return Err(format!("`{s}` starts with '%', which charon reserves for wildcards such as %any; it would not be matched as written"));
        }
        if s.starts_with('#') || s.starts_with("@#") {
            return Err(format!(
                "`{s}` would be read by charon as a binary key id, not as a name"
            ));
        }
        if let Some((prefix, _)) = s.split_once(':') {
            if !prefix.contains('=') && !prefix.contains('@') {
                return Err(format!("`{s}`: charon reads `{prefix}:` as an identity type prefix; write the identity without it (a DN as `CN=…, O=…`, a name as `site-b`, an address as-is)"));
            }
        }
        if s.contains('=') {
            let mut rdns = vec![];
            for part in s.split([',', '/']).map(str::trim).filter(|p| !p.is_empty()) {
                let Some((k, v)) = part.split_once('=') else {
                    return Err(format!("`{s}` looks like a DN but `{part}` is not `attribute=value`; charon would misread it"));
                };
                let key = k.trim().to_ascii_uppercase();
                let Some((_, nid)) = DN_ATTRIBUTES.iter().find(|(n, _)| *n == key) else {
                    return Err(format!(
                        "`{s}`: `{}` is not a DN attribute charon knows (use e.g. CN, O, OU, C, L, ST, DC, E)",
                        k.trim()
                    ));
                };
                if v.trim().is_empty() {
                    return Err(format!("`{s}`: `{}` has no value", k.trim()));
                }
                rdns.push((*nid, v.trim().to_string()));
            }
            return Ok(Identity::Dn(rdns));
        }
        if s.contains(',') || s.contains(char::is_whitespace) {
            return Err(format!(
                "`{s}` holds ',' or whitespace but no '=': charon would take it as one odd host name, not a DN"
            ));
        }
        if let Some(fqdn) = s.strip_prefix('@') {
            return Ok(Identity::Fqdn(fqdn.to_string()));
        }
        if s.contains('@') {
            return Ok(Identity::Email(s.to_string()));
        }
        Ok(Identity::Fqdn(s.to_string()))
    }

    /// Whether a certificate carries this identity (subject DN or subjectAltName).
    pub fn carried_by(&self, cert: &X509) -> bool {
        match self {
            Identity::Dn(rdns) => {
                let subject = dn_entries(cert.subject_name());
                subject.len() == rdns.len()
                    && subject
                        .iter()
                        .zip(rdns)
                        .all(|((n1, v1), (n2, v2))| n1 == n2 && v1.eq_ignore_ascii_case(v2))
            }
            _ => alt_names(cert).iter().any(|a| self.matches_alt(a)),
        }
    }

    fn matches_alt(&self, alt: &AltName) -> bool {
        match (self, alt) {
            (Identity::Fqdn(a), AltName::Dns(b)) | (Identity::Email(a), AltName::Email(b)) => {
                a.eq_ignore_ascii_case(b)
            }
            (Identity::Ip(a), AltName::Ip(b)) => a == b,
            _ => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum AltName {
    Dns(String),
    Email(String),
    Ip(IpAddr),
}

fn alt_names(cert: &X509) -> Vec<AltName> {
    let Some(names) = cert.subject_alt_names() else {
        return vec![];
    };
    names
        .iter()
        .filter_map(|n| {
            if let Some(d) = n.dnsname() {
                Some(AltName::Dns(d.to_string()))
            } else if let Some(e) = n.email() {
                Some(AltName::Email(e.to_string()))
            } else {
                n.ipaddress().and_then(|b| match b.len() {
                    4 => <[u8; 4]>::try_from(b)
                        .ok()
                        .map(|a| AltName::Ip(IpAddr::from(a))),
                    16 => <[u8; 16]>::try_from(b)
                        .ok()
                        .map(|a| AltName::Ip(IpAddr::from(a))),
                    _ => None,
                })
            }
        })
        .collect()
}

/// The identities a certificate carries, for messages: `DN "…", DNS site-b, IP 192.0.2.1`.
pub fn identities_of(cert: &X509) -> String {
    let mut out = vec![format!("DN \"{}\"", dn_string(cert.subject_name()))];
    for a in alt_names(cert) {
        out.push(match a {
            AltName::Dns(d) => format!("DNS {d}"),
            AltName::Email(e) => format!("email {e}"),
            AltName::Ip(ip) => format!("IP {ip}"),
        });
    }
    out.join(", ")
}

/// Where this site's credentials are (validated config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PkiFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub cacerts: Vec<PathBuf>,
    pub crls: Vec<PathBuf>,
}

/// A trusted CA as handed to charon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaCert {
    pub path: PathBuf,
    /// DER, the form charon is given.
    pub der: Vec<u8>,
    pub info: CertInfo,
    /// A short stable digest of the DER (names the charon authority).
    pub digest: String,
}

/// A revocation list as handed to charon, with what it revokes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlFile {
    pub path: PathBuf,
    pub der: Vec<u8>,
    pub issuer: String,
    /// Revoked serial numbers (hex, lowercase, as [`CertInfo::serial`]).
    pub revoked: Vec<String>,
}

/// This site's credentials, read and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub cert_der: Vec<u8>,
    pub cert: CertInfo,
    pub key_pem: Secret,
    /// The key's type for VICI `load-key` (`rsa`, `ecdsa`, `ed25519`, `ed448`; else `any`).
    pub key_type: &'static str,
    /// charon's id of the key (SHA-1 of the public key bits, hex), to find it in `get-keys`.
    pub key_id: String,
    pub cas: Vec<CaCert>,
    pub crls: Vec<CrlFile>,
}

impl Credentials {
    /// Whether a CRL here revokes a certificate (by issuer DN and serial).
    pub fn revocation_of(&self, cert: &CertInfo) -> Option<&CrlFile> {
        self.crls
            .iter()
            .find(|c| c.issuer == cert.issuer && c.revoked.contains(&cert.serial))
    }
}

/// One problem, keyed by the config key it belongs to (`ipsec.cacerts[1]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub key: String,
    pub message: String,
    pub warning: bool,
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => format!("{what} {} does not exist", path.display()),
        _ => format!("{what} {} cannot be read: {e}", path.display()),
    })
}

/// Whether a file's bytes hold a marker such as a PEM label (`PRIVATE KEY`).
fn holds(bytes: &[u8], marker: &[u8]) -> bool {
    bytes.windows(marker.len()).any(|w| w == marker)
}

fn holds_private_key(bytes: &[u8]) -> bool {
    holds(bytes, b"PRIVATE KEY")
}

fn certs_in(bytes: &[u8]) -> Result<Vec<X509>, String> {
    if holds(bytes, b"-----") {
        let v = X509::stack_from_pem(bytes).map_err(|_| "not a PEM certificate".to_string())?;
        if v.is_empty() {
            return Err("holds no PEM certificate".into());
        }
        Ok(v)
    } else {
        X509::from_der(bytes)
            .map(|c| vec![c])
            .map_err(|_| "not a certificate (neither PEM nor DER)".into())
    }
}

fn der_of(cert: &X509) -> Vec<u8> {
    cert.to_der().unwrap_or_default()
}

fn digest(der: &[u8]) -> String {
    openssl::sha::sha256(der)[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// charon's key id: SHA-1 over the BIT STRING of the SubjectPublicKeyInfo.
pub fn key_id(key: &PKey<impl openssl::pkey::HasPublic>) -> Option<String> {
    let spki = key.public_key_to_der().ok()?;
    let (_, inner, _) = der_tlv(&spki)?;
    let (_, _alg, rest) = der_tlv(inner)?;
    let (tag, bits, _) = der_tlv(rest)?;
    if tag != 0x03 || bits.is_empty() {
        return None;
    }
    Some(
        openssl::sha::sha1(&bits[1..])
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
    )
}

/// charon's id of the key a certificate (DER) certifies.
pub fn key_id_of_cert(der: &[u8]) -> Option<String> {
    key_id(&X509::from_der(der).ok()?.public_key().ok()?)
}

/// Whether charon, holding the CRL `held` (DER), has what `ours` says: the same list, or a
/// list from the same issuer at least as recent (charon keeps only the newest per issuer).
pub fn crl_covers(held: &[u8], ours: &CrlFile) -> bool {
    if held == ours.der.as_slice() {
        return true;
    }
    let (Ok(h), Ok(o)) = (X509Crl::from_der(held), X509Crl::from_der(&ours.der)) else {
        return false;
    };
    dn_string(h.issuer_name()) == ours.issuer
        && h.last_update()
            .compare(o.last_update())
            .is_ok_and(|c| c.is_ge())
}

/// One DER TLV: (tag, content, rest).
fn der_tlv(buf: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *buf.first()?;
    let first = *buf.get(1)?;
    let (len, hdr) = if first < 0x80 {
        (first as usize, 2)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for b in buf.get(2..2 + n)? {
            len = len << 8 | *b as usize;
        }
        (len, 2 + n)
    };
    let content = buf.get(hdr..hdr + len)?;
    Some((tag, content, &buf[hdr + len..]))
}

/// Read and check everything: files exist and parse, the key is private to root and matches
/// the certificate, the certificate chains to a configured CA, carries `local_id` and is
/// valid now, each CRL is signed by a configured CA. Every finding is returned (errors and
/// warnings); the credentials only when there is no error.
pub fn check(
    files: &PkiFiles,
    local_id: &str,
    local_id_key: &str,
    now: i64,
) -> (Option<Credentials>, Vec<Finding>) {
    let mut f = vec![];
    let mut err = |key: &str, message: String| {
        f.push(Finding {
            key: key.into(),
            message,
            warning: false,
        })
    };

    // CAs first: the certificate and the CRLs are checked against them.
    let mut cas: Vec<(CaCert, X509)> = vec![];
    if files.cacerts.is_empty() {
        err(
            "ipsec.cacerts",
            "auth = \"pubkey\" needs at least one trusted CA certificate in `cacerts`".into(),
        );
    }
    for (i, path) in files.cacerts.iter().enumerate() {
        let key = format!("ipsec.cacerts[{i}]");
        let bytes = match read(path, "CA certificate file") {
            Ok(b) => b,
            Err(e) => {
                err(&key, e);
                continue;
            }
        };
        if holds_private_key(&bytes) {
            err(&key, format!("CA certificate file {} holds a private key; it must hold certificates only (keep the CA's key off the L2S VM)", path.display()));
            continue;
        }
        match certs_in(&bytes) {
            Err(e) => err(&key, format!("CA certificate file {}: {e}", path.display())),
            Ok(certs) => {
                for c in certs {
                    let info = CertInfo::of(&c);
                    let is_ca = c
                        .to_text()
                        .ok()
                        .is_some_and(|t| String::from_utf8_lossy(&t).contains("CA:TRUE"));
                    if !is_ca {
                        err(&key, format!("{} in {} is not a CA certificate (no basicConstraints CA:TRUE); charon would not trust it to sign", info.describe(), path.display()));
                        continue;
                    }
                    if info.validity(now) == Validity::Expired {
                        err(
                            &key,
                            format!(
                                "CA certificate \"{}\" in {} expired on {}",
                                info.subject,
                                path.display(),
                                utc_date(info.not_after_unix)
                            ),
                        );
                    }
                    let der = der_of(&c);
                    cas.push((
                        CaCert {
                            path: path.clone(),
                            digest: digest(&der),
                            der,
                            info,
                        },
                        c,
                    ));
                }
            }
        }
    }

    // This site's certificate.
    let cert = match read(&files.cert, "certificate file") {
        Err(e) => {
            err("ipsec.cert", e);
            None
        }
        Ok(bytes) if holds_private_key(&bytes) => {
            err("ipsec.cert", format!("certificate file {} holds a private key; put the key in the file `key` names (mode 0600) and only the certificate here", files.cert.display()));
            None
        }
        Ok(bytes) => match certs_in(&bytes) {
            Err(e) => {
                err(
                    "ipsec.cert",
                    format!("certificate file {}: {e}", files.cert.display()),
                );
                None
            }
            Ok(v) if v.len() > 1 => {
                err("ipsec.cert", format!("certificate file {} holds {} certificates; put only this site's certificate there (intermediate CAs go in `cacerts`)", files.cert.display(), v.len()));
                None
            }
            Ok(mut v) => v.pop(),
        },
    };
    if let Some(c) = &cert {
        let info = CertInfo::of(c);
        match info.validity(now) {
            Validity::Expired => err(
                "ipsec.cert",
                format!(
                    "certificate {} expired on {}",
                    info.describe(),
                    utc_date(info.not_after_unix)
                ),
            ),
            Validity::NotYet => err(
                "ipsec.cert",
                format!(
                    "certificate {} is not valid before {}",
                    info.describe(),
                    utc_date(info.not_before_unix)
                ),
            ),
            _ => {}
        }
        match Identity::parse(local_id) {
            Err(e) => err(local_id_key, e),
            Ok(id) if !id.carried_by(c) => err(
                "ipsec.cert",
                format!(
                    "certificate {} does not carry this site's identity `{local_id}` (it carries {}); set [site] id to one of those, or issue the certificate with that identity",
                    files.cert.display(),
                    identities_of(c)
                ),
            ),
            Ok(_) => {}
        }
        if !cas.is_empty() {
            if let Err(why) = chains_to(c, &cas) {
                err(
                    "ipsec.cert",
                    format!(
                        "certificate {} is not signed by a CA in `cacerts` ({why}); peers would refuse it",
                        info.describe()
                    ),
                );
            }
        }
    }

    // Its private key.
    let key = match read(&files.key, "private key file") {
        Err(e) => {
            err("ipsec.key", e);
            None
        }
        Ok(bytes) => {
            if let Ok(meta) = std::fs::metadata(&files.key) {
                let mode = meta.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    err("ipsec.key", format!("private key file {} has mode {mode:04o}; it must not be accessible by group or others (chmod 600)", files.key.display()));
                }
            }
            if holds(&bytes, b"ENCRYPTED") {
                err("ipsec.key", format!("private key file {} is encrypted; charon is handed the key unencrypted (protect the file with mode 0600 instead)", files.key.display()));
                None
            } else {
                match PKey::private_key_from_pem(&bytes)
                    .or_else(|_| PKey::private_key_from_der(&bytes))
                {
                    Ok(k) => Some((k, bytes)),
                    Err(_) => {
                        err(
                            "ipsec.key",
                            format!(
                                "private key file {} does not hold a private key (PEM or DER){}",
                                files.key.display(),
                                if holds(&bytes, b"CERTIFICATE") {
                                    "; it holds a certificate"
                                } else {
                                    ""
                                }
                            ),
                        );
                        None
                    }
                }
            }
        }
    };
    let mut key_id_hex = String::new();
    let key_kind = key.as_ref().map_or("any", |(k, _)| key_type(k));
    if let (Some(c), Some((k, _))) = (&cert, &key) {
        let matches = c.public_key().map(|p| p.public_eq(k)).unwrap_or(false);
        if !matches {
            err(
                "ipsec.key",
                format!(
                    "private key {} does not belong to certificate {} (another key pair)",
                    files.key.display(),
                    files.cert.display()
                ),
            );
        }
        key_id_hex = key_id(k).unwrap_or_default();
    }

    // Revocation lists.
    let mut crls = vec![];
    for (i, path) in files.crls.iter().enumerate() {
        let key = format!("ipsec.crls[{i}]");
        let bytes = match read(path, "CRL file") {
            Ok(b) => b,
            Err(e) => {
                err(&key, e);
                continue;
            }
        };
        let crl = match X509Crl::from_pem(&bytes).or_else(|_| X509Crl::from_der(&bytes)) {
            Ok(c) => c,
            Err(_) => {
                err(
                    &key,
                    format!(
                        "CRL file {} does not hold a CRL (PEM or DER)",
                        path.display()
                    ),
                );
                continue;
            }
        };
        let signer = cas.iter().find(|(_, ca)| {
            ca.subject_name()
                .try_cmp(crl.issuer_name())
                .is_ok_and(|o| o.is_eq())
                && ca
                    .public_key()
                    .ok()
                    .is_some_and(|k| crl.verify(&k).unwrap_or(false))
        });
        if signer.is_none() {
            err(&key, format!("CRL {} (issuer \"{}\") is not signed by any CA in `cacerts`; charon would ignore it", path.display(), dn_string(crl.issuer_name())));
            continue;
        }
        let revoked = crl
            .get_revoked()
            .map(|s| {
                s.iter()
                    .filter_map(|r| {
                        r.serial_number()
                            .to_bn()
                            .ok()
                            .and_then(|b| b.to_hex_str().ok())
                            .map(|h| h.to_ascii_lowercase())
                    })
                    .collect()
            })
            .unwrap_or_default();
        crls.push(CrlFile {
            path: path.clone(),
            der: crl.to_der().unwrap_or_default(),
            issuer: dn_string(crl.issuer_name()),
            revoked,
        });
    }

    // Warnings only once everything parses.
    let mut warnings = vec![];
    if let Some(c) = &cert {
        let info = CertInfo::of(c);
        if info.validity(now) == Validity::Expiring {
            warnings.push(Finding {
                key: "ipsec.cert".into(),
                message: format!(
                    "certificate {} expires in {} days ({}); renew it and reload",
                    info.describe(),
                    info.days_left(now),
                    utc_date(info.not_after_unix)
                ),
                warning: true,
            });
        }
        if let Some(crl) = crls
            .iter()
            .find(|r| r.issuer == info.issuer && r.revoked.contains(&info.serial))
        {
            f.push(Finding {
                key: "ipsec.cert".into(),
                message: format!(
                    "certificate {} is revoked by CRL {}",
                    info.describe(),
                    crl.path.display()
                ),
                warning: false,
            });
        }
    }
    for (i, (ca, _)) in cas.iter().enumerate() {
        if ca.info.validity(now) == Validity::Expiring {
            warnings.push(Finding {
                key: format!("ipsec.cacerts[{i}]"),
                message: format!(
                    "CA certificate \"{}\" expires in {} days ({})",
                    ca.info.subject,
                    ca.info.days_left(now),
                    utc_date(ca.info.not_after_unix)
                ),
                warning: true,
            });
        }
    }
    let failed = f.iter().any(|x| !x.warning);
    f.extend(warnings);
    if failed {
        return (None, f);
    }
    let (Some(c), Some((_, key_bytes))) = (cert, key) else {
        return (None, f);
    };
    let creds = Credentials {
        cert_der: der_of(&c),
        cert: CertInfo::of(&c),
        key_pem: Secret(key_bytes),
        key_type: key_kind,
        key_id: key_id_hex,
        cas: cas.into_iter().map(|(ca, _)| ca).collect(),
        crls,
    };
    (Some(creds), f)
}

/// Whether `cert` chains to one of the CAs (time is checked separately, with clearer words).
fn chains_to(cert: &X509, cas: &[(CaCert, X509)]) -> Result<(), String> {
    let mut b = X509StoreBuilder::new().map_err(|e| e.to_string())?;
    for (_, ca) in cas {
        b.add_cert(ca.clone()).map_err(|e| e.to_string())?;
    }
    b.set_flags(X509VerifyFlags::NO_CHECK_TIME | X509VerifyFlags::PARTIAL_CHAIN)
        .map_err(|e| e.to_string())?;
    let store = b.build();
    let chain = Stack::new().map_err(|e| e.to_string())?;
    let mut ctx = X509StoreContext::new().map_err(|e| e.to_string())?;
    ctx.init(&store, cert, &chain, |c| {
        Ok(if c.verify_cert()? {
            Ok(())
        } else {
            Err(c.error().error_string().to_string())
        })
    })
    .map_err(|e| e.to_string())?
}

/// A certificate given by charon (`list-certs` data, DER).
pub fn info_of_der(der: &[u8]) -> Option<(CertInfo, X509)> {
    X509::from_der(der).ok().map(|c| (CertInfo::of(&c), c))
}

/// The private-key type for VICI `load-key` (`rsa`, `ecdsa`, `ed25519`, …; `any` otherwise).
fn key_type(key: &PKey<Private>) -> &'static str {
    match key.id() {
        openssl::pkey::Id::RSA => "rsa",
        openssl::pkey::Id::EC => "ecdsa",
        openssl::pkey::Id::ED25519 => "ed25519",
        openssl::pkey::Id::ED448 => "ed448",
        _ => "any",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openssl::asn1::Asn1Integer;
    use openssl::bn::BigNum;
    use openssl::ec::{EcGroup, EcKey};
    use openssl::hash::MessageDigest;
    use openssl::x509::extension::{BasicConstraints, SubjectAlternativeName};
    use openssl::x509::X509NameBuilder;

    fn key() -> PKey<Private> {
        let g = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
        PKey::from_ec_key(EcKey::generate(&g).unwrap()).unwrap()
    }

    fn cert(
        cn: &str,
        san: Option<&str>,
        key: &PKey<Private>,
        issuer: Option<(&X509, &PKey<Private>)>,
        days: (i64, i64),
        ca: bool,
    ) -> X509 {
        let mut name = X509NameBuilder::new().unwrap();
        name.append_entry_by_text("O", "Operator").unwrap();
        name.append_entry_by_text("CN", cn).unwrap();
        let name = name.build();
        let mut b = X509::builder().unwrap();
        b.set_version(2).unwrap();
        let serial = BigNum::from_u32(cn.len() as u32 + 0x100).unwrap();
        b.set_serial_number(&Asn1Integer::from_bn(&serial).unwrap())
            .unwrap();
        b.set_subject_name(&name).unwrap();
        b.set_issuer_name(issuer.map(|(c, _)| c.subject_name()).unwrap_or(&name))
            .unwrap();
        let now = crate::base::clock::unix_now_signed();
        b.set_not_before(&Asn1Time::from_unix(now + days.0 * 86400).unwrap())
            .unwrap();
        b.set_not_after(&Asn1Time::from_unix(now + days.1 * 86400).unwrap())
            .unwrap();
        b.set_pubkey(key).unwrap();
        if ca {
            b.append_extension(BasicConstraints::new().critical().ca().build().unwrap())
                .unwrap();
        }
        if let Some(s) = san {
            let ext = SubjectAlternativeName::new()
                .dns(s)
                .build(&b.x509v3_context(issuer.map(|(c, _)| c.as_ref()), None))
                .unwrap();
            b.append_extension(ext).unwrap();
        }
        b.sign(
            issuer.map(|(_, k)| k).unwrap_or(key),
            MessageDigest::sha256(),
        )
        .unwrap();
        b.build()
    }

    struct Fixture {
        dir: tempfile::TempDir,
        files: PkiFiles,
    }

    fn write(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    fn fixture(days: (i64, i64)) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = key();
        let ca = cert("Test CA", None, &ca_key, None, (-1, 3650), true);
        let site_key = key();
        let site = cert(
            "site-a",
            Some("site-a"),
            &site_key,
            Some((&ca, &ca_key)),
            days,
            false,
        );
        let files = PkiFiles {
            cert: write(dir.path(), "site.crt", &site.to_pem().unwrap(), 0o644),
            key: write(
                dir.path(),
                "site.key",
                &site_key.private_key_to_pem_pkcs8().unwrap(),
                0o600,
            ),
            cacerts: vec![write(dir.path(), "ca.crt", &ca.to_pem().unwrap(), 0o644)],
            crls: vec![],
        };
        Fixture { dir, files }
    }

    fn errors(f: &[Finding]) -> Vec<String> {
        f.iter()
            .filter(|x| !x.warning)
            .map(|x| format!("{}: {}", x.key, x.message))
            .collect()
    }

    #[test]
    fn a_good_set_passes_and_the_key_is_never_shown() {
        let fx = fixture((-1, 365));
        let (creds, findings) = check(
            &fx.files,
            "site-a",
            "site.name",
            crate::base::clock::unix_now_signed(),
        );
        assert!(findings.is_empty(), "{findings:?}");
        let creds = creds.unwrap();
        assert_eq!(creds.cert.subject, "O=Operator, CN=site-a");
        assert_eq!(creds.cert.issuer, "O=Operator, CN=Test CA");
        assert_eq!(creds.key_id.len(), 40);
        assert!(!format!("{creds:?}").contains("PRIVATE"));
        // The DN works as an identity too.
        let (_, f) = check(
            &fx.files,
            "O=Operator, CN=site-a",
            "site.id",
            crate::base::clock::unix_now_signed(),
        );
        assert!(f.is_empty(), "{f:?}");
    }

    #[test]
    fn every_problem_is_reported() {
        let fx = fixture((-1, 365));
        let other = key();
        let mut files = fx.files.clone();
        files.key = write(
            fx.dir.path(),
            "other.key",
            &other.private_key_to_pem_pkcs8().unwrap(),
            0o644,
        );
        let (creds, f) = check(
            &files,
            "site-b",
            "site.name",
            crate::base::clock::unix_now_signed(),
        );
        assert!(creds.is_none());
        let e = errors(&f).join("\n");
        assert!(
            e.contains("does not carry this site's identity `site-b`"),
            "{e}"
        );
        assert!(e.contains("mode 0644"), "{e}");
        assert!(e.contains("does not belong to certificate"), "{e}");
    }

    #[test]
    fn untrusted_expired_and_wrong_files_are_errors() {
        let fx = fixture((-30, -1));
        let (_, f) = check(
            &fx.files,
            "site-a",
            "site.name",
            crate::base::clock::unix_now_signed(),
        );
        assert!(errors(&f).join("\n").contains("expired on"), "{f:?}");

        let fx = fixture((-1, 10));
        let (creds, f) = check(
            &fx.files,
            "site-a",
            "site.name",
            crate::base::clock::unix_now_signed(),
        );
        assert!(creds.is_some());
        assert!(
            f.iter()
                .any(|x| x.warning && x.message.contains("expires in")),
            "{f:?}"
        );

        let fx = fixture((-1, 365));
        let other_ca_key = key();
        let other_ca = cert("Other CA", None, &other_ca_key, None, (-1, 3650), true);
        let mut files = fx.files.clone();
        files.cacerts = vec![write(
            fx.dir.path(),
            "o.crt",
            &other_ca.to_pem().unwrap(),
            0o644,
        )];
        let (_, f) = check(
            &files,
            "site-a",
            "site.name",
            crate::base::clock::unix_now_signed(),
        );
        assert!(
            errors(&f).join("\n").contains("not signed by a CA"),
            "{f:?}"
        );

        // A CA file with a private key in it; a certificate file that holds a key; a key
        // file that holds a certificate; a CRL that is not one.
        let mut files = fx.files.clone();
        let mut with_key = std::fs::read(&fx.files.cacerts[0]).unwrap();
        with_key.extend(other_ca_key.private_key_to_pem_pkcs8().unwrap());
        files.cacerts = vec![write(fx.dir.path(), "k.crt", &with_key, 0o644)];
        files.key = fx.files.cert.clone();
        files.crls = vec![fx.files.cert.clone()];
        let (_, f) = check(
            &files,
            "site-a",
            "site.name",
            crate::base::clock::unix_now_signed(),
        );
        let e = errors(&f).join("\n");
        assert!(
            e.contains("ipsec.cacerts[0]: CA certificate file")
                && e.contains("holds a private key"),
            "{e}"
        );
        assert!(
            e.contains("ipsec.key: private key file") && e.contains("holds a certificate"),
            "{e}"
        );
        assert!(
            e.contains("ipsec.crls[0]: CRL file") && e.contains("does not hold a CRL"),
            "{e}"
        );
        assert!(!e.contains("BEGIN"), "no file content in messages: {e}");
    }

    #[test]
    fn identities_are_read_as_charon_reads_them() {
        assert_eq!(
            Identity::parse("site-b").unwrap(),
            Identity::Fqdn("site-b".into())
        );
        assert_eq!(
            Identity::parse("@site-b").unwrap(),
            Identity::Fqdn("site-b".into())
        );
        assert!(matches!(
            Identity::parse("ops@example.org").unwrap(),
            Identity::Email(_)
        ));
        assert!(matches!(
            Identity::parse("192.0.2.1").unwrap(),
            Identity::Ip(_)
        ));
        assert!(matches!(
            Identity::parse("CN=site-b, O=Operator B").unwrap(),
            Identity::Dn(v) if v.len() == 2
        ));
        for bad in [
            "%any",
            "#0a1b",
            "fqdn:site-b",
            "CN=site-b, Bogus=x",
            "site b",
            "a,b",
            "CN=",
        ] {
            assert!(Identity::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn dates_are_printed_in_utc() {
        assert_eq!(utc_date(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc_date(1_798_000_000), "2026-12-23 04:26:40 UTC");
    }
}
