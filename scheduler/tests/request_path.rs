//! One request's path through a compiled plan: which prefill stage a selector (a closure
//! included) picks, how placement routes it, how a client's hint moves the prefill and
//! the prediction with it, and what work already queued on a worker adds to TTFT.

use genie_protocol::WorkerId;
use genie_scheduler::inventory::Inventory;
use genie_scheduler::patterns::llm;
use genie_scheduler::render;
use genie_scheduler::*;

fn facts(prompt: usize) -> RequestFacts {
    RequestFacts {
        prompt_tokens: prompt,
        max_tokens: 16,
        inputs: vec![],
    }
}

fn names(stages: &[&Stage]) -> Vec<String> {
    stages.iter().map(|s| s.phase.clone()).collect()
}

fn smollm() -> ModelProfile {
    ModelProfile::preset("smollm2-135m").unwrap()
}

/// `genie serve`'s plan: one prefill and one decode CPU worker, prompts under
/// `min_prompt_tokens` prefilled on the decode worker.
fn local_prefill_decode(min_prompt_tokens: usize) -> ExecutionPlan {
    compile(
        &llm::prefill_decode(
            ResourcePolicy::scale_out(1, "cpu"),
            ResourcePolicy::scale_to(1, "cpu"),
            min_prompt_tokens,
        ),
        &smollm(),
        &Inventory::local(1, 1),
        &[],
    )
    .unwrap()
}

/// Relative equality for costs summed in a different order.
fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

fn worker(id: u64, role: Role) -> WorkerView {
    WorkerView {
        id: WorkerId(id),
        role,
        healthy: true,
        load: 0,
        queued_tokens: 0,
        kv_capacity_bytes: 1 << 30,
        kv_free_bytes: 1 << 30,
        cached_tokens: 0,
        running: 0,
        costs: None,
    }
}

#[test]
fn a_closure_selector_picks_the_prefill_stage_per_request_and_routing_follows() {
    // Odd-length prompts ship their KV from a prefill worker, even ones prefill on the
    // decode worker: a rule no TOML selector can say.
    let policy = Policy::new("by parity")
        .phase(
            Phase::new("prefill", Op::Prefill)
                .selector(Selector::closure("odd prompts", |f| {
                    f.prompt_tokens % 2 == 1
                }))
                .resources(ResourcePolicy::scale_out(1, "cpu"))
                .consumes("prompt")
                .produces("kv_cache", TensorKind::KvCache),
        )
        .phase(
            Phase::new("prefill_local", Op::Prefill)
                .selector(Selector::closure("even prompts", |f| {
                    f.prompt_tokens % 2 == 0
                }))
                .resources(ResourcePolicy::scale_to(1, "cpu"))
                .consumes("prompt")
                .produces("kv_cache", TensorKind::KvCache)
                .colocate_with("kv_cache"),
        )
        .phase(llm::decode_phase(ResourcePolicy::scale_to(1, "cpu")));
    let plan = compile(&policy, &smollm(), &Inventory::local(1, 1), &[]).unwrap();
    assert_eq!(
        plan.stage("prefill").unwrap().selector_label,
        "custom: odd prompts"
    );
    assert!(render::explain(&plan).contains("for custom: even prompts"));

    let workers = [worker(0, Role::Prefill), worker(100, Role::Decode)];
    let mut sched = Scheduler::new(RoutingPolicy::LeastLoaded);
    for (tokens, stage, placement) in [
        (
            7,
            "prefill",
            Placement::Disaggregated {
                prefill: WorkerId(0),
                decode: WorkerId(100),
            },
        ),
        (
            8,
            "prefill_local",
            Placement::Colocated {
                decode: WorkerId(100),
            },
        ),
    ] {
        let f = facts(tokens);
        let (s, local) = plan.prefill_for(&f).unwrap();
        assert_eq!(s.phase, stage, "{tokens} tokens");
        assert_eq!(names(&plan.active_stages(&f)), [stage, "decode"]);
        let req = PlacementRequest::new(tokens, 1024, !local);
        assert_eq!(
            sched.place(&req, &workers),
            Ok(placement),
            "{tokens} tokens"
        );
        // Without a hint the path taken is the plan's own.
        assert_eq!(plan.taken_stages(&f, !local), plan.active_stages(&f));
    }
}

#[test]
fn a_hint_moves_the_prefill_and_the_prediction_follows() {
    let plan = local_prefill_decode(32);
    let kv_per_token = plan.edges[0].tensor.bytes_per_token;
    let long = facts(200);
    assert_eq!(
        names(&plan.taken_stages(&long, true)),
        ["prefill", "decode"]
    );
    assert!(plan.predict(&long).transfer_bytes > 0);

    // Kept on the decode worker: the colocated prefill stage runs it and nothing moves.
    let kept = plan.taken_stages(&long, false);
    assert_eq!(names(&kept), ["prefill_local", "decode"]);
    let p = plan.predict_taken(&long, &kept, &|_| 0);
    assert_eq!((p.transfer_bytes, p.transfer_ms), (0, 0.0), "{p:?}");
    let local = plan.stage("prefill_local").unwrap();
    assert!(
        close(p.ttft_ms, 200.0 * local.cost.prompt_ms_per_token),
        "{p:?}"
    );
    assert_eq!(p.itl_ms, plan.predict(&long).itl_ms);

    // A short prompt sent to a prefill worker: its KV crosses to the decode worker.
    let short = facts(10);
    assert_eq!(
        names(&plan.taken_stages(&short, false)),
        ["prefill_local", "decode"]
    );
    let sent = plan.taken_stages(&short, true);
    assert_eq!(names(&sent), ["prefill", "decode"]);
    let p = plan.predict_taken(&short, &sent, &|_| 0);
    assert_eq!(p.transfer_bytes, 10 * kv_per_token);
    assert!(p.transfer_ms > 0.0 && p.ttft_ms > 0.0, "{p:?}");

    // A plan with no colocated prefill stage: the decode worker prefills, and pays for it.
    let plain = local_prefill_decode(0);
    let kept = plain.taken_stages(&long, false);
    assert_eq!(names(&kept), ["decode"]);
    let p = plain.predict_taken(&long, &kept, &|_| 0);
    let decode = plain.stage("decode").unwrap();
    assert_eq!(p.transfer_bytes, 0);
    assert!(
        close(p.ttft_ms, 200.0 * decode.cost.prompt_ms_per_token),
        "{p:?}"
    );
}

#[test]
fn prompt_work_queued_on_the_placed_worker_adds_to_the_predicted_ttft() {
    let plan = local_prefill_decode(32);
    let long = facts(200);
    let taken = plan.taken_stages(&long, true);
    let idle = plan.predict_taken(&long, &taken, &|_| 0);
    assert_eq!(idle, plan.predict(&long));
    assert_eq!(idle.queue_ms, 0.0);
    let behind = |s: &Stage| if s.phase == "prefill" { 1000 } else { 0 };
    let busy = plan.predict_taken(&long, &taken, &behind);
    let per_token = plan.stage("prefill").unwrap().cost.prompt_ms_per_token;
    assert!(close(busy.queue_ms, 1000.0 * per_token), "{busy:?}");
    assert!(
        close(busy.ttft_ms, idle.ttft_ms + busy.queue_ms),
        "{busy:?}"
    );
    assert_eq!(
        (busy.itl_ms, busy.transfer_bytes),
        (idle.itl_ms, idle.transfer_bytes)
    );
    // Work queued on a stage the request does not take changes nothing.
    let elsewhere = |s: &Stage| if s.phase == "prefill_local" { 1000 } else { 0 };
    assert_eq!(plan.predict_taken(&long, &taken, &elsewhere), idle);
}

#[test]
fn live_worker_curves_replace_the_compiled_costs_where_reported() {
    use genie_protocol::costs::LiveCurve;
    let plan = local_prefill_decode(32);
    let long = facts(200);
    let taken = plan.taken_stages(&long, true);
    let compiled = plan.predict_taken(&long, &taken, &|_| 0);
    // No curve: the compiled prediction, exactly.
    assert_eq!(
        plan.predict_live(&long, &taken, &|_| 0, &|_| None),
        compiled
    );
    let prefill = LiveCurve {
        coef: [10.0, 2.0, 0.001],
        points: 50,
        rms_rel_error: 0.05,
    };
    let decode = LiveCurve {
        coef: [3.0, 4.0, 0.01],
        points: 500,
        rms_rel_error: 0.05,
    };
    let live = |s: &Stage| {
        Some(LiveStage {
            prefill: (s.phase == "prefill").then_some(prefill),
            decode: (s.phase == "decode").then_some(decode),
            batch: 3,
        })
    };
    let queued = |s: &Stage| if s.phase == "prefill" { 100 } else { 0 };
    let p = plan.predict_live(&long, &taken, &queued, &live);
    // The queue at the live per-token cost, the prompt by the live curve.
    assert!(close(p.queue_ms, 100.0 * 2.0), "{p:?}");
    let prompt = 10.0 + 2.0 * 200.0 + 0.001 * 200.0 * 200.0;
    let transfer =
        compiled.ttft_ms - 200.0 * plan.stage("prefill").unwrap().cost.prompt_ms_per_token;
    assert!(
        close(p.ttft_ms, 200.0 + prompt + transfer),
        "{p:?} {compiled:?}"
    );
    // Each step at the worker's batch (three sequences, each at mid-answer: 200 + 16/2).
    let ctx = 200.0 + long.max_tokens as f64 / 2.0;
    let edges = compiled.itl_ms - plan.stage("decode").unwrap().cost.step_ms;
    assert!(
        close(p.itl_ms, 3.0 + 4.0 * 3.0 + 0.01 * 3.0 * ctx + edges),
        "{p:?}"
    );
    assert_eq!(p.transfer_bytes, compiled.transfer_bytes);
}
