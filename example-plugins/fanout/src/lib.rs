//! `fanout`: a pyspider-style handler, whose calls the host runs as tasks.
//!
//! * `execute` takes `{"items": ["a", "bb"]}` and asks for one `measure` call per item
//!   (follow-ups: the host runs each as a task of its own, a child of this one).
//! * `measure` takes `{"item": "bb"}` and answers `{"item": "bb", "length": 2}`.
//! * `report` runs every minute on its own (`Callbacks::every`, a schedule the plugin
//!   declares) and logs how many items this version measured.
//! * `staged` takes `{"stages": ["fetch", "store"], "wait_for": "/path/to/file"}`: a long
//!   task in stages, logging a line as each ends. Before each stage after the first it waits
//!   until the file `wait_for` exists (or the call is cancelled), so a caller decides when
//!   it goes on. Its lines show on the task's events stream as they are written
//!   (`GET /v1/tasks/{id}/events`), not only when it ends.
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

/// Input of `staged`.
#[derive(Deserialize)]
pub struct Stages {
    stages: Vec<String>,
    /// The file whose existence lets the stages after the first go on.
    wait_for: std::path::PathBuf,
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
            .add("staged", Fanout::staged)
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

    fn staged(&self, ctx: &Context<'_>, input: Stages) -> Result<serde_json::Value, PluginError> {
        for (n, stage) in input.stages.iter().enumerate() {
            if n > 0 {
                while !input.wait_for.exists() {
                    ctx.check_cancelled()?;
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            ctx.info(format_args!(
                "stage {} of {}: {stage} done",
                n + 1,
                input.stages.len()
            ));
        }
        Ok(serde_json::json!({ "stages": input.stages.len() }))
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

    #[test]
    fn staged_logs_each_stage_as_it_ends_and_waits_for_its_file_after_the_first() {
        let plugin = Harness::<Fanout>::new("fanout", json!({})).unwrap();
        let dir = std::env::temp_dir().join(format!("fanout-staged-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let go_on = dir.join("go-on");
        let _ = std::fs::remove_file(&go_on);
        let input = json!({"stages": ["fetch", "store"], "wait_for": go_on});
        // The first line arrives as it is written, before the call waits: let it go on.
        let outcome = plugin.call_live("staged", input, |record| {
            if record.message.starts_with("stage 1 of 2") {
                std::fs::write(&go_on, b"").unwrap();
            }
        });
        assert_eq!(outcome.result.unwrap(), json!({"stages": 2}));
        let lines: Vec<_> = outcome.logs.iter().map(|l| l.message.as_str()).collect();
        assert_eq!(
            lines,
            ["stage 1 of 2: fetch done", "stage 2 of 2: store done"]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
