//! The HTTP API (`host serve --http ADDR`, `[http]`): JSON routes for calls, tasks and
//! plugins, Server-Sent Events for a task, `/metrics`, `/healthz` and `/readyz`, behind a
//! bearer token. Every call goes through [`Host::invoke_async`](crate::Host::invoke_async),
//! the one call path; nothing here touches a generation or runs plugin code.
//!
//! One concept per file: `server` (listening, connections, the router, the token check and
//! the time limit), `auth` (tokens), `limits` (`[http]` and reading bodies within them),
//! `error` (error answers), `routes_calls`, `routes_tasks`, `routes_plugins`, `events`
//! (SSE feeds), `metrics`; `dashboard` (the static pages at `/`).

mod auth;
mod dashboard;
mod error;
mod events;
mod limits;
mod metrics;
mod routes_calls;
mod routes_plugins;
mod routes_tasks;
mod server;

pub use auth::{Access, TokenError, TokenSource, Tokens, TOKEN_ENV};
pub use error::ApiError;
pub use events::POLL as EVENT_POLL;
pub use limits::HttpSettings;
pub use server::{bind, HttpServer};
