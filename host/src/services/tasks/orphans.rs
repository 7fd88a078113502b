//! Tasks whose plugin is not served: they stay queued (the claim leaves them out) until it
//! is served again, or until `orphan_after` has passed both since they were due and since
//! the host last served their plugin (or started): then they are `failed`, naming it. A
//! plugin unloaded for a moment (its file replaced) never fails a task.

use std::collections::HashMap;
use std::time::Duration;

use super::store::{StoreError, TaskStore};

/// How often the plugins with queued tasks are looked at.
const CHECK_EVERY_MS: u64 = 1_000;

/// Since when each plugin with queued tasks has not been served, as the dispatcher saw it.
#[derive(Debug, Default)]
pub(super) struct Orphans {
    unserved_since: HashMap<String, u64>,
    next_check: u64,
}

impl Orphans {
    /// Fails the tasks waiting past `orphan_after` (0: never) for a plugin not in `served`;
    /// returns how many, by plugin.
    pub(super) fn check(
        &mut self,
        store: &dyn TaskStore,
        served: &[String],
        orphan_after: Duration,
        now: u64,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        if orphan_after.is_zero() || now < self.next_check {
            return Ok(Vec::new());
        }
        self.next_check = now.saturating_add(CHECK_EVERY_MS);
        let after = u64::try_from(orphan_after.as_millis()).unwrap_or(u64::MAX);
        let waiting: Vec<String> = store
            .queued_plugins()?
            .into_iter()
            .filter(|plugin| !served.contains(plugin))
            .collect();
        self.unserved_since
            .retain(|plugin, _| waiting.contains(plugin));
        let mut failed = Vec::new();
        for plugin in waiting {
            let since = *self.unserved_since.entry(plugin.clone()).or_insert(now);
            if now.saturating_sub(since) < after {
                continue;
            }
            let error = format!(
                "plugin {plugin} was not served for {} (orphan_after)",
                humantime::format_duration(orphan_after)
            );
            let n = store.fail_queued(&plugin, now.saturating_sub(after), &error, now)?;
            if n > 0 {
                tracing::warn!(plugin = %plugin, "{n} tasks failed: {error}");
                failed.push((plugin, n));
            }
        }
        Ok(failed)
    }
}

/// What `host submit` says of a task whose plugin is not served now.
pub(super) fn waiting_note(plugin: &str, orphan_after: Duration) -> String {
    if orphan_after.is_zero() {
        return format!(
            "plugin {plugin} is not served now: the task waits for it (for ever: orphan_after = 0)"
        );
    }
    format!(
        "plugin {plugin} is not served now: the task waits for it \
         (failed if it is not served within orphan_after, {})",
        humantime::format_duration(orphan_after)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::tasks::task::{Insert, Inserted};
    use crate::services::tasks::SqliteStore;

    fn queue(store: &SqliteStore, plugin: &str, key: &str, due: u64) -> i64 {
        let task = Insert {
            plugin: plugin.to_owned(),
            callback: "execute".to_owned(),
            input: "null".to_owned(),
            key: key.to_owned(),
            priority: 0,
            max_attempts: 1,
            retry_delays_ms: Vec::new(),
            not_before_unix_ms: due,
            age_ms: None,
            parent: None,
            depth: 0,
            schedule: None,
            created_unix_ms: due,
            refused: None,
        };
        match store.insert(&[task]).unwrap()[0] {
            Inserted::Queued(id) => id,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn tasks_fail_only_past_orphan_after_since_due_and_since_last_served() {
        let store = SqliteStore::open_in_memory().unwrap();
        let old = queue(&store, "gone", "1", 0);
        let recent = queue(&store, "gone", "2", 9_500);
        let served = queue(&store, "here", "3", 0);
        let after = Duration::from_secs(10);
        let here = ["here".to_owned()];
        let mut orphans = Orphans::default();
        // First seen unserved at 5,000: nothing fails before 15,000.
        assert_eq!(orphans.check(&store, &here, after, 5_000).unwrap(), vec![]);
        assert_eq!(orphans.check(&store, &here, after, 14_000).unwrap(), vec![]);
        assert_eq!(
            orphans.check(&store, &here, after, 15_000).unwrap(),
            vec![("gone".to_owned(), 1)]
        );
        let record = store.get(old).unwrap().unwrap();
        assert_eq!(record.status.as_str(), "failed");
        assert_eq!(
            record.error.as_deref(),
            Some("plugin gone was not served for 10s (orphan_after)")
        );
        assert_eq!(
            store.get(recent).unwrap().unwrap().status.as_str(),
            "queued"
        );
        assert_eq!(
            store.get(served).unwrap().unwrap().status.as_str(),
            "queued"
        );
        // Served again, then gone again: its clock starts afresh.
        let both = ["here".to_owned(), "gone".to_owned()];
        assert_eq!(orphans.check(&store, &both, after, 16_000).unwrap(), vec![]);
        assert_eq!(orphans.check(&store, &here, after, 17_000).unwrap(), vec![]);
        assert_eq!(orphans.check(&store, &here, after, 26_000).unwrap(), vec![]);
        assert_eq!(
            orphans.check(&store, &here, after, 27_000).unwrap(),
            vec![("gone".to_owned(), 1)]
        );
        // 0: they wait for ever.
        queue(&store, "gone", "4", 0);
        let mut never = Orphans::default();
        assert_eq!(
            never.check(&store, &here, Duration::ZERO, 0).unwrap(),
            vec![]
        );
        assert_eq!(
            never
                .check(&store, &here, Duration::ZERO, u64::MAX)
                .unwrap(),
            vec![]
        );
    }
}
