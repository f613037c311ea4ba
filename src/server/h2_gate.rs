//! What the HTTP/2 fronts (Arrow Flight, the gRPC connector tunnel) check
//! before tonic reads a byte of a call's body, and the HTTP/2 limits they
//! serve under.
//!
//! tonic decodes a call's first message before the service's method runs,
//! so a check written in the method comes after the gateway has buffered
//! whatever the caller chose to send (up to the largest message allowed,
//! on as many streams as it liked). The [`Gate`] wraps the service and
//! runs the front's check on the request's headers and what the
//! connection's handshake proved ([`FrontInfo`]): a call that fails it is
//! answered with its status at once, its body never read, and a call that
//! passes marks its connection authenticated (see [`super::h2_front`]).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tonic::body::Body;
use tonic::codegen::{http, Service};
use tonic::server::NamedService;
use tonic::transport::Server;
use tonic::Status;

use crate::server::h2_front::FrontInfo;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A front's check of a call's credentials, from its headers alone.
pub trait Check: Send + Sync + 'static {
    fn check(&self, headers: &http::HeaderMap, front: &FrontInfo) -> BoxFuture<Result<(), Status>>;
}

/// A tonic service behind a [`Check`].
pub struct Gate<S, C> {
    inner: S,
    check: Arc<C>,
}

impl<S: Clone, C> Clone for Gate<S, C> {
    fn clone(&self) -> Self {
        Gate {
            inner: self.inner.clone(),
            check: self.check.clone(),
        }
    }
}

impl<S, C> Gate<S, C> {
    pub fn new(inner: S, check: C) -> Self {
        Gate {
            inner,
            check: Arc::new(check),
        }
    }
}

impl<S: NamedService, C> NamedService for Gate<S, C> {
    const NAME: &'static str = S::NAME;
}

impl<S, C> Service<http::Request<Body>> for Gate<S, C>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    C: Check,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        // The ready clone serves this call; a fresh clone waits for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let check = self.check.clone();
        Box::pin(async move {
            let Some(front) = req.extensions().get::<FrontInfo>().cloned() else {
                return Ok(Status::internal("connection without front info").into_http());
            };
            if let Err(refused) = check.check(req.headers(), &front).await {
                return Ok(refused.into_http());
            }
            front.auth.authenticated();
            inner.call(req).await
        })
    }
}

/// The HTTP/2 limits of one front (`[flight]` or `[grpc]`), set explicitly
/// instead of tonic's unlimited defaults.
pub struct Limits {
    pub max_concurrent_streams: u32,
    pub max_local_error_reset_streams: usize,
    pub max_pending_accept_reset_streams: usize,
    pub max_header_list_bytes: u32,
    pub keepalive: Duration,
    /// Zero: connections live as long as they are used.
    pub max_connection_age: Duration,
}

impl Limits {
    pub fn apply(&self, server: Server) -> Server {
        let server = server
            .max_concurrent_streams(Some(self.max_concurrent_streams))
            .http2_max_local_error_reset_streams(Some(self.max_local_error_reset_streams))
            .http2_max_pending_accept_reset_streams(Some(self.max_pending_accept_reset_streams))
            .http2_max_header_list_size(Some(self.max_header_list_bytes))
            // A peer that vanishes without a FIN is noticed by pings.
            .http2_keepalive_interval(Some(self.keepalive))
            .http2_keepalive_timeout(Some(self.keepalive));
        if self.max_connection_age.is_zero() {
            server
        } else {
            server.max_connection_age(self.max_connection_age)
        }
    }
}
