//! The FS provider (seed 004): one folder per tenant under
//! `DATA_DIR/tenants/`, holding its settings, plans, clients, datasets,
//! edges and signing keys as TOML files an operator can read and diff.
//!
//! Writers (the admin CLI) take the tenant's lock file, write each file to a
//! temporary name and rename it into place, then replace `.generation`. A
//! reader (the server) re-reads a tenant only when `.generation` changed, so
//! a decision costs one `stat`, and never sees half a write.
//!
//! There is no fallback between tenants: a missing tenant folder is
//! [`TenantError::Unknown`], a folder without `tenant.toml` is
//! [`TenantError::NotConfigured`]; neither ever yields another tenant's data.

use sluice_protocol::sync::lock;
use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Tenant slug: 1–64 of `[a-z0-9_-]`, so it is safe as a folder name and in
/// Redis keys.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TenantSlug(String);

impl TenantSlug {
    pub fn parse(s: &str) -> Option<Self> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        ok.then(|| Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for TenantSlug {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Self::parse(&s).ok_or_else(|| format!("invalid tenant slug {s:?}"))
    }
}

impl From<TenantSlug> for String {
    fn from(s: TenantSlug) -> String {
        s.0
    }
}

impl std::fmt::Display for TenantSlug {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Ids of clients, datasets, edges, plans: the gateway's id alphabet.
pub fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b':'))
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    #[serde(default)]
    pub name: String,
    /// Life of the session tokens this tenant's access decisions sign.
    #[serde(default = "default_ttl")]
    pub session_ttl_s: u64,
    #[serde(default)]
    pub user_auth: UserAuth,
}

fn default_ttl() -> u64 {
    900
}

/// How the users calling `/control/access` prove who they are: a bearer
/// JWT checked with an HS256 secret (sealed), or Ed25519/RSA keys from a
/// JWKS file or URL (the tenant's identity provider).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UserAuth {
    /// Sealed HS256 secret (`v1:…`).
    pub hs256_secret: String,
    pub jwks_url: String,
    pub jwks_file: String,
    /// Required `iss` when set.
    pub issuer: String,
    /// Required `aud` when set.
    pub audience: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    pub id: String,
    /// Sessions a client may hold at once (0 = no limit).
    #[serde(default)]
    pub max_streams: u32,
    /// Bytes one session may receive (the token's `quota`; 0 = no limit).
    #[serde(default)]
    pub session_quota_bytes: u64,
    /// Bytes granted to a client's sessions over any hour (0 = no limit).
    #[serde(default)]
    pub hourly_quota_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Client {
    pub id: String,
    pub plan: String,
    /// Datasets this client may read; `["*"]` = every dataset of the tenant.
    #[serde(default)]
    pub datasets: Vec<String>,
    /// Users (`sub`) allowed to act for this client; empty = any user the
    /// tenant authenticates.
    #[serde(default)]
    pub subjects: Vec<String>,
    #[serde(default)]
    pub disabled: bool,
}

impl Client {
    pub fn may_read(&self, dataset: &str) -> bool {
        self.datasets.iter().any(|d| d == "*" || d == dataset)
    }

    pub fn may_act_as(&self, sub: &str) -> bool {
        self.subjects.is_empty() || self.subjects.iter().any(|s| s == sub)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dataset {
    pub id: String,
    /// The edge whose connector serves it.
    pub edge: String,
    /// Its name at the connector, when it differs from `id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl Dataset {
    pub fn connector_name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.id)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Edge {
    pub id: String,
    /// Sealed pre-shared key.
    pub key: String,
    /// `sha256:<hex>` of the key: what the gateway's `edge_keys` holds.
    pub key_hash: String,
}

/// One Ed25519 signing key. The private half is sealed.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyFile {
    pub kid: String,
    pub created_at: u64,
    /// Set when a newer key replaced it; it stays published until every
    /// token it signed has expired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired_at: Option<u64>,
    /// base64url of the 32-byte public key (the JWK `x`).
    pub public_x: String,
    /// Sealed PKCS#8 DER of the private key.
    pub private: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Plans {
    #[serde(default)]
    plan: Vec<Plan>,
}
#[derive(Debug, Default, Serialize, Deserialize)]
struct Clients {
    #[serde(default)]
    client: Vec<Client>,
}
#[derive(Debug, Default, Serialize, Deserialize)]
struct Datasets {
    #[serde(default)]
    dataset: Vec<Dataset>,
}
#[derive(Debug, Default, Serialize, Deserialize)]
struct Edges {
    #[serde(default)]
    edge: Vec<Edge>,
}

/// Everything one tenant is, as read from its folder.
#[derive(Debug, Clone)]
pub struct Tenant {
    pub slug: TenantSlug,
    pub settings: Settings,
    pub plans: Vec<Plan>,
    pub clients: Vec<Client>,
    pub datasets: Vec<Dataset>,
    pub edges: Vec<Edge>,
    pub keys: Vec<KeyFile>,
}

impl Tenant {
    /// A tenant with default settings and nothing in it yet.
    pub fn new(slug: TenantSlug) -> Tenant {
        Tenant {
            settings: Settings {
                name: slug.to_string(),
                session_ttl_s: default_ttl(),
                user_auth: UserAuth::default(),
            },
            slug,
            plans: vec![],
            clients: vec![],
            datasets: vec![],
            edges: vec![],
            keys: vec![],
        }
    }

    pub fn client(&self, id: &str) -> Option<&Client> {
        self.clients.iter().find(|c| c.id == id)
    }
    pub fn plan(&self, id: &str) -> Option<&Plan> {
        self.plans.iter().find(|p| p.id == id)
    }
    pub fn dataset(&self, id: &str) -> Option<&Dataset> {
        self.datasets.iter().find(|d| d.id == id)
    }
    pub fn edge(&self, id: &str) -> Option<&Edge> {
        self.edges.iter().find(|e| e.id == id)
    }
}

#[derive(Debug, Error)]
pub enum TenantError {
    #[error("unknown tenant {0}")]
    Unknown(String),
    #[error("tenant {0} has no settings (tenant.toml missing)")]
    NotConfigured(String),
    #[error("{path}: {msg}")]
    Corrupt { path: String, msg: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
    /// The shared store (etcd) failed or could not be reached.
    #[error("{0}")]
    Store(String),
}

/// The data directory.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

const FILES: [&str; 5] = [
    "tenant.toml",
    "plans.toml",
    "clients.toml",
    "datasets.toml",
    "edges.toml",
];

impl DataDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn tenant_dir(&self, slug: &TenantSlug) -> PathBuf {
        self.root.join("tenants").join(slug.as_str())
    }

    pub fn tenants(&self) -> Vec<TenantSlug> {
        let mut out: Vec<_> = fs::read_dir(self.root.join("tenants"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| TenantSlug::parse(&e.file_name().to_string_lossy()))
            .collect();
        out.sort();
        out
    }

    /// What identifies the current state of a tenant's files (inode and
    /// mtime of `.generation`, replaced by every write).
    fn generation(&self, slug: &TenantSlug) -> Option<Generation> {
        let m = fs::metadata(self.tenant_dir(slug).join(".generation")).ok()?;
        Some((m.ino(), m.mtime(), m.mtime_nsec()))
    }

    pub fn load(&self, slug: &TenantSlug) -> Result<Tenant, TenantError> {
        let dir = self.tenant_dir(slug);
        if !dir.is_dir() {
            return Err(TenantError::Unknown(slug.to_string()));
        }
        let settings_path = dir.join("tenant.toml");
        if !settings_path.exists() {
            return Err(TenantError::NotConfigured(slug.to_string()));
        }
        let settings: Settings = read_toml(&settings_path)?;
        let plans: Plans = read_optional(&dir.join("plans.toml"))?;
        let clients: Clients = read_optional(&dir.join("clients.toml"))?;
        let datasets: Datasets = read_optional(&dir.join("datasets.toml"))?;
        let edges: Edges = read_optional(&dir.join("edges.toml"))?;
        let mut keys = Vec::new();
        let kdir = dir.join("keys");
        if kdir.is_dir() {
            let entries = fs::read_dir(&kdir).map_err(|e| io(&kdir, e))?;
            for e in entries.flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "toml") {
                    keys.push(read_toml::<KeyFile>(&p)?);
                }
            }
        }
        keys.sort_by_key(|k| (k.created_at, k.kid.clone()));
        Ok(Tenant {
            slug: slug.clone(),
            settings,
            plans: plans.plan,
            clients: clients.client,
            datasets: datasets.dataset,
            edges: edges.edge,
            keys,
        })
    }

    /// Changes a tenant under its lock and writes back what changed.
    /// `create` makes the folder for a new tenant.
    pub fn update<T>(
        &self,
        slug: &TenantSlug,
        create: bool,
        mut f: impl FnMut(&mut Tenant) -> Result<T, TenantError>,
    ) -> Result<T, TenantError> {
        let dir = self.tenant_dir(slug);
        if create {
            fs::create_dir_all(dir.join("keys")).map_err(|e| io(&dir, e))?;
        } else if !dir.is_dir() {
            return Err(TenantError::Unknown(slug.to_string()));
        }
        let lock_path = dir.join(".lock");
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| io(&lock_path, e))?;
        lock.lock().map_err(|e| io(&lock_path, e))?;
        let mut t = match self.load(slug) {
            Ok(t) => t,
            Err(TenantError::NotConfigured(_)) if create => Tenant::new(slug.clone()),
            Err(e) => return Err(e),
        };
        let before_keys: Vec<String> = t.keys.iter().map(|k| k.kid.clone()).collect();
        let out = f(&mut t)?;
        write_toml(&dir.join(FILES[0]), &t.settings)?;
        write_toml(&dir.join(FILES[1]), &Plans { plan: t.plans })?;
        write_toml(&dir.join(FILES[2]), &Clients { client: t.clients })?;
        write_toml(
            &dir.join(FILES[3]),
            &Datasets {
                dataset: t.datasets,
            },
        )?;
        write_toml(&dir.join(FILES[4]), &Edges { edge: t.edges })?;
        for k in &t.keys {
            write_toml(&dir.join("keys").join(format!("{}.toml", k.kid)), k)?;
        }
        for gone in before_keys
            .iter()
            .filter(|b| !t.keys.iter().any(|k| &k.kid == *b))
        {
            let p = dir.join("keys").join(format!("{gone}.toml"));
            fs::remove_file(&p).map_err(|e| io(&p, e))?;
        }
        let gen = dir.join(".generation");
        write_atomic(
            &gen,
            format!(
                "{}\n",
                chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0)
            )
            .as_bytes(),
        )?;
        drop(lock);
        Ok(out)
    }
}

fn io(p: &Path, source: std::io::Error) -> TenantError {
    TenantError::Io {
        path: p.display().to_string(),
        source,
    }
}

fn read_toml<T: DeserializeOwned>(p: &Path) -> Result<T, TenantError> {
    let text = fs::read_to_string(p).map_err(|e| io(p, e))?;
    toml::from_str(&text).map_err(|e| TenantError::Corrupt {
        path: p.display().to_string(),
        msg: e.message().to_owned(),
    })
}

fn read_optional<T: DeserializeOwned + Default>(p: &Path) -> Result<T, TenantError> {
    if p.exists() {
        read_toml(p)
    } else {
        Ok(T::default())
    }
}

fn write_toml<T: Serialize>(p: &Path, v: &T) -> Result<(), TenantError> {
    let text = toml::to_string_pretty(v).map_err(|e| TenantError::Invalid(e.to_string()))?;
    write_atomic(p, text.as_bytes())
}

/// Temporary file, fsync, rename: a reader sees the old file or the new.
fn write_atomic(p: &Path, bytes: &[u8]) -> Result<(), TenantError> {
    let tmp = p.with_extension("tmp");
    let mut f = fs::File::create(&tmp).map_err(|e| io(&tmp, e))?;
    f.write_all(bytes).map_err(|e| io(&tmp, e))?;
    f.sync_all().map_err(|e| io(&tmp, e))?;
    fs::rename(&tmp, p).map_err(|e| io(p, e))
}

/// Inode and mtime (s, ns) of a tenant's `.generation` file.
type Generation = (u64, i64, i64);

/// The server's view of the tenants: each re-read only when its files
/// changed.
pub struct TenantCache {
    dir: DataDir,
    cached: Mutex<HashMap<TenantSlug, (Generation, Arc<Tenant>)>>,
}

impl TenantCache {
    pub fn new(dir: DataDir) -> Self {
        Self {
            dir,
            cached: Mutex::new(HashMap::new()),
        }
    }

    pub fn dir(&self) -> &DataDir {
        &self.dir
    }

    pub fn get(&self, slug: &TenantSlug) -> Result<Arc<Tenant>, TenantError> {
        let gen = self.dir.generation(slug);
        if let Some(gen) = gen {
            let c = lock(&self.cached);
            if let Some((g, t)) = c.get(slug) {
                if *g == gen {
                    return Ok(t.clone());
                }
            }
        }
        let t = Arc::new(self.dir.load(slug)?);
        if let Some(gen) = gen {
            let mut c = lock(&self.cached);
            c.insert(slug.clone(), (gen, t.clone()));
        }
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_checked() {
        assert!(TenantSlug::parse("acme-2").is_some());
        assert!(TenantSlug::parse("../etc").is_none());
        assert!(TenantSlug::parse("Acme").is_none());
        assert!(TenantSlug::parse("").is_none());
    }

    #[test]
    fn missing_tenant_and_missing_settings_are_distinct_errors() {
        let tmp = std::env::temp_dir().join(format!("sluice-tenants-{}", std::process::id()));
        let dir = DataDir::new(&tmp);
        let acme = TenantSlug::parse("acme").unwrap();
        assert!(matches!(dir.load(&acme), Err(TenantError::Unknown(_))));
        fs::create_dir_all(dir.tenant_dir(&acme)).unwrap();
        assert!(matches!(
            dir.load(&acme),
            Err(TenantError::NotConfigured(_))
        ));
        dir.update(&acme, true, |t| {
            t.plans.push(Plan {
                id: "pro".into(),
                max_streams: 2,
                session_quota_bytes: 0,
                hourly_quota_bytes: 0,
            });
            Ok(())
        })
        .unwrap();
        let cache = TenantCache::new(dir.clone());
        assert_eq!(cache.get(&acme).unwrap().plans.len(), 1);
        dir.update(&acme, false, |t| {
            t.plans.clear();
            Ok(())
        })
        .unwrap();
        assert_eq!(
            cache.get(&acme).unwrap().plans.len(),
            0,
            "cache sees the write"
        );
        fs::write(dir.tenant_dir(&acme).join("clients.toml"), "client = 3").unwrap();
        let e = dir.load(&acme).unwrap_err().to_string();
        assert!(e.contains("clients.toml"), "{e}");
        let _ = fs::remove_dir_all(&tmp);
    }
}
