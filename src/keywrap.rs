//! Envelope encryption of the per-subject keys (SPEC §14 "Keys apart from data").
//!
//! Each data subject's AES-256-GCM key (the data-encryption key, [`SubjectKey`]) is
//! stored in PostgreSQL only *wrapped*: encrypted with AES-256-GCM under a
//! key-encryption key (KEK) that never enters the database. A dump of the database holds
//! the ciphertext and the wrapped keys, and nothing that opens either.
//!
//! The KEK is behind [`KeyWrap`] so that a KMS can replace the local key: the ledger only
//! asks "wrap this key" / "unwrap this key" and names the KEK by [`KeyWrap::kek_id`],
//! which is stored next to every wrapped key so that a rotation knows what wrapped each
//! row. [`LocalKek`] is the KEK read from a file or an environment variable; [`KeyRing`]
//! wraps with one KEK and unwraps with it or the previous one (the state of a fleet in
//! the middle of a rotation).
//!
//! Format of a wrapped key: nonce (12 bytes) ‖ AES-256-GCM(KEK, subject key) (32 bytes)
//! ‖ tag (16 bytes). The associated data binds it to its row (format version, key id and
//! subject id), so a wrapped key copied onto another subject's row does not unwrap.

use crate::privacy::{KEY_BYTES, SubjectKey};
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Bytes of a KEK (AES-256).
pub const KEK_BYTES: usize = 32;
const NONCE_BYTES: usize = 12;
const TAG_BYTES: usize = 16;
/// Bytes of a wrapped subject key as stored (`subject_key.wrapped_key`).
pub const WRAPPED_BYTES: usize = NONCE_BYTES + KEY_BYTES + TAG_BYTES;
/// Environment variable holding the KEK itself (base64 of 32 bytes).
pub const KEK_ENV: &str = "SPENDGUARD_KEK";
/// Environment variable naming the KEK file (the `kek_file` setting).
pub const KEK_FILE_ENV: &str = "SPENDGUARD_KEK_FILE";
/// Environment variable naming the previous KEK's file, kept during a rotation.
pub const KEK_PREVIOUS_FILE_ENV: &str = "SPENDGUARD_KEK_PREVIOUS_FILE";
/// Longest KEK file accepted (base64 of 32 bytes plus whitespace).
const MAX_KEK_FILE_BYTES: u64 = 1024;
/// Associated data prefix: changes if the wrapped format ever does.
const AAD_PREFIX: &[u8] = b"spendguard subject key v1\0";

/// What to tell an operator who configured no KEK (every error that lacks one says it).
pub const HOW_TO_CONFIGURE: &str = "set kek_file in the config file, SPENDGUARD_KEK_FILE or --kek-file (a file holding the KEK as base64 of 32 bytes; `spendguard privacy kek-gen --out FILE` makes one), or SPENDGUARD_KEK (the base64 itself)";

/// A subject key encrypted under a KEK, as stored in `subject_key`.
#[derive(Clone, PartialEq, Eq)]
pub struct Wrapped {
    /// The KEK that wrapped it ([`KeyWrap::kek_id`]).
    pub kek_id: String,
    pub bytes: Vec<u8>,
}

impl std::fmt::Debug for Wrapped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wrapped")
            .field("kek_id", &self.kek_id)
            .field("bytes", &self.bytes.len())
            .finish()
    }
}

/// Wraps and unwraps subject keys under a key-encryption key kept outside PostgreSQL.
///
/// `subject` is the data subject the key belongs to; implementations bind the wrapped
/// form to it and to the key id. Methods are synchronous: a KMS implementation fetches
/// (or unwraps through the KMS) its working KEK when it is built, and answers from
/// memory, since deciding must not wait on a network call per data subject.
pub trait KeyWrap: Send + Sync + std::fmt::Debug {
    /// A stable, non-secret name of the KEK that [`KeyWrap::wrap`] uses.
    fn kek_id(&self) -> &str;
    fn wrap(&self, subject: &str, key: &SubjectKey) -> Result<Wrapped, KeyWrapError>;
    fn unwrap(
        &self,
        subject: &str,
        key_id: uuid::Uuid,
        wrapped: &Wrapped,
    ) -> Result<SubjectKey, KeyWrapError>;
}

#[derive(Debug, thiserror::Error)]
pub enum KeyWrapError {
    #[error(
        "no key-encryption key (KEK) is configured, and subject keys are only stored wrapped by one: {HOW_TO_CONFIGURE}"
    )]
    NotConfigured,
    #[error("cannot read the KEK file {path}: {source} ({HOW_TO_CONFIGURE})")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The configured value is not a KEK. Never carries the value itself.
    #[error("the KEK from {origin} is not valid: {reason}")]
    Invalid { origin: String, reason: String },
    #[error(
        "both {KEK_ENV} and a KEK file ({path}) are set: configure one of them, so that it is clear which KEK wraps new subject keys"
    )]
    Ambiguous { path: PathBuf },
    #[error(
        "subject keys were wrapped by kek_id {wrapped_by}, the configured KEK is {configured}: configure the KEK {wrapped_by} (kek_file / SPENDGUARD_KEK), or during a rotation keep it as kek_previous_file"
    )]
    WrongKek {
        wrapped_by: String,
        configured: String,
    },
    /// The KEK id matches but the wrapped key does not authenticate: the row was altered
    /// (or copied from another subject), or a different KEK was given the same id.
    #[error(
        "the wrapped subject key {key_id} does not unwrap under kek_id {kek_id} although it names that KEK: the row was altered or moved from another subject; restore subject_key from a backup"
    )]
    Tampered { key_id: uuid::Uuid, kek_id: String },
    #[error(
        "subject key {key_id} is still stored in clear (written before keys were wrapped): run `spendguard privacy rotate-kek` or restart serve with the KEK to wrap it"
    )]
    Legacy { key_id: uuid::Uuid },
    /// A remote key service could not be reached (KMS implementations): retry.
    #[error("the key service is unavailable: {0}")]
    Unavailable(String),
}

impl KeyWrapError {
    /// Whether retrying can succeed: only a remote key service being down; a missing,
    /// wrong or tampered key needs an operator.
    pub fn is_transient(&self) -> bool {
        matches!(self, KeyWrapError::Unavailable(_))
    }
}

/// A KEK held in memory, read from a file or an environment variable.
pub struct LocalKek {
    id: String,
    key: [u8; KEK_BYTES],
}

impl std::fmt::Debug for LocalKek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalKek")
            .field("kek_id", &self.id)
            .finish_non_exhaustive()
    }
}

impl LocalKek {
    /// A new random KEK (`privacy kek-gen`, tests).
    pub fn generate() -> LocalKek {
        let mut key = [0u8; KEK_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut key);
        LocalKek::from_bytes(key)
    }

    pub fn from_bytes(key: [u8; KEK_BYTES]) -> LocalKek {
        // The id is derived from the key so that two different KEKs cannot share an id by
        // mistake; 64 bits of a hash say nothing usable about a 256-bit random key.
        let digest = Sha256::new()
            .chain_update(b"spendguard kek id\0")
            .chain_update(key)
            .finalize();
        LocalKek {
            id: format!("kek-{}", hex::encode(&digest[..8])),
            key,
        }
    }

    /// The KEK from its text form: standard base64 of 32 bytes; whitespace around it and
    /// lines starting with `#` (a file's comment) are ignored. `origin` names where it
    /// came from in errors (never the value).
    pub fn parse(text: &str, origin: &str) -> Result<LocalKek, KeyWrapError> {
        use base64::Engine as _;
        let invalid = |reason: &str| KeyWrapError::Invalid {
            origin: origin.to_string(),
            reason: reason.to_string(),
        };
        let body: String = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.starts_with('#'))
            .collect();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(body)
            .map_err(|_| invalid("not standard base64 (expected base64 of 32 random bytes, e.g. from `spendguard privacy kek-gen`)"))?;
        let key: [u8; KEK_BYTES] = bytes.as_slice().try_into().map_err(|_| {
            invalid(&format!(
                "decodes to {} bytes, a KEK is {KEK_BYTES}",
                bytes.len()
            ))
        })?;
        if key.iter().all(|b| *b == key[0]) {
            return Err(invalid("all its bytes are equal: not a random key"));
        }
        Ok(LocalKek::from_bytes(key))
    }

    pub fn from_file(path: &Path) -> Result<LocalKek, KeyWrapError> {
        let read = |source| KeyWrapError::Read {
            path: path.to_path_buf(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(read)?;
        if meta.len() > MAX_KEK_FILE_BYTES {
            return Err(KeyWrapError::Invalid {
                origin: format!("file {}", path.display()),
                reason: format!("larger than {MAX_KEK_FILE_BYTES} bytes"),
            });
        }
        let text = std::fs::read_to_string(path).map_err(read)?;
        LocalKek::parse(&text, &format!("file {}", path.display()))
    }

    /// The text form ([`LocalKek::parse`] reads it back).
    pub fn to_base64(&self) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(self.key)
    }

    fn aad(subject: &str, key_id: uuid::Uuid) -> Vec<u8> {
        let mut aad = AAD_PREFIX.to_vec();
        aad.extend_from_slice(key_id.as_bytes());
        aad.extend_from_slice(subject.as_bytes());
        aad
    }
}

impl KeyWrap for LocalKek {
    fn kek_id(&self) -> &str {
        &self.id
    }

    fn wrap(&self, subject: &str, key: &SubjectKey) -> Result<Wrapped, KeyWrapError> {
        let mut nonce = [0u8; NONCE_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let aad = LocalKek::aad(subject, key.key_id);
        let ct = Aes256Gcm::new((&self.key).into())
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: &key.key,
                    aad: &aad,
                },
            )
            .map_err(|_| KeyWrapError::Invalid {
                origin: self.id.clone(),
                reason: "AES-GCM refused to encrypt".into(),
            })?;
        let mut bytes = nonce.to_vec();
        bytes.extend_from_slice(&ct);
        Ok(Wrapped {
            kek_id: self.id.clone(),
            bytes,
        })
    }

    fn unwrap(
        &self,
        subject: &str,
        key_id: uuid::Uuid,
        wrapped: &Wrapped,
    ) -> Result<SubjectKey, KeyWrapError> {
        if wrapped.kek_id != self.id {
            return Err(KeyWrapError::WrongKek {
                wrapped_by: wrapped.kek_id.clone(),
                configured: self.id.clone(),
            });
        }
        let tampered = || KeyWrapError::Tampered {
            key_id,
            kek_id: self.id.clone(),
        };
        if wrapped.bytes.len() != WRAPPED_BYTES {
            return Err(tampered());
        }
        let (nonce, ct) = wrapped.bytes.split_at(NONCE_BYTES);
        let nonce: [u8; NONCE_BYTES] = nonce.try_into().map_err(|_| tampered())?;
        let aad = LocalKek::aad(subject, key_id);
        let clear = Aes256Gcm::new((&self.key).into())
            .decrypt(&Nonce::from(nonce), Payload { msg: ct, aad: &aad })
            .map_err(|_| tampered())?;
        SubjectKey::from_bytes(key_id, &clear).ok_or_else(tampered)
    }
}

/// The KEK that wraps new keys and, during a rotation, the previous one, which still
/// unwraps the rows not re-wrapped yet.
#[derive(Debug)]
pub struct KeyRing {
    current: LocalKek,
    previous: Option<LocalKek>,
}

impl KeyRing {
    pub fn new(current: LocalKek, previous: Option<LocalKek>) -> KeyRing {
        KeyRing { current, previous }
    }

    /// The configured KEKs, or `None` when none is configured: `kek_file` (already
    /// resolved from the flag, `SPENDGUARD_KEK_FILE` or the config file) or else
    /// `SPENDGUARD_KEK`; `previous_file` only with one of them.
    pub fn from_config(
        kek_file: Option<&Path>,
        previous_file: Option<&Path>,
    ) -> Result<Option<Arc<KeyRing>>, KeyWrapError> {
        let from_env = std::env::var(KEK_ENV).ok().filter(|v| !v.trim().is_empty());
        let current = match (kek_file, from_env) {
            (Some(path), Some(_)) => {
                return Err(KeyWrapError::Ambiguous {
                    path: path.to_path_buf(),
                });
            }
            (Some(path), None) => LocalKek::from_file(path)?,
            (None, Some(text)) => LocalKek::parse(&text, KEK_ENV)?,
            (None, None) => {
                return match previous_file {
                    Some(p) => Err(KeyWrapError::Invalid {
                        origin: format!("file {}", p.display()),
                        reason: format!(
                            "a previous KEK is configured without a current one: {HOW_TO_CONFIGURE}"
                        ),
                    }),
                    None => Ok(None),
                };
            }
        };
        let previous = previous_file.map(LocalKek::from_file).transpose()?;
        Ok(Some(Arc::new(KeyRing::new(current, previous))))
    }

    /// Like [`KeyRing::from_config`], but a missing KEK is an error (commands that
    /// cannot work without one).
    pub fn required(
        kek_file: Option<&Path>,
        previous_file: Option<&Path>,
    ) -> Result<Arc<KeyRing>, KeyWrapError> {
        KeyRing::from_config(kek_file, previous_file)?.ok_or(KeyWrapError::NotConfigured)
    }

    /// The KEK ids this ring can unwrap, current first.
    pub fn kek_ids(&self) -> Vec<&str> {
        std::iter::once(self.current.kek_id())
            .chain(self.previous.as_ref().map(|p| p.kek_id()))
            .collect()
    }
}

impl KeyWrap for KeyRing {
    fn kek_id(&self) -> &str {
        self.current.kek_id()
    }

    fn wrap(&self, subject: &str, key: &SubjectKey) -> Result<Wrapped, KeyWrapError> {
        self.current.wrap(subject, key)
    }

    fn unwrap(
        &self,
        subject: &str,
        key_id: uuid::Uuid,
        wrapped: &Wrapped,
    ) -> Result<SubjectKey, KeyWrapError> {
        match &self.previous {
            Some(p) if wrapped.kek_id == p.kek_id() => p.unwrap(subject, key_id, wrapped),
            _ => self
                .current
                .unwrap(subject, key_id, wrapped)
                .map_err(|e| match e {
                    KeyWrapError::WrongKek { wrapped_by, .. } => KeyWrapError::WrongKek {
                        wrapped_by,
                        configured: self.kek_ids().join(" and "),
                    },
                    other => other,
                }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_unwrap_roundtrip_and_binding() {
        let kek = LocalKek::generate();
        let k = SubjectKey::generate();
        let w = kek.wrap("person:maria", &k).unwrap();
        assert_eq!(w.bytes.len(), WRAPPED_BYTES);
        assert_eq!(w.kek_id, kek.kek_id());
        assert!(
            !w.bytes.windows(KEY_BYTES).any(|win| win == k.key),
            "the clear key does not appear in the wrapped form"
        );
        let back = kek.unwrap("person:maria", k.key_id, &w).unwrap();
        assert_eq!(back.key, k.key);
        assert_eq!(back.key_id, k.key_id);
        // Moved to another subject or another key id: refused.
        assert!(matches!(
            kek.unwrap("person:joao", k.key_id, &w),
            Err(KeyWrapError::Tampered { .. })
        ));
        assert!(matches!(
            kek.unwrap("person:maria", uuid::Uuid::new_v4(), &w),
            Err(KeyWrapError::Tampered { .. })
        ));
    }

    #[test]
    fn a_wrong_kek_names_both_ids() {
        let (a, b) = (LocalKek::generate(), LocalKek::generate());
        assert_ne!(a.kek_id(), b.kek_id());
        let k = SubjectKey::generate();
        let w = a.wrap("s", &k).unwrap();
        let err = b.unwrap("s", k.key_id, &w).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, KeyWrapError::WrongKek { .. }), "{text}");
        assert!(
            text.contains(&format!(
                "subject keys were wrapped by kek_id {}, the configured KEK is {}",
                a.kek_id(),
                b.kek_id()
            )),
            "{text}"
        );
        // A wrong KEK that claims the right id (the id is only a name): the tag fails.
        let forged = Wrapped {
            kek_id: b.kek_id().to_string(),
            bytes: w.bytes.clone(),
        };
        assert!(matches!(
            b.unwrap("s", k.key_id, &forged),
            Err(KeyWrapError::Tampered { .. })
        ));
    }

    #[test]
    fn a_tampered_wrapped_key_is_refused() {
        let kek = LocalKek::generate();
        let k = SubjectKey::generate();
        let w = kek.wrap("s", &k).unwrap();
        for i in 0..w.bytes.len() {
            let mut t = w.clone();
            t.bytes[i] ^= 0x01;
            assert!(
                matches!(
                    kek.unwrap("s", k.key_id, &t),
                    Err(KeyWrapError::Tampered { .. })
                ),
                "bit flipped in byte {i}"
            );
        }
        let mut short = w.clone();
        short.bytes.pop();
        assert!(matches!(
            kek.unwrap("s", k.key_id, &short),
            Err(KeyWrapError::Tampered { .. })
        ));
    }

    #[test]
    fn kek_text_form_is_checked_and_never_echoed() {
        let kek = LocalKek::generate();
        let again = LocalKek::parse(&format!("  {}\n", kek.to_base64()), "test").unwrap();
        assert_eq!(again.kek_id(), kek.kek_id());
        for bad in ["", "not base64!", "AAAA", &"A".repeat(44)] {
            let err = LocalKek::parse(bad, "SPENDGUARD_KEK").unwrap_err();
            assert!(matches!(err, KeyWrapError::Invalid { .. }), "{bad:?}");
            assert!(err.to_string().contains("SPENDGUARD_KEK"));
        }
        let hex_key = hex::encode([7u8; 32]);
        let err = LocalKek::parse(&hex_key, "x").unwrap_err().to_string();
        assert!(!err.contains(&hex_key), "{err}");
        // Debug output names the id only.
        let dbg = format!("{kek:?}");
        assert!(dbg.contains(kek.kek_id()) && !dbg.contains(&kek.to_base64()));
    }

    #[test]
    fn a_ring_wraps_with_the_current_kek_and_unwraps_with_both() {
        let (old, new) = (LocalKek::generate(), LocalKek::generate());
        let k = SubjectKey::generate();
        let under_old = old.wrap("s", &k).unwrap();
        let old_id = old.kek_id().to_string();
        let new_id = new.kek_id().to_string();
        let ring = KeyRing::new(new, Some(old));
        assert_eq!(ring.kek_id(), new_id);
        assert_eq!(ring.unwrap("s", k.key_id, &under_old).unwrap().key, k.key);
        let under_new = ring.wrap("s", &k).unwrap();
        assert_eq!(under_new.kek_id, new_id);
        assert_eq!(ring.unwrap("s", k.key_id, &under_new).unwrap().key, k.key);
        let stranger = LocalKek::generate().wrap("s", &k).unwrap();
        let err = ring
            .unwrap("s", k.key_id, &stranger)
            .unwrap_err()
            .to_string();
        assert!(err.contains(&new_id) && err.contains(&old_id), "{err}");
    }

    #[test]
    fn a_missing_kek_names_the_settings() {
        let text = KeyWrapError::NotConfigured.to_string();
        for name in ["kek_file", "SPENDGUARD_KEK_FILE", "SPENDGUARD_KEK"] {
            assert!(text.contains(name), "{text}");
        }
    }
}
