//! The HTTP service: routes, tenant resolution, credentials, audit.
//!
//! Request path for an access decision: resolve tenant → verify the user →
//! parse the body → static checks (client, dataset, plan, edge, key) → edge
//! online → reserve slot + quota → sign → audit → answer.

use sluice_protocol::sync::lock;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use sluice_protocol::lockout::{LockedOut, Lockout};
use subtle::ConstantTimeEq;

use crate::access::{self, AccessRequest, Ctx, Signers};
use crate::audit::Audit;
use crate::catalog::Catalog;
use crate::edges::Locator;
use crate::error::ApiError;
use crate::keys::{self, now_s};
use crate::link::Link;
use crate::secret::MasterKey;
use crate::store::Store;
use crate::tenants::{Tenant, TenantError, TenantSlug};
use crate::userauth::UserAuth;

pub struct App {
    pub tenants: Catalog,
    pub master: MasterKey,
    pub users: UserAuth,
    pub store: Store,
    pub locator: Locator,
    pub link: Option<Arc<Link>>,
    pub audit: Audit,
    /// SHA-256 of the admin token; `None` = admin endpoints disabled.
    pub admin_token: Option<[u8; 32]>,
    /// SHA-256 of the gateway's admin token (`SLUICE_GATEWAY_ADMIN_TOKEN`),
    /// which the gateway presents when it reports a session end; `None` =
    /// reports refused.
    pub gateway_token: Option<[u8; 32]>,
    pub signers: Signers,
    pub cors: Option<tower_http::cors::CorsLayer>,
    /// The request head must arrive within this, and each part of the
    /// body within this of the last (`--read-timeout-ms`).
    pub read_timeout: Duration,
    /// Failed admin and gateway tokens per source address.
    pub token_lockout: Lockout,
    /// The connections served at once (`--max-connections`); past the
    /// bound the oldest is closed.
    pub conns: Arc<Conns>,
}

/// Browsers on these origins (the dashboard) may call the API; `None` =
/// no cross-origin access.
pub fn cors(origins: &[String]) -> anyhow::Result<Option<tower_http::cors::CorsLayer>> {
    use axum::http::{HeaderName, HeaderValue, Method};
    if origins.is_empty() {
        return Ok(None);
    }
    let list = origins
        .iter()
        .map(|o| HeaderValue::from_str(o.trim_end_matches('/')))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(
        tower_http::cors::CorsLayer::new()
            .allow_origin(list)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                HeaderName::from_static("x-tenant-slug"),
            ])
            .max_age(std::time::Duration::from_secs(600)),
    ))
}

pub fn router(app: Arc<App>) -> Router {
    let cors = app.cors.clone();
    let r = Router::new()
        .route("/control/access", post(access_handler))
        .route("/control/validate/{sid}", get(validate_handler))
        .route("/control/revoke/{sid}", post(revoke_handler))
        .route("/control/release/{sid}", post(release_handler))
        .route("/control/ended/{sid}", post(ended_handler))
        .route("/.well-known/jwks.json", get(jwks_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready_handler))
        .route("/metrics", get(metrics_handler))
        .fallback(|| async { ApiError::new(404, "not_found", "no such endpoint") })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(
            app.read_timeout,
            whole_body,
        ))
        .with_state(app);
    match cors {
        Some(c) => r.layer(c),
        None => r,
    }
}

/// The largest request body any route takes.
const MAX_BODY: usize = 64 * 1024;

/// Reads a request's whole body before any handler sees it, within one
/// deadline for all of it: a body trickled a byte at a time cannot keep a
/// connection (or its buffer) past `--read-timeout-ms`, which a deadline
/// per piece would allow. A request that carries a body must carry its
/// credentials first: without an `Authorization` header the body is not
/// read at all.
async fn whole_body(
    State(limit): State<Duration>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    use axum::body::{Body, HttpBody};
    let (parts, body) = req.into_parts();
    if body.size_hint().upper() == Some(0) {
        return next
            .run(axum::extract::Request::from_parts(parts, body))
            .await;
    }
    if !parts.headers.contains_key(header::AUTHORIZATION) {
        // Not read: the handler refuses the missing credentials (and
        // audits the refusal) as it would with any body.
        let req = axum::extract::Request::from_parts(parts, Body::empty());
        return next.run(req).await;
    }
    let read = axum::body::to_bytes(body, MAX_BODY);
    match tokio::time::timeout(limit, read).await {
        Ok(Ok(bytes)) => {
            let req = axum::extract::Request::from_parts(parts, Body::from(bytes));
            next.run(req).await
        }
        Ok(Err(e)) if is_length_limit(&e) => {
            ApiError::new(413, "bad_request", "request body larger than 64 KiB").into_response()
        }
        Ok(Err(e)) => ApiError::new(400, "bad_request", format!("request body unreadable: {e}"))
            .into_response(),
        Err(_) => ApiError::new(
            408,
            "request_timeout",
            "the request body did not arrive in time (--read-timeout-ms)",
        )
        .into_response(),
    }
}

fn is_length_limit(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if err.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = err.source();
    }
    false
}

/// A client must send its whole request head within the read timeout
/// (then the connection closes), and each piece of its body within it of
/// the last (then 408): a partial request cannot hold a connection open.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long SIGTERM waits for requests in progress.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The client's address, put on every request of its connection: what
/// the token lockout counts failures by.
#[derive(Clone, Copy, Debug)]
pub struct Peer(pub std::net::IpAddr);

/// The connections served at once (`--max-connections`), oldest first.
/// At the bound a newcomer closes the oldest, as the gateway's listeners
/// do: a flood of idle or slow connections cannot keep the control plane
/// from its gateways and operators, and what they hold (a request head,
/// at most 64 KiB of body) is bounded per connection and in all.
pub struct Conns {
    max: usize,
    next: std::sync::atomic::AtomicU64,
    /// Connections closed to make room for newer ones.
    evicted: std::sync::atomic::AtomicU64,
    open: std::sync::Mutex<std::collections::VecDeque<(u64, tokio::sync::oneshot::Sender<()>)>>,
}

/// A connection's place among [`Conns`]; `evicted` fires when a newer one
/// took it.
pub struct Admitted {
    conns: Arc<Conns>,
    id: u64,
    evicted: tokio::sync::oneshot::Receiver<()>,
}

impl Conns {
    pub fn new(max: usize) -> Arc<Conns> {
        Arc::new(Conns {
            max: max.max(1),
            next: Default::default(),
            evicted: Default::default(),
            open: Default::default(),
        })
    }

    /// Open now, and evicted so far (for `/metrics`).
    pub fn counts(&self) -> (usize, u64) {
        let open = lock(&self.open).len();
        (
            open,
            self.evicted.load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    pub fn admit(self: &Arc<Self>) -> Admitted {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut open = lock(&self.open);
        while open.len() >= self.max {
            if let Some((_, oldest)) = open.pop_front() {
                let _ = oldest.send(());
                self.evicted
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        open.push_back((id, tx));
        Admitted {
            conns: self.clone(),
            id,
            evicted: rx,
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut open = lock(&self.conns.open);
        open.retain(|(id, _)| *id != self.id);
    }
}

/// Serves one accepted connection (plain, or TLS once the handshake is
/// done) with the read timeouts above, until it ends or is evicted.
pub async fn serve_connection<I>(
    io: I,
    peer: SocketAddr,
    routes: Router,
    read_timeout: Duration,
    mut place: Admitted,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use tower_service::Service;
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(Peer(peer.ip()));
        routes.clone().call(req)
    });
    let served = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(read_timeout)
        .serve_connection(hyper_util::rt::TokioIo::new(io), svc);
    tokio::select! {
        _ = served => {}
        _ = &mut place.evicted => tracing::debug!(%peer, "connection closed to make room (--max-connections)"),
    }
}

/// Plain HTTP until SIGTERM or Ctrl-C; then requests in progress get
/// [`SHUTDOWN_GRACE`].
pub async fn serve(app: Arc<App>, listener: tokio::net::TcpListener) -> std::io::Result<()> {
    let addr: SocketAddr = listener.local_addr()?;
    tracing::info!(%addr, "control plane listening");
    let read_timeout = app.read_timeout;
    let conns = app.conns.clone();
    let routes = router(app);
    let open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        };
        let (routes, open) = (routes.clone(), open.clone());
        open.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let place = conns.admit();
        tokio::spawn(async move {
            serve_connection(tcp, peer, routes, read_timeout, place).await;
            open.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        });
    }
    tracing::info!("shutting down");
    drain(&open).await;
    Ok(())
}

/// Waits (bounded) for open connections to finish.
pub async fn drain(open: &std::sync::atomic::AtomicUsize) {
    let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
    while open.load(std::sync::atomic::Ordering::Relaxed) > 0
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[derive(Deserialize, Default)]
struct TenantQuery {
    tenant: Option<String>,
}

/// `X-Tenant-Slug`, then `?tenant=`, then `local`.
fn tenant_slug(headers: &HeaderMap, q: &TenantQuery) -> Result<TenantSlug, ApiError> {
    // A header that is present but unreadable is an error, not a reason to
    // fall through to `?tenant=` or `local`.
    let header = match headers.get("x-tenant-slug") {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| ApiError::new(400, "bad_tenant", "invalid X-Tenant-Slug header"))?,
        ),
        None => None,
    };
    let raw = header.or(q.tenant.as_deref()).unwrap_or("local");
    TenantSlug::parse(raw).ok_or_else(|| ApiError::new(400, "bad_tenant", "invalid tenant slug"))
}

fn load_tenant(app: &App, slug: &TenantSlug) -> Result<Arc<Tenant>, ApiError> {
    app.tenants.get(slug).map_err(|e| match e {
        TenantError::Unknown(_) => {
            ApiError::new(404, "unknown_tenant", format!("no tenant {slug:?}"))
        }
        TenantError::NotConfigured(_) => ApiError::new(
            409,
            "tenant_not_configured",
            format!("tenant {slug:?} has no settings"),
        ),
        other => {
            tracing::error!(tenant = %slug, error = %other, "tenant cannot be loaded (its files, or etcd)");
            ApiError::new(
                503,
                "tenant_unreadable",
                format!("tenant {slug:?} configuration cannot be read"),
            )
        }
    })
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
}

fn require_admin(app: &App, peer: Option<Peer>, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(want) = &app.admin_token else {
        return Err(ApiError::new(
            403,
            "admin_disabled",
            "admin endpoints are disabled (SLUICE_CONTROL_ADMIN_TOKEN not set)",
        ));
    };
    require_bearer(app, peer, headers, want)
}

/// The gateway's reports carry the gateway's own admin token, which this
/// control plane holds anyway to call the gateway: no new secret.
fn require_gateway(app: &App, peer: Option<Peer>, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(want) = &app.gateway_token else {
        return Err(ApiError::new(
            403,
            "reports_disabled",
            "session-end reports are disabled (SLUICE_GATEWAY_ADMIN_TOKEN not set)",
        ));
    };
    require_bearer(app, peer, headers, want)
}

/// Checks a bearer token against `want`'s digest. A right token always
/// passes, even from an address locked out for failing too often
/// (`--admin-failures-per-minute`): the gateway's reports and the
/// operator's calls come from addresses a guesser may share (the same
/// host, a NAT, a proxy), and must never be locked out by it. A wrong one
/// costs the address a try, and once it has none is answered 429. The
/// tokens' length, not the lockout, is what defeats guessing.
fn require_bearer(
    app: &App,
    peer: Option<Peer>,
    headers: &HeaderMap,
    want: &[u8; 32],
) -> Result<(), ApiError> {
    let ip = peer.map(|p| p.0);
    let locked = ip.and_then(|ip| app.token_lockout.check(ip).err());
    let refusal = match bearer(headers) {
        None => ApiError::new(401, "missing_token", "admin bearer token required"),
        Some(given) => {
            // Digests of equal length, compared in constant time.
            let d: [u8; 32] = Sha256::digest(given.as_bytes()).into();
            if bool::from(d.ct_eq(want)) {
                return Ok(());
            }
            ApiError::new(401, "invalid_token", "admin token is not valid")
        }
    };
    if let Some(LockedOut(wait)) = locked {
        return Err(ApiError::new(
            429,
            "too_many_failures",
            "too many failed authentications from this address; retry later",
        )
        .retry_after(wait.as_secs() + 1));
    }
    if let Some(ip) = ip {
        app.token_lockout.failed(ip);
    }
    Err(refusal)
}

/// A body that could not be read: too slow (408), too large (413), or
/// otherwise unreadable (400).
fn body_refused(e: &BytesRejection) -> ApiError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if err.is::<tower_http::timeout::TimeoutError>() {
            return ApiError::new(
                408,
                "request_timeout",
                "the request body did not arrive in time (--read-timeout-ms)",
            );
        }
        source = err.source();
    }
    ApiError::new(
        e.status().as_u16(),
        "bad_request",
        format!("request body unreadable: {e} (at most 64 KiB)"),
    )
}

async fn access_handler(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(q): Query<TenantQuery>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let mut audit = json!({});
    let res = match body {
        Ok(body) => decide(&app, &headers, &q, &body, &mut audit).await,
        Err(e) => Err(body_refused(&e)),
    };
    let (status, reason) = match &res {
        Ok(_) => (200, "granted".to_owned()),
        Err(e) => (e.status, e.code.to_owned()),
    };
    let obj = audit.as_object_mut().expect("object");
    obj.insert(
        "decision".into(),
        if res.is_ok() { "allow" } else { "deny" }.into(),
    );
    obj.insert("status".into(), status.into());
    obj.insert("reason".into(), reason.into());
    if let Err(e) = &res {
        obj.insert("message".into(), e.message.clone().into());
    }
    app.audit.record("access", audit);
    match res {
        Ok(g) => Json(g).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn decide(
    app: &App,
    headers: &HeaderMap,
    q: &TenantQuery,
    body: &[u8],
    audit: &mut serde_json::Value,
) -> Result<access::Granted, ApiError> {
    let slug = tenant_slug(headers, q)?;
    audit["tenant"] = slug.as_str().into();
    let tenant = load_tenant(app, &slug)?;
    let user = app
        .users
        .verify(&tenant, &app.master, bearer(headers))
        .await?;
    audit["sub"] = user.sub.clone().into();
    let req: AccessRequest = serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            400,
            "bad_request",
            format!("body must be {{client_id, dataset_id, requested_ops}}: {e}"),
        )
    })?;
    audit["client_id"] = req.client_id.clone().into();
    audit["dataset_id"] = req.dataset_id.clone().into();
    let checked = access::check(&tenant, &user, &req)?;
    let online = app.locator.find(slug.as_str(), checked.edge).await?;
    let Some(online) = online else {
        return Err(ApiError::new(
            503,
            "edge_offline",
            format!("edge {:?} is not connected to any gateway", checked.edge),
        ));
    };
    let ctx = Ctx {
        tenant: &tenant,
        user: &user,
        master: &app.master,
        store: &app.store,
        signers: &app.signers,
    };
    let g = access::grant(&ctx, &checked, &online).await?;
    audit["sid"] = g.session_id.clone().into();
    audit["edge_id"] = g.edge_id.clone().into();
    audit["quota_bytes"] = g.quota_bytes.into();
    Ok(g)
}

async fn validate_handler(
    State(app): State<Arc<App>>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    Path(sid): Path<String>,
) -> Result<Response, ApiError> {
    require_admin(&app, peer.map(|p| p.0), &headers)?;
    let now = now_s();
    let Some((rec, revoked)) = app.store.lookup(&sid, now).await? else {
        return Err(ApiError::new(404, "unknown_session", "no such session"));
    };
    let revoked = revoked || app.link.as_ref().is_some_and(|l| l.knows_revoked(&sid));
    if revoked {
        return Err(ApiError::new(410, "revoked", "session was revoked"));
    }
    if rec.exp <= now {
        return Err(ApiError::new(410, "expired", "session has expired"));
    }
    Ok(Json(json!({
        "client_id": rec.client_id,
        "edge_id": rec.edge_id,
        "tenant": rec.tenant,
        "sub": rec.sub,
        "dataset": rec.dataset,
        "expires": rec.exp,
        "quota": rec.quota,
    }))
    .into_response())
}

async fn revoke_handler(
    State(app): State<Arc<App>>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    Path(sid): Path<String>,
) -> Result<Response, ApiError> {
    let res = revoke(&app, peer.map(|p| p.0), &headers, &sid).await;
    app.audit.record(
        "revoke",
        json!({
            "sid": sid,
            "status": res.as_ref().map(|_| 200).unwrap_or_else(|e| e.status),
            "reason": res.as_ref().map(|_| "revoked").unwrap_or_else(|e| e.code),
        }),
    );
    res.map(|exp| Json(json!({"session_id": sid, "revoked": true, "exp": exp})).into_response())
}

async fn revoke(
    app: &App,
    peer: Option<Peer>,
    headers: &HeaderMap,
    sid: &str,
) -> Result<u64, ApiError> {
    require_admin(app, peer, headers)?;
    let now = now_s();
    let Some((rec, _)) = app.store.lookup(sid, now).await? else {
        return Err(ApiError::new(404, "unknown_session", "no such session"));
    };
    app.store.revoke(&rec, now).await?;
    if let Locator::Gateway(g) = &app.locator {
        // Single node: the gateway learns of it through its admin endpoint.
        g.revoke(&rec.sid, rec.exp).await?;
    }
    Ok(rec.exp)
}

async fn release_handler(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(q): Query<TenantQuery>,
    Path(sid): Path<String>,
) -> Result<Response, ApiError> {
    let slug = tenant_slug(&headers, &q)?;
    let tenant = load_tenant(&app, &slug)?;
    let user = app
        .users
        .verify(&tenant, &app.master, bearer(&headers))
        .await?;
    let found = app.store.lookup(&sid, now_s()).await?;
    let Some((rec, _)) = found.filter(|(r, _)| r.tenant == slug.as_str() && r.sub == user.sub)
    else {
        return Err(ApiError::new(
            404,
            "unknown_session",
            "no such session of yours",
        ));
    };
    // Released: the slot frees, and the token must not open new streams
    // anywhere — the same marker and message as a revocation (which also
    // ends a stream the user left running).
    let now = now_s();
    app.store.revoke(&rec, now).await?;
    if let Locator::Gateway(g) = &app.locator {
        g.revoke(&rec.sid, rec.exp).await?;
    }
    app.audit.record(
        "release",
        json!({"tenant": slug.as_str(), "sub": user.sub, "sid": sid}),
    );
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EndedReport {
    /// Bytes the session received over all its connections.
    bytes: u64,
}

/// A gateway reports that a session's last connection closed: its stream
/// slot frees now (not when its token expires) and the unused part of its
/// hourly grant returns to the plan.
async fn ended_handler(
    State(app): State<Arc<App>>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    Path(sid): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    require_gateway(&app, peer.map(|p| p.0), &headers)?;
    let report: EndedReport = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            400,
            "bad_request",
            format!("body must be {{\"bytes\": <n>}}: {e}"),
        )
    })?;
    let Some((rec, _)) = app.store.lookup(&sid, now_s()).await? else {
        return Err(ApiError::new(404, "unknown_session", "no such session"));
    };
    app.store.end(&rec, report.bytes).await?;
    app.audit.record(
        "ended",
        json!({"tenant": rec.tenant, "sid": sid, "bytes": report.bytes}),
    );
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn jwks_handler(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(q): Query<TenantQuery>,
) -> Result<Response, ApiError> {
    let slug = tenant_slug(&headers, &q)?;
    let tenant = load_tenant(&app, &slug)?;
    let body = serde_json::to_string(&keys::jwks(&tenant, now_s())).expect("jwks serialises");
    Ok((
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "max-age=60"),
        ],
        body,
    )
        .into_response())
}

/// `GET /metrics`: the connections held (what the unauthenticated can
/// hold is bounded by them: a request head and at most 64 KiB of body
/// each), and the dependencies' health.
async fn metrics_handler(State(app): State<Arc<App>>) -> Response {
    use std::fmt::Write as _;
    let (open, evicted) = app.conns.counts();
    let mut out = String::new();
    let _ = writeln!(out, "# HELP sluice_control_connections Connections open (--max-connections)\n# TYPE sluice_control_connections gauge\nsluice_control_connections {open}");
    let _ = writeln!(out, "# HELP sluice_control_connections_evicted_total Connections closed to make room for newer ones\n# TYPE sluice_control_connections_evicted_total counter\nsluice_control_connections_evicted_total {evicted}");
    let mut deps: Vec<&sluice_protocol::outage::Outage> = Vec::new();
    if app.link.is_some() {
        deps.push(&crate::store::REDIS);
    }
    if let Locator::Gateway(_) = &app.locator {
        deps.push(&crate::edges::GATEWAY);
    }
    sluice_protocol::outage::render(&mut out, &deps);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

async fn ready_handler(State(app): State<Arc<App>>) -> Response {
    let mut problems = Vec::new();
    let mut degraded = None;
    match &app.tenants {
        Catalog::Dir(c) if !c.dir().root().join("tenants").is_dir() => {
            problems.push("data directory has no tenants/ folder");
        }
        Catalog::Etcd(_) if app.tenants.etcd_up() == Some(false) => {
            // Still ready: decisions go on from the in-memory copy, so a
            // load balancer should keep sending requests here.
            degraded = Some("etcd unreachable: deciding from the in-memory copy; admin writes fail until it returns");
        }
        _ => {}
    }
    if let Some(l) = &app.link {
        if !l.is_up() {
            problems.push("revocation subscription to Redis is down");
        }
        if !app.store.ping().await {
            problems.push("Redis does not answer");
        }
    }
    if let Locator::Gateway(g) = &app.locator {
        if !g.ping().await {
            problems.push("gateway admin endpoint unreachable");
        }
    }
    if problems.is_empty() {
        match degraded {
            Some(why) => (StatusCode::OK, format!("ready; {why}\n")).into_response(),
            None => (StatusCode::OK, "ready\n").into_response(),
        }
    } else if let Some(why) = degraded {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{}; {why}\n", problems.join("; ")),
        )
            .into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{}\n", problems.join("; ")),
        )
            .into_response()
    }
}
