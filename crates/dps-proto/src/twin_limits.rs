//! IoT Hub's limits on twins and messages, and the one validator every writer of a twin uses:
//! the hub's registry API (`PUT`/`PATCH /twins/{id}`), the device's reported-property patches
//! over MQTT, provisioning's initial twin, and the DPS service API when an enrollment's or group's
//! `initialTwin` is stored (so that a device never fails to register because of its enrollment).
//!
//! The rules are IoT Hub's own (MicrosoftDocs azure-docs `iot-hub-devguide-device-twins.md`,
//! "Tags and properties format" and "Device twin size"; the limits IoT Edge's hub copies from IoT
//! Hub in `ReportedPropertiesValidator.cs`):
//!
//! * **Keys**: at most 1 KB of UTF-8; no control characters (C0, C1), `.`, `$` or space.
//! * **Values**: booleans, numbers, strings, objects and arrays; strings at most 4 KB of UTF-8;
//!   integers within ±2^52 (−4 503 599 627 370 496 ..= 4 503 599 627 370 495); arrays hold no
//!   `null` (IoT Edge refuses them as IoT Hub does; in an object `null` means "delete").
//! * **Depth**: objects nest at most 10 levels below `tags`, `properties.desired` or
//!   `properties.reported` (the docs' example `one.two…ten.property` is the deepest valid shape).
//!   Arrays count as a level too: IoT Hub documents objects only, and counting arrays keeps the
//!   walk bounded whatever the document.
//! * **Size**: each of `tags`, `properties.desired` and `properties.reported` at most 32 KB,
//!   measured as IoT Hub measures it (not the JSON text): for every property, the length of its
//!   key plus the size of its value, where strings count their UTF-8 bytes less control
//!   characters, numbers 8, booleans 4, `null` 0, and objects and arrays the sum of what they hold.
//!   Read-only `$version` and `$metadata` at the top of a section are not counted.
//!
//! `$version` and `$metadata` at the top of a section are what a client echoes back from a twin
//! it read (the get-modify-replace flow every SDK documents); they are read-only and ignored, as
//! the hub's merge already ignores them. Any other `$` key is refused: IoT Hub rejects
//! reported patches with `$`-keys (azure-iot-sdk-csharp e2e `Twin_ClientHandlesRejectionInvalidPropertyName`).
//!
//! Pure functions over `serde_json` values: no I/O, no clock.

use std::fmt;

use serde_json::{Map, Value};

use crate::model::service::InitialTwin;

/// Largest `tags`, `properties.desired` or `properties.reported` section, in IoT Hub's measure.
pub const SECTION_MAX_BYTES: usize = 32 * 1024;
/// Deepest nesting of objects (and arrays) below a section.
pub const MAX_DEPTH: usize = 10;
/// Longest key, UTF-8 bytes.
pub const KEY_MAX_BYTES: usize = 1024;
/// Longest string value, UTF-8 bytes.
pub const STRING_MAX_BYTES: usize = 4096;
/// Smallest integer IoT Hub stores (−2^52).
pub const INT_MIN: i64 = -4_503_599_627_370_496;
/// Largest integer IoT Hub stores (2^52 − 1).
pub const INT_MAX: i64 = 4_503_599_627_370_495;
/// Largest device-to-cloud message: body plus application and system properties (IoT Hub's
/// 256 KB; the Python SDK's `TELEMETRY_MESSAGE_SIZE_LIMIT` is 262 144).
pub const D2C_MAX_BYTES: usize = 256 * 1024;
/// Largest cloud-to-device message: body plus properties (IoT Hub's 64 KB).
pub const C2D_MAX_BYTES: usize = 64 * 1024;

/// Most bytes of JSON a section may take when stored, whatever IoT Hub's measure says. IoT Hub
/// does not count control characters, so by its measure alone a section of 4 KB strings of
/// control characters (each stored as six bytes, `\u0001`) would be "empty" however many patches
/// added to it. Four times [`SECTION_MAX_BYTES`] is beyond what any section within IoT Hub's
/// limit takes otherwise (numbers, counted 8, take at most 24 characters plus their key's quotes
/// and separator), so only documents relying on uncounted control characters meet it.
pub const SECTION_MAX_STORED_BYTES: usize = 4 * SECTION_MAX_BYTES;

/// Keys at the top of a section that are read-only echoes of what the hub returned; ignored.
const READ_ONLY_KEYS: [&str; 2] = ["$version", "$metadata"];
/// What IoT Hub counts for a number and for a boolean.
const NUMBER_SIZE: usize = 8;
const BOOL_SIZE: usize = 4;

/// One of the three size-limited parts of a twin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Section {
    /// `tags` (service only).
    Tags,
    /// `properties.desired` (written by the service, read by the device).
    Desired,
    /// `properties.reported` (written by the device).
    Reported,
}

impl Section {
    /// The section's path in a twin document, used in error messages.
    pub fn path(self) -> &'static str {
        match self {
            Section::Tags => "tags",
            Section::Desired => "properties.desired",
            Section::Reported => "properties.reported",
        }
    }
}

impl fmt::Display for Section {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.path())
    }
}

/// Why a twin document or patch breaks IoT Hub's rules. Each variant names the field (its JSON
/// path, e.g. `properties.reported.a.b`), so the client learns exactly what to fix. IoT Hub
/// answers all of them with 400 `ArgumentInvalid` (400004).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TwinLimitError {
    /// A section (or the `properties` holder of `initialTwin`) is not a JSON object.
    #[error("{field} must be a JSON object, got {found}")]
    NotAnObject {
        /// JSON path of the field.
        field: String,
        /// JSON type found (`a string`, `an array`, ...).
        found: &'static str,
    },
    /// Objects (or arrays) nested deeper than [`MAX_DEPTH`] below the section.
    #[error("{path} is nested {depth} levels deep; twin documents nest at most {limit} levels")]
    TooDeep {
        /// JSON path of the value that is too deep.
        path: String,
        /// Its depth below the section.
        depth: usize,
        /// [`MAX_DEPTH`].
        limit: usize,
    },
    /// A key longer than [`KEY_MAX_BYTES`].
    #[error("key at {path} is {len} bytes long; twin keys are at most {limit} bytes")]
    KeyTooLong {
        /// JSON path of the key (truncated key shown).
        path: String,
        /// Its UTF-8 length.
        len: usize,
        /// [`KEY_MAX_BYTES`].
        limit: usize,
    },
    /// A key containing a character IoT Hub forbids (control characters, `.`, `$`, space).
    #[error("key {key:?} at {path} contains {ch:?}; twin keys may not contain control characters, '.', '$' or ' '")]
    KeyInvalid {
        /// JSON path of the object holding the key.
        path: String,
        /// The key.
        key: String,
        /// The forbidden character.
        ch: char,
    },
    /// A string value longer than [`STRING_MAX_BYTES`].
    #[error("string at {path} is {len} bytes long; twin string values are at most {limit} bytes")]
    StringTooLong {
        /// JSON path of the value.
        path: String,
        /// Its UTF-8 length.
        len: usize,
        /// [`STRING_MAX_BYTES`].
        limit: usize,
    },
    /// An integer outside [`INT_MIN`]..=[`INT_MAX`].
    #[error("integer {value} at {path} is out of range; twin integers are between {INT_MIN} and {INT_MAX}")]
    IntegerOutOfRange {
        /// JSON path of the value.
        path: String,
        /// The value as written.
        value: String,
    },
    /// `null` inside an array.
    #[error("array at {path} contains null; twin arrays may not contain null")]
    NullInArray {
        /// JSON path of the array.
        path: String,
    },
    /// The section's JSON would be larger than [`SECTION_MAX_STORED_BYTES`] (only possible with
    /// many control characters, which IoT Hub's measure does not count).
    #[error("{field} would take {size} bytes of JSON; at most {limit} are stored per twin section (control characters, which IoT Hub's size does not count, count here)")]
    StoredTooLarge {
        /// JSON path of the section.
        field: String,
        /// Its serialized size.
        size: usize,
        /// [`SECTION_MAX_STORED_BYTES`].
        limit: usize,
    },
    /// The section would be larger than [`SECTION_MAX_BYTES`] (after applying the patch).
    #[error("{field} would be {size} bytes; IoT Hub allows at most {limit} bytes per twin section")]
    TooLarge {
        /// The section.
        section: Section,
        /// Its JSON path (`properties.reported`, `initialTwin.tags`).
        field: String,
        /// Its size in IoT Hub's measure.
        size: usize,
        /// [`SECTION_MAX_BYTES`].
        limit: usize,
    },
}

/// Checks a section document or a patch of it: keys, value types and lengths, depth. `null`
/// leaves are accepted (in a patch they delete; in a document they are dropped). Top-level
/// `$version`/`$metadata` are ignored. Size is checked separately, on the result, with
/// [`check_size`], because a patch's effect on size depends on what it lands on.
pub fn validate(section: Section, doc: &Map<String, Value>) -> Result<(), TwinLimitError> {
    let mut path = String::from(section.path());
    walk_object(doc, &mut path, 0, true)
}

/// [`validate`] plus [`check_size`]: for whole documents (twin replace, initial twin).
pub fn validate_document(section: Section, doc: &Map<String, Value>) -> Result<(), TwinLimitError> {
    validate(section, doc)?;
    check_size(section, doc).map(drop)
}

/// The section's size in IoT Hub's measure (see the module docs).
pub fn section_size(doc: &Map<String, Value>) -> usize {
    doc.iter()
        .filter(|(k, _)| !READ_ONLY_KEYS.contains(&k.as_str()))
        .map(|(k, v)| text_size(k) + value_size(v))
        .sum()
}

/// Refuses a section larger than [`SECTION_MAX_BYTES`] in IoT Hub's measure, or whose JSON is
/// larger than [`SECTION_MAX_STORED_BYTES`]; returns its size in IoT Hub's measure otherwise.
pub fn check_size(section: Section, doc: &Map<String, Value>) -> Result<usize, TwinLimitError> {
    let size = section_size(doc);
    if size > SECTION_MAX_BYTES {
        return Err(TwinLimitError::TooLarge {
            section,
            field: section.path().to_string(),
            size,
            limit: SECTION_MAX_BYTES,
        });
    }
    let stored = json_len(doc);
    if stored > SECTION_MAX_STORED_BYTES {
        return Err(TwinLimitError::StoredTooLarge {
            field: section.path().to_string(),
            size: stored,
            limit: SECTION_MAX_STORED_BYTES,
        });
    }
    Ok(size)
}

/// Length of `doc` serialized as compact JSON, without building the text.
fn json_len(doc: &Map<String, Value>) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    // Writing a `Map` to a sink that never fails cannot fail.
    serde_json::to_writer(&mut c, doc).expect("serializing a JSON map to a counter");
    c.0
}

/// The object at `field`, if present: `None` for absent or `null`, an error naming the field for
/// any other non-object (`"tags": "hello"`).
pub fn section_object<'a>(
    field: &str,
    value: Option<&'a Value>,
) -> Result<Option<&'a Map<String, Value>>, TwinLimitError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m)),
        Some(other) => Err(TwinLimitError::NotAnObject {
            field: field.to_string(),
            found: type_name(other),
        }),
    }
}

/// Checks an enrollment's or group's `initialTwin` as the hub will store it: `tags` and
/// `properties.desired` must be objects (or absent) and each must pass [`validate_document`].
/// Field names in errors are prefixed `initialTwin.`.
pub fn validate_initial_twin(twin: &InitialTwin) -> Result<(), TwinLimitError> {
    let prefixed = |e: TwinLimitError| prefix_paths(e, "initialTwin.");
    if let Some(tags) = section_object("initialTwin.tags", twin.tags.as_ref())? {
        validate_document(Section::Tags, tags).map_err(prefixed)?;
    }
    let desired = twin.properties.as_ref().and_then(|p| p.desired.as_ref());
    if let Some(desired) = section_object("initialTwin.properties.desired", desired)? {
        validate_document(Section::Desired, desired).map_err(prefixed)?;
    }
    Ok(())
}

/// The size of a message as IoT Hub limits it: body plus the keys and values of its properties.
pub fn message_size<'a>(body: usize, properties: impl IntoIterator<Item = (&'a str, &'a str)>) -> usize {
    body + properties.into_iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
}

fn prefix_paths(e: TwinLimitError, prefix: &str) -> TwinLimitError {
    let p = |s: String| format!("{prefix}{s}");
    match e {
        TwinLimitError::TooDeep { path, depth, limit } => TwinLimitError::TooDeep {
            path: p(path),
            depth,
            limit,
        },
        TwinLimitError::KeyTooLong { path, len, limit } => TwinLimitError::KeyTooLong {
            path: p(path),
            len,
            limit,
        },
        TwinLimitError::KeyInvalid { path, key, ch } => TwinLimitError::KeyInvalid { path: p(path), key, ch },
        TwinLimitError::StringTooLong { path, len, limit } => TwinLimitError::StringTooLong {
            path: p(path),
            len,
            limit,
        },
        TwinLimitError::IntegerOutOfRange { path, value } => TwinLimitError::IntegerOutOfRange { path: p(path), value },
        TwinLimitError::NullInArray { path } => TwinLimitError::NullInArray { path: p(path) },
        TwinLimitError::TooLarge {
            section,
            field,
            size,
            limit,
        } => TwinLimitError::TooLarge {
            section,
            field: p(field),
            size,
            limit,
        },
        TwinLimitError::StoredTooLarge { field, size, limit } => TwinLimitError::StoredTooLarge {
            field: p(field),
            size,
            limit,
        },
        // Already a full field name.
        other @ TwinLimitError::NotAnObject { .. } => other,
    }
}

/// Walks an object whose own depth below the section is `depth` (0 for the section itself).
fn walk_object(obj: &Map<String, Value>, path: &mut String, depth: usize, top: bool) -> Result<(), TwinLimitError> {
    for (key, value) in obj {
        if top && READ_ONLY_KEYS.contains(&key.as_str()) {
            continue;
        }
        check_key(key, path)?;
        let len = path.len();
        path.push('.');
        path.push_str(key);
        walk_value(value, path, depth + 1, false)?;
        path.truncate(len);
    }
    Ok(())
}

/// Walks a value at `depth` below the section (objects and arrays at depth > [`MAX_DEPTH`] are
/// refused). `in_array`: `null` is not allowed.
fn walk_value(value: &Value, path: &mut String, depth: usize, in_array: bool) -> Result<(), TwinLimitError> {
    match value {
        Value::Null if in_array => Err(TwinLimitError::NullInArray {
            path: path.rsplit_once('[').map_or(path.as_str(), |(a, _)| a).to_string(),
        }),
        Value::Null | Value::Bool(_) => Ok(()),
        Value::Number(n) => {
            let in_range = match (n.as_i64(), n.as_u64()) {
                (Some(i), _) => (INT_MIN..=INT_MAX).contains(&i),
                (None, Some(_)) => false,
                // A float: any finite value JSON can carry.
                (None, None) => true,
            };
            if in_range {
                Ok(())
            } else {
                Err(TwinLimitError::IntegerOutOfRange {
                    path: path.clone(),
                    value: n.to_string(),
                })
            }
        }
        Value::String(s) => {
            if s.len() > STRING_MAX_BYTES {
                return Err(TwinLimitError::StringTooLong {
                    path: path.clone(),
                    len: s.len(),
                    limit: STRING_MAX_BYTES,
                });
            }
            Ok(())
        }
        Value::Object(m) => {
            too_deep(path, depth)?;
            walk_object(m, path, depth, false)
        }
        Value::Array(items) => {
            too_deep(path, depth)?;
            for (i, item) in items.iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                walk_value(item, path, depth + 1, true)?;
                path.truncate(len);
            }
            Ok(())
        }
    }
}

fn too_deep(path: &str, depth: usize) -> Result<(), TwinLimitError> {
    if depth > MAX_DEPTH {
        return Err(TwinLimitError::TooDeep {
            path: path.to_string(),
            depth,
            limit: MAX_DEPTH,
        });
    }
    Ok(())
}

fn check_key(key: &str, path: &str) -> Result<(), TwinLimitError> {
    if key.len() > KEY_MAX_BYTES {
        let shown: String = key.chars().take(16).collect();
        return Err(TwinLimitError::KeyTooLong {
            path: format!("{path}.{shown}…"),
            len: key.len(),
            limit: KEY_MAX_BYTES,
        });
    }
    if let Some(ch) = key.chars().find(|c| c.is_control() || matches!(c, '.' | '$' | ' ')) {
        return Err(TwinLimitError::KeyInvalid {
            path: path.to_string(),
            key: key.to_string(),
            ch,
        });
    }
    Ok(())
}

/// UTF-8 bytes of the characters IoT Hub counts (all but control characters).
fn text_size(s: &str) -> usize {
    s.chars().filter(|c| !c.is_control()).map(char::len_utf8).sum()
}

fn value_size(v: &Value) -> usize {
    match v {
        Value::Null => 0,
        Value::Bool(_) => BOOL_SIZE,
        Value::Number(_) => NUMBER_SIZE,
        Value::String(s) => text_size(s),
        Value::Object(m) => m.iter().map(|(k, v)| text_size(k) + value_size(v)).sum(),
        Value::Array(a) => a.iter().map(value_size).sum(),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::service::InitialTwinProperties;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    /// An object nested `n` levels: `{"l1": {"l2": ... {"leaf": 1}}}`.
    fn nested(n: usize) -> Value {
        let mut v = json!({"leaf": 1});
        for i in (1..=n).rev() {
            v = json!({ format!("l{i}"): v });
        }
        v
    }

    #[test]
    fn size_is_iot_hubs_measure() {
        // "ab" (2) + "xyz" (3); "n" (1) + 8; "b" (1) + 4; "o" (1) + "k" (1) + 8; "arr" (3) + 8 + 1.
        let doc = obj(json!({"ab": "xyz", "n": 1.5, "b": true, "o": {"k": 2}, "arr": [7, "z"], "nul": null}));
        assert_eq!(section_size(&doc), 5 + 9 + 5 + 10 + 12 + 3);
        // Control characters are not counted; multi-byte characters count their UTF-8 bytes.
        assert_eq!(section_size(&obj(json!({"k": "a\u{1}\u{85}é"}))), 1 + 1 + 2);
        // Read-only echoes at the top are not counted.
        assert_eq!(
            section_size(&obj(json!({"$version": 4, "$metadata": {"$lastUpdated": "x"}, "a": 1}))),
            9
        );
    }

    #[test]
    fn size_limit_is_inclusive() {
        // One key "k" and a 4096-byte string is 4097; 7 of them plus padding reach the limit.
        let mut doc = Map::new();
        let mut size = 0;
        let mut i = 0;
        while size + 6 + STRING_MAX_BYTES <= SECTION_MAX_BYTES {
            let k = format!("k{i:05}");
            size += k.len() + STRING_MAX_BYTES;
            doc.insert(k, Value::String("x".repeat(STRING_MAX_BYTES)));
            i += 1;
        }
        let rest = SECTION_MAX_BYTES - size - 1;
        doc.insert("p".into(), Value::String("y".repeat(rest)));
        assert_eq!(check_size(Section::Reported, &doc), Ok(SECTION_MAX_BYTES));
        validate_document(Section::Reported, &doc).unwrap();
        doc.insert("q".into(), Value::Bool(true));
        assert_eq!(
            check_size(Section::Reported, &doc),
            Err(TwinLimitError::TooLarge {
                section: Section::Reported,
                field: "properties.reported".into(),
                size: SECTION_MAX_BYTES + 5,
                limit: SECTION_MAX_BYTES
            })
        );
        let msg = validate_document(Section::Reported, &doc).unwrap_err().to_string();
        assert!(msg.contains("properties.reported") && msg.contains("32768"), "{msg}");
    }

    #[test]
    fn control_characters_cannot_grow_a_section_unseen() {
        // Thirty 4 KB strings of control characters: 0 bytes each in IoT Hub's measure, six
        // bytes per character as JSON.
        let doc: Map<String, Value> = (0..30)
            .map(|i| (format!("c{i:02}"), Value::String("\u{1}".repeat(STRING_MAX_BYTES))))
            .collect();
        validate(Section::Reported, &doc).unwrap();
        assert_eq!(section_size(&doc), 30 * 3);
        let err = check_size(Section::Reported, &doc).unwrap_err();
        assert!(
            matches!(err, TwinLimitError::StoredTooLarge { size, limit, .. } if size > limit && limit == 4 * SECTION_MAX_BYTES),
            "{err}"
        );
        // A full section of the bulkiest ordinary values stays under the stored bound: keys of
        // one character with numbers as long as JSON writes them.
        let doc: Map<String, Value> = (0..SECTION_MAX_BYTES / 14)
            .map(|i| (format!("{i:05}"), json!(-1.234_567_890_123_456_7e-300)))
            .collect();
        assert!(section_size(&doc) <= SECTION_MAX_BYTES);
        check_size(Section::Reported, &doc).unwrap();
    }

    #[test]
    fn depth_ten_is_the_deepest() {
        validate(Section::Tags, &obj(nested(MAX_DEPTH))).unwrap();
        let err = validate(Section::Tags, &obj(nested(MAX_DEPTH + 1))).unwrap_err();
        assert_eq!(
            err,
            TwinLimitError::TooDeep {
                path: "tags.l1.l2.l3.l4.l5.l6.l7.l8.l9.l10.l11".into(),
                depth: 11,
                limit: 10
            }
        );
        // Arrays count as a level.
        let mut v = json!([1]);
        for _ in 0..MAX_DEPTH {
            v = json!([v]);
        }
        assert!(matches!(
            validate(Section::Desired, &obj(json!({ "a": v }))),
            Err(TwinLimitError::TooDeep { depth: 11, .. })
        ));
    }

    #[test]
    fn key_rules() {
        for (key, ch) in [
            ("a.b", '.'),
            ("$x", '$'),
            ("a b", ' '),
            ("a\u{7}", '\u{7}'),
            ("c\u{9c}", '\u{9c}'),
        ] {
            let err = validate(Section::Reported, &obj(json!({"ok": { key: 1 }}))).unwrap_err();
            assert_eq!(
                err,
                TwinLimitError::KeyInvalid {
                    path: "properties.reported.ok".into(),
                    key: key.into(),
                    ch
                }
            );
        }
        validate(Section::Reported, &obj(json!({"é-_:#@/": 1, "": 2}))).unwrap();
        validate(Section::Reported, &obj(json!({ "k".repeat(KEY_MAX_BYTES): 1 }))).unwrap();
        let err = validate(Section::Reported, &obj(json!({ "k".repeat(KEY_MAX_BYTES + 1): 1 }))).unwrap_err();
        assert!(
            matches!(
                err,
                TwinLimitError::KeyTooLong {
                    len: 1025,
                    limit: 1024,
                    ..
                }
            ),
            "{err}"
        );
        // `$version`/`$metadata` are read-only echoes at the top only.
        validate(
            Section::Desired,
            &obj(json!({"$version": 3, "$metadata": {"$lastUpdated": "t"}})),
        )
        .unwrap();
        assert!(validate(Section::Desired, &obj(json!({"a": {"$version": 3}}))).is_err());
        assert!(validate(Section::Desired, &obj(json!({"$other": 3}))).is_err());
    }

    #[test]
    fn value_rules() {
        validate(Section::Tags, &obj(json!({ "s": "x".repeat(STRING_MAX_BYTES) }))).unwrap();
        assert!(matches!(
            validate(Section::Tags, &obj(json!({"a": {"s": "x".repeat(STRING_MAX_BYTES + 1)}}))),
            Err(TwinLimitError::StringTooLong { ref path, len: 4097, .. }) if path == "tags.a.s"
        ));
        validate(Section::Tags, &obj(json!({"min": INT_MIN, "max": INT_MAX, "f": 1e300}))).unwrap();
        for v in [json!(INT_MAX + 1), json!(INT_MIN - 1), json!(u64::MAX)] {
            assert!(matches!(
                validate(Section::Tags, &obj(json!({ "n": v }))),
                Err(TwinLimitError::IntegerOutOfRange { .. })
            ));
        }
        // null deletes in an object, but is not a value in an array.
        validate(
            Section::Reported,
            &obj(json!({"gone": null, "a": [1, "x", {"k": null}]})),
        )
        .unwrap();
        assert_eq!(
            validate(Section::Reported, &obj(json!({"a": {"b": [1, null]}}))),
            Err(TwinLimitError::NullInArray {
                path: "properties.reported.a.b".into()
            })
        );
    }

    #[test]
    fn initial_twin_types_are_checked_and_named() {
        let tw = |tags: Option<Value>, desired: Option<Value>| InitialTwin {
            tags,
            properties: Some(InitialTwinProperties { desired }),
        };
        validate_initial_twin(&tw(Some(json!({"site": "a"})), Some(json!({"fw": 1})))).unwrap();
        validate_initial_twin(&tw(None, Some(Value::Null))).unwrap();
        validate_initial_twin(&InitialTwin::default()).unwrap();
        let err = validate_initial_twin(&tw(Some(json!("hello")), None)).unwrap_err();
        assert_eq!(err.to_string(), "initialTwin.tags must be a JSON object, got a string");
        let err = validate_initial_twin(&tw(None, Some(json!([1])))).unwrap_err();
        assert_eq!(
            err.to_string(),
            "initialTwin.properties.desired must be a JSON object, got an array"
        );
        let err = validate_initial_twin(&tw(Some(json!({"a.b": 1})), None)).unwrap_err();
        assert!(err.to_string().contains("initialTwin.tags"), "{err}");
        let err = validate_initial_twin(&tw(None, Some(nested(11)))).unwrap_err();
        assert!(
            matches!(&err, TwinLimitError::TooDeep { path, .. } if path.starts_with("initialTwin.properties.desired.l1")),
            "{err}"
        );
        let big: Map<String, Value> = (0..9)
            .map(|i| (format!("k{i}"), Value::String("x".repeat(STRING_MAX_BYTES))))
            .collect();
        assert_eq!(
            validate_initial_twin(&tw(Some(Value::Object(big)), None)),
            Err(TwinLimitError::TooLarge {
                section: Section::Tags,
                field: "initialTwin.tags".into(),
                size: 9 * (2 + STRING_MAX_BYTES),
                limit: SECTION_MAX_BYTES
            })
        );
    }

    #[test]
    fn message_size_counts_properties() {
        assert_eq!(message_size(10, [("k", "vv"), ("$.ct", "json")]), 10 + 3 + 8);
        assert_eq!(message_size(0, []), 0);
    }
}
