//! Arrow Flight's read calls over a gateway session.
//!
//! `ListFlights` → `list`, `GetFlightInfo`/`GetSchema`/`PollFlightInfo` →
//! `info`, `DoGet` → `query`: each call is the browser protocol's action on
//! the token's session (see [`super::sessions`]), and the answer is the
//! session's answer, restated in Flight's messages. Writes (`DoPut`,
//! `DoExchange`, actions) are refused: Sluice serves datasets, it does not
//! take them.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use arrow_flight::flight_service_server::FlightService;
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightEndpoint, FlightInfo,
    HandshakeRequest, HandshakeResponse, PollInfo, PutResult, SchemaResult, Ticket,
};
use base64::Engine;
use futures_util::stream::{self, BoxStream, StreamExt};
use serde_json::Value;
use sluice_protocol::browser::{BrowserAction, QueryMode, ServerEvent};
use tonic::{Request, Response, Status, Streaming};

use super::ipc::{first_message, Cutter};
use super::link::Event;
use super::sessions::{bearer, Held, Sessions};
use super::status;
use crate::server::h2_front::FrontInfo;
use crate::shard::metrics::FlightStats;
use crate::wire::message::ErrorCode;

pub struct Front {
    pub sessions: Arc<Sessions>,
    pub stats: Arc<FlightStats>,
}

type Stream<T> = Pin<Box<dyn futures_util::Stream<Item = Result<T, Status>> + Send>>;

impl Front {
    async fn hold<T>(&self, req: &Request<T>) -> Result<Held, Status> {
        self.stats.calls.fetch_add(1, Relaxed);
        let token = bearer(req.metadata()).inspect_err(|_| self.refused())?;
        let front = req
            .extensions()
            .get::<FrontInfo>()
            .cloned()
            .ok_or_else(|| Status::internal("connection without front info"))?;
        self.sessions
            .hold(token, &front)
            .await
            .inspect_err(|_| self.refused())
    }

    fn refused(&self) {
        self.stats.refused.fetch_add(1, Relaxed);
    }

    /// Sends `action` and waits for the event that answers it; a refusal
    /// closes the link (the gateway closed the session).
    async fn ask(&self, held: &mut Held, action: BrowserAction) -> Result<ServerEvent, Status> {
        let link = held.as_mut().expect("held links are open");
        let answer = async {
            link.send(&action).await?;
            loop {
                match link.next().await? {
                    Event::Json(ServerEvent::Error {
                        code: ErrorCode::QueryFailed,
                        message,
                        ..
                    }) => return Ok(Err(Status::internal(format!("connector: {message}")))),
                    // An error event is followed by the close that the
                    // next read turns into the refusal.
                    Event::Json(ServerEvent::Error { .. }) => continue,
                    Event::Json(ev) => return Ok(Ok(ev)),
                    Event::Binary(_) => continue,
                }
            }
        };
        match answer.await {
            Ok(r) => r.inspect_err(|_| self.refused()),
            Err(e) => {
                **held = None;
                self.refused();
                Err(status::of_link(e))
            }
        }
    }

    /// `info` for the dataset a descriptor names.
    async fn info(&self, req: Request<FlightDescriptor>) -> Result<FlightInfo, Status> {
        let mut held = self.hold(&req).await?;
        let descriptor = req.into_inner();
        let dataset = dataset_of(&descriptor)?;
        let ev = self
            .ask(
                &mut held,
                BrowserAction::Info {
                    dataset: dataset.clone(),
                },
            )
            .await?;
        let ServerEvent::FlightInfo { info, .. } = ev else {
            return Err(Status::internal("gateway answered info with another event"));
        };
        flight_info(&dataset, &info, descriptor)
    }
}

/// The dataset a descriptor names: `path = [dataset]`, or the name as a
/// command.
fn dataset_of(d: &FlightDescriptor) -> Result<String, Status> {
    let name = match d.path.as_slice() {
        [one] => one.clone(),
        [] => String::from_utf8(d.cmd.to_vec()).unwrap_or_default(),
        _ => {
            return Err(Status::invalid_argument(
                "descriptor path must be [dataset], one element",
            ))
        }
    };
    if name.is_empty() {
        return Err(Status::invalid_argument(
            "descriptor names no dataset (path = [dataset])",
        ));
    }
    Ok(name)
}

fn endpoint(dataset: &str) -> FlightEndpoint {
    // No location: the ticket is redeemed on this service, the one holding
    // the session.
    FlightEndpoint::new().with_ticket(Ticket::new(dataset.to_owned()))
}

fn flight_info(
    dataset: &str,
    info: &Value,
    descriptor: FlightDescriptor,
) -> Result<FlightInfo, Status> {
    let schema = info
        .get("schema")
        .and_then(Value::as_str)
        .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
        .ok_or_else(|| Status::internal("connector's flight_info carries no schema"))?;
    let schema = first_message(&schema)
        .ok_or_else(|| Status::internal("connector's schema is not an IPC message"))?
        .to_vec();
    let rows = info.get("rows").and_then(Value::as_i64).unwrap_or(-1);
    Ok(FlightInfo {
        schema: schema.into(),
        flight_descriptor: Some(descriptor),
        endpoint: vec![endpoint(dataset)],
        total_records: rows,
        // The connector knows its source's size, not the stream's.
        total_bytes: -1,
        ordered: true,
        ..FlightInfo::default()
    })
}

/// A `DoGet` in progress: owns the session's link until the stream ends.
/// Dropped before the end (the client went away), it closes the link: the
/// gateway then cancels the connector's stream as for a browser that left.
struct Pour {
    held: Held,
    cutter: Cutter,
    ready: VecDeque<FlightData>,
    done: bool,
    clean: bool,
    stats: Arc<FlightStats>,
}

impl Drop for Pour {
    fn drop(&mut self) {
        if !self.clean {
            *self.held = None;
        }
    }
}

impl Pour {
    async fn next(mut self) -> Option<(Result<FlightData, Status>, Self)> {
        loop {
            if let Some(d) = self.ready.pop_front() {
                self.stats.messages.fetch_add(1, Relaxed);
                return Some((Ok(d), self));
            }
            if self.done {
                return None;
            }
            let link = self.held.as_mut().expect("held links are open");
            let failed = match link.next().await {
                Ok(Event::Binary(b)) => {
                    let mut out = Vec::new();
                    match self.cutter.push(b, &mut out) {
                        Ok(()) => {
                            self.ready.extend(out);
                            continue;
                        }
                        Err(why) => Status::internal(why),
                    }
                }
                Ok(Event::Json(ServerEvent::StreamEnd { .. })) => {
                    self.done = true;
                    if self.cutter.pending() > 0 {
                        Status::data_loss("connector's stream ended inside an IPC message")
                    } else {
                        self.clean = true;
                        continue;
                    }
                }
                Ok(Event::Json(ServerEvent::Error {
                    code: ErrorCode::QueryFailed,
                    message,
                    ..
                })) => {
                    // The session stays open: the link is reusable.
                    self.clean = true;
                    Status::internal(format!("connector: {message}"))
                }
                Ok(Event::Json(_)) => continue,
                Err(e) => status::of_link(e),
            };
            self.done = true;
            self.stats.refused.fetch_add(1, Relaxed);
            return Some((Err(failed), self));
        }
    }
}

fn refuse_write<T>() -> Result<T, Status> {
    Err(Status::unimplemented(
        "Sluice serves datasets read-only: ListFlights, GetFlightInfo, GetSchema, PollFlightInfo and DoGet",
    ))
}

#[tonic::async_trait]
impl FlightService for Front {
    type HandshakeStream = Stream<HandshakeResponse>;
    type ListFlightsStream = BoxStream<'static, Result<FlightInfo, Status>>;
    type DoGetStream = BoxStream<'static, Result<FlightData, Status>>;
    type DoPutStream = Stream<PutResult>;
    type DoExchangeStream = Stream<FlightData>;
    type DoActionStream = Stream<arrow_flight::Result>;
    type ListActionsStream = Stream<ActionType>;

    async fn handshake(
        &self,
        _req: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        Err(Status::unimplemented(
            "no handshake: send the session token as authorization: Bearer <token> on each call",
        ))
    }

    async fn list_flights(
        &self,
        req: Request<Criteria>,
    ) -> Result<Response<Self::ListFlightsStream>, Status> {
        let mut held = self.hold(&req).await?;
        let ev = self.ask(&mut held, BrowserAction::List).await?;
        let ServerEvent::Datasets { datasets, .. } = ev else {
            return Err(Status::internal("gateway answered list with another event"));
        };
        let infos = datasets.into_iter().map(|d| {
            Ok(FlightInfo {
                flight_descriptor: Some(FlightDescriptor::new_path(vec![d.clone()])),
                endpoint: vec![endpoint(&d)],
                total_records: -1,
                total_bytes: -1,
                ..FlightInfo::default()
            })
        });
        Ok(Response::new(
            stream::iter(infos.collect::<Vec<_>>()).boxed(),
        ))
    }

    async fn get_flight_info(
        &self,
        req: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.info(req).await.map(Response::new)
    }

    async fn poll_flight_info(
        &self,
        req: Request<FlightDescriptor>,
    ) -> Result<Response<PollInfo>, Status> {
        let info = self.info(req).await?;
        Ok(Response::new(PollInfo::new().with_info(info)))
    }

    async fn get_schema(
        &self,
        req: Request<FlightDescriptor>,
    ) -> Result<Response<SchemaResult>, Status> {
        let info = self.info(req).await?;
        Ok(Response::new(SchemaResult {
            schema: info.schema,
        }))
    }

    async fn do_get(&self, req: Request<Ticket>) -> Result<Response<Self::DoGetStream>, Status> {
        let mut held = self.hold(&req).await?;
        let dataset = String::from_utf8(req.into_inner().ticket.to_vec())
            .ok()
            .filter(|d| !d.is_empty())
            .ok_or_else(|| Status::invalid_argument("ticket must be a dataset name"))?;
        let action = BrowserAction::Query {
            dataset,
            mode: QueryMode::Stream,
        };
        let sent = held
            .as_mut()
            .expect("held links are open")
            .send(&action)
            .await;
        if let Err(e) = sent {
            *held = None;
            self.refused();
            return Err(status::of_link(e));
        }
        let state = Pour {
            held,
            cutter: Cutter::default(),
            ready: VecDeque::new(),
            done: false,
            clean: false,
            stats: self.stats.clone(),
        };
        // The first message decides: a refusal (token, allow-list, unknown
        // dataset, edge offline) is the call's status, not a broken stream.
        match state.next().await {
            None => Ok(Response::new(stream::empty().boxed())),
            Some((Err(refused), _)) => Err(refused),
            Some((Ok(first), rest)) => Ok(Response::new(
                stream::once(async { Ok(first) })
                    .chain(stream::unfold(rest, Pour::next))
                    .boxed(),
            )),
        }
    }

    async fn do_put(
        &self,
        _req: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoPutStream>, Status> {
        refuse_write()
    }

    async fn do_exchange(
        &self,
        _req: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        refuse_write()
    }

    async fn do_action(
        &self,
        _req: Request<Action>,
    ) -> Result<Response<Self::DoActionStream>, Status> {
        refuse_write()
    }

    async fn list_actions(
        &self,
        _req: Request<Empty>,
    ) -> Result<Response<Self::ListActionsStream>, Status> {
        Ok(Response::new(Box::pin(stream::empty())))
    }
}
