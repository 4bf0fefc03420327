//! The one place API errors become Firehose's error shape:
//! HTTP status + `{"__type": "<Exception>", "message": "…"}`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::config::stream::FieldError;

/// Every error the API answers with, named as AWS SDKs expect.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    ResourceNotFound(String),
    #[error("{0}")]
    ResourceInUse(String),
    #[error("{0}")]
    ConcurrentModification(String),
    #[error("{0}")]
    LimitExceeded(String),
    #[error("{0}")]
    ServiceUnavailable(String),
    #[error("{0}")]
    UnknownOperation(String),
    #[error("{0}")]
    MissingAuthenticationToken(String),
    #[error("{0}")]
    IncompleteSignature(String),
    #[error("{0}")]
    UnrecognizedClient(String),
    #[error("{0}")]
    InvalidSignature(String),
    #[error("{0}")]
    InternalFailure(String),
    /// The stream's KMS key cannot be used (unknown, disabled, no access).
    #[error("{0}")]
    InvalidKmsResource(String),
    /// The key's policy does not let it do this.
    #[error("{0}")]
    AccessDenied(String),
}

impl ApiError {
    /// The exception name (`__type`).
    pub fn type_name(&self) -> &'static str {
        match self {
            ApiError::InvalidArgument(_) => "InvalidArgumentException",
            ApiError::ResourceNotFound(_) => "ResourceNotFoundException",
            ApiError::ResourceInUse(_) => "ResourceInUseException",
            ApiError::ConcurrentModification(_) => "ConcurrentModificationException",
            ApiError::LimitExceeded(_) => "LimitExceededException",
            ApiError::ServiceUnavailable(_) => "ServiceUnavailableException",
            ApiError::UnknownOperation(_) => "UnknownOperationException",
            ApiError::MissingAuthenticationToken(_) => "MissingAuthenticationTokenException",
            ApiError::IncompleteSignature(_) => "IncompleteSignatureException",
            ApiError::UnrecognizedClient(_) => "UnrecognizedClientException",
            ApiError::InvalidSignature(_) => "InvalidSignatureException",
            ApiError::InternalFailure(_) => "InternalFailure",
            ApiError::InvalidKmsResource(_) => "InvalidKMSResourceException",
            ApiError::AccessDenied(_) => "AccessDeniedException",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::ServiceUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::InternalFailure(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::MissingAuthenticationToken(_) => StatusCode::FORBIDDEN,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    /// A validation failure, with the API's field path.
    pub fn from_field_errors(errors: &[FieldError]) -> Self {
        let detail = errors
            .iter()
            .map(|e| format!("{}: {}", e.api_path(), e.message))
            .collect::<Vec<_>>()
            .join("; ");
        ApiError::InvalidArgument(format!(
            "{} validation error{} detected: {detail}",
            errors.len(),
            if errors.len() == 1 { "" } else { "s" }
        ))
    }

    pub fn not_found(stream: &str, account: &str) -> Self {
        ApiError::ResourceNotFound(format!(
            "Firehose {stream} under account {account} not found."
        ))
    }
}

/// The control plane's refusals, named as Firehose names them.
impl From<crate::registry::ControlError> for ApiError {
    fn from(e: crate::registry::ControlError) -> Self {
        use crate::registry::ControlError as C;
        match e {
            C::Invalid(m) => ApiError::InvalidArgument(m),
            C::Fields(errors) => ApiError::from_field_errors(&errors),
            C::NotFound { stream, account } => ApiError::not_found(&stream, &account),
            C::InUse(m) => ApiError::ResourceInUse(m),
            C::VersionConflict(m) => ApiError::ConcurrentModification(m),
            C::Limit(m) => ApiError::LimitExceeded(m),
            C::KeyUnusable(m) => ApiError::InvalidKmsResource(m),
            C::Internal(m) => ApiError::InternalFailure(m),
        }
    }
}

/// Content type of every API answer.
pub const AMZ_JSON: &str = "application/x-amz-json-1.1";

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "__type": self.type_name(), "message": self.to_string() });
        let mut resp = (self.status(), body.to_string()).into_response();
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(AMZ_JSON));
        resp.headers_mut().insert(
            "x-amzn-ErrorType",
            HeaderValue::from_static(self.type_name()),
        );
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn errors_have_the_firehose_shape() {
        let resp = ApiError::ResourceNotFound("nope".into()).into_response();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        let body = axum::body::to_bytes(resp.into_body(), 1024).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["__type"], "ResourceNotFoundException");
        assert_eq!(v["message"], "nope");
        assert_eq!(
            ApiError::ServiceUnavailable("Slow down.".into()).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
