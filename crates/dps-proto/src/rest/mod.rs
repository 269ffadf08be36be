//! The REST grammar of the three HTTPS APIs on one port — the DPS device API, the DPS service API
//! and the embedded hub's registry API: which paths and methods exist, their ids, how ids are
//! percent-encoded, the query string and `api-version`. Both directions live here, so the server
//! and every client (the device client, the CLI, the load generator) speak one grammar:
//!
//! - parse: [`Route::parse`] (method and raw path → a typed [`Route`] with its decoded ids, or
//!   [`NoRoute`]), [`QueryParams::parse`];
//! - format: [`Route::method`], [`Route::path`], [`Route::path_and_query`] (with the API's
//!   `api-version`), [`QueryParams`]'s `Display`.
//!
//! Formatting then parsing gives back the same route and the same query, whatever the ids hold
//! (`/`, `%`, spaces, non-ASCII): the tests below and the `rest_path` fuzz target check it.

mod encoding;
mod query;
mod route;

pub use encoding::{decode_segment, encode_segment, segments};
pub use query::{QueryParams, API_VERSION};
pub use route::{Api, NoRoute, PolicyOwner, Route, FILE_UPLOAD_CONTAINER};

#[cfg(test)]
mod tests;
