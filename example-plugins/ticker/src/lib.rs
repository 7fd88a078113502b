//! `ticker`: a plugin with a background thread, that ends when its version is retired.
//!
//! * `ticks` answers how many times the thread has ticked, and the generation serving:
//!   `{"ticks": 42, "generation": 3}`.
//! * `execute` says what the plugin can do.
//!
//! `init` starts the thread with [`InitContext::spawn`]. The thread sleeps on its
//! [`StopToken`](plugin_api::StopToken) between ticks (`tick_ms` in the configuration,
//! default 10), so it returns as soon as the host signals that this version is being
//! replaced or removed. The host then joins it (up to its `stop_timeout_ms`) before it closes
//! the library: a reload leaves no thread and no copy of the library behind.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use plugin_api::{export_plugin, Callbacks, Context, InitContext, Plugin, PluginError};
use serde::{Deserialize, Serialize};

/// The plugin: the tick count its thread keeps.
pub struct Ticker {
    ticks: Arc<AtomicU64>,
}

/// The configuration.
#[derive(Debug, Deserialize)]
struct Config {
    /// Milliseconds between two ticks.
    #[serde(default = "default_tick_ms")]
    tick_ms: u64,
}

fn default_tick_ms() -> u64 {
    10
}

/// What `ticks` answers.
#[derive(Debug, Serialize, Deserialize)]
pub struct Ticks {
    /// Ticks so far.
    pub ticks: u64,
    /// The generation (loaded version) that answered.
    pub generation: u64,
}

impl Plugin for Ticker {
    type Input = serde_json::Value;
    type Output = serde_json::Value;

    fn init(ctx: &InitContext<'_>) -> Result<Self, PluginError> {
        let config: Config = ctx.config()?;
        let every = Duration::from_millis(config.tick_ms.max(1));
        let ticks = Arc::new(AtomicU64::new(0));
        let counted = ticks.clone();
        ctx.spawn("ticker", move |stop| {
            // `wait_timeout` returns true once the version is retired.
            while !stop.wait_timeout(every) {
                counted.fetch_add(1, Ordering::Relaxed);
            }
        })?;
        Ok(Ticker { ticks })
    }

    fn execute(
        &self,
        _ctx: &Context<'_>,
        _input: serde_json::Value,
    ) -> Result<Self::Output, PluginError> {
        Ok(serde_json::json!({
            "plugin": "ticker",
            "about": "A background thread ticks until this version is retired.",
            "callbacks": ["ticks"],
        }))
    }

    fn callbacks(callbacks: &mut Callbacks<Self>) {
        callbacks.add("ticks", Ticker::ticks);
    }
}

impl Ticker {
    fn ticks(&self, ctx: &Context<'_>, _input: serde_json::Value) -> Result<Ticks, PluginError> {
        Ok(Ticks {
            ticks: self.ticks.load(Ordering::Relaxed),
            generation: ctx.generation(),
        })
    }
}

export_plugin!(Ticker);

#[cfg(test)]
mod tests {
    use super::*;
    use plugin_api::testing::Harness;

    #[test]
    fn the_thread_ticks_and_ends_at_stop() {
        let plugin = Harness::<Ticker>::new("ticker", serde_json::json!({"tick_ms": 1})).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let ticks = plugin
                .call("ticks", serde_json::json!(null))
                .result
                .unwrap();
            if ticks["ticks"].as_u64().unwrap() > 0 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the thread never ticked"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        let report = plugin.stop(Duration::from_secs(5)).unwrap();
        assert_eq!((report.threads, report.ended), (1, 1));
    }
}
