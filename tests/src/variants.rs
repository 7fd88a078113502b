//! Versions 0.2.0 of the `hello` example that the rollout and catalogue tests load or
//! publish: a self-test that passes or fails, and a `greet` that panics. Each is built once
//! per test binary, on first use.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::Variant;

/// hello 0.2.0 greeting with `greeting`, `greet_first_line` put first in its `greet`, and
/// `callbacks` registered after its own.
pub fn hello_v2(greeting: &str, greet_first_line: &str, callbacks: &str) -> PathBuf {
    Variant::of("example-plugins/hello")
        .edit("Cargo.toml", "version = \"0.1.0\"", "version = \"0.2.0\"")
        .edit(
            "src/lib.rs",
            "\"Hello\".to_owned()",
            format!("{greeting:?}.to_owned()"),
        )
        .edit(
            "src/lib.rs",
            "        if input.name.trim().is_empty() {",
            format!("{greet_first_line}\n        if input.name.trim().is_empty() {{"),
        )
        .edit(
            "src/lib.rs",
            "            .add(\"panic\", Hello::panic)",
            format!("            .add(\"panic\", Hello::panic){callbacks}"),
        )
        .build()
}

/// hello 0.2.0 whose self-test fails.
pub fn failing_self_test() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        hello_v2(
            "Hey",
            "",
            "\n            .add(\"self_test\", |_: &Hello, _: &Context<'_>, _: serde_json::Value| -> Result<(), PluginError> {\n                Err(PluginError::failed(\"the greeting table is empty\"))\n            })",
        )
    })
}

/// hello 0.2.0 whose self-test passes.
pub fn passing_self_test() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        hello_v2(
            "Yo",
            "",
            "\n            .add(\"self_test\", |_: &Hello, ctx: &Context<'_>, _: serde_json::Value| -> Result<(), PluginError> {\n                ctx.info(\"self-test passed\");\n                Ok(())\n            })",
        )
    })
}

/// hello 0.2.0 whose `greet` panics every time.
pub fn panicking_greet() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| hello_v2("Oops", "        panic!(\"greet is broken in 0.2.0\");", ""))
}
