//! The fuzz driver: feeds every target of `image_cache::fuzz` with mutated and random inputs for a time
//! budget, on stable Rust (no instrumentation: mutations of a seed corpus of real inputs, a dictionary of
//! the tokens each parser cares about, and random bytes). A panic is a finding: the input is written to
//! `fuzz/crashes/` and the run exits 1. Replay one with `--replay FILE --target NAME`.
//!
//!     cargo run --release --example fuzz -- --seconds 60            # every target, 60 s each (CI)
//!     cargo run --release --example fuzz -- --seconds 3600 dns sni  # an hour each for two targets
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test tool: a broken setup should panic loudly

use image_cache::fuzz;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::time::{Duration, Instant};

struct Args {
    seconds: u64,
    seed: u64,
    targets: Vec<String>,
    replay: Option<PathBuf>,
}

fn args() -> Args {
    let mut a = Args {
        seconds: 60,
        seed: rand::random(),
        targets: Vec::new(),
        replay: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--seconds" => a.seconds = it.next().and_then(|s| s.parse().ok()).expect("--seconds N"),
            "--seed" => a.seed = it.next().and_then(|s| s.parse().ok()).expect("--seed N"),
            "--replay" => a.replay = it.next().map(PathBuf::from),
            "--target" => a.targets.push(it.next().expect("--target NAME")),
            "all" => a
                .targets
                .extend(fuzz::TARGETS.iter().map(|t| t.to_string())),
            t if fuzz::TARGETS.contains(&t) => a.targets.push(t.to_string()),
            other => {
                eprintln!("unknown argument {other:?}; targets: {:?}", fuzz::TARGETS);
                std::process::exit(2);
            }
        }
    }
    if a.targets.is_empty() {
        a.targets = fuzz::TARGETS.iter().map(|t| t.to_string()).collect();
    }
    a
}

/// A target with its state.
enum Target {
    Dns(Box<fuzz::Dns>),
    Plain(fn(&[u8])),
}

impl Target {
    fn new(name: &str) -> Target {
        match name {
            "dns" => Target::Dns(Box::new(fuzz::Dns::new().expect("the DNS target builds"))),
            "sni" => Target::Plain(fuzz::sni),
            "file-path" => Target::Plain(fuzz::file_path),
            "oci-path" => Target::Plain(fuzz::oci_path),
            "answer-headers" => Target::Plain(fuzz::answer_headers),
            "config" => Target::Plain(fuzz::config),
            other => panic!("no target {other}"),
        }
    }

    fn run(&mut self, data: &[u8]) {
        match self {
            Target::Dns(d) => d.packet(data),
            Target::Plain(f) => f(data),
        }
    }
}

fn dns_seeds() -> Vec<Vec<u8>> {
    use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
    use hickory_proto::rr::{Name, RecordType};
    let mut out = Vec::new();
    for (name, rtype, edns) in [
        ("files.test.", RecordType::A, false),
        ("files.test.", RecordType::AAAA, true),
        ("sub.files.test.", RecordType::A, true),
        ("files.test.", RecordType::SOA, false),
        ("files.test.", RecordType::ANY, true),
        ("other.example.", RecordType::A, false),
        ("other.example.", RecordType::TXT, true),
        (
            "a.very.long.name.with.many.labels.files.test.",
            RecordType::A,
            true,
        ),
    ] {
        let mut m = Message::new(0x1234, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
        if edns {
            let mut e = Edns::new();
            e.set_max_payload(1232);
            m.set_edns(e);
        }
        out.push(m.to_vec().unwrap());
    }
    out
}

fn sni_seeds() -> Vec<Vec<u8>> {
    use rustls::pki_types::ServerName;
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    let config = std::sync::Arc::new(config);
    [
        "files.test",
        "images.metal-stack.io",
        "a.b.c.d.example",
        "x",
    ]
    .iter()
    .map(|name| {
        let server = ServerName::try_from(name.to_string()).unwrap();
        let mut conn =
            rustls::ClientConnection::new(std::sync::Arc::clone(&config), server).unwrap();
        let mut hello = Vec::new();
        conn.write_tls(&mut hello).unwrap();
        hello
    })
    .collect()
}

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let strs = |v: &[&str]| v.iter().map(|s| s.as_bytes().to_vec()).collect::<Vec<_>>();
    match target {
        "dns" => dns_seeds(),
        "sni" => sni_seeds(),
        "file-path" => strs(&[
            "/metal-os/stable/debian/13/img.tar.lz4",
            "/a/b%20c/d",
            "/%c3%bcn%c3%af/c%C3%B8de",
            "/..",
            "/a/%2e%2e/b",
            "/a//b",
            "/a/b%2Fc",
            "/a\\b",
            "/a%00b",
            "/~user/+plus+/;semi;/=eq",
        ]),
        "oci-path" => strs(&[
            "/v2/",
            "/v2/library/nginx/manifests/1.27?ns=docker.io",
            "/v2/team/app/blobs/sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef?ns=ghcr.io",
            "/v2/a/b/c/d/tags/list?n=10&last=x",
            "/v2/ghcr.io/org/app/manifests/v1.2.3",
            "/v2/registry.test:5000/team/app/blobs/sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "/v2/UPPER/manifests/x",
            "/v2/a..b/manifests/1",
            "/v2/a/manifests/sha512:00",
            "/v2/library/nginx/manifests/latest?ns=docker.io:443",
            "/v2/library/nginx/manifests/latest?ns=DOCKER.IO%3A0443",
            "/v2/library/nginx/manifests/latest?ns=quay.io:%2B443",
            "/v2/docker.io:443/library/nginx/manifests/latest",
            "/v2/quay.io:5000/team/app/tags/list",
        ]),
        "answer-headers" => strs(&[
            "application/vnd.oci.image.index.v1+json\n",
            "application/vnd.docker.distribution.manifest.v2+json; charset=utf-8\nidentity",
            "application/json\ngzip",
            "text/html; charset=utf-8\n",
            "image/svg+xml\nbr",
            "application/vnd.docker.distribution.manifest.v1+prettyjws\n IDENTITY ",
        ]),
        "config" => vec![
            include_bytes!("../examples/partition-node.toml").to_vec(),
            include_bytes!("../examples/registry-mirror.toml").to_vec(),
            b"[nodes]\nself = \"10.0.0.1\"\n".to_vec(),
            b"[cache]\nmax_size = \"10GiB\"\n[nodes]\nself = \"10.0.0.1\"\npeers = [\"10.0.0.2\"]\n".to_vec(),
        ],
        _ => Vec::new(),
    }
}

fn dictionary(target: &str) -> Vec<&'static [u8]> {
    match target {
        "file-path" | "oci-path" => vec![
            b"/",
            b"..",
            b".",
            b"%2e",
            b"%2E%2e",
            b"%2f",
            b"%5c",
            b"%00",
            b"%",
            b"%zz",
            b"\\",
            b"\0",
            b"?",
            b"#",
            b"/v2/",
            b"/manifests/",
            b"/blobs/",
            b"/tags/list",
            b"sha256:",
            b"ns=",
            b"%c3%28",
            b"\xff",
            b":",
            b"@",
            b"__",
            b"--",
            b":443",
            b":0443",
            b":+443",
            b"%3A",
            b"%2B",
        ],
        "answer-headers" => vec![
            b"application/",
            b"vnd.",
            b"+json",
            b"+prettyjws",
            b"+xml",
            b"text/html",
            b";",
            b"\n",
            b" ",
            b"identity",
            b"gzip",
            b"\xff",
        ],
        "config" => vec![
            b"[",
            b"]",
            b"=",
            b"\"",
            b"\n",
            b"[[domains]]\nname = \"x\"\n",
            b"listen = [\"0.0.0.0:53\"]",
            b"max_size = \"-1\"",
            b"\"1e999\"",
            b"schedule = \"* * *\"",
            b"peers = [\"::\"]",
            b"[registry.upstreams]\n\"a\" = \"ftp://x\"\n",
            b"\xff",
        ],
        _ => vec![
            b"\0",
            b"\xff",
            b"\xc0\x0c",
            b"\x00\x29",
            b"\x16\x03\x01",
            b"\x00\x00",
        ],
    }
}

fn mutate(rng: &mut StdRng, corpus: &[Vec<u8>], dict: &[&[u8]]) -> Vec<u8> {
    let mut data = if corpus.is_empty() || rng.random_ratio(1, 20) {
        (0..rng.random_range(0..512))
            .map(|_| rng.random())
            .collect()
    } else {
        corpus[rng.random_range(0..corpus.len())].clone()
    };
    for _ in 0..rng.random_range(1..8) {
        let len = data.len();
        match rng.random_range(0..9) {
            0 if len > 0 => {
                let i = rng.random_range(0..len);
                data[i] ^= 1 << rng.random_range(0..8);
            }
            1 if len > 0 => {
                let i = rng.random_range(0..len);
                data[i] = rng.random();
            }
            2 => {
                let i = rng.random_range(0..=len);
                let n = rng.random_range(1..16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.random()).collect();
                data.splice(i..i, bytes);
            }
            3 if len > 0 => {
                let a = rng.random_range(0..len);
                let b = rng.random_range(a..=len.min(a + 64));
                data.drain(a..b);
            }
            4 if len > 0 => {
                let a = rng.random_range(0..len);
                let b = rng.random_range(a..=len.min(a + 64));
                let piece = data[a..b].to_vec();
                let i = rng.random_range(0..=data.len());
                data.splice(i..i, piece);
            }
            5 if !dict.is_empty() => {
                let token = dict[rng.random_range(0..dict.len())];
                let i = rng.random_range(0..=len);
                data.splice(i..i, token.iter().copied());
            }
            6 if len > 0 => data.truncate(rng.random_range(0..len)),
            7 if !corpus.is_empty() => {
                let other = &corpus[rng.random_range(0..corpus.len())];
                let cut = rng.random_range(0..=data.len());
                let from = rng.random_range(0..=other.len());
                data.truncate(cut);
                data.extend_from_slice(&other[from..]);
            }
            _ => {
                // Big-endian length fields and counts are where parsers go wrong: set one to an extreme.
                if len >= 2 {
                    let i = rng.random_range(0..len - 1);
                    let v: u16 = *[0u16, 1, 0x7fff, 0xffff, len as u16]
                        .get(rng.random_range(0..5))
                        .unwrap_or(&0);
                    data[i..i + 2].copy_from_slice(&v.to_be_bytes());
                }
            }
        }
    }
    data.truncate(64 * 1024);
    data
}

fn main() {
    let args = args();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let _guard = runtime.enter();
    // Panics are findings, reported once by the driver, not printed by the default hook each time.
    std::panic::set_hook(Box::new(|_| {}));
    if let Some(file) = &args.replay {
        let name = args.targets.first().expect("--replay needs --target NAME");
        let data = std::fs::read(file).expect("the input file");
        let mut t = Target::new(name);
        let _ = std::panic::take_hook();
        t.run(&data);
        println!("{name}: {} did not panic", file.display());
        return;
    }
    let mut failed = false;
    println!("fuzz: seed {}, {} s per target", args.seed, args.seconds);
    for name in &args.targets {
        let mut rng = StdRng::seed_from_u64(args.seed ^ name.len() as u64);
        let mut target = Target::new(name);
        let mut corpus = seeds(name);
        let dict = dictionary(name);
        let until = Instant::now() + Duration::from_secs(args.seconds);
        let (mut tried, mut slowest) = (0u64, Duration::ZERO);
        for seed in corpus.clone() {
            target.run(&seed);
        }
        while Instant::now() < until {
            let input = mutate(&mut rng, &corpus, &dict);
            let t0 = Instant::now();
            let outcome = catch_unwind(AssertUnwindSafe(|| target.run(&input)));
            slowest = slowest.max(t0.elapsed());
            tried += 1;
            if outcome.is_err() {
                let dir = PathBuf::from("fuzz/crashes");
                let _ = std::fs::create_dir_all(&dir);
                let file = dir.join(format!("{name}-{}.bin", rng.random::<u32>()));
                let _ = std::fs::write(&file, &input);
                println!(
                    "CRASH {name}: input of {} bytes saved to {} (replay: cargo run --example fuzz -- --replay {} --target {name})",
                    input.len(),
                    file.display(),
                    file.display()
                );
                failed = true;
                break;
            }
            // Keep a few mutants: the corpus drifts away from the seeds over a long run.
            if corpus.len() < 4096 && rng.random_ratio(1, 64) {
                corpus.push(input);
            }
        }
        println!(
            "{name}: {tried} inputs, 0 panics{}, slowest input {:.1} ms",
            if failed { " before the crash" } else { "" },
            slowest.as_secs_f64() * 1000.0
        );
        if failed {
            break;
        }
    }
    if failed {
        std::process::exit(1);
    }
}
