//! `sluice token`: a session token signed with the gateway's own HS256
//! secret, for development, scripts and a first try with one's own data.
//! In production the control plane signs tokens; this makes the same
//! claims, checked the way the gateway will check them, so a token it
//! prints is one the gateway accepts.

use sluice_protocol::units::{parse_bytes, parse_seconds};

use super::token::{now_s, sign_hs256, Claims, Mode};
use crate::config::MIN_TOKEN_SECRET_BYTES;
use crate::ids::{EdgeId, SessionId};

/// Longest life `sluice token` signs: a development token that outlives a
/// day is a credential someone forgot.
pub const MAX_TTL_S: u64 = 86_400;

/// What the user asked for, as typed.
#[derive(Debug, Clone)]
pub struct Request {
    pub sid: Option<String>,
    pub sub: String,
    pub tenant: String,
    pub edge: String,
    pub mode: Mode,
    pub datasets: Vec<String>,
    pub quota: Option<String>,
    pub ttl: String,
}

/// A signed token and what it says.
#[derive(Debug)]
pub struct Minted {
    pub token: String,
    pub claims: Claims,
}

/// Checks the request and the secret, then signs.
pub fn mint(req: &Request, secret: &str) -> Result<Minted, String> {
    if secret.is_empty() {
        return Err("no HS256 secret: set SLUICE_TOKEN_SECRET (or auth.hs256_secret in --config), the same one the gateway uses".into());
    }
    if secret.len() < MIN_TOKEN_SECRET_BYTES {
        return Err(format!(
            "the HS256 secret is {} bytes; the gateway refuses secrets under {MIN_TOKEN_SECRET_BYTES} bytes (make one with `openssl rand -base64 32`)",
            secret.len()
        ));
    }
    let sid = match &req.sid {
        Some(s) => s.clone(),
        None => random_sid()?,
    };
    if SessionId::parse(&sid).is_none() {
        return Err(format!(
            "--sid {sid:?} is not a valid session id (1-128 of A-Z a-z 0-9 . _ ~ : -)"
        ));
    }
    if EdgeId::parse(&req.edge).is_none() {
        return Err(format!(
            "--edge {:?} is not a valid edge id (1-128 of A-Z a-z 0-9 . _ ~ : -)",
            req.edge
        ));
    }
    if req.tenant.trim().is_empty() {
        return Err("--tenant must not be empty".into());
    }
    if req.sub.trim().is_empty() {
        return Err("--sub must not be empty".into());
    }
    if let Some(d) = req.datasets.iter().find(|d| d.trim().is_empty()) {
        return Err(format!("--dataset {d:?} is empty"));
    }
    let ttl = parse_seconds(&req.ttl).map_err(|e| format!("--ttl: {e}"))?;
    if ttl == 0 || ttl > MAX_TTL_S {
        return Err(format!(
            "--ttl must be between 1s and 24h (got {})",
            req.ttl
        ));
    }
    let quota = req
        .quota
        .as_deref()
        .map(parse_bytes)
        .transpose()
        .map_err(|e| format!("--quota: {e}"))?;
    let claims = Claims {
        sid,
        sub: req.sub.clone(),
        tenant: req.tenant.clone(),
        edge: req.edge.clone(),
        mode: req.mode,
        datasets: (!req.datasets.is_empty()).then(|| req.datasets.clone()),
        quota,
        exp: now_s() + ttl,
        jti: None,
        client: None,
    };
    Ok(Minted {
        token: sign_hs256(&claims, secret.as_bytes()),
        claims,
    })
}

/// `s-` and 16 hex digits from the kernel's random source.
fn random_sid() -> Result<String, String> {
    use std::io::Read;
    let mut b = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(|e| format!("cannot read /dev/urandom for a session id ({e}); pass --sid"))?;
    Ok(format!(
        "s-{}",
        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::token::Verifier;
    use crate::config::Auth;

    const SECRET: &str = "dev-token-test-secret-0123456789abcdef";

    fn req() -> Request {
        Request {
            sid: Some("s-1".into()),
            sub: "alice".into(),
            tenant: "acme".into(),
            edge: "edge-a".into(),
            mode: Mode::Query,
            datasets: vec!["orders".into()],
            quota: Some("5MB".into()),
            ttl: "15m".into(),
        }
    }

    #[test]
    fn the_gateway_accepts_what_it_signs() {
        let m = mint(&req(), SECRET).unwrap();
        let auth = Auth {
            hs256_secret: SECRET.into(),
            ..Auth::default()
        };
        let v = Verifier::from_config(&auth).unwrap();
        let c = v
            .verify(&m.token, &SessionId::parse("s-1").unwrap())
            .unwrap();
        assert_eq!(c.tenant, "acme");
        assert_eq!(c.quota, Some(5_000_000));
        assert_eq!(c.datasets.as_deref(), Some(&["orders".to_string()][..]));
        assert!(c.exp >= now_s() + 890 && c.exp <= now_s() + 900);
    }

    #[test]
    fn refuses_what_the_gateway_would() {
        assert!(mint(&req(), "")
            .unwrap_err()
            .contains("SLUICE_TOKEN_SECRET"));
        assert!(mint(&req(), "short").unwrap_err().contains("32 bytes"));
        let bad = |f: fn(&mut Request)| {
            let mut r = req();
            f(&mut r);
            mint(&r, SECRET).unwrap_err()
        };
        assert!(bad(|r| r.sid = Some("a/b".into())).contains("--sid"));
        assert!(bad(|r| r.edge = "".into()).contains("--edge"));
        assert!(bad(|r| r.ttl = "2d".into()).contains("24h"));
        assert!(bad(|r| r.ttl = "soon".into()).contains("--ttl"));
        assert!(bad(|r| r.quota = Some("lots".into())).contains("--quota"));
    }

    #[test]
    fn a_random_session_id_when_none_is_given() {
        let mut r = req();
        r.sid = None;
        let a = mint(&r, SECRET).unwrap().claims.sid;
        let b = mint(&r, SECRET).unwrap().claims.sid;
        assert!(a.starts_with("s-") && a.len() == 18 && a != b);
    }
}
