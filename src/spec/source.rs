//! Reads YAML inputs with overlays and `${VAR}` expansion, and remembers where every field came from.
//!
//! Each file is parsed twice: once by `serde_yaml` into a value, and once by `yaml-rust2`'s event parser
//! to record the line and column of every field path. Errors found later (by serde or by validation)
//! name a field path, and [`Sources::locate`] turns that path back into `file:line:column`.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_yaml::Value;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// An error in user input: where it is, which field, and what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputError {
    /// The file, when the error is tied to one.
    pub file: Option<PathBuf>,
    /// 1-based line and column; 0 when unknown.
    pub line: usize,
    pub column: usize,
    /// The field path, like `spec.strategy.rolling.maxSurge`; empty for the document itself.
    pub path: String,
    pub message: String,
}

impl InputError {
    /// An error that is not tied to a position in a file (a missing file, a bad flag).
    pub fn general(message: impl Into<String>) -> Self {
        InputError {
            file: None,
            line: 0,
            column: 0,
            path: String::new(),
            message: message.into(),
        }
    }
}

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{}", file.display())?;
            if self.line > 0 {
                write!(f, ":{}:{}", self.line, self.column)?;
            }
            f.write_str(": ")?;
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for InputError {}

/// A 1-based position in a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
}

/// One parsed input file.
#[derive(Debug, Clone)]
pub struct Source {
    pub file: PathBuf,
    pub value: Value,
    /// Field path -> position of its value (or of the key, for `path#key`).
    positions: HashMap<String, Pos>,
}

/// The inputs of one load, in overlay order: later files win.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    pub files: Vec<Source>,
}

/// Looks up an environment variable; tests pass their own.
pub type Vars<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The process environment, for [`Sources::read`].
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Loads `files` (plus `<file>.<env>.yaml` overlays) and deserializes the merged document.
pub fn load<T: DeserializeOwned>(files: &[PathBuf], env: Option<&str>) -> Result<T, InputError> {
    Sources::read(files, env, &process_env)?.deserialize()
}

impl Sources {
    /// Reads every file in order. With `env`, `<stem>.<env>.yaml` next to each file is read right after
    /// it when it exists.
    pub fn read(files: &[PathBuf], env: Option<&str>, vars: Vars<'_>) -> Result<Self, InputError> {
        if files.is_empty() {
            return Err(InputError::general("no input file given (use -f FILE)"));
        }
        let mut out = Sources::default();
        for file in files {
            let text = read_input(file)?;
            out.files.push(Source::parse(file, &text, Some(vars))?);
            if let Some(env) = env {
                let overlay = overlay_path(file, env);
                if overlay.exists() {
                    let text = read_input(&overlay)?;
                    out.files.push(Source::parse(&overlay, &text, Some(vars))?);
                }
            }
        }
        Ok(out)
    }

    /// Builds sources from in-memory texts (presets, tests).
    pub fn from_texts(texts: &[(&Path, &str)], vars: Vars<'_>) -> Result<Self, InputError> {
        let files = texts
            .iter()
            .map(|(file, text)| Source::parse(file, text, Some(vars)))
            .collect::<Result<_, _>>()?;
        Ok(Sources { files })
    }

    /// Reads one file as written, without `${VAR}` expansion (a Kubernetes manifest, which rollgate
    /// does not template), remembering where each field is.
    pub fn read_literal(file: &Path) -> Result<Self, InputError> {
        let text = read_input(file)?;
        Ok(Sources {
            files: vec![Source::parse(file, &text, None)?],
        })
    }

    /// The deep merge of all files: mappings merge key by key, anything else is replaced.
    pub fn merged(&self) -> Value {
        let mut acc = Value::Null;
        for source in &self.files {
            merge(&mut acc, &source.value);
        }
        acc
    }

    /// Deserializes the merged document, mapping serde's error to a located [`InputError`].
    pub fn deserialize<T: DeserializeOwned>(&self) -> Result<T, InputError> {
        let merged = self.merged();
        serde_path_to_error::deserialize(merged).map_err(|err| {
            let path = display_path(err.path());
            let message = tidy_serde_message(&err.inner().to_string());
            let mut e = self.error(&path, message);
            // An unknown field is reported at the key, since it has no meaningful value position.
            if e.message.starts_with("unknown field")
                && let (Some(file), Some(pos)) = self.locate_exact(&format!("{path}#key"))
            {
                (e.file, e.line, e.column) = (Some(file), pos.line, pos.column);
            }
            e
        })
    }

    /// An error at `path`, located in the last file that sets it (or its nearest set parent).
    pub fn error(&self, path: &str, message: impl Into<String>) -> InputError {
        let (file, pos) = self.locate(path);
        InputError {
            file,
            line: pos.map_or(0, |p| p.line),
            column: pos.map_or(0, |p| p.column),
            path: path.to_string(),
            message: message.into(),
        }
    }

    fn locate_exact(&self, path: &str) -> (Option<PathBuf>, Option<Pos>) {
        for source in self.files.iter().rev() {
            if let Some(pos) = source.positions.get(path) {
                return (Some(source.file.clone()), Some(*pos));
            }
        }
        (None, None)
    }

    /// Where `path` was last set; falls back to the nearest ancestor that was.
    pub fn locate(&self, path: &str) -> (Option<PathBuf>, Option<Pos>) {
        let mut probe = path.to_string();
        loop {
            for source in self.files.iter().rev() {
                if let Some(pos) = source.positions.get(&probe) {
                    return (Some(source.file.clone()), Some(*pos));
                }
            }
            match parent_path(&probe) {
                Some(parent) => probe = parent,
                None => {
                    let file = self.files.last().map(|s| s.file.clone());
                    let pos = self.files.last().and_then(|s| s.positions.get("").copied());
                    return (file, pos);
                }
            }
        }
    }
}

/// The largest manifest or agent config read: far above any real one (the shipped ones are a few
/// KiB), and small enough that parsing it twice stays quick and small.
pub const MAX_INPUT_BYTES: u64 = 4 * 1024 * 1024;

/// Reads an input file of at most [`MAX_INPUT_BYTES`]; an error names the file.
pub fn read_input(file: &Path) -> Result<String, InputError> {
    use std::io::Read;
    let err = |message: String| InputError {
        file: Some(file.to_path_buf()),
        line: 0,
        column: 0,
        path: String::new(),
        message,
    };
    let too_large = |size: String| {
        err(format!(
            "is {size} bytes, over the limit of {MAX_INPUT_BYTES} (4 MiB) for a manifest or an agent config"
        ))
    };
    let f = std::fs::File::open(file).map_err(|e| err(format!("cannot read: {e}")))?;
    if let Ok(meta) = f.metadata()
        && meta.is_file()
        && meta.len() > MAX_INPUT_BYTES
    {
        return Err(too_large(meta.len().to_string()));
    }
    // A pipe or a growing file has no length to trust: read one byte past the limit at most.
    let mut bytes = Vec::new();
    f.take(MAX_INPUT_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| err(format!("cannot read: {e}")))?;
    if bytes.len() as u64 > MAX_INPUT_BYTES {
        return Err(too_large(format!("more than {MAX_INPUT_BYTES}")));
    }
    String::from_utf8(bytes).map_err(|e| {
        err(format!(
            "cannot read: not UTF-8 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        ))
    })
}

/// `web.yaml` with env `prod` -> `web.prod.yaml`.
pub fn overlay_path(file: &Path, env: &str) -> PathBuf {
    let stem = file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ext = file
        .extension()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "yaml".into());
    file.with_file_name(format!("{stem}.{env}.{ext}"))
}

fn parent_path(path: &str) -> Option<String> {
    if path.is_empty() {
        return None;
    }
    let cut = path.rfind(['.', '[']).unwrap_or(0);
    Some(path[..cut].to_string())
}

impl Source {
    /// Parses one file; `vars: None` leaves `${...}` as written.
    fn parse(file: &Path, text: &str, vars: Option<Vars<'_>>) -> Result<Self, InputError> {
        let at = |line: usize, column: usize, message: String| InputError {
            file: Some(file.to_path_buf()),
            line,
            column,
            path: String::new(),
            message,
        };
        let mut value: Value = match serde_yaml::from_str(text) {
            Ok(v) => v,
            Err(e) => {
                let (line, column) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
                return Err(at(
                    line,
                    column,
                    format!("invalid YAML: {}", strip_location(&e.to_string())),
                ));
            }
        };
        let mut index = PositionIndex::default();
        let mut parser = Parser::new_from_str(text);
        if let Err(e) = parser.load(&mut index, false) {
            let m = e.marker();
            return Err(at(
                m.line(),
                m.col() + 1,
                format!("invalid YAML: {}", e.info()),
            ));
        }
        let positions = index.positions;
        let quoted = index.quoted;
        let mut source = Source {
            file: file.to_path_buf(),
            value: Value::Null,
            positions,
        };
        let Some(vars) = vars else {
            source.value = value;
            return Ok(source);
        };
        let mut path = String::new();
        expand_vars(&mut value, &mut path, vars, &quoted).map_err(|(path, message)| {
            let pos = source.positions.get(&path).copied();
            InputError {
                file: Some(file.to_path_buf()),
                line: pos.map_or(0, |p| p.line),
                column: pos.map_or(0, |p| p.column),
                path,
                message,
            }
        })?;
        source.value = value;
        Ok(source)
    }
}

/// Serde's messages end with " at line X column Y" for some errors; the location is printed in front.
fn strip_location(message: &str) -> String {
    match message.find(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

fn tidy_serde_message(message: &str) -> String {
    let message = strip_location(message);
    // serde_yaml phrases type errors as "invalid type: string \"x\", expected u32".
    message
        .replace("expected u32", "expected a non-negative integer")
        .replace("expected u64", "expected a non-negative integer")
}

fn display_path(path: &serde_path_to_error::Path) -> String {
    let text = path.to_string();
    if text == "." { String::new() } else { text }
}

fn merge(into: &mut Value, from: &Value) {
    match (into, from) {
        (Value::Mapping(a), Value::Mapping(b)) => {
            for (k, v) in b {
                match a.get_mut(k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        a.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (slot, other) => *slot = other.clone(),
    }
}

/// Expands `${VAR}`, `${VAR:-default}` and `${VAR:default}` in every string scalar. `$${` stays a
/// literal `${`. A plain (unquoted) value that is exactly one `${...}` is re-read as YAML, so
/// `replicas: ${N}` stays a number; a quoted one (`version: "${VERSION}"`) stays a string, as
/// written (`quoted` holds the paths of quoted scalars).
fn expand_vars(
    value: &mut Value,
    path: &mut String,
    vars: Vars<'_>,
    quoted: &HashSet<String>,
) -> Result<(), (String, String)> {
    match value {
        Value::String(s) if s.contains('$') => {
            let whole = s.starts_with("${")
                && s.ends_with('}')
                && s.matches("${").count() == 1
                && !quoted.contains(path.as_str());
            let expanded = expand_str(s, vars).map_err(|m| (path.clone(), m))?;
            *value = if whole {
                match serde_yaml::from_str::<Value>(&expanded) {
                    Ok(v @ (Value::Number(_) | Value::Bool(_))) => v,
                    _ => Value::String(expanded),
                }
            } else {
                Value::String(expanded)
            };
        }
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                expand_vars(item, path, vars, quoted)?;
                path.truncate(len);
            }
        }
        Value::Mapping(map) => {
            for (k, v) in map.iter_mut() {
                let len = path.len();
                push_key(path, &key_text(k));
                expand_vars(v, path, vars, quoted)?;
                path.truncate(len);
            }
        }
        Value::Tagged(t) => expand_vars(&mut t.value, path, vars, quoted)?,
        _ => {}
    }
    Ok(())
}

/// Expands one string; the error says which variable is missing or which syntax is wrong.
pub fn expand_str(s: &str, vars: Vars<'_>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix("${") {
            out.push_str("${");
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body
                .find('}')
                .ok_or_else(|| format!("unterminated \"${{\" in {s:?}: expected \"${{NAME}}\""))?;
            let inner = &body[..end];
            // The first `:-` or `:` ends the name (`${DB_URL:jdbc:h2:mem:testdb}`, Spring's form).
            let (name, default) = match inner.find(':') {
                Some(j) => {
                    let rest = &inner[j + 1..];
                    (&inner[..j], Some(rest.strip_prefix('-').unwrap_or(rest)))
                }
                None => (inner, None),
            };
            if !valid_var_name(name) {
                return Err(format!(
                    "\"${{{inner}}}\" is not a variable reference: expected \"${{NAME}}\", \"${{NAME:-default}}\" or \"${{NAME:default}}\""
                ));
            }
            match (vars(name), default) {
                (Some(v), Some(d)) if v.is_empty() => out.push_str(d),
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => {
                    return Err(format!(
                        "environment variable {name} is not set (write \"${{{name}:-default}}\" to give a default)"
                    ));
                }
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn valid_var_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

fn key_text(k: &Value) -> String {
    match k {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => serde_yaml::to_string(other)
            .unwrap_or_default()
            .trim()
            .to_string(),
    }
}

fn push_key(path: &mut String, key: &str) {
    if !path.is_empty() {
        path.push('.');
    }
    path.push_str(key);
}

/// Records the position of every value by field path while the event parser walks a document.
#[derive(Default)]
struct PositionIndex {
    positions: HashMap<String, Pos>,
    /// Paths of scalar values written quoted (or as block scalars): strings whatever they hold.
    quoted: HashSet<String>,
    stack: Vec<Frame>,
    path: String,
    done: bool,
}

enum Frame {
    /// A mapping; `key` is Some while its value is awaited. `base` is the path length to restore.
    Map {
        key: Option<String>,
        base: usize,
    },
    Seq {
        next: usize,
        base: usize,
    },
}

impl PositionIndex {
    /// Called before a value (scalar, mapping or sequence) starts: sets `path` to the value's path.
    fn enter_value(&mut self, mark: Marker, collection: bool) -> bool {
        let mut pos = Pos {
            line: mark.line(),
            column: mark.col() + 1,
        };
        match self.stack.last_mut() {
            None => {
                self.positions.entry(String::new()).or_insert(pos);
                true
            }
            Some(Frame::Map { key: None, base }) => {
                // This is a key, not a value.
                let _ = base;
                false
            }
            Some(Frame::Map { key: Some(_), .. }) => {
                // A nested mapping or list is reported at its key, where a reader looks for it.
                if collection
                    && let Some(key_pos) = self.positions.get(&format!("{}#key", self.path))
                {
                    pos = *key_pos;
                }
                self.positions.insert(self.path.clone(), pos);
                true
            }
            Some(Frame::Seq { next, base }) => {
                self.path.truncate(*base);
                self.path.push_str(&format!("[{next}]"));
                *next += 1;
                self.positions.insert(self.path.clone(), pos);
                true
            }
        }
    }

    /// Called after a value is complete: the enclosing mapping awaits its next key.
    fn leave_value(&mut self) {
        if let Some(Frame::Map { key, base }) = self.stack.last_mut() {
            *key = None;
            self.path.truncate(*base);
        }
    }
}

impl MarkedEventReceiver for PositionIndex {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        if self.done {
            return;
        }
        match ev {
            Event::Scalar(text, style, ..) => {
                if let Some(Frame::Map {
                    key: key @ None,
                    base,
                }) = self.stack.last_mut()
                {
                    let base = *base;
                    *key = Some(text.clone());
                    self.path.truncate(base);
                    push_key(&mut self.path, &text);
                    let pos = Pos {
                        line: mark.line(),
                        column: mark.col() + 1,
                    };
                    self.positions.insert(format!("{}#key", self.path), pos);
                    return;
                }
                if self.enter_value(mark, false) && style != TScalarStyle::Plain {
                    self.quoted.insert(self.path.clone());
                }
                self.leave_value();
            }
            Event::Alias(_) => {
                if let Some(Frame::Map {
                    key: key @ None, ..
                }) = self.stack.last_mut()
                {
                    *key = Some("*alias".into());
                    return;
                }
                self.enter_value(mark, false);
                self.leave_value();
            }
            Event::MappingStart(..) => {
                self.enter_value(mark, true);
                let base = self.path.len();
                self.stack.push(Frame::Map { key: None, base });
            }
            Event::SequenceStart(..) => {
                self.enter_value(mark, true);
                let base = self.path.len();
                self.stack.push(Frame::Seq { next: 0, base });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                let base = match self.stack.pop() {
                    Some(Frame::Map { base, .. } | Frame::Seq { base, .. }) => base,
                    None => 0,
                };
                self.path.truncate(base);
                self.leave_value();
            }
            Event::DocumentEnd => self.done = true,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_vars(_: &str) -> Option<String> {
        None
    }

    fn src(text: &str) -> Sources {
        Sources::from_texts(&[(Path::new("t.yaml"), text)], &no_vars).unwrap()
    }

    #[test]
    fn positions_follow_nested_paths() {
        let s = src("a:\n  b: 1\n  c:\n    - x\n    - y: 2\n");
        assert_eq!(s.locate("a.b").1, Some(Pos { line: 2, column: 6 }));
        assert_eq!(
            s.locate("a.c[1].y").1,
            Some(Pos {
                line: 5,
                column: 10
            })
        );
        assert_eq!(s.locate("a.c[0]").1, Some(Pos { line: 4, column: 7 }));
        // An unknown path falls back to its nearest known parent.
        assert_eq!(s.locate("a.c[1].zz").1.map(|p| p.line), Some(5));
    }

    #[test]
    fn flow_style_positions() {
        let s = src("spec:\n  rolling: {maxSurge: \"130\", maxUnavailable: 0}\n");
        assert_eq!(
            s.locate("spec.rolling.maxSurge").1,
            Some(Pos {
                line: 2,
                column: 23
            })
        );
    }

    #[test]
    fn overlays_merge_deeply_and_locate_in_the_last_file() {
        let s = Sources::from_texts(
            &[
                (Path::new("base.yaml"), "a: {b: 1, c: 2}\nl: [1, 2]\n"),
                (Path::new("prod.yaml"), "a:\n  c: 3\nl: [9]\n"),
            ],
            &no_vars,
        )
        .unwrap();
        let merged = s.merged();
        assert_eq!(merged["a"]["b"], Value::from(1));
        assert_eq!(merged["a"]["c"], Value::from(3));
        assert_eq!(merged["l"], serde_yaml::from_str::<Value>("[9]").unwrap());
        assert_eq!(s.locate("a.c").0.unwrap(), PathBuf::from("prod.yaml"));
        assert_eq!(s.locate("a.b").0.unwrap(), PathBuf::from("base.yaml"));
    }

    #[test]
    fn vars_expand_with_defaults_and_escapes() {
        let vars = |n: &str| (n == "TAG").then(|| "v2".to_string());
        assert_eq!(expand_str("img:${TAG}", &vars).unwrap(), "img:v2");
        assert_eq!(expand_str("${NOPE:-x}", &vars).unwrap(), "x");
        assert_eq!(expand_str("$${TAG} $5", &vars).unwrap(), "${TAG} $5");
        assert!(
            expand_str("${NOPE}", &vars)
                .unwrap_err()
                .contains("NOPE is not set")
        );
        assert!(
            expand_str("${TAG", &vars)
                .unwrap_err()
                .contains("unterminated")
        );
        assert!(
            expand_str("${1X}", &vars)
                .unwrap_err()
                .contains("not a variable reference")
        );
    }

    #[test]
    fn whole_value_vars_keep_their_type() {
        let vars = |n: &str| (n == "N").then(|| "5".to_string());
        let s = Sources::from_texts(&[(Path::new("t.yaml"), "n: ${N}\ns: \"x${N}\"\n")], &vars)
            .unwrap();
        assert_eq!(s.merged()["n"], Value::from(5));
        assert_eq!(s.merged()["s"], Value::from("x5"));
    }

    #[test]
    fn spring_style_defaults_split_at_the_first_colon() {
        let vars = |n: &str| (n == "SET").then(|| "yes".to_string());
        assert_eq!(
            expand_str("${DB_URL:jdbc:h2:mem:testdb}", &vars).unwrap(),
            "jdbc:h2:mem:testdb"
        );
        assert_eq!(expand_str("${DB_PASS:}", &vars).unwrap(), "");
        assert_eq!(expand_str("${DB_PASS:-}", &vars).unwrap(), "");
        assert_eq!(expand_str("${X:-a:-b}", &vars).unwrap(), "a:-b");
        assert_eq!(expand_str("${X:a-b}", &vars).unwrap(), "a-b");
        assert_eq!(expand_str("${SET:no}", &vars).unwrap(), "yes");
        assert!(
            expand_str("${:x}", &vars)
                .unwrap_err()
                .contains("${NAME:default}")
        );
    }

    /// Regression (issue 16, bug 7): `version: "${VERSION}"` lost its quotes after expansion.
    #[test]
    fn quoted_vars_stay_strings() {
        let vars = |n: &str| match n {
            "VERSION" => Some("3.20".to_string()),
            "DAY" => Some("20261202".to_string()),
            _ => None,
        };
        let text = "a: \"${VERSION}\"\nb: '${DAY}'\nc: ${DAY}\nl:\n  - \"${DAY}\"\n  - ${DAY}\nd: |\n  ${DAY}\n";
        let s = Sources::from_texts(&[(Path::new("t.yaml"), text)], &vars).unwrap();
        let m = s.merged();
        assert_eq!(m["a"], Value::from("3.20"));
        assert_eq!(m["b"], Value::from("20261202"));
        assert_eq!(m["c"], Value::from(20261202));
        assert_eq!(m["l"][0], Value::from("20261202"));
        assert_eq!(m["l"][1], Value::from(20261202));
        assert_eq!(m["d"], Value::from("20261202\n"));
    }

    #[test]
    fn inputs_over_4_mib_are_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big.yaml");
        let line = "# padding padding padding padding padding padding padding padding\n";
        let mut text = String::from("a: 1\n");
        while text.len() as u64 <= MAX_INPUT_BYTES {
            text.push_str(line);
        }
        std::fs::write(&big, &text).unwrap();
        let err = Sources::read(std::slice::from_ref(&big), None, &no_vars).unwrap_err();
        assert_eq!(err.file.as_deref(), Some(big.as_path()));
        assert!(err.message.contains("over the limit of 4194304"), "{err}");
        // Just under the limit reads.
        text.truncate(MAX_INPUT_BYTES as usize - 1);
        let cut = text.rfind('\n').unwrap();
        text.truncate(cut + 1);
        std::fs::write(&big, &text).unwrap();
        assert!(Sources::read(&[big], None, &no_vars).is_ok());
    }

    #[test]
    fn missing_var_is_located() {
        let err = Sources::from_texts(
            &[(Path::new("t.yaml"), "a:\n  b: \"${MISSING}\"\n")],
            &no_vars,
        )
        .unwrap_err();
        assert_eq!((err.line, err.column, err.path.as_str()), (2, 6, "a.b"));
        assert!(err.message.contains("MISSING"));
    }

    #[test]
    fn syntax_errors_have_positions() {
        let err = Sources::from_texts(&[(Path::new("t.yaml"), "a: [1, 2\nb: 3\n")], &no_vars)
            .unwrap_err();
        assert!(err.line > 0, "{err}");
        assert!(err.to_string().starts_with("t.yaml:"), "{err}");
    }

    #[test]
    fn overlay_path_inserts_env() {
        assert_eq!(
            overlay_path(Path::new("/x/web.yaml"), "prod"),
            PathBuf::from("/x/web.prod.yaml")
        );
    }
}
