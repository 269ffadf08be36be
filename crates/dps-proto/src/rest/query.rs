//! The query string: parsed by the server, written by the clients.

use std::fmt;

use super::encoding::{decode_segment, encode_segment};

/// The query parameter every API requires ([`crate::api_version`]).
pub const API_VERSION: &str = "api-version";

/// Query-string parameters, percent-decoded, in order. `+` stays `+` (device ids may contain it;
/// no value this server reads may contain a space). Lookup is case-insensitive on the name.
///
/// `Display` writes `name=value&…` with both sides percent-encoded, so
/// `QueryParams::parse(Some(&q.to_string())) == q` for any parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueryParams(Vec<(String, String)>);

impl QueryParams {
    /// Parses `a=b&c=d` (a raw query string, without `?`). A name without `=` has an empty value;
    /// a component that is not UTF-8 after decoding is kept as sent.
    pub fn parse(query: Option<&str>) -> Self {
        let Some(q) = query else {
            return Self::default();
        };
        let decode = |s: &str| decode_segment(s).unwrap_or_else(|| s.to_string());
        Self(
            q.split('&')
                .filter(|p| !p.is_empty())
                .map(|p| match p.split_once('=') {
                    Some((k, v)) => (decode(k), decode(v)),
                    None => (decode(p), String::new()),
                })
                .collect(),
        )
    }

    /// Parameters to format, in the order given.
    pub fn from_pairs<K: Into<String>, V: Into<String>>(pairs: impl IntoIterator<Item = (K, V)>) -> Self {
        Self(pairs.into_iter().map(|(k, v)| (k.into(), v.into())).collect())
    }

    /// Appends a parameter.
    pub fn push(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.0.push((name.into(), value.into()));
    }

    /// Every value of `name` (case-insensitive), in order.
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The first value of `name` (case-insensitive).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The parameters, decoded, in order.
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Whether there are no parameters.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for QueryParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (k, v)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("&")?;
            }
            write!(f, "{}={}", encode_segment(k), encode_segment(v))?;
        }
        Ok(())
    }
}
