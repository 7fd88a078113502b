//! The catalogue's tables and every statement on them. Times are the database's clock in
//! milliseconds since the Unix epoch, so hosts with skewed clocks agree on who is alive.
//!
//! * `catalogue_plugins`: one row per published name: the bytes, their SHA-256 and size,
//!   who published them and when, and the rollout (`canary`: only the hosts in `canaries`
//!   load it; `everywhere`; `failed`, with the reason).
//! * `catalogue_reports`: what each host made of each published plugin (`loading`,
//!   `serving`, `passed`: served past its probation, `failed` with the reason).
//!
//! The canaries are the lowest ids among the hosts alive (heartbeat within `lease_ms`, the
//! foundation's `hosts` table). The tables are migration 2 (`postgres/migrations`).
//!
//! A change is announced with `NOTIFY catalogue`; the agents also poll.

use serde::{Deserialize, Serialize};
use tokio_postgres::{Client, Row};

use super::error::CatalogueError;

/// The channel of the catalogue's notifications.
pub(crate) const CHANNEL: &str = "catalogue";

/// The database's clock, in milliseconds (migration 1).
const NOW_MS: &str = "fleet_now_ms()";

/// A published plugin, as `host published` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PublishedPlugin {
    /// The plugin's name.
    pub name: String,
    /// Its version, as its metadata says.
    pub version: String,
    /// SHA-256 of the file, lowercase hex.
    pub sha256: String,
    /// Its size in bytes.
    pub size: u64,
    /// `user@hostname` of whoever published it.
    pub publisher: String,
    /// When, in milliseconds since the Unix epoch.
    pub published_unix_ms: u64,
    /// How many hosts load it first.
    pub canary: u32,
    /// Those hosts (the lowest ids among the hosts alive when it was published).
    pub canaries: Vec<String>,
    /// `canary`, `everywhere` or `failed`.
    pub rollout: String,
    /// Why the rollout failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What each host made of it.
    #[serde(default)]
    pub hosts: Vec<HostReport>,
}

/// What one host made of a published plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct HostReport {
    /// The host's id.
    pub host: String,
    /// `loading`, `serving`, `passed` or `failed`.
    pub state: String,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The generation that serves it there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
}

/// What an agent needs to know of a published plugin (not its bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Wanted {
    pub(crate) name: String,
    pub(crate) sha256: String,
    pub(crate) canaries: Vec<String>,
    pub(crate) rollout: String,
    /// The last version whose rollout did not fail, if there is one.
    pub(crate) good_sha256: Option<String>,
}

/// What `publish` stores.
#[derive(Debug)]
pub(crate) struct NewPlugin<'a> {
    pub(crate) name: &'a str,
    pub(crate) version: &'a str,
    pub(crate) sha256: &'a str,
    pub(crate) bytes: &'a [u8],
    pub(crate) publisher: &'a str,
    pub(crate) canary: u32,
    pub(crate) alive_ms: u64,
    pub(crate) max_plugins: u32,
}

/// Stores a plugin (replacing what was published under its name), chooses its canaries
/// and announces it. Returns it as listed.
pub(crate) async fn publish(
    client: &mut Client,
    new: &NewPlugin<'_>,
) -> Result<PublishedPlugin, CatalogueError> {
    let tx = client.transaction().await?;
    // Two publishes of new names at once must not both pass the limit.
    tx.execute(
        "LOCK TABLE catalogue_plugins IN SHARE ROW EXCLUSIVE MODE",
        &[],
    )
    .await?;
    let others: i64 = tx
        .query_one(
            "SELECT count(*) FROM catalogue_plugins WHERE name <> $1",
            &[&new.name],
        )
        .await?
        .get(0);
    if others >= i64::from(new.max_plugins) {
        return Err(CatalogueError::Full(new.max_plugins));
    }
    let canaries: Vec<String> = if new.canary == 0 {
        Vec::new()
    } else {
        tx.query(
            &format!("SELECT id FROM hosts WHERE heartbeat >= {NOW_MS} - $1 ORDER BY id LIMIT $2"),
            &[&(new.alive_ms as i64), &i64::from(new.canary)],
        )
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect()
    };
    let rollout = if canaries.is_empty() {
        "everywhere"
    } else {
        "canary"
    };
    tx.execute(
        &format!(
            "INSERT INTO catalogue_plugins (name, sha256, size, bytes, version, publisher, \
             published_ms, canary, canaries, rollout, reason) \
             VALUES ($1, $2, $3, $4, $5, $6, {NOW_MS}, $7, $8, $9, NULL) \
             ON CONFLICT (name) DO UPDATE SET sha256 = $2, size = $3, bytes = $4, \
             version = $5, publisher = $6, published_ms = {NOW_MS}, canary = $7, \
             canaries = $8, rollout = $9, reason = NULL, \
             good_sha256 = CASE WHEN catalogue_plugins.rollout = 'failed' \
                 THEN catalogue_plugins.good_sha256 ELSE catalogue_plugins.sha256 END, \
             good_bytes = CASE WHEN catalogue_plugins.rollout = 'failed' \
                 THEN catalogue_plugins.good_bytes ELSE catalogue_plugins.bytes END"
        ),
        &[
            &new.name,
            &new.sha256,
            &(new.bytes.len() as i64),
            &new.bytes,
            &new.version,
            &new.publisher,
            &(new.canary as i32),
            &canaries,
            &rollout,
        ],
    )
    .await?;
    tx.execute(
        "DELETE FROM catalogue_reports WHERE name = $1 AND sha256 <> $2",
        &[&new.name, &new.sha256],
    )
    .await?;
    tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &new.name])
        .await?;
    tx.commit().await?;
    let mut listed = list(client, Some(new.name)).await?;
    listed
        .pop()
        .ok_or_else(|| CatalogueError::Database("the published row is gone".into()))
}

/// Removes a published plugin and its reports; every host removes its file.
pub(crate) async fn unpublish(client: &mut Client, name: &str) -> Result<(), CatalogueError> {
    let tx = client.transaction().await?;
    let removed = tx
        .execute("DELETE FROM catalogue_plugins WHERE name = $1", &[&name])
        .await?;
    if removed == 0 {
        return Err(CatalogueError::UnknownName(name.to_owned()));
    }
    tx.execute("DELETE FROM catalogue_reports WHERE name = $1", &[&name])
        .await?;
    tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &name])
        .await?;
    tx.commit().await?;
    Ok(())
}

/// The published plugins (or the one named), with what each host made of them.
pub(crate) async fn list(
    client: &Client,
    name: Option<&str>,
) -> Result<Vec<PublishedPlugin>, CatalogueError> {
    let rows = client
        .query(
            "SELECT name, version, sha256, size, publisher, published_ms, canary, canaries, \
             rollout, reason FROM catalogue_plugins WHERE $1::text IS NULL OR name = $1 \
             ORDER BY name",
            &[&name],
        )
        .await?;
    let reports = client
        .query(
            "SELECT r.name, r.host_id, r.state, r.reason, r.generation FROM catalogue_reports r \
             JOIN catalogue_plugins p ON p.name = r.name AND p.sha256 = r.sha256 \
             WHERE $1::text IS NULL OR r.name = $1 ORDER BY r.host_id",
            &[&name],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| {
            let name: String = row.get(0);
            let hosts = reports
                .iter()
                .filter(|r| r.get::<_, String>(0) == name)
                .map(|r| HostReport {
                    host: r.get(1),
                    state: r.get(2),
                    reason: r.get(3),
                    generation: r.get::<_, Option<i64>>(4).map(|g| g.max(0) as u64),
                })
                .collect();
            published(row, name, hosts)
        })
        .collect())
}

fn published(row: &Row, name: String, hosts: Vec<HostReport>) -> PublishedPlugin {
    PublishedPlugin {
        name,
        version: row.get(1),
        sha256: row.get(2),
        size: row.get::<_, i64>(3).max(0) as u64,
        publisher: row.get(4),
        published_unix_ms: row.get::<_, i64>(5).max(0) as u64,
        canary: row.get::<_, i32>(6).max(0) as u32,
        canaries: row.get(7),
        rollout: row.get(8),
        reason: row.get(9),
        hosts,
    }
}

/// What is published, without the bytes.
pub(crate) async fn wanted(client: &Client) -> Result<Vec<Wanted>, CatalogueError> {
    let rows = client
        .query(
            "SELECT name, sha256, canaries, rollout, good_sha256 FROM catalogue_plugins \
             ORDER BY name",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| Wanted {
            name: row.get(0),
            sha256: row.get(1),
            canaries: row.get(2),
            rollout: row.get(3),
            good_sha256: row.get(4),
        })
        .collect())
}

/// The bytes of the last good version of `name` if it is still `sha256`.
pub(crate) async fn good_bytes(
    client: &Client,
    name: &str,
    sha256: &str,
) -> Result<Option<Vec<u8>>, CatalogueError> {
    let row = client
        .query_opt(
            "SELECT good_bytes FROM catalogue_plugins WHERE name = $1 AND good_sha256 = $2",
            &[&name, &sha256],
        )
        .await?;
    Ok(row.and_then(|row| row.get(0)))
}

/// The bytes of `name` if its published SHA-256 is still `sha256`.
pub(crate) async fn bytes(
    client: &Client,
    name: &str,
    sha256: &str,
) -> Result<Option<Vec<u8>>, CatalogueError> {
    let row = client
        .query_opt(
            "SELECT bytes FROM catalogue_plugins WHERE name = $1 AND sha256 = $2",
            &[&name, &sha256],
        )
        .await?;
    Ok(row.map(|row| row.get(0)))
}

/// What this host made of a published plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Report {
    pub(crate) sha256: String,
    pub(crate) state: &'static str,
    pub(crate) reason: Option<String>,
    pub(crate) generation: Option<u64>,
}

/// Records `report` for `name` on `host_id`, and decides a canary rollout the report
/// settles: every canary passed (the rest of the fleet loads it), or one failed (nobody
/// else ever does). Announces a decision.
pub(crate) async fn report(
    client: &mut Client,
    host_id: &str,
    name: &str,
    report: &Report,
) -> Result<(), CatalogueError> {
    let tx = client.transaction().await?;
    tx.execute(
        &format!(
            "INSERT INTO catalogue_reports (host_id, name, sha256, state, reason, generation, \
             updated_ms) VALUES ($1, $2, $3, $4, $5, $6, {NOW_MS}) \
             ON CONFLICT (host_id, name) DO UPDATE SET sha256 = $3, state = $4, reason = $5, \
             generation = $6, updated_ms = {NOW_MS}"
        ),
        &[
            &host_id,
            &name,
            &report.sha256,
            &report.state,
            &report.reason,
            &report.generation.map(|g| g as i64),
        ],
    )
    .await?;
    let plugin = tx
        .query_opt(
            "SELECT canaries FROM catalogue_plugins WHERE name = $1 AND sha256 = $2 \
             AND rollout = 'canary' FOR UPDATE",
            &[&name, &report.sha256],
        )
        .await?;
    if let Some(plugin) = plugin {
        let canaries: Vec<String> = plugin.get(0);
        let reports = tx
            .query(
                "SELECT host_id, state, reason FROM catalogue_reports \
                 WHERE name = $1 AND sha256 = $2 AND host_id = ANY($3)",
                &[&name, &report.sha256, &canaries],
            )
            .await?;
        let states: Vec<(String, String, Option<String>)> = reports
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        if let Some((rollout, reason)) = super::rollout::decide(&canaries, &states) {
            tx.execute(
                "UPDATE catalogue_plugins SET rollout = $3, reason = $4 \
                 WHERE name = $1 AND sha256 = $2",
                &[&name, &report.sha256, &rollout, &reason],
            )
            .await?;
            tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &name])
                .await?;
        }
    }
    tx.commit().await?;
    Ok(())
}

/// Forgets this host's report on `name` (its file was removed).
pub(crate) async fn forget(
    client: &Client,
    host_id: &str,
    name: &str,
) -> Result<(), CatalogueError> {
    client
        .execute(
            "DELETE FROM catalogue_reports WHERE host_id = $1 AND name = $2",
            &[&host_id, &name],
        )
        .await?;
    Ok(())
}

/// Fails the canary rollouts one of whose canaries is gone (no heartbeat within
/// `alive_ms`, or no row any more) before it passed: the rollout would otherwise wait for
/// it for ever. Announces each one; returns their names.
pub(crate) async fn fail_gone_canaries(
    client: &Client,
    alive_ms: u64,
) -> Result<Vec<String>, CatalogueError> {
    let rows = client
        .query(
            &format!(
                "WITH gone AS (
                     SELECT DISTINCT ON (p.name) p.name, p.sha256, c.id
                     FROM catalogue_plugins p, unnest(p.canaries) AS c(id)
                     WHERE p.rollout = 'canary'
                       AND NOT EXISTS (SELECT 1 FROM hosts h
                                       WHERE h.id = c.id AND h.heartbeat >= {NOW_MS} - $1::bigint)
                       AND NOT EXISTS (SELECT 1 FROM catalogue_reports r
                                       WHERE r.host_id = c.id AND r.name = p.name
                                         AND r.sha256 = p.sha256 AND r.state = 'passed')
                     ORDER BY p.name, c.id)
                 UPDATE catalogue_plugins p
                 SET rollout = 'failed',
                     reason = 'canary ' || gone.id || ' is gone (no heartbeat within ' || $1::bigint::text ||
                              ' ms) before it passed probation'
                 FROM gone
                 WHERE p.name = gone.name AND p.sha256 = gone.sha256 AND p.rollout = 'canary'
                 RETURNING p.name"
            ),
            &[&(alive_ms as i64)],
        )
        .await?;
    let names: Vec<String> = rows.iter().map(|row| row.get(0)).collect();
    for name in &names {
        client
            .execute("SELECT pg_notify($1, $2)", &[&CHANNEL, name])
            .await?;
    }
    Ok(names)
}
