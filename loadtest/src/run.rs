//! Drives a load: closed loop (a fixed number of requests in flight), open loop (Poisson
//! arrivals at a rate, whatever the server's pace) or a trace's arrivals.

use crate::client::{self, Outcome, Target};
use crate::workload::{
    block_prompt, poisson_arrivals, synthetic_prompt, Lengths, Prompt, TraceEntry,
};
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub enum Mode {
    Closed { concurrency: usize },
    Open { rate: f64 },
    Trace(Vec<TraceEntry>),
}

#[derive(Clone, Debug)]
pub struct Load {
    pub mode: Mode,
    /// Stop after this many requests (all of a trace when unset).
    pub requests: Option<usize>,
    /// Stop sending after this long.
    pub duration: Option<Duration>,
    pub input: Lengths,
    pub output: Lengths,
    pub seed: u64,
    /// Unmeasured requests sent one by one first.
    pub warmup: usize,
    pub progress: bool,
    /// A system prompt every request starts with.
    pub shared_prefix: Option<String>,
    /// Multi-turn chat (closed loop): each in-flight slot holds a conversation of this many
    /// turns; each turn sends the whole history, the previous answer and a new message.
    pub turns: Option<u32>,
    /// Tokens per trace block (`hash_ids`): 512 in Mooncake's traces.
    pub block_tokens: u32,
}

/// Request `i`: its lengths (drawn, unless a trace fixes them) and its new text, from a
/// generator seeded by the seed and `i` only, so every mode and every rerun sends the same
/// requests. A trace entry's `hash_ids` make its text from shared blocks.
fn request(load: &Load, i: usize, fixed: Option<&TraceEntry>) -> (u32, u32, String) {
    let mut rng = StdRng::seed_from_u64(load.seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    match fixed {
        Some(e) => {
            let text = block_prompt(&e.hash_ids, e.input_tokens, load.block_tokens, &mut rng);
            (e.input_tokens, e.output_tokens, text)
        }
        None => {
            let (input, output) = (load.input.sample(&mut rng), load.output.sample(&mut rng));
            (input, output, synthetic_prompt(input, &mut rng))
        }
    }
}

/// Request `i` as a fresh prompt: the shared system prompt, if any, and its text.
fn fresh(load: &Load, i: usize, fixed: Option<&TraceEntry>) -> (u32, u32, Prompt) {
    let (input, output, text) = request(load, i, fixed);
    (
        input,
        output,
        Prompt::user(load.shared_prefix.as_deref(), text),
    )
}

fn bar(total: Option<usize>, show: bool) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let b = match total {
        Some(n) => ProgressBar::new(n as u64),
        None => ProgressBar::new_spinner(),
    };
    b.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    b
}

/// Runs `load` against `target`; returns the measured outcomes in completion order, and
/// when the measured run started (since the Unix epoch; outcomes' `sent_at` count from it,
/// after the warm-up).
pub async fn run(target: &Target, load: &Load) -> (Vec<Outcome>, Duration) {
    // A fresh connection per request: servers that close kept-alive connections after a
    // few requests (llama.cpp's server does after 5) would otherwise fail the request that
    // raced the close. On loopback the connect costs about 0.1 ms, the same for every server.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap_or_default();
    for i in 0..load.warmup {
        let (input, output, prompt) = fresh(load, usize::MAX - i, None);
        let _ = client::send(&client, target, &prompt, input, output, Instant::now()).await;
    }
    let outcomes = Arc::new(Mutex::new(Vec::new()));
    let start = Instant::now();
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let deadline = load.duration.map(|d| start + d);
    // Open loop and traces: when each request is sent, and its lengths if a trace fixes
    // them (prompts are built at send time).
    let plan: Vec<(Duration, Option<TraceEntry>)> = match &load.mode {
        Mode::Closed { .. } => Vec::new(),
        Mode::Open { rate } => {
            // Enough arrivals for the request budget, or for the duration at this rate.
            let n = load.requests.unwrap_or_else(|| {
                let d = load.duration.map_or(60.0, |d| d.as_secs_f64());
                (rate * d * 2.0).ceil() as usize + 16
            });
            let mut rng = StdRng::seed_from_u64(load.seed);
            poisson_arrivals(*rate, n, &mut rng)
                .into_iter()
                .map(|at| (at, None))
                .collect()
        }
        Mode::Trace(entries) => entries
            .iter()
            .take(load.requests.unwrap_or(usize::MAX))
            .map(|e| (Duration::from_secs_f64(e.arrival_s), Some(e.clone())))
            .collect(),
    };
    let total = match &load.mode {
        Mode::Closed { .. } => load.requests,
        _ => load.requests.or((deadline.is_none()).then_some(plan.len())),
    };
    let progress = bar(total, load.progress);
    let record = |o: Outcome, outcomes: &Arc<Mutex<Vec<Outcome>>>, progress: &ProgressBar| {
        progress.inc(1);
        let Ok(mut v) = outcomes.lock() else { return };
        let failed = !o.ok;
        v.push(o);
        if failed {
            let n = v.iter().filter(|o| !o.ok).count();
            progress.set_message(format!("{n} failed"));
        }
    };
    match &load.mode {
        Mode::Closed { concurrency } => {
            let next = Arc::new(AtomicUsize::new(0));
            // Multi-turn: conversations are numbered as slots start them and each runs all
            // its turns; a conversation's texts are drawn from (conversation, turn), so the
            // set of requests never depends on the server's timing. `--requests` is then
            // rounded up to whole conversations.
            let next_conv = Arc::new(AtomicUsize::new(0));
            let conversations = load
                .turns
                .map(|t| load.requests.map_or(usize::MAX, |n| n.div_ceil(t as usize)));
            let turn_key = |conv: usize, turn: u32| (conv << 8) | turn as usize;
            let workers: Vec<_> = (0..*concurrency)
                .map(|_| {
                    let (client, target, load) = (client.clone(), target.clone(), load.clone());
                    let (next, next_conv, outcomes, progress) = (
                        Arc::clone(&next),
                        Arc::clone(&next_conv),
                        Arc::clone(&outcomes),
                        progress.clone(),
                    );
                    tokio::spawn(async move {
                        // Multi-turn: this slot's conversation (number, history, last
                        // answer, turns had).
                        let mut conv: Option<(usize, Prompt, String, u32)> = None;
                        loop {
                            if deadline.is_some_and(|d| Instant::now() >= d) {
                                return;
                            }
                            let (input, output, prompt, id_turn) =
                                match (conv.take(), conversations) {
                                    (Some((c, mut p, answer, done)), _) => {
                                        let (input, output, text) =
                                            request(&load, turn_key(c, done + 1), None);
                                        p.next_turn(answer, text);
                                        (input, output, p, Some((c, done + 1)))
                                    }
                                    (None, Some(limit)) => {
                                        let c = next_conv.fetch_add(1, Ordering::Relaxed);
                                        if c >= limit {
                                            return;
                                        }
                                        let (input, output, p) = fresh(&load, turn_key(c, 1), None);
                                        (input, output, p, Some((c, 1)))
                                    }
                                    (None, None) => {
                                        let i = next.fetch_add(1, Ordering::Relaxed);
                                        if load.requests.is_some_and(|n| i >= n) {
                                            return;
                                        }
                                        let (input, output, p) = fresh(&load, i, None);
                                        (input, output, p, None)
                                    }
                                };
                            let o =
                                client::send(&client, &target, &prompt, input, output, start).await;
                            // The next turn sends this answer back; a failed turn or the
                            // last one ends the conversation.
                            if let (Some((c, turn)), Some(t)) = (id_turn, load.turns) {
                                if o.ok && turn < t {
                                    conv = Some((c, prompt, o.text.clone(), turn));
                                }
                            }
                            record(o, &outcomes, &progress);
                        }
                    })
                })
                .collect();
            for w in workers {
                let _ = w.await;
            }
        }
        Mode::Open { .. } | Mode::Trace(_) => {
            let mut tasks = Vec::new();
            for (i, (offset, fixed)) in plan.into_iter().enumerate() {
                let at = start + offset;
                if deadline.is_some_and(|d| at >= d) {
                    break;
                }
                tokio::time::sleep_until(at.into()).await;
                let (input, output, prompt) = fresh(load, i, fixed.as_ref());
                let (client, target) = (client.clone(), target.clone());
                let (outcomes, progress) = (Arc::clone(&outcomes), progress.clone());
                tasks.push(tokio::spawn(async move {
                    let o = client::send(&client, &target, &prompt, input, output, start).await;
                    record(o, &outcomes, &progress);
                }));
            }
            for t in tasks {
                let _ = t.await;
            }
        }
    }
    progress.finish_and_clear();
    let v = outcomes.lock().map(|v| v.clone()).unwrap_or_default();
    (v, started)
}
