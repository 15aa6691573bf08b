//! The HTTP API in-process (`build_app`, no child process, no socket) over a fake
//! `WorkerPool`: how dispatch answers busy, full, dead and unknown workers. The pool
//! stands in for workers only; the app, the dispatcher and the scheduler are the real
//! ones, and the tokenizer is the default model's (read from its GGUF metadata).

use axum::body::Body;
use axum::http::{Request, StatusCode};
use futures_util::future::BoxFuture;
use genie_engine::model_text::ModelText;
use genie_protocol::worker::{FinishReason, SeqEvent, TokenOut};
use genie_protocol::WorkerId;
use genie_router::{DispatchConfig, Dispatcher, SeqSpec, StartError, WorkerPool};
use genie_scheduler::patterns::llm;
use genie_scheduler::{
    compile, Inventory, ModelProfile, Placement, ResourcePolicy, Role, RoutingPolicy, WorkerView,
};
use genie_server::frontend::Limits;
use genie_server::{build_app, AppState, Frontend, PlanLog};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc::Receiver;
use tokio::sync::Notify;
use tower::ServiceExt;

/// What a fake decode worker does with a sequence.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Worker {
    /// Runs it: `max_tokens` tokens, then `length`.
    Runs,
    /// Refuses: its queue is full.
    Busy,
    /// Has no KV room now.
    Full,
    /// Cannot be reached (and is unhealthy from then on).
    Dead,
    /// Runs it, but its process dies after this many tokens: the stream breaks off.
    Dies(usize),
    /// Runs it, then freezes after this many tokens: the stream stays open with nothing
    /// on it, and the worker stops heartbeating (unhealthy from then on).
    Freezes(usize),
}

/// The token a fake worker generates at `position` of the whole sequence (prompt and
/// completion): a sequence moved elsewhere continues the same series only if it resumes
/// at the right place.
fn token_at(position: usize) -> TokenOut {
    TokenOut {
        token: 1000 + position as u32,
        logprob: None,
        top_logprobs: Vec::new(),
    }
}

struct FakePool {
    workers: Vec<(WorkerId, Worker, usize)>,
    dead: Mutex<Vec<WorkerId>>,
    /// Every start, in order: which worker was asked.
    asked: Mutex<Vec<WorkerId>>,
    /// Every start, in order: how many generated tokens it resumed after.
    resumed: Mutex<Vec<usize>>,
    /// Streams of frozen workers, held open.
    frozen: Mutex<Vec<tokio::sync::mpsc::Sender<SeqEvent>>>,
    changed: Arc<Notify>,
}

impl FakePool {
    /// Decode workers `(behaviour, load)` with ids 1, 2, ….
    fn new(workers: &[(Worker, usize)]) -> Arc<Self> {
        Arc::new(FakePool {
            workers: workers
                .iter()
                .enumerate()
                .map(|(i, &(w, load))| (WorkerId(i as u64 + 1), w, load))
                .collect(),
            dead: Mutex::new(Vec::new()),
            asked: Mutex::new(Vec::new()),
            resumed: Mutex::new(Vec::new()),
            frozen: Mutex::new(Vec::new()),
            changed: Arc::new(Notify::new()),
        })
    }

    fn asked(&self) -> Vec<u64> {
        self.asked.lock().unwrap().iter().map(|w| w.0).collect()
    }
}

impl WorkerPool for FakePool {
    fn views(&self) -> Vec<WorkerView> {
        let dead = self.dead.lock().unwrap();
        self.workers
            .iter()
            .map(|&(id, _, load)| WorkerView {
                id,
                role: Role::Decode,
                healthy: !dead.contains(&id),
                load,
                queued_tokens: 0,
                kv_capacity_bytes: 1 << 30,
                kv_free_bytes: 1 << 30,
                cached_tokens: 0,
                running: 0,
                costs: None,
            })
            .collect()
    }

    fn changed(&self) -> Arc<Notify> {
        Arc::clone(&self.changed)
    }

    fn start<'a>(
        &'a self,
        placement: Placement,
        seq: &'a SeqSpec,
    ) -> BoxFuture<'a, Result<Receiver<SeqEvent>, StartError>> {
        let id = placement.decode();
        self.asked.lock().unwrap().push(id);
        let behaviour = self.workers.iter().find(|w| w.0 == id).unwrap().1;
        self.resumed.lock().unwrap().push(seq.resumed);
        let run = |tokens: usize| {
            let (tx, rx) = tokio::sync::mpsc::channel(seq.max_tokens + 3);
            for i in 0..tokens.min(seq.max_tokens) {
                tx.try_send(SeqEvent::Token(token_at(seq.prompt.len() + i)))
                    .unwrap();
            }
            (tx, rx)
        };
        let r = match behaviour {
            Worker::Runs => {
                let (tx, rx) = run(seq.max_tokens);
                tx.try_send(SeqEvent::Finished(FinishReason::Length))
                    .unwrap();
                Ok(rx)
            }
            Worker::Dies(k) => {
                self.dead.lock().unwrap().push(id);
                Ok(run(k).1)
            }
            Worker::Freezes(k) => {
                self.dead.lock().unwrap().push(id);
                let (tx, rx) = run(k);
                self.frozen.lock().unwrap().push(tx);
                Ok(rx)
            }
            Worker::Busy => Err(StartError::Retry {
                worker: id,
                reason: "queue full".into(),
            }),
            Worker::Full => Err(StartError::NoRoom),
            Worker::Dead => {
                self.dead.lock().unwrap().push(id);
                Err(StartError::Retry {
                    worker: id,
                    reason: "unreachable".into(),
                })
            }
        };
        Box::pin(std::future::ready(r))
    }
}

fn app(pool: Arc<FakePool>, queue_timeout: Duration) -> axum::Router {
    let path = genie_engine::fetch::resolve_model(None).expect("the default model");
    let text = ModelText::open(&path).expect("GGUF metadata");
    let kv_bytes_per_token = text.kv_shape().bytes_per_token();
    let decode = pool.workers.len() as u32;
    let plan = compile(
        &llm::colocated(ResourcePolicy::scale_to(decode, "cpu")),
        &ModelProfile::preset("smollm2-135m").unwrap(),
        &Inventory::local(0, decode),
        &[],
    )
    .unwrap();
    let dispatcher = Dispatcher::new(
        DispatchConfig {
            routing: RoutingPolicy::LeastLoaded,
            prefix_tokens: 64,
            disaggregated: false,
            max_waiting: 16,
            queue_timeout,
            kv_bytes_per_token,
            pinned_by: Vec::new(),
            migration_limit: 2,
            priority_max_wait: Duration::from_secs(10),
        },
        pool,
        plan,
    );
    let limits = Limits {
        default_max_tokens: 16,
        max_n: 4,
        parse_special_in_content: false,
    };
    build_app(AppState {
        frontend: Arc::new(Frontend::new("m".into(), text, limits)),
        dispatcher: Arc::new(dispatcher),
        registry: None,
        api_keys: Arc::new(Vec::new()),
        metrics: genie_server::metrics_setup::install().unwrap(),
        plans: Arc::new(PlanLog::new(16)),
        max_body_bytes: 1 << 20,
        stall_timeout: Duration::from_secs(30),
        cost_profile: None,
        tenants: Default::default(),
        responses: Default::default(),
    })
}

async fn complete(app: axum::Router, extra: serde_json::Value) -> (StatusCode, serde_json::Value) {
    let mut body = serde_json::json!({"model": "m", "prompt": "Hello there", "max_tokens": 3});
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    let req = Request::post("/v1/completions")
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let resp = app.oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, serde_json::from_slice(&bytes).unwrap())
}

#[tokio::test]
async fn a_busy_worker_is_retried_on_another() {
    // Worker 1 is the least loaded, so it is asked first; it refuses as busy.
    let pool = FakePool::new(&[(Worker::Busy, 0), (Worker::Runs, 5)]);
    let (status, body) = complete(
        app(Arc::clone(&pool), Duration::from_secs(5)),
        serde_json::json!({}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert_eq!(body["usage"]["completion_tokens"], 3);
    assert_eq!(pool.asked(), [1, 2]);
}

#[tokio::test(start_paused = true)]
async fn no_kv_room_is_a_429_after_the_queue_timeout() {
    let pool = FakePool::new(&[(Worker::Full, 0), (Worker::Full, 1)]);
    let timeout = Duration::from_secs(30);
    let started = tokio::time::Instant::now();
    let (status, body) = complete(app(Arc::clone(&pool), timeout), serde_json::json!({})).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error"]["type"], "rate_limit_error");
    assert_eq!(body["error"]["code"], "overloaded");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no KV cache room"),
        "{body}"
    );
    // It waited the whole timeout (paused time: no real waiting), having tried once.
    assert!(started.elapsed() >= timeout, "{:?}", started.elapsed());
    assert_eq!(pool.asked(), [1]);
}

#[tokio::test]
async fn a_dead_worker_is_a_clean_503() {
    let pool = FakePool::new(&[(Worker::Dead, 0)]);
    let (status, body) = complete(
        app(Arc::clone(&pool), Duration::from_secs(5)),
        serde_json::json!({}),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["type"], "server_error");
    assert_eq!(
        body["error"]["message"],
        "workers could not be reached; retry later"
    );
    assert_eq!(pool.asked(), [1]);
    // Now it is unhealthy: the next request is refused without asking it.
    let (status, body) = complete(
        app(Arc::clone(&pool), Duration::from_secs(5)),
        serde_json::json!({}),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(
        body["error"]["message"],
        "no healthy decode worker is available"
    );
    assert_eq!(pool.asked(), [1]);
}

#[tokio::test]
async fn a_hint_to_an_unknown_worker_is_a_400_naming_the_field() {
    let pool = FakePool::new(&[(Worker::Runs, 0)]);
    let hint = serde_json::json!({"genie": {"decode_worker": 999}});
    let (status, body) = complete(app(Arc::clone(&pool), Duration::from_secs(5)), hint).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["param"], "genie.decode_worker");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("999"),
        "{body}"
    );
    assert!(pool.asked().is_empty());
    // A hint to disaggregate on a colocated server names its field too.
    let hint = serde_json::json!({"genie": {"disaggregate": true}});
    let (status, body) = complete(app(pool, Duration::from_secs(5)), hint).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["param"], "genie.disaggregate");
}

/// The completion text and token count of `max_tokens` 6 on `pool`.
async fn six_tokens(pool: &Arc<FakePool>) -> (StatusCode, serde_json::Value) {
    complete(
        app(Arc::clone(pool), Duration::from_secs(5)),
        serde_json::json!({"max_tokens": 6}),
    )
    .await
}

#[tokio::test]
async fn a_sequence_whose_worker_dies_continues_on_another_token_for_token() {
    let (status, whole) = six_tokens(&FakePool::new(&[(Worker::Runs, 0)])).await;
    assert_eq!(status, StatusCode::OK, "{whole}");
    let pool = FakePool::new(&[(Worker::Dies(2), 0), (Worker::Runs, 5)]);
    let (status, body) = six_tokens(&pool).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(pool.asked(), [1, 2]);
    assert_eq!(*pool.resumed.lock().unwrap(), [0, 2]);
    assert_eq!(body["usage"]["completion_tokens"], 6);
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert_eq!(body["choices"][0]["text"], whole["choices"][0]["text"]);
}

#[tokio::test]
async fn a_frozen_worker_loses_its_sequence_once_it_stops_heartbeating() {
    let (_, whole) = six_tokens(&FakePool::new(&[(Worker::Runs, 0)])).await;
    let pool = FakePool::new(&[(Worker::Freezes(3), 0), (Worker::Runs, 5)]);
    let (status, body) = tokio::time::timeout(Duration::from_secs(10), six_tokens(&pool))
        .await
        .expect("moved within the liveness check, not hung");
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(pool.asked(), [1, 2]);
    assert_eq!(*pool.resumed.lock().unwrap(), [0, 3]);
    assert_eq!(body["choices"][0]["text"], whole["choices"][0]["text"]);
}

#[tokio::test]
async fn past_the_migration_limit_the_sequence_fails_cleanly() {
    let pool = FakePool::new(&[
        (Worker::Dies(1), 0),
        (Worker::Dies(1), 1),
        (Worker::Dies(1), 2),
        (Worker::Runs, 3),
    ]);
    let (status, body) = six_tokens(&pool).await;
    // Moved twice (the limit), lost a third time: an error, and worker 4 never asked.
    assert_eq!(pool.asked(), [1, 2, 3]);
    assert!(status.is_server_error(), "{status} {body}");
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(msg.contains("moved mid-stream 2 time(s)"), "{body}");
}

#[tokio::test]
async fn a_sequence_lost_before_its_first_token_is_started_again_elsewhere() {
    let (_, whole) = six_tokens(&FakePool::new(&[(Worker::Runs, 0)])).await;
    let pool = FakePool::new(&[
        (Worker::Dies(0), 0),
        (Worker::Dies(0), 1),
        (Worker::Runs, 2),
    ]);
    let (status, body) = six_tokens(&pool).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(pool.asked(), [1, 2, 3]);
    assert_eq!(*pool.resumed.lock().unwrap(), [0, 0, 0]);
    assert_eq!(body["choices"][0]["text"], whole["choices"][0]["text"]);
}
