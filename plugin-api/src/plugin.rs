//! The trait a plugin author implements, and the registry of its named callbacks.

use abi_stable::std_types::RVec;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::{Context, ErrorKind, InitContext, PluginError};

/// A plugin: an `execute` entry point and any number of named callbacks.
///
/// Inputs and outputs are serde types; on the wire they are JSON. Export the type with
/// [`export_plugin!`](crate::export_plugin); the plugin's name, version and description come
/// from its `Cargo.toml`.
///
/// ```
/// use plugin_api::testing::Harness;
/// use plugin_api::{Callbacks, Context, InitContext, Plugin, PluginError};
/// use serde::{Deserialize, Serialize};
///
/// struct Hello;
///
/// #[derive(Deserialize)]
/// struct GreetInput { name: String }
///
/// #[derive(Serialize)]
/// struct Greeting { message: String }
///
/// impl Plugin for Hello {
///     type Input = serde_json::Value;
///     type Output = String;
///
///     fn init(_ctx: &InitContext<'_>) -> Result<Self, PluginError> {
///         Ok(Hello)
///     }
///
///     fn execute(&self, _ctx: &Context<'_>, _input: serde_json::Value) -> Result<String, PluginError> {
///         Ok("I greet people: call `greet` with {\"name\": ...}".into())
///     }
///
///     fn callbacks(callbacks: &mut Callbacks<Self>) {
///         callbacks.add("greet", Hello::greet);
///     }
/// }
///
/// impl Hello {
///     fn greet(&self, ctx: &Context<'_>, input: GreetInput) -> Result<Greeting, PluginError> {
///         ctx.info(format_args!("greeting {}", input.name));
///         Ok(Greeting { message: format!("Hello, {}!", input.name) })
///     }
/// }
///
/// // In the plugin crate: plugin_api::export_plugin!(Hello);
///
/// let hello = Harness::<Hello>::new("hello", serde_json::json!({})).unwrap();
/// let outcome = hello.call("greet", serde_json::json!({"name": "Ada"}));
/// assert_eq!(outcome.result.unwrap()["message"], "Hello, Ada!");
/// ```
pub trait Plugin: Sized + Send + Sync + 'static {
    /// Input of [`Plugin::execute`].
    type Input: DeserializeOwned;
    /// Output of [`Plugin::execute`].
    type Output: Serialize;

    /// Creates the plugin when the host loads it, with its configuration. An error here
    /// rejects the load (the previous version, if any, keeps serving).
    fn init(ctx: &InitContext<'_>) -> Result<Self, PluginError>;

    /// The plugin's entry point, called as the callback named `execute`.
    fn execute(&self, ctx: &Context<'_>, input: Self::Input) -> Result<Self::Output, PluginError>;

    /// Registers the named callbacks. The default registers none.
    fn callbacks(callbacks: &mut Callbacks<Self>) {
        let _ = callbacks;
    }

    /// The state to hand to the next version of this plugin when the host replaces this
    /// one (a new version, a new configuration): the next version's `init` reads it with
    /// [`InitContext::previous_state`].
    ///
    /// The host asks twice: once to learn whether there is state to hand over, and, if
    /// there is, again once this version's running calls have finished (it holds new calls
    /// meanwhile, and sends them to the next version when that one is ready), so that no
    /// update is lost. So it must only read the state, never reset it. If the next version
    /// fails to start, this one serves on. An error or a panic does not stop the swap: the
    /// next version starts without state. The state counts against the host's message size
    /// limit. The default hands over nothing (`None`, as does `Some(null)`); see
    /// [`InitContext::previous_state`] for an example.
    fn save_state(&self, ctx: &Context<'_>) -> Result<Option<serde_json::Value>, PluginError> {
        let _ = ctx;
        Ok(None)
    }

    /// Called once when the host retires this version (replaced by another, or removed),
    /// after its last call has ended and just after its [`StopToken`](crate::StopToken) was
    /// signalled; then the host waits up to its `stop_timeout_ms` for the threads started
    /// with [`InitContext::spawn`] to end, and only then unloads the library. Shut down here
    /// what the plugin owns and that outlives a call: a tokio runtime
    /// (`shutdown_timeout`), a thread pool, connections. A panic here is caught and logged;
    /// the threads are still joined. The default does nothing (the signal alone ends
    /// threads that watch the token). Hosts older than plugin ABI 1.4 never call it.
    ///
    /// ```
    /// use plugin_api::testing::Harness;
    /// use plugin_api::{Context, InitContext, Plugin, PluginError};
    /// use std::sync::atomic::{AtomicBool, Ordering};
    /// use std::sync::Arc;
    ///
    /// struct Flusher { flushed: Arc<AtomicBool> }
    ///
    /// impl Plugin for Flusher {
    ///     type Input = ();
    ///     type Output = ();
    ///     fn init(_: &InitContext<'_>) -> Result<Self, PluginError> {
    ///         Ok(Flusher { flushed: Arc::default() })
    ///     }
    ///     fn execute(&self, _: &Context<'_>, _: ()) -> Result<(), PluginError> { Ok(()) }
    ///     fn stop(&self) {
    ///         // Write out what is buffered, close connections ...
    ///         self.flushed.store(true, Ordering::Relaxed);
    ///     }
    /// }
    ///
    /// let plugin = Harness::<Flusher>::new("flusher", serde_json::json!({})).unwrap();
    /// let report = plugin.stop(std::time::Duration::from_secs(1)).unwrap();
    /// assert!(report.all_ended());
    /// ```
    fn stop(&self) {}
}

type ErasedCallback<P> =
    Box<dyn Fn(&P, &Context<'_>, &str) -> Result<String, PluginError> + Send + Sync>;

/// A typed callback: bytes in, bytes out, no JSON on either side (see
/// [`Callbacks::add_bytes`]).
pub type BytesCallback<P> = fn(&P, &Context<'_>, &[u8], &mut Output<'_>) -> Result<(), PluginError>;

/// The named callbacks of a plugin, filled in by [`Plugin::callbacks`].
pub struct Callbacks<P> {
    entries: Vec<(&'static str, ErasedCallback<P>)>,
    typed: Vec<(&'static str, BytesCallback<P>)>,
    schedules: Vec<(&'static str, std::time::Duration)>,
}

impl<P: 'static> Callbacks<P> {
    pub(crate) fn new() -> Self {
        Callbacks {
            entries: Vec::new(),
            typed: Vec::new(),
            schedules: Vec::new(),
        }
    }

    /// Registers `callback` under `name`. Its input is decoded from JSON into `I` and its
    /// output encoded from `O`.
    ///
    /// # Panics
    ///
    /// If `name` is `execute` or already registered, or is not 1 to 64 characters of
    /// `[A-Za-z0-9_.-]`. The panic is caught at the boundary and the host rejects the plugin
    /// with this message.
    pub fn add<I, O>(
        &mut self,
        name: &'static str,
        callback: fn(&P, &Context<'_>, I) -> Result<O, PluginError>,
    ) -> &mut Self
    where
        I: DeserializeOwned + 'static,
        O: Serialize + 'static,
    {
        self.check_new(name);
        let erased = move |plugin: &P, ctx: &Context<'_>, input: &str| {
            let input: I = decode_input(name, input)?;
            encode_output(name, &callback(plugin, ctx, input)?)
        };
        self.entries.push((name, Box::new(erased)));
        self
    }

    /// Registers a *typed* callback under `name`: it gets its input as bytes and writes its
    /// output bytes, with no JSON on either side, for callers that want the fastest path
    /// (a host calls it with `Host::typed`; see the host's documentation). Its format is
    /// whatever the plugin and its callers agree on. A JSON call of it is refused with an
    /// error saying so. Needs a host of plugin ABI 1.1 or later.
    ///
    /// ```
    /// use plugin_api::testing::Harness;
    /// use plugin_api::{Callbacks, Context, InitContext, Output, Plugin, PluginError};
    /// use std::io::Write;
    ///
    /// struct Upper;
    /// impl Plugin for Upper {
    ///     type Input = ();
    ///     type Output = ();
    ///     fn init(_: &InitContext<'_>) -> Result<Self, PluginError> { Ok(Upper) }
    ///     fn execute(&self, _: &Context<'_>, _: ()) -> Result<(), PluginError> { Ok(()) }
    ///     fn callbacks(callbacks: &mut Callbacks<Self>) {
    ///         callbacks.add_bytes("upper", |_: &Upper, _: &Context<'_>, input: &[u8], out: &mut Output<'_>| {
    ///             out.extend_from_slice(&input.to_ascii_uppercase());
    ///             Ok(())
    ///         });
    ///     }
    /// }
    ///
    /// let plugin = Harness::<Upper>::new("upper", serde_json::json!({})).unwrap();
    /// assert_eq!(plugin.call_bytes("upper", b"abc").unwrap(), b"ABC");
    /// ```
    ///
    /// # Panics
    ///
    /// As [`Callbacks::add`].
    pub fn add_bytes(&mut self, name: &'static str, callback: BytesCallback<P>) -> &mut Self {
        self.check_new(name);
        self.typed.push((name, callback));
        self
    }

    /// Asks the host to call `callback` (a registered JSON callback, or `execute`) with
    /// input `null` every `period`, as a task (see the host's "Tasks"): from when this
    /// version loads until it is replaced or unloaded. Needs plugin ABI 1.3; an older host
    /// ignores it.
    ///
    /// ```
    /// use plugin_api::{Callbacks, Context, InitContext, Plugin, PluginError};
    /// use std::time::Duration;
    ///
    /// struct Health;
    /// impl Plugin for Health {
    ///     type Input = ();
    ///     type Output = ();
    ///     fn init(_: &InitContext<'_>) -> Result<Self, PluginError> { Ok(Health) }
    ///     fn execute(&self, _: &Context<'_>, _: ()) -> Result<(), PluginError> { Ok(()) }
    ///     fn callbacks(callbacks: &mut Callbacks<Self>) {
    ///         callbacks
    ///             .add("report", |_: &Health, ctx: &Context<'_>, _: serde_json::Value| {
    ///                 ctx.info("all well");
    ///                 Ok(())
    ///             })
    ///             .every("report", Duration::from_secs(60));
    ///     }
    /// }
    /// # let _ = plugin_api::testing::Harness::<Health>::new("health", serde_json::json!({})).unwrap();
    /// ```
    ///
    /// # Panics
    ///
    /// If `callback` is not registered (before this call) or typed, if it already has a
    /// schedule, or if `period` is under a second. Caught at the boundary: the host rejects
    /// the plugin with this message.
    pub fn every(&mut self, callback: &'static str, period: std::time::Duration) -> &mut Self {
        assert!(
            callback == "execute" || self.entries.iter().any(|(name, _)| *name == callback),
            "`every`: `{callback}` is not a registered JSON callback (register it first)"
        );
        assert!(
            period >= std::time::Duration::from_secs(1),
            "`every`: `{callback}`'s period of {period:?} is under a second"
        );
        assert!(
            !self.schedules.iter().any(|(name, _)| *name == callback),
            "`every`: `{callback}` has a schedule already"
        );
        self.schedules.push((callback, period));
        self
    }

    /// The schedules asked for with [`Callbacks::every`].
    pub(crate) fn schedules(&self) -> &[(&'static str, std::time::Duration)] {
        &self.schedules
    }

    fn check_new(&self, name: &str) {
        assert!(
            crate::is_valid_name(name),
            "callback name {name:?} is not 1 to 64 characters of [A-Za-z0-9_.-]"
        );
        assert!(
            name != "execute",
            "`execute` is the entry point, not a callback name"
        );
        assert!(
            !self.names().any(|n| n == name),
            "callback `{name}` is registered twice"
        );
    }

    /// The registered names, JSON callbacks then typed ones, each in registration order.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.entries
            .iter()
            .map(|(name, _)| *name)
            .chain(self.typed.iter().map(|(name, _)| *name))
    }

    pub(crate) fn find(&self, name: &str) -> Option<&ErasedCallback<P>> {
        self.entries
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, callback)| callback)
    }

    /// The index of typed callback `name`.
    pub(crate) fn typed_index(&self, name: &str) -> Option<u32> {
        let index = self.typed.iter().position(|(n, _)| *n == name)?;
        u32::try_from(index).ok()
    }

    /// Typed callback number `index`, with its name.
    pub(crate) fn typed(&self, index: u32) -> Option<&(&'static str, BytesCallback<P>)> {
        self.typed.get(index as usize)
    }

    pub(crate) fn unknown(&self, plugin: &str, name: &str) -> PluginError {
        if self.typed_index(name).is_some() {
            return PluginError::new(
                ErrorKind::UnknownCallback,
                format!(
                    "plugin {plugin}: callback `{name}` is typed (bytes in, bytes out), not \
                     JSON: call it with a typed call (Host::typed)"
                ),
            );
        }
        let mut known: Vec<&str> = vec!["execute"];
        known.extend(self.names());
        PluginError::new(
            ErrorKind::UnknownCallback,
            format!(
                "plugin {plugin} has no callback `{name}`; it has: {}",
                known.join(", ")
            ),
        )
    }
}

/// Where a typed callback writes its output: bytes appended to a buffer the host owns and
/// reuses, so that writing allocates nothing once the buffer is big enough. Also an
/// [`std::io::Write`].
pub struct Output<'a> {
    buf: &'a mut RVec<u8>,
}

impl<'a> Output<'a> {
    pub(crate) fn new(buf: &'a mut RVec<u8>) -> Output<'a> {
        Output { buf }
    }

    /// Appends `bytes`.
    pub fn extend_from_slice(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Appends one byte.
    pub fn push(&mut self, byte: u8) {
        self.buf.push(byte);
    }

    /// What was written so far.
    pub fn as_slice(&self) -> &[u8] {
        self.buf.as_slice()
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether nothing was written yet.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

impl std::io::Write for Output<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl std::fmt::Debug for Output<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Output").field("len", &self.len()).finish()
    }
}

pub(crate) fn decode_input<I: DeserializeOwned>(
    callback: &str,
    input: &str,
) -> Result<I, PluginError> {
    serde_json::from_str(input)
        .map_err(|err| PluginError::invalid_input(format!("invalid input for `{callback}`: {err}")))
}

pub(crate) fn encode_output<O: Serialize>(
    callback: &str,
    output: &O,
) -> Result<String, PluginError> {
    serde_json::to_string(output).map_err(|err| {
        PluginError::failed(format!("cannot encode the result of `{callback}`: {err}"))
    })
}
