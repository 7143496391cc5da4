//! Label and field selectors, parsed from query strings as upstream does.
//! (Skeleton: the full grammar is implemented by the selectors work item.)

use serde_json::{Map, Value};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SelectorError {
    /// The selector text does not parse.
    #[error("unable to parse requirement: {0}")]
    Parse(String),
    /// A field selector names a field this resource cannot be selected by.
    #[error("field label not supported: {0}")]
    UnsupportedField(String),
}

/// A parsed label selector (`a=b,c!=d,e in (f,g),!h`). The empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector {}

impl LabelSelector {
    pub fn parse(_text: &str) -> Result<Self, SelectorError> {
        Ok(LabelSelector {})
    }

    pub fn is_empty(&self) -> bool {
        true
    }

    /// Whether an object with these labels (`metadata.labels`, absent = none) matches.
    pub fn matches(&self, _labels: Option<&Map<String, Value>>) -> bool {
        true
    }
}

/// A parsed field selector (`metadata.name=x,status.phase!=Running`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSelector {}

impl FieldSelector {
    pub fn parse(_text: &str) -> Result<Self, SelectorError> {
        Ok(FieldSelector {})
    }

    pub fn is_empty(&self) -> bool {
        true
    }

    /// Fails with `UnsupportedField` if the selector uses a field `kind` does not support.
    pub fn check_supported(&self, _kind: &str) -> Result<(), SelectorError> {
        Ok(())
    }

    /// Whether the object whose selectable fields are `fields` (see [`selectable_fields`]) matches.
    pub fn matches(&self, _fields: &[(&'static str, String)]) -> bool {
        true
    }
}

/// The values of every field selectable on `kind`, extracted once per object so that
/// caches can filter without re-reading the JSON.
pub fn selectable_fields(_kind: &str, _obj: &Value) -> Vec<(&'static str, String)> {
    Vec::new()
}
