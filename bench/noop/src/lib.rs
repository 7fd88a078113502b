//! The plugin the benchmarks call.
//!
//! * `noop`: takes `null`, returns `null`, does nothing;
//! * `echo`: returns its input, a record of about 100 bytes of JSON;
//! * `variant`: which build this is (`BENCH_VARIANT` at compile time), so a benchmark can
//!   tell two builds apart after a reload;
//! * `noop_bytes`: a typed callback (bytes in, bytes out) that writes nothing;
//! * `echo_bytes`: a typed callback that writes its input back;
//! * `exit`: ends the process it runs in, for the crash-to-serving figure of isolated
//!   plugins (never call it in-process);
//! * `chain`: takes a number N and asks for `chain N-1` as a follow-up, down to 0 (the
//!   sequential-chain figure of tasks);
//! * `sleep`: takes milliseconds and sleeps that long (tasks in flight when a host is
//!   killed);
//! * `connect`: takes an address, opens a TCP connection to it and closes it; returns how
//!   long the connect took, in microseconds (the sandbox's `net = "loopback"` figure).

use plugin_api::{export_plugin, Callbacks, Context, InitContext, Plugin, PluginError};
use serde::{Deserialize, Serialize};

/// The plugin.
pub struct Noop;

/// About 100 bytes of JSON.
#[derive(Serialize, Deserialize)]
pub struct Record {
    id: u64,
    host: String,
    service: String,
    status: String,
    latency_ms: f64,
    tags: Vec<String>,
}

impl Plugin for Noop {
    type Input = ();
    type Output = ();

    fn init(_ctx: &InitContext<'_>) -> Result<Self, PluginError> {
        Ok(Noop)
    }

    fn execute(&self, _ctx: &Context<'_>, _input: ()) -> Result<(), PluginError> {
        Ok(())
    }

    fn callbacks(callbacks: &mut Callbacks<Self>) {
        callbacks
            .add("noop", Noop::noop)
            .add("echo", Noop::echo)
            .add("variant", Noop::variant)
            .add("exit", Noop::exit)
            .add("chain", |_: &Noop, ctx: &Context<'_>, left: u32| {
                if left > 0 {
                    ctx.follow_up("bench-noop", "chain", left - 1)?;
                }
                Ok(left)
            })
            .add("sleep", |_: &Noop, _: &Context<'_>, ms: u64| {
                std::thread::sleep(std::time::Duration::from_millis(ms));
                Ok(ms)
            })
            .add("connect", |_: &Noop, _: &Context<'_>, addr: String| {
                let start = std::time::Instant::now();
                std::net::TcpStream::connect(&addr)
                    .map_err(|e| PluginError::failed(format!("cannot connect to {addr}: {e}")))?;
                Ok(start.elapsed().as_secs_f64() * 1e6)
            })
            .add_bytes("noop_bytes", |_, _, _, _| Ok(()))
            .add_bytes("echo_bytes", |_, _, input, out| {
                out.extend_from_slice(input);
                Ok(())
            });
    }
}

impl Noop {
    /// Does nothing.
    pub fn noop(&self, _ctx: &Context<'_>, _input: ()) -> Result<(), PluginError> {
        Ok(())
    }

    /// Returns its input.
    pub fn echo(&self, _ctx: &Context<'_>, input: Record) -> Result<Record, PluginError> {
        Ok(input)
    }

    fn variant(&self, _ctx: &Context<'_>, _input: ()) -> Result<&'static str, PluginError> {
        Ok(option_env!("BENCH_VARIANT").unwrap_or("a"))
    }

    fn exit(&self, _ctx: &Context<'_>, _input: ()) -> Result<(), PluginError> {
        std::process::exit(1)
    }
}

export_plugin!(Noop);
