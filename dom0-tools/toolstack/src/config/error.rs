//! What reading a configuration can report: [`ConfigError`] (the file is
//! refused, naming file, line and key) and [`ConfigWarning`] (a key nobody
//! reads).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{disk::DiskError, vif::VifError};

/// Where a syntax error was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Near {
    Text(String),
    Newline,
    EndOfFile,
}

impl fmt::Display for Near {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Near::Text(t) => write!(f, "`{t}'"),
            Near::Newline => f.write_str("<newline>"),
            Near::EndOfFile => f.write_str("<end of file>"),
        }
    }
}

/// Why a configuration could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read (xl's wording).
    #[error("Failed to read config file: {path}: {reason}")]
    Read { path: String, reason: String },
    /// The text does not follow the grammar (libxlu's wording).
    #[error("{file}:{line}: config parsing error near {near}: {msg}")]
    Syntax {
        file: String,
        line: u32,
        near: Near,
        msg: String,
        /// The text looks like Python, which xl.cfg once allowed; xl then
        /// adds [`crate::xl::PYTHON_CONFIG_WARNING`].
        likely_python: bool,
    },
    /// A setting has a bad value.
    #[error("{file}:{line}: {key}: {msg}")]
    Value {
        file: String,
        line: u32,
        key: String,
        msg: String,
    },
    /// A required setting is absent (or settings contradict each other
    /// without one line to blame).
    #[error("{file}: {key}: {msg}")]
    Missing {
        file: String,
        key: String,
        msg: String,
    },
    /// An entry of `disk = [...]` is not a valid disk spec.
    #[error("{file}:{line}: disk: {error}")]
    Disk {
        file: String,
        line: u32,
        error: DiskError,
    },
    /// An entry of `vif = [...]` is not a valid vif spec.
    #[error("{file}:{line}: vif: {error}")]
    Vif {
        file: String,
        line: u32,
        error: VifError,
    },
}

impl ConfigError {
    /// The file the error is about.
    pub fn file(&self) -> &str {
        match self {
            ConfigError::Read { path, .. } => path,
            ConfigError::Syntax { file, .. }
            | ConfigError::Value { file, .. }
            | ConfigError::Missing { file, .. }
            | ConfigError::Disk { file, .. }
            | ConfigError::Vif { file, .. } => file,
        }
    }

    /// The line the error is about, if there is one.
    pub fn line(&self) -> Option<u32> {
        match self {
            ConfigError::Syntax { line, .. }
            | ConfigError::Value { line, .. }
            | ConfigError::Disk { line, .. }
            | ConfigError::Vif { line, .. } => Some(*line),
            ConfigError::Read { .. } | ConfigError::Missing { .. } => None,
        }
    }
}

/// What a warning is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WarningKind {
    /// No xl version reads this key.
    UnknownKey,
    /// xl reads this key, but kxen does not implement it.
    Unsupported,
    /// A remark on the value (deprecated or overridden), as xl makes.
    Note(String),
}

/// A problem that does not stop the domain from being created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigWarning {
    pub file: String,
    pub line: u32,
    pub key: String,
    pub kind: WarningKind,
}

impl fmt::Display for ConfigWarning {
    /// In xl's warning style: ``guest.cfg:3: warning: unknown parameter
    /// `colour' ignored``.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: warning: ", self.file, self.line)?;
        match &self.kind {
            WarningKind::UnknownKey => write!(f, "unknown parameter `{}' ignored", self.key),
            WarningKind::Unsupported => write!(
                f,
                "parameter `{}' is not supported by kxen, ignored",
                self.key
            ),
            WarningKind::Note(msg) => write!(f, "{}: {msg}", self.key),
        }
    }
}
