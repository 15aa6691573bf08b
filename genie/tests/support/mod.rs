//! A `genie serve` process for tests: started on 127.0.0.1 with port 0, its address read
//! from the line it prints, killed when the handle drops.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The cluster secret the tests' gateways and workers share.
pub const CLUSTER_SECRET: &str = "genie-tests-cluster-secret-0123456789abcdef";
pub const SECRET_ENV: &str = "GENIE_CLUSTER_SECRET";

/// Does `genie ARGS` start a role of a multi-process cluster?
fn needs_secret(args: &[&str]) -> bool {
    matches!(
        args.first(),
        Some(&("gateway" | "prefill-worker" | "decode-worker" | "stage-worker"))
    ) || args.contains(&"--pipeline-workers")
}

/// The tests' cluster secret, to sign direct control-plane calls.
pub fn cluster_secret() -> genie_cluster_auth::ClusterSecret {
    genie_cluster_auth::ClusterSecret::new(
        CLUSTER_SECRET.as_bytes(),
        &genie_cluster_auth::SecretSource::Env,
    )
    .unwrap()
}

/// Sends `rb` signed with the tests' cluster secret.
pub async fn signed(rb: reqwest::RequestBuilder) -> reqwest::Response {
    genie_cluster_auth::http::send_signed(rb, Some(&cluster_secret()))
        .await
        .unwrap()
}

pub struct Server {
    pub url: String,
    /// `host:port` after "KV on" in the start-up line (decode workers).
    pub kv_endpoint: Option<String>,
    /// The whole start-up line.
    pub banner: String,
    child: Child,
}

impl Server {
    /// Starts `genie serve --port 0 ARGS` with extra environment variables.
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> Server {
        Self::on_loopback("serve", args, env)
    }

    /// Starts `genie gateway --port 0 ARGS` with extra environment variables.
    pub fn gateway(args: &[&str], env: &[(&str, &str)]) -> Server {
        Self::on_loopback("gateway", args, env)
    }

    /// `genie ROLE --host 127.0.0.1 --port 0 ARGS`.
    fn on_loopback(role: &str, args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut all = vec![role, "--host", "127.0.0.1", "--port", "0"];
        all.extend_from_slice(args);
        Self::spawn(&all, env)
    }

    /// Starts `genie ARGS` and waits for the first `http://` (or `https://`) address it
    /// prints.
    pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> Server {
        Self::spawn_in(&[], args, env)
    }

    /// Like [`Server::spawn`], run through `prefix` (e.g. `ip netns exec NS`).
    pub fn spawn_in(prefix: &[&str], args: &[&str], env: &[(&str, &str)]) -> Server {
        let genie = env!("CARGO_BIN_EXE_genie");
        let mut cmd = match prefix.split_first() {
            None => Command::new(genie),
            Some((p, rest)) => {
                let mut c = Command::new(p);
                c.args(rest).arg(genie);
                c
            }
        };
        cmd.args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        // Multi-process roles share the tests' cluster secret unless the test gives its own
        // (an empty GENIE_CLUSTER_SECRET means none).
        if needs_secret(args) && !env.iter().any(|(k, _)| *k == SECRET_ENV) {
            cmd.env(SECRET_ENV, CLUSTER_SECRET);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start genie serve");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(l)) = lines.next() {
                let _ = tx.send(l);
            }
            // Keep draining so the server never blocks on a full pipe.
            for _ in lines {}
        });
        let line = match rx.recv_timeout(Duration::from_secs(180)) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                panic!("genie serve did not report its address");
            }
        };
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://") || w.starts_with("https://"))
            .unwrap_or_else(|| panic!("no address in {line:?}"))
            .trim_end_matches(|c: char| !c.is_ascii_alphanumeric())
            .to_string();
        let kv_endpoint = line
            .split("KV on ")
            .nth(1)
            .and_then(|r| r.split(')').next())
            .map(String::from);
        Server {
            url,
            kv_endpoint,
            banner: line,
            child,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// The value of one Prometheus sample (`name{labels}`) summed over label sets that
    /// contain every `label` given.
    pub async fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        let text = reqwest::get(self.url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        parse_metric(&text, name, labels)
    }
}

pub fn parse_metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            let (metric, rest) = match key.find('{') {
                Some(i) => (&key[..i], &key[i..]),
                None => (key, ""),
            };
            (metric == name && labels.iter().all(|lb| rest.contains(lb)))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

impl Server {
    /// Sends a signal by name (`STOP`, `CONT`, ...) to the process.
    pub fn signal(&self, sig: &str) {
        let ok = std::process::Command::new("kill")
            .args([format!("-{sig}"), self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits up to `limit` for the process to exit by itself; its status, or `None`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                return Some(s);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the process now (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A worker process of `role` that registers nowhere (a static worker), one thread.
pub fn worker_standalone(role: &str) -> Server {
    Server::spawn(
        &[role, "--host", "127.0.0.1", "--port", "0", "--threads", "1"],
        &[],
    )
}

/// The workers a gateway lists (`GET /v1/workers`, no API key).
pub async fn workers(gw: &Server) -> Vec<serde_json::Value> {
    workers_via(&reqwest::Client::new(), gw).await
}

/// The same, through `client` (one that trusts a test CA, say).
pub async fn workers_via(client: &reqwest::Client, gw: &Server) -> Vec<serde_json::Value> {
    let v: serde_json::Value = client
        .get(gw.url("/v1/workers"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["data"].as_array().cloned().unwrap_or_default()
}

/// How many of them are healthy.
pub async fn healthy(gw: &Server) -> usize {
    workers(gw)
        .await
        .iter()
        .filter(|w| w["healthy"] == true)
        .count()
}

/// Polls `ok` every 50 ms until it holds; fails the test after 60 s naming `what`.
pub async fn wait_for(what: &str, mut ok: impl AsyncFnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !ok().await {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The model id `genie serve` reports for the default model.
pub const MODEL: &str = "SmolLM2-135M-Instruct";

/// Runs the `genie` binary with `args` to completion; fails the test (with its stderr) if it
/// exits unsuccessfully.
pub fn genie_ok(args: &[&str]) -> std::process::Output {
    let out = Command::new(env!("CARGO_BIN_EXE_genie"))
        .args(args)
        .envs(needs_secret(args).then_some((SECRET_ENV, CLUSTER_SECRET)))
        .output()
        .expect("run genie");
    assert!(
        out.status.success(),
        "genie {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `genie generate ARGS --json --threads 1`, parsed.
pub fn genie_generate(args: &[&str]) -> serde_json::Value {
    let mut all = vec!["generate"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--json", "--threads", "1"]);
    serde_json::from_slice(&genie_ok(&all).stdout).expect("genie generate --json prints JSON")
}

/// Every `configs/*.toml` in the repository, sorted.
pub fn shipped_configs() -> Vec<std::path::PathBuf> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
    let mut found: Vec<std::path::PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    found.sort();
    found
}

/// Reads an SSE body into its `data:` payloads.
pub async fn sse(resp: reqwest::Response) -> Vec<String> {
    let mut buf = String::new();
    let mut s = resp.bytes_stream();
    while let Some(b) = futures_util::StreamExt::next(&mut s).await {
        buf.push_str(&String::from_utf8_lossy(&b.unwrap()));
    }
    // Each event's `data:` line (an event may also have `event:` and comment lines).
    buf.split("\n\n")
        .filter_map(|e| {
            e.lines()
                .find_map(|l| l.strip_prefix("data: "))
                .map(String::from)
        })
        .collect()
}

async fn send_json(s: &Server, path: &str, body: &serde_json::Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(s.url(path))
        .json(body)
        .send()
        .await
        .unwrap()
}

/// POSTs `body` as JSON to `path`: the status and the JSON answer (null if none).
pub async fn post_json(
    s: &Server,
    path: &str,
    body: &serde_json::Value,
) -> (u16, serde_json::Value) {
    let r = send_json(s, path, body).await;
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(serde_json::Value::Null))
}

/// POSTs a streaming `body` to `path`, checks the 200, and reads the events' `data:`.
pub async fn post_stream(s: &Server, path: &str, body: &serde_json::Value) -> Vec<String> {
    let r = send_json(s, path, body).await;
    assert_eq!(r.status(), 200);
    sse(r).await
}

/// Runs the Python `script` (under tests/e2e) with `args` after `genie serve` `URL`, if
/// `modules` import: its stdout must end in "checks passed". Skipped with a message when
/// a module is missing, except in CI (`CI` set), where that fails.
pub fn python_checks(
    script: &str,
    modules: &str,
    install: &str,
    serve_args: &[&str],
    env: &[(&str, &str)],
    args: &[&str],
) {
    let has = std::process::Command::new("python3")
        .args(["-c", &format!("import {modules}")])
        .status()
        .is_ok_and(|s| s.success());
    if !has {
        assert!(
            std::env::var_os("CI").is_none(),
            "{modules} are required in CI ({install})"
        );
        eprintln!("SKIPPED: {install}");
        return;
    }
    let s = Server::start(serve_args, env);
    let script = format!("{}/tests/e2e/{script}", env!("CARGO_MANIFEST_DIR"));
    let mut all = vec![script.as_str(), s.url.as_str()];
    all.extend_from_slice(args);
    let out = std::process::Command::new("python3")
        .args(&all)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("checks passed"));
}
