//! The plugins (`GET /v1/plugins`, what `host list` shows), a plugin's history, rollback
//! and restart, the fleet, and the open health routes (`/healthz`, `/readyz`). Everything
//! that may block (a listing may compute SHA-256s; a restart runs plugin code) runs on a
//! blocking thread.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::ApiError;
use super::limits::read_json;
use super::server::AppState;
use crate::services::tasks::TaskFilter;
use crate::types::call::{CallError, CallErrorKind};

/// Runs `work` on a blocking thread, never on the runtime's.
pub(super) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, CallError> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result.map_err(ApiError::from),
        Err(_) => Err(ApiError::from(CallError::new(
            CallErrorKind::Internal,
            "the request's thread ended without an answer",
        ))),
    }
}

fn check_name(plugin: &str) -> Result<(), ApiError> {
    if plugin_api::is_valid_name(plugin) {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "invalid plugin name: 1 to 64 characters of [A-Za-z0-9_.-]",
        ))
    }
}

pub(super) async fn list(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let host = state.host.clone();
    let files = blocking(move || Ok(host.status())).await?;
    Ok(Json(json!({ "files": files })))
}

pub(super) async fn history(
    State(state): State<Arc<AppState>>,
    Path(plugin): Path<String>,
) -> Result<Json<Value>, ApiError> {
    check_name(&plugin)?;
    let host = state.host.clone();
    let history = blocking(move || host.history(&plugin)).await?;
    Ok(Json(json!({ "history": history })))
}

/// The body of a rollback.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RollbackBody {
    generation: Option<u64>,
}

pub(super) async fn rollback(
    State(state): State<Arc<AppState>>,
    Path(plugin): Path<String>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    check_name(&plugin)?;
    let body: RollbackBody = read_json(&state.settings, body).await?;
    if state.shutting_down.load(Ordering::Relaxed) {
        return Err(ApiError::shutting_down());
    }
    let host = state.host.clone();
    let message = blocking(move || host.rollback(&plugin, body.generation)).await?;
    Ok(Json(json!({ "message": message })))
}

pub(super) async fn restart(
    State(state): State<Arc<AppState>>,
    Path(plugin): Path<String>,
) -> Result<Json<Value>, ApiError> {
    check_name(&plugin)?;
    if state.shutting_down.load(Ordering::Relaxed) {
        return Err(ApiError::shutting_down());
    }
    let host = state.host.clone();
    let message = blocking(move || host.restart_plugin(&plugin)).await?;
    Ok(Json(json!({ "message": message })))
}

/// The fleet's hosts, alive or gone, with the catalogue's rollouts, as `host fleet --json`
/// lists them; 400
/// `not_configured` where this host has no fleet database.
pub(super) async fn fleet(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let Some((database, lease_ms)) = state.fleet.get().cloned() else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "not_configured",
            "no fleet database configured",
        ));
    };
    // On the database's own runtime, where its connections live.
    let listed = database
        .handle()
        .clone()
        .spawn(async move { crate::services::catalogue::list_fleet(&database, lease_ms).await })
        .await;
    match listed {
        Ok(Ok(hosts)) => Ok(Json(json!(hosts))),
        Ok(Err(err)) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "internal",
            err.to_string(),
        )),
        Err(_) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the fleet listing ended without an answer",
        )),
    }
}

pub(super) async fn healthz() -> Json<Value> {
    Json(json!({ "alive": true }))
}

/// Ready: plugins loaded, and the task store answers (when the host runs tasks).
pub(super) async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let plugins = state.host.plugin_names().len();
    let tasks = match &state.tasks {
        Ok(tasks) => {
            let tasks = tasks.clone();
            let probe = TaskFilter {
                limit: 1,
                ..TaskFilter::default()
            };
            match blocking(move || tasks.list(&probe)).await {
                Ok(_) => Ok("reachable".to_owned()),
                Err(err) => Err(err.message),
            }
        }
        Err(reason) => Ok(format!("not run: {reason}")),
    };
    let mut problems = Vec::new();
    if plugins == 0 {
        problems.push("no plugin is loaded".to_owned());
    }
    if let Err(reason) = &tasks {
        problems.push(format!("the task store is unreachable: {reason}"));
    }
    if state.shutting_down.load(Ordering::Relaxed) {
        problems.push("the host is shutting down".to_owned());
    }
    let status = if problems.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let tasks = tasks.unwrap_or_else(|reason| reason);
    let body = json!({
        "ready": problems.is_empty(),
        "plugins": plugins,
        "tasks": tasks,
        "problems": problems,
    });
    (status, Json(body)).into_response()
}
