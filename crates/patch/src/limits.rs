//! What one patch may cost, and the depth every document the server keeps must respect.
//!
//! A JSON patch is a program: `copy` duplicates a subtree, so each `copy` of a document into
//! itself doubles it (about 35 operations exhaust any memory) and nests it one copy deeper.
//! Operations are therefore applied one at a time, with the bytes `copy` adds counted against
//! upstream's budget and the depth of what each operation wrote checked before the next one
//! runs, so no intermediate document grows past the limits either.

use std::io;

use json_patch::PatchOperation;
use serde_json::Value;

use crate::PatchError;

/// Upstream's cap on the operations of one JSON patch (`maxJSONPatchOperations`).
pub const MAX_JSON_PATCH_OPERATIONS: usize = 10_000;

/// Upstream's cap on what the `copy` operations of one JSON patch may add
/// (`JSONPatchMaxCopyBytes`, the same as the request body limit).
pub const MAX_COPY_BYTES: usize = 3 * 1024 * 1024;

/// The deepest nesting of arrays and objects (the object itself is level 1) a stored object
/// may have. serde_json, which the server and kube-rs clients decode with, accepts 127
/// levels; a list response wraps each object two levels deeper (`{"items": [...]}`), so 125
/// is the deepest object every response carrying it can still be read back in.
pub const MAX_DEPTH: usize = 125;

/// Whether `value` nests deeper than `limit` levels (a scalar is level 0, `{}` level 1).
/// Iterative, so any depth is safe to ask about.
pub fn exceeds_depth(value: &Value, limit: usize) -> bool {
    let mut pending = vec![(value, 1usize)];
    while let Some((v, level)) = pending.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match v {
            Value::Array(items) => Box::new(items.iter()),
            Value::Object(map) => Box::new(map.values()),
            _ => continue,
        };
        if level > limit {
            return true;
        }
        pending.extend(children.map(|c| (c, level + 1)));
    }
    false
}

/// How many levels `value` nests (scalar 0, `{}` 1), counting at most `cap + 1`.
fn depth_capped(value: &Value, cap: usize) -> usize {
    let mut deepest = 0;
    let mut pending = vec![(value, 1usize)];
    while let Some((v, level)) = pending.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match v {
            Value::Array(items) => Box::new(items.iter()),
            Value::Object(map) => Box::new(map.values()),
            _ => continue,
        };
        deepest = deepest.max(level);
        if level > cap {
            return level;
        }
        pending.extend(children.map(|c| (c, level + 1)));
    }
    deepest
}

struct Counter(usize);

impl io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The length of `value` encoded as compact JSON, without building the encoding.
pub fn encoded_len(value: &Value) -> usize {
    let mut counter = Counter(0);
    // Writing to a counter cannot fail, and a Value always serializes.
    let _ = serde_json::to_writer(&mut counter, value);
    counter.0
}

/// Applies `ops` to a copy of `original` within the limits above.
pub(crate) fn apply_json_patch(
    original: &Value,
    ops: &[PatchOperation],
) -> Result<Value, PatchError> {
    if ops.len() > MAX_JSON_PATCH_OPERATIONS {
        return Err(PatchError::TooManyOperations(ops.len()));
    }
    let mut doc = original.clone();
    // An upper bound of the document's depth, kept exact enough to be cheap: only a `move`
    // whose bound crosses the limit costs a walk.
    let mut depth = depth_capped(&doc, MAX_DEPTH);
    if depth > MAX_DEPTH {
        return Err(PatchError::TooDeep);
    }
    let mut copied = 0usize;
    for (index, op) in ops.iter().enumerate() {
        if let PatchOperation::Copy(copy) = op {
            if let Some(source) = doc.pointer(copy.from.as_str()) {
                copied = copied.saturating_add(encoded_len(source));
                if copied > MAX_COPY_BYTES {
                    return Err(PatchError::CopyTooLarge {
                        accumulated: copied,
                        limit: MAX_COPY_BYTES,
                    });
                }
            }
        }
        // The caller owns `doc` and drops it on any error, so the all-or-nothing undo of
        // `json_patch::patch` would be wasted work.
        json_patch::patch_unsafe(&mut doc, std::slice::from_ref(op)).map_err(|e| {
            PatchError::Apply(format!(
                "operation '/{index}' failed at path '{}': {}",
                e.path, e.kind
            ))
        })?;
        let written = match op {
            PatchOperation::Add(add) => {
                Some((add.path.count(), depth_capped(&add.value, MAX_DEPTH)))
            }
            PatchOperation::Replace(replace) => Some((
                replace.path.count(),
                depth_capped(&replace.value, MAX_DEPTH),
            )),
            PatchOperation::Copy(copy) => {
                Some((copy.path.count(), value_depth(&doc, copy.path.as_str())))
            }
            PatchOperation::Move(mv) => {
                let at = mv.path.count();
                let bound = at + depth.saturating_sub(mv.from.count());
                if bound <= MAX_DEPTH {
                    Some((0, bound))
                } else {
                    Some((at, value_depth(&doc, mv.path.as_str())))
                }
            }
            PatchOperation::Remove(_) | PatchOperation::Test(_) => None,
        };
        if let Some((at, below)) = written {
            depth = depth.max(at + below);
            if depth > MAX_DEPTH {
                return Err(PatchError::TooDeep);
            }
        }
    }
    Ok(doc)
}

/// The depth of the value at `pointer` (0 when there is none, as after appending with `-`:
/// then the caller's bound already covers it through the operation's own value).
fn value_depth(doc: &Value, pointer: &str) -> usize {
    match doc.pointer(pointer) {
        Some(v) => depth_capped(v, MAX_DEPTH),
        None => {
            // `/list/-` appends: the new item is the list's last.
            let parent = pointer.rsplit_once('/').map_or("", |(p, _)| p);
            match doc.pointer(parent) {
                Some(Value::Array(items)) => items.last().map_or(0, |v| depth_capped(v, MAX_DEPTH)),
                _ => 0,
            }
        }
    }
}

/// serde_yaml_ng's own nesting limit: nothing deeper decodes anyway.
const YAML_MAX_FLOW_NESTING: usize = 128;

/// Refuses YAML whose flow collections (`[...]`, `{...}`) nest deeper than the decoder
/// accepts, before the decoder sees it. libyaml re-examines every open flow collection at
/// each token, so `[[[[...` costs quadratic time before the depth limit stops it: seconds
/// at 16k levels, hours for a 3 MiB body.
///
/// A linear scan that errs on the side of counting: brackets inside quoted scalars and
/// comments do not count, brackets that may be text of a plain scalar do (an unbalanced
/// `[` there only brings a body closer to the limit, never hides nesting from it).
pub fn check_yaml_nesting(bytes: &[u8]) -> Result<(), String> {
    let mut depth = 0usize;
    // The last significant byte before the current one, on this line (b'\n' at line start).
    let mut previous = b'\n';
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'\n' | b'\r' => previous = b'\n',
            b' ' | b'\t' => {}
            b'#' if matches!(
                bytes.get(i.wrapping_sub(1)),
                None | Some(b' ' | b'\t' | b'\n' | b'\r')
            ) =>
            {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            // A quote opens a quoted scalar only where a node starts; elsewhere it is text.
            b'\'' | b'"' if matches!(previous, b'\n' | b':' | b'-' | b'?' | b',' | b'[' | b'{') => {
                i = skip_quoted(bytes, i);
                previous = b'"';
                continue;
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > YAML_MAX_FLOW_NESTING {
                    return Err(format!(
                        "recursion limit exceeded: collections nest deeper than {YAML_MAX_FLOW_NESTING} levels"
                    ));
                }
                previous = b;
            }
            b']' | b'}' => {
                depth = depth.saturating_sub(1);
                previous = b;
            }
            _ => previous = b,
        }
        i += 1;
    }
    Ok(())
}

/// The index just past the quoted scalar opening at `start` (or the end of input).
fn skip_quoted(bytes: &[u8], start: usize) -> usize {
    let quote = bytes[start];
    let mut i = start + 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if quote == b'"' => i += 2,
            // '' is an escaped quote inside a single-quoted scalar.
            b'\'' if quote == b'\'' && bytes.get(i + 1) == Some(&b'\'') => i += 2,
            b if b == quote => return i + 1,
            _ => i += 1,
        }
    }
    bytes.len()
}

/// Decodes YAML (or JSON, its subset) into a JSON value, refusing pathological nesting
/// first (see [`check_yaml_nesting`]).
pub fn from_yaml_slice(bytes: &[u8]) -> Result<Value, String> {
    check_yaml_nesting(bytes)?;
    serde_yaml_ng::from_slice(bytes).map_err(|e| e.to_string())
}
