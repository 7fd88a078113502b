//! What the watcher lets others observe: whether its thread still answers
//! ([`WatcherProbe`], for the systemd watchdog) and reloads of host.toml ([`ConfigReload`],
//! told to a [`ReloadObserver`]).

use std::sync::mpsc;
use std::time::Duration;

use super::Message;
use crate::services::ping::Ping;

/// What a reload of host.toml came to, for whoever watches (`host serve` tells systemd).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigReload {
    /// The file changed: it is being read and applied.
    Started,
    /// Its plugin settings are applied.
    Applied,
    /// It could not be used; the previous configuration stays.
    Refused,
}

/// Told of each reload of host.toml; called on the watcher's threads, so it must be quick.
pub type ReloadObserver = std::sync::Arc<dyn Fn(ConfigReload) + Send + Sync>;

/// Asks the watcher's thread whether it still answers (see
/// [`Watcher::probe`](super::Watcher::probe)). At most one question is in flight: a wedged
/// thread is not sent more.
#[derive(Debug)]
pub struct WatcherProbe {
    pub(super) sender: mpsc::Sender<Message>,
    pub(super) ping: Ping,
}

impl WatcherProbe {
    /// Whether the watcher's thread answered within `within`.
    pub fn ping(&mut self, within: Duration) -> bool {
        let sender = &self.sender;
        self.ping
            .answered(within, |send| sender.send(Message::Ping(send)).is_ok())
    }
}
