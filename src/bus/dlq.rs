//! The dead-letter topic: a malformed message is republished with the reason in
//! headers, so an operator can fix and replay it. The body is the original with every
//! card number masked (SPEC §14; masking comes before any cut); a message up to
//! [`DLQ_MAX_BODY_BYTES`] is otherwise republished byte for byte; a larger one (the
//! reason it was refused is often its size) keeps its first [`DLQ_MAX_BODY_BYTES`] with
//! its size in headers, so the dead letter always fits well under the producer's limit
//! (1,000,000 bytes) and can never itself be refused for its size (SPEC §15).
//!
//! The original is identified by its keyed fingerprint (the `rawFingerprint` of its
//! audit event). Its plain SHA-256 is given only when nothing was masked: next to the
//! masked body, the SHA-256 of a message whose only unknowns are the six hidden digits
//! of a card number gives that number back in at most a million hashes (PCI DSS 3.5.1.1
//! asks for keyed hashes for this reason).

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
/// Size in bytes of the original message (always present).
pub const HEADER_ORIGINAL_BYTES: &str = "spendguard-original-bytes";
/// Hex SHA-256 of the original, only when no card number was masked in it.
pub const HEADER_ORIGINAL_SHA256: &str = "spendguard-original-sha256";
/// Hex HMAC-SHA256 of the original under the ledger's fingerprint key, when the sender
/// has the ledger (`serve`): equal to the audit event's `rawFingerprint`.
pub const HEADER_ORIGINAL_FINGERPRINT: &str = "spendguard-original-fingerprint";
/// `true` when card numbers were masked in the body.
pub const HEADER_PANS_MASKED: &str = "spendguard-pans-masked";
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
    pub bytes: std::borrow::Cow<'a, [u8]>,
    pub truncated: bool,
    pub original_bytes: usize,
    /// `None` when card numbers were masked (see the module documentation).
    pub original_sha256: Option<String>,
    pub original_fingerprint: Option<String>,
    pub pans_masked: bool,
}

impl<'a> Body<'a> {
    /// `fingerprint`: the keyed fingerprint of `original`, when the caller can make it.
    pub fn of(original: &'a [u8], fingerprint: Option<[u8; 32]>) -> Body<'a> {
        use sha2::Digest;
        use std::borrow::Cow;
        let masked = crate::privacy::mask_json_bytes(original);
        let pans_masked = matches!(masked, Cow::Owned(_));
        let keep = masked.len().min(DLQ_MAX_BODY_BYTES);
        let truncated = keep < masked.len();
        let bytes = match masked {
            Cow::Borrowed(b) => Cow::Borrowed(&b[..keep]),
            Cow::Owned(mut v) => {
                v.truncate(keep);
                Cow::Owned(v)
            }
        };
        Body {
            bytes,
            truncated,
            original_bytes: original.len(),
            original_sha256: (!pans_masked).then(|| hex::encode(sha2::Sha256::digest(original))),
            original_fingerprint: fingerprint.map(hex::encode),
            pans_masked,
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
        let message = crate::ledger::truncate_utf8(
            &crate::privacy::mask_pans(self.message),
            DLQ_MAX_MESSAGE_BYTES,
        );
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
                key: HEADER_PANS_MASKED,
                value: Some(if body.pans_masked { "true" } else { "false" }),
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
        if let Some(sha) = &body.original_sha256 {
            h = h.insert(Header {
                key: HEADER_ORIGINAL_SHA256,
                value: Some(sha.as_str()),
            });
        }
        if let Some(fp) = &body.original_fingerprint {
            h = h.insert(Header {
                key: HEADER_ORIGINAL_FINGERPRINT,
                value: Some(fp.as_str()),
            });
        }
        if let Some(field) = self.field {
            h = h.insert(Header {
                key: HEADER_ERROR_FIELD,
                value: Some(field),
            });
        }
        h
    }
}

/// Publishes `original` masked (whole, or its first [`DLQ_MAX_BODY_BYTES`]) to the
/// dead-letter topic, keyed like the original (masked too: the key is the agentId).
pub async fn send(
    producer: &FutureProducer,
    dlq_topic: &str,
    key: Option<&[u8]>,
    original: &[u8],
    letter: &DeadLetter<'_>,
    fingerprint: Option<[u8; 32]>,
) -> Result<(), BusError> {
    let body = Body::of(original, fingerprint);
    let key = crate::privacy::mask_bytes(key.unwrap_or_default());
    publish(
        producer,
        dlq_topic,
        &key,
        &body.bytes,
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
        let body = Body::of(&huge, None);
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
        let body = Body::of(raw, None);
        assert!(!body.truncated);
        assert_eq!(body.bytes.as_ref(), raw);
        assert_eq!(body.original_bytes, raw.len());
        assert!(body.original_sha256.is_some());
    }

    #[test]
    fn card_numbers_are_masked_before_the_cut_and_the_plain_hash_withheld() {
        // A card number straddling the 64 KiB cut: masked first, so no 13+ digits of
        // it survive on either side of the cut.
        let mut raw = vec![b'x'; DLQ_MAX_BODY_BYTES - 8];
        raw.extend_from_slice(b"4111.1111.1111.1111 tail");
        let body = Body::of(&raw, Some([7; 32]));
        assert!(body.truncated && body.pans_masked);
        let kept = String::from_utf8_lossy(&body.bytes);
        assert!(kept.ends_with("\"411111*"), "{}", &kept[kept.len() - 12..]);
        assert!(crate::privacy::find_pans(&kept).is_empty());
        assert_eq!(body.original_sha256, None);
        assert_eq!(body.original_fingerprint, Some(hex::encode([7; 32])));
        let letter = DeadLetter {
            code: "invalid_json",
            message: "near 4111 1111 1111 1111",
            field: None,
            source_topic: "spend.intents",
            source_partition: 0,
            source_offset: 1,
            instance: "i",
        };
        let headers = letter.headers(&body);
        let get = |name: &str| {
            headers
                .iter()
                .find(|h| h.key == name)
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        assert_eq!(
            get(HEADER_ERROR_MESSAGE).as_deref(),
            Some("near 411111******1111")
        );
        assert_eq!(get(HEADER_PANS_MASKED).as_deref(), Some("true"));
        assert_eq!(get(HEADER_ORIGINAL_SHA256), None);
    }
}
