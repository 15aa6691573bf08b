//! `genie profile`: measures the engine on this host (prefill forwards of several shapes,
//! decode steps over batch sizes and contexts, KV transfers over TCP loopback), fits the
//! cost curves of [`genie_scheduler::cost_profile`] and writes them as a versioned JSON
//! profile, printing each measurement beside its fitted value.

use anyhow::{Context, Result};
use clap::Args;
use genie_engine::model::Model;
use genie_scheduler::cost_profile::{
    CostProfile, DecodeCurve, DecodePoint, LinkCurve, LinkPoint, PrefillCurve, PrefillPoint,
};
use std::time::Instant;

use crate::stats::median;

#[derive(Args, Debug)]
pub struct ProfileArgs {
    #[command(flatten)]
    pub engine: crate::engine::BenchModel,
    /// Prefill shapes: a prompt length, or COUNTxLENGTH for a batch of equal prompts.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "16,64,256,1024,4x64,4x256"
    )]
    pub prefill: Vec<String>,
    /// Decode batch sizes.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    pub batch: Vec<usize>,
    /// Contexts (tokens in each sequence's cache) of the decode measurements.
    #[arg(long, value_delimiter = ',', default_value = "64,512")]
    pub context: Vec<usize>,
    /// Decode steps timed per measurement.
    #[arg(long, default_value_t = 8)]
    pub steps: usize,
    /// Prompt lengths whose KV is moved over TCP loopback for the link curve (empty: no
    /// link measured).
    #[arg(long, value_delimiter = ',', default_value = "16,256,2048")]
    pub link_tokens: Vec<usize>,
    /// Measurements per point (the median is fitted).
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// Where to write the profile.
    #[arg(long, default_value = "genie-profile.json")]
    pub out: std::path::PathBuf,
    /// Save the live curves a running server's workers fitted to their own forwards
    /// (`GET URL/v1/plans`; the API key, if the server wants one, from GENIE_API_KEY)
    /// instead of measuring here.
    #[arg(long, value_name = "URL")]
    pub from: Option<String>,
}

/// One prefill shape: the prompt length of each sequence.
fn parse_shape(s: &str) -> Result<Vec<usize>> {
    let bad = || format!("prefill shape `{s}`: give LENGTH or COUNTxLENGTH, both above 0");
    let (count, len) = match s.split_once('x') {
        Some((c, l)) => (c.trim().parse::<usize>(), l.trim().parse::<usize>()),
        None => (Ok(1), s.trim().parse::<usize>()),
    };
    match (count, len) {
        (Ok(c), Ok(l)) if c > 0 && l > 0 && c <= 64 => Ok(vec![l; c]),
        _ => anyhow::bail!(bad()),
    }
}

/// Milliseconds of one prefill forward of sequences of `shape` tokens, fresh caches.
fn prefill_ms(model: &Model, shape: &[usize]) -> Result<f64> {
    Ok(crate::engine::prefill_seconds(model, shape)? * 1e3)
}

/// Milliseconds of one decode step of `batch` sequences at about `ctx` tokens of context
/// (the median step of `steps`).
fn decode_ms(model: &Model, batch: usize, ctx: usize, steps: usize) -> Result<f64> {
    let (mut caches, mut tokens) = crate::engine::decode_start(model, batch, ctx, steps)?;
    let mut times = Vec::with_capacity(steps);
    for _ in 0..steps.max(1) {
        let t0 = Instant::now();
        tokens = crate::engine::decode_step(model, &tokens, &mut caches)?;
        times.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    Ok(median(times))
}

/// The live curves of a running server's workers as a profile: the prefill curve of the
/// prefill worker (or, colocated, of a decode worker) with the most measurements, the
/// decode curve likewise. `plans` is the body of `GET /v1/plans`.
pub fn live_profile(plans: &serde_json::Value, url: &str) -> Result<CostProfile> {
    use genie_protocol::costs::LiveCurve;
    let workers = plans["workers"]
        .as_array()
        .context("`/v1/plans` has no `workers` list: is this a Genie gateway?")?;
    let best = |kind: &str| -> Option<LiveCurve> {
        workers
            .iter()
            .filter_map(|w| serde_json::from_value::<LiveCurve>(w["costs"][kind].clone()).ok())
            .max_by_key(|c| c.points)
    };
    let (Some(p), Some(d)) = (best("prefill"), best("decode")) else {
        anyhow::bail!(
            "{url}: the workers report no {} curve yet (each needs {} forwards of that kind; send traffic first)",
            if best("prefill").is_none() { "prefill" } else { "decode" },
            genie_protocol::costs::OnlineFit::MIN_POINTS
        );
    };
    Ok(CostProfile {
        version: CostProfile::VERSION,
        hardware: format!("the workers behind {url}"),
        model: plans["model"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        threads: 0,
        source: format!("live curves from {url}/v1/plans (online calibration)"),
        prefill: PrefillCurve::from_live(&p),
        decode: DecodeCurve::from_live(&d),
        links: Vec::new(),
    })
}

fn from_server(url: &str, out: &std::path::Path) -> Result<()> {
    let url = url.trim_end_matches('/');
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let plans: serde_json::Value = rt.block_on(async {
        let mut req = reqwest::Client::new().get(format!("{url}/v1/plans"));
        if let Ok(key) = std::env::var("GENIE_API_KEY") {
            req = req.bearer_auth(key);
        }
        let r = req
            .send()
            .await
            .with_context(|| format!("GET {url}/v1/plans"))?;
        anyhow::ensure!(
            r.status().is_success(),
            "GET {url}/v1/plans: {} (a server with API keys needs GENIE_API_KEY)",
            r.status()
        );
        Ok::<_, anyhow::Error>(r.json().await?)
    })?;
    let profile = live_profile(&plans, url)?;
    std::fs::write(out, profile.to_json() + "\n")
        .with_context(|| format!("writing {}", out.display()))?;
    println!("{}\n{}", profile.prefill, profile.decode);
    println!("wrote {}", out.display());
    Ok(())
}

pub fn run(a: ProfileArgs) -> Result<()> {
    if let Some(url) = &a.from {
        return from_server(url, &a.out);
    }
    let repeat = a.repeat.max(1);
    let shapes: Vec<Vec<usize>> = a
        .prefill
        .iter()
        .map(|s| parse_shape(s))
        .collect::<Result<_>>()?;
    anyhow::ensure!(
        a.batch.iter().all(|&b| (1..=256).contains(&b))
            && a.context.iter().all(|&c| (1..=32768).contains(&c)),
        "--batch takes 1 to 256 and --context 1 to 32768"
    );
    let (engine, path) = a.engine.load()?;
    let model = &engine.model;
    let host = crate::host::describe();
    let kind = genie_engine::quant::kernel_kind();
    eprintln!("{host}");
    eprintln!("genie: {} threads, {} kernels", model.threads(), kind.isa());
    // One warm-up forward: page in the weights and grow the pools before any clock.
    prefill_ms(model, &[32])?;

    let mut prefill = Vec::new();
    for shape in &shapes {
        let t: Vec<f64> = (0..repeat)
            .map(|_| prefill_ms(model, shape))
            .collect::<Result<_>>()?;
        prefill.push(PrefillPoint {
            seq_tokens: shape.clone(),
            ms: median(t),
        });
    }
    let mut decode = Vec::new();
    for &b in &a.batch {
        for &c in &a.context {
            let t: Vec<f64> = (0..repeat)
                .map(|_| decode_ms(model, b, c, a.steps))
                .collect::<Result<_>>()?;
            decode.push(DecodePoint {
                contexts: vec![c; b],
                ms: median(t),
            });
        }
    }
    let shape = model.kv_shape();
    let link = if a.link_tokens.is_empty() {
        Vec::new()
    } else {
        crate::kv::tcp_link_points(
            shape.n_layers,
            shape.kv_heads,
            shape.head_dim,
            &a.link_tokens,
            repeat * 3,
        )?
        .into_iter()
        .map(|(bytes, s)| LinkPoint { bytes, ms: s * 1e3 })
        .collect()
    };

    let pc = PrefillCurve::fit(&prefill)?;
    let dc = DecodeCurve::fit(&decode)?;
    let links = if link.is_empty() {
        Vec::new()
    } else {
        vec![LinkCurve::fit("tcp", &link)?]
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let profile = CostProfile {
        version: CostProfile::VERSION,
        hardware: format!(
            "{}; {} kernels",
            host.trim_start_matches("host: "),
            kind.isa()
        ),
        model: name,
        threads: model.threads(),
        source: format!("measured by `genie profile` (medians of {repeat} rounds)"),
        prefill: pc,
        decode: dc,
        links,
    };

    println!("{host}");
    println!("| measurement | measured ms | fitted ms | fitted / measured |");
    println!("|---|---:|---:|---:|");
    let row =
        |what: String, m: f64, f: f64| println!("| {what} | {m:.2} | {f:.2} | {:.3} |", f / m);
    for p in &prefill {
        let what = match p.seq_tokens.as_slice() {
            [n] => format!("prefill {n} tokens"),
            s => format!("prefill {} x {} tokens", s.len(), s[0]),
        };
        row(what, p.ms, pc.ms(&p.seq_tokens));
    }
    for p in &decode {
        row(
            format!(
                "decode step, batch {} at context {}",
                p.contexts.len(),
                p.contexts[0]
            ),
            p.ms,
            dc.ms(&p.contexts),
        );
    }
    if let Some(l) = profile.links.first() {
        for p in &link {
            row(
                format!("KV over TCP loopback, {} bytes", p.bytes),
                p.ms,
                l.ms(p.bytes),
            );
        }
    }
    println!("{pc}\n{dc}");
    if let Some(l) = profile.links.first() {
        println!(
            "tcp link ms = {:.3} + bytes / {:.2} GB/s (rms error {:.1} %)",
            l.latency_ms,
            l.gbytes_per_s,
            l.fit.rms_rel_error * 100.0
        );
    }
    std::fs::write(&a.out, profile.to_json() + "\n")
        .with_context(|| format!("writing {}", a.out.display()))?;
    println!("wrote {}", a.out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_curves_of_a_plans_body_become_a_profile_or_say_what_is_missing() {
        let body = serde_json::json!({
            "model": {"name": "SmolLM2-135M-Instruct"},
            "workers": [
                {"role": "prefill", "costs": {"prefill": {"coef": [1.0, 2.0, 0.001], "points": 40, "rms_rel_error": 0.1}}},
                {"role": "decode", "costs": {
                    "prefill": {"coef": [9.0, 9.0, 9.0], "points": 5, "rms_rel_error": 0.3},
                    "decode": {"coef": [3.0, 4.0, 0.005], "points": 900, "rms_rel_error": 0.2}}},
                {"role": "decode", "costs": null}
            ]
        });
        let p = live_profile(&body, "http://h:8000").unwrap();
        assert_eq!(p.version, CostProfile::VERSION);
        assert_eq!(p.model, "SmolLM2-135M-Instruct");
        // The curve with the most measurements of each kind.
        assert_eq!((p.prefill.per_token_ms, p.prefill.fit.points), (2.0, 40));
        assert_eq!((p.decode.per_seq_ms, p.decode.fit.points), (4.0, 900));
        let back = CostProfile::from_json(&p.to_json()).unwrap();
        assert_eq!(back.decode.fit.points, 900);

        let none = serde_json::json!({"workers": [{"role": "decode", "costs": null}]});
        let e = live_profile(&none, "http://h:8000")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no prefill curve yet") && e.contains("send traffic"),
            "{e}"
        );
        let e = live_profile(&serde_json::json!({}), "u")
            .unwrap_err()
            .to_string();
        assert!(e.contains("workers"), "{e}");
    }

    #[test]
    fn prefill_shapes_parse_or_say_what_is_wrong() {
        assert_eq!(parse_shape("256").unwrap(), vec![256]);
        assert_eq!(parse_shape("4x64").unwrap(), vec![64; 4]);
        for bad in ["0", "x64", "4x", "0x8", "65x8", "abc", "-3"] {
            let e = parse_shape(bad).unwrap_err().to_string();
            assert!(e.contains(bad) && e.contains("COUNTxLENGTH"), "{bad}: {e}");
        }
    }
}
