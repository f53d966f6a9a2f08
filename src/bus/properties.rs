//! librdkafka properties passed through from the settings to every Kafka client of the
//! process (SPEC §14 "In transit"): TLS (`security.protocol=SSL`, `ssl.ca.location`,
//! client certificates) and SASL (`sasl.mechanisms=SCRAM-SHA-512` / `PLAIN`,
//! `sasl.username`, `sasl.password`).
//!
//! Only security and connection properties pass through (`security.protocol`, `ssl.*`,
//! `sasl.*`, `socket.*` and a few others): the delivery settings (acks, offsets, group)
//! are spendguard's own and what its guarantees rest on. A secret property (a password,
//! a client secret, a private key in PEM) never comes from the config file or
//! `SPENDGUARD_KAFKA_PROPERTIES` in clear: it is read from a file
//! (`kafka_secret_files`, `SPENDGUARD_KAFKA_SASL_PASSWORD_FILE`) or from
//! `SPENDGUARD_KAFKA_SASL_PASSWORD`, and its value is never printed (`Debug` shows
//! `<redacted>`; errors name the property, never the value).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// Exact property names passed through besides the `ssl.`, `sasl.` and `socket.`
/// families.
const PASSED_THROUGH: [&str; 4] = [
    "security.protocol",
    "enable.ssl.certificate.verification",
    "broker.address.family",
    "client.rack",
];
const PASSED_THROUGH_PREFIXES: [&str; 3] = ["ssl.", "sasl.", "socket."];

/// Longest secret file read (a password or a PEM key).
const MAX_SECRET_FILE_BYTES: u64 = 64 * 1024;

/// Whether a librdkafka property holds a secret: its value is never shown.
pub fn is_secret(name: &str) -> bool {
    name.contains("password")
        || name.contains("secret")
        || name == "ssl.key.pem"
        || name == "sasl.oauthbearer.config"
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PropertyError {
    #[error(
        "Kafka property {0:?} is not passed through: only security.protocol, ssl.*, sasl.*, socket.*, enable.ssl.certificate.verification, broker.address.family and client.rack are (spendguard sets the others itself)"
    )]
    NotPassedThrough(String),
    #[error(
        "Kafka property {0:?} is a secret: give it in a file (kafka_secret_files in the config file, or SPENDGUARD_KAFKA_SASL_PASSWORD_FILE for sasl.password) or, for sasl.password, in SPENDGUARD_KAFKA_SASL_PASSWORD, not in clear in the settings"
    )]
    SecretInClear(String),
    #[error("SPENDGUARD_KAFKA_PROPERTIES: {0:?} is not key=value")]
    Malformed(String),
    #[error("cannot read the secret file of Kafka property {property:?} ({path}): {message}")]
    SecretFile {
        property: String,
        path: PathBuf,
        message: String,
    },
    /// librdkafka refused the name or the value (the value is not repeated: it may be a
    /// secret).
    #[error("librdkafka refuses Kafka property {property:?}: {message}")]
    Refused { property: String, message: String },
}

impl PropertyError {
    /// A settings mistake: an operator must fix it, retrying does not help.
    pub fn is_transient(&self) -> bool {
        false
    }
}

/// The pass-through properties of one deployment.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ClientProperties {
    plain: BTreeMap<String, String>,
    secret: BTreeMap<String, String>,
}

impl std::fmt::Debug for ClientProperties {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut m = f.debug_map();
        for (k, v) in &self.plain {
            m.entry(k, v);
        }
        for k in self.secret.keys() {
            m.entry(k, &"<redacted>");
        }
        m.finish()
    }
}

fn check_name(name: &str) -> Result<(), PropertyError> {
    let passed = PASSED_THROUGH.contains(&name)
        || PASSED_THROUGH_PREFIXES.iter().any(|p| name.starts_with(p));
    if passed {
        Ok(())
    } else {
        Err(PropertyError::NotPassedThrough(name.to_string()))
    }
}

impl ClientProperties {
    /// Adds a property given in clear (config file, `SPENDGUARD_KAFKA_PROPERTIES`); a
    /// later value of the same name replaces an earlier one.
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), PropertyError> {
        let name = name.trim();
        check_name(name)?;
        if is_secret(name) {
            return Err(PropertyError::SecretInClear(name.to_string()));
        }
        self.plain
            .insert(name.to_string(), value.trim().to_string());
        Ok(())
    }

    /// Adds a secret property (from a file or the environment).
    pub fn set_secret(&mut self, name: &str, value: String) -> Result<(), PropertyError> {
        let name = name.trim();
        check_name(name)?;
        self.plain.remove(name);
        self.secret.insert(name.to_string(), value);
        Ok(())
    }

    /// Adds a secret property read from `path` (one trailing newline dropped).
    pub fn set_secret_file(&mut self, name: &str, path: &Path) -> Result<(), PropertyError> {
        let err = |message: String| PropertyError::SecretFile {
            property: name.to_string(),
            path: path.to_path_buf(),
            message,
        };
        let len = std::fs::metadata(path)
            .map_err(|e| err(e.to_string()))?
            .len();
        if len > MAX_SECRET_FILE_BYTES {
            return Err(err(format!("larger than {MAX_SECRET_FILE_BYTES} bytes")));
        }
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let value = text
            .strip_suffix('\n')
            .map(|t| t.strip_suffix('\r').unwrap_or(t))
            .unwrap_or(&text);
        self.set_secret(name, value.to_string())
    }

    /// Parses `key=value,key=value` (`SPENDGUARD_KAFKA_PROPERTIES`; a value cannot
    /// contain a comma: use the config file for such a value).
    pub fn set_list(&mut self, list: &str) -> Result<(), PropertyError> {
        for item in list.split([',', '\n']).filter(|s| !s.trim().is_empty()) {
            let Some((k, v)) = item.split_once('=') else {
                // The item may be a secret pasted by mistake: show only its first word.
                let shown: String = item.trim().chars().take(40).collect();
                return Err(PropertyError::Malformed(shown));
            };
            self.set(k, v)?;
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.plain.is_empty() && self.secret.is_empty()
    }

    /// The value of a property given in clear (secrets are not given out).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.plain.get(name).map(String::as_str)
    }

    /// Names of every property, secrets included (for messages: never the values).
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .plain
            .keys()
            .chain(self.secret.keys())
            .map(String::as_str)
            .collect();
        names.sort_unstable();
        names
    }

    /// Sets every property on `config`.
    pub fn apply(&self, config: &mut rdkafka::ClientConfig) {
        for (k, v) in self.plain.iter().chain(&self.secret) {
            config.set(k, v);
        }
    }

    /// Has librdkafka check every name and value now (no client is created, nothing is
    /// connected), so a typo stops the start instead of the first connection.
    pub fn validate(&self) -> Result<(), PropertyError> {
        for (k, v) in self.plain.iter().chain(&self.secret) {
            let mut c = rdkafka::ClientConfig::new();
            c.set(k, v);
            if let Err(e) = c.create_native_config() {
                let message = match e {
                    rdkafka::error::KafkaError::ClientConfig(_, description, _, _)
                        if !is_secret(k) =>
                    {
                        description
                    }
                    _ => "invalid name or value".to_string(),
                };
                return Err(PropertyError::Refused {
                    property: k.clone(),
                    message,
                });
            }
        }
        Ok(())
    }
}

/// The properties every client of this process is created with
/// ([`super::client_config`]). One deployment per process: `serve` and each CLI command
/// install those of their settings before creating a client.
static INSTALLED: RwLock<Option<Arc<ClientProperties>>> = RwLock::new(None);

/// Makes `properties` those of every Kafka client created from now on in this process.
pub fn install(properties: &ClientProperties) {
    let value = (!properties.is_empty()).then(|| Arc::new(properties.clone()));
    match INSTALLED.write() {
        Ok(mut guard) => *guard = value,
        Err(poisoned) => *poisoned.into_inner() = value,
    }
}

/// The installed properties, if any.
pub fn installed() -> Option<Arc<ClientProperties>> {
    match INSTALLED.read() {
        Ok(guard) => guard.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_security_and_connection_properties_pass_through() {
        let mut p = ClientProperties::default();
        p.set("security.protocol", "SASL_SSL").unwrap();
        p.set("sasl.mechanisms", "SCRAM-SHA-512").unwrap();
        p.set("ssl.ca.location", "/etc/ca.pem").unwrap();
        assert_eq!(
            p.set("acks", "0"),
            Err(PropertyError::NotPassedThrough("acks".into()))
        );
        assert_eq!(
            p.set("enable.auto.commit", "true"),
            Err(PropertyError::NotPassedThrough("enable.auto.commit".into()))
        );
        assert!(matches!(
            p.set("sasl.password", "hunter2"),
            Err(PropertyError::SecretInClear(_))
        ));
        assert!(matches!(
            p.set_list("ssl.key.password=x"),
            Err(PropertyError::SecretInClear(_))
        ));
        p.validate().unwrap();
    }

    #[test]
    fn secrets_are_never_shown() {
        let mut p = ClientProperties::default();
        p.set_list("security.protocol=SASL_SSL, sasl.username=svc")
            .unwrap();
        p.set_secret("sasl.password", "hunter2-secret".into())
            .unwrap();
        let shown = format!("{p:?}");
        assert!(shown.contains("sasl.username") && shown.contains("<redacted>"));
        assert!(!shown.contains("hunter2"), "{shown}");
        assert_eq!(p.get("sasl.password"), None);
        let mut c = rdkafka::ClientConfig::new();
        p.apply(&mut c);
        assert_eq!(c.get("sasl.password"), Some("hunter2-secret"));
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn librdkafka_checks_names_and_values_without_connecting() {
        let mut p = ClientProperties::default();
        p.set("security.protocol", "TLS_PLEASE").unwrap();
        let err = p.validate().unwrap_err().to_string();
        assert!(err.contains("security.protocol"), "{err}");
        let mut p = ClientProperties::default();
        p.set("ssl.no.such.property", "1").unwrap();
        assert!(p.validate().is_err());
        let mut p = ClientProperties::default();
        p.set("sasl.mechanisms", "SCRAM-SHA-512").unwrap();
        p.set("security.protocol", "sasl_ssl").unwrap();
        p.validate().unwrap();
    }

    #[test]
    fn a_secret_file_loses_its_trailing_newline_and_a_missing_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "s3cret\n").unwrap();
        let mut p = ClientProperties::default();
        p.set_secret_file("sasl.password", &path).unwrap();
        let mut c = rdkafka::ClientConfig::new();
        p.apply(&mut c);
        assert_eq!(c.get("sasl.password"), Some("s3cret"));
        let err = p
            .set_secret_file("sasl.password", &dir.path().join("missing"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("sasl.password") && err.contains("missing"),
            "{err}"
        );
    }
}
