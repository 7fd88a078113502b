//! Write plugins that a running host loads, swaps and unloads without a restart.
//!
//! A plugin is a `cdylib` crate with one type implementing [`Plugin`]: an `execute` entry
//! point and named callbacks, with serde types for input and output. [`export_plugin!`]
//! exports it. The host calls it with JSON and gets back the result, the call's log records,
//! any follow-up calls the plugin asked for, or a typed [`PluginError`].
//!
//! ```
//! use plugin_api::{export_plugin, Callbacks, Context, InitContext, Plugin, PluginError};
//! use serde::Deserialize;
//!
//! pub struct Hello;
//!
//! #[derive(Deserialize)]
//! struct Greet { name: String }
//!
//! impl Plugin for Hello {
//!     type Input = serde_json::Value;
//!     type Output = &'static str;
//!     fn init(_ctx: &InitContext<'_>) -> Result<Self, PluginError> { Ok(Hello) }
//!     fn execute(&self, _: &Context<'_>, _: serde_json::Value) -> Result<&'static str, PluginError> {
//!         Ok("call `greet` with {\"name\": ...}")
//!     }
//!     fn callbacks(callbacks: &mut Callbacks<Self>) {
//!         callbacks.add("greet", |_: &Hello, ctx: &Context<'_>, input: Greet| {
//!             ctx.info(format_args!("greeting {}", input.name));
//!             Ok(format!("Hello, {}!", input.name))
//!         });
//!     }
//! }
//!
//! export_plugin!(Hello);
//! # fn main() {}
//! ```
//!
//! with, in `Cargo.toml`:
//!
//! ```toml
//! [lib]
//! crate-type = ["cdylib"]
//!
//! [dependencies]
//! plugin-api = { path = "..." }
//! serde = { version = "1", features = ["derive"] }
//! serde_json = "1"
//! ```
//!
//! `host new NAME --path DIR` writes such a crate for you. [`testing::Harness`] runs a plugin
//! in-process, through the same glue the host uses, for unit tests.
//!
//! # Guarantees at the boundary
//!
//! * A panic in author code (`init`, `execute`, a callback, `Drop`) never unwinds into the
//!   host: it becomes an error of kind [`ErrorKind::Panicked`] naming the plugin, the place
//!   and the panic message.
//! * Every value the host receives is plain data (JSON text, strings, numbers); the host
//!   copies it and keeps nothing of the plugin's, so the library can be closed afterwards.
//!   Plugins should not leave threads running or store values with destructors in
//!   `thread_local!`s of host threads: either keeps the library mapped after unload (the host
//!   detects and reports it).
//!
//! # ABI evolution rules
//!
//! The host and a plugin agree on the ABI in [`abi`], versioned [`abi::ABI_MAJOR`].
//! [`abi::ABI_MINOR`] independently of this crate's version. A host loads every plugin of
//! its ABI major, whatever the minor and whichever side is newer:
//!
//! * plugin minor equal to or newer than the host's: abi_stable checks the full layout;
//!   fields and methods the host does not know are ignored.
//! * plugin minor older than the host's: the host checks the major itself and relies on the
//!   rules below, which make an older layout a prefix of the newer one.
//!
//! Within a major, and so in every release that keeps [`abi::ABI_MAJOR`]:
//!
//! 1. Existing items of [`abi`] never change: no field or method is removed, reordered,
//!    renamed to another type or given another signature, and `#[repr(C)]` structs that are
//!    not prefix types ([`abi::FfiOutcome`], [`abi::FfiMetadata`], ...) never change at all.
//! 2. [`abi::PluginMod`] may gain fields only at its end, in a new minor, read by the host
//!    through the `Option`-returning accessors of [`abi::PluginModRef`].
//! 3. [`abi::Handler`] may gain methods only at its end, in a new minor, each with a default
//!    body, which is what an older plugin answers with. New data goes in new types passed to
//!    new methods.
//! 4. Error kinds and log levels are numbers; unknown ones read as [`ErrorKind::Other`] and
//!    [`Level::Info`], so new ones may be added in a minor.
//! 5. Anything else is a new major: [`abi::ABI_MAJOR`] goes up and every plugin must be
//!    rebuilt. The host says so in one line, naming both versions.
//!
//! The author-facing API ([`Plugin`], [`Context`], ...) follows ordinary semver and may grow
//! freely: it is compiled into the plugin and never crosses the boundary.

#![warn(missing_docs)]

pub mod abi;
mod context;
mod error;
#[doc(hidden)]
pub mod glue;
mod plugin;
pub mod testing;

pub use context::{Context, FollowUp, InitContext, Level, LogRecord};
pub use error::{ErrorKind, PluginError};
pub use plugin::{Callbacks, Plugin};

/// This crate's version, as recorded in every plugin's metadata.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Whether `name` is acceptable as a plugin or callback name: 1 to 64 characters of
/// `[A-Za-z0-9_.-]`, so that it is safe in a file name, a log line and a URL.
///
/// ```
/// assert!(plugin_api::is_valid_name("disk-report"));
/// assert!(!plugin_api::is_valid_name("../etc/passwd"));
/// assert!(!plugin_api::is_valid_name(""));
/// ```
pub fn is_valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// Re-exports the export macro needs, so plugin crates need no direct abi_stable dependency.
#[doc(hidden)]
pub mod __private {
    pub use abi_stable;
    pub use abi_stable::library::{CheckTypeLayout, LibHeader, RootModuleResult};
    pub use abi_stable::prefix_type::WithMetadata;
}

/// Exports a [`Plugin`] type from a `cdylib` crate. Use it once per crate.
///
/// The plugin's name, version and description are the crate's `name`, `version` and
/// `description` from `Cargo.toml`. The macro writes the library header abi_stable looks for
/// (what `#[export_root_module]` would write, without requiring the plugin to depend on
/// abi_stable itself) and the glue that catches panics.
///
/// ```
/// use plugin_api::{export_plugin, Context, InitContext, Plugin, PluginError};
///
/// pub struct Uptime;
///
/// impl Plugin for Uptime {
///     type Input = ();
///     type Output = String;
///     fn init(_: &InitContext<'_>) -> Result<Self, PluginError> { Ok(Uptime) }
///     fn execute(&self, _: &Context<'_>, _: ()) -> Result<String, PluginError> {
///         std::fs::read_to_string("/proc/uptime")
///             .map_err(|err| PluginError::failed(format!("reading /proc/uptime: {err}")))
///     }
/// }
///
/// export_plugin!(Uptime);
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        const _: () = {
            use $crate::__private as __p;

            const __PACKAGE: $crate::glue::Package = $crate::glue::Package {
                name: env!("CARGO_PKG_NAME"),
                version: env!("CARGO_PKG_VERSION"),
                description: env!("CARGO_PKG_DESCRIPTION"),
            };

            extern "C" fn __metadata() -> $crate::abi::FfiMetadataResult {
                $crate::glue::metadata::<$plugin>(__PACKAGE)
            }

            extern "C" fn __instantiate(init: $crate::abi::FfiInit) -> $crate::abi::FfiInitOutcome {
                $crate::glue::instantiate::<$plugin>(__PACKAGE, init)
            }

            const __MODULE: &__p::WithMetadata<$crate::abi::PluginMod> =
                &__p::WithMetadata::new($crate::abi::PluginMod {
                    metadata: __metadata,
                    instantiate: __instantiate,
                });

            fn __root_module() -> $crate::abi::PluginModRef {
                $crate::abi::PluginModRef(__MODULE.static_as_prefix())
            }

            extern "C" fn __erased_root_module() -> __p::RootModuleResult {
                __p::abi_stable::library::__call_root_module_loader(__root_module)
            }

            // The symbol abi_stable's loader looks up (`ROOT_MODULE_LOADER_NAME`); a unit
            // test in plugin-api checks the name against abi_stable's constant.
            #[no_mangle]
            pub static _1as_0lib_1header_0root_bmodule_bloader: __p::LibHeader = {
                // SAFETY: `__erased_root_module` returns the root module of type
                // `PluginModRef`, the type the header is declared for.
                unsafe {
                    __p::LibHeader::from_constructor::<$crate::abi::PluginModRef>(
                        __erased_root_module,
                        __p::CheckTypeLayout::Yes,
                    )
                }
            };
        };
    };
}

#[cfg(test)]
mod tests {
    #[test]
    fn export_macro_uses_abi_stables_symbol_name() {
        assert_eq!(
            abi_stable::library::ROOT_MODULE_LOADER_NAME,
            "_1as_0lib_1header_0root_bmodule_bloader"
        );
    }

    #[test]
    fn abi_version_string_matches_the_numbers() {
        let expected = format!("{}.{}.0", crate::abi::ABI_MAJOR, crate::abi::ABI_MINOR);
        assert_eq!(crate::abi::ABI_VERSION, expected);
    }
}
