//! The ABI evolution rules of plugin-api, checked with plugins built against modified copies
//! of it: a later minor that appended to the root module and the Handler loads and answers;
//! another major, or a layout changed without a version change, is refused in one line; and
//! loading and unloading libraries of different layouts over and over stays sound.

use e2e::{plugins_dir, Variant};
use host::{Host, HostOptions, LoadErrorKind};
use serde_json::Value;

/// A plugin-api copy one minor ahead (1.6): a root-module field and a Handler method
/// appended.
fn next_minor(greeting: &str) -> Variant<'_> {
    Variant::of("example-plugins/hello")
        .edit("src/lib.rs", "\"Hello\".to_owned()", format!("{greeting:?}.to_owned()"))
        .edit_api("src/abi.rs", "pub const ABI_MINOR: u32 = 5;", "pub const ABI_MINOR: u32 = 6;")
        .edit_api("src/abi.rs", "pub const ABI_VERSION: &str = \"1.5.0\";", "pub const ABI_VERSION: &str = \"1.6.0\";")
        .edit_api(
            "src/abi.rs",
            "pub declarations: extern \"C\" fn() -> RResult<RString, FfiError>,",
            "pub declarations: extern \"C\" fn() -> RResult<RString, FfiError>,\n    /// New in 1.6.\n    pub capabilities: extern \"C\" fn() -> u64,",
        )
        .edit_api(
            "src/abi.rs",
            "            self.callback(name, input, ctx)\n        }\n    }",
            "            self.callback(name, input, ctx)\n        }\n    }\n\n    /// New in 1.6.\n    fn ping(&self) -> u32 {\n        16\n    }",
        )
        .edit_api(
            "src/lib.rs",
            "declarations: __declarations,\n",
            "declarations: __declarations,\n capabilities: { extern \"C\" fn caps() -> u64 { 7 } caps },\n",
        )
}

fn greet(host: &Host) -> String {
    let outcome = host
        .call("hello", "greet", r#"{"name":"Ada"}"#)
        .expect("hello is loaded");
    let result: Value =
        serde_json::from_str(outcome.result().expect("greet succeeds").get()).unwrap();
    result["message"].as_str().unwrap().to_owned()
}

#[test]
fn a_plugin_of_a_later_minor_loads_and_alternating_layouts_reload_soundly() {
    let dir = plugins_dir();
    let newer = next_minor("Hi").build_into(dir.path(), "libhello-next.so");
    let current = e2e::install(&e2e::built().hello, dir.path(), "libhello.so");

    let host = Host::new(HostOptions::default()).unwrap();
    host.load_file(&newer)
        .expect("a plugin of ABI 1.6 loads in a 1.5 host");
    assert_eq!(greet(&host), "Hi, Ada!");
    let status = host.status();
    assert_eq!(status[0].metadata.as_ref().unwrap().abi_version, "1.6");

    // Libraries with two layouts of the same prefix types, loaded and closed in turn: the
    // layout checker must never look at a closed library's type information.
    for round in 0..40 {
        let (file, expected) = if round % 2 == 0 {
            (&current, "Hello, Ada!")
        } else {
            (&newer, "Hi, Ada!")
        };
        host.remove_file(&newer);
        host.remove_file(&current);
        host.load_file(file)
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert_eq!(greet(&host), expected, "round {round}");
    }
}

#[test]
fn another_major_is_refused_in_one_line_naming_both_versions() {
    let dir = plugins_dir();
    let file = Variant::of("example-plugins/hello")
        .edit_api(
            "src/abi.rs",
            "pub const ABI_MAJOR: u32 = 1;",
            "pub const ABI_MAJOR: u32 = 2;",
        )
        .edit_api(
            "src/abi.rs",
            "pub const ABI_VERSION: &str = \"1.5.0\";",
            "pub const ABI_VERSION: &str = \"2.0.0\";",
        )
        .build_into(dir.path(), "libhello.so");
    let host = Host::new(HostOptions::default()).unwrap();
    let err = host.load_file(&file).unwrap_err();
    assert_eq!(err.kind(), LoadErrorKind::IncompatibleAbi);
    let line = err.to_string();
    assert_eq!(line.lines().count(), 1);
    assert!(
        line.contains("built against plugin ABI 2.0, this host speaks ABI 1.x"),
        "{line}"
    );
    assert!(
        line.contains(&format!(
            "rebuild the plugin against plugin-api {}",
            plugin_api::VERSION
        )),
        "{line}"
    );
}

#[test]
fn a_layout_changed_without_a_version_change_is_refused_with_the_report_on_request() {
    let dir = plugins_dir();
    let file = Variant::of("example-plugins/hello")
        .edit_api("src/abi.rs", "pub kind: u32,", "pub kind: u64,")
        .edit_api(
            "src/abi.rs",
            "kind: kind.code(),",
            "kind: u64::from(kind.code()),",
        )
        .edit_api(
            "src/error.rs",
            "kind: err.kind.code(),",
            "kind: u64::from(err.kind.code()),",
        )
        .edit_api(
            "src/error.rs",
            "ErrorKind::from_code(err.kind)",
            "ErrorKind::from_code(err.kind as u32)",
        )
        .build_into(dir.path(), "libhello.so");
    let host = Host::new(HostOptions::default()).unwrap();
    let err = host.load_file(&file).unwrap_err();
    assert_eq!(err.kind(), LoadErrorKind::IncompatibleAbi);
    assert_eq!(err.to_string().lines().count(), 1, "{err}");
    assert!(err.message().contains("layout differs"), "{err}");
    let detail = err.detail().expect("abi_stable's report is kept");
    assert!(detail.lines().count() > 5, "{detail}");

    // And the host still loads the real thing afterwards.
    host.load_file(&e2e::install(
        &e2e::built().hello,
        dir.path(),
        "libhello2.so",
    ))
    .unwrap();
    assert_eq!(greet(&host), "Hello, Ada!");
}
