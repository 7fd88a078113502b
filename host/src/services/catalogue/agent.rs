//! The catalogue agent every host of the fleet runs: on a notification (and every
//! `poll_ms` as a backstop) it fetches what changed, checks the bytes' SHA-256, pins the
//! plugin to it, writes the file atomically into the plugins directory and lets the normal
//! path load it (self-test, probation, rollback); it removes the files of unpublished
//! plugins, and reports what the host made of each one, which decides canary rollouts.
//!
//! A database outage is logged once (then at debug level until it is over); the host keeps
//! the plugins it has.

use std::collections::HashMap;
use std::future::poll_fn;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_postgres::AsyncMessage;

use super::check::hex;
use super::error::CatalogueError;
use super::local;
use super::service::Inner;
use super::store::{self, Report, CHANNEL};
use crate::files::digest::Digest;

/// What this host wrote for a published name, and what it reported last.
#[derive(Debug)]
struct Local {
    sha256: String,
    reported: Option<Report>,
}

/// Starts the agent and its listener on the catalogue's runtime.
pub(super) fn start(inner: &Arc<Inner>) {
    inner.db.handle().spawn(listen(inner.clone()));
    inner.db.handle().spawn(run(inner.clone()));
}

async fn run(inner: Arc<Inner>) {
    let mut stop = inner.stop.subscribe();
    let poll = Duration::from_millis(inner.settings.poll_ms.max(10));
    let mut local = seed(&inner).await;
    let mut outage = false;
    let mut connected = false;
    loop {
        match pass(&inner, &mut local).await {
            Ok(()) if !connected => {
                connected = true;
                outage = false;
                tracing::info!(host = %inner.host_id,
                    "catalogue: connected to the fleet database, following what is published");
            }
            Ok(()) if outage => {
                outage = false;
                tracing::info!("catalogue: the fleet database is reachable again");
            }
            Ok(()) => {}
            Err(err) if outage => tracing::debug!("catalogue: still unreachable: {err}"),
            Err(err) => {
                outage = true;
                tracing::warn!(
                    "catalogue: {err}; keeping the plugins this host has, retrying every {} ms",
                    poll.as_millis()
                );
            }
        }
        tokio::select! {
            _ = inner.wake.notified() => {}
            _ = tokio::time::sleep(poll) => {}
            _ = stop.changed() => return,
        }
    }
}

/// The catalogue's files already in the plugins directory, from an earlier run: pinned to
/// their content, so that what serves is what they hold until the catalogue says otherwise.
async fn seed(inner: &Arc<Inner>) -> HashMap<String, Local> {
    let dir = inner.plugins_dir.clone();
    let found = tokio::task::spawn_blocking(move || {
        local::existing(&dir)
            .into_iter()
            .filter_map(|name| {
                let bytes = std::fs::read(local::file_for(&dir, &name)).ok()?;
                Some((name, hex(&Digest::sha256_of(&bytes))))
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap_or_default();
    found
        .into_iter()
        .map(|(name, sha256)| {
            inner.host.pin_published(&name, Some(sha256.clone()));
            (
                name,
                Local {
                    sha256,
                    reported: None,
                },
            )
        })
        .collect()
}

/// One look at the catalogue.
async fn pass(
    inner: &Arc<Inner>,
    local: &mut HashMap<String, Local>,
) -> Result<(), CatalogueError> {
    let mut client = inner.client("agent").await?;
    let wanted = store::wanted(&client).await?;
    let dir = &inner.plugins_dir;
    for plugin in &wanted {
        let mine = plugin.rollout == "everywhere"
            || (plugin.rollout == "canary" && plugin.canaries.contains(&inner.host_id));
        let have = local.get(&plugin.name).map(|l| l.sha256.as_str());
        // What this host should have: the published version, or, where it was a canary of
        // a rollout that failed, the last good one (so that a restart does not load the
        // failed file afresh).
        let (sha256, good) = if mine {
            (plugin.sha256.as_str(), false)
        } else if plugin.rollout == "failed" && have == Some(plugin.sha256.as_str()) {
            match &plugin.good_sha256 {
                Some(good) => (good.as_str(), true),
                None => continue,
            }
        } else {
            continue;
        };
        if have == Some(sha256) {
            continue;
        }
        // Published again meanwhile: the next pass takes the new one.
        let bytes = if good {
            store::good_bytes(&client, &plugin.name, sha256).await?
        } else {
            store::bytes(&client, &plugin.name, sha256).await?
        };
        let Some(bytes) = bytes else {
            continue;
        };
        match write(inner, &plugin.name, sha256, bytes).await {
            Ok(path) => {
                let what = if good {
                    "its rollout failed: went back to the last good version,"
                } else {
                    "wrote"
                };
                tracing::info!(plugin = %plugin.name, sha256 = %sha256,
                    "catalogue: {what} {}", path.display());
                local.insert(
                    plugin.name.clone(),
                    Local {
                        sha256: sha256.to_owned(),
                        reported: None,
                    },
                );
            }
            Err(reason) => {
                tracing::error!(plugin = %plugin.name, "catalogue: {reason}");
            }
        }
    }
    if wanted.iter().any(|w| w.rollout == "canary") {
        for name in store::fail_gone_canaries(&client, inner.alive_ms).await? {
            tracing::warn!(plugin = %name, "catalogue: a canary is gone before it passed: the rollout failed");
        }
    }
    let gone: Vec<String> = local
        .keys()
        .filter(|name| !wanted.iter().any(|w| &&w.name == name))
        .cloned()
        .collect();
    for name in gone {
        match local::remove(dir, &name) {
            Ok(()) => {
                inner.host.pin_published(&name, None);
                local.remove(&name);
                store::forget(&client, &inner.host_id, &name).await?;
                tracing::info!(plugin = %name, "catalogue: unpublished, its file removed");
            }
            Err(err) => tracing::error!(plugin = %name, "catalogue: cannot remove its file: {err}"),
        }
    }
    if local.is_empty() {
        return Ok(());
    }
    let host = inner.host.clone();
    let files = tokio::task::spawn_blocking(move || host.status())
        .await
        .unwrap_or_default();
    let now_ms = crate::runtime::reaper::unix_ms(std::time::SystemTime::now());
    for (name, entry) in local.iter_mut() {
        let Some(plugin) = wanted
            .iter()
            .find(|w| &w.name == name && w.sha256 == entry.sha256)
        else {
            continue;
        };
        // A canary passes once it served the version a whole probation, whenever it
        // loaded it (a canary restarted on probation loads it at start, without one).
        let min_served_ms =
            if plugin.rollout == "canary" && plugin.canaries.contains(&inner.host_id) {
                inner.host.with_settings(name, |s| s.probation_ms)
            } else {
                0
            };
        let file = local::file_for(dir, name);
        let report = local::state_of(&files, &file, &entry.sha256, now_ms, min_served_ms);
        if entry.reported.as_ref() != Some(&report) {
            store::report(&mut client, &inner.host_id, name, &report).await?;
            if report.state == "failed" {
                tracing::warn!(plugin = %name, "catalogue: reported it failed here: {}",
                    report.reason.as_deref().unwrap_or_default());
            }
            entry.reported = Some(report);
        }
    }
    Ok(())
}

/// Checks that `bytes` are those of `sha256`, pins `name` to it, and writes them into the
/// plugins directory; the file's path, or why not.
async fn write(
    inner: &Arc<Inner>,
    name: &str,
    sha256: &str,
    bytes: Vec<u8>,
) -> Result<std::path::PathBuf, String> {
    let (name, sha256, dir) = (
        name.to_owned(),
        sha256.to_owned(),
        inner.plugins_dir.clone(),
    );
    let host = inner.host.clone();
    tokio::task::spawn_blocking(move || {
        let actual = hex(&Digest::sha256_of(&bytes));
        if actual != sha256 {
            return Err(format!(
                "its bytes' SHA-256 is {actual}, not the published {sha256}: not written"
            ));
        }
        // Pinned first: whatever the watcher loads for this name from now on must be
        // exactly these bytes.
        host.pin_published(&name, Some(sha256));
        local::write(&dir, &name, &bytes)
            .map_err(|err| format!("cannot write it into {}: {err}", dir.display()))
    })
    .await
    .unwrap_or_else(|_| Err("the writing thread failed".into()))
}

/// Listens for the catalogue's notifications on a connection of its own, waking the agent
/// on each one and after every reconnection (notifications sent meanwhile are lost: the
/// agent looks again). Outages are the agent's to log.
async fn listen(inner: Arc<Inner>) {
    let mut stop = inner.stop.subscribe();
    let retry = Duration::from_millis(inner.settings.poll_ms.max(10));
    loop {
        if let Ok((client, mut connection)) = inner.db.dedicated("catalogue listen").await {
            let wake: Arc<Notify> = inner.wake.clone();
            let driver = async move {
                while let Some(Ok(message)) = poll_fn(|cx| connection.poll_message(cx)).await {
                    if let AsyncMessage::Notification(_) = message {
                        wake.notify_one();
                    }
                }
            };
            tokio::pin!(driver);
            let statement = format!("LISTEN {CHANNEL}");
            let listening = client.batch_execute(&statement);
            let ok = tokio::select! {
                done = listening => done.is_ok(),
                _ = &mut driver => false,
            };
            if ok {
                inner.wake.notify_one();
                tokio::select! {
                    _ = &mut driver => {}
                    _ = stop.changed() => return,
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(retry) => {}
            _ = stop.changed() => return,
        }
    }
}
