//! Evaluation of a [`Query`]'s expressions over a JSON document, and its aggregates.
//!
//! `None` is *undefined*: a missing property, a comparison between different types or with an
//! object, arithmetic on non-numbers. Undefined propagates through comparisons and `NOT`;
//! `false AND undefined` is false and `true OR undefined` true (three-valued logic).

use std::cmp::Ordering;
use std::collections::HashMap;

use serde_json::{Map, Value};

use super::{column_name, Aggregate, BinOp, Expr, Query, QueryError, Select};

/// A function of conditions. IoT Hub's twin queries know `IS_DEFINED`, `STARTSWITH` and
/// `ENDSWITH`; the underscore spellings (`STARTS_WITH`, which routing uses) and the other type
/// tests and string functions of the language are accepted too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Func {
    /// `IS_DEFINED(x)`: whether the property exists (even as `null`).
    IsDefined,
    /// `IS_NULL(x)`
    IsNull,
    /// `IS_STRING(x)`
    IsString,
    /// `IS_NUMBER(x)`
    IsNumber,
    /// `IS_BOOL(x)`
    IsBool,
    /// `IS_OBJECT(x)`
    IsObject,
    /// `IS_ARRAY(x)`
    IsArray,
    /// `IS_PRIMITIVE(x)`
    IsPrimitive,
    /// `STARTSWITH(s, prefix)`
    StartsWith,
    /// `ENDSWITH(s, suffix)`
    EndsWith,
    /// `CONTAINS(s, part)`
    Contains,
    /// `LOWER(s)`
    Lower,
    /// `UPPER(s)`
    Upper,
    /// `LENGTH(s)`
    Length,
}

/// A function call as the parser meets it: the name known and the argument count right.
pub(super) fn function(name: &str, args: Vec<Expr>, at: usize) -> Result<Expr, QueryError> {
    let (f, arity) = match name.to_ascii_uppercase().as_str() {
        "IS_DEFINED" => (Func::IsDefined, 1),
        "IS_NULL" => (Func::IsNull, 1),
        "IS_STRING" => (Func::IsString, 1),
        "IS_NUMBER" => (Func::IsNumber, 1),
        "IS_BOOL" => (Func::IsBool, 1),
        "IS_OBJECT" => (Func::IsObject, 1),
        "IS_ARRAY" => (Func::IsArray, 1),
        "IS_PRIMITIVE" => (Func::IsPrimitive, 1),
        "STARTSWITH" | "STARTS_WITH" => (Func::StartsWith, 2),
        "ENDSWITH" | "ENDS_WITH" => (Func::EndsWith, 2),
        "CONTAINS" => (Func::Contains, 2),
        "LOWER" => (Func::Lower, 1),
        "UPPER" => (Func::Upper, 1),
        "LENGTH" => (Func::Length, 1),
        _ => return Err(QueryError::at(at, format!("unknown function '{name}'"))),
    };
    if args.len() != arity {
        return Err(QueryError::at(
            at,
            format!("{name} takes {arity} argument(s), got {}", args.len()),
        ));
    }
    if f == Func::IsDefined && !matches!(args[0], Expr::Path(..)) {
        return Err(QueryError::at(at, "IS_DEFINED takes a property path".into()));
    }
    Ok(Expr::Call(f, args))
}

/// The property at `path` in `doc`: the first name matched without case at the top level (the
/// twin's fixed fields), the rest exactly; array elements by index.
fn lookup<'a>(doc: &'a Value, path: &[String]) -> Option<&'a Value> {
    let (first, rest) = path.split_first()?;
    let obj = doc.as_object()?;
    let mut cur = match obj.get(first) {
        Some(v) => v,
        None => obj
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(first))
            .map(|(_, v)| v)?,
    };
    for seg in rest {
        cur = match cur {
            Value::Object(m) => m.get(seg)?,
            Value::Array(a) => a.get(seg.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

fn is_primitive(v: &Value) -> bool {
    !matches!(v, Value::Object(_) | Value::Array(_))
}

/// Order of two primitives of one type; `None` across types, for objects, arrays and `null`s
/// compared by order.
fn compare(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64()?.partial_cmp(&y.as_f64()?),
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

/// Equality of primitives: `Some(false)` across types, `None` for objects and arrays.
fn equal(a: &Value, b: &Value) -> Option<bool> {
    if !is_primitive(a) || !is_primitive(b) {
        return None;
    }
    Some(match (a, b) {
        (Value::Null, Value::Null) => true,
        _ => compare(a, b) == Some(Ordering::Equal),
    })
}

fn number(n: f64) -> Option<Value> {
    if n.fract() == 0.0 && n.abs() < 9.0e15 {
        Some(Value::from(n as i64))
    } else {
        serde_json::Number::from_f64(n).map(Value::Number)
    }
}

pub(super) fn eval(e: &Expr, doc: &Value) -> Option<Value> {
    match e {
        Expr::Const(v) => Some(v.clone()),
        Expr::Undefined | Expr::Aggregate(..) => None,
        Expr::Path(p, _) => lookup(doc, p).cloned(),
        Expr::Not(inner) => match eval(inner, doc)? {
            Value::Bool(b) => Some(Value::Bool(!b)),
            _ => None,
        },
        Expr::Binary(BinOp::And, a, b) => {
            let (x, y) = (eval(a, doc), eval(b, doc));
            match (x, y) {
                (Some(Value::Bool(false)), _) | (_, Some(Value::Bool(false))) => Some(Value::Bool(false)),
                (Some(Value::Bool(true)), Some(Value::Bool(true))) => Some(Value::Bool(true)),
                _ => None,
            }
        }
        Expr::Binary(BinOp::Or, a, b) => {
            let (x, y) = (eval(a, doc), eval(b, doc));
            match (x, y) {
                (Some(Value::Bool(true)), _) | (_, Some(Value::Bool(true))) => Some(Value::Bool(true)),
                (Some(Value::Bool(false)), Some(Value::Bool(false))) => Some(Value::Bool(false)),
                _ => None,
            }
        }
        Expr::Binary(op, a, b) => {
            let (x, y) = (eval(a, doc)?, eval(b, doc)?);
            let truth = |b: bool| Some(Value::Bool(b));
            match op {
                BinOp::Eq => truth(equal(&x, &y)?),
                BinOp::Ne => truth(!equal(&x, &y)?),
                BinOp::Lt => truth(compare(&x, &y)? == Ordering::Less),
                BinOp::Gt => truth(compare(&x, &y)? == Ordering::Greater),
                BinOp::Le => truth(compare(&x, &y)? != Ordering::Greater),
                BinOp::Ge => truth(compare(&x, &y)? != Ordering::Less),
                arith => {
                    let (x, y) = (x.as_f64()?, y.as_f64()?);
                    number(match arith {
                        BinOp::Add => x + y,
                        BinOp::Sub => x - y,
                        BinOp::Mul => x * y,
                        BinOp::Div if y != 0.0 => x / y,
                        BinOp::Rem if y != 0.0 => x % y,
                        _ => return None,
                    })
                }
            }
        }
        Expr::In(a, list, negated) => {
            let x = eval(a, doc)?;
            if !is_primitive(&x) {
                return None;
            }
            let found = list.iter().any(|v| equal(&x, v) == Some(true));
            Some(Value::Bool(found != *negated))
        }
        Expr::Call(f, args) => call(*f, args, doc),
    }
}

fn call(f: Func, args: &[Expr], doc: &Value) -> Option<Value> {
    let b = |v: bool| Some(Value::Bool(v));
    let arg = eval(&args[0], doc);
    match f {
        Func::IsDefined => b(arg.is_some()),
        Func::IsNull => b(matches!(arg, Some(Value::Null))),
        Func::IsString => b(matches!(arg, Some(Value::String(_)))),
        Func::IsNumber => b(matches!(arg, Some(Value::Number(_)))),
        Func::IsBool => b(matches!(arg, Some(Value::Bool(_)))),
        Func::IsObject => b(matches!(arg, Some(Value::Object(_)))),
        Func::IsArray => b(matches!(arg, Some(Value::Array(_)))),
        Func::IsPrimitive => b(arg.as_ref().is_some_and(is_primitive)),
        Func::Lower => Some(Value::String(arg?.as_str()?.to_lowercase())),
        Func::Upper => Some(Value::String(arg?.as_str()?.to_uppercase())),
        Func::Length => Some(Value::from(arg?.as_str()?.chars().count())),
        Func::StartsWith | Func::EndsWith | Func::Contains => {
            let s = arg?;
            let part = eval(&args[1], doc)?;
            let (s, part) = (s.as_str()?, part.as_str()?);
            b(match f {
                Func::StartsWith => s.starts_with(part),
                Func::EndsWith => s.ends_with(part),
                _ => s.contains(part),
            })
        }
    }
}

/// The conjuncts of a condition (`a AND b AND c` → `[a, b, c]`).
fn conjuncts(e: &Expr) -> Vec<&Expr> {
    match e {
        Expr::Binary(BinOp::And, a, b) => {
            let mut v = conjuncts(a);
            v.extend(conjuncts(b));
            v
        }
        other => vec![other],
    }
}

fn is_field(e: &Expr, field: &str) -> bool {
    matches!(e, Expr::Path(p, _) if p.len() == 1 && p[0].eq_ignore_ascii_case(field))
}

/// See [`Query::pinned_values`].
pub(super) fn pinned(filter: &Expr, field: &str) -> Option<Vec<Value>> {
    pinned_by(filter, |p| is_field(p, field).then_some(())).map(|((), values)| values)
}

/// See [`Query::pinned_under`].
pub(super) fn pinned_under(filter: &Expr, root: &str) -> Option<(Vec<String>, Vec<Value>)> {
    pinned_by(filter, |e| match e {
        Expr::Path(p, _) if p.len() > 1 && p[0].eq_ignore_ascii_case(root) => Some(p[1..].to_vec()),
        _ => None,
    })
}

/// The first conjunct at the top of `filter` that pins an expression `select` accepts to
/// constants (`e = c`, `c = e`, `e IN [...]`): what `select` made of it, and the constants.
fn pinned_by<T>(filter: &Expr, select: impl Fn(&Expr) -> Option<T>) -> Option<(T, Vec<Value>)> {
    conjuncts(filter).into_iter().find_map(|c| match c {
        Expr::Binary(BinOp::Eq, a, b) => match (a.as_ref(), b.as_ref()) {
            (p, Expr::Const(v)) | (Expr::Const(v), p) => select(p).map(|t| (t, vec![v.clone()])),
            _ => None,
        },
        Expr::In(p, list, false) => select(p).map(|t| (t, list.clone())),
        _ => None,
    })
}

/// See [`Query::required_prefix`].
pub(super) fn prefix(filter: &Expr, field: &str) -> Option<String> {
    conjuncts(filter).into_iter().find_map(|c| match c {
        Expr::Call(Func::StartsWith, args) if is_field(&args[0], field) => match &args[1] {
            Expr::Const(Value::String(p)) => Some(p.clone()),
            _ => None,
        },
        _ => None,
    })
}

/// Where an aggregate sits inside `e`, if one does.
pub(super) fn aggregate_at(e: &Expr) -> Option<usize> {
    match e {
        Expr::Aggregate(_, arg) => Some(arg.as_deref().and_then(position).unwrap_or(0)),
        Expr::Binary(_, a, b) => aggregate_at(a).or_else(|| aggregate_at(b)),
        Expr::Not(a) | Expr::In(a, ..) => aggregate_at(a),
        Expr::Call(_, args) => args.iter().find_map(aggregate_at),
        _ => None,
    }
}

fn position(e: &Expr) -> Option<usize> {
    match e {
        Expr::Path(_, at) => Some(*at),
        _ => None,
    }
}

/// One aggregate's running state.
#[derive(Debug, Clone, Default)]
struct Acc {
    count: u64,
    sum: f64,
    numbers: u64,
    min: Option<Value>,
    max: Option<Value>,
}

impl Acc {
    fn add(&mut self, v: Option<Value>) {
        self.count += 1;
        let Some(v) = v else { return };
        if let Some(n) = v.as_f64() {
            self.sum += n;
            self.numbers += 1;
        }
        if self.min.as_ref().is_none_or(|m| compare(&v, m) == Some(Ordering::Less)) && is_primitive(&v) {
            self.min = Some(v.clone());
        }
        if self
            .max
            .as_ref()
            .is_none_or(|m| compare(&v, m) == Some(Ordering::Greater))
            && is_primitive(&v)
        {
            self.max = Some(v);
        }
    }

    fn result(&self, agg: Aggregate) -> Option<Value> {
        match agg {
            Aggregate::Count => Some(Value::from(self.count)),
            Aggregate::Sum => number(self.sum),
            Aggregate::Avg => (self.numbers > 0)
                .then(|| number(self.sum / self.numbers as f64))
                .flatten(),
            Aggregate::Min => self.min.clone(),
            Aggregate::Max => self.max.clone(),
        }
    }
}

/// Collects matching documents into the rows of an aggregate query, one group at a time in
/// memory (a group holds its key and one running state per aggregate, not its documents).
#[derive(Debug)]
pub struct Aggregator<'q> {
    query: &'q Query,
    /// Group key (the GROUP BY values as JSON text) → (first document's projected names and
    /// values, running aggregates), in the order groups were first seen.
    groups: HashMap<String, usize>,
    rows: Vec<(Map<String, Value>, Vec<Acc>)>,
}

impl<'q> Aggregator<'q> {
    pub(super) fn new(query: &'q Query) -> Self {
        Self {
            query,
            groups: HashMap::new(),
            rows: Vec::new(),
        }
    }

    fn items(&self) -> &'q [super::Projection] {
        match &self.query.select {
            Select::Items(items) => items,
            Select::All => &[],
        }
    }

    /// Adds a matching document.
    pub fn add(&mut self, doc: &Value) {
        let key: Vec<Option<Value>> = self.query.group_by.iter().map(|g| eval(g, doc)).collect();
        let key = serde_json::to_string(&key).unwrap_or_default();
        let items = self.items();
        let index = match self.groups.get(&key) {
            Some(i) => *i,
            None => {
                let mut grouped = Map::new();
                for item in items.iter().filter(|i| !matches!(i.expr, Expr::Aggregate(..))) {
                    if let Some(v) = eval(&item.expr, doc) {
                        grouped.insert(column_name(item, doc), v);
                    }
                }
                self.rows.push((grouped, vec![Acc::default(); items.len()]));
                self.groups.insert(key, self.rows.len() - 1);
                self.rows.len() - 1
            }
        };
        let accs = &mut self.rows[index].1;
        for (item, acc) in items.iter().zip(accs.iter_mut()) {
            if let Expr::Aggregate(_, arg) = &item.expr {
                acc.add(arg.as_ref().and_then(|a| eval(a, doc)));
            }
        }
    }

    /// The result rows: one per group (one in all without `GROUP BY`, even with no document).
    pub fn finish(mut self) -> Vec<Value> {
        let items = self.items();
        if self.rows.is_empty() && self.query.group_by.is_empty() {
            self.rows.push((Map::new(), vec![Acc::default(); items.len()]));
        }
        self.rows
            .into_iter()
            .map(|(mut row, accs)| {
                for (item, acc) in items.iter().zip(&accs) {
                    if let Expr::Aggregate(agg, _) = &item.expr {
                        if let Some(v) = acc.result(*agg) {
                            row.insert(column_name(item, &Value::Null), v);
                        }
                    }
                }
                Value::Object(row)
            })
            .collect()
    }
}
