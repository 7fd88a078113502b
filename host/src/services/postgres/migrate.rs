//! The schema of the fleet's database: versioned migrations, applied at start under an
//! advisory lock (two hosts starting at once apply each once), recorded in
//! `schema_migrations`. A database whose schema is newer than this host's is refused.
//! A later migration is appended to [`MIGRATIONS`], never edited in place.

use super::database::Database;
use super::error::PgError;

/// One step of the schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migration {
    /// Its version: 1, 2, ... in order.
    pub version: i32,
    /// Its name (the file's, without number and extension).
    pub name: &'static str,
    /// Its statements.
    pub sql: &'static str,
}

/// Every migration, in order; `MIGRATIONS[n].version == n + 1`.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "fleet",
        sql: include_str!("migrations/0001_fleet.sql"),
    },
    Migration {
        version: 2,
        name: "catalogue",
        sql: include_str!("migrations/0002_catalogue.sql"),
    },
];

/// The schema version this host writes.
pub const SCHEMA_VERSION: i32 = MIGRATIONS.len() as i32;

/// The advisory lock key the migrations are applied under ("plugin-host migrations").
const MIGRATION_LOCK: i64 = 0x706c_7567_6d69_6772;

impl Database {
    /// Brings the schema up to [`SCHEMA_VERSION`] under an advisory lock, on a connection
    /// of its own (the lock ends with it, whatever happens). Returns how many migrations
    /// this host applied (0 when another host had).
    pub async fn migrate(&self) -> Result<usize, PgError> {
        let what = format!("migrate {}", self.url());
        let (client, connection) = self.dedicated(&what).await?;
        let driver = tokio::spawn(connection);
        let applied = migrate_on(&client, &what, self.url()).await;
        drop(client);
        let _ = driver.await;
        applied
    }
}

async fn migrate_on(
    client: &tokio_postgres::Client,
    what: &str,
    url: &str,
) -> Result<usize, PgError> {
    let fail = |err: tokio_postgres::Error| PgError::from_pg(what, &err);
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(fail)?;
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                 version    integer PRIMARY KEY,
                 name       text    NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now()
             )",
        )
        .await
        .map_err(fail)?;
    let row = client
        .query_one(
            "SELECT coalesce(max(version), 0) FROM schema_migrations",
            &[],
        )
        .await
        .map_err(fail)?;
    let current: i32 = row.get(0);
    if current > SCHEMA_VERSION {
        return Err(PgError::NewerSchema(format!(
            "database {url} has schema version {current}, this host knows version \
             {SCHEMA_VERSION} at most: upgrade this host (a newer host migrated it)"
        )));
    }
    let mut applied = 0;
    for migration in MIGRATIONS.iter().filter(|m| m.version > current) {
        let step = |err: tokio_postgres::Error| {
            PgError::from_pg(
                &format!(
                    "{what}: migration {:04}_{}",
                    migration.version, migration.name
                ),
                &err,
            )
        };
        client.batch_execute("BEGIN").await.map_err(step)?;
        let done = async {
            client.batch_execute(migration.sql).await?;
            client
                .execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                    &[&migration.version, &migration.name],
                )
                .await?;
            client.batch_execute("COMMIT").await
        }
        .await;
        if let Err(err) = done {
            let _ = client.batch_execute("ROLLBACK").await;
            return Err(step(err));
        }
        applied += 1;
    }
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(fail)?;
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_in_order() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version as usize, i + 1, "{}", m.name);
        }
    }
}
