//! metal-api's v1 request signature (metal-stack/security `mac.go`): HMAC-SHA256 over
//! `X-Date ‖ method ‖ X-Data-Salt`, lowercase hex, sent as `Authorization: <auth type> <hex>`. Neither
//! path nor body is signed. Pure: the caller supplies the date and the salt.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The three headers for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    pub authorization: String,
    pub x_date: String,
    pub x_data_salt: String,
}

/// `date` must already be RFC 3339 in UTC with second precision (`2024-01-02T03:04:05Z`): the server
/// re-formats the date it parsed that way before recomputing, so any other spelling fails to verify.
pub fn sign(key: &[u8], auth_type: &str, method: &str, date: &str, salt: &str) -> Signed {
    let hex = hex::encode(mac(key, date, method, salt));
    Signed {
        authorization: format!("{auth_type} {hex}"),
        x_date: date.to_string(),
        x_data_salt: salt.to_string(),
    }
}

fn mac(key: &[u8], date: &str, method: &str, salt: &str) -> Vec<u8> {
    // new_from_slice only fails for fixed-size-key MACs; HMAC takes any key length.
    let Ok(mut m) = Hmac::<Sha256>::new_from_slice(key) else {
        return Vec::new();
    };
    m.update(date.as_bytes());
    m.update(method.as_bytes());
    m.update(salt.as_bytes());
    m.finalize().into_bytes().to_vec()
}

/// Whether `authorization` is a valid signature of (date, method, salt) under `key` (for the test stub
/// and for anyone embedding a verifier).
pub fn verify(
    key: &[u8],
    auth_type: &str,
    authorization: &str,
    method: &str,
    date: &str,
    salt: &str,
) -> bool {
    let Some((t, hex_mac)) = authorization.split_once(' ') else {
        return false;
    };
    let Ok(given) = hex::decode(hex_mac) else {
        return false;
    };
    let Ok(mut m) = Hmac::<Sha256>::new_from_slice(key) else {
        return false;
    };
    m.update(date.as_bytes());
    m.update(method.as_bytes());
    m.update(salt.as_bytes());
    t == auth_type && m.verify_slice(&given).is_ok()
}

/// 24 random ASCII letters, as metal-go sends.
pub fn salt() -> String {
    use rand::Rng;
    const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut rng = rand::rng();
    (0..24)
        .map(|_| char::from(LETTERS[rng.random_range(0..LETTERS.len())]))
        .collect()
}

/// Now, as metal-api wants it: RFC 3339, UTC, whole seconds.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worked_example_of_the_spec() {
        let s = sign(
            b"example-key",
            "Metal-View",
            "GET",
            "2024-01-02T03:04:05Z",
            "abcdefghijklmnopqrstuvwx",
        );
        assert_eq!(
            s.authorization,
            "Metal-View b636e92fb5f3c452884adf097f4d2e034d200c770332634121555954d15b4e67"
        );
        assert!(verify(
            b"example-key",
            "Metal-View",
            &s.authorization,
            "GET",
            "2024-01-02T03:04:05Z",
            "abcdefghijklmnopqrstuvwx"
        ));
        assert!(!verify(
            b"other-key",
            "Metal-View",
            &s.authorization,
            "GET",
            "2024-01-02T03:04:05Z",
            "abcdefghijklmnopqrstuvwx"
        ));
    }

    #[test]
    fn library_test_vector() {
        // mac_test.go: key {1,2,3}, salt bytes {1..6}, type "mytype"
        let salt: String = [1u8, 2, 3, 4, 5, 6]
            .iter()
            .map(|&b| char::from(b))
            .collect();
        let s = sign(&[1, 2, 3], "mytype", "GET", "2019-01-16T14:44:45Z", &salt);
        assert_eq!(
            s.authorization,
            "mytype f8d293a06bdde899a5bd1dd61b13842564650c717c742db02c4e1a888fc22501"
        );
    }

    #[test]
    fn salts_and_dates_have_the_wire_shape() {
        let s = salt();
        assert_eq!(s.len(), 24);
        assert!(s.bytes().all(|b| b.is_ascii_alphabetic()));
        assert_ne!(salt(), s);
        let d = now_rfc3339();
        assert_eq!(d.len(), 20, "{d}");
        assert!(d.ends_with('Z') && d.as_bytes()[10] == b'T');
    }
}
