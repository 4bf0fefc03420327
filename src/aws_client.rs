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
    /// Who signs: fixed keys or the credential chain (refreshed before they expire).
    pub credentials: crate::credentials::Credentials,
}

impl ServiceEndpoint {
    /// From the usual environment: `AWS_ENDPOINT_URL_<SERVICE>` (else `AWS_ENDPOINT_URL`, else
    /// the public endpoint), `AWS_REGION` / `AWS_DEFAULT_REGION`, and the process's credential
    /// chain (`crate::credentials`: the environment, `AWS_PROFILE`, web identity, the container
    /// endpoint, IMDSv2).
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
        Ok(ServiceEndpoint {
            url,
            region,
            credentials: crate::credentials::process_chain()?,
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
    /// The usable certificates as PEM, for clients built elsewhere (`hosepipe_sinks`, object
    /// stores, NATS): those a strict parser rejects are left out.
    pub pem: Vec<u8>,
    /// The usable certificates, DER.
    pub der: Vec<rustls::pki_types::CertificateDer<'static>>,
    /// How many certificates of the file were skipped (see [`usable_certificates`]).
    pub skipped: usize,
    certificates: Vec<reqwest::Certificate>,
}

/// Why a CA bundle cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("CA bundle {}: {message}", path.display())]
pub struct CaBundleError {
    pub path: PathBuf,
    pub message: String,
}

/// The certificates of a PEM bundle that a TLS client can trust, and how many it cannot.
///
/// System bundles (Debian's `ca-certificates.crt`, RHEL's `tls-ca-bundle.pem`) carry old roots
/// that webpki refuses as trust anchors (bad encodings, unsupported extensions). rustls refuses a
/// whole client configuration for one such extra root, so every certificate is tried on its own
/// first, as the AWS SDKs and rustls' own native-roots loader do.
pub fn usable_certificates(
    pem: &[u8],
) -> Result<(Vec<rustls::pki_types::CertificateDer<'static>>, usize), String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut usable = Vec::new();
    let mut skipped = 0;
    for item in CertificateDer::pem_slice_iter(pem) {
        let der = item.map_err(|e| format!("not a PEM certificate bundle: {e}"))?;
        if rustls::RootCertStore::empty().add(der.clone()).is_ok() {
            usable.push(der);
        } else {
            skipped += 1;
        }
    }
    Ok((usable, skipped))
}

/// `certificates` as a PEM bundle.
fn to_pem(certificates: &[rustls::pki_types::CertificateDer<'_>]) -> Vec<u8> {
    use base64::Engine;
    let mut out = String::new();
    for der in certificates {
        out.push_str("-----BEGIN CERTIFICATE-----\n");
        let text = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
        for line in text.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
            out.push('\n');
        }
        out.push_str("-----END CERTIFICATE-----\n");
    }
    out.into_bytes()
}

static CA_BUNDLE: OnceLock<Option<CaBundle>> = OnceLock::new();

/// Reads the CA bundle the process's clients trust: `configured` (a config's `ca_bundle`, a
/// command's `--ca-bundle`), else `AWS_CA_BUNDLE`; none when neither is set. The first call
/// decides for the whole process; call it before making clients.
///
/// Certificates a strict parser rejects are skipped with one warning saying how many; a file
/// with no usable certificate, or one an HTTP client cannot be built with, is an error here, at
/// start-up, never a failure of each request later.
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
        Some(path) => Some(read_ca_bundle(path)?),
    };
    Ok(CA_BUNDLE.get_or_init(|| bundle).as_ref())
}

fn read_ca_bundle(path: PathBuf) -> Result<CaBundle, CaBundleError> {
    let failed = |message: String| CaBundleError {
        path: path.clone(),
        message,
    };
    let text = std::fs::read(&path).map_err(|e| failed(e.to_string()))?;
    let (der, skipped) = usable_certificates(&text).map_err(failed)?;
    if der.is_empty() {
        return Err(failed(if skipped == 0 {
            "holds no PEM certificate".into()
        } else {
            format!("none of its {skipped} certificates can be used as a trust anchor")
        }));
    }
    if skipped > 0 {
        tracing::warn!(
            ca_bundle = %path.display(),
            usable = der.len(),
            skipped,
            "{skipped} of the {} certificates in the CA bundle cannot be used as trust anchors and are skipped",
            der.len() + skipped
        );
    }
    let certificates = der
        .iter()
        .map(|d| reqwest::Certificate::from_der(d.as_ref()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| failed(e.to_string()))?;
    // The clients of the process are built from it: one that cannot be is refused now.
    reqwest::Client::builder()
        .tls_certs_merge(certificates.iter().cloned())
        .build()
        .map_err(|e| {
            failed(format!(
                "an HTTPS client cannot trust it: {}",
                error_chain(&e)
            ))
        })?;
    Ok(CaBundle {
        pem: to_pem(&der),
        path,
        der,
        skipped,
        certificates,
    })
}

/// `error` and its sources, `: `-separated (reqwest's own text is often just "builder error").
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The system's roots, the process's CA bundle and `extra`, for clients that take a rustls
/// configuration rather than a reqwest builder (NATS, an Iceberg REST catalog).
pub fn root_store(
    extra: impl IntoIterator<Item = rustls::pki_types::CertificateDer<'static>>,
) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    if let Some(bundle) = ca_bundle() {
        roots.add_parsable_certificates(bundle.der.iter().cloned());
    }
    roots.add_parsable_certificates(extra);
    roots
}

/// A rustls client configuration over [`root_store`] (aws-lc-rs, TLS 1.2 and 1.3), before its
/// client authentication is chosen.
pub fn rustls_client(
    roots: rustls::RootCertStore,
) -> Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert>, String> {
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots))
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
    static CLIENT: OnceLock<Result<reqwest::Client, String>> = OnceLock::new();
    let body = serde_json::to_vec(body).expect("JSON to memory");
    // One client (and connection pool) for the process, built after the CA bundle was read.
    let client = CLIENT
        .get_or_init(|| {
            client_builder()
                .timeout(CALL_TIMEOUT)
                .build()
                .map_err(|e| error_chain(&e))
        })
        .as_ref()
        .map_err(|e| CallError::Transport(format!("cannot build an HTTP client: {e}")))?;
    call_with(client, endpoint, service, target, body).await
}

/// A SigV4-signed POST of `body` to `url` as `keys` for `service` in `region`, with
/// `content_type` and `headers`; the answer's status and text.
#[allow(clippy::too_many_arguments)]
pub async fn signed_post(
    client: &reqwest::Client,
    url: &str,
    region: &str,
    service: &str,
    keys: &crate::credentials::Keys,
    content_type: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Result<(reqwest::StatusCode, String), String> {
    let host = url
        .split("://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .ok_or_else(|| format!("{url} is not an http(s) URL"))?
        .to_string();
    let mut all = vec![("host", host.as_str()), ("content-type", content_type)];
    all.extend_from_slice(headers);
    let identity = Credentials::new(
        &keys.access_key_id,
        &keys.secret_access_key,
        keys.session_token.clone(),
        None,
        "hosepipe",
    )
    .into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(SystemTime::now())
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| format!("cannot sign: {e}"))?
        .into();
    let signable =
        SignableRequest::new("POST", url, all.iter().copied(), SignableBody::Bytes(&body))
            .map_err(|e| format!("cannot sign: {e}"))?;
    let (instructions, _) = sign(signable, &params)
        .map_err(|e| format!("cannot sign: {e}"))?
        .into_parts();
    let mut req = client.post(url).body(body);
    for (k, v) in all.iter().skip(1).copied().chain(instructions.headers()) {
        req = req.header(k, v);
    }
    let resp = req
        .send()
        .await
        .map_err(|e| format!("{url}: {}", error_chain(&e)))?;
    let status = resp.status();
    let text = resp.text().await.map_err(|e| format!("{url}: {e}"))?;
    Ok((status, text))
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
    let keys = endpoint
        .credentials
        .keys()
        .await
        .map_err(|e| CallError::Transport(format!("no credentials to call {service}: {e}")))?;
    let (status, text) = signed_post(
        client,
        &url,
        &endpoint.region,
        service,
        &keys,
        "application/x-amz-json-1.1",
        &[("x-amz-target", target)],
        body,
    )
    .await
    .map_err(CallError::Transport)?;
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
