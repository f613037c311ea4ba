//! `sluice certs`: a development CA, the gateway's server certificate and
//! one client certificate per tenant (CN = tenant id), in seed 002's
//! layout:
//!
//! ```text
//! certs/
//! ├── ca.crt  ca.key            the CA (ca.key: keep it off the gateway)
//! ├── server.crt  server.key    the gateway (tls.cert_file, tls.key_file)
//! └── clients/{tenant}/
//!     ├── client.crt  client.key  the connector's identity
//!     └── ca.crt                  to verify the gateway
//! ```
//!
//! Running it again reuses the CA and adds what is missing, so a new
//! tenant is one more run; `--force` reissues the server and named tenants'
//! certificates. For production, use your own CA: the gateway only needs
//! PEM files.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use thiserror::Error;
use time::{Duration, OffsetDateTime};

#[derive(Debug, Error)]
pub enum CertsError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Existing { path: String, reason: String },
    #[error("invalid tenant id {0:?}: use 1-64 of A-Z a-z 0-9 . _ -")]
    Tenant(String),
    #[error("cannot make a certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
}

/// When a certificate is valid.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// From an hour ago (clocks disagree) to `days` from now.
    pub fn days(days: u32) -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            not_before: now - Duration::hours(1),
            not_after: now + Duration::days(i64::from(days)),
        }
    }
}

/// What `sluice certs` did, one line per file.
#[derive(Debug, Default)]
pub struct Report {
    pub lines: Vec<String>,
}

pub struct Request {
    pub out: PathBuf,
    pub tenants: Vec<String>,
    /// DNS names and IP addresses the server certificate covers.
    pub hosts: Vec<String>,
    pub days: u32,
    pub force: bool,
}

pub fn valid_tenant(t: &str) -> bool {
    (1..=64).contains(&t.len())
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

pub fn run(req: &Request) -> Result<Report, CertsError> {
    for t in &req.tenants {
        if !valid_tenant(t) {
            return Err(CertsError::Tenant(t.clone()));
        }
    }
    let mut report = Report::default();
    let dir = &req.out;
    mkdir(dir)?;
    let (ca_pem, ca_key) = ca(dir, req.days.max(3650), &mut report)?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, &ca_key)?;
    let server_crt = dir.join("server.crt");
    if req.force || !server_crt.exists() {
        let mut p = CertificateParams::new(req.hosts.clone())?;
        p.distinguished_name.push(
            DnType::CommonName,
            req.hosts.first().cloned().unwrap_or_default(),
        );
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        leaf(&mut p, Validity::days(req.days));
        let key = KeyPair::generate()?;
        let cert = p.signed_by(&key, &issuer)?;
        write_key(&dir.join("server.key"), &key.serialize_pem())?;
        write(&server_crt, &cert.pem())?;
        report.lines.push(format!(
            "wrote {} for {}",
            server_crt.display(),
            req.hosts.join(", ")
        ));
    } else {
        report
            .lines
            .push(format!("kept {} (--force reissues)", server_crt.display()));
    }
    for t in &req.tenants {
        let at = dir.join("clients").join(t);
        if !req.force && at.join("client.crt").exists() {
            report.lines.push(format!(
                "kept {} (--force reissues)",
                at.join("client.crt").display()
            ));
            continue;
        }
        let written = issue_client(dir, t, Validity::days(req.days))?;
        report
            .lines
            .push(format!("wrote {} (CN={t})", written.display()));
    }
    Ok(report)
}

/// Signs a client certificate for `tenant` with the CA in `dir` and writes
/// `dir/clients/{tenant}/{client.crt, client.key, ca.crt}`. Public so an
/// operator's tooling (and the tests: an expired certificate) can pick the
/// validity.
pub fn issue_client(dir: &Path, tenant: &str, validity: Validity) -> Result<PathBuf, CertsError> {
    if !valid_tenant(tenant) {
        return Err(CertsError::Tenant(tenant.to_owned()));
    }
    let ca_pem = read(&dir.join("ca.crt"))?;
    let ca_key = key_from(&dir.join("ca.key"))?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, &ca_key)?;
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name.push(DnType::CommonName, tenant);
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p.not_before = validity.not_before;
    p.not_after = validity.not_after;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let key = KeyPair::generate()?;
    let cert = p.signed_by(&key, &issuer)?;
    let at = dir.join("clients").join(tenant);
    mkdir(&at)?;
    write_key(&at.join("client.key"), &key.serialize_pem())?;
    write(&at.join("client.crt"), &cert.pem())?;
    write(&at.join("ca.crt"), &ca_pem)?;
    Ok(at.join("client.crt"))
}

fn leaf(p: &mut CertificateParams, v: Validity) {
    p.not_before = v.not_before;
    p.not_after = v.not_after;
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
}

/// Loads the CA in `dir`, or makes one.
fn ca(dir: &Path, days: u32, report: &mut Report) -> Result<(String, KeyPair), CertsError> {
    let (crt, key) = (dir.join("ca.crt"), dir.join("ca.key"));
    match (crt.exists(), key.exists()) {
        (true, true) => {
            report
                .lines
                .push(format!("kept {} (the existing CA)", crt.display()));
            Ok((read(&crt)?, key_from(&key)?))
        }
        (false, false) => {
            let mut p = CertificateParams::new(Vec::<String>::new())?;
            p.distinguished_name
                .push(DnType::CommonName, "Sluice development CA");
            p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
            p.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            let v = Validity::days(days);
            p.not_before = v.not_before;
            p.not_after = v.not_after;
            let k = KeyPair::generate()?;
            let cert = p.self_signed(&k)?;
            write_key(&key, &k.serialize_pem())?;
            write(&crt, &cert.pem())?;
            report.lines.push(format!("wrote {}", crt.display()));
            Ok((cert.pem(), k))
        }
        _ => Err(CertsError::Existing {
            path: dir.display().to_string(),
            reason: "has only one of ca.crt and ca.key; move it away or restore the other".into(),
        }),
    }
}

fn mkdir(p: &Path) -> Result<(), CertsError> {
    fs::create_dir_all(p).map_err(|source| CertsError::Io {
        path: p.display().to_string(),
        source,
    })
}

fn read(p: &Path) -> Result<String, CertsError> {
    fs::read_to_string(p).map_err(|source| CertsError::Io {
        path: p.display().to_string(),
        source,
    })
}

fn key_from(p: &Path) -> Result<KeyPair, CertsError> {
    KeyPair::from_pem(&read(p)?).map_err(|e| CertsError::Existing {
        path: p.display().to_string(),
        reason: format!("not a PEM private key: {e}"),
    })
}

fn write(p: &Path, text: &str) -> Result<(), CertsError> {
    fs::write(p, text).map_err(|source| CertsError::Io {
        path: p.display().to_string(),
        source,
    })
}

/// Private keys are created readable by their owner only.
fn write_key(p: &Path, text: &str) -> Result<(), CertsError> {
    let io = |source| CertsError::Io {
        path: p.display().to_string(),
        source,
    };
    let _ = fs::remove_file(p);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(p)
        .map_err(io)?;
    f.write_all(text.as_bytes()).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::pem::PemObject;

    #[test]
    fn makes_the_layout_and_reuses_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        let req = Request {
            out: dir.path().to_owned(),
            tenants: vec!["acme".into()],
            hosts: vec!["localhost".into(), "127.0.0.1".into()],
            days: 30,
            force: false,
        };
        run(&req).unwrap();
        for f in [
            "ca.crt",
            "ca.key",
            "server.crt",
            "server.key",
            "clients/acme/client.crt",
            "clients/acme/client.key",
            "clients/acme/ca.crt",
        ] {
            assert!(dir.path().join(f).exists(), "{f} missing");
        }
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(dir.path().join("ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let ca_before = fs::read(dir.path().join("ca.crt")).unwrap();
        let req2 = Request {
            tenants: vec!["globex".into()],
            ..req
        };
        run(&req2).unwrap();
        assert_eq!(fs::read(dir.path().join("ca.crt")).unwrap(), ca_before);
        let leaf = fs::read(dir.path().join("clients/globex/client.crt")).unwrap();
        let der = rustls::pki_types::CertificateDer::from_pem_slice(&leaf).unwrap();
        assert_eq!(
            crate::tls::material::tenant_of(&der).as_deref(),
            Some("globex")
        );
        assert!(matches!(
            run(&Request {
                tenants: vec!["../evil".into()],
                ..req2
            }),
            Err(CertsError::Tenant(_))
        ));
    }
}
