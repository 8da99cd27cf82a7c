//! JSON errors for the HTTP API: every error names what was wrong and, for
//! a bad request, which parameter.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

/// Body of every non-2xx response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct ErrorBody {
    /// Human-readable message.
    pub error: String,
    /// The offending parameter, for 400s.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameter: Option<String>,
}

/// An error a handler returns; converts to a JSON response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// JSON body.
    pub body: ErrorBody,
}

impl ApiError {
    /// 400 naming `parameter`.
    pub fn bad(parameter: &str, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            body: ErrorBody {
                error: message.into(),
                parameter: Some(parameter.to_string()),
            },
        }
    }

    /// 400 without a single parameter to blame (e.g. an unparsable query string).
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            body: ErrorBody {
                error: message.into(),
                parameter: None,
            },
        }
    }

    /// 404 for paths the API does not serve.
    pub fn not_found() -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            body: ErrorBody {
                error: "no such endpoint".into(),
                parameter: None,
            },
        }
    }

    /// 503: the database did not answer. The detail goes to the log, not to the client.
    pub fn unavailable(e: &crate::db::DbError) -> Self {
        tracing::warn!("query failed: {e}");
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            body: ErrorBody {
                error: "database unavailable".into(),
                parameter: None,
            },
        }
    }
}

impl From<crate::db::DbError> for ApiError {
    fn from(e: crate::db::DbError) -> Self {
        Self::unavailable(&e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}
