//! AWS credentials as the SDKs resolve them, for the daemon's clients (S3, KMS, Glue, Secrets
//! Manager) and the producers alike. The chain, first match wins:
//!
//! 1. keys given in a config file;
//! 2. `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN`;
//! 3. the profile (`AWS_PROFILE`, else `default`) of the shared files (`AWS_SHARED_CREDENTIALS_FILE`
//!    else `~/.aws/credentials`, `AWS_CONFIG_FILE` else `~/.aws/config`): `role_arn` with
//!    `source_profile` or `credential_source` (STS AssumeRole), `role_arn` with
//!    `web_identity_token_file`, `credential_process`, or static keys — a file's keys are read
//!    again when the file changes, so rotated keys need no restart;
//! 4. a web identity token (`AWS_WEB_IDENTITY_TOKEN_FILE` + `AWS_ROLE_ARN`, STS
//!    AssumeRoleWithWebIdentity; EKS's IRSA);
//! 5. a container credentials endpoint (`AWS_CONTAINER_CREDENTIALS_RELATIVE_URI` / `_FULL_URI`,
//!    with `AWS_CONTAINER_AUTHORIZATION_TOKEN[_FILE]`);
//! 6. the EC2 instance role through IMDSv2 (`AWS_EC2_METADATA_SERVICE_ENDPOINT`, else
//!    169.254.169.254; off with `AWS_EC2_METADATA_DISABLED=true`).
//!
//! Temporary credentials are fetched again five minutes before they expire; while a refresh
//! fails, the current ones serve until they expire. STS is `AWS_ENDPOINT_URL_STS` (else
//! `AWS_ENDPOINT_URL`, else `https://sts.<region>.amazonaws.com`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

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

/// Where the chain reads its environment variables: the process's, or a test's.
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn home_file(env: Env, env_name: &str, rel: &str) -> Option<PathBuf> {
    env(env_name)
        .map(PathBuf::from)
        .or_else(|| env("HOME").map(|h| PathBuf::from(h).join(rel)))
}

fn profile_name(env: Env) -> String {
    env("AWS_PROFILE").unwrap_or_else(|| "default".into())
}

fn config_section(profile: &str) -> String {
    if profile == "default" {
        "default".into()
    } else {
        format!("profile {profile}")
    }
}

/// Where keys are fetched from.
#[derive(Debug, Clone)]
enum Source {
    Fixed(Keys),
    /// A profile's keys in a shared file, read again when the file changes.
    File {
        path: PathBuf,
        section: String,
    },
    /// `credential_process`: a command printing the keys as JSON.
    Process {
        command: String,
        profile: String,
    },
    /// STS AssumeRole, signed with the base credentials.
    AssumeRole {
        role_arn: String,
        session_name: String,
        external_id: Option<String>,
        duration_seconds: Option<u32>,
        base: Box<Credentials>,
        sts: Sts,
    },
    /// STS AssumeRoleWithWebIdentity with the token in a file (read at each fetch: the
    /// platform rotates it).
    WebIdentity {
        token_file: PathBuf,
        role_arn: String,
        session_name: String,
        sts: Sts,
    },
    /// ECS / a container credentials endpoint, with its authorization token if any.
    Container {
        url: String,
        token: Option<String>,
    },
    /// The EC2 instance metadata service (IMDSv2).
    Imds {
        base: String,
    },
}

#[derive(Debug, Clone)]
struct Sts {
    url: String,
    region: String,
}

impl Sts {
    fn from_env(env: Env, region: Option<&str>) -> Sts {
        let region = region
            .map(String::from)
            .or_else(|| env("AWS_REGION"))
            .or_else(|| env("AWS_DEFAULT_REGION"))
            .unwrap_or_else(|| "us-east-1".into());
        let url = env("AWS_ENDPOINT_URL_STS")
            .or_else(|| env("AWS_ENDPOINT_URL"))
            .unwrap_or_else(|| format!("https://sts.{region}.amazonaws.com"));
        Sts { url, region }
    }
}

/// The keys in force and until when.
#[derive(Debug, Clone)]
struct Current {
    keys: Keys,
    expires: Option<DateTime<Utc>>,
    /// `Source::File`: the file's modification time when read.
    modified: Option<SystemTime>,
}

/// Credentials: fixed keys, or keys fetched (and fetched again before they expire, or when
/// their file changes).
#[derive(Clone)]
pub struct Credentials {
    inner: Arc<Inner>,
}

struct Inner {
    source: Source,
    /// Built at the first fetch, after the process's CA bundle was read.
    http: std::sync::OnceLock<Result<reqwest::Client, String>>,
    current: tokio::sync::Mutex<Option<Current>>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("source", &self.describe())
            .finish_non_exhaustive()
    }
}

/// Why no credentials can be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialsError {
    /// No source of the chain has any.
    #[error("{0}")]
    Nowhere(String),
    /// A source is there but cannot be used (a bad file, a profile without keys, a command
    /// that fails, STS refusing).
    #[error("{0}")]
    Broken(String),
}

fn broken(e: impl std::fmt::Display) -> CredentialsError {
    CredentialsError::Broken(e.to_string())
}

/// The credentials of the chain; `allow_imds`: whether to end with the EC2 instance role (it
/// needs the network to know whether it is there). `Ok(None)` when no source applies.
pub fn chain(
    explicit: Option<(String, String)>,
    allow_imds: bool,
) -> Result<Option<Credentials>, CredentialsError> {
    chain_with(&process_env, explicit, allow_imds)
}

/// [`chain`] reading the environment through `env`.
pub fn chain_with(
    env: Env,
    explicit: Option<(String, String)>,
    allow_imds: bool,
) -> Result<Option<Credentials>, CredentialsError> {
    Ok(source(env, explicit, allow_imds)?.map(Credentials::new))
}

/// `credentials` as object_store's S3 client asks for them (before each request; fetched
/// again only when stale).
pub fn object_store_provider(credentials: Credentials) -> object_store::aws::AwsCredentialProvider {
    Arc::new(ObjectStoreCredentials(credentials))
}

struct ObjectStoreCredentials(Credentials);

impl std::fmt::Debug for ObjectStoreCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "from {}", self.0.describe())
    }
}

#[async_trait::async_trait]
impl object_store::CredentialProvider for ObjectStoreCredentials {
    type Credential = object_store::aws::AwsCredential;

    async fn get_credential(&self) -> object_store::Result<Arc<Self::Credential>> {
        let keys = self
            .0
            .keys()
            .await
            .map_err(|e| object_store::Error::Generic {
                store: "S3",
                source: format!("CredentialsUnavailable: {e}").into(),
            })?;
        Ok(Arc::new(object_store::aws::AwsCredential {
            key_id: keys.access_key_id,
            secret_key: keys.secret_access_key,
            token: keys.session_token,
        }))
    }
}

fn source(
    env: Env,
    explicit: Option<(String, String)>,
    allow_imds: bool,
) -> Result<Option<Source>, CredentialsError> {
    if let Some((id, secret)) = explicit {
        return Ok(Some(Source::Fixed(Keys {
            access_key_id: id,
            secret_access_key: secret,
            session_token: None,
            source: "the config file".into(),
        })));
    }
    if let Some(keys) = environment_keys(env) {
        return Ok(Some(Source::Fixed(keys)));
    }
    let files = SharedFiles::load(env)?;
    let profile = profile_name(env);
    if files.has(&profile) {
        return profile_source(env, &files, &profile, 0).map(Some);
    }
    if env("AWS_PROFILE").is_some() {
        return Err(broken(format!(
            "AWS_PROFILE names profile '{profile}', which neither {} nor {} has",
            files.credentials_path(),
            files.config_path()
        )));
    }
    if let (Some(token_file), Some(role_arn)) =
        (env("AWS_WEB_IDENTITY_TOKEN_FILE"), env("AWS_ROLE_ARN"))
    {
        return Ok(Some(Source::WebIdentity {
            token_file: token_file.into(),
            role_arn,
            session_name: env("AWS_ROLE_SESSION_NAME").unwrap_or_else(session_name),
            sts: Sts::from_env(env, None),
        }));
    }
    if let Some(container) = container_source(env) {
        return Ok(Some(container));
    }
    if allow_imds
        && !env("AWS_EC2_METADATA_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
    {
        return Ok(Some(imds_source(env)));
    }
    Ok(None)
}

fn environment_keys(env: Env) -> Option<Keys> {
    Some(Keys {
        access_key_id: env("AWS_ACCESS_KEY_ID")?,
        secret_access_key: env("AWS_SECRET_ACCESS_KEY")?,
        session_token: env("AWS_SESSION_TOKEN"),
        source: "the environment".into(),
    })
}

fn session_name() -> String {
    format!("hosepipe-{}", Utc::now().timestamp_millis())
}

fn container_source(env: Env) -> Option<Source> {
    let token = || {
        env("AWS_CONTAINER_AUTHORIZATION_TOKEN").or_else(|| {
            env("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE")
                .and_then(|p| std::fs::read_to_string(p).ok())
                .map(|t| t.trim().to_string())
        })
    };
    if let Some(rel) = env("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI") {
        return Some(Source::Container {
            url: format!("http://169.254.170.2{rel}"),
            token: token(),
        });
    }
    env("AWS_CONTAINER_CREDENTIALS_FULL_URI").map(|url| Source::Container {
        url,
        token: token(),
    })
}

fn imds_source(env: Env) -> Source {
    let base =
        env("AWS_EC2_METADATA_SERVICE_ENDPOINT").unwrap_or_else(|| "http://169.254.169.254".into());
    Source::Imds {
        base: base.trim_end_matches('/').to_string(),
    }
}

/// The shared `credentials` and `config` files, as read now.
struct SharedFiles {
    credentials: Option<(PathBuf, Ini)>,
    config: Option<(PathBuf, Ini)>,
}

impl SharedFiles {
    fn load(env: Env) -> Result<SharedFiles, CredentialsError> {
        let read = |path: Option<PathBuf>| -> Result<Option<(PathBuf, Ini)>, CredentialsError> {
            match path {
                Some(p) if p.exists() => {
                    let ini = Ini::load_from_file(&p)
                        .map_err(|e| broken(format!("{}: {e}", p.display())))?;
                    Ok(Some((p, ini)))
                }
                _ => Ok(None),
            }
        };
        Ok(SharedFiles {
            credentials: read(home_file(
                env,
                "AWS_SHARED_CREDENTIALS_FILE",
                ".aws/credentials",
            ))?,
            config: read(home_file(env, "AWS_CONFIG_FILE", ".aws/config"))?,
        })
    }

    fn credentials_path(&self) -> String {
        self.credentials
            .as_ref()
            .map_or("~/.aws/credentials".into(), |c| c.0.display().to_string())
    }

    fn config_path(&self) -> String {
        self.config
            .as_ref()
            .map_or("~/.aws/config".into(), |c| c.0.display().to_string())
    }

    fn has(&self, profile: &str) -> bool {
        self.credentials
            .as_ref()
            .is_some_and(|(_, i)| i.section(Some(profile)).is_some())
            || self
                .config
                .as_ref()
                .is_some_and(|(_, i)| i.section(Some(config_section(profile))).is_some())
    }

    /// A setting of `profile`: the credentials file's section first, then the config file's.
    fn get(&self, profile: &str, key: &str) -> Option<(PathBuf, String, String)> {
        let from = |file: &Option<(PathBuf, Ini)>, section: String| {
            file.as_ref().and_then(|(p, ini)| {
                ini.section(Some(section.as_str()))
                    .and_then(|s| s.get(key))
                    .map(|v| (p.clone(), section.clone(), v.to_string()))
            })
        };
        from(&self.credentials, profile.to_string())
            .or_else(|| from(&self.config, config_section(profile)))
    }

    fn value(&self, profile: &str, key: &str) -> Option<String> {
        self.get(profile, key).map(|(_, _, v)| v)
    }
}

/// How a profile gets its keys, as the SDKs read it.
fn profile_source(
    env: Env,
    files: &SharedFiles,
    profile: &str,
    depth: usize,
) -> Result<Source, CredentialsError> {
    if depth > 5 {
        return Err(broken(format!(
            "profile '{profile}': source_profile chain is longer than 5 (a loop?)"
        )));
    }
    let value = |k: &str| files.value(profile, k);
    let static_keys = || {
        files
            .get(profile, "aws_access_key_id")
            .filter(|_| value("aws_secret_access_key").is_some())
            .map(|(path, section, _)| Source::File { path, section })
    };
    if let Some(role_arn) = value("role_arn") {
        let session_name = value("role_session_name").unwrap_or_else(session_name);
        let sts = Sts::from_env(env, value("region").as_deref());
        if let Some(token_file) = value("web_identity_token_file") {
            return Ok(Source::WebIdentity {
                token_file: token_file.into(),
                role_arn,
                session_name,
                sts,
            });
        }
        let base = match (value("source_profile"), value("credential_source")) {
            // A profile may be its own source: its static keys assume the role.
            (Some(source), _) if source == profile => static_keys().ok_or_else(|| {
                broken(format!("profile '{profile}' is its own source_profile but has no keys"))
            })?,
            (Some(source), _) => {
                if !files.has(&source) {
                    return Err(broken(format!(
                        "profile '{profile}': source_profile '{source}' does not exist"
                    )));
                }
                profile_source(env, files, &source, depth + 1)?
            }
            (None, Some(cs)) => match cs.as_str() {
                "Environment" => environment_keys(env).map(Source::Fixed).ok_or_else(|| {
                    broken(format!("profile '{profile}': credential_source Environment but AWS_ACCESS_KEY_ID is not set"))
                })?,
                "EcsContainer" => container_source(env).ok_or_else(|| {
                    broken(format!("profile '{profile}': credential_source EcsContainer but no container endpoint is set"))
                })?,
                "Ec2InstanceMetadata" => imds_source(env),
                other => {
                    return Err(broken(format!(
                        "profile '{profile}': credential_source {other:?} is not Environment, EcsContainer or Ec2InstanceMetadata"
                    )));
                }
            },
            (None, None) => {
                return Err(broken(format!(
                    "profile '{profile}' has role_arn but neither source_profile nor credential_source"
                )));
            }
        };
        return Ok(Source::AssumeRole {
            role_arn,
            session_name,
            external_id: value("external_id"),
            duration_seconds: value("duration_seconds").and_then(|d| d.parse().ok()),
            base: Box::new(Credentials::new(base)),
            sts,
        });
    }
    if let Some(command) = value("credential_process") {
        return Ok(Source::Process {
            command,
            profile: profile.to_string(),
        });
    }
    static_keys().ok_or_else(|| {
        broken(format!(
            "profile '{profile}' has no credentials (aws_access_key_id and aws_secret_access_key, credential_process or role_arn)"
        ))
    })
}

/// A profile's keys in a shared file, as the file says now.
fn file_keys(path: &std::path::Path, section: &str) -> Result<Keys, String> {
    let ini = Ini::load_from_file(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let props = ini
        .section(Some(section))
        .ok_or_else(|| format!("{}: no [{section}] any more", path.display()))?;
    let (Some(id), Some(secret)) = (
        props.get("aws_access_key_id"),
        props.get("aws_secret_access_key"),
    ) else {
        return Err(format!("{} [{section}]: no keys any more", path.display()));
    };
    Ok(Keys {
        access_key_id: id.to_string(),
        secret_access_key: secret.to_string(),
        session_token: props.get("aws_session_token").map(String::from),
        source: format!("{} [{section}]", path.display()),
    })
}

/// Reads the `AccessKeyId` / `SecretAccessKey` / `Token` (or `SessionToken`) / `Expiration`
/// document that the container endpoint, IMDS and `credential_process` answer.
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
            session_token: field("Token").or_else(|| field("SessionToken")),
            source,
        },
        expires,
    ))
}

/// The text of `<tag>…</tag>` in an STS answer (its values hold no markup or entities: keys,
/// tokens, timestamps).
fn xml_text<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&format!("</{tag}>"))? + start;
    Some(xml[start..end].trim())
}

/// The `<Credentials>` of an AssumeRole / AssumeRoleWithWebIdentity answer.
fn parse_sts(xml: &str, source: String) -> Result<(Keys, Option<DateTime<Utc>>), String> {
    let creds = xml_text(xml, "Credentials")
        .ok_or_else(|| format!("{source}: no Credentials in the answer"))?;
    let field = |t: &str| {
        xml_text(creds, t)
            .map(String::from)
            .ok_or_else(|| format!("{source}: no {t} in the answer"))
    };
    let expires = DateTime::parse_from_rfc3339(&field("Expiration")?)
        .map_err(|e| format!("{source}: Expiration: {e}"))?
        .with_timezone(&Utc);
    Ok((
        Keys {
            access_key_id: field("AccessKeyId")?,
            secret_access_key: field("SecretAccessKey")?,
            session_token: Some(field("SessionToken")?),
            source,
        },
        Some(expires),
    ))
}

/// An STS error answer's `Code: Message`.
fn sts_error(xml: &str) -> String {
    match (xml_text(xml, "Code"), xml_text(xml, "Message")) {
        (Some(c), Some(m)) => format!("{c}: {m}"),
        (Some(c), None) => c.to_string(),
        _ => xml.chars().take(300).collect(),
    }
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

fn form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", urlencode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// RFC 3986 percent-encoding of a form value (what SigV4's canonical form needs).
fn urlencode(v: &str) -> String {
    let mut out = String::new();
    for b in v.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

impl Source {
    /// A few words on where keys come from (never a secret).
    fn describe(&self) -> String {
        match self {
            Source::Fixed(k) => k.source.clone(),
            Source::File { path, section } => format!("{} [{section}]", path.display()),
            Source::Process { profile, .. } => format!("credential_process of profile '{profile}'"),
            Source::AssumeRole { role_arn, base, .. } => {
                format!(
                    "role {role_arn} assumed through STS with {}",
                    base.describe()
                )
            }
            Source::WebIdentity {
                role_arn,
                token_file,
                ..
            } => format!(
                "role {role_arn} assumed through STS with the web identity token {}",
                token_file.display()
            ),
            Source::Container { url, .. } => format!("the container credentials endpoint {url}"),
            Source::Imds { base } => format!("the EC2 instance role (IMDSv2 at {base})"),
        }
    }

    async fn fetch(&self, http: &reqwest::Client) -> Result<Current, String> {
        let (keys, expires) = match self {
            Source::Fixed(k) => (k.clone(), None),
            Source::File { path, section } => {
                let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
                return Ok(Current {
                    keys: file_keys(path, section)?,
                    expires: None,
                    modified,
                });
            }
            Source::Process { command, .. } => {
                let command = command.clone();
                let out = tokio::task::spawn_blocking(move || {
                    std::process::Command::new("sh")
                        .arg("-c")
                        .arg(&command)
                        .output()
                })
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("credential_process: {e}"))?;
                if !out.status.success() {
                    return Err(format!(
                        "credential_process exited with {}: {}",
                        out.status,
                        String::from_utf8_lossy(&out.stderr).trim()
                    ));
                }
                parse_document(&String::from_utf8_lossy(&out.stdout), self.describe())?
            }
            Source::AssumeRole {
                role_arn,
                session_name,
                external_id,
                duration_seconds,
                base,
                sts,
            } => {
                let keys = Box::pin(base.keys()).await?;
                let duration = duration_seconds.map(|d| d.to_string());
                let mut pairs = vec![
                    ("Action", "AssumeRole"),
                    ("Version", "2011-06-15"),
                    ("RoleArn", role_arn.as_str()),
                    ("RoleSessionName", session_name.as_str()),
                ];
                if let Some(id) = external_id {
                    pairs.push(("ExternalId", id));
                }
                if let Some(d) = &duration {
                    pairs.push(("DurationSeconds", d));
                }
                let (status, text) = crate::aws_client::signed_post(
                    http,
                    &sts.url,
                    &sts.region,
                    "sts",
                    &keys,
                    "application/x-www-form-urlencoded; charset=utf-8",
                    &[],
                    form(&pairs).into_bytes(),
                )
                .await
                .map_err(|e| format!("STS AssumeRole {role_arn}: {e}"))?;
                if !status.is_success() {
                    return Err(format!("STS AssumeRole {role_arn}: {}", sts_error(&text)));
                }
                parse_sts(&text, self.describe())?
            }
            Source::WebIdentity {
                token_file,
                role_arn,
                session_name,
                sts,
            } => {
                let token = std::fs::read_to_string(token_file)
                    .map_err(|e| format!("{}: {e}", token_file.display()))?;
                let body = form(&[
                    ("Action", "AssumeRoleWithWebIdentity"),
                    ("Version", "2011-06-15"),
                    ("RoleArn", role_arn),
                    ("RoleSessionName", session_name),
                    ("WebIdentityToken", token.trim()),
                ]);
                let resp = http
                    .post(&sts.url)
                    .header(
                        "content-type",
                        "application/x-www-form-urlencoded; charset=utf-8",
                    )
                    .body(body)
                    .send()
                    .await
                    .map_err(|e| format!("STS AssumeRoleWithWebIdentity: {e}"))?;
                let status = resp.status();
                let text = resp.text().await.map_err(|e| e.to_string())?;
                if !status.is_success() {
                    return Err(format!(
                        "STS AssumeRoleWithWebIdentity {role_arn}: {}",
                        sts_error(&text)
                    ));
                }
                parse_sts(&text, self.describe())?
            }
            Source::Container { url, token } => {
                let mut req = http.get(url);
                if let Some(t) = token {
                    req = req.header("Authorization", t);
                }
                let text = get_text(req, url).await?;
                parse_document(&text, self.describe())?
            }
            Source::Imds { base } => {
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
                parse_document(&text, format!("the EC2 instance role {role} (IMDSv2)"))?
            }
        };
        Ok(Current {
            keys,
            expires,
            modified: None,
        })
    }
}

impl Credentials {
    fn new(source: Source) -> Credentials {
        Credentials {
            inner: Arc::new(Inner {
                source,
                http: std::sync::OnceLock::new(),
                current: tokio::sync::Mutex::new(None),
            }),
        }
    }

    fn http(&self) -> Result<&reqwest::Client, String> {
        // Metadata endpoints answer within a second or not at all; STS gets longer. No proxy
        // for the link-local metadata services (the SDKs do the same); STS honours HTTPS_PROXY.
        let local = matches!(
            self.inner.source,
            Source::Imds { .. } | Source::Container { .. }
        );
        self.inner
            .http
            .get_or_init(|| {
                let mut http = crate::aws_client::client_builder()
                    .connect_timeout(Duration::from_secs(if local { 1 } else { 10 }))
                    .timeout(Duration::from_secs(if local { 5 } else { 30 }));
                if local {
                    http = http.no_proxy();
                }
                http.build().map_err(|e| {
                    format!(
                        "credentials' HTTP client: {}",
                        crate::aws_client::error_chain(&e)
                    )
                })
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    pub fn fixed(keys: Keys) -> Self {
        Credentials::new(Source::Fixed(keys))
    }

    /// Where the keys come from, for logs (never a secret).
    pub fn describe(&self) -> String {
        self.inner.source.describe()
    }

    /// Where the keys in force came from (an instance role's name once fetched), else
    /// [`describe`](Self::describe).
    pub async fn source(&self) -> String {
        match self.inner.current.lock().await.as_ref() {
            Some(c) => c.keys.source.clone(),
            None => self.describe(),
        }
    }

    /// Keys good for at least five more minutes: fetched on first use, again when they expire
    /// within five minutes or their file changed. While a refresh fails the current keys serve
    /// until they expire.
    pub async fn keys(&self) -> Result<Keys, String> {
        let mut current = self.inner.current.lock().await;
        let soon = Utc::now() + chrono::Duration::minutes(5);
        let stale = match current.as_ref() {
            None => true,
            Some(c) => {
                c.expires.is_some_and(|e| e <= soon)
                    || match &self.inner.source {
                        Source::File { path, .. } => {
                            std::fs::metadata(path).and_then(|m| m.modified()).ok() != c.modified
                        }
                        _ => false,
                    }
            }
        };
        if stale {
            match self.inner.source.fetch(self.http()?).await {
                Ok(fresh) => {
                    match current.as_ref() {
                        None => {
                            tracing::info!(source = %self.describe(), access_key_id = %fresh.keys.access_key_id, expires = ?fresh.expires, "credentials fetched")
                        }
                        Some(c) if c.keys != fresh.keys => {
                            tracing::info!(source = %self.describe(), access_key_id = %fresh.keys.access_key_id, expires = ?fresh.expires, "credentials refreshed")
                        }
                        Some(_) => {}
                    }
                    *current = Some(fresh);
                }
                Err(e)
                    if current
                        .as_ref()
                        .is_some_and(|c| c.expires.is_none_or(|x| x > Utc::now())) =>
                {
                    tracing::warn!(error = %e, "cannot refresh credentials; using the current ones");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(current.as_ref().expect("fetched above").keys.clone())
    }
}

/// The first source that has keys, fetched once (a producer fails at start when it has none);
/// an error naming every place looked in when none does.
pub async fn resolve(explicit: Option<(String, String)>) -> Result<Credentials, String> {
    let nowhere = || {
        format!(
            "no AWS credentials: set awsAccessKeyId/awsSecretAccessKey in the config, \
             AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, profile '{}' in the shared files, a web \
             identity token, or run where a container credentials endpoint or an EC2 instance \
             role is",
            profile_name(&process_env)
        )
    };
    let credentials = chain(explicit, true)
        .map_err(|e| e.to_string())?
        .ok_or_else(nowhere)?;
    match credentials.keys().await {
        Ok(_) => Ok(credentials),
        Err(e) if matches!(credentials.inner.source, Source::Imds { .. }) => {
            Err(format!("{} ({e})", nowhere()))
        }
        Err(e) => Err(e),
    }
}

/// The process's own chain (no keys of a config file), made once: the daemon's clients of AWS
/// services share its keys and their refreshes.
pub fn process_chain() -> Result<Credentials, String> {
    static CHAIN: std::sync::OnceLock<Result<Credentials, String>> = std::sync::OnceLock::new();
    CHAIN
        .get_or_init(|| {
            chain(None, true)
                .map_err(|e| e.to_string())?
                .ok_or_else(|| "no AWS credentials: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, a web identity token, or run where a container credentials endpoint or an EC2 instance role is".to_string())
        })
        .clone()
}

/// Keys from the sources that need no network and no command (config, environment, a shared
/// file's static keys).
pub fn static_keys(explicit: Option<(String, String)>) -> Result<Option<Keys>, String> {
    match source(&process_env, explicit, false).map_err(|e| e.to_string())? {
        Some(Source::Fixed(k)) => Ok(Some(k)),
        Some(Source::File { path, section }) => file_keys(&path, &section).map(Some),
        _ => Ok(None),
    }
}

/// The region: the producer's own setting, `AWS_REGION`, `AWS_DEFAULT_REGION`, the profile's
/// `region`, the one in an `*.<region>.amazonaws.com` endpoint, else `us-east-1`.
pub fn region(explicit: Option<&str>, endpoint: &str) -> String {
    if let Some(r) = explicit.filter(|r| !r.is_empty()) {
        return r.to_string();
    }
    let env: Env = &process_env;
    if let Some(r) = env("AWS_REGION").or_else(|| env("AWS_DEFAULT_REGION")) {
        return r;
    }
    if let Some(path) = home_file(env, "AWS_CONFIG_FILE", ".aws/config")
        && let Ok(ini) = Ini::load_from_file(&path)
        && let Some(r) = ini
            .section(Some(config_section(&profile_name(env))))
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
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// An environment of `pairs` only.
    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    fn describe(env: &dyn Fn(&str) -> Option<String>, imds: bool) -> Option<String> {
        source(env, None, imds).unwrap().map(|s| s.describe())
    }

    fn shared_files(dir: &std::path::Path, credentials: &str, config: &str) -> (String, String) {
        let (c, f) = (dir.join("credentials"), dir.join("config"));
        std::fs::write(&c, credentials).unwrap();
        std::fs::write(&f, config).unwrap();
        (c.display().to_string(), f.display().to_string())
    }

    #[test]
    fn the_chain_takes_the_first_source_in_the_sdks_order() {
        let dir = tempfile::tempdir().unwrap();
        let (creds, config) = shared_files(
            dir.path(),
            "[default]\naws_access_key_id = PROFILE\naws_secret_access_key = s\n",
            "",
        );
        let files = [
            ("AWS_SHARED_CREDENTIALS_FILE", creds.as_str()),
            ("AWS_CONFIG_FILE", config.as_str()),
        ];
        let web = [
            ("AWS_WEB_IDENTITY_TOKEN_FILE", "/var/run/token"),
            ("AWS_ROLE_ARN", "arn:aws:iam::1:role/r"),
        ];
        let container = [(
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            "http://127.0.0.1:1/creds",
        )];
        let keys = [("AWS_ACCESS_KEY_ID", "ENV"), ("AWS_SECRET_ACCESS_KEY", "s")];
        let all: Vec<_> = [&keys[..], &files[..], &web[..], &container[..]].concat();
        assert_eq!(describe(&env_of(&all), true).unwrap(), "the environment");
        let all: Vec<_> = [&files[..], &web[..], &container[..]].concat();
        assert!(
            describe(&env_of(&all), true)
                .unwrap()
                .contains("credentials [default]")
        );
        let all: Vec<_> = [&web[..], &container[..]].concat();
        assert!(
            describe(&env_of(&all), true)
                .unwrap()
                .contains("web identity token")
        );
        assert!(
            describe(&env_of(&container), true)
                .unwrap()
                .contains("container")
        );
        assert!(describe(&env_of(&[]), true).unwrap().contains("IMDSv2"));
        assert_eq!(describe(&env_of(&[]), false), None);
        let off = [("AWS_EC2_METADATA_DISABLED", "true")];
        assert_eq!(describe(&env_of(&off), true), None);
        // Explicit keys (a config file's) come before everything.
        let explicit = source(&env_of(&keys), Some(("CFG".into(), "s".into())), true).unwrap();
        assert_eq!(explicit.unwrap().describe(), "the config file");
    }

    #[test]
    fn profiles_are_read_as_the_sdks_read_them() {
        let dir = tempfile::tempdir().unwrap();
        let (creds, config) = shared_files(
            dir.path(),
            "[base]\naws_access_key_id = BASE\naws_secret_access_key = s\n",
            "[profile writer]\nrole_arn = arn:aws:iam::1:role/writer\nsource_profile = base\n\
             external_id = ext\n\n\
             [profile fromenv]\nrole_arn = arn:aws:iam::1:role/e\ncredential_source = Environment\n\n\
             [profile web]\nrole_arn = arn:aws:iam::1:role/w\nweb_identity_token_file = /t\n\n\
             [profile proc]\ncredential_process = echo hi\n\n\
             [profile empty]\nregion = eu-west-1\n\n\
             [profile loop]\nrole_arn = arn:aws:iam::1:role/l\nsource_profile = loop2\n\n\
             [profile loop2]\nrole_arn = arn:aws:iam::1:role/l\nsource_profile = loop\n",
        );
        let with = |profile: &str, extra: &[(&str, &str)]| {
            let mut pairs = vec![
                ("AWS_SHARED_CREDENTIALS_FILE", creds.as_str()),
                ("AWS_CONFIG_FILE", config.as_str()),
                ("AWS_PROFILE", profile),
            ];
            pairs.extend_from_slice(extra);
            source(&env_of(&pairs), None, false)
        };
        match with("writer", &[]).unwrap().unwrap() {
            Source::AssumeRole {
                role_arn,
                external_id,
                base,
                ..
            } => {
                assert_eq!(role_arn, "arn:aws:iam::1:role/writer");
                assert_eq!(external_id.as_deref(), Some("ext"));
                assert!(base.describe().contains("credentials [base]"));
            }
            other => panic!("{other:?}"),
        }
        // (With AWS_ACCESS_KEY_ID set the chain stops at the environment, before any profile;
        // a profile whose credential_source is Environment is asked for directly.)
        let keyed = env_of(&[
            ("AWS_SHARED_CREDENTIALS_FILE", creds.as_str()),
            ("AWS_CONFIG_FILE", config.as_str()),
            ("AWS_ACCESS_KEY_ID", "E"),
            ("AWS_SECRET_ACCESS_KEY", "s"),
        ]);
        let files = SharedFiles::load(&keyed).unwrap();
        match profile_source(&keyed, &files, "fromenv", 0).unwrap() {
            Source::AssumeRole { base, .. } => assert_eq!(base.describe(), "the environment"),
            other => panic!("{other:?}"),
        }
        assert!(with("fromenv", &[]).is_err(), "Environment without keys");
        assert!(matches!(
            with("web", &[]),
            Ok(Some(Source::WebIdentity { .. }))
        ));
        assert!(matches!(
            with("proc", &[]),
            Ok(Some(Source::Process { .. }))
        ));
        let err = with("empty", &[]).unwrap_err().to_string();
        assert!(err.contains("profile 'empty' has no credentials"), "{err}");
        assert!(with("loop", &[]).unwrap_err().to_string().contains("loop"));
        let err = with("absent", &[]).unwrap_err().to_string();
        assert!(err.contains("AWS_PROFILE names profile 'absent'"), "{err}");
    }

    #[tokio::test]
    async fn credential_process_answers_are_keys() {
        let ok = Credentials::new(Source::Process {
            command: r#"printf '{"Version":1,"AccessKeyId":"PROC","SecretAccessKey":"s","SessionToken":"t","Expiration":"2099-01-01T00:00:00Z"}'"#.into(),
            profile: "p".into(),
        });
        let keys = ok.keys().await.unwrap();
        assert_eq!(
            (keys.access_key_id.as_str(), keys.session_token.as_deref()),
            ("PROC", Some("t"))
        );
        let failing = Credentials::new(Source::Process {
            command: "echo denied >&2; exit 3".into(),
            profile: "p".into(),
        });
        let err = failing.keys().await.unwrap_err();
        assert!(err.contains("denied"), "{err}");
    }

    #[tokio::test]
    async fn rotated_files_are_read_again_without_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("credentials");
        std::fs::write(
            &path,
            "[default]\naws_access_key_id = OLD\naws_secret_access_key = s\n",
        )
        .unwrap();
        let creds = Credentials::new(Source::File {
            path: path.clone(),
            section: "default".into(),
        });
        assert_eq!(creds.keys().await.unwrap().access_key_id, "OLD");
        std::fs::write(
            &path,
            "[default]\naws_access_key_id = NEW\naws_secret_access_key = s\n",
        )
        .unwrap();
        // A rotation tool writes later than the first read; make the clock's tick certain.
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(SystemTime::now() + Duration::from_secs(5))
            .unwrap();
        assert_eq!(creds.keys().await.unwrap().access_key_id, "NEW");
    }

    /// A stand-in on 127.0.0.1 answering every request with `answer(n, headers, body)`, n
    /// counting from 1.
    async fn stand_in(
        answer: impl Fn(usize, &axum::http::HeaderMap, &str) -> (u16, String) + Send + Sync + 'static,
    ) -> (String, Arc<AtomicUsize>) {
        let seen = Arc::new(AtomicUsize::new(0));
        let (answer, count) = (Arc::new(answer), seen.clone());
        let app =
            axum::Router::new().fallback(move |headers: axum::http::HeaderMap, body: String| {
                let (answer, count) = (answer.clone(), count.clone());
                async move {
                    let n = count.fetch_add(1, Ordering::SeqCst) + 1;
                    let (status, text) = answer(n, &headers, &body);
                    (axum::http::StatusCode::from_u16(status).unwrap(), text)
                }
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (url, seen)
    }

    fn document(id: &str, expires: DateTime<Utc>) -> String {
        serde_json::json!({"AccessKeyId": id, "SecretAccessKey": "s", "Token": "t",
                           "Expiration": expires.to_rfc3339()})
        .to_string()
    }

    #[tokio::test]
    async fn temporary_credentials_are_fetched_again_before_they_expire() {
        // Keys expiring in 4 minutes are inside the 5-minute margin: every use fetches anew.
        let (url, seen) = stand_in(|n, _, _| {
            (
                200,
                document(&format!("K{n}"), Utc::now() + chrono::Duration::minutes(4)),
            )
        })
        .await;
        let soon = Credentials::new(Source::Container { url, token: None });
        assert_eq!(soon.keys().await.unwrap().access_key_id, "K1");
        assert_eq!(soon.keys().await.unwrap().access_key_id, "K2");
        assert_eq!(seen.load(Ordering::SeqCst), 2);
        // An hour away: kept.
        let (url, seen) = stand_in(|n, _, _| {
            (
                200,
                document(&format!("L{n}"), Utc::now() + chrono::Duration::hours(1)),
            )
        })
        .await;
        let later = Credentials::new(Source::Container {
            url,
            token: Some("tok".into()),
        });
        assert_eq!(later.keys().await.unwrap().access_key_id, "L1");
        assert_eq!(later.keys().await.unwrap().access_key_id, "L1");
        assert_eq!(seen.load(Ordering::SeqCst), 1);
        // A failed refresh keeps keys that have not expired yet.
        let (url, _) = stand_in(|n, _, _| match n {
            1 => (
                200,
                document("M1", Utc::now() + chrono::Duration::minutes(4)),
            ),
            _ => (500, "down".into()),
        })
        .await;
        let flaky = Credentials::new(Source::Container { url, token: None });
        assert_eq!(flaky.keys().await.unwrap().access_key_id, "M1");
        assert_eq!(flaky.keys().await.unwrap().access_key_id, "M1");
    }

    #[tokio::test]
    async fn imds_v2_gives_the_instance_role() {
        let (url, seen) = stand_in(|n, headers, _| match n {
            1 => (200, "TOKEN".into()),
            2 if headers
                .get("x-aws-ec2-metadata-token")
                .is_some_and(|t| t == "TOKEN") =>
            {
                (200, "instance-role\n".into())
            }
            3 => (
                200,
                document("IMDS", Utc::now() + chrono::Duration::hours(6)),
            ),
            _ => (401, String::new()),
        })
        .await;
        let imds = Credentials::new(Source::Imds { base: url });
        assert_eq!(imds.keys().await.unwrap().access_key_id, "IMDS");
        assert_eq!(seen.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn assume_role_is_signed_with_the_source_keys() {
        let (url, _) = stand_in(|_, headers, body| {
            let auth = headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !auth.contains("Credential=BASE/") || !auth.contains("/sts/aws4_request")
                || !body.contains("Action=AssumeRole") || !body.contains("RoleArn=arn%3Aaws%3Aiam%3A%3A1%3Arole%2Fw")
            {
                return (403, "<ErrorResponse><Error><Code>AccessDenied</Code><Message>no</Message></Error></ErrorResponse>".into());
            }
            (200, "<AssumeRoleResponse><AssumeRoleResult><Credentials><AccessKeyId>ASIAROLE</AccessKeyId>\
                   <SecretAccessKey>rs</SecretAccessKey><SessionToken>st</SessionToken>\
                   <Expiration>2099-01-01T00:00:00Z</Expiration></Credentials></AssumeRoleResult></AssumeRoleResponse>".into())
        })
        .await;
        let assume = |base: &str| {
            Credentials::new(Source::AssumeRole {
                role_arn: "arn:aws:iam::1:role/w".into(),
                session_name: "s".into(),
                external_id: None,
                duration_seconds: None,
                base: Box::new(Credentials::fixed(Keys {
                    access_key_id: base.into(),
                    secret_access_key: "bs".into(),
                    session_token: None,
                    source: "test".into(),
                })),
                sts: Sts {
                    url: url.clone(),
                    region: "us-east-1".into(),
                },
            })
        };
        let keys = assume("BASE").keys().await.unwrap();
        assert_eq!(
            (keys.access_key_id.as_str(), keys.session_token.as_deref()),
            ("ASIAROLE", Some("st"))
        );
        let err = assume("OTHER").keys().await.unwrap_err();
        assert!(err.contains("AccessDenied: no"), "{err}");
    }

    #[test]
    fn documents_and_answers_parse() {
        let (k, exp) = parse_document(
            r#"{"Code":"Success","AccessKeyId":"ASIA1","SecretAccessKey":"s","Token":"t",
                "Expiration":"2030-01-01T00:00:00Z"}"#,
            "imds".into(),
        )
        .unwrap();
        assert_eq!(k.session_token.as_deref(), Some("t"));
        assert_eq!(exp.unwrap().to_rfc3339(), "2030-01-01T00:00:00+00:00");
        assert!(parse_document("{}", "x".into()).is_err());
        assert!(
            !format!("{k:?}").contains("\"s\""),
            "Debug hides the secret"
        );
        assert!(parse_sts("<x/>", "sts".into()).is_err());
        assert_eq!(urlencode("a b/c:d~"), "a%20b%2Fc%3Ad~");
    }

    #[test]
    fn region_from_an_aws_endpoint() {
        // Only when nothing in the environment names one (CI may set AWS_REGION).
        if process_env("AWS_REGION").is_none() && process_env("AWS_DEFAULT_REGION").is_none() {
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
