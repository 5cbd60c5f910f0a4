//! Loading: built-in defaults, then the TOML file, then `IMAGE_CACHE_*` environment variables, then
//! validation. Any error names the key so the operator knows what to fix.

use super::Config;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use std::fmt;
use std::path::{Path, PathBuf};

/// Where the config came from; printed by `check-config` and logged at start-up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigSource {
    File(PathBuf),
    /// The default path does not exist: laptop defaults.
    BuiltIn,
}

impl fmt::Display for ConfigSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigSource::File(p) => write!(f, "{}", p.display()),
            ConfigSource::BuiltIn => write!(f, "built-in defaults (no config file)"),
        }
    }
}

/// A config problem: the key it concerns (dotted path, empty for the file as a whole) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "config: {}", self.message)
        } else {
            write!(f, "config key `{}`: {}", self.key, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// Environment variables that belong to the CLI, not to the config tree.
const CLI_ENV: &[&str] = &["config"];

/// Loads and validates the config.
///
/// `explicit` is the `--config` argument: a missing explicit file is an error, while a missing default
/// file means "run on laptop defaults".
pub fn load(
    explicit: Option<&Path>,
    default_path: &Path,
) -> Result<(Config, ConfigSource), ConfigError> {
    let (base, source) = match explicit {
        Some(path) => {
            if !path.is_file() {
                return Err(ConfigError::new(
                    "",
                    format!(
                        "config file {} does not exist or is not a file",
                        path.display()
                    ),
                ));
            }
            (
                Config::production_defaults(),
                ConfigSource::File(path.to_path_buf()),
            )
        }
        None if default_path.is_file() => (
            Config::production_defaults(),
            ConfigSource::File(default_path.to_path_buf()),
        ),
        None => (Config::laptop_defaults(), ConfigSource::BuiltIn),
    };

    let mut figment = Figment::from(Serialized::defaults(base));
    if let ConfigSource::File(path) = &source {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new("", format!("cannot read {}: {e}", path.display())))?;
        // Parse first with the toml crate so a syntax error reports its line and column.
        if let Err(e) = text.parse::<toml::Table>() {
            return Err(ConfigError::new(
                "",
                format!("{} is not valid TOML: {e}", path.display()),
            ));
        }
        figment = figment.merge(Toml::string(&text));
    }
    figment = figment.merge(Env::prefixed("IMAGE_CACHE_").split("__").ignore(CLI_ENV));

    let config: Config = figment.extract().map_err(from_figment)?;
    let config = super::validate::validate(config)?;
    Ok((config, source))
}

/// A config file's text on the production defaults, validated, without the environment: what `load`
/// does for a file, for callers that hold the text (the fuzz harness).
pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
    if let Err(e) = text.parse::<toml::Table>() {
        return Err(ConfigError::new("", format!("not valid TOML: {e}")));
    }
    let config: Config = Figment::from(Serialized::defaults(Config::production_defaults()))
        .merge(Toml::string(text))
        .extract()
        .map_err(from_figment)?;
    super::validate::validate(config)
}

fn from_figment(err: figment::Error) -> ConfigError {
    use figment::error::Kind;
    // Report the first error; figment chains the rest, and one fix at a time is clearer.
    let mut key = err.path.join(".");
    // figment's path sometimes already ends with the offending field (an unknown key in a table read
    // from a file) and sometimes not (a missing one): name it exactly once.
    let with_field = |key: &str, field: &str| {
        if key.is_empty() {
            field.to_string()
        } else if err.path.last().is_some_and(|last| last == field) {
            key.to_string()
        } else {
            format!("{key}.{field}")
        }
    };
    let message = match &err.kind {
        Kind::UnknownField(field, expected) => {
            key = with_field(&key, field);
            let expected: Vec<_> = expected.iter().map(|e| format!("`{e}`")).collect();
            format!(
                "unknown key (typo?); expected one of {}",
                expected.join(", ")
            )
        }
        Kind::MissingField(field) => {
            key = with_field(&key, field);
            "missing required key".to_string()
        }
        other => other.to_string(),
    };
    let origin = err
        .metadata
        .as_ref()
        .map(|m| {
            if m.name.contains("environment") {
                let var = format!("IMAGE_CACHE_{}", key.replace('.', "__").to_uppercase());
                format!(" (from environment variable {var})")
            } else {
                String::new()
            }
        })
        .unwrap_or_default();
    ConfigError::new(key, format!("{message}{origin}"))
}
