//! `host serve` joining a fleet: with `[tasks] database` (or `HOST_DATABASE_URL`, which
//! wins), open the database, apply its migrations (refusing a newer schema), take the id
//! kept in the state directory (refusing one a running host beats under: a copied state
//! directory), and start the heartbeat. A database that does not answer at start is said
//! once; the host serves direct calls and attaches when it answers.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;
use host::config::HostConfig;
use host::postgres::{database_url, Database, HostRow, IdCheck, Membership, PgError};
use host::state_dir::StateDir;
use host::tasks::TaskSettings;
use host::Host;

use crate::cli::FleetArgs;
use crate::commands::{age, write_rows};
use crate::exit::{Failure, OTHER, USAGE};

/// This host in the fleet: its database and heartbeat (stopped when dropped).
#[derive(Debug)]
pub struct Fleet {
    pub database: Database,
    pub membership: Membership,
}

/// Joins the fleet of `settings.database`, if there is one, under the id kept in `state`
/// (a new one at each start without a state directory).
pub fn join(
    host: &Host,
    settings: &TaskSettings,
    state: Option<&StateDir>,
) -> Result<Option<Fleet>> {
    let url = database_url(settings.database.as_deref())
        .map_err(|err| Failure::new(USAGE, err.to_string()))?;
    let Some(url) = url else {
        return Ok(None);
    };
    let database = Database::open(
        &url,
        settings.pool_size,
        Duration::from_millis(settings.connect_timeout_ms),
    )
    .map_err(|err| Failure::new(USAGE, err.to_string()))?;
    let migrated = match database.block_on(database.migrate()) {
        Ok(_) => true,
        Err(err @ PgError::NewerSchema(_)) => {
            return Err(Failure::new(USAGE, err.to_string()).into());
        }
        Err(err) => {
            tracing::error!(
                "{err}: direct calls are served; this host joins the fleet when it answers"
            );
            false
        }
    };
    let started = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let version = env!("CARGO_PKG_VERSION");
    let row = match state {
        Some(state) => {
            let stored = state
                .host_id(HostRow::fresh_id)
                .map_err(|err| Failure::new(USAGE, err.to_string()))?;
            if stored.created {
                tracing::info!(
                    "fleet: made this host's id {} in {} (kept across restarts)",
                    stored.id,
                    stored.path.display()
                );
            }
            HostRow::new(stored.id, version, started)
        }
        None => {
            let row = HostRow::this_process(version, started);
            tracing::warn!(
                "fleet: no state directory to keep this host's id in: {} is new at each \
                 start",
                row.id
            );
            row
        }
    };
    // Only a database that answered can say who else beats under this id.
    if migrated {
        match database.block_on(database.check_id(&row, settings.lease_ms)) {
            Ok(IdCheck::InUse(line)) => return Err(Failure::new(USAGE, line).into()),
            Ok(IdCheck::Restarted { pid }) => tracing::info!(
                "fleet: host {} restarted: its previous run (pid {pid}) is gone, this host \
                 holds its state directory",
                row.id
            ),
            Ok(_) => {}
            Err(err) => tracing::warn!("fleet: cannot check who else uses id {}: {err}", row.id),
        }
    }
    tracing::info!(
        "fleet: host {} on {} (TLS: {})",
        row.id,
        database.url(),
        database.tls()
    );
    let membership = Membership::start(
        database.clone(),
        host.clone(),
        row,
        settings.lease_ms,
        migrated,
        // The task runner says when the database is down; without it, the heartbeat does.
        settings.enabled,
    );
    Ok(Some(Fleet {
        database,
        membership,
    }))
}

/// `host fleet`: the hosts of the fleet's database, alive (a heartbeat within `lease_ms`)
/// or gone (rows of hosts gone for a day are deleted), and the catalogue's rollouts: after
/// the table, a line per rollout that has not reached every host; with `--json`, in each
/// host's object (`"published"`).
pub fn list(args: FleetArgs) -> Result<ExitCode> {
    let config = match crate::cli::config_path(args.config.clone()) {
        Some(path) => {
            HostConfig::load(&path).map_err(|err| Failure::new(USAGE, err.to_string()))?
        }
        None => HostConfig::default(),
    };
    let url = match args.database {
        Some(url) => Some(url),
        None => database_url(config.tasks.database.as_deref())
            .map_err(|err| Failure::new(USAGE, err.to_string()))?,
    };
    let Some(url) = url else {
        return Err(Failure::new(
            USAGE,
            "no fleet: give --database URL, or set HOST_DATABASE_URL or [tasks] database in \
             host.toml (--config)"
                .to_owned(),
        )
        .into());
    };
    let database = Database::open(
        &url,
        1,
        Duration::from_millis(config.tasks.connect_timeout_ms),
    )
    .map_err(|err| Failure::new(USAGE, err.to_string()))?;
    let hosts = database
        .block_on(database.fleet(config.tasks.lease_ms))
        .map_err(|err| Failure::new(OTHER, err.to_string()))?;
    // The catalogue's plugins and rollouts (a database of an older schema has no
    // catalogue: nothing to say).
    let published = database
        .block_on(host::catalogue::list_published(&database))
        .unwrap_or_default();
    let mut out = std::io::stdout().lock();
    if args.json {
        // Still an array of hosts, each as before, with what it made of each published
        // plugin and that plugin's rollout (and why it stopped) added.
        let members = host::catalogue::members(hosts, &published);
        serde_json::to_writer_pretty(&mut out, &members)?;
        writeln!(out)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut rows = vec![[
        "ID".to_owned(),
        "STATE".to_owned(),
        "VERSION".to_owned(),
        "HEARTBEAT".to_owned(),
        "PLUGINS".to_owned(),
    ]];
    for host in &hosts {
        let plugins: Vec<String> = host
            .plugins
            .iter()
            .map(|p| format!("{} (gen {})", p.name, p.generation))
            .collect();
        rows.push([
            host.id.clone(),
            if host.alive { "alive" } else { "gone" }.to_owned(),
            host.version.clone(),
            age(host.heartbeat_unix_ms),
            plugins.join(", "),
        ]);
    }
    write_rows(&mut out, &rows)?;
    // The catalogue's rollouts that have not reached every host, and why.
    for plugin in published.iter().filter(|p| p.rollout != "everywhere") {
        let state = match (&plugin.reason, plugin.rollout.as_str()) {
            (Some(reason), _) => format!("rollout failed: {reason}"),
            (None, "canary") => format!("canary rollout on {}", plugin.canaries.join(", ")),
            (None, other) => format!("rollout {other}"),
        };
        writeln!(
            out,
            "catalogue: {} {} ({}): {state}",
            plugin.name,
            plugin.version,
            &plugin.sha256[..plugin.sha256.len().min(12)]
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
