//! Store keys and digests. Pure: no I/O.
//!
//! Request paths never become filesystem paths (blobs are named by digest), but they do become origin URLs
//! and index keys, so every spelling of traversal, encoded separators and control bytes is rejected here,
//! once, before anything else sees the path.

use percent_encoding::percent_decode;

use std::fmt;

pub const MAX_PATH_BYTES: usize = 4096;
pub const MAX_SEGMENT_BYTES: usize = 255;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("path must start with `/`")]
    NotAbsolute,
    #[error("path is longer than {MAX_PATH_BYTES} bytes")]
    TooLong,
    #[error("path segment is longer than {MAX_SEGMENT_BYTES} bytes")]
    SegmentTooLong,
    #[error("empty path segment (`//` or trailing `/`)")]
    EmptySegment,
    #[error("`.` or `..` path segment")]
    DotSegment,
    #[error("encoded `/` or `\\` in path")]
    EncodedSeparator,
    #[error("backslash in path")]
    Backslash,
    #[error("control byte in path")]
    ControlByte,
    #[error("path is not valid UTF-8 after percent-decoding")]
    NotUtf8,
    #[error("malformed percent-encoding")]
    BadPercent,
    #[error("invalid domain name")]
    BadDomain,
    #[error("invalid sha256 digest")]
    BadDigest,
}

/// A validated file path: starts with `/`, decoded, no empty/dot segments, no control bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FilePath(String);

impl FilePath {
    /// Validates a request path as received on the wire (percent-encoded, query already removed).
    pub fn from_request(raw: &str) -> Result<Self, KeyError> {
        if !raw.starts_with('/') {
            return Err(KeyError::NotAbsolute);
        }
        if raw.len() > MAX_PATH_BYTES * 3 {
            return Err(KeyError::TooLong);
        }
        let mut out = String::with_capacity(raw.len());
        for segment in raw[1..].split('/') {
            let decoded = decode_segment(segment)?;
            out.push('/');
            out.push_str(&decoded);
        }
        if out.len() > MAX_PATH_BYTES {
            return Err(KeyError::TooLong);
        }
        Ok(FilePath(out))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The path re-encoded for an origin URL: every byte outside the unreserved set and a few safe
    /// sub-delimiters is percent-encoded, so the origin sees exactly the segments we validated.
    pub fn to_url_path(&self) -> String {
        use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
        const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
            .remove(b'-')
            .remove(b'.')
            .remove(b'_')
            .remove(b'~')
            .remove(b'+')
            .remove(b'@')
            .remove(b':')
            .remove(b'=')
            .remove(b',');
        let mut out = String::with_capacity(self.0.len() + 8);
        for segment in self.0[1..].split('/') {
            out.push('/');
            out.extend(utf8_percent_encode(segment, SEGMENT));
        }
        out
    }
}

fn decode_segment(segment: &str) -> Result<String, KeyError> {
    if segment.is_empty() {
        return Err(KeyError::EmptySegment);
    }
    check_percent_syntax(segment)?;
    let lower = segment.to_ascii_lowercase();
    if lower.contains("%2f") || lower.contains("%5c") {
        return Err(KeyError::EncodedSeparator);
    }
    let bytes: Vec<u8> = percent_decode(segment.as_bytes()).collect();
    if bytes.len() > MAX_SEGMENT_BYTES {
        return Err(KeyError::SegmentTooLong);
    }
    if bytes.iter().any(|&b| b < 0x20 || b == 0x7f) {
        return Err(KeyError::ControlByte);
    }
    if bytes.contains(&b'\\') {
        return Err(KeyError::Backslash);
    }
    let text = String::from_utf8(bytes).map_err(|_| KeyError::NotUtf8)?;
    if text.chars().any(char::is_control) {
        return Err(KeyError::ControlByte);
    }
    if text == "." || text == ".." {
        return Err(KeyError::DotSegment);
    }
    Ok(text)
}

fn check_percent_syntax(segment: &str) -> Result<(), KeyError> {
    let b = segment.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let ok =
                i + 2 < b.len() && b[i + 1].is_ascii_hexdigit() && b[i + 2].is_ascii_hexdigit();
            if !ok {
                return Err(KeyError::BadPercent);
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    Ok(())
}

/// The index key of a cached object.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key(String);

impl Key {
    /// `file:<domain><path>`, the key of a file served for an intercepted domain.
    pub fn file(domain: &str, path: &FilePath) -> Result<Self, KeyError> {
        let ok = !domain.is_empty()
            && domain.len() <= 253
            && domain
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._:".contains(&b));
        if !ok {
            return Err(KeyError::BadDomain);
        }
        Ok(Key(format!("file:{domain}{}", path.as_str())))
    }

    /// Re-validates a key read back from the index or given on the command line.
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        if let Some(rest) = text.strip_prefix("file:") {
            let slash = rest.find('/').ok_or(KeyError::NotAbsolute)?;
            let path = FilePath::from_request(&rest[slash..])?;
            return Key::file(&rest[..slash], &path);
        }
        if text.starts_with("oci:")
            && !text.chars().any(char::is_control)
            && text.len() <= MAX_PATH_BYTES
        {
            return Ok(Key(text.to_string()));
        }
        Err(KeyError::NotAbsolute)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A key no object ever has; `/health` looks it up to prove the index answers.
    pub fn health_probe() -> Self {
        Key("oci:image-cache/health-probe:none".to_string())
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A sha256 digest, the name of a blob on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

impl Digest {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Digest(bytes)
    }

    /// Accepts `sha256:<64 hex>` or bare lowercase hex.
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let hex_part = text.strip_prefix("sha256:").unwrap_or(text);
        if hex_part.len() != 64
            || !hex_part
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(KeyError::BadDigest);
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex_part, &mut out).map_err(|_| KeyError::BadDigest)?;
        Ok(Digest(out))
    }

    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// `blobs/sha256/<2 hex>/<64 hex>`, relative to the state dir.
    pub fn relative_path(&self) -> String {
        let h = self.hex();
        format!("blobs/sha256/{}/{}", &h[..2], h)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <String as serde::Deserialize>::deserialize(d)?;
        Digest::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_normal_paths() {
        let cases = [
            (
                "/metal-os/stable/debian/13/img.tar.lz4",
                "/metal-os/stable/debian/13/img.tar.lz4",
            ),
            ("/a%20b/c", "/a b/c"),
            ("/v1.2.3/metal-kernel", "/v1.2.3/metal-kernel"),
            ("/..a/b..", "/..a/b.."),
            ("/%E2%9C%93", "/\u{2713}"),
        ];
        for (raw, want) in cases {
            assert_eq!(
                FilePath::from_request(raw).map(|p| p.0),
                Ok(want.to_string()),
                "{raw}"
            );
        }
    }

    #[test]
    fn rejects_every_spelling_of_traversal_and_garbage() {
        let long_segment = format!("/{}", "a".repeat(256));
        let long_path = "/abc".repeat(1100);
        let cases: Vec<(&str, KeyError)> = vec![
            ("relative", KeyError::NotAbsolute),
            ("/a/../b", KeyError::DotSegment),
            ("/..", KeyError::DotSegment),
            ("/./a", KeyError::DotSegment),
            ("/%2e%2e/etc/passwd", KeyError::DotSegment),
            ("/%2E%2E/etc/passwd", KeyError::DotSegment),
            ("/.%2e/x", KeyError::DotSegment),
            ("/a%2fb", KeyError::EncodedSeparator),
            ("/a%2F..%2Fb", KeyError::EncodedSeparator),
            ("/a%5cb", KeyError::EncodedSeparator),
            ("/a\\..\\b", KeyError::Backslash),
            ("/a%00b", KeyError::ControlByte),
            ("/a%0ab", KeyError::ControlByte),
            ("/a%7fb", KeyError::ControlByte),
            ("/a//b", KeyError::EmptySegment),
            ("/a/", KeyError::EmptySegment),
            ("/", KeyError::EmptySegment),
            ("/a%zz", KeyError::BadPercent),
            ("/a%4", KeyError::BadPercent),
            ("/%ff%fe", KeyError::NotUtf8),
            (&long_segment, KeyError::SegmentTooLong),
            (&long_path, KeyError::TooLong),
        ];
        for (raw, want) in cases {
            assert_eq!(FilePath::from_request(raw), Err(want.clone()), "{raw}");
        }
    }

    #[test]
    fn url_path_round_trips() {
        for raw in [
            "/a%20b/c",
            "/x/y.tar.lz4",
            "/%E2%9C%93/%3F%23",
            "/a+b@c:d=e,f",
        ] {
            let p = FilePath::from_request(raw).unwrap();
            let again = FilePath::from_request(&p.to_url_path()).unwrap();
            assert_eq!(p, again, "{raw}");
            assert!(!p.to_url_path().contains('?') && !p.to_url_path().contains('#'));
        }
    }

    #[test]
    fn keys_and_digests() {
        let p = FilePath::from_request("/a/b").unwrap();
        let k = Key::file("images.test", &p).unwrap();
        assert_eq!(k.as_str(), "file:images.test/a/b");
        assert_eq!(Key::parse(k.as_str()), Ok(k));
        assert!(Key::file("Bad Host", &p).is_err());
        assert!(Key::parse("file:x/../y").is_err());
        assert!(Key::parse("nonsense").is_err());

        let hex = "a".repeat(64);
        let d = Digest::parse(&format!("sha256:{hex}")).unwrap();
        assert_eq!(d.hex(), hex);
        assert_eq!(d.relative_path(), format!("blobs/sha256/aa/{hex}"));
        for bad in [
            "",
            "sha256:",
            &"A".repeat(64),
            &"a".repeat(63),
            &format!("md5:{hex}"),
        ] {
            assert!(Digest::parse(bad).is_err(), "{bad}");
        }
    }
}
