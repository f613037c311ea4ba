//! Gateway configuration: a TOML file, then `SLUICE_…` environment
//! variables, then command-line flags, each overriding the one before.
//!
//! Every key has an environment variable named after its path:
//! `limits.max_frame_bytes` ⇒ `SLUICE_LIMITS_MAX_FRAME_BYTES`. The override
//! walks the defaults' own TOML tree, so a key added to a struct is
//! overridable without anyone remembering to wire it up.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};
use thiserror::Error;

mod edge_keys;

pub use edge_keys::{EdgeKeys, KeyHash, MIN_EDGE_KEY_CHARS};
pub use sluice_protocol::secret::Secret;

/// Shortest HS256 secret accepted: RFC 7518 §3.2 asks for a key at least
/// as long as the hash (256 bits); a shorter one is guessable offline from
/// any token.
pub const MIN_TOKEN_SECRET_BYTES: usize = 32;

/// Spare read buffers a shard keeps unless `limits.read_pool_buffers`
/// says otherwise (`wire::read_pool`). A shard runs one reader at a time,
/// and a frame's buffer comes back before the next reader runs unless the
/// frame waits in a slow browser's outbox, so a few cover every turn; more
/// would only hold memory.
pub const DEFAULT_READ_POOL_BUFFERS: usize = 8;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid config: {0}")]
    Invalid(String),
    #[error("environment variable {var}: {msg}")]
    Env { var: String, msg: String },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address the single HTTP/WebSocket port listens on.
    pub listen: String,
    /// Shards (one monoio runtime per thread); 0 = one per available core.
    pub workers: usize,
    /// `epoll` (the default: it cost less CPU than io_uring in every
    /// scenario measured on 2026-11-26 but one, docs/benchmarks.md),
    /// `io_uring`, or `auto` (io_uring where the kernel has it, else epoll).
    pub driver: String,
    /// How an io_uring shard runs completion work: `defer` (only when the
    /// shard asks for events: no interruptions, no inter-processor
    /// interrupts while it runs; Linux 6.1+), `coop` (no interrupt while it
    /// runs; 5.19+) or `plain`. A kernel that refuses the setting gets the
    /// next one down, with a warning.
    pub uring_taskrun: String,
    /// Pin shard N to CPU N (modulo the available CPUs).
    pub pin_cores: bool,
    /// Log format: `text` or `json`.
    pub log_format: String,
    pub limits: Limits,
    pub timeouts: Timeouts,
    pub auth: Auth,
    pub revocation: Revocation,
    pub registry: EdgeRegistry,
    pub admin: Admin,
    pub control: Control,
    pub web: Web,
    pub tls: Tls,
    pub flight: Flight,
    pub grpc: Grpc,
    /// Edge id → `sha256:<hex>` of its pre-shared key.
    pub edge_keys: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest HTTP request head (431 past it).
    pub max_header_bytes: usize,
    /// Most header fields in one request (431 past it).
    pub max_headers: usize,
    /// Largest WebSocket frame payload from any peer (close 1009 past it).
    pub max_frame_bytes: usize,
    /// Largest text (JSON) message, reassembled across fragments.
    pub max_text_bytes: usize,
    /// Concurrent browser sessions across all shards (HTTP 503 past it).
    pub max_sessions: usize,
    /// Worker + relay connections one edge may hold.
    pub max_edge_connections: usize,
    /// Bytes queued towards one browser before its connector is paused.
    pub session_buffer_bytes: usize,
    /// Bytes queued towards one live-feed viewer before it is dropped (4409).
    pub viewer_queue_bytes: usize,
    /// A `buffered` query is collected whole and sent as one message; past
    /// this size it ends with `too_large` (4413) instead.
    pub max_buffered_bytes: usize,
    /// Default byte quota for a token without a `quota` claim (0 = none).
    pub default_quota_bytes: u64,
    /// Actions a browser may queue while a query runs.
    pub max_pending_actions: usize,
    /// Largest read on data-carrying connections (connector workers, relay
    /// legs). Reads start at 16 KiB and double while they fill the buffer:
    /// a bulk stream makes few syscalls, a slow one keeps a small buffer.
    pub read_chunk_bytes: usize,
    /// Read buffers each shard keeps for its waiting readers to share
    /// (`wire::read_pool`): at most this many times `read_chunk_bytes` per
    /// shard. 0 keeps none: every wake allocates.
    pub read_pool_buffers: usize,
    /// SO_SNDBUF/SO_RCVBUF of every accepted socket; 0 = kernel autotuning.
    pub socket_buffer_bytes: usize,
    /// Connections whose request head has not arrived yet, gateway-wide;
    /// past it new connections get 503 at once, so idle sockets cannot
    /// exhaust the descriptors established sessions need.
    pub max_pending_handshakes: usize,
    /// Browser sessions upgraded but not yet authenticated, gateway-wide
    /// (503 past it).
    pub max_unauthenticated: usize,
    /// The part of an edge's connector workers one subject (a token's
    /// `sub`) may keep while another subject waits for one, and one tenant
    /// where an edge serves several. Without contention a subject may use
    /// them all; with it, past its share its queries wait (up to
    /// `timeouts.pair_wait_ms`) and the workers it gives back go to the
    /// others. 1.0 = no limit. At least one worker is always allowed.
    pub worker_share: f64,
    /// Largest message (and frame payload) a browser may send before it
    /// has authenticated: an `auth` message is a token, so this bounds
    /// what unauthenticated sockets can make the gateway hold (1009 past it).
    pub max_auth_message_bytes: usize,
    /// Messages waiting in one shard's mailbox (sockets handed over from
    /// other shards, revocations); a shard whose mailbox is full makes
    /// senders wait, or refuses a new browser with 503.
    pub shard_mailbox_messages: usize,
    /// Connections one session (one token) may hold at once; 0 = no limit.
    /// Past it the new connection is closed with 4429 `too_many_connections`.
    pub max_connections_per_session: u32,
    /// Session-end reports waiting for the control plane or Redis; past it
    /// reports are dropped (counted), and those slots free at token expiry.
    pub max_pending_session_reports: usize,
    /// Revoked or ended session ids remembered (each until its token
    /// expires) so their tokens cannot open streams again; 24 bytes each.
    /// Past it the soonest to expire are forgotten, counted in
    /// `sluice_spent_sessions_forgotten_total`.
    pub max_spent_sessions: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// Whole HTTP request head must arrive within this.
    pub handshake_ms: u64,
    /// First `{"auth": …}` message must arrive within this (4408).
    pub auth_ms: u64,
    /// A ping goes out after this long without traffic from the peer.
    pub ping_interval_ms: u64,
    /// Connection closed after this long without traffic from the peer.
    pub idle_timeout_ms: u64,
    /// A write that makes no progress for this long closes the connection.
    pub write_stall_ms: u64,
    /// A query stream whose client takes nothing for this long is ended
    /// (4409 `slow_consumer`) and its connector worker given back: a client
    /// that stops reading cannot hold a worker for `write_stall_ms`.
    pub reader_stall_ms: u64,
    /// How long a session waits for an idle connector worker / relay edge (4503).
    pub pair_wait_ms: u64,
    /// How long the connector has to start answering a request.
    pub request_ms: u64,
    /// After a cancel, how long the connector has to end the stream before
    /// its worker connection is closed instead of reused.
    pub cancel_drain_ms: u64,
    /// After the gateway's close frame (RFC 6455 §7.1.1): how long it keeps
    /// reading, and discarding, what the peer still sends before closing
    /// the socket, so that unread bytes never turn the close into a reset
    /// that loses the close frame.
    pub close_linger_ms: u64,
    /// A session ends when its last connection has been closed this long
    /// (a reconnect within it continues the session, quota included); the
    /// end is then reported and the token cannot open new streams.
    pub session_end_ms: u64,
    /// A new connection to a session that already holds
    /// `limits.max_connections_per_session` waits this long for one of them
    /// to finish closing (a browser that dropped its socket and reconnected
    /// at once) before it is refused with 4429.
    pub reconnect_grace_ms: u64,
    /// SIGTERM: running streams get this long before sessions close with 1001.
    pub drain_grace_ms: u64,
    /// SIGTERM: the process exits at the latest this long after the grace,
    /// once the sessions are closed and their ends reported.
    pub shutdown_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Auth {
    /// HS256 shared secret (empty = HS256 tokens refused).
    pub hs256_secret: Secret,
    /// Ed25519 public keys: kid → base64url of the 32 raw bytes.
    pub ed25519_keys: BTreeMap<String, String>,
    /// A JWKS file (OKP/Ed25519 keys) read at start.
    pub jwks_file: String,
    /// The control plane's JWKS endpoint (`http(s)://…/.well-known/jwks.json`).
    /// Each tenant's keys are fetched with `?tenant=` when a token first
    /// names one, cached, and fetched again when a token names an unknown
    /// `kid` (at most once per `jwks_refresh_min_ms` per tenant).
    pub jwks_url: String,
    /// PEM CA trusted for an `https://` `jwks_url`, besides the public
    /// web PKI roots (a control plane with a private CA).
    pub jwks_ca_file: String,
    pub jwks_refresh_min_ms: u64,
    /// Cached keys are refetched after this long, so a key the control
    /// plane stopped publishing stops being accepted.
    pub jwks_max_age_s: u64,
    /// How long a session's authentication may wait for a JWKS fetch.
    pub jwks_fetch_timeout_ms: u64,
    /// JWKS fetches per minute for all tenants together: tokens naming
    /// made-up tenants cannot turn the gateway against the control plane.
    pub jwks_fetches_per_minute: u32,
    /// Tenants whose keys (or failed fetch) are cached; past it the entries
    /// of tenants without keys go first, then the least recently fetched.
    pub jwks_max_tenants: usize,
    /// Clock skew tolerated on `exp`, in seconds.
    pub leeway_s: u64,
    /// Failed edge authentications one source address may make per minute
    /// before it is refused (429) until a try refills; 0 = no limit.
    pub edge_failures_per_minute: u32,
    /// Source addresses tracked for that limit (bounded memory).
    pub edge_failure_sources: usize,
    /// Failed admin-token checks (`/admin/…`) one source address may make
    /// per minute before it is refused (429) until a try refills; 0 = no
    /// limit. An admin token may be a 16-character phrase: guessing it
    /// must cost time.
    pub admin_failures_per_minute: u32,
    /// Source addresses tracked for that limit (bounded memory).
    pub admin_failure_sources: usize,
    /// Cut a running stream when its token expires (otherwise expiry is
    /// checked when a session connects or reconnects).
    pub enforce_expiry_mid_stream: bool,
}

/// Hot revocation through Redis. The control plane publishes a revoked
/// session on `channel` and stores it under `key_prefix{sid}` with a TTL of
/// the token's remaining life, so a gateway that was disconnected when it
/// was published still finds it when it reconnects.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Revocation {
    /// `redis://host:port/db`; empty = no revocation (tokens live until `exp`).
    pub redis_url: Secret,
    /// Pub/sub channel carrying `{"sid": …, "exp": unix seconds}` (or a bare sid).
    pub channel: String,
    /// Keys `key_prefix + sid` hold revocations published while we were away.
    pub key_prefix: String,
    /// How long a revocation without `exp` is remembered, in seconds.
    pub default_ttl_s: u64,
    /// Reconnect backoff ceiling after the Redis link drops.
    pub max_backoff_ms: u64,
    /// A link silent this long is checked with PING; a failed check reconnects.
    pub health_check_ms: u64,
}

impl Default for Auth {
    fn default() -> Self {
        Self {
            hs256_secret: Secret::default(),
            ed25519_keys: BTreeMap::new(),
            jwks_file: String::new(),
            jwks_url: String::new(),
            jwks_ca_file: String::new(),
            jwks_refresh_min_ms: 1_000,
            jwks_max_age_s: 300,
            jwks_fetch_timeout_ms: 2_000,
            jwks_fetches_per_minute: 120,
            jwks_max_tenants: 10_000,
            leeway_s: 0,
            edge_failures_per_minute: 30,
            edge_failure_sources: 65_536,
            admin_failures_per_minute: 10,
            admin_failure_sources: 4096,
            enforce_expiry_mid_stream: false,
        }
    }
}

/// The multi-gateway edge registry: with `revocation.redis_url` set, this
/// gateway records each edge connected to it as `key_prefix{edge}` →
/// `{"url", "tenant", "datasets"}` with a TTL its heartbeat refreshes, so
/// the control plane can send a client to the gateway holding its edge.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EdgeRegistry {
    /// The URL clients reach this gateway at (`wss://gw1.example.com`);
    /// empty = `ws://` + the listening address.
    pub public_url: String,
    pub key_prefix: String,
    /// Entries are rewritten this often (and at once when edges change).
    pub heartbeat_ms: u64,
    /// An entry outlives a dead gateway by at most this long.
    pub ttl_ms: u64,
}

impl Default for EdgeRegistry {
    fn default() -> Self {
        Self {
            public_url: String::new(),
            key_prefix: "sluice:edges:".into(),
            heartbeat_ms: 2_000,
            ttl_ms: 10_000,
        }
    }
}

/// The browser dashboard, served at `/` from files read at start.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Web {
    /// Built dashboard (`web/dist`); empty = no dashboard.
    pub dir: String,
    /// Most bytes the dashboard's files may hold in memory.
    pub max_bytes: usize,
}

impl Default for Web {
    fn default() -> Self {
        Self {
            dir: String::new(),
            max_bytes: 32 * 1024 * 1024,
        }
    }
}

/// A second listener speaking TLS (`wss://`, `https://`), terminated by
/// rustls on threads of its own and handed to the shards as a plain byte
/// stream, so the plaintext hot path is the same code either way.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Tls {
    /// Address of the TLS listener; empty = no TLS.
    pub listen: String,
    /// PEM certificate chain, leaf first.
    pub cert_file: String,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) for `cert_file`.
    pub key_file: String,
    /// PEM CA certificates that sign connectors' client certificates
    /// (mutual TLS; the certificate's CN is the tenant id). Empty = no
    /// client certificates asked for.
    pub client_ca_file: String,
    pub connector_auth: ConnectorAuth,
    /// Edges a certificate's tenant may register besides the one named by
    /// its tenant id: `acme = ["acme-plant-1", "acme-plant-2"]`.
    pub tenant_edges: BTreeMap<String, Vec<String>>,
    /// The files are checked for changes this often and reloaded (also on
    /// SIGHUP); 0 = on SIGHUP only. Live connections keep their session.
    pub reload_check_ms: u64,
    /// Threads doing TLS; 0 = as many as shards.
    pub threads: usize,
    /// Most TLS connections open at once; more are closed at accept.
    pub max_connections: usize,
    /// Largest buffer per direction per connection (bytes). Buffers start
    /// at 1 KiB and grow while reads fill them; a TLS record is at most
    /// 16 KiB, so more than that buys little.
    pub buffer_bytes: usize,
}

/// The Arrow Flight front: analytics clients read datasets with
/// `FlightClient(…).do_get(ticket)`, authenticated by the session token.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Flight {
    /// Address of the Flight (gRPC) listener; empty = no Flight. TLS with
    /// `[tls]`'s certificate when `tls.cert_file` is set.
    pub listen: String,
    /// Where clients reach it (`grpc+tls://host:port`), announced to the
    /// control plane; empty = `grpc://` or `grpc+tls://` + the address.
    pub public_url: String,
    /// Threads serving Flight; 0 = one per shard.
    pub threads: usize,
    /// Flight connections open at once; more are closed at accept.
    pub max_connections: usize,
    /// Concurrent calls on one connection (HTTP/2 streams).
    pub max_streams_per_connection: u32,
    /// Token sessions held open between calls; past it new tokens get
    /// `RESOURCE_EXHAUSTED`.
    pub max_sessions: usize,
    /// How long a token's session stays open after its last call (so that
    /// `get_flight_info` then `do_get` is one session). Below
    /// `timeouts.idle_timeout_ms`.
    pub idle_ms: u64,
    /// Connections that have not made an authenticated call yet; past it
    /// a newcomer evicts the oldest. Each is closed `timeouts.auth_ms`
    /// after its handshake if none of its calls authenticated.
    pub max_unauthenticated: usize,
    /// HTTP/2 streams a peer may reset (or make the server reset) on one
    /// connection before it is closed (Rapid Reset).
    pub max_local_error_reset_streams: usize,
    /// Streams reset by the peer before the server accepted them, at most.
    pub max_pending_accept_reset_streams: usize,
    /// Largest request header block (HPACK-decoded), bytes.
    pub max_header_list_bytes: u32,
    /// A connection is closed (gracefully) this long after it opened;
    /// 0 = never.
    pub max_connection_age_ms: u64,
}

/// Seed 002's connector tunnel: gRPC (HTTP/2) with TLS from `[tls]`,
/// mutual when `tls.client_ca_file` is set, under the same
/// `tls.connector_auth` rules as connectors on the WebSocket listeners.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Grpc {
    /// Address of the gRPC listener for connectors; empty = none. TLS with
    /// `[tls]`'s certificate when `tls.cert_file` is set (plaintext
    /// otherwise, where an `edge-key` is then required, as on `listen`).
    pub listen: String,
    /// Requests one gRPC connector may serve at once: each is a connector
    /// worker slot at the gateway, the same as one WebSocket worker.
    pub workers_per_connector: usize,
    /// Threads serving gRPC; 0 = one per shard.
    pub threads: usize,
    /// gRPC connections open at once; more are closed at accept.
    pub max_connections: usize,
    /// Bytes of `ArrowChunk`s queued towards a shard per request before
    /// the `Serve` call stops being read (HTTP/2 flow control then holds
    /// the connector back).
    pub queue_chunks: usize,
    /// Largest `DataMessage` accepted (an `ArrowChunk` of whole IPC
    /// messages); past it the call fails with `RESOURCE_EXHAUSTED`.
    pub max_message_bytes: usize,
    /// Concurrent calls on one connection (HTTP/2 streams): a connector
    /// needs one `Connect` and one `Serve` per worker.
    pub max_streams_per_connection: u32,
    /// HTTP/2 receive window of a connection, and of one call: large, so
    /// that a connector sends megabytes per read and window update. It is
    /// also the most a connection can have in flight towards the gateway
    /// before its first call is refused, so the unauthenticated may hold
    /// at most `max_unauthenticated` times it, for an instant.
    pub connection_window_bytes: u32,
    pub stream_window_bytes: u32,
    /// Connections that have not made an authenticated call yet; past it
    /// a newcomer evicts the oldest. Each is closed `timeouts.auth_ms`
    /// after its handshake if none of its calls authenticated.
    pub max_unauthenticated: usize,
    /// HTTP/2 streams a peer may reset (or make the server reset) on one
    /// connection before it is closed (Rapid Reset).
    pub max_local_error_reset_streams: usize,
    /// Streams reset by the peer before the server accepted them, at most.
    pub max_pending_accept_reset_streams: usize,
    /// Largest request header block (HPACK-decoded), bytes.
    pub max_header_list_bytes: u32,
    /// A connection is closed (gracefully) this long after it opened;
    /// 0 = never.
    pub max_connection_age_ms: u64,
}

impl Default for Grpc {
    fn default() -> Self {
        Self {
            listen: String::new(),
            workers_per_connector: 4,
            threads: 0,
            max_connections: 4096,
            queue_chunks: 8,
            max_message_bytes: 16 * 1024 * 1024,
            max_streams_per_connection: 64,
            connection_window_bytes: 16 << 20,
            stream_window_bytes: 4 << 20,
            max_unauthenticated: 64,
            max_local_error_reset_streams: 64,
            max_pending_accept_reset_streams: 20,
            max_header_list_bytes: 16 * 1024,
            max_connection_age_ms: 0,
        }
    }
}

impl Flight {
    /// Whether the Flight listener speaks TLS: with `[tls]`'s certificate.
    pub fn tls_from(&self, tls: &Tls) -> bool {
        !tls.cert_file.is_empty()
    }
}

impl Default for Flight {
    fn default() -> Self {
        Self {
            listen: String::new(),
            public_url: String::new(),
            threads: 0,
            max_connections: 4096,
            max_streams_per_connection: 100,
            max_sessions: 10_000,
            idle_ms: 30_000,
            max_unauthenticated: 256,
            max_local_error_reset_streams: 64,
            max_pending_accept_reset_streams: 20,
            max_header_list_bytes: 16 * 1024,
            max_connection_age_ms: 0,
        }
    }
}

impl Default for Tls {
    fn default() -> Self {
        Self {
            listen: String::new(),
            cert_file: String::new(),
            key_file: String::new(),
            client_ca_file: String::new(),
            connector_auth: ConnectorAuth::Either,
            tenant_edges: BTreeMap::new(),
            reload_check_ms: 2_000,
            threads: 0,
            max_connections: 100_000,
            buffer_bytes: 16 * 1024,
        }
    }
}

/// What a connector must present (`tls.connector_auth`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConnectorAuth {
    /// A client certificate or an `Edge-Key`; both are checked when both come.
    #[default]
    Either,
    /// A client certificate: an `Edge-Key` alone is refused, and so is the
    /// plaintext listener.
    Certificate,
    /// A client certificate and an `Edge-Key`.
    Both,
}

impl Tls {
    pub fn enabled(&self) -> bool {
        !self.listen.is_empty()
    }

    pub fn mutual(&self) -> bool {
        self.enabled() && !self.client_ca_file.is_empty()
    }
}

/// Admin endpoints on a listener of their own, for a control plane
/// without Redis: `GET /admin/edges` and `POST /admin/revoke/{sid}?exp=…`,
/// with `Authorization: Bearer <token>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Admin {
    /// Empty = no admin listener.
    pub token: Secret,
    /// Where the admin listener binds when `token` is set: loopback by
    /// default, so only this host's services reach it.
    pub listen: String,
}

impl Default for Admin {
    fn default() -> Self {
        Self {
            token: Secret::default(),
            listen: "127.0.0.1:8082".into(),
        }
    }
}

/// The control plane, told when sessions end so their stream slots free at
/// once (single-node mode; with `revocation.redis_url` set the gateway
/// writes the end to Redis instead).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Control {
    /// Base URL, e.g. `http://127.0.0.1:8080`; empty = no reports (a slot
    /// then frees when its token expires). Reports authenticate with
    /// `admin.token`, which the control plane knows as
    /// `SLUICE_GATEWAY_ADMIN_TOKEN`.
    pub url: String,
    /// Prefix of the control plane's Redis keys (`sluice:` unless changed).
    pub key_prefix: String,
    /// Timeout of one report.
    pub report_timeout_ms: u64,
}

impl Default for Control {
    fn default() -> Self {
        Self {
            url: String::new(),
            key_prefix: "sluice:".into(),
            report_timeout_ms: 2_000,
        }
    }
}

impl Default for Revocation {
    fn default() -> Self {
        Self {
            redis_url: Secret::default(),
            channel: "sluice:revocations".into(),
            key_prefix: "sluice:revoked:".into(),
            default_ttl_s: 24 * 3600,
            max_backoff_ms: 2_000,
            health_check_ms: 2_000,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8081".into(),
            workers: 0,
            driver: "epoll".into(),
            uring_taskrun: "defer".into(),
            pin_cores: false,
            log_format: "text".into(),
            limits: Limits::default(),
            timeouts: Timeouts::default(),
            auth: Auth::default(),
            revocation: Revocation::default(),
            registry: EdgeRegistry::default(),
            admin: Admin::default(),
            control: Control::default(),
            web: Web::default(),
            tls: Tls::default(),
            flight: Flight::default(),
            grpc: Grpc::default(),
            edge_keys: BTreeMap::new(),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_header_bytes: 8 * 1024,
            max_headers: 64,
            max_frame_bytes: 16 * 1024 * 1024,
            max_text_bytes: 64 * 1024,
            max_sessions: 100_000,
            max_edge_connections: 256,
            session_buffer_bytes: 1024 * 1024,
            max_buffered_bytes: 64 * 1024 * 1024,
            viewer_queue_bytes: 4 * 1024 * 1024,
            default_quota_bytes: 0,
            max_pending_actions: 8,
            read_chunk_bytes: 256 * 1024,
            read_pool_buffers: DEFAULT_READ_POOL_BUFFERS,
            socket_buffer_bytes: 4 * 1024 * 1024,
            max_pending_handshakes: 4096,
            max_unauthenticated: 4096,
            worker_share: 0.75,
            max_auth_message_bytes: 16 * 1024,
            shard_mailbox_messages: 65_536,
            max_connections_per_session: 1,
            max_pending_session_reports: 4096,
            max_spent_sessions: 1_000_000,
        }
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            handshake_ms: 10_000,
            auth_ms: 5_000,
            ping_interval_ms: 20_000,
            idle_timeout_ms: 60_000,
            write_stall_ms: 30_000,
            reader_stall_ms: 5_000,
            pair_wait_ms: 5_000,
            request_ms: 30_000,
            cancel_drain_ms: 5_000,
            close_linger_ms: 1_000,
            session_end_ms: 500,
            reconnect_grace_ms: 250,
            drain_grace_ms: 10_000,
            shutdown_ms: 5_000,
        }
    }
}

impl Config {
    /// File (if any) → environment → caller's flag overrides → validation.
    pub fn load(path: Option<&Path>, env: &[(String, String)]) -> Result<Config, ConfigError> {
        let mut tree = toml::Value::try_from(Config::default())
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        if let Some(path) = path {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.display().to_string(),
                source,
            })?;
            let file: toml::Value = toml::from_str(&text)
                .map_err(|e| ConfigError::Invalid(format!("{}: {e}", path.display())))?;
            merge(&mut tree, file);
        }
        let env: BTreeMap<&str, &str> = env
            .iter()
            .filter(|(k, _)| k.starts_with("SLUICE_"))
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        apply_env(&mut tree, "SLUICE", &env)?;
        // The quick-start variables named in the README.
        if let Some(secret) = env.get("SLUICE_TOKEN_SECRET") {
            set_path(&mut tree, &["auth", "hs256_secret"], (*secret).into());
        }
        let mut cfg: Config = tree
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Invalid(e.to_string()))?;
        if let Some(list) = env.get("SLUICE_EDGE_KEYS") {
            for (edge, hash) in parse_edge_key_list(list)? {
                cfg.edge_keys.insert(edge, hash.to_config_string());
            }
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// The bounds that keep the unauthenticated and the slow from holding
    /// the gateway (issue 34): each must leave something to serve.
    fn validate_abuse_bounds(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_owned()));
        if !(self.limits.worker_share > 0.0 && self.limits.worker_share <= 1.0) {
            return bad("limits.worker_share must be within (0, 1]");
        }
        if self.timeouts.reader_stall_ms == 0 {
            return bad("timeouts.reader_stall_ms must be >= 1");
        }
        let g = &self.grpc;
        if g.stream_window_bytes < 65_535 || g.connection_window_bytes < g.stream_window_bytes {
            return bad(
                "grpc.stream_window_bytes must be >= 65535 and <= grpc.connection_window_bytes",
            );
        }
        if self.flight.max_unauthenticated == 0 || g.max_unauthenticated == 0 {
            return bad("flight.max_unauthenticated and grpc.max_unauthenticated must be >= 1");
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_owned()));
        if self.listen.parse::<SocketAddr>().is_err() {
            return bad("listen must be an address such as 127.0.0.1:8081");
        }
        if !matches!(self.driver.as_str(), "auto" | "io_uring" | "epoll") {
            return bad("driver must be auto, io_uring or epoll");
        }
        if !matches!(self.uring_taskrun.as_str(), "defer" | "coop" | "plain") {
            return bad("uring_taskrun must be defer, coop or plain");
        }
        let g = &self.grpc;
        if !g.listen.is_empty() {
            if g.listen.parse::<SocketAddr>().is_err() {
                return bad("grpc.listen must be an address such as 0.0.0.0:8444");
            }
            if !self.tls.cert_file.is_empty() && self.tls.key_file.is_empty() {
                return bad("grpc: tls.cert_file is set without tls.key_file");
            }
            if g.workers_per_connector == 0 || g.workers_per_connector > 256 {
                return bad("grpc.workers_per_connector must be between 1 and 256");
            }
            if g.max_connections == 0 || g.queue_chunks == 0 {
                return bad("grpc.max_connections and grpc.queue_chunks must be at least 1");
            }
            if g.max_message_bytes < 1024 || g.max_message_bytes > self.limits.max_frame_bytes {
                return bad(
                    "grpc.max_message_bytes must be between 1 KiB and limits.max_frame_bytes",
                );
            }
        }
        let f = &self.flight;
        if !f.listen.is_empty() {
            if f.listen.parse::<SocketAddr>().is_err() {
                return bad("flight.listen must be an address such as 127.0.0.1:8815");
            }
            if f.tls_from(&self.tls) && (self.tls.key_file.is_empty()) {
                return bad("flight: tls.cert_file is set without tls.key_file");
            }
            if f.max_connections == 0 || f.max_sessions == 0 || f.max_streams_per_connection == 0 {
                return bad("flight.max_connections, max_sessions and max_streams_per_connection must be at least 1");
            }
            if f.idle_ms == 0 || f.idle_ms >= self.timeouts.idle_timeout_ms {
                return bad("flight.idle_ms must be between 1 and timeouts.idle_timeout_ms");
            }
            if !f.public_url.is_empty()
                && !["grpc://", "grpc+tcp://", "grpc+tls://"]
                    .iter()
                    .any(|p| f.public_url.starts_with(p))
            {
                return bad(
                    "flight.public_url must start with grpc://, grpc+tcp:// or grpc+tls://",
                );
            }
        }
        if !matches!(self.log_format.as_str(), "text" | "json") {
            return bad("log_format must be text or json");
        }
        let secret = self.auth.hs256_secret.len();
        if secret > 0 && secret < MIN_TOKEN_SECRET_BYTES {
            return Err(ConfigError::Invalid(format!(
                "auth.hs256_secret (SLUICE_TOKEN_SECRET) is {secret} bytes; at least {MIN_TOKEN_SECRET_BYTES} are required (make one with `openssl rand -base64 32`)"
            )));
        }
        let l = &self.limits;
        if l.max_header_bytes < 256 || l.max_headers == 0 {
            return bad("limits.max_header_bytes must be >= 256 and max_headers >= 1");
        }
        if l.max_frame_bytes < 1024 {
            return bad("limits.max_frame_bytes must be >= 1024");
        }
        if l.session_buffer_bytes < l.max_frame_bytes.min(1 << 20) {
            return bad("limits.session_buffer_bytes must hold at least one frame (or 1 MiB)");
        }
        if l.read_chunk_bytes < 4096 {
            return bad("limits.read_chunk_bytes must be >= 4096");
        }
        if l.max_text_bytes < 256 {
            return bad("limits.max_text_bytes must be >= 256");
        }
        if l.max_auth_message_bytes < 1024 {
            return bad("limits.max_auth_message_bytes must be >= 1024 (a token must fit)");
        }
        self.validate_abuse_bounds()?;
        if l.max_pending_handshakes == 0 || l.max_unauthenticated == 0 {
            return bad("limits.max_pending_handshakes and max_unauthenticated must be >= 1");
        }
        let t = &self.timeouts;
        if t.ping_interval_ms == 0 || t.idle_timeout_ms < t.ping_interval_ms {
            return bad("timeouts: idle_timeout_ms must be >= ping_interval_ms > 0");
        }
        let r = &self.revocation;
        if !r.redis_url.is_empty() {
            if !["redis://", "rediss://", "unix://", "redis+unix://"]
                .iter()
                .any(|p| r.redis_url.starts_with(p))
            {
                return bad("revocation.redis_url must start with redis://, rediss:// or unix://");
            }
            if r.channel.is_empty() || r.key_prefix.is_empty() {
                return bad("revocation.channel and revocation.key_prefix must not be empty");
            }
            if r.health_check_ms == 0 || r.max_backoff_ms == 0 {
                return bad("revocation.health_check_ms and max_backoff_ms must be > 0");
            }
        }
        let g = &self.registry;
        if g.heartbeat_ms == 0 || g.ttl_ms <= g.heartbeat_ms {
            return bad("registry: ttl_ms must be > heartbeat_ms > 0");
        }
        if !g.public_url.is_empty()
            && !["ws://", "wss://"]
                .iter()
                .any(|p| g.public_url.starts_with(p))
        {
            return bad("registry.public_url must start with ws:// or wss://");
        }
        let a = &self.auth;
        if !a.jwks_url.is_empty()
            && !["http://", "https://"]
                .iter()
                .any(|p| a.jwks_url.starts_with(p))
        {
            return bad("auth.jwks_url must start with http:// or https://");
        }
        if !self.admin.token.is_empty() && self.admin.token.len() < 16 {
            return bad("admin.token must be at least 16 characters");
        }
        if !self.admin.token.is_empty() && self.admin.listen.parse::<SocketAddr>().is_err() {
            return bad("admin.listen must be an address such as 127.0.0.1:8082");
        }
        let tls = &self.tls;
        if tls.enabled() {
            if tls.listen.parse::<SocketAddr>().is_err() {
                return bad("tls.listen must be an address such as 0.0.0.0:8443");
            }
            if tls.cert_file.is_empty() || tls.key_file.is_empty() {
                return bad("tls.listen is set: tls.cert_file and tls.key_file are required");
            }
            if tls.max_connections == 0 || tls.buffer_bytes < 1024 {
                return bad("tls.max_connections must be > 0 and tls.buffer_bytes >= 1024");
            }
        }
        if tls.connector_auth != ConnectorAuth::Either && !tls.mutual() {
            return bad("tls.connector_auth needs tls.client_ca_file (client certificates)");
        }
        EdgeKeys::from_config(&self.edge_keys).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        Ok(())
    }

    pub fn listen_addr(&self) -> SocketAddr {
        self.listen.parse().expect("validated")
    }

    pub fn shard_count(&self) -> usize {
        if self.workers > 0 {
            self.workers
        } else {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        }
    }
}

/// `edge-a=key1,edge-b=key2` → hashed keys. The plaintext never outlives this.
pub fn parse_edge_key_list(list: &str) -> Result<Vec<(String, KeyHash)>, ConfigError> {
    let mut out = Vec::new();
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (edge, key) = item.split_once('=').ok_or_else(|| ConfigError::Env {
            var: "SLUICE_EDGE_KEYS".into(),
            msg: "expected edge-id=key pairs separated by commas".into(),
        })?;
        if edge.is_empty() || key.is_empty() {
            return Err(ConfigError::Env {
                var: "SLUICE_EDGE_KEYS".into(),
                msg: "edge id and key must both be non-empty".into(),
            });
        }
        if key.len() < MIN_EDGE_KEY_CHARS {
            return Err(ConfigError::Env {
                var: "SLUICE_EDGE_KEYS".into(),
                msg: format!("the key of edge {edge:?} is shorter than {MIN_EDGE_KEY_CHARS} characters (128 bits)"),
            });
        }
        out.push((edge.to_owned(), KeyHash::of(key.as_bytes())));
    }
    Ok(out)
}

fn merge(base: &mut toml::Value, over: toml::Value) {
    match (base, over) {
        (toml::Value::Table(b), toml::Value::Table(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) if slot.is_table() && v.is_table() => merge(slot, v),
                    _ => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

fn set_path(tree: &mut toml::Value, path: &[&str], value: toml::Value) {
    let mut node = tree;
    for key in &path[..path.len() - 1] {
        node = node
            .as_table_mut()
            .expect("table")
            .entry(key.to_string())
            .or_insert_with(|| toml::Value::Table(Default::default()));
    }
    node.as_table_mut()
        .expect("table")
        .insert(path[path.len() - 1].to_string(), value);
}

/// Overrides each scalar leaf of `tree` from `PREFIX_KEY` when set, parsed
/// as the leaf's own type. Maps (`edge_keys`, `auth.ed25519_keys`) take
/// `name=value,name=value`.
/// Variables of Sluice's other programs, which share the `SLUICE_`
/// prefix and often the same environment (a demo, a systemd drop-in): not
/// the gateway's, and not typos either. `tests::every_sluice_variable_is_known`
/// keeps this list in step with the workspace.
const OTHER_PROGRAMS_VARS: &[&str] = &[
    "SLUICE_CA_CERT",
    "SLUICE_CLIENT",
    "SLUICE_CONTROL",
    "SLUICE_EDGE_KEY",
    "SLUICE_GATEWAY",
    "SLUICE_GATEWAY_ADMIN_TOKEN",
    "SLUICE_MASTER_KEY",
    "SLUICE_POSTGRES_URL",
    "SLUICE_TENANT",
    "SLUICE_TOKEN",
    "SLUICE_USER_TOKEN",
];
/// Whole families of other programs' variables.
const OTHER_PROGRAMS_PREFIXES: &[&str] = &["SLUICE_CONTROL_", "SLUICE_CONNECTOR_"];
/// The gateway's own variables that are not configuration keys.
const GATEWAY_EXTRA_VARS: &[&str] = &["SLUICE_CONFIG", "SLUICE_LOG", "SLUICE_TOKEN_SECRET"];

/// `SLUICE_…` variables in `env` that nothing reads: most likely typos
/// (`SLUICE_LISTN`), silently ignored otherwise. Each comes with the
/// closest variable the gateway knows, when one is close.
pub fn unknown_env_vars(env: &[(String, String)]) -> Vec<(String, Option<String>)> {
    let mut known = Vec::new();
    if let Ok(tree) = toml::Value::try_from(Config::default()) {
        env_names(&tree, "SLUICE", &mut known);
    }
    known.extend(GATEWAY_EXTRA_VARS.iter().map(|s| s.to_string()));
    let known: Vec<&str> = known.iter().map(String::as_str).collect();
    let theirs = |k: &str| {
        OTHER_PROGRAMS_VARS.contains(&k) || OTHER_PROGRAMS_PREFIXES.iter().any(|p| k.starts_with(p))
    };
    sluice_protocol::suggest::unknown_vars(
        env.iter().map(|(k, _)| k.as_str()).filter(|k| !theirs(k)),
        "SLUICE_",
        &known,
    )
}

/// Every variable the configuration tree answers to.
fn env_names(tree: &toml::Value, prefix: &str, out: &mut Vec<String>) {
    let Some(table) = tree.as_table() else {
        return;
    };
    for (key, value) in table {
        let var = format!("{prefix}_{}", key.to_ascii_uppercase());
        match value {
            toml::Value::Table(_)
                if var != "SLUICE_EDGE_KEYS" && var != "SLUICE_AUTH_ED25519_KEYS" =>
            {
                env_names(value, &var, out)
            }
            _ => out.push(var),
        }
    }
}

fn apply_env(
    tree: &mut toml::Value,
    prefix: &str,
    env: &BTreeMap<&str, &str>,
) -> Result<(), ConfigError> {
    let table = match tree.as_table_mut() {
        Some(t) => t,
        None => return Ok(()),
    };
    for (key, value) in table.iter_mut() {
        let var = format!("{prefix}_{}", key.to_ascii_uppercase());
        if let toml::Value::Table(t) = value {
            let is_struct = var != "SLUICE_EDGE_KEYS" && var != "SLUICE_AUTH_ED25519_KEYS";
            if is_struct {
                apply_env(value, &var, env)?;
                continue;
            }
            if let Some(raw) = env.get(var.as_str()) {
                if var == "SLUICE_EDGE_KEYS" {
                    continue; // hashed separately: the value holds plaintext keys
                }
                t.clear();
                for item in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                    let (k, v) = item.split_once('=').ok_or_else(|| ConfigError::Env {
                        var: var.clone(),
                        msg: "expected name=value pairs separated by commas".into(),
                    })?;
                    t.insert(k.to_owned(), toml::Value::String(v.to_owned()));
                }
            }
            continue;
        }
        let Some(raw) = env.get(var.as_str()) else {
            continue;
        };
        let err = |msg: &str| ConfigError::Env {
            var: var.clone(),
            msg: msg.to_owned(),
        };
        *value = match value {
            toml::Value::String(_) => toml::Value::String((*raw).to_owned()),
            toml::Value::Integer(_) => {
                toml::Value::Integer(raw.trim().parse().map_err(|_| err("expected an integer"))?)
            }
            toml::Value::Boolean(_) => toml::Value::Boolean(match raw.trim() {
                "1" | "true" | "yes" | "on" => true,
                "0" | "false" | "no" | "off" => false,
                _ => return Err(err("expected true or false")),
            }),
            toml::Value::Float(_) => {
                toml::Value::Float(raw.trim().parse().map_err(|_| err("expected a number"))?)
            }
            _ => return Err(err("this key cannot be set from the environment")),
        };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_variables_are_named_with_the_closest_known_one() {
        let env = |k: &str| (k.to_owned(), "x".to_owned());
        let got = unknown_env_vars(&[
            env("SLUICE_LISTN"),
            env("SLUICE_LISTEN"),
            env("SLUICE_TLS_LISTEN"),
            env("SLUICE_LIMITS_MAX_SESSION"),
            env("SLUICE_MASTER_KEY"),
            env("SLUICE_CONTROL_LISTEN"),
            env("SLUICE_TOKEN_SECRET"),
            env("SLUICE_ZZZZZZZZZZZZZZZ"),
            env("PATH"),
        ]);
        assert_eq!(
            got,
            vec![
                ("SLUICE_LISTN".into(), Some("SLUICE_LISTEN".into())),
                (
                    "SLUICE_LIMITS_MAX_SESSION".into(),
                    Some("SLUICE_LIMITS_MAX_SESSIONS".into())
                ),
                ("SLUICE_ZZZZZZZZZZZZZZZ".into(), None),
            ]
        );
    }

    /// Every `SLUICE_…` variable a program of the workspace reads is the
    /// gateway's or on the list of other programs' variables, so the
    /// unknown-variable warning never names a real one.
    #[test]
    fn every_sluice_variable_is_known() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut vars = std::collections::BTreeSet::new();
        let mut stack = vec![root.join("src"), root.join("crates"), root.join("loadtest")];
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(&dir).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    if !p.ends_with("target") && !p.ends_with("node_modules") {
                        stack.push(p);
                    }
                } else if p.extension().is_some_and(|x| x == "rs") {
                    let text = std::fs::read_to_string(&p).unwrap();
                    for part in text.split("env = \"").skip(1) {
                        let name: String = part
                            .chars()
                            .take_while(|c| {
                                c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_'
                            })
                            .collect();
                        if name.starts_with("SLUICE_") {
                            vars.insert(name);
                        }
                    }
                }
            }
        }
        assert!(vars.len() > 10, "found the programs' variables: {vars:?}");
        let env: Vec<_> = vars.iter().map(|v| (v.clone(), String::new())).collect();
        assert_eq!(
            unknown_env_vars(&env),
            vec![],
            "add them to OTHER_PROGRAMS_VARS"
        );
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn quick_start_env_only() {
        let cfg = Config::load(
            None,
            &env(&[
                ("SLUICE_LISTEN", "127.0.0.1:0"),
                ("SLUICE_WORKERS", "3"),
                ("SLUICE_TOKEN_SECRET", "s3cret-s3cret-s3cret-s3cret-0123"),
                (
                    "SLUICE_EDGE_KEYS",
                    "edge-a=key1-0123456789abcdefgh,edge-b=key2-0123456789abcdefgh",
                ),
            ]),
        )
        .unwrap();
        assert_eq!(cfg.workers, 3);
        assert_eq!(cfg.auth.hs256_secret, "s3cret-s3cret-s3cret-s3cret-0123");
        let shown = format!("{cfg:?}");
        assert!(
            !shown.contains("s3cret"),
            "a config's Debug shows no secret"
        );
        assert_eq!(cfg.edge_keys.len(), 2);
        assert!(cfg.edge_keys["edge-a"].starts_with("sha256:"));
        assert!(!cfg.edge_keys["edge-a"].contains("key1"));
        // Shorter than 128 bits: refused, naming the edge.
        let short = Config::load(None, &env(&[("SLUICE_EDGE_KEYS", "edge-a=key1")]));
        assert!(format!("{:?}", short.unwrap_err()).contains("edge-a"));
    }

    #[test]
    fn nested_keys_and_type_errors() {
        let cfg = Config::load(
            None,
            &env(&[
                ("SLUICE_LIMITS_MAX_FRAME_BYTES", "2048"),
                ("SLUICE_LIMITS_SESSION_BUFFER_BYTES", "4096"),
                ("SLUICE_AUTH_ENFORCE_EXPIRY_MID_STREAM", "true"),
            ]),
        )
        .unwrap();
        assert_eq!(cfg.limits.max_frame_bytes, 2048);
        assert!(cfg.auth.enforce_expiry_mid_stream);
        let err = Config::load(None, &env(&[("SLUICE_WORKERS", "many")])).unwrap_err();
        assert!(err.to_string().contains("SLUICE_WORKERS"));
    }

    #[test]
    fn example_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("gateway.example.toml");
        Config::load(Some(&path), &[]).unwrap();
    }
}
