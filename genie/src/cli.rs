//! Sub-commands of the `genie` binary.

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use genie_engine::chat_template::ChatMessage;
use genie_engine::fetch;
use genie_engine::generate::{Engine, EngineOptions, GenerateRequest};
use genie_engine::sampling::SamplingParams;
use std::io::Write;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(name = "genie", version, about = "Genie: disaggregated LLM serving")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve the OpenAI-compatible API: gateway, prefill and decode workers in one process.
    Serve(crate::run_serve::ServeArgs),
    /// The gateway alone: the HTTP API over worker processes that register with it.
    Gateway(crate::run_serve::ServeArgs),
    /// A prefill worker process (registers with --gateway).
    PrefillWorker(crate::run_worker::WorkerArgs),
    /// A decode worker process (registers with --gateway).
    DecodeWorker(crate::run_worker::WorkerArgs),
    /// One pipeline stage as a process (`--layers A..B`), driven by
    /// `genie generate --pipeline-workers`.
    StageWorker(crate::run_stage::StageArgs),
    /// Generate a completion for one prompt with the local engine.
    Generate(GenerateArgs),
    /// Manage the model file.
    #[command(subcommand)]
    Model(ModelCommand),
    /// Benchmarks that print figures.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// The ExecutionPlan a config compiles to: show, validate, explain, render.
    #[command(subcommand)]
    Plan(crate::plan_cli::PlanCommand),
    /// Measure this host (prefill forwards, decode steps, KV over TCP), fit the cost
    /// curves and write them as a versioned cost profile (JSON).
    Profile(genie_bench::profile::ProfileArgs),
}

#[derive(Subcommand, Debug)]
pub enum ModelCommand {
    /// Fetch a known model into the cache (GENIE_CACHE_DIR, default ~/.cache/genie):
    /// the default model, or NAME (smollm2-135m, gemma3-270m), sha256-checked.
    Fetch(FetchArgs),
    /// Print the model's configuration as read from its GGUF metadata.
    Info(ModelArgs),
    /// Write the model's tokenizer as a Hugging Face tokenizer directory (tokenizer.json,
    /// tokenizer_config.json with the chat template) for clients that count tokens
    /// themselves, such as aiperf and genai-perf.
    Tokenizer(TokenizerArgs),
    /// Write a GGUF with its matrices in another block format (q8_0, q4_0, q4_1, q5_0,
    /// q5_1, q4_k_s, q4_k_m, q5_k_m, q6_k, f16, bf16), the metadata kept.
    Quantize(QuantizeArgs),
}

#[derive(Args, Debug)]
pub struct FetchArgs {
    /// A known model (default: the default model, smollm2-135m).
    pub name: Option<String>,
}

#[derive(Args, Debug)]
pub struct QuantizeArgs {
    /// The target type (llama.cpp's names: q4_k_m, q8_0, …).
    #[arg(long = "type", value_name = "TYPE")]
    pub kind: String,
    /// The GGUF to read.
    pub input: std::path::PathBuf,
    /// The GGUF to write.
    pub output: std::path::PathBuf,
}

#[derive(Args, Debug)]
pub struct TokenizerArgs {
    /// Directory to write (created if missing).
    #[arg(long)]
    pub out: std::path::PathBuf,
    #[command(flatten)]
    pub model: ModelArgs,
}

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Prefill and batched decode throughput of the engine, beside llama.cpp.
    Engine(genie_bench::engine::EngineBenchArgs),
    /// The engine against the exact float64 reference, beside llama.cpp on the same positions.
    Accuracy(genie_bench::accuracy::AccuracyBenchArgs),
    /// What constrained decoding (response_format) costs a decode step, beside none.
    Grammar(genie_bench::grammar::GrammarBenchArgs),
    /// KV transfer over TCP loopback beside a raw socket copy of the same bytes.
    KvTransfer(genie_bench::kv::KvBenchArgs),
    /// Decode speed with the paged KV cache beside the contiguous layout, in one run.
    KvPages(genie_bench::kv_pages::KvPagesBenchArgs),
    /// Time to first and second token, disaggregated vs colocated, across processes.
    Disagg(genie_bench::disagg::DisaggBenchArgs),
    /// Placement decision time with many registered workers, per routing policy.
    Scheduler(genie_bench::sched::SchedBenchArgs),
}

/// Which model to load and how.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// A GGUF model file (llama, qwen2, qwen3 or gemma3) (default: GENIE_MODEL, else the default model, fetched on first use).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Compute threads (0 = one per core).
    #[arg(long, default_value_t = 0, env = "GENIE_THREADS")]
    pub threads: usize,
}

impl ModelArgs {
    pub fn load(&self) -> Result<Engine> {
        let path = fetch::resolve_model(self.model.as_deref())?;
        let opts = EngineOptions {
            threads: self.threads,
            ..EngineOptions::default()
        };
        Engine::load(&path, &opts).with_context(|| format!("loading {}", path.display()))
    }
}

#[derive(Args, Debug)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The prompt text.
    #[arg(long)]
    pub prompt: String,
    /// Wrap the prompt as one user message in the model's chat template.
    #[arg(long)]
    pub chat: bool,
    #[arg(long, default_value_t = 128)]
    pub max_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// 0 = off.
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Stop strings (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    /// Print one JSON line: {"prompt_token_ids":[...],"token_ids":[...],"text":"..."}.
    #[arg(long)]
    pub json: bool,
    /// Run the layers as N pipeline stages (worker threads, hidden states between them
    /// over kv-transfer on TCP loopback), split as `llm.pipeline_parallel` splits them.
    #[arg(long, conflicts_with_all = ["pipeline_config", "pipeline_workers"])]
    pub pipeline_stages: Option<usize>,
    /// Run the layers on these `genie stage-worker` processes (comma-separated control
    /// URLs, in pipeline order); this process only samples.
    #[arg(long, value_delimiter = ',', conflicts_with = "pipeline_config")]
    pub pipeline_workers: Vec<String>,
    /// Run the layers as the pipeline stages of this config's plan (`llm.pipeline_parallel`,
    /// e.g. configs/pipeline-2stage.toml).
    #[arg(long)]
    pub pipeline_config: Option<PathBuf>,
    /// The cluster secret of the `--pipeline-workers` (as for the workers themselves).
    #[command(flatten)]
    pub cluster: crate::cluster::ClusterArgs,
    /// A CA (PEM) to trust when the `--pipeline-workers` serve HTTPS.
    #[arg(long)]
    pub tls_ca_file: Option<PathBuf>,
}

/// Layer ranges of the pipeline stages asked for, if any.
fn pipeline_ranges(
    a: &GenerateArgs,
    engine: &Engine,
) -> Result<Option<Vec<std::ops::Range<usize>>>> {
    let layers = engine.model.config().n_layers;
    if let Some(n) = a.pipeline_stages {
        anyhow::ensure!(
            (1..=layers).contains(&n),
            "--pipeline-stages must be between 1 and the model's {layers} layers"
        );
        return Ok(Some(
            (0..n)
                .map(|i| {
                    let (s, e) = genie_scheduler::policy::balanced(layers, i, n);
                    s..e
                })
                .collect(),
        ));
    }
    let Some(path) = &a.pipeline_config else {
        return Ok(None);
    };
    let cfg = crate::config::ServeConfig::load(Some(path), Default::default())?;
    let w = engine.model.weights();
    let profile =
        crate::plan_setup::profile_of(engine.model.config(), w.size_bytes(), w.output.is_some());
    let plan = cfg
        .compile_plan(Some(profile), genie_scheduler::Transport::Tcp)
        .map_err(|e| anyhow::anyhow!("invalid plan: {e}"))?;
    let stages: Vec<std::ops::Range<usize>> = plan
        .stages
        .iter()
        .filter(|s| matches!(s.op, genie_scheduler::Op::PipelineStage { .. }))
        .map(|s| s.layers[0]..s.layers[1])
        .collect();
    anyhow::ensure!(
        !stages.is_empty() && stages.len() == plan.stages.len(),
        "{} does not plan a pipeline (policy `{}`); use a `llm.pipeline_parallel` config",
        path.display(),
        plan.policy
    );
    anyhow::ensure!(
        stages.last().is_some_and(|r| r.end == layers),
        "the plan's stages cover layers 0..{} but the model has {layers}",
        stages.last().map_or(0, |r| r.end)
    );
    Ok(Some(stages))
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve(a) => crate::run_serve::run(a),
        Command::Gateway(a) => crate::run_gateway::run(a),
        Command::PrefillWorker(a) => {
            crate::run_worker::run(a, genie_protocol::worker::WorkerRole::Prefill)
        }
        Command::DecodeWorker(a) => {
            crate::run_worker::run(a, genie_protocol::worker::WorkerRole::Decode)
        }
        Command::StageWorker(a) => crate::run_stage::run(a),
        Command::Generate(a) => generate(a),
        Command::Model(ModelCommand::Fetch(a)) => {
            let m = match &a.name {
                Some(n) => fetch::known(n)?,
                None => fetch::DEFAULT_MODEL,
            };
            let path = fetch::ensure_model(m)?;
            let digest = fetch::sha256_file(&path)?;
            println!("{} (sha256 {digest})", path.display());
            Ok(())
        }
        Command::Model(ModelCommand::Info(a)) => {
            let path = fetch::resolve_model(a.model.as_deref())?;
            let g = match genie_engine::gguf::read_meta(&path) {
                Ok(g) => g,
                // A file the engine does not run: what its header says, and why.
                Err(e @ genie_engine::error::EngineError::Unsupported(_)) => {
                    let facts = genie_engine::gguf::read_facts(&path)?;
                    let info = serde_json::json!({
                        "path": path,
                        "supported": false,
                        "why": e.to_string(),
                        "architecture": facts.architecture,
                        "name": facts.name,
                        "context_length": facts.context_length,
                        "block_count": facts.block_count,
                        "quantization": facts.quant_mix,
                        "kv_bytes_per_token": facts.kv_bytes_per_token,
                    });
                    println!("{}", serde_json::to_string_pretty(&info)?);
                    return Ok(());
                }
                Err(e) => return Err(e.into()),
            };
            let info = serde_json::json!({
                "path": path,
                "supported": true,
                "architecture": g.config.architecture,
                "context_length": g.config.context_length,
                "quantization": g.quant_mix,
                "config": g.config,
                "weights_bytes": g.weights_bytes,
                "kv_bytes_per_token": genie_engine::kv_cache::KvShape::of(&g.config).bytes_per_token(),
                "has_chat_template": g.chat_template.is_some(),
            });
            println!("{}", serde_json::to_string_pretty(&info)?);
            Ok(())
        }
        Command::Model(ModelCommand::Tokenizer(a)) => export_tokenizer(a),
        Command::Model(ModelCommand::Quantize(a)) => {
            let ft = genie_engine::quantize::FileType::parse(&a.kind)?;
            let t = std::time::Instant::now();
            let mix = genie_engine::quantize::quantize(&a.input, &a.output, ft)?;
            let mix: Vec<String> = mix.iter().map(|(k, n)| format!("{n} {k}")).collect();
            println!(
                "{} ({}; {:.1} s)",
                a.output.display(),
                mix.join(", "),
                t.elapsed().as_secs_f64()
            );
            Ok(())
        }
        Command::Plan(c) => crate::plan_cli::run(c),
        Command::Bench(BenchCommand::Engine(a)) => genie_bench::engine::run(a),
        Command::Bench(BenchCommand::Accuracy(a)) => genie_bench::accuracy::run(a),
        Command::Bench(BenchCommand::Grammar(a)) => genie_bench::grammar::run(a),
        Command::Bench(BenchCommand::KvTransfer(a)) => genie_bench::kv::run(a),
        Command::Bench(BenchCommand::KvPages(a)) => genie_bench::kv_pages::run(a),
        Command::Bench(BenchCommand::Disagg(a)) => genie_bench::disagg::run(a),
        Command::Bench(BenchCommand::Scheduler(a)) => genie_bench::sched::run(a),
        Command::Profile(a) => genie_bench::profile::run(a),
    }
}

fn export_tokenizer(a: TokenizerArgs) -> Result<()> {
    let path = fetch::resolve_model(a.model.model.as_deref())?;
    let g = genie_engine::gguf::read_meta(&path)?;
    let tok = genie_engine::tokenizer::GgufTokenizer::from_spec(g.tokenizer.clone())?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let json = a.out.join("tokenizer.json");
    tok.inner()
        .ok_or_else(|| {
            anyhow::anyhow!(
                "this model's tokenizer is SentencePiece (`llama`); only byte-level BPE tokenizers export as tokenizer.json"
            )
        })?
        .save(&json, false)
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", json.display()))?;
    let name = |id: Option<u32>| id.and_then(|i| tok.token_str(i)).map(String::from);
    let config = serde_json::json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": name(tok.bos_token_id()),
        "eos_token": name(tok.eos_token_id()),
        "model_max_length": g.config.context_length,
        "add_bos_token": g.tokenizer.add_bos_token,
        "chat_template": g.chat_template,
    });
    let cfg = a.out.join("tokenizer_config.json");
    std::fs::write(&cfg, serde_json::to_vec_pretty(&config)?)
        .with_context(|| format!("writing {}", cfg.display()))?;
    println!("{}", a.out.display());
    Ok(())
}

fn generate(a: GenerateArgs) -> Result<()> {
    let engine = a.model.load()?;
    let text = if a.chat {
        engine.render_chat(&[ChatMessage::new("user", a.prompt.clone())], true)?
    } else {
        a.prompt.clone()
    };
    let prompt_ids = engine.tokenize(&text, a.chat)?;
    let sampling = SamplingParams {
        temperature: a.temperature,
        top_p: a.top_p,
        top_k: a.top_k,
        seed: a.seed,
        ..SamplingParams::default()
    };
    let req = GenerateRequest {
        prompt_ids: prompt_ids.clone(),
        max_tokens: a.max_tokens,
        sampling,
        stop_token_ids: Vec::new(),
        stop_strings: a.stop.clone(),
    };
    let seed = a.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    });
    let stdout = std::io::stdout();
    let mut streamed = 0usize;
    let on_token = |ev: &genie_engine::generate::TokenEvent| {
        if !a.json && !ev.text.is_empty() {
            let mut lock = stdout.lock();
            let _ = lock.write_all(ev.text.as_bytes());
            let _ = lock.flush();
            streamed += ev.text.len();
        }
    };
    let c = engine.model.config();
    // The pipeline's network runs on this runtime; the sampling loop stays on this thread.
    let rt = crate::process::http_runtime()?;
    let pipe = if !a.pipeline_workers.is_empty() {
        let secret = crate::cluster::secret(
            &a.cluster,
            &crate::config::ServeConfig::default(),
            "genie generate --pipeline-workers",
        )?;
        let client = genie_cluster_auth::tls::client_builder(a.tls_ca_file.as_deref())?.build()?;
        Some(genie_pipeline::Pipeline::remote(
            &a.pipeline_workers,
            c.vocab_size,
            c.n_layers,
            secret,
            client,
            rt.handle().clone(),
        )?)
    } else {
        match pipeline_ranges(&a, &engine)? {
            None => None,
            Some(ranges) => {
                let threads = a.model.threads.div_ceil(ranges.len()).max(1);
                Some(genie_pipeline::Pipeline::local(
                    &engine.model,
                    &ranges,
                    threads,
                    rt.handle().clone(),
                )?)
            }
        }
    };
    let out = match pipe {
        None => engine.generate(&req, seed, on_token)?,
        Some(mut pipe) => {
            for (i, (r, ep)) in pipe.describe().into_iter().enumerate() {
                tracing::info!(stage = i, layers = ?r, kv_endpoint = ?ep, "pipeline stage");
            }
            let mut seq = pipe.sequence(prompt_ids.len() + a.max_tokens)?;
            engine.generate_with(&req, seed, &mut |t| seq.forward(t), on_token)?
        }
    };
    if a.json {
        let line = serde_json::json!({
            "prompt_token_ids": prompt_ids,
            "token_ids": out.token_ids,
            "text": out.text,
        });
        println!("{line}");
    } else {
        let mut lock = stdout.lock();
        lock.write_all(&out.text.as_bytes()[streamed..])?;
        writeln!(lock)?;
    }
    Ok(())
}
