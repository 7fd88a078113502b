//! Run a plugin in-process, through the same ABI glue the host uses, for unit tests and
//! examples. No library is built or loaded.

use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};

use abi_stable::std_types::{RErr, ROk, RSlice, RStr, RVec};

use crate::abi::{
    FfiCallContext, FfiInit, FfiInitOutcome, FfiLogRecord, FfiLogSink, FfiOutcome, FfiPrevious,
    HandlerBox,
};
use crate::glue::{instantiate, instantiate_with_state, Package};
use crate::{FollowUp, LogRecord, Plugin, PluginError};

/// The owned result of one call made through a [`Harness`].
#[derive(Debug)]
pub struct Outcome {
    /// The JSON result, or the error the call returned.
    pub result: Result<serde_json::Value, PluginError>,
    /// The call's log records.
    pub logs: Vec<LogRecord>,
    /// The follow-up calls it asked for.
    pub follow_ups: Vec<FollowUp>,
}

impl From<FfiOutcome> for Outcome {
    fn from(outcome: FfiOutcome) -> Outcome {
        let result = match &outcome.result {
            ROk(json) => serde_json::from_str(json.as_str())
                .map_err(|err| PluginError::failed(format!("plugin returned invalid JSON: {err}"))),
            RErr(err) => Err(PluginError::from(err)),
        };
        Outcome {
            result,
            logs: outcome.logs.iter().map(LogRecord::from).collect(),
            follow_ups: outcome.follow_ups.iter().map(FollowUp::from).collect(),
        }
    }
}

/// An initialised instance of plugin `P`, called through its [`Handler`](crate::abi::Handler)
/// trait object exactly as the host calls it: panics are caught, inputs decoded, errors typed.
///
/// ```
/// use plugin_api::testing::Harness;
/// use plugin_api::{Context, ErrorKind, InitContext, Plugin, PluginError};
///
/// struct Fragile;
/// impl Plugin for Fragile {
///     type Input = u32;
///     type Output = u32;
///     fn init(_: &InitContext<'_>) -> Result<Self, PluginError> { Ok(Fragile) }
///     fn execute(&self, _: &Context<'_>, n: u32) -> Result<u32, PluginError> {
///         if n == 0 { panic!("zero is not allowed") }
///         Ok(100 / n)
///     }
/// }
///
/// let plugin = Harness::<Fragile>::new("fragile", serde_json::json!({})).unwrap();
/// assert_eq!(plugin.execute(serde_json::json!(4)).result.unwrap(), 25);
/// let err = plugin.execute(serde_json::json!(0)).result.unwrap_err();
/// assert_eq!(err.kind(), ErrorKind::Panicked);
/// assert!(err.message().contains("zero is not allowed"));
/// let err = plugin.call("nope", serde_json::json!(null)).result.unwrap_err();
/// assert_eq!(err.kind(), ErrorKind::UnknownCallback);
/// ```
pub struct Harness<P: Plugin> {
    handler: HandlerBox,
    cancelled: AtomicBool,
    _plugin: PhantomData<fn() -> P>,
}

impl<P: Plugin> Harness<P> {
    /// Runs `P::init` with `config`, as the host does when it loads the plugin.
    pub fn new(name: &'static str, config: serde_json::Value) -> Result<Self, PluginError> {
        let (package, init) = Self::init(name, config);
        Self::started(instantiate::<P>(package, init))
    }

    /// Runs `P::init` with `config` and the `state` that version `version` of the plugin
    /// handed over, as the host does when it replaces that version (see
    /// [`Plugin::save_state`]).
    pub fn after(
        name: &'static str,
        config: serde_json::Value,
        state: serde_json::Value,
        version: &str,
    ) -> Result<Self, PluginError> {
        let (package, init) = Self::init(name, config);
        let previous = FfiPrevious {
            state_json: state.to_string().into(),
            version: version.into(),
        };
        Self::started(instantiate_with_state::<P>(package, init, previous))
    }

    fn init(name: &'static str, config: serde_json::Value) -> (Package, FfiInit) {
        let package = Package {
            name,
            version: "0.0.0",
            description: "",
            unwinds: cfg!(panic = "unwind"),
        };
        let init = FfiInit {
            config_json: config.to_string().into(),
            generation: 1,
        };
        (package, init)
    }

    fn started(outcome: FfiInitOutcome) -> Result<Self, PluginError> {
        match outcome.handler {
            ROk(handler) => Ok(Harness {
                handler,
                cancelled: AtomicBool::new(false),
                _plugin: PhantomData,
            }),
            RErr(err) => Err(PluginError::from(&err)),
        }
    }

    /// Asks the plugin for the state it hands to its next version, as the host does before
    /// replacing it (see [`Plugin::save_state`]); `None` when it hands over none.
    pub fn save_state(&self) -> Result<Option<serde_json::Value>, PluginError> {
        let state = Outcome::from(self.handler.save_state(&self.context())).result?;
        Ok((!state.is_null()).then_some(state))
    }

    /// Retires the plugin as the host does before unloading it: signals its
    /// [`StopToken`](crate::StopToken), runs [`Plugin::stop`], and waits up to `timeout` for
    /// the threads it started with [`InitContext::spawn`](crate::InitContext::spawn). `Err`
    /// if `stop` failed or panicked (its threads were still waited for).
    pub fn stop(&self, timeout: std::time::Duration) -> Result<crate::StopReport, PluginError> {
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        let json = Outcome::from(self.handler.stop(timeout_ms)).result?;
        if let Some(error) = json["error"].as_str() {
            return Err(PluginError::new(crate::ErrorKind::Panicked, error));
        }
        let names = json["still_running"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        Ok(crate::StopReport {
            threads: json["threads"].as_u64().unwrap_or(0) as usize,
            ended: json["ended"].as_u64().unwrap_or(0) as usize,
            still_running: names
                .iter()
                .filter_map(|n| n.as_str().map(str::to_owned))
                .collect(),
        })
    }

    /// Calls the `execute` entry point.
    pub fn execute(&self, input: serde_json::Value) -> Outcome {
        self.call("execute", input)
    }

    /// Calls a named callback (`execute` calls the entry point).
    pub fn call(&self, callback: &str, input: serde_json::Value) -> Outcome {
        let input = input.to_string();
        self.handler
            .callback(
                RStr::from(callback),
                RStr::from(input.as_str()),
                &self.context(),
            )
            .into()
    }

    /// Calls a named callback as a host that wants its log records live does (plugin ABI
    /// 1.5): `on_record` gets each record as the plugin writes it, while the call runs. The
    /// outcome still carries them all.
    ///
    /// ```
    /// use std::cell::RefCell;
    /// use plugin_api::testing::Harness;
    /// use plugin_api::{Context, InitContext, Plugin, PluginError};
    ///
    /// struct Steps;
    /// impl Plugin for Steps {
    ///     type Input = ();
    ///     type Output = ();
    ///     fn init(_: &InitContext<'_>) -> Result<Self, PluginError> { Ok(Steps) }
    ///     fn execute(&self, ctx: &Context<'_>, _: ()) -> Result<(), PluginError> {
    ///         ctx.info("step 1");
    ///         ctx.info("step 2");
    ///         Ok(())
    ///     }
    /// }
    ///
    /// let plugin = Harness::<Steps>::new("steps", serde_json::json!({})).unwrap();
    /// let live = RefCell::new(Vec::new());
    /// let outcome = plugin.call_live("execute", serde_json::json!(null), |record| {
    ///     live.borrow_mut().push(record.message.clone())
    /// });
    /// assert_eq!(*live.borrow(), ["step 1", "step 2"]);
    /// assert_eq!(outcome.logs.len(), 2);
    /// ```
    pub fn call_live(
        &self,
        callback: &str,
        input: serde_json::Value,
        on_record: impl Fn(&LogRecord),
    ) -> Outcome {
        let input = input.to_string();
        let write = |record: &FfiLogRecord| on_record(&LogRecord::from(record));
        self.handler
            .call_live(
                RStr::from(callback),
                RStr::from(input.as_str()),
                &self.context(),
                FfiLogSink::new(&write),
            )
            .into()
    }

    /// Calls a typed callback (see [`Callbacks::add_bytes`](crate::Callbacks::add_bytes))
    /// with `input`; its output bytes, or its error (also for a name that is not a typed
    /// callback).
    pub fn call_bytes(&self, callback: &str, input: &[u8]) -> Result<Vec<u8>, PluginError> {
        let Some(index) = self.handler.typed_index(RStr::from(callback)).into_option() else {
            return Err(PluginError::new(
                crate::ErrorKind::UnknownCallback,
                format!("no typed callback `{callback}`"),
            ));
        };
        let mut out = RVec::new();
        let status = self
            .handler
            .call_bytes(index, RSlice::from(input), &mut out, &self.context());
        match &status.result {
            ROk(()) => Ok(out.into_vec()),
            RErr(err) => Err(PluginError::from(err)),
        }
    }

    fn context(&self) -> FfiCallContext<'_> {
        FfiCallContext {
            cancelled: &self.cancelled,
            deadline_unix_ms: 0,
        }
    }

    /// Marks every later call as cancelled, as a caller that went away would.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Relaxed);
    }

    /// Drops the plugin value; `Err` if its `Drop` panicked.
    pub fn shutdown(mut self) -> Result<(), PluginError> {
        match self.handler.shutdown().into_option() {
            None => Ok(()),
            Some(err) => Err(PluginError::from(&err)),
        }
    }
}

#[cfg(test)]
mod panics;

#[cfg(test)]
mod live;
