//! What a command of the CLI can fail with: the service's own errors, and those only the CLI has (a server that
//! answers badly, a key or image reference the operator mistyped, a job the server ran and lost). Kept apart
//! from `app::AppError` so the service never knows its command line.

use super::AdminClientError;
use crate::app::AppError;
use crate::config::ConfigError;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    App(#[from] AppError),
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Admin(#[from] AdminClientError),
    #[error("{key:?} is not a store key ({reason}); `image-cache store ls` lists them")]
    BadKey {
        key: String,
        reason: crate::store::KeyError,
    },
    #[error("{image:?} is not an image reference ({reason}); write [registry/]name[:tag][@digest]")]
    BadImage { image: String, reason: String },
    /// The server ran a job it was asked to run, and the job failed.
    #[error("{job} failed on the server: {reason}")]
    JobFailed { job: &'static str, reason: String },
    /// A blocking task of the CLI ended without an answer.
    #[error("{what} failed: {reason}")]
    Task { what: &'static str, reason: String },
    #[error("cannot print the effective config: {0}")]
    PrintConfig(#[from] toml::ser::Error),
}

impl CliError {
    /// 2 for anything the operator fixes in the config or on the command line, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Config(_) => 2,
            CliError::App(e) => e.exit_code(),
            _ => 1,
        }
    }
}

impl From<crate::store::StoreError> for CliError {
    fn from(e: crate::store::StoreError) -> Self {
        CliError::App(e.into())
    }
}

impl From<crate::upstream::tls::TlsSetupError> for CliError {
    fn from(e: crate::upstream::tls::TlsSetupError) -> Self {
        CliError::App(e.into())
    }
}
