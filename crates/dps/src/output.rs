//! Human and JSON output. Human output is a short summary (aligned `name  value` lines, or a
//! table for lists); `--json` prints the server's JSON unchanged, so scripts see the REST API's
//! field names.

use std::io::Write;

use serde_json::Value;

/// Writes one line to stdout. When stdout is a closed pipe (`dps hub monitor-events | head`),
/// exits quietly instead of panicking as `println!` would.
pub fn line(text: &str) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{text}").and_then(|_| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
    }
}

/// `println!` through [`line`].
macro_rules! out {
    ($($t:tt)*) => { $crate::output::line(&format!($($t)*)) };
}
pub(crate) use out;

/// Pretty JSON on stdout.
pub fn json(v: &Value) {
    line(&serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string()));
}

/// The `--json` acknowledgement of a deletion, `{"deleted": true, "<id_field>": id}` (the
/// server answers a DELETE with no body, so there is no model to print).
pub fn deleted(id_field: &str, id: &str) {
    let mut v = serde_json::Map::new();
    v.insert("deleted".into(), Value::Bool(true));
    v.insert(id_field.into(), Value::from(id));
    json(&Value::Object(v));
}

/// A typed answer as the JSON the server sent, for printing (`--json`) and for [`s`].
pub fn to_value<T: serde::Serialize>(v: &T) -> anyhow::Result<Value> {
    Ok(serde_json::to_value(v)?)
}

/// One answer: its JSON with `--json`, else the `(label, path)` fields of it (paths as [`s`]
/// reads them) as aligned lines.
pub fn show(v: &Value, json_out: bool, labelled: &[(&str, &str)]) {
    if json_out {
        json(v);
    } else {
        let rows: Vec<(&str, String)> = labelled.iter().map(|(label, path)| (*label, s(v, path))).collect();
        fields(&rows);
    }
}

/// A list answer (a JSON array): itself with `--json`, else a table with a column per
/// `(header, path)` (paths as [`s`] reads them).
pub fn list(v: &Value, json_out: bool, columns: &[(&str, &str)]) {
    if json_out {
        json(v);
        return;
    }
    let headers: Vec<&str> = columns.iter().map(|(h, _)| *h).collect();
    let rows: Vec<Vec<String>> = v
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|item| columns.iter().map(|(_, path)| s(item, path)).collect())
                .collect()
        })
        .unwrap_or_default();
    table(&headers, &rows);
}

/// Aligned `name  value` lines; empty values are skipped.
pub fn fields(rows: &[(&str, String)]) {
    let width = rows
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, _)| k.len())
        .max()
        .unwrap_or(0);
    for (k, v) in rows.iter().filter(|(_, v)| !v.is_empty()) {
        line(&format!("{k:<width$}  {v}"));
    }
}

/// A table with a header row; columns sized to their content.
pub fn table(headers: &[&str], rows: &[Vec<String>]) {
    if rows.is_empty() {
        line("(none)");
        return;
    }
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let row = |cells: Vec<String>| {
        let last = cells.len().saturating_sub(1);
        let text: Vec<String> = cells
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                if i == last {
                    c
                } else {
                    format!("{c:<w$}", w = widths[i])
                }
            })
            .collect();
        line(text.join("  ").trim_end());
    };
    row(headers.iter().map(|h| h.to_string()).collect());
    for r in rows {
        row(r.clone());
    }
}

/// A string field of `v` at a `/`-separated path, or "" (numbers and booleans rendered).
pub fn s(v: &Value, path: &str) -> String {
    let mut cur = v;
    for key in path.split('/') {
        match cur.get(key) {
            Some(x) => cur = x,
            None => return String::new(),
        }
    }
    match cur {
        Value::Null => String::new(),
        Value::String(x) => x.clone(),
        Value::Array(a) => a
            .iter()
            .map(|x| x.as_str().map(str::to_string).unwrap_or_else(|| x.to_string()))
            .collect::<Vec<_>>()
            .join(", "),
        other => other.to_string(),
    }
}

/// Compact JSON of a field, or "".
pub fn compact(v: &Value, path: &str) -> String {
    let mut cur = v;
    for key in path.split('/') {
        match cur.get(key) {
            Some(x) => cur = x,
            None => return String::new(),
        }
    }
    if cur.is_null() {
        String::new()
    } else {
        cur.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_paths() {
        let v = serde_json::json!({"a": {"b": "x", "n": 3, "l": ["h1", "h2"]}, "z": null});
        assert_eq!(s(&v, "a/b"), "x");
        assert_eq!(s(&v, "a/n"), "3");
        assert_eq!(s(&v, "a/l"), "h1, h2");
        assert_eq!(s(&v, "a/missing"), "");
        assert_eq!(s(&v, "z"), "");
        assert_eq!(compact(&v, "a/l"), r#"["h1","h2"]"#);
    }
}
