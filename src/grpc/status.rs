//! Every error that reaches a client goes through here: one exhaustive match
//! per error type, so a new variant cannot slip out with the wrong code.

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
            presence::Error::ShuttingDown => Code::Unavailable,
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

impl From<auth::limits::Exceeded> for Status {
    fn from(err: auth::limits::Exceeded) -> Self {
        Status::resource_exhausted(err.to_string())
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
        ];
        for (err, code) in cases {
            let message = err.to_string();
            let status = Status::from(err);
            assert_eq!(status.code(), code);
            assert_eq!(status.message(), message);
        }
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
        let exceeded = auth::limits::Exceeded {
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
    fn token_errors_name_the_field() {
        let status = token_status("room_token", token::Error::Malformed("room token"));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "room_token: malformed room token");
        let status = token_status("session_token", token::Error::BadSignature("session token"));
        assert_eq!(status.code(), Code::Unauthenticated);
    }
}
