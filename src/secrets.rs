//! Credentials kept in secrets (`SecretsManagerConfiguration`): read with Secrets Manager's
//! `GetSecretValue` (SigV4, `[secrets]` or `AWS_ENDPOINT_URL_SECRETSMANAGER`) or from a local
//! file holding the same JSON, cached, read again every `refresh` (Firehose: about 10 minutes)
//! and at once when a destination refused the credential.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use crate::config::http::{Credential, SecretRef, SecretSource};

/// A forced read (after a refusal) is skipped when the secret was read this recently: a batch
/// of refusals at once reads it once.
const FORCED_READ_GAP: Duration = Duration::from_secs(1);
/// After a failed scheduled read, the cached value is used this long before trying again.
const FAILED_READ_RETRY: Duration = Duration::from_secs(30);

/// `[secrets]`: where Secrets Manager is, and how often a secret is read again.
#[derive(Debug, Clone)]
pub struct SecretsSettings {
    /// Else `AWS_ENDPOINT_URL_SECRETSMANAGER`, else AWS's public endpoint.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub refresh: Duration,
}

impl Default for SecretsSettings {
    fn default() -> Self {
        SecretsSettings {
            endpoint: None,
            region: None,
            refresh: Duration::from_secs(600),
        }
    }
}

/// Why a credential could not be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// The secret could not be read (no such secret, no access, the service or file away).
    #[error("secret {source_name} cannot be read: {message}")]
    Unreadable {
        source_name: String,
        message: String,
    },
    /// It was read but is not a JSON object with the field as a string.
    #[error("secret {source_name} is not JSON with a string {field:?}: {message}")]
    Format {
        source_name: String,
        field: &'static str,
        message: String,
    },
}

/// A credential, and whether the secret was read for it (rather than cached).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub value: String,
    pub read: bool,
}

struct Cached {
    value: Value,
    at: Instant,
}

/// The daemon's secrets.
pub struct Secrets {
    settings: SecretsSettings,
    http: reqwest::Client,
    cache: Mutex<HashMap<SecretSource, Cached>>,
}

impl Secrets {
    pub fn new(settings: SecretsSettings) -> Result<Secrets, reqwest::Error> {
        Ok(Secrets {
            settings,
            http: crate::aws_client::client_builder()
                .timeout(crate::aws_client::CALL_TIMEOUT)
                .build()?,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// The credential `cred` stands for. `refused`: the destination refused the one it was
    /// last given, so the secret is read again (it may have been rotated).
    pub async fn resolve(&self, cred: &Credential, refused: bool) -> Result<Resolved, SecretError> {
        let secret = match cred {
            Credential::Inline(v) => {
                return Ok(Resolved {
                    value: v.clone(),
                    read: false,
                });
            }
            Credential::Secret(s) => s,
        };
        let cached = {
            let cache = self.cache.lock().expect("secrets lock");
            cache.get(&secret.source).map(|c| {
                let age = c.at.elapsed();
                let fresh = match refused {
                    true => age < FORCED_READ_GAP,
                    false => age < self.settings.refresh,
                };
                (c.value.clone(), fresh)
            })
        };
        if let Some((value, true)) = &cached {
            return field(value, secret).map(|value| Resolved { value, read: false });
        }
        match self.read(&secret.source).await {
            Ok(value) => {
                let out = field(&value, secret);
                self.cache.lock().expect("secrets lock").insert(
                    secret.source.clone(),
                    Cached {
                        value,
                        at: Instant::now(),
                    },
                );
                out.map(|value| Resolved { value, read: true })
            }
            // A scheduled read that failed: the value in hand still works until refused.
            Err(e) if !refused && cached.is_some() => {
                tracing::warn!(secret = %secret.source, error = %e, "reading the secret again failed; using the value read before");
                let (value, _) = cached.expect("checked");
                if let Some(c) = self
                    .cache
                    .lock()
                    .expect("secrets lock")
                    .get_mut(&secret.source)
                {
                    let back = self.settings.refresh.saturating_sub(FAILED_READ_RETRY);
                    c.at = Instant::now().checked_sub(back).unwrap_or(c.at);
                }
                field(&value, secret).map(|value| Resolved { value, read: false })
            }
            Err(e) => Err(e),
        }
    }

    /// The secret's JSON.
    async fn read(&self, source: &SecretSource) -> Result<Value, SecretError> {
        let unreadable = |message: String| SecretError::Unreadable {
            source_name: source.to_string(),
            message,
        };
        let text = match source {
            SecretSource::File(path) => tokio::fs::read_to_string(path)
                .await
                .map_err(|e| unreadable(e.to_string()))?,
            SecretSource::SecretsManager(arn) => {
                let mut endpoint = crate::aws_client::ServiceEndpoint::from_env("secretsmanager")
                    .map_err(unreadable)?;
                if let Some(url) = &self.settings.endpoint {
                    endpoint.url = url.clone();
                }
                // The ARN's region, unless the config names one.
                match (&self.settings.region, arn.split(':').nth(3)) {
                    (Some(r), _) => endpoint.region = r.clone(),
                    (None, Some(r)) if !r.is_empty() => endpoint.region = r.to_string(),
                    _ => {}
                }
                let body = serde_json::to_vec(&serde_json::json!({ "SecretId": arn }))
                    .expect("JSON to memory");
                let answer = crate::aws_client::call_with(
                    &self.http,
                    &endpoint,
                    "secretsmanager",
                    "secretsmanager.GetSecretValue",
                    body,
                )
                .await
                .map_err(|e| unreadable(e.to_string()))?;
                answer
                    .get("SecretString")
                    .and_then(Value::as_str)
                    .ok_or_else(|| unreadable("the secret has no SecretString".into()))?
                    .to_string()
            }
        };
        serde_json::from_str(&text).map_err(|e| SecretError::Format {
            source_name: source.to_string(),
            field: "",
            message: e.to_string(),
        })
    }
}

/// The credential field of a secret's JSON.
fn field(value: &Value, secret: &SecretRef) -> Result<String, SecretError> {
    value
        .get(secret.field)
        .and_then(Value::as_str)
        .map(String::from)
        .ok_or_else(|| SecretError::Format {
            source_name: secret.source.to_string(),
            field: secret.field,
            message: format!("no string field {:?}", secret.field),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_secret(path: &std::path::Path) -> Credential {
        Credential::Secret(SecretRef {
            source: SecretSource::File(path.to_path_buf()),
            field: "api_key",
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_secret_is_cached_read_again_when_due_or_refused_and_kept_when_a_read_fails() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret.json");
        std::fs::write(&path, r#"{"api_key": "one"}"#).unwrap();
        let secrets = Secrets::new(SecretsSettings::default()).unwrap();
        let cred = file_secret(&path);
        let got = |r: Result<Resolved, SecretError>| {
            let r = r.unwrap();
            (r.value, r.read)
        };
        assert_eq!(
            got(secrets.resolve(&cred, false).await),
            ("one".into(), true)
        );
        std::fs::write(&path, r#"{"api_key": "two"}"#).unwrap();
        // Cached until refused or due.
        assert_eq!(
            got(secrets.resolve(&cred, false).await),
            ("one".into(), false)
        );
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(
            got(secrets.resolve(&cred, true).await),
            ("two".into(), true)
        );
        std::fs::write(&path, r#"{"api_key": "three"}"#).unwrap();
        tokio::time::advance(Duration::from_secs(601)).await;
        assert_eq!(
            got(secrets.resolve(&cred, false).await),
            ("three".into(), true)
        );
        // A scheduled read that fails keeps the value in hand; a refusal's does not.
        std::fs::remove_file(&path).unwrap();
        tokio::time::advance(Duration::from_secs(601)).await;
        assert_eq!(got(secrets.resolve(&cred, false).await).0, "three");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(matches!(
            secrets.resolve(&cred, true).await,
            Err(SecretError::Unreadable { .. })
        ));
        std::fs::write(&path, r#"{"hec_token": "x"}"#).unwrap();
        assert!(matches!(
            secrets.resolve(&cred, true).await,
            Err(SecretError::Format {
                field: "api_key",
                ..
            })
        ));
        let inline = Credential::Inline("k".into());
        assert_eq!(
            got(secrets.resolve(&inline, true).await),
            ("k".into(), false)
        );
    }
}
