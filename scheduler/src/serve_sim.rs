//! A discrete-event simulation of serving a request trace with the gateway's queue and
//! placement and the workers' batching, priced by cost curves ([`CostProfile`]).
//!
//! What runs is the real code where the decision is pure:
//! - whether a request is disaggregated: the plan's [`ExecutionPlan::prefill_for`] (the
//!   `scheduler.min_prompt_tokens` threshold, or colocated mode);
//! - which workers: [`Scheduler::place`] with the configured routing policy, over worker
//!   views with the loads the workers report (sequences, queued prompt tokens, running
//!   batch, free KV), updated as each simulated event changes them;
//! - which queued prompts join a step or a prefill batch, and where a chunk cuts one:
//!   [`StepLimits::takes`] and [`StepLimits::room`], the rules both workers call.
//!
//! How queues and batching are modelled (the workers' loops, `decode-worker/src/batch.rs`
//! and `prefill-worker/src/worker.rs`):
//! - The gateway keeps one first-come-first-served queue and places only its head; when no
//!   decode worker has the head's starting KV free, the queue waits until a sequence ends.
//!   Arrivals beyond `max_waiting` waiting requests are refused (HTTP 429).
//! - A decode worker reserves a sequence's prompt blocks (16 tokens each) when it is
//!   placed, and a block more whenever a sequence crosses into one. Its step is one forward:
//!   first, sequences whose KV arrived join the running batch (up to `max_batch`); then
//!   queued colocated prompts join whole, first come first served, within `max_batch`
//!   sequences and `max_prefill_tokens` prompt tokens; while sequences are running, at
//!   most `prefill_chunk_tokens` prompt tokens a step (a prompt cut at the limit goes on
//!   first in the next step, as the worker's chunked prefill does). The step costs the
//!   decode curve of the running sequences' contexts plus the prefill curve of its
//!   prompts (a chunk at offset o of k tokens: k tokens, (o + k)² − o² for attention),
//!   with one fixed cost; every running sequence gets a token at its end and each prompt
//!   whose last chunk it was its first token. New work waits for the step to end.
//! - A prefill worker runs one forward over the prompts at the head of its queue, up to
//!   `max_batch_tokens`; at its end each prompt has its first token, and its KV reaches the
//!   decode worker after the link's time for one layer's share (the other layers were
//!   sent while the forward ran); in-process transfers take no time.
//! - A forward's time is drawn around its curve: the curve's value times a log-normal
//!   factor of mean 1 whose spread is the curve's fit error (`rms_rel_error`, at most
//!   50 %), from a fixed seed, so a run is repeatable, where the fit saw at least 100
//!   measurements (a worker's live decode curve; with fewer, the error is the fit's
//!   own). On a shared host the same step varies by tens of percent (the prefill
//!   worker's forwards, the gateway and the clients take the cores in turns); a token
//!   gap's median over such steps lies above a fixed step's, and a fixed step gives no
//!   tail. A `genie profile` curve (a few averaged shapes) or a preset runs fixed.
//! - Not modelled: preemption when a decode worker's KV runs out (counted as
//!   `kv_overflows` instead), prefix caching, the copying of arriving KV on the decode
//!   thread, the HTTP and tokenizer time around a request.

use crate::cost_profile::{CostProfile, DecodeCurve, FitQuality, LinkCurve, PrefillCurve};
use crate::placement::{
    PlaceError, Placement, PlacementRequest, Role, RoutingPolicy, Scheduler, WorkerView,
};
use crate::plan::ExecutionPlan;
use crate::policy::RequestFacts;
use crate::simulate::Percentiles;
use genie_protocol::batching::StepLimits;
use genie_protocol::costs::{decode_terms, prefill_terms};
use genie_protocol::WorkerId;
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};

/// KV cache block, in tokens (the decode worker's paged cache).
pub const BLOCK_TOKENS: usize = 16;

/// Decode workers' ids start here in the simulation (prefill workers' at 0).
const DECODE_IDS: u64 = 1 << 32;

/// The serving configuration a run simulates.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServeSetup {
    pub prefill_workers: usize,
    pub decode_workers: usize,
    /// `decode.max_batch`: most sequences in one decode step.
    pub decode_max_batch: usize,
    /// `decode.max_prefill_tokens`: most prompt tokens a decode step takes.
    pub decode_max_prefill_tokens: usize,
    /// `decode.prefill_chunk_tokens`: most prompt tokens a decode step takes while
    /// sequences are running (0: prompts whole).
    #[serde(default)]
    pub decode_prefill_chunk_tokens: usize,
    /// `prefill.max_batch_tokens`: most prompt tokens in one prefill forward.
    pub prefill_max_batch_tokens: usize,
    pub routing: RoutingPolicy,
    /// Each decode worker's KV cache, bytes.
    pub kv_cache_bytes: u64,
    /// The model's KV bytes per token.
    pub kv_bytes_per_token: u64,
    pub layers: usize,
    /// `limits.max_waiting`: requests the gateway holds before refusing more.
    pub max_waiting: usize,
    /// Where all workers share one host: its cores, and each worker's compute threads.
    /// While the busy workers' threads outnumber the cores, each runs at
    /// `cores / busy threads` of its profile's speed. `None`: each worker on its own
    /// hardware.
    pub shared_cores: Option<(usize, usize)>,
}

/// What the work costs: each role's curves and the KV link between them.
#[derive(Clone, Debug, PartialEq)]
pub struct ServeCosts {
    /// Prefill workers' forwards.
    pub prefill: PrefillCurve,
    /// Decode workers' steps, and their colocated prompts.
    pub decode: DecodeCurve,
    pub decode_prefill: PrefillCurve,
    /// `None`: in-process transfers (no time).
    pub link: Option<LinkCurve>,
}

impl ServeCosts {
    /// Prefill workers priced by `prefill`, decode workers by `decode`, KV over `link`.
    pub fn new(prefill: &CostProfile, decode: &CostProfile, link: Option<LinkCurve>) -> Self {
        ServeCosts {
            prefill: prefill.prefill,
            decode: decode.decode,
            decode_prefill: decode.prefill,
            link,
        }
    }

    /// A decode step: the decode curve at its running sequences' terms plus the prefill
    /// curve at its prompts' (`decode_terms`, `prefill_terms`), sharing one fixed cost
    /// (one forward).
    fn step_ms(&self, decode: Option<[f64; 3]>, prefill: Option<[f64; 3]>) -> f64 {
        let d = decode.map(|x| self.decode.step_ms(x));
        let p = prefill.map(|x| self.decode_prefill.as_live().ms(x));
        match (d, p) {
            (Some(d), Some(p)) => d + p - self.decode.fixed_ms.min(self.decode_prefill.fixed_ms),
            (d, p) => d.or(p).unwrap_or(0.0),
        }
    }
}

/// One request of a trace.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SimRequest {
    pub arrival_ms: f64,
    /// The prompt as the gateway counts it (what `min_prompt_tokens`, batching limits and
    /// the KV see).
    pub prompt_tokens: usize,
    pub output_tokens: usize,
    /// Leading prompt tokens a prefix cache supplies: reserved and shipped like the rest,
    /// but not computed (prefill costs take `prompt_tokens - cached_tokens`).
    #[serde(default)]
    pub cached_tokens: usize,
}

impl SimRequest {
    /// The prompt tokens a forward computes.
    pub fn computed_tokens(&self) -> usize {
        self.prompt_tokens.saturating_sub(self.cached_tokens).max(1)
    }
}

/// A service level objective, as `genie-loadtest` counts goodput: a request meets it when
/// its first token came within `ttft_ms` and every gap between its tokens within `itl_ms`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Slo {
    pub ttft_ms: f64,
    pub itl_ms: f64,
}

/// What a simulated run predicts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServeReport {
    pub requests: usize,
    pub completed: usize,
    /// Refused by the gateway (queue full, or a sequence no decode worker can ever hold).
    pub refused: usize,
    /// Completed requests whose prompt ran on a prefill worker.
    pub disaggregated: usize,
    pub ttft_ms: Percentiles,
    /// Every gap between consecutive tokens of a request, over all requests.
    pub itl_ms: Percentiles,
    pub e2e_ms: Percentiles,
    /// From the first arrival to the last token.
    pub duration_s: f64,
    /// Completed requests meeting the SLO, per second of `duration_s`.
    pub goodput_per_s: f64,
    /// Completed requests meeting the SLO.
    pub slo_met: usize,
    /// Mean running sequences over decode steps.
    pub mean_decode_batch: f64,
    /// Busy time over the run's length, averaged over each role's workers.
    pub prefill_utilisation: f64,
    pub decode_utilisation: f64,
    /// Times a decode worker's KV would have run out (the real worker preempts then).
    pub kv_overflows: usize,
}

/// Log-spaced histogram (1 % buckets) of positive milliseconds: percentiles of millions of
/// token gaps in constant memory.
struct LogHistogram {
    counts: Vec<u64>,
    total: u64,
    max: f64,
}

const LOG_STEP: f64 = 0.009_950_330_853_168_083; // ln(1.01)
const LOG_FLOOR_MS: f64 = 1e-3;

impl LogHistogram {
    fn new() -> Self {
        LogHistogram {
            counts: Vec::new(),
            total: 0,
            max: 0.0,
        }
    }

    fn add(&mut self, ms: f64) {
        let b = if ms <= LOG_FLOOR_MS {
            0
        } else {
            ((ms / LOG_FLOOR_MS).ln() / LOG_STEP) as usize + 1
        };
        if b >= self.counts.len() {
            self.counts.resize(b + 1, 0);
        }
        self.counts[b] += 1;
        self.total += 1;
        self.max = self.max.max(ms);
    }

    /// The bucket's geometric middle at quantile `q`.
    fn at(&self, q: f64) -> f64 {
        if self.total == 0 {
            return 0.0;
        }
        let want = ((q * (self.total - 1) as f64).round() as u64).min(self.total - 1);
        let mut seen = 0;
        for (b, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen > want {
                return if b == 0 {
                    LOG_FLOOR_MS
                } else {
                    (LOG_FLOOR_MS * ((b as f64 - 0.5) * LOG_STEP).exp()).min(self.max)
                };
            }
        }
        self.max
    }

    fn percentiles(&self) -> Percentiles {
        Percentiles {
            p50: self.at(0.5),
            p90: self.at(0.9),
            p99: self.at(0.99),
            max: self.max,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Event {
    Arrive(usize),
    /// A worker's compute task ends (worker key, task generation: a stale generation was
    /// rescheduled when the host's sharing changed).
    TaskDone(usize, u64),
    KvArrive(usize),
}

/// An event at a time; the heap pops the earliest, ties in the order they were made.
struct Timed {
    at: f64,
    order: u64,
    event: Event,
}

impl PartialEq for Timed {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Timed {}
impl PartialOrd for Timed {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Timed {
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .at
            .total_cmp(&self.at)
            .then(other.order.cmp(&self.order))
    }
}

/// One worker's compute task (a prefill forward or a decode step).
#[derive(Clone, Copy, Debug, Default)]
struct Task {
    active: bool,
    /// Work left, in ms at the profile's full speed.
    remaining_ms: f64,
    started_ms: f64,
    generation: u64,
}

/// The workers' compute tasks, and the speed they run at when they share a host's cores
/// (processor sharing: every busy worker at `cores / busy threads`, at most 1).
struct Tasks {
    tasks: Vec<Task>,
    shared: Option<(f64, f64)>,
    busy: usize,
    rate: f64,
    last_ms: f64,
}

impl Tasks {
    fn new(workers: usize, shared: Option<(usize, usize)>) -> Self {
        Tasks {
            tasks: vec![Task::default(); workers],
            shared: shared.map(|(c, t)| (c.max(1) as f64, t.max(1) as f64)),
            busy: 0,
            rate: 1.0,
            last_ms: 0.0,
        }
    }

    /// Brings every active task's remaining work up to `now` at the current rate.
    fn advance(&mut self, now: f64) {
        if self.shared.is_some() {
            let done = (now - self.last_ms) * self.rate;
            for t in self.tasks.iter_mut().filter(|t| t.active) {
                t.remaining_ms -= done;
            }
        }
        self.last_ms = now;
    }

    /// The sharing changed: the new rate, and every active task's (key, generation, end).
    fn reschedule(&mut self, now: f64, out: &mut Vec<(usize, u64, f64)>) {
        let Some((cores, threads)) = self.shared else {
            return;
        };
        let rate = (cores / (self.busy.max(1) as f64 * threads)).min(1.0);
        if rate == self.rate {
            return;
        }
        self.rate = rate;
        for (k, t) in self.tasks.iter_mut().enumerate().filter(|(_, t)| t.active) {
            t.generation += 1;
            out.push((k, t.generation, now + t.remaining_ms.max(0.0) / rate));
        }
    }
}

/// The prefill terms of a step's prompt chunks, each (tokens computed before it, its
/// tokens): a chunk's queries attend to the tokens before it too, so its attention term is
/// (o + k)² − o² (k² for a whole prompt).
fn chunk_terms(chunks: impl IntoIterator<Item = (usize, usize)>) -> [f64; 3] {
    chunks
        .into_iter()
        .fold([1.0, 0.0, 0.0], |[one, t, t2], (o, k)| {
            let (o, k) = (o as f64, k as f64);
            [one, t + k, t2 + (o + k) * (o + k) - o * o]
        })
}

#[derive(Clone, Debug, Default)]
struct Seq {
    decode: usize,
    generated: usize,
    first_token_ms: f64,
    last_token_ms: f64,
    max_gap_ms: f64,
    /// KV blocks the decode worker holds for it.
    blocks: usize,
    disaggregated: bool,
    /// Prompt tokens a decode worker has computed for it in earlier chunks.
    prefilled: usize,
}

#[derive(Clone, Debug, Default)]
struct DecodeWorker {
    prefills: VecDeque<usize>,
    ready: VecDeque<usize>,
    running: Vec<usize>,
    /// Sequences waiting for their KV from a prefill worker.
    incoming: usize,
    /// The prompts the current step prefills, and how many of each one's tokens.
    prompts: Vec<(usize, usize)>,
    free_blocks: usize,
    busy_ms: f64,
    steps: u64,
    batch_sum: u64,
}

#[derive(Clone, Debug, Default)]
struct PrefillWorker {
    queue: VecDeque<usize>,
    queued_tokens: usize,
    batch: Vec<usize>,
    busy_ms: f64,
}

struct Sim<'a> {
    plan: &'a ExecutionPlan,
    setup: &'a ServeSetup,
    costs: &'a ServeCosts,
    trace: &'a [SimRequest],
    slo: Slo,
    scheduler: Scheduler,
    views: Vec<WorkerView>,
    decode: Vec<DecodeWorker>,
    prefill: Vec<PrefillWorker>,
    seqs: Vec<Seq>,
    waiting: VecDeque<usize>,
    events: BinaryHeap<Timed>,
    tasks: Tasks,
    order: u64,
    now: f64,
    ttft: Vec<f64>,
    e2e: Vec<f64>,
    itl: LogHistogram,
    refused: usize,
    slo_met: usize,
    disaggregated: usize,
    kv_overflows: usize,
    /// When the last request ended (finished or refused): a stale task event may pop later.
    end_ms: f64,
    spread: Spread,
}

fn blocks_for(tokens: usize) -> usize {
    tokens.div_ceil(BLOCK_TOKENS)
}

/// Log-normal factors of mean 1 (module doc), from a seeded splitmix64 stream.
struct Spread {
    state: u64,
}

impl Spread {
    /// The largest spread taken from a fit: beyond it the curve, not the host, is wrong.
    const MAX: f64 = 0.5;

    fn uniform(&mut self) -> f64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        // In (0, 1]: 53 random bits, never 0.
        ((z >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    /// Measurements a fit needs before its error is taken as the host's noise: with fewer
    /// (a `genie profile` curve fitted to a few averaged shapes, a worker's prefill curve
    /// after a few dozen forwards), the error is mostly the fit's own misfit or learning.
    const MIN_POINTS: usize = 100;

    /// A factor of mean 1 whose relative standard deviation is the fit's rms error
    /// (capped at [`Self::MAX`]); 1 for a fit of fewer than [`Self::MIN_POINTS`].
    fn factor(&mut self, fit: FitQuality) -> f64 {
        if fit.points < Self::MIN_POINTS {
            return 1.0;
        }
        let cv = fit.rms_rel_error.clamp(0.0, Self::MAX);
        if cv == 0.0 {
            return 1.0;
        }
        let sigma2 = (1.0 + cv * cv).ln();
        // Box-Muller: one standard normal from two uniforms.
        let z = (-2.0 * self.uniform().ln()).sqrt()
            * (2.0 * std::f64::consts::PI * self.uniform()).cos();
        (sigma2.sqrt() * z - sigma2 / 2.0).exp()
    }
}

/// Runs `trace` (sorted by arrival) through `setup` with `plan`'s disaggregation decision,
/// priced by `costs`, and scores it against `slo`.
pub fn simulate_serving(
    plan: &ExecutionPlan,
    setup: &ServeSetup,
    costs: &ServeCosts,
    trace: &[SimRequest],
    slo: Slo,
) -> ServeReport {
    let block_bytes = setup.kv_bytes_per_token.max(1) * BLOCK_TOKENS as u64;
    let capacity_blocks = (setup.kv_cache_bytes / block_bytes) as usize;
    let mut views = Vec::with_capacity(setup.prefill_workers + setup.decode_workers);
    for i in 0..setup.prefill_workers {
        views.push(view(WorkerId(i as u64), Role::Prefill, 0));
    }
    for i in 0..setup.decode_workers {
        let mut v = view(WorkerId(DECODE_IDS + i as u64), Role::Decode, 0);
        v.kv_capacity_bytes = capacity_blocks as u64 * block_bytes;
        v.kv_free_bytes = v.kv_capacity_bytes;
        views.push(v);
    }
    let mut sim = Sim {
        plan,
        setup,
        costs,
        trace,
        slo,
        scheduler: Scheduler::new(setup.routing),
        views,
        decode: vec![
            DecodeWorker {
                free_blocks: capacity_blocks,
                ..Default::default()
            };
            setup.decode_workers
        ],
        prefill: vec![PrefillWorker::default(); setup.prefill_workers],
        seqs: vec![Seq::default(); trace.len()],
        waiting: VecDeque::new(),
        events: BinaryHeap::new(),
        tasks: Tasks::new(
            setup.prefill_workers + setup.decode_workers,
            setup.shared_cores,
        ),
        order: 0,
        now: 0.0,
        ttft: Vec::with_capacity(trace.len()),
        e2e: Vec::with_capacity(trace.len()),
        itl: LogHistogram::new(),
        refused: 0,
        slo_met: 0,
        disaggregated: 0,
        kv_overflows: 0,
        end_ms: 0.0,
        spread: Spread { state: 0x5EED },
    };
    for (i, r) in trace.iter().enumerate() {
        sim.at(r.arrival_ms, Event::Arrive(i));
    }
    while let Some(Timed { at, event, .. }) = sim.events.pop() {
        sim.now = at;
        match event {
            Event::Arrive(i) => sim.arrive(i),
            Event::TaskDone(k, generation) => {
                if sim.end_task(k, generation) {
                    match k.checked_sub(setup.prefill_workers) {
                        Some(w) => sim.step_done(w),
                        None => sim.prefill_done(k),
                    }
                }
            }
            Event::KvArrive(s) => sim.kv_arrive(s),
        }
    }
    sim.report()
}

fn view(id: WorkerId, role: Role, kv: u64) -> WorkerView {
    WorkerView {
        id,
        role,
        healthy: true,
        load: 0,
        queued_tokens: 0,
        kv_capacity_bytes: kv,
        kv_free_bytes: kv,
        cached_tokens: 0,
        running: 0,
        costs: None,
    }
}

impl Sim<'_> {
    fn at(&mut self, at: f64, event: Event) {
        self.order += 1;
        self.events.push(Timed {
            at,
            order: self.order,
            event,
        });
    }

    /// Whether worker `k` (prefill workers first, then decode workers) is computing.
    fn computing(&self, k: usize) -> bool {
        self.tasks.tasks[k].active
    }

    /// Starts worker `k`'s task of `ms` at full speed.
    fn start_task(&mut self, k: usize, ms: f64) {
        self.tasks.advance(self.now);
        let t = &mut self.tasks.tasks[k];
        t.active = true;
        t.remaining_ms = ms;
        t.started_ms = self.now;
        t.generation += 1;
        let generation = t.generation;
        self.tasks.busy += 1;
        let mut moved = Vec::new();
        self.tasks.reschedule(self.now, &mut moved);
        if !moved.iter().any(|&(m, _, _)| m == k) {
            let rate = if self.tasks.shared.is_some() {
                self.tasks.rate
            } else {
                1.0
            };
            self.at(self.now + ms / rate, Event::TaskDone(k, generation));
        }
        for (m, generation, end) in moved {
            self.at(end, Event::TaskDone(m, generation));
        }
    }

    /// Ends worker `k`'s task if `generation` is its current one (else the event is stale).
    fn end_task(&mut self, k: usize, generation: u64) -> bool {
        let t = self.tasks.tasks[k];
        if !t.active || t.generation != generation {
            return false;
        }
        self.tasks.advance(self.now);
        self.tasks.tasks[k].active = false;
        self.tasks.busy -= 1;
        let busy = self.now - t.started_ms;
        match k.checked_sub(self.setup.prefill_workers) {
            Some(w) => self.decode[w].busy_ms += busy,
            None => self.prefill[k].busy_ms += busy,
        }
        let mut moved = Vec::new();
        self.tasks.reschedule(self.now, &mut moved);
        for (m, generation, end) in moved {
            self.at(end, Event::TaskDone(m, generation));
        }
        true
    }

    fn block_bytes(&self) -> u64 {
        self.setup.kv_bytes_per_token.max(1) * BLOCK_TOKENS as u64
    }

    fn sync_decode_view(&mut self, w: usize) {
        let d = &self.decode[w];
        let load =
            d.incoming + d.prefills.len() + d.ready.len() + d.running.len() + d.prompts.len();
        let (running, free) = (d.running.len(), d.free_blocks as u64 * self.block_bytes());
        // Colocated prompts queued or in the step running, less the chunks computed
        // before it, as the worker reports them.
        let queued: usize = d
            .prefills
            .iter()
            .chain(d.prompts.iter().map(|(s, _)| s))
            .map(|&s| self.trace[s].prompt_tokens - self.seqs[s].prefilled)
            .sum();
        let v = &mut self.views[self.setup.prefill_workers + w];
        v.load = load;
        v.queued_tokens = queued;
        v.running = running;
        v.kv_free_bytes = free;
    }

    fn sync_prefill_view(&mut self, w: usize) {
        let p = &self.prefill[w];
        let batch_tokens: usize = p.batch.iter().map(|&s| self.trace[s].prompt_tokens).sum();
        let v = &mut self.views[w];
        v.load = p.queue.len() + p.batch.len();
        v.queued_tokens = p.queued_tokens + batch_tokens;
    }

    fn arrive(&mut self, i: usize) {
        if self.waiting.len() >= self.setup.max_waiting {
            self.refused += 1;
            self.end_ms = self.end_ms.max(self.now);
            return;
        }
        self.waiting.push_back(i);
        self.place_waiting();
    }

    /// Places the gateway queue's head while a decode worker can take it.
    fn place_waiting(&mut self) {
        while let Some(&i) = self.waiting.front() {
            let r = self.trace[i];
            let facts = RequestFacts {
                prompt_tokens: r.prompt_tokens,
                max_tokens: r.output_tokens,
                inputs: Vec::new(),
            };
            let disaggregate = self.setup.prefill_workers > 0
                && self
                    .plan
                    .prefill_for(&facts)
                    .is_some_and(|(_, local)| !local);
            let bpt = self.setup.kv_bytes_per_token;
            let start_blocks = blocks_for(r.prompt_tokens + 1);
            let mut req = PlacementRequest::new(
                r.prompt_tokens,
                (r.prompt_tokens + r.output_tokens) as u64 * bpt,
                disaggregate,
            );
            req.kv_start_bytes = start_blocks as u64 * self.block_bytes();
            match self.scheduler.place(&req, &self.views) {
                Ok(p) => {
                    self.waiting.pop_front();
                    self.dispatch(i, p, start_blocks);
                }
                Err(PlaceError::Busy { .. }) => return,
                Err(_) => {
                    self.waiting.pop_front();
                    self.refused += 1;
                    self.end_ms = self.end_ms.max(self.now);
                }
            }
        }
    }

    fn dispatch(&mut self, i: usize, p: Placement, start_blocks: usize) {
        let dw = (p.decode().0 - DECODE_IDS) as usize;
        self.decode[dw].free_blocks = self.decode[dw].free_blocks.saturating_sub(start_blocks);
        self.seqs[i] = Seq {
            decode: dw,
            blocks: start_blocks,
            disaggregated: p.prefill().is_some(),
            ..Seq::default()
        };
        match p.prefill() {
            Some(pw) => {
                let pw = pw.0 as usize;
                self.decode[dw].incoming += 1;
                self.prefill[pw].queue.push_back(i);
                self.prefill[pw].queued_tokens += self.trace[i].prompt_tokens;
                self.sync_decode_view(dw);
                if !self.computing(pw) {
                    self.start_prefill(pw);
                } else {
                    self.sync_prefill_view(pw);
                }
            }
            None => {
                self.decode[dw].prefills.push_back(i);
                if !self.computing(self.setup.prefill_workers + dw) {
                    self.start_step(dw);
                } else {
                    self.sync_decode_view(dw);
                }
            }
        }
    }

    fn start_prefill(&mut self, w: usize) {
        let limits = StepLimits {
            max_seqs: usize::MAX,
            max_prompt_tokens: self.setup.prefill_max_batch_tokens,
            chunk_tokens: 0,
        };
        let p = &mut self.prefill[w];
        let mut tokens = 0;
        while let Some(&s) = p.queue.front() {
            let n = self.trace[s].prompt_tokens;
            if !limits.takes(0, p.batch.len(), tokens, n) {
                break;
            }
            p.queue.pop_front();
            p.queued_tokens -= n;
            p.batch.push(s);
            tokens += n;
        }
        if !p.batch.is_empty() {
            let terms = prefill_terms(
                p.batch
                    .iter()
                    .map(|&s| self.trace[s].computed_tokens() as f64),
            );
            let ms =
                self.costs.prefill.as_live().ms(terms) * self.spread.factor(self.costs.prefill.fit);
            self.start_task(w, ms);
        }
        self.sync_prefill_view(w);
    }

    fn prefill_done(&mut self, w: usize) {
        let batch = std::mem::take(&mut self.prefill[w].batch);
        for s in batch {
            self.first_token(s);
            let r = self.trace[s];
            if r.output_tokens <= 1 {
                let dw = self.seqs[s].decode;
                self.decode[dw].incoming -= 1;
                self.finish(s);
                self.sync_decode_view(dw);
                continue;
            }
            let link = match &self.costs.link {
                Some(l) => {
                    let bytes = r.prompt_tokens as u64 * self.setup.kv_bytes_per_token;
                    l.ms((bytes / self.setup.layers.max(1) as u64) as usize)
                }
                None => 0.0,
            };
            self.at(self.now + link, Event::KvArrive(s));
        }
        self.start_prefill(w);
        self.place_waiting();
    }

    fn kv_arrive(&mut self, s: usize) {
        let dw = self.seqs[s].decode;
        self.decode[dw].incoming -= 1;
        self.decode[dw].ready.push_back(s);
        if !self.computing(self.setup.prefill_workers + dw) {
            self.start_step(dw);
        } else {
            self.sync_decode_view(dw);
        }
    }

    fn start_step(&mut self, w: usize) {
        let max = self.setup.decode_max_batch;
        let d = &mut self.decode[w];
        while d.running.len() < max {
            match d.ready.pop_front() {
                Some(s) => d.running.push(s),
                None => break,
            }
        }
        // Each running sequence's next token may open a block.
        for &s in &d.running {
            let seq = &mut self.seqs[s];
            let need = blocks_for(self.trace[s].prompt_tokens + seq.generated + 1);
            if need > seq.blocks {
                if d.free_blocks == 0 {
                    self.kv_overflows += 1;
                } else {
                    d.free_blocks -= 1;
                }
                seq.blocks = need;
            }
        }
        let limits = StepLimits {
            max_seqs: max,
            max_prompt_tokens: self.setup.decode_max_prefill_tokens,
            chunk_tokens: self.setup.decode_prefill_chunk_tokens,
        };
        let mut tokens = 0;
        while let Some(&s) = d.prefills.front() {
            let done = self.seqs[s].prefilled;
            let left = self.trace[s].computed_tokens() - done;
            let room = limits.room(d.running.len(), tokens);
            let n = (self.trace[s].prompt_tokens - done).min(room);
            if room == 0 || !limits.takes(d.running.len(), d.prompts.len(), tokens, n) {
                break;
            }
            d.prefills.pop_front();
            let k = left.min(room);
            d.prompts.push((s, k));
            tokens += k;
            if k < left {
                break;
            }
        }
        let (batch, prompts) = (d.running.len(), d.prompts.len());
        if batch + prompts > 0 {
            let (trace, seqs) = (self.trace, &self.seqs);
            let running = (batch > 0).then(|| {
                decode_terms(
                    d.running
                        .iter()
                        .map(|&s| (trace[s].prompt_tokens + seqs[s].generated) as f64),
                )
            });
            let prompting = (prompts > 0)
                .then(|| chunk_terms(d.prompts.iter().map(|&(s, k)| (seqs[s].prefilled, k))));
            let fit = if batch > 0 {
                self.costs.decode.fit
            } else {
                self.costs.decode_prefill.fit
            };
            let ms = self.costs.step_ms(running, prompting) * self.spread.factor(fit);
            d.steps += 1;
            d.batch_sum += batch as u64;
            self.start_task(self.setup.prefill_workers + w, ms);
        }
        self.sync_decode_view(w);
    }

    fn step_done(&mut self, w: usize) {
        let running = std::mem::take(&mut self.decode[w].running);
        let mut kept = Vec::with_capacity(running.len() + self.decode[w].prompts.len());
        let mut freed = false;
        for s in running {
            let seq = &mut self.seqs[s];
            let gap = self.now - seq.last_token_ms;
            self.itl.add(gap);
            seq.max_gap_ms = seq.max_gap_ms.max(gap);
            seq.last_token_ms = self.now;
            seq.generated += 1;
            if seq.generated >= self.trace[s].output_tokens {
                self.finish(s);
                freed = true;
            } else {
                kept.push(s);
            }
        }
        let mut cut = None;
        for (s, k) in std::mem::take(&mut self.decode[w].prompts) {
            let seq = &mut self.seqs[s];
            seq.prefilled += k;
            if seq.prefilled < self.trace[s].computed_tokens() {
                // Its next chunk goes first in the next step.
                cut = Some(s);
                continue;
            }
            self.first_token(s);
            if self.trace[s].output_tokens <= 1 {
                self.finish(s);
                freed = true;
            } else {
                kept.push(s);
            }
        }
        if let Some(s) = cut {
            self.decode[w].prefills.push_front(s);
        }
        self.decode[w].running = kept;
        self.start_step(w);
        if freed {
            self.place_waiting();
        }
    }

    fn first_token(&mut self, s: usize) {
        let r = self.trace[s];
        let seq = &mut self.seqs[s];
        seq.generated = 1;
        seq.first_token_ms = self.now;
        seq.last_token_ms = self.now;
        self.ttft.push(self.now - r.arrival_ms);
    }

    fn finish(&mut self, s: usize) {
        let r = self.trace[s];
        let seq = &self.seqs[s];
        self.decode[seq.decode].free_blocks += seq.blocks;
        self.e2e.push(self.now - r.arrival_ms);
        self.end_ms = self.end_ms.max(self.now);
        if seq.disaggregated {
            self.disaggregated += 1;
        }
        if seq.first_token_ms - r.arrival_ms <= self.slo.ttft_ms
            && seq.max_gap_ms <= self.slo.itl_ms
        {
            self.slo_met += 1;
        }
    }

    fn report(&self) -> ServeReport {
        let first = self.trace.first().map_or(0.0, |r| r.arrival_ms);
        let duration_s = ((self.end_ms - first) / 1e3).max(1e-9);
        let busy = |v: &mut dyn Iterator<Item = f64>, n: usize| {
            v.fold(0.0, |a, b| a + b) / (n.max(1) as f64 * duration_s * 1e3)
        };
        let (steps, batch): (u64, u64) = self
            .decode
            .iter()
            .fold((0, 0), |(s, b), d| (s + d.steps, b + d.batch_sum));
        ServeReport {
            requests: self.trace.len(),
            completed: self.e2e.len(),
            refused: self.refused,
            disaggregated: self.disaggregated,
            ttft_ms: Percentiles::of(self.ttft.clone()),
            itl_ms: self.itl.percentiles(),
            e2e_ms: Percentiles::of(self.e2e.clone()),
            duration_s,
            goodput_per_s: self.slo_met as f64 / duration_s,
            slo_met: self.slo_met,
            mean_decode_batch: batch as f64 / steps.max(1) as f64,
            prefill_utilisation: busy(
                &mut self.prefill.iter().map(|p| p.busy_ms),
                self.prefill.len(),
            ),
            decode_utilisation: busy(
                &mut self.decode.iter().map(|d| d.busy_ms),
                self.decode.len(),
            ),
            kv_overflows: self.kv_overflows,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::patterns::llm;
    use crate::{compile, Inventory, ModelProfile, ResourcePolicy};

    /// `genie serve`'s plan with `min_prompt_tokens` (0: every prompt disaggregated).
    fn plan(min_prompt_tokens: usize) -> ExecutionPlan {
        compile(
            &llm::prefill_decode(
                ResourcePolicy::scale_to(1, "cpu"),
                ResourcePolicy::scale_to(1, "cpu"),
                min_prompt_tokens,
            ),
            &ModelProfile::preset("smollm2-135m").unwrap(),
            &Inventory::local(1, 1),
            &[],
        )
        .unwrap()
    }

    fn setup(prefill_workers: usize, decode_workers: usize) -> ServeSetup {
        ServeSetup {
            prefill_workers,
            decode_workers,
            decode_max_batch: 64,
            decode_max_prefill_tokens: 2048,
            decode_prefill_chunk_tokens: 0,
            prefill_max_batch_tokens: 4096,
            routing: RoutingPolicy::LeastLoaded,
            kv_cache_bytes: 1 << 30,
            kv_bytes_per_token: 1000,
            layers: 10,
            max_waiting: 256,
            shared_cores: None,
        }
    }

    /// Prefill `10 + n` ms a prompt of n (alone); decode steps `5 + B + Σctx/1000` ms.
    fn costs(link: Option<LinkCurve>) -> ServeCosts {
        let fit = FitQuality::default();
        let prefill = PrefillCurve {
            fixed_ms: 10.0,
            per_token_ms: 1.0,
            per_token2_ms: 0.0,
            fit,
        };
        ServeCosts {
            prefill,
            decode: DecodeCurve {
                fixed_ms: 5.0,
                per_seq_ms: 1.0,
                per_context_ms: 0.001,
                multi_seq_ms: 0.0,
                fit,
            },
            decode_prefill: prefill,
            link,
        }
    }

    fn req(at: f64, prompt: usize, output: usize) -> SimRequest {
        SimRequest {
            arrival_ms: at,
            prompt_tokens: prompt,
            output_tokens: output,
            cached_tokens: 0,
        }
    }

    const LOOSE: Slo = Slo {
        ttft_ms: 1e9,
        itl_ms: 1e9,
    };

    #[test]
    fn the_threshold_sees_the_whole_prompt_and_prefill_costs_only_what_is_computed() {
        // (threshold, prompt as the gateway counts it, of which from a prefix cache,
        // shipped, TTFT): 112 tokens at a threshold of 110 are shipped (the gateway
        // compares the whole prompt) and the forward costs 10 + 96 ms; colocated, the
        // decode worker's step prices the 84 computed tokens of 100.
        for (threshold, prompt, cached, shipped, ttft) in
            [(110, 112, 16, 1, 106.0), (1000, 100, 16, 0, 94.0)]
        {
            let r = simulate_serving(
                &plan(threshold),
                &setup(1, 1),
                &costs(None),
                &[SimRequest {
                    cached_tokens: cached,
                    ..req(0.0, prompt, 1)
                }],
                LOOSE,
            );
            assert_eq!((r.completed, r.disaggregated), (1, shipped), "{r:?}");
            assert!((r.ttft_ms.p50 - ttft).abs() < 1e-9, "{r:?}");
        }
    }

    #[test]
    fn routing_sees_the_prompts_a_decode_worker_has_queued() {
        // Two colocated decode workers. A's 2000-token prompt (2010 ms) goes to the first,
        // B's short one to the second (the first has a sequence). At 100 ms each holds one
        // sequence, but the first is still computing A's prompt: C goes to the second and
        // joins B's next step instead of waiting two seconds behind A.
        for routing in [RoutingPolicy::KvAware, RoutingPolicy::LeastLoaded] {
            let mut s = setup(0, 2);
            s.routing = routing;
            let r = simulate_serving(
                &plan(100_000),
                &s,
                &costs(None),
                &[req(0.0, 2000, 2), req(1.0, 16, 200), req(100.0, 16, 2)],
                LOOSE,
            );
            assert_eq!(r.completed, 3);
            assert!(r.ttft_ms.max > 2000.0, "{routing:?}: {r:?}");
            // TTFTs: A 2010 ms, B 26 ms, C a step of B's and its own prompt.
            assert!(r.ttft_ms.p50 < 100.0, "{routing:?}: {r:?}");
        }
    }

    #[test]
    fn one_request_costs_what_the_curves_say() {
        // Colocated (threshold above the prompt): the prompt's step, then decode steps.
        let r = simulate_serving(
            &plan(1000),
            &setup(1, 1),
            &costs(None),
            &[req(0.0, 100, 3)],
            LOOSE,
        );
        assert_eq!((r.completed, r.disaggregated, r.refused), (1, 0, 0));
        assert!((r.ttft_ms.p50 - 110.0).abs() < 1e-9, "{r:?}");
        // Two decode steps of one sequence, feeding tokens 101 and 102.
        assert!(
            (r.e2e_ms.p50 - (110.0 + 6.101 + 6.102)).abs() < 1e-9,
            "{r:?}"
        );
        // Disaggregated over a link: the prefill, then the last layer's share of the KV
        // (100 tokens x 1000 bytes / 10 layers at 1 GB/s plus 2 ms), then the steps.
        let link = LinkCurve {
            transport: "tcp".into(),
            latency_ms: 2.0,
            gbytes_per_s: 1.0,
            fit: FitQuality::default(),
        };
        let r = simulate_serving(
            &plan(0),
            &setup(1, 1),
            &costs(Some(link)),
            &[req(0.0, 100, 2)],
            LOOSE,
        );
        assert_eq!(r.disaggregated, 1);
        assert!((r.ttft_ms.p50 - 110.0).abs() < 1e-9);
        assert!((r.itl_ms.max - (2.01 + 6.101)).abs() < 1e-9, "{r:?}");
    }

    #[test]
    fn queued_prompts_share_a_step_within_the_token_cap() {
        // Three prompts at once on an idle colocated worker: the first starts a step
        // alone, the next two share the following one (500 + 500 <= 1024).
        let mut s = setup(0, 1);
        s.decode_max_prefill_tokens = 1024;
        let trace = [req(0.0, 500, 2), req(0.0, 500, 2), req(0.0, 500, 2)];
        let r = simulate_serving(&plan(0), &s, &costs(None), &trace, LOOSE);
        // Second step: one running sequence (context 501) and two prompts of 500, one
        // fixed cost.
        let second = 510.0 + (10.0 + 1.0 + 0.501 + 1000.0);
        assert!((r.ttft_ms.max - second).abs() < 1e-9, "{r:?}");
        assert!((r.ttft_ms.p50 - second).abs() < 1e-9, "{r:?}");
        // With a cap of 500, each prompt takes a step of its own: the second prompt's
        // first token comes a prompt's time sooner.
        s.decode_max_prefill_tokens = 500;
        let r2 = simulate_serving(&plan(0), &s, &costs(None), &trace, LOOSE);
        assert!((r2.ttft_ms.p50 - (510.0 + 511.501)).abs() < 1e-9, "{r2:?}");
    }

    #[test]
    fn chunked_prefill_bounds_the_gaps_a_long_prompt_makes() {
        // A decodes; B's 300-token prompt arrives while it runs.
        let trace = [req(0.0, 100, 10), req(115.0, 300, 2)];
        let s = setup(0, 1);
        let whole = simulate_serving(&plan(0), &s, &costs(None), &trace, LOOSE);
        // B whole: one step of A's token and B's 300 tokens (one fixed cost): A waits it.
        assert!(whole.itl_ms.max > 300.0, "{whole:?}");
        let mut c = s.clone();
        c.decode_prefill_chunk_tokens = 128;
        let chunked = simulate_serving(&plan(0), &c, &costs(None), &trace, LOOSE);
        // Chunks of 128, 128 and 44 tokens: A's longest gap is one 128-token chunk's
        // step (its token, 128 prompt tokens, one fixed cost), B's first token comes
        // after the third.
        let chunk_step = |ctx: f64, k: f64| 5.0 + 1.0 + 0.001 * ctx + 10.0 + k - 5.0;
        assert!(
            whole.itl_ms.max > 2.0 * chunked.itl_ms.max,
            "{whole:?} {chunked:?}"
        );
        assert!(
            chunked.itl_ms.max > chunk_step(101.0, 128.0) - 1e-9
                && chunked.itl_ms.max < chunk_step(110.0, 128.0) + 1e-9,
            "{chunked:?}"
        );
        assert!(
            chunked.ttft_ms.max > whole.ttft_ms.max,
            "{whole:?} {chunked:?}"
        );
        assert_eq!(chunked.completed, 2);
        // An idle worker prefills a prompt whole: with nothing running, no one waits.
        let alone = [req(0.0, 300, 2)];
        let a = simulate_serving(&plan(0), &c, &costs(None), &alone, LOOSE);
        assert!((a.ttft_ms.p50 - 310.0).abs() < 1e-9, "{a:?}");
    }

    #[test]
    fn load_builds_queues_and_the_slo_counts_what_meets_it() {
        // A prompt's prefill takes 74 ms: arrivals 100 ms apart keep up, 5 ms apart do not.
        let trace: Vec<SimRequest> = (0..200).map(|i| req(i as f64 * 100.0, 64, 16)).collect();
        let slo = Slo {
            ttft_ms: 200.0,
            itl_ms: 100.0,
        };
        let light = simulate_serving(&plan(0), &setup(1, 1), &costs(None), &trace, slo);
        let fast: Vec<SimRequest> = trace
            .iter()
            .map(|r| req(r.arrival_ms / 20.0, 64, 16))
            .collect();
        let heavy = simulate_serving(&plan(0), &setup(1, 1), &costs(None), &fast, slo);
        assert_eq!(light.completed, 200);
        assert_eq!(light.slo_met, 200, "{light:?}");
        assert!(
            heavy.ttft_ms.p90 > 5.0 * light.ttft_ms.p90,
            "{light:?} {heavy:?}"
        );
        assert!(heavy.slo_met < light.slo_met);
        assert!(heavy.mean_decode_batch > light.mean_decode_batch);
        // A second prefill worker relieves the prefill queue.
        let wider = simulate_serving(&plan(0), &setup(2, 1), &costs(None), &fast, slo);
        assert!(wider.ttft_ms.p90 < heavy.ttft_ms.p90, "{wider:?} {heavy:?}");
        // Deterministic.
        assert_eq!(
            heavy,
            simulate_serving(&plan(0), &setup(1, 1), &costs(None), &fast, slo)
        );
        // A full gateway queue refuses.
        let mut tight = setup(1, 1);
        tight.max_waiting = 0;
        let r = simulate_serving(&plan(0), &tight, &costs(None), &fast, slo);
        assert_eq!(r.refused, 200);
    }

    #[test]
    fn the_threshold_decides_where_prompts_run() {
        let trace = [req(0.0, 10, 2), req(1.0, 500, 2)];
        let r = simulate_serving(&plan(64), &setup(1, 1), &costs(None), &trace, LOOSE);
        assert_eq!(r.disaggregated, 1);
        let r = simulate_serving(&plan(0), &setup(1, 1), &costs(None), &trace, LOOSE);
        assert_eq!(r.disaggregated, 2);
        // Without prefill workers every prompt stays on its decode worker.
        let r = simulate_serving(&plan(0), &setup(0, 2), &costs(None), &trace, LOOSE);
        assert_eq!(r.disaggregated, 0);
    }

    #[test]
    fn workers_sharing_cores_slow_each_other_while_both_compute() {
        // Two colocated decode workers of 2 threads on 2 cores: while both compute, each
        // runs at half speed. One prompt each at once: 110 ms of work takes 220.
        let mut s = setup(0, 2);
        s.shared_cores = Some((2, 2));
        let trace = [req(0.0, 100, 1), req(0.0, 100, 1)];
        let r = simulate_serving(&plan(0), &s, &costs(None), &trace, LOOSE);
        assert!((r.ttft_ms.max - 220.0).abs() < 1e-9, "{r:?}");
        // The second arrives when the first is half done: 55 ms alone, then both at half
        // speed: the first ends at 55 + 2 x 55 = 165, the second runs alone after that.
        let trace = [req(0.0, 100, 1), req(55.0, 100, 1)];
        let r = simulate_serving(&plan(0), &s, &costs(None), &trace, LOOSE);
        assert!((r.ttft_ms.p50 - 165.0).abs() < 1e-9, "{r:?}");
        // The second: 55 ms of its work done by 165 (at half speed), the other 55 alone,
        // so its first token at 220, 165 after it arrived.
        assert!((r.ttft_ms.max - 165.0).abs() < 1e-9, "{r:?}");
        // One thread each on two cores: no slowing.
        s.shared_cores = Some((2, 1));
        let r = simulate_serving(&plan(0), &s, &costs(None), &trace, LOOSE);
        assert!((r.ttft_ms.max - 110.0).abs() < 1e-9, "{r:?}");
    }

    #[test]
    fn a_fits_error_spreads_forwards_around_the_curve_with_mean_one() {
        let mut spread = Spread { state: 7 };
        let fit = |points, rms_rel_error| FitQuality {
            points,
            rms_rel_error,
            max_rel_error: 0.0,
        };
        for rms in [0.1, 0.25, 0.5, 0.9] {
            let f: Vec<f64> = (0..200_000)
                .map(|_| spread.factor(fit(1000, rms)))
                .collect();
            let mean = f.iter().sum::<f64>() / f.len() as f64;
            let sd = (f.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / f.len() as f64).sqrt();
            assert!((mean - 1.0).abs() < 0.01, "rms {rms}: mean {mean}");
            let want = rms.min(Spread::MAX);
            assert!((sd / want - 1.0).abs() < 0.05, "rms {rms}: sd {sd}");
            assert!(f.iter().all(|x| x.is_finite() && *x > 0.0));
        }
        assert_eq!(spread.factor(fit(1000, 0.0)), 1.0);
        // Too few measurements for the error to be the host's: the curve runs fixed.
        assert_eq!(spread.factor(fit(99, 0.3)), 1.0);
        // A noisy curve: the same run twice gives the same report, and a spread one.
        let mut c = costs(None);
        c.decode.fit = fit(1000, 0.3);
        let trace: Vec<SimRequest> = (0..20).map(|i| req(i as f64 * 50.0, 100, 40)).collect();
        let run = || {
            simulate_serving(
                &plan(0),
                &setup(1, 1),
                &c,
                &trace,
                Slo {
                    ttft_ms: 1e9,
                    itl_ms: 1e9,
                },
            )
        };
        let (a, b) = (run(), run());
        assert_eq!(a, b);
        assert!(a.itl_ms.p99 > 1.3 * a.itl_ms.p50, "{:?}", a.itl_ms);
    }

    #[test]
    fn histogram_percentiles_are_within_a_percent() {
        let mut h = LogHistogram::new();
        for i in 1..=1000 {
            h.add(i as f64);
        }
        let p = h.percentiles();
        for (got, want) in [(p.p50, 500.0), (p.p90, 900.0), (p.p99, 990.0)] {
            assert!((got / want - 1.0).abs() < 0.01, "{got} {want}");
        }
        assert_eq!(p.max, 1000.0);
    }
}
