//! Human-friendly units used in the config file: byte sizes (`100G`, `50GiB`) and durations (`30s`, `7d`).
//!
//! Both parse once at load time and print back in a form that parses again, so `check-config` output is a
//! valid config file.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::time::Duration;

/// A size in bytes. Decimal suffixes are powers of ten (`G` = 10^9, as metal-image-cache-sync reads them),
/// binary suffixes (`GiB`) powers of two.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn parse(s: &str) -> Result<Self, String> {
        let trimmed = s.trim();
        parse_size::Config::new()
            .with_decimal()
            .parse_size(trimmed)
            .map(ByteSize)
            .map_err(|e| {
                format!("`{trimmed}` is not a size ({e}); use e.g. `100G`, `50GiB`, `512M`")
            })
    }

    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u64, &str); 8] = [
            (1 << 40, "TiB"),
            (1_000_000_000_000, "T"),
            (1 << 30, "GiB"),
            (1_000_000_000, "G"),
            (1 << 20, "MiB"),
            (1_000_000, "M"),
            (1 << 10, "KiB"),
            (1_000, "K"),
        ];
        let n = self.0;
        if n == 0 {
            return write!(f, "0");
        }
        // Prefer the unit that divides exactly and leaves the smallest number.
        let best = UNITS
            .iter()
            .filter(|(unit, _)| n.is_multiple_of(*unit))
            .min_by_key(|(unit, _)| n / unit);
        match best {
            Some((unit, suffix)) => write!(f, "{}{}", n / unit, suffix),
            None => write!(f, "{n}"),
        }
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

/// A unit written either as a bare number or as text (`100G`, `20%`).
#[derive(Deserialize)]
#[serde(untagged)]
enum NumberOrText {
    Int(u64),
    Str(String),
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match NumberOrText::deserialize(d)? {
            NumberOrText::Int(n) => Ok(ByteSize(n)),
            NumberOrText::Str(s) => ByteSize::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

/// A duration written as `30s`, `10m`, `2h`, `7d` (anything humantime reads, e.g. `1h 30m`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Span(pub Duration);

impl Span {
    pub fn parse(s: &str) -> Result<Self, String> {
        let trimmed = s.trim();
        humantime::parse_duration(trimmed).map(Span).map_err(|e| {
            format!("`{trimmed}` is not a duration ({e}); use e.g. `30s`, `10m`, `7d`")
        })
    }

    pub fn get(self) -> Duration {
        self.0
    }

    pub fn from_secs(secs: u64) -> Self {
        Span(Duration::from_secs(secs))
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_zero() {
            return write!(f, "0s");
        }
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl Serialize for Span {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Span::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// The part of a registry's pull budget kept for live pulls: `20%` of the limit it announces, or a
/// number of requests (`10`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reserve {
    Percent(u8),
    Requests(u64),
}

impl Reserve {
    pub fn parse(s: &str) -> Result<Self, String> {
        let trimmed = s.trim();
        let bad = || {
            format!(
                "`{trimmed}` is not a reserve; use a share of the limit (`20%`) or a number of requests (`10`)"
            )
        };
        match trimmed.strip_suffix('%') {
            Some(p) => match p.trim().parse::<u8>() {
                Ok(p) if p <= 100 => Ok(Reserve::Percent(p)),
                _ => Err(bad()),
            },
            None => trimmed.parse().map(Reserve::Requests).map_err(|_| bad()),
        }
    }

    /// The requests kept back out of `limit`.
    pub fn of(self, limit: u64) -> u64 {
        match self {
            Reserve::Percent(p) => (limit.saturating_mul(u64::from(p))).div_ceil(100),
            Reserve::Requests(n) => n,
        }
    }
}

impl fmt::Display for Reserve {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reserve::Percent(p) => write!(f, "{p}%"),
            Reserve::Requests(n) => write!(f, "{n}"),
        }
    }
}

impl Serialize for Reserve {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Reserve {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match NumberOrText::deserialize(d)? {
            NumberOrText::Int(n) => Ok(Reserve::Requests(n)),
            NumberOrText::Str(s) => Reserve::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserves_parse_as_a_share_or_a_count() {
        assert_eq!(Reserve::parse("20%"), Ok(Reserve::Percent(20)));
        assert_eq!(Reserve::parse(" 0 % "), Ok(Reserve::Percent(0)));
        assert_eq!(Reserve::parse("15"), Ok(Reserve::Requests(15)));
        for bad in ["101%", "-1", "1.5%", "a lot", ""] {
            assert!(Reserve::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Reserve::Percent(20).of(100), 20);
        assert_eq!(
            Reserve::Percent(20).of(11),
            3,
            "rounded up: the reserve is never shaved"
        );
        assert_eq!(Reserve::Requests(5).of(100), 5);
        for r in [Reserve::Percent(20), Reserve::Requests(7)] {
            assert_eq!(Reserve::parse(&r.to_string()), Ok(r));
        }
    }

    #[test]
    fn sizes_parse_decimal_and_binary() {
        let cases = [
            ("100G", 100_000_000_000),
            ("50GiB", 50 * (1 << 30)),
            ("512M", 512_000_000),
            ("1KiB", 1024),
            ("12345", 12345),
            (" 10G ", 10_000_000_000),
        ];
        for (text, want) in cases {
            assert_eq!(ByteSize::parse(text), Ok(ByteSize(want)), "{text}");
        }
        for bad in ["", "G", "ten", "-1G", "1.5.5G"] {
            assert!(ByteSize::parse(bad).is_err(), "{bad} should not parse");
        }
    }

    #[test]
    fn sizes_print_back_to_the_same_value() {
        for n in [
            0,
            1,
            999,
            1000,
            1024,
            100_000_000_000,
            50 * (1 << 30),
            1_500_000,
            123_456_789,
        ] {
            let printed = ByteSize(n).to_string();
            assert_eq!(ByteSize::parse(&printed), Ok(ByteSize(n)), "{printed}");
        }
        assert_eq!(ByteSize(100_000_000_000).to_string(), "100G");
        assert_eq!(ByteSize(50 * (1 << 30)).to_string(), "50GiB");
    }

    #[test]
    fn spans_parse_and_print_back() {
        let cases = [
            ("30s", 30),
            ("10m", 600),
            ("2h", 7200),
            ("7d", 7 * 86400),
            ("0s", 0),
        ];
        for (text, secs) in cases {
            let span = Span::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(span.get(), Duration::from_secs(secs));
            assert_eq!(Span::parse(&span.to_string()), Ok(span));
        }
        for bad in ["", "10", "ten minutes", "-5s"] {
            assert!(Span::parse(bad).is_err(), "{bad} should not parse");
        }
    }
}
