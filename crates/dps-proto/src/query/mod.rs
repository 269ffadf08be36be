//! The IoT Hub query language (`SELECT … FROM devices [WHERE …] [GROUP BY …]`), as IoT Hub
//! evaluates it over twins and dps also over DPS's enrollments, groups and registration records
//! (docs/query-language-facts.md).
//!
//! [`Query::parse`] turns the text into a syntax tree, or a [`QueryError`] naming the character
//! where it went wrong. The tree is evaluated over JSON documents (a twin as the registry API
//! shows it, an enrollment, …) with the language's rules: a property that is not there is
//! *undefined*, comparisons are between primitives of one type only (anything else is
//! undefined), `AND`/`OR`/`NOT` are three-valued, and a document matches only when its condition
//! is exactly `true`. The fixed top-level fields (`deviceId`, `status`, …) are matched without
//! regard to case, as IoT Hub's sample `SELECT DeviceId …` shows; names inside tags and
//! properties are matched exactly. No I/O: stores and the hub feed documents in.

mod eval;
mod lexer;
mod parser;

use serde_json::Value;

pub use eval::{Aggregator, Func};

/// The longest query IoT Hub accepts, in characters.
pub const MAX_QUERY_CHARS: usize = 8192;

/// Why a query was refused: what was wrong and where (a character offset, 0-based).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the query is invalid at character {position}: {message}")]
pub struct QueryError {
    /// Offset of the character where the problem was found.
    pub position: usize,
    /// What was wrong.
    pub message: String,
}

impl QueryError {
    fn at(position: usize, message: String) -> Self {
        Self { position, message }
    }
}

/// A parsed query.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    /// `TOP n`: at most this many results in all.
    pub top: Option<u64>,
    /// The select list.
    pub select: Select,
    /// The collection, as written (`devices`, `devices.modules`, `enrollments`, …).
    pub from: String,
    /// Where the collection's name starts (for errors about it).
    pub from_at: usize,
    /// The `WHERE` condition.
    pub filter: Option<Expr>,
    /// The `GROUP BY` paths.
    pub group_by: Vec<Expr>,
}

/// The select list.
#[derive(Debug, Clone, PartialEq)]
pub enum Select {
    /// `*`: whole documents.
    All,
    /// Projections and aggregates.
    Items(Vec<Projection>),
}

/// One item of the select list: an expression (a path, usually, or an aggregate) and its name.
#[derive(Debug, Clone, PartialEq)]
pub struct Projection {
    /// What is selected.
    pub expr: Expr,
    /// `AS name`.
    pub alias: Option<String>,
    /// Where it starts.
    pub at: usize,
}

/// An aggregate function of the select list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aggregate {
    /// `COUNT()`
    Count,
    /// `SUM(path)`
    Sum,
    /// `AVG(path)`
    Avg,
    /// `MIN(path)`
    Min,
    /// `MAX(path)`
    Max,
}

impl Aggregate {
    fn parse(name: &str) -> Option<Self> {
        Some(match name.to_ascii_uppercase().as_str() {
            "COUNT" => Aggregate::Count,
            "SUM" => Aggregate::Sum,
            "AVG" => Aggregate::Avg,
            "MIN" => Aggregate::Min,
            "MAX" => Aggregate::Max,
            _ => return None,
        })
    }

    /// Its name as a column when it has no alias.
    fn default_name(self) -> &'static str {
        match self {
            Aggregate::Count => "$1",
            Aggregate::Sum => "sum",
            Aggregate::Avg => "avg",
            Aggregate::Min => "min",
            Aggregate::Max => "max",
        }
    }
}

/// A binary operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    /// `AND`
    And,
    /// `OR`
    Or,
    /// `=`
    Eq,
    /// `!=`, `<>`
    Ne,
    /// `<`
    Lt,
    /// `>`
    Gt,
    /// `<=`
    Le,
    /// `>=`
    Ge,
    /// `+`
    Add,
    /// `-`
    Sub,
    /// `*`
    Mul,
    /// `/`
    Div,
    /// `%`
    Rem,
}

/// An expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// A constant.
    Const(Value),
    /// `undefined`.
    Undefined,
    /// A property path (`tags.location.region`), with where it starts.
    Path(Vec<String>, usize),
    /// `a op b`.
    Binary(BinOp, Box<Expr>, Box<Expr>),
    /// `NOT a`.
    Not(Box<Expr>),
    /// `a IN [..]` (`NIN`, `NOT IN` when the flag is set).
    In(Box<Expr>, Vec<Value>, bool),
    /// A function call.
    Call(Func, Vec<Expr>),
    /// An aggregate of the select list, over a path (`None` for `COUNT()`).
    Aggregate(Aggregate, Option<Box<Expr>>),
}

impl Query {
    /// Parses a query. Empty text, and DPS's old `*`, mean `SELECT * FROM {default_from}`.
    pub fn parse(text: &str, default_from: &str) -> Result<Query, QueryError> {
        let trimmed = text.trim();
        if trimmed.is_empty() || trimmed == "*" {
            return Ok(Query {
                top: None,
                select: Select::All,
                from: default_from.to_string(),
                from_at: 0,
                filter: None,
                group_by: Vec::new(),
            });
        }
        let q = parser::parse(text)?;
        q.check()?;
        Ok(q)
    }

    /// Whether the query collects results into groups or totals (`COUNT()`, `GROUP BY`) rather
    /// than answering document by document.
    pub fn is_aggregate(&self) -> bool {
        !self.group_by.is_empty()
            || matches!(&self.select, Select::Items(items) if items.iter().any(|p| matches!(p.expr, Expr::Aggregate(..))))
    }

    /// Whether `doc` satisfies the `WHERE` condition (exactly `true`; no condition: always).
    pub fn matches(&self, doc: &Value) -> bool {
        self.filter
            .as_ref()
            .is_none_or(|f| eval::eval(f, doc) == Some(Value::Bool(true)))
    }

    /// What a matching document contributes to the answer: itself for `SELECT *`, else an object
    /// of the selected values (undefined ones left out), named by their alias or the path's last
    /// name as the document spells it.
    pub fn project(&self, doc: &Value) -> Value {
        match &self.select {
            Select::All => doc.clone(),
            Select::Items(items) => {
                let mut out = serde_json::Map::new();
                for item in items {
                    let name = column_name(item, doc);
                    if let Some(v) = eval::eval(&item.expr, doc) {
                        out.insert(name, v);
                    }
                }
                Value::Object(out)
            }
        }
    }

    /// An [`Aggregator`] for this query's groups and totals.
    pub fn aggregator(&self) -> Aggregator<'_> {
        Aggregator::new(self)
    }

    /// The values the condition allows for the top-level field `field` when it is pinned by
    /// equalities at the top of the condition (`field = 'x'`, `field IN ['x', 'y']`, joined with
    /// `AND` to anything): a store can look those up by key instead of scanning. `None` when the
    /// condition does not pin the field.
    pub fn pinned_values(&self, field: &str) -> Option<Vec<Value>> {
        eval::pinned(self.filter.as_ref()?, field)
    }

    /// The first path under `root` (a top-level field, matched without case: `tags`) that the
    /// condition pins at its top with equalities, as [`Query::pinned_values`] does for a field:
    /// the path's segments below `root` and the values allowed.
    pub fn pinned_under(&self, root: &str) -> Option<(Vec<String>, Vec<Value>)> {
        eval::pinned_under(self.filter.as_ref()?, root)
    }

    /// The prefix the condition requires of the top-level string field `field`
    /// (`STARTSWITH(field, 'p')` at the top of the condition, joined with `AND`).
    pub fn required_prefix(&self, field: &str) -> Option<String> {
        eval::prefix(self.filter.as_ref()?, field)
    }

    /// Refuses what parses but cannot be answered: an aggregate inside a condition, a selected
    /// value that is neither grouped nor aggregated next to aggregates.
    fn check(&self) -> Result<(), QueryError> {
        if let Some(f) = &self.filter {
            if let Some(at) = eval::aggregate_at(f) {
                return Err(QueryError::at(
                    at,
                    "aggregates belong in the select list, not in WHERE".into(),
                ));
            }
        }
        if let Select::Items(items) = &self.select {
            if self.is_aggregate() {
                for item in items {
                    let grouped = matches!(item.expr, Expr::Aggregate(..))
                        || self.group_by.iter().any(|g| same_path(g, &item.expr));
                    if !grouped {
                        return Err(QueryError::at(
                            item.at,
                            "a selected value must be an aggregate or one of the GROUP BY paths".into(),
                        ));
                    }
                }
            }
        } else if !self.group_by.is_empty() {
            return Err(QueryError::at(
                self.from_at,
                "GROUP BY needs a select list of the grouped paths and aggregates, not *".into(),
            ));
        }
        Ok(())
    }
}

/// Whether two expressions are the same path (top-level names compared without case).
fn same_path(a: &Expr, b: &Expr) -> bool {
    match (a, b) {
        (Expr::Path(x, _), Expr::Path(y, _)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .enumerate()
                    .all(|(i, (p, q))| if i == 0 { p.eq_ignore_ascii_case(q) } else { p == q })
        }
        _ => false,
    }
}

/// The name of a selected value in a result: its alias, else the path's last name as the
/// document spells it (`DeviceId` → `deviceId`), else the aggregate's default name.
fn column_name(item: &Projection, doc: &Value) -> String {
    if let Some(a) = &item.alias {
        return a.clone();
    }
    match &item.expr {
        Expr::Path(segments, _) => {
            if segments.len() == 1 {
                if let Some((k, _)) = doc
                    .as_object()
                    .and_then(|o| o.iter().find(|(k, _)| k.eq_ignore_ascii_case(&segments[0])))
                {
                    return k.clone();
                }
            }
            segments.last().cloned().unwrap_or_default()
        }
        Expr::Aggregate(a, _) => a.default_name().to_string(),
        _ => "$1".to_string(),
    }
}

#[cfg(test)]
mod tests;
