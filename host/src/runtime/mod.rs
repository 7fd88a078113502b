//! Layer 3, the runtime: a loaded library, a generation (one loaded version, in process or
//! in a worker process), the handover gate, probation, and the reaper that unloads.
//! Names only `types` and `files`.

pub(crate) mod generation;
pub(crate) mod handover;
pub mod isolation;
pub mod loader;
pub(crate) mod mappings;
pub(crate) mod reaper;
pub(crate) mod rollout;
pub(crate) mod stop;
