//! Counting calls without a locked instruction. Every call counts itself twice (started,
//! finished, for `host list`); an atomic add costs 7 ns even uncontended, a tenth of a
//! no-op call, and a shared counter would bounce its cache line between the threads that
//! call. Instead each thread owns one stripe of every counter, which only it writes (a
//! plain load and store), and reading sums the stripes. A thread takes a stripe when it
//! first counts and gives it back when it ends; threads beyond [`STRIPES`] share one atomic
//! counter.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

/// Stripes per counter: threads that count at once before they share one.
const STRIPES: usize = 64;

/// Stripes given back by threads that ended.
static FREE: Mutex<Vec<usize>> = Mutex::new(Vec::new());
/// The next stripe never given out.
static NEXT: AtomicUsize = AtomicUsize::new(0);

/// The calling thread's stripe, held until the thread ends.
struct Owned(Option<usize>);

impl Owned {
    fn claim() -> Owned {
        let free = FREE.lock().unwrap_or_else(PoisonError::into_inner).pop();
        Owned(free.or_else(|| {
            let next = NEXT.fetch_add(1, Ordering::Relaxed);
            (next < STRIPES).then_some(next)
        }))
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        if let Some(stripe) = self.0 {
            FREE.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(stripe);
        }
    }
}

thread_local! {
    static STRIPE: Owned = Owned::claim();
}

#[derive(Default)]
#[repr(align(64))]
struct Stripe(AtomicU64);

/// A counter many threads increment without contending.
pub(crate) struct Counter {
    stripes: Box<[Stripe; STRIPES]>,
    shared: AtomicU64,
}

impl Default for Counter {
    fn default() -> Self {
        Counter {
            stripes: Box::new(std::array::from_fn(|_| Stripe::default())),
            shared: AtomicU64::new(0),
        }
    }
}

impl std::fmt::Debug for Counter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Counter({})", self.sum())
    }
}

impl Counter {
    /// Adds one.
    #[inline]
    pub(crate) fn increment(&self) {
        match STRIPE.try_with(|owned| owned.0) {
            Ok(Some(stripe)) => {
                // Only this thread writes this stripe while it holds it, so a load and a
                // store are an increment; readers see either value, never a torn one.
                let cell = &self.stripes[stripe].0;
                cell.store(cell.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
            }
            _ => {
                self.shared.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Takes one back, on the thread that added it.
    pub(crate) fn decrement(&self) {
        match STRIPE.try_with(|owned| owned.0) {
            Ok(Some(stripe)) => {
                let cell = &self.stripes[stripe].0;
                cell.store(
                    cell.load(Ordering::Relaxed).wrapping_sub(1),
                    Ordering::Relaxed,
                );
            }
            _ => {
                self.shared.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// The count so far.
    pub(crate) fn sum(&self) -> u64 {
        // Wrapping: a decrement may land in another cell than its increment did (a thread
        // whose stripe went away in between), leaving that cell one below zero.
        self.stripes
            .iter()
            .fold(self.shared.load(Ordering::Relaxed), |sum, s| {
                sum.wrapping_add(s.0.load(Ordering::Relaxed))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn counts_add_up_across_more_threads_than_stripes_and_stripes_come_back() {
        let counter = Arc::new(Counter::default());
        for _ in 0..3 {
            let threads: Vec<_> = (0..STRIPES + 8)
                .map(|_| {
                    let counter = counter.clone();
                    std::thread::spawn(move || (0..1000).for_each(|_| counter.increment()))
                })
                .collect();
            threads.into_iter().for_each(|t| t.join().unwrap());
        }
        assert_eq!(counter.sum(), 3 * (STRIPES as u64 + 8) * 1000);
    }
}
