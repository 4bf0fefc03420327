//! Prometheus metrics, named after Firehose's CloudWatch metrics:
//! `hosepipe_<subsystem>_<name>_<unit>[_total]`, base units, bounded labels only.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StreamLabels {
    pub stream: String,
}

pub const SUCCESS: &str = "success";
pub const FAILURE: &str = "failure";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub stream: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FlushLabels {
    pub stream: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorOutputLabels {
    pub stream: String,
    /// The error output type, as in `!{firehose:error-output-type}`.
    pub error_type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StreamReasonLabels {
    pub stream: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiLabels {
    pub operation: String,
    pub outcome: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// The families of one destination reached over HTTP (Firehose's `DeliveryTo<X>.*`).
#[derive(Clone)]
pub struct DestinationMetrics {
    /// Requests by outcome (Firehose's `Success` is success / (success + failure)).
    pub requests: Family<OutcomeLabels, Counter>,
    pub records: Family<StreamLabels, Counter>,
    pub bytes: Family<StreamLabels, Counter>,
    pub data_freshness: Family<StreamLabels, Gauge<f64, AtomicU64>>,
    pub latency: HistogramFamily<StreamLabels>,
    /// Records written to the S3 backup after failing.
    pub failed: Family<StreamLabels, Counter>,
    /// Records and bytes sent, every attempt counted (Firehose's `Processed*`).
    pub processed_records: Family<StreamLabels, Counter>,
    pub processed_bytes: Family<StreamLabels, Counter>,
    /// Attempts the destination made again on its own (Iceberg: commit conflicts).
    pub retried: Family<StreamLabels, Counter>,
}

impl Default for DestinationMetrics {
    fn default() -> Self {
        DestinationMetrics {
            requests: Family::default(),
            records: Family::default(),
            bytes: Family::default(),
            data_freshness: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            failed: Family::default(),
            processed_records: Family::default(),
            processed_bytes: Family::default(),
            retried: Family::default(),
        }
    }
}

/// How a destination's families are named and described.
pub struct DestinationNames {
    /// `hosepipe_delivery_to_<name>_…`; also the destination's kind.
    pub name: &'static str,
    /// Firehose's metric prefix.
    pub firehose: &'static str,
    pub records: &'static str,
    pub requests: &'static str,
    /// (suffix, help) of the latency histogram.
    pub latency: (&'static str, &'static str),
    /// (name, help) of the failed-records counter.
    pub failed: (&'static str, &'static str),
    /// (suffix, help) of the counter of attempts the destination repeated on its own, if it
    /// has one.
    pub retried: Option<(&'static str, &'static str)>,
}

impl DestinationMetrics {
    fn register(&self, registry: &mut Registry, n: &DestinationNames) {
        use prometheus_client::registry::Unit;
        let (name, firehose) = (n.name, n.firehose);
        registry.register(
            format!("delivery_to_{name}_requests"),
            format!(
                "{} ({firehose}.Success is success/(success+failure))",
                n.requests
            ),
            self.requests.clone(),
        );
        registry.register(
            format!("delivery_to_{name}_records"),
            format!("{} ({firehose}.Records)", n.records),
            self.records.clone(),
        );
        registry.register_with_unit(
            format!("delivery_to_{name}"),
            format!("Record bytes delivered ({firehose}.Bytes)"),
            Unit::Bytes,
            self.bytes.clone(),
        );
        registry.register_with_unit(
            format!("delivery_to_{name}_data_freshness"),
            format!("Age of the oldest record not yet delivered ({firehose}.DataFreshness)"),
            Unit::Seconds,
            self.data_freshness.clone(),
        );
        registry.register_with_unit(
            format!("delivery_to_{name}_{}", n.latency.0),
            n.latency.1,
            Unit::Seconds,
            self.latency.clone(),
        );
        registry.register(n.failed.0, n.failed.1, self.failed.clone());
        registry.register(
            format!("delivery_to_{name}_processed_records"),
            format!("Records sent, every attempt counted ({firehose}.ProcessedRecords)"),
            self.processed_records.clone(),
        );
        registry.register_with_unit(
            format!("delivery_to_{name}_processed"),
            format!("Request bytes sent, every attempt counted ({firehose}.ProcessedBytes)"),
            Unit::Bytes,
            self.processed_bytes.clone(),
        );
        if let Some((suffix, help)) = n.retried {
            registry.register(
                format!("delivery_to_{name}_{suffix}"),
                help,
                self.retried.clone(),
            );
        }
    }

    /// Counts a request: taken, or failed.
    pub fn request(&self, stream: &str, ok: bool) {
        self.requests
            .get_or_create(&OutcomeLabels {
                stream: stream.to_string(),
                outcome: if ok { SUCCESS } else { FAILURE }.to_string(),
            })
            .inc();
    }
}

/// A node's name and log backend.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabels {
    pub node: String,
    pub backend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StreamInfoLabels {
    pub stream: String,
    /// s3, opensearch, splunk, http_endpoint or iceberg.
    pub destination: String,
}

/// The JetStream log's families, per delivery stream (each node exports its own).
pub struct JetStreamMetrics {
    /// From a put's first publish to JetStream's last acknowledgement.
    pub publish: HistogramFamily<StreamLabels>,
    pub published_records: Family<StreamLabels, Counter>,
    /// Records JetStream did not acknowledge (refused with "Slow down.").
    pub publish_failures: Family<StreamLabels, Counter>,
    /// Records this node received that JetStream had handed out before (to it or another
    /// node that did not acknowledge them in time).
    pub redelivered_records: Family<StreamLabels, Counter>,
    /// Records this node holds, handed out and not yet acknowledged.
    pub held_records: Family<StreamLabels, Gauge>,
    /// Messages (each a put's records) handed out to any node and not acknowledged (the
    /// consumer's ack-pending).
    pub ack_pending_messages: Family<StreamLabels, Gauge>,
    /// Messages in the stream, not yet handed to any node.
    pub pending_messages: Family<StreamLabels, Gauge>,
}

fn publish_histogram() -> Histogram {
    // 100 µs … ~6.5 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 17))
}

impl Default for JetStreamMetrics {
    fn default() -> Self {
        JetStreamMetrics {
            publish: Family::new_with_constructor(publish_histogram),
            published_records: Family::default(),
            publish_failures: Family::default(),
            redelivered_records: Family::default(),
            held_records: Family::default(),
            ack_pending_messages: Family::default(),
            pending_messages: Family::default(),
        }
    }
}

impl JetStreamMetrics {
    fn register(&self, registry: &mut Registry) {
        registry.register_with_unit(
            "jetstream_publish",
            "Time from a put's first JetStream publish to its last acknowledgement",
            prometheus_client::registry::Unit::Seconds,
            self.publish.clone(),
        );
        registry.register(
            "jetstream_published_records",
            "Records JetStream acknowledged to this node",
            self.published_records.clone(),
        );
        registry.register(
            "jetstream_publish_failures",
            "Records JetStream did not acknowledge (refused with Slow down.)",
            self.publish_failures.clone(),
        );
        registry.register(
            "jetstream_redelivered_records",
            "Records this node received that JetStream had handed out before",
            self.redelivered_records.clone(),
        );
        registry.register(
            "jetstream_held_records",
            "Records this node holds, handed out by JetStream and not yet acknowledged",
            self.held_records.clone(),
        );
        registry.register(
            "jetstream_ack_pending_messages",
            "Messages (each a put's records) handed out to any node and not acknowledged (the consumer's ack-pending)",
            self.ack_pending_messages.clone(),
        );
        registry.register(
            "jetstream_pending_messages",
            "Messages (each a put's records) in the JetStream stream not yet handed to any node",
            self.pending_messages.clone(),
        );
    }
}

fn fsync_histogram() -> Histogram {
    // 50 µs … ~3 s.
    Histogram::new(exponential_buckets(0.00005, 2.0, 16))
}

fn latency_histogram() -> Histogram {
    // 5 ms … ~45 min: covers zero buffering up to the 900 s interval plus retries.
    Histogram::new(exponential_buckets(0.005, 2.0, 20))
}

fn processing_histogram() -> Histogram {
    // 10 µs … ~5 min (the longest Lambda runtime).
    Histogram::new(exponential_buckets(0.00001, 2.0, 25))
}

/// Every metric the daemon exports.
pub struct Metrics {
    registry: Registry,
    pub incoming_bytes: Family<StreamLabels, Counter>,
    pub incoming_records: Family<StreamLabels, Counter>,
    pub incoming_put_requests: Family<StreamLabels, Counter>,
    pub throttled_records: Family<StreamLabels, Counter>,
    pub api_requests: Family<ApiLabels, Counter>,
    pub buffer_flushes: Family<FlushLabels, Counter>,
    pub buffered_bytes: Family<StreamLabels, Gauge>,
    pub delivery_to_s3_objects: Family<OutcomeLabels, Counter>,
    pub delivery_to_s3_records: Family<StreamLabels, Counter>,
    pub delivery_to_s3_bytes: Family<StreamLabels, Counter>,
    pub delivery_to_s3_data_freshness: Family<StreamLabels, Gauge<f64, AtomicU64>>,
    pub delivery_to_s3_latency: HistogramFamily<StreamLabels>,
    pub undelivered_records: Family<StreamLabels, Counter>,
    /// 1 while the stream's delivery is blocked by a failure retrying cannot fix, by reason.
    pub delivery_blocked: Family<StreamReasonLabels, Gauge>,
    /// Failed attempts with such a cause.
    pub delivery_blocked_attempts: Family<StreamReasonLabels, Counter>,
    /// Records written to the error output, by error output type.
    pub error_output_records: Family<ErrorOutputLabels, Counter>,
    /// The stream's buffering hints: the interval and the size.
    pub buffer_interval: Family<StreamLabels, Gauge>,
    pub buffer_size_bytes: Family<StreamLabels, Gauge>,
    /// How large the spools may grow on disk together.
    pub spool_capacity_bytes: Gauge,
    pub spool_bytes: Family<StreamLabels, Gauge>,
    pub spool_segments: Family<StreamLabels, Gauge>,
    pub spool_fsync: HistogramFamily<StreamLabels>,
    pub spool_replayed_records: Family<StreamLabels, Counter>,
    pub journal_recovered_objects: Family<OutcomeLabels, Counter>,
    pub journal_skipped_records: Family<StreamLabels, Counter>,
    pub journal_failures: Family<StreamLabels, Counter>,
    pub journal_rewritten_objects: Family<StreamLabels, Counter>,
    pub spool_expired_records: Family<StreamLabels, Counter>,
    pub spool_corrupt_segments: Family<StreamLabels, Counter>,
    pub spool_truncated_bytes: Family<StreamLabels, Counter>,
    pub spool_lost_records: Family<StreamLabels, Counter>,
    pub spool_backlog_records: Family<StreamLabels, Gauge>,
    pub spool_unread_records: Family<StreamLabels, Gauge>,
    pub spool_backlog_oldest_age: Family<StreamLabels, Gauge<f64, AtomicU64>>,
    pub memory_used_bytes: Gauge,
    pub memory_budget_bytes: Gauge,
    pub refused_requests: Family<ReasonLabels, Counter>,
    pub request_wait: Histogram,
    pub processing_duration: HistogramFamily<StreamLabels>,
    pub processing_invocations: Family<OutcomeLabels, Counter>,
    pub processing_records: Family<OutcomeLabels, Counter>,
    pub processing_bytes: Family<OutcomeLabels, Counter>,
    pub conversion_records: Family<OutcomeLabels, Counter>,
    pub conversion_bytes: Family<OutcomeLabels, Counter>,
    pub partition_count: Family<StreamLabels, Gauge>,
    pub partition_count_exceeded: Family<StreamLabels, Gauge>,
    pub active_partitions_limit: Family<StreamLabels, Gauge>,
    pub partition_limit_records: Family<StreamLabels, Counter>,
    pub jq_processing_duration: HistogramFamily<StreamLabels>,
    pub key_service_calls: Family<OutcomeLabels, Counter>,
    /// Reads of credentials' secrets, by outcome: success, unreadable, format.
    pub secret_reads: Family<OutcomeLabels, Counter>,
    /// Each HTTP destination's families (`DeliveryToAmazonOpenSearchService.*`,
    /// `DeliveryToSplunk.*`, …), by its kind.
    destinations: BTreeMap<&'static str, DestinationMetrics>,
    /// `[log] backend = "jetstream"`: the node's view of the fleet's log.
    pub jetstream: JetStreamMetrics,
    /// `hosepipe_node_info{node, backend}`: 1 on every node.
    pub node_info: Family<NodeLabels, Gauge>,
    /// `hosepipe_stream_info{stream, destination}`: 1 per stream (joins a stream's series to its
    /// destination).
    pub stream_info: Family<StreamInfoLabels, Gauge>,
    /// The `reason`s delivery may be blocked by, registered by the deliver stage: each stream
    /// has a `delivery_blocked` series per reason from its start.
    blocked_reasons: Mutex<Vec<&'static str>>,
    /// Every fsync's latency, kept only when a benchmark asks for them.
    fsync_log: Mutex<Option<Vec<f64>>>,
    /// Per-record arrival → delivered latencies, kept only when a benchmark asks for them.
    latency_log: Mutex<Option<Vec<f64>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("hosepipe");
        let m = Metrics {
            incoming_bytes: Family::default(),
            incoming_records: Family::default(),
            incoming_put_requests: Family::default(),
            throttled_records: Family::default(),
            api_requests: Family::default(),
            buffer_flushes: Family::default(),
            buffered_bytes: Family::default(),
            delivery_to_s3_objects: Family::default(),
            delivery_to_s3_records: Family::default(),
            delivery_to_s3_bytes: Family::default(),
            delivery_to_s3_data_freshness: Family::default(),
            delivery_to_s3_latency: Family::new_with_constructor(latency_histogram),
            undelivered_records: Family::default(),
            delivery_blocked: Family::default(),
            delivery_blocked_attempts: Family::default(),
            error_output_records: Family::default(),
            buffer_interval: Family::default(),
            buffer_size_bytes: Family::default(),
            spool_capacity_bytes: Gauge::default(),
            spool_bytes: Family::default(),
            spool_segments: Family::default(),
            spool_fsync: Family::new_with_constructor(fsync_histogram),
            spool_replayed_records: Family::default(),
            journal_recovered_objects: Family::default(),
            journal_skipped_records: Family::default(),
            journal_failures: Family::default(),
            journal_rewritten_objects: Family::default(),
            spool_expired_records: Family::default(),
            spool_corrupt_segments: Family::default(),
            spool_truncated_bytes: Family::default(),
            spool_lost_records: Family::default(),
            spool_backlog_records: Family::default(),
            spool_unread_records: Family::default(),
            spool_backlog_oldest_age: Family::default(),
            memory_used_bytes: Gauge::default(),
            memory_budget_bytes: Gauge::default(),
            refused_requests: Family::default(),
            // 100 µs … ~6.5 s.
            request_wait: Histogram::new(exponential_buckets(0.0001, 2.0, 17)),
            processing_duration: Family::new_with_constructor(processing_histogram),
            processing_invocations: Family::default(),
            processing_records: Family::default(),
            processing_bytes: Family::default(),
            conversion_records: Family::default(),
            conversion_bytes: Family::default(),
            partition_count: Family::default(),
            partition_count_exceeded: Family::default(),
            active_partitions_limit: Family::default(),
            partition_limit_records: Family::default(),
            jq_processing_duration: Family::new_with_constructor(processing_histogram),
            key_service_calls: Family::default(),
            secret_reads: Family::default(),
            jetstream: JetStreamMetrics::default(),
            node_info: Family::default(),
            stream_info: Family::default(),
            destinations: BTreeMap::new(),
            blocked_reasons: Mutex::new(Vec::new()),
            fsync_log: Mutex::new(None),
            latency_log: Mutex::new(None),
            registry: Registry::default(),
        };
        registry.register(
            "incoming_bytes",
            "Bytes accepted (Firehose IncomingBytes)",
            m.incoming_bytes.clone(),
        );
        registry.register(
            "incoming_records",
            "Records accepted (Firehose IncomingRecords)",
            m.incoming_records.clone(),
        );
        registry.register(
            "incoming_put_requests",
            "Successful PutRecord and PutRecordBatch calls (Firehose IncomingPutRequests)",
            m.incoming_put_requests.clone(),
        );
        registry.register(
            "throttled_records",
            "Records refused by backpressure or quotas (Firehose ThrottledRecords)",
            m.throttled_records.clone(),
        );
        registry.register(
            "api_requests",
            "API calls by operation and outcome",
            m.api_requests.clone(),
        );
        registry.register(
            "buffer_flushes",
            "Buffers flushed, by reason (size, interval, shutdown)",
            m.buffer_flushes.clone(),
        );
        registry.register_with_unit(
            "buffered",
            "Bytes in the open buffer",
            prometheus_client::registry::Unit::Bytes,
            m.buffered_bytes.clone(),
        );
        registry.register(
            "delivery_to_s3_objects",
            "S3 object writes by outcome (Firehose DeliveryToS3.Success is success/(success+failure))",
            m.delivery_to_s3_objects.clone(),
        );
        registry.register(
            "delivery_to_s3_records",
            "Records delivered to S3 (Firehose DeliveryToS3.Records)",
            m.delivery_to_s3_records.clone(),
        );
        registry.register_with_unit(
            "delivery_to_s3",
            "Record bytes delivered to S3, before compression (Firehose DeliveryToS3.Bytes)",
            prometheus_client::registry::Unit::Bytes,
            m.delivery_to_s3_bytes.clone(),
        );
        registry.register_with_unit(
            "delivery_to_s3_data_freshness",
            "Age of the oldest record not yet delivered to S3 (Firehose DeliveryToS3.DataFreshness)",
            prometheus_client::registry::Unit::Seconds,
            m.delivery_to_s3_data_freshness.clone(),
        );
        registry.register_with_unit(
            "delivery_to_s3_latency",
            "Time from a record's arrival to its object being written",
            prometheus_client::registry::Unit::Seconds,
            m.delivery_to_s3_latency.clone(),
        );
        registry.register(
            "undelivered_records",
            "Accepted records that could not be delivered before shutdown gave up",
            m.undelivered_records.clone(),
        );
        registry.register(
            "delivery_blocked",
            "1 while the stream's delivery is blocked by a failure retrying cannot fix (reason: access_denied, no_such_bucket, kms_key_not_found, …); its records wait in the spool",
            m.delivery_blocked.clone(),
        );
        registry.register(
            "delivery_blocked_attempts",
            "Failed delivery attempts whose cause retrying cannot fix, by reason",
            m.delivery_blocked_attempts.clone(),
        );
        registry.register(
            "error_output_records",
            "Records written to the error output (the S3 error prefix), by error output type (processing-failed, format-conversion-failed, …)",
            m.error_output_records.clone(),
        );
        registry.register_with_unit(
            "buffer_interval",
            "The stream's BufferingHints.IntervalInSeconds",
            prometheus_client::registry::Unit::Seconds,
            m.buffer_interval.clone(),
        );
        registry.register_with_unit(
            "buffer_size",
            "The stream's BufferingHints.SizeInMBs, in bytes",
            prometheus_client::registry::Unit::Bytes,
            m.buffer_size_bytes.clone(),
        );
        registry.register_with_unit(
            "spool_capacity",
            "How large the spools may grow on disk together ([spool] max_mb, else half the disk's free space at start); a put past it is refused",
            prometheus_client::registry::Unit::Bytes,
            m.spool_capacity_bytes.clone(),
        );
        registry.register_with_unit(
            "spool",
            "Bytes in the stream's spool segments on disk",
            prometheus_client::registry::Unit::Bytes,
            m.spool_bytes.clone(),
        );
        registry.register(
            "spool_segments",
            "Spool segment files of the stream",
            m.spool_segments.clone(),
        );
        registry.register_with_unit(
            "spool_fsync",
            "Latency of one group-commit fsync of the spool",
            prometheus_client::registry::Unit::Seconds,
            m.spool_fsync.clone(),
        );
        registry.register(
            "spool_replayed_records",
            "Undelivered records in the spool at start, which its reader then hands on (none are loaded)",
            m.spool_replayed_records.clone(),
        );
        registry.register(
            "journal_recovered_objects",
            "Objects being uploaded when the daemon stopped, by what recovery found: done (marked in the journal) or found (in the bucket): their records are not sent again; rewrite (not in the bucket): made again from the same records under the same key",
            m.journal_recovered_objects.clone(),
        );
        registry.register(
            "journal_skipped_records",
            "Records read again after a restart that recovery found already in a written object, settled without being sent again",
            m.journal_skipped_records.clone(),
        );
        registry.register(
            "journal_rewritten_objects",
            "Objects made again after a restart from the records of an object that was being uploaded, and written under its key",
            m.journal_rewritten_objects.clone(),
        );
        registry.register(
            "journal_failures",
            "Objects that could not be journaled before their upload (uploaded anyway: a crash may write their records again)",
            m.journal_failures.clone(),
        );
        registry.register(
            "spool_expired_records",
            "Records still undelivered after the retention age (they keep being retried)",
            m.spool_expired_records.clone(),
        );
        registry.register(
            "spool_corrupt_segments",
            "Corrupt spool segments found (a copy is moved to corrupt/)",
            m.spool_corrupt_segments.clone(),
        );
        registry.register(
            "spool_lost_records",
            "Records that could not be read back from a damaged spool segment",
            m.spool_lost_records.clone(),
        );
        registry.register(
            "spool_backlog_records",
            "Accepted records not yet settled (delivered or in the error output), on disk or in the pipeline",
            m.spool_backlog_records.clone(),
        );
        registry.register(
            "spool_unread_records",
            "Accepted records on disk only, not yet read into the pipeline",
            m.spool_unread_records.clone(),
        );
        registry.register_with_unit(
            "spool_backlog_oldest_age",
            "Age of the oldest record not yet settled",
            prometheus_client::registry::Unit::Seconds,
            m.spool_backlog_oldest_age.clone(),
        );
        registry.register_with_unit(
            "memory_used",
            "Memory held by records inside the stages and requests being decoded ([memory] max_mb)",
            prometheus_client::registry::Unit::Bytes,
            m.memory_used_bytes.clone(),
        );
        registry.register_with_unit(
            "memory_budget",
            "The memory budget ([memory] max_mb)",
            prometheus_client::registry::Unit::Bytes,
            m.memory_budget_bytes.clone(),
        );
        registry.register(
            "refused_requests",
            "Put requests refused whole, by reason: memory and spool_full before the body was decoded, quota",
            m.refused_requests.clone(),
        );
        registry.register_with_unit(
            "request_capacity_wait",
            "Time a put request waited for memory or spool room before it was taken or refused",
            prometheus_client::registry::Unit::Seconds,
            m.request_wait.clone(),
        );
        registry.register_with_unit(
            "spool_truncated",
            "Bytes of torn writes cut off the end of the spool at start",
            prometheus_client::registry::Unit::Bytes,
            m.spool_truncated_bytes.clone(),
        );
        registry.register_with_unit(
            "processing_duration",
            "Time of one processing run over a batch (Firehose ExecuteProcessing.Duration)",
            prometheus_client::registry::Unit::Seconds,
            m.processing_duration.clone(),
        );
        registry.register(
            "processing_invocations",
            "Processing runs, success when no record failed (Firehose ExecuteProcessing.Success)",
            m.processing_invocations.clone(),
        );
        registry.register(
            "processing_records",
            "Records processed by outcome ok, dropped or failed (Firehose SucceedProcessing.Records)",
            m.processing_records.clone(),
        );
        registry.register_with_unit(
            "processing",
            "Bytes processed by outcome: ok counts output bytes, dropped and failed input bytes (Firehose SucceedProcessing.Bytes)",
            prometheus_client::registry::Unit::Bytes,
            m.processing_bytes.clone(),
        );
        registry.register(
            "conversion_records",
            "Records converted to Parquet (outcome success) or failed (Firehose SucceedConversion / FailedConversion.Records)",
            m.conversion_records.clone(),
        );
        registry.register_with_unit(
            "conversion",
            "Bytes of records converted or failed (Firehose SucceedConversion / FailedConversion.Bytes)",
            prometheus_client::registry::Unit::Bytes,
            m.conversion_bytes.clone(),
        );
        registry.register(
            "partition_count",
            "Active partitions: buffered, or flushed and not yet delivered (Firehose PartitionCount)",
            m.partition_count.clone(),
        );
        registry.register(
            "partition_count_exceeded",
            "1 while the active-partition limit is reached (Firehose PartitionCountExceeded)",
            m.partition_count_exceeded.clone(),
        );
        registry.register(
            "active_partitions_limit",
            "The stream's active-partition limit (Firehose ActivePartitionsLimit)",
            m.active_partitions_limit.clone(),
        );
        registry.register(
            "partition_limit_records",
            "Records sent to the error output because their partition would exceed the active-partition limit",
            m.partition_limit_records.clone(),
        );
        registry.register_with_unit(
            "jq_processing_duration",
            "Time the MetadataExtraction jq query took per processed batch (Firehose JQProcessing.Duration)",
            prometheus_client::registry::Unit::Seconds,
            m.jq_processing_duration.clone(),
        );
        registry.register(
            "key_service_calls",
            "Data-key requests to the key service, by outcome: success or Firehose's KMS condition (KMSKeyNotFound, KMSKeyAccessDenied, KMSKeyDisabled, KMSKeyInvalidState, KMSUnavailable)",
            m.key_service_calls.clone(),
        );
        registry.register(
            "secret_reads",
            "Reads of destination credentials' secrets (SecretsManagerConfiguration), by outcome: success, unreadable or format",
            m.secret_reads.clone(),
        );
        m.jetstream.register(&mut registry);
        registry.register(
            "node_info",
            "This node's name and log backend (spool or jetstream); always 1",
            m.node_info.clone(),
        );
        registry.register(
            "stream_info",
            "Each delivery stream and its destination (s3, opensearch, splunk, http_endpoint, iceberg); always 1",
            m.stream_info.clone(),
        );
        let mut destinations = BTreeMap::new();
        for names in crate::deliver::HTTP_METRICS {
            let families = DestinationMetrics::default();
            families.register(&mut registry, names);
            destinations.insert(names.name, families);
        }
        Metrics {
            registry,
            destinations,
            ..m
        }
    }

    /// Starts keeping every fsync latency (benchmarks only).
    pub fn keep_fsyncs(&self) {
        *self.fsync_log.lock().expect("fsync log lock") = Some(Vec::new());
    }

    /// Counts a put request refused whole.
    pub fn refused_request(&self, reason: &str) {
        self.refused_requests_counter(reason).inc();
    }

    /// The counter of put requests refused for `reason`, made at 0 if it is new.
    pub fn refused_requests_counter(&self, reason: &str) -> Counter {
        self.refused_requests
            .get_or_create(&ReasonLabels {
                reason: reason.to_string(),
            })
            .clone()
    }

    /// The reasons delivery may be blocked by (the deliver stage's causes).
    pub fn register_blocked_reasons(&self, reasons: &[&'static str]) {
        *self.blocked_reasons.lock().expect("reasons lock") = reasons.to_vec();
    }

    /// A failed attempt blocked by `reason` (`started`: a new cause; the gauge goes to 1).
    pub fn delivery_blocked(&self, stream: &str, reason: &str, started: bool) {
        let labels = StreamReasonLabels {
            stream: stream.to_string(),
            reason: reason.to_string(),
        };
        self.delivery_blocked_attempts.get_or_create(&labels).inc();
        if started {
            // One cause at a time: the one it replaces goes back to 0.
            self.unblocked(stream);
            self.delivery_blocked.get_or_create(&labels).set(1);
        }
    }

    /// The stream's delivery is no longer blocked.
    pub fn unblocked(&self, stream: &str) {
        // Gauges of this stream at 1 go to 0 (the set of reasons is small and known).
        for reason in self.blocked_reasons.lock().expect("reasons lock").iter() {
            self.delivery_blocked
                .get_or_create(&StreamReasonLabels {
                    stream: stream.to_string(),
                    reason: (*reason).to_string(),
                })
                .set(0);
        }
    }

    /// Makes at 0 the series every stream has, whatever happens to it (throttling, delivery
    /// outcomes, the error output types that apply to it), so a dashboard shows 0 where nothing
    /// happened yet instead of "No data". `destination` is the stream's kind (`s3`, …).
    pub fn stream_series(&self, stream: &str, destination: &str, error_types: &[&str]) {
        let labels = Self::stream(stream);
        for reason in self.blocked_reasons.lock().expect("reasons lock").iter() {
            let _ = self.delivery_blocked.get_or_create(&StreamReasonLabels {
                stream: stream.to_string(),
                reason: (*reason).to_string(),
            });
        }
        for family in [
            &self.incoming_records,
            &self.incoming_bytes,
            &self.incoming_put_requests,
            &self.throttled_records,
        ] {
            let _ = family.get_or_create(&labels);
        }
        let outcomes = match destination {
            "s3" => &self.delivery_to_s3_objects,
            http => &self.destination(http).requests,
        };
        for outcome in [SUCCESS, FAILURE] {
            let _ = outcomes.get_or_create(&OutcomeLabels {
                stream: stream.to_string(),
                outcome: outcome.to_string(),
            });
        }
        for error_type in error_types {
            let _ = self.error_output_records.get_or_create(&ErrorOutputLabels {
                stream: stream.to_string(),
                error_type: error_type.to_string(),
            });
        }
    }

    pub fn record_fsync(&self, seconds: f64) {
        if let Some(log) = self.fsync_log.lock().expect("fsync log lock").as_mut() {
            log.push(seconds);
        }
    }

    pub fn take_fsyncs(&self) -> Vec<f64> {
        self.fsync_log
            .lock()
            .expect("fsync log lock")
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// The families of the HTTP destination `kind` (`opensearch`, `splunk`, …).
    pub fn destination(&self, kind: &str) -> &DestinationMetrics {
        self.destinations
            .get(kind)
            .expect("every HTTP destination registers its metric families")
    }

    pub fn stream(stream: &str) -> StreamLabels {
        StreamLabels {
            stream: stream.to_string(),
        }
    }

    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// Starts keeping every record's delivery latency (benchmarks only).
    pub fn keep_latencies(&self) {
        *self.latency_log.lock().expect("latency log lock") = Some(Vec::new());
    }

    /// Takes the latencies kept since [`Metrics::keep_latencies`].
    pub fn take_latencies(&self) -> Vec<f64> {
        self.latency_log
            .lock()
            .expect("latency log lock")
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Records a delivered object's records.
    pub fn delivered_to_s3(&self, stream: &str, arrivals_ms: &[i64], bytes: u64, now_ms: i64) {
        let labels = Self::stream(stream);
        self.delivery_to_s3_objects
            .get_or_create(&OutcomeLabels {
                stream: stream.to_string(),
                outcome: SUCCESS.to_string(),
            })
            .inc();
        self.delivery_to_s3_records
            .get_or_create(&labels)
            .inc_by(arrivals_ms.len() as u64);
        self.delivery_to_s3_bytes
            .get_or_create(&labels)
            .inc_by(bytes);
        let hist = self.delivery_to_s3_latency.get_or_create(&labels);
        self.observe_latencies(arrivals_ms, now_ms, |secs| hist.observe(secs));
    }

    /// Each record's arrival → delivered latency, to `observe` and (when a benchmark asked for
    /// them) the latency log.
    fn observe_latencies(&self, arrivals_ms: &[i64], now_ms: i64, observe: impl Fn(f64)) {
        let mut log = self.latency_log.lock().expect("latency log lock");
        for a in arrivals_ms {
            let secs = (now_ms - a).max(0) as f64 / 1000.0;
            observe(secs);
            if let Some(log) = log.as_mut() {
                log.push(secs);
            }
        }
    }

    /// Records a batch an HTTP destination took: its records and bytes, and each record's
    /// arrival → delivered latency (OpenSearch's latency histogram; Splunk's histogram is the
    /// acknowledgement latency, observed by the caller).
    pub fn delivered_http(
        &self,
        dest: &DestinationMetrics,
        stream: &str,
        arrivals_ms: &[i64],
        bytes: u64,
        now_ms: i64,
        per_record_latency: bool,
    ) {
        let labels = Self::stream(stream);
        dest.records
            .get_or_create(&labels)
            .inc_by(arrivals_ms.len() as u64);
        dest.bytes.get_or_create(&labels).inc_by(bytes);
        let hist = dest.latency.get_or_create(&labels);
        self.observe_latencies(arrivals_ms, now_ms, |secs| {
            if per_record_latency {
                hist.observe(secs);
            }
        });
    }

    /// Records one processing run: its duration and per-outcome records and bytes.
    pub fn processed(&self, stream: &str, seconds: f64, counts: &[(&str, u64, u64)]) {
        self.processing_duration
            .get_or_create(&Self::stream(stream))
            .observe(seconds);
        let failed = counts.iter().any(|(o, n, _)| *o == "failed" && *n > 0);
        let labels = |outcome: &str| OutcomeLabels {
            stream: stream.to_string(),
            outcome: outcome.to_string(),
        };
        self.processing_invocations
            .get_or_create(&labels(if failed { FAILURE } else { SUCCESS }))
            .inc();
        for (outcome, records, bytes) in counts {
            self.processing_records
                .get_or_create(&labels(outcome))
                .inc_by(*records);
            self.processing_bytes
                .get_or_create(&labels(outcome))
                .inc_by(*bytes);
        }
    }

    /// One data-key request and how it ended.
    pub fn key_service_call(&self, stream: &str, result: Result<(), &crate::crypto::KeyError>) {
        let outcome = match result {
            Ok(()) => SUCCESS,
            Err(e) => e.code(),
        };
        self.key_service_calls
            .get_or_create(&OutcomeLabels {
                stream: stream.to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
    }

    /// Counts a read of a credential's secret: `None` when it worked.
    pub fn secret_read(&self, stream: &str, error: Option<&crate::secrets::SecretError>) {
        let outcome = match error {
            None => SUCCESS,
            Some(crate::secrets::SecretError::Unreadable { .. }) => "unreadable",
            Some(crate::secrets::SecretError::Format { .. }) => "format",
        };
        self.secret_reads
            .get_or_create(&OutcomeLabels {
                stream: stream.to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
    }

    /// Counts records written to the error output as `error_type`.
    pub fn error_output(&self, stream: &str, error_type: &str, records: u64) {
        self.error_output_records
            .get_or_create(&ErrorOutputLabels {
                stream: stream.to_string(),
                error_type: error_type.to_string(),
            })
            .inc_by(records);
    }

    /// Dynamic partitioning's gauges after a buffer change.
    pub fn partitions(&self, stream: &str, active: usize, limit: usize) {
        let labels = Self::stream(stream);
        self.partition_count
            .get_or_create(&labels)
            .set(active as i64);
        self.partition_count_exceeded
            .get_or_create(&labels)
            .set(i64::from(active >= limit));
        self.active_partitions_limit
            .get_or_create(&labels)
            .set(limit as i64);
    }

    /// Records one batch's format conversion: (records, bytes) converted and failed.
    pub fn converted(&self, stream: &str, ok: (u64, u64), failed: (u64, u64)) {
        for (outcome, (records, bytes)) in [(SUCCESS, ok), (FAILURE, failed)] {
            let labels = OutcomeLabels {
                stream: stream.to_string(),
                outcome: outcome.to_string(),
            };
            self.conversion_records
                .get_or_create(&labels)
                .inc_by(records);
            self.conversion_bytes.get_or_create(&labels).inc_by(bytes);
        }
    }

    pub fn s3_failure(&self, stream: &str) {
        self.delivery_to_s3_objects
            .get_or_create(&OutcomeLabels {
                stream: stream.to_string(),
                outcome: FAILURE.to_string(),
            })
            .inc();
    }

    pub fn api_call(&self, operation: &str, ok: bool) {
        self.api_requests
            .get_or_create(&ApiLabels {
                operation: operation.to_string(),
                outcome: if ok { SUCCESS } else { FAILURE }.to_string(),
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_convention() {
        let m = Metrics::new();
        m.incoming_records
            .get_or_create(&Metrics::stream("s"))
            .inc_by(3);
        m.delivered_to_s3("s", &[0, 500], 10, 1000);
        m.delivery_to_s3_data_freshness
            .get_or_create(&Metrics::stream("s"))
            .set(1.5);
        let text = m.encode();
        for needle in [
            "hosepipe_incoming_records_total{stream=\"s\"} 3",
            "hosepipe_delivery_to_s3_records_total{stream=\"s\"} 2",
            "hosepipe_delivery_to_s3_bytes_total{stream=\"s\"} 10",
            "hosepipe_delivery_to_s3_objects_total{stream=\"s\",outcome=\"success\"} 1",
            "hosepipe_delivery_to_s3_data_freshness_seconds{stream=\"s\"} 1.5",
            "hosepipe_delivery_to_s3_latency_seconds_count{stream=\"s\"} 2",
        ] {
            assert!(text.contains(needle), "{needle} missing from\n{text}");
        }
    }
}
