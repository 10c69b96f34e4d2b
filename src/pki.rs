//! A small private PKI for agent mTLS and change approval: a CA, agent server certificates,
//! client certificates, approver certificates.
//!
//! `rollgate pki init` then `rollgate pki issue --agent HOST` / `--client NAME` / `--approver NAME`
//! write PEM files into one directory; private keys are created with mode 0600.

pub mod expiry;

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// File name of the CA certificate inside the PKI dir.
pub const CA_CERT: &str = "ca.pem";
/// File name of the CA key inside the PKI dir.
pub const CA_KEY: &str = "ca-key.pem";

/// What went wrong creating or using the PKI.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("a CA already exists in {0}; refusing to overwrite it")]
    CaExists(PathBuf),
    #[error("{0} already exists; refusing to overwrite it (--force replaces it)")]
    Exists(PathBuf),
    #[error("no CA in {0}; run `rollgate pki init` first")]
    NoCa(PathBuf),
    #[error("{0:?} is not a usable name (letters, digits, '.', '-', '_' only)")]
    BadName(String),
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("generating a certificate")]
    Generate(#[from] rcgen::Error),
}

pub type Result<T, E = PkiError> = std::result::Result<T, E>;

/// Paths of an issued certificate and its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn this_year() -> i32 {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    1970 + (secs / 31_556_952) as i32
}

/// The CA's parameters, rebuilt from its key so a leaf can be signed later without parsing
/// the CA certificate: the name embeds a fingerprint of the key.
fn ca_params(key: &KeyPair) -> Result<CertificateParams> {
    use sha2::Digest;
    let fp = hex::encode(&sha2::Sha256::digest(key.public_key_raw())[..6]);
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::OrganizationName, "rollgate");
    params
        .distinguished_name
        .push(DnType::CommonName, format!("rollgate CA {fp}"));
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let year = this_year();
    params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    params.not_after = rcgen::date_time_ymd(year + 10, 1, 1);
    Ok(params)
}

/// Writes `bytes` to `path` atomically; `secret` files get mode 0600 from the start. The temp
/// file has a name of its own and is created exclusively, never through a link
/// (`O_EXCL | O_NOFOLLOW`): a file or link planted in its place makes the write fail instead of
/// leaving the key readable or writing it elsewhere.
fn write_file(path: &Path, bytes: &[u8], secret: bool) -> Result<()> {
    use std::io::Write;
    let err = |source| PkiError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(err)?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{nanos}",
        path.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(if secret { 0o600 } else { 0o644 })
            .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits());
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut file = opts.open(&tmp).map_err(err)?;
    let written = file
        .write_all(bytes)
        .and_then(|()| file.sync_all())
        .and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.map_err(err)
}

fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'));
    if ok {
        Ok(())
    } else {
        Err(PkiError::BadName(name.to_string()))
    }
}

/// Creates a CA in `dir` (`ca.pem`, `ca-key.pem`). Refuses to overwrite an existing one.
pub fn init(dir: &Path) -> Result<Issued> {
    let cert_path = dir.join(CA_CERT);
    let key_path = dir.join(CA_KEY);
    if cert_path.exists() || key_path.exists() {
        return Err(PkiError::CaExists(dir.to_path_buf()));
    }
    let key = KeyPair::generate()?;
    let cert = ca_params(&key)?.self_signed(&key)?;
    write_file(&key_path, key.serialize_pem().as_bytes(), true)?;
    write_file(&cert_path, cert.pem().as_bytes(), false)?;
    Ok(Issued {
        cert: cert_path,
        key: key_path,
    })
}

fn load_ca(dir: &Path) -> Result<KeyPair> {
    let key_path = dir.join(CA_KEY);
    if !key_path.exists() {
        return Err(PkiError::NoCa(dir.to_path_buf()));
    }
    let pem = std::fs::read_to_string(&key_path).map_err(|source| PkiError::Read {
        path: key_path,
        source,
    })?;
    Ok(KeyPair::from_pem(&pem)?)
}

/// The extended key usage of an issued certificate.
enum Usage {
    Tls(ExtendedKeyUsagePurpose),
    /// [`crate::approval::APPROVER_EKU`], which the TLS usages of rcgen cannot name.
    Approver,
}

/// What issuing does when the certificate or key it would write exists already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    Refuse,
    Replace,
}

fn issue(
    dir: &Path,
    file_stem: &str,
    cn: &str,
    sans: Vec<SanType>,
    eku: Usage,
    existing: Existing,
    days: Option<u32>,
) -> Result<Issued> {
    let cert_path = dir.join(format!("{file_stem}.pem"));
    let key_path = dir.join(format!("{file_stem}-key.pem"));
    if existing == Existing::Refuse {
        for p in [&cert_path, &key_path] {
            if std::fs::symlink_metadata(p).is_ok() {
                return Err(PkiError::Exists(p.clone()));
            }
        }
    }
    let ca_key = load_ca(dir)?;
    let ca = Issuer::new(ca_params(&ca_key)?, ca_key);
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, cn);
    params.subject_alt_names = sans;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    match eku {
        Usage::Tls(eku) => params.extended_key_usages = vec![eku],
        // Only the approver usage: such a certificate cannot serve TLS, nor sign in as a client.
        Usage::Approver => params
            .custom_extensions
            .push(CustomExtension::from_oid_content(
                &[2, 5, 29, 37],
                crate::approval::eku_extension_content(),
            )),
    }
    params.use_authority_key_identifier_extension = true;
    let year = this_year();
    params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    params.not_after = match days {
        Some(days) => {
            rcgen::date_time_ymd(1970, 1, 1)
                + std::time::Duration::from_secs(
                    (expiry::now() as u64).saturating_add(u64::from(days) * 86_400),
                )
        }
        None => rcgen::date_time_ymd(year + 3, 1, 1),
    };
    let cert = params.signed_by(&key, &ca)?;
    write_file(&key_path, key.serialize_pem().as_bytes(), true)?;
    write_file(&cert_path, cert.pem().as_bytes(), false)?;
    Ok(Issued {
        cert: cert_path,
        key: key_path,
    })
}

/// Issues a server certificate for an agent reachable as `host` (a DNS name or an IP
/// address): `agent-<host>.pem` and `agent-<host>-key.pem`. `localhost` also covers
/// 127.0.0.1 and ::1. Refuses to replace existing ones.
pub fn issue_agent(dir: &Path, host: &str) -> Result<Issued> {
    issue_agent_with(dir, host, Existing::Refuse)
}

/// [`issue_agent`], replacing existing files when asked to.
pub fn issue_agent_with(dir: &Path, host: &str, existing: Existing) -> Result<Issued> {
    issue_agent_for(dir, host, existing, None)
}

/// [`issue_agent_with`], valid for `days` from now (default: until January 1st in three years).
pub fn issue_agent_for(
    dir: &Path,
    host: &str,
    existing: Existing,
    days: Option<u32>,
) -> Result<Issued> {
    check_name(host)?;
    let mut sans = Vec::new();
    match host.parse::<IpAddr>() {
        Ok(ip) => sans.push(SanType::IpAddress(ip)),
        Err(_) => {
            sans.push(SanType::DnsName(host.try_into()?));
            if host == "localhost" {
                sans.push(SanType::IpAddress(IpAddr::from([127, 0, 0, 1])));
                sans.push(SanType::IpAddress("::1".parse().expect("valid")));
            }
        }
    }
    let stem = format!("agent-{}", host.replace(':', "_"));
    issue(
        dir,
        &stem,
        host,
        sans,
        Usage::Tls(ExtendedKeyUsagePurpose::ServerAuth),
        existing,
        days,
    )
}

/// Issues a client certificate for the CLI or a CI job: `client-<name>.pem` and
/// `client-<name>-key.pem`. Refuses to replace existing ones.
pub fn issue_client(dir: &Path, name: &str) -> Result<Issued> {
    issue_client_with(dir, name, Existing::Refuse)
}

/// [`issue_client`], replacing existing files when asked to.
pub fn issue_client_with(dir: &Path, name: &str, existing: Existing) -> Result<Issued> {
    issue_client_for(dir, name, existing, None)
}

/// [`issue_client_with`], valid for `days` from now.
pub fn issue_client_for(
    dir: &Path,
    name: &str,
    existing: Existing,
    days: Option<u32>,
) -> Result<Issued> {
    check_name(name)?;
    issue(
        dir,
        &format!("client-{name}"),
        name,
        Vec::new(),
        Usage::Tls(ExtendedKeyUsagePurpose::ClientAuth),
        existing,
        days,
    )
}

/// Issues an approver certificate for a person: `approver-<name>.pem` and
/// `approver-<name>-key.pem`, with the approver usage only (see [`crate::approval`]).
pub fn issue_approver(dir: &Path, name: &str) -> Result<Issued> {
    issue_approver_with(dir, name, Existing::Refuse)
}

/// [`issue_approver`], replacing existing files when asked to.
pub fn issue_approver_with(dir: &Path, name: &str, existing: Existing) -> Result<Issued> {
    issue_approver_for(dir, name, existing, None)
}

/// [`issue_approver_with`], valid for `days` from now.
pub fn issue_approver_for(
    dir: &Path,
    name: &str,
    existing: Existing,
    days: Option<u32>,
) -> Result<Issued> {
    check_name(name)?;
    issue(
        dir,
        &format!("approver-{name}"),
        name,
        Vec::new(),
        Usage::Approver,
        existing,
        days,
    )
}

/// One DER element of a certificate: (tag, contents, rest), or `None` when `der` is cut short
/// or its length takes more than four bytes. Read by the approval and client-usage checks.
pub(crate) fn tlv(der: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = der.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |a, b| (a << 8) | *b as usize);
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_then_issue_writes_pem_files_with_private_keys() {
        let dir = tempfile::tempdir().unwrap();
        let ca = init(dir.path()).unwrap();
        assert!(
            std::fs::read_to_string(&ca.cert)
                .unwrap()
                .contains("BEGIN CERTIFICATE")
        );
        assert!(matches!(init(dir.path()), Err(PkiError::CaExists(_))));
        let agent = issue_agent(dir.path(), "127.0.0.1").unwrap();
        assert!(agent.key.is_file() && agent.cert.is_file());
        let client = issue_client(dir.path(), "ci").unwrap();
        assert!(client.cert.ends_with("client-ci.pem"));
        #[cfg(unix)]
        for key in [&ca.key, &agent.key, &client.key] {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(key).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", key.display());
        }
        assert!(matches!(
            issue_client(dir.path(), "../x"),
            Err(PkiError::BadName(_))
        ));
        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(
            issue_client(empty.path(), "x"),
            Err(PkiError::NoCa(_))
        ));
        // Issuing again refuses to replace, unless told to (issue 17, "also seen").
        let before = std::fs::read(&client.key).unwrap();
        assert!(matches!(
            issue_client(dir.path(), "ci"),
            Err(PkiError::Exists(_))
        ));
        assert_eq!(std::fs::read(&client.key).unwrap(), before);
        issue_client_with(dir.path(), "ci", Existing::Replace).unwrap();
        assert_ne!(std::fs::read(&client.key).unwrap(), before);
    }

    /// W14 (issue 17): keys were written through a predictable temp file without
    /// `O_EXCL`/`O_NOFOLLOW`: a planted 0644 `.ca-key.pem.tmp` left the CA key 0644, a planted
    /// link wrote it elsewhere. Now what is planted is never written through.
    #[cfg(unix)]
    #[test]
    fn keys_are_not_written_through_planted_temp_files_or_links() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = dir.path().join("elsewhere");
        std::fs::write(&elsewhere, "").unwrap();
        let pki = dir.path().join("pki");
        std::fs::create_dir(&pki).unwrap();
        // Both forms an attacker could plant, at the old predictable name.
        std::fs::write(pki.join(".ca-key.pem.tmp"), "").unwrap();
        std::fs::set_permissions(
            pki.join(".ca-key.pem.tmp"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        std::os::unix::fs::symlink(&elsewhere, pki.join(".ca.pem.tmp")).unwrap();
        let ca = init(&pki).unwrap();
        let mode = std::fs::metadata(&ca.key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(!std::fs::symlink_metadata(&ca.key).unwrap().is_symlink());
        assert_eq!(std::fs::read_to_string(&elsewhere).unwrap(), "");
    }
}
