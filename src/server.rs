//! Starting and stopping the daemon: the object store, the registry of streams, the listener.

use std::net::SocketAddr;
use std::sync::Arc;

use hosepipe_sinks::{Destination, S3Sink};

use crate::admission::Admission;
use crate::api::{self, AppState};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::pipeline::Shared;
use crate::registry::Registry;

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start the streams: {0}")]
    Restore(String),
    #[error("[tls]: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("ca_bundle: {0}")]
    CaBundle(#[from] crate::aws_client::CaBundleError),
    #[error("the S3 client cannot be built: {0}")]
    ObjectStore(String),
}

/// What every stream's pipeline is given, from the config: the key service, the transform
/// catalog, the table schemas, the HTTP destinations' clients.
pub(crate) fn shared_parts(
    config: &Config,
    sink: Arc<dyn Destination>,
    metrics: Arc<Metrics>,
    admission: Arc<Admission>,
) -> Result<Shared, StartError> {
    Ok(Shared {
        sink,
        metrics,
        admission,
        retention: config.spool.retention,
        // The journal is the local spool's; a fleet's log is JetStream's.
        object_journal: config.spool.object_journal && config.log.jetstream().is_none(),
        quotas: Arc::new(config.quotas.clone()),
        catalog: Arc::new(crate::transform::catalog::Catalog::new(
            config.transforms.clone(),
        )),
        keys: config
            .encryption
            .key_service()
            .map_err(|e| StartError::Restore(format!("[encryption]: {e}")))?,
        key_reuse: config.encryption.reuse,
        owned_key: config.encryption.owned_key.clone(),
        clients: crate::deliver::Clients::new(config)
            .map_err(|e| StartError::Restore(format!("HTTP client: {e}")))?,
        schemas: Arc::new(crate::schema::SchemaSource {
            local: config.catalog.clone(),
            glue: config.glue_endpoint().unwrap_or_else(|e| {
                tracing::warn!(error = %e, "a Glue endpoint is configured but cannot be called; tables come from the local catalog only");
                None
            }),
        }),
    })
}

/// A started daemon.
pub struct Server {
    pub addr: SocketAddr,
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
    pub config: Config,
    listener: tokio::net::TcpListener,
    /// `Some`: the listener serves HTTPS.
    tls: Option<Arc<rustls::ServerConfig>>,
    state: Arc<AppState>,
}

impl Server {
    /// Opens the data dir and the store, starts every stream, binds the listener.
    pub async fn start(mut config: Config) -> Result<Server, StartError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|source| StartError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
        let tls = config
            .tls
            .as_ref()
            .map(crate::tls::server_config)
            .transpose()?;
        if let Some(bundle) = crate::aws_client::trust_ca_bundle(config.ca_bundle.as_deref())? {
            tracing::info!(ca_bundle = %bundle.path.display(), "clients trust the CA bundle too");
            config.store.ca_bundle = Some(bundle.pem.clone());
        }
        tracing::info!(store = %config.store.describe(), "objects go to {}", config.store.describe());
        let s3 = S3Sink::new(config.store.clone());
        s3.check()
            .map_err(|e| StartError::ObjectStore(crate::aws_client::error_chain(&e)))?;
        let sink: Arc<dyn Destination> = Arc::new(s3);
        let metrics = Arc::new(Metrics::new());
        metrics.register_blocked_reasons(&crate::deliver::blocked::Cause::ALL.map(|c| c.as_str()));
        let spool_root = &config.spool.settings.root;
        std::fs::create_dir_all(spool_root).map_err(|source| StartError::DataDir {
            path: spool_root.clone(),
            source,
        })?;
        let (max_spool, cap_from) = match config.spool.max_bytes {
            Some(bytes) => (bytes, "[spool] max_mb"),
            None => (
                crate::config::default_spool_cap(spool_root).map_err(|source| {
                    StartError::DataDir {
                        path: spool_root.clone(),
                        source,
                    }
                })?,
                "half the disk's free space",
            ),
        };
        metrics.spool_capacity_bytes.set(max_spool as i64);
        let admission = Arc::new(Admission::new(
            max_spool,
            config.spool.memory_bytes,
            config.spool.admission_wait,
            &config.quotas,
            metrics.clone(),
        ));
        if config.log.jetstream().is_none() {
            tracing::info!(
                sync = ?config.spool.settings.sync,
                dir = %spool_root.display(),
                max_mb = max_spool / (1024 * 1024),
                cap = cap_from,
                memory_max_mb = config.spool.memory_bytes / (1024 * 1024),
                "spool: the backlog may grow to {} MiB on disk ({cap_from}); the stages hold at most {} MiB in memory",
                max_spool / (1024 * 1024),
                config.spool.memory_bytes / (1024 * 1024),
            );
        }
        let shared = shared_parts(&config, sink, metrics.clone(), admission.clone())?;
        return_freed_memory();
        let fleet = match config.log.jetstream() {
            Some(settings) => {
                let fleet = crate::fleet::Fleet::connect(settings)
                    .await
                    .map_err(StartError::Restore)?;
                let definitions = crate::fleet::control::Definitions::open(&fleet)
                    .await
                    .map_err(StartError::Restore)?;
                tracing::info!(node = %settings.node, servers = ?settings.servers, replicas = settings.replicas, "records are kept in JetStream, shared by the fleet");
                Some((fleet, definitions))
            }
            None => None,
        };
        metrics
            .node_info
            .get_or_create(&crate::metrics::NodeLabels {
                node: fleet
                    .as_ref()
                    .map_or_else(|| "local".to_string(), |(f, _)| f.node().to_string()),
                backend: if fleet.is_some() {
                    "jetstream"
                } else {
                    "spool"
                }
                .into(),
            })
            .set(1);
        let registry = Arc::new(Registry::new(
            &config.data_dir,
            shared,
            config.spool.settings.clone(),
            config.region.clone(),
            config.account_id.clone(),
            fleet,
        ));
        for declared in &config.streams {
            registry
                .add_declared(declared.spec.clone(), declared.input.clone())
                .map_err(|e| StartError::Restore(e.to_string()))?;
        }
        let restored = registry.restore().map_err(StartError::Restore)?;
        registry.set_aside_orphans();
        tokio::spawn(registry.clone().watch_fleet());
        tracing::info!(
            declared = config.streams.len(),
            restored,
            auth = if config.access_keys.is_empty() {
                "off"
            } else {
                "SigV4"
            },
            "streams started"
        );
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| StartError::Listen {
                addr: config.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| StartError::Listen {
            addr: config.listen,
            source,
        })?;
        let mut state = AppState::new(
            registry.clone(),
            metrics.clone(),
            admission,
            config.access_keys.clone(),
        );
        state.metrics_token = config.metrics_token.clone();
        state.receiver_keys = config.http_endpoint.receiver_keys.clone();
        let state = Arc::new(state);
        Ok(Server {
            addr,
            registry,
            metrics,
            config,
            listener,
            tls,
            state,
        })
    }

    /// The API's router over this daemon's state, for callers without a socket (the fuzz
    /// target).
    pub fn router(&self) -> axum::Router {
        api::router(self.state.clone())
    }

    /// `https` when the listener serves TLS, else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    /// Serves until `shutdown` resolves, then stops intake, flushes every buffer and waits for
    /// deliveries up to the configured deadline. Returns the records left undelivered.
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> u64 {
        let app = api::router(self.state.clone());
        let served = match self.tls {
            None => {
                axum::serve(self.listener, app)
                    .with_graceful_shutdown(shutdown)
                    .await
            }
            Some(tls) => match crate::tls::TlsListener::new(self.listener, tls) {
                Ok(listener) => {
                    axum::serve(listener, app)
                        .with_graceful_shutdown(shutdown)
                        .await
                }
                Err(e) => Err(e),
            },
        };
        if let Err(e) = served {
            tracing::error!(error = %e, "the listener failed");
        }
        tracing::info!("intake stopped; flushing buffers");
        let left = self.registry.shutdown(self.config.shutdown_timeout).await;
        if left == 0 {
            tracing::info!("every accepted record is delivered; bye");
        }
        left
    }
}

/// Hands memory the allocator holds free back to the system twice a second. Requests, reads and
/// objects come and go in buffers of about a megabyte; glibc keeps what they free inside its
/// heap, where it would count in the process's RSS on top of the memory budget.
fn return_freed_memory() {
    #[cfg(target_env = "gnu")]
    tokio::spawn(async {
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
        loop {
            tick.tick().await;
            // SAFETY: malloc_trim only returns free pages of the allocator's heaps.
            let _ = tokio::task::spawn_blocking(|| unsafe { libc::malloc_trim(0) }).await;
        }
    });
}
