//! `host new NAME --path DIR`: writes a plugin crate that builds on its own.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context as _, Result};

use crate::cli::NewArgs;
use crate::exit::{Failure, USAGE};

/// The plugin-api sources this binary was built from.
const API_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../plugin-api");

pub fn run(args: NewArgs) -> Result<ExitCode> {
    let name = &args.name;
    let valid = plugin_api::is_valid_name(name)
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && !name.contains('.');
    if !valid {
        return Err(Failure::new(
            USAGE,
            format!(
                "invalid plugin name {name:?}: use a letter, then letters, digits, `_` or `-` \
                 (at most 64)"
            ),
        )
        .into());
    }
    let api = args
        .plugin_api
        .clone()
        .unwrap_or_else(|| PathBuf::from(API_PATH));
    let Some(api) = fs::canonicalize(&api)
        .ok()
        .filter(|p| p.join("Cargo.toml").is_file())
    else {
        let why = match &args.plugin_api {
            Some(_) => "",
            None => " (the source tree this host was built from)",
        };
        return Err(Failure::new(
            USAGE,
            format!(
                "cannot find the plugin-api crate at {}{why}: pass --plugin-api PATH",
                api.display()
            ),
        )
        .into());
    };
    let dir = args.path.join(name);
    if dir.exists()
        && fs::read_dir(&dir)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        bail!("{} already exists and is not empty", dir.display());
    }
    fs::create_dir_all(dir.join("src")).with_context(|| format!("creating {}", dir.display()))?;
    write(&dir.join("Cargo.toml"), &cargo_toml(name, &api))?;
    write(&dir.join("src/lib.rs"), &lib_rs(name))?;
    write(&dir.join(".gitignore"), "/target\n")?;

    let lib = format!("lib{}.so", name.replace('-', "_"));
    println!("created plugin crate {name} in {}", dir.display());
    println!();
    println!("  cd {} && cargo build --release", dir.display());
    println!(
        "  host call {name} greet --input '{{\"name\":\"Ada\"}}' --plugins {}/target/release",
        dir.display()
    );
    println!();
    println!("To serve it: copy target/release/{lib} into the directory `host serve` watches.");
    Ok(ExitCode::SUCCESS)
}

fn write(path: &Path, contents: &str) -> Result<()> {
    fs::write(path, contents).with_context(|| format!("writing {}", path.display()))
}

fn cargo_toml(name: &str, api: &Path) -> String {
    let api = api
        .display()
        .to_string()
        .replace('\\', "\\\\")
        .replace('"', "\\\"");
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2021"
description = "The {name} plugin"
publish = false

[lib]
crate-type = ["cdylib"]

[dependencies]
plugin-api = {{ path = "{api}" }}
serde = {{ version = "1", features = ["derive"] }}
serde_json = "1"

# A crate of its own, even when created inside another workspace.
[workspace]
"#
    )
}

fn lib_rs(name: &str) -> String {
    const TEMPLATE: &str = r#"//! The {{NAME}} plugin.
//!
//! Build it with `cargo build --release`; the host loads `target/release/{{LIB}}`.

use plugin_api::{export_plugin, Callbacks, Context, InitContext, Plugin, PluginError};
use serde::{Deserialize, Serialize};

pub struct {{TYPE}};

#[derive(Deserialize)]
struct GreetInput {
    name: String,
}

#[derive(Serialize)]
struct Greeting {
    message: String,
}

impl Plugin for {{TYPE}} {
    type Input = serde_json::Value;
    type Output = String;

    fn init(_ctx: &InitContext<'_>) -> Result<Self, PluginError> {
        Ok({{TYPE}})
    }

    fn execute(&self, _ctx: &Context<'_>, _input: serde_json::Value) -> Result<String, PluginError> {
        Ok("{{NAME}}: call `greet` with {\"name\": \"...\"}".to_owned())
    }

    fn callbacks(callbacks: &mut Callbacks<Self>) {
        callbacks.add("greet", {{TYPE}}::greet);
    }
}

impl {{TYPE}} {
    fn greet(&self, ctx: &Context<'_>, input: GreetInput) -> Result<Greeting, PluginError> {
        ctx.info(format_args!("greeting {}", input.name));
        Ok(Greeting {
            message: format!("Hello, {}!", input.name),
        })
    }
}

export_plugin!({{TYPE}});
"#;
    let type_name: String = name
        .split(['-', '_'])
        .filter(|part| !part.is_empty())
        .map(|part| {
            let mut chars = part.chars();
            chars.next().map_or_else(String::new, |c| {
                c.to_ascii_uppercase().to_string() + chars.as_str()
            })
        })
        .chain(["Plugin".to_owned()])
        .collect();
    TEMPLATE
        .replace("{{TYPE}}", &type_name)
        .replace("{{NAME}}", name)
        .replace("{{LIB}}", &format!("lib{}.so", name.replace('-', "_")))
}
