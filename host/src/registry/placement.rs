//! Where a plugin runs, once its metadata is known: a plugin built with `panic = "abort"`
//! cannot catch a panic, so in the host's process its first panic would end the host. It
//! runs in a worker process instead (where such a panic ends only the worker, and the call
//! is answered `crashed`), unless its settings say `isolation = "in-process"`: it is then
//! refused, in one line saying why.
//!
//! So does a plugin that reached its `max_pinned_versions` (see `pinned`): in the host's
//! process each of its versions stays in memory after its unload, in a worker process the
//! worker's exit frees everything.
//!
//! A plugin with a sandbox (`[plugins.NAME.sandbox]`) never runs in the host's process:
//! the sandbox applies to a worker process only, so such a plugin is refused unless its
//! settings say `isolation = "process"` (or the host isolates every plugin).

use std::path::Path;

use crate::runtime::loader::{Library, LoadError, LoadErrorKind, Metadata, PanicStrategy};
use crate::types::settings::Isolation;

use super::load::Prepared;
use super::Host;

/// Where a plugin of `metadata` is to run, when its settings say `configured` (and the host
/// does not isolate every plugin).
pub(super) fn wanted(configured: Option<Isolation>, metadata: &Metadata) -> Isolation {
    match (configured, metadata.panic) {
        (Some(isolation), _) => isolation,
        (None, PanicStrategy::Abort) => Isolation::Process,
        (None, PanicStrategy::Unwind) => Isolation::InProcess,
    }
}

/// `library`, read from `path` and opened in the host's process because its settings
/// (`configured`) do not isolate it, as what is to be started: itself, or, for a plugin
/// built with `panic = "abort"`, its private copy for a worker process (the library is
/// closed here; logged once, at this load). Refused if its settings keep such a plugin
/// in-process. The same for a plugin past its `max_pinned_versions` (`pinned`: the reason,
/// found for a file without a plugin-name note once it was opened; see `past_pin_limit`).
pub(super) fn place(
    path: &Path,
    library: Library,
    configured: Option<Isolation>,
    pinned: Option<String>,
) -> Result<Prepared, LoadError> {
    let metadata = library.metadata();
    let name = metadata.name.clone();
    if metadata.panic != PanicStrategy::Abort {
        if !past_pin_limit(path, configured, pinned)? {
            return Ok(Prepared::Library(library));
        }
        let Some(copy) = library.kept().cloned() else {
            return Err(LoadError::new(
                path,
                LoadErrorKind::Host,
                format!(
                    "plugin {name} is past its max_pinned_versions, and its private copy is \
                     gone: it cannot run in a worker process"
                ),
            ));
        };
        drop(library);
        return Ok(Prepared::Isolated { copy, name });
    }
    if configured == Some(Isolation::InProcess) {
        return Err(LoadError::new(
            path,
            LoadErrorKind::AbortsOnPanic,
            format!(
                "plugin {name} is {}, so its first panic would end the host, and its settings \
                 say isolation = \"in-process\": remove that line to run it in a worker \
                 process, or build it with panic = \"unwind\"",
                ABORT_NOTE
            ),
        ));
    }
    let Some(copy) = library.kept().cloned() else {
        return Err(LoadError::new(
            path,
            LoadErrorKind::Host,
            format!(
                "plugin {name} is {}, and its private copy is gone: it cannot run in a \
                 worker process",
                ABORT_NOTE
            ),
        ));
    };
    // Nothing was made from the library: it can be closed at once.
    drop(library);
    tracing::warn!(plugin = %name, file = %path.display(),
        "{}: it runs in a worker process, where a panic ends only the worker (set \
         isolation = \"process\" for it to say so)", ABORT_NOTE);
    Ok(Prepared::Isolated { copy, name })
}

/// Whether a plugin read from `path` and not isolated by its settings (`configured`),
/// is to run in a worker process because it is past its `max_pinned_versions` (`pinned`:
/// the reason, if it is; logged once where it was found). Refused if its settings keep it
/// in-process.
pub(super) fn past_pin_limit(
    path: &Path,
    configured: Option<Isolation>,
    pinned: Option<String>,
) -> Result<bool, LoadError> {
    let Some(reason) = pinned else {
        return Ok(false);
    };
    if configured == Some(Isolation::InProcess) {
        return Err(LoadError::new(
            path,
            LoadErrorKind::TooManyPinned,
            format!(
                "{reason}, and its settings say isolation = \"in-process\": reloads are \
                 refused until the host restarts (remove that line to run it in a worker \
                 process, or have its threads end when it is replaced)"
            ),
        ));
    }
    Ok(true)
}

impl Host {
    /// Refuses plugin `name`, about to run in the host's process, if its settings give it a
    /// sandbox: that applies only in a worker process.
    pub(super) fn refuse_sandbox_in_process(
        &self,
        path: &Path,
        name: &str,
    ) -> Result<(), LoadError> {
        let sandboxed = self
            .state()
            .settings
            .get(name)
            .is_some_and(|s| s.sandbox.is_some());
        match sandboxed {
            true => Err(sandbox_in_process(path, name)),
            false => Ok(()),
        }
    }
}

/// The refusal of plugin `name`, read from `path`, whose settings give it a sandbox while it
/// would run in the host's process.
pub(super) fn sandbox_in_process(path: &Path, name: &str) -> LoadError {
    LoadError::new(
        path,
        LoadErrorKind::Sandbox,
        format!(
            "plugin {name} has a [plugins.{name}.sandbox] section, which applies only in a \
             worker process, but it would run in the host's process: it needs \
             isolation = \"process\""
        ),
    )
}

/// How the log and refusals name the reason (`host list` says it the same way).
const ABORT_NOTE: &str = "built with panic = \"abort\"";

#[cfg(test)]
mod tests {
    use super::*;

    fn built(panic: PanicStrategy) -> Metadata {
        Metadata {
            panic,
            ..Metadata::named("pa")
        }
    }

    #[test]
    fn a_plugin_that_aborts_on_panic_runs_isolated_unless_its_settings_say_where() {
        let abort = built(PanicStrategy::Abort);
        let unwind = built(PanicStrategy::Unwind);
        assert_eq!(wanted(None, &abort), Isolation::Process);
        assert_eq!(wanted(None, &unwind), Isolation::InProcess);
        for isolation in [Isolation::InProcess, Isolation::Process] {
            assert_eq!(wanted(Some(isolation), &abort), isolation);
            assert_eq!(wanted(Some(isolation), &unwind), isolation);
        }
    }
}
