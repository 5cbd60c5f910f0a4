//! The server name from a TLS ClientHello, with tls-parser doing the parsing. Pure: bytes in, verdict
//! out. A ClientHello split over several handshake records (large post-quantum key shares can do that) is
//! reassembled first; only the 5-byte record framing is read by hand.

use tls_parser::{
    TlsExtension, TlsMessage, TlsMessageHandshake, parse_tls_client_hello_extensions,
    parse_tls_plaintext,
};

/// Bytes we read at most before giving up on finding a name.
pub const MAX_HELLO: usize = 16 * 1024;

#[derive(Debug, PartialEq, Eq)]
pub enum Sni {
    /// Read more bytes and ask again.
    NeedMore,
    /// The host name, lowercase, without a trailing dot.
    Found(String),
    /// A ClientHello without a usable server name.
    Missing,
    /// Not a TLS ClientHello at all (or larger than `MAX_HELLO`).
    NotTls,
}

const HANDSHAKE: u8 = 0x16;

pub fn server_name(buf: &[u8]) -> Sni {
    let hello = match reassemble(buf) {
        Ok(h) => h,
        Err(verdict) => return verdict,
    };
    let record = match parse_tls_plaintext(&hello) {
        Ok((_, record)) => record,
        Err(tls_parser::Err::Incomplete(_)) => return more_or_give_up(buf),
        Err(_) => return Sni::NotTls,
    };
    let Some(TlsMessage::Handshake(TlsMessageHandshake::ClientHello(ch))) = record.msg.first()
    else {
        return Sni::NotTls;
    };
    let Some(ext) = ch.ext else {
        return Sni::Missing;
    };
    let Ok((_, extensions)) = parse_tls_client_hello_extensions(ext) else {
        return Sni::NotTls;
    };
    for e in extensions {
        if let TlsExtension::SNI(names) = e {
            // Type 0 is host_name, the only type ever defined.
            let host = names.iter().find(|(t, _)| t.0 == 0).map(|(_, n)| *n);
            return match host.and_then(|n| std::str::from_utf8(n).ok()) {
                Some(name) if valid_host(name) => {
                    Sni::Found(name.trim_end_matches('.').to_ascii_lowercase())
                }
                _ => Sni::Missing,
            };
        }
    }
    Sni::Missing
}

fn more_or_give_up(buf: &[u8]) -> Sni {
    if buf.len() >= MAX_HELLO {
        Sni::NotTls
    } else {
        Sni::NeedMore
    }
}

/// One handshake record holding the whole first handshake message, built from as many records as it
/// spans. `Err` is the verdict when that cannot be done (yet).
fn reassemble(buf: &[u8]) -> Result<Vec<u8>, Sni> {
    let mut payload = Vec::new();
    let mut version = [0u8; 2];
    let mut rest = buf;
    loop {
        if rest.len() < 5 {
            return Err(more_or_give_up(buf));
        }
        if rest[0] != HANDSHAKE {
            return Err(Sni::NotTls);
        }
        if payload.is_empty() {
            version = [rest[1], rest[2]];
        }
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        if len == 0 || payload.len() + len > MAX_HELLO {
            return Err(Sni::NotTls);
        }
        if rest.len() < 5 + len {
            return Err(more_or_give_up(buf));
        }
        payload.extend_from_slice(&rest[5..5 + len]);
        rest = &rest[5 + len..];
        // Handshake header: type (1), length (3).
        if payload.len() >= 4 {
            let need = 4
                + (usize::from(payload[1]) << 16
                    | usize::from(payload[2]) << 8
                    | usize::from(payload[3]));
            if need > MAX_HELLO {
                return Err(Sni::NotTls);
            }
            if payload.len() >= need {
                payload.truncate(need);
                let mut record = Vec::with_capacity(5 + need);
                record.push(HANDSHAKE);
                record.extend_from_slice(&version);
                let n = u16::try_from(need).map_err(|_| Sni::NotTls)?;
                record.extend_from_slice(&n.to_be_bytes());
                record.extend_from_slice(&payload);
                return Ok(record);
            }
        }
    }
}

/// A DNS host name: letters, digits, hyphens, underscores and dots, 1..=253 bytes.
fn valid_host(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real ClientHello for `name`, made by rustls.
    fn client_hello(name: &str) -> Vec<u8> {
        use std::io::Write;
        let roots = rustls::RootCertStore::empty();
        let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let server = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
        let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(config), server).unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        let _ = out.flush();
        out
    }

    #[test]
    fn finds_the_name_in_a_real_hello() {
        let hello = client_hello("Images.Metal-Stack.io");
        assert_eq!(
            server_name(&hello),
            Sni::Found("images.metal-stack.io".into())
        );
    }

    #[test]
    fn asks_for_more_until_the_hello_is_complete() {
        let hello = client_hello("github.com");
        for cut in [0, 1, 4, 5, 40, hello.len() - 1] {
            assert_eq!(server_name(&hello[..cut]), Sni::NeedMore, "cut at {cut}");
        }
    }

    #[test]
    fn reassembles_a_hello_split_over_records() {
        let hello = client_hello("github.com");
        let body = &hello[5..];
        let (a, b) = body.split_at(body.len() / 3);
        let mut split = Vec::new();
        for part in [a, b] {
            split.extend_from_slice(&[0x16, 0x03, 0x01]);
            split.extend_from_slice(&(part.len() as u16).to_be_bytes());
            split.extend_from_slice(part);
        }
        assert_eq!(server_name(&split), Sni::Found("github.com".into()));
        assert_eq!(server_name(&split[..split.len() - 1]), Sni::NeedMore);
    }

    #[test]
    fn rejects_what_is_not_a_hello() {
        assert_eq!(
            server_name(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
            Sni::NotTls
        );
        assert_eq!(server_name(&[0x16, 3, 1, 0, 0]), Sni::NotTls);
        // a handshake record claiming more than we will ever buffer
        assert_eq!(server_name(&[0x16, 3, 1, 0x40, 0x01]), Sni::NotTls);
        let mut huge = vec![0x16, 3, 1, 0x10, 0x00, 1, 0xff, 0xff, 0xff];
        huge.resize(5 + 0x1000, 0);
        assert_eq!(server_name(&huge), Sni::NotTls);
    }

    #[test]
    fn survives_arbitrary_bytes() {
        // A cheap fuzz: every prefix and every single-byte corruption of a real hello must return a verdict
        // (never panic), and corruptions never yield a name that was not in the hello.
        let hello = client_hello("github.com");
        for cut in 0..hello.len() {
            let _ = server_name(&hello[..cut]);
        }
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..4000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let mut h = hello.clone();
            let i = (seed as usize) % h.len();
            h[i] = (seed >> 32) as u8;
            if let Sni::Found(name) = server_name(&h) {
                assert!(valid_host(&name));
            }
        }
    }
}
