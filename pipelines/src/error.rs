//! The crate's error type.

/// Everything that can stop a pipeline or a job. Per-sample data problems are not errors: they are rejects,
/// counted and written out; a shard that cannot be read fails alone and is reported.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The domain crate failed: a file in a bad format or that cannot be read or written (named), libtorch.
    #[error(transparent)]
    Flyt(#[from] flyt::Error),
    /// A configuration, an argument or an input that cannot work, with what to do about it.
    #[error("{0}")]
    Config(String),
    /// The run could not do (all of) its work: shards failed, nothing was found, an output could not be
    /// written. What was done is on disk; the message says where.
    #[error("{0}")]
    Incomplete(String),
    /// Something asked for does not exist (a committed shard, a flight, a column of a table).
    #[error("{0}")]
    NotFound(String),
    /// The dataflow could not run (timely's own error, or a worker panicked).
    #[error("dataflow: {0}")]
    Dataflow(String),
    /// The Flight service failed.
    #[error("Flight service: {0}")]
    Flight(String),
    /// libtorch reported an error.
    #[error("torch: {0}")]
    Torch(#[from] tch::TchError),
    /// What was being done when `source` happened.
    #[error("{what}")]
    Context {
        /// What was being done (a file, a stage).
        what: String,
        /// The error.
        #[source]
        source: Box<Error>,
    },
}

impl From<arrow_schema::ArrowError> for Error {
    fn from(e: arrow_schema::ArrowError) -> Self {
        Error::Flyt(flyt::Error::Arrow(e))
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An I/O failure on `path`.
    pub fn io(path: impl Into<std::path::PathBuf>, source: std::io::Error) -> Self {
        Error::Flyt(flyt::Error::io(path, source))
    }

    /// The whole chain in one line, `what: why: ...`, each cause once (a cause whose text its parent already
    /// ends with is not repeated).
    pub fn report(&self) -> String {
        report(self)
    }
}

/// The chain of any error in one line, each cause once.
pub fn report(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let t = c.to_string();
        if !s.ends_with(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cause = c.source();
    }
    s
}

/// Adds what was being done to an error.
pub(crate) trait Context<T> {
    /// `what` (computed only on error) becomes the error's context.
    fn context_with(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T, E: Into<Error>> Context<T> for std::result::Result<T, E> {
    fn context_with(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::Context { what: what(), source: Box::new(e.into()) })
    }
}
