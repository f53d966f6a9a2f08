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

/// True if `digits` (digit values 0-9) passes the Luhn check.
fn luhn_ok(digits: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, d) in digits.iter().rev().enumerate() {
        let mut v = u32::from(*d);
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

/// Most separator characters accepted between two digits of one card number
/// (`4111 - 1111`): enough for any grouping people type, few enough that unrelated
/// numbers a sentence apart are not read as one.
const MAX_SEPARATORS: usize = 3;

/// First code point of the Unicode decimal-digit blocks read as digits besides ASCII
/// (each block holds 0-9 in order): Arabic-Indic, extended Arabic-Indic, Devanagari,
/// Bengali, Thai, full-width, mathematical bold/double-struck/sans/sans-bold/monospace.
const DIGIT_ZEROS: [u32; 11] = [
    0x0660, 0x06F0, 0x0966, 0x09E6, 0x0E50, 0xFF10, 0x1D7CE, 0x1D7D8, 0x1D7E2, 0x1D7EC, 0x1D7F6,
];

fn char_digit(c: char) -> Option<u8> {
    let c = u32::from(c);
    if (0x30..=0x39).contains(&c) {
        return u8::try_from(c - 0x30).ok();
    }
    DIGIT_ZEROS
        .iter()
        .find(|&&z| (z..z + 10).contains(&c))
        .and_then(|z| u8::try_from(c - z).ok())
}

/// Separators people and systems put inside card numbers: whitespace, dashes, dots,
/// slashes, underscores, and their Unicode / full-width look-alikes. Not `:` (times),
/// `,` `"` `{` (JSON structure) nor `*` (the masked form).
fn char_separator(c: char) -> bool {
    matches!(
        c,
        ' ' | '\t'
            | '\n'
            | '\r'
            | '\u{0B}'
            | '\u{0C}'
            | '-'
            | '.'
            | '_'
            | '/'
            | '\\'
            | '\u{A0}'
            | '\u{B7}'
            | '\u{2000}'..='\u{200B}'
            | '\u{2010}'..='\u{2015}'
            | '\u{2022}'
            | '\u{202F}'
            | '\u{205F}'
            | '\u{2212}'
            | '\u{3000}'
            | '\u{30FB}'
            | '\u{FE58}'
            | '\u{FE63}'
            | '\u{FF0D}'
            | '\u{FF0E}'
            | '\u{FF0F}'
            | '\u{FF3C}'
            | '\u{FF3F}'
            | '\u{FF65}'
    )
}

/// What starts at one byte offset: a digit, a separator or anything else, and its
/// length in bytes. JSON escapes count as what they decode to (`\u0034` is a 4,
/// `\t` a separator), so a card number hidden in escapes is found in raw JSON.
#[derive(Clone, Copy)]
enum Token {
    Digit(u8, usize),
    Separator(usize),
    Other(usize),
}

fn token_at(b: &[u8], i: usize) -> Token {
    let c = b[i];
    if c.is_ascii_digit() {
        return Token::Digit(c - b'0', 1);
    }
    if c == b'\\' {
        match b.get(i + 1) {
            Some(b'u') => {
                if let Some(ch) = b
                    .get(i + 2..i + 6)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u32::from_str_radix(h, 16).ok())
                    .and_then(char::from_u32)
                {
                    if let Some(d) = char_digit(ch) {
                        return Token::Digit(d, 6);
                    }
                    if char_separator(ch) {
                        return Token::Separator(6);
                    }
                }
                return Token::Separator(1);
            }
            Some(b't' | b'n' | b'r' | b'f' | b'b' | b'/' | b'\\') => return Token::Separator(2),
            _ => return Token::Separator(1),
        }
    }
    if c < 0x80 {
        return if char_separator(char::from(c)) {
            Token::Separator(1)
        } else {
            Token::Other(1)
        };
    }
    let len = match c {
        0xC0..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF7 => 4,
        _ => return Token::Other(1),
    };
    let Some(ch) = b
        .get(i..i + len)
        .and_then(|s| std::str::from_utf8(s).ok())
        .and_then(|s| s.chars().next())
    else {
        return Token::Other(1);
    };
    if let Some(d) = char_digit(ch) {
        Token::Digit(d, len)
    } else if char_separator(ch) {
        Token::Separator(len)
    } else {
        Token::Other(len)
    }
}

/// Length of a hexadecimal blob (a hash, a fingerprint, a key: 32 or more hex
/// characters with at least one letter) or of a UUID starting at `i`, when one does:
/// their digits are not card numbers, and masking them would break what they identify.
fn exempt_at(b: &[u8], i: usize) -> Option<usize> {
    if !b[i].is_ascii_hexdigit() || (i > 0 && b[i - 1].is_ascii_hexdigit()) {
        return None;
    }
    let hex_end = b[i..]
        .iter()
        .position(|c| !c.is_ascii_hexdigit())
        .map_or(b.len(), |p| i + p);
    if hex_end - i >= 32 && b[i..hex_end].iter().any(u8::is_ascii_alphabetic) {
        return Some(hex_end - i);
    }
    let uuid = b.get(i..i + 36)?;
    let shaped = uuid.iter().enumerate().all(|(k, c)| match k {
        8 | 13 | 18 | 23 => *c == b'-',
        _ => c.is_ascii_hexdigit(),
    });
    let bounded = b.get(i + 36).is_none_or(|c| !c.is_ascii_hexdigit());
    (shaped && bounded).then_some(36)
}

/// One card number found: its byte range and its digit values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PanMatch {
    pub range: std::ops::Range<usize>,
    digits: Vec<u8>,
}

/// Every card number in `bytes`: a run of 13-19 digits, any of them separated by up to
/// [`MAX_SEPARATORS`] separators, passing Luhn and not starting with 0 (no card number
/// does; all-zero runs pass Luhn). A longer run is searched window by window (a card
/// number glued to other digits is still one). Not matched: a decimal number with a
/// single `.` (an amount), hexadecimal blobs and UUIDs ([`exempt_at`]).
pub fn find_pans_in(bytes: &[u8]) -> Vec<PanMatch> {
    let mut found = Vec::new();
    // (value, start, end) of the digits of the current run.
    let mut run: Vec<(u8, usize, usize)> = Vec::new();
    // Indexes in `run` after which a separator gap starts, and whether it is a lone '.'.
    let mut gaps: Vec<(usize, bool)> = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        // Most bytes of a message start nothing: skip them without the token machinery
        // (a separator matters only after a digit, and is read there).
        let c = bytes[i];
        if c < 0x80 && c != b'\\' && !c.is_ascii_hexdigit() {
            i += 1;
            continue;
        }
        if let Some(skip) = exempt_at(bytes, i) {
            i += skip;
            continue;
        }
        let (first, len) = match token_at(bytes, i) {
            Token::Digit(d, l) => (d, l),
            Token::Separator(l) | Token::Other(l) => {
                i += l;
                continue;
            }
        };
        run.clear();
        gaps.clear();
        run.push((first, i, i + len));
        let mut j = i + len;
        loop {
            let mut k = j;
            let mut seps = 0;
            let mut gap_is_dot = true;
            while k < bytes.len() && seps < MAX_SEPARATORS {
                match token_at(bytes, k) {
                    Token::Separator(l) => {
                        gap_is_dot &= bytes[k] == b'.' && l == 1;
                        seps += 1;
                        k += l;
                    }
                    _ => break,
                }
            }
            if k >= bytes.len() || (seps > 0 && exempt_at(bytes, k).is_some()) {
                break;
            }
            match token_at(bytes, k) {
                Token::Digit(d, l) => {
                    if seps > 0 {
                        gaps.push((run.len(), gap_is_dot && seps == 1));
                    }
                    run.push((d, k, k + l));
                    j = k + l;
                }
                _ => break,
            }
        }
        // `123.45` is a decimal number: its two sides are searched apart.
        if let [(at, true)] = gaps.as_slice() {
            let at = *at;
            scan_run(&run[..at], &mut found);
            scan_run(&run[at..], &mut found);
        } else {
            scan_run(&run, &mut found);
        }
        i = j;
    }
    found
}

fn scan_run(run: &[(u8, usize, usize)], found: &mut Vec<PanMatch>) {
    if run.len() < PAN_MIN_DIGITS {
        return;
    }
    let values: Vec<u8> = run.iter().map(|d| d.0).collect();
    let mut start = 0;
    while start + PAN_MIN_DIGITS <= values.len() {
        if values[start] == 0 {
            start += 1;
            continue;
        }
        let longest = PAN_MAX_DIGITS.min(values.len() - start);
        match (PAN_MIN_DIGITS..=longest)
            .rev()
            .find(|len| luhn_ok(&values[start..start + len]))
        {
            Some(len) => {
                found.push(PanMatch {
                    range: run[start].1..run[start + len - 1].2,
                    digits: values[start..start + len].to_vec(),
                });
                start += len;
            }
            None => start += 1,
        }
    }
}

/// Byte ranges of `text` that hold a card number (see [`find_pans_in`]).
pub fn find_pans(text: &str) -> Vec<std::ops::Range<usize>> {
    find_pans_in(text.as_bytes())
        .into_iter()
        .map(|m| m.range)
        .collect()
}

/// `411111******1111`: BIN and last four of a PAN given as its digit values.
fn mask_pan_digits(digits: &[u8]) -> String {
    let n = digits.len();
    let mut out = String::with_capacity(n);
    for (i, d) in digits.iter().enumerate() {
        if i < PAN_KEEP_HEAD || i >= n - PAN_KEEP_TAIL {
            out.push(char::from(b'0' + d));
        } else {
            out.push('*');
        }
    }
    out
}

/// Replaces each match by its masked form. With `json`, a match outside any JSON string
/// (a card number sent as a bare JSON number) is written as a string, so JSON stays
/// JSON: its masked form is not a number.
fn mask_once(bytes: &[u8], found: &[PanMatch], json: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + 2 * found.len());
    let mut last = 0;
    let mut in_string = false;
    let mut escaped = false;
    let mut scanned = 0;
    for m in found {
        for &c in &bytes[scanned..m.range.start] {
            if escaped {
                escaped = false;
            } else if c == b'\\' {
                escaped = in_string;
            } else if c == b'"' {
                in_string = !in_string;
            }
        }
        scanned = m.range.end;
        out.extend_from_slice(&bytes[last..m.range.start]);
        let masked = mask_pan_digits(&m.digits);
        if in_string || !json {
            out.extend_from_slice(masked.as_bytes());
        } else {
            out.push(b'"');
            out.extend_from_slice(masked.as_bytes());
            out.push(b'"');
        }
        last = m.range.end;
    }
    out.extend_from_slice(&bytes[last..]);
    out
}

/// `bytes` with every card number replaced by its BIN and last four (separators
/// dropped, escapes and non-ASCII digits written as ASCII). Borrowed when there is none,
/// which is the common case and costs one scan. Idempotent: masking repeats until
/// nothing is found (the kept digits next to other digits can form a new run).
pub fn mask_bytes(bytes: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    mask_with(bytes, false)
}

/// [`mask_bytes`] for JSON text (input messages, stored events): a card number sent as
/// a bare number becomes a string holding its masked form, so the JSON stays valid.
pub fn mask_json_bytes(bytes: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    mask_with(bytes, true)
}

fn mask_with(bytes: &[u8], json: bool) -> std::borrow::Cow<'_, [u8]> {
    let found = find_pans_in(bytes);
    if found.is_empty() {
        return std::borrow::Cow::Borrowed(bytes);
    }
    let mut out = mask_once(bytes, &found, json);
    loop {
        let again = find_pans_in(&out);
        if again.is_empty() {
            return std::borrow::Cow::Owned(out);
        }
        out = mask_once(&out, &again, json);
    }
}

/// `text` with every PAN replaced by its masked form (BIN + last four).
pub fn mask_pans(text: &str) -> String {
    match mask_bytes(text.as_bytes()) {
        std::borrow::Cow::Borrowed(_) => text.to_string(),
        // Masking replaces whole characters by ASCII: the result is UTF-8 again.
        std::borrow::Cow::Owned(v) => String::from_utf8(v)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
    }
}

/// `text` masked in place, without allocating when there is nothing to mask.
pub fn mask_in_place(text: &mut String) {
    if !find_pans_in(text.as_bytes()).is_empty() {
        *text = mask_pans(text);
    }
}

/// JSON text masked in place ([`mask_json_bytes`]), without allocating when clean.
pub fn mask_json_in_place(text: &mut String) {
    if let std::borrow::Cow::Owned(v) = mask_json_bytes(text.as_bytes()) {
        *text = String::from_utf8(v)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
    }
}

/// Masks every string (keys and values) of a JSON value in place.
pub fn mask_pans_in_json(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::String(s) => mask_in_place(s),
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
    let digits: Vec<u8> = account
        .bytes()
        .filter(u8::is_ascii_digit)
        .map(|d| d - b'0')
        .collect();
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

    /// A Luhn-valid PAN built from `body` (digit values) plus its check digit, and
    /// not starting with 0.
    fn make_pan(body: &[u8]) -> String {
        let mut digits: Vec<u8> = body.iter().map(|d| d % 10).collect();
        if digits.first() == Some(&0) {
            digits[0] = 4;
        }
        for check in 0..10u8 {
            digits.push(check);
            if luhn_ok(&digits) {
                break;
            }
            digits.pop();
        }
        digits.iter().map(|d| char::from(b'0' + d)).collect()
    }

    /// `pan` written with `seps[k % seps.len()]` after every `group` digits.
    fn spell(pan: &str, seps: &[String], group: usize) -> String {
        let mut out = String::new();
        for (k, c) in pan.chars().enumerate() {
            if k > 0 && k % group == 0 {
                out.push_str(&seps[(k / group) % seps.len()]);
            }
            out.push(c);
        }
        out
    }

    #[test]
    fn every_separator_and_digit_form_is_masked() {
        for text in [
            "4111.1111.1111.1111",
            "4111/1111/1111/1111",
            "4111_1111_1111_1111",
            "4111 - 1111 - 1111 - 1111",
            "4111--1111..1111//1111",
            "4111\t1111\n1111\r1111",
            "4111\u{A0}1111\u{2013}1111\u{3000}1111",
            "\u{FF14}\u{FF11}\u{FF11}\u{FF11}\u{FF11}\u{FF11}\u{FF11}\u{FF11}\u{FF11}\u{FF11}\u{FF11}\u{FF11}\u{FF11}\u{FF11}\u{FF11}\u{FF11}",
            r"\u0034\u0031\u0031\u00311111\u0031111111111",
            r"4111\t1111\n1111\/1111",
            "card4111111111111111x",
        ] {
            let masked = mask_pans(text);
            assert!(
                masked.contains("411111******1111"),
                "{text:?} -> {masked:?}"
            );
            assert!(find_pans(&masked).is_empty(), "{text:?} -> {masked:?}");
        }
        // Inside raw JSON: still valid JSON afterwards.
        let raw = br#"{"beneficiary":{"id":"4111.1111.1111.1111"},"m":"\u0034111 1111 1111 1111"}"#;
        let masked = mask_bytes(raw);
        let v: serde_json::Value = serde_json::from_slice(&masked).unwrap();
        assert_eq!(v["beneficiary"]["id"], "411111******1111");
        assert_eq!(v["m"], "411111******1111");
        // A bare JSON number: masked into a string, the JSON stays valid.
        let raw = br#"{"n":4111111111111111,"s":"x \" 4111111111111111"}"#;
        let masked = mask_json_bytes(raw);
        let v: serde_json::Value = serde_json::from_slice(&masked).unwrap();
        assert_eq!(v["n"], "411111******1111");
        assert_eq!(v["s"], "x \" 411111******1111");
    }

    #[test]
    fn amounts_times_uuids_and_hashes_are_kept() {
        for text in [
            "250.00",
            "999999999999.99",
            "123456789012.345",
            "2026-11-30T19:00:16.123456Z",
            "2026-11-30 19:00:16.123456+00",
            "7c0e1234-5678-4123-8123-123456789012",
            "12345678-1234-4123-8123-123456789012",
            "a1234567890123456789012345678901234567890123456789012345678901bc",
            "0000000000000000",
            "1732993216",
        ] {
            assert_eq!(mask_pans(text), text, "{text:?}");
        }
        // A card number beside a UUID is still found.
        let t = "7c0e1234-5678-4123-8123-123456789012 4111111111111111";
        assert_eq!(
            mask_pans(t),
            "7c0e1234-5678-4123-8123-123456789012 411111******1111"
        );
    }

    proptest! {
        #[test]
        fn no_pan_survives_masking(body in proptest::collection::vec(0u8..10, 12..19), prefix in "[a-z :]{0,10}", suffix in "[a-z :]{0,10}") {
            let pan = make_pan(&body);
            let text = format!("{prefix}{pan}{suffix}");
            let masked = mask_pans(&text);
            prop_assert!(!masked.contains(&pan));
            prop_assert!(find_pans(&masked).is_empty());
        }

        #[test]
        fn any_separators_are_masked(
            body in proptest::collection::vec(0u8..10, 12..19),
            seps in proptest::collection::vec("[ ._/\\-\t\u{A0}\u{3000}\u{2013}]{1,3}", 1..4),
            group in 1usize..6,
            prefix in "[a-z\": ]{0,8}",
            suffix in "[a-z\": ]{0,8}",
        ) {
            let pan = make_pan(&body);
            let text = format!("{prefix}{}{suffix}", spell(&pan, &seps, group));
            let masked = mask_pans(&text);
            let digits: String = masked.chars().filter(char::is_ascii_digit).collect();
            prop_assert!(!digits.contains(&pan), "{text:?} -> {masked:?}");
            prop_assert!(find_pans(&masked).is_empty(), "{text:?} -> {masked:?}");
        }

        #[test]
        fn masking_is_idempotent(text in "[0-9 .\\-/_a-f\"]{0,80}") {
            let once = mask_pans(&text);
            prop_assert_eq!(mask_pans(&once), once.clone());
            prop_assert!(find_pans(&once).is_empty());
        }

        #[test]
        fn non_pan_numbers_are_kept(
            int in 1u64..1_000_000_000_000u64,
            cents in 0u32..100,
            secs in 0i64..4_102_444_800,
            uuid in any::<u128>(),
        ) {
            let amount = format!("{int}.{cents:02}");
            prop_assert_eq!(mask_pans(&amount), amount.clone());
            let at = chrono::DateTime::from_timestamp(secs, 123_456_000).unwrap();
            for t in [at.to_rfc3339(), at.to_string(), at.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string()] {
                prop_assert_eq!(mask_pans(&t), t.clone());
            }
            let id = uuid::Uuid::from_u128(uuid).to_string();
            prop_assert_eq!(mask_pans(&id), id.clone());
            let line = format!("{{\"intentId\":\"{id}\",\"amount\":\"{amount}\",\"at\":\"{}\"}}", at.to_rfc3339());
            prop_assert_eq!(mask_pans(&line), line.clone());
        }
    }
}
