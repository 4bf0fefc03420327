//! Delivering a flushed batch into an Apache Iceberg table, exactly once: the batch's table
//! comes from its route (or the stream's one table); its records are parsed into the table's
//! current schema (`encode::iceberg`), written as Parquet data files under the table's
//! partition spec, and committed as one append snapshot whose summary names the stream, the
//! batch and the spool positions it holds. A commit another writer got in first is retried
//! against the new table state. After a restart, records the table's snapshots already hold
//! are settled without being written again; an attempt after an ambiguous failure first looks
//! for its own commit. Records that do not fit the table go to the error output; the rest of
//! the batch is committed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use iceberg::arrow::RecordBatchPartitionSplitter;
use iceberg::spec::{DataFile, DataFileFormat, PartitionSpec, Transform};
use iceberg::table::Table;
use iceberg::transaction::{AddColumn, ApplyTransactionAction, Transaction};
use iceberg::writer::base_writer::data_file_writer::DataFileWriterBuilder;
use iceberg::writer::file_writer::ParquetWriterBuilder;
use iceberg::writer::file_writer::location_generator::DefaultFileNameGenerator;
use iceberg::writer::file_writer::rolling_writer::RollingFileWriterBuilder;
use iceberg::writer::partitioning::PartitioningWriter;
use iceberg::writer::partitioning::fanout_writer::FanoutWriter;
use iceberg::writer::{IcebergWriter, IcebergWriterBuilder};
use iceberg::{
    Catalog, CatalogBuilder, ErrorKind, Namespace, NamespaceIdent, TableCommit, TableCreation,
    TableIdent,
};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use super::{Ended, Failed, Failure, HttpOutcome, Policy, Sending, Step, Target};
use crate::buffer::Record;
use crate::config::CatalogKind;
use crate::config::iceberg::IcebergSpec;
use crate::encode::ErrorOutputType;
use crate::encode::error_output::{FailedRecord, Reason};
use crate::encode::iceberg::{Positions, Rows, inferred_schema};
use crate::schema::TableRef;

/// Firehose's `DeliveryToIceberg.*` families.
pub const METRICS: crate::metrics::DestinationNames = crate::metrics::DestinationNames {
    name: "iceberg",
    firehose: "DeliveryToIceberg",
    records: "Rows committed",
    requests: "Commits by outcome: success = the snapshot is the table's",
    latency: (
        "commit_latency",
        "From a commit's start to the catalog's answer, conflicts retried included",
    ),
    failed: (
        "iceberg_failed_records",
        "Records written to the S3 error output (iceberg-failed)",
    ),
    retried: Some((
        "commit_conflicts",
        "Commits another writer got in first, retried against the table's new state",
    )),
};

/// The catalog could not be reached or refused the daemon (retried; the catalog is opened
/// again for the next attempt).
const CATALOG_UNAVAILABLE: &str = "Iceberg.CatalogUnavailable";

/// What a commit's snapshot summary says of it.
const SUMMARY_STREAM: &str = "hosepipe.stream";
const SUMMARY_WRITER: &str = "hosepipe.writer";
const SUMMARY_COMMIT: &str = "hosepipe.commit";
const SUMMARY_POSITIONS: &str = "hosepipe.positions";

/// How far back a fleet node looks for its stream's commits when it starts (JetStream hands a
/// record to another node only after its acknowledgement wait).
const FLEET_LOOKBACK_MS: i64 = 3_600_000;

/// The daemon's side of Iceberg: its catalogs (`[iceberg]`), the object store the warehouses
/// are on, and what each stream's tables already held when it started.
pub struct Lakes {
    config: crate::config::IcebergConfig,
    /// `s3.*` FileIO properties of the configured S3 server; `None` on local disk.
    s3_props: Option<HashMap<String, String>>,
    /// The local buckets' directory (absolute), when objects are on local disk.
    local_root: std::path::PathBuf,
    /// Glue (`[glue]`, `AWS_ENDPOINT_URL_GLUE`), for catalogs that are Glue.
    glue: Option<crate::aws_client::ServiceEndpoint>,
    catalogs: tokio::sync::Mutex<HashMap<(String, String), Arc<dyn Catalog>>>,
    /// (stream id, catalog, table) → the positions its earlier runs committed there that the
    /// spool will hand on again.
    committed: Mutex<HashMap<(String, String, TableIdent), Arc<Positions>>>,
    /// Every commit's latency, when kept (`hosepipe bench iceberg`).
    commit_latencies: Option<Mutex<Vec<std::time::Duration>>>,
}

impl std::fmt::Debug for Lakes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lakes")
            .field("config", &self.config)
            .finish()
    }
}

/// The REST catalog's HTTP client (reqwest 0.12, the one iceberg-catalog-rest speaks through):
/// HTTPS trusting the system's roots and the process's CA bundle; the proxy variables apply.
fn rest_client() -> Result<reqwest_012::Client, String> {
    let tls =
        crate::aws_client::rustls_client(crate::aws_client::root_store([]))?.with_no_client_auth();
    reqwest_012::Client::builder()
        .use_preconfigured_tls(tls)
        .build()
        .map_err(|e| {
            format!(
                "the REST catalog's HTTP client: {}",
                crate::aws_client::error_chain(&e)
            )
        })
}

/// A catalog of the Iceberg crates, its files through OpenDAL (the local disk or S3).
async fn open_catalog<B: CatalogBuilder>(
    builder: B,
    name: &str,
    props: HashMap<String, String>,
) -> Result<Arc<dyn Catalog>, Failure>
where
    B::C: 'static,
{
    let catalog = builder
        .with_storage_factory(Arc::new(
            iceberg_storage_opendal::OpenDalResolvingStorageFactory::new(),
        ))
        .load(name, props)
        .await
        .map_err(|e| {
            Failure::retry(
                CATALOG_UNAVAILABLE,
                format!("catalog {name:?}: {}", describe(&e)),
            )
        })?;
    Ok(Arc::new(catalog))
}

/// The full text of an Iceberg error (its sources too).
fn describe(e: &iceberg::Error) -> String {
    let mut out = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

impl Lakes {
    /// Catalogs of `iceberg` over tables on the local disk under `local_root`, keeping every
    /// commit's latency (the benchmark's).
    pub fn local_recording(
        iceberg: crate::config::IcebergConfig,
        local_root: &std::path::Path,
    ) -> Lakes {
        Lakes {
            config: iceberg,
            s3_props: None,
            local_root: local_root.to_path_buf(),
            glue: None,
            catalogs: Default::default(),
            committed: Default::default(),
            commit_latencies: Some(Mutex::default()),
        }
    }

    /// The commit latencies kept since the last call (see [`Lakes::local_recording`]).
    pub fn take_commit_latencies(&self) -> Vec<std::time::Duration> {
        self.commit_latencies
            .as_ref()
            .map(|l| std::mem::take(&mut *l.lock().expect("latencies lock")))
            .unwrap_or_default()
    }

    /// The catalog a stream's `CatalogARN` names, opened with its warehouse.
    pub async fn catalog_of(&self, spec: &IcebergSpec) -> Result<Arc<dyn Catalog>, String> {
        let name = self.catalog_name(spec)?.to_string();
        self.catalog(&name, &self.warehouse(spec, &name))
            .await
            .map_err(|f| f.message)
    }

    pub fn new(config: &crate::config::Config) -> Lakes {
        let s3_props = config.store.s3.as_ref().map(|s3| {
            let mut p = HashMap::from([
                ("s3.region".to_string(), s3.region.clone()),
                ("s3.path-style-access".to_string(), "true".to_string()),
            ]);
            // Static keys; with the credential chain OpenDAL's S3 finds the same sources itself
            // (the environment, the profile, web identity, IMDS).
            if s3.provider.is_none() {
                p.insert("s3.access-key-id".into(), s3.access_key_id.clone());
                p.insert("s3.secret-access-key".into(), s3.secret_access_key.clone());
            }
            if let Some(url) = &s3.url {
                p.insert("s3.endpoint".into(), url.clone());
            }
            p
        });
        Lakes {
            config: config.iceberg.clone(),
            s3_props,
            local_root: std::path::absolute(&config.store.local_root)
                .unwrap_or_else(|_| config.store.local_root.clone()),
            glue: config.glue_endpoint().unwrap_or_else(|e| {
                tracing::warn!(error = %e, "a Glue endpoint is configured but cannot be called; Glue catalogs use the environment's");
                None
            }),
            catalogs: Default::default(),
            committed: Default::default(),
            commit_latencies: None,
        }
    }

    /// Whether this daemon has the catalog a stream's `CatalogARN` names.
    pub fn check(&self, spec: &IcebergSpec) -> Result<(), String> {
        self.catalog_name(spec).map(drop)
    }

    fn catalog_name<'a>(&'a self, spec: &'a IcebergSpec) -> Result<&'a str, String> {
        let name = spec
            .catalog
            .as_deref()
            .unwrap_or(&self.config.default_catalog);
        match self.config.catalogs.contains_key(name) {
            true => Ok(name),
            false => Err(format!(
                "CatalogARN {} names the catalog {name:?}, which this daemon does not have (its [iceberg.catalogs]: {})",
                spec.catalog_arn,
                self.config
                    .catalogs
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }

    /// A warehouse location (`s3://bucket/prefix`) as the catalog's files see it: as it is on
    /// S3, or under the local buckets' directory.
    fn location(&self, s3_url: &str) -> String {
        match (&self.s3_props, s3_url.strip_prefix("s3://")) {
            (None, Some(rest)) => format!("file://{}/{rest}", self.local_root.display()),
            _ => s3_url.to_string(),
        }
    }

    /// The stream's warehouse: its `WarehouseLocation`, else its catalog's, else `iceberg/`
    /// in its error-output bucket. A REST catalog's own `warehouse` comes first, as the server
    /// names it (empty: the server's default).
    fn warehouse(&self, spec: &IcebergSpec, catalog: &str) -> String {
        let configured = &self.config.catalogs[catalog];
        if let CatalogKind::Rest { .. } = configured.kind {
            return configured
                .warehouse
                .clone()
                .or_else(|| spec.warehouse.clone())
                .unwrap_or_default();
        }
        let url = spec
            .warehouse
            .clone()
            .or_else(|| self.config.catalogs[catalog].warehouse.clone())
            .unwrap_or_else(|| format!("s3://{}/iceberg", spec.backup.bucket));
        self.location(&url)
    }

    /// The catalog `name` with `warehouse` for new tables (opened once, then shared).
    async fn catalog(&self, name: &str, warehouse: &str) -> Result<Arc<dyn Catalog>, Failure> {
        let mut open = self.catalogs.lock().await;
        let key = (name.to_string(), warehouse.to_string());
        if let Some(c) = open.get(&key) {
            return Ok(c.clone());
        }
        let mut props = self.s3_props.clone().unwrap_or_default();
        let catalog: Arc<dyn Catalog> = match &self.config.catalogs[name].kind {
            CatalogKind::Glue { catalog_id } => {
                let endpoint = match &self.glue {
                    Some(e) => e.clone(),
                    None => crate::aws_client::ServiceEndpoint::from_env("glue")
                        .map_err(|e| Failure::retry(CATALOG_UNAVAILABLE, e))?,
                };
                Arc::new(super::glue_catalog::GlueCatalog::new(
                    endpoint,
                    catalog_id.clone(),
                    warehouse,
                    props,
                ))
            }
            CatalogKind::Rest { uri, properties } => {
                // The server's answers (`/v1/config`, a table's `config`) may add storage
                // properties such as vended credentials; the configured ones win.
                props.extend(properties.clone());
                props.insert("uri".into(), uri.clone());
                if !warehouse.is_empty() {
                    props.insert("warehouse".into(), warehouse.to_string());
                }
                open_catalog(
                    iceberg_catalog_rest::RestCatalogBuilder::default().with_client(
                        rest_client()
                            .map_err(|e| Failure::fatal("Iceberg.CatalogUnavailable", e))?,
                    ),
                    name,
                    props,
                )
                .await?
            }
            CatalogKind::Sql { uri } => {
                props.insert("uri".into(), uri.clone());
                props.insert("warehouse".into(), warehouse.to_string());
                if let Some(path) = uri.strip_prefix("sqlite://") {
                    props.insert("sql_bind_style".into(), "QMark".into());
                    // sqlx creates a missing database file only when asked to.
                    if !path.contains('?') {
                        props.insert("uri".into(), format!("{uri}?mode=rwc"));
                    }
                    let file = std::path::Path::new(path.split('?').next().unwrap_or(path));
                    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
                        std::fs::create_dir_all(dir).map_err(|e| {
                            Failure::retry(CATALOG_UNAVAILABLE, format!("{}: {e}", dir.display()))
                        })?;
                    }
                }
                open_catalog(
                    iceberg_catalog_sql::SqlCatalogBuilder::default(),
                    name,
                    props,
                )
                .await?
            }
        };
        open.insert(key, catalog.clone());
        Ok(catalog)
    }

    /// Drops an open catalog, so that the next use opens it again.
    async fn forget(&self, name: &str, warehouse: &str) {
        let key = (name.to_string(), warehouse.to_string());
        self.catalogs.lock().await.remove(&key);
    }

    /// Writes one batch's records into their table and says what became of them: committed
    /// (or found committed before), or failed with an `Iceberg.*` code.
    pub async fn deliver_batch(
        &self,
        spec: &IcebergSpec,
        records: Vec<Record>,
        seen: &Sending<'_>,
    ) -> HttpOutcome {
        let mut outcome = HttpOutcome {
            delivered: Vec::new(),
            failed: Vec::new(),
            error_type: ErrorOutputType::IcebergFailed,
            latency_per_record: false,
            error_prefix: None,
        };
        let fail_all = |records: Vec<Record>, f: Failure, attempts: u32| {
            records
                .into_iter()
                .map(|record| failed(record, f.code, f.message.clone(), attempts))
                .collect::<Vec<_>>()
        };
        let (ident, table_spec) = match route(spec, records.first()) {
            Ok(r) => r,
            Err(f) => {
                outcome.failed = fail_all(records, f, 0);
                return outcome;
            }
        };
        outcome.error_prefix = table_spec.and_then(|t| t.error_prefix.clone());
        let catalog = match self.catalog_name(spec) {
            Ok(c) => c.to_string(),
            Err(why) => {
                outcome.failed =
                    fail_all(records, Failure::fatal("Iceberg.CatalogNotFound", why), 0);
                return outcome;
            }
        };
        let metrics = seen.metrics.destination(METRICS.name);
        let mut commit = Commit {
            lakes: self,
            spec,
            warehouse: self.warehouse(spec, &catalog),
            catalog,
            identity: table_spec.map(|t| t.identity.clone()).unwrap_or_default(),
            ident,
            seen,
            commit_id: uuid::Uuid::new_v4().to_string(),
            records,
            done_before: Vec::new(),
            misfits: Vec::new(),
            committed: false,
            last: None,
            started_ms: crate::pipeline::now_ms(),
        };
        let ended = super::run(
            &mut commit,
            Policy::For(spec.retry),
            crate::pipeline::now_ms,
        )
        .await;
        let Commit {
            records,
            done_before,
            misfits,
            last,
            ..
        } = commit;
        outcome.delivered = done_before;
        let attempts = match &ended {
            Ended::Done { attempts }
            | Ended::Refused { attempts, .. }
            | Ended::Expired { attempts, .. } => *attempts,
        };
        outcome.failed = misfits
            .into_iter()
            .map(|(record, why)| failed(record, "Iceberg.RecordDoesNotFitTable", why, attempts))
            .collect();
        match ended {
            Ended::Done { .. } => {
                metrics.request(seen.stream, true);
                outcome.delivered.extend(records);
            }
            Ended::Refused { .. } | Ended::Expired { .. } => {
                let f = last.expect("a failed delivery has a failure");
                outcome.failed.extend(fail_all(records, f, attempts));
            }
        }
        outcome
    }
}

fn failed(record: Record, code: &str, message: String, attempts: u32) -> FailedRecord {
    FailedRecord {
        record,
        reason: Reason {
            attempts,
            code: code.to_string(),
            message,
            lambda_arn: None,
            extra: None,
            catalog_table: None,
        },
    }
}

/// The table a batch goes to (every record of a batch has the same route), and its entry in
/// `DestinationTableConfigurationList` if it has one.
fn route<'a>(
    spec: &'a IcebergSpec,
    first: Option<&Record>,
) -> Result<(TableIdent, Option<&'a crate::config::iceberg::TableSpec>), Failure> {
    let keys = first.and_then(|r| r.partition.as_deref());
    let (database, table, operation) = match keys {
        Some(k) => (
            k.query("destinationDatabaseName"),
            k.query("destinationTableName"),
            k.query("operation"),
        ),
        None => match spec.single_table() {
            Some(t) => (Some(t.database.as_str()), Some(t.table.as_str()), None),
            None => {
                return Err(Failure::fatal(
                    "Iceberg.NoDestinationTable",
                    format!(
                        "the record names no table (a MetadataExtraction query or a transform's otfMetadata gives destinationTableName), and the stream has {} tables configured, not one",
                        spec.tables.len()
                    ),
                ));
            }
        },
    };
    match operation.map(str::to_ascii_lowercase).as_deref() {
        None | Some("insert") => {}
        Some("update" | "delete") => {
            return Err(Failure::fatal(
                "Iceberg.UnsupportedOperation",
                format!(
                    "operation {:?}: hosepipe writes inserts only (row-level deletes are not yet committed by the Apache Iceberg crates it builds on)",
                    operation.unwrap_or_default()
                ),
            ));
        }
        Some(other) => {
            return Err(Failure::fatal(
                "Iceberg.InvalidOperation",
                format!("operation {other:?} is not one of insert, update, delete"),
            ));
        }
    }
    let table = table.unwrap_or_default();
    // A route without a database takes the database of the configured table of that name.
    let database = match database {
        Some(d) => d,
        None => match spec
            .tables
            .iter()
            .filter(|t| t.table == table)
            .collect::<Vec<_>>()[..]
        {
            [t] => t.database.as_str(),
            _ => {
                return Err(Failure::fatal(
                    "Iceberg.NoDestinationTable",
                    format!("the record names table {table:?} but no destinationDatabaseName"),
                ));
            }
        },
    };
    let ident = TableIdent::from_strs([database, table])
        .map_err(|e| Failure::fatal("Iceberg.NoDestinationTable", describe(&e)))?;
    Ok((ident, spec.table(database, table)))
}

/// One batch on its way into its table.
struct Commit<'a> {
    lakes: &'a Lakes,
    spec: &'a IcebergSpec,
    catalog: String,
    warehouse: String,
    ident: TableIdent,
    /// `PartitionSpec.Identity` of the configured table (used when it is created).
    identity: Vec<String>,
    seen: &'a Sending<'a>,
    /// Names this batch's snapshot (`hosepipe.commit`).
    commit_id: String,
    /// Records not yet committed.
    records: Vec<Record>,
    /// Records an earlier run committed (found in the table's snapshots).
    done_before: Vec<Record>,
    /// Records that do not fit the table, with why.
    misfits: Vec<(Record, String)>,
    /// A commit of `records` was attempted (and may have landed).
    committed: bool,
    last: Option<Failure>,
    started_ms: i64,
}

impl Target for Commit<'_> {
    async fn attempt(&mut self) -> Step {
        match self.try_commit().await {
            Ok(()) => Step::Done,
            Err(f) => {
                if f.code == CATALOG_UNAVAILABLE {
                    // Opened again at the next attempt: a REST catalog's new token and config.
                    self.lakes.forget(&self.catalog, &self.warehouse).await;
                }
                let step = match f.retry {
                    true => Step::Retry(format!("{}: {}", f.code, f.message)),
                    false => Step::Refused(format!("{}: {}", f.code, f.message)),
                };
                if !f.retry {
                    self.observe(&f, false);
                }
                self.last = Some(f);
                step
            }
        }
    }

    fn failed(&mut self, f: Failed<'_>) {
        if let Some(last) = self.last.clone() {
            self.observe(&last, !f.expired);
        }
    }

    fn backoff(&self, attempt: u32) -> std::time::Duration {
        super::http_endpoint::firehose_backoff(attempt)
    }
}

impl Commit<'_> {
    fn observe(&self, f: &Failure, retrying: bool) {
        let seen = self.seen;
        seen.metrics
            .destination(METRICS.name)
            .request(seen.stream, false);
        seen.failed_attempts.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(batch = seen.batch, table = %self.ident, code = f.code, reason = %f.message, retrying, "the Iceberg commit did not happen");
    }

    async fn try_commit(&mut self) -> Result<(), Failure> {
        let catalog = self.lakes.catalog(&self.catalog, &self.warehouse).await?;
        let mut table = self.table(catalog.as_ref()).await?;
        // A commit that may have landed (its answer lost): find it before writing again.
        if self.committed && self.landed(&table) {
            return Ok(());
        }
        self.skip_committed(&table);
        if self.records.is_empty() {
            return Ok(());
        }
        if self.spec.schema_evolution {
            table = self.evolve(catalog.as_ref(), table).await?;
        }
        let data: Vec<Bytes> = self.records.iter().map(|r| r.data.clone()).collect();
        let name = TableRef {
            database: self.ident.namespace().join("."),
            table: self.ident.name().to_string(),
            ..Default::default()
        };
        let prefix = self.commit_id.clone();
        let write_table = table.clone();
        let handle = tokio::runtime::Handle::current();
        // Parsing, Arrow and Parquet are CPU work: a blocking thread drives the writers.
        let written = tokio::task::spawn_blocking(move || {
            handle.block_on(write_files(&write_table, name, &data, prefix))
        })
        .await
        .map_err(|e| Failure::retry("Iceberg.WriteFailed", e))?;
        let (files, misfits) = written?;
        let metrics = self.seen.metrics.destination(METRICS.name);
        let labels = crate::metrics::Metrics::stream(self.seen.stream);
        metrics
            .processed_records
            .get_or_create(&labels)
            .inc_by(self.records.len() as u64);
        metrics.processed_bytes.get_or_create(&labels).inc_by(
            self.records
                .iter()
                .map(|r| r.data.len() as u64)
                .sum::<u64>(),
        );
        // Misfits are final: out of the batch, on to the error output.
        if !misfits.is_empty() {
            let mut bad = vec![None; self.records.len()];
            for (i, why) in misfits {
                bad[i] = Some(why);
            }
            let records = std::mem::take(&mut self.records);
            for (record, why) in records.into_iter().zip(bad) {
                match why {
                    Some(why) => self.misfits.push((record, why)),
                    None => self.records.push(record),
                }
            }
        }
        if files.is_empty() {
            return Ok(());
        }
        let mut positions = Positions::default();
        for r in &self.records {
            positions.insert(r.seq, r.part);
        }
        let summary = HashMap::from([
            (SUMMARY_STREAM.to_string(), self.seen.id_base.to_string()),
            (SUMMARY_WRITER.to_string(), self.seen.channel.to_string()),
            (SUMMARY_COMMIT.to_string(), self.commit_id.clone()),
            (SUMMARY_POSITIONS.to_string(), positions.encode()),
        ]);
        let tx = Transaction::new(&table);
        let tx = tx
            .fast_append()
            .add_data_files(files)
            .set_snapshot_properties(summary)
            .apply(tx)
            .map_err(|e| Failure::retry("Iceberg.CommitFailed", describe(&e)))?;
        let observed = Observed {
            inner: catalog.as_ref(),
            conflicts: AtomicU32::new(0),
        };
        self.committed = true;
        let started = Instant::now();
        let result = tx.commit(&observed).await;
        let took = started.elapsed();
        metrics
            .latency
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
        if let Some(kept) = &self.lakes.commit_latencies {
            kept.lock().expect("latencies lock").push(took);
        }
        let conflicts = observed.conflicts.load(Ordering::Relaxed);
        if conflicts > 0 {
            metrics
                .retried
                .get_or_create(&labels)
                .inc_by(conflicts as u64);
        }
        result.map(drop).map_err(|e| {
            let code = match e.kind() {
                ErrorKind::CatalogCommitConflicts => "Iceberg.CommitConflict",
                _ => "Iceberg.CommitFailed",
            };
            Failure::retry(code, describe(&e))
        })
    }

    /// The table, created when it is missing and `TableCreationConfiguration` is on.
    async fn table(&self, catalog: &dyn Catalog) -> Result<Table, Failure> {
        let unavailable = |e: iceberg::Error| Failure::retry(CATALOG_UNAVAILABLE, describe(&e));
        if catalog
            .table_exists(&self.ident)
            .await
            .map_err(unavailable)?
        {
            return catalog.load_table(&self.ident).await.map_err(unavailable);
        }
        if !self.spec.table_creation {
            return Err(Failure::fatal(
                "Iceberg.TableNotFound",
                format!(
                    "table {} does not exist in catalog {:?} (TableCreationConfiguration is off)",
                    self.ident, self.catalog
                ),
            ));
        }
        let data: Vec<&[u8]> = self.records.iter().map(|r| r.data.as_ref()).collect();
        let schema =
            inferred_schema(&data).map_err(|why| Failure::fatal("Iceberg.TableNotCreated", why))?;
        let mut partition = PartitionSpec::builder(schema.clone());
        for source in &self.identity {
            partition = partition
                .add_partition_field(source, source, Transform::Identity)
                .map_err(|e| Failure::fatal("Iceberg.TableNotCreated", describe(&e)))?;
        }
        let partition = partition
            .build()
            .map_err(|e| Failure::fatal("Iceberg.TableNotCreated", describe(&e)))?;
        let namespace = self.ident.namespace().clone();
        if !catalog
            .namespace_exists(&namespace)
            .await
            .map_err(unavailable)?
        {
            // Another writer may create it first.
            if let Err(e) = catalog.create_namespace(&namespace, HashMap::new()).await
                && !catalog
                    .namespace_exists(&namespace)
                    .await
                    .map_err(unavailable)?
            {
                return Err(unavailable(e));
            }
        }
        let creation = TableCreation::builder()
            .name(self.ident.name().to_string())
            .schema(schema)
            .partition_spec(partition.into_unbound())
            .build();
        match catalog.create_table(&namespace, creation).await {
            Ok(t) => {
                tracing::info!(table = %self.ident, catalog = %self.catalog, "created the Iceberg table from the first records");
                Ok(t)
            }
            // Another writer created it meanwhile.
            Err(_) if catalog.table_exists(&self.ident).await.unwrap_or(false) => {
                catalog.load_table(&self.ident).await.map_err(unavailable)
            }
            Err(e) => Err(unavailable(e)),
        }
    }

    /// Whether this batch's commit is among the table's snapshots since it was first tried.
    fn landed(&self, table: &Table) -> bool {
        table.metadata().snapshots().any(|s| {
            s.timestamp_ms() >= self.started_ms - 60_000
                && s.summary().additional_properties.get(SUMMARY_COMMIT) == Some(&self.commit_id)
        })
    }

    /// Settles the records an earlier run of the stream committed to this table.
    fn skip_committed(&mut self, table: &Table) {
        let key = (
            self.seen.id_base.to_string(),
            self.catalog.clone(),
            self.ident.clone(),
        );
        let known = self
            .lakes
            .committed
            .lock()
            .expect("committed lock")
            .get(&key)
            .cloned();
        let committed = match known {
            Some(c) => c,
            None => {
                let c = Arc::new(self.committed_before(table));
                self.lakes
                    .committed
                    .lock()
                    .expect("committed lock")
                    .insert(key, c.clone());
                c
            }
        };
        if committed.is_empty() {
            return;
        }
        let records = std::mem::take(&mut self.records);
        let (before, rest): (Vec<_>, Vec<_>) = records
            .into_iter()
            .partition(|r| committed.contains(r.seq, r.part));
        if !before.is_empty() {
            tracing::info!(table = %self.ident, records = before.len(), "records already in the table (committed before a restart) are not written again");
        }
        self.done_before.extend(before);
        self.records = rest;
    }

    /// The positions this stream's earlier runs committed to the table that its log will hand
    /// on again.
    fn committed_before(&self, table: &Table) -> Positions {
        let Some(log) = self.seen.log else {
            return Positions::default();
        };
        let fleet_since = match log.backend() {
            "jetstream" => crate::pipeline::now_ms() - FLEET_LOOKBACK_MS,
            _ => i64::MIN,
        };
        let mut out = Positions::default();
        for s in table.metadata().snapshots() {
            let props = &s.summary().additional_properties;
            if props.get(SUMMARY_STREAM).map(String::as_str) != Some(self.seen.id_base)
                || props.get(SUMMARY_WRITER).map(String::as_str) == Some(self.seen.channel)
                || s.timestamp_ms() < fleet_since
            {
                continue;
            }
            let mut p = Positions::default();
            if p.add_encoded(props.get(SUMMARY_POSITIONS).map_or("", String::as_str))
                .is_none()
            {
                tracing::warn!(table = %self.ident, snapshot = s.snapshot_id(), "a snapshot's hosepipe.positions cannot be read; ignored");
                continue;
            }
            out.extend_from(&p, |seq| log.will_read(seq));
        }
        out
    }

    /// Adds columns for the first-level fields the records have and the table does not, in a
    /// schema update committed before the data.
    async fn evolve(&self, catalog: &dyn Catalog, table: Table) -> Result<Table, Failure> {
        let schema = table.metadata().current_schema();
        let rows = Rows::new(TableRef::default(), schema)
            .map_err(|why| Failure::fatal("Iceberg.UnsupportedTable", why))?;
        let data: Vec<&[u8]> = self.records.iter().map(|r| r.data.as_ref()).collect();
        let new = rows.new_fields(&data);
        if new.is_empty() {
            return Ok(table);
        }
        let names: Vec<String> = new.iter().map(|(n, _)| n.clone()).collect();
        let tx = Transaction::new(&table);
        let mut update = tx.update_schema();
        for (name, ty) in new {
            update = update.add_column(AddColumn::optional(name, ty));
        }
        let tx = update
            .apply(tx)
            .map_err(|e| Failure::retry("Iceberg.SchemaUpdateFailed", describe(&e)))?;
        let table = tx
            .commit(catalog)
            .await
            .map_err(|e| Failure::retry("Iceberg.SchemaUpdateFailed", describe(&e)))?;
        tracing::info!(table = %self.ident, columns = ?names, "added columns for new fields (schema evolution)");
        Ok(table)
    }
}

/// Parses `data` into the table's current schema and writes Parquet data files under its
/// partition spec. Returns the files and the records that do not fit (index, reason).
async fn write_files(
    table: &Table,
    name: TableRef,
    data: &[Bytes],
    prefix: String,
) -> Result<(Vec<DataFile>, Vec<(usize, String)>), Failure> {
    let metadata = table.metadata();
    let schema = metadata.current_schema().clone();
    let rows =
        Rows::new(name, &schema).map_err(|why| Failure::fatal("Iceberg.UnsupportedTable", why))?;
    let records: Vec<&[u8]> = data.iter().map(|d| d.as_ref()).collect();
    let (batches, misfits) = rows.convert(&records);
    if batches.is_empty() {
        return Ok((Vec::new(), misfits));
    }
    let write_failed = |e: iceberg::Error| Failure::retry("Iceberg.WriteFailed", describe(&e));
    let compression = match metadata
        .properties()
        .get("write.parquet.compression-codec")
        .map(|c| c.to_ascii_lowercase())
        .as_deref()
    {
        Some("snappy") => Compression::SNAPPY,
        Some("uncompressed") => Compression::UNCOMPRESSED,
        Some("gzip") => Compression::GZIP(Default::default()),
        _ => Compression::ZSTD(ZstdLevel::default()),
    };
    let properties = WriterProperties::builder()
        .set_compression(compression)
        .set_created_by("hosepipe".into())
        .build();
    let location = crate::encode::iceberg::EscapedLocations::new(metadata).map_err(write_failed)?;
    let names = DefaultFileNameGenerator::new(prefix, None, DataFileFormat::Parquet);
    let rolling = RollingFileWriterBuilder::new_with_default_file_size(
        ParquetWriterBuilder::new(properties, schema.clone()),
        table.file_io().clone(),
        location,
        names,
    );
    let builder = DataFileWriterBuilder::new(rolling);
    let spec = metadata.default_partition_spec();
    let files = if spec.is_unpartitioned() {
        let mut writer = builder.build(None).await.map_err(write_failed)?;
        for batch in batches {
            writer.write(batch).await.map_err(write_failed)?;
        }
        writer.close().await.map_err(write_failed)?
    } else {
        let splitter =
            RecordBatchPartitionSplitter::try_new_with_computed_values(schema, spec.clone())
                .map_err(write_failed)?;
        let mut writer = FanoutWriter::new(builder);
        for batch in batches {
            for (key, part) in splitter.split(&batch).map_err(write_failed)? {
                writer.write(key, part).await.map_err(write_failed)?;
            }
        }
        writer.close().await.map_err(write_failed)?
    };
    Ok((files, misfits))
}

/// A catalog that counts the commits another writer got in first (the transaction retries
/// them against the table's new state).
#[derive(Debug)]
struct Observed<'a> {
    inner: &'a dyn Catalog,
    conflicts: AtomicU32,
}

#[async_trait]
impl Catalog for Observed<'_> {
    async fn list_namespaces(
        &self,
        parent: Option<&NamespaceIdent>,
    ) -> iceberg::Result<Vec<NamespaceIdent>> {
        self.inner.list_namespaces(parent).await
    }
    async fn create_namespace(
        &self,
        namespace: &NamespaceIdent,
        properties: HashMap<String, String>,
    ) -> iceberg::Result<Namespace> {
        self.inner.create_namespace(namespace, properties).await
    }
    async fn get_namespace(&self, namespace: &NamespaceIdent) -> iceberg::Result<Namespace> {
        self.inner.get_namespace(namespace).await
    }
    async fn namespace_exists(&self, namespace: &NamespaceIdent) -> iceberg::Result<bool> {
        self.inner.namespace_exists(namespace).await
    }
    async fn update_namespace(
        &self,
        namespace: &NamespaceIdent,
        properties: HashMap<String, String>,
    ) -> iceberg::Result<()> {
        self.inner.update_namespace(namespace, properties).await
    }
    async fn drop_namespace(&self, namespace: &NamespaceIdent) -> iceberg::Result<()> {
        self.inner.drop_namespace(namespace).await
    }
    async fn list_tables(&self, namespace: &NamespaceIdent) -> iceberg::Result<Vec<TableIdent>> {
        self.inner.list_tables(namespace).await
    }
    async fn create_table(
        &self,
        namespace: &NamespaceIdent,
        creation: TableCreation,
    ) -> iceberg::Result<Table> {
        self.inner.create_table(namespace, creation).await
    }
    async fn load_table(&self, table: &TableIdent) -> iceberg::Result<Table> {
        self.inner.load_table(table).await
    }
    async fn drop_table(&self, table: &TableIdent) -> iceberg::Result<()> {
        self.inner.drop_table(table).await
    }
    async fn purge_table(&self, table: &TableIdent) -> iceberg::Result<()> {
        self.inner.purge_table(table).await
    }
    async fn table_exists(&self, table: &TableIdent) -> iceberg::Result<bool> {
        self.inner.table_exists(table).await
    }
    async fn rename_table(&self, src: &TableIdent, dest: &TableIdent) -> iceberg::Result<()> {
        self.inner.rename_table(src, dest).await
    }
    async fn register_table(
        &self,
        table: &TableIdent,
        metadata_location: String,
    ) -> iceberg::Result<Table> {
        self.inner.register_table(table, metadata_location).await
    }
    async fn update_table(&self, commit: TableCommit) -> iceberg::Result<Table> {
        let result = self.inner.update_table(commit).await;
        if let Err(e) = &result
            && e.kind() == ErrorKind::CatalogCommitConflicts
        {
            self.conflicts.fetch_add(1, Ordering::Relaxed);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::stream::{DestinationSpec, validate};
    use crate::partition::Router;

    fn spec(tables: serde_json::Value) -> IcebergSpec {
        let input = serde_json::from_value(serde_json::json!({"IcebergDestinationConfiguration": {
            "CatalogConfiguration": {"CatalogARN": "arn:aws:glue:us-east-1:123456789012:catalog"},
            "DestinationTableConfigurationList": tables,
            "AppendOnly": true,
            "S3Configuration": {"BucketARN": "arn:aws:s3:::errors"},
        }}))
        .unwrap();
        match validate("s", &input).unwrap().destination {
            DestinationSpec::Iceberg(spec) => *spec,
            _ => panic!("an Iceberg destination"),
        }
    }

    fn routed(keys: &[(&str, &str)]) -> Record {
        let keys: Vec<(String, String)> = keys
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut r = Record::new(Bytes::from_static(b"{}"), 0);
        r.partition = Router::default().assign(&keys, &[]);
        r
    }

    #[test]
    fn a_batch_goes_to_its_route_or_the_one_table() {
        let one = spec(serde_json::json!([{"DestinationDatabaseName": "db",
            "DestinationTableName": "t", "S3ErrorOutputPrefix": "t-errors/"}]));
        let plain = Record::new(Bytes::from_static(b"{}"), 0);
        let (ident, table) = route(&one, Some(&plain)).unwrap();
        assert_eq!(ident.to_string(), "db.t");
        assert!(table.unwrap().error_prefix.is_some());
        // A route naming only the table takes the configured table's database.
        let (ident, _) = route(&one, Some(&routed(&[("destinationTableName", "t")]))).unwrap();
        assert_eq!(ident.to_string(), "db.t");
        let (ident, table) = route(
            &one,
            Some(&routed(&[
                ("destinationDatabaseName", "other"),
                ("destinationTableName", "u"),
                ("operation", "INSERT"),
            ])),
        )
        .unwrap();
        assert_eq!((ident.to_string().as_str(), table), ("other.u", None));
        let refused = |r: &Record, spec: &IcebergSpec| route(spec, Some(r)).unwrap_err().code;
        let update = routed(&[("destinationTableName", "t"), ("operation", "update")]);
        assert_eq!(refused(&update, &one), "Iceberg.UnsupportedOperation");
        let odd = routed(&[("destinationTableName", "t"), ("operation", "upsert")]);
        assert_eq!(refused(&odd, &one), "Iceberg.InvalidOperation");
        let none = spec(serde_json::json!([]));
        assert_eq!(refused(&plain, &none), "Iceberg.NoDestinationTable");
        let lonely = routed(&[("destinationTableName", "x")]);
        assert_eq!(refused(&lonely, &none), "Iceberg.NoDestinationTable");
    }
}
