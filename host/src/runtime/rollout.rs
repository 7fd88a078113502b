//! Safe rollout: the self-test a new version passes before it is published, and the
//! probation during which its failures roll it back to the version it replaced.
//!
//! The rules, each pinned by a unit test below:
//!
//! * A plugin with a callback named [`SELF_TEST`] has it called (input `null`) on every new
//!   generation after `init` and before it serves: an error, a panic, a crash or a timeout
//!   refuses the swap, and the old version keeps serving.
//! * After a swap, the replaced generation stays loaded for `probation_ms`. Each failed call
//!   of the new one whose kind is in `rollback_on` counts; the `rollback_after`-th within
//!   the probation trips it, once: the registry swaps the old generation back in, in one
//!   step, and remembers the new content as bad.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use crate::runtime::generation::Generation;
use crate::runtime::loader::{LoadError, LoadErrorKind};
use crate::runtime::reaper::unix_ms;
use crate::types::settings::PluginSettings;

/// The callback a plugin registers to be tested before each new version of it serves.
pub const SELF_TEST: &str = "self_test";

/// A generation's probation: whether it is on one, and its failures so far.
#[derive(Debug, Default)]
pub(crate) struct Probation {
    /// When it ends, in milliseconds since the Unix epoch; 0: not on probation.
    until_ms: AtomicU64,
    failures: AtomicU32,
    first_failure_ms: AtomicU64,
    tripped: AtomicBool,
}

/// A probation that tripped: what to say when rolling back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Trip {
    pub(crate) failures: u32,
    /// The kind of the failure that tripped it, as counted (`panicked`, `crashed` ...).
    pub(crate) kind: String,
    /// From the first failure to the one that tripped it.
    pub(crate) over: Duration,
}

impl Trip {
    /// `3 panics in 2.1 s`.
    pub(crate) fn describe(&self) -> String {
        let what = match (self.kind.as_str(), self.failures) {
            ("panicked", 1) => "panic".to_owned(),
            ("panicked", _) => "panics".to_owned(),
            ("crashed", 1) => "crash".to_owned(),
            ("crashed", _) => "crashes".to_owned(),
            (kind, 1) => format!("`{kind}` failure"),
            (kind, _) => format!("`{kind}` failures"),
        };
        format!(
            "{} {what} in {:.1} s",
            self.failures,
            self.over.as_secs_f64()
        )
    }
}

impl Probation {
    /// Starts a probation that ends at `until`.
    pub(crate) fn start(&self, until: SystemTime) {
        self.until_ms
            .store(unix_ms(until).max(1), Ordering::Relaxed);
    }

    /// Ends it: the version it would roll back to is gone.
    pub(crate) fn end(&self) {
        self.until_ms.store(0, Ordering::Relaxed);
    }

    /// When it ends, if it has not.
    pub(crate) fn until_unix_ms(&self, now: SystemTime) -> Option<u64> {
        let until = self.until_ms.load(Ordering::Relaxed);
        (until != 0 && unix_ms(now) < until).then_some(until)
    }

    /// Counts a failed call of `kind` at `now`; the trip, the first time the failures reach
    /// the limit within the probation.
    pub(crate) fn note(
        &self,
        kind: &str,
        settings: &PluginSettings,
        now: SystemTime,
    ) -> Option<Trip> {
        if self.until_unix_ms(now).is_none() || !settings.rollback_on.iter().any(|k| k == kind) {
            return None;
        }
        let now_ms = unix_ms(now);
        let _ =
            self.first_failure_ms
                .compare_exchange(0, now_ms, Ordering::Relaxed, Ordering::Relaxed);
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures < settings.rollback_after.max(1) || self.tripped.swap(true, Ordering::AcqRel) {
            return None;
        }
        let first = self.first_failure_ms.load(Ordering::Relaxed);
        Some(Trip {
            failures,
            kind: kind.to_owned(),
            over: Duration::from_millis(now_ms.saturating_sub(first)),
        })
    }
}

/// Runs the plugin's self-test on `generation`, not yet published, if the plugin has one.
/// Its error, panic, crash or timeout refuses the generation.
pub(crate) fn self_test(generation: Generation, path: &Path) -> Result<Generation, LoadError> {
    if !generation
        .metadata()
        .callbacks
        .iter()
        .any(|c| c == SELF_TEST)
    {
        return Ok(generation);
    }
    let name = generation.name().to_owned();
    let refused = |why: String| {
        LoadError::new(
            path,
            LoadErrorKind::SelfTestFailed,
            format!("plugin {name}: {SELF_TEST} failed, so the swap is refused: {why}"),
        )
    };
    let cancelled = AtomicBool::new(false);
    let deadline = SystemTime::now() + generation.timeout();
    match generation.run(SELF_TEST, "null", &cancelled, Some(deadline), None) {
        Ok(outcome) => match outcome.result() {
            Ok(_) => Ok(generation),
            Err(err) => Err(refused(format!("{err} [{}]", err.kind()))),
        },
        Err(err) => Err(refused(format!("{err} [{}]", err.kind.as_str()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(after: u32) -> PluginSettings {
        PluginSettings {
            rollback_after: after,
            ..PluginSettings::default()
        }
    }

    #[test]
    fn the_third_counted_failure_within_probation_trips_once() {
        let probation = Probation::default();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        // Not on probation: nothing counts.
        assert_eq!(probation.note("panicked", &settings(3), t0), None);
        probation.start(t0 + Duration::from_secs(30));
        assert_eq!(probation.note("panicked", &settings(3), t0), None);
        // Kinds not in rollback_on do not count.
        assert_eq!(probation.note("failed", &settings(3), t0), None);
        assert_eq!(probation.note("invalid_input", &settings(3), t0), None);
        assert_eq!(
            probation.note("crashed", &settings(3), t0 + Duration::from_millis(700)),
            None
        );
        let trip = probation
            .note("panicked", &settings(3), t0 + Duration::from_millis(2_100))
            .unwrap();
        assert_eq!(trip.failures, 3);
        assert_eq!(trip.describe(), "3 panics in 2.1 s");
        // Once.
        assert_eq!(
            probation.note("panicked", &settings(3), t0 + Duration::from_secs(3)),
            None
        );
    }

    #[test]
    fn failures_after_the_probation_do_not_count() {
        let probation = Probation::default();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        probation.start(t0 + Duration::from_secs(1));
        let late = t0 + Duration::from_secs(2);
        for _ in 0..5 {
            assert_eq!(probation.note("panicked", &settings(1), late), None);
        }
        probation.start(t0 + Duration::from_secs(10));
        probation.end();
        assert_eq!(probation.note("panicked", &settings(1), t0), None);
    }
}
