//! The real binary: exit codes, crash recovery after `kill -9`, graceful SIGTERM, disk full.

use crate::common;

use common::origin::content;
use common::{DOMAIN, Env, sha256};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_image-cache");

fn run(args: &[&str], envs: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env_remove("RUST_LOG");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn write_config(dir: &std::path::Path, body: &str) -> String {
    let path = dir.join("config.toml");
    std::fs::write(&path, body).unwrap();
    path.display().to_string()
}

#[test]
fn bad_configs_exit_2_and_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("[http]\nlisen = [\"127.0.0.1:1\"]\n", vec![], "http.lisen"),
        ("[cache]\nmax_size = \"lots\"\n", vec![], "cache.max_size"),
        (
            "[[domains]]\nname = \"bad host\"\n",
            vec![],
            "domains[0].name",
        ),
        ("[dns]\nlisten = [\"0.0.0.0:53\"]\n", vec![], "nodes.self"),
        ("[sync]\nschedule = \"* * *\"\n", vec![], "sync.schedule"),
        (
            "[sync]\nschedule = \"61 * * * *\"\n",
            vec![],
            "sync.schedule",
        ),
        (
            "state_dir = \"/x\"\n",
            vec![("IMAGE_CACHE_CACHE__MAX_SIZE", "-3")],
            "IMAGE_CACHE_CACHE__MAX_SIZE",
        ),
        ("this is not toml", vec![], "not valid TOML"),
        (
            "[registry]\ncredentials_file = \"/nonexistent/auth.json\"\n",
            vec![],
            "registry.credentials_file",
        ),
        (
            "[registry.upstreams]\n\"a/b\" = \"https://x.test\"\n",
            vec![],
            "registry.upstreams",
        ),
        (
            "[registry]\ndefault_upstream = \"nope.example\"\n",
            vec![],
            "registry.default_upstream",
        ),
        (
            "[registry]\nprefetch = [\"docker.io/library/nginx:1\", \"example.invalid/x/y:1\"]\n",
            vec![],
            "registry.prefetch[1]",
        ),
        (
            "[registry]\nprefetch_platforms = [\"linux\"]\n",
            vec![],
            "registry.prefetch_platforms",
        ),
        (
            "[registry]\nprefetch_schedule = \"every hour\"\n",
            vec![],
            "registry.prefetch_schedule",
        ),
    ];
    for (body, envs, needle) in cases {
        // Production defaults need this node's address; every case but the one about it sets it.
        let body = if needle == "nodes.self" {
            body.to_string()
        } else {
            format!("{body}\n[nodes]\nself = \"10.0.0.1\"\n")
        };
        let body = if needle == "not valid TOML" {
            "this is not toml".to_string()
        } else {
            body
        };
        let cfg = write_config(dir.path(), &body);
        let (code, _, err) = run(&["check-config", "--config", &cfg], &envs);
        assert_eq!(code, 2, "{body}: {err}");
        assert!(
            err.contains(needle),
            "{body}: `{needle}` not named in: {err}"
        );
    }
    let (code, _, err) = run(
        &["check-config", "--config", "/nonexistent/config.toml"],
        &[],
    );
    assert_eq!(code, 2);
    assert!(err.contains("does not exist"), "{err}");
}

/// `--config` is accepted before and after every subcommand, and a bad file is exit 2 naming the key.
#[test]
fn every_command_takes_config_after_the_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "[nodes]\nself = \"10.0.0.1\"\n[cache]\nmax_sizee = \"1G\"\n",
    );
    for args in [
        vec!["check-config", "--config", &cfg],
        vec!["serve", "--config", &cfg],
        vec!["sync", "--config", &cfg],
        vec!["sync", "--dry-run", "--config", &cfg],
        vec!["store", "gc", "--config", &cfg],
        vec!["store", "--config", &cfg, "gc"],
        vec!["store", "ls", "--config", &cfg],
        vec!["store", "verify", "-c", &cfg],
        vec!["store", "pin", "file:a.test/x", "--config", &cfg],
    ] {
        let (code, _, err) = run(&args, &[]);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert_eq!(
            err.matches("max_sizee").count(),
            1,
            "{args:?}: the key is named once: {err}"
        );
        assert!(err.contains("`cache.max_sizee`"), "{args:?}: {err}");
    }
}

/// Which defaults apply never surprises: `check-config` names the profile and what it intercepts and passes
/// through (the same lines open the service's log).
#[test]
fn check_config_names_the_profile_and_what_it_intercepts() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "[nodes]\nself = \"10.0.0.1\"\n");
    let (code, out, err) = run(&["check-config", "--config", &cfg], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!(
            "# profile: partition defaults (config file {cfg})"
        )),
        "{out}"
    );
    assert!(
        out.contains("# intercepts images.metal-stack.io, github.com: DNS on 0.0.0.0:53"),
        "{out}"
    );
    assert!(out.contains("# passes TLS for images.metal-stack.io, github.com through to their origins on 0.0.0.0:443"), "{out}");
    if !std::path::Path::new("/etc/image-cache/config.toml").exists() {
        let (code, out, err) = run(&["check-config"], &[]);
        assert_eq!(code, 0, "{err}");
        assert!(
            out.contains("# profile: laptop defaults (no config file)"),
            "{out}"
        );
        assert!(out.contains("# no TLS passthrough"), "{out}");
    }
}

#[test]
fn check_config_prints_an_effective_config_that_loads_again() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "state_dir = \"/srv/ic\"\n[dns]\nenabled = false\n[cache]\nmax_size = \"50GiB\"\n",
    );
    let (code, out, err) = run(
        &["check-config", "--config", &cfg],
        &[("IMAGE_CACHE_UPSTREAM__READ_TIMEOUT", "\"90s\"")],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("max_size = \"50GiB\""), "{out}");
    assert!(
        out.contains("read_timeout = \"1m 30s\""),
        "env override applied: {out}"
    );
    assert!(
        out.contains("name = \"images.metal-stack.io\""),
        "default domains kept: {out}"
    );
    let again = write_config(dir.path(), &out);
    let (code, out2, err) = run(&["check-config", "--config", &again], &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.lines().skip(1).collect::<Vec<_>>(),
        out2.lines().skip(1).collect::<Vec<_>>()
    );
}

/// The binary serving `config`; stderr is read until the listen line appears.
struct Served {
    child: Child,
    base: String,
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Served {
    fn start(cmd: &mut Command) -> Served {
        let mut child = cmd
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = std::sync::Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line.split("listening http on ").nth(1) {
                    let _ = tx.send(addr.trim().to_string());
                }
                sink.lock().unwrap().push_str(&format!("{line}\n"));
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("no listen line; log:\n{}", log.lock().unwrap()));
        Served {
            child,
            base: format!("http://{addr}"),
            log,
        }
    }

    /// A GET for `path` on the intercepted domain.
    async fn get(&self, path: &str) -> reqwest::Response {
        common::client()
            .get(format!("{}{path}", self.base))
            .header("host", DOMAIN)
            .send()
            .await
            .unwrap()
    }

    /// A GET for an admin route.
    async fn admin(&self, path: &str) -> reqwest::Response {
        common::client()
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap()
    }

    /// Through the system call, not kill(1): a Nix build sandbox has no kill on its PATH.
    fn signal(&self, sig: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).unwrap();
        rustix::process::kill_process(pid, sig).unwrap();
    }

    /// SIGTERM, then waits (at most `limit`) for the exit, as systemd does: what the graceful stop
    /// finishes (a fill's commit) is on disk afterwards, which a `kill` right behind the TERM would cut.
    fn terminate(&mut self, limit: Duration) -> (std::process::ExitStatus, Duration) {
        self.signal(rustix::process::Signal::TERM);
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, start.elapsed());
            }
            assert!(
                start.elapsed() < limit,
                "did not stop within {limit:?}; log:\n{}",
                self.log.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve_config(env: &Env) -> String {
    format!(
        "state_dir = \"{}\"\n[http]\nlisten = [\"127.0.0.1:0\"]\n[dns]\nenabled = false\nupstreams = [\"127.0.0.1:9\"]\n[passthrough]\nenabled = false\n[upstream]\nca_file = \"{}\"\nread_timeout = \"5s\"\n[[domains]]\nname = \"{DOMAIN}\"\norigin = \"{}\"\n",
        env.state_dir().display(),
        env.ca_file.display(),
        env.origin.url()
    )
}

/// A listen address no interface has yet (a DHCP lease that arrives after the service started) is bound
/// anyway, with a warning naming it, instead of failing the start and leaving the unit to systemd's restart
/// limit. 192.0.2.10 (TEST-NET-1) is on no interface here; nothing is ever sent to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listen_address_no_interface_has_yet_is_bound_and_reported() {
    let env = Env::new().await;
    let body = serve_config(&env).replace(
        "listen = [\"127.0.0.1:0\"]",
        "listen = [\"127.0.0.1:0\", \"192.0.2.10:18080\"]",
    );
    let cfg = write_config(env.dir.path(), &body);
    let served = Served::start(Command::new(BIN).args(["serve", "--config", &cfg]));
    assert_eq!(served.admin("/health").await.status(), 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !served.log.lock().unwrap().contains("192.0.2.10:18080") && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = served.log.lock().unwrap().clone();
    assert!(
        log.lines()
            .any(|l| l.contains("no interface has this address yet")
                && l.contains("192.0.2.10:18080")),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_fill_never_leaves_a_partial_object() {
    let env = Env::new().await;
    let cfg = write_config(env.dir.path(), &serve_config(&env));
    let path = "/slow/3000000/21/100000/50";
    let served = Served::start(Command::new(BIN).args(["serve", "--config", &cfg]));
    let resp = served.get(path).await;
    assert_eq!(resp.status(), 200);
    // Let part of the body land in tmp/, then kill without warning.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        !common::files_under(&env.state_dir().join("tmp")).is_empty(),
        "a fill was in progress"
    );
    served.signal(rustix::process::Signal::KILL);
    drop(served);
    assert!(
        resp.bytes().await.is_err(),
        "the killed transfer is not a complete body"
    );

    let mut served = Served::start(Command::new(BIN).args(["serve", "--config", &cfg]));
    assert!(
        common::files_under(&env.state_dir().join("tmp")).is_empty(),
        "recovery emptied tmp/"
    );
    let body = served.get(path).await.bytes().await.unwrap();
    assert_eq!(
        sha256(&body),
        sha256(&content(21, 3_000_000)),
        "refilled in full"
    );
    assert_eq!(
        env.origin.gets(path),
        2,
        "the partial copy was never served"
    );
    let (status, _) = served.terminate(Duration::from_secs(15));
    assert!(status.success(), "{status:?}");
    drop(served);

    let (code, out, err) = run(&["store", "--config", &cfg, "verify"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("checked 1 blobs") && out.contains("0 corrupt"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_gracefully_and_store_commands_work_afterwards() {
    let env = Env::new().await;
    let cfg = write_config(env.dir.path(), &serve_config(&env));
    let mut served = Served::start(Command::new(BIN).args(["serve", "--config", &cfg]));
    let body = served.get("/file/1000/3").await.bytes().await.unwrap();
    assert_eq!(body.len(), 1000);
    // The index is locked while the server runs: the CLI asks the server instead of opening it (its
    // config names the address the server actually bound).
    let addr = served.base.trim_start_matches("http://").to_string();
    let cli_cfg = env.dir.path().join("cli.toml");
    std::fs::write(&cli_cfg, serve_config(&env).replace("127.0.0.1:0", &addr)).unwrap();
    let cli_cfg = cli_cfg.to_str().unwrap();
    // The client has its last byte once the content is verified; the index commit (fsyncs) follows.
    let deadline = Instant::now() + Duration::from_secs(5);
    let out = loop {
        let (code, out, err) = run(&["store", "--config", cli_cfg, "ls"], &[]);
        assert_eq!(code, 0, "{err}");
        assert!(err.contains("a server holds the store"), "{err}");
        if out.contains("file:files.test/file/1000/3") || Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(out.contains("file:files.test/file/1000/3"), "{out}");
    let (status, _) = served.terminate(Duration::from_secs(15));
    assert!(
        status.success(),
        "exit status {status:?}; log:\n{}",
        served.log.lock().unwrap()
    );
    let (code, out, _) = run(&["store", "--config", &cfg, "ls"], &[]);
    assert_eq!(code, 0);
    assert!(out.contains("file:files.test/file/1000/3"), "{out}");
}

/// SIGTERM while a fill of unknown length (chunked) runs with no client attached: the fill is drained
/// until the deadline and then dropped, never committed short — after a restart with the origin gone,
/// the object is not served as if it were complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_never_commits_a_fill_whose_end_was_not_seen() {
    let env = Env::new().await;
    let cfg = write_config(env.dir.path(), &serve_config(&env));
    // 3 MB in 10 kB chunks every 40 ms: twelve seconds, longer than the drain deadline.
    let path = "/chunked/3000000/23/40";
    let served = Served::start(Command::new(BIN).args(["serve", "--config", &cfg]));
    let resp = served.get(path).await;
    assert_eq!(resp.status(), 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(resp); // the client goes away; the fill goes on
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut served = served;
    let (_, took) = served.terminate(Duration::from_secs(20));
    assert!(
        took > Duration::from_secs(5),
        "stopped after {took:?}: the fill was not drained; log:\n{}",
        served.log.lock().unwrap()
    );
    drop(served);
    env.origin.stop();
    let served = Served::start(Command::new(BIN).args(["serve", "--config", &cfg]));
    let again = served.get(path).await;
    assert_ne!(
        again.status(),
        200,
        "a body whose end was never seen was stored and served"
    );
    let (code, out, err) = run(&["store", "--config", &cfg, "ls"], &[]);
    let _ = (code, err);
    assert!(!out.contains("chunked/3000000"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_commands_act_through_a_running_server_with_a_token() {
    let env = Env::new().await;
    let token = env.dir.path().join("admin-token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let with_token = |listen: &str, token_file: &std::path::Path| {
        serve_config(&env).replace("127.0.0.1:0", listen).replace(
            "[dns]",
            &format!("admin_token_file = \"{}\"\n[dns]", token_file.display()),
        )
    };
    let cfg = write_config(env.dir.path(), &with_token("127.0.0.1:0", &token));
    let served = Served::start(Command::new(BIN).args(["serve", "--config", &cfg]));
    for seed in [1, 2] {
        let body = served
            .get(&format!("/file/1000/{seed}"))
            .await
            .bytes()
            .await
            .unwrap();
        assert_eq!(body.len(), 1000);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let addr = served.base.trim_start_matches("http://").to_string();
    let cli = env.dir.path().join("cli.toml");
    std::fs::write(&cli, with_token(&addr, &token)).unwrap();
    let cli = cli.to_str().unwrap();
    let store = |args: &[&str]| {
        let mut all = vec!["store", "--config", cli];
        all.extend_from_slice(args);
        run(&all, &[])
    };
    let (one, two) = ("file:files.test/file/1000/1", "file:files.test/file/1000/2");

    let (code, out, err) = store(&["ls", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 2, "{out}");
    let first: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(first["key"], one);

    assert_eq!(store(&["pin", one]).0, 0);
    let (_, out, _) = store(&["ls", "--pinned", "true"]);
    assert!(
        out.lines()
            .any(|l| l.starts_with(one) && l.ends_with("operator")),
        "{out}"
    );
    assert!(!out.contains(two), "{out}");
    assert_eq!(store(&["unpin", one]).0, 0);
    let (_, out, _) = store(&["ls", "--pinned", "true"]);
    assert!(out.contains("0 objects"), "{out}");

    assert_eq!(store(&["rm", two]).0, 0);
    let (code, _, err) = store(&["rm", two]);
    assert_eq!(code, 1);
    assert!(err.contains("404") && err.contains("no such key"), "{err}");
    let (code, _, err) = store(&["pin", "../etc/passwd"]);
    assert_eq!(code, 1);
    assert!(err.contains("not a store key"), "{err}");

    let (code, out, err) = store(&["gc"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("evicted 0 objects"), "{out}");
    let (code, out, err) = store(&["verify"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("checked 1 blobs, 1000 bytes; 0 corrupt"),
        "{out}"
    );

    // A flipped byte on disk: verify through the server finds it, removes the object, exits 1.
    let blob = common::files_under(&env.state_dir().join("blobs"))
        .into_iter()
        .next()
        .unwrap();
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes[10] ^= 1;
    std::fs::write(&blob, bytes).unwrap();
    let (code, out, _) = store(&["verify"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("corrupt: {one}")), "{out}");

    // The wrong token: refused, and the message says where the token comes from.
    let wrong = env.dir.path().join("wrong-token");
    std::fs::write(&wrong, "nope").unwrap();
    let bad = env.dir.path().join("bad.toml");
    std::fs::write(&bad, with_token(&addr, &wrong)).unwrap();
    let (code, _, err) = run(&["store", "--config", bad.to_str().unwrap(), "ls"], &[]);
    assert_eq!(code, 1);
    assert!(
        err.contains("401") && err.contains("http.admin_token_file"),
        "{err}"
    );
    drop(served);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_still_serves_the_client_by_pass_through() {
    let is_root = rustix::process::geteuid().is_root();
    let has_unshare = Command::new("unshare").arg("--version").output().is_ok();
    if !is_root || !has_unshare {
        eprintln!(
            "SKIPPED a_full_disk_still_serves_the_client_by_pass_through: needs root and unshare(1) for a private tmpfs"
        );
        return;
    }
    let env = Env::new().await;
    std::fs::create_dir_all(env.state_dir()).unwrap();
    let cfg = write_config(env.dir.path(), &serve_config(&env));
    // The state dir is a 4 MiB tmpfs in a private mount namespace; the object is 12 MB.
    let script = format!(
        "mount -t tmpfs -o size=4m tmpfs '{}' && exec '{BIN}' serve --config '{cfg}'",
        env.state_dir().display()
    );
    let served = Served::start(Command::new("unshare").args([
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        &script,
    ]));
    let path = "/file/12000000/31";
    let body = served.get(path).await.bytes().await.unwrap();
    assert_eq!(
        sha256(&body),
        sha256(&content(31, 12_000_000)),
        "the client got the whole body"
    );
    let health = served.admin("/health").await;
    assert_eq!(health.status(), 200, "the service keeps running");
    let metrics = served.admin("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("image_cache_store_objects 0"),
        "nothing stored:\n{metrics}"
    );
    assert!(
        env.origin
            .state
            .ranged
            .load(std::sync::atomic::Ordering::SeqCst)
            >= 1,
        "the rest came by a Range request"
    );
    // Small objects still fit and are cached.
    let small = served.get("/file/1000/1").await.bytes().await.unwrap();
    assert_eq!(small.len(), 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_command_prints_the_plan_and_its_exit_code_tells_the_outcome() {
    let env = Env::new().await;
    let origin = env.origin.url();
    let api = common::metal_api::MetalApi::start(
        "k3y",
        serde_json::json!([
            {"id": "debian-13.0.1", "url": format!("{origin}/img/4000/1/img.tar.lz4")},
            {"id": "debian-13.0.2", "url": format!("{origin}/badimg/3000/2/img.tar.lz4")},
        ]),
        serde_json::json!([]),
    )
    .await;
    let key_file = env.dir.path().join("hmac");
    // A fixed port, so the CLI can find the server it asks.
    let port = common::unused_port("127.0.0.1");
    let config = |key: &str| {
        std::fs::write(&key_file, key).unwrap();
        let body = format!(
            "{}[sync]\nurl = \"{}\"\nhmac_file = \"{}\"\n",
            serve_config(&env).replace("127.0.0.1:0", &format!("127.0.0.1:{port}")),
            api.url(),
            key_file.display()
        );
        write_config(env.dir.path(), &body)
    };
    let cfg = config("k3y");
    let bin = |args: Vec<String>| async move {
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            run(&args, &[])
        })
        .await
        .unwrap()
    };
    let args = |extra: &[&str]| {
        let mut v = vec!["sync".to_string(), "--config".to_string(), cfg.clone()];
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };

    // --dry-run: the plan as a table, exit 0, nothing fetched.
    let (code, out, err) = bin(args(&["--dry-run"])).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("ID") && out.contains("ACTION"), "{out}");
    assert!(
        out.contains("debian-13.0.1") && out.contains("download"),
        "{out}"
    );
    assert_eq!(env.origin.gets("/img/4000/1/img.tar.lz4"), 0);

    // A real run: the good image is stored, the bad one fails its md5 → exit 1.
    let (code, out, err) = bin(args(&[])).await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("1 failed"), "{out}");
    assert!(err.contains("md5"), "{err}");
    assert_eq!(env.origin.gets("/img/4000/1/img.tar.lz4"), 1);

    // A wrong key: the message names it, exit 1, nothing changes.
    let _ = config("wrong");
    let (code, _, err) = bin(args(&[])).await;
    assert_eq!(code, 1);
    assert!(err.contains("HMAC key rejected"), "{err}");

    // While a server holds the store, the CLI asks that server over the admin API.
    let _ = config("k3y");
    let served = Served::start(Command::new(BIN).args(["serve", "--config", &cfg]));
    let (code, out, err) = bin(args(&[])).await;
    assert!(err.contains("starting the sync there"), "{err}");
    assert!(out.contains("debian-13.0.1"), "{out}");
    assert_eq!(code, 1, "the bad image still fails: {out}{err}");
    drop(served);

    // The key file missing: a config error, exit 2.
    std::fs::remove_file(&key_file).unwrap();
    let (code, _, err) = bin(args(&[])).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("sync"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_prefetch_command_runs_on_the_server_and_its_exit_code_tells_the_outcome() {
    let env = Env::new().await;
    let reg = common::oci::FakeRegistry::start().await;
    let img = reg.push_image("team/app", "1", &[content(41, 100_000)]);
    let port = common::unused_port("127.0.0.1");
    let body = format!(
        "{}[registry.upstreams]\n\"fake.test:5000\" = \"{}\"\n",
        serve_config(&env).replace("127.0.0.1:0", &format!("127.0.0.1:{port}")),
        reg.url
    );
    let cfg = write_config(env.dir.path(), &body);
    let bin = |images: &[&str]| {
        let mut args = vec!["registry", "prefetch", "--config", &cfg];
        args.extend(images);
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        async move {
            tokio::task::spawn_blocking(move || {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                run(&args, &[])
            })
            .await
            .unwrap()
        }
    };
    const APP: &str = "fake.test:5000/team/app:1";

    // No server: nothing to pull through; said so, exit 1.
    let (code, _, err) = bin(&[APP]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("image-cache serve"), "{err}");
    // A reference no registry would take: named, exit 1, nothing asked.
    let (code, _, err) = bin(&["Team/App"]).await;
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("\"Team/App\" is not an image reference"),
        "{err}"
    );

    let served = Served::start(Command::new(BIN).args(["serve", "--config", &cfg]));
    let (code, out, err) = bin(&[APP]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("starting the prefetch on the server"), "{err}");
    assert!(
        out.contains(&format!("ok {APP}: 3 manifests, 3 blobs")),
        "{out}"
    );
    assert!(
        out.contains("1 of 1 images stored and pinned, 0 failed"),
        "{out}"
    );
    assert_eq!(reg.cdn_gets(&img.layers[0]), 1);
    let pinned: serde_json::Value = serde_json::from_slice(
        &served
            .admin("/admin/objects?prefix=oci%3Afake.test%3A5000%2Fteam%2Fapp%40blob&pinned=true")
            .await
            .bytes()
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        pinned["objects"].as_array().map(Vec::len),
        Some(3),
        "the config of each platform and the layer, pinned: {pinned}"
    );

    // An image the registry does not have, and one from a registry the mirror may not dial.
    let (code, out, err) = bin(&["fake.test:5000/team/gone:1"]).await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("FAILED fake.test:5000/team/gone:1"), "{out}");
    let (code, _, err) = bin(&["example.invalid/org/app:1"]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not in registry.upstreams"), "{err}");
    drop(served);
}

#[test]
fn containerd_hosts_prints_a_hosts_toml_and_refuses_a_bad_mirror() {
    let (code, out, err) = run(
        &[
            "containerd-hosts",
            "--mirror",
            "http://10.0.0.1:8080/",
            "--registry",
            "ghcr.io",
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let parsed: toml::Value = toml::from_str(&out).unwrap();
    assert_eq!(parsed["server"].as_str(), Some("https://ghcr.io"));
    let caps = parsed["host"]["http://10.0.0.1:8080"]["capabilities"]
        .as_array()
        .unwrap();
    assert_eq!(caps.len(), 2);
    let (code, _, err) = run(&["containerd-hosts", "--mirror", "cache:8080"], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("--mirror"), "{err}");
    let (code, _, err) = run(&["containerd-hosts"], &[]);
    assert_eq!(code, 2, "no node named at all");
    assert!(err.contains("--mirrors-from"), "{err}");
}

/// `--mirrors-from`: every address the name resolves to (here `localhost`, from /etc/hosts through the
/// system resolver) is a replica, listed before the fixed `--mirror`; `--write` puts the file in place.
#[test]
fn containerd_hosts_lists_the_replicas_a_name_resolves_to() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("certs.d/_default/hosts.toml");
    let (code, _, err) = run(
        &[
            "containerd-hosts",
            "--mirrors-from",
            "localhost:8080",
            "--mirror",
            "http://10.0.0.9:8080",
            "--write",
            file.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let text = std::fs::read_to_string(&file).unwrap();
    let replica = text.find("[host.\"http://127.0.0.1:8080\"]");
    let fixed = text.find("[host.\"http://10.0.0.9:8080\"]");
    assert!(
        replica.is_some() && fixed.is_some() && replica < fixed,
        "{text}"
    );
}
