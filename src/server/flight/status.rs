//! The gateway's refusals as gRPC statuses. A Flight client branches on the
//! status code the way a browser branches on the close code; the message
//! is the gateway's own sentence.

use tonic::{Code, Status};

use super::link::LinkError;
use crate::server::pair::PairError;
use crate::wire::message::ErrorCode;

pub fn of_code(code: ErrorCode) -> Code {
    match code {
        ErrorCode::Unauthorized | ErrorCode::TokenExpired | ErrorCode::AuthTimeout => {
            Code::Unauthenticated
        }
        ErrorCode::Forbidden | ErrorCode::Revoked | ErrorCode::SessionEnded => {
            Code::PermissionDenied
        }
        ErrorCode::UnknownDataset => Code::NotFound,
        ErrorCode::EdgeOffline
        | ErrorCode::EdgeBusy
        | ErrorCode::EdgeDisconnected
        | ErrorCode::ShuttingDown => Code::Unavailable,
        ErrorCode::QuotaExceeded | ErrorCode::TooManyConnections | ErrorCode::SlowConsumer => {
            Code::ResourceExhausted
        }
        ErrorCode::BadRequest | ErrorCode::TooLarge => Code::InvalidArgument,
        ErrorCode::IdleTimeout => Code::DeadlineExceeded,
        ErrorCode::Closed => Code::Cancelled,
        // The connector failed to read its own dataset.
        ErrorCode::QueryFailed | ErrorCode::ProtocolError => Code::Internal,
        ErrorCode::Unknown => Code::Unknown,
    }
}

fn of_http(status: u16) -> Code {
    match status {
        400 => Code::InvalidArgument,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::NotFound,
        429 => Code::ResourceExhausted,
        503 => Code::Unavailable,
        504 | 408 => Code::DeadlineExceeded,
        _ => Code::Internal,
    }
}

pub fn of_link(e: LinkError) -> Status {
    match e {
        LinkError::Refused(r) => Status::new(of_code(r.code), format!("{}: {}", r.code, r.message)),
        LinkError::Pair(PairError::Http(s, body)) => {
            Status::new(of_http(s), format!("gateway answered {s}: {body}"))
        }
        LinkError::Pair(PairError::Io(e)) => {
            Status::unavailable(format!("gateway session failed: {e}"))
        }
        LinkError::Pair(PairError::Protocol(why)) => Status::internal(why),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::message::{close, Refusal};

    #[test]
    fn each_documented_refusal_has_its_status() {
        let st = |code, close| of_link(LinkError::Refused(Refusal::new(close, code, "m"))).code();
        assert_eq!(
            st(ErrorCode::Unauthorized, close::BAD_TOKEN),
            Code::Unauthenticated
        );
        assert_eq!(
            st(ErrorCode::TokenExpired, close::BAD_TOKEN),
            Code::Unauthenticated
        );
        assert_eq!(
            st(ErrorCode::Forbidden, close::FORBIDDEN),
            Code::PermissionDenied
        );
        assert_eq!(
            st(ErrorCode::Revoked, close::REVOKED),
            Code::PermissionDenied
        );
        assert_eq!(
            st(ErrorCode::UnknownDataset, close::NOT_FOUND),
            Code::NotFound
        );
        assert_eq!(
            st(ErrorCode::EdgeOffline, close::EDGE_OFFLINE),
            Code::Unavailable
        );
        assert_eq!(
            st(ErrorCode::QuotaExceeded, close::QUOTA),
            Code::ResourceExhausted
        );
        let s = of_link(LinkError::Refused(Refusal::forbidden("no")));
        assert_eq!(s.message(), "forbidden: no");
        assert_eq!(
            of_link(LinkError::Pair(PairError::Http(503, "busy".into()))).code(),
            Code::Unavailable
        );
    }
}
