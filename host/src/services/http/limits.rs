//! `[http]` in host.toml: where the HTTP API listens, its tokens, and the limits that bound
//! what one client can take. Every limit has a default and a clear error when reached.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `[http]`: the HTTP API (off unless `listen` or `host serve --http` asks for it).
///
/// ```toml
/// [http]
/// listen = "127.0.0.1:8080"
/// token_file = "/etc/plugin-host/http-token"   # mode 0600; default: HOST_HTTP_TOKEN, else
///                                               # state_dir/http-token, made at first start
/// read_token_file = "/etc/plugin-host/read-token" # may list and read, not call or change
/// max_body_bytes = 1048576        # a larger request body gets 413
/// header_read_timeout_ms = 10000  # a client must send its request headers within this
/// body_read_timeout_ms = 30000    # and its body within this (408)
/// max_connections = 256           # connections open at once; one more gets 503
/// max_sse_streams = 1024          # event streams open at once; one more gets 503
/// request_timeout_ms = 60000      # a request not answered within this gets 504
/// max_event_feeds = 256           # tasks whose events are kept for Last-Event-ID
/// max_events_per_task = 1000      # events kept per task
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct HttpSettings {
    /// Address to listen on (`127.0.0.1:8080`); `None`: no HTTP API.
    pub listen: Option<String>,
    /// File holding the token (mode 0600, the user's own).
    pub token_file: Option<PathBuf>,
    /// File holding a read-only token (mode 0600, the user's own).
    pub read_token_file: Option<PathBuf>,
    /// Largest request body, in bytes (default 1 MiB).
    pub max_body_bytes: usize,
    /// A client must send its request line and headers within this (default 10 s).
    pub header_read_timeout_ms: u64,
    /// A client must send its body within this (default 30 s).
    pub body_read_timeout_ms: u64,
    /// Connections open at once (default 256).
    pub max_connections: usize,
    /// Server-Sent Event streams open at once (default 1,024).
    pub max_sse_streams: usize,
    /// A request must be answered within this, or it gets 504 (default 60 s). Event
    /// streams are exempt.
    pub request_timeout_ms: u64,
    /// Tasks whose events are kept in memory for streams to resume from (default 256).
    pub max_event_feeds: usize,
    /// Events kept per task (default 1,000): a stream resumed from further back gets
    /// the oldest kept.
    pub max_events_per_task: usize,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            listen: None,
            token_file: None,
            read_token_file: None,
            max_body_bytes: 1 << 20,
            header_read_timeout_ms: 10_000,
            body_read_timeout_ms: 30_000,
            max_connections: 256,
            max_sse_streams: 1024,
            request_timeout_ms: 60_000,
            max_event_feeds: 256,
            max_events_per_task: 1000,
        }
    }
}

impl HttpSettings {
    /// Checks the limits: each must be at least 1. The error names the key.
    pub fn check(&self) -> Result<(), String> {
        for (key, value) in [
            ("max_body_bytes", self.max_body_bytes as u64),
            ("header_read_timeout_ms", self.header_read_timeout_ms),
            ("body_read_timeout_ms", self.body_read_timeout_ms),
            ("max_connections", self.max_connections as u64),
            ("max_sse_streams", self.max_sse_streams as u64),
            ("request_timeout_ms", self.request_timeout_ms),
            ("max_event_feeds", self.max_event_feeds as u64),
            ("max_events_per_task", self.max_events_per_task as u64),
        ] {
            if value == 0 {
                return Err(format!("http.{key}: must be at least 1"));
            }
        }
        Ok(())
    }

    pub(super) fn header_read_timeout(&self) -> Duration {
        Duration::from_millis(self.header_read_timeout_ms)
    }

    pub(super) fn body_read_timeout(&self) -> Duration {
        Duration::from_millis(self.body_read_timeout_ms)
    }

    pub(super) fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}

/// Reads a request body within `max_body_bytes` (413) and `body_read_timeout_ms` (408).
pub(super) async fn read_body(
    settings: &HttpSettings,
    body: axum::body::Body,
) -> Result<axum::body::Bytes, super::error::ApiError> {
    use axum::http::StatusCode;
    use http_body_util::BodyExt;

    use super::error::ApiError;

    let max = settings.max_body_bytes;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("the request body is over the limit of {max} bytes (http.max_body_bytes)"),
        )
    };
    let limited = http_body_util::Limited::new(body, max);
    match tokio::time::timeout(settings.body_read_timeout(), limited.collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(err)) if err.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Ok(Err(err)) => Err(ApiError::invalid(format!(
            "cannot read the request body: {err}"
        ))),
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "timeout",
            format!(
                "the request body did not arrive within {} ms (http.body_read_timeout_ms)",
                settings.body_read_timeout_ms
            ),
        )),
    }
}

/// A JSON body read as [`read_body`] does; an empty one is `T::default()`.
pub(super) async fn read_json<T: serde::de::DeserializeOwned + Default>(
    settings: &HttpSettings,
    body: axum::body::Body,
) -> Result<T, super::error::ApiError> {
    let bytes = read_body(settings, body).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(&bytes).map_err(|err| {
        super::error::ApiError::invalid(format!("the request body is not the JSON expected: {err}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zero_limit_is_refused_naming_its_key() {
        assert!(HttpSettings::default().check().is_ok());
        let zero = HttpSettings {
            max_sse_streams: 0,
            ..HttpSettings::default()
        };
        assert_eq!(
            zero.check().unwrap_err(),
            "http.max_sse_streams: must be at least 1"
        );
    }
}
