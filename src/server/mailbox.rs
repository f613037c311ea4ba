//! A shard's mailbox: what other shards, the TLS front and the Redis links
//! ask of it.

use std::rc::Rc;

use crate::edge;
use crate::server::route;
use crate::session::{browser, fanout};
use crate::shard::{Shard, ShardMsg};
use crate::wire::handoff;

pub async fn run(shard: Rc<Shard>, mailbox: flume::Receiver<ShardMsg>) {
    while let Ok(msg) = mailbox.recv_async().await {
        match msg {
            ShardMsg::AdoptFronted {
                sock,
                transport,
                egress,
            } => match handoff::attach(sock) {
                Ok((stream, _)) => {
                    let conn = route::handle_connection(shard.clone(), stream, transport, egress);
                    monoio::spawn(conn);
                }
                Err(e) => tracing::warn!(error = %e, "cannot adopt a fronted connection"),
            },
            ShardMsg::AdoptBrowser {
                sock,
                req,
                sid,
                egress,
            } => match handoff::attach(sock) {
                Ok((stream, buffered)) => {
                    monoio::spawn(Box::pin(browser::run(
                        shard.clone(),
                        stream,
                        *req,
                        buffered,
                        sid,
                        egress,
                    )));
                }
                Err(e) => tracing::warn!(error = %e, "cannot adopt browser socket"),
            },
            ShardMsg::Take { conn, reply } => edge::take(&shard, conn, reply),
            ShardMsg::FeedIdle { key } => fanout::on_idle(&key),
            ShardMsg::CloseAll => shard.close_all(),
            ShardMsg::Revoke { sid, at } => {
                shard.revoke(&sid);
                shard.shared.metrics.revocations.record(at.elapsed());
            }
        }
    }
}
