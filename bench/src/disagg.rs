//! `genie bench disagg`: time to first token (TTFT) and to second token, disaggregated
//! (gateway + prefill worker + decode worker processes, KV over TCP) against colocated
//! (gateway + one decode worker that prefills itself), for several prompt lengths.
//! The second token needs the KV at the decode worker, so it shows what the layer-by-layer
//! transfer costs after the prefill.

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
}

struct Proc(Child, String);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The cluster secret the benchmark's processes share: the caller's GENIE_CLUSTER_SECRET,
/// else 32 random bytes (hex) made for this run. Children get it through the environment,
/// never the command line.
fn cluster_secret() -> Result<&'static str> {
    static SECRET: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    if let Some(s) = SECRET.get() {
        return Ok(s);
    }
    let s = match std::env::var("GENIE_CLUSTER_SECRET") {
        Ok(s) if !s.is_empty() => s,
        _ => {
            let mut b = [0u8; 32];
            std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut b)?;
            b.iter().map(|x| format!("{x:02x}")).collect()
        }
    };
    Ok(SECRET.get_or_init(|| s))
}

fn spawn(args: &[String]) -> Result<Proc> {
    let mut child = Command::new(std::env::current_exe()?)
        .args(args)
        .env("GENIE_CLUSTER_SECRET", cluster_secret()?)
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

pub fn run(a: DisaggBenchArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let threads = a.threads.to_string();
    let model_args: Vec<String> = a
        .model
        .iter()
        .flat_map(|m| ["--model".to_string(), m.display().to_string()])
        .collect();
    let mut results: Vec<(usize, [f64; 4])> = a.prompt.iter().map(|&n| (n, [0.0; 4])).collect();
    for (mode, colocated) in [("disaggregated", false), ("colocated", true)] {
        let mut gw_args: Vec<String> = ["gateway", "--host", "127.0.0.1", "--port", "0"]
            .map(String::from)
            .to_vec();
        if colocated {
            gw_args.push("--colocated".into());
        }
        gw_args.extend(model_args.clone());
        let gw = spawn(&gw_args)?;
        let worker = |role: &str| -> Result<Proc> {
            let mut v: Vec<String> = [
                role,
                "--gateway",
                &gw.1,
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
            spawn(&v)
        };
        let _workers: Vec<Proc> = if colocated {
            vec![worker("decode-worker")?]
        } else {
            vec![worker("prefill-worker")?, worker("decode-worker")?]
        };
        rt.block_on(async {
            wait_ready(&gw.1).await?;
            let models: serde_json::Value = reqwest::get(format!("{}/v1/models", gw.1))
                .await?
                .json()
                .await?;
            let model = models["data"][0]["id"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            // Warm up once so page faults and first allocations are not measured.
            measure(&gw.1, &model, &[100, 200, 300]).await?;
            for (n, r) in results.iter_mut() {
                let mut first = Vec::new();
                let mut second = Vec::new();
                for k in 0..a.repeat {
                    let prompt: Vec<u32> = (0..*n)
                        .map(|i| ((i * 7919 + k * 13) % 40000 + 100) as u32)
                        .collect();
                    let (t1, t2) = measure(&gw.1, &model, &prompt).await?;
                    first.push(t1);
                    second.push(t2);
                }
                let base = if colocated { 2 } else { 0 };
                r[base] = median(first);
                r[base + 1] = median(second);
            }
            eprintln!("{mode}: measured");
            anyhow::Ok(())
        })?;
    }
    println!("| prompt tokens | TTFT disaggregated | TTFT colocated | ratio | 2nd token disaggregated | 2nd token colocated | ratio |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for (n, r) in &results {
        println!(
            "| {n} | {:.1} ms | {:.1} ms | {:.2} | {:.1} ms | {:.1} ms | {:.2} |",
            r[0] * 1e3,
            r[2] * 1e3,
            r[0] / r[2],
            r[1] * 1e3,
            r[3] * 1e3,
            r[1] / r[3]
        );
    }
    println!(
        "threads per worker {} (0 = one per core), median of {}, processes on loopback",
        a.threads, a.repeat
    );
    Ok(())
}
