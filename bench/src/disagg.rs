//! `genie bench disagg`: time to first token (TTFT) and to second token, disaggregated
//! (gateway + prefill worker + decode worker processes, KV over TCP) against colocated
//! (gateway + one decode worker that prefills itself), for several prompt lengths.
//! The second token needs the KV at the decode worker, so it shows what the layer-by-layer
//! transfer costs after the prefill. `--auth` compares instead two disaggregated clusters,
//! one authenticating every control call and KV connection with a cluster secret and one
//! started with `--insecure-cluster`: what authentication costs. Both clusters run at once
//! and requests alternate between them, so a noisy host slows both alike.

use anyhow::{Context, Result};
use clap::Args;
use futures_util::StreamExt;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Args, Debug)]
pub struct DisaggBenchArgs {
    /// Prompt lengths in tokens.
    #[arg(long, value_delimiter = ',', default_value = "256,1024,4096")]
    pub prompt: Vec<usize>,
    /// Compute threads per worker (0 = one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Measurements per figure (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// A llama GGUF file (default: the default model).
    #[arg(long, env = "GENIE_MODEL")]
    pub model: Option<std::path::PathBuf>,
    /// Compare an authenticated cluster with an insecure one (both disaggregated) instead
    /// of disaggregated with colocated.
    #[arg(long)]
    pub auth: bool,
}

struct Proc(Child, String);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(args: &[String], secret: Option<&str>) -> Result<Proc> {
    let mut cmd = Command::new(std::env::current_exe()?);
    match secret {
        // In the environment, never on a command line.
        Some(s) => cmd.env("GENIE_CLUSTER_SECRET", s),
        None => cmd.env_remove("GENIE_CLUSTER_SECRET"),
    };
    let mut child = cmd
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let out = child.stdout.take().context("stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(out).lines();
        if let Some(Ok(l)) = lines.next() {
            let _ = tx.send(l);
        }
        for _ in lines {}
    });
    let line = rx
        .recv_timeout(Duration::from_secs(120))
        .context("process did not start")?;
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .context("no address printed")?
        .trim_end_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string();
    Ok(Proc(child, url))
}

async fn wait_ready(url: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = reqwest::get(format!("{url}/health")).await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "cluster not ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// (seconds to first token, seconds to second token) for one streamed request.
async fn measure(url: &str, model: &str, prompt: &[u32]) -> Result<(f64, f64)> {
    let body = serde_json::json!({"model": model, "prompt": prompt, "max_tokens": 2, "temperature": 0,
        "stream": true, "logprobs": 0, "logit_bias": {"0": -100, "2": -100}});
    let t0 = Instant::now();
    let r = reqwest::Client::new()
        .post(format!("{url}/v1/completions"))
        .json(&body)
        .send()
        .await?;
    anyhow::ensure!(r.status().is_success(), "status {}", r.status());
    let mut s = r.bytes_stream();
    let mut buf = String::new();
    let mut times = Vec::new();
    while let Some(b) = s.next().await {
        buf.push_str(&String::from_utf8_lossy(&b?));
        while let Some(i) = buf.find("\n\n") {
            let ev: String = buf.drain(..i + 2).collect();
            if ev.contains("\"token_logprobs\":[") && !ev.contains("\"token_logprobs\":[]") {
                times.push(t0.elapsed().as_secs_f64());
            }
        }
    }
    anyhow::ensure!(times.len() >= 2, "expected two tokens, saw {}", times.len());
    Ok((times[0], times[1]))
}

use crate::stats::median;

/// A fresh random cluster secret (64 hex digits).
fn random_secret() -> Result<String> {
    use std::io::Read;
    let mut b = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// One cluster under test: its processes (stopped on drop) and the gateway's URL.
struct Cluster {
    _procs: Vec<Proc>,
    url: String,
}

fn start_cluster(a: &DisaggBenchArgs, colocated: bool, secret: Option<&str>) -> Result<Cluster> {
    let model_args: Vec<String> = a
        .model
        .iter()
        .flat_map(|m| ["--model".to_string(), m.display().to_string()])
        .collect();
    let insecure: Vec<String> = secret
        .is_none()
        .then(|| "--insecure-cluster".to_string())
        .into_iter()
        .collect();
    let mut gw_args: Vec<String> = ["gateway", "--host", "127.0.0.1", "--port", "0"]
        .map(String::from)
        .to_vec();
    if colocated {
        gw_args.push("--colocated".into());
    }
    gw_args.extend(model_args.clone());
    gw_args.extend(insecure.clone());
    let gw = spawn(&gw_args, secret)?;
    let url = gw.1.clone();
    let threads = a.threads.to_string();
    let worker = |role: &str| -> Result<Proc> {
        let mut v: Vec<String> = [
            role,
            "--gateway",
            &url,
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--threads",
            &threads,
        ]
        .map(String::from)
        .to_vec();
        v.extend(model_args.clone());
        v.extend(insecure.clone());
        spawn(&v, secret)
    };
    let mut procs = vec![gw];
    if !colocated {
        procs.push(worker("prefill-worker")?);
    }
    procs.push(worker("decode-worker")?);
    Ok(Cluster { _procs: procs, url })
}

pub fn run(a: DisaggBenchArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let secret = random_secret()?;
    let (names, clusters) = if a.auth {
        (
            ["authenticated", "insecure"],
            [
                start_cluster(&a, false, Some(&secret))?,
                start_cluster(&a, false, None)?,
            ],
        )
    } else {
        (
            ["disaggregated", "colocated"],
            [
                start_cluster(&a, false, Some(&secret))?,
                start_cluster(&a, true, Some(&secret))?,
            ],
        )
    };
    // results[prompt] = [first A, second A, first B, second B]
    let mut results: Vec<(usize, [f64; 4])> = a.prompt.iter().map(|&n| (n, [0.0; 4])).collect();
    rt.block_on(async {
        let mut model = String::new();
        for c in &clusters {
            wait_ready(&c.url).await?;
            let models: serde_json::Value = reqwest::get(format!("{}/v1/models", c.url))
                .await?
                .json()
                .await?;
            model = models["data"][0]["id"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            // Warm up once so page faults and first allocations are not measured.
            measure(&c.url, &model, &[100, 200, 300]).await?;
        }
        for (n, r) in results.iter_mut() {
            let mut times: [Vec<f64>; 4] = Default::default();
            for k in 0..a.repeat {
                let prompt: Vec<u32> = (0..*n)
                    .map(|i| ((i * 7919 + k * 13) % 40000 + 100) as u32)
                    .collect();
                // Alternate which cluster goes first, round by round.
                for j in 0..2 {
                    let c = (j + k) % 2;
                    let (t1, t2) = measure(&clusters[c].url, &model, &prompt).await?;
                    times[2 * c].push(t1);
                    times[2 * c + 1].push(t2);
                }
            }
            for (slot, t) in r.iter_mut().zip(times) {
                *slot = median(t);
            }
            eprintln!("{n} prompt tokens: measured");
        }
        anyhow::Ok(())
    })?;
    let [x, y] = names;
    println!("{}", crate::host::describe());
    println!(
        "| prompt tokens | TTFT {x} | TTFT {y} | ratio | 2nd token {x} | 2nd token {y} | ratio |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for (n, r) in &results {
        println!(
            "| {n} | {:.1} ms | {:.1} ms | {:.3} | {:.1} ms | {:.1} ms | {:.3} |",
            r[0] * 1e3,
            r[2] * 1e3,
            r[0] / r[2],
            r[1] * 1e3,
            r[3] * 1e3,
            r[1] / r[3]
        );
    }
    println!(
        "threads per worker {} (0 = one per core), median of {}, requests alternating between the two clusters, processes on loopback",
        a.threads, a.repeat
    );
    Ok(())
}
