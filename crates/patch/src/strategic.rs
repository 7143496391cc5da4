//! Strategic merge patch: RFC 7396 merge extended with per-list merge keys and directives.
//!
//! Behaviour follows upstream's `strategicpatch` package where it matters to clients:
//! - maps merge recursively and `null` deletes a key;
//! - lists merge per [`ListStrategy`], other lists are replaced by the patch's list verbatim;
//! - `$patch: replace` replaces a map (or, as a list item `{"$patch":"replace"}`, the list);
//!   `$patch: delete` empties a map or removes the list item with the same merge key;
//!   `$patch: merge` is the default;
//! - `$retainKeys: [..]` drops keys of the original map not listed;
//! - `$deleteFromPrimitiveList/<f>: [..]` removes values from the scalar list `f`;
//! - `$setElementOrder/<f>: [..]` orders the merged list `f`; items only the server has keep
//!   their place relative to the items around them.

use std::collections::{HashMap, HashSet};

use serde_json::{Map, Value};

use crate::schema::{ListStrategy, Schema};
use crate::PatchError;

/// Deeper patches are rejected rather than risking the stack (real objects nest about 15
/// deep): no result may nest deeper than this anyway.
pub(crate) const MAX_DEPTH: usize = crate::MAX_DEPTH;

const PATCH_DIRECTIVE: &str = "$patch";
const RETAIN_KEYS_DIRECTIVE: &str = "$retainKeys";
const DELETE_FROM_PRIMITIVE_LIST_PREFIX: &str = "$deleteFromPrimitiveList/";
const SET_ELEMENT_ORDER_PREFIX: &str = "$setElementOrder/";

/// Merges `patch` into `original` (an object; anything else counts as `{}`).
pub(crate) fn merge(
    original: &Value,
    patch: &Map<String, Value>,
    schema: &Schema,
) -> Result<Value, PatchError> {
    let base = match original {
        Value::Object(map) => map.clone(),
        _ => Map::new(),
    };
    let merger = Merger { schema };
    merger.merge_map(base, patch, "", 0).map(Value::Object)
}

fn is_directive_key(key: &str) -> bool {
    key == PATCH_DIRECTIVE
        || key == RETAIN_KEYS_DIRECTIVE
        || key.starts_with(DELETE_FROM_PRIMITIVE_LIST_PREFIX)
        || key.starts_with(SET_ELEMENT_ORDER_PREFIX)
}

fn child_path(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn display_path(path: &str) -> &str {
    if path.is_empty() {
        "<root>"
    } else {
        path
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum MapDirective {
    Merge,
    Replace,
    Delete,
}

fn map_directive(patch: &Map<String, Value>, path: &str) -> Result<MapDirective, PatchError> {
    match patch.get(PATCH_DIRECTIVE) {
        None => Ok(MapDirective::Merge),
        Some(Value::String(s)) => match s.as_str() {
            "merge" => Ok(MapDirective::Merge),
            "replace" => Ok(MapDirective::Replace),
            "delete" => Ok(MapDirective::Delete),
            other => Err(PatchError::Apply(format!(
                "unknown patch directive {PATCH_DIRECTIVE}: {other:?} at {}",
                display_path(path)
            ))),
        },
        Some(other) => Err(PatchError::Apply(format!(
            "{PATCH_DIRECTIVE} must be a string, got {other} at {}",
            display_path(path)
        ))),
    }
}

fn directive_list<'a>(
    value: &'a Value,
    directive: &str,
    path: &str,
) -> Result<&'a [Value], PatchError> {
    value.as_array().map(Vec::as_slice).ok_or_else(|| {
        PatchError::Apply(format!(
            "{directive} must be a list at {}",
            display_path(path)
        ))
    })
}

struct Merger<'s> {
    schema: &'s Schema,
}

impl Merger<'_> {
    fn check_depth(depth: usize, path: &str) -> Result<(), PatchError> {
        if depth > MAX_DEPTH {
            return Err(PatchError::Apply(format!(
                "patch nests deeper than {MAX_DEPTH} levels at {}",
                display_path(path)
            )));
        }
        Ok(())
    }

    fn merge_map(
        &self,
        mut original: Map<String, Value>,
        patch: &Map<String, Value>,
        path: &str,
        depth: usize,
    ) -> Result<Map<String, Value>, PatchError> {
        Self::check_depth(depth, path)?;
        match map_directive(patch, path)? {
            MapDirective::Delete => return Ok(Map::new()),
            MapDirective::Replace => original = Map::new(),
            MapDirective::Merge => {}
        }

        if let Some(retain) = patch.get(RETAIN_KEYS_DIRECTIVE) {
            let retain = directive_list(retain, RETAIN_KEYS_DIRECTIVE, path)?;
            original.retain(|key, _| retain.iter().any(|k| k.as_str() == Some(key)));
        }

        for (key, value) in patch {
            if let Some(field) = key.strip_prefix(DELETE_FROM_PRIMITIVE_LIST_PREFIX) {
                let doomed = directive_list(value, key, path)?;
                if let Some(Value::Array(items)) = original.get_mut(field) {
                    items.retain(|item| !doomed.contains(item));
                }
            }
        }

        for (key, value) in patch {
            if is_directive_key(key) {
                continue;
            }
            if value.is_null() {
                original.remove(key);
                continue;
            }
            let field_path = child_path(path, key);
            let order_key = format!("{SET_ELEMENT_ORDER_PREFIX}{key}");
            let order = patch
                .get(&order_key)
                .map(|order| directive_list(order, &order_key, path))
                .transpose()?;
            let merged = match (original.remove(key), value) {
                (Some(Value::Object(existing)), Value::Object(patch_map)) => {
                    Value::Object(self.merge_map(existing, patch_map, &field_path, depth + 1)?)
                }
                (_, Value::Object(patch_map)) => {
                    Value::Object(self.merge_map(Map::new(), patch_map, &field_path, depth + 1)?)
                }
                (Some(Value::Array(existing)), Value::Array(patch_items)) => Value::Array(
                    self.merge_list(existing, patch_items, order, &field_path, depth + 1)?,
                ),
                (_, Value::Array(patch_items)) => Value::Array(self.merge_list(
                    Vec::new(),
                    patch_items,
                    order,
                    &field_path,
                    depth + 1,
                )?),
                (_, scalar) => scalar.clone(),
            };
            original.insert(key.clone(), merged);
        }

        // An order directive may name a list the patch leaves otherwise untouched.
        for (key, value) in patch {
            let Some(field) = key.strip_prefix(SET_ELEMENT_ORDER_PREFIX) else {
                continue;
            };
            if patch.contains_key(field) {
                continue;
            }
            let order = directive_list(value, key, path)?;
            let field_path = child_path(path, field);
            let Some(strategy) = self.schema.list_strategy(&field_path) else {
                continue;
            };
            if let Some(Value::Array(items)) = original.get_mut(field) {
                let server = items.clone();
                let merged = std::mem::take(items);
                *items = reorder(merged, order, &server, strategy);
            }
        }

        Ok(original)
    }

    fn merge_list(
        &self,
        original: Vec<Value>,
        patch: &[Value],
        order: Option<&[Value]>,
        path: &str,
        depth: usize,
    ) -> Result<Vec<Value>, PatchError> {
        Self::check_depth(depth, path)?;
        let Some(strategy) = self.schema.list_strategy(path) else {
            return Ok(patch.to_vec());
        };

        let replaces_list = patch.iter().any(|item| {
            item.as_object()
                .and_then(|map| map.get(PATCH_DIRECTIVE))
                .and_then(Value::as_str)
                == Some("replace")
        });
        if replaces_list {
            return self.replace_list(patch, path, depth);
        }

        let server = order.map(|_| original.clone());
        let all_objects = patch.iter().chain(&original).all(Value::is_object);
        let merged = match strategy {
            ListStrategy::MergeByKey(key) if all_objects => {
                self.merge_keyed(original, patch, key, path, depth)?
            }
            _ => merge_set(original, patch),
        };
        Ok(match (order, server) {
            (Some(order), Some(server)) => reorder(merged, order, &server, strategy),
            _ => merged,
        })
    }

    /// `[{"$patch": "replace"}, items...]`: the list becomes the other items.
    fn replace_list(
        &self,
        patch: &[Value],
        path: &str,
        depth: usize,
    ) -> Result<Vec<Value>, PatchError> {
        let mut items = Vec::with_capacity(patch.len());
        for item in patch {
            match item {
                Value::Object(map) if map.contains_key(PATCH_DIRECTIVE) => {}
                Value::Object(map) => {
                    items.push(Value::Object(self.merge_map(
                        Map::new(),
                        map,
                        path,
                        depth + 1,
                    )?));
                }
                other => items.push(other.clone()),
            }
        }
        Ok(items)
    }

    fn merge_keyed(
        &self,
        mut merged: Vec<Value>,
        patch: &[Value],
        key: &str,
        path: &str,
        depth: usize,
    ) -> Result<Vec<Value>, PatchError> {
        let mut doomed: HashSet<String> = HashSet::new();
        let mut updates = Vec::with_capacity(patch.len());
        for item in patch {
            let Value::Object(item) = item else {
                continue;
            };
            let Some(key_value) = item.get(key) else {
                return Err(PatchError::Apply(format!(
                    "list item at {path} does not contain declared merge key {key:?}"
                )));
            };
            if map_directive(item, path)? == MapDirective::Delete {
                doomed.insert(key_value.to_string());
            } else {
                updates.push((key_value.to_string(), item));
            }
        }
        if !doomed.is_empty() {
            merged.retain(|existing| {
                existing
                    .get(key)
                    .is_none_or(|value| !doomed.contains(&value.to_string()))
            });
        }

        let mut index_by_key: HashMap<String, usize> = HashMap::new();
        for (index, existing) in merged.iter().enumerate() {
            if let Some(value) = existing.get(key) {
                index_by_key.entry(value.to_string()).or_insert(index);
            }
        }
        for (key_value, item) in updates {
            match index_by_key.get(&key_value) {
                Some(&index) => {
                    let existing = match std::mem::take(&mut merged[index]) {
                        Value::Object(map) => map,
                        _ => Map::new(),
                    };
                    merged[index] =
                        Value::Object(self.merge_map(existing, item, path, depth + 1)?);
                }
                None => {
                    index_by_key.insert(key_value, merged.len());
                    merged.push(Value::Object(self.merge_map(
                        Map::new(),
                        item,
                        path,
                        depth + 1,
                    )?));
                }
            }
        }
        Ok(merged)
    }
}

/// Union of two lists, keeping first occurrences in order (original items first).
fn merge_set(original: Vec<Value>, patch: &[Value]) -> Vec<Value> {
    // Keyed by serialized form because `Value` is not `Hash`; lists can be long enough
    // (a multi-megabyte patch) that a quadratic scan would stall the API server.
    let mut seen: HashSet<String> = HashSet::new();
    let mut merged: Vec<Value> = Vec::with_capacity(original.len() + patch.len());
    for item in original.into_iter().chain(patch.iter().cloned()) {
        if seen.insert(item.to_string()) {
            merged.push(item);
        }
    }
    merged
}

/// What identifies a list item for ordering: its merge key's value, or the item itself.
fn identity(item: &Value, strategy: ListStrategy) -> Option<&Value> {
    match strategy {
        ListStrategy::MergeByKey(key) => match item {
            Value::Object(map) => map.get(key),
            scalar => Some(scalar),
        },
        ListStrategy::MergeSet => Some(item),
    }
}

/// Orders `merged` by `order` (a `$setElementOrder` list). Items the order does not name
/// (server-only items) are woven back in at their position relative to `server`, the list
/// as it was before the patch.
fn reorder(
    merged: Vec<Value>,
    order: &[Value],
    server: &[Value],
    strategy: ListStrategy,
) -> Vec<Value> {
    let positions = |items: &[Value]| -> HashMap<String, usize> {
        let mut positions = HashMap::new();
        for (index, item) in items.iter().enumerate() {
            if let Some(id) = identity(item, strategy) {
                positions.entry(id.to_string()).or_insert(index);
            }
        }
        positions
    };
    let order_rank = positions(order);
    let server_rank = positions(server);
    let server_position = |item: &Value| -> Option<usize> {
        let id = identity(item, strategy)?;
        server_rank.get(&id.to_string()).copied()
    };

    let mut ordered: Vec<(usize, Value)> = Vec::new();
    let mut server_only: Vec<Value> = Vec::new();
    for item in merged {
        let rank =
            identity(&item, strategy).and_then(|id| order_rank.get(&id.to_string()).copied());
        match rank {
            Some(rank) => ordered.push((rank, item)),
            None => server_only.push(item),
        }
    }
    ordered.sort_by_key(|(rank, _)| *rank);

    let mut result = Vec::with_capacity(ordered.len() + server_only.len());
    let mut ordered = ordered.into_iter().map(|(_, item)| item).peekable();
    let mut server_only = server_only.into_iter().peekable();
    loop {
        let take_server_item = match (ordered.peek(), server_only.peek()) {
            (None, None) => break,
            (None, Some(_)) => true,
            (Some(_), None) => false,
            (Some(left), Some(right)) => {
                // Only when both are known to the server can their old order decide;
                // otherwise the patch's items go first.
                matches!(
                    (server_position(left), server_position(right)),
                    (Some(l), Some(r)) if r < l
                )
            }
        };
        let next = if take_server_item {
            server_only.next()
        } else {
            ordered.next()
        };
        if let Some(item) = next {
            result.push(item);
        }
    }
    result
}
