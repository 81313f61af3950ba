//! Reading a site config file: TOML syntax, key names and value types.
//!
//! Every problem is reported, not just the first: the file is deserialized with
//! `deny_unknown_fields`; each error is recorded with the exact key path (from
//! `serde_path_to_error`), the offending key is dropped and deserialization is retried, so one
//! run lists every unknown key and every value of the wrong type. Positions come from a
//! span index built with `toml_edit` over the original text.

use std::collections::{BTreeSet, HashMap};
use std::ops::Range;
use std::path::{Path, PathBuf};

use super::raw::RawConfig;
use super::{ConfigError, ConfigIssue};

/// Line/column of every key and value in the file, by key path (`vlan[1].ports[0]`).
#[derive(Debug, Clone, Default)]
pub struct Locations {
    file: PathBuf,
    line_starts: Vec<usize>,
    values: HashMap<String, Range<usize>>,
    keys: HashMap<String, Range<usize>>,
}

impl Locations {
    /// Line starts only (for syntax errors, before any key is known).
    fn of_text(file: &Path, text: &str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Locations {
            file: file.to_path_buf(),
            line_starts,
            values: HashMap::new(),
            keys: HashMap::new(),
        }
    }

    pub fn build(file: &Path, text: &str, doc: &toml_edit::Document<String>) -> Self {
        let mut locs = Self::of_text(file, text);
        locs.walk_table(String::new(), doc.as_table());
        locs
    }

    pub fn file(&self) -> &Path {
        &self.file
    }

    fn join(prefix: &str, key: &str) -> String {
        if prefix.is_empty() {
            key.to_string()
        } else {
            format!("{prefix}.{key}")
        }
    }

    fn walk_table(&mut self, prefix: String, table: &toml_edit::Table) {
        for (name, _) in table.iter() {
            let Some((key, item)) = table.get_key_value(name) else {
                continue;
            };
            let path = Self::join(&prefix, name);
            if let Some(span) = key.span() {
                self.keys.insert(path.clone(), span);
            }
            self.walk_item(path, item);
        }
    }

    fn walk_item(&mut self, path: String, item: &toml_edit::Item) {
        if let Some(span) = item.span() {
            self.values.insert(path.clone(), span);
        }
        match item {
            toml_edit::Item::Table(t) => self.walk_table(path, t),
            toml_edit::Item::ArrayOfTables(a) => {
                for (i, t) in a.iter().enumerate() {
                    let p = format!("{path}[{i}]");
                    if let Some(span) = t.span() {
                        self.values.insert(p.clone(), span);
                    }
                    self.walk_table(p, t);
                }
            }
            toml_edit::Item::Value(v) => self.walk_value(path, v),
            toml_edit::Item::None => {}
        }
    }

    fn walk_value(&mut self, path: String, value: &toml_edit::Value) {
        if let Some(span) = value.span() {
            self.values.insert(path.clone(), span);
        }
        match value {
            toml_edit::Value::Array(a) => {
                for (i, v) in a.iter().enumerate() {
                    self.walk_value(format!("{path}[{i}]"), v);
                }
            }
            toml_edit::Value::InlineTable(t) => {
                for (name, v) in t.iter() {
                    let p = Self::join(&path, name);
                    if let Some((key, _)) = t.get_key_value(name) {
                        if let Some(span) = key.span() {
                            self.keys.insert(p.clone(), span);
                        }
                    }
                    self.walk_value(p, v);
                }
            }
            _ => {}
        }
    }

    fn line_col(&self, offset: usize) -> (usize, usize) {
        let line = match self.line_starts.binary_search(&offset) {
            Ok(i) => i,
            Err(i) => i.saturating_sub(1),
        };
        let col = offset - self.line_starts.get(line).copied().unwrap_or(0);
        (line + 1, col + 1)
    }

    /// Position of a value, falling back to its closest enclosing key that exists in the file
    /// (a defaulted key has no position of its own; its table has).
    pub fn value_pos(&self, path: &str) -> (usize, usize) {
        self.find(path, &self.values)
    }

    /// Position of a key name (for unknown keys).
    pub fn key_pos(&self, path: &str) -> (usize, usize) {
        match self.keys.get(path) {
            Some(span) => self.line_col(span.start),
            None => self.value_pos(path),
        }
    }

    fn find(&self, path: &str, map: &HashMap<String, Range<usize>>) -> (usize, usize) {
        let mut p = path.to_string();
        loop {
            if let Some(span) = map.get(&p).or_else(|| self.keys.get(&p)) {
                return self.line_col(span.start);
            }
            match p.rfind(['.', '[']) {
                Some(i) => p.truncate(i),
                None => return (1, 1),
            }
        }
    }

    pub fn issue_at_value(&self, path: &str, message: impl Into<String>) -> ConfigIssue {
        let (line, column) = self.value_pos(path);
        self.issue(path, line, column, message.into())
    }

    pub fn issue_at_key(&self, path: &str, message: impl Into<String>) -> ConfigIssue {
        let (line, column) = self.key_pos(path);
        self.issue(path, line, column, message.into())
    }

    fn issue(&self, path: &str, line: usize, column: usize, message: String) -> ConfigIssue {
        ConfigIssue {
            file: self.file.clone(),
            line,
            column,
            key: path.to_string(),
            message,
        }
    }
}

/// Parse TOML text into the raw config, collecting every key/type error.
/// Returns the raw config when one could be built (possibly with some keys dropped), the
/// locations index, and the issues found.
pub fn parse(
    file: &Path,
    text: &str,
) -> Result<(Option<RawConfig>, Locations, Vec<ConfigIssue>), ConfigError> {
    let doc = match toml_edit::Document::parse(text.to_string()) {
        Ok(d) => d,
        Err(e) => {
            let locs = Locations::of_text(file, text);
            let (line, column) = e.span().map(|s| locs.line_col(s.start)).unwrap_or((1, 1));
            let msg = e.message().trim().to_string();
            return Err(ConfigError::Invalid(vec![ConfigIssue {
                file: file.to_path_buf(),
                line,
                column,
                key: String::new(),
                message: format!("TOML syntax error: {msg}"),
            }]));
        }
    };
    let locs = Locations::build(file, text, &doc);
    let mut table: toml::Table = match toml::from_str(text) {
        Ok(t) => t,
        Err(e) => {
            let (line, column) = e.span().map(|s| locs.line_col(s.start)).unwrap_or((1, 1));
            return Err(ConfigError::Invalid(vec![ConfigIssue {
                file: file.to_path_buf(),
                line,
                column,
                key: String::new(),
                message: format!("TOML syntax error: {}", e.message().trim()),
            }]));
        }
    };

    let mut issues = Vec::new();
    let mut dropped: BTreeSet<String> = BTreeSet::new();
    // Each round either succeeds or removes one key, so this terminates; the bound is a guard.
    for _ in 0..1024 {
        let value = toml::Value::Table(table.clone());
        match serde_path_to_error::deserialize::<_, RawConfig>(value) {
            Ok(raw) => return Ok((Some(raw), locs, issues)),
            Err(err) => {
                let path = err.path().to_string();
                let path = if path == "." { String::new() } else { path };
                let message = err.inner().message().trim().to_string();
                if let Some(field) = between(&message, "missing field `", "`") {
                    let full = Locations::join(&path, field);
                    // A required key we dropped ourselves was already reported.
                    if !dropped.contains(&full) {
                        let what = if matches!(field, "site") {
                            "missing required table [site]".to_string()
                        } else {
                            format!("missing required key `{field}`")
                        };
                        let mut issue = locs.issue_at_value(&path, what);
                        issue.key = full;
                        issues.push(issue);
                    }
                    return Ok((None, locs, issues));
                }
                let issue = if let Some(key) = between(&message, "unknown field `", "`") {
                    let allowed = message
                        .split_once("expected ")
                        .map(|(_, rest)| rest.replace('`', "").replace(" or ", ", "))
                        .map(|s| s.replace("one of ", ""))
                        .unwrap_or_default();
                    let what = if allowed.is_empty() || message.contains("there are no fields") {
                        format!("unknown key `{key}`; this table takes no keys")
                    } else {
                        format!("unknown key `{key}`; allowed keys here: {allowed}")
                    };
                    locs.issue_at_key(&path, what)
                } else {
                    locs.issue_at_value(&path, friendly_type_error(&path, &message))
                };
                issues.push(issue);
                match remove_path(&mut table, err.path()) {
                    Some(removed) => {
                        dropped.insert(removed);
                    }
                    None => return Ok((None, locs, issues)),
                }
            }
        }
    }
    Ok((None, locs, issues))
}

fn between<'a>(s: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let rest = s.split_once(start)?.1;
    Some(rest.split_once(end)?.0)
}

fn friendly_type_error(path: &str, message: &str) -> String {
    if path == "mtu.access" {
        return "expected \"auto\" or a whole number of bytes".to_string();
    }
    message
        .replace("expected i64", "expected an integer")
        .replace("expected a sequence", "expected an array")
        .replace("invalid type:", "wrong type:")
}

/// Remove the key that the error path points into (the last map key on the path).
/// Returns the dotted path of the removed key.
fn remove_path(table: &mut toml::Table, path: &serde_path_to_error::Path) -> Option<String> {
    use serde_path_to_error::Segment;
    let segs: Vec<&Segment> = path.iter().collect();
    let last_map = segs
        .iter()
        .rposition(|s| matches!(s, Segment::Map { .. }))?;
    let mut cur: &mut toml::Table = table;
    let mut walked = String::new();
    let mut i = 0;
    while i < last_map {
        match segs[i] {
            Segment::Map { key } => {
                walked = Locations::join(&walked, key);
                let next = cur.get_mut(key.as_str())?;
                // A map key is followed by either a table or an array index then a table.
                match next {
                    toml::Value::Table(t) => cur = t,
                    toml::Value::Array(a) => {
                        let Some(Segment::Seq { index }) = segs.get(i + 1) else {
                            return None;
                        };
                        walked = format!("{walked}[{index}]");
                        match a.get_mut(*index)? {
                            toml::Value::Table(t) => cur = t,
                            _ => return None,
                        }
                        i += 1;
                    }
                    _ => return None,
                }
            }
            _ => return None,
        }
        i += 1;
    }
    let Segment::Map { key } = segs[last_map] else {
        return None;
    };
    cur.remove(key.as_str())?;
    Some(Locations::join(&walked, key))
}
