//! Personal and card data (SPEC §6, PCI DSS 3.3/3.4, LGPD art. 18):
//!
//! - a PAN is never written in clear: at most the BIN (first six) and the last four;
//! - beneficiary personal data is sealed with AES-256-GCM under a key per data subject
//!   (the beneficiary id), kept in `subject_key`, apart from the events; erasing the key
//!   erases the data while the hash chain (which covers only ciphertext) stays valid;
//! - equality of payloads (idempotency) is tested with a keyed fingerprint (HMAC-SHA256):
//!   an unkeyed hash of a message holding a PAN can be brute-forced (the PAN space is
//!   small once BIN and last four are known).
//!
//! Pure: no I/O here; the ledger stores and fetches the keys.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use hmac::{Hmac, Mac};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// Shortest and longest PAN (ISO/IEC 7812).
pub const PAN_MIN_DIGITS: usize = 13;
pub const PAN_MAX_DIGITS: usize = 19;
/// Digits of a PAN that may be kept in clear at each end (PCI DSS 3.4.1: BIN + last four).
const PAN_KEEP_HEAD: usize = 6;
const PAN_KEEP_TAIL: usize = 4;
/// Characters of a non-card account kept in clear (the rest is masked).
const ACCOUNT_KEEP_TAIL: usize = 4;
pub const KEY_BYTES: usize = 32;
const NONCE_BYTES: usize = 12;

/// True if `digits` (ASCII digits only) passes the Luhn check.
fn luhn_ok(digits: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, d) in digits.iter().rev().enumerate() {
        let mut v = u32::from(d - b'0');
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    sum.is_multiple_of(10)
}

/// Byte ranges of `text` that look like a PAN: 13-19 digits, optionally separated by
/// single spaces or dashes, passing Luhn. Longer digit runs are not PANs (but we still
/// scan every 13-19 digit window of them, because a PAN glued to other digits is still
/// a PAN in clear).
pub fn find_pans(text: &str) -> Vec<std::ops::Range<usize>> {
    let bytes = text.as_bytes();
    let mut found: Vec<std::ops::Range<usize>> = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if !bytes[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        // Collect one run of digits with single separators: positions of its digits.
        let mut positions = Vec::new();
        let mut j = i;
        while j < bytes.len() {
            if bytes[j].is_ascii_digit() {
                positions.push(j);
                j += 1;
            } else if (bytes[j] == b' ' || bytes[j] == b'-')
                && j + 1 < bytes.len()
                && bytes[j + 1].is_ascii_digit()
                && !positions.is_empty()
            {
                j += 1;
            } else {
                break;
            }
        }
        let digits: Vec<u8> = positions.iter().map(|&p| bytes[p]).collect();
        let mut start = 0;
        while start + PAN_MIN_DIGITS <= digits.len() {
            let mut matched = None;
            for len in (PAN_MIN_DIGITS..=PAN_MAX_DIGITS.min(digits.len() - start)).rev() {
                if luhn_ok(&digits[start..start + len]) {
                    matched = Some(len);
                    break;
                }
            }
            match matched {
                Some(len) => {
                    found.push(positions[start]..positions[start + len - 1] + 1);
                    start += len;
                }
                None => start += 1,
            }
        }
        i = j.max(i + 1);
    }
    found
}

/// `411111******1111`: BIN and last four of a PAN given as its digits.
fn mask_pan_digits(digits: &[u8]) -> String {
    let n = digits.len();
    let mut out = String::with_capacity(n);
    for (i, d) in digits.iter().enumerate() {
        if i < PAN_KEEP_HEAD || i >= n - PAN_KEEP_TAIL {
            out.push(char::from(*d));
        } else {
            out.push('*');
        }
    }
    out
}

/// `text` with every PAN replaced by its masked form (BIN + last four).
pub fn mask_pans(text: &str) -> String {
    let ranges = find_pans(text);
    if ranges.is_empty() {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for r in ranges {
        out.push_str(&text[last..r.start]);
        let digits: Vec<u8> = text[r.clone()].bytes().filter(u8::is_ascii_digit).collect();
        out.push_str(&mask_pan_digits(&digits));
        last = r.end;
    }
    out.push_str(&text[last..]);
    out
}

/// Masks every string (keys and values) of a JSON value in place.
pub fn mask_pans_in_json(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::String(s) if !find_pans(s).is_empty() => *s = mask_pans(s),
        serde_json::Value::Array(items) => items.iter_mut().for_each(mask_pans_in_json),
        serde_json::Value::Object(map) => {
            let entries = std::mem::take(map);
            for (k, mut val) in entries {
                mask_pans_in_json(&mut val);
                map.insert(mask_pans(&k), val);
            }
        }
        // Numbers: a PAN sent as a JSON number is still a PAN.
        serde_json::Value::Number(n) => {
            let text = n.to_string();
            if !find_pans(&text).is_empty() {
                *v = serde_json::Value::String(mask_pans(&text));
            }
        }
        _ => {}
    }
}

/// What may be stored in clear of a `beneficiary.account`: a PAN keeps BIN + last four,
/// any other account keeps its last four characters.
pub fn mask_account(account: &str) -> String {
    let digits: Vec<u8> = account.bytes().filter(u8::is_ascii_digit).collect();
    let only_pan_chars = account
        .bytes()
        .all(|b| b.is_ascii_digit() || b == b' ' || b == b'-');
    if only_pan_chars
        && (PAN_MIN_DIGITS..=PAN_MAX_DIGITS).contains(&digits.len())
        && luhn_ok(&digits)
    {
        return mask_pan_digits(&digits);
    }
    let chars: Vec<char> = account.chars().collect();
    let keep = if chars.len() > ACCOUNT_KEEP_TAIL * 2 {
        ACCOUNT_KEEP_TAIL
    } else {
        0
    };
    let mut out: String = "*".repeat(chars.len() - keep);
    out.extend(&chars[chars.len() - keep..]);
    mask_pans(&out)
}

/// A data subject's key (AES-256-GCM).
#[derive(Clone)]
pub struct SubjectKey {
    pub key_id: uuid::Uuid,
    pub key: [u8; KEY_BYTES],
}

impl std::fmt::Debug for SubjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubjectKey")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl SubjectKey {
    pub fn generate() -> SubjectKey {
        let mut key = [0u8; KEY_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut key);
        SubjectKey {
            key_id: uuid::Uuid::new_v4(),
            key,
        }
    }

    pub fn from_bytes(key_id: uuid::Uuid, bytes: &[u8]) -> Option<SubjectKey> {
        Some(SubjectKey {
            key_id,
            key: bytes.try_into().ok()?,
        })
    }
}

/// Personal data sealed for one subject: what the events hold instead of the clear text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Sealed {
    pub subject: String,
    pub key_id: uuid::Uuid,
    /// Base64 of nonce (12 bytes) followed by ciphertext and tag.
    pub data: String,
}

#[derive(Debug, thiserror::Error)]
pub enum PrivacyError {
    #[error("sealed data is not valid base64 or too short")]
    Malformed,
    #[error(
        "sealed data does not authenticate with this subject's key (wrong key or altered data)"
    )]
    Authentication,
}

/// Seals `plaintext` for `subject`; `context` (the intent id) is bound as associated data,
/// so ciphertext cannot be moved to another intent.
pub fn seal(key: &SubjectKey, subject: &str, context: &str, plaintext: &[u8]) -> Sealed {
    use base64::Engine as _;
    let cipher = Aes256Gcm::new((&key.key).into());
    let mut nonce = [0u8; NONCE_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    // Encryption with a fresh random nonce and an in-memory buffer cannot fail.
    let ct = cipher
        .encrypt(
            &Nonce::from(nonce),
            Payload {
                msg: plaintext,
                aad: context.as_bytes(),
            },
        )
        .unwrap_or_default();
    let mut data = nonce.to_vec();
    data.extend_from_slice(&ct);
    Sealed {
        subject: subject.to_string(),
        key_id: key.key_id,
        data: base64::engine::general_purpose::STANDARD.encode(data),
    }
}

pub fn open(key: &SubjectKey, sealed: &Sealed, context: &str) -> Result<Vec<u8>, PrivacyError> {
    use base64::Engine as _;
    let data = base64::engine::general_purpose::STANDARD
        .decode(&sealed.data)
        .map_err(|_| PrivacyError::Malformed)?;
    if data.len() < NONCE_BYTES {
        return Err(PrivacyError::Malformed);
    }
    let (nonce, ct) = data.split_at(NONCE_BYTES);
    let nonce: [u8; NONCE_BYTES] = nonce.try_into().map_err(|_| PrivacyError::Malformed)?;
    Aes256Gcm::new((&key.key).into())
        .decrypt(
            &Nonce::from(nonce),
            Payload {
                msg: ct,
                aad: context.as_bytes(),
            },
        )
        .map_err(|_| PrivacyError::Authentication)
}

/// Keyed fingerprint (HMAC-SHA256) of `bytes`.
pub fn fingerprint(secret: &[u8], bytes: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret)
        .unwrap_or_else(|_| <Hmac<Sha256> as Mac>::new_from_slice(&[0u8; 32]).expect("fixed key"));
    mac.update(bytes);
    mac.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const VISA: &str = "4111111111111111";

    #[test]
    fn masks_pan_with_and_without_separators() {
        assert_eq!(mask_pans(VISA), "411111******1111");
        assert_eq!(
            mask_pans("card 4111-1111-1111-1111 ok"),
            "card 411111******1111 ok"
        );
        assert_eq!(
            mask_pans("card 4111 1111 1111 1111"),
            "card 411111******1111"
        );
        // No 13-19 digit window is Luhn-valid: left alone.
        assert_eq!(mask_pans("4111111111111113"), "4111111111111113");
        // A PAN glued to other digits is still found (windows of longer runs).
        assert!(!mask_pans("99378282246310005").contains("378282246310005"));
        // Too short to be a PAN.
        assert_eq!(mask_pans("123456789012"), "123456789012");
    }

    #[test]
    fn masks_pan_inside_json_numbers_keys_and_nested_values() {
        let mut v = serde_json::json!({"a": [{"b": "x4111111111111111y"}], "n": 4111111111111111u64, "4111111111111111": 1});
        mask_pans_in_json(&mut v);
        let text = v.to_string();
        assert!(!text.contains(VISA), "{text}");
        assert!(text.contains("411111******1111"));
    }

    #[test]
    fn mask_account_keeps_at_most_bin_and_last_four() {
        assert_eq!(mask_account(VISA), "411111******1111");
        assert_eq!(mask_account("0001-23456-7"), "********56-7");
        assert_eq!(mask_account("abc"), "***");
    }

    #[test]
    fn seal_roundtrip_and_binding() {
        let k = SubjectKey::generate();
        let s = seal(&k, "ben:1", "intent-1", b"secret");
        assert_eq!(open(&k, &s, "intent-1").unwrap(), b"secret");
        assert!(matches!(
            open(&k, &s, "intent-2"),
            Err(PrivacyError::Authentication)
        ));
        assert!(matches!(
            open(&SubjectKey::generate(), &s, "intent-1"),
            Err(PrivacyError::Authentication)
        ));
    }

    #[test]
    fn fingerprint_depends_on_key() {
        assert_ne!(fingerprint(b"k1", b"x"), fingerprint(b"k2", b"x"));
        assert_eq!(fingerprint(b"k1", b"x"), fingerprint(b"k1", b"x"));
    }

    /// A Luhn-valid PAN of `len` digits built from `body`.
    fn make_pan(body: &[u8]) -> String {
        let mut digits: Vec<u8> = body.iter().map(|d| b'0' + d % 10).collect();
        for check in 0..10u8 {
            digits.push(b'0' + check);
            if luhn_ok(&digits) {
                break;
            }
            digits.pop();
        }
        String::from_utf8(digits).unwrap()
    }

    proptest! {
        #[test]
        fn no_pan_survives_masking(body in proptest::collection::vec(0u8..10, 12..19), prefix in "[a-z :]{0,10}", suffix in "[a-z :]{0,10}") {
            let pan = make_pan(&body);
            prop_assert!(luhn_ok(pan.as_bytes()));
            let text = format!("{prefix}{pan}{suffix}");
            let masked = mask_pans(&text);
            prop_assert!(!masked.contains(&pan));
            prop_assert!(find_pans(&masked).is_empty());
        }
    }
}
