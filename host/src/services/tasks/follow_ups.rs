//! Follow-ups: the calls a successful task's outcome asks for, made into its child tasks
//! within the limits that stop runaway chains (depth, follow-ups per call, active tasks per
//! plugin). One over a limit, or one that cannot even be made into a task, is recorded as a
//! `refused` child, never dropped; past twice `max_follow_ups_per_call` they are only
//! counted.

use std::collections::HashMap;

use super::input_key::default_key;
use super::runner::Inner;
use super::task::{Insert, NewTask, TaskRecord};
use crate::types::call::{CallError, CallOutcome};

impl Inner {
    /// The child tasks of what `outcome` asked for, within the limits, for the store to
    /// insert with the parent's outcome; and a line for the parent's logs when some were
    /// refused. A follow-up over a limit is recorded as a `refused` task, up to twice
    /// `max_follow_ups_per_call` of them for one call; past that they are counted in that
    /// line, not recorded one by one (a plugin could ask for a million).
    pub(super) fn follow_ups(
        &self,
        parent: &TaskRecord,
        outcome: &CallOutcome,
        now: u64,
    ) -> (Vec<Insert>, Option<String>) {
        let recorded = self
            .settings
            .max_follow_ups_per_call
            .saturating_mul(2)
            .max(1);
        let asked = outcome.follow_ups.len();
        let mut inserts = Vec::with_capacity(asked.min(recorded));
        let mut active: HashMap<&str, u64> = HashMap::new();
        let mut refused = asked.saturating_sub(recorded);
        for (index, follow_up) in outcome.follow_ups.iter().take(recorded).enumerate() {
            let task = NewTask::new(
                &follow_up.plugin,
                &follow_up.callback,
                &follow_up.input.to_string(),
            );
            let mut insert = self
                .insert_for(task, Some(parent), index, None, now)
                .unwrap_or_else(|err| {
                    refusal(parent, &follow_up.plugin, &follow_up.callback, &err, now)
                });
            if insert.refused.is_none() {
                let count = match active.get(follow_up.plugin.as_str()) {
                    Some(count) => *count,
                    None => self.active(&follow_up.plugin).unwrap_or(0),
                };
                if count >= self.settings.max_queued_per_plugin {
                    insert.refused = Some(format!(
                        "refused: plugin {} has {count} tasks queued or running, its limit \
                         (max_queued_per_plugin)",
                        follow_up.plugin
                    ));
                } else {
                    active.insert(&follow_up.plugin, count + 1);
                }
            }
            if insert.refused.is_some() {
                refused += 1;
            }
            inserts.push(insert);
        }
        if refused == 0 {
            return (inserts, None);
        }
        let mut line =
            format!("{refused} of its {asked} follow-ups were refused (see its children)");
        if asked > recorded {
            line.push_str(&format!(
                "; the {} past the first {recorded} are counted here, not recorded one by one",
                asked - recorded
            ));
        }
        tracing::warn!("task {}: {line}", parent.id);
        (inserts, Some(line))
    }
}

/// A follow-up that cannot even be made into a task (an invalid name, input over
/// `max_message_bytes`), recorded as refused with the reason, without its input.
fn refusal(parent: &TaskRecord, plugin: &str, callback: &str, err: &CallError, now: u64) -> Insert {
    let short = |name: &str| crate::types::call::cut(name, 64);
    Insert {
        plugin: short(plugin),
        callback: short(callback),
        input: "null".to_owned(),
        key: default_key(plugin, callback, "null"),
        priority: 0,
        max_attempts: 1,
        retry_delays_ms: Vec::new(),
        not_before_unix_ms: now,
        age_ms: None,
        parent: Some(parent.id),
        depth: parent.depth + 1,
        schedule: None,
        created_unix_ms: now,
        refused: Some(format!("refused: {}", err.message)),
    }
}
