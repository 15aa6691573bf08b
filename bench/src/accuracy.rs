//! `genie bench accuracy`: how close the engine comes to the exact reference (a float64
//! forward pass over the GGUF's dequantised weights, `genie-reference`), beside llama.cpp
//! on the same positions. The engine writes greedy continuations of varied chat prompts as
//! it serves them; the reference and llama.cpp (through its Python bindings, which expose
//! the logits of every position) are teacher-forced on those tokens. Per candidate: top-1
//! agreement with the reference and the mean |Δ log-probability| of the chosen token.
//!
//! Scored on one side's own greedy tokens, a near-tie that side broke by over-rating a
//! token counts against it; so with llama.cpp beside it, llama.cpp writes its own greedy
//! continuations too, each side is scored on both sets, and the ratio over all positions
//! of both sets is the one the goal reads.

use crate::engine::BenchModel;
use anyhow::{bail, Context, Result};
use clap::Args;
use genie_reference::accuracy::{Agreement, Scored};
use genie_reference::cases::{
    engine_cases, engine_forced, reference_rows, score, Case, CHAT_PROMPTS, MORE_PROMPTS,
};
use genie_reference::Reference;
use serde_json::{json, Value};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

#[derive(Args, Debug)]
pub struct AccuracyBenchArgs {
    #[command(flatten)]
    pub engine: BenchModel,
    /// Tokens of each continuation at most.
    #[arg(long, default_value_t = 24)]
    pub steps: usize,
    /// How many varied chat prompts: the test suite's 8, then up to 24 more.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=32))]
    pub prompts: u16,
    /// A Python interpreter with `llama-cpp-python` installed: llama.cpp is scored on the
    /// same positions (scripts/llama_cpp_logprobs.py).
    #[arg(long, value_name = "PYTHON")]
    pub llama_cpp_python: Option<String>,
}

fn line(name: &str, a: &Agreement) {
    println!(
        "{name:<10} positions {:>4}  top-1 agreement {:.3}  mean |dlogprob| {:.4}  max {:.3}",
        a.positions,
        a.top1(),
        a.mean_abs_dlogprob(),
        a.abs_dlogprob_max
    );
}

/// Runs the helper script on `input`; its JSON answer.
fn script(python: &str, input: Value) -> Result<Value> {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../scripts/llama_cpp_logprobs.py"
    );
    let mut child = Command::new(python)
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {python} {script}"))?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(input.to_string().as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("{script} failed: {}", out.status);
    }
    serde_json::from_slice(&out.stdout).context("the script's JSON")
}

/// `[[top, chosen, logprob], ...]` as scores.
fn scored(v: &Value) -> Result<Vec<Scored>> {
    v.as_array()
        .context("a case")?
        .iter()
        .map(|p| {
            Ok(Scored {
                top: p[0].as_u64().context("top")? as u32,
                chosen: p[1].as_u64().context("chosen")? as u32,
                chosen_logprob: p[2].as_f64().context("logprob")?,
            })
        })
        .collect()
}

/// llama.cpp's scores at each case's positions (every position's logits in one batch).
fn llama_cpp(
    python: &str,
    model: &Path,
    threads: usize,
    cases: &[Case],
) -> Result<Vec<Vec<Scored>>> {
    let v = script(
        python,
        json!({
            "model": model,
            "threads": threads.max(1),
            "cases": cases.iter().map(|c| {
                let (tokens, from) = c.forced();
                json!({"tokens": tokens, "from": from, "chosen": c.scored.iter().map(|s| s.chosen).collect::<Vec<_>>()})
            }).collect::<Vec<_>>(),
        }),
    )?;
    let version = v["version"].as_str().unwrap_or("?");
    println!("llama.cpp: llama-cpp-python {version}, logits of every position in one batch");
    v["cases"]
        .as_array()
        .context("cases")?
        .iter()
        .map(scored)
        .collect()
}

/// llama.cpp's own greedy continuations (one token at a time) and its scores, for a
/// model the engine does not run.
fn llama_cpp_cases(
    python: &str,
    model: &Path,
    threads: usize,
    prompts: &[&str],
    steps: usize,
) -> Result<Vec<Case>> {
    let v = script(
        python,
        json!({
            "model": model,
            "threads": threads.max(1),
            "generate": {"prompts": prompts, "steps": steps},
        }),
    )?;
    let version = v["version"].as_str().unwrap_or("?");
    println!("llama.cpp: llama-cpp-python {version}, greedy continuations one token at a time");
    v["generated"]
        .as_array()
        .context("generated")?
        .iter()
        .zip(prompts)
        .map(|(g, p)| {
            let tokens: Vec<u32> = serde_json::from_value(g["tokens"].clone())?;
            let from = g["from"].as_u64().context("from")? as usize;
            Ok(Case {
                prompt: p.to_string(),
                tokens,
                prompt_len: from + 1,
                scored: scored(&g["scored"])?,
            })
        })
        .collect()
}

pub fn run(a: AccuracyBenchArgs) -> Result<()> {
    println!("{}", crate::host::describe());
    let t = Instant::now();
    let prompts: Vec<&str> = CHAT_PROMPTS
        .iter()
        .chain(&MORE_PROMPTS)
        .take(a.prompts as usize)
        .copied()
        .collect();
    let prompts = &prompts[..];
    // The continuations, and each candidate's scores at their positions; with llama.cpp,
    // a second set written by llama.cpp on which the engine is teacher-forced.
    let mut second: Option<(Vec<Case>, Vec<Vec<Scored>>)> = None;
    let (path, cases, candidates) = match a.engine.load() {
        Ok((engine, path)) => {
            let cases = engine_cases(&engine, prompts, a.steps)?;
            let genie: Vec<Vec<Scored>> = cases.iter().map(|c| c.scored.clone()).collect();
            let mut candidates = vec![("genie", genie)];
            if let Some(py) = &a.llama_cpp_python {
                let threads = engine.model.threads();
                candidates.push(("llama.cpp", llama_cpp(py, &path, threads, &cases)?));
                let theirs = llama_cpp_cases(py, &path, threads, prompts, a.steps)?;
                let forced = theirs
                    .iter()
                    .map(|c| engine_forced(&engine, c))
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                second = Some((theirs, forced));
            }
            (path, cases, candidates)
        }
        // A model the engine does not run yet (another architecture, K-quants):
        // llama.cpp writes the continuations and is scored alone, which checks the
        // reference's forward pass for it.
        Err(why) => {
            let Some(py) = &a.llama_cpp_python else {
                return Err(why.context(
                    "the engine cannot run this model; with --llama-cpp-python, llama.cpp is scored against the reference alone",
                ));
            };
            println!(
                "the engine does not run this model ({why:#}); llama.cpp writes the continuations"
            );
            let path = genie_engine::fetch::resolve_model(a.engine.model.as_deref())?;
            let threads = if a.engine.threads == 0 {
                2
            } else {
                a.engine.threads
            };
            let cases = llama_cpp_cases(py, &path, threads, prompts, a.steps)?;
            let scored: Vec<Vec<Scored>> = cases.iter().map(|c| c.scored.clone()).collect();
            (path, cases, vec![("llama.cpp", scored)])
        }
    };
    println!(
        "model: {} ({} prompts, greedy continuations of at most {} tokens)",
        path.display(),
        prompts.len(),
        a.steps
    );
    let reference = Reference::load(&path)?;
    let rows = reference_rows(&reference, &cases)?;
    let second_rows = match &second {
        Some((theirs, _)) => Some(reference_rows(&reference, theirs)?),
        None => None,
    };
    println!(
        "continuations, candidates' scores and float64 reference rows: {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let mut totals = Vec::new();
    for (name, scored) in &candidates {
        let (each, total) = score(&rows, scored);
        for (c, e) in cases.iter().zip(&each) {
            line(name, e);
            println!("           {:?}", c.prompt);
        }
        totals.push((name, total));
    }
    println!("against the exact reference, all positions:");
    for (name, t) in &totals {
        line(name, t);
    }
    let (Some((theirs, forced)), Some(second_rows), [(_, g), (_, l)]) =
        (&second, &second_rows, totals.as_slice())
    else {
        return Ok(());
    };
    let ratio = |on: &str, g: &Agreement, l: &Agreement| {
        println!(
            "genie / llama.cpp mean |dlogprob| {on}: {:.2}x; top-1 agreement {:+.3}",
            g.mean_abs_dlogprob() / l.mean_abs_dlogprob(),
            g.top1() - l.top1()
        )
    };
    let both = |title: &str, g: &Agreement, l: &Agreement| {
        println!("against the exact reference, {title}:");
        line("genie", g);
        line("llama.cpp", l);
    };
    ratio("on genie's continuations", g, l);
    // llama.cpp's continuations: the engine teacher-forced on them, llama.cpp on its own.
    let theirs_scored: Vec<Vec<Scored>> = theirs.iter().map(|c| c.scored.clone()).collect();
    let (_, g2) = score(second_rows, forced);
    let (_, l2) = score(second_rows, &theirs_scored);
    both("on llama.cpp's greedy continuations", &g2, &l2);
    ratio("on llama.cpp's continuations", &g2, &l2);
    // Both sets' positions together: neither side chose all of them.
    let all_rows: Vec<Vec<Vec<f64>>> = rows.iter().chain(second_rows).cloned().collect();
    let pooled = |mine: &[Vec<Scored>], other: &[Vec<Scored>]| {
        let both: Vec<Vec<Scored>> = mine.iter().chain(other).cloned().collect();
        score(&all_rows, &both).1
    };
    let g_all = pooled(&candidates[0].1, forced);
    let l_all = pooled(&candidates[1].1, &theirs_scored);
    both("both sets of continuations", &g_all, &l_all);
    ratio("over both sets (goal <= 1.10x)", &g_all, &l_all);
    // How far the pooled ratio moves with which prompts were drawn: per prompt, both
    // sides' sums over both of its continuations, resampled with replacement.
    let per_prompt = |mine: &[Vec<Scored>], other: &[Vec<Scored>]| {
        let (a, _) = score(&rows, mine);
        let (b, _) = score(second_rows, other);
        a.iter()
            .zip(&b)
            .map(|(x, y)| {
                (
                    x.abs_dlogprob_sum + y.abs_dlogprob_sum,
                    x.positions + y.positions,
                )
            })
            .collect::<Vec<_>>()
    };
    let (lo, hi) = bootstrap_ratio(
        &per_prompt(&candidates[0].1, forced),
        &per_prompt(&candidates[1].1, &theirs_scored),
        2000,
    );
    println!(
        "over both sets, 90 % bootstrap interval over the {} prompts: {lo:.2}x to {hi:.2}x",
        cases.len()
    );
    Ok(())
}

/// The 5th and 95th percentiles of the pooled ratio `Σ g / Σ l` (sums of |Δ log-prob|
/// over positions, per prompt `(sum, positions)`) over `rounds` resamplings of the
/// prompts with replacement, the same prompts for both sides. A fixed seed: the same
/// figures give the same interval.
fn bootstrap_ratio(g: &[(f64, usize)], l: &[(f64, usize)], rounds: usize) -> (f64, f64) {
    assert_eq!(g.len(), l.len(), "bootstrap: one pair a prompt");
    let n = g.len();
    if n == 0 || rounds == 0 {
        return (f64::NAN, f64::NAN);
    }
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut ratios: Vec<f64> = (0..rounds)
        .map(|_| {
            let (mut gs, mut gn, mut ls, mut ln) = (0.0, 0, 0.0, 0);
            for _ in 0..n {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let i = ((state >> 33) as usize) % n;
                gs += g[i].0;
                gn += g[i].1;
                ls += l[i].0;
                ln += l[i].1;
            }
            (gs / gn.max(1) as f64) / (ls / ln.max(1) as f64)
        })
        .collect();
    ratios.sort_by(f64::total_cmp);
    let at = |q: f64| ratios[((rounds - 1) as f64 * q).round() as usize];
    (at(0.05), at(0.95))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_interval_brackets_the_ratio_and_narrows_with_agreeing_prompts() {
        // Every prompt at ratio 1.2: the interval is that point.
        let g = vec![(1.2, 10); 20];
        let l = vec![(1.0, 10); 20];
        let (lo, hi) = bootstrap_ratio(&g, &l, 500);
        assert!(
            (lo - 1.2).abs() < 1e-12 && (hi - 1.2).abs() < 1e-12,
            "{lo} {hi}"
        );
        // Half the prompts at 2.0, half at 0.5: the pooled ratio 1.0 lies inside a wide
        // interval.
        let g: Vec<_> = (0..20)
            .map(|i| (if i % 2 == 0 { 2.0 } else { 0.5 }, 10))
            .collect();
        let (lo, hi) = bootstrap_ratio(&g, &l, 2000);
        assert!(lo < 1.0 && hi > 1.0 && hi - lo > 0.2, "{lo} {hi}");
    }
}
