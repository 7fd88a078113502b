//! `GET /metrics`: the Prometheus text format, written with prometheus-client from what
//! the registry counts at the one call path (every call: socket, tasks, HTTP), the plugins'
//! status, the task store, and this server.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::error::ApiError;
use super::routes_plugins::blocking;
use super::server::AppState;
use crate::registry::{CallStats, FileStatus, LATENCY_BUCKETS_US};
use crate::services::tasks::{RunTimes, TaskStatus, RUN_TIME_BUCKETS_MS};

/// Everything one scrape shows, read once.
#[derive(Debug)]
struct Snapshot {
    calls: CallStats,
    files: Vec<FileStatus>,
    tasks: Option<TaskNumbers>,
    connections: usize,
    control_connections: Option<usize>,
    streams: usize,
    running_calls: usize,
}

#[derive(Debug)]
struct TaskNumbers {
    counts: Vec<(TaskStatus, u64)>,
    oldest_due_ms: u64,
    run_times: RunTimes,
}

pub(super) async fn metrics(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let host = state.host.clone();
    let tasks = state.tasks.clone().ok();
    let (calls, files, running_calls, tasks) = blocking(move || {
        let tasks = match tasks {
            Some(tasks) => Some(TaskNumbers {
                counts: tasks.counts()?,
                oldest_due_ms: tasks.oldest_due_ms()?,
                run_times: tasks.run_times(),
            }),
            None => None,
        };
        Ok((
            host.call_stats(),
            host.status(),
            host.running_calls().len(),
            tasks,
        ))
    })
    .await?;
    let snapshot = Snapshot {
        calls,
        files,
        tasks,
        connections: state.connections.load(Ordering::Relaxed),
        control_connections: state.control_connections.get().map(|count| count()),
        streams: state.settings.max_sse_streams - state.streams.available_permits(),
        running_calls,
    };
    let mut registry = Registry::default();
    registry.register_collector(Box::new(snapshot));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).map_err(|_| {
        ApiError::from(crate::types::call::CallError::new(
            crate::types::call::CallErrorKind::Internal,
            "cannot encode the metrics",
        ))
    })?;
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    Ok(([(header::CONTENT_TYPE, content_type)], text).into_response())
}

/// A value written as it is.
#[derive(Debug)]
struct Value(MetricType, f64);

impl EncodeMetric for Value {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), std::fmt::Error> {
        match self.0 {
            MetricType::Counter => encoder
                .encode_counter::<prometheus_client::encoding::NoLabelSet, f64, f64>(&self.1, None),
            _ => encoder.encode_gauge(&self.1),
        }
    }

    fn metric_type(&self) -> MetricType {
        self.0
    }
}

type Labels<'a> = Vec<(&'static str, &'a str)>;

fn family(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    rows: &[(Labels<'_>, f64)],
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in rows {
        Value(kind, *value).encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

fn histogram(bounds: &[u64], counts: &[u64], scale: f64) -> Vec<(f64, u64)> {
    bounds
        .iter()
        .map(|&b| b as f64 / scale)
        .chain([f64::INFINITY])
        .zip(counts.iter().copied())
        .collect()
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use MetricType::{Counter, Gauge};
        let calls = &self.calls.calls;
        let pairs = || {
            calls.iter().flat_map(|(plugin, callbacks)| {
                callbacks
                    .iter()
                    .map(move |(callback, series)| (plugin, callback, series))
            })
        };
        let rows: Vec<_> = pairs()
            .flat_map(|(plugin, callback, series)| {
                series.outcomes.iter().map(move |(outcome, n)| {
                    (
                        vec![
                            ("plugin", plugin.as_str()),
                            ("callback", callback.as_str()),
                            ("outcome", *outcome),
                        ],
                        *n as f64,
                    )
                })
            })
            .collect();
        family(&mut encoder, "host_calls", "Calls through the host's one call path (socket, tasks, HTTP), by plugin, callback and outcome", Counter, &rows)?;
        {
            let mut metric = encoder.encode_descriptor(
                "host_call_duration_seconds",
                "Call latency at the one call path",
                None,
                MetricType::Histogram,
            )?;
            for (plugin, callback, series) in pairs() {
                let labels = vec![("plugin", plugin.as_str()), ("callback", callback.as_str())];
                let count = series.buckets.iter().sum();
                let buckets = histogram(&LATENCY_BUCKETS_US, &series.buckets, 1e6);
                metric
                    .encode_family(&labels)?
                    .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                        series.sum_us as f64 / 1e6,
                        count,
                        &buckets,
                        None,
                    )?;
            }
        }
        for (name, help, map) in [
            (
                "host_plugin_loads",
                "Versions loaded, by plugin",
                &self.calls.loads,
            ),
            (
                "host_plugin_failed_loads",
                "Loads refused, by plugin (or file)",
                &self.calls.failed_loads,
            ),
            (
                "host_plugin_rollbacks",
                "Rollbacks, automatic and asked for, by plugin",
                &self.calls.rollbacks,
            ),
            (
                "host_plugin_crashes",
                "Worker process crashes since the host started, by plugin, whatever the version",
                &self.calls.crashes,
            ),
            (
                "host_plugin_quarantines",
                "Times a plugin was quarantined for a crash loop since the host started, by plugin",
                &self.calls.quarantines,
            ),
        ] {
            let rows: Vec<_> = map
                .iter()
                .map(|(plugin, n)| (vec![("plugin", plugin.as_str())], *n as f64))
                .collect();
            family(&mut encoder, name, help, Counter, &rows)?;
        }
        let serving: Vec<_> = self
            .files
            .iter()
            .filter_map(|f| Some((f.metadata.as_ref()?.name.as_str(), f.serving.as_ref()?)))
            .collect();
        let quarantined: Vec<_> = serving
            .iter()
            .map(|(plugin, s)| {
                let q = s.worker.as_ref().is_some_and(|w| w.quarantined.is_some());
                (vec![("plugin", *plugin)], f64::from(u8::from(q)))
            })
            .collect();
        family(
            &mut encoder,
            "host_plugin_quarantined",
            "1 while the version serving is quarantined, by plugin",
            Gauge,
            &quarantined,
        )?;
        let stuck: u64 = serving.iter().map(|(_, s)| s.stuck).sum();
        family(
            &mut encoder,
            "host_stuck_calls",
            "Calls whose caller was told they timed out and that have not returned",
            Gauge,
            &[(vec![], stuck as f64)],
        )?;
        family(
            &mut encoder,
            "host_running_calls",
            "Calls running on the call pool",
            Gauge,
            &[(vec![], self.running_calls as f64)],
        )?;
        family(
            &mut encoder,
            "host_http_connections",
            "HTTP connections open",
            Gauge,
            &[(vec![], self.connections as f64)],
        )?;
        if let Some(open) = self.control_connections {
            family(
                &mut encoder,
                "host_control_connections",
                "Control socket connections open",
                Gauge,
                &[(vec![], open as f64)],
            )?;
        }
        family(
            &mut encoder,
            "host_http_event_streams",
            "Server-Sent Event streams open",
            Gauge,
            &[(vec![], self.streams as f64)],
        )?;
        if let Some(tasks) = &self.tasks {
            let rows: Vec<_> = TaskStatus::ALL
                .iter()
                .map(|status| {
                    let n = tasks
                        .counts
                        .iter()
                        .find(|(s, _)| s == status)
                        .map_or(0, |(_, n)| *n);
                    (vec![("status", status.as_str())], n as f64)
                })
                .collect();
            family(&mut encoder, "host_tasks", "Tasks by status", Gauge, &rows)?;
            let queued = tasks
                .counts
                .iter()
                .find(|(s, _)| *s == TaskStatus::Queued)
                .map_or(0, |(_, n)| *n);
            family(
                &mut encoder,
                "host_task_queue_depth",
                "Tasks queued",
                Gauge,
                &[(vec![], queued as f64)],
            )?;
            family(
                &mut encoder,
                "host_task_oldest_due_seconds",
                "How long the task due the longest has waited past its time",
                Gauge,
                &[(vec![], tasks.oldest_due_ms as f64 / 1e3)],
            )?;
            let times = &tasks.run_times;
            let mut counts = times.buckets.clone();
            counts.resize(RUN_TIME_BUCKETS_MS.len() + 1, 0);
            let buckets = histogram(&RUN_TIME_BUCKETS_MS, &counts, 1e3);
            encoder
                .encode_descriptor(
                    "host_task_run_seconds",
                    "How long task attempts ran",
                    None,
                    MetricType::Histogram,
                )?
                .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                    times.sum_ms as f64 / 1e3,
                    counts.iter().sum(),
                    &buckets,
                    None,
                )?;
        }
        Ok(())
    }
}
