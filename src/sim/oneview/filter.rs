//! The OneView filter language, as far as clients (the bridge, the SDKs, scripts) use it on
//! `/rest/alerts` (and `/rest/tasks`): `attr op value` with `EQ NE GT GE LT LE LIKE IN IS [NOT] NULL` or the
//! symbolic `= == != <> > >= < <= :`, values quoted (`'Active'`) or bare
//! (`2021-09-25T15:45:50.122Z`), combined with `AND`, `OR`, `NOT` and parentheses. Timestamps
//! compare as instants; everything else as strings.

use chrono::DateTime;

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
    Like,
}

/// A compiled filter.
#[derive(Debug, Clone, PartialEq)]
pub enum Pred {
    And(Vec<Pred>),
    Or(Vec<Pred>),
    Not(Box<Pred>),
    /// String attribute.
    Str {
        attr: Attr,
        op: Op,
        value: String,
    },
    /// Timestamp attribute, value in unix ms.
    Time {
        attr: Attr,
        op: Op,
        value: i64,
    },
    In {
        attr: Attr,
        values: Vec<String>,
    },
    IsNull {
        attr: Attr,
        negated: bool,
    },
}

/// The alert attributes a filter may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attr {
    Uri,
    AlertState,
    Severity,
    Urgency,
    HealthCategory,
    AlertTypeId,
    Description,
    ResourceUri,
    ResourceName,
    ResourceCategory,
    PhysicalResourceType,
    AssignedToUser,
    Created,
    Modified,
    ClearedTime,
    /// Tasks (`/rest/tasks`).
    TaskState,
    Name,
    Owner,
}

impl Attr {
    fn parse(name: &str) -> Option<Attr> {
        Some(match name {
            "uri" => Attr::Uri,
            "alertState" => Attr::AlertState,
            "severity" => Attr::Severity,
            "urgency" => Attr::Urgency,
            "healthCategory" => Attr::HealthCategory,
            "alertTypeID" => Attr::AlertTypeId,
            "description" => Attr::Description,
            "resourceUri" | "associatedResource.resourceUri" => Attr::ResourceUri,
            "associatedResource.resourceName" | "resourceName" => Attr::ResourceName,
            "associatedResource.resourceCategory" | "resourceCategory" => Attr::ResourceCategory,
            "physicalResourceType" => Attr::PhysicalResourceType,
            "assignedToUser" => Attr::AssignedToUser,
            "created" => Attr::Created,
            "modified" => Attr::Modified,
            "clearedTime" => Attr::ClearedTime,
            "taskState" => Attr::TaskState,
            "name" => Attr::Name,
            "owner" => Attr::Owner,
            _ => return None,
        })
    }

    fn is_time(self) -> bool {
        matches!(self, Attr::Created | Attr::Modified | Attr::ClearedTime)
    }
}

/// What a predicate needs from an alert.
pub trait Fields {
    fn text(&self, attr: Attr) -> Option<&str>;
    fn time(&self, attr: Attr) -> Option<i64>;
}

impl Pred {
    pub fn eval(&self, a: &impl Fields) -> bool {
        match self {
            Pred::And(ps) => ps.iter().all(|p| p.eval(a)),
            Pred::Or(ps) => ps.iter().any(|p| p.eval(a)),
            Pred::Not(p) => !p.eval(a),
            Pred::Str { attr, op, value } => match a.text(*attr) {
                Some(v) => compare(v, value.as_str(), *op),
                None => *op == Op::Ne,
            },
            Pred::Time { attr, op, value } => match a.time(*attr) {
                Some(v) => compare(&v, value, *op),
                None => *op == Op::Ne,
            },
            Pred::In { attr, values } => {
                a.text(*attr).is_some_and(|v| values.iter().any(|x| x == v))
            }
            Pred::IsNull { attr, negated } => {
                let null = if attr.is_time() {
                    a.time(*attr).is_none()
                } else {
                    a.text(*attr).is_none()
                };
                null != *negated
            }
        }
    }

    /// The smallest `modified` a match can have, when the filter implies one: lets the store
    /// walk its modified-time index instead of every alert.
    pub fn modified_lower_bound(&self) -> Option<i64> {
        match self {
            Pred::Time {
                attr: Attr::Modified,
                op: Op::Ge | Op::Gt | Op::Eq,
                value,
            } => Some(*value),
            Pred::And(ps) => ps.iter().filter_map(Pred::modified_lower_bound).max(),
            Pred::Or(ps) => ps
                .iter()
                .map(Pred::modified_lower_bound)
                .collect::<Option<Vec<_>>>()
                .and_then(|v| v.into_iter().min()),
            _ => None,
        }
    }
}

fn compare<T: PartialOrd + ?Sized + LikeMatch>(v: &T, want: &T, op: Op) -> bool {
    match op {
        Op::Eq => v == want,
        Op::Ne => v != want,
        Op::Gt => v > want,
        Op::Ge => v >= want,
        Op::Lt => v < want,
        Op::Le => v <= want,
        Op::Like => v.like(want),
    }
}

trait LikeMatch {
    fn like(&self, pattern: &Self) -> bool;
}

impl LikeMatch for str {
    fn like(&self, pattern: &str) -> bool {
        like(self.as_bytes(), pattern.as_bytes())
    }
}

impl LikeMatch for i64 {
    fn like(&self, pattern: &i64) -> bool {
        self == pattern
    }
}

/// SQL LIKE: `%` any run, `_` one character (bytes; good enough for ASCII values).
fn like(s: &[u8], p: &[u8]) -> bool {
    match p.split_first() {
        None => s.is_empty(),
        Some((b'%', rest)) => (0..=s.len()).any(|i| like(&s[i..], rest)),
        Some((b'_', rest)) => !s.is_empty() && like(&s[1..], rest),
        Some((c, rest)) => s.first() == Some(c) && like(&s[1..], rest),
    }
}

/// Parses one `filter` value (the surrounding double quotes are optional).
pub fn parse(input: &str) -> Result<Pred, String> {
    let trimmed = input.trim();
    let inner = trimmed
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(trimmed);
    let mut p = Parser {
        s: inner.as_bytes(),
        i: 0,
    };
    let e = p.or()?;
    p.ws();
    if p.i != p.s.len() {
        return Err(format!(
            "unexpected text at position {}: {:?}",
            p.i,
            String::from_utf8_lossy(&p.s[p.i..])
        ));
    }
    Ok(e)
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    /// Consumes `kw` (case-insensitive) when it stands as a word here.
    fn keyword(&mut self, kw: &str) -> bool {
        self.ws();
        let end = self.i + kw.len();
        if end > self.s.len() || !self.s[self.i..end].eq_ignore_ascii_case(kw.as_bytes()) {
            return false;
        }
        let boundary = self
            .s
            .get(end)
            .is_none_or(|c| c.is_ascii_whitespace() || *c == b'(' || *c == b'\'');
        if boundary {
            self.i = end;
        }
        boundary
    }

    fn or(&mut self) -> Result<Pred, String> {
        let mut items = vec![self.and()?];
        while self.keyword("OR") {
            items.push(self.and()?);
        }
        Ok(if items.len() == 1 {
            items.remove(0)
        } else {
            Pred::Or(items)
        })
    }

    fn and(&mut self) -> Result<Pred, String> {
        let mut items = vec![self.unary()?];
        while self.keyword("AND") {
            items.push(self.unary()?);
        }
        Ok(if items.len() == 1 {
            items.remove(0)
        } else {
            Pred::And(items)
        })
    }

    fn unary(&mut self) -> Result<Pred, String> {
        if self.keyword("NOT") {
            return Ok(Pred::Not(Box::new(self.unary()?)));
        }
        self.ws();
        if self.peek() == Some(b'(') {
            self.i += 1;
            let e = self.or()?;
            self.ws();
            if self.peek() != Some(b')') {
                return Err(format!("missing ')' at position {}", self.i));
            }
            self.i += 1;
            return Ok(e);
        }
        self.comparison()
    }

    fn ident(&mut self) -> Result<String, String> {
        self.ws();
        let start = self.i;
        while self
            .peek()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'.')
        {
            self.i += 1;
        }
        if start == self.i {
            return Err(format!("expected an attribute name at position {start}"));
        }
        Ok(String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
    }

    fn op(&mut self) -> Result<Option<Op>, String> {
        self.ws();
        for (sym, op) in [
            (">=", Op::Ge),
            ("<=", Op::Le),
            ("<>", Op::Ne),
            ("!=", Op::Ne),
            ("==", Op::Eq),
            ("=", Op::Eq),
            (":", Op::Eq),
            (">", Op::Gt),
            ("<", Op::Lt),
        ] {
            if self.s[self.i..].starts_with(sym.as_bytes()) {
                self.i += sym.len();
                return Ok(Some(op));
            }
        }
        for (kw, op) in [
            ("EQ", Op::Eq),
            ("NE", Op::Ne),
            ("GT", Op::Gt),
            ("GE", Op::Ge),
            ("LT", Op::Lt),
            ("LE", Op::Le),
            ("LIKE", Op::Like),
        ] {
            if self.keyword(kw) {
                return Ok(Some(op));
            }
        }
        // IN and IS are handled by the caller.
        Ok(None)
    }

    fn value(&mut self) -> Result<String, String> {
        self.ws();
        match self.peek() {
            Some(q @ (b'\'' | b'"')) => {
                self.i += 1;
                let mut out = Vec::new();
                loop {
                    match self.peek() {
                        None => return Err("unterminated quoted value".to_owned()),
                        Some(c) if c == q => {
                            // A doubled quote is an escaped quote.
                            if self.s.get(self.i + 1) == Some(&q) {
                                out.push(q);
                                self.i += 2;
                            } else {
                                self.i += 1;
                                break;
                            }
                        }
                        Some(c) => {
                            out.push(c);
                            self.i += 1;
                        }
                    }
                }
                Ok(String::from_utf8_lossy(&out).into_owned())
            }
            Some(_) => {
                let start = self.i;
                while self
                    .peek()
                    .is_some_and(|c| !c.is_ascii_whitespace() && c != b')' && c != b',')
                {
                    self.i += 1;
                }
                if start == self.i {
                    return Err(format!("expected a value at position {start}"));
                }
                Ok(String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
            }
            None => Err("expected a value at the end of the filter".to_owned()),
        }
    }

    fn comparison(&mut self) -> Result<Pred, String> {
        let name = self.ident()?;
        let attr = Attr::parse(&name).ok_or_else(|| format!("unknown attribute {name:?}"))?;
        if self.keyword("IS") {
            let negated = self.keyword("NOT");
            if !self.keyword("NULL") {
                return Err(format!("expected NULL after IS at position {}", self.i));
            }
            return Ok(Pred::IsNull { attr, negated });
        }
        if self.keyword("IN") {
            self.ws();
            if self.peek() != Some(b'(') {
                return Err("expected '(' after IN".to_owned());
            }
            self.i += 1;
            let mut values = Vec::new();
            loop {
                values.push(self.value()?);
                self.ws();
                match self.peek() {
                    Some(b',') => self.i += 1,
                    Some(b')') => {
                        self.i += 1;
                        break;
                    }
                    _ => return Err("expected ',' or ')' in IN list".to_owned()),
                }
            }
            return Ok(Pred::In { attr, values });
        }
        let op = self
            .op()?
            .ok_or_else(|| format!("expected an operator after {name:?} at position {}", self.i))?;
        let value = self.value()?;
        if attr.is_time() {
            let ms = DateTime::parse_from_rfc3339(&value)
                .map_err(|e| {
                    format!(
                        "{name}: {value:?} is not a timestamp like 2024-05-01T10:00:00.000Z ({e})"
                    )
                })?
                .timestamp_millis();
            Ok(Pred::Time {
                attr,
                op,
                value: ms,
            })
        } else {
            Ok(Pred::Str { attr, op, value })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct A(&'static str, &'static str, i64);
    impl Fields for A {
        fn text(&self, attr: Attr) -> Option<&str> {
            match attr {
                Attr::AlertState => Some(self.0),
                Attr::Severity => Some(self.1),
                _ => None,
            }
        }
        fn time(&self, attr: Attr) -> Option<i64> {
            (attr == Attr::Modified).then_some(self.2)
        }
    }

    #[test]
    fn parses_what_clients_send() {
        let t = parse("2021-09-25T15:45:50.122Z").is_err();
        assert!(t);
        let p = parse("\"alertState='Active'\"").unwrap();
        assert!(p.eval(&A("Active", "Critical", 0)));
        assert!(!p.eval(&A("Cleared", "Critical", 0)));
        let p = parse("alertState EQ 'Active' OR alertState EQ 'Locked'").unwrap();
        assert!(p.eval(&A("Locked", "OK", 0)));
        let p = parse("(severity='Critical' or severity = 'Warning') AND NOT alertState='Cleared'")
            .unwrap();
        assert!(p.eval(&A("Active", "Warning", 0)));
        assert!(!p.eval(&A("Active", "OK", 0)));
        let ms = DateTime::parse_from_rfc3339("2021-09-25T15:45:50.122Z")
            .unwrap()
            .timestamp_millis();
        let p = parse("modified > 2021-09-25T15:45:50.122Z").unwrap();
        assert!(p.eval(&A("Active", "OK", ms + 1)));
        assert!(!p.eval(&A("Active", "OK", ms)));
        let p = parse("modified >= '2021-09-25T15:45:50.122Z' AND severity IN ('Critical','OK')")
            .unwrap();
        assert_eq!(p.modified_lower_bound(), Some(ms));
        assert!(p.eval(&A("Active", "OK", ms)));
        assert!(parse("nosuch='x'").is_err());
        assert!(
            parse("severity LIKE 'Crit%'")
                .unwrap()
                .eval(&A("Active", "Critical", 0))
        );
    }
}
