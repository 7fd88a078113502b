//! The trait a plugin author implements, and the registry of its named callbacks.

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
}

type ErasedCallback<P> =
    Box<dyn Fn(&P, &Context<'_>, &str) -> Result<String, PluginError> + Send + Sync>;

/// The named callbacks of a plugin, filled in by [`Plugin::callbacks`].
pub struct Callbacks<P> {
    entries: Vec<(&'static str, ErasedCallback<P>)>,
}

impl<P: 'static> Callbacks<P> {
    pub(crate) fn new() -> Self {
        Callbacks {
            entries: Vec::new(),
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
        assert!(
            crate::is_valid_name(name),
            "callback name {name:?} is not 1 to 64 characters of [A-Za-z0-9_.-]"
        );
        assert!(
            name != "execute",
            "`execute` is the entry point, not a callback name"
        );
        assert!(
            self.find(name).is_none(),
            "callback `{name}` is registered twice"
        );
        let erased = move |plugin: &P, ctx: &Context<'_>, input: &str| {
            let input: I = decode_input(name, input)?;
            encode_output(name, &callback(plugin, ctx, input)?)
        };
        self.entries.push((name, Box::new(erased)));
        self
    }

    /// The registered names, in registration order.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.entries.iter().map(|(name, _)| *name)
    }

    pub(crate) fn find(&self, name: &str) -> Option<&ErasedCallback<P>> {
        self.entries
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, callback)| callback)
    }

    pub(crate) fn unknown(&self, plugin: &str, name: &str) -> PluginError {
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
