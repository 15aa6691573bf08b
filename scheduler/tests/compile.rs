//! The plan compiler through its public interface: policies (patterns and hand-written),
//! model profiles and clusters in; plans or typed errors out.

use genie_scheduler::inventory::{Inventory, Link, Pool, Transport};
use genie_scheduler::patterns::{llm, moe, multimodal, vision};
use genie_scheduler::plan::{Criticality, Rate};
use genie_scheduler::render;
use genie_scheduler::*;

fn hetero() -> Inventory {
    Inventory {
        pools: vec![
            Pool {
                name: "h100".into(),
                hardware: "H100".into(),
                count: 8,
            },
            Pool {
                name: "a100".into(),
                hardware: "A100".into(),
                count: 4,
            },
        ],
        links: vec![Link {
            from: "h100".into(),
            to: "a100".into(),
            transport: Transport::Rdma,
            gbps: Some(400.0),
        }],
        default_transport: None,
        hardware: vec![],
    }
}

fn pd(min: usize) -> Policy {
    llm::prefill_decode(
        ResourcePolicy::scale_out(8, "H100"),
        ResourcePolicy::scale_to(4, "A100"),
        min,
    )
}

fn facts(prompt: usize) -> RequestFacts {
    RequestFacts {
        prompt_tokens: prompt,
        max_tokens: 16,
        inputs: vec![],
    }
}

#[test]
fn prefill_decode_on_a_heterogeneous_cluster() {
    let model = ModelProfile::preset("llama-3-70b").unwrap();
    let plan = compile(&pd(64), &model, &hetero(), &[]).unwrap();
    let names: Vec<&str> = plan.stages.iter().map(|s| s.phase.as_str()).collect();
    assert_eq!(names, ["prefill", "prefill_local", "decode"]);
    let prefill = plan.stage("prefill").unwrap();
    // 70B in bf16 (141 GB) needs two 80 GB GPUs per replica.
    assert_eq!(
        (
            prefill.pool.as_str(),
            prefill.gpus,
            prefill.gpus_per_replica,
            prefill.replicas
        ),
        ("h100", 8, 2, 4)
    );
    let decode = plan.stage("decode").unwrap();
    assert_eq!((decode.pool.as_str(), decode.replicas), ("a100", 2));
    assert_eq!(plan.stage("prefill_local").unwrap().pool, "a100");
    assert!(decode.cost.kv_capacity_tokens.unwrap() > 10_000);
    let kv = plan
        .edges
        .iter()
        .find(|e| e.from == "prefill" && e.to == "decode")
        .unwrap();
    assert_eq!(kv.transport, Transport::Rdma);
    assert_eq!(kv.tensor.bytes_per_token, 2 * 80 * 8 * 128 * 2);
    assert_eq!(
        (kv.rate, kv.criticality),
        (Rate::OncePerRequest, Criticality::Ttft)
    );
    let local = plan
        .edges
        .iter()
        .find(|e| e.from == "prefill_local")
        .unwrap();
    assert_eq!(local.transport, Transport::Local);
    assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);

    // Short prompts stay on the decode pool; long ones cross the link and pay for it.
    let (s, colocated) = plan.prefill_for(&facts(10)).unwrap();
    assert_eq!((s.phase.as_str(), colocated), ("prefill_local", true));
    let (s, colocated) = plan.prefill_for(&facts(4000)).unwrap();
    assert_eq!((s.phase.as_str(), colocated), ("prefill", false));
    let p = plan.predict(&facts(4000));
    assert_eq!(p.transfer_bytes, 4000 * kv.tensor.bytes_per_token);
    assert!(
        p.ttft_ms > 0.0 && p.itl_ms > 0.0 && p.transfer_ms > 0.0,
        "{p:?}"
    );
    assert_eq!(plan.predict(&facts(10)).transfer_bytes, 0);

    let json = serde_json::to_value(&plan).unwrap();
    assert_eq!(json["version"], PLAN_VERSION);
    assert!(json["stages"].is_array() && json["edges"].is_array());
    let back: ExecutionPlan = serde_json::from_value(json).unwrap();
    assert_eq!(back, plan);
}

#[test]
fn the_local_backend_is_the_same_pattern_on_cpu_pools() {
    let model = ModelProfile::preset("smollm2-135m").unwrap();
    let plan = compile(
        &llm::prefill_decode(
            ResourcePolicy::scale_out(1, "cpu"),
            ResourcePolicy::scale_to(1, "cpu"),
            0,
        ),
        &model,
        &Inventory::local(1, 1),
        &[],
    )
    .unwrap();
    assert_eq!(plan.stage("prefill").unwrap().pool, "prefill");
    assert_eq!(plan.stage("decode").unwrap().pool, "decode");
    assert_eq!(plan.edges[0].transport, Transport::InProcess);
    assert_eq!(plan.edges[0].tensor.bytes_per_token, 23_040);
    let colocated = compile(
        &llm::colocated(ResourcePolicy::scale_to(1, "cpu")),
        &model,
        &Inventory::local(0, 1),
        &[],
    )
    .unwrap();
    assert!(colocated
        .edges
        .iter()
        .all(|e| e.transport == Transport::Local));
    assert!(colocated.prefill_for(&facts(5000)).unwrap().1);
}

#[test]
fn pipeline_stages_split_the_layers_and_ship_hidden_states() {
    let model = ModelProfile::preset("smollm2-135m").unwrap();
    let plan = compile(
        &llm::pipeline_parallel(2, ResourcePolicy::scale_to(1, "cpu")),
        &model,
        &Inventory {
            pools: vec![Pool {
                name: "cpus".into(),
                hardware: "cpu".into(),
                count: 2,
            }],
            ..Inventory::default()
        },
        &[],
    )
    .unwrap();
    assert_eq!(plan.stages[0].layers, [0, 15]);
    assert_eq!(plan.stages[1].layers, [15, 30]);
    let e = &plan.edges[0];
    assert_eq!(
        (e.tensor.name.as_str(), e.tensor.bytes_per_token),
        ("hidden_0", 576 * 4)
    );
    assert_eq!(
        (e.rate, e.criticality),
        (Rate::EveryStep, Criticality::EveryToken)
    );
    // Each stage keeps the KV of its own 15 layers.
    let kv = &plan.stages[1].residency[1];
    assert_eq!(kv.bytes_per_token, Some(2 * 15 * 3 * 64 * 2));
}

#[test]
fn moe_and_fusion_compile_on_their_models() {
    let mixtral = ModelProfile::preset("mixtral-8x7b").unwrap();
    let plan = compile(
        &moe::expert_parallel(
            4,
            ResourcePolicy::scale_to(2, "H100"),
            ResourcePolicy::scale_to(1, "A100"),
        ),
        &mixtral,
        &hetero(),
        &[],
    )
    .unwrap();
    assert_eq!(plan.stages.len(), 5);
    assert_eq!(plan.stage("experts_3").unwrap().experts, Some([6, 8]));
    assert_eq!(plan.edges.len(), 4);
    assert!(plan.edges.iter().all(|e| e.rate == Rate::EveryStep));

    let llava = ModelProfile::preset("llava-1.5-7b").unwrap();
    let plan = compile(
        &multimodal::parallel_fusion(
            ResourcePolicy::scale_out(2, "A100"),
            ResourcePolicy::scale_out(4, "H100"),
            ResourcePolicy::scale_to(2, "A100"),
        ),
        &llava,
        &hetero(),
        &[],
    )
    .unwrap();
    let with_image = RequestFacts {
        inputs: vec![Modality::Image],
        ..facts(100)
    };
    assert_eq!(plan.active_stages(&with_image).len(), 4);
    assert_eq!(plan.active_stages(&facts(100)).len(), 3);
    assert!(plan.predict(&with_image).ttft_ms > plan.predict(&facts(100)).ttft_ms);
}

fn error_of(policy: &Policy, model: &str, inv: &Inventory, pins: &[Pin]) -> PlanError {
    compile(policy, &ModelProfile::preset(model).unwrap(), inv, pins).unwrap_err()
}

#[test]
fn invalid_input_names_the_field_and_the_reason() {
    let inv = hetero();
    // ColocateWith a tensor nothing produces.
    let p = Policy::new("bad").phase(
        Phase::new("decode", Op::Decode)
            .resources(ResourcePolicy::scale_to(1, "A100"))
            .colocate_with("kv"),
    );
    let e = error_of(&p, "llama-3-8b", &inv, &[]);
    assert_eq!(e.kind, PlanErrorKind::UnknownTensor);
    assert_eq!(e.field, "phases[0].data_dependencies[0]");
    assert!(e.reason.contains("no phase produces `kv`"), "{e}");

    // A hardware type no pool has.
    let p = llm::prefill_decode(
        ResourcePolicy::scale_out(8, "B200"),
        ResourcePolicy::scale_to(1, "A100"),
        0,
    );
    let e = error_of(&p, "llama-3-8b", &inv, &[]);
    assert_eq!(
        (e.kind, e.field.as_str()),
        (
            PlanErrorKind::UnknownHardware,
            "phases[0].resources.hardware"
        )
    );
    assert!(e.reason.contains("h100 (H100 x8)"), "{e}");

    // More pipeline stages than layers.
    let p = vision::pipeline_parallel(40, ResourcePolicy::scale_out(1, "H100"));
    let e = error_of(&p, "smollm2-135m", &inv, &[]);
    assert_eq!(
        (e.kind, e.field.as_str()),
        (PlanErrorKind::ModelMismatch, "phases[0].op")
    );
    assert!(
        e.reason.contains("40 pipeline stages") && e.reason.contains("30 layers"),
        "{e}"
    );

    // Experts on a dense model; an image encoder on a text model.
    let p = moe::expert_parallel(
        2,
        ResourcePolicy::scale_to(1, "H100"),
        ResourcePolicy::scale_to(1, "A100"),
    );
    assert_eq!(
        error_of(&p, "llama-3-8b", &inv, &[]).kind,
        PlanErrorKind::ModelMismatch
    );
    let p = multimodal::parallel_fusion(
        ResourcePolicy::scale_out(1, "A100"),
        ResourcePolicy::scale_out(1, "H100"),
        ResourcePolicy::scale_to(1, "A100"),
    );
    let e = error_of(&p, "llama-3-8b", &inv, &[]);
    assert!(e.reason.contains("no image encoder"), "{e}");

    // Asking for more than the pool has.
    let p = llm::prefill_decode(
        ResourcePolicy::scale_out(8, "H100"),
        ResourcePolicy::scale_to(6, "A100"),
        0,
    );
    let e = error_of(&p, "llama-3-8b", &inv, &[]);
    assert_eq!(
        (e.kind, e.field.as_str()),
        (PlanErrorKind::Capacity, "phases[1].resources")
    );
    assert!(e.reason.contains("scale_to 6 A100"), "{e}");

    // Scale-out past the pool is allowed, with a warning.
    let p = llm::prefill_decode(
        ResourcePolicy::scale_out(16, "H100"),
        ResourcePolicy::scale_to(1, "A100"),
        0,
    );
    let plan = compile(&p, &ModelProfile::preset("llama-3-8b").unwrap(), &inv, &[]).unwrap();
    assert_eq!(plan.stage("prefill").unwrap().gpus, 8);
    assert!(plan.warnings[0].contains("got 8"), "{:?}", plan.warnings);

    // A cycle.
    let p = Policy::new("loop")
        .phase(
            Phase::new("a", Op::Prefill)
                .resources(ResourcePolicy::scale_to(1, "H100"))
                .consumes("y")
                .produces("x", TensorKind::Hidden),
        )
        .phase(
            Phase::new("b", Op::Prefill)
                .resources(ResourcePolicy::scale_to(1, "H100"))
                .consumes("x")
                .produces("y", TensorKind::Hidden),
        );
    assert_eq!(
        error_of(&p, "llama-3-8b", &inv, &[]).kind,
        PlanErrorKind::Cycle
    );

    // Duplicate phase names; a selector nothing matches.
    let p = Policy::new("dup")
        .phase(Phase::new("a", Op::Prefill).resources(ResourcePolicy::scale_to(1, "H100")))
        .phase(Phase::new("a", Op::Decode).resources(ResourcePolicy::scale_to(1, "H100")));
    assert_eq!(
        error_of(&p, "llama-3-8b", &inv, &[]).field,
        "phases[1].name"
    );
    let p = Policy::new("sel").phase(
        Phase::new("a", Op::Prefill)
            .resources(ResourcePolicy::scale_to(1, "H100"))
            .selector(Selector::PromptTokens {
                min: Some(10),
                max: Some(5),
            }),
    );
    assert_eq!(
        error_of(&p, "llama-3-8b", &inv, &[]).field,
        "phases[0].selector.prompt_tokens"
    );
}

#[test]
fn pins_override_the_hardware_choice_and_are_checked() {
    let mut inv = hetero();
    inv.pools.push(Pool {
        name: "a100-spare".into(),
        hardware: "A100".into(),
        count: 2,
    });
    let model = ModelProfile::preset("llama-3-8b").unwrap();
    let pin = |pool: &str| Pin {
        phase: "decode".into(),
        pool: Some(pool.into()),
        worker: None,
    };
    let p = llm::prefill_decode(
        ResourcePolicy::scale_out(8, "H100"),
        ResourcePolicy::scale_to(1, "A100"),
        64,
    );
    let plan = compile(&p, &model, &inv, &[pin("a100-spare")]).unwrap();
    let d = plan.stage("decode").unwrap();
    assert!(d.pinned_pool && d.pool == "a100-spare");
    // What is colocated with the decode phase follows it.
    assert_eq!(plan.stage("prefill_local").unwrap().pool, "a100-spare");
    assert!(render::explain(&plan).contains("pinned by an override"));

    // A bad config pin is named by its own field, not the phase it pins.
    let worker_pin = Pin {
        phase: "prefill".into(),
        pool: None,
        worker: Some(3),
    };
    let e = compile(&p, &model, &inv, &[worker_pin.clone(), pin("nowhere")]).unwrap_err();
    assert_eq!(
        (e.kind, e.field.as_str()),
        (PlanErrorKind::UnknownPool, "plan.pins[1].pool")
    );
    assert!(
        e.reason.contains("`nowhere`") && e.reason.contains("a100-spare"),
        "{e}"
    );
    let e = compile(&p, &model, &inv, &[pin("h100")]).unwrap_err();
    assert_eq!(
        (e.kind, e.field.as_str()),
        (PlanErrorKind::Conflict, "plan.pins[0].pool")
    );
    // A pool written on the phase itself is named as the phase's field.
    let mut own = p.clone();
    own.phases[2].pool = Some("nowhere".into());
    let e = compile(&own, &model, &inv, &[]).unwrap_err();
    assert_eq!(
        (e.kind, e.field.as_str()),
        (PlanErrorKind::UnknownPool, "phases[2].pool")
    );
    // The pin wins over the phase's own pool, and a later worker-only pin keeps it.
    let plan = compile(
        &own,
        &model,
        &inv,
        &[
            pin("a100-spare"),
            Pin {
                phase: "decode".into(),
                pool: None,
                worker: Some(101),
            },
        ],
    )
    .unwrap();
    let d = plan.stage("decode").unwrap();
    assert_eq!(
        (d.pool.as_str(), d.pinned_worker),
        ("a100-spare", Some(101))
    );
    let e = compile(
        &p,
        &model,
        &inv,
        &[Pin {
            phase: "decoder".into(),
            pool: None,
            worker: Some(3),
        }],
    )
    .unwrap_err();
    assert_eq!(
        (e.kind, e.field.as_str()),
        (PlanErrorKind::UnknownPhase, "plan.pins[0].phase")
    );
    let plan = compile(
        &p,
        &model,
        &inv,
        &[Pin {
            phase: "prefill".into(),
            pool: None,
            worker: Some(3),
        }],
    )
    .unwrap();
    assert_eq!(plan.stage("prefill").unwrap().pinned_worker, Some(3));
}

#[test]
fn renderings_show_every_stage_and_edge() {
    let model = ModelProfile::preset("llama-3-70b").unwrap();
    let plan = compile(&pd(64), &model, &hetero(), &[]).unwrap();
    let dot = render::to_dot(&plan);
    assert!(dot.starts_with("digraph plan {"), "{dot}");
    for s in [
        "prefill ->",
        "prefill_local ->",
        "cluster_h100",
        "cluster_a100",
        "rdma",
    ] {
        assert!(dot.contains(s), "{s} missing from {dot}");
    }
    let mm = render::to_mermaid(&plan);
    assert!(mm.starts_with("flowchart LR"));
    assert!(
        mm.contains("prefill -->|") && mm.contains("prefill_local -.->|"),
        "{mm}"
    );
    let text = render::explain(&plan);
    assert!(
        text.contains("`prefill` runs prefill on pool `h100`"),
        "{text}"
    );
    assert!(text.contains("prompt tokens >= 64"), "{text}");
    assert!(text.contains("over rdma at 400 Gbit/s"), "{text}");
}

#[test]
fn moe_plans_render_and_simulate() {
    let plan = compile(
        &moe::expert_parallel(
            4,
            ResourcePolicy::scale_to(2, "H100"),
            ResourcePolicy::scale_to(1, "A100"),
        ),
        &ModelProfile::preset("mixtral-8x7b").unwrap(),
        &hetero(),
        &[],
    )
    .unwrap();
    let dot = render::to_dot(&plan);
    for s in [
        "cluster_h100",
        "cluster_a100",
        "attention (attention + router)",
        "experts_3 (expert shard 4/4)",
        "attention -> experts_0",
        "attention -> experts_3",
        "routed_tokens:",
        "every step",
        "penwidth=2",
    ] {
        assert!(dot.contains(s), "{s} missing from {dot}");
    }
    let mm = render::to_mermaid(&plan);
    assert!(mm.starts_with("flowchart LR"), "{mm}");
    for k in 0..4 {
        let to = format!("| experts_{k}");
        assert!(
            mm.lines()
                .any(|l| l.trim_start().starts_with("attention -->|") && l.ends_with(&to)),
            "no attention -> experts_{k} edge in {mm}"
        );
    }
    let text = render::explain(&plan);
    assert!(text.contains("experts 6..8 of every MoE layer"), "{text}");

    let load = |rate| simulate::Workload {
        requests: 200,
        rate_per_s: rate,
        prompt_tokens: 2048,
        output_tokens: 32,
        inputs: vec![],
        seed: 3,
    };
    let light = simulate::simulate(&plan, &load(0.5));
    let heavy = simulate::simulate(&plan, &load(500.0));
    let phases: Vec<&str> = light.stages.iter().map(|s| s.phase.as_str()).collect();
    assert_eq!(
        phases,
        [
            "attention",
            "experts_0",
            "experts_1",
            "experts_2",
            "experts_3"
        ]
    );
    assert!(
        light.ttft_ms.p50 > 0.0 && light.output_tokens_per_s > 0.0,
        "{light:?}"
    );
    assert!(heavy.ttft_ms.p99 > light.ttft_ms.p99, "{light:?} {heavy:?}");
    assert!(
        heavy.stages[0].max_wait_ms > light.stages[0].max_wait_ms,
        "{light:?} {heavy:?}"
    );
}

#[test]
fn a_vision_pipeline_compiles_into_stateless_stages() {
    let vit = ModelProfile::preset("vit-huge").unwrap();
    let inv = Inventory {
        pools: vec![Pool {
            name: "l40s".into(),
            hardware: "L40S".into(),
            count: 2,
        }],
        default_transport: Some(Transport::Tcp),
        ..Inventory::default()
    };
    let plan = compile(
        &vision::pipeline_parallel(2, ResourcePolicy::scale_to(1, "L40S")),
        &vit,
        &inv,
        &[],
    )
    .unwrap();
    assert_eq!(plan.policy, "vision.pipeline_parallel");
    let half = vit.layers / 2;
    assert_eq!(plan.stages[0].layers, [0, half]);
    assert_eq!(plan.stages[1].layers, [half, vit.layers]);
    // Weights only: a vision pipeline keeps no KV cache between requests.
    for s in &plan.stages {
        assert_eq!(s.pool, "l40s");
        assert_eq!(s.residency.len(), 1, "{s:?}");
        assert_eq!(s.residency[0].tensor, "weights");
        assert_eq!(s.cost.kv_capacity_tokens, None);
    }
    assert_eq!(plan.edges.len(), 1);
    let e = &plan.edges[0];
    assert_eq!((e.from.as_str(), e.to.as_str()), ("stage_0", "stage_1"));
    assert_eq!(e.tensor.name, "hidden_0");
    assert_eq!(e.transport, Transport::Tcp);
    let p = plan.predict(&facts(257));
    assert!(p.ttft_ms > 0.0 && p.transfer_bytes > 0, "{p:?}");
    assert!(render::to_dot(&plan).contains("stage_0 -> stage_1"));
}
