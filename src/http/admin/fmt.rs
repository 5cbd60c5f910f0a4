//! Numbers as an operator reads them: binary byte units, short durations, percentages, and HTML escaping.
//! Pure; the page and the CLI's table use the same words.

/// `1536` → `1.5 KiB`; plain bytes below 1 KiB.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    let digits = if v < 10.0 { 1 } else { 0 };
    format!("{v:.digits$} {}", UNITS[unit])
}

/// `3725` → `1h 2m`, `75` → `1m 15s`, `9` → `9s`.
pub fn duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

/// A ratio as a percentage with one decimal, or `–` when nothing was counted.
pub fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        return "–".to_string();
    }
    format!("{:.1}%", part as f64 * 100.0 / whole as f64)
}

/// Unix seconds as an HTTP date (UTC), `never` for 0.
pub fn when(unix: u64) -> String {
    if unix == 0 {
        return "never".to_string();
    }
    httpdate::fmt_http_date(std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix))
}

/// Escapes text for HTML element content and quoted attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_an_operator_reads() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(100 << 30), "100 GiB");
        assert_eq!(bytes(u64::MAX), "16 EiB");
        assert_eq!(duration(9), "9s");
        assert_eq!(duration(75), "1m 15s");
        assert_eq!(duration(3725), "1h 2m");
        assert_eq!(duration(90000), "1d 1h");
        assert_eq!(percent(1, 3), "33.3%");
        assert_eq!(percent(0, 0), "–");
        assert_eq!(when(0), "never");
        assert_eq!(when(784111777), "Sun, 06 Nov 1994 08:49:37 GMT");
    }

    #[test]
    fn escapes_markup() {
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
