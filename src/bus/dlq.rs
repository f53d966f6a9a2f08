//! The dead-letter topic: a malformed message is republished with the reason in
//! headers, so an operator can fix and replay it. A message up to
//! [`DLQ_MAX_BODY_BYTES`] is republished byte for byte; a larger one (the reason it was
//! refused is often its size) keeps its first [`DLQ_MAX_BODY_BYTES`] with its size and
//! SHA-256 in headers, so the dead letter always fits well under the producer's limit
//! (1,000,000 bytes) and can never itself be refused for its size (SPEC §15).

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureProducer;

use super::{BusError, publish};

/// Header names on `spend.dlq` (stable API for operators' tooling).
pub const HEADER_ERROR_CODE: &str = "spendguard-error-code";
pub const HEADER_ERROR_MESSAGE: &str = "spendguard-error-message";
pub const HEADER_ERROR_FIELD: &str = "spendguard-error-field";
pub const HEADER_SOURCE_TOPIC: &str = "spendguard-source-topic";
pub const HEADER_SOURCE_PARTITION: &str = "spendguard-source-partition";
pub const HEADER_SOURCE_OFFSET: &str = "spendguard-source-offset";
pub const HEADER_INSTANCE: &str = "spendguard-instance";
/// Size in bytes and hex SHA-256 of the original message (always present).
pub const HEADER_ORIGINAL_BYTES: &str = "spendguard-original-bytes";
pub const HEADER_ORIGINAL_SHA256: &str = "spendguard-original-sha256";
/// `true` when the body is only the first [`DLQ_MAX_BODY_BYTES`] of the original.
pub const HEADER_TRUNCATED: &str = "spendguard-truncated";

/// Largest body of a dead letter: a sixteenth of the producer's default message limit,
/// so body plus headers stay far below it whatever the original was.
pub const DLQ_MAX_BODY_BYTES: usize = 64 * 1024;
/// Largest error message carried in a header.
pub const DLQ_MAX_MESSAGE_BYTES: usize = 2 * 1024;

/// What a dead letter carries of the original message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Body<'a> {
    pub bytes: &'a [u8],
    pub truncated: bool,
    pub original_bytes: usize,
    pub original_sha256: String,
}

impl<'a> Body<'a> {
    pub fn of(original: &'a [u8]) -> Body<'a> {
        use sha2::Digest;
        let keep = original.len().min(DLQ_MAX_BODY_BYTES);
        Body {
            bytes: &original[..keep],
            truncated: keep < original.len(),
            original_bytes: original.len(),
            original_sha256: hex::encode(sha2::Sha256::digest(original)),
        }
    }
}

/// Why a message is dead-lettered: each variant has a stable `code` (the dead letter's
/// `code` field and header, and the `spendguard_dlq_messages_total` label).
#[derive(Debug, Clone, PartialEq)]
pub enum DeadLetterReason {
    /// Not a valid intent (its `IntentError` code: `invalid_json`, `missing_field`, ...).
    InvalidIntent(crate::intent::IntentError),
    /// Same intentId, another payload: the ledger refused and audited it.
    IdempotencyConflict(String),
    /// A vote refused before the ledger (its refusal code: `bad_signature`, ...).
    VoteRefused { code: &'static str, detail: String },
    /// Not a valid settlement message (its parse code, SPEC §11); audited as
    /// `settlement_refused`.
    InvalidSettlement(crate::settlement::SettlementError),
    /// A settlement the ledger refused and audited, with its stable code
    /// (`unknown_intent`, `over_remainder`, `idempotency_conflict`, ...).
    SettlementRefused { code: String, detail: String },
    /// The ledger could not record the message after bounded retries (`internal_error`):
    /// its bytes are kept here so an operator can replay it once the cause is fixed.
    NotRecorded(String),
}

impl DeadLetterReason {
    pub fn code(&self) -> &str {
        match self {
            DeadLetterReason::InvalidIntent(e) | DeadLetterReason::InvalidSettlement(e) => e.code,
            DeadLetterReason::SettlementRefused { code, .. } => code,
            DeadLetterReason::IdempotencyConflict(_) => "idempotency_conflict",
            DeadLetterReason::VoteRefused { code, .. } => code,
            DeadLetterReason::NotRecorded(_) => "internal_error",
        }
    }

    pub fn message(&self) -> &str {
        match self {
            DeadLetterReason::InvalidIntent(e) | DeadLetterReason::InvalidSettlement(e) => {
                &e.message
            }
            DeadLetterReason::IdempotencyConflict(m)
            | DeadLetterReason::SettlementRefused { detail: m, .. }
            | DeadLetterReason::NotRecorded(m)
            | DeadLetterReason::VoteRefused { detail: m, .. } => m,
        }
    }

    /// The offending field, when one is known.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            DeadLetterReason::InvalidIntent(e) | DeadLetterReason::InvalidSettlement(e) => e.field,
            DeadLetterReason::IdempotencyConflict(_) => Some("intentId"),
            DeadLetterReason::SettlementRefused { code, .. } if code == "idempotency_conflict" => {
                Some("settlementId")
            }
            DeadLetterReason::SettlementRefused { .. } => None,
            DeadLetterReason::VoteRefused { .. } | DeadLetterReason::NotRecorded(_) => None,
        }
    }
}

/// Why and where from a message is dead-lettered.
#[derive(Debug, Clone)]
pub struct DeadLetter<'a> {
    pub code: &'a str,
    pub message: &'a str,
    pub field: Option<&'a str>,
    pub source_topic: &'a str,
    pub source_partition: i32,
    pub source_offset: i64,
    pub instance: &'a str,
}

impl DeadLetter<'_> {
    pub fn headers(&self, body: &Body<'_>) -> OwnedHeaders {
        let partition = self.source_partition.to_string();
        let offset = self.source_offset.to_string();
        let message = crate::ledger::truncate_utf8(self.message, DLQ_MAX_MESSAGE_BYTES);
        let original_bytes = body.original_bytes.to_string();
        let truncated = if body.truncated { "true" } else { "false" };
        let mut h = OwnedHeaders::new()
            .insert(Header {
                key: HEADER_ERROR_CODE,
                value: Some(self.code),
            })
            .insert(Header {
                key: HEADER_ERROR_MESSAGE,
                value: Some(message.as_str()),
            })
            .insert(Header {
                key: HEADER_ORIGINAL_BYTES,
                value: Some(&original_bytes),
            })
            .insert(Header {
                key: HEADER_ORIGINAL_SHA256,
                value: Some(&body.original_sha256),
            })
            .insert(Header {
                key: HEADER_TRUNCATED,
                value: Some(truncated),
            })
            .insert(Header {
                key: HEADER_SOURCE_TOPIC,
                value: Some(self.source_topic),
            })
            .insert(Header {
                key: HEADER_SOURCE_PARTITION,
                value: Some(&partition),
            })
            .insert(Header {
                key: HEADER_SOURCE_OFFSET,
                value: Some(&offset),
            })
            .insert(Header {
                key: HEADER_INSTANCE,
                value: Some(self.instance),
            });
        if let Some(field) = self.field {
            h = h.insert(Header {
                key: HEADER_ERROR_FIELD,
                value: Some(field),
            });
        }
        h
    }
}

/// Publishes `original` (whole, or its first [`DLQ_MAX_BODY_BYTES`]) to the dead-letter
/// topic, keyed like the original.
pub async fn send(
    producer: &FutureProducer,
    dlq_topic: &str,
    key: Option<&[u8]>,
    original: &[u8],
    letter: &DeadLetter<'_>,
) -> Result<(), BusError> {
    let body = Body::of(original);
    publish(
        producer,
        dlq_topic,
        key.unwrap_or_default(),
        body.bytes,
        Some(letter.headers(&body)),
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::Headers;

    #[test]
    fn a_dead_letter_stays_far_below_the_producer_limit_whatever_the_original() {
        let huge = vec![b'x'; 5 * 1024 * 1024];
        let body = Body::of(&huge);
        assert!(body.truncated);
        assert_eq!(body.bytes.len(), DLQ_MAX_BODY_BYTES);
        assert_eq!(body.original_bytes, huge.len());
        let long_message = "é".repeat(100_000);
        let letter = DeadLetter {
            code: "too_large",
            message: &long_message,
            field: None,
            source_topic: "spend.intents",
            source_partition: 3,
            source_offset: 42,
            instance: "i",
        };
        let headers = letter.headers(&body);
        let header_bytes: usize = headers
            .iter()
            .map(|h| h.key.len() + h.value.map_or(0, <[u8]>::len))
            .sum();
        // Producer limit 1,000,000 bytes (message.max.bytes default).
        assert!(body.bytes.len() + header_bytes < 100_000, "{header_bytes}");
        let sha = headers
            .iter()
            .find(|h| h.key == HEADER_ORIGINAL_SHA256)
            .and_then(|h| h.value)
            .unwrap();
        assert_eq!(sha.len(), 64);
    }

    #[test]
    fn a_small_original_is_kept_byte_for_byte() {
        let raw = br#"{"intentId": "x"}"#;
        let body = Body::of(raw);
        assert!(!body.truncated);
        assert_eq!(body.bytes, raw);
        assert_eq!(body.original_bytes, raw.len());
    }
}
