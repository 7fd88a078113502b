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
//!   host: it becomes an error of kind [`ErrorKind::Panicked`] naming the plugin, the place,
//!   the panic message and where it happened:
//!   `plugin hello panicked in callback `panic`: hello panicked on purpose (at src/lib.rs:110)`.
//! * That takes `panic = "unwind"`, Rust's default. A plugin built with `panic = "abort"`
//!   (in its profile, for smaller binaries, or with `-C panic=abort`) cannot catch a
//!   panic: its first one ends the process it runs in. [`export_plugin!`] records the
//!   strategy the plugin crate was compiled with in its declarations (`"panic": "abort"`),
//!   and the host runs such a plugin in a worker process of its own, where a panic ends
//!   only the worker and the call is answered `crashed`; where the plugin's settings keep
//!   it in the host's process (`isolation = "in-process"`) the host refuses it.
//! * Each plugin library has its own copy of std, and so its own panic hook. The glue
//!   replaces std's default hook in it, once per library, before any author code runs: a
//!   panic in author code the glue runs prints nothing (it is in the error above), and a
//!   panic in a thread the plugin spawned itself writes one line to stderr,
//!   `plugin NAME: thread panicked at FILE:LINE: MESSAGE`. (In-process, under
//!   [`testing::Harness`], the latter goes to the hook that was there before, so test
//!   binaries report failing tests as usual.) A hook the plugin sets itself replaces this one.
//! * Backtraces of plugin panics are off by default, whatever `RUST_BACKTRACE` says:
//!   symbolizing one makes the plugin's std parse and cache the debug info of the loaded
//!   binaries (tens of MB) in its own statics, which are never freed, so every unloaded
//!   generation that captured one would leave that memory behind. Set
//!   `PLUGIN_HOST_BACKTRACE=1` in the host's environment to turn them on (read at every
//!   panic): the backtrace of a panic in `init`, `execute` or a callback then comes back as
//!   one extra log record at [`Level::Error`] of the call's outcome (`backtrace of the
//!   panic:` and the frames), one in callback registration or `Drop` goes to stderr, and one
//!   in a plugin's own thread follows its line on stderr.
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
//! The minors so far, and what each side does with a plugin of another one:
//!
//! * 1.0: the root module's `metadata` and `instantiate`, and [`abi::Handler`] up to
//!   `shutdown`.
//! * 1.1: typed, JSON-free calls (`typed_index`, `call_bytes`). A 1.0 plugin has no typed
//!   callbacks.
//! * 1.2: state handover ([`Plugin::save_state`], [`InitContext::previous_state`]): the
//!   root module's `instantiate_with_state` and [`abi::Handler::save_state`]. A plugin of
//!   an older minor hands over nothing (the default body) and is started without the state
//!   its predecessor handed over (the host logs that it cannot take it). A 1.2 plugin in a
//!   1.1 host loads and serves; that host never asks it for its state, so its `init` sees
//!   none.
//! * 1.3: declarations beyond the metadata, as JSON (`declarations`: the schedules of
//!   [`Callbacks::every`], and the panic strategy, `"panic": "unwind"` or `"abort"`, a
//!   field added later within 1.3). An older plugin declares none; an older host runs no
//!   schedule of a 1.3 plugin; a plugin that does not name its panic strategy is taken as
//!   unwinding.
//! * 1.4: the stop signal ([`Plugin::stop`], [`InitContext::stop_token`],
//!   [`InitContext::spawn`]): [`abi::Handler::stop`], called once when a version is retired,
//!   with the time to wait for its threads. A plugin of an older minor gets no signal (the
//!   default body); a 1.4 plugin in an older host is never stopped, its threads run on.
//! * 1.5: log records sent as they are written: [`abi::Handler::call_live`] takes an
//!   [`abi::FfiLogSink`], which [`Context::log`] calls for each record while the call
//!   runs, besides keeping it for the outcome. A host that wants a call's records live
//!   (the task events stream) passes one; a plugin of an older minor answers with the plain
//!   call (the default body), so its records come only with the outcome. A 1.5 plugin in
//!   an older host is called as before.
//!
//! The author-facing API ([`Plugin`], [`Context`], ...) follows ordinary semver and may grow
//! freely: it is compiled into the plugin and never crosses the boundary.

#![warn(missing_docs)]

pub mod abi;
mod context;
mod error;
#[doc(hidden)]
pub mod glue;
mod panic_hook;
mod plugin;
mod stop;
pub mod testing;

pub use context::{Context, FollowUp, InitContext, Level, LogRecord};
pub use error::{ErrorKind, PluginError};
pub use plugin::{BytesCallback, Callbacks, Output, Plugin};
pub use stop::{StopReport, StopToken};

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

pub mod note {
    //! The ELF note that names the plugin inside its library file, so that a host can find the
    //! file declaring a plugin by reading a few hundred bytes of it, without `dlopen`.
    //!
    //! [`export_plugin!`](crate::export_plugin) puts one note into a section named
    //! [`SECTION`] (`.note.plugin-host`). The section is allocated and of type `SHT_NOTE`, so
    //! the linker also lists it in a `PT_NOTE` program header, and `strip` keeps it. The note
    //! is laid out as every ELF note, 4-byte aligned, numbers in the target's byte order:
    //!
    //! | bytes | content |
    //! |---|---|
    //! | 0..4 | `namesz`: 12, the length of the owner with its NUL |
    //! | 4..8 | `descsz`: the length of the plugin name |
    //! | 8..12 | `type`: [`TYPE_PLUGIN_NAME`] (`0x50480001`) |
    //! | 12..24 | the owner, [`OWNER`] and a NUL: `plugin-host\0` |
    //! | 24.. | the descriptor: the plugin name (`CARGO_PKG_NAME`, no NUL), zero-padded to 4 |
    //!
    //! `readelf -n libhello.so` shows it as
    //!
    //! ```text
    //! Displaying notes found in: .note.plugin-host
    //!   Owner                Data size        Description
    //!   plugin-host          0x00000005       Unknown note type: (0x50480001)
    //!    description data: 68 65 6c 6c 6f
    //! ```
    //!
    //! It is not part of the ABI in [`abi`](crate::abi): a library without it (built against
    //! an older `plugin-api`) is still a plugin, found by loading it. The host reads it in
    //! `host/src/elf.rs` (`declared_name`), from the `PT_NOTE` segments and, failing that, the
    //! `SHT_NOTE` sections.
    //!
    //! ```
    //! use plugin_api::note;
    //!
    //! const SIZE: usize = note::size("hello".len());
    //! let bytes = note::plugin_note::<SIZE>("hello").0;
    //! assert_eq!(bytes.len(), 32);
    //! assert_eq!(bytes[..4], 12u32.to_ne_bytes()); // namesz
    //! assert_eq!(bytes[4..8], 5u32.to_ne_bytes()); // descsz
    //! assert_eq!(bytes[8..12], note::TYPE_PLUGIN_NAME.to_ne_bytes());
    //! assert_eq!(&bytes[12..24], b"plugin-host\0");
    //! assert_eq!(&bytes[24..], b"hello\0\0\0");
    //! ```

    /// The section [`export_plugin!`](crate::export_plugin) writes the note into.
    pub const SECTION: &str = ".note.plugin-host";
    /// The note's owner (its name field, without the NUL).
    pub const OWNER: &str = "plugin-host";
    /// The note's type: its descriptor is the plugin name. ("PH", then 1; not a small number,
    /// which tools such as `readelf` would show as a generic note type like `NT_VERSION`.)
    pub const TYPE_PLUGIN_NAME: u32 = 0x5048_0001;

    /// Rounds up to a multiple of 4.
    const fn pad4(n: usize) -> usize {
        (n + 3) & !3
    }

    /// The bytes of the note, aligned as ELF notes are.
    #[doc(hidden)]
    #[repr(C, align(4))]
    pub struct PluginNote<const N: usize>(pub [u8; N]);

    /// The size of the note for a plugin name of `name_len` bytes.
    #[doc(hidden)]
    pub const fn size(name_len: usize) -> usize {
        12 + pad4(OWNER.len() + 1) + pad4(name_len)
    }

    /// The note naming plugin `name`; `N` must be [`size`]`(name.len())` (checked at compile
    /// time when used in a `static`).
    #[doc(hidden)]
    pub const fn plugin_note<const N: usize>(name: &str) -> PluginNote<N> {
        assert!(
            N == size(name.len()),
            "the note's length does not fit the name"
        );
        assert!(
            name.len() <= u32::MAX as usize,
            "the plugin name is too long"
        );
        let mut out = [0u8; N];
        let header = [
            (OWNER.len() + 1) as u32,
            name.len() as u32,
            TYPE_PLUGIN_NAME,
        ];
        let mut i = 0;
        while i < 3 {
            let word = header[i].to_ne_bytes();
            let mut j = 0;
            while j < 4 {
                out[4 * i + j] = word[j];
                j += 1;
            }
            i += 1;
        }
        let owner = OWNER.as_bytes();
        let mut i = 0;
        while i < owner.len() {
            out[12 + i] = owner[i];
            i += 1;
        }
        // The owner's NUL and padding are already zeros.
        let desc = 12 + pad4(owner.len() + 1);
        let name = name.as_bytes();
        let mut i = 0;
        while i < name.len() {
            out[desc + i] = name[i];
            i += 1;
        }
        PluginNote(out)
    }
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
/// abi_stable itself), the glue that catches panics, and an ELF note naming the plugin (see
/// [`note`]) so that the host can tell which file declares which plugin without loading it.
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
                // Evaluated here, in the plugin crate: its profile decides.
                unwinds: cfg!(panic = "unwind"),
            };

            extern "C" fn __metadata() -> $crate::abi::FfiMetadataResult {
                $crate::glue::install_panic_hook(__PACKAGE);
                $crate::glue::metadata::<$plugin>(__PACKAGE)
            }

            extern "C" fn __instantiate(init: $crate::abi::FfiInit) -> $crate::abi::FfiInitOutcome {
                $crate::glue::install_panic_hook(__PACKAGE);
                $crate::glue::instantiate::<$plugin>(__PACKAGE, init)
            }

            extern "C" fn __declarations() -> $crate::__private::abi_stable::std_types::RResult<
                $crate::__private::abi_stable::std_types::RString,
                $crate::abi::FfiError,
            > {
                $crate::glue::install_panic_hook(__PACKAGE);
                $crate::glue::declarations::<$plugin>(__PACKAGE)
            }

            extern "C" fn __instantiate_with_state(
                init: $crate::abi::FfiInit,
                previous: $crate::abi::FfiPrevious,
            ) -> $crate::abi::FfiInitOutcome {
                $crate::glue::install_panic_hook(__PACKAGE);
                $crate::glue::instantiate_with_state::<$plugin>(__PACKAGE, init, previous)
            }

            // The plugin's name where the host reads it without loading the library; the
            // section name is `$crate::note::SECTION`.
            #[used]
            #[link_section = ".note.plugin-host"]
            static __PLUGIN_NOTE: $crate::note::PluginNote<
                { $crate::note::size(env!("CARGO_PKG_NAME").len()) },
            > = $crate::note::plugin_note(env!("CARGO_PKG_NAME"));

            const __MODULE: &__p::WithMetadata<$crate::abi::PluginMod> =
                &__p::WithMetadata::new($crate::abi::PluginMod {
                    metadata: __metadata,
                    instantiate: __instantiate,
                    instantiate_with_state: __instantiate_with_state,
                    declarations: __declarations,
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
    fn the_note_is_an_aligned_elf_note_in_the_documented_section() {
        use crate::note;
        const SIZE: usize = note::size("disk-report".len());
        static NOTE: note::PluginNote<SIZE> = note::plugin_note("disk-report");
        assert_eq!(std::mem::align_of_val(&NOTE), 4);
        assert_eq!(SIZE, 12 + 12 + 12);
        let word = |at: usize| u32::from_ne_bytes([0, 1, 2, 3].map(|i| NOTE.0[at + i]));
        assert_eq!(word(0), 12);
        assert_eq!(word(4), 11);
        assert_eq!(word(8), note::TYPE_PLUGIN_NAME);
        assert_eq!(&NOTE.0[12..24], b"plugin-host\0");
        assert_eq!(&NOTE.0[24..], b"disk-report\0");
        for len in 0..10 {
            assert_eq!(note::size(len) % 4, 0);
            assert!(note::size(len) >= 24 + len);
        }
        // The macro spells the section name as a literal; keep it the documented one.
        let attribute = format!("#[link_section = \"{}\"]", note::SECTION);
        assert!(include_str!("lib.rs").contains(&attribute));
    }

    #[test]
    fn abi_version_string_matches_the_numbers() {
        let expected = format!("{}.{}.0", crate::abi::ABI_MAJOR, crate::abi::ABI_MINOR);
        assert_eq!(crate::abi::ABI_VERSION, expected);
    }
}
