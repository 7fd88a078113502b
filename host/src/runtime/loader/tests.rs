//! Tests of what the loader reads from a plugin's declarations.

use super::*;

#[test]
fn a_plugin_that_does_not_name_its_panic_strategy_unwinds() {
    // Built before the field existed (issue 16 r): taken as unwinding, as before.
    let old = Declarations::parse(r#"{"schedules":[]}"#).unwrap();
    assert_eq!(old.panic, PanicStrategy::Unwind);
    let abort = Declarations::parse(r#"{"schedules":[],"panic":"abort"}"#).unwrap();
    assert_eq!(abort.panic, PanicStrategy::Abort);
    let unwind = Declarations::parse(r#"{"panic":"unwind"}"#).unwrap();
    assert_eq!(unwind.panic, PanicStrategy::Unwind);
    // Metadata as an older host or worker sends it.
    let metadata: Metadata = serde_json::from_value(serde_json::json!({
        "name": "hello", "version": "0.1.0", "description": "", "callbacks": [],
        "api_version": "0.1.0", "abi_version": "1.3",
    }))
    .unwrap();
    assert_eq!(metadata.panic, PanicStrategy::Unwind);
    assert_eq!(PanicStrategy::Abort.to_string(), "abort");
}
