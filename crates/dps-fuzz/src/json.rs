//! JSON round trips that tolerate serde_json's float parsing.
//!
//! Without its `float_roundtrip` feature (which this crate must not turn on: features unify
//! across the workspace, and the server would change), serde_json may parse a float one unit in
//! the last place away from the nearest value, so a printed-then-parsed float can differ in its
//! last bit. Everything else must round-trip exactly.

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

/// Whether `a` and `b` are the same JSON, floats equal to 1e-12 relative.
pub(crate) fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            if x.is_f64() || y.is_f64() {
                let (x, y) = (x.as_f64().unwrap_or(f64::NAN), y.as_f64().unwrap_or(f64::NAN));
                x == y || (x - y).abs() <= 1e-12 * x.abs().max(y.abs())
            } else {
                x == y
            }
        }
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|((kx, vx), (ky, vy))| kx == ky && same(vx, vy))
        }
        _ => a == b,
    }
}

/// Serializes `v`, parses the text back as `T` and serializes that: both serializations must be
/// the same JSON. This is the invariant "what the server echoes, it would accept and read the
/// same way".
pub(crate) fn round_trip<T: Serialize + DeserializeOwned>(v: &T, what: &str) {
    let first = serde_json::to_value(v).unwrap_or_else(|e| panic!("{what} does not serialize: {e}"));
    let text = serde_json::to_vec(&first).expect("a Value serializes");
    let back: T =
        serde_json::from_slice(&text).unwrap_or_else(|e| panic!("{what} as serialized does not parse back: {e}"));
    let second = serde_json::to_value(&back).expect("serialized once already");
    assert!(
        same(&first, &second),
        "{what} changed in a round trip:\n{first}\n{second}"
    );
}
