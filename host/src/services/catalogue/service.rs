//! [`Catalogue`]: the public face of the plugin catalogue. It owns a small tokio runtime of
//! its own, a bounded pool of database connections, and the agent (see `agent`); the
//! control socket's `publish`, `unpublish` and `published` come here.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use deadpool_postgres::{Manager, Pool, Runtime};
use tokio::sync::{watch, Notify};

use super::check::{check_file, Checked};
use super::error::CatalogueError;
use super::settings::CatalogueSettings;
use super::store::{self, NewPlugin, PublishedPlugin};
use crate::registry::Host;

/// How long a database operation may wait for a connection, or to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The plugin catalogue of a fleet: publishing, and this host's agent that keeps its
/// plugins directory in step with what is published.
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
    pub(super) handle: tokio::runtime::Handle,
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
    pub(super) pool: Pool,
    pub(super) pg: tokio_postgres::Config,
    pub(super) settings: CatalogueSettings,
    pub(super) host: Host,
    pub(super) host_id: String,
    pub(super) plugins_dir: PathBuf,
    pub(super) stop: watch::Sender<bool>,
    pub(super) wake: Arc<Notify>,
    schema_ready: AtomicBool,
}

impl Catalogue {
    /// Starts the catalogue of the fleet database at `url` for `host`, whose plugins
    /// directory is `plugins_dir` and whose id in the fleet is `host_id`, and its agent. An
    /// unreachable database is not an error here: the agent logs it once and keeps trying.
    pub fn start(
        host: Host,
        url: &str,
        settings: CatalogueSettings,
        plugins_dir: &Path,
        host_id: String,
    ) -> Result<Catalogue, CatalogueError> {
        let mut pg: tokio_postgres::Config = url.parse().map_err(|err| {
            CatalogueError::Database(format!("the database URL is not valid: {err}"))
        })?;
        pg.connect_timeout(CONNECT_TIMEOUT);
        if settings.pool_size == 0 {
            return Err(CatalogueError::Database(
                "[catalogue] pool_size must be at least 1".into(),
            ));
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(4)
            .thread_name("catalogue")
            .enable_all()
            .build()
            .map_err(|err| CatalogueError::Database(format!("cannot start its runtime: {err}")))?;
        let manager = Manager::new(pg.clone(), tokio_postgres::NoTls);
        let pool = Pool::builder(manager)
            .max_size(settings.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(CONNECT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|err| CatalogueError::Database(format!("cannot build the pool: {err}")))?;
        let (stop, _) = watch::channel(false);
        let inner = Arc::new(Inner {
            handle: runtime.handle().clone(),
            runtime: Mutex::new(Some(runtime)),
            pool,
            pg,
            settings,
            host,
            host_id,
            plugins_dir: plugins_dir.to_owned(),
            stop,
            wake: Arc::new(Notify::new()),
            schema_ready: AtomicBool::new(false),
        });
        super::agent::start(&inner);
        Ok(Catalogue { inner })
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
            let mut client = inner.client().await?;
            store::publish(
                &mut client,
                &NewPlugin {
                    name: declared,
                    version: &checked.metadata.version,
                    sha256: &checked.sha256,
                    bytes: &checked.bytes,
                    publisher: &publisher,
                    canary,
                    alive_ms: inner.settings.alive_ms,
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
            let mut client = inner.client().await?;
            store::unpublish(&mut client, &name).await
        })
        .await
    }

    /// What is published, with each host's state.
    pub async fn published(&self) -> Result<Vec<PublishedPlugin>, CatalogueError> {
        let inner = self.inner.clone();
        self.on_runtime(async move {
            let client = inner.client().await?;
            store::list(&client, None).await
        })
        .await
    }

    /// Stops the agent and closes the connections.
    pub fn stop(&self) {
        let _ = self.inner.stop.send(true);
        let runtime = self
            .inner
            .runtime
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(runtime) = runtime {
            runtime.shutdown_timeout(Duration::from_secs(2));
        }
    }

    /// Runs `work` on the catalogue's runtime (whose connections it uses), from any thread
    /// or runtime.
    async fn on_runtime<T: Send + 'static>(
        &self,
        work: impl std::future::Future<Output = Result<T, CatalogueError>> + Send + 'static,
    ) -> Result<T, CatalogueError> {
        self.inner
            .handle
            .spawn(work)
            .await
            .map_err(|_| CatalogueError::Database("the catalogue is stopped".into()))?
    }
}

impl Inner {
    /// A connection from the pool, the schema created on first use.
    pub(super) async fn client(&self) -> Result<deadpool_postgres::Object, CatalogueError> {
        let mut client = self.pool.get().await?;
        if !self.schema_ready.load(Ordering::Acquire) {
            store::ensure_schema(&mut client).await?;
            self.schema_ready.store(true, Ordering::Release);
        }
        Ok(client)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let runtime = self
            .runtime
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(runtime) = runtime {
            runtime.shutdown_background();
        }
    }
}
