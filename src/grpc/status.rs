//! Every error that reaches a client goes through here: one exhaustive match
//! per error type, so a new variant cannot slip out with the wrong code.

use http::StatusCode;
use tonic::{Code, Status};

use crate::auth;
use crate::presence;
use crate::token;

impl From<presence::Error> for Status {
    fn from(err: presence::Error) -> Self {
        let code = match &err {
            presence::Error::InvalidArgument { .. } => Code::InvalidArgument,
            presence::Error::SessionConflict { .. } => Code::FailedPrecondition,
            presence::Error::UserNotInRoom { .. } => Code::NotFound,
            presence::Error::LimitReached { .. } => Code::ResourceExhausted,
            presence::Error::ShuttingDown | presence::Error::Unavailable { .. } => {
                Code::Unavailable
            }
            // The details are the operator's (the store logged them).
            presence::Error::Corrupt { room_id, .. } => {
                return Status::internal(format!(
                "the presence store holds unreadable data for room {room_id:?}; see the server log"
            ))
            }
        };
        Status::new(code, err.to_string())
    }
}

impl From<auth::Error> for Status {
    fn from(err: auth::Error) -> Self {
        let code = match &err {
            auth::Error::Missing | auth::Error::InvalidCredential(_) => Code::Unauthenticated,
            auth::Error::PermissionDenied(_) => Code::PermissionDenied,
        };
        Status::new(code, err.to_string())
    }
}

impl From<auth::quota::Exceeded> for Status {
    fn from(err: auth::quota::Exceeded) -> Self {
        Status::resource_exhausted(err.to_string())
    }
}

/// The HTTP status that stands for a gRPC code on plain HTTP routes (the
/// beacon): client errors 4xx, server-side failures 5xx.
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::NO_CONTENT,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Cancelled => StatusCode::REQUEST_TIMEOUT,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Internal | Code::Unknown | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The gRPC code an HTTP status of a plain HTTP route stands for (the
/// inverse of [`http_status`]; 413, a body too large, is RESOURCE_EXHAUSTED).
pub fn grpc_code(status: StatusCode) -> Code {
    match status.as_u16() {
        200..=299 => Code::Ok,
        400 => Code::InvalidArgument,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::NotFound,
        408 => Code::Cancelled,
        409 => Code::Aborted,
        413 | 429 => Code::ResourceExhausted,
        501 => Code::Unimplemented,
        503 => Code::Unavailable,
        504 => Code::DeadlineExceeded,
        500..=599 => Code::Internal,
        _ => Code::Unknown,
    }
}

/// The status for a refused token in request field `field`.
pub fn token_status(field: &str, err: token::Error) -> Status {
    let code = match &err {
        token::Error::Malformed(_) | token::Error::WrongKind { .. } => Code::InvalidArgument,
        token::Error::BadSignature(_) | token::Error::UnknownKey(_) | token::Error::Expired(_) => {
            Code::Unauthenticated
        }
    };
    Status::new(code, format!("{field}: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_errors_map_to_precise_codes() {
        let cases = [
            (
                presence::Error::invalid("room_id", "must not be empty"),
                Code::InvalidArgument,
            ),
            (
                presence::Error::SessionConflict {
                    session_id: "s".into(),
                    other: "room",
                },
                Code::FailedPrecondition,
            ),
            (
                presence::Error::UserNotInRoom {
                    room_id: "r".into(),
                    user_id: "u".into(),
                },
                Code::NotFound,
            ),
            (
                presence::Error::LimitReached {
                    what: "sessions",
                    limit: 3,
                },
                Code::ResourceExhausted,
            ),
            (presence::Error::ShuttingDown, Code::Unavailable),
            (
                presence::Error::Unavailable {
                    store: "redis://127.0.0.1:6379".into(),
                    reason: "connection refused".into(),
                },
                Code::Unavailable,
            ),
        ];
        for (err, code) in cases {
            let message = err.to_string();
            let status = Status::from(err);
            assert_eq!(status.code(), code);
            assert_eq!(status.message(), message);
        }
    }

    #[test]
    fn unreadable_store_data_is_internal_without_its_details() {
        let status = Status::from(presence::Error::Corrupt {
            room_id: "r".into(),
            detail: "WRONGTYPE at presence:{r1}:h:r".into(),
        });
        assert_eq!(status.code(), Code::Internal);
        assert!(status.message().contains("\"r\""));
        assert!(!status.message().contains("WRONGTYPE"));
    }

    #[test]
    fn auth_errors_map_to_precise_codes() {
        assert_eq!(
            Status::from(auth::Error::Missing).code(),
            Code::Unauthenticated
        );
        let invalid = auth::Error::InvalidCredential("JWT refused: ExpiredSignature".into());
        assert_eq!(Status::from(invalid).code(), Code::Unauthenticated);
        let denied = auth::Error::PermissionDenied("not you".into());
        assert_eq!(Status::from(denied).code(), Code::PermissionDenied);
        let exceeded = auth::quota::Exceeded {
            what: "requests per second per user",
            limit: 5,
        };
        let status = Status::from(exceeded);
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(
            status.message(),
            "requests per second per user limit reached: at most 5"
        );
    }

    #[test]
    fn http_statuses_are_4xx_for_callers_and_5xx_for_the_server() {
        let all = [
            Code::Ok,
            Code::Cancelled,
            Code::Unknown,
            Code::InvalidArgument,
            Code::DeadlineExceeded,
            Code::NotFound,
            Code::AlreadyExists,
            Code::PermissionDenied,
            Code::ResourceExhausted,
            Code::FailedPrecondition,
            Code::Aborted,
            Code::OutOfRange,
            Code::Unimplemented,
            Code::Internal,
            Code::Unavailable,
            Code::DataLoss,
            Code::Unauthenticated,
        ];
        for code in all {
            let status = http_status(code);
            let server_side = matches!(
                code,
                Code::Internal
                    | Code::Unknown
                    | Code::DataLoss
                    | Code::Unavailable
                    | Code::DeadlineExceeded
                    | Code::Unimplemented
            );
            assert_eq!(status.is_server_error(), server_side, "{code:?} → {status}");
            assert!(
                status.is_success() == (code == Code::Ok),
                "{code:?} → {status}"
            );
            // The inverse names the same class of failure.
            let back = grpc_code(status);
            assert_eq!(http_status(back).as_u16() / 100, status.as_u16() / 100);
        }
        assert_eq!(
            grpc_code(StatusCode::PAYLOAD_TOO_LARGE),
            Code::ResourceExhausted
        );
        assert_eq!(
            http_status(Code::Internal),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }

    #[test]
    fn token_errors_name_the_field() {
        let status = token_status("room_token", token::Error::Malformed("room token"));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "room_token: malformed room token");
        let status = token_status("session_token", token::Error::BadSignature("session token"));
        assert_eq!(status.code(), Code::Unauthenticated);
    }
}
