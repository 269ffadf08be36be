//! JSON models, camelCase as on the wire. Unknown input fields are ignored; absent optional
//! fields are omitted on output.

pub mod certificate;
pub mod credential_policy;
pub mod device;
pub mod hub;
pub mod revocation;
pub mod service;

/// A JSON body that does not fit its model: where, and what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", if .path.is_empty() { String::new() } else { format!("field '{}': ", .path) })]
pub struct JsonError {
    /// The offending field as a dotted path (`attestation.symmetricKey.primaryKey`, `enrollments[2].registrationId`);
    /// empty when the problem is the document itself (not JSON, wrong top-level type).
    pub path: String,
    /// serde's description (`invalid type: integer `5`, expected a string at line 1 column 30`).
    pub message: String,
}

/// Parses `body` as `T`, naming the field on a type error: models are strict (a wrong type is
/// an error, never a silent default), and the client is told which field to fix.
pub fn from_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, JsonError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        JsonError {
            path: if path == "." { String::new() } else { path },
            message: e.into_inner().to_string(),
        }
    })?;
    // Trailing garbage after the document.
    de.end().map_err(|e| JsonError {
        path: String::new(),
        message: e.to_string(),
    })?;
    Ok(value)
}

/// Defines a string enum whose input is matched case-insensitively (clients spell enum values
/// differently: `updateIfMatchEtag` vs `updateIfMatchETag`, `geolatency` vs `geoLatency`) and whose
/// output is the canonical Azure spelling.
macro_rules! ci_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $(#[doc = concat!("`", $text, "`.")] $(#[$vm])* $variant),+ }

        impl $name {
            /// Canonical spelling.
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $text),+ }
            }

            /// Case-insensitive parse.
            pub fn parse(s: &str) -> Option<Self> {
                $(if s.eq_ignore_ascii_case($text) { return Some(Self::$variant); })+
                None
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::parse(&s).ok_or_else(|| {
                    serde::de::Error::custom(format!(
                        "unknown {} '{}', expected one of: {}",
                        stringify!($name), s, [$($text),+].join(", ")
                    ))
                })
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}
pub(crate) use ci_enum;
