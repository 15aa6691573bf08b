//! `genie bench grammar`: what constrained decoding costs. Batched decode steps of the real
//! model with every sequence under a grammar (any JSON object, or a person schema), beside
//! the same steps unconstrained, in interleaved rounds; the time a step spends sampling
//! (mask, draw, commit) is reported apart from the forward. Also the one-time cost of the
//! vocabulary environment and the per-request cost of compiling a schema.

use crate::engine::BenchModel;
use crate::stats::median;
use anyhow::{Context, Result};
use clap::Args;
use genie_engine::chat_template::ChatMessage;
use genie_engine::sampling::{Sampler, SamplingParams};
use genie_grammar::GrammarSpec;
use serde_json::json;
use std::time::{Duration, Instant};

#[derive(Args, Debug)]
pub struct GrammarBenchArgs {
    #[command(flatten)]
    pub engine: BenchModel,
    /// Batch sizes (sequences decoding together).
    #[arg(long, value_delimiter = ',', default_value = "1,16")]
    pub batch: Vec<usize>,
    /// Decode steps timed per measurement.
    #[arg(long, default_value_t = 48)]
    pub steps: usize,
    /// Rounds: each measures every batch unconstrained, then under each grammar.
    #[arg(long, default_value_t = 5)]
    pub repeat: usize,
}

/// The schema of the structured-output tests: strings, an integer, an enum, a bounded array.
fn person() -> GrammarSpec {
    GrammarSpec::JsonSchema {
        schema: json!({
            "type": "object",
            "properties": {
                "name": {"type": "string", "maxLength": 40},
                "age": {"type": "integer"},
                "city": {"type": "string", "enum": ["Paris", "Tokyo", "Lima", "other"]},
                "hobbies": {"type": "array", "items": {"type": "string", "maxLength": 30}, "maxItems": 3},
                "retired": {"type": "boolean"}
            },
            "required": ["name", "age", "city", "hobbies", "retired"]
        }),
        strict: true,
    }
}

/// One measurement: (seconds per step, seconds per step spent sampling).
fn measure(
    engine: &genie_engine::generate::Engine,
    prompt: &[u32],
    batch: usize,
    steps: usize,
    grammar: Option<&GrammarSpec>,
    budgeted: bool,
) -> Result<(f64, f64)> {
    let model = &engine.model;
    let stop = engine.end_of_generation_ids();
    let params = SamplingParams {
        temperature: 0.7,
        grammar: grammar.cloned(),
        ..SamplingParams::default()
    };
    let mut caches: Vec<_> = (0..batch)
        .map(|_| model.new_cache(prompt.len() + steps + 1))
        .collect();
    let mut samplers: Vec<Sampler> = (0..batch)
        .map(|i| Sampler::new(params.clone(), i as u64))
        .collect();
    let mut next = Vec::with_capacity(batch);
    for (c, s) in caches.iter_mut().zip(&mut samplers) {
        let mut l = model.prefill(prompt, c)?;
        let t = s.sample(&mut l, model.grammars())?.token;
        s.record(t)?;
        next.push(t);
    }
    let mut sampling = Duration::ZERO;
    let t0 = Instant::now();
    for step in 0..steps {
        // Budgeted: every step is within the closing window (the answer must end by
        // `steps`), so each also searches for a closing path.
        let remaining = if budgeted { steps - step } else { usize::MAX };
        let mut items: Vec<(u32, &mut _)> = next.iter().copied().zip(caches.iter_mut()).collect();
        let logits = model.decode_batch(&mut items)?;
        let ts = Instant::now();
        for ((mut l, s), n) in logits.into_iter().zip(&mut samplers).zip(&mut next) {
            let t = s.sample_within(&mut l, model.grammars(), remaining)?.token;
            if stop.contains(&t) {
                // A complete value: the sequence starts another under a fresh grammar (the
                // stop token is fed like any other; only the sampling cost is measured).
                *s = Sampler::new(params.clone(), u64::from(t));
            } else {
                s.record(t)?;
            }
            *n = t;
        }
        sampling += ts.elapsed();
    }
    let secs = t0.elapsed().as_secs_f64();
    Ok((secs / steps as f64, sampling.as_secs_f64() / steps as f64))
}

pub fn run(a: GrammarBenchArgs) -> Result<()> {
    let (engine, _) = a.engine.load()?;
    let lazy = engine
        .model
        .grammars()
        .context("the model has no tokenizer for constrained decoding")?;
    let t0 = Instant::now();
    let grammars = lazy.get()?;
    let env_ms = t0.elapsed().as_secs_f64() * 1e3;
    let compile = |spec: &GrammarSpec| -> Result<f64> {
        let mut v = Vec::new();
        for _ in 0..50 {
            let t = Instant::now();
            grammars.compile(spec)?;
            v.push(t.elapsed().as_secs_f64() * 1e3);
        }
        Ok(median(v))
    };
    let (object_ms, person_ms) = (compile(&GrammarSpec::JsonObject)?, compile(&person())?);
    let text = engine.render_chat(
        &[ChatMessage::new(
            "user",
            "Invent a person who lives in Lima. Reply in JSON.",
        )],
        true,
    )?;
    let prompt = engine.tokenize(&text, true)?;
    let specs = [
        (None, false),
        (Some(GrammarSpec::JsonObject), false),
        (Some(person()), false),
        (Some(person()), true),
    ];
    // results[batch][spec] = (step seconds, sampling seconds) per round
    let mut results = vec![vec![Vec::new(); specs.len()]; a.batch.len()];
    for round in 0..a.repeat {
        eprintln!("round {} of {}", round + 1, a.repeat);
        for (bi, &b) in a.batch.iter().enumerate() {
            for (si, (spec, budgeted)) in specs.iter().enumerate() {
                results[bi][si].push(measure(
                    &engine,
                    &prompt,
                    b,
                    a.steps,
                    spec.as_ref(),
                    *budgeted,
                )?);
            }
        }
    }
    println!("{}", crate::host::describe());
    println!(
        "genie kernels: {}; threads {}; {} rounds (each: unconstrained, json_object, person schema, person schema within a budget), {} decode steps at temperature 0.7 after a {}-token prompt; medians",
        genie_engine::quant::kernel_kind().isa(),
        engine.model.threads(),
        a.repeat,
        a.steps,
        prompt.len()
    );
    println!(
        "vocabulary environment: {env_ms:.0} ms once per model; compile: json_object {object_ms:.2} ms, person schema {person_ms:.2} ms (median of 50)"
    );
    println!();
    println!("| batch | grammar | step ms | sampling ms a step | per sequence µs | step / unconstrained, per round: median (min-max) | decode tok/s |");
    println!("|---:|---|---:|---:|---:|---:|---:|");
    let names = [
        "none",
        "json_object",
        "person schema (strict)",
        "person schema, every step in the closing window",
    ];
    for (bi, &b) in a.batch.iter().enumerate() {
        let base: Vec<f64> = results[bi][0].iter().map(|r| r.0).collect();
        for (si, name) in names.iter().enumerate() {
            let step: Vec<f64> = results[bi][si].iter().map(|r| r.0).collect();
            let samp: Vec<f64> = results[bi][si].iter().map(|r| r.1).collect();
            let ratio = if si == 0 {
                String::new()
            } else {
                crate::engine::paired(&step, &base)
            };
            println!(
                "| {b} | {name} | {:.2} | {:.3} | {:.0} | {ratio} | {:.1} |",
                median(step.clone()) * 1e3,
                median(samp.clone()) * 1e3,
                median(samp) * 1e6 / b as f64,
                b as f64 / median(step)
            );
        }
    }
    Ok(())
}
