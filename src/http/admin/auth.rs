//! The optional bearer token of `/admin/...`, read once from `http.admin_token_file`.
//!
//! Both sides are hashed before the constant-time comparison, so neither the token's content nor its
//! length leaks through timing.

use sha2::{Digest, Sha256};
use std::path::Path;
use subtle::ConstantTimeEq;

#[derive(Clone, Default)]
pub struct AdminToken(Option<[u8; 32]>);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "AdminToken(<redacted>)"
        } else {
            "AdminToken(none)"
        })
    }
}

fn hash(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

impl AdminToken {
    /// No token: `/admin` is open to whoever reaches the listener.
    pub fn none() -> Self {
        AdminToken(None)
    }

    pub fn new(token: &str) -> Result<Self, String> {
        let token = token.trim();
        if token.is_empty() {
            return Err(
                "the token file is empty; put a random string in it (e.g. `openssl rand -hex 32`)"
                    .into(),
            );
        }
        if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("the token must be one word without spaces or control characters".into());
        }
        Ok(AdminToken(Some(hash(token.as_bytes()))))
    }

    /// Reads the file; surrounding whitespace (a trailing newline) is not part of the token.
    pub fn from_file(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Self::new(&text)
    }

    pub fn is_set(&self) -> bool {
        self.0.is_some()
    }

    /// Whether a request with this `Authorization` header value may use `/admin`.
    pub fn allows(&self, authorization: Option<&[u8]>) -> bool {
        let Some(expected) = &self.0 else {
            return true;
        };
        let Some(value) = authorization else {
            return false;
        };
        let Some(presented) = value
            .strip_prefix(b"Bearer ")
            .or_else(|| value.strip_prefix(b"bearer "))
        else {
            return false;
        };
        bool::from(hash(presented.trim_ascii()).ct_eq(expected))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_bearer_token_passes() {
        let t = AdminToken::new("s3cret\n").unwrap();
        assert!(t.allows(Some(b"Bearer s3cret")));
        assert!(t.allows(Some(b"bearer s3cret")));
        for bad in [
            &b""[..],
            b"s3cret",
            b"Bearer",
            b"Bearer ",
            b"Bearer s3cre",
            b"Bearer s3cret2",
            b"Basic czNjcmV0",
            b"Bearer S3CRET",
        ] {
            assert!(!t.allows(Some(bad)), "{:?}", String::from_utf8_lossy(bad));
        }
        assert!(!t.allows(None));
        assert!(AdminToken::none().allows(None));
        assert_eq!(format!("{t:?}"), "AdminToken(<redacted>)");
    }

    #[test]
    fn empty_or_spaced_tokens_are_refused() {
        assert!(AdminToken::new(" \n").is_err());
        assert!(AdminToken::new("two words").is_err());
        let missing = AdminToken::from_file(Path::new("/nonexistent/token")).unwrap_err();
        assert!(missing.contains("/nonexistent/token"), "{missing}");
    }
}
