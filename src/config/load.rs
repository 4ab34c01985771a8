//! Reading a configuration: the file's bytes (and their hash), TOML into the raw
//! shape, validation, and errors that name the key and the line.

use std::ops::Range;
use std::path::Path;

use super::Config;
use super::raw::RawConfig;

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is read but unusable.
    #[error("{}", describe(.file.as_deref(), .key, *.line, .message))]
    Invalid {
        /// The file, when the configuration came from one.
        file: Option<String>,
        /// The dotted key, e.g. `dist.ports[1]`; empty for a syntax error.
        key: String,
        /// 1-based line in the file.
        line: Option<usize>,
        /// What is wrong.
        message: String,
    },
}

fn describe(file: Option<&str>, key: &str, line: Option<usize>, message: &str) -> String {
    let mut out = file.unwrap_or("config").to_owned();
    if let Some(line) = line {
        out += &format!(":{line}");
    }
    if !key.is_empty() {
        out += &format!(": `{key}`");
    }
    format!("{out}: {message}")
}

impl ConfigError {
    /// The key the error is about (empty for syntax errors and unreadable files).
    pub fn key(&self) -> &str {
        match self {
            ConfigError::Invalid { key, .. } => key,
            ConfigError::Read { .. } => "",
        }
    }

    /// The 1-based line the error is about, when known.
    pub fn line(&self) -> Option<usize> {
        match self {
            ConfigError::Invalid { line, .. } => *line,
            ConfigError::Read { .. } => None,
        }
    }
}

/// Reads and validates a configuration file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    load_hashed(path).map(|(config, _)| config)
}

/// What `distgate_config_info` says when no file is given: the built-in defaults.
pub const DEFAULTS_HASH: &str = "defaults";

/// The hash `distgate_config_info` carries for a file's bytes: the first 16 hex digits
/// of their SHA-256 (`sha256sum distgate.toml | cut -c1-16`).
pub fn hash(bytes: &[u8]) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(bytes);
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads and validates a configuration file; with the [`hash`] of what was read.
pub fn load_hashed(path: &Path) -> Result<(Config, String), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let hash = hash(text.as_bytes());
    parse(&text)
        .map(|config| (config, hash))
        .map_err(|e| match e {
            ConfigError::Invalid {
                key, line, message, ..
            } => ConfigError::Invalid {
                file: Some(path.display().to_string()),
                key,
                line,
                message,
            },
            other => other,
        })
}

/// Parses and validates configuration text.
pub fn parse(text: &str) -> Result<Config, ConfigError> {
    let invalid = |key: String, span: Option<Range<usize>>, message: String| ConfigError::Invalid {
        file: None,
        key,
        line: span.map(|s| line_of(text, s.start)),
        message,
    };
    let deserializer = toml::Deserializer::parse(text)
        .map_err(|e| invalid(String::new(), e.span(), e.message().to_owned()))?;
    let raw: RawConfig = serde_path_to_error::deserialize(deserializer).map_err(|e| {
        // `toml::Spanned` shows up in the path as a private field; users never see it.
        let key = e
            .path()
            .to_string()
            .replace(".$__serde_spanned_private_value", "");
        let inner = e.into_inner();
        let mut message = inner.message().to_owned();
        if message.contains("invalid socket address syntax") {
            message += ": an address and a port, e.g. \"0.0.0.0:4369\" or \"[::]:4369\"";
        }
        invalid(key, inner.span(), message)
    })?;
    raw.validate().map_err(|(key, span, message)| match span {
        Some(span) => invalid(key, Some(span), message),
        // A rule between keys: the line of the key where the file sets it.
        None => {
            let line = line_of_key(text, &key);
            ConfigError::Invalid {
                file: None,
                key,
                line,
                message,
            }
        }
    })
}

/// The 1-based line where `key` (`section.name`, `section.sub.name` or
/// `section.name[i]`) is set in `text`, if it is written there.
fn line_of_key(text: &str, key: &str) -> Option<usize> {
    let key = key.split('[').next().unwrap_or(key);
    let (section, name) = key.rsplit_once('.')?;
    let mut current = String::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if let Some(header) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = header.trim().to_owned();
            continue;
        }
        let Some((left, _)) = line.split_once('=') else {
            continue;
        };
        let left = left.trim();
        let full = match current.is_empty() {
            true => left.to_owned(),
            false => format!("{current}.{left}"),
        };
        if full == key || (current == section && left == name) {
            return Some(i + 1);
        }
    }
    None
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset)
        .map_or(1, |before| before.matches('\n').count() + 1)
}
