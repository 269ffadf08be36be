//! Percent-encoding of path segments and query components.
//!
//! Formatting escapes everything but RFC 3986 unreserved characters (as the Node and C SDKs do,
//! and more than Python, which keeps `:`), so an id can never open a segment, a query or a
//! fragment. Parsing accepts what every SDK sends: `%XX` in either hex case is decoded, `+` stays
//! `+` (device ids may contain it), and a `%` not followed by two hex digits is kept literally,
//! as lenient servers do.

use percent_encoding::percent_decode_str;

/// An id (or query name or value) as one percent-encoded URL component.
pub fn encode_segment(id: &str) -> String {
    crate::sas::encode_component(id)
}

/// Decodes `%XX` escapes; `None` when the result is not valid UTF-8.
pub fn decode_segment(s: &str) -> Option<String> {
    percent_decode_str(s).decode_utf8().ok().map(|c| c.into_owned())
}

/// Splits a raw (still percent-encoded) path into decoded segments, ignoring the leading `/` and
/// one trailing `/`. `None` when a segment is not valid UTF-8 after decoding.
pub fn segments(path: &str) -> Option<Vec<String>> {
    let p = path.strip_prefix('/').unwrap_or(path);
    let p = p.strip_suffix('/').unwrap_or(p);
    if p.is_empty() {
        return Some(Vec::new());
    }
    p.split('/').map(decode_segment).collect()
}
