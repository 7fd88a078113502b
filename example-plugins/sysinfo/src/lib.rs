//! `sysinfo`: a system report from `/proc` and `statvfs`, the kind of health check an
//! operations team adds to a service.
//!
//! Callbacks:
//! * `load` → `{"one", "five", "fifteen", "running", "total"}` from `loadavg`;
//! * `memory` → `{"total_kib", "available_kib", "used_percent"}` from `meminfo`;
//! * `uptime` → `{"seconds"}`;
//! * `disk` with `{"path": "/srv"}` → `{"path", "total_bytes", "available_bytes",
//!   "used_percent", "warning"}`, logging a warning at or above `disk_warn_percent`;
//! * `execute` with `{"paths": ["/", "/srv"]}` (default `["/"]`) → all of the above.
//!
//! Configuration (`host.toml`):
//!
//! ```toml
//! [plugins.sysinfo]
//! config = { disk_warn_percent = 85.0, proc_root = "/proc" }
//! ```

use std::ffi::CString;
use std::path::{Path, PathBuf};

use plugin_api::{export_plugin, Callbacks, Context, InitContext, Plugin, PluginError};
use serde::{Deserialize, Serialize};

/// The plugin: where to read `/proc`, and when a disk counts as full.
pub struct Sysinfo {
    proc_root: PathBuf,
    disk_warn_percent: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Config {
    proc_root: PathBuf,
    disk_warn_percent: f64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            proc_root: PathBuf::from("/proc"),
            disk_warn_percent: 90.0,
        }
    }
}

/// Load averages and scheduler counts.
#[derive(Serialize)]
pub struct Load {
    one: f64,
    five: f64,
    fifteen: f64,
    running: u64,
    total: u64,
}

/// Memory in KiB.
#[derive(Serialize)]
pub struct Memory {
    total_kib: u64,
    available_kib: u64,
    used_percent: f64,
}

/// Time since boot.
#[derive(Serialize)]
pub struct Uptime {
    seconds: f64,
}

/// Input of `disk`.
#[derive(Deserialize)]
pub struct DiskInput {
    path: String,
}

/// Use of the file system holding a path.
#[derive(Serialize)]
pub struct Disk {
    path: String,
    total_bytes: u64,
    available_bytes: u64,
    used_percent: f64,
    warning: bool,
}

/// Input of `execute`.
#[derive(Deserialize, Default)]
#[serde(default)]
pub struct ReportInput {
    paths: Option<Vec<String>>,
}

/// Output of `execute`.
#[derive(Serialize)]
pub struct Report {
    load: Load,
    memory: Memory,
    uptime: Uptime,
    disks: Vec<Disk>,
}

fn number<T: std::str::FromStr>(
    file: &Path,
    field: Option<&str>,
    what: &str,
) -> Result<T, PluginError> {
    field
        .and_then(|f| f.parse().ok())
        .ok_or_else(|| PluginError::failed(format!("{}: cannot read {what}", file.display())))
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        (part as f64 * 1000.0 / whole as f64).round() / 10.0
    }
}

impl Sysinfo {
    fn read(&self, name: &str) -> Result<(PathBuf, String), PluginError> {
        let path = self.proc_root.join(name);
        std::fs::read_to_string(&path)
            .map(|text| (path.clone(), text))
            .map_err(|err| PluginError::failed(format!("{}: {err}", path.display())))
    }

    fn load(&self, _ctx: &Context<'_>, _input: serde_json::Value) -> Result<Load, PluginError> {
        let (path, text) = self.read("loadavg")?;
        let mut fields = text.split_whitespace();
        let (one, five, fifteen) = (fields.next(), fields.next(), fields.next());
        let (running, total) = fields.next().and_then(|f| f.split_once('/')).unzip();
        Ok(Load {
            one: number(&path, one, "the 1-minute load")?,
            five: number(&path, five, "the 5-minute load")?,
            fifteen: number(&path, fifteen, "the 15-minute load")?,
            running: number(&path, running, "the running task count")?,
            total: number(&path, total, "the task count")?,
        })
    }

    fn memory(&self, _ctx: &Context<'_>, _input: serde_json::Value) -> Result<Memory, PluginError> {
        let (path, text) = self.read("meminfo")?;
        let field = |key: &str| {
            let value = text
                .lines()
                .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))
                .and_then(|rest| rest.split_whitespace().next());
            number::<u64>(&path, value, key)
        };
        let (total_kib, available_kib) = (field("MemTotal")?, field("MemAvailable")?);
        Ok(Memory {
            total_kib,
            available_kib,
            used_percent: percent(total_kib.saturating_sub(available_kib), total_kib),
        })
    }

    fn uptime(&self, _ctx: &Context<'_>, _input: serde_json::Value) -> Result<Uptime, PluginError> {
        let (path, text) = self.read("uptime")?;
        Ok(Uptime {
            seconds: number(&path, text.split_whitespace().next(), "the uptime")?,
        })
    }

    fn disk(&self, ctx: &Context<'_>, input: DiskInput) -> Result<Disk, PluginError> {
        let invalid =
            |why: String| PluginError::invalid_input(format!("disk {:?}: {why}", input.path));
        let c_path =
            CString::new(input.path.as_str()).map_err(|_| invalid("contains a NUL byte".into()))?;
        // SAFETY: `statvfs` is plain old data, for which all-zero bytes are a valid value.
        let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: `c_path` is a NUL-terminated string that outlives the call, and `stat` is a
        // valid, exclusively borrowed `statvfs` for the kernel to fill in.
        if unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) } != 0 {
            return Err(invalid(std::io::Error::last_os_error().to_string()));
        }
        let block = stat.f_frsize as u64;
        let total_bytes = stat.f_blocks as u64 * block;
        let available_bytes = stat.f_bavail as u64 * block;
        let used = (stat.f_blocks as u64).saturating_sub(stat.f_bfree as u64);
        // As df computes it: used over what non-root users can have.
        let used_percent = percent(used, used + stat.f_bavail as u64);
        let warning = used_percent >= self.disk_warn_percent;
        if warning {
            ctx.warn(format_args!("{} is {used_percent}% full", input.path));
        } else {
            ctx.info(format_args!("{} is {used_percent}% full", input.path));
        }
        Ok(Disk {
            path: input.path,
            total_bytes,
            available_bytes,
            used_percent,
            warning,
        })
    }
}

impl Plugin for Sysinfo {
    type Input = Option<ReportInput>;
    type Output = Report;

    fn init(ctx: &InitContext<'_>) -> Result<Self, PluginError> {
        let config: Config = ctx.config()?;
        ctx.debug(format_args!("reading {}", config.proc_root.display()));
        Ok(Sysinfo {
            proc_root: config.proc_root,
            disk_warn_percent: config.disk_warn_percent,
        })
    }

    fn execute(
        &self,
        ctx: &Context<'_>,
        input: Option<ReportInput>,
    ) -> Result<Report, PluginError> {
        let none = serde_json::Value::Null;
        let load = self.load(ctx, none.clone())?;
        ctx.check_cancelled()?;
        let memory = self.memory(ctx, none.clone())?;
        let uptime = self.uptime(ctx, none)?;
        let paths = input
            .and_then(|i| i.paths)
            .unwrap_or_else(|| vec!["/".to_owned()]);
        let mut disks = Vec::with_capacity(paths.len());
        for path in paths {
            ctx.check_cancelled()?;
            disks.push(self.disk(ctx, DiskInput { path })?);
        }
        ctx.info(format_args!(
            "load {:.2}, memory {}% used, {} disk(s), {} over {}%",
            load.one,
            memory.used_percent,
            disks.len(),
            disks.iter().filter(|d| d.warning).count(),
            self.disk_warn_percent
        ));
        Ok(Report {
            load,
            memory,
            uptime,
            disks,
        })
    }

    fn callbacks(callbacks: &mut Callbacks<Self>) {
        callbacks
            .add("load", Sysinfo::load)
            .add("memory", Sysinfo::memory)
            .add("uptime", Sysinfo::uptime)
            .add("disk", Sysinfo::disk);
    }
}

export_plugin!(Sysinfo);

#[cfg(test)]
mod tests {
    use super::*;
    use plugin_api::testing::Harness;
    use plugin_api::{ErrorKind, Level};
    use serde_json::json;

    fn fake_proc(loadavg: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "sysinfo-test-{}-{}",
            std::process::id(),
            loadavg.len()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("loadavg"), loadavg).unwrap();
        std::fs::write(
            dir.join("meminfo"),
            "MemTotal:       16000000 kB\nMemFree: 1 kB\nMemAvailable:    4000000 kB\n",
        )
        .unwrap();
        std::fs::write(dir.join("uptime"), "12345.67 54321.00\n").unwrap();
        dir
    }

    #[test]
    fn reads_a_proc_tree() {
        let root = fake_proc("0.50 1.25 2.00 3/456 7890\n");
        let plugin = Harness::<Sysinfo>::new("sysinfo", json!({ "proc_root": root })).unwrap();
        let load = plugin.call("load", json!(null)).result.unwrap();
        assert_eq!(
            load,
            json!({"one": 0.5, "five": 1.25, "fifteen": 2.0, "running": 3, "total": 456})
        );
        let memory = plugin.call("memory", json!(null)).result.unwrap();
        assert_eq!(
            memory,
            json!({"total_kib": 16000000, "available_kib": 4000000, "used_percent": 75.0})
        );
        assert_eq!(
            plugin.call("uptime", json!(null)).result.unwrap(),
            json!({"seconds": 12345.67})
        );
        let report = plugin.execute(json!({"paths": ["/"]}));
        assert_eq!(report.result.unwrap()["disks"][0]["path"], "/");
        assert!(report
            .logs
            .last()
            .unwrap()
            .message
            .starts_with("load 0.50, memory 75% used, 1 disk(s)"));
    }

    #[test]
    fn a_malformed_file_is_an_error_naming_it() {
        let root = fake_proc("garbage\n");
        let plugin = Harness::<Sysinfo>::new("sysinfo", json!({ "proc_root": root })).unwrap();
        let err = plugin.call("load", json!(null)).result.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Failed);
        assert!(
            err.message()
                .contains("loadavg: cannot read the 1-minute load"),
            "{err}"
        );
    }

    #[test]
    fn disk_reports_use_and_warns_over_the_threshold() {
        let plugin = Harness::<Sysinfo>::new("sysinfo", json!({"disk_warn_percent": 0.0})).unwrap();
        let outcome = plugin.call("disk", json!({"path": "/"}));
        let disk = outcome.result.unwrap();
        assert!(disk["total_bytes"].as_u64().unwrap() > 0);
        assert!((0.0..=100.0).contains(&disk["used_percent"].as_f64().unwrap()));
        assert_eq!(disk["warning"], true);
        assert_eq!(outcome.logs[0].level, Level::Warn);
        let err = plugin
            .call("disk", json!({"path": "/no/such/dir"}))
            .result
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert!(err.message().contains("/no/such/dir"), "{err}");
    }

    #[test]
    fn unknown_configuration_fails_init() {
        let err = Harness::<Sysinfo>::new("sysinfo", json!({"proc": "/x"}))
            .err()
            .unwrap();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
    }
}
