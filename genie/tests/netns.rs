//! Multi-host: the decode worker runs in its own network namespace, reached over a veth
//! pair (shaped with netem delay and rate where the kernel has it), so the KV stream
//! crosses a real network stack. Skips, saying why, where namespaces cannot be created.

mod support;

use serde_json::{json, Value};
use std::process::Command;
use std::time::{Duration, Instant};
use support::{Server, MODEL};

fn sh(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args[0]))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A namespace joined to this one by a veth pair; removed on drop.
struct Netns {
    name: String,
    host_if: String,
    host_ip: String,
    ns_ip: String,
    shaping: String,
}

impl Netns {
    fn create() -> Result<Netns, String> {
        let id = std::process::id() % 250;
        let n = Netns {
            name: format!("genie-t{id}"),
            host_if: format!("gvh{id}"),
            host_ip: format!("10.213.{id}.1"),
            ns_ip: format!("10.213.{id}.2"),
            shaping: String::new(),
        };
        let _ = sh(&["ip", "netns", "del", &n.name]);
        let _ = sh(&["ip", "link", "del", &n.host_if]);
        sh(&["ip", "netns", "add", &n.name])?;
        let peer = format!("gvn{id}");
        let mut n = n;
        let steps: Vec<Vec<String>> = vec![
            vec![
                "ip", "link", "add", &n.host_if, "type", "veth", "peer", "name", &peer,
            ]
            .into_iter()
            .map(String::from)
            .collect(),
            vec!["ip", "link", "set", &peer, "netns", &n.name]
                .into_iter()
                .map(String::from)
                .collect(),
            vec![
                "ip",
                "addr",
                "add",
                &format!("{}/24", n.host_ip),
                "dev",
                &n.host_if,
            ]
            .into_iter()
            .map(String::from)
            .collect(),
            vec!["ip", "link", "set", &n.host_if, "up"]
                .into_iter()
                .map(String::from)
                .collect(),
            vec![
                "ip",
                "netns",
                "exec",
                &n.name,
                "ip",
                "addr",
                "add",
                &format!("{}/24", n.ns_ip),
                "dev",
                &peer,
            ]
            .into_iter()
            .map(String::from)
            .collect(),
            vec![
                "ip", "netns", "exec", &n.name, "ip", "link", "set", &peer, "up",
            ]
            .into_iter()
            .map(String::from)
            .collect(),
            vec![
                "ip", "netns", "exec", &n.name, "ip", "link", "set", "lo", "up",
            ]
            .into_iter()
            .map(String::from)
            .collect(),
        ];
        for s in &steps {
            let v: Vec<&str> = s.iter().map(String::as_str).collect();
            sh(&v)?;
        }
        // Latency and rate on both directions where the kernel has netem; else rate only
        // (tbf); else plain veth.
        let shaped = |dev: &str, ns: Option<&str>, q: &[&str]| {
            let mut v: Vec<&str> = Vec::new();
            if let Some(ns) = ns {
                v.extend(["ip", "netns", "exec", ns]);
            }
            v.extend(["tc", "qdisc", "add", "dev", dev, "root"]);
            v.extend(q);
            sh(&v)
        };
        let netem = ["netem", "delay", "2ms", "rate", "1gbit"];
        let tbf = ["tbf", "rate", "1gbit", "burst", "256kb", "latency", "50ms"];
        n.shaping = if shaped(&n.host_if, None, &netem).is_ok()
            && shaped(&peer, Some(&n.name), &netem).is_ok()
        {
            "netem delay 2ms rate 1gbit each way".into()
        } else if shaped(&n.host_if, None, &tbf).is_ok()
            && shaped(&peer, Some(&n.name), &tbf).is_ok()
        {
            "tbf rate 1gbit (this kernel has no netem: no added delay)".into()
        } else {
            "none (this kernel has neither netem nor tbf)".into()
        };
        Ok(n)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = sh(&["ip", "netns", "del", &self.name]);
        let _ = sh(&["ip", "link", "del", &self.host_if]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_crosses_a_network_namespace_boundary() {
    let ns = match Netns::create() {
        Ok(ns) => ns,
        Err(why) => {
            eprintln!("SKIPPED: cannot create a network namespace here ({why}); run as root with iproute2");
            return;
        }
    };
    println!(
        "namespace {} at {} (host side {}), shaping: {}",
        ns.name, ns.ns_ip, ns.host_ip, ns.shaping
    );
    let gw = Server::spawn(&["gateway", "--host", &ns.host_ip, "--port", "0"], &[]);
    let _prefill = Server::spawn(
        &[
            "prefill-worker",
            "--gateway",
            &gw.url,
            "--host",
            &ns.host_ip,
            "--port",
            "0",
            "--threads",
            "1",
        ],
        &[],
    );
    let decode = Server::spawn_in(
        &["ip", "netns", "exec", &ns.name],
        &[
            "decode-worker",
            "--gateway",
            &gw.url,
            "--host",
            &ns.ns_ip,
            "--port",
            "0",
            "--threads",
            "1",
        ],
        &[],
    );
    assert!(decode
        .kv_endpoint
        .as_deref()
        .is_some_and(|k| k.starts_with(&ns.ns_ip)));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = reqwest::get(gw.url("/health")).await.unwrap();
        if r.status() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "workers did not become healthy");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = reqwest::Client::new()
        .post(gw.url("/v1/completions"))
        .json(&json!({"model": MODEL, "prompt": "The capital of France is", "max_tokens": 8, "temperature": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["choices"][0]["text"], " Paris.\n\nThe United States has");
    // 5 prompt tokens of KV crossed the namespace boundary.
    assert_eq!(
        _prefill.metric("genie_kv_transfer_bytes_total", &[]).await,
        (2 * 30 * 3 * 64 * 2 * 5) as f64
    );
    assert_eq!(decode.metric("genie_kv_cache_used_bytes", &[]).await, 0.0);
}
