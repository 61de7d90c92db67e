//! The syntax tree of an xl.cfg file: settings of atoms and lists, each
//! remembering its line, and the lookups that apply "the last setting of a
//! key wins" and `+=`.

use super::error::ConfigError;
use super::parser::Parser;

/// How an atom was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtomKind {
    /// A bare number such as `256` or `0x100`.
    Number,
    /// A quoted string (already unescaped).
    String,
}

/// A single value. As in libxlu, numbers and strings are both kept as text;
/// what they mean depends on the key that reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Atom {
    pub text: String,
    pub kind: AtomKind,
    pub line: u32,
}

/// A value: an atom or a (possibly nested) list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Atom(Atom),
    List { items: Vec<Value>, line: u32 },
}

impl Value {
    /// The line the value starts on.
    pub fn line(&self) -> u32 {
        match self {
            Value::Atom(a) => a.line,
            Value::List { line, .. } => *line,
        }
    }

    /// The text of an atom.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Atom(a) => Some(&a.text),
            Value::List { .. } => None,
        }
    }

    /// The items of a list.
    pub fn as_list(&self) -> Option<&[Value]> {
        match self {
            Value::Atom(_) => None,
            Value::List { items, .. } => Some(items),
        }
    }
}

/// `=` or `+=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Assign,
    Add,
}

/// One `key = value` statement. For `+=` the value already includes what it
/// was appended to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    pub key: String,
    pub op: Op,
    pub value: Value,
    /// The line of the value (where libxlu locates a setting).
    pub line: u32,
}

/// A parsed configuration file: its settings in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CfgFile {
    /// The name errors are reported against.
    pub source: String,
    pub settings: Vec<Setting>,
}

impl CfgFile {
    /// Parses xl.cfg text; `source` names it in errors.
    pub fn parse(text: &str, source: &str) -> Result<CfgFile, ConfigError> {
        Parser::new(text, source).file()
    }

    /// The setting in effect for `key` (the last one).
    pub fn get(&self, key: &str) -> Option<&Setting> {
        self.settings.iter().rev().find(|s| s.key == key)
    }

    /// The settings in effect, one per key, in file order.
    pub fn effective(&self) -> Vec<&Setting> {
        self.settings
            .iter()
            .enumerate()
            .filter(|(i, s)| !self.settings[i + 1..].iter().any(|t| t.key == s.key))
            .map(|(_, s)| s)
            .collect()
    }
}
