//! The dead-letter topic: a malformed message is republished byte for byte with the
//! reason in headers, so nothing is lost and an operator can fix and replay it.

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
    pub fn headers(&self) -> OwnedHeaders {
        let partition = self.source_partition.to_string();
        let offset = self.source_offset.to_string();
        let mut h = OwnedHeaders::new()
            .insert(Header {
                key: HEADER_ERROR_CODE,
                value: Some(self.code),
            })
            .insert(Header {
                key: HEADER_ERROR_MESSAGE,
                value: Some(self.message),
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

/// Publishes `original` unchanged to the dead-letter topic, keyed like the original.
pub async fn send(
    producer: &FutureProducer,
    dlq_topic: &str,
    key: Option<&[u8]>,
    original: &[u8],
    letter: &DeadLetter<'_>,
) -> Result<(), BusError> {
    publish(
        producer,
        dlq_topic,
        key.unwrap_or_default(),
        original,
        Some(letter.headers()),
    )
    .await?;
    Ok(())
}
