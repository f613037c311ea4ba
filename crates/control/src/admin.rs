//! Admin changes to the tenants (what the `sluice-control` CLI subcommands
//! do), in the data directory or in etcd ([`Catalog`]). Each change is
//! atomic for its tenant (the folder's lock, or an etcd transaction that a
//! concurrent write makes reapply), is validated before anything is
//! written, and is recorded in the audit log without its secrets. A change
//! may be applied more than once (after a lost race), so each closure only
//! reads what it is given.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use rand::RngCore;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::audit::Audit;
use crate::catalog::Catalog;
use crate::keys;
use crate::secret::MasterKey;
use crate::tenants::{valid_id, Client, Dataset, Edge, Plan, TenantError, TenantSlug, UserAuth};

pub struct Admin<'a> {
    pub store: &'a Catalog,
    pub audit: &'a Audit,
}

fn invalid(msg: impl Into<String>) -> TenantError {
    TenantError::Invalid(msg.into())
}

fn check_id(kind: &str, id: &str) -> Result<(), TenantError> {
    if valid_id(id) {
        Ok(())
    } else {
        Err(invalid(format!(
            "invalid {kind} id {id:?}: 1-128 characters of [A-Za-z0-9._~:-]"
        )))
    }
}

/// `sha256:<hex>`: the gateway's `edge_keys` form.
pub fn key_hash(key: &str) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(key.as_bytes())))
}

/// What `tenant add` sets; `None` leaves a value as it was.
#[derive(Default)]
pub struct TenantSpec {
    pub name: Option<String>,
    pub session_ttl_s: Option<u64>,
    pub user_hs256_secret: Option<String>,
    pub user_jwks_url: Option<String>,
    pub user_jwks_file: Option<String>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
}

impl Admin<'_> {
    fn log(&self, action: &str, tenant: &TenantSlug, id: &str) {
        self.audit.record(
            "admin",
            json!({
                "action": action,
                "tenant": tenant.as_str(),
                "id": id,
                "by": std::env::var("USER").unwrap_or_default(),
            }),
        );
    }

    pub fn tenant_add(
        &self,
        slug: &TenantSlug,
        spec: TenantSpec,
        master: Option<&MasterKey>,
    ) -> Result<(), TenantError> {
        self.store.update(slug, true, |t| {
            let s = &mut t.settings;
            if let Some(n) = &spec.name {
                s.name = n.clone();
            }
            if let Some(ttl) = spec.session_ttl_s {
                if ttl == 0 || ttl > 24 * 3600 {
                    return Err(invalid("session TTL must be 1 s to 24 h"));
                }
                s.session_ttl_s = ttl;
            }
            let ua: &mut UserAuth = &mut s.user_auth;
            if let Some(secret) = &spec.user_hs256_secret {
                if secret.len() < 32 {
                    return Err(invalid("user HS256 secret must be at least 32 bytes"));
                }
                let m =
                    master.ok_or_else(|| invalid("sealing a secret needs SLUICE_MASTER_KEY"))?;
                ua.hs256_secret = m.seal(secret.as_bytes());
            }
            if let Some(u) = &spec.user_jwks_url {
                ua.jwks_url = u.clone();
            }
            if let Some(f) = &spec.user_jwks_file {
                ua.jwks_file = f.clone();
            }
            if let Some(i) = &spec.issuer {
                ua.issuer = i.clone();
            }
            if let Some(a) = &spec.audience {
                ua.audience = a.clone();
            }
            Ok(())
        })?;
        self.log("tenant.set", slug, slug.as_str());
        Ok(())
    }

    pub fn plan_add(&self, slug: &TenantSlug, plan: Plan) -> Result<(), TenantError> {
        check_id("plan", &plan.id)?;
        let id = plan.id.clone();
        self.store.update(slug, false, |t| {
            t.plans.retain(|p| p.id != plan.id);
            t.plans.push(plan.clone());
            Ok(())
        })?;
        self.log("plan.set", slug, &id);
        Ok(())
    }

    pub fn client_add(&self, slug: &TenantSlug, client: Client) -> Result<(), TenantError> {
        check_id("client", &client.id)?;
        let id = client.id.clone();
        self.store.update(slug, false, |t| {
            if t.plan(&client.plan).is_none() {
                return Err(invalid(format!(
                    "plan {:?} is not defined in tenant {slug} (add it first)",
                    client.plan
                )));
            }
            for d in client.datasets.iter().filter(|d| d.as_str() != "*") {
                if t.dataset(d).is_none() {
                    return Err(invalid(format!(
                        "dataset {d:?} is not defined in tenant {slug}"
                    )));
                }
            }
            t.clients.retain(|c| c.id != client.id);
            t.clients.push(client.clone());
            Ok(())
        })?;
        self.log("client.set", slug, &id);
        Ok(())
    }

    pub fn dataset_add(&self, slug: &TenantSlug, ds: Dataset) -> Result<(), TenantError> {
        check_id("dataset", &ds.id)?;
        check_id("edge", &ds.edge)?;
        let id = ds.id.clone();
        self.store.update(slug, false, |t| {
            if t.edge(&ds.edge).is_none() {
                return Err(invalid(format!(
                    "edge {:?} is not defined in tenant {slug} (add it first)",
                    ds.edge
                )));
            }
            t.datasets.retain(|d| d.id != ds.id);
            t.datasets.push(ds.clone());
            Ok(())
        })?;
        self.log("dataset.set", slug, &id);
        Ok(())
    }

    /// Adds an edge with `key`, or a fresh random one; returns the key
    /// (shown once to the operator; the file holds it sealed).
    pub fn edge_add(
        &self,
        slug: &TenantSlug,
        id: &str,
        key: Option<String>,
        master: &MasterKey,
    ) -> Result<String, TenantError> {
        check_id("edge", id)?;
        // Gateways know edges by id alone: one id, one tenant. (In etcd the
        // write itself claims the id, so a concurrent claim loses too.)
        for other in self.store.tenants()?.iter().filter(|o| *o != slug) {
            if let Ok(t) = self.store.load(other) {
                if t.edge(id).is_some() {
                    return Err(invalid(format!(
                        "edge id {id:?} already belongs to tenant {other}"
                    )));
                }
            }
        }
        let key = key.unwrap_or_else(|| {
            let mut b = [0u8; 32];
            rand::rngs::OsRng.fill_bytes(&mut b);
            B64URL.encode(b)
        });
        // What 128 random bits take in base64url; the gateway refuses
        // shorter keys too.
        if key.len() < 22 {
            return Err(invalid(
                "edge key must be at least 22 characters (128 bits)",
            ));
        }
        self.store.update(slug, false, |t| {
            t.edges.retain(|e| e.id != id);
            t.edges.push(Edge {
                id: id.to_owned(),
                key: master.seal(key.as_bytes()),
                key_hash: key_hash(&key),
            });
            Ok(())
        })?;
        self.log("edge.set", slug, id);
        Ok(key)
    }

    pub fn edge_key(
        &self,
        slug: &TenantSlug,
        id: &str,
        master: &MasterKey,
    ) -> Result<String, TenantError> {
        let t = self.store.load(slug)?;
        let e = t
            .edge(id)
            .ok_or_else(|| invalid(format!("no edge {id:?} in tenant {slug}")))?;
        let raw = master.open(&e.key).map_err(|e| invalid(e.to_string()))?;
        String::from_utf8(raw).map_err(|_| invalid("sealed edge key is not text"))
    }

    pub fn remove(&self, slug: &TenantSlug, kind: &str, id: &str) -> Result<(), TenantError> {
        self.store.update(slug, false, |t| {
            let before = t.plans.len() + t.clients.len() + t.datasets.len() + t.edges.len();
            match kind {
                "plan" => {
                    if t.clients.iter().any(|c| c.plan == id) {
                        return Err(invalid(format!("plan {id:?} is still used by a client")));
                    }
                    t.plans.retain(|p| p.id != id)
                }
                "client" => t.clients.retain(|c| c.id != id),
                "dataset" => t.datasets.retain(|d| d.id != id),
                "edge" => {
                    if t.datasets.iter().any(|d| d.edge == id) {
                        return Err(invalid(format!("edge {id:?} still serves a dataset")));
                    }
                    t.edges.retain(|e| e.id != id)
                }
                _ => return Err(invalid(format!("cannot remove a {kind}"))),
            }
            let after = t.plans.len() + t.clients.len() + t.datasets.len() + t.edges.len();
            if before == after {
                return Err(invalid(format!("no {kind} {id:?} in tenant {slug}")));
            }
            Ok(())
        })?;
        self.log(&format!("{kind}.remove"), slug, id);
        Ok(())
    }

    pub fn keys_rotate(
        &self,
        slug: &TenantSlug,
        master: &MasterKey,
    ) -> Result<String, TenantError> {
        let kid = self
            .store
            .update(slug, false, |t| Ok(keys::rotate(t, master)))?;
        self.log("keys.rotate", slug, &kid);
        Ok(kid)
    }

    /// `[edge_keys]` lines for the gateway's config, every tenant's edges.
    pub fn gateway_edge_keys(&self) -> Result<String, TenantError> {
        let mut out = String::from("[edge_keys]\n");
        for slug in self.store.tenants()? {
            let t = self.store.load(&slug)?;
            for e in &t.edges {
                out.push_str(&format!(
                    "{:?} = {:?}  # tenant {}\n",
                    e.id, e.key_hash, slug
                ));
            }
        }
        Ok(out)
    }
}

pub use sluice_protocol::units::parse_bytes;
