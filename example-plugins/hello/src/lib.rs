//! `hello`: the smallest complete plugin.
//!
//! * `execute` says what the plugin can do.
//! * `greet` takes `{"name": "Ada"}` and answers `{"message": "Hello, Ada!"}`. The greeting
//!   comes from the configuration (`[plugins.hello] config = { greeting = "Hi" }`).
//! * `wait` takes `{"ms": 200}` and takes that long, checking between steps whether the
//!   caller cancelled or its deadline passed, as long-running plugins should.
//! * `fail` returns an error of kind `failed`; `panic` panics. Both exist to show what a
//!   caller sees when a plugin goes wrong.
//! * `shout` is a *typed* callback: bytes in, bytes out, no JSON (the fastest call there
//!   is, through `Host::typed`): given `Ada`, it writes `HELLO, ADA!`.

use plugin_api::{export_plugin, Callbacks, Context, InitContext, Output, Plugin, PluginError};
use serde::{Deserialize, Serialize};

/// The plugin: remembers its greeting.
pub struct Hello {
    greeting: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "default_greeting")]
    greeting: String,
}

fn default_greeting() -> String {
    "Hello".to_owned()
}

/// Input of `greet`.
#[derive(Deserialize)]
pub struct GreetInput {
    name: String,
}

/// Input of `wait`.
#[derive(Deserialize)]
pub struct WaitInput {
    ms: u64,
}

/// Output of `greet`.
#[derive(Serialize)]
pub struct Greeting {
    message: String,
}

impl Plugin for Hello {
    type Input = serde_json::Value;
    type Output = serde_json::Value;

    fn init(ctx: &InitContext<'_>) -> Result<Self, PluginError> {
        let config: Config = ctx.config()?;
        ctx.debug(format_args!("greeting with {:?}", config.greeting));
        Ok(Hello {
            greeting: config.greeting,
        })
    }

    fn execute(
        &self,
        _ctx: &Context<'_>,
        _input: serde_json::Value,
    ) -> Result<Self::Output, PluginError> {
        Ok(serde_json::json!({
            "plugin": "hello",
            "about": "Greets people. Call `greet` with {\"name\": \"...\"}.",
            "callbacks": ["greet", "wait", "fail", "panic", "shout"],
        }))
    }

    fn callbacks(callbacks: &mut Callbacks<Self>) {
        callbacks
            .add("greet", Hello::greet)
            .add("wait", Hello::wait)
            .add("fail", Hello::fail)
            .add("panic", Hello::panic)
            .add_bytes("shout", Hello::shout);
    }
}

impl Hello {
    fn shout(
        &self,
        _ctx: &Context<'_>,
        name: &[u8],
        out: &mut Output<'_>,
    ) -> Result<(), PluginError> {
        out.extend_from_slice(&self.greeting.as_bytes().to_ascii_uppercase());
        out.extend_from_slice(b", ");
        out.extend_from_slice(&name.to_ascii_uppercase());
        out.push(b'!');
        Ok(())
    }

    fn greet(&self, ctx: &Context<'_>, input: GreetInput) -> Result<Greeting, PluginError> {
        if input.name.trim().is_empty() {
            return Err(PluginError::invalid_input("name must not be empty"));
        }
        ctx.info(format_args!("greeting {}", input.name));
        Ok(Greeting {
            message: format!("{}, {}!", self.greeting, input.name),
        })
    }

    fn wait(&self, ctx: &Context<'_>, input: WaitInput) -> Result<serde_json::Value, PluginError> {
        let start = std::time::Instant::now();
        let total = std::time::Duration::from_millis(input.ms);
        while start.elapsed() < total {
            ctx.check_cancelled()?;
            std::thread::sleep((total - start.elapsed()).min(std::time::Duration::from_millis(5)));
        }
        Ok(serde_json::json!({ "waited_ms": start.elapsed().as_millis() as u64 }))
    }

    fn fail(&self, ctx: &Context<'_>, _input: serde_json::Value) -> Result<(), PluginError> {
        ctx.warn("about to fail on purpose");
        Err(PluginError::failed("failed on purpose"))
    }

    fn panic(&self, _ctx: &Context<'_>, _input: serde_json::Value) -> Result<(), PluginError> {
        panic!("hello panicked on purpose")
    }
}

export_plugin!(Hello);

#[cfg(test)]
mod tests {
    use super::*;
    use plugin_api::testing::Harness;
    use plugin_api::ErrorKind;
    use serde_json::json;

    #[test]
    fn greets_with_the_configured_greeting() {
        let hello = Harness::<Hello>::new("hello", json!({"greeting": "Hi"})).unwrap();
        let outcome = hello.call("greet", json!({"name": "Ada"}));
        assert_eq!(outcome.result.unwrap(), json!({"message": "Hi, Ada!"}));
        assert_eq!(outcome.logs[0].message, "greeting Ada");
    }

    #[test]
    fn rejects_an_empty_name_and_unknown_config() {
        let hello = Harness::<Hello>::new("hello", json!({})).unwrap();
        let err = hello
            .call("greet", json!({"name": " "}))
            .result
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        let err = Harness::<Hello>::new("hello", json!({"greting": "typo"}))
            .err()
            .unwrap();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert!(err.message().contains("greting"), "{err}");
    }
}
