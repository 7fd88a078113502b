//! How long a failed task waits before its next attempt.
//!
//! The delay its policy names for that attempt (the delays in turn, the last one
//! repeating), never less than `min_retry_delay`, since an empty list (or `0s`) with a
//! large `max_attempts` would retry a failing task in a hot loop; then moved by up to ±10%
//! at random, so the tasks that failed together (a database down for everyone) do not all
//! come back at the same instant; and still never under the minimum.

use std::time::Duration;

/// How far a delay is moved at random, in percent of it, either way.
pub(super) const JITTER_PERCENT: u64 = 10;

/// The delay before a retry, and how it came about (for the log line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct RetryDelay {
    /// What the policy says for this attempt, in milliseconds.
    pub(super) planned_ms: u64,
    /// The floor, `min_retry_delay`, in milliseconds.
    pub(super) min_ms: u64,
    /// What is waited: the planned delay raised to the floor, moved by the jitter.
    pub(super) ms: u64,
}

impl RetryDelay {
    /// The delay before the retry after attempt `attempts` (1 for the first) of a task
    /// with these `delays`, at least `min_ms`, with a random jitter from `rng`.
    pub(super) fn after(
        delays: &[u64],
        attempts: u32,
        min_ms: u64,
        rng: &mut fastrand::Rng,
    ) -> RetryDelay {
        let index = (attempts.max(1) as usize - 1).min(delays.len().saturating_sub(1));
        let planned_ms = delays.get(index).copied().unwrap_or(0);
        let base = planned_ms.max(min_ms);
        let spread = jitter_range(base);
        let ms = base
            .saturating_sub(spread)
            .saturating_add(rng.u64(0..=spread.saturating_mul(2)))
            .max(min_ms);
        RetryDelay {
            planned_ms,
            min_ms,
            ms,
        }
    }

    /// Whether the floor raised the planned delay.
    pub(super) fn raised(&self) -> bool {
        self.planned_ms < self.min_ms
    }

    /// How the delay came about, for the log: `300ms ±10%`, or `0s raised to
    /// min_retry_delay 1s, ±10%`.
    pub(super) fn describe(&self) -> String {
        let show = |ms| humantime::format_duration(Duration::from_millis(ms));
        if self.raised() {
            format!(
                "{} raised to min_retry_delay {}, ±{JITTER_PERCENT}%",
                show(self.planned_ms),
                show(self.min_ms)
            )
        } else {
            format!("{} ±{JITTER_PERCENT}%", show(self.planned_ms))
        }
    }
}

/// The most a delay of `ms` is moved either way: `JITTER_PERCENT` of it, rounded down.
fn jitter_range(ms: u64) -> u64 {
    let spread = u128::from(ms) * u128::from(JITTER_PERCENT) / 100;
    u64::try_from(spread).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delay(delays: &[u64], attempts: u32, min_ms: u64, seed: u64) -> RetryDelay {
        RetryDelay::after(
            delays,
            attempts,
            min_ms,
            &mut fastrand::Rng::with_seed(seed),
        )
    }

    #[test]
    fn retries_wait_the_delays_in_turn_and_the_last_one_repeats() {
        let delays = [30_000, 3_600_000, 21_600_000];
        let planned = |attempts| delay(&delays, attempts, 1_000, 7).planned_ms;
        assert_eq!(planned(1), 30_000);
        assert_eq!(planned(2), 3_600_000);
        assert_eq!(planned(3), 21_600_000);
        assert_eq!(planned(9), 21_600_000);
        assert_eq!(delay(&[], 1, 1_000, 7).planned_ms, 0);
    }

    #[test]
    fn the_jitter_stays_within_ten_percent_and_spreads_the_retries() {
        let mut rng = fastrand::Rng::with_seed(42);
        let waits: Vec<u64> = (0..2_000)
            .map(|_| RetryDelay::after(&[30_000], 1, 1_000, &mut rng).ms)
            .collect();
        let (low, high) = (*waits.iter().min().unwrap(), *waits.iter().max().unwrap());
        assert!(low >= 27_000 && high <= 33_000, "{low}..{high}");
        // Spread over the whole range, both sides of the planned delay.
        assert!(low < 27_300 && high > 32_700, "{low}..{high}");
        let distinct: std::collections::BTreeSet<u64> = waits.iter().copied().collect();
        assert!(distinct.len() > 1_000, "{} distinct waits", distinct.len());
        // Near the end of u64 there is no overflow.
        let d = RetryDelay::after(&[u64::MAX], 1, 1_000, &mut rng);
        assert!(d.ms >= u64::MAX - u64::MAX / 10, "{d:?}");
        assert_eq!(delay(&[300], 1, 100, 1).describe(), "300ms ±10%");
    }

    #[test]
    fn no_retry_comes_sooner_than_the_minimum() {
        // An empty list, or zero delays: the minimum, never a hot loop.
        for delays in [&[][..], &[0][..], &[0, 0][..], &[5][..]] {
            for attempts in 1..50 {
                let d = delay(delays, attempts, 1_000, u64::from(attempts));
                assert!(d.raised(), "{d:?}");
                assert!((1_000..=1_100).contains(&d.ms), "{d:?}");
            }
        }
        assert_eq!(
            delay(&[], 1, 1_000, 1).describe(),
            "0s raised to min_retry_delay 1s, ±10%"
        );
        // A delay above the minimum is not raised, and its jitter never goes under it.
        for seed in 0..500 {
            let d = delay(&[1_050], 1, 1_000, seed);
            assert!(!d.raised(), "{d:?}");
            assert!((1_000..=1_155).contains(&d.ms), "{d:?}");
        }
    }
}
