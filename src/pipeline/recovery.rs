//! Exactly-once objects: each object is journaled before its upload (`crate::journal`); after
//! a crash, recovery asks the bucket about every object that was being uploaded. The records of
//! one that is stored are settled as the spool reader hands them on again. One that is not may
//! still land (the crash cut its upload off after the server had the body): it is made again
//! from exactly its records and written under the same key, so the bucket ends with those
//! records once whichever write lands last.

use std::collections::HashMap;
use std::time::Duration;

use super::*;
use crate::buffer::Rewrite;
use crate::journal::{Intent, Kind, Why};

/// How long recovery waits at most between two questions to a bucket that cannot answer.
const MAX_ASK_DELAY: Duration = Duration::from_secs(30);
/// An object being made again goes out without the records still missing this long after
/// its first one came (they were lost with a damaged segment, or a transform made different
/// parts this time): a duplicate is possible then, never a loss.
const PIN_PATIENCE: Duration = Duration::from_secs(60);
/// Batch ids of objects made again (apart from the buffers' own).
const REWRITE_BATCH_IDS: u64 = 1 << 63;

/// What recovery found, applied to records as the buffers receive them again.
#[derive(Default)]
pub(super) struct Recovered {
    state: Mutex<State>,
    /// Something is left to apply (the common case, nothing, costs one load per chunk).
    any: AtomicBool,
}

#[derive(Default)]
struct State {
    items: HashMap<Item, Action>,
    /// Objects being made again, by journal id.
    pins: HashMap<u64, Pin>,
}

enum Action {
    /// In an object that is stored: settle it.
    Skip,
    /// In an object being made again (its journal id).
    Pin(u64),
}

struct Pin {
    intent: Intent,
    records: Vec<Record>,
    missing: usize,
    since: Option<Instant>,
    /// Failed-record documents of records as they arrived (processing's error output).
    failed_as_arrived: bool,
}

impl Pin {
    fn new(intent: Intent, missing: usize) -> Pin {
        let failed_as_arrived =
            matches!(intent.kind, Kind::Failed { .. }) && intent.items.iter().all(|i| i.part == 0);
        Pin {
            intent,
            records: Vec::new(),
            missing,
            since: None,
            failed_as_arrived,
        }
    }

    /// The buffer that gathers its records: the processing buffer for the error output of
    /// processing (records as they arrived, in a stream with processors), the destination
    /// buffer for every other object.
    fn gathered_at(&self, processors: bool) -> Stage {
        match processors && self.failed_as_arrived {
            true => Stage::Processing,
            false => Stage::Destination,
        }
    }
}

/// An object made again, for the deliver stage: a batch to encode, or error output.
pub(super) enum Remade {
    Batch(Batch),
    Object(EncodedObject),
}

impl StreamContext {
    /// Whether recovery still has records to apply itself to.
    pub(super) fn recovering(&self) -> bool {
        self.recovered.any.load(Ordering::Relaxed)
    }

    /// Applies recovery to records a buffer of `stage` received: those in a stored object are
    /// settled; those of an object being made again are kept for it (at the processing buffer
    /// only the records as they arrived, when the stream has processors: the error output of
    /// processing); the rest are returned. Objects now complete (or, with `force` or past
    /// their patience, incomplete) come back in `remade`.
    pub(super) fn recovered(
        &self,
        stage: Stage,
        processors: bool,
        records: Vec<Record>,
        force: bool,
        current: &Versioned,
        remade: &mut Vec<Remade>,
    ) -> Vec<Record> {
        if !self.recovering() {
            return records;
        }
        let mut state = self.recovered.state.lock().expect("recovered lock");
        let pins_here = |state: &State, id: u64| {
            state
                .pins
                .get(&id)
                .is_some_and(|p| p.gathered_at(processors) == stage)
        };
        let (mut skipped, mut kept) = (Vec::new(), Vec::new());
        let now = Instant::now();
        for r in records {
            let item = Item {
                seq: r.seq,
                part: r.part,
            };
            match state.items.get(&item) {
                Some(Action::Skip) => {
                    state.items.remove(&item);
                    skipped.push(r);
                }
                Some(&Action::Pin(id)) if pins_here(&state, id) => {
                    state.items.remove(&item);
                    match state.pins.get_mut(&id) {
                        Some(pin) => {
                            pin.since.get_or_insert(now);
                            pin.missing -= 1;
                            pin.records.push(r);
                        }
                        None => kept.push(r),
                    }
                }
                _ => kept.push(r),
            }
        }
        let ready: Vec<u64> = state
            .pins
            .iter()
            .filter(|(_, p)| {
                let waited = p
                    .since
                    .is_some_and(|t| now.duration_since(t) >= PIN_PATIENCE);
                p.gathered_at(processors) == stage && (p.missing == 0 || force || waited)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in ready {
            let pin = state.pins.remove(&id).expect("a ready pin");
            if pin.records.is_empty() {
                // Stopping before any of its records came: the next start makes it again.
                state
                    .items
                    .retain(|_, action| !matches!(action, Action::Pin(p) if *p == id));
                continue;
            }
            if pin.missing > 0 {
                tracing::warn!(key = %pin.intent.keys[0], missing = pin.missing, "an object made again after the restart goes out without records that did not come again");
                state
                    .items
                    .retain(|_, action| !matches!(action, Action::Pin(p) if *p == id));
            }
            remade.push(self.remake_object(pin, current));
        }
        if state.items.is_empty() && state.pins.is_empty() {
            self.recovered.any.store(false, Ordering::Relaxed);
        }
        drop(state);
        if !skipped.is_empty() {
            self.shared
                .metrics
                .journal_skipped_records
                .get_or_create(&Metrics::stream(&self.name))
                .inc_by(skipped.len() as u64);
            self.ledger().settle_all(skipped);
        }
        kept
    }

    /// The object a pin's records make: its batch, or its failed-record documents.
    fn remake_object(&self, pin: Pin, current: &Versioned) -> Remade {
        let Pin {
            intent,
            mut records,
            ..
        } = pin;
        records.sort_unstable_by_key(|r| (r.seq, r.part));
        let error_key = intent.keys.get(1).unwrap_or(&intent.keys[0]).clone();
        match intent.kind {
            Kind::Records => Remade::Batch(Batch {
                id: REWRITE_BATCH_IDS | intent.id,
                bytes: records.iter().map(|r| r.data.len() as u64).sum(),
                partition: records[0].partition.clone(),
                records,
                reason: FlushReason::Recovery,
                rewrite: Some(Box::new(Rewrite {
                    journal_id: intent.id,
                    key: intent.keys[0].clone(),
                    error_key,
                })),
            }),
            Kind::Failed {
                error_type,
                attempt_ending_ms,
                why,
            } => {
                // The reasons follow the items in order.
                let mut reasons: HashMap<Item, Why> = intent
                    .items
                    .iter()
                    .copied()
                    .zip(
                        why.into_iter()
                            .flat_map(|(n, w)| std::iter::repeat_n(w, n as usize)),
                    )
                    .collect();
                let failed = records
                    .into_iter()
                    .map(|r| {
                        let why = reasons.remove(&Item {
                            seq: r.seq,
                            part: r.part,
                        });
                        FailedRecord {
                            record: r,
                            reason: reason(why),
                        }
                    })
                    .collect();
                let error_type = crate::encode::ErrorOutputType::parse(&error_type)
                    .unwrap_or(crate::encode::ErrorOutputType::ProcessingFailed);
                let mut obj = crate::encode::error_object(
                    failed,
                    error_type,
                    current.spec.s3_output(),
                    intent.keys[0].clone(),
                    REWRITE_BATCH_IDS | intent.id,
                    attempt_ending_ms,
                );
                obj.journal_id = Some(intent.id);
                Remade::Object(obj)
            }
        }
    }
}

/// A journaled reason as the documents' fields.
fn reason(why: Option<Why>) -> Reason {
    let why = why.unwrap_or(Why {
        attempts: 1,
        code: "Recovered".into(),
        message: "the reason was not kept".into(),
        lambda_arn: None,
        catalog_table: None,
        extra: None,
    });
    Reason {
        attempts: why.attempts,
        code: why.code,
        message: why.message,
        lambda_arn: why.lambda_arn,
        catalog_table: why
            .catalog_table
            .and_then(|t| serde_json::from_str(&t).ok()),
        extra: why.extra.and_then(|t| serde_json::from_str(&t).ok()),
    }
}

/// A reason as the journal keeps it.
fn why(reason: &Reason) -> Why {
    Why {
        attempts: reason.attempts,
        code: reason.code.clone(),
        message: reason.message.clone(),
        lambda_arn: reason.lambda_arn.clone(),
        catalog_table: reason.catalog_table.as_ref().map(|v| v.to_string()),
        extra: reason
            .extra
            .as_ref()
            .map(|m| serde_json::Value::Object(m.clone()).to_string()),
    }
}

/// Before the stream buffers its first record: which journaled objects were written. The
/// records of those that were (the journal says so, or the bucket has the object) are settled
/// when they come again; the others are made again from the same records, under the same key.
/// Asks again, with backoff, while a bucket cannot answer. False when the stream stopped first
/// (`ingest` closed): then nothing must be delivered before the next start.
pub(super) async fn recover(
    ctx: &StreamContext,
    found: Vec<Found>,
    ingest: &mpsc::Receiver<Vec<Record>>,
) -> bool {
    let Some(journal) = ctx.journal.clone() else {
        return true;
    };
    let mut state = State::default();
    for Found { intent, done } in found {
        // Every record of it settled before the crash and will not be read again.
        if !intent.items.iter().any(|i| ctx.spool.will_read(i.seq)) {
            journal.forget(intent.id);
            continue;
        }
        let outcome = if done {
            "done"
        } else {
            match stored(ctx, &intent, ingest).await {
                None => return false,
                Some(true) => {
                    let (j, id) = (journal.clone(), intent.id);
                    if let Err(e) = blocking(move || j.done(id)).await {
                        tracing::warn!(error = %e, "cannot mark a recovered object in the journal");
                    }
                    "found"
                }
                Some(false) => "rewrite",
            }
        };
        tracing::info!(
            object = %intent.keys[0],
            records = intent.items.len(),
            outcome,
            "recovered an object journaled before the restart"
        );
        ctx.shared
            .metrics
            .journal_recovered_objects
            .get_or_create(&crate::metrics::OutcomeLabels {
                stream: ctx.name.clone(),
                outcome: outcome.to_string(),
            })
            .inc();
        // Only what the reader will hand on again: the rest settled before the crash.
        let coming = intent
            .items
            .iter()
            .filter(|i| ctx.spool.will_read(i.seq))
            .copied();
        if outcome == "rewrite" {
            let mut missing = 0;
            for item in coming {
                state.items.insert(item, Action::Pin(intent.id));
                missing += 1;
            }
            state.pins.insert(intent.id, Pin::new(intent, missing));
        } else {
            state.items.extend(coming.map(|i| (i, Action::Skip)));
        }
    }
    if !state.items.is_empty() {
        *ctx.recovered.state.lock().expect("recovered lock") = state;
        ctx.recovered.any.store(true, Ordering::Relaxed);
    }
    let low = ctx.spool.stats.checkpointed_low.load(Ordering::Relaxed);
    if let Err(e) = blocking(move || journal.retire_below(low, true)).await {
        tracing::warn!(error = %e, "cannot rewrite the object journal");
    }
    true
}

/// Whether the object of `intent` is stored under one of its keys: `None` when the stream
/// stopped before a bucket could answer.
async fn stored(
    ctx: &StreamContext,
    intent: &Intent,
    ingest: &mpsc::Receiver<Vec<Record>>,
) -> Option<bool> {
    let mut delay = Duration::from_millis(100);
    loop {
        let mut unknown = None;
        for key in &intent.keys {
            let key = match intent.encrypted {
                true => crate::crypto::sink::stored_key(key),
                false => key.clone(),
            };
            match ctx.shared.sink.exists(&intent.bucket, &key).await {
                Ok(true) => return Some(true),
                Ok(false) => {}
                Err(e) => unknown = Some(e),
            }
        }
        let Some(error) = unknown else {
            return Some(false);
        };
        match ctx.stats.blocked.failed(&error, crate::pipeline::now_ms()) {
            crate::deliver::blocked::Change::Started(cause) => {
                ctx.shared
                    .metrics
                    .delivery_blocked(&ctx.name, cause.as_str(), true);
                tracing::error!(bucket = %intent.bucket, key = %intent.keys[0], %error, reason = cause.as_str(), "recovery is blocked ({}): cannot ask whether an object journaled before the restart was written; {}; asking again until it is fixed", cause.as_str(), cause.advice());
            }
            crate::deliver::blocked::Change::Again(cause) => {
                ctx.shared
                    .metrics
                    .delivery_blocked(&ctx.name, cause.as_str(), false);
            }
            _ => {
                tracing::warn!(bucket = %intent.bucket, key = %intent.keys[0], %error, "cannot ask whether an object journaled before the restart was written; asking again")
            }
        }
        tokio::time::sleep(delay).await;
        if ingest.is_closed() {
            return None;
        }
        delay = (delay * 2).min(MAX_ASK_DELAY);
    }
}

/// Journals `obj` before its first upload; its id, or `None` without a journal (or when the
/// journal cannot be written: the object is uploaded anyway, and a crash before its records
/// settle may write them again). An object made again after a crash has its entry already.
pub(super) async fn intend(ctx: &StreamContext, obj: &EncodedObject) -> Option<u64> {
    let journal = ctx.journal.clone()?;
    if obj.journal_id.is_some() {
        return obj.journal_id;
    }
    let mut entries: Vec<(Item, Option<&Reason>)> = obj
        .records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let item = Item {
                seq: r.seq,
                part: r.part,
            };
            (item, obj.reasons.get(i))
        })
        .collect();
    entries.sort_unstable_by_key(|(item, _)| *item);
    let kind = match obj.error_output {
        None => Kind::Records,
        Some(error_type) => Kind::failed(
            error_type.as_str(),
            obj.failed_at_ms,
            entries
                .iter()
                .map(|(_, r)| r.map_or_else(|| why(&reason(None)), why))
                .collect(),
        ),
    };
    let intent = Intent {
        id: 0,
        bucket: obj.bucket.clone(),
        keys: match obj.error_key == obj.key {
            true => vec![obj.key.clone()],
            false => vec![obj.key.clone(), obj.error_key.clone()],
        },
        encrypted: obj.encryption.is_some(),
        items: entries.into_iter().map(|(item, _)| item).collect(),
        kind,
    };
    match blocking(move || journal.intend(intent)).await {
        Ok(id) => Some(id),
        Err(e) => {
            ctx.shared
                .metrics
                .journal_failures
                .get_or_create(&Metrics::stream(&ctx.name))
                .inc();
            tracing::error!(key = %obj.key, error = %e, "cannot journal an object before its upload; uploading it anyway (after a crash its records may be written again)");
            None
        }
    }
}

/// The journaled object's records have settled: marks it, and lets the journal forget what the
/// spool's checkpoint is past.
pub(super) async fn done(ctx: &StreamContext, id: u64, rewritten: bool) {
    let Some(journal) = ctx.journal.clone() else {
        return;
    };
    if rewritten {
        ctx.shared
            .metrics
            .journal_rewritten_objects
            .get_or_create(&Metrics::stream(&ctx.name))
            .inc();
    }
    let low = ctx.spool.stats.checkpointed_low.load(Ordering::Relaxed);
    let marked = blocking(move || {
        journal.done(id)?;
        journal.retire_below(low, false)
    })
    .await;
    if let Err(e) = marked {
        tracing::warn!(error = %e, "cannot mark a delivered object in the journal");
    }
}

/// Runs journal file I/O on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())))
}
