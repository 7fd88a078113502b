//! [`Database`]: the fleet's PostgreSQL database as this host sees it: a bounded pool of
//! connections (`[tasks] pool_size`, waits bounded by `connect_timeout_ms`) driven by a
//! small runtime of its own, so that the task runner's plain threads (never a tokio worker
//! of the control server) can wait for a statement with `block_on`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use tokio::runtime::{Handle, Runtime};
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::error::{one_line, PgError};
use super::tls::TlsPolicy;
use super::url::{parse_url, redact};

/// The fleet's database: a bounded pool and the runtime that drives its connections.
/// Opening it connects to nothing: the first statement does, so a host starts while the
/// database is down. Cheap to clone.
#[derive(Clone)]
pub struct Database {
    inner: Arc<Inner>,
}

struct Inner {
    // Dropped last: the pool's connections are tasks of this runtime.
    pool: Pool,
    runtime: Runtime,
    url: String,
    config: tokio_postgres::Config,
    connector: MakeRustlsConnect,
    tls: TlsPolicy,
    pool_size: usize,
    connect_timeout: Duration,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("url", &self.inner.url)
            .field("pool_size", &self.inner.pool_size)
            .finish_non_exhaustive()
    }
}

impl Database {
    /// The database at `url`, with at most `pool_size` connections; connecting, or waiting
    /// for a free connection, takes at most `connect_timeout`.
    pub fn open(
        url: &str,
        pool_size: usize,
        connect_timeout: Duration,
    ) -> Result<Database, PgError> {
        let (mut config, tls) = parse_url(url)?;
        let connector = tls
            .connector()
            .map_err(|err| PgError::Url(format!("{}: {err}", redact(url))))?;
        config.connect_timeout(connect_timeout);
        // A database host that vanishes (a cable, a VM) is noticed within about a minute
        // instead of the kernel's two hours.
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(30));
        if config.get_application_name().is_none() {
            config.application_name("plugin-host");
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("postgres")
            .enable_all()
            .build()
            .map_err(|err| {
                PgError::Unreachable(format!("{}: cannot start its runtime: {err}", redact(url)))
            })?;
        let manager = Manager::from_config(
            config.clone(),
            connector.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(pool_size.max(1))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(connect_timeout))
            .create_timeout(Some(connect_timeout))
            .recycle_timeout(Some(connect_timeout))
            .build()
            .map_err(|err| PgError::Url(format!("{}: {}", redact(url), one_line(&err))))?;
        Ok(Database {
            inner: Arc::new(Inner {
                pool,
                runtime,
                url: redact(url),
                config,
                connector,
                tls,
                pool_size: pool_size.max(1),
                connect_timeout,
            }),
        })
    }

    /// The URL, without its password.
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    /// What its TLS checks of the server's certificate, in words for the log.
    pub fn tls(&self) -> &'static str {
        self.inner.tls.describe()
    }

    /// `pool_size`.
    pub fn pool_size(&self) -> usize {
        self.inner.pool_size
    }

    /// Runs `future` on the database's runtime and waits for it. Call it from a plain
    /// thread (the runner's, a `spawn_blocking` one), never from an async task.
    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.inner.runtime.block_on(future)
    }

    /// The database's runtime, to spawn its background work on.
    pub fn handle(&self) -> &Handle {
        self.inner.runtime.handle()
    }

    /// A pooled connection, for `what` (named in the error).
    pub async fn client(&self, what: &str) -> Result<Object, PgError> {
        self.inner
            .pool
            .get()
            .await
            .map_err(|err| PgError::from_pool(what, &err, self.inner.pool_size))
    }

    /// A connection of its own, outside the pool (LISTEN, the migration lock), and the
    /// task that drives it (spawned on the database's runtime; it ends with the client).
    pub async fn dedicated(
        &self,
        what: &str,
    ) -> Result<
        (
            tokio_postgres::Client,
            tokio_postgres::Connection<
                tokio_postgres::Socket,
                <MakeRustlsConnect as MakeTlsConnect<tokio_postgres::Socket>>::Stream,
            >,
        ),
        PgError,
    > {
        let connect = self.inner.config.connect(self.inner.connector.clone());
        match tokio::time::timeout(self.inner.connect_timeout, connect).await {
            Ok(Ok(pair)) => Ok(pair),
            Ok(Err(err)) => Err(PgError::Unreachable(format!(
                "{what}: database unreachable: {}",
                one_line(&err)
            ))),
            Err(_) => Err(PgError::Unreachable(format!(
                "{what}: database unreachable: no answer within connect_timeout_ms ({} ms)",
                self.inner.connect_timeout.as_millis()
            ))),
        }
    }
}
