//! Where the tenants live: the data directory (one node, the embedded
//! default) or etcd (`--etcd`, several nodes). The admin commands write
//! through [`Catalog`]; the server reads through [`Catalog::get`], which
//! for etcd is the watch-fed in-memory copy (never a read of etcd on the
//! request path).

use std::sync::Arc;

use crate::etcd::EtcdTenants;
use crate::tenants::{DataDir, Tenant, TenantCache, TenantError, TenantSlug};

pub enum Catalog {
    Dir(TenantCache),
    Etcd(Arc<EtcdTenants>),
}

impl Catalog {
    pub fn dir(dir: DataDir) -> Catalog {
        Catalog::Dir(TenantCache::new(dir))
    }

    pub fn tenants(&self) -> Result<Vec<TenantSlug>, TenantError> {
        match self {
            Catalog::Dir(c) => Ok(c.dir().tenants()),
            Catalog::Etcd(e) => e.tenants(),
        }
    }

    /// The tenant as stored now (a read of the folder, or of etcd).
    pub fn load(&self, slug: &TenantSlug) -> Result<Tenant, TenantError> {
        match self {
            Catalog::Dir(c) => c.dir().load(slug),
            Catalog::Etcd(e) => e.load(slug),
        }
    }

    /// Changes one tenant atomically; `f` may run more than once (etcd
    /// reapplies it after losing a race), so it must only read its input.
    pub fn update<T>(
        &self,
        slug: &TenantSlug,
        create: bool,
        f: impl FnMut(&mut Tenant) -> Result<T, TenantError>,
    ) -> Result<T, TenantError> {
        match self {
            Catalog::Dir(c) => c.dir().update(slug, create, f),
            Catalog::Etcd(e) => e.update(slug, create, f),
        }
    }

    /// What the server decides with: the folder re-read when it changed,
    /// or etcd's in-memory copy.
    pub fn get(&self, slug: &TenantSlug) -> Result<Arc<Tenant>, TenantError> {
        match self {
            Catalog::Dir(c) => c.get(slug),
            Catalog::Etcd(e) => e.get(slug),
        }
    }

    /// `Some(false)` while etcd is unreachable (decisions continue from the
    /// copy; writes fail); `None` for the data directory.
    pub fn etcd_up(&self) -> Option<bool> {
        match self {
            Catalog::Dir(_) => None,
            Catalog::Etcd(e) => Some(e.state.up.load(std::sync::atomic::Ordering::Relaxed)),
        }
    }
}
