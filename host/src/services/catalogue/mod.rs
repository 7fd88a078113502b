//! The plugin catalogue of a fleet (PostgreSQL): `host publish` checks a plugin file and
//! stores it; every host's agent writes it into its plugins directory, where the normal
//! path loads it; `--canary N` rolls it out to N hosts first.

mod agent;
mod check;
mod error;
mod fleet;
mod local;
mod rollout;
mod service;
mod settings;
mod store;

pub use check::{check_file, Checked};
pub use error::CatalogueError;
pub use fleet::{list_fleet, members, FleetMember, PublishedHere};
pub use service::{list_published, Catalogue};
pub use settings::CatalogueSettings;
pub use store::{HostReport, PublishedPlugin};
