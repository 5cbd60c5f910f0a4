//! The admin API's query parameters: typed, bounded, and strict (an unknown or repeated parameter is a
//! 400, not silently ignored, so a typo like `?prefx=` does not list everything). Pure.

use serde::Deserialize;

/// Longest key, prefix or cursor accepted: index keys are at most a path's length plus a short prefix.
pub const MAX_TEXT: usize = 8192;
pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 1000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectsQuery {
    pub prefix: String,
    pub cursor: Option<String>,
    pub limit: usize,
    pub pinned: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawObjects {
    #[serde(default)]
    prefix: String,
    cursor: Option<String>,
    limit: Option<String>,
    pinned: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKey {
    key: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRun {
    dry_run: Option<String>,
    wait: Option<String>,
}

/// `POST /admin/sync` and `/admin/store/verify`: run in the background, or wait for the outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RunQuery {
    pub dry_run: bool,
    pub wait: bool,
}

fn text(name: &str, v: String) -> Result<String, String> {
    if v.len() > MAX_TEXT {
        return Err(format!("`{name}` is longer than {MAX_TEXT} bytes"));
    }
    if v.chars().any(char::is_control) {
        return Err(format!("`{name}` contains control characters"));
    }
    Ok(v)
}

/// `true|1` and `false|0`; an empty value (`?wait`) means true.
fn flag(name: &str, v: Option<String>) -> Result<Option<bool>, String> {
    match v.as_deref() {
        None => Ok(None),
        Some("" | "true" | "1") => Ok(Some(true)),
        Some("false" | "0") => Ok(Some(false)),
        Some(_) => Err(format!("`{name}` must be true or false")),
    }
}

fn decode<'a, T: Deserialize<'a>>(query: &'a str) -> Result<T, String> {
    serde_urlencoded::from_str(query).map_err(|e| format!("bad query string: {e}"))
}

pub fn objects(query: &str) -> Result<ObjectsQuery, String> {
    let raw: RawObjects = decode(query)?;
    let limit = match raw.limit {
        None => DEFAULT_LIMIT,
        Some(l) => match l.parse::<usize>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
            _ => return Err(format!("`limit` must be a number from 1 to {MAX_LIMIT}")),
        },
    };
    Ok(ObjectsQuery {
        prefix: text("prefix", raw.prefix)?,
        cursor: raw.cursor.map(|c| text("cursor", c)).transpose()?,
        limit,
        pinned: flag("pinned", raw.pinned)?,
    })
}

/// `?key=`: the index key an action is about.
pub fn key(query: &str) -> Result<String, String> {
    let raw: RawKey = decode(query)?;
    text("key", raw.key)
}

pub fn run(query: &str) -> Result<RunQuery, String> {
    let raw: RawRun = decode(query)?;
    Ok(RunQuery {
        dry_run: flag("dry_run", raw.dry_run)?.unwrap_or(false),
        wait: flag("wait", raw.wait)?.unwrap_or(false),
    })
}

/// `POST /admin/registry/prefetch`: `image` (repeatable) and `wait`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PrefetchQuery {
    pub images: Vec<String>,
    pub wait: bool,
}

/// How many images one request may name.
const MAX_IMAGES: usize = 100;

pub fn prefetch(query: &str) -> Result<PrefetchQuery, String> {
    let mut q = PrefetchQuery::default();
    let mut wait = None;
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        match k.as_ref() {
            "image" => {
                if q.images.len() == MAX_IMAGES {
                    return Err(format!("at most {MAX_IMAGES} images per request"));
                }
                q.images.push(text("image", v.into_owned())?);
            }
            "wait" if wait.is_none() => wait = flag("wait", Some(v.into_owned()))?,
            "wait" => return Err("`wait` given twice".into()),
            other => return Err(format!("unknown parameter `{other}` (image, wait)")),
        }
    }
    q.wait = wait.unwrap_or(false);
    Ok(q)
}

/// Routes that take no parameters still refuse them, so a misspelt action is not taken as a different one.
pub fn none(query: &str) -> Result<(), String> {
    if query.is_empty() {
        Ok(())
    } else {
        Err("this route takes no query parameters".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefetch_images_and_wait() {
        assert_eq!(prefetch("").unwrap(), PrefetchQuery::default());
        let q = prefetch("image=nginx%3A1.27&image=ghcr.io%2Forg%2Fapp%3A1&wait").unwrap();
        assert_eq!(q.images, ["nginx:1.27", "ghcr.io/org/app:1"]);
        assert!(q.wait);
        assert!(prefetch("wait=1&wait=0").is_err());
        assert!(prefetch("images=x").is_err());
        assert!(prefetch("image=a%0Ab").is_err());
        let many = vec!["image=a"; MAX_IMAGES + 1].join("&");
        assert!(prefetch(&many).is_err());
    }

    #[test]
    fn objects_defaults_bounds_and_strictness() {
        assert_eq!(
            objects("").unwrap(),
            ObjectsQuery {
                prefix: String::new(),
                cursor: None,
                limit: DEFAULT_LIMIT,
                pinned: None
            }
        );
        let q =
            objects("prefix=file%3Aimages.test%2F&limit=5&cursor=file%3Ab&pinned=false").unwrap();
        assert_eq!(q.prefix, "file:images.test/");
        assert_eq!(q.cursor.as_deref(), Some("file:b"));
        assert_eq!((q.limit, q.pinned), (5, Some(false)));
        for bad in [
            "limit=0",
            "limit=1001",
            "limit=-1",
            "limit=ten",
            "limit=99999999999999999999999",
            "prefx=a",
            "prefix=a&prefix=b",
            "prefix=%00",
            "pinned=maybe",
            "cursor=%0d%0a",
        ] {
            assert!(objects(bad).is_err(), "{bad} was accepted");
        }
        assert!(objects(&format!("prefix={}", "a".repeat(MAX_TEXT + 1))).is_err());
    }

    #[test]
    fn key_run_and_none() {
        assert_eq!(key("key=oci%3Ar%2Fa%3At").unwrap(), "oci:r/a:t");
        assert!(key("").is_err());
        assert!(key("key=a&other=b").is_err());
        assert_eq!(run("").unwrap(), RunQuery::default());
        assert_eq!(
            run("dry_run&wait=1").unwrap(),
            RunQuery {
                dry_run: true,
                wait: true
            }
        );
        assert!(run("wait=yes").is_err());
        assert!(none("").is_ok());
        assert!(none("force=1").is_err());
    }
}
