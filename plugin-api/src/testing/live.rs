//! Log records sent live (ABI 1.5), seen through the [`Harness`]: the sink of `abi`, the
//! buffer of `context` and the `call_live` of `glue` together.

use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::testing::Harness;
use crate::{Context, InitContext, Level, Plugin, PluginError};

/// Records the sink of the test below has received; read by the plugin during its call.
static RECEIVED: AtomicUsize = AtomicUsize::new(0);

struct Chatty;

impl Plugin for Chatty {
    type Input = ();
    type Output = usize;
    fn init(_: &InitContext<'_>) -> Result<Self, PluginError> {
        Ok(Chatty)
    }
    fn execute(&self, ctx: &Context<'_>, _: ()) -> Result<usize, PluginError> {
        ctx.info("first");
        // What the host had received when the plugin got here, its call still running.
        let received = RECEIVED.load(Ordering::SeqCst);
        ctx.warn(format_args!("the host had {received}"));
        Ok(received)
    }
    fn callbacks(callbacks: &mut crate::Callbacks<Self>) {
        callbacks.add("quiet", Chatty::quiet);
    }
}

impl Chatty {
    fn quiet(&self, ctx: &Context<'_>, _: ()) -> Result<(), PluginError> {
        ctx.debug("quietly");
        Ok(())
    }
}

#[test]
fn each_record_reaches_the_sink_as_it_is_written_and_still_comes_with_the_outcome() {
    let plugin = Harness::<Chatty>::new("chatty", serde_json::json!({})).unwrap();
    let live = RefCell::new(Vec::new());
    let outcome = plugin.call_live("execute", serde_json::json!(null), |record| {
        RECEIVED.fetch_add(1, Ordering::SeqCst);
        live.borrow_mut()
            .push((record.level, record.message.clone()));
    });
    assert_eq!(
        outcome.result.unwrap(),
        1,
        "the first record reached the sink before the call went on"
    );
    assert_eq!(
        *live.borrow(),
        [
            (Level::Info, "first".to_owned()),
            (Level::Warn, "the host had 1".to_owned())
        ]
    );
    let kept: Vec<_> = outcome.logs.iter().map(|r| r.message.as_str()).collect();
    assert_eq!(
        kept,
        ["first", "the host had 1"],
        "the outcome keeps them all"
    );

    // A plain call sends nothing anywhere but the outcome.
    let plain = plugin.execute(serde_json::json!(null));
    assert_eq!(plain.logs.len(), 2);
    assert_eq!(RECEIVED.load(Ordering::SeqCst), 2);
}

#[test]
fn a_sink_that_panics_never_unwinds_into_the_plugin() {
    let plugin = Harness::<Chatty>::new("chatty", serde_json::json!({})).unwrap();
    let calls = RefCell::new(0);
    let outcome = plugin.call_live("execute", serde_json::json!(null), |_| {
        *calls.borrow_mut() += 1;
        panic!("the host's sink failed");
    });
    assert!(outcome.result.is_ok(), "{:?}", outcome.result);
    assert_eq!(
        *calls.borrow(),
        2,
        "the sink is still called for each record"
    );
    assert_eq!(outcome.logs.len(), 2);
}

#[test]
fn a_named_callback_is_called_live_too() {
    let plugin = Harness::<Chatty>::new("chatty", serde_json::json!({})).unwrap();
    let live = RefCell::new(Vec::new());
    let outcome = plugin.call_live("quiet", serde_json::json!(null), |record| {
        live.borrow_mut().push(record.message.clone())
    });
    assert!(outcome.result.is_ok(), "{:?}", outcome.result);
    assert_eq!(*live.borrow(), ["quietly"]);
    let unknown = plugin.call_live("nope", serde_json::json!(null), |_| {});
    assert_eq!(
        unknown.result.unwrap_err().kind(),
        crate::ErrorKind::UnknownCallback
    );
}
