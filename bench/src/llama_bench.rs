//! Native llama.cpp's own benchmark (`llama-bench -o json`) as the peer of `genie bench
//! engine`: the same GGUF, threads, prompt lengths, decode context and steps, one
//! repetition a round so its rounds interleave with Genie's.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where `llama-bench` is: the path given, else `GENIE_LLAMA_BENCH`, else `llama-bench`
/// on `PATH`; `None` when none of them is an executable file.
pub fn locate(given: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = given {
        return Some(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("GENIE_LLAMA_BENCH") {
        return Some(PathBuf::from(p));
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("llama-bench"))
            .find(|p| p.is_file())
    })
}

/// One llama-bench test's throughput.
#[derive(Clone, Debug, PartialEq)]
pub struct Figure {
    pub n_prompt: usize,
    pub n_gen: usize,
    pub n_depth: usize,
    /// Tokens per second (its `avg_ts`).
    pub tokens_per_s: f64,
}

/// The tests of one `llama-bench -o json` run.
pub fn parse(json: &[u8]) -> Result<Vec<Figure>> {
    let v: serde_json::Value =
        serde_json::from_slice(json).context("llama-bench output is not JSON")?;
    let Some(tests) = v.as_array() else {
        bail!("llama-bench output is not a JSON array");
    };
    tests
        .iter()
        .map(|t| {
            let n = |k: &str| {
                t[k].as_u64()
                    .map(|n| n as usize)
                    .with_context(|| format!("llama-bench test without {k}"))
            };
            Ok(Figure {
                n_prompt: n("n_prompt")?,
                n_gen: n("n_gen")?,
                // Older llama-bench builds have no depth: zero.
                n_depth: t["n_depth"].as_u64().unwrap_or(0) as usize,
                tokens_per_s: t["avg_ts"]
                    .as_f64()
                    .context("llama-bench test without avg_ts")?,
            })
        })
        .collect()
}

/// One round of the peer: each prompt length once (prefill, no generation) and
/// `steps` generated tokens after `context` tokens of depth (decode).
pub struct Round {
    pub prefill: Vec<(usize, f64)>,
    pub decode: f64,
}

pub fn run_round(
    bin: &Path,
    model: &Path,
    threads: usize,
    prefill: &[usize],
    context: usize,
    steps: usize,
) -> Result<Round> {
    let p: Vec<String> = prefill.iter().map(|n| n.to_string()).collect();
    let pp = invoke(
        bin,
        model,
        threads,
        &["-p", &p.join(","), "-n", "0", "-d", "0"],
    )?;
    let tg = invoke(
        bin,
        model,
        threads,
        &[
            "-p",
            "0",
            "-n",
            &steps.to_string(),
            "-d",
            &context.to_string(),
        ],
    )?;
    let prefill = prefill
        .iter()
        .map(|&n| {
            pp.iter()
                .find(|f| f.n_prompt == n && f.n_gen == 0)
                .map(|f| (n, f.tokens_per_s))
                .with_context(|| format!("llama-bench gave no figure for prompt {n}"))
        })
        .collect::<Result<_>>()?;
    let decode = tg
        .iter()
        .find(|f| f.n_gen == steps && f.n_prompt == 0)
        .map(|f| f.tokens_per_s)
        .context("llama-bench gave no decode figure")?;
    Ok(Round { prefill, decode })
}

fn invoke(bin: &Path, model: &Path, threads: usize, test: &[&str]) -> Result<Vec<Figure>> {
    let out = Command::new(bin)
        .arg("-m")
        .arg(model)
        .args(["-t", &threads.to_string(), "-r", "1", "-o", "json"])
        .args(test)
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(5).collect();
        bail!(
            "{} failed ({}): {}",
            bin.display(),
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
        );
    }
    parse(&out.stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_llama_bench_json_and_refuses_what_is_not() {
        let json = br#"[
          {"build_commit": "x", "n_prompt": 256, "n_gen": 0, "n_depth": 0, "avg_ts": 201.5, "samples_ts": [201.5]},
          {"n_prompt": 0, "n_gen": 32, "n_depth": 64, "avg_ts": 88.25}
        ]"#;
        let f = parse(json).unwrap();
        assert_eq!(
            f,
            vec![
                Figure {
                    n_prompt: 256,
                    n_gen: 0,
                    n_depth: 0,
                    tokens_per_s: 201.5
                },
                Figure {
                    n_prompt: 0,
                    n_gen: 32,
                    n_depth: 64,
                    tokens_per_s: 88.25
                }
            ]
        );
        assert!(parse(b"{}").is_err());
        assert!(parse(b"not json").is_err());
        assert!(parse(br#"[{"n_prompt": 1, "n_gen": 0}]"#).is_err());
    }
}
