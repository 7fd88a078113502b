//! The HTTP front end. (The API's server lives beside the dashboard, on branch h-http.)

pub mod dashboard;
