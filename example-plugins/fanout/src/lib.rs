//! `fanout`: a pyspider-style handler, whose calls the host runs as tasks.
//!
//! * `execute` takes `{"items": ["a", "bb"]}` and asks for one `measure` call per item
//!   (follow-ups: the host runs each as a task of its own, a child of this one).
//! * `measure` takes `{"item": "bb"}` and answers `{"item": "bb", "length": 2}`.
//! * `report` runs every minute on its own (`Callbacks::every`, a schedule the plugin
//!   declares) and logs how many items this version measured.
//!
//! ```sh
//! host submit fanout execute --input '{"items":["a","bb","ccc"]}'
//! host tasks --plugin fanout
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use plugin_api::{export_plugin, Callbacks, Context, InitContext, Plugin, PluginError};
use serde::{Deserialize, Serialize};

/// The plugin: counts what it measured.
pub struct Fanout {
    measured: AtomicU64,
}

/// Input of `execute`.
#[derive(Deserialize)]
pub struct Batch {
    items: Vec<String>,
}

/// Input of `measure`.
#[derive(Deserialize, Serialize)]
pub struct Item {
    item: String,
}

/// Output of `measure`.
#[derive(Serialize)]
pub struct Measured {
    item: String,
    length: usize,
}

impl Plugin for Fanout {
    type Input = Batch;
    type Output = serde_json::Value;

    fn init(_ctx: &InitContext<'_>) -> Result<Self, PluginError> {
        Ok(Fanout {
            measured: AtomicU64::new(0),
        })
    }

    fn execute(&self, ctx: &Context<'_>, batch: Batch) -> Result<Self::Output, PluginError> {
        for item in &batch.items {
            ctx.follow_up("fanout", "measure", Item { item: item.clone() })?;
        }
        ctx.info(format_args!("fanning out {} items", batch.items.len()));
        Ok(serde_json::json!({ "queued": batch.items.len() }))
    }

    fn callbacks(callbacks: &mut Callbacks<Self>) {
        callbacks
            .add("measure", Fanout::measure)
            .add("report", Fanout::report)
            .every("report", Duration::from_secs(60));
    }
}

impl Fanout {
    fn measure(&self, _ctx: &Context<'_>, input: Item) -> Result<Measured, PluginError> {
        self.measured.fetch_add(1, Ordering::Relaxed);
        Ok(Measured {
            length: input.item.chars().count(),
            item: input.item,
        })
    }

    fn report(&self, ctx: &Context<'_>, _input: serde_json::Value) -> Result<u64, PluginError> {
        let measured = self.measured.load(Ordering::Relaxed);
        ctx.info(format_args!("{measured} items measured"));
        Ok(measured)
    }
}

export_plugin!(Fanout);

#[cfg(test)]
mod tests {
    use super::*;
    use plugin_api::testing::Harness;
    use serde_json::json;

    #[test]
    fn execute_asks_for_one_measure_per_item() {
        let plugin = Harness::<Fanout>::new("fanout", json!({})).unwrap();
        let outcome = plugin.execute(json!({"items": ["a", "bb"]}));
        assert_eq!(outcome.result.unwrap(), json!({"queued": 2}));
        let follow_ups: Vec<_> = outcome.follow_ups.iter().map(|f| f.input.clone()).collect();
        assert_eq!(follow_ups, [json!({"item": "a"}), json!({"item": "bb"})]);
        let measured = plugin.call("measure", json!({"item": "bb"}));
        assert_eq!(measured.result.unwrap(), json!({"item": "bb", "length": 2}));
    }
}
