//! The stop signal at retirement (plugin ABI 1.4): what a retired version's `stop` came to,
//! read from the JSON the plugin-api glue returns, and the one log line that says so.

use serde::Deserialize;

/// The callback name a worker process takes for a stop request; `#` begins no callback
/// name the host passes on.
pub(crate) const STOP: &str = "#stop";

/// What a retired generation's stop came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Stopped {
    /// Built against plugin ABI 1.3 or older: it gets no signal.
    NoSignal,
    /// Signalled; its `spawn`ed threads counted.
    Report(StopReport),
    /// The stop itself failed (a worker that did not answer, an answer that does not
    /// parse).
    Failed(String),
}

/// The glue's report: see `plugin_api::abi::Handler::stop`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub(crate) struct StopReport {
    pub(crate) threads: usize,
    pub(crate) ended: usize,
    #[serde(default)]
    pub(crate) still_running: Vec<String>,
    /// `Plugin::stop` failed or panicked (caught by the glue).
    #[serde(default)]
    pub(crate) error: Option<String>,
}

impl Stopped {
    /// Reads the JSON result of a stop.
    pub(crate) fn from_json(json: &str) -> Stopped {
        if json.trim() == "null" {
            return Stopped::NoSignal;
        }
        match serde_json::from_str::<StopReport>(json) {
            Ok(report) => Stopped::Report(report),
            Err(err) => Stopped::Failed(format!("its stop answered something unexpected: {err}")),
        }
    }

    /// Logs how the stop went, in the caller's span (plugin and generation).
    pub(crate) fn log(&self, plugin: &str, generation: u64, timeout_ms: u64) {
        match self {
            Stopped::NoSignal => tracing::debug!(
                plugin,
                generation,
                "no stop signal: built against plugin ABI 1.3 or older"
            ),
            Stopped::Report(report) => {
                if let Some(error) = &report.error {
                    tracing::warn!(plugin, generation, "stop failed: {error}");
                }
                if report.ended == report.threads {
                    tracing::info!(
                        plugin,
                        generation,
                        threads = report.threads,
                        "stopped: {} of its threads ended",
                        report.threads
                    );
                } else {
                    tracing::warn!(
                        plugin,
                        generation,
                        threads = report.threads,
                        ended = report.ended,
                        "stopped, but {} of its threads did not end within {timeout_ms} ms \
                         (stop_timeout_ms): {}; its library stays in memory while they run",
                        report.threads - report.ended,
                        report.still_running.join(", ")
                    );
                }
            }
            Stopped::Failed(reason) => {
                tracing::warn!(plugin, generation, "stop failed: {reason}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_glues_answers_read_as_what_they_mean() {
        assert_eq!(Stopped::from_json("null"), Stopped::NoSignal);
        let report = Stopped::from_json(
            r#"{"threads":2,"ended":1,"still_running":["ticker"],"error":"boom"}"#,
        );
        assert_eq!(
            report,
            Stopped::Report(StopReport {
                threads: 2,
                ended: 1,
                still_running: vec!["ticker".into()],
                error: Some("boom".into()),
            })
        );
        assert!(matches!(Stopped::from_json("[1]"), Stopped::Failed(_)));
    }
}
