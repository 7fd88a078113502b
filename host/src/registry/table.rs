//! The call table: plugin name → the generation serving it, read without locks.
//!
//! Each plugin name has a *slot*, an [`ArcSwapOption`] holding its current generation. The
//! map of slots sits behind an [`ArcSwap`] of its own and changes only when a name appears or
//! disappears. A call loads the map, loads its plugin's slot, and keeps only the slot's guard
//! for the length of the call: that guard keeps that one generation alive (arc-swap turns it
//! into a real reference when a writer replaces the generation), and nothing else. A call
//! stuck for ever therefore pins its own generation, never another plugin's, never a newer
//! one.
//!
//! Writers (loads, unloads, reconfiguration) are serialised by the registry's state lock;
//! readers never wait for them.

use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption, Guard};

use crate::runtime::generation::Generation;

/// One plugin name's current generation.
pub(crate) type Slot = Arc<ArcSwapOption<Generation>>;

type Slots = rustc_hash::FxHashMap<String, Slot>;

/// Plugin name → current generation.
#[derive(Default)]
pub(crate) struct CallTable {
    slots: ArcSwap<Slots>,
}

/// A loaded reference to a plugin's current generation, for the length of one call.
pub(crate) type Current = Guard<Option<Arc<Generation>>>;

impl CallTable {
    /// The generation serving `name`, as a guard that pins only it.
    pub(crate) fn load(&self, name: &str) -> Option<Current> {
        let slots = self.slots.load();
        let current = slots.get(name)?.load();
        current.is_some().then_some(current)
    }

    /// The slot of `name`, which follows its reloads (until the name is unloaded).
    pub(crate) fn slot(&self, name: &str) -> Option<Slot> {
        self.slots.load().get(name).cloned()
    }

    /// The generation serving `name`, as an owned reference.
    pub(crate) fn current(&self, name: &str) -> Option<Arc<Generation>> {
        self.slots.load().get(name)?.load_full()
    }

    /// Makes `generation` (or nothing) serve `name`; returns the generation it replaced.
    /// Callers serialise writes.
    pub(crate) fn replace(
        &self,
        name: &str,
        generation: Option<Arc<Generation>>,
    ) -> Option<Arc<Generation>> {
        let slots = self.slots.load_full();
        match (slots.get(name), generation) {
            (Some(slot), Some(generation)) => slot.swap(Some(generation)),
            (Some(slot), None) => {
                let replaced = slot.swap(None);
                let mut fewer = Slots::clone(&slots);
                fewer.remove(name);
                self.slots.store(Arc::new(fewer));
                replaced
            }
            (None, Some(generation)) => {
                let mut more = Slots::clone(&slots);
                more.insert(
                    name.to_owned(),
                    Arc::new(ArcSwapOption::from(Some(generation))),
                );
                self.slots.store(Arc::new(more));
                None
            }
            (None, None) => None,
        }
    }

    /// Every generation serving now, by name, sorted.
    pub(crate) fn snapshot(&self) -> Vec<(String, Arc<Generation>)> {
        let mut all: Vec<_> = self
            .slots
            .load()
            .iter()
            .filter_map(|(name, slot)| Some((name.clone(), slot.load_full()?)))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// The names served, sorted.
    pub(crate) fn names(&self) -> Vec<String> {
        self.snapshot().into_iter().map(|(name, _)| name).collect()
    }

    /// Empties the table; returns what was serving.
    pub(crate) fn clear(&self) -> Vec<Arc<Generation>> {
        let slots = self.slots.swap(Arc::new(Slots::default()));
        slots.values().filter_map(|slot| slot.swap(None)).collect()
    }
}
