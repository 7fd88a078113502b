//! The HTTP server: binds (or takes) a TCP listener, accepts connections within
//! `max_connections`, serves each with hyper (headers within `header_read_timeout_ms`), and
//! routes requests ([`router`]) through the token check and the per-request time limit.
//!
//! It runs on a tokio runtime the caller gives (`host serve`: the control server's), and
//! never runs plugin code there: calls go through [`Host::invoke_async`], and anything that
//! blocks (listings, histories, the task store) goes to blocking threads.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncWriteExt;
use tokio::sync::{watch, Semaphore};

use super::auth::{Access, Tokens};
use super::error::ApiError;
use super::events::Feeds;
use super::limits::HttpSettings;
use super::{metrics, routes_calls, routes_plugins, routes_tasks};
use crate::registry::Host;
use crate::services::postgres::Database;
use crate::services::tasks::Tasks;

/// What the handlers share.
pub(super) struct AppState {
    pub(super) host: Host,
    pub(super) tasks: Result<Tasks, String>,
    pub(super) settings: HttpSettings,
    pub(super) tokens: Tokens,
    pub(super) shutting_down: AtomicBool,
    /// Connections open now.
    pub(super) connections: AtomicUsize,
    /// Requests being answered now (event streams included).
    pub(super) answering: AtomicUsize,
    pub(super) streams: Arc<Semaphore>,
    pub(super) feeds: Feeds,
    /// Counts the control socket's connections, when given.
    pub(super) control_connections: std::sync::OnceLock<ConnectionCounter>,
    /// The fleet's database and `lease_ms` (alive or gone), where a fleet is configured.
    pub(super) fleet: std::sync::OnceLock<(Database, u64)>,
}

/// Counts connections of another front end, for `/metrics`.
pub(super) type ConnectionCounter = Box<dyn Fn() -> usize + Send + Sync>;

/// The HTTP API of a [`Host`], serving until dropped.
pub struct HttpServer {
    addr: SocketAddr,
    state: Arc<AppState>,
    stop: watch::Sender<bool>,
}

impl std::fmt::Debug for HttpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// Binds `addr` (`127.0.0.1:8080`) for [`HttpServer::serve`]. An address other than
/// loopback is allowed, and warned about once.
pub fn bind(addr: &str) -> io::Result<TcpListener> {
    let listener = TcpListener::bind(addr)
        .map_err(|err| io::Error::new(err.kind(), format!("http listen address {addr}: {err}")))?;
    Ok(listener)
}

impl HttpServer {
    /// Serves the API of `host` (and of `tasks`, or why there are none) on `listener`,
    /// already bound (by [`bind`], or handed over by socket activation), on `runtime`.
    pub fn serve(
        listener: TcpListener,
        runtime: &tokio::runtime::Handle,
        host: Host,
        tasks: Result<Tasks, String>,
        settings: HttpSettings,
        tokens: Tokens,
    ) -> io::Result<HttpServer> {
        settings
            .check()
            .map_err(|err| io::Error::new(io::ErrorKind::InvalidInput, err))?;
        let addr = listener.local_addr()?;
        if !addr.ip().is_loopback() {
            tracing::warn!(
                "the HTTP API listens on {addr}, reachable from other machines: put it behind \
                 a TLS reverse proxy (see the README), or listen on 127.0.0.1"
            );
        }
        listener.set_nonblocking(true)?;
        let listener = {
            let _entered = runtime.enter();
            tokio::net::TcpListener::from_std(listener)?
        };
        let state = Arc::new(AppState {
            feeds: Feeds::new(settings.max_event_feeds, settings.max_events_per_task),
            streams: Arc::new(Semaphore::new(settings.max_sse_streams)),
            host,
            tasks,
            settings,
            tokens,
            shutting_down: AtomicBool::new(false),
            connections: AtomicUsize::new(0),
            answering: AtomicUsize::new(0),
            control_connections: std::sync::OnceLock::new(),
            fleet: std::sync::OnceLock::new(),
        });
        let (stop, stopped) = watch::channel(false);
        runtime.spawn(accept_loop(listener, state.clone(), stopped));
        Ok(HttpServer { addr, state, stop })
    }

    /// The address it listens on (with the port the system chose for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `/metrics` shows the control socket's open connections as `counter` counts them
    /// (see `ControlServer::connection_counter`).
    pub fn count_control_connections(&self, counter: impl Fn() -> usize + Send + Sync + 'static) {
        let _ = self.state.control_connections.set(Box::new(counter));
    }

    /// `GET /v1/fleet` lists the hosts of `database` (alive: a heartbeat within `lease_ms`),
    /// as `host fleet --json` does; without it, it answers 400 `not_configured`.
    pub fn attach_fleet(&self, database: Database, lease_ms: u64) {
        let _ = self.state.fleet.set((database, lease_ms));
    }

    /// New calls and changes are answered 503 `shutting_down` from now on; reads still are.
    pub fn begin_shutdown(&self) {
        self.state.shutting_down.store(true, Ordering::SeqCst);
    }

    /// Waits until no request is being answered (event streams aside), or `deadline`.
    pub fn wait_idle(&self, deadline: Instant) {
        while self.state.answering.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5).min(deadline - Instant::now()));
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

/// Every route of the API, behind the token check; `/healthz`, `/readyz` and what is not
/// under `/v1/` or `/metrics` (the dashboard) are open.
pub(super) fn router(state: Arc<AppState>) -> Router {
    let timed = Router::new()
        .route("/v1/plugins", get(routes_plugins::list))
        .route("/v1/plugins/{plugin}/history", get(routes_plugins::history))
        .route(
            "/v1/plugins/{plugin}/rollback",
            post(routes_plugins::rollback),
        )
        .route(
            "/v1/plugins/{plugin}/restart",
            post(routes_plugins::restart),
        )
        .route("/v1/plugins/{plugin}/{callback}", post(routes_calls::call))
        // The same call, for callbacks named like the routes above (`history` ...).
        .route(
            "/v1/plugins/{plugin}/callbacks/{callback}",
            post(routes_calls::call),
        )
        .route("/v1/fleet", get(routes_plugins::fleet))
        .route(
            "/v1/tasks",
            get(routes_tasks::list).post(routes_tasks::submit),
        )
        .route("/v1/tasks/{id}", get(routes_tasks::get))
        .route("/v1/tasks/{id}/cancel", post(routes_tasks::cancel))
        .route("/v1/tasks/{id}/retry", post(routes_tasks::retry))
        .route("/metrics", get(metrics::metrics))
        .layer(middleware::from_fn_with_state(state.clone(), time_limit));
    let streams = Router::new().route("/v1/tasks/{id}/events", get(routes_tasks::events));
    Router::new()
        .route("/healthz", get(routes_plugins::healthz))
        .route("/readyz", get(routes_plugins::readyz))
        .merge(timed)
        .merge(streams)
        // The dashboard's routes (`/` and its assets): open, they hold no data.
        .merge(super::dashboard::routes())
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .with_state(state)
}

/// Needs a token under `/v1/` and at `/metrics`, checked before routing (a request without
/// a valid one learns nothing else, not even whether a plugin exists); the read-only token
/// may only GET.
async fn authorize(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    let guarded = path.starts_with("/v1/") || path == "/v1" || path == "/metrics";
    if guarded {
        let token = request
            .headers()
            .get(header::AUTHORIZATION)
            .map(|v| v.as_bytes());
        match state.tokens.check(token) {
            Access::None => return ApiError::unauthorized().into_response(),
            Access::Read if request.method() != Method::GET => {
                return ApiError::forbidden().into_response()
            }
            Access::Read | Access::Write => {}
        }
    }
    // Event streams last as long as their task: shutdown does not wait for them (they end
    // when the server is dropped).
    if path.ends_with("/events") {
        return next.run(request).await;
    }
    state.answering.fetch_add(1, Ordering::SeqCst);
    let _answered = Answered(&state.answering);
    next.run(request).await
}

struct Answered<'a>(&'a AtomicUsize);

impl Drop for Answered<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A request not answered within `request_timeout_ms` gets 504.
async fn time_limit(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let limit = state.settings.request_timeout();
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            format!(
                "the request was not answered within {} ms (http.request_timeout_ms)",
                limit.as_millis()
            ),
        )
        .into_response(),
    }
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}

/// Accepts connections until stopped; one past `max_connections` gets a 503 and is closed.
async fn accept_loop(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    mut stopped: watch::Receiver<bool>,
) {
    let app = router(state.clone());
    let slots = Arc::new(Semaphore::new(state.settings.max_connections));
    let last_warning = AtomicU64::new(0);
    let started = Instant::now();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopped.changed() => return,
        };
        let (mut stream, _) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                // Out of descriptors, most likely: wait a moment rather than spin.
                tracing::warn!("http: accept failed: {err}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            let now = started.elapsed().as_secs() + 1;
            if last_warning.swap(now, Ordering::Relaxed) != now {
                tracing::warn!(
                    "http: {} connections open, the limit (http.max_connections): refusing more",
                    state.settings.max_connections
                );
            }
            tokio::spawn(async move {
                let body = r#"{"error":{"kind":"busy","message":"too many connections (http.max_connections)"}}"#;
                let answer = format!(
                    "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
                     retry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ = tokio::time::timeout(
                    Duration::from_secs(1),
                    stream.write_all(answer.as_bytes()),
                )
                .await;
            });
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let state = state.clone();
        let mut stopped = stopped.clone();
        tokio::spawn(async move {
            state.connections.fetch_add(1, Ordering::Relaxed);
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(state.settings.header_read_timeout());
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = stopped.changed() => {}
            }
            state.connections.fetch_sub(1, Ordering::Relaxed);
            drop(slot);
        });
    }
}
