//! The daemon's configuration: a TOML file, read in two phases. [`RawConfig`] is what serde
//! reads (unknown fields refused); [`Config::from_raw`] validates it into typed values, and every
//! error names its dotted path and what is allowed.

pub mod conversion;
pub mod fields;
pub mod http;
pub mod http_endpoint;
pub mod iceberg;
pub mod log;
pub mod names;
pub mod opensearch;
pub mod policy;
pub mod processing;
pub mod s3;
pub mod splunk;
pub mod stream;
pub mod update;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hosepipe_sinks::{ObjectStoreSettings, S3Endpoint};
use serde::Deserialize;

use stream::{CreateDeliveryStreamInput, StreamSpec};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:4573";

/// The config file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub region: Option<String>,
    pub account_id: Option<String>,
    pub shutdown_timeout_seconds: Option<u64>,
    /// `auto` (default): S3 when S3 credentials are configured, else local disk; `local`; `s3`.
    pub object_store: Option<String>,
    /// Where local-disk buckets are (default `<data_dir>/buckets`): the nodes of a fleet on one
    /// machine, or on a shared file system, can write to the same directory.
    pub buckets_dir: Option<PathBuf>,
    pub auth: Option<RawAuth>,
    pub s3: Option<RawS3>,
    pub spool: Option<RawSpool>,
    pub log: Option<log::RawLog>,
    pub memory: Option<RawMemory>,
    pub admission: Option<RawAdmission>,
    pub transforms: Option<RawTransforms>,
    /// Tables for record format conversion, by database and table name.
    #[serde(default)]
    pub catalog: BTreeMap<String, BTreeMap<String, RawTable>>,
    pub glue: Option<RawGlue>,
    pub encryption: Option<RawEncryption>,
    pub opensearch: Option<RawOpenSearch>,
    pub splunk: Option<RawSplunk>,
    pub http_endpoint: Option<RawHttpEndpoint>,
    pub iceberg: Option<RawIceberg>,
    pub secrets: Option<RawSecrets>,
    pub receiver: Option<RawReceiver>,
    pub tls: Option<RawTls>,
    /// CA certificates (PEM) the daemon's own clients trust besides the system's (S3, KMS,
    /// Glue, OpenSearch, Splunk); else `AWS_CA_BUNDLE`.
    pub ca_bundle: Option<PathBuf>,
    /// Per-stream Direct PUT quotas, keyed by stream name.
    #[serde(default)]
    pub quotas: BTreeMap<String, RawQuota>,
    #[serde(default)]
    pub streams: BTreeMap<String, toml::Value>,
}

/// `[catalog.<database>.<table>]`: a table's columns in Hive/Glue type syntax.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTable {
    pub columns: Vec<RawColumn>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawColumn {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: String,
}

/// `[tls]`: HTTPS on the listener.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Require client certificates signed by this CA (PEM).
    pub client_ca_file: Option<PathBuf>,
    /// Serve plain HTTP on an address other than loopback (off: such a listener needs TLS).
    #[serde(default)]
    pub allow_plain_http: bool,
}

/// `[glue]`: the Glue Data Catalog to read tables from (else `AWS_ENDPOINT_URL_GLUE`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGlue {
    pub endpoint: Option<String>,
    pub region: Option<String>,
}

/// `[encryption]`: the key service behind `KMSEncryptionConfig` and `hosepipe decrypt`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEncryption {
    /// `local` (the keyring file, the default) or `aws-kms`.
    pub provider: Option<String>,
    /// The local keyring (default `<data_dir>/keyring.json`).
    pub keyring: Option<PathBuf>,
    /// KMS endpoint (else `AWS_ENDPOINT_URL_KMS`, else AWS).
    pub kms_endpoint: Option<String>,
    pub kms_region: Option<String>,
    /// Objects one data key may encrypt (default 1: a fresh key per object).
    pub data_key_max_objects: Option<u32>,
    /// How long a data key may be reused (default 300).
    pub data_key_max_age_seconds: Option<u64>,
    /// The master key behind `AWS_OWNED_CMK` (spool encryption at rest): default
    /// `hosepipe-owned`, created in the local keyring on first use; with `aws-kms`, a key id,
    /// ARN or alias KMS knows.
    pub owned_key: Option<String>,
}

/// `[opensearch]`: how the daemon reaches OpenSearch / Elasticsearch clusters.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOpenSearch {
    /// HTTP basic auth for every `ClusterEndpoint` (both or neither).
    pub username: Option<String>,
    pub password: Option<String>,
}

/// `[splunk]`: event metadata and an acknowledgement-timeout override for HEC destinations.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSplunk {
    /// Event endpoint metadata (default: the machine's hostname, `hosepipe:<stream>`,
    /// `aws:firehose`, the token's default index).
    pub host: Option<String>,
    pub source: Option<String>,
    pub sourcetype: Option<String>,
    pub index: Option<String>,
    /// Replaces every stream's `HECAcknowledgmentTimeoutInSeconds` (tests, slow indexers).
    pub ack_timeout_seconds: Option<u64>,
}

/// `[http_endpoint]`: how the daemon posts to HTTP endpoint destinations.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttpEndpoint {
    /// How long an endpoint has to answer one request (Firehose: 180).
    pub request_timeout_seconds: Option<u64>,
}

/// `[iceberg]`: the Iceberg catalogs streams' `CatalogARN`s name.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIceberg {
    /// The catalog `arn:aws:glue:<region>:<account>:catalog` (no name) means: default `glue`
    /// when a Glue endpoint is configured (`[glue] endpoint`, `AWS_ENDPOINT_URL_GLUE`), else
    /// `default`.
    pub default_catalog: Option<String>,
    /// `[iceberg.catalogs.<name>]`: `…:catalog/<name>` means this one.
    #[serde(default)]
    pub catalogs: BTreeMap<String, RawIcebergCatalog>,
}

/// One Iceberg catalog: SQL or REST (`uri`), or Glue (`glue = true`).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIcebergCatalog {
    /// A SQL catalog's database (`sqlite:///path/catalog.db`, `postgresql://…`) or a REST
    /// catalog's base URL (`http(s)://host/…`, without `/v1`).
    pub uri: Option<String>,
    /// The AWS Glue Data Catalog (`[glue]`'s endpoint, the `AWS_*` credentials).
    #[serde(default)]
    pub glue: bool,
    /// Glue's `CatalogId` (an account id), else the caller's.
    pub catalog_id: Option<String>,
    /// Where tables go when a stream gives no `WarehouseLocation` (`s3://bucket/prefix`); for
    /// a REST catalog, the warehouse the server knows (a name or a location).
    pub warehouse: Option<String>,
    /// A REST catalog's other properties as the Iceberg REST client takes them: `credential`
    /// (`client_id:secret`, exchanged for a token at `oauth2-server-uri` or `/v1/oauth/tokens`),
    /// `token`, `scope`, `header.<name>`, …
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

/// The validated `[iceberg]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IcebergConfig {
    pub default_catalog: String,
    /// Catalog name → what it is and its warehouse. Unless the config says otherwise, the
    /// catalog `default` is SQLite at `<data_dir>/iceberg/catalog.db` and `glue` is Glue.
    pub catalogs: BTreeMap<String, IcebergCatalog>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IcebergCatalog {
    pub kind: CatalogKind,
    pub warehouse: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CatalogKind {
    /// A SQL catalog (the JDBC-catalog layout) in this database.
    Sql { uri: String },
    /// The AWS Glue Data Catalog.
    Glue { catalog_id: Option<String> },
    /// A catalog speaking the Iceberg REST protocol at this base URL, with these client
    /// properties.
    Rest {
        uri: String,
        properties: BTreeMap<String, String>,
    },
}

fn validate_iceberg(
    raw: Option<RawIceberg>,
    data_dir: &Path,
    glue_configured: bool,
    errors: &mut Vec<String>,
) -> IcebergConfig {
    let raw = raw.unwrap_or_default();
    let mut catalogs: BTreeMap<String, IcebergCatalog> = raw
        .catalogs
        .into_iter()
        .map(|(name, c)| {
            let sql = ["sqlite:", "postgres://", "postgresql://"];
            let rest = ["http://", "https://"];
            let kind = match (c.uri, c.glue) {
                (Some(uri), false) if rest.iter().any(|p| uri.starts_with(p)) => {
                    CatalogKind::Rest {
                        uri: uri.trim_end_matches('/').to_string(),
                        properties: c.properties.clone(),
                    }
                }
                (Some(uri), false) => {
                    if !sql.iter().any(|p| uri.starts_with(p)) {
                        errors.push(format!(
                            "iceberg.catalogs.{name}.uri: {uri:?} is neither a SQL catalog URI (sqlite:///path or postgresql://…) nor a REST catalog's http(s):// URL"
                        ));
                    }
                    CatalogKind::Sql { uri }
                }
                (None, true) => CatalogKind::Glue {
                    catalog_id: c.catalog_id,
                },
                _ => {
                    errors.push(format!(
                        "iceberg.catalogs.{name}: give either uri (a SQL or REST catalog) or glue = true"
                    ));
                    CatalogKind::Glue { catalog_id: None }
                }
            };
            let is_rest = matches!(kind, CatalogKind::Rest { .. });
            if !is_rest && !c.properties.is_empty() {
                errors.push(format!(
                    "iceberg.catalogs.{name}.properties: only a REST catalog takes properties"
                ));
            }
            if let Some(w) = &c.warehouse
                && !is_rest
                && !w.starts_with("s3://")
            {
                errors.push(format!(
                    "iceberg.catalogs.{name}.warehouse: {w:?} is not an s3://bucket/prefix location"
                ));
            }
            (
                name,
                IcebergCatalog {
                    kind,
                    warehouse: c.warehouse,
                },
            )
        })
        .collect();
    catalogs
        .entry("default".into())
        .or_insert_with(|| IcebergCatalog {
            kind: CatalogKind::Sql {
                uri: format!(
                    "sqlite://{}",
                    std::path::absolute(data_dir)
                        .unwrap_or_else(|_| data_dir.to_path_buf())
                        .join("iceberg/catalog.db")
                        .display()
                ),
            },
            warehouse: None,
        });
    catalogs
        .entry("glue".into())
        .or_insert_with(|| IcebergCatalog {
            kind: CatalogKind::Glue { catalog_id: None },
            warehouse: None,
        });
    let default_catalog = raw.default_catalog.unwrap_or_else(|| {
        match glue_configured {
            true => "glue",
            false => "default",
        }
        .into()
    });
    if !catalogs.contains_key(&default_catalog) {
        errors.push(format!(
            "iceberg.default_catalog: {default_catalog:?} is not one of [iceberg.catalogs]"
        ));
    }
    IcebergConfig {
        default_catalog,
        catalogs,
    }
}

/// `[secrets]`: where Secrets Manager is (else `AWS_ENDPOINT_URL_SECRETSMANAGER`) and how often
/// a secret is read again.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSecrets {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// Default 600 (Firehose: about 10 minutes).
    pub refresh_seconds: Option<u64>,
}

/// `[receiver]`: Firehose HTTP endpoint deliveries accepted at `POST /http-endpoint/<stream>`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReceiver {
    /// The `X-Amz-Firehose-Access-Key` values accepted; the receiver is off without one.
    #[serde(default)]
    pub access_keys: Vec<String>,
}

/// The validated `[http_endpoint]`, `[secrets]` and `[receiver]` sections.
#[derive(Debug, Clone)]
pub struct HttpEndpointConfig {
    pub request_timeout: Duration,
    pub secrets: crate::secrets::SecretsSettings,
    /// Empty: the receiver is off.
    pub receiver_keys: Vec<String>,
}

fn validate_http_endpoint(raw: &RawConfig, errors: &mut Vec<String>) -> HttpEndpointConfig {
    let timeout = raw
        .http_endpoint
        .as_ref()
        .and_then(|h| h.request_timeout_seconds)
        .unwrap_or(180);
    if !(1..=900).contains(&timeout) {
        errors.push(format!(
            "http_endpoint.request_timeout_seconds: {timeout} is outside 1..=900"
        ));
    }
    let secrets = raw.secrets.clone().unwrap_or_default();
    let refresh = secrets.refresh_seconds.unwrap_or(600);
    if refresh == 0 {
        errors.push("secrets.refresh_seconds: must be at least 1".into());
    }
    let receiver_keys = raw
        .receiver
        .as_ref()
        .map(|r| r.access_keys.clone())
        .unwrap_or_default();
    if receiver_keys.iter().any(|k| k.is_empty() || k.len() > 4096) {
        errors.push("receiver.access_keys: each key must be 1-4096 characters".into());
    }
    HttpEndpointConfig {
        request_timeout: Duration::from_secs(timeout),
        secrets: crate::secrets::SecretsSettings {
            endpoint: secrets.endpoint,
            region: secrets.region,
            refresh: Duration::from_secs(refresh),
        },
        receiver_keys,
    }
}

/// Which key service holds the master keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyProvider {
    Local {
        keyring: PathBuf,
    },
    AwsKms {
        endpoint: Option<String>,
        region: Option<String>,
    },
}

/// The validated `[encryption]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncryptionConfig {
    pub provider: KeyProvider,
    pub reuse: crate::crypto::sink::Reuse,
    /// The master key behind `AWS_OWNED_CMK`.
    pub owned_key: String,
}

impl EncryptionConfig {
    /// The key service this configuration names.
    pub fn key_service(&self) -> Result<std::sync::Arc<dyn crate::crypto::KeyService>, String> {
        Ok(match &self.provider {
            KeyProvider::Local { keyring } => {
                std::sync::Arc::new(crate::crypto::keyring::Keyring::new(keyring))
            }
            KeyProvider::AwsKms { endpoint, region } => {
                let mut ep = crate::aws_client::ServiceEndpoint::from_env("kms")?;
                if let Some(url) = endpoint {
                    ep.url = url.clone();
                }
                if let Some(r) = region {
                    ep.region = r.clone();
                }
                std::sync::Arc::new(crate::crypto::kms::Kms::new(ep))
            }
        })
    }
}

/// `[transforms]`: where WebAssembly transforms live and the sandbox's limits.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTransforms {
    /// Directory of `<function-name>.wasm` components, named by `LambdaArn`s.
    pub dir: Option<PathBuf>,
    /// Deadline of one transform call (Firehose: the Lambda timeout). Default 10000.
    pub timeout_ms: Option<u64>,
    /// Memory cap of one transform instance. Default 128.
    pub memory_mb: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSpool {
    /// `fsync` (default): acknowledge after fdatasync; `os`: after write (page cache).
    pub sync: Option<String>,
    pub segment_mb: Option<u64>,
    /// Cap on spool bytes on disk, all streams together: the backlog. Default: half the
    /// disk's free space when the daemon starts.
    pub max_mb: Option<u64>,
    /// Older name of `[memory] max_mb`, still read.
    pub max_buffered_mb: Option<u64>,
    /// Records undelivered for longer go to the error output when it is reachable, and are
    /// counted (default 86400 s = 24 h, like Firehose).
    pub retention_seconds: Option<u64>,
    /// Journal each S3 object's records before it is uploaded, so that after a crash no
    /// record is written to two objects (default true; false: at-least-once, as Firehose).
    pub object_journal: Option<bool>,
}

/// `[memory]`: the one memory budget of the stages.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMemory {
    /// Records inside the stages and requests being decoded, all streams together
    /// (default 128). It does not grow with the backlog, which stays on disk.
    pub max_mb: Option<u64>,
}

/// `[admission]`: how producers are refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmission {
    /// How long a put that would be refused waits for capacity first (default 200, at most
    /// 5000).
    pub wait_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawQuota {
    pub records_per_second: Option<u32>,
    pub bytes_per_second: Option<u32>,
    pub requests_per_second: Option<u32>,
    /// Dynamic partitioning's active-partition limit (Firehose: 500, raisable to 5,000).
    pub active_partitions: Option<u32>,
}

/// A stream's Direct PUT quota (Firehose's per-stream throughput limits).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Quota {
    pub records_per_second: Option<std::num::NonZeroU32>,
    pub bytes_per_second: Option<std::num::NonZeroU32>,
    pub requests_per_second: Option<std::num::NonZeroU32>,
    /// Active partitions beyond which records go to the error output (default 500).
    pub active_partitions: Option<std::num::NonZeroU32>,
}

/// Firehose's default active-partition limit.
pub const DEFAULT_ACTIVE_PARTITIONS: u32 = 500;

/// Spool and memory limits.
#[derive(Debug, Clone)]
pub struct SpoolConfig {
    pub settings: crate::spool::SpoolSettings,
    /// `None`: [`default_spool_cap`] of the disk at start.
    pub max_bytes: Option<u64>,
    /// `[memory] max_mb`.
    pub memory_bytes: u64,
    /// `[admission] wait_ms`.
    pub admission_wait: Duration,
    pub retention: Duration,
    /// `[spool] object_journal`: exactly-once objects.
    pub object_journal: bool,
}

/// The spool cap when none is configured: half the space free on the spool's disk (at least
/// 64 MiB), so a destination outage can back up for as long as the disk allows while the rest
/// of the machine keeps room.
pub fn default_spool_cap(dir: &std::path::Path) -> std::io::Result<u64> {
    let stat = rustix::fs::statvfs(dir)?;
    let free = stat.f_bavail.saturating_mul(stat.f_frsize);
    Ok((free / 2).max(64 * 1024 * 1024))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    #[serde(default)]
    pub keys: Vec<RawKey>,
    /// `/metrics` and `/status` answer only requests with `Authorization: Bearer <token>`.
    pub metrics_token: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKey {
    pub access_key_id: String,
    pub secret_access_key: String,
    /// IAM-style statements; without any the key may call every operation on every stream.
    #[serde(default)]
    pub policy: Vec<policy::RawStatement>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawS3 {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub multipart_threshold_mb: Option<u64>,
    pub part_size_mb: Option<u64>,
}

/// One access key the API accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessKey {
    pub access_key_id: String,
    pub secret_access_key: String,
    /// `None`: every operation on every stream.
    pub policy: Option<policy::Policy>,
}

/// A stream declared in the config file.
#[derive(Debug, Clone)]
pub struct DeclaredStream {
    pub spec: StreamSpec,
    pub input: CreateDeliveryStreamInput,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub region: String,
    pub account_id: String,
    pub shutdown_timeout: Duration,
    /// Empty: authentication off.
    pub access_keys: Vec<AccessKey>,
    /// `[auth] metrics_token`: `/metrics` and `/status` need it as a bearer token.
    pub metrics_token: Option<String>,
    pub store: ObjectStoreSettings,
    pub spool: SpoolConfig,
    /// `[log]`: the local spool, or a JetStream cluster shared by a fleet.
    pub log: log::LogBackend,
    pub quotas: BTreeMap<String, Quota>,
    pub streams: Vec<DeclaredStream>,
    pub transforms: crate::transform::catalog::CatalogSettings,
    pub catalog: crate::schema::LocalCatalog,
    /// Glue endpoint from the config (`[glue]`), overriding the environment's.
    pub glue_endpoint: Option<String>,
    pub glue_region: Option<String>,
    pub encryption: EncryptionConfig,
    /// `[opensearch]` basic auth (user, password).
    pub opensearch_auth: Option<(String, String)>,
    /// `[splunk]`.
    pub splunk: RawSplunk,
    /// `[http_endpoint]`, `[secrets]`, `[receiver]`.
    pub http_endpoint: HttpEndpointConfig,
    /// `[iceberg]`.
    pub iceberg: IcebergConfig,
    /// `[tls]`: the listener serves HTTPS.
    pub tls: Option<crate::tls::TlsFiles>,
    /// CA certificates the daemon's clients trust besides the system's (`ca_bundle`).
    pub ca_bundle: Option<PathBuf>,
}

/// Overrides from the command line and the environment.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
}

/// Replaces every `` `Name` `` in a serde message by its config spelling.
fn snake_message(msg: &str) -> String {
    msg.split('`')
        .enumerate()
        .map(|(i, part)| {
            if i % 2 == 1 {
                names::api_to_snake(part)
            } else {
                part.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("`")
}

/// A TOML table of a stream, with its keys turned into the API's spelling.
fn toml_to_api_json(value: &toml::Value) -> serde_json::Value {
    match value {
        toml::Value::String(s) => serde_json::Value::String(s.clone()),
        toml::Value::Integer(i) => serde_json::Value::from(*i),
        toml::Value::Float(f) => serde_json::Value::from(*f),
        toml::Value::Boolean(b) => serde_json::Value::Bool(*b),
        toml::Value::Datetime(d) => serde_json::Value::String(d.to_string()),
        toml::Value::Array(a) => serde_json::Value::Array(a.iter().map(toml_to_api_json).collect()),
        toml::Value::Table(t) => serde_json::Value::Object(
            t.iter()
                .map(|(k, v)| (names::snake_to_api(k), toml_to_api_json(v)))
                .collect(),
        ),
    }
}

/// Parses one stream table of the config file into the API input shape.
pub fn parse_stream_table(
    name: &str,
    value: &toml::Value,
) -> Result<CreateDeliveryStreamInput, Vec<String>> {
    let json = toml_to_api_json(value);
    serde_path_to_error::deserialize(json).map_err(|e| {
        let path = e.path().to_string();
        let snake_path: Vec<String> = path
            .split('.')
            .filter(|s| !s.is_empty() && *s != "?")
            .map(names::api_to_snake)
            .collect();
        let mut at = format!("streams.{name}");
        if !snake_path.is_empty() {
            at.push('.');
            at.push_str(&snake_path.join("."));
        }
        vec![format!(
            "{at}: {}",
            snake_message(&e.into_inner().to_string())
        )]
    })
}

fn env_first(env: &dyn Fn(&str) -> Option<String>, names: &[&str]) -> Option<String> {
    names.iter().find_map(|n| env(n).filter(|v| !v.is_empty()))
}

impl Config {
    /// The Glue endpoint to read tables from: `[glue] endpoint`, else `AWS_ENDPOINT_URL_GLUE`,
    /// with the `AWS_*` credentials. `Ok(None)` when no endpoint is set; an error when one is but
    /// it cannot be called (no credentials).
    pub fn glue_endpoint(&self) -> Result<Option<crate::aws_client::ServiceEndpoint>, String> {
        let Some(url) = self
            .glue_endpoint
            .clone()
            .or_else(|| std::env::var("AWS_ENDPOINT_URL_GLUE").ok())
        else {
            return Ok(None);
        };
        let mut endpoint = crate::aws_client::ServiceEndpoint::from_env("glue")?;
        endpoint.url = url;
        if let Some(r) = &self.glue_region {
            endpoint.region = r.clone();
        }
        Ok(Some(endpoint))
    }

    /// Reads and validates a config file (or the defaults when `path` is `None`).
    pub fn load(
        path: Option<&Path>,
        overrides: &Overrides,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, Vec<String>> {
        let raw = match path {
            None => RawConfig::default(),
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| vec![format!("{}: cannot read: {e}", p.display())])?;
                toml::from_str::<RawConfig>(&text)
                    .map_err(|e| vec![format!("{}: {}", p.display(), e.to_string().trim_end())])?
            }
        };
        Config::from_raw(raw, overrides, env)
    }

    /// Phase two: typed values, every error with its dotted path.
    pub fn from_raw(
        raw: RawConfig,
        overrides: &Overrides,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, Vec<String>> {
        let mut errors = Vec::new();
        let http_endpoint = validate_http_endpoint(&raw, &mut errors);
        let listen_text = overrides
            .listen
            .clone()
            .or(raw.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.to_string());
        let listen = listen_text.parse::<SocketAddr>().unwrap_or_else(|_| {
            errors.push(format!(
                "listen: {listen_text:?} is not an address like 127.0.0.1:4573"
            ));
            DEFAULT_LISTEN
                .parse()
                .expect("default listen address parses")
        });
        let data_dir = overrides
            .data_dir
            .clone()
            .or(raw.data_dir)
            .unwrap_or_else(|| PathBuf::from("data"));
        let glue_configured = raw.glue.as_ref().is_some_and(|g| g.endpoint.is_some())
            || env("AWS_ENDPOINT_URL_GLUE").is_some_and(|v| !v.is_empty());
        let iceberg =
            validate_iceberg(raw.iceberg.clone(), &data_dir, glue_configured, &mut errors);
        let s3 = raw.s3.unwrap_or_default();
        let region = raw
            .region
            .or_else(|| env_first(env, &["AWS_REGION", "AWS_DEFAULT_REGION"]))
            .unwrap_or_else(|| "us-east-1".into());
        let account_id = raw.account_id.unwrap_or_else(|| "000000000000".into());
        if account_id.len() != 12 || !account_id.bytes().all(|b| b.is_ascii_digit()) {
            errors.push(format!("account_id: {account_id:?} must be 12 digits"));
        }
        let tls = validate_tls(raw.tls.unwrap_or_default(), listen, &mut errors);
        let mut access_keys = Vec::new();
        let auth = raw.auth.unwrap_or_default();
        for (i, k) in auth.keys.into_iter().enumerate() {
            if k.access_key_id.is_empty() || k.secret_access_key.is_empty() {
                errors.push(format!(
                    "auth.keys[{i}]: access_key_id and secret_access_key must not be empty"
                ));
            }
            let policy = match k.policy.is_empty() {
                true => None,
                false => policy::Policy::validate(k.policy, &format!("auth.keys[{i}].policy"))
                    .map_err(|e| errors.extend(e))
                    .ok(),
            };
            access_keys.push(AccessKey {
                access_key_id: k.access_key_id,
                secret_access_key: k.secret_access_key,
                policy,
            });
        }
        let metrics_token = auth.metrics_token.filter(|t| !t.is_empty());

        // Where objects go: [s3] first, the AWS_* environment for what it leaves out.
        let endpoint = s3
            .endpoint
            .or_else(|| env_first(env, &["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"]));
        if let Some(url) = &endpoint
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            errors.push(format!(
                "s3.endpoint: {url:?} must start with http:// or https://"
            ));
        }
        let ak = s3
            .access_key_id
            .or_else(|| env_first(env, &["AWS_ACCESS_KEY_ID"]));
        let sk = s3
            .secret_access_key
            .or_else(|| env_first(env, &["AWS_SECRET_ACCESS_KEY"]));
        let s3_region = s3.region.unwrap_or_else(|| region.clone());
        let threshold_mb = s3.multipart_threshold_mb.unwrap_or(16);
        let part_mb = s3.part_size_mb.unwrap_or(8);
        if !(5..=5120).contains(&part_mb) {
            errors.push(format!("s3.part_size_mb: {part_mb} is outside 5..=5120"));
        }
        if !(1..=5120).contains(&threshold_mb) {
            errors.push(format!(
                "s3.multipart_threshold_mb: {threshold_mb} is outside 1..=5120"
            ));
        }
        let mode = raw.object_store.unwrap_or_else(|| "auto".into());
        // Without keys of its own, S3 signs with the credential chain: a profile, a web
        // identity token, a container endpoint; IMDS only when `object_store = "s3"` says S3
        // (asking it needs the network, and "auto" falls back to local disk).
        let chain = match (mode.as_str(), &ak, &sk) {
            ("auto" | "s3", None, _) | ("auto" | "s3", _, None) => {
                crate::credentials::chain_with(env, None, mode == "s3").unwrap_or_else(|e| {
                    errors.push(format!("S3 credentials: {e}"));
                    None
                })
            }
            _ => None,
        };
        let remote = match (mode.as_str(), ak, sk) {
            ("local", _, _) => None,
            ("auto" | "s3", Some(ak), Some(sk)) => Some(S3Endpoint {
                url: endpoint,
                region: s3_region,
                access_key_id: ak,
                secret_access_key: sk,
                provider: None,
            }),
            ("auto" | "s3", _, _) if let Some(chain) = chain => Some(S3Endpoint {
                url: endpoint,
                region: s3_region,
                access_key_id: String::new(),
                secret_access_key: String::new(),
                provider: Some(crate::credentials::object_store_provider(chain)),
            }),
            ("auto", _, _) => None,
            ("s3", _, _) => {
                errors.push("object_store: \"s3\" needs s3.access_key_id and s3.secret_access_key (or AWS credentials: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, a web identity token, a container endpoint or an EC2 instance role)".into());
                None
            }
            (other, _, _) => {
                errors.push(format!(
                    "object_store: {other:?} is not one of auto, local, s3"
                ));
                None
            }
        };
        let store = ObjectStoreSettings {
            s3: remote,
            local_root: raw
                .buckets_dir
                .clone()
                .unwrap_or_else(|| data_dir.join("buckets")),
            multipart_threshold: (threshold_mb * 1024 * 1024) as usize,
            part_size: (part_mb * 1024 * 1024) as usize,
            // Read at start-up (`aws_client::trust_ca_bundle`).
            ca_bundle: None,
        };

        let mut streams = Vec::new();
        for (name, value) in &raw.streams {
            match parse_stream_table(name, value) {
                Err(e) => errors.extend(e),
                Ok(input) => {
                    if let Some(n) = &input.delivery_stream_name
                        && n != name
                    {
                        errors.push(format!(
                                "streams.{name}.delivery_stream_name: {n:?} differs from the table name; leave it out"
                            ));
                        continue;
                    }
                    match stream::validate(name, &input) {
                        Ok(spec) => streams.push(DeclaredStream { spec, input }),
                        Err(errs) => {
                            errors.extend(errs.into_iter().map(|e| {
                                format!("streams.{name}.{}: {}", e.config_path(), e.message)
                            }))
                        }
                    }
                }
            }
        }
        let log = log::parse(raw.log, listen.port(), &mut errors);
        let sp = raw.spool.unwrap_or_default();
        let sync_text = sp.sync.unwrap_or_else(|| "fsync".into());
        let sync = crate::spool::SyncMode::from_config(&sync_text).unwrap_or_else(|| {
            errors.push(format!("spool.sync: {sync_text:?} is not one of fsync, os"));
            crate::spool::SyncMode::Fsync
        });
        let mb = |v: u64| v * 1024 * 1024;
        let segment_mb = sp.segment_mb.unwrap_or(64);
        if !(1..=1024).contains(&segment_mb) {
            errors.push(format!(
                "spool.segment_mb: {segment_mb} is outside 1..=1024"
            ));
        }
        if sp.max_mb == Some(0) {
            errors.push("spool.max_mb: 0 is outside 1..".to_string());
        }
        let (memory_path, memory_mb) = match raw.memory.and_then(|m| m.max_mb) {
            Some(v) => ("memory.max_mb", v),
            None => ("spool.max_buffered_mb", sp.max_buffered_mb.unwrap_or(128)),
        };
        if !(1..=1024 * 1024).contains(&memory_mb) {
            errors.push(format!("{memory_path}: {memory_mb} is outside 1..=1048576"));
        }
        let wait_ms = raw.admission.and_then(|a| a.wait_ms).unwrap_or(200);
        if wait_ms > 5000 {
            errors.push(format!("admission.wait_ms: {wait_ms} is outside 0..=5000"));
        }
        let retention_seconds = sp.retention_seconds.unwrap_or(86_400);
        if !(1..=31_536_000).contains(&retention_seconds) {
            errors.push(format!(
                "spool.retention_seconds: {retention_seconds} is outside 1..=31536000"
            ));
        }
        let spool = SpoolConfig {
            settings: crate::spool::SpoolSettings {
                root: data_dir.join("spool"),
                sync,
                segment_bytes: mb(segment_mb),
            },
            max_bytes: sp.max_mb.map(mb),
            memory_bytes: mb(memory_mb),
            admission_wait: Duration::from_millis(wait_ms),
            retention: Duration::from_secs(retention_seconds),
            object_journal: sp.object_journal.unwrap_or(true),
        };
        let nz = |v: Option<u32>, path: String, errors: &mut Vec<String>| match v {
            None => None,
            Some(n) => std::num::NonZeroU32::new(n).or_else(|| {
                errors.push(format!("{path}: 0 is outside 1.."));
                None
            }),
        };
        let mut quotas = BTreeMap::new();
        for (name, q) in raw.quotas {
            let quota = Quota {
                records_per_second: nz(
                    q.records_per_second,
                    format!("quotas.{name}.records_per_second"),
                    &mut errors,
                ),
                bytes_per_second: nz(
                    q.bytes_per_second,
                    format!("quotas.{name}.bytes_per_second"),
                    &mut errors,
                ),
                requests_per_second: nz(
                    q.requests_per_second,
                    format!("quotas.{name}.requests_per_second"),
                    &mut errors,
                ),
                active_partitions: nz(
                    q.active_partitions,
                    format!("quotas.{name}.active_partitions"),
                    &mut errors,
                ),
            };
            quotas.insert(name, quota);
        }
        let tr = raw.transforms.unwrap_or_default();
        let timeout_ms = tr.timeout_ms.unwrap_or(10_000);
        if !(1..=900_000).contains(&timeout_ms) {
            errors.push(format!(
                "transforms.timeout_ms: {timeout_ms} is outside 1..=900000"
            ));
        }
        let memory_mb = tr.memory_mb.unwrap_or(128);
        if !(1..=4096).contains(&memory_mb) {
            errors.push(format!(
                "transforms.memory_mb: {memory_mb} is outside 1..=4096"
            ));
        }
        let transforms = crate::transform::catalog::CatalogSettings {
            dir: tr.dir,
            cache_dir: Some(data_dir.join("transform-cache")),
            limits: crate::transform::wasm::SandboxLimits {
                timeout: Duration::from_millis(timeout_ms),
                memory_bytes: mb(memory_mb) as usize,
            },
        };
        let mut catalog = crate::schema::LocalCatalog::default();
        for (database, tables) in raw.catalog {
            for (table, t) in tables {
                let table_ref = crate::schema::TableRef {
                    database: database.clone(),
                    table: table.clone(),
                    ..Default::default()
                };
                match crate::schema::TableSchema::from_columns(
                    table_ref,
                    t.columns.iter().map(|c| (c.name.as_str(), c.ty.as_str())),
                ) {
                    Ok(schema) => catalog.insert(schema),
                    Err(e) => errors.push(format!("catalog.{database}.{table}.columns: {e}")),
                }
            }
        }
        let glue = raw.glue.unwrap_or_default();
        let enc = raw.encryption.unwrap_or_default();
        let provider = match enc.provider.as_deref() {
            None | Some("local") => KeyProvider::Local {
                keyring: enc
                    .keyring
                    .clone()
                    .unwrap_or_else(|| data_dir.join("keyring.json")),
            },
            Some("aws-kms") => KeyProvider::AwsKms {
                endpoint: enc.kms_endpoint.clone(),
                region: enc.kms_region.clone(),
            },
            Some(other) => {
                errors.push(format!(
                    "encryption.provider: {other:?} is not one of local, aws-kms"
                ));
                KeyProvider::Local {
                    keyring: data_dir.join("keyring.json"),
                }
            }
        };
        if enc.data_key_max_objects == Some(0) {
            errors.push("encryption.data_key_max_objects: 0 is outside 1..".into());
        }
        let encryption = EncryptionConfig {
            provider,
            reuse: crate::crypto::sink::Reuse {
                max_objects: enc.data_key_max_objects.unwrap_or(1).max(1),
                max_age: Duration::from_secs(enc.data_key_max_age_seconds.unwrap_or(300)),
            },
            owned_key: enc
                .owned_key
                .clone()
                .unwrap_or_else(|| "hosepipe-owned".into()),
        };
        let os = raw.opensearch.unwrap_or_default();
        let opensearch_auth = match (os.username, os.password) {
            (Some(u), Some(p)) => Some((u, p)),
            (None, None) => None,
            _ => {
                errors.push("opensearch: give username and password together".into());
                None
            }
        };
        let timeout = raw.shutdown_timeout_seconds.unwrap_or(30);
        if errors.is_empty() {
            Ok(Config {
                listen,
                data_dir,
                region,
                account_id,
                shutdown_timeout: Duration::from_secs(timeout),
                access_keys,
                store,
                spool,
                log,
                quotas,
                streams,
                transforms,
                catalog,
                glue_endpoint: glue.endpoint,
                glue_region: glue.region,
                encryption,
                opensearch_auth,
                splunk: raw.splunk.unwrap_or_default(),
                http_endpoint,
                iceberg,
                tls,
                ca_bundle: raw.ca_bundle,
                metrics_token,
            })
        } else {
            Err(errors)
        }
    }
}

/// `[tls]`: both files or neither; without TLS the listener must be on loopback unless
/// `allow_plain_http` says otherwise (Firehose itself is HTTPS-only).
fn validate_tls(
    raw: RawTls,
    listen: SocketAddr,
    errors: &mut Vec<String>,
) -> Option<crate::tls::TlsFiles> {
    let files = match (raw.cert_file, raw.key_file) {
        (Some(cert_file), Some(key_file)) => Some(crate::tls::TlsFiles {
            cert_file,
            key_file,
            client_ca_file: raw.client_ca_file,
        }),
        (None, None) => {
            if raw.client_ca_file.is_some() {
                errors.push("tls.client_ca_file: needs tls.cert_file and tls.key_file".into());
            }
            None
        }
        (Some(_), None) => {
            errors.push("tls.key_file: is required with tls.cert_file".into());
            None
        }
        (None, Some(_)) => {
            errors.push("tls.cert_file: is required with tls.key_file".into());
            None
        }
    };
    if files.is_none() && !raw.allow_plain_http && !listen.ip().is_loopback() {
        errors.push(format!(
            "listen: {listen} is not a loopback address, so it needs TLS: set tls.cert_file and tls.key_file (or tls.allow_plain_http = true to serve plain HTTP there)"
        ));
    }
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn load_str(text: &str) -> Result<Config, Vec<String>> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| vec![e.to_string()])?;
        Config::from_raw(raw, &Overrides::default(), &no_env)
    }

    #[test]
    fn snake_case_stream_tables_mirror_the_api() {
        let cfg = load_str(
            r#"
            [streams.clicks.extended_s3_destination_configuration]
            bucket_arn = "arn:aws:s3:::clicks"
            compression_format = "GZIP"
            buffering_hints = { size_in_mbs = 1, interval_in_seconds = 0 }
            "#,
        )
        .unwrap();
        assert_eq!(cfg.streams.len(), 1);
        assert_eq!(cfg.streams[0].spec.limits().size_bytes, 1024 * 1024);
        assert!(cfg.store.s3.is_none(), "no credentials: local disk");
    }

    #[test]
    fn errors_name_the_dotted_path_and_the_range() {
        let errs = load_str(
            r#"
            [streams.clicks.extended_s3_destination_configuration]
            bucket_arn = "arn:aws:s3:::clicks"
            buffering_hints = { size_in_mbs = 1, interval_in_seconds = 901 }
            "#,
        )
        .unwrap_err();
        assert_eq!(
            errs,
            vec![
                "streams.clicks.extended_s3_destination_configuration.buffering_hints.interval_in_seconds: 901 is outside 0..=900"
            ]
        );
        let errs = load_str(
            r#"
            [streams.clicks.extended_s3_destination_configuration]
            bucket_arn = "arn:aws:s3:::clicks"
            buffering_hint = { size_in_mbs = 1 }
            "#,
        )
        .unwrap_err();
        assert!(errs[0].starts_with("streams.clicks.extended_s3_destination_configuration.buffering_hint: unknown field `buffering_hint`"), "{errs:?}");
        assert!(errs[0].contains("`buffering_hints`"), "{errs:?}");
        assert!(load_str("listn = 1").is_err());
    }

    #[test]
    fn tls_takes_both_files_and_plain_http_stays_on_loopback() {
        let errs = |text: &str| load_str(text).err().unwrap_or_default();
        assert!(errs("listen = \"127.0.0.1:4573\"").is_empty());
        let open = errs("listen = \"0.0.0.0:4573\"");
        assert!(open[0].contains("needs TLS"), "{open:?}");
        assert!(errs("listen = \"0.0.0.0:4573\"\n[tls]\nallow_plain_http = true").is_empty());
        assert_eq!(
            errs("[tls]\ncert_file = \"c.pem\""),
            ["tls.key_file: is required with tls.cert_file"]
        );
        let cfg = load_str(
            "listen = \"[::]:443\"\n[tls]\ncert_file = \"c.pem\"\nkey_file = \"k.pem\"\nclient_ca_file = \"ca.pem\"",
        )
        .unwrap();
        let tls = cfg.tls.unwrap();
        assert_eq!(tls.client_ca_file.unwrap(), Path::new("ca.pem"));
        assert_eq!(tls.cert_file, Path::new("c.pem"));
    }

    #[test]
    fn s3_comes_from_the_environment_when_the_file_is_silent() {
        let env = |k: &str| match k {
            "AWS_ENDPOINT_URL_S3" => Some("http://127.0.0.1:9000".to_string()),
            "AWS_ACCESS_KEY_ID" => Some("ak".to_string()),
            "AWS_SECRET_ACCESS_KEY" => Some("sk".to_string()),
            "AWS_REGION" => Some("eu-west-1".to_string()),
            _ => None,
        };
        let cfg = Config::from_raw(RawConfig::default(), &Overrides::default(), &env).unwrap();
        let s3 = cfg.store.s3.unwrap();
        assert_eq!(s3.url.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(s3.region, "eu-west-1");
        let raw: RawConfig = toml::from_str("object_store = \"local\"").unwrap();
        let cfg = Config::from_raw(raw, &Overrides::default(), &env).unwrap();
        assert!(cfg.store.s3.is_none());
    }

    #[test]
    fn iceberg_catalogs_are_sql_rest_or_glue() {
        let cfg = load_str(
            r#"
            [iceberg]
            default_catalog = "lake"
            [iceberg.catalogs.lake]
            uri = "https://catalog.example/api/catalog/"
            warehouse = "analytics"
            properties = { credential = "id:secret", scope = "PRINCIPAL_ROLE:ALL" }
            [iceberg.catalogs.pg]
            uri = "postgresql://u@db/iceberg"
            warehouse = "s3://lake/pg"
            "#,
        )
        .unwrap();
        let lake = &cfg.iceberg.catalogs["lake"];
        assert_eq!(
            lake.kind,
            CatalogKind::Rest {
                uri: "https://catalog.example/api/catalog".into(),
                properties: [("credential", "id:secret"), ("scope", "PRINCIPAL_ROLE:ALL")]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            }
        );
        assert_eq!(lake.warehouse.as_deref(), Some("analytics"));
        assert!(matches!(
            cfg.iceberg.catalogs["pg"].kind,
            CatalogKind::Sql { .. }
        ));
        assert!(matches!(
            cfg.iceberg.catalogs["glue"].kind,
            CatalogKind::Glue { .. }
        ));
        let errs = load_str(
            "[iceberg.catalogs.x]\nuri = \"ftp://h\"\n[iceberg.catalogs.y]\nuri = \"sqlite:///c.db\"\nwarehouse = \"wh\"\nproperties = { token = \"t\" }",
        )
        .unwrap_err();
        assert!(errs[0].contains("nor a REST catalog"), "{errs:?}");
        assert!(
            errs[1].contains("only a REST catalog takes properties"),
            "{errs:?}"
        );
        assert!(errs[2].contains("iceberg.catalogs.y.warehouse"), "{errs:?}");
    }

    #[test]
    fn every_example_config_validates() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().and_then(|e| e.to_str()) == Some("toml") {
                Config::load(Some(&path), &Overrides::default(), &no_env)
                    .unwrap_or_else(|e| panic!("{}: {e:?}", path.display()));
                seen += 1;
            }
        }
        assert!(seen >= 2, "config/ holds example configs");
    }
}
