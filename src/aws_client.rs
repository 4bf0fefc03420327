//! Calls to AWS JSON 1.1 services (Glue, KMS): a POST with `X-Amz-Target`, signed
//! with SigV4 by `aws-sigv4`, answered with JSON or with an error `{"__type", "message"}`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use serde_json::Value;

/// Where a service is and who calls it.
#[derive(Debug, Clone)]
pub struct ServiceEndpoint {
    /// e.g. `https://glue.us-east-1.amazonaws.com` or a local server.
    pub url: String,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl ServiceEndpoint {
    /// From the usual environment: `AWS_ENDPOINT_URL_<SERVICE>` (else `AWS_ENDPOINT_URL`, else
    /// the public endpoint), `AWS_REGION` / `AWS_DEFAULT_REGION`, `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`.
    pub fn from_env(service: &str) -> Result<Self, String> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let region = var("AWS_REGION")
            .or_else(|| var("AWS_DEFAULT_REGION"))
            .unwrap_or_else(|| "us-east-1".into());
        let url = var(&format!(
            "AWS_ENDPOINT_URL_{}",
            service.to_ascii_uppercase()
        ))
        .or_else(|| var("AWS_ENDPOINT_URL"))
        .unwrap_or_else(|| format!("https://{service}.{region}.amazonaws.com"));
        let access_key_id =
            var("AWS_ACCESS_KEY_ID").ok_or("AWS_ACCESS_KEY_ID is not set (needed to call AWS)")?;
        let secret_access_key = var("AWS_SECRET_ACCESS_KEY")
            .ok_or("AWS_SECRET_ACCESS_KEY is not set (needed to call AWS)")?;
        Ok(ServiceEndpoint {
            url,
            region,
            access_key_id,
            secret_access_key,
            session_token: var("AWS_SESSION_TOKEN"),
        })
    }
}

/// An AWS error answer, or a failure to get one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("{code}: {message}")]
    Service { code: String, message: String },
    #[error("{0}")]
    Transport(String),
}

/// CA certificates every client of the process trusts besides the system's.
#[derive(Debug)]
pub struct CaBundle {
    pub path: PathBuf,
    /// The PEM text, for clients built elsewhere (`hosepipe_sinks`).
    pub pem: Vec<u8>,
    certificates: Vec<reqwest::Certificate>,
}

/// Why a CA bundle cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("CA bundle {}: {message}", path.display())]
pub struct CaBundleError {
    pub path: PathBuf,
    pub message: String,
}

static CA_BUNDLE: OnceLock<Option<CaBundle>> = OnceLock::new();

/// Reads the CA bundle the process's clients trust: `configured` (a config's `ca_bundle`, a
/// command's `--ca-bundle`), else `AWS_CA_BUNDLE`; none when neither is set. The first call
/// decides for the whole process; call it before making clients.
pub fn trust_ca_bundle(
    configured: Option<&Path>,
) -> Result<Option<&'static CaBundle>, CaBundleError> {
    if let Some(set) = CA_BUNDLE.get() {
        return Ok(set.as_ref());
    }
    let path = configured.map(Path::to_path_buf).or_else(|| {
        std::env::var_os("AWS_CA_BUNDLE")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    });
    let bundle = match path {
        None => None,
        Some(path) => {
            let failed = |message: String| CaBundleError {
                path: path.clone(),
                message,
            };
            let pem = std::fs::read(&path).map_err(|e| failed(e.to_string()))?;
            let certificates = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| failed(format!("not a PEM certificate bundle: {e}")))?;
            if certificates.is_empty() {
                return Err(failed("holds no PEM certificate".into()));
            }
            Some(CaBundle {
                path,
                pem,
                certificates,
            })
        }
    };
    Ok(CA_BUNDLE.get_or_init(|| bundle).as_ref())
}

/// The CA bundle in force, if one was read.
pub fn ca_bundle() -> Option<&'static CaBundle> {
    CA_BUNDLE.get().and_then(Option::as_ref)
}

/// An HTTP client builder that trusts the system's CAs and the CA bundle in force.
pub fn client_builder() -> reqwest::ClientBuilder {
    let builder = reqwest::Client::builder();
    match ca_bundle() {
        Some(b) => builder.tls_certs_merge(b.certificates.iter().cloned()),
        None => builder,
    }
}

/// How long a call to an AWS service (Glue, KMS) may take before it fails as a transport error:
/// a hung service fails the operation that waits for it instead of holding it forever.
pub const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// POSTs `body` as `target` (e.g. `AWSGlue.GetTable`) to `service` (the SigV4 name, e.g. `glue`),
/// failing after [`CALL_TIMEOUT`].
pub async fn call(
    endpoint: &ServiceEndpoint,
    service: &str,
    target: &str,
    body: &Value,
) -> Result<Value, CallError> {
    let body = serde_json::to_vec(body).expect("JSON to memory");
    let client = client_builder()
        .timeout(CALL_TIMEOUT)
        .build()
        .map_err(|e| CallError::Transport(e.to_string()))?;
    call_with(&client, endpoint, service, target, body).await
}

/// [`call`] with the caller's HTTP client (kept for its connection pool) and a body already
/// serialised.
pub async fn call_with(
    client: &reqwest::Client,
    endpoint: &ServiceEndpoint,
    service: &str,
    target: &str,
    body: Vec<u8>,
) -> Result<Value, CallError> {
    let url = format!("{}/", endpoint.url.trim_end_matches('/'));
    let host = url
        .split("://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .ok_or_else(|| CallError::Transport(format!("{url} is not an http(s) URL")))?
        .to_string();
    let headers = [
        ("host", host.as_str()),
        ("content-type", "application/x-amz-json-1.1"),
        ("x-amz-target", target),
    ];
    let identity = Credentials::new(
        &endpoint.access_key_id,
        &endpoint.secret_access_key,
        endpoint.session_token.clone(),
        None,
        "hosepipe",
    )
    .into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(&endpoint.region)
        .name(service)
        .time(SystemTime::now())
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| CallError::Transport(format!("cannot sign: {e}")))?
        .into();
    let signable = SignableRequest::new(
        "POST",
        &url,
        headers.iter().copied(),
        SignableBody::Bytes(&body),
    )
    .map_err(|e| CallError::Transport(format!("cannot sign: {e}")))?;
    let (instructions, _) = sign(signable, &params)
        .map_err(|e| CallError::Transport(format!("cannot sign: {e}")))?
        .into_parts();
    let mut req = client.post(&url).body(body);
    for (k, v) in headers
        .iter()
        .skip(1)
        .copied()
        .chain(instructions.headers())
    {
        req = req.header(k, v);
    }
    let resp = req
        .send()
        .await
        .map_err(|e| CallError::Transport(format!("{url}: {e}")))?;
    let status = resp.status();
    let text = resp
        .text()
        .await
        .map_err(|e| CallError::Transport(format!("{url}: {e}")))?;
    let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    if status.is_success() {
        return Ok(value);
    }
    let code = value["__type"]
        .as_str()
        .or_else(|| value["code"].as_str())
        .map(|t| t.rsplit('#').next().unwrap_or(t).to_string())
        .unwrap_or_else(|| format!("HTTP {}", status.as_u16()));
    let message = value["message"]
        .as_str()
        .or_else(|| value["Message"].as_str())
        .map(String::from)
        .unwrap_or_else(|| text.chars().take(500).collect());
    Err(CallError::Service { code, message })
}
