//! A fleet: hosepipe nodes sharing their delivery streams through a NATS JetStream cluster
//! (`[log] backend = "jetstream"`). Each delivery stream's records live in a JetStream stream
//! (work-queue retention, replicated), every node reads it through one shared durable pull
//! consumer ([`crate::spool::jetstream`]), and the streams' definitions live in a key-value bucket
//! every node watches ([`control`]).

pub mod control;

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;

use crate::config::log::JetStreamSettings;

/// The connection a node keeps to the cluster.
pub struct Fleet {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub settings: JetStreamSettings,
}

/// A delivery stream's name as NATS names allow: letters, digits and `-` as they are, every
/// other byte as `_` and two hex digits (so `_` is `_5F` and names stay distinct).
pub fn encode_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("_{b:02X}"));
        }
    }
    out
}

/// [`encode_name`] undone; `None` for what it never makes.
pub fn decode_name(encoded: &str) -> Option<String> {
    let bytes = encoded.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'_' {
            let hex = encoded.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The TLS settings of the NATS connection when CA certificates besides the system's are to be
/// trusted (`[log] tls_ca_file`, the process's CA bundle): the system's roots and those, each
/// file's unusable certificates skipped as [`crate::aws_client::usable_certificates`] does (a
/// system bundle given as `tls_ca_file` works). `None`: async-nats' own defaults.
fn tls_client_config(settings: &JetStreamSettings) -> Result<Option<rustls::ClientConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bundle = crate::aws_client::ca_bundle();
    if settings.tls_ca_file.is_none() && bundle.is_none() {
        return Ok(None);
    }
    let mut extra = Vec::new();
    if let Some(path) = &settings.tls_ca_file {
        let failed = |e: String| format!("log.tls_ca_file {}: {e}", path.display());
        let pem = std::fs::read(path).map_err(|e| failed(e.to_string()))?;
        let (usable, skipped) = crate::aws_client::usable_certificates(&pem).map_err(failed)?;
        if usable.is_empty() {
            return Err(failed("holds no usable CA certificate".into()));
        }
        if skipped > 0 {
            tracing::warn!(tls_ca_file = %path.display(), skipped, "{skipped} certificates of log.tls_ca_file cannot be used as trust anchors and are skipped");
        }
        extra = usable;
    }
    let builder = crate::aws_client::rustls_client(crate::aws_client::root_store(extra))
        .map_err(|e| format!("NATS {e}"))?;
    let config = match &settings.tls_client {
        Some((cert, key)) => {
            let certs = CertificateDer::pem_file_iter(cert)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("log.tls_cert_file {}: {e}", cert.display()))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| format!("log.tls_key_file {}: {e}", key.display()))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| format!("log.tls_cert_file/tls_key_file: {e}"))?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Some(config))
}

impl Fleet {
    /// Connects to the cluster (retrying in the background if no server answers yet).
    pub async fn connect(settings: &JetStreamSettings) -> Result<Arc<Fleet>, String> {
        let mut options = async_nats::ConnectOptions::new()
            .name(format!("hosepipe {}", settings.node))
            .require_tls(settings.require_tls)
            .event_callback(|event| async move {
                tracing::info!(event = %event, "NATS connection");
            });
        if let (Some(user), Some(password)) = (&settings.user, &settings.password) {
            options = options.user_and_password(user.clone(), password.clone());
        }
        if let Some(token) = &settings.token {
            options = options.token(token.clone());
        }
        match tls_client_config(settings)? {
            Some(config) => options = options.tls_client_config(config),
            None => {
                if let Some((cert, key)) = &settings.tls_client {
                    options = options.add_client_certificate(cert.clone(), key.clone());
                }
            }
        }
        let servers: Vec<async_nats::ServerAddr> = settings
            .servers
            .iter()
            .map(|s| s.parse().map_err(|e| format!("log.servers {s:?}: {e}")))
            .collect::<Result<_, _>>()?;
        let client = options
            .connect(servers)
            .await
            .map_err(|e| format!("cannot connect to NATS {:?}: {e}", settings.servers))?;
        let js = jetstream::ContextBuilder::new()
            .timeout(settings.publish_timeout)
            .build(client.clone());
        Ok(Arc::new(Fleet {
            client,
            js,
            settings: settings.clone(),
        }))
    }

    /// The JetStream stream holding a delivery stream's records. `generation` tells apart a
    /// stream created through the API from one deleted before it under the same name (whose
    /// JetStream stream may still be being drained and deleted); a stream declared in the
    /// config files has none, so every node finds the same one.
    pub fn stream_name(&self, name: &str, generation: Option<&str>) -> String {
        let base = format!("{}_{}", self.settings.prefix, encode_name(name));
        match generation {
            Some(g) => format!("{base}_{g}"),
            None => base,
        }
    }

    /// The subject a delivery stream's records are published on.
    pub fn subject(&self, name: &str, generation: Option<&str>) -> String {
        let base = format!("{}.records.{}", self.settings.prefix, encode_name(name));
        match generation {
            Some(g) => format!("{base}.{g}"),
            None => base,
        }
    }

    pub fn node(&self) -> &str {
        &self.settings.node
    }

    /// Runs a JetStream call until it succeeds or `START_PATIENCE` has passed, with backoff: a
    /// cluster starting with the fleet may not have elected its leaders yet.
    pub async fn patiently<
        T,
        E: std::fmt::Display,
        F: std::future::Future<Output = Result<T, E>>,
    >(
        what: &str,
        mut call: impl FnMut() -> F,
    ) -> Result<T, String> {
        let deadline = tokio::time::Instant::now() + START_PATIENCE;
        let mut wait = Duration::from_millis(200);
        loop {
            match call().await {
                Ok(v) => return Ok(v),
                Err(e) if tokio::time::Instant::now() + wait < deadline => {
                    tracing::info!(error = %e, "{what}: JetStream is not ready; trying again");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
                Err(e) => return Err(format!("{what}: {e}")),
            }
        }
    }
}

/// How long a node waits at start for the cluster to answer.
const START_PATIENCE: Duration = Duration::from_secs(60);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_encode_to_what_nats_allows_and_back() {
        for name in ["clicks", "a.b", "a_b", "a_2Eb", "-x-", "A.B_c-9"] {
            let e = encode_name(name);
            assert!(
                e.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            );
            assert_eq!(decode_name(&e).as_deref(), Some(name));
        }
        assert_ne!(encode_name("a.b"), encode_name("a_b"));
        assert_eq!(decode_name("a_Z"), None);
    }
}
