//! Failures that retrying alone cannot fix: a client that cannot be built, credentials S3
//! refuses, a bucket that does not exist, a KMS key that is missing, disabled or not ours to
//! use. Records still wait in the spool (an operator may fix the cause, and delivery goes on by
//! itself); what changes is that the cause is named: logged once per cause, counted in
//! `/metrics` by `reason`, shown by `hosepipe status` and in DescribeDeliveryStream's
//! `FailureDescription`.

use std::sync::Mutex;

/// Why delivery cannot go on until someone acts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cause {
    /// The HTTP client cannot be built (a CA bundle its TLS stack refuses, a bad endpoint).
    Client,
    /// S3 answered 403 AccessDenied: the credentials may not write there.
    AccessDenied,
    /// S3 does not know the access key, or the signature does not match the secret.
    Credentials,
    /// S3 refused the request's time: this machine's clock is more than 15 minutes off.
    ClockSkewed,
    /// S3 answered NoSuchBucket.
    NoSuchBucket,
    /// The key service does not know the stream's key.
    KmsKeyNotFound,
    /// The key service refuses this caller the stream's key.
    KmsAccessDenied,
    /// The stream's key is disabled (or pending deletion).
    KmsKeyDisabled,
}

impl Cause {
    pub const ALL: [Cause; 8] = [
        Cause::Client,
        Cause::AccessDenied,
        Cause::Credentials,
        Cause::ClockSkewed,
        Cause::NoSuchBucket,
        Cause::KmsKeyNotFound,
        Cause::KmsAccessDenied,
        Cause::KmsKeyDisabled,
    ];

    /// The `reason` label of `/metrics` and the name in `hosepipe status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Client => "client_unusable",
            Cause::AccessDenied => "access_denied",
            Cause::Credentials => "invalid_credentials",
            Cause::ClockSkewed => "clock_skewed",
            Cause::NoSuchBucket => "no_such_bucket",
            Cause::KmsKeyNotFound => "kms_key_not_found",
            Cause::KmsAccessDenied => "kms_access_denied",
            Cause::KmsKeyDisabled => "kms_key_disabled",
        }
    }

    /// `FailureDescription.Type`, from Firehose's list (its delivery failures without a type
    /// of their own are `UNKNOWN_ERROR`, named in `Details`).
    pub fn firehose_type(self) -> &'static str {
        match self {
            Cause::KmsKeyNotFound => "KMS_KEY_NOT_FOUND",
            Cause::KmsAccessDenied => "KMS_ACCESS_DENIED",
            Cause::KmsKeyDisabled => "DISABLED_KMS_KEY",
            _ => "UNKNOWN_ERROR",
        }
    }

    /// What an operator should do, in a few words.
    pub fn advice(self) -> &'static str {
        match self {
            Cause::Client => "fix the client's settings (ca_bundle / AWS_CA_BUNDLE, the endpoint)",
            Cause::AccessDenied => "grant the daemon's credentials s3:PutObject on the bucket",
            Cause::Credentials => "fix the daemon's AWS credentials",
            Cause::ClockSkewed => "set this machine's clock right (NTP)",
            Cause::NoSuchBucket => "create the bucket or point the stream at one that exists",
            Cause::KmsKeyNotFound => "create the key or point the stream at one that exists",
            Cause::KmsAccessDenied => "grant the daemon's credentials the key's use",
            Cause::KmsKeyDisabled => "enable the key",
        }
    }

    /// The cause of a failed attempt, from its reason (the error text of the sink, object
    /// store or key service); `None` for failures that may heal on their own (a server down, a
    /// timeout, 5xx, SlowDown).
    pub fn of(reason: &str) -> Option<Cause> {
        let has = |s: &str| reason.contains(s);
        // Order matters: KMS failures come first (their text may hold S3's words), and S3's
        // specific codes before the 403 they all share.
        Some(if has("KMSKeyNotFound") {
            Cause::KmsKeyNotFound
        } else if has("KMSKeyAccessDenied") {
            Cause::KmsAccessDenied
        } else if has("KMSKeyDisabled") || has("KMSKeyInvalidState") {
            Cause::KmsKeyDisabled
        } else if has("builder error") || has("cannot open the store") {
            Cause::Client
        } else if has("NoSuchBucket") {
            Cause::NoSuchBucket
        } else if has("RequestTimeTooSkewed") {
            Cause::ClockSkewed
        } else if has("CredentialsUnavailable")
            || has("InvalidAccessKeyId")
            || has("SignatureDoesNotMatch")
            || has("401 Unauthorized")
        {
            Cause::Credentials
        } else if has("AccessDenied") || has("403 Forbidden") {
            Cause::AccessDenied
        } else {
            return None;
        })
    }
}

/// A stream's delivery, blocked by a cause.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocked {
    pub cause: Cause,
    /// The last failure's text.
    pub message: String,
    /// When this cause was first seen (epoch ms).
    pub since_ms: i64,
    /// Failed attempts since then.
    pub attempts: u64,
}

impl Blocked {
    /// `FailureDescription` of DescribeDeliveryStream: `(Type, Details)`.
    pub fn failure_description(&self) -> (&'static str, String) {
        (
            self.cause.firehose_type(),
            format!(
                "{}: delivery is blocked and records wait in the spool; {}. Last error: {}",
                self.cause.as_str(),
                self.cause.advice(),
                self.message
            ),
        )
    }
}

/// What a failed or successful attempt changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// A cause not seen just before: log it (once).
    Started(Cause),
    /// The same cause again: count it, quietly.
    Again(Cause),
    /// A failure that may heal by itself.
    Transient,
    /// The first success after a blocked spell.
    Cleared(Cause),
    Nothing,
}

/// A stream's blocked state, updated by every delivery attempt.
#[derive(Debug, Default)]
pub struct BlockedState(Mutex<Option<Blocked>>);

impl BlockedState {
    pub fn get(&self) -> Option<Blocked> {
        self.0.lock().expect("blocked lock").clone()
    }

    /// A failed attempt with `reason`, at `now_ms`.
    pub fn failed(&self, reason: &str, now_ms: i64) -> Change {
        let mut state = self.0.lock().expect("blocked lock");
        let Some(cause) = Cause::of(reason) else {
            return Change::Transient;
        };
        match state.as_mut() {
            Some(b) if b.cause == cause => {
                b.attempts += 1;
                b.message = reason.to_string();
                Change::Again(cause)
            }
            _ => {
                *state = Some(Blocked {
                    cause,
                    message: reason.to_string(),
                    since_ms: now_ms,
                    attempts: 1,
                });
                Change::Started(cause)
            }
        }
    }

    /// A successful attempt.
    pub fn succeeded(&self) -> Change {
        match self.0.lock().expect("blocked lock").take() {
            Some(b) => Change::Cleared(b.cause),
            None => Change::Nothing,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_are_read_from_the_errors_the_clients_give() {
        let cases = [
            (
                "writing \"k\" failed: The operation lacked the necessary privileges to complete for path k: Error performing PUT http://127.0.0.1:1/b/k in 2ms - Server returned non-2xx status code: 403 Forbidden: <?xml version=\"1.0\"?><Error><Code>AccessDenied</Code></Error>",
                Some(Cause::AccessDenied),
            ),
            (
                "Server returned non-2xx status code: 404 Not Found: <Error><Code>NoSuchBucket</Code></Error>",
                Some(Cause::NoSuchBucket),
            ),
            (
                "403 Forbidden: <Error><Code>InvalidAccessKeyId</Code></Error>",
                Some(Cause::Credentials),
            ),
            (
                "403 Forbidden: <Error><Code>RequestTimeTooSkewed</Code></Error>",
                Some(Cause::ClockSkewed),
            ),
            (
                "cannot get a data key: KMSKeyNotFound: Invalid keyId alias/x",
                Some(Cause::KmsKeyNotFound),
            ),
            (
                "cannot get a data key: KMSKeyDisabled: key is disabled",
                Some(Cause::KmsKeyDisabled),
            ),
            (
                "cannot open the store for bucket \"b\": Generic HTTP client error: builder error",
                Some(Cause::Client),
            ),
            (
                "Server returned non-2xx status code: 503 Service Unavailable: SlowDown",
                None,
            ),
            ("error sending request: connection refused", None),
            (
                "cannot get a data key: the key service is unavailable: timeout",
                None,
            ),
        ];
        for (reason, cause) in cases {
            assert_eq!(Cause::of(reason), cause, "{reason}");
        }
    }

    #[test]
    fn a_cause_is_started_once_counted_after_and_cleared_by_a_success() {
        let state = BlockedState::default();
        assert_eq!(state.failed("connection refused", 1), Change::Transient);
        assert_eq!(state.get(), None);
        let denied = "403 Forbidden: <Code>AccessDenied</Code>";
        assert_eq!(
            state.failed(denied, 10),
            Change::Started(Cause::AccessDenied)
        );
        assert_eq!(state.failed(denied, 20), Change::Again(Cause::AccessDenied));
        let b = state.get().expect("blocked");
        assert_eq!((b.since_ms, b.attempts), (10, 2));
        assert_eq!(b.failure_description().0, "UNKNOWN_ERROR");
        // Another cause replaces it and is logged anew.
        assert_eq!(
            state.failed("<Code>NoSuchBucket</Code>", 30),
            Change::Started(Cause::NoSuchBucket)
        );
        assert_eq!(state.succeeded(), Change::Cleared(Cause::NoSuchBucket));
        assert_eq!(state.succeeded(), Change::Nothing);
        assert_eq!(state.get(), None);
    }
}
