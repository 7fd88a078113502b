//! `counter`: counts calls, and keeps counting when a new version replaces it.
//!
//! * `hit` adds one and answers the new count: `{"count": 42}`.
//! * `get` answers the count without changing it.
//! * `execute` says what the plugin can do.
//!
//! When the host replaces this version (a rebuilt file, a new configuration), it asks it for
//! its state with [`Plugin::save_state`], holding new calls meanwhile, and hands that state
//! to the next version's `init` ([`InitContext::previous_state`]): not one hit is lost. The
//! state is `{"count": N}`; version 0.1.0 of this plugin saved a bare number, which `init`
//! still reads (a migration).

use std::sync::atomic::{AtomicU64, Ordering};

use plugin_api::{export_plugin, Callbacks, Context, InitContext, Plugin, PluginError};
use serde::{Deserialize, Serialize};

/// The plugin: one count, shared by every call.
pub struct Counter {
    count: AtomicU64,
}

/// What `hit` and `get` answer, and the state handed over.
#[derive(Debug, Serialize, Deserialize)]
pub struct Count {
    count: u64,
}

impl Plugin for Counter {
    type Input = serde_json::Value;
    type Output = serde_json::Value;

    fn init(ctx: &InitContext<'_>) -> Result<Self, PluginError> {
        let count = match (ctx.previous_version(), ctx.previous_state()) {
            (_, None) => 0,
            // 0.1.0 saved a bare number.
            (Some("0.1.0"), Some(state)) => state.as_u64().unwrap_or(0),
            (_, Some(state)) => {
                serde_json::from_value::<Count>(state.clone())
                    .map_err(|err| PluginError::invalid_input(format!("previous state: {err}")))?
                    .count
            }
        };
        if let Some(version) = ctx.previous_version() {
            ctx.info(format_args!(
                "took over count {count} from version {version}"
            ));
        }
        Ok(Counter {
            count: AtomicU64::new(count),
        })
    }

    fn execute(
        &self,
        _ctx: &Context<'_>,
        _input: serde_json::Value,
    ) -> Result<Self::Output, PluginError> {
        Ok(serde_json::json!({
            "plugin": "counter",
            "about": "Counts calls of `hit`; the count survives new versions.",
            "callbacks": ["hit", "get"],
        }))
    }

    fn callbacks(callbacks: &mut Callbacks<Self>) {
        callbacks.add("hit", Counter::hit).add("get", Counter::get);
    }

    fn save_state(&self, _ctx: &Context<'_>) -> Result<Option<serde_json::Value>, PluginError> {
        let count = self.count.load(Ordering::SeqCst);
        Ok(Some(serde_json::json!({ "count": count })))
    }
}

impl Counter {
    fn hit(&self, _ctx: &Context<'_>, _input: serde_json::Value) -> Result<Count, PluginError> {
        Ok(Count {
            count: self.count.fetch_add(1, Ordering::SeqCst) + 1,
        })
    }

    fn get(&self, _ctx: &Context<'_>, _input: serde_json::Value) -> Result<Count, PluginError> {
        Ok(Count {
            count: self.count.load(Ordering::SeqCst),
        })
    }
}

export_plugin!(Counter);

#[cfg(test)]
mod tests {
    use super::*;
    use plugin_api::testing::Harness;
    use serde_json::json;

    #[test]
    fn the_count_goes_on_in_the_next_version() {
        let old = Harness::<Counter>::new("counter", json!({})).unwrap();
        for _ in 0..3 {
            old.call("hit", json!(null)).result.unwrap();
        }
        let state = old.save_state().unwrap().unwrap();
        assert_eq!(state, json!({"count": 3}));
        let new = Harness::<Counter>::after("counter", json!({}), state, "0.2.0").unwrap();
        assert_eq!(
            new.call("hit", json!(null)).result.unwrap(),
            json!({"count": 4})
        );
    }

    #[test]
    fn the_bare_number_of_version_0_1_0_is_migrated() {
        let new = Harness::<Counter>::after("counter", json!({}), json!(41), "0.1.0").unwrap();
        assert_eq!(
            new.call("hit", json!(null)).result.unwrap(),
            json!({"count": 42})
        );
    }

    #[test]
    fn a_state_it_cannot_read_fails_init_with_the_reason() {
        let err = Harness::<Counter>::after("counter", json!({}), json!("x"), "0.2.0")
            .err()
            .unwrap();
        assert!(err.message().contains("previous state"), "{err}");
    }
}
