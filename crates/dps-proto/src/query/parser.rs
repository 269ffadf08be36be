//! Recursive descent from tokens to a [`Query`]. Precedence, loosest first: `OR`, `AND`, `NOT`,
//! comparisons and `IN`/`NIN`, `+ -`, `* / %`, unary minus.

use serde_json::Value;

use super::lexer::{Tok, Token};
use super::{Aggregate, BinOp, Expr, Projection, Query, QueryError, Select, MAX_QUERY_CHARS};

/// Deepest nesting of parentheses, `NOT` and unary minus: a bound on recursion for any input.
const MAX_DEPTH: usize = 64;

pub(super) fn parse(text: &str) -> Result<Query, QueryError> {
    if text.chars().count() > MAX_QUERY_CHARS {
        return Err(QueryError::at(
            MAX_QUERY_CHARS,
            format!("a query may have at most {MAX_QUERY_CHARS} characters"),
        ));
    }
    let tokens = super::lexer::tokens(text)?;
    let mut p = Parser {
        tokens,
        pos: 0,
        depth: 0,
    };
    let q = p.query()?;
    p.expect_end()?;
    Ok(q)
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
    depth: usize,
}

impl Parser {
    fn peek(&self) -> &Tok {
        &self.tokens[self.pos].kind
    }

    fn at(&self) -> usize {
        self.tokens[self.pos].at
    }

    fn bump(&mut self) -> Tok {
        let t = self.tokens[self.pos].kind.clone();
        if self.pos + 1 < self.tokens.len() {
            self.pos += 1;
        }
        t
    }

    fn is_keyword(&self, kw: &str) -> bool {
        matches!(self.peek(), Tok::Ident(s) if s.eq_ignore_ascii_case(kw))
    }

    fn eat_keyword(&mut self, kw: &str) -> bool {
        let yes = self.is_keyword(kw);
        if yes {
            self.bump();
        }
        yes
    }

    fn eat_sym(&mut self, sym: &str) -> bool {
        let yes = matches!(self.peek(), Tok::Sym(s) if *s == sym);
        if yes {
            self.bump();
        }
        yes
    }

    fn error(&self, expected: &str) -> QueryError {
        let found = match self.peek() {
            Tok::Ident(s) => format!("'{s}'"),
            Tok::Number(n) => format!("the number {n}"),
            Tok::Str(s) => format!("the string '{s}'"),
            Tok::Sym(s) => format!("'{s}'"),
            Tok::End => "the end of the query".into(),
        };
        QueryError::at(self.at(), format!("expected {expected}, found {found}"))
    }

    fn expect_keyword(&mut self, kw: &str) -> Result<(), QueryError> {
        if self.eat_keyword(kw) {
            Ok(())
        } else {
            Err(self.error(kw))
        }
    }

    fn expect_sym(&mut self, sym: &str) -> Result<(), QueryError> {
        if self.eat_sym(sym) {
            Ok(())
        } else {
            Err(self.error(&format!("'{sym}'")))
        }
    }

    fn expect_end(&self) -> Result<(), QueryError> {
        match self.peek() {
            Tok::End => Ok(()),
            _ => Err(self.error("the end of the query")),
        }
    }

    fn ident(&mut self, what: &str) -> Result<String, QueryError> {
        match self.peek() {
            Tok::Ident(s) if !is_reserved(s) => {
                let s = s.clone();
                self.bump();
                Ok(s)
            }
            _ => Err(self.error(what)),
        }
    }

    fn query(&mut self) -> Result<Query, QueryError> {
        self.expect_keyword("SELECT")?;
        let top = if self.eat_keyword("TOP") {
            match self.bump() {
                Tok::Number(n) if n >= 0.0 && n.fract() == 0.0 && n <= u32::MAX as f64 => Some(n as u64),
                _ => {
                    self.pos -= 1;
                    return Err(self.error("a whole number after TOP"));
                }
            }
        } else {
            None
        };
        let select = if self.eat_sym("*") {
            Select::All
        } else {
            let mut items = vec![self.projection()?];
            while self.eat_sym(",") {
                items.push(self.projection()?);
            }
            Select::Items(items)
        };
        self.expect_keyword("FROM")?;
        let from_at = self.at();
        let mut from = vec![self.ident("a collection (devices, devices.modules, enrollments, …)")?];
        while self.eat_sym(".") {
            from.push(self.ident("a collection name after '.'")?);
        }
        let filter = if self.eat_keyword("WHERE") {
            Some(self.expr()?)
        } else {
            None
        };
        let mut group_by = Vec::new();
        if self.eat_keyword("GROUP") {
            self.expect_keyword("BY")?;
            loop {
                group_by.push(self.path()?);
                if !self.eat_sym(",") {
                    break;
                }
            }
        }
        Ok(Query {
            top,
            select,
            from: from.join("."),
            from_at,
            filter,
            group_by,
        })
    }

    fn projection(&mut self) -> Result<Projection, QueryError> {
        let at = self.at();
        let aggregate = match self.peek() {
            Tok::Ident(name) => Aggregate::parse(name)
                .filter(|_| matches!(self.tokens.get(self.pos + 1).map(|t| &t.kind), Some(Tok::Sym("(")))),
            _ => None,
        };
        let expr = match aggregate {
            Some(agg) => {
                self.bump();
                self.expect_sym("(")?;
                let arg = if agg == Aggregate::Count {
                    None
                } else {
                    Some(Box::new(self.path()?))
                };
                self.expect_sym(")")?;
                Expr::Aggregate(agg, arg)
            }
            None => self.expr()?,
        };
        let alias = if self.eat_keyword("AS") {
            Some(self.ident("a name after AS")?)
        } else {
            None
        };
        Ok(Projection { expr, alias, at })
    }

    fn expr(&mut self) -> Result<Expr, QueryError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(QueryError::at(self.at(), format!("nested more than {MAX_DEPTH} deep")));
        }
        let e = self.or();
        self.depth -= 1;
        e
    }

    fn or(&mut self) -> Result<Expr, QueryError> {
        let mut left = self.and()?;
        while self.eat_keyword("OR") {
            let right = self.and()?;
            left = Expr::Binary(BinOp::Or, Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr, QueryError> {
        let mut left = self.not()?;
        while self.eat_keyword("AND") {
            let right = self.not()?;
            left = Expr::Binary(BinOp::And, Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn not(&mut self) -> Result<Expr, QueryError> {
        if self.eat_keyword("NOT") {
            self.depth += 1;
            if self.depth > MAX_DEPTH {
                return Err(QueryError::at(self.at(), format!("nested more than {MAX_DEPTH} deep")));
            }
            let inner = self.not();
            self.depth -= 1;
            return Ok(Expr::Not(Box::new(inner?)));
        }
        self.comparison()
    }

    fn comparison(&mut self) -> Result<Expr, QueryError> {
        let left = self.additive()?;
        let op = match self.peek() {
            Tok::Sym("=") => BinOp::Eq,
            Tok::Sym("!=") | Tok::Sym("<>") => BinOp::Ne,
            Tok::Sym("<") => BinOp::Lt,
            Tok::Sym(">") => BinOp::Gt,
            Tok::Sym("<=") => BinOp::Le,
            Tok::Sym(">=") => BinOp::Ge,
            Tok::Ident(k) if k.eq_ignore_ascii_case("IN") || k.eq_ignore_ascii_case("NIN") => {
                let negated = k.eq_ignore_ascii_case("NIN");
                self.bump();
                let list = self.array()?;
                return Ok(Expr::In(Box::new(left), list, negated));
            }
            Tok::Ident(k) if k.eq_ignore_ascii_case("NOT") => {
                // `x NOT IN [...]`
                if matches!(self.tokens.get(self.pos + 1).map(|t| &t.kind), Some(Tok::Ident(i)) if i.eq_ignore_ascii_case("IN"))
                {
                    self.bump();
                    self.bump();
                    let list = self.array()?;
                    return Ok(Expr::In(Box::new(left), list, true));
                }
                return Ok(left);
            }
            _ => return Ok(left),
        };
        self.bump();
        let right = self.additive()?;
        Ok(Expr::Binary(op, Box::new(left), Box::new(right)))
    }

    fn additive(&mut self) -> Result<Expr, QueryError> {
        let mut left = self.multiplicative()?;
        loop {
            let op = match self.peek() {
                Tok::Sym("+") => BinOp::Add,
                Tok::Sym("-") => BinOp::Sub,
                _ => return Ok(left),
            };
            self.bump();
            let right = self.multiplicative()?;
            left = Expr::Binary(op, Box::new(left), Box::new(right));
        }
    }

    fn multiplicative(&mut self) -> Result<Expr, QueryError> {
        let mut left = self.unary()?;
        loop {
            let op = match self.peek() {
                Tok::Sym("*") => BinOp::Mul,
                Tok::Sym("/") => BinOp::Div,
                Tok::Sym("%") => BinOp::Rem,
                _ => return Ok(left),
            };
            self.bump();
            let right = self.unary()?;
            left = Expr::Binary(op, Box::new(left), Box::new(right));
        }
    }

    fn unary(&mut self) -> Result<Expr, QueryError> {
        if self.eat_sym("-") {
            self.depth += 1;
            if self.depth > MAX_DEPTH {
                return Err(QueryError::at(self.at(), format!("nested more than {MAX_DEPTH} deep")));
            }
            let inner = self.unary();
            self.depth -= 1;
            return Ok(Expr::Binary(
                BinOp::Sub,
                Box::new(Expr::Const(Value::from(0))),
                Box::new(inner?),
            ));
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<Expr, QueryError> {
        match self.peek().clone() {
            Tok::Number(n) => {
                self.bump();
                Ok(Expr::Const(number(n)))
            }
            Tok::Str(s) => {
                self.bump();
                Ok(Expr::Const(Value::String(s)))
            }
            Tok::Sym("(") => {
                self.bump();
                let e = self.expr()?;
                self.expect_sym(")")?;
                Ok(e)
            }
            Tok::Sym("[") => Ok(Expr::Const(Value::Array(self.array()?))),
            Tok::Ident(word) => {
                if let Some(c) = keyword_constant(&word) {
                    self.bump();
                    return Ok(c);
                }
                if matches!(self.tokens.get(self.pos + 1).map(|t| &t.kind), Some(Tok::Sym("("))) {
                    let at = self.at();
                    self.bump();
                    self.bump();
                    let mut args = Vec::new();
                    if !self.eat_sym(")") {
                        loop {
                            args.push(self.expr()?);
                            if self.eat_sym(")") {
                                break;
                            }
                            self.expect_sym(",")?;
                        }
                    }
                    return super::eval::function(&word, args, at);
                }
                self.path()
            }
            _ => Err(self.error("a property path, a constant, a function or '('")),
        }
    }

    /// `[c, c, …]` of constants (strings, numbers, true/false/null, nested arrays).
    fn array(&mut self) -> Result<Vec<Value>, QueryError> {
        self.expect_sym("[")?;
        let mut items = Vec::new();
        if self.eat_sym("]") {
            return Ok(items);
        }
        loop {
            let negative = self.eat_sym("-");
            let item = match self.bump() {
                Tok::Number(n) => number(if negative { -n } else { n }),
                Tok::Str(s) if !negative => Value::String(s),
                Tok::Ident(w) if !negative && keyword_constant(&w).is_some() => match keyword_constant(&w) {
                    Some(Expr::Const(v)) => v,
                    _ => Value::Null,
                },
                Tok::Sym("[") if !negative => {
                    self.pos -= 1;
                    Value::Array(self.array()?)
                }
                _ => {
                    self.pos -= 1;
                    return Err(self.error("a constant in the array"));
                }
            };
            items.push(item);
            if self.eat_sym("]") {
                return Ok(items);
            }
            self.expect_sym(",")?;
        }
    }

    /// `a.b.c`, `a['b c']`, `a[0]`.
    fn path(&mut self) -> Result<Expr, QueryError> {
        let at = self.at();
        let mut segments = vec![self.ident("a property path")?];
        loop {
            if self.eat_sym(".") {
                segments.push(self.ident("a property name after '.'")?);
            } else if self.eat_sym("[") {
                match self.bump() {
                    Tok::Str(s) => segments.push(s),
                    Tok::Number(n) if n >= 0.0 && n.fract() == 0.0 => segments.push(format!("{}", n as u64)),
                    _ => {
                        self.pos -= 1;
                        return Err(self.error("a property name or index in '[ ]'"));
                    }
                }
                self.expect_sym("]")?;
            } else {
                return Ok(Expr::Path(segments, at));
            }
        }
    }
}

/// Words that cannot be property names where a name is expected.
fn is_reserved(word: &str) -> bool {
    [
        "SELECT", "FROM", "WHERE", "GROUP", "BY", "AS", "AND", "OR", "NOT", "IN", "NIN", "TOP",
    ]
    .iter()
    .any(|k| k.eq_ignore_ascii_case(word))
}

fn keyword_constant(word: &str) -> Option<Expr> {
    let w = word.to_ascii_lowercase();
    Some(match w.as_str() {
        "true" => Expr::Const(Value::Bool(true)),
        "false" => Expr::Const(Value::Bool(false)),
        "null" => Expr::Const(Value::Null),
        "undefined" => Expr::Undefined,
        _ => return None,
    })
}

/// A number as JSON: whole numbers as integers (so `5` equals a stored `5`), others as floats.
fn number(n: f64) -> Value {
    if n.fract() == 0.0 && n.abs() < 9.0e15 {
        Value::from(n as i64)
    } else {
        serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number)
    }
}
