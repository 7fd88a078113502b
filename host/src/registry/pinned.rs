//! Replaced versions pinned in memory: a version whose library stays mapped after its unload
//! (a thread of the plugin that never ends, a thread-local destructor on a thread still
//! alive) is counted per plugin, with the address space it holds. The count is what the
//! reaper still finds mapped after a release pass; a version released later stops counting.
//!
//! Once a plugin holds `max_pinned_versions` of them, its next versions run in a worker
//! process (whose exit frees everything it mapped), or, where its settings say
//! `isolation = "in-process"`, its reloads are refused (`placement`). Either is logged once
//! and kept until the host restarts: a plugin that pinned versions would pin more.

use super::*;

/// The replaced versions of one plugin still mapped after their unload, as `host list`
/// shows them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pinned {
    /// Replaced versions still mapped after their unload.
    pub versions: u64,
    /// The address space their libraries' mappings span, in bytes.
    pub bytes: u64,
    /// The plugin's `max_pinned_versions`.
    pub max: u32,
    /// Once the limit was reached: why the plugin runs in a worker process now, or why its
    /// reloads are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_reached: Option<String>,
}

/// The versions of `name` in `retired` still mapped after their unload, and their bytes.
fn count(retired: &[Retired], name: &str) -> (u64, u64) {
    retired
        .iter()
        .filter(|r| r.plugin == name && r.state == RetiredState::StillMapped)
        .fold((0, 0), |(versions, bytes), r| {
            (versions + 1, bytes + r.mapped_bytes.unwrap_or(0))
        })
}

/// The versions of `name` in `retired` on their way out (draining or unloading): each may
/// stay mapped too. (Standbys are kept on purpose, one per plugin, and not counted.)
fn leaving(retired: &[Retired], name: &str) -> u64 {
    let on_the_way = |state: &RetiredState| {
        matches!(
            state,
            RetiredState::Draining { .. } | RetiredState::Unloading
        )
    };
    retired
        .iter()
        .filter(|r| r.plugin == name && on_the_way(&r.state))
        .count() as u64
}

/// Whether a plugin that pins `versions` replaced versions, with `leaving` more on their
/// way out, has reached `max`. Only a plugin seen pinning one counts those on their way out
/// (reloads faster than unloads would otherwise pin more than `max` before the count sees
/// them).
fn limit_reached(versions: u64, leaving: u64, max: u32) -> bool {
    versions > 0 && versions + leaving >= u64::from(max)
}

/// `bytes` for people: `1.4 MiB`, `812 KiB`.
fn human_bytes(bytes: u64) -> String {
    if bytes >= 1 << 20 {
        format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
    } else {
        format!("{} KiB", bytes.div_ceil(1 << 10))
    }
}

impl Host {
    /// What `host list` shows of plugin `name`'s pinned versions (`retired`: what the reaper
    /// holds; `state`: the state, locked by the caller). `None` when there is nothing to say.
    pub(super) fn pinned_status(
        &self,
        state: &State,
        retired: &[Retired],
        name: &str,
    ) -> Option<Pinned> {
        let (versions, bytes) = count(retired, name);
        let limit_reached = state.pin_limits.get(name).cloned();
        if versions == 0 && limit_reached.is_none() {
            return None;
        }
        let max = state
            .settings
            .get(name)
            .map_or(DEFAULT_MAX_PINNED_VERSIONS, |s| s.max_pinned_versions);
        Some(Pinned {
            versions,
            bytes,
            max,
            limit_reached,
        })
    }

    /// Whether plugin `name`, about to be loaded in the host's process, holds
    /// `max_pinned_versions` pinned versions (or did since the host started): the reason,
    /// if so. Logged once, when first seen.
    pub(super) fn past_pin_limit(&self, name: &str) -> Option<String> {
        if let Some(reason) = self.state().pin_limits.get(name) {
            return Some(reason.clone());
        }
        let retired = self.inner.reaper.retired();
        let (versions, bytes) = count(&retired, name);
        let leaving = leaving(&retired, name);
        let mut state = self.state();
        let settings = state.settings.get(name);
        let max = settings.map_or(DEFAULT_MAX_PINNED_VERSIONS, |s| s.max_pinned_versions);
        let in_process = settings.and_then(|s| s.isolation) == Some(Isolation::InProcess);
        if !limit_reached(versions, leaving, max) {
            return None;
        }
        let more = match leaving {
            0 => String::new(),
            n => format!(", and {n} more being unloaded"),
        };
        let reason = format!(
            "plugin {name} keeps {versions} replaced versions in memory after their unload \
             ({}; a thread or a thread-local destructor of the plugin keeps each){more}, \
             max_pinned_versions = {max}",
            human_bytes(bytes)
        );
        state.pin_limits.insert(name.to_owned(), reason.clone());
        drop(state);
        if in_process {
            tracing::warn!(plugin = %name, "{reason}: its settings say isolation = \
                \"in-process\", so its reloads are refused until the host restarts");
        } else {
            tracing::warn!(plugin = %name, "{reason}: it runs in a worker process from now \
                on, where a worker's exit frees everything");
        }
        Some(reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retired(plugin: &str, generation: u64, state: RetiredState, bytes: u64) -> Retired {
        Retired {
            plugin: plugin.to_owned(),
            generation,
            path: PathBuf::from("/plugins/lib.so"),
            state,
            retired_at_unix_ms: 0,
            mapped_bytes: (bytes > 0).then_some(bytes),
        }
    }

    #[test]
    fn only_versions_still_mapped_after_unload_count() {
        let all = [
            retired("a", 1, RetiredState::StillMapped, 1000),
            retired("a", 2, RetiredState::StillMapped, 500),
            retired("a", 3, RetiredState::Unloading, 0),
            retired("b", 1, RetiredState::StillMapped, 7),
        ];
        assert_eq!(count(&all, "a"), (2, 1500));
        assert_eq!(count(&all, "b"), (1, 7));
        assert_eq!(count(&all, "c"), (0, 0));
    }

    #[test]
    fn versions_on_their_way_out_count_once_one_was_pinned() {
        let all = [
            retired("a", 1, RetiredState::StillMapped, 1000),
            retired("a", 2, RetiredState::Unloading, 0),
            retired(
                "a",
                3,
                RetiredState::Draining {
                    in_flight: 1,
                    stuck: 0,
                },
                0,
            ),
            retired("a", 4, RetiredState::Standby { until_unix_ms: 0 }, 0),
            retired("b", 1, RetiredState::Unloading, 0),
        ];
        assert_eq!(leaving(&all, "a"), 2);
        assert!(limit_reached(1, 2, 3));
        assert!(!limit_reached(1, 1, 3));
        assert!(limit_reached(3, 0, 3));
        // Nothing pinned yet: unloads under way say nothing.
        assert!(!limit_reached(0, 5, 3));
        // 0: the first version pinned is the limit.
        assert!(limit_reached(1, 0, 0));
        assert!(!limit_reached(0, 0, 0));
    }

    #[test]
    fn bytes_read_as_kib_or_mib() {
        assert_eq!(human_bytes(1), "1 KiB");
        assert_eq!(human_bytes(812 << 10), "812 KiB");
        assert_eq!(human_bytes(3 << 19), "1.5 MiB");
    }
}
