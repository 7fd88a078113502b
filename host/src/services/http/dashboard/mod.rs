//! The dashboard: static pages compiled into the binary, served at `/` and `/assets/...`.
//! They hold no data (every data request the page makes carries the bearer token), so these
//! routes need no token.

mod embedded;
mod routes;

pub use routes::routes;
