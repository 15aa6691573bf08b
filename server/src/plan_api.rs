//! The plan endpoints: `GET /v1/plans` (the active plan with its live workers),
//! `GET /v1/plans/requests` (recent requests' plans), `GET /v1/plans/requests/{id}` (one
//! request's plan, the id from its `x-genie-request-id` header) and `GET /plan` (a page
//! that draws the plan graph and live placements from those endpoints).

use crate::api_error::ApiError;
use crate::app::AppState;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

/// The active plan, its routing policy (with `prefix_tokens` under `prefix_affinity`) and
/// every worker with the pool it serves.
pub async fn active(State(st): State<AppState>) -> Json<serde_json::Value> {
    let plan = &st.dispatcher.plan;
    let pool_of = |role| plan.stage_of(role).map(|s| s.pool.clone());
    let workers: Vec<serde_json::Value> = st
        .dispatcher
        .views()
        .into_iter()
        .map(|w| {
            serde_json::json!({
                "id": w.id.0,
                "role": w.role,
                "pool": pool_of(w.role),
                "healthy": w.healthy,
                "load": w.load,
                "queued_tokens": w.queued_tokens,
                "kv_capacity_bytes": w.kv_capacity_bytes,
                "kv_free_bytes": w.kv_free_bytes,
                "costs": live_costs(plan, w.role, w.costs.as_ref()),
            })
        })
        .collect();
    let mut v = serde_json::to_value(plan.as_ref()).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert("object".into(), "plan".into());
        let cfg = st.dispatcher.config();
        o.insert(
            "routing".into(),
            serde_json::to_value(cfg.routing).unwrap_or_default(),
        );
        if cfg.routing == genie_scheduler::RoutingPolicy::PrefixAffinity {
            o.insert("prefix_tokens".into(), cfg.prefix_tokens.into());
        }
        o.insert("workers".into(), workers.into());
        // Predicted vs measured over the plans kept: how far to trust the cost model.
        let calibration = genie_scheduler::calibrate(&st.plans.recent(1024));
        o.insert(
            "calibration".into(),
            serde_json::to_value(calibration).unwrap_or_default(),
        );
    }
    Json(v)
}

/// A worker's live cost curves with their drift from the plan's compiled costs: the
/// live prediction over the compiled one for a 512-token prompt (prefill) and for a step
/// of one sequence at 512 tokens of context (decode). 1.0 is no drift.
fn live_costs(
    plan: &genie_scheduler::ExecutionPlan,
    role: genie_scheduler::Role,
    c: Option<&genie_protocol::costs::LiveCosts>,
) -> serde_json::Value {
    use genie_protocol::costs::{decode_terms, prefill_terms};
    let Some(c) = c else {
        return serde_json::Value::Null;
    };
    let stage = plan.stage_of(role);
    let drift = |live: f64, compiled: Option<f64>| {
        compiled
            .filter(|v| *v > 0.0)
            .map(|v| ((live / v) * 1000.0).round() / 1000.0)
    };
    let curve = |l: &genie_protocol::costs::LiveCurve, x: [f64; 3], compiled: Option<f64>| {
        serde_json::json!({
            "coef": l.coef,
            "points": l.points,
            "rms_rel_error": l.rms_rel_error,
            "drift": drift(l.ms(x), compiled),
        })
    };
    let mut o = serde_json::Map::new();
    if let Some(p) = &c.prefill {
        let compiled = stage.map(|s| 512.0 * s.cost.prompt_ms_per_token);
        o.insert("prefill".into(), curve(p, prefill_terms([512.0]), compiled));
    }
    if let Some(d) = &c.decode {
        let compiled = stage.map(|s| s.cost.step_ms);
        o.insert("decode".into(), curve(d, decode_terms([512.0]), compiled));
    }
    o.into()
}

#[derive(Deserialize)]
pub struct RecentQuery {
    limit: Option<usize>,
}

pub async fn recent(
    State(st): State<AppState>,
    Query(q): Query<RecentQuery>,
) -> Json<serde_json::Value> {
    let data = st.plans.recent(q.limit.unwrap_or(50).min(1000));
    Json(serde_json::json!({"object": "list", "data": data}))
}

pub async fn one(State(st): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    match st.plans.get(&id) {
        Some(p) => Ok(Json(p).into_response()),
        None => Err(ApiError::not_found(format!(
            "no plan for request `{id}`: the id is unknown or older than the last 1,024 requests"
        ))),
    }
}

pub async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        include_str!("plan_page.html"),
    )
        .into_response()
}
