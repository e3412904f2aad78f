//! Typed errors of the library. Every error names what is at fault (file, key, layer, value) so a
//! user can fix it without reading our code; the binary adds context with `anyhow`.

use std::path::{Path, PathBuf};

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, with the culprit named.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A configuration file is malformed or inconsistent.
    #[error("{}: {msg}", path.display())]
    Config { path: PathBuf, msg: String },
    /// A configuration is well formed but asks for something we do not implement.
    #[error("{}: unsupported: {msg}", path.display())]
    Unsupported { path: PathBuf, msg: String },
    /// A tensor the model needs is not in the checkpoint.
    #[error("tensor `{key}` is missing from {location}")]
    MissingTensor { key: String, location: String },
    /// A tensor is present but has the wrong shape for the configuration.
    #[error("tensor `{key}` in {location} has shape {found:?}, the config implies {expected:?}")]
    ShapeMismatch {
        key: String,
        location: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    /// The checkpoint holds tensors the configuration does not account for.
    #[error("{location} has tensors the config does not use: {keys}")]
    UnexpectedTensors { location: String, keys: String },
    /// A weights file is not valid safetensors (truncated, bad header, unknown dtype...).
    #[error("{}: not a valid safetensors file: {msg}", path.display())]
    Safetensors { path: PathBuf, msg: String },
    /// A GGUF file is malformed or uses something we do not read.
    #[error("{}: GGUF: {msg}", path.display())]
    Gguf { path: PathBuf, msg: String },
    /// The tokenizer could not be loaded or failed on an input.
    #[error("tokenizer {}: {msg}", path.display())]
    Tokenizer { path: PathBuf, msg: String },
    /// An input sequence does not fit the model.
    #[error("{what} has {len} tokens but the model accepts at most {max} positions")]
    TooLong {
        what: String,
        len: usize,
        max: usize,
    },
    /// A user-supplied value is out of range or inconsistent.
    #[error("{0}")]
    Invalid(String),
    /// Another error, with what was being done.
    #[error("{msg}: {source}")]
    Context {
        msg: String,
        #[source]
        source: Box<Error>,
    },
    /// A stop was requested by a signal; what was saved lets a rerun resume.
    #[error("stopped by signal {signal}: {saved}; run the same command again to resume")]
    Interrupted { signal: i32, saved: String },
    /// Nothing registered under this name.
    #[error("no {kind} named `{name}` is registered (known: {known})")]
    UnknownPlugin {
        kind: &'static str,
        name: String,
        known: String,
    },
}

impl Error {
    /// Wraps an I/O error with the path it happened on.
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    /// A malformed configuration file.
    pub fn config(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        Error::Config {
            path: path.as_ref().to_path_buf(),
            msg: msg.into(),
        }
    }

    /// A configuration asking for something we do not implement.
    pub fn unsupported(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        Error::Unsupported {
            path: path.as_ref().to_path_buf(),
            msg: msg.into(),
        }
    }

    /// An invalid user-supplied value.
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::Invalid(msg.into())
    }
}

/// Adds what was being done to an error, keeping it typed.
pub trait Context<T> {
    /// Wraps the error as `msg: error`.
    fn context(self, msg: impl Into<String>) -> Result<T>;
}

impl<T> Context<T> for Result<T> {
    fn context(self, msg: impl Into<String>) -> Result<T> {
        self.map_err(|e| Error::Context {
            msg: msg.into(),
            source: Box::new(e),
        })
    }
}
