//! The library's error type. Every variant names what is at fault (a file, a config field, a
//! node) so the CLI can print it as one line; `hint` adds what to do about it where that helps.

use std::path::{Path, PathBuf};

/// Everything kpki can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The config file is malformed or a field has an invalid value.
    #[error("{file}: {message}")]
    Config { file: PathBuf, message: String },
    /// A file could not be read, written or created.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A file exists but its content is unusable (bad PEM, a key that does not match, ...).
    #[error("{}: {message}", path.display())]
    File { path: PathBuf, message: String },
    /// A request that cannot be carried out (unknown profile, a node without the role, ...).
    #[error("{message}")]
    Usage {
        message: String,
        hint: Option<String>,
    },
    /// The cluster directory cannot take a change now (another kpki holds it, the disk lacks
    /// room): nothing was written, and the same command can simply run again later.
    #[error("{}: {message}", path.display())]
    Unavailable {
        path: PathBuf,
        message: String,
        hint: String,
    },
    /// Writing would leave plaintext where git could commit it.
    #[error("{}: {message}", path.display())]
    Unprotected {
        path: PathBuf,
        message: String,
        hint: String,
    },
    /// secrets/ must be decrypted, but no usable admin identity is at hand.
    #[error("{message}")]
    Identity {
        message: String,
        hint: Option<String>,
    },
    /// A cryptographic library refused an operation that should not fail.
    #[error("{context}: {message}")]
    Crypto { context: String, message: String },
}

impl Error {
    /// A line of advice for the user, printed after the error.
    pub fn hint(&self) -> Option<&str> {
        match self {
            Error::Usage { hint, .. } | Error::Identity { hint, .. } => {
                hint.as_deref().filter(|h| !h.is_empty())
            }
            Error::Unavailable { hint, .. } | Error::Unprotected { hint, .. } => Some(hint),
            Error::Config { .. } => Some("see docs/configuration.md"),
            Error::Io { source, .. } if source.kind() == std::io::ErrorKind::PermissionDenied => {
                Some("check the permissions of the cluster directory")
            }
            _ => None,
        }
    }

    /// An I/O error on `path`.
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// Unusable content in `path`.
    pub fn file(path: &Path, message: impl Into<String>) -> Self {
        Error::File {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }

    /// A request that cannot be carried out, with an optional hint.
    pub fn usage(message: impl Into<String>, hint: Option<String>) -> Self {
        Error::Usage {
            message: message.into(),
            hint,
        }
    }

    /// The same error, naming `path` (the path the user gave) instead of the file it was
    /// about (a temporary file, a link's target).
    pub fn at(self, path: &Path) -> Self {
        match self {
            Error::Io { source, .. } => Error::io(path, source),
            Error::File { message, .. } => Error::file(path, message),
            e => e,
        }
    }

    /// A failure of rcgen, ring or age while doing `context`.
    pub fn crypto(context: impl Into<String>, err: impl std::fmt::Display) -> Self {
        Error::Crypto {
            context: context.into(),
            message: err.to_string(),
        }
    }
}

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Parallel results, in their order: `in_order` keeps the first error in that order, where
/// rayon's own collect into a `Result` reports whichever error a thread met first (a different
/// file from run to run).
pub trait InOrder<T> {
    fn in_order(self) -> Result<Vec<T>>;
}

impl<T> InOrder<T> for Vec<Result<T>> {
    fn in_order(self) -> Result<Vec<T>> {
        self.into_iter().collect()
    }
}

/// `Ok(None)` for what needs an identity that is not at hand; other errors stand.
pub fn readable<T>(result: Result<T>) -> Result<Option<T>> {
    match result {
        Ok(t) => Ok(Some(t)),
        Err(Error::Identity { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}
