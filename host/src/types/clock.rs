//! Timing a call cheaply. Every outcome says how long the plugin took (`elapsed_us`), and on
//! this machine `Instant::now()` twice costs 37 ns, more than half of what a no-op call may
//! cost. Where the CPU's time-stamp counter runs at a constant rate whatever the CPU's speed
//! or sleep state (`constant_tsc` and `nonstop_tsc` in `/proc/cpuinfo`, as on every x86-64
//! CPU of the last fifteen years), a [`Stopwatch`] reads it instead (7 ns), at a rate
//! calibrated once against `Instant`; elsewhere it uses `Instant`.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How a stopwatch reads time.
#[derive(Debug, Clone, Copy)]
enum Source {
    /// The time-stamp counter, at this many ticks per microsecond.
    #[cfg(target_arch = "x86_64")]
    Tsc(f64),
    Instant,
}

/// Measures one interval, in microseconds.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Stopwatch {
    #[cfg(target_arch = "x86_64")]
    Tsc(u64, f64),
    Instant(Instant),
}

impl Stopwatch {
    /// Starts measuring.
    #[inline]
    pub(crate) fn start() -> Stopwatch {
        match source() {
            #[cfg(target_arch = "x86_64")]
            Source::Tsc(per_us) => Stopwatch::Tsc(ticks(), per_us),
            Source::Instant => Stopwatch::Instant(Instant::now()),
        }
    }

    /// Microseconds since [`Stopwatch::start`].
    #[inline]
    pub(crate) fn elapsed_us(&self) -> u64 {
        match *self {
            #[cfg(target_arch = "x86_64")]
            Stopwatch::Tsc(start, per_us) => (ticks().saturating_sub(start) as f64 / per_us) as u64,
            Stopwatch::Instant(start) => start.elapsed().as_micros() as u64,
        }
    }
}

/// Chooses (and calibrates, once) how stopwatches read time. Cheap after the first call,
/// which takes about 2 ms; `Host::new` makes it so that no call pays for it.
pub(crate) fn init() {
    source();
}

static SOURCE: OnceLock<Source> = OnceLock::new();

fn source() -> Source {
    *SOURCE.get_or_init(choose)
}

/// The calibrated counter rate, in ticks per microsecond, if stopwatches read the counter:
/// handed to worker processes, which then need no calibration of their own.
pub(crate) fn rate() -> Option<f64> {
    match source() {
        #[cfg(target_arch = "x86_64")]
        Source::Tsc(per_us) => Some(per_us),
        Source::Instant => None,
    }
}

/// Uses the rate a host measured (see [`rate`]) instead of calibrating: `None` means the
/// host reads `Instant`, and so does this process.
pub(crate) fn adopt(rate: Option<f64>) {
    let source = match rate {
        #[cfg(target_arch = "x86_64")]
        Some(per_us) if per_us.is_finite() && per_us >= 1.0 => Source::Tsc(per_us),
        _ => Source::Instant,
    };
    let _ = SOURCE.set(source);
}

#[cfg(target_arch = "x86_64")]
fn choose() -> Source {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .unwrap_or_default();
    let has = |flag: &str| flags.split_whitespace().any(|f| f == flag);
    if !(has("constant_tsc") && has("nonstop_tsc")) {
        return Source::Instant;
    }
    // Two ms of counting against the monotonic clock gives the rate to well under 0.1 %.
    let (t0, c0) = (Instant::now(), ticks());
    while t0.elapsed() < Duration::from_millis(2) {
        std::hint::spin_loop();
    }
    let (elapsed, counted) = (t0.elapsed(), ticks().saturating_sub(c0));
    let per_us = counted as f64 / (elapsed.as_nanos() as f64 / 1000.0);
    if per_us.is_finite() && per_us >= 1.0 {
        Source::Tsc(per_us)
    } else {
        Source::Instant
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn choose() -> Source {
    Source::Instant
}

#[cfg(target_arch = "x86_64")]
#[inline]
fn ticks() -> u64 {
    // SAFETY: RDTSC exists on every x86-64 CPU and has no preconditions.
    unsafe { core::arch::x86_64::_rdtsc() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stopwatch_agrees_with_the_monotonic_clock() {
        init();
        let (watch, start) = (Stopwatch::start(), Instant::now());
        std::thread::sleep(Duration::from_millis(20));
        let (ours, theirs) = (watch.elapsed_us(), start.elapsed().as_micros() as u64);
        assert!(
            ours + 2_000 > theirs && ours < theirs + 2_000,
            "{ours} vs {theirs} µs"
        );
    }
}
