//! Where a producer's AWS credentials and region come from, in the SDKs' order: keys given in
//! the producer's own config, then `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` /
//! `AWS_SESSION_TOKEN`, then the profile (`AWS_PROFILE`, else `default`) in the shared
//! credentials file (`AWS_SHARED_CREDENTIALS_FILE`, else `~/.aws/credentials`) and the shared
//! config file (`AWS_CONFIG_FILE`, else `~/.aws/config`), then a container's credentials
//! endpoint (`AWS_CONTAINER_CREDENTIALS_RELATIVE_URI` / `_FULL_URI`, ECS), then the EC2 instance
//! role through IMDSv2 (`AWS_EC2_METADATA_SERVICE_ENDPOINT`, else 169.254.169.254; off with
//! `AWS_EC2_METADATA_DISABLED=true`). Temporary credentials are fetched again before they
//! expire.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use ini::Ini;

/// Static keys, as SigV4 needs them.
#[derive(Clone, PartialEq, Eq)]
pub struct Keys {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
    /// Where they were found, for the start-up log line (never the secret).
    pub source: String,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("access_key_id", &self.access_key_id)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn home_file(env_name: &str, rel: &str) -> Option<PathBuf> {
    var(env_name)
        .map(PathBuf::from)
        .or_else(|| var("HOME").map(|h| PathBuf::from(h).join(rel)))
}

fn profile_name() -> String {
    var("AWS_PROFILE").unwrap_or_else(|| "default".into())
}

/// One profile's keys from a shared file: `[name]` in the credentials file, `[profile name]`
/// (or `[default]`) in the config file.
fn from_shared_file(path: &PathBuf, section: &str) -> Result<Option<Keys>, String> {
    if !path.exists() {
        return Ok(None);
    }
    let ini = Ini::load_from_file(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let Some(props) = ini.section(Some(section)) else {
        return Ok(None);
    };
    match (
        props.get("aws_access_key_id"),
        props.get("aws_secret_access_key"),
    ) {
        (Some(id), Some(secret)) => Ok(Some(Keys {
            access_key_id: id.to_string(),
            secret_access_key: secret.to_string(),
            session_token: props.get("aws_session_token").map(String::from),
            source: format!("{} [{section}]", path.display()),
        })),
        _ => Ok(None),
    }
}

fn config_section(profile: &str) -> String {
    if profile == "default" {
        "default".into()
    } else {
        format!("profile {profile}")
    }
}

/// Keys from the sources that need no network (config, environment, shared files).
pub fn static_keys(explicit: Option<(String, String)>) -> Result<Option<Keys>, String> {
    match static_or_error(explicit) {
        Ok(k) => Ok(Some(k)),
        Err(Missing::Nowhere(_)) => Ok(None),
        Err(Missing::Broken(e)) => Err(e),
    }
}

enum Missing {
    /// No source had keys (the message names the places looked in).
    Nowhere(String),
    /// A source is there but unreadable.
    Broken(String),
}

fn static_or_error(explicit: Option<(String, String)>) -> Result<Keys, Missing> {
    if let Some((id, secret)) = explicit {
        return Ok(Keys {
            access_key_id: id,
            secret_access_key: secret,
            session_token: None,
            source: "the config file".into(),
        });
    }
    if let (Some(id), Some(secret)) = (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
        return Ok(Keys {
            access_key_id: id,
            secret_access_key: secret,
            session_token: var("AWS_SESSION_TOKEN"),
            source: "the environment".into(),
        });
    }
    let profile = profile_name();
    let credentials = home_file("AWS_SHARED_CREDENTIALS_FILE", ".aws/credentials");
    if let Some(path) = &credentials
        && let Some(keys) = from_shared_file(path, &profile).map_err(Missing::Broken)?
    {
        return Ok(keys);
    }
    let config = home_file("AWS_CONFIG_FILE", ".aws/config");
    if let Some(path) = &config
        && let Some(keys) =
            from_shared_file(path, &config_section(&profile)).map_err(Missing::Broken)?
    {
        return Ok(keys);
    }
    Err(Missing::Nowhere(format!(
        "no AWS credentials: set awsAccessKeyId/awsSecretAccessKey in the config, \
         AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or profile '{profile}' in {} or {}, or run \
         where a container credentials endpoint or an EC2 instance role is",
        credentials.map_or("~/.aws/credentials".into(), |p| p.display().to_string()),
        config.map_or("~/.aws/config".into(), |p| p.display().to_string()),
    )))
}

/// Where temporary credentials are fetched from.
#[derive(Debug, Clone)]
enum Remote {
    /// ECS / a container credentials endpoint, with its authorization token if any.
    Container { url: String, token: Option<String> },
    /// The EC2 instance metadata service (IMDSv2).
    Imds { base: String },
}

/// A producer's credentials: fixed keys, or temporary ones fetched (and fetched again five
/// minutes before they expire).
#[derive(Clone)]
pub struct Credentials {
    inner: Arc<Inner>,
}

struct Inner {
    remote: Option<(Remote, reqwest::Client)>,
    current: tokio::sync::Mutex<(Keys, Option<DateTime<Utc>>)>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("remote", &self.inner.remote.as_ref().map(|r| &r.0))
            .finish_non_exhaustive()
    }
}

/// The first source that has keys; an error naming every place looked in when none does.
pub async fn resolve(explicit: Option<(String, String)>) -> Result<Credentials, String> {
    let nowhere = match static_or_error(explicit) {
        Ok(keys) => return Ok(Credentials::fixed(keys)),
        Err(Missing::Broken(e)) => return Err(e),
        Err(Missing::Nowhere(e)) => e,
    };
    let Some(remote) = remote_source() else {
        return Err(nowhere);
    };
    let http = crate::aws_client::client_builder()
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(5))
        .no_proxy()
        .build()
        .map_err(|e| e.to_string())?;
    match fetch(&remote, &http).await {
        Ok((keys, expires)) => Ok(Credentials {
            inner: Arc::new(Inner {
                remote: Some((remote, http)),
                current: tokio::sync::Mutex::new((keys, expires)),
            }),
        }),
        Err(e) => Err(format!("{nowhere} ({e})")),
    }
}

fn remote_source() -> Option<Remote> {
    let token = || {
        var("AWS_CONTAINER_AUTHORIZATION_TOKEN").or_else(|| {
            var("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE")
                .and_then(|p| std::fs::read_to_string(p).ok())
                .map(|t| t.trim().to_string())
        })
    };
    if let Some(rel) = var("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI") {
        return Some(Remote::Container {
            url: format!("http://169.254.170.2{rel}"),
            token: token(),
        });
    }
    if let Some(url) = var("AWS_CONTAINER_CREDENTIALS_FULL_URI") {
        return Some(Remote::Container {
            url,
            token: token(),
        });
    }
    if var("AWS_EC2_METADATA_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return None;
    }
    let base =
        var("AWS_EC2_METADATA_SERVICE_ENDPOINT").unwrap_or_else(|| "http://169.254.169.254".into());
    Some(Remote::Imds {
        base: base.trim_end_matches('/').to_string(),
    })
}

/// Reads the `AccessKeyId` / `SecretAccessKey` / `Token` / `Expiration` document both
/// endpoints answer.
fn parse_document(text: &str, source: String) -> Result<(Keys, Option<DateTime<Utc>>), String> {
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("{source}: not JSON: {e}"))?;
    let field = |k: &str| v[k].as_str().map(String::from);
    let (Some(id), Some(secret)) = (field("AccessKeyId"), field("SecretAccessKey")) else {
        return Err(format!(
            "{source}: no AccessKeyId/SecretAccessKey in the answer"
        ));
    };
    let expires = field("Expiration")
        .and_then(|e| DateTime::parse_from_rfc3339(&e).ok())
        .map(|e| e.with_timezone(&Utc));
    Ok((
        Keys {
            access_key_id: id,
            secret_access_key: secret,
            session_token: field("Token"),
            source,
        },
        expires,
    ))
}

async fn get_text(req: reqwest::RequestBuilder, what: &str) -> Result<String, String> {
    let resp = req.send().await.map_err(|e| format!("{what}: {e}"))?;
    let status = resp.status();
    let text = resp.text().await.map_err(|e| format!("{what}: {e}"))?;
    if !status.is_success() {
        return Err(format!("{what}: HTTP {status}"));
    }
    Ok(text)
}

async fn fetch(
    remote: &Remote,
    http: &reqwest::Client,
) -> Result<(Keys, Option<DateTime<Utc>>), String> {
    match remote {
        Remote::Container { url, token } => {
            let mut req = http.get(url);
            if let Some(t) = token {
                req = req.header("Authorization", t);
            }
            let text = get_text(req, url).await?;
            parse_document(&text, format!("the container credentials endpoint {url}"))
        }
        Remote::Imds { base } => {
            let token = get_text(
                http.put(format!("{base}/latest/api/token"))
                    .header("X-aws-ec2-metadata-token-ttl-seconds", "21600"),
                "IMDSv2 token",
            )
            .await?;
            let list = format!("{base}/latest/meta-data/iam/security-credentials/");
            let roles = get_text(
                http.get(&list).header("X-aws-ec2-metadata-token", &token),
                "IMDS role",
            )
            .await?;
            let role = roles.lines().next().unwrap_or("").trim().to_string();
            if role.is_empty() {
                return Err("IMDS: the instance has no role".into());
            }
            let text = get_text(
                http.get(format!("{list}{role}"))
                    .header("X-aws-ec2-metadata-token", &token),
                "IMDS credentials",
            )
            .await?;
            parse_document(&text, format!("the EC2 instance role {role} (IMDSv2)"))
        }
    }
}

impl Credentials {
    pub fn fixed(keys: Keys) -> Self {
        Credentials {
            inner: Arc::new(Inner {
                remote: None,
                current: tokio::sync::Mutex::new((keys, None)),
            }),
        }
    }

    /// Keys good for at least five more minutes (fetched again when not; the old ones are
    /// kept while a fetch fails and they have not expired).
    pub async fn keys(&self) -> Result<Keys, String> {
        let mut current = self.inner.current.lock().await;
        let Some((remote, http)) = &self.inner.remote else {
            return Ok(current.0.clone());
        };
        let soon = Utc::now() + chrono::Duration::minutes(5);
        if current.1.is_some_and(|expires| expires <= soon) {
            match fetch(remote, http).await {
                Ok(fresh) => *current = fresh,
                Err(e) if current.1.is_some_and(|x| x > Utc::now()) => {
                    tracing::warn!(error = %e, "cannot refresh credentials; using the current ones");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(current.0.clone())
    }

    /// Where the keys come from, for the start-up line.
    pub async fn source(&self) -> String {
        self.inner.current.lock().await.0.source.clone()
    }
}

/// The region: the producer's own setting, `AWS_REGION`, `AWS_DEFAULT_REGION`, the profile's
/// `region`, the one in an `*.<region>.amazonaws.com` endpoint, else `us-east-1`.
pub fn region(explicit: Option<&str>, endpoint: &str) -> String {
    if let Some(r) = explicit.filter(|r| !r.is_empty()) {
        return r.to_string();
    }
    if let Some(r) = var("AWS_REGION").or_else(|| var("AWS_DEFAULT_REGION")) {
        return r;
    }
    if let Some(path) = home_file("AWS_CONFIG_FILE", ".aws/config")
        && let Ok(ini) = Ini::load_from_file(&path)
        && let Some(r) = ini
            .section(Some(config_section(&profile_name())))
            .and_then(|p| p.get("region"))
    {
        return r.to_string();
    }
    let host = endpoint.split("://").last().unwrap_or(endpoint);
    let labels: Vec<&str> = host.split(['.', ':', '/']).collect();
    if let Some(i) = labels.iter().position(|l| *l == "amazonaws")
        && i >= 2
    {
        return labels[i - 1].to_string();
    }
    "us-east-1".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_keys_come_first() {
        let k = static_keys(Some(("AKID".into(), "secret".into())))
            .unwrap()
            .unwrap();
        assert_eq!(k.access_key_id, "AKID");
        assert_eq!(k.source, "the config file");
        assert!(
            !format!("{k:?}").contains("secret"),
            "Debug hides the secret"
        );
    }

    #[test]
    fn shared_files_give_a_profile_keys() {
        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path().join("credentials");
        std::fs::write(
            &creds,
            "[default]\naws_access_key_id = A1\naws_secret_access_key = S1\n\n\
             [ci]\naws_access_key_id=A2\naws_secret_access_key=S2\naws_session_token=T2\n",
        )
        .unwrap();
        let k = from_shared_file(&creds, "ci").unwrap().unwrap();
        assert_eq!(
            (k.access_key_id.as_str(), k.session_token.as_deref()),
            ("A2", Some("T2"))
        );
        assert!(from_shared_file(&creds, "absent").unwrap().is_none());
        let config = dir.path().join("config");
        std::fs::write(
            &config,
            "[profile ci]\nregion = eu-west-1\naws_access_key_id = A3\naws_secret_access_key = S3\n",
        )
        .unwrap();
        let k = from_shared_file(&config, &config_section("ci"))
            .unwrap()
            .unwrap();
        assert_eq!(k.access_key_id, "A3");
    }

    #[test]
    fn temporary_credentials_documents() {
        let (k, exp) = parse_document(
            r#"{"Code":"Success","AccessKeyId":"ASIA1","SecretAccessKey":"s","Token":"t",
                "Expiration":"2030-01-01T00:00:00Z"}"#,
            "imds".into(),
        )
        .unwrap();
        assert_eq!(k.session_token.as_deref(), Some("t"));
        assert_eq!(exp.unwrap().to_rfc3339(), "2030-01-01T00:00:00+00:00");
        assert!(parse_document("{}", "x".into()).is_err());
    }

    #[test]
    fn region_from_an_aws_endpoint() {
        // Only when nothing in the environment names one (CI may set AWS_REGION).
        if var("AWS_REGION").is_none() && var("AWS_DEFAULT_REGION").is_none() {
            assert_eq!(
                region(None, "https://firehose.eu-central-1.amazonaws.com"),
                "eu-central-1"
            );
        }
        assert_eq!(
            region(Some("ap-south-1"), "http://127.0.0.1:4573"),
            "ap-south-1"
        );
    }
}
