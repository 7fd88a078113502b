//! `host publish`, `host unpublish` and `host published`: the fleet's plugin catalogue,
//! through the running host's control socket.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use host::catalogue::PublishedPlugin;
use host::control::Publish;

use crate::admin::{answer, connect};
use crate::cli::{PublishArgs, PublishedArgs, UnpublishArgs};
use crate::commands::{age, write_rows};

pub fn publish(args: PublishArgs) -> Result<ExitCode> {
    // The host reads the file itself: it needs the absolute path.
    let path = std::path::absolute(&args.file)
        .with_context(|| format!("plugin file {}", args.file.display()))?;
    let mut client = connect(args.socket)?;
    let (message, _) = answer(
        client.publish(Publish {
            path,
            name: args.name,
            canary: args.canary,
            publisher: publisher(),
        }),
        "asking the running host to publish the plugin",
    )?;
    println!("{message}");
    Ok(ExitCode::SUCCESS)
}

pub fn unpublish(args: UnpublishArgs) -> Result<ExitCode> {
    let mut client = connect(args.socket)?;
    let message = answer(
        client.unpublish(&args.plugin),
        "asking the running host to unpublish the plugin",
    )?;
    println!("{message}");
    Ok(ExitCode::SUCCESS)
}

pub fn published(args: PublishedArgs) -> Result<ExitCode> {
    let mut client = connect(args.socket)?;
    let published = answer(
        client.published(),
        "asking the running host for the catalogue",
    )?;
    let mut stdout = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut stdout, &published)?;
        writeln!(stdout)?;
    } else {
        write_published(&mut stdout, &published)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `user@hostname` of whoever runs this command.
fn publisher() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| format!("uid{}", my_uid()));
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".to_owned());
    format!("{user}@{hostname}")
}

fn my_uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").map_or(0, |m| m.uid())
}

/// One row per plugin, then one line per host under it; a failed rollout says why.
fn write_published(out: &mut impl Write, published: &[PublishedPlugin]) -> Result<()> {
    let header = [
        "NAME",
        "VERSION",
        "SHA256",
        "SIZE",
        "PUBLISHED",
        "BY",
        "ROLLOUT",
        "HOSTS",
    ];
    let mut rows = vec![header.map(str::to_owned)];
    for plugin in published {
        let rollout = match (plugin.rollout.as_str(), &plugin.reason) {
            ("canary", _) => format!("canary on {}", plugin.canaries.join(",")),
            ("failed", Some(reason)) => format!("failed: {reason}"),
            (other, _) => other.to_owned(),
        };
        let hosts = plugin
            .hosts
            .iter()
            .map(|h| format!("{}={}", h.host, h.state))
            .collect::<Vec<_>>()
            .join(" ");
        rows.push([
            plugin.name.clone(),
            plugin.version.clone(),
            plugin.sha256.chars().take(12).collect(),
            plugin.size.to_string(),
            age(plugin.published_unix_ms),
            plugin.publisher.clone(),
            rollout,
            if hosts.is_empty() { "-".into() } else { hosts },
        ]);
    }
    write_rows(out, &rows)
}
