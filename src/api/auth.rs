//! SigV4 verification: recompute the request's signature with `aws-sigv4` and the secret of the
//! access key it names, then compare.

use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    PercentEncodingMode, SignableBody, SignableRequest, SigningSettings, UriPathNormalizationMode,
    sign,
};
use aws_sigv4::sign::v4;
use axum::http::HeaderMap;
use chrono::NaiveDateTime;

use super::error::ApiError;
use crate::config::AccessKey;

/// The service name requests must be signed for.
pub const SERVICE: &str = "firehose";
/// How far a request's clock may be from ours.
pub const MAX_SKEW: Duration = Duration::from_secs(5 * 60);

/// The parts of an `Authorization: AWS4-HMAC-SHA256 …` header.
#[derive(Debug, PartialEq, Eq)]
struct AuthHeader<'a> {
    access_key_id: &'a str,
    date: &'a str,
    region: &'a str,
    service: &'a str,
    signed_headers: Vec<&'a str>,
    signature: &'a str,
}

fn parse_auth_header(value: &str) -> Result<AuthHeader<'_>, ApiError> {
    let incomplete = |what: &str| {
        ApiError::IncompleteSignature(format!(
            "Authorization header requires {what}. Authorization={value}"
        ))
    };
    let rest = value
        .strip_prefix("AWS4-HMAC-SHA256 ")
        .ok_or_else(|| incomplete("the AWS4-HMAC-SHA256 algorithm"))?;
    let mut credential = None;
    let mut signed = None;
    let mut signature = None;
    for part in rest.split(',') {
        let part = part.trim();
        if let Some(v) = part.strip_prefix("Credential=") {
            credential = Some(v);
        } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
            signed = Some(v);
        } else if let Some(v) = part.strip_prefix("Signature=") {
            signature = Some(v);
        }
    }
    let credential = credential.ok_or_else(|| incomplete("'Credential' parameter"))?;
    let signed = signed.ok_or_else(|| incomplete("'SignedHeaders' parameter"))?;
    let signature = signature.ok_or_else(|| incomplete("'Signature' parameter"))?;
    let scope: Vec<&str> = credential.split('/').collect();
    let [access_key_id, date, region, service, "aws4_request"] = scope[..] else {
        return Err(incomplete(
            "a Credential of the form <key>/<date>/<region>/<service>/aws4_request",
        ));
    };
    Ok(AuthHeader {
        access_key_id,
        date,
        region,
        service,
        signed_headers: signed.split(';').collect(),
        signature,
    })
}

/// Compares secrets in time that does not depend on where they differ.
pub fn same_secret(a: &[u8], b: &[u8]) -> bool {
    constant_time_eq(a, b)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Verifies a request's SigV4 signature. Returns the access key id it was signed with.
pub fn verify(
    keys: &[AccessKey],
    method: &str,
    path_and_query: &str,
    headers: &HeaderMap,
    body: &[u8],
    now: SystemTime,
) -> Result<String, ApiError> {
    let value = headers
        .get("authorization")
        .ok_or_else(|| ApiError::MissingAuthenticationToken("Missing Authentication Token".into()))?
        .to_str()
        .map_err(|_| ApiError::IncompleteSignature("Authorization header is not ASCII".into()))?;
    let auth = parse_auth_header(value)?;
    let key = keys
        .iter()
        .find(|k| k.access_key_id == auth.access_key_id)
        .ok_or_else(|| {
            ApiError::UnrecognizedClient(
                "The security token included in the request is invalid.".into(),
            )
        })?;
    if auth.service != SERVICE {
        return Err(ApiError::InvalidSignature(format!(
            "Credential should be scoped to correct service: '{SERVICE}'."
        )));
    }
    let amz_date = headers
        .get("x-amz-date")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            ApiError::IncompleteSignature("Authorization requires an X-Amz-Date header.".into())
        })?;
    let signed_at = NaiveDateTime::parse_from_str(amz_date, "%Y%m%dT%H%M%SZ")
        .map_err(|_| {
            ApiError::IncompleteSignature(format!(
                "X-Amz-Date {amz_date:?} is not of the form 20150830T123600Z"
            ))
        })?
        .and_utc();
    if !amz_date.starts_with(auth.date) {
        return Err(ApiError::InvalidSignature(format!(
            "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: '{}' != '{}'",
            auth.date,
            &amz_date[..8.min(amz_date.len())]
        )));
    }
    let signed_time = SystemTime::from(signed_at);
    let skew = now
        .duration_since(signed_time)
        .or_else(|_| signed_time.duration_since(now))
        .unwrap_or_default();
    if skew > MAX_SKEW {
        return Err(ApiError::InvalidSignature(format!(
            "Signature expired: {amz_date} is now earlier or later than 5 minutes from the server's time."
        )));
    }
    if !auth.signed_headers.contains(&"host") {
        return Err(ApiError::InvalidSignature(
            "'Host' must be a signed header".into(),
        ));
    }
    let mut signable_headers = Vec::with_capacity(auth.signed_headers.len());
    for name in &auth.signed_headers {
        let mut values = headers.get_all(*name).iter();
        let Some(first) = values.next() else {
            return Err(ApiError::InvalidSignature(format!(
                "Signed header {name:?} is missing from the request"
            )));
        };
        let mut joined = first
            .to_str()
            .map_err(|_| ApiError::InvalidSignature(format!("header {name:?} is not ASCII")))?
            .to_string();
        for v in values {
            joined.push(',');
            joined.push_str(v.to_str().unwrap_or_default());
        }
        signable_headers.push((*name, joined));
    }
    let host = headers
        .get("host")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("localhost");
    let uri = format!("http://{host}{path_and_query}");
    let request = SignableRequest::new(
        method,
        &uri,
        signable_headers.iter().map(|(k, v)| (*k, v.as_str())),
        SignableBody::Bytes(body),
    )
    .map_err(|e| ApiError::InvalidSignature(format!("cannot canonicalise the request: {e}")))?;
    let mut settings = SigningSettings::default();
    settings.excluded_headers = None;
    settings.percent_encoding_mode = PercentEncodingMode::Double;
    settings.uri_path_normalization_mode = UriPathNormalizationMode::Enabled;
    let identity = Credentials::new(
        &key.access_key_id,
        &key.secret_access_key,
        None,
        None,
        "hosepipe-config",
    )
    .into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(auth.region)
        .name(SERVICE)
        .time(signed_time)
        .settings(settings)
        .build()
        .map_err(|e| ApiError::InternalFailure(format!("signing parameters: {e}")))?
        .into();
    let (_, expected) = sign(request, &params)
        .map_err(|e| ApiError::InvalidSignature(format!("cannot sign the request: {e}")))?
        .into_parts();
    if constant_time_eq(expected.as_bytes(), auth.signature.as_bytes()) {
        Ok(key.access_key_id.clone())
    } else {
        Err(ApiError::InvalidSignature(
            "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sigv4::http_request::SignableRequest;

    fn keys() -> Vec<AccessKey> {
        vec![AccessKey {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "secret".into(),
            policy: None,
        }]
    }

    /// Signs like an SDK does, with the given secret.
    fn signed_headers(secret: &str, body: &[u8], at: SystemTime) -> HeaderMap {
        let identity = Credentials::new("AKIDEXAMPLE", secret, None, None, "test").into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region("us-east-1")
            .name("firehose")
            .time(at)
            .settings(SigningSettings::default())
            .build()
            .unwrap()
            .into();
        let base = [
            ("host", "127.0.0.1:4573"),
            ("content-type", "application/x-amz-json-1.1"),
            ("x-amz-target", "Firehose_20150804.ListDeliveryStreams"),
        ];
        let req = SignableRequest::new(
            "POST",
            "http://127.0.0.1:4573/",
            base.iter().copied(),
            SignableBody::Bytes(body),
        )
        .unwrap();
        let (instructions, _) = sign(req, &params).unwrap().into_parts();
        let mut headers = HeaderMap::new();
        for (k, v) in base {
            headers.insert(k, v.parse().unwrap());
        }
        for (k, v) in instructions.headers() {
            headers.insert(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        headers
    }

    #[test]
    fn a_good_signature_passes_and_a_wrong_secret_fails() {
        let now = SystemTime::now();
        let body = b"{}";
        let h = signed_headers("secret", body, now);
        assert_eq!(
            verify(&keys(), "POST", "/", &h, body, now).unwrap(),
            "AKIDEXAMPLE"
        );
        let h = signed_headers("wrong", body, now);
        assert!(matches!(
            verify(&keys(), "POST", "/", &h, body, now),
            Err(ApiError::InvalidSignature(_))
        ));
        // A body changed after signing.
        let h = signed_headers("secret", body, now);
        assert!(verify(&keys(), "POST", "/", &h, b"{\"x\":1}", now).is_err());
    }

    #[test]
    fn unknown_keys_stale_dates_and_missing_headers_are_refused() {
        let now = SystemTime::now();
        let h = signed_headers("secret", b"", now);
        let other = vec![AccessKey {
            access_key_id: "OTHER".into(),
            secret_access_key: "x".into(),
            policy: None,
        }];
        assert!(matches!(
            verify(&other, "POST", "/", &h, b"", now),
            Err(ApiError::UnrecognizedClient(_))
        ));
        let later = now + Duration::from_secs(600);
        assert!(matches!(
            verify(&keys(), "POST", "/", &h, b"", later),
            Err(ApiError::InvalidSignature(m)) if m.starts_with("Signature expired")
        ));
        assert!(matches!(
            verify(&keys(), "POST", "/", &HeaderMap::new(), b"", now),
            Err(ApiError::MissingAuthenticationToken(_))
        ));
        let mut h = HeaderMap::new();
        h.insert("authorization", "Basic abc".parse().unwrap());
        assert!(matches!(
            verify(&keys(), "POST", "/", &h, b"", now),
            Err(ApiError::IncompleteSignature(_))
        ));
    }
}
