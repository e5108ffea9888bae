//! The crate's error type: infrastructure failures and malformed files. Per-sample data problems are not
//! errors; they travel as [`crate::Rejected`] records.

use std::path::PathBuf;

/// Everything that can go wrong in `flyt` outside per-sample data problems.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading or writing a path failed at the operating-system level.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A file is not in the format it should be in.
    #[error("{}: {what}: {reason}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// Where in the file: a key, a column, a row or a field.
        what: String,
        /// Why it is wrong.
        reason: String,
    },
    /// The parquet reader or writer failed.
    #[error("{}: parquet: {source}", path.display())]
    Parquet {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: parquet::errors::ParquetError,
    },
    /// An Arrow operation failed.
    #[error("arrow: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
    /// A configuration or argument is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// libtorch reported an error.
    #[error("torch: {0}")]
    Torch(#[from] tch::TchError),
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An [`Error::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }

    /// An [`Error::Format`] for `path`.
    pub fn format(path: impl Into<PathBuf>, what: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Format { path: path.into(), what: what.into(), reason: reason.into() }
    }
}
