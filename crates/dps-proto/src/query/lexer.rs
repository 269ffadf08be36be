//! Tokens of the query language. Keywords are identifiers compared without case by the parser;
//! strings take single or double quotes with `\'`, `\"`, `\\` and `\uXXXX` escapes; numbers are
//! decimal (with a fraction or exponent) or `0x` hexadecimal.

use super::QueryError;

/// One token and the character offset where it starts.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Token {
    pub kind: Tok,
    pub at: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Tok {
    Ident(String),
    Number(f64),
    Str(String),
    /// Punctuation and operators, as written (`<>` and `!=` both kept).
    Sym(&'static str),
    End,
}

const SYMBOLS: [&str; 19] = [
    "<=", ">=", "<>", "!=", "=", "<", ">", "*", ",", ".", "(", ")", "[", "]", "+", "-", "/", "%", "!",
];

pub(super) fn tokens(text: &str) -> Result<Vec<Token>, QueryError> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        let at = i;
        let kind = if c.is_ascii_alphabetic() || c == '_' || c == '$' {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == '$') {
                i += 1;
            }
            Tok::Ident(chars[at..i].iter().collect())
        } else if c.is_ascii_digit() {
            let (n, end) = number(&chars, i)?;
            i = end;
            Tok::Number(n)
        } else if c == '\'' || c == '"' {
            let (s, end) = string(&chars, i)?;
            i = end;
            Tok::Str(s)
        } else {
            let rest: String = chars[i..chars.len().min(i + 2)].iter().collect();
            let Some(sym) = SYMBOLS.iter().find(|s| rest.starts_with(**s)) else {
                return Err(QueryError::at(at, format!("unexpected character '{c}'")));
            };
            i += sym.chars().count();
            Tok::Sym(sym)
        };
        out.push(Token { kind, at });
    }
    out.push(Token {
        kind: Tok::End,
        at: chars.len(),
    });
    Ok(out)
}

fn number(chars: &[char], start: usize) -> Result<(f64, usize), QueryError> {
    let mut i = start;
    if chars[i] == '0' && chars.get(i + 1).is_some_and(|c| *c == 'x' || *c == 'X') {
        i += 2;
        let digits_start = i;
        while i < chars.len() && chars[i].is_ascii_hexdigit() {
            i += 1;
        }
        let digits: String = chars[digits_start..i].iter().collect();
        let n = u64::from_str_radix(&digits, 16)
            .map_err(|_| QueryError::at(start, "a hexadecimal number needs digits after 0x, at most 16".into()))?;
        return Ok((n as f64, i));
    }
    while i < chars.len() && chars[i].is_ascii_digit() {
        i += 1;
    }
    if i + 1 < chars.len() && chars[i] == '.' && chars[i + 1].is_ascii_digit() {
        i += 1;
        while i < chars.len() && chars[i].is_ascii_digit() {
            i += 1;
        }
    }
    if i < chars.len() && (chars[i] == 'e' || chars[i] == 'E') {
        let mut j = i + 1;
        if j < chars.len() && (chars[j] == '+' || chars[j] == '-') {
            j += 1;
        }
        if j < chars.len() && chars[j].is_ascii_digit() {
            i = j;
            while i < chars.len() && chars[i].is_ascii_digit() {
                i += 1;
            }
        }
    }
    let text: String = chars[start..i].iter().collect();
    let n = text
        .parse::<f64>()
        .map_err(|_| QueryError::at(start, format!("'{text}' is not a number")))?;
    Ok((n, i))
}

fn string(chars: &[char], start: usize) -> Result<(String, usize), QueryError> {
    let quote = chars[start];
    let mut i = start + 1;
    let mut s = String::new();
    loop {
        let Some(&c) = chars.get(i) else {
            return Err(QueryError::at(start, "string not closed".into()));
        };
        i += 1;
        match c {
            c if c == quote => return Ok((s, i)),
            '\\' => {
                let Some(&e) = chars.get(i) else {
                    return Err(QueryError::at(i - 1, "string not closed".into()));
                };
                i += 1;
                match e {
                    '\'' | '"' | '\\' | '/' => s.push(e),
                    'n' => s.push('\n'),
                    't' => s.push('\t'),
                    'u' => {
                        let hex: String = chars.get(i..i + 4).map(|h| h.iter().collect()).unwrap_or_default();
                        let ch = u32::from_str_radix(&hex, 16)
                            .ok()
                            .filter(|_| hex.len() == 4)
                            .and_then(char::from_u32)
                            .ok_or_else(|| QueryError::at(i - 2, "\\u must be followed by 4 hex digits".into()))?;
                        s.push(ch);
                        i += 4;
                    }
                    other => return Err(QueryError::at(i - 2, format!("unknown escape '\\{other}' in a string"))),
                }
            }
            c => s.push(c),
        }
    }
}
