//! Policy errors that point at the source: file, line, column, a stable code and a hint.

use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{origin}:{line}:{column}: error[{code}]: {message}\n  hint: {hint}")]
pub struct PolicyError {
    /// File (or other source name) the error is in.
    pub origin: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// Stable code: `syntax_error`, `unknown_field`, `missing_field`, `invalid_field`, ...
    pub code: &'static str,
    pub message: String,
    /// What to do about it.
    pub hint: String,
}

impl PolicyError {
    pub fn at(
        origin: &str,
        line: usize,
        column: usize,
        code: &'static str,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> PolicyError {
        PolicyError {
            origin: origin.to_string(),
            line: line.max(1),
            column: column.max(1),
            code,
            message: message.into(),
            hint: hint.into(),
        }
    }

    pub fn from_json(origin: &str, e: &serde_json::Error) -> PolicyError {
        let msg = strip_location(&e.to_string());
        let code = match e.classify() {
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                "syntax_error"
            }
            serde_json::error::Category::Io => "io_error",
            serde_json::error::Category::Data => classify_data(&msg),
        };
        PolicyError::at(origin, e.line(), e.column(), code, msg, hint_for(code))
    }

    pub fn from_yaml(origin: &str, e: &serde_yaml::Error) -> PolicyError {
        let msg = strip_location(&e.to_string());
        let (line, col) = e.location().map_or((1, 1), |l| (l.line(), l.column()));
        let code = if msg.contains("while parsing")
            || msg.contains("while scanning")
            || msg.contains("did not find expected")
        {
            "syntax_error"
        } else {
            classify_data(&msg)
        };
        PolicyError::at(origin, line, col, code, msg, hint_for(code))
    }
}

fn classify_data(msg: &str) -> &'static str {
    // serde_yaml prefixes the path (`rules[0].then: unknown variant ...`).
    if msg.contains("unknown field `") {
        "unknown_field"
    } else if msg.contains("missing field `") {
        "missing_field"
    } else if msg.contains("unknown variant `") {
        "unknown_value"
    } else {
        "invalid_field"
    }
}

fn hint_for(code: &str) -> &'static str {
    match code {
        "syntax_error" => "fix the JSON/YAML syntax at this position",
        "unknown_field" => {
            "check the spelling (field names are camelCase); `spendguard policy schema` lists every field"
        }
        "missing_field" => {
            "add the field; `currency` and `caps {perTxn, daily, monthly}` are required"
        }
        "unknown_value" => "use one of the values listed in the message",
        _ => "correct the value; `spendguard policy schema` describes every field",
    }
}

/// serde_json and serde_yaml append " at line L column C"; we report those separately.
fn strip_location(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

/// Best-effort position of a nested key in JSON or YAML text, for errors and lints found
/// after parsing (the parser's own errors carry exact positions). Keys are searched in
/// order; `if#N` is the N-th (0-based) `if` key after the previous match. Falls back to
/// the last position found, or 1:1.
pub fn locate(text: &str, keys: &[&str]) -> (usize, usize) {
    let mut pos = 0usize;
    let mut found = None;
    for key in keys {
        let (name, nth) = match key.split_once('#') {
            Some((n, i)) => (n, i.parse::<usize>().unwrap_or(0)),
            None => (*key, 0),
        };
        let mut hits = 0usize;
        let mut search = pos;
        let mut hit = None;
        while let Some(off) = text.get(search..).and_then(|t| t.find(name)) {
            let at = search + off;
            search = at + name.len().max(1);
            if is_key_at(text, at, name) {
                if hits == nth {
                    hit = Some(at);
                    break;
                }
                hits += 1;
            }
        }
        match hit {
            Some(at) => {
                pos = at + name.len();
                found = Some(at);
            }
            None => break,
        }
    }
    match found {
        Some(at) => line_col(text, at),
        None => (1, 1),
    }
}

fn is_key_at(text: &str, at: usize, name: &str) -> bool {
    let bytes = text.as_bytes();
    let before = if at == 0 { b'\n' } else { bytes[at - 1] };
    if !(before.is_ascii_whitespace() || b"\"'{,-".contains(&before)) {
        return false;
    }
    let mut i = at + name.len();
    if i < bytes.len() && (bytes[i] == b'"' || bytes[i] == b'\'') {
        i += 1;
    }
    while i < bytes.len() && bytes[i] == b' ' {
        i += 1;
    }
    i < bytes.len() && bytes[i] == b':'
}

pub fn line_col(text: &str, at: usize) -> (usize, usize) {
    let head = &text[..at.min(text.len())];
    let line = head.matches('\n').count() + 1;
    let col = head
        .rfind('\n')
        .map_or(head.chars().count(), |i| head[i + 1..].chars().count())
        + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locates_nested_keys_in_yaml_and_json() {
        let y = "name: x\ncaps:\n  perTxn: 5\n  daily: 1\nrules:\n  - if: {amountGt: 1}\n    then: {}\n  - if: {amountGt: 2}\n";
        assert_eq!(locate(y, &["caps", "daily"]), (4, 3));
        assert_eq!(locate(y, &["rules", "if#1"]), (8, 5));
        let j = "{\"caps\": {\"perTxn\": 5, \"daily\": 1}}";
        assert_eq!(locate(j, &["caps", "daily"]), (1, 25));
    }
}
