//! Counters the registry keeps for monitoring (`/metrics`): every call through the one
//! call path ([`Host::invoke`] and [`Host::invoke_async`], so socket, task and HTTP calls
//! alike) by plugin, callback and outcome, with a latency histogram; and loads, failed
//! loads, rollbacks, worker crashes and quarantines by plugin, all since the host started
//! (a new version does not start them again). Readers take a snapshot
//! ([`Host::call_stats`]).
//!
//! Bounded: at most [`MAX_CALL_SERIES`] (plugin, callback) pairs are kept. Names a caller
//! made up (an unknown plugin or callback) are counted under `(unknown)`, and pairs past
//! the limit under `(other)`, with one warning; each by-plugin event map keeps at most
//! [`MAX_CALL_SERIES`] plugin names.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::runtime::isolation::{WorkerEvent, WorkerEvents};
use crate::types::call::{CallError, CallErrorKind, CallOutcome};

use super::{lock, Host};

/// Upper bounds of the call latency histogram's buckets, in microseconds (the last
/// bucket, `+Inf`, is implied).
pub const LATENCY_BUCKETS_US: [u64; 16] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 5_000_000, 30_000_000,
];

/// The most (plugin, callback) pairs counted apart.
pub const MAX_CALL_SERIES: usize = 4096;

/// What the label of a name nobody serves reads.
pub const UNKNOWN: &str = "(unknown)";

/// What the labels of pairs past [`MAX_CALL_SERIES`] read.
const OTHER: &str = "(other)";

/// The calls of one plugin's callback.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CallSeries {
    /// Calls by outcome: `ok`, `plugin_error`, or a call error kind (`timeout`, `busy` ...).
    pub outcomes: BTreeMap<&'static str, u64>,
    /// Calls per latency bucket (not cumulative), [`LATENCY_BUCKETS_US`] then `+Inf`.
    pub buckets: Vec<u64>,
    /// Latency of all calls together, in microseconds.
    pub sum_us: u64,
}

/// A snapshot of the registry's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CallStats {
    /// By plugin, then callback.
    pub calls: BTreeMap<String, BTreeMap<String, CallSeries>>,
    /// (plugin, callback) pairs in `calls`.
    pub series: usize,
    /// Versions loaded, by plugin (first loads and reloads).
    pub loads: BTreeMap<String, u64>,
    /// Loads refused, by plugin (by file name when the plugin is not known).
    pub failed_loads: BTreeMap<String, u64>,
    /// Rollbacks, automatic and asked for, by plugin.
    pub rollbacks: BTreeMap<String, u64>,
    /// Worker process crashes of isolated plugins, by plugin, whatever the version.
    pub crashes: BTreeMap<String, u64>,
    /// Times an isolated plugin was quarantined (crash loop), by plugin.
    pub quarantines: BTreeMap<String, u64>,
}

/// The registry's counters, behind one short lock taken once per call.
#[derive(Default)]
pub(crate) struct Counters {
    stats: Mutex<CallStats>,
    warned: AtomicBool,
    warned_events: AtomicBool,
}

/// What [`Counters::note`] counts.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Event {
    Load,
    FailedLoad,
    Rollback,
    Crash,
    Quarantine,
}

impl From<WorkerEvent> for Event {
    fn from(event: WorkerEvent) -> Self {
        match event {
            WorkerEvent::Crash => Event::Crash,
            WorkerEvent::Quarantine => Event::Quarantine,
        }
    }
}

impl Counters {
    /// Counts one call of `plugin`'s `callback` that took `elapsed`.
    pub(crate) fn call(
        &self,
        plugin: &str,
        callback: &str,
        result: &Result<CallOutcome, CallError>,
        elapsed: Duration,
    ) {
        let unknown_callback = |o: &CallOutcome| {
            o.error
                .as_ref()
                .is_some_and(|e| e.kind() == plugin_api::ErrorKind::UnknownCallback)
        };
        let outcome = match result {
            Ok(outcome) if unknown_callback(outcome) => "unknown_callback",
            Ok(outcome) if outcome.error.is_some() => "plugin_error",
            Ok(_) => "ok",
            Err(err) => err.kind.as_str(),
        };
        let (plugin, callback) = match result {
            Err(err) if err.kind == CallErrorKind::UnknownPlugin => (UNKNOWN, UNKNOWN),
            Err(err) if err.kind == CallErrorKind::UnknownCallback => (plugin, UNKNOWN),
            Err(err) if err.kind == CallErrorKind::InvalidRequest => (plugin, UNKNOWN),
            Ok(outcome) if unknown_callback(outcome) => (plugin, UNKNOWN),
            _ => (plugin, callback),
        };
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let bucket = LATENCY_BUCKETS_US
            .iter()
            .position(|&bound| us <= bound)
            .unwrap_or(LATENCY_BUCKETS_US.len());
        let mut stats = lock(&self.stats);
        // No allocation once a pair is known: the hot path is a lookup by borrowed names.
        let stats = &mut *stats;
        let known = stats
            .calls
            .get(plugin)
            .is_some_and(|callbacks| callbacks.contains_key(callback));
        let (plugin, callback) = if !known && stats.series >= MAX_CALL_SERIES {
            if !self.warned.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    "call metrics: {MAX_CALL_SERIES} plugin and callback pairs counted; \
                     further ones are counted as (other)"
                );
            }
            (OTHER, OTHER)
        } else {
            (plugin, callback)
        };
        if !stats
            .calls
            .get(plugin)
            .is_some_and(|c| c.contains_key(callback))
        {
            stats.series += 1;
        }
        let callbacks = match stats.calls.get_mut(plugin) {
            Some(callbacks) => callbacks,
            None => stats.calls.entry(plugin.to_owned()).or_default(),
        };
        let series = match callbacks.get_mut(callback) {
            Some(series) => series,
            None => callbacks.entry(callback.to_owned()).or_default(),
        };
        if series.buckets.is_empty() {
            series.buckets = vec![0; LATENCY_BUCKETS_US.len() + 1];
        }
        series.buckets[bucket] += 1;
        series.sum_us = series.sum_us.saturating_add(us);
        *series.outcomes.entry(outcome).or_default() += 1;
    }

    /// Counts a load, a failed load, a rollback, a crash or a quarantine of `plugin`.
    pub(crate) fn note(&self, plugin: &str, event: Event) {
        let mut stats = lock(&self.stats);
        let map = match event {
            Event::Load => &mut stats.loads,
            Event::FailedLoad => &mut stats.failed_loads,
            Event::Rollback => &mut stats.rollbacks,
            Event::Crash => &mut stats.crashes,
            Event::Quarantine => &mut stats.quarantines,
        };
        // Plugin names come from the host's own files; still bounded.
        if let Some(n) = map.get_mut(plugin) {
            *n += 1;
        } else if map.len() < MAX_CALL_SERIES {
            map.insert(plugin.to_owned(), 1);
        } else if !self.warned_events.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "plugin event metrics: {MAX_CALL_SERIES} plugin names counted; \
                 events of further ones are not counted"
            );
        }
    }
}

impl Host {
    /// The counters of every call made through [`Host::invoke`] and
    /// [`Host::invoke_async`], and of loads, rollbacks, crashes and quarantines, since the
    /// host started.
    pub fn call_stats(&self) -> CallStats {
        lock(&self.inner.counters.stats).clone()
    }

    /// Where an isolated generation's supervisor reports its crashes and quarantines: these
    /// counters, which outlive every generation.
    pub(super) fn worker_events(&self) -> WorkerEvents {
        let counters = self.inner.counters.clone();
        WorkerEvents::new(move |plugin, event| counters.note(plugin, event.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_counted_by_outcome_and_bucket_and_made_up_names_are_folded() {
        let counters = Counters::default();
        let unknown = Err(CallError::new(CallErrorKind::UnknownPlugin, "no"));
        for n in 0..3 {
            counters.call(&format!("made-up-{n}"), "x", &unknown, Duration::ZERO);
        }
        let timeout = Err(CallError::new(CallErrorKind::Timeout, "late"));
        counters.call("p", "cb", &timeout, Duration::from_millis(2));
        counters.note("p", Event::Load);
        let stats = lock(&counters.stats).clone();
        let folded = &stats.calls[UNKNOWN][UNKNOWN];
        assert_eq!(folded.outcomes["unknown_plugin"], 3);
        let p = &stats.calls["p"]["cb"];
        assert_eq!(stats.series, 2);
        assert_eq!(p.outcomes["timeout"], 1);
        assert_eq!(p.buckets[5], 1, "2 ms is in the <= 2.5 ms bucket");
        assert_eq!(p.sum_us, 2_000);
        assert_eq!(stats.loads["p"], 1);
    }

    #[test]
    fn crashes_and_quarantines_only_grow_and_plugin_names_are_bounded() {
        let counters = std::sync::Arc::new(Counters::default());
        // Each generation's supervisor gets a sink of its own, as `Host::worker_events`
        // makes them: a new version's crashes add to the old one's, they do not start again.
        for generation in 0..2 {
            let sink = counters.clone();
            let events = WorkerEvents::new(move |plugin, event| sink.note(plugin, event.into()));
            events.report("tough", WorkerEvent::Crash);
            if generation == 1 {
                events.report("tough", WorkerEvent::Quarantine);
            }
        }
        counters.note("tough", Event::Crash);
        for n in 0..MAX_CALL_SERIES + 10 {
            counters.note(&format!("p{n}"), Event::Crash);
        }
        // A known name still counts past the cap.
        counters.note("tough", Event::Crash);
        let stats = lock(&counters.stats).clone();
        assert_eq!(stats.crashes["tough"], 4);
        assert_eq!(stats.quarantines["tough"], 1);
        assert_eq!(stats.crashes.len(), MAX_CALL_SERIES);
        assert!(!stats
            .crashes
            .contains_key(&format!("p{}", MAX_CALL_SERIES + 5)));
        assert!(counters.warned_events.load(Ordering::Relaxed));
        assert!(stats.loads.is_empty());
    }
}
