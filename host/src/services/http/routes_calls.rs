//! `POST /v1/plugins/{plugin}/{callback}?timeout_ms=N` (or
//! `/v1/plugins/{plugin}/callbacks/{callback}`, for callbacks named `history`, `rollback` or
//! `restart`): calls a plugin, the body being the input, through the one call path ([`Host::invoke_async`](crate::Host::invoke_async)).
//! 200 with the outcome (a plugin's own error too, in `outcome.error`, but an unknown
//! callback, which is a 404 as an unknown plugin is); the host's errors
//! with their status codes (see [`ApiError`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::limits::read_body;
use super::server::AppState;
use crate::registry::CallRequest;
use crate::types::call::CallOutcome;

/// A call's answer, written straight from the outcome.
#[derive(Debug, Serialize)]
pub(super) struct Answer {
    outcome: CallOutcome,
}

/// The query of a call.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CallQuery {
    timeout_ms: Option<u64>,
}

pub(super) async fn call(
    State(state): State<Arc<AppState>>,
    Path((plugin, callback)): Path<(String, String)>,
    Query(query): Query<CallQuery>,
    body: Body,
) -> Result<Json<Answer>, ApiError> {
    for (what, name) in [("plugin", &plugin), ("callback", &callback)] {
        if !plugin_api::is_valid_name(name) {
            return Err(ApiError::invalid(format!(
                "invalid {what} name: 1 to 64 characters of [A-Za-z0-9_.-]"
            )));
        }
    }
    let bytes = read_body(&state.settings, body).await?;
    let input = if bytes.iter().all(u8::is_ascii_whitespace) {
        "null".to_owned()
    } else {
        let text =
            std::str::from_utf8(&bytes).map_err(|_| ApiError::invalid("the input is not UTF-8"))?;
        serde_json::from_str::<&serde_json::value::RawValue>(text)
            .map_err(|err| ApiError::invalid(format!("the input is not JSON: {err}")))?;
        text.to_owned()
    };
    if state.shutting_down.load(Ordering::Relaxed) {
        return Err(ApiError::shutting_down());
    }
    let mut request = CallRequest::new(plugin, callback, input);
    match query.timeout_ms {
        Some(0) => return Err(ApiError::invalid("timeout_ms must be at least 1")),
        Some(ms) => request = request.timeout(Duration::from_millis(ms)),
        None => {}
    }
    let outcome = state.host.invoke_async(request).await?;
    if let Some(err) = outcome
        .error
        .as_ref()
        .filter(|e| e.kind() == plugin_api::ErrorKind::UnknownCallback)
    {
        let message = err.to_string();
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_callback",
            message,
        ));
    }
    Ok(Json(Answer { outcome }))
}
