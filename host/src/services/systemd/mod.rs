//! Running under systemd: the notification protocol ([`Notifier`]: `READY=1`,
//! `RELOADING=1`, `STOPPING=1`, `STATUS=`), socket activation ([`Activated`]), and the
//! watchdog that pings only while the host's loops answer ([`Watchdog`]), and the unit files
//! `host service unit` prints ([`service_unit`], [`socket_unit`]). `host serve`
//! wires them; nothing here runs plugin code.

mod activation;
mod notify;
mod unit;
mod watchdog;

pub use activation::{Activated, ActivationError, LISTEN_FDS_START, MAX_LISTEN_FDS};
pub use notify::{Notifier, NotifyError, NOTIFY_SOCKET};
pub use unit::{service_unit, socket_unit, UnitOptions, UNIT_NAME};
pub use watchdog::{
    interval_from_env, Probe, RuntimeProbe, Watchdog, WatchdogOptions, STATUS_EVERY,
};
