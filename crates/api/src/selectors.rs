//! Label and field selectors, parsed from query strings as upstream does.
//!
//! Label selectors follow `k8s.io/apimachinery/pkg/labels`: `k=v`, `k==v`, `k!=v`,
//! `k in (a,b)`, `k notin (a,b)`, `k`, `!k`, `k>1`, `k<1`, comma meaning AND. Field selectors
//! follow `k8s.io/apimachinery/pkg/fields`: `f=v`, `f==v`, `f!=v`, comma meaning AND.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector as MetaLabelSelector;
use serde_json::{Map, Value};

use crate::validation::names;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SelectorError {
    /// The selector text does not parse.
    #[error("unable to parse requirement: {0}")]
    Parse(String),
    /// A field selector names a field this resource cannot be selected by.
    #[error("field label not supported: {0}")]
    UnsupportedField(String),
    /// The selector is malformed outside any single requirement (a stray token, a bad term).
    #[error("{0}")]
    Syntax(String),
}

/// A label selector operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operator {
    Equals,
    DoubleEquals,
    NotEquals,
    In,
    NotIn,
    Exists,
    DoesNotExist,
    GreaterThan,
    LessThan,
}

/// One requirement of a label selector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Requirement {
    pub key: String,
    pub operator: Operator,
    /// Sorted and de-duplicated, as upstream keeps them.
    pub values: Vec<String>,
}

impl Requirement {
    /// Builds a requirement, validating the key and values with upstream's messages.
    pub fn new(key: &str, operator: Operator, values: Vec<String>) -> Result<Self, String> {
        let mut errs = Vec::new();
        for msg in names::qualified_name_errors(key) {
            errs.push(format!("key: Invalid value: {:?}: {}", key, msg));
        }
        match operator {
            Operator::In | Operator::NotIn if values.is_empty() => errs.push(
                "values: Invalid value: []string{}: for 'in', 'notin' operators, values set can't be empty"
                    .to_string(),
            ),
            Operator::Equals | Operator::DoubleEquals | Operator::NotEquals if values.len() != 1 => {
                errs.push(format!(
                    "values: Invalid value: {}: exact-match compatibility requires one single value",
                    go_string_slice(&values)
                ))
            }
            Operator::Exists | Operator::DoesNotExist if !values.is_empty() => errs.push(format!(
                "values: Invalid value: {}: values set must be empty for exists and does not exist",
                go_string_slice(&values)
            )),
            Operator::GreaterThan | Operator::LessThan => {
                if values.len() != 1 {
                    errs.push(format!(
                        "values: Invalid value: {}: for 'Gt', 'Lt' operators, exactly one value is required",
                        go_string_slice(&values)
                    ));
                }
                for (i, v) in values.iter().enumerate() {
                    if v.parse::<i64>().is_err() {
                        errs.push(format!(
                            "values[{i}]: Invalid value: {v:?}: for 'Gt', 'Lt' operators, the value must be an integer"
                        ));
                    }
                }
            }
            _ => {}
        }
        if !matches!(operator, Operator::GreaterThan | Operator::LessThan) {
            for (i, v) in values.iter().enumerate() {
                for msg in names::label_value_errors(v) {
                    errs.push(format!("values[{i}][{key}]: Invalid value: {v:?}: {msg}"));
                }
            }
        }
        match errs.len() {
            0 => {
                let mut values = values;
                values.sort();
                values.dedup();
                Ok(Requirement {
                    key: key.to_string(),
                    operator,
                    values,
                })
            }
            1 => Err(errs.remove(0)),
            _ => Err(format!("[{}]", errs.join(", "))),
        }
    }

    /// Whether an object with these labels (absent = none) satisfies the requirement.
    pub fn matches<L: Labels + ?Sized>(&self, labels: Option<&L>) -> bool {
        let value = labels.and_then(|l| l.label(&self.key));
        self.operator.evaluate(value.as_deref(), &self.values)
    }
}

impl Operator {
    /// Upstream's `Requirement.Matches`: the one place label and node-selector operators
    /// are evaluated, for query strings, `metav1.LabelSelector` and node selector terms.
    /// `value` is the object's label (absent = `None`); `values` the requirement's.
    pub fn evaluate(self, value: Option<&str>, values: &[String]) -> bool {
        match self {
            Operator::Equals | Operator::DoubleEquals | Operator::In => {
                value.is_some_and(|v| values.iter().any(|w| w == v))
            }
            Operator::NotEquals | Operator::NotIn => {
                value.is_none_or(|v| values.iter().all(|w| w != v))
            }
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
            Operator::GreaterThan | Operator::LessThan => {
                let [want] = values else {
                    return false;
                };
                let (Some(have), Ok(want)) = (
                    value.and_then(|v| v.parse::<i64>().ok()),
                    want.parse::<i64>(),
                ) else {
                    return false;
                };
                if self == Operator::GreaterThan {
                    have > want
                } else {
                    have < want
                }
            }
        }
    }

    /// The operator of a `matchExpressions` entry (`In`, `NotIn`, `Exists`,
    /// `DoesNotExist`, and for node selectors also `Gt`, `Lt`).
    pub fn from_expression(operator: &str, allow_numeric: bool) -> Option<Operator> {
        Some(match operator {
            "In" => Operator::In,
            "NotIn" => Operator::NotIn,
            "Exists" => Operator::Exists,
            "DoesNotExist" => Operator::DoesNotExist,
            "Gt" if allow_numeric => Operator::GreaterThan,
            "Lt" if allow_numeric => Operator::LessThan,
            _ => return None,
        })
    }

    /// Whether `values` has the shape the operator needs (upstream's `NewRequirement` checks
    /// without the key and value syntax, which the API server validated on write). A
    /// selector failing this selects nothing, as upstream's conversion error does.
    pub fn accepts(self, values: &[String]) -> bool {
        match self {
            Operator::In | Operator::NotIn => !values.is_empty(),
            Operator::Equals | Operator::DoubleEquals | Operator::NotEquals => values.len() == 1,
            Operator::Exists | Operator::DoesNotExist => values.is_empty(),
            Operator::GreaterThan | Operator::LessThan => {
                matches!(values, [v] if v.parse::<i64>().is_ok())
            }
        }
    }
}

/// An object's labels, looked up by key: `metadata.labels` as JSON or as a typed map.
pub trait Labels {
    fn label(&self, key: &str) -> Option<Cow<'_, str>>;
}

impl Labels for Map<String, Value> {
    fn label(&self, key: &str) -> Option<Cow<'_, str>> {
        self.get(key).map(|v| match v {
            Value::String(s) => Cow::Borrowed(s.as_str()),
            other => Cow::Owned(other.to_string()),
        })
    }
}

impl Labels for BTreeMap<String, String> {
    fn label(&self, key: &str) -> Option<Cow<'_, str>> {
        self.get(key).map(|v| Cow::Borrowed(v.as_str()))
    }
}

/// Whether a set-based selector (a Service's `spec.selector`, a pod's `nodeSelector`, a
/// template's labels) selects an object with `labels`: every key present with its value,
/// as upstream's `SelectorFromSet`. An empty set selects everything.
pub fn set_selector_matches<L: Labels + ?Sized>(
    set: &BTreeMap<String, String>,
    labels: &L,
) -> bool {
    set.iter().all(|(key, value)| {
        Operator::Equals.evaluate(labels.label(key).as_deref(), std::slice::from_ref(value))
    })
}

/// Whether a typed `metav1.LabelSelector` selects an object with `labels`, evaluated with
/// the same [`Operator::evaluate`] as parsed selectors, without building one. `None` (a
/// null selector) selects nothing and an empty selector everything, as upstream's
/// `LabelSelectorAsSelector`; a malformed expression makes the selector select nothing.
pub fn label_selector_matches<L: Labels + ?Sized>(
    selector: Option<&MetaLabelSelector>,
    labels: &L,
) -> bool {
    let Some(selector) = selector else {
        return false;
    };
    let by_labels = selector
        .match_labels
        .as_ref()
        .is_none_or(|set| set_selector_matches(set, labels));
    by_labels
        && selector.match_expressions.iter().flatten().all(|expr| {
            let values = expr.values.as_deref().unwrap_or_default();
            Operator::from_expression(&expr.operator, false)
                .filter(|op| op.accepts(values))
                .is_some_and(|op| op.evaluate(labels.label(&expr.key).as_deref(), values))
        })
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let first = self.values.first().map(String::as_str).unwrap_or("");
        match self.operator {
            Operator::Exists => write!(f, "{}", self.key),
            Operator::DoesNotExist => write!(f, "!{}", self.key),
            Operator::Equals => write!(f, "{}={}", self.key, first),
            Operator::DoubleEquals => write!(f, "{}=={}", self.key, first),
            Operator::NotEquals => write!(f, "{}!={}", self.key, first),
            Operator::GreaterThan => write!(f, "{}>{}", self.key, first),
            Operator::LessThan => write!(f, "{}<{}", self.key, first),
            Operator::In => write!(f, "{} in ({})", self.key, self.values.join(",")),
            Operator::NotIn => write!(f, "{} notin ({})", self.key, self.values.join(",")),
        }
    }
}

fn label_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Go's `%#v` of a `[]string`, which upstream uses in requirement errors.
fn go_string_slice(values: &[String]) -> String {
    let quoted: Vec<String> = values.iter().map(|v| format!("{v:?}")).collect();
    format!("[]string{{{}}}", quoted.join(", "))
}

/// A parsed label selector (`a=b,c!=d,e in (f,g),!h`). The empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
    /// A null `metav1.LabelSelector` selects nothing, unlike an empty one.
    nothing: bool,
}

impl LabelSelector {
    pub fn parse(text: &str) -> Result<Self, SelectorError> {
        let tokens = lex(text)?;
        let mut parser = Parser { tokens, pos: 0 };
        let mut requirements = parser.parse()?;
        requirements.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(LabelSelector {
            requirements,
            nothing: false,
        })
    }

    /// A selector that matches no object (what upstream makes of a null `LabelSelector`).
    pub fn nothing() -> Self {
        LabelSelector {
            requirements: Vec::new(),
            nothing: true,
        }
    }

    /// Converts a `metav1.LabelSelector` object (`matchLabels`, `matchExpressions`).
    /// A null or absent selector matches nothing; `{}` matches everything.
    pub fn from_json(selector: &Value) -> Result<Self, SelectorError> {
        let Some(obj) = selector.as_object() else {
            return if selector.is_null() {
                Ok(LabelSelector::nothing())
            } else {
                Err(SelectorError::Syntax(format!(
                    "invalid label selector: {selector}"
                )))
            };
        };
        let mut requirements = Vec::new();
        if let Some(labels) = obj.get("matchLabels").and_then(Value::as_object) {
            for (k, v) in labels {
                let r = Requirement::new(k, Operator::Equals, vec![label_text(v)])
                    .map_err(SelectorError::Syntax)?;
                requirements.push(r);
            }
        }
        if let Some(exprs) = obj.get("matchExpressions").and_then(Value::as_array) {
            for expr in exprs {
                let key = expr.get("key").and_then(Value::as_str).unwrap_or("");
                let op_text = expr.get("operator").and_then(Value::as_str).unwrap_or("");
                let operator = Operator::from_expression(op_text, false).ok_or_else(|| {
                    SelectorError::Syntax(format!(
                        "{op_text:?} is not a valid label selector operator"
                    ))
                })?;
                let values: Vec<String> = expr
                    .get("values")
                    .and_then(Value::as_array)
                    .map(|vs| vs.iter().map(label_text).collect())
                    .unwrap_or_default();
                requirements
                    .push(Requirement::new(key, operator, values).map_err(SelectorError::Syntax)?);
            }
        }
        requirements.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(LabelSelector {
            requirements,
            nothing: false,
        })
    }

    /// Selector that requires every label in `labels` (a Service's `spec.selector`).
    pub fn from_map(labels: &Map<String, Value>) -> Self {
        let mut requirements: Vec<Requirement> = labels
            .iter()
            .map(|(k, v)| Requirement {
                key: k.clone(),
                operator: Operator::Equals,
                values: vec![label_text(v)],
            })
            .collect();
        requirements.sort_by(|a, b| a.key.cmp(&b.key));
        LabelSelector {
            requirements,
            nothing: false,
        }
    }

    pub fn is_empty(&self) -> bool {
        !self.nothing && self.requirements.is_empty()
    }

    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    /// Whether an object with these labels (`metadata.labels`, absent = none) matches.
    pub fn matches<L: Labels + ?Sized>(&self, labels: Option<&L>) -> bool {
        !self.nothing && self.requirements.iter().all(|r| r.matches(labels))
    }
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.requirements.iter().map(|r| r.to_string()).collect();
        write!(f, "{}", parts.join(","))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    Identifier(String),
    Not,
    NotEquals,
    Equals,
    DoubleEquals,
    GreaterThan,
    LessThan,
    In,
    NotIn,
    Open,
    Close,
    Comma,
    End,
}

impl Token {
    fn literal(&self) -> &str {
        match self {
            Token::Identifier(s) => s,
            Token::Not => "!",
            Token::NotEquals => "!=",
            Token::Equals => "=",
            Token::DoubleEquals => "==",
            Token::GreaterThan => ">",
            Token::LessThan => "<",
            Token::In => "in",
            Token::NotIn => "notin",
            Token::Open => "(",
            Token::Close => ")",
            Token::Comma => ",",
            Token::End => "",
        }
    }

    /// Inside value positions `in`/`notin` are ordinary words.
    fn as_value(&self) -> Option<String> {
        match self {
            Token::Identifier(s) => Some(s.clone()),
            Token::In | Token::NotIn => Some(self.literal().to_string()),
            _ => None,
        }
    }
}

fn is_special(c: char) -> bool {
    matches!(c, '!' | '=' | '(' | ')' | ',' | '>' | '<')
}

fn lex(text: &str) -> Result<Vec<Token>, SelectorError> {
    let chars: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        if is_special(c) {
            let next = chars.get(i + 1).copied();
            let (tok, len) = match (c, next) {
                ('!', Some('=')) => (Token::NotEquals, 2),
                ('!', _) => (Token::Not, 1),
                ('=', Some('=')) => (Token::DoubleEquals, 2),
                ('=', _) => (Token::Equals, 1),
                ('(', _) => (Token::Open, 1),
                (')', _) => (Token::Close, 1),
                (',', _) => (Token::Comma, 1),
                ('>', _) => (Token::GreaterThan, 1),
                _ => (Token::LessThan, 1),
            };
            tokens.push(tok);
            i += len;
            continue;
        }
        let start = i;
        while i < chars.len() && !chars[i].is_whitespace() && !is_special(chars[i]) {
            i += 1;
        }
        let word: String = chars[start..i].iter().collect();
        tokens.push(match word.as_str() {
            "in" => Token::In,
            "notin" => Token::NotIn,
            _ => Token::Identifier(word),
        });
    }
    tokens.push(Token::End);
    Ok(tokens)
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> &Token {
        self.tokens.get(self.pos).unwrap_or(&Token::End)
    }

    fn next(&mut self) -> Token {
        let t = self.peek().clone();
        if self.pos < self.tokens.len() {
            self.pos += 1;
        }
        t
    }

    fn parse(&mut self) -> Result<Vec<Requirement>, SelectorError> {
        let mut out = Vec::new();
        loop {
            match self.peek() {
                Token::End => return Ok(out),
                Token::Identifier(_) | Token::Not => {
                    let r = self.requirement().map_err(SelectorError::Parse)?;
                    out.push(r);
                    match self.next() {
                        Token::End => return Ok(out),
                        Token::Comma => {
                            if !matches!(self.peek(), Token::Identifier(_) | Token::Not) {
                                let lit = self.peek().literal().to_string();
                                return Err(SelectorError::Syntax(format!(
                                    "found '{lit}', expected: identifier after ','"
                                )));
                            }
                        }
                        other => {
                            return Err(SelectorError::Syntax(format!(
                                "found '{}', expected: ',' or 'end of string'",
                                other.literal()
                            )))
                        }
                    }
                }
                other => {
                    return Err(SelectorError::Syntax(format!(
                        "found '{}', expected: !, identifier, or 'end of string'",
                        other.literal()
                    )))
                }
            }
        }
    }

    fn requirement(&mut self) -> Result<Requirement, String> {
        let negated = if *self.peek() == Token::Not {
            self.next();
            true
        } else {
            false
        };
        let key = match self.next() {
            Token::Identifier(k) => k,
            other => return Err(format!("found '{}', expected: identifier", other.literal())),
        };
        if negated {
            return Requirement::new(&key, Operator::DoesNotExist, Vec::new());
        }
        if matches!(self.peek(), Token::End | Token::Comma) {
            return Requirement::new(&key, Operator::Exists, Vec::new());
        }
        let operator = match self.next() {
            Token::Equals => Operator::Equals,
            Token::DoubleEquals => Operator::DoubleEquals,
            Token::NotEquals => Operator::NotEquals,
            Token::In => Operator::In,
            Token::NotIn => Operator::NotIn,
            Token::GreaterThan => Operator::GreaterThan,
            Token::LessThan => Operator::LessThan,
            other => {
                return Err(format!(
                    "found '{}', expected: in, notin, =, ==, !=, gt, lt",
                    other.literal()
                ))
            }
        };
        let values = if matches!(operator, Operator::In | Operator::NotIn) {
            self.value_set()?
        } else {
            match self.peek() {
                Token::End | Token::Comma => vec![String::new()],
                tok => match tok.as_value() {
                    Some(v) => {
                        self.next();
                        vec![v]
                    }
                    None => return Err(format!("found '{}', expected: identifier", tok.literal())),
                },
            }
        };
        Requirement::new(&key, operator, values)
    }

    fn value_set(&mut self) -> Result<Vec<String>, String> {
        let open = self.next();
        if open != Token::Open {
            return Err(format!("found '{}', expected: '('", open.literal()));
        }
        let mut values = Vec::new();
        // Upstream accepts empty members (`(a,,b)`, `(a,)`) as the empty string.
        let mut expect_value = true;
        loop {
            let tok = self.next();
            match tok {
                Token::Close => {
                    if expect_value && !values.is_empty() {
                        values.push(String::new());
                    }
                    return Ok(values);
                }
                Token::Comma => {
                    if expect_value {
                        values.push(String::new());
                    }
                    expect_value = true;
                }
                ref t if expect_value && t.as_value().is_some() => {
                    values.extend(t.as_value());
                    expect_value = false;
                }
                other => {
                    return Err(format!(
                        "found '{}', expected: ',', ')' or identifier",
                        other.literal()
                    ))
                }
            }
        }
    }
}

mod fields;

pub use fields::{selectable_fields, supported_fields, FieldSelector, FieldTerm};

#[cfg(test)]
mod tests;
