//! `[log]`: where accepted records are kept until delivered. `backend = "spool"` (the default)
//! is the local write-ahead spool; `backend = "jetstream"` is a NATS JetStream cluster shared by
//! a fleet of hosepipe nodes (its streams hold the records, a key-value bucket the streams'
//! definitions).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    /// `spool` (default) or `jetstream`.
    pub backend: Option<String>,
    /// NATS server URLs (`nats://host:4222`, `tls://…`); several for a cluster.
    #[serde(default)]
    pub servers: Vec<String>,
    /// JetStream replicas of each stream and of the control-plane bucket (default 3).
    pub replicas: Option<usize>,
    /// This node's name in metrics, status and the NATS connection (default: host name and
    /// listen port).
    pub node: Option<String>,
    /// Prefix of the JetStream streams, subjects and bucket hosepipe makes (default
    /// `hosepipe`): two fleets can share a NATS cluster under different prefixes.
    pub prefix: Option<String>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
    /// CA certificates (PEM) to trust for the servers' TLS.
    pub tls_ca_file: Option<PathBuf>,
    /// A client certificate and key (PEM) for servers that verify clients.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// Refuse to connect without TLS (default: TLS when the URL or server asks for it).
    pub require_tls: Option<bool>,
    /// How long a record handed to a node may go unacknowledged before JetStream gives it to
    /// another node (default 60). Nodes holding records longer (buffering, an outage) renew it.
    pub ack_wait_seconds: Option<u64>,
    /// Messages (each a put's records) handed out and not yet acknowledged, the fleet
    /// together, per stream: past it JetStream hands out no more (default 100000).
    pub max_ack_pending: Option<i64>,
    /// Cap of each JetStream stream in MiB; past it, puts are refused with "Slow down."
    /// (default: none; the servers' limits apply).
    pub max_stream_mb: Option<u64>,
    /// How long a put waits for JetStream's acknowledgement before it is refused (default 5000).
    pub publish_timeout_ms: Option<u64>,
}

/// The JetStream backend's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct JetStreamSettings {
    pub servers: Vec<String>,
    pub replicas: usize,
    pub node: String,
    pub prefix: String,
    pub user: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
    pub tls_ca_file: Option<PathBuf>,
    pub tls_client: Option<(PathBuf, PathBuf)>,
    pub require_tls: bool,
    pub ack_wait: Duration,
    pub max_ack_pending: i64,
    pub max_stream_bytes: Option<u64>,
    pub publish_timeout: Duration,
}

/// Where accepted records are kept.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum LogBackend {
    /// The local write-ahead spool (`[spool]`).
    #[default]
    Spool,
    JetStream(Box<JetStreamSettings>),
}

impl LogBackend {
    pub fn jetstream(&self) -> Option<&JetStreamSettings> {
        match self {
            LogBackend::JetStream(s) => Some(s),
            LogBackend::Spool => None,
        }
    }
}

/// The name a node gets when the config gives none: the host's name and the listen port.
fn default_node(port: u16) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "hosepipe".into());
    format!("{host}-{port}")
}

/// Checks `[log]`, adding what is wrong to `errors`.
pub fn parse(raw: Option<RawLog>, listen_port: u16, errors: &mut Vec<String>) -> LogBackend {
    let raw = raw.unwrap_or_default();
    match raw.backend.as_deref().unwrap_or("spool") {
        "spool" => {
            if !raw.servers.is_empty() {
                errors.push("log.servers: set only with log.backend = \"jetstream\"".into());
            }
            LogBackend::Spool
        }
        "jetstream" => {
            if raw.servers.is_empty() {
                errors.push("log.servers: jetstream needs at least one NATS server URL".into());
            }
            let replicas = raw.replicas.unwrap_or(3);
            if !(1..=5).contains(&replicas) {
                errors.push(format!("log.replicas: {replicas} is outside 1..=5"));
            }
            let prefix = raw.prefix.unwrap_or_else(|| "hosepipe".into());
            if prefix.is_empty()
                || !prefix
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                errors.push(format!(
                    "log.prefix: {prefix:?} must be letters, digits, - and _"
                ));
            }
            let mut within = |key: &str, value: i64, range: std::ops::RangeInclusive<i64>| {
                if !range.contains(&value) {
                    errors.push(format!(
                        "log.{key}: {value} is outside {}..={}",
                        range.start(),
                        range.end()
                    ));
                }
                value
            };
            let ack_wait = within(
                "ack_wait_seconds",
                raw.ack_wait_seconds.map_or(60, |v| v as i64),
                5..=3600,
            ) as u64;
            let max_ack_pending = within(
                "max_ack_pending",
                raw.max_ack_pending.unwrap_or(100_000),
                1_000..=10_000_000,
            );
            let publish_timeout = within(
                "publish_timeout_ms",
                raw.publish_timeout_ms.map_or(5000, |v| v as i64),
                100..=60_000,
            ) as u64;
            let tls_client = match (raw.tls_cert_file, raw.tls_key_file) {
                (Some(c), Some(k)) => Some((c, k)),
                (None, None) => None,
                _ => {
                    errors.push("log.tls_cert_file and log.tls_key_file go together".into());
                    None
                }
            };
            LogBackend::JetStream(Box::new(JetStreamSettings {
                servers: raw.servers,
                replicas,
                node: raw.node.unwrap_or_else(|| default_node(listen_port)),
                prefix,
                user: raw.user,
                password: raw.password,
                token: raw.token,
                tls_ca_file: raw.tls_ca_file,
                tls_client,
                require_tls: raw.require_tls.unwrap_or(false),
                ack_wait: Duration::from_secs(ack_wait),
                max_ack_pending,
                max_stream_bytes: raw.max_stream_mb.map(|m| m * 1024 * 1024),
                publish_timeout: Duration::from_millis(publish_timeout),
            }))
        }
        other => {
            errors.push(format!(
                "log.backend: {other:?} is not one of spool, jetstream"
            ));
            LogBackend::Spool
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_toml(text: &str) -> (LogBackend, Vec<String>) {
        let raw: RawLog = toml::from_str(text).unwrap();
        let mut errors = Vec::new();
        (parse(Some(raw), 4573, &mut errors), errors)
    }

    #[test]
    fn jetstream_takes_its_servers_and_defaults() {
        let (backend, errors) =
            parse_toml("backend = \"jetstream\"\nservers = [\"nats://a:4222\"]\nnode = \"n1\"");
        assert!(errors.is_empty(), "{errors:?}");
        let s = backend.jetstream().unwrap();
        assert_eq!(s.servers, ["nats://a:4222"]);
        assert_eq!(
            (s.replicas, s.node.as_str(), s.prefix.as_str()),
            (3, "n1", "hosepipe")
        );
        assert_eq!(s.ack_wait, Duration::from_secs(60));
    }

    #[test]
    fn what_is_wrong_is_named_by_its_key() {
        let (_, errors) = parse_toml("backend = \"jetstream\"\nreplicas = 7\nprefix = \"a.b\"");
        let text = errors.join("\n");
        for key in ["log.servers", "log.replicas", "log.prefix"] {
            assert!(text.contains(key), "{text}");
        }
        let (backend, errors) = parse_toml("servers = [\"nats://a\"]");
        assert_eq!(backend, LogBackend::Spool);
        assert!(errors[0].starts_with("log.servers"));
        let (_, errors) = parse_toml("backend = \"kafka\"");
        assert!(errors[0].contains("not one of spool, jetstream"));
    }
}
