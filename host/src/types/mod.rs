//! Layer 1, plain types: settings, what a call carries and returns, clocks and counters.
//! Names nothing of the host above it.

pub mod call;
pub(crate) mod clock;
pub(crate) mod counter;
pub(crate) mod durations;
pub(crate) mod live_log;
pub mod sandbox;
pub mod settings;
pub(crate) mod small;
