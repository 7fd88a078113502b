//! [`Catalogue`]: the public face of the plugin catalogue. It works on the fleet's
//! [`Database`] (its bounded pool, and the runtime that drives its connections) and starts
//! this host's agent there (see `agent`); the control socket's `publish`, `unpublish` and
//! `published` come here.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::{watch, Notify, Semaphore};

use super::check::{check_file, Checked};
use super::error::CatalogueError;
use super::settings::CatalogueSettings;
use super::store::{self, NewPlugin, PublishedPlugin};
use crate::registry::Host;
use crate::services::postgres::Database;

/// The plugin catalogue of a fleet: publishing, and this host's agent that keeps its
/// plugins directory in step with what is published. Cheap to clone.
#[derive(Clone)]
pub struct Catalogue {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Catalogue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalogue")
            .field("host_id", &self.inner.host_id)
            .field("plugins_dir", &self.inner.plugins_dir)
            .finish_non_exhaustive()
    }
}

pub(super) struct Inner {
    pub(super) db: Database,
    pub(super) settings: CatalogueSettings,
    pub(super) host: Host,
    pub(super) host_id: String,
    pub(super) plugins_dir: PathBuf,
    /// A host whose heartbeat is older than this is not chosen as a canary (`lease_ms`).
    pub(super) alive_ms: u64,
    pub(super) stop: watch::Sender<bool>,
    pub(super) wake: Arc<Notify>,
    /// One publish at a time on this host: each holds up to `max_plugin_bytes` in memory.
    publishing: Semaphore,
}

impl Catalogue {
    /// Starts the catalogue on the fleet's database `db` for `host`, whose plugins
    /// directory is `plugins_dir` and whose id in the fleet is `host_id`, and its agent.
    /// Hosts whose heartbeat is within `alive_ms` may be chosen as canaries. An unreachable
    /// database is not an error here: the agent logs it once and keeps trying.
    pub fn start(
        host: Host,
        db: Database,
        settings: CatalogueSettings,
        plugins_dir: &Path,
        host_id: String,
        alive_ms: u64,
    ) -> Catalogue {
        let (stop, _) = watch::channel(false);
        let inner = Arc::new(Inner {
            db,
            settings,
            host,
            host_id,
            plugins_dir: plugins_dir.to_owned(),
            alive_ms,
            stop,
            wake: Arc::new(Notify::new()),
            publishing: Semaphore::new(1),
        });
        super::agent::start(&inner);
        Catalogue { inner }
    }

    /// This host's id in the fleet.
    pub fn host_id(&self) -> &str {
        &self.inner.host_id
    }

    /// Checks the plugin file at `path` (size, ELF, ABI, metadata, without its `init`) and
    /// publishes it as `name` (default: the name it declares; a different one is refused),
    /// to be loaded first by `canary` hosts and by the others once they passed probation.
    pub async fn publish(
        &self,
        path: PathBuf,
        name: Option<String>,
        canary: u32,
        publisher: String,
    ) -> Result<PublishedPlugin, CatalogueError> {
        let inner = self.inner.clone();
        self.on_runtime(async move {
            let _one_at_a_time = inner.publishing.try_acquire().map_err(|_| {
                CatalogueError::Busy(
                    "another publish is running on this host (one at a time: each holds up \
                     to max_plugin_bytes in memory): try again when it is done"
                        .into(),
                )
            })?;
            let (max, copy_dir) = (
                inner.settings.max_plugin_bytes,
                inner.host.copy_dir_path().to_owned(),
            );
            let checked: Checked =
                tokio::task::spawn_blocking(move || check_file(&path, max, &copy_dir))
                    .await
                    .map_err(|_| CatalogueError::Database("the check's thread failed".into()))??;
            let declared = &checked.metadata.name;
            if let Some(name) = &name {
                if name != declared {
                    return Err(CatalogueError::BadName(format!(
                        "--name {name}: the plugin calls itself {declared}, and the hosts \
                         serve it under that name"
                    )));
                }
            }
            let mut client = inner.client("publish").await?;
            store::publish(
                &mut client,
                &NewPlugin {
                    name: declared,
                    version: &checked.metadata.version,
                    sha256: &checked.sha256,
                    bytes: &checked.bytes,
                    publisher: &publisher,
                    canary,
                    alive_ms: inner.alive_ms,
                    max_plugins: inner.settings.max_plugins,
                },
            )
            .await
        })
        .await
    }

    /// Removes the published plugin `name`: every host removes its file.
    pub async fn unpublish(&self, name: String) -> Result<(), CatalogueError> {
        let inner = self.inner.clone();
        self.on_runtime(async move {
            let mut client = inner.client("unpublish").await?;
            store::unpublish(&mut client, &name).await
        })
        .await
    }

    /// What is published, with each host's state.
    pub async fn published(&self) -> Result<Vec<PublishedPlugin>, CatalogueError> {
        let inner = self.inner.clone();
        self.on_runtime(async move {
            let client = inner.client("published").await?;
            store::list(&client, None).await
        })
        .await
    }

    /// Stops the agent.
    pub fn stop(&self) {
        let _ = self.inner.stop.send(true);
    }

    /// Runs `work` on the database's runtime (whose connections it uses), from any thread
    /// or runtime.
    async fn on_runtime<T: Send + 'static>(
        &self,
        work: impl std::future::Future<Output = Result<T, CatalogueError>> + Send + 'static,
    ) -> Result<T, CatalogueError> {
        self.inner
            .db
            .handle()
            .spawn(work)
            .await
            .map_err(|_| CatalogueError::Database("the catalogue is stopped".into()))?
    }
}

/// What the catalogue on `db` holds, with each host's state (for `host fleet`, which reads
/// the database directly).
pub async fn list_published(db: &Database) -> Result<Vec<PublishedPlugin>, CatalogueError> {
    let client = db.client("catalogue list").await?;
    store::list(&client, None).await
}

impl Inner {
    /// A connection from the fleet's pool, for `what`.
    pub(super) async fn client(
        &self,
        what: &str,
    ) -> Result<deadpool_postgres::Object, CatalogueError> {
        Ok(self.db.client(&format!("catalogue {what}")).await?)
    }
}
