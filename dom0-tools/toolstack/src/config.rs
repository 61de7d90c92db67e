//! Domain configuration files in xl.cfg(5) syntax.
//!
//! Two layers:
//!
//! * [`CfgFile`]: the syntax tree of libxlu's grammar. A file is a sequence
//!   of `key = value` (or `key += value`) settings ended by a newline or
//!   `;`; keys are `[a-z][._0-9a-z]*`; a value is a string in `"double"` or
//!   `'single'` quotes (with C-style escapes), a number (`[0-9][0-9a-fx]*`,
//!   kept as text like every atom), or a list `[ v, v, ]` that may span lines
//!   and may end with a comma; `#` starts a comment. The last setting of a
//!   key wins; `+=` appends to the previous value of the same key (strings
//!   concatenate, lists join). Every value remembers its line.
//! * [`DomainConfig`]: the domain the file describes, filled in by serde
//!   (a [`serde::Deserializer`] over the syntax tree drives the field
//!   mapping and type checks), then completed with xl's defaults.
//!
//! Keys nobody reads produce [`ConfigWarning`]s, not errors; a value of the
//! wrong kind is a [`ConfigError`] naming the file, line and key:
//! `guest.cfg:7: memory: expected an integer`.
//!
//! Deviations from xl, all in the direction of reporting problems xl lets
//! pass: xl only warns about a malformed number and then ignores the
//! setting, and ignores garbage in vif specs; both are errors here. A
//! comment on the last line needs no newline after it. The `\xHH` and
//! `\OOO` escapes work as documented (xl's own decoder drops them).

use std::{cell::RefCell, fmt, path::Path, str::FromStr};

use serde::{
    de::{self, IntoDeserializer, Visitor},
    Deserialize, Serialize,
};

use crate::{
    disk::{DiskError, DiskSpec},
    vif::{VifError, VifSpec},
};

// ===========================================================================
// Syntax tree

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

// ===========================================================================
// Errors and warnings

/// Where a syntax error was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Near {
    Text(String),
    Newline,
    EndOfFile,
}

impl fmt::Display for Near {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Near::Text(t) => write!(f, "`{t}'"),
            Near::Newline => f.write_str("<newline>"),
            Near::EndOfFile => f.write_str("<end of file>"),
        }
    }
}

/// Why a configuration could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read (xl's wording).
    #[error("Failed to read config file: {path}: {reason}")]
    Read { path: String, reason: String },
    /// The text does not follow the grammar (libxlu's wording).
    #[error("{file}:{line}: config parsing error near {near}: {msg}")]
    Syntax {
        file: String,
        line: u32,
        near: Near,
        msg: String,
        /// The text looks like Python, which xl.cfg once allowed; xl then
        /// adds [`crate::xl::PYTHON_CONFIG_WARNING`].
        likely_python: bool,
    },
    /// A setting has a bad value.
    #[error("{file}:{line}: {key}: {msg}")]
    Value {
        file: String,
        line: u32,
        key: String,
        msg: String,
    },
    /// A required setting is absent (or settings contradict each other
    /// without one line to blame).
    #[error("{file}: {key}: {msg}")]
    Missing {
        file: String,
        key: String,
        msg: String,
    },
    /// An entry of `disk = [...]` is not a valid disk spec.
    #[error("{file}:{line}: disk: {error}")]
    Disk {
        file: String,
        line: u32,
        error: DiskError,
    },
    /// An entry of `vif = [...]` is not a valid vif spec.
    #[error("{file}:{line}: vif: {error}")]
    Vif {
        file: String,
        line: u32,
        error: VifError,
    },
}

impl ConfigError {
    /// The file the error is about.
    pub fn file(&self) -> &str {
        match self {
            ConfigError::Read { path, .. } => path,
            ConfigError::Syntax { file, .. }
            | ConfigError::Value { file, .. }
            | ConfigError::Missing { file, .. }
            | ConfigError::Disk { file, .. }
            | ConfigError::Vif { file, .. } => file,
        }
    }

    /// The line the error is about, if there is one.
    pub fn line(&self) -> Option<u32> {
        match self {
            ConfigError::Syntax { line, .. }
            | ConfigError::Value { line, .. }
            | ConfigError::Disk { line, .. }
            | ConfigError::Vif { line, .. } => Some(*line),
            ConfigError::Read { .. } | ConfigError::Missing { .. } => None,
        }
    }
}

/// What a warning is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WarningKind {
    /// No xl version reads this key.
    UnknownKey,
    /// xl reads this key, but kxen does not implement it.
    Unsupported,
    /// A remark on the value (deprecated or overridden), as xl makes.
    Note(String),
}

/// A problem that does not stop the domain from being created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigWarning {
    pub file: String,
    pub line: u32,
    pub key: String,
    pub kind: WarningKind,
}

impl fmt::Display for ConfigWarning {
    /// In xl's warning style: ``guest.cfg:3: warning: unknown parameter
    /// `colour' ignored``.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: warning: ", self.file, self.line)?;
        match &self.kind {
            WarningKind::UnknownKey => write!(f, "unknown parameter `{}' ignored", self.key),
            WarningKind::Unsupported => write!(
                f,
                "parameter `{}' is not supported by kxen, ignored",
                self.key
            ),
            WarningKind::Note(msg) => write!(f, "{}: {msg}", self.key),
        }
    }
}

// ===========================================================================
// Lexer and parser

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Ident(String),
    Number(String),
    Str(String),
    Comma,
    LBracket,
    RBracket,
    Add,
    Eq,
    Semi,
    Newline,
    Eof,
}

impl Tok {
    /// The token's name in the grammar, for "unexpected ..." messages.
    fn describe(&self) -> &'static str {
        match self {
            Tok::Ident(_) => "IDENT",
            Tok::Number(_) => "NUMBER",
            Tok::Str(_) => "STRING",
            Tok::Comma => "','",
            Tok::LBracket => "'['",
            Tok::RBracket => "']'",
            Tok::Add => "\"+=\"",
            Tok::Eq => "'='",
            Tok::Semi => "';'",
            Tok::Newline => "NEWLINE",
            Tok::Eof => "end of file",
        }
    }
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    line: u32,
    /// The source text, for error messages.
    text: String,
}

struct Parser<'a> {
    src: &'a str,
    pos: usize,
    line: u32,
    source: &'a str,
    peeked: Option<Token>,
}

fn is_ident_start(c: u8) -> bool {
    c.is_ascii_lowercase()
}

fn is_ident_char(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'_'
}

fn is_number_char(c: u8) -> bool {
    c.is_ascii_digit() || (b'a'..=b'f').contains(&c) || c == b'x'
}

impl<'a> Parser<'a> {
    fn new(src: &'a str, source: &'a str) -> Self {
        Parser {
            src,
            pos: 0,
            line: 1,
            source,
            peeked: None,
        }
    }

    fn syntax(&self, line: u32, near: Near, msg: impl Into<String>, python: bool) -> ConfigError {
        ConfigError::Syntax {
            file: self.source.to_string(),
            line,
            near,
            msg: msg.into(),
            likely_python: python,
        }
    }

    fn unexpected(&self, t: &Token, expecting: &str) -> ConfigError {
        let near = match &t.tok {
            Tok::Eof => Near::EndOfFile,
            Tok::Newline if t.text.is_empty() => Near::Newline,
            _ => Near::Text(t.text.clone()),
        };
        let mut msg = format!("syntax error, unexpected {}", t.tok.describe());
        if !expecting.is_empty() {
            msg.push_str(", expecting ");
            msg.push_str(expecting);
        }
        self.syntax(t.line, near, msg, false)
    }

    /// A character no rule accepts: the error covers it and the non-blank
    /// characters after it.
    fn lexical_error(&mut self, start: usize) -> ConfigError {
        let rest = &self.src[start..];
        let end = rest
            .char_indices()
            .skip(1)
            .find(|&(_, c)| matches!(c, ' ' | '\t' | '\n'))
            .map_or(rest.len(), |(i, _)| i);
        self.pos = start + end;
        let python = matches!(rest.as_bytes()[0], b'+' | b'-' | b'.' | b'(' | b')' | b':');
        self.syntax(
            self.line,
            Near::Text(rest[..end].to_string()),
            "lexical error",
            python,
        )
    }

    fn lex(&mut self) -> Result<Token, ConfigError> {
        let bytes = self.src.as_bytes();
        loop {
            let start = self.pos;
            let line = self.line;
            let tok = |tok: Tok, text: &str| Token {
                tok,
                line,
                text: text.to_string(),
            };
            let Some(&c) = bytes.get(start) else {
                return Ok(tok(Tok::Eof, ""));
            };
            match c {
                b' ' | b'\t' => {
                    self.pos += 1;
                    continue;
                }
                b'\n' => {
                    self.pos += 1;
                    self.line += 1;
                    return Ok(tok(Tok::Newline, ""));
                }
                b'#' => {
                    let end = self.src[start..]
                        .find('\n')
                        .map_or(self.src.len(), |i| start + i);
                    let text = &self.src[start..end];
                    self.pos = end;
                    if end < self.src.len() {
                        self.pos += 1;
                        self.line += 1;
                    }
                    return Ok(tok(Tok::Newline, text));
                }
                b',' | b'[' | b']' | b'=' | b';' => {
                    self.pos += 1;
                    let t = match c {
                        b',' => Tok::Comma,
                        b'[' => Tok::LBracket,
                        b']' => Tok::RBracket,
                        b'=' => Tok::Eq,
                        _ => Tok::Semi,
                    };
                    return Ok(tok(t, &self.src[start..start + 1]));
                }
                b'+' if bytes.get(start + 1) == Some(&b'=') => {
                    self.pos += 2;
                    return Ok(tok(Tok::Add, "+="));
                }
                c if is_ident_start(c) => {
                    let n = bytes[start..]
                        .iter()
                        .take_while(|&&b| is_ident_char(b))
                        .count();
                    self.pos += n;
                    let text = &self.src[start..start + n];
                    return Ok(tok(Tok::Ident(text.into()), text));
                }
                c if c.is_ascii_digit() => {
                    let n = bytes[start..]
                        .iter()
                        .take_while(|&&b| is_number_char(b))
                        .count();
                    self.pos += n;
                    let text = &self.src[start..start + n];
                    return Ok(tok(Tok::Number(text.into()), text));
                }
                b'"' | b'\'' => {
                    // A string ends at the matching quote on the same line; a
                    // backslash takes the next character with it.
                    let mut i = start + 1;
                    let end = loop {
                        match bytes.get(i) {
                            None | Some(b'\n') => return Err(self.lexical_error(start)),
                            Some(&b) if b == c => break i,
                            Some(b'\\') => match bytes.get(i + 1) {
                                None | Some(b'\n') => return Err(self.lexical_error(start)),
                                Some(_) => {
                                    i += 1;
                                    // step over a whole UTF-8 character
                                    i += self.src[i..].chars().next().map_or(1, char::len_utf8);
                                }
                            },
                            Some(_) => i += 1,
                        }
                    };
                    self.pos = end + 1;
                    let raw = &self.src[start..=end];
                    let text = self.dequote(&raw[1..raw.len() - 1], raw, line)?;
                    return Ok(tok(Tok::Str(text), raw));
                }
                _ => return Err(self.lexical_error(start)),
            }
        }
    }

    /// Decodes the escapes of a quoted string: `\" \' \\ \a \b \f \n \r \t
    /// \v`, `\xHH` and octal `\O`..`\OOO`.
    fn dequote(&self, body: &str, raw: &str, line: u32) -> Result<String, ConfigError> {
        let mut out = String::with_capacity(body.len());
        let mut chars = body.chars().peekable();
        let err = |msg: &str| self.syntax(line, Near::Text(raw.to_string()), msg, false);
        while let Some(c) = chars.next() {
            if c != '\\' {
                out.push(c);
                continue;
            }
            let e = chars
                .next()
                .expect("the lexer keeps a character after '\\'");
            match e {
                '"' | '\'' | '\\' => out.push(e),
                'a' => out.push('\x07'),
                'b' => out.push('\x08'),
                'f' => out.push('\x0c'),
                'n' => out.push('\n'),
                'r' => out.push('\r'),
                't' => out.push('\t'),
                'v' => out.push('\x0b'),
                'x' => {
                    let mut v = 0u32;
                    for _ in 0..2 {
                        match chars.next().and_then(|d| d.to_digit(16)) {
                            Some(d) => v = v * 16 + d,
                            None => {
                                return Err(err(
                                    "invalid digit after backslash hex numerical character escape in quoted string",
                                ))
                            }
                        }
                    }
                    out.push(char::from(v as u8));
                }
                '0'..='7' => {
                    let mut v = e.to_digit(8).expect("octal digit");
                    for _ in 0..2 {
                        match chars.peek().and_then(|d| d.to_digit(8)) {
                            Some(d) => {
                                v = v * 8 + d;
                                chars.next();
                            }
                            None => break,
                        }
                    }
                    if v > 0xff {
                        return Err(err(
                            "invalid digit after backslash octal numerical character escape in quoted string",
                        ));
                    }
                    out.push(char::from(v as u8));
                }
                _ => return Err(err("invalid character after backslash in quoted string")),
            }
        }
        Ok(out)
    }

    fn next(&mut self) -> Result<Token, ConfigError> {
        match self.peeked.take() {
            Some(t) => Ok(t),
            None => self.lex(),
        }
    }

    fn peek(&mut self) -> Result<&Token, ConfigError> {
        if self.peeked.is_none() {
            self.peeked = Some(self.lex()?);
        }
        Ok(self.peeked.as_ref().expect("just filled"))
    }

    fn skip_newlines(&mut self) -> Result<(), ConfigError> {
        while self.peek()?.tok == Tok::Newline {
            self.next()?;
        }
        Ok(())
    }

    fn file(mut self) -> Result<CfgFile, ConfigError> {
        self.statements().map_err(|mut e| {
            if let ConfigError::Syntax { likely_python, .. } = &mut e {
                if !*likely_python {
                    *likely_python = self.rest_looks_like_python();
                }
            }
            e
        })
    }

    /// After an error, xl's parser recovers and reads on, noting whether
    /// it meets characters that suggest Python; this scans the rest of the
    /// text the same way.
    fn rest_looks_like_python(&mut self) -> bool {
        self.peeked = None;
        loop {
            match self.lex() {
                Ok(t) if t.tok == Tok::Eof => return false,
                Ok(_) => {}
                Err(ConfigError::Syntax {
                    likely_python: true,
                    ..
                }) => return true,
                Err(_) => {}
            }
        }
    }

    fn statements(&mut self) -> Result<CfgFile, ConfigError> {
        let mut settings: Vec<Setting> = Vec::new();
        loop {
            let t = self.next()?;
            let key = match t.tok {
                Tok::Newline | Tok::Semi => continue,
                Tok::Eof => break,
                Tok::Ident(ref k) => k.clone(),
                _ => return Err(self.unexpected(&t, "")),
            };
            let op_tok = self.next()?;
            let op = match op_tok.tok {
                Tok::Eq => Op::Assign,
                Tok::Add => Op::Add,
                _ => return Err(self.unexpected(&op_tok, "'=' or \"+=\"")),
            };
            let value = self.value()?;
            let end = self.next()?;
            if !matches!(end.tok, Tok::Newline | Tok::Semi | Tok::Eof) {
                return Err(self.unexpected(&end, "NEWLINE or ';'"));
            }
            self.store(&mut settings, key, op, value)?;
            if end.tok == Tok::Eof {
                break;
            }
        }
        Ok(CfgFile {
            source: self.source.to_string(),
            settings,
        })
    }

    fn store(
        &self,
        settings: &mut Vec<Setting>,
        key: String,
        op: Op,
        mut value: Value,
    ) -> Result<(), ConfigError> {
        if op == Op::Add {
            if let Some(prev) = settings.iter().rev().find(|s| s.key == key) {
                match (&prev.value, &mut value) {
                    (Value::Atom(p), Value::Atom(v)) => v.text.insert_str(0, &p.text),
                    (Value::List { items: p, .. }, Value::List { items: v, .. }) => {
                        v.splice(0..0, p.iter().cloned());
                    }
                    _ => {
                        return Err(self.syntax(
                            value.line(),
                            Near::Text(key),
                            "can't add [list] to \"string\" or vice versa",
                            false,
                        ))
                    }
                }
            }
        }
        let line = value.line();
        settings.push(Setting {
            key,
            op,
            value,
            line,
        });
        Ok(())
    }

    fn value(&mut self) -> Result<Value, ConfigError> {
        let t = self.next()?;
        match t.tok {
            Tok::Str(s) => Ok(Value::Atom(Atom {
                text: s,
                kind: AtomKind::String,
                line: t.line,
            })),
            Tok::Number(s) => Ok(Value::Atom(Atom {
                text: s,
                kind: AtomKind::Number,
                line: t.line,
            })),
            Tok::LBracket => self.list(t.line),
            _ => Err(self.unexpected(&t, "STRING or NUMBER or '['")),
        }
    }

    fn list(&mut self, line: u32) -> Result<Value, ConfigError> {
        let mut items = Vec::new();
        self.skip_newlines()?;
        if self.peek()?.tok == Tok::RBracket {
            self.next()?;
            return Ok(Value::List { items, line });
        }
        loop {
            items.push(self.value()?);
            self.skip_newlines()?;
            let t = self.next()?;
            match t.tok {
                Tok::RBracket => break,
                Tok::Comma => {
                    self.skip_newlines()?;
                    if self.peek()?.tok == Tok::RBracket {
                        self.next()?;
                        break;
                    }
                }
                _ => return Err(self.unexpected(&t, "',' or ']'")),
            }
        }
        Ok(Value::List { items, line })
    }
}

// ===========================================================================
// Numbers as xl reads them

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IntError {
    Invalid,
    Range,
}

/// C `strtol(s, &end, 0)` requiring the whole string: optional leading
/// whitespace and sign, then `0x` hex, `0` octal or decimal.
fn parse_c_long(s: &str) -> Result<i64, IntError> {
    let s = s.trim_start_matches([' ', '\t', '\n', '\x0b', '\x0c', '\r']);
    let (neg, s) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let (radix, digits) = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) if h.bytes().next().is_some_and(|b| b.is_ascii_hexdigit()) => (16, h),
        _ if s.len() > 1 && s.starts_with('0') => (8, &s[1..]),
        _ => (10, s),
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return Err(IntError::Invalid);
    }
    let magnitude = u128::from_str_radix(digits, radix).map_err(|_| IntError::Range)?;
    let v = if neg {
        -(magnitude as i128)
    } else {
        magnitude as i128
    };
    i64::try_from(v).map_err(|_| IntError::Range)
}

// ===========================================================================
// serde over the syntax tree

/// Error inside the deserializer; located (key, line) on the way out.
#[derive(Debug)]
struct DeError {
    msg: String,
    key: Option<String>,
    line: Option<u32>,
}

impl DeError {
    fn new(msg: impl Into<String>) -> Self {
        DeError {
            msg: msg.into(),
            key: None,
            line: None,
        }
    }

    fn at_line(mut self, line: u32) -> Self {
        self.line.get_or_insert(line);
        self
    }

    fn at_key(mut self, key: &str) -> Self {
        self.key.get_or_insert_with(|| key.to_string());
        self
    }
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.msg)
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DeError::new(msg.to_string())
    }
}

/// Settings that no field took (serde asked to ignore their values).
type Ignored<'a> = RefCell<Vec<&'a Setting>>;

/// The whole file as a map from key to value.
struct SettingsDe<'a, 'b> {
    settings: Vec<&'a Setting>,
    ignored: &'b Ignored<'a>,
}

impl<'de, 'a, 'b> de::Deserializer<'de> for SettingsDe<'a, 'b> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_map(SettingsMap {
            iter: self.settings.into_iter(),
            current: None,
            ignored: self.ignored,
        })
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map struct enum identifier ignored_any
    }
}

struct SettingsMap<'a, 'b> {
    iter: std::vec::IntoIter<&'a Setting>,
    current: Option<&'a Setting>,
    ignored: &'b Ignored<'a>,
}

impl<'de, 'a, 'b> de::MapAccess<'de> for SettingsMap<'a, 'b> {
    type Error = DeError;

    fn next_key_seed<K: de::DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        let Some(setting) = self.iter.next() else {
            return Ok(None);
        };
        self.current = Some(setting);
        let key: de::value::StrDeserializer<'_, DeError> = setting.key.as_str().into_deserializer();
        seed.deserialize(key).map(Some)
    }

    fn next_value_seed<V: de::DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, DeError> {
        let setting = self.current.take().expect("value asked for before its key");
        seed.deserialize(ValueDe {
            value: &setting.value,
            op: setting.op,
            top: Some(setting),
            ignored: self.ignored,
        })
        .map_err(|e| e.at_line(setting.line).at_key(&setting.key))
    }
}

/// One value; `top` is set for the value of a setting (not a list item).
struct ValueDe<'a, 'b> {
    value: &'a Value,
    op: Op,
    top: Option<&'a Setting>,
    ignored: &'b Ignored<'a>,
}

const NOT_A_LIST: &str = "expected a single value, not a list";

impl<'a, 'b> ValueDe<'a, 'b> {
    fn atom(&self) -> Result<&'a Atom, DeError> {
        match self.value {
            Value::Atom(a) => Ok(a),
            Value::List { .. } => Err(DeError::new(NOT_A_LIST)),
        }
    }

    fn integer(&self) -> Result<i64, DeError> {
        let atom = self.atom()?;
        if self.op == Op::Add {
            return Err(DeError::new("can't use += with numbers"));
        }
        parse_c_long(&atom.text).map_err(|e| match e {
            IntError::Invalid => DeError::new("expected an integer"),
            IntError::Range => DeError::new("value out of range"),
        })
    }

    fn seq(&self) -> Result<ListSeq<'a, 'b>, DeError> {
        match self.value {
            Value::List { items, .. } => Ok(ListSeq {
                iter: items.iter(),
                ignored: self.ignored,
            }),
            Value::Atom(_) => Err(DeError::new("expected a list, not a single value")),
        }
    }
}

macro_rules! deserialize_integer {
    ($($method:ident $visit:ident $ty:ty;)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
            let n = self.integer()?;
            let n = <$ty>::try_from(n).map_err(|_| DeError::new("value out of range"))?;
            visitor.$visit(n)
        }
    )*};
}

impl<'de, 'a, 'b> de::Deserializer<'de> for ValueDe<'a, 'b> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.value {
            Value::Atom(a) => visitor.visit_str(&a.text),
            Value::List { .. } => visitor.visit_seq(self.seq()?),
        }
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_bool(self.integer()? != 0)
    }

    deserialize_integer! {
        deserialize_i8 visit_i8 i8;
        deserialize_i16 visit_i16 i16;
        deserialize_i32 visit_i32 i32;
        deserialize_i64 visit_i64 i64;
        deserialize_u8 visit_u8 u8;
        deserialize_u16 visit_u16 u16;
        deserialize_u32 visit_u32 u32;
        deserialize_u64 visit_u64 u64;
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_str(&self.atom()?.text)
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_seq(self.seq()?)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        let text: de::value::StrDeserializer<'_, DeError> =
            self.atom()?.text.as_str().into_deserializer();
        visitor.visit_enum(text)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        if let Some(setting) = self.top {
            self.ignored.borrow_mut().push(setting);
        }
        visitor.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        i128 u128 f32 f64 char bytes byte_buf unit unit_struct tuple
        tuple_struct map struct
    }
}

struct ListSeq<'a, 'b> {
    iter: std::slice::Iter<'a, Value>,
    ignored: &'b Ignored<'a>,
}

impl<'de, 'a, 'b> de::SeqAccess<'de> for ListSeq<'a, 'b> {
    type Error = DeError;

    fn next_element_seed<T: de::DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        let Some(item) = self.iter.next() else {
            return Ok(None);
        };
        seed.deserialize(ValueDe {
            value: item,
            op: Op::Assign,
            top: None,
            ignored: self.ignored,
        })
        .map(Some)
        .map_err(|e| e.at_line(item.line()))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.iter.len())
    }
}

/// A string, or a list of strings (`serial`, `bootloader_args`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct StringList(Vec<String>);

impl<'de> Deserialize<'de> for StringList {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = StringList;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or a list of strings")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<StringList, E> {
                Ok(StringList(vec![s.to_string()]))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<StringList, A::Error> {
                let mut v = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    v.push(s);
                }
                Ok(StringList(v))
            }
        }
        d.deserialize_any(V)
    }
}

// ===========================================================================
// The domain configuration

/// Guest type (`type=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DomainType {
    Pv,
    Pvh,
    Hvm,
}

impl DomainType {
    pub fn as_str(self) -> &'static str {
        match self {
            DomainType::Pv => "pv",
            DomainType::Pvh => "pvh",
            DomainType::Hvm => "hvm",
        }
    }
}

impl fmt::Display for DomainType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What to do when the domain shuts down for a given reason (`on_poweroff`,
/// `on_reboot`, `on_watchdog`, `on_crash`, `on_soft_reset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    Destroy,
    Restart,
    RenameRestart,
    Preserve,
    CoredumpDestroy,
    CoredumpRestart,
    SoftReset,
}

impl Action {
    /// The name in xl.cfg.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Destroy => "destroy",
            Action::Restart => "restart",
            Action::RenameRestart => "rename-restart",
            Action::Preserve => "preserve",
            Action::CoredumpDestroy => "coredump-destroy",
            Action::CoredumpRestart => "coredump-restart",
            Action::SoftReset => "soft-reset",
        }
    }

    /// The name in libxl's JSON (`libxl_action_on_shutdown`).
    pub fn libxl_name(self) -> &'static str {
        match self {
            Action::Destroy => "destroy",
            Action::Restart => "restart",
            Action::RenameRestart => "restart_rename",
            Action::Preserve => "preserve",
            Action::CoredumpDestroy => "coredump_destroy",
            Action::CoredumpRestart => "coredump_restart",
            Action::SoftReset => "soft_reset",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Action {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Action::deserialize(de::value::StrDeserializer::<de::value::Error>::new(s))
            .map_err(|e| e.to_string())
    }
}

/// A domain UUID; displays as `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Uuid(pub [u8; 16]);

impl Uuid {
    /// The all-zero UUID (Domain-0's).
    pub const NIL: Uuid = Uuid([0; 16]);

    /// A random (version 4) UUID.
    pub fn random() -> Uuid {
        let mut b = random_bytes::<16>();
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        Uuid(b)
    }
}

impl fmt::Display for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Uuid({self})")
    }
}

/// Text that is not a UUID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("failed to parse UUID: {0}")]
pub struct BadUuid(pub String);

impl FromStr for Uuid {
    type Err = BadUuid;
    fn from_str(s: &str) -> Result<Self, BadUuid> {
        let bad = || BadUuid(s.to_string());
        let b = s.as_bytes();
        if b.len() != 36 {
            return Err(bad());
        }
        let mut out = [0u8; 16];
        let mut n = 0;
        let mut i = 0;
        while i < 36 {
            if matches!(i, 8 | 13 | 18 | 23) {
                if b[i] != b'-' {
                    return Err(bad());
                }
                i += 1;
                continue;
            }
            let hex = std::str::from_utf8(&b[i..i + 2]).map_err(|_| bad())?;
            if !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(bad());
            }
            out[n] = u8::from_str_radix(hex, 16).map_err(|_| bad())?;
            n += 1;
            i += 2;
        }
        Ok(Uuid(out))
    }
}

impl Serialize for Uuid {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Uuid {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(de::Error::custom)
    }
}

/// `N` random bytes from the kernel, or (should that fail) from the hasher
/// keys std seeds from the OS.
pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    use std::io::Read;
    let mut out = [0u8; N];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut out))
        .is_ok()
    {
        return out;
    }
    use std::hash::{BuildHasher, Hasher};
    for (i, chunk) in out.chunks_mut(8).enumerate() {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_usize(i);
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        chunk.copy_from_slice(&h.finish().to_le_bytes()[..chunk.len()]);
    }
    out
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A domain as an xl.cfg file describes it, with xl's parse-time defaults
/// applied. Sizes are in MiB, as in the file.
///
/// Creation-time defaults (a UUID, MAC addresses, bridges, ...) are applied
/// by [`DomainConfig::fill_defaults`], which kxend calls when it builds the
/// domain, as libxl does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainConfig {
    pub name: String,
    /// Default `pv` (xl's default on x86); `builder="generic"`/`"hvm"` is
    /// the deprecated spelling.
    #[serde(rename = "type")]
    pub domain_type: DomainType,
    /// `None` until [`DomainConfig::fill_defaults`] generates one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<Uuid>,
    /// Initial memory in MiB: `memory`, else `maxmem`, else 32 (libxl).
    pub memory: u64,
    /// Maximum memory in MiB: `maxmem`, else `memory`.
    pub maxmem: u64,
    /// vCPUs online at start: `vcpus`, at least 1.
    pub vcpus: u32,
    /// vCPUs the guest may bring up: `maxvcpus`, else `vcpus`.
    pub maxvcpus: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ramdisk: Option<String>,
    /// `cmdline`, or `root=ROOT EXTRA` built from `root` and `extra`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootloader: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bootloader_args: Vec<String>,
    pub on_poweroff: Action,
    pub on_reboot: Action,
    pub on_watchdog: Action,
    pub on_crash: Action,
    pub on_soft_reset: Action,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<DiskSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vifs: Vec<VifSpec>,
    /// `serial`: one device or a list (`pty`, `file:PATH`, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub serial: Vec<String>,
    /// Scheduler weight (`cpu_weight`) and cap in percent of a CPU (`cap`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_weight: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cap: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_grant_frames: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_maptrack_frames: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_event_channels: Option<u32>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub nomigrate: bool,
    /// HVM: expose the Xen platform PCI device (and Xen's CPUID leaves) so
    /// a PVHVM guest can switch to PV drivers. Off unless asked for: a
    /// stock kernel that sees Xen makes hypercalls kxen can only take
    /// through its own transport.
    #[serde(default, skip_serializing_if = "is_false")]
    pub xen_platform_pci: bool,
}

/// libxl's default memory when the file gives neither `memory` nor
/// `maxmem`, in MiB.
pub const DEFAULT_MEMORY_MIB: u64 = 32;

impl DomainConfig {
    /// A configuration with xl's defaults and nothing else.
    pub fn new(name: impl Into<String>, domain_type: DomainType) -> DomainConfig {
        DomainConfig {
            name: name.into(),
            domain_type,
            uuid: None,
            memory: DEFAULT_MEMORY_MIB,
            maxmem: DEFAULT_MEMORY_MIB,
            vcpus: 1,
            maxvcpus: 1,
            kernel: None,
            ramdisk: None,
            cmdline: None,
            bootloader: None,
            bootloader_args: Vec::new(),
            on_poweroff: Action::Destroy,
            on_reboot: Action::Restart,
            on_watchdog: Action::Destroy,
            on_crash: Action::Destroy,
            on_soft_reset: Action::SoftReset,
            disks: Vec::new(),
            vifs: Vec::new(),
            serial: Vec::new(),
            cpu_weight: None,
            cap: None,
            max_grant_frames: None,
            max_maptrack_frames: None,
            max_event_channels: None,
            nomigrate: false,
            xen_platform_pci: false,
        }
    }

    /// Initial memory in KiB.
    pub fn memory_kib(&self) -> u64 {
        self.memory * 1024
    }

    /// Maximum memory in KiB.
    pub fn maxmem_kib(&self) -> u64 {
        self.maxmem * 1024
    }

    /// Applies the defaults libxl applies when it creates the domain: a
    /// random UUID if none was given, and each vif's MAC, bridge, script,
    /// MTU, model and type (see [`VifSpec::fill_defaults`]).
    pub fn fill_defaults(&mut self) -> Result<(), VifError> {
        self.uuid.get_or_insert_with(Uuid::random);
        for vif in &mut self.vifs {
            vif.fill_defaults(self.domain_type)?;
        }
        Ok(())
    }
}

/// The keys of xl.cfg as serde sees them. Everything is optional here;
/// [`resolve`] applies the defaults.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawConfig {
    name: Option<String>,
    #[serde(rename = "type")]
    domain_type: Option<String>,
    builder: Option<String>,
    uuid: Option<String>,
    memory: Option<u64>,
    maxmem: Option<u64>,
    vcpus: Option<u32>,
    maxvcpus: Option<u32>,
    kernel: Option<String>,
    ramdisk: Option<String>,
    cmdline: Option<String>,
    root: Option<String>,
    extra: Option<String>,
    bootloader: Option<String>,
    bootloader_args: Option<StringList>,
    on_poweroff: Option<Action>,
    on_reboot: Option<Action>,
    on_watchdog: Option<Action>,
    on_crash: Option<Action>,
    on_soft_reset: Option<Action>,
    disk: Option<Vec<String>>,
    vif: Option<Vec<String>>,
    serial: Option<StringList>,
    cpu_weight: Option<u32>,
    cap: Option<u32>,
    max_grant_frames: Option<u32>,
    max_maptrack_frames: Option<u32>,
    max_event_channels: Option<u32>,
    nomigrate: Option<bool>,
    xen_platform_pci: Option<bool>,
}

/// Keys xl reads that kxen does not implement (warned about as
/// unsupported rather than unknown).
pub const UNSUPPORTED_XL_KEYS: &[&str] = &[
    "acpi",
    "acpi_firmware",
    "acpi_laptop_slate",
    "acpi_s3",
    "acpi_s4",
    "altp2m",
    "altp2m_count",
    "altp2mhvm",
    "apic",
    "arm_sci",
    "bios",
    "bios_path_override",
    "boot",
    "bootloader_restrict",
    "bootloader_user",
    "channel",
    "cpuid",
    "cpus",
    "cpus_soft",
    "device_model",
    "device_model_args",
    "device_model_args_hvm",
    "device_model_args_pv",
    "device_model_override",
    "device_model_stubdomain_override",
    "device_model_stubdomain_seclabel",
    "device_model_user",
    "device_model_version",
    "device_tree",
    "display",
    "dm_restrict",
    "driver_domain",
    "dtdev",
    "e820_host",
    "extratime",
    "firmware",
    "firmware_override",
    "gfx_passthru",
    "gic_version",
    "hap",
    "hdtype",
    "hpet",
    "hvm_pirq",
    "init_seclabel",
    "iomem",
    "ioports",
    "irqs",
    "keymap",
    "latency",
    "llc_colors",
    "localtime",
    "max_grant_version",
    "mca_caps",
    "mmio_hole",
    "ms_vm_genid",
    "msr_relaxed",
    "nestedhvm",
    "nographic",
    "nr_spis",
    "nx",
    "oos",
    "opengl",
    "p9",
    "pae",
    "passthrough",
    "pci",
    "pci_msitranslate",
    "pci_permissive",
    "pci_power_mgmt",
    "pci_seize",
    "period",
    "pool",
    "pvcalls",
    "pvshim",
    "pvshim_cmdline",
    "pvshim_extra",
    "pvshim_path",
    "rdm",
    "rdm_mem_boundary",
    "rtc_timeoffset",
    "sdl",
    "seclabel",
    "shadow_memory",
    "slice",
    "smbios",
    "smbios_firmware",
    "soundhw",
    "spice",
    "spice_clipboard_sharing",
    "spice_image_compression",
    "spice_streaming_video",
    "spiceagent_mouse",
    "spicedisable_ticketing",
    "spicehost",
    "spicepasswd",
    "spiceport",
    "spicetls_port",
    "spiceusbredirection",
    "spicevdagent",
    "stdvga",
    "stubdomain_cmdline",
    "stubdomain_kernel",
    "stubdomain_memory",
    "stubdomain_ramdisk",
    "sve",
    "tee",
    "timer_mode",
    "trap_unmapped_accesses",
    "tsc_mode",
    "usb",
    "usbctrl",
    "usbdev",
    "usbdevice",
    "usbversion",
    "vendor_device",
    "vfb",
    "vga",
    "videoram",
    "vif2",
    "viridian",
    "virtio",
    "vkb",
    "vkb_device",
    "vmtrace_buf_kb",
    "vnc",
    "vncdisplay",
    "vnclisten",
    "vncpasswd",
    "vncunused",
    "vncviewer",
    "vnuma",
    "vpmu",
    "vpt_align",
    "vsnd",
    "vtpm",
    "vuart",
    "xauthority",
    "xen_platform_pci_bar_uc",
    "xend_suspend_evtchn_compat",
    "xenstore_feature_mask",
    "xenstore_quota",
];

/// xl's prefix match for `type=` and `builder=`: the value may abbreviate
/// a name (`p` is `pv`, `h` is `hvm`); the first name it abbreviates wins.
fn abbreviates<T: Copy>(value: &str, names: &[(&str, T)]) -> Option<T> {
    if value.is_empty() {
        return None;
    }
    names
        .iter()
        .find(|(name, _)| name.starts_with(value))
        .map(|&(_, t)| t)
}

struct Resolver<'a> {
    cfg: &'a CfgFile,
    warnings: Vec<ConfigWarning>,
}

impl Resolver<'_> {
    fn line(&self, key: &str) -> u32 {
        self.cfg.get(key).map_or(0, |s| s.line)
    }

    fn value_err(&self, key: &str, msg: impl Into<String>) -> ConfigError {
        ConfigError::Value {
            file: self.cfg.source.clone(),
            line: self.line(key),
            key: key.to_string(),
            msg: msg.into(),
        }
    }

    fn missing(&self, key: &str, msg: impl Into<String>) -> ConfigError {
        ConfigError::Missing {
            file: self.cfg.source.clone(),
            key: key.to_string(),
            msg: msg.into(),
        }
    }

    fn note(&mut self, key: &str, line: u32, msg: impl Into<String>) {
        self.warnings.push(ConfigWarning {
            file: self.cfg.source.clone(),
            line,
            key: key.to_string(),
            kind: WarningKind::Note(msg.into()),
        });
    }

    /// Line of item `i` of list-valued `key`.
    fn item_line(&self, key: &str, i: usize) -> u32 {
        self.cfg
            .get(key)
            .and_then(|s| s.value.as_list())
            .and_then(|items| items.get(i))
            .map_or(self.line(key), Value::line)
    }

    fn resolve(&mut self, raw: RawConfig) -> Result<DomainConfig, ConfigError> {
        let types = [
            ("hvm", DomainType::Hvm),
            ("pv", DomainType::Pv),
            ("pvh", DomainType::Pvh),
        ];
        let mut domain_type =
            match &raw.domain_type {
                Some(t) => Some(abbreviates(t, &types).ok_or_else(|| {
                    self.value_err("type", format!("invalid domain type \"{t}\""))
                })?),
                None => None,
            };
        if let Some(b) = &raw.builder {
            let builders = [("hvm", DomainType::Hvm), ("generic", DomainType::Pv)];
            let t = abbreviates(b, &builders)
                .ok_or_else(|| self.value_err("builder", format!("invalid domain type \"{b}\"")))?;
            if domain_type.is_some_and(|d| d != t) {
                return Err(self.value_err(
                    "builder",
                    "contradicting \"builder\" and \"type\" options specified",
                ));
            }
            domain_type = Some(t);
        }
        let domain_type = domain_type.unwrap_or(DomainType::Pv);

        let name = raw
            .name
            .ok_or_else(|| self.missing("name", "domain name must be specified"))?;
        if name.is_empty() {
            return Err(self.value_err("name", "domain name must not be empty"));
        }

        let uuid = match &raw.uuid {
            Some(u) => Some(
                u.parse::<Uuid>()
                    .map_err(|e| self.value_err("uuid", e.to_string()))?,
            ),
            None => None,
        };

        let (memory, maxmem) = match (raw.memory, raw.maxmem) {
            (Some(m), Some(x)) => (m, x),
            (Some(m), None) => (m, m),
            (None, Some(x)) => (x, x),
            (None, None) => (DEFAULT_MEMORY_MIB, DEFAULT_MEMORY_MIB),
        };
        if maxmem < memory {
            return Err(self.value_err(
                "maxmem",
                format!("maxmem ({maxmem}) is less than memory ({memory})"),
            ));
        }
        if memory.checked_mul(1024 * 1024).is_none() || maxmem.checked_mul(1024 * 1024).is_none() {
            let key = if raw.maxmem.is_some() {
                "maxmem"
            } else {
                "memory"
            };
            return Err(self.value_err(key, "value out of range"));
        }

        let vcpus = raw.vcpus.unwrap_or(0).max(1);
        let maxvcpus = match raw.maxvcpus {
            Some(m) if m != 0 => m,
            _ => vcpus,
        };
        if maxvcpus < vcpus {
            return Err(self.value_err("maxvcpus", "maxvcpus < vcpus"));
        }

        let cmdline = match (raw.cmdline, raw.root, raw.extra) {
            (Some(c), root, extra) => {
                if root.is_some() || extra.is_some() {
                    let line = self.line("cmdline");
                    self.note(
                        "cmdline",
                        line,
                        "ignoring root= and extra= in favour of cmdline=",
                    );
                }
                Some(c)
            }
            (None, Some(r), Some(e)) => Some(format!("root={r} {e}")),
            (None, Some(r), None) => Some(format!("root={r}")),
            (None, None, Some(e)) => Some(e),
            (None, None, None) => None,
        };

        if domain_type != DomainType::Hvm && raw.kernel.is_none() && raw.bootloader.is_none() {
            return Err(self.missing("kernel", "neither kernel nor bootloader specified"));
        }

        let mut disks = Vec::new();
        for (i, spec) in raw.disk.unwrap_or_default().iter().enumerate() {
            let line = self.item_line("disk", i);
            let disk = DiskSpec::parse(spec).map_err(|error| ConfigError::Disk {
                file: self.cfg.source.clone(),
                line,
                error,
            })?;
            if let Some(prev) = disks.iter().find(|d: &&DiskSpec| d.devid() == disk.devid()) {
                return Err(ConfigError::Value {
                    file: self.cfg.source.clone(),
                    line,
                    key: "disk".into(),
                    msg: format!(
                        "virtual device `{}' is the same device as `{}'",
                        disk.vdev, prev.vdev
                    ),
                });
            }
            disks.push(disk);
        }

        let mut vifs: Vec<VifSpec> = Vec::new();
        for (i, spec) in raw.vif.unwrap_or_default().iter().enumerate() {
            let line = self.item_line("vif", i);
            let (mut vif, notes) =
                VifSpec::parse_with_warnings(spec).map_err(|error| ConfigError::Vif {
                    file: self.cfg.source.clone(),
                    line,
                    error,
                })?;
            for n in notes {
                self.note("vif", line, n);
            }
            let devid = *vif.devid.get_or_insert(i as u32);
            if vifs.iter().any(|v| v.devid == Some(devid)) {
                return Err(ConfigError::Value {
                    file: self.cfg.source.clone(),
                    line,
                    key: "vif".into(),
                    msg: format!("devid {devid} used twice"),
                });
            }
            vifs.push(vif);
        }

        let mut config = DomainConfig::new(name, domain_type);
        config.uuid = uuid;
        config.memory = memory;
        config.maxmem = maxmem;
        config.vcpus = vcpus;
        config.maxvcpus = maxvcpus;
        config.kernel = raw.kernel;
        config.ramdisk = raw.ramdisk;
        config.cmdline = cmdline;
        config.bootloader = raw.bootloader;
        config.bootloader_args = raw.bootloader_args.unwrap_or_default().0;
        config.on_poweroff = raw.on_poweroff.unwrap_or(Action::Destroy);
        config.on_reboot = raw.on_reboot.unwrap_or(Action::Restart);
        config.on_watchdog = raw.on_watchdog.unwrap_or(Action::Destroy);
        config.on_crash = raw.on_crash.unwrap_or(Action::Destroy);
        config.on_soft_reset = raw.on_soft_reset.unwrap_or(Action::SoftReset);
        config.disks = disks;
        config.vifs = vifs;
        config.serial = raw.serial.unwrap_or_default().0;
        config.cpu_weight = raw.cpu_weight;
        config.cap = raw.cap;
        config.max_grant_frames = raw.max_grant_frames;
        config.max_maptrack_frames = raw.max_maptrack_frames;
        config.max_event_channels = raw.max_event_channels;
        config.nomigrate = raw.nomigrate.unwrap_or(false);
        config.xen_platform_pci =
            domain_type == DomainType::Hvm && raw.xen_platform_pci.unwrap_or(false);
        Ok(config)
    }
}

impl DomainConfig {
    /// Builds a domain configuration from a parsed file.
    pub fn from_cfg(cfg: &CfgFile) -> Result<(DomainConfig, Vec<ConfigWarning>), ConfigError> {
        let ignored = RefCell::new(Vec::new());
        let raw = RawConfig::deserialize(SettingsDe {
            settings: cfg.effective(),
            ignored: &ignored,
        })
        .map_err(|e| ConfigError::Value {
            file: cfg.source.clone(),
            line: e.line.unwrap_or(0),
            key: e.key.unwrap_or_default(),
            msg: e.msg,
        })?;
        let mut resolver = Resolver {
            cfg,
            warnings: Vec::new(),
        };
        for s in ignored.into_inner() {
            let kind = if UNSUPPORTED_XL_KEYS.contains(&s.key.as_str()) {
                WarningKind::Unsupported
            } else {
                WarningKind::UnknownKey
            };
            resolver.warnings.push(ConfigWarning {
                file: cfg.source.clone(),
                line: s.line,
                key: s.key.clone(),
                kind,
            });
        }
        let config = resolver.resolve(raw)?;
        let mut warnings = resolver.warnings;
        warnings.sort_by_key(|w| w.line);
        for w in &warnings {
            tracing::warn!("{w}");
        }
        Ok((config, warnings))
    }
}

// ===========================================================================
// Entry points

/// Parses xl.cfg text into its syntax tree only.
pub fn parse_cfg(text: &str, filename: &str) -> Result<CfgFile, ConfigError> {
    CfgFile::parse(text, filename)
}

/// Parses xl.cfg text (`filename` names it in messages).
pub fn parse_str(
    text: &str,
    filename: &str,
) -> Result<(DomainConfig, Vec<ConfigWarning>), ConfigError> {
    DomainConfig::from_cfg(&CfgFile::parse(text, filename)?)
}

/// Parses xl.cfg text with `key=value` settings from the command line
/// (`xl create guest.cfg memory=512 'name="web"'`). As in xl they are parsed
/// as if appended to the file (so they win, `+=` appends, and line numbers
/// run on past the end of the file). Unlike xl, a value that cannot start an
/// xl.cfg value (`name=web`, `kernel=/boot/vmlinuz`) is taken as a string
/// rather than rejected.
pub fn parse_str_with_overrides<S: AsRef<str>>(
    text: &str,
    filename: &str,
    overrides: &[S],
) -> Result<(DomainConfig, Vec<ConfigWarning>), ConfigError> {
    parse_str(&with_overrides(text, overrides), filename)
}

/// Reads and parses a config file.
pub fn parse_file(
    path: impl AsRef<Path>,
) -> Result<(DomainConfig, Vec<ConfigWarning>), ConfigError> {
    parse_file_with_overrides::<&str>(path, &[])
}

/// Reads and parses a config file with command-line settings (see
/// [`parse_str_with_overrides`]).
pub fn parse_file_with_overrides<S: AsRef<str>>(
    path: impl AsRef<Path>,
    overrides: &[S],
) -> Result<(DomainConfig, Vec<ConfigWarning>), ConfigError> {
    let path = path.as_ref();
    let name = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| ConfigError::Read {
        path: name.clone(),
        reason: strerror(&e),
    })?;
    let text = String::from_utf8_lossy(&bytes);
    parse_str_with_overrides(&text, &name, overrides)
}

/// `io::Error`'s text without Rust's " (os error N)" suffix, as C's
/// `strerror` prints it.
pub fn strerror(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.rfind(" (os error ") {
        Some(i) if s.ends_with(')') => s[..i].to_string(),
        _ => s,
    }
}

/// The text xl appends to the file for command-line settings: a newline,
/// then each setting on its own line, then a newline.
pub fn with_overrides<S: AsRef<str>>(text: &str, overrides: &[S]) -> String {
    let mut out = text.to_string();
    if overrides.is_empty() {
        return out;
    }
    out.push('\n');
    for o in overrides {
        out.push_str(&override_line(o.as_ref()));
        out.push('\n');
    }
    out.push('\n');
    out
}

/// Quotes the value of a `key=value` argument when it could not start an
/// xl.cfg value.
fn override_line(arg: &str) -> String {
    let Some((key, value)) = arg.split_once('=') else {
        return arg.to_string();
    };
    let starts_value = matches!(
        value.trim_start_matches([' ', '\t']).bytes().next(),
        Some(b'"' | b'\'' | b'[' | b'0'..=b'9')
    );
    if starts_value {
        return arg.to_string();
    }
    let mut quoted = String::with_capacity(value.len() + 2);
    for c in value.chars() {
        match c {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            '\n' => quoted.push_str("\\n"),
            c => quoted.push(c),
        }
    }
    format!("{key}=\"{quoted}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(text: &str) -> CfgFile {
        CfgFile::parse(text, "t.cfg").unwrap_or_else(|e| panic!("{e}"))
    }

    fn syntax_err(text: &str) -> ConfigError {
        CfgFile::parse(text, "t.cfg").expect_err(text)
    }

    fn atom(v: &Value) -> &str {
        v.as_str().expect("atom")
    }

    #[test]
    fn grammar_basics() {
        let t = tree(
            "# a comment\n\
             name = \"guest\"   # trailing comment\n\
             memory = 256; vcpus = 0x2\n\
             kernel='/boot/vmlinuz'\n\
             \n\
             disk = [ 'a',\n\
             \t'b', # comment in a list\n\
             \n\
             ]\n\
             empty = []\n\
             nested = [ [ 1, 2 ], \"x\" ]\n\
             last = 1",
        );
        let keys: Vec<_> = t.settings.iter().map(|s| s.key.as_str()).collect();
        assert_eq!(
            keys,
            ["name", "memory", "vcpus", "kernel", "disk", "empty", "nested", "last"]
        );
        assert_eq!(atom(&t.get("name").unwrap().value), "guest");
        assert_eq!(t.get("name").unwrap().line, 2);
        assert_eq!(t.get("vcpus").unwrap().line, 3);
        let memory = &t.get("memory").unwrap().value;
        assert_eq!(
            memory,
            &Value::Atom(Atom {
                text: "256".into(),
                kind: AtomKind::Number,
                line: 3
            })
        );
        let disk = t.get("disk").unwrap();
        assert_eq!(disk.line, 6);
        let items = disk.value.as_list().unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(items[1].line(), 7);
        assert_eq!(atom(&items[1]), "b");
        assert_eq!(t.get("empty").unwrap().value.as_list().unwrap().len(), 0);
        let nested = t.get("nested").unwrap().value.as_list().unwrap();
        assert_eq!(nested[0].as_list().unwrap().len(), 2);
        assert_eq!(atom(&t.get("last").unwrap().value), "1");
    }

    #[test]
    fn list_forms() {
        for text in [
            "l = [1,2]",
            "l = [1,2,]",
            "l = [\n1\n,\n2\n,\n]",
            "l = [ 1 , 2 ]\n",
            "l=[1,\n\n  2]",
        ] {
            let t = tree(text);
            let items = t.get("l").unwrap().value.as_list().unwrap();
            assert_eq!(
                items.iter().map(atom).collect::<Vec<_>>(),
                ["1", "2"],
                "{text}"
            );
        }
        for bad in ["l = [,]", "l = [1 2]", "l = [1,,2]", "l = [1", "l = ]"] {
            assert!(
                matches!(syntax_err(bad), ConfigError::Syntax { .. }),
                "{bad}"
            );
        }
    }

    #[test]
    fn strings_and_escapes() {
        let t = tree(
            r#"a = "x\"y" ; b = 'it\'s' ; c = "\\\n\t" ; d = "\x41\101\0" ; e = '"' ; f = "it's""#,
        );
        assert_eq!(atom(&t.get("a").unwrap().value), "x\"y");
        assert_eq!(atom(&t.get("b").unwrap().value), "it's");
        assert_eq!(atom(&t.get("c").unwrap().value), "\\\n\t");
        assert_eq!(atom(&t.get("d").unwrap().value), "AA\0");
        assert_eq!(atom(&t.get("e").unwrap().value), "\"");
        assert_eq!(atom(&t.get("f").unwrap().value), "it's");
        let e = syntax_err(r#"a = "\q""#);
        assert_eq!(
            e.to_string(),
            r#"t.cfg:1: config parsing error near `"\q"': invalid character after backslash in quoted string"#
        );
        assert!(matches!(
            syntax_err(r#"a = "\xg1""#),
            ConfigError::Syntax { .. }
        ));
        // strings do not span lines
        assert!(matches!(
            syntax_err("a = \"x\ny\""),
            ConfigError::Syntax { line: 1, .. }
        ));
        // UTF-8 passes through
        assert_eq!(
            atom(&tree("a = \"héllo\"").get("a").unwrap().value),
            "héllo"
        );
    }

    #[test]
    fn last_setting_wins_and_plus_equals() {
        let t = tree("a = 1\nb = 'x'\na = 2\nb += 'y'\nl = ['p']\nl += ['q', 'r']\nn += 'z'\n");
        assert_eq!(atom(&t.get("a").unwrap().value), "2");
        assert_eq!(t.get("a").unwrap().line, 3);
        assert_eq!(atom(&t.get("b").unwrap().value), "xy");
        assert_eq!(t.get("b").unwrap().op, Op::Add);
        let l: Vec<_> = t
            .get("l")
            .unwrap()
            .value
            .as_list()
            .unwrap()
            .iter()
            .map(atom)
            .collect();
        assert_eq!(l, ["p", "q", "r"]);
        assert_eq!(atom(&t.get("n").unwrap().value), "z");
        let eff: Vec<_> = t.effective().iter().map(|s| s.key.as_str()).collect();
        assert_eq!(eff, ["a", "b", "l", "n"]);
        let e = syntax_err("a = 'x'\na += [1]\n");
        assert!(e
            .to_string()
            .contains("can't add [list] to \"string\" or vice versa"));
        assert_eq!(e.line(), Some(2));
    }

    #[test]
    fn syntax_errors() {
        let e = syntax_err("name = \"x\"\nmemory = \n");
        assert_eq!(
            e.to_string(),
            "t.cfg:2: config parsing error near <newline>: syntax error, unexpected NEWLINE, expecting STRING or NUMBER or '['"
        );
        let e = syntax_err("name = guest\n");
        assert_eq!(
            e.to_string(),
            "t.cfg:1: config parsing error near `guest': syntax error, unexpected IDENT, expecting STRING or NUMBER or '['"
        );
        let e = syntax_err("\n\nmemory 256\n");
        assert_eq!(
            e.to_string(),
            "t.cfg:3: config parsing error near `256': syntax error, unexpected NUMBER, expecting '=' or \"+=\""
        );
        let e = syntax_err("a = 1 2\n");
        assert_eq!(
            e.to_string(),
            "t.cfg:1: config parsing error near `2': syntax error, unexpected NUMBER, expecting NEWLINE or ';'"
        );
        let e = syntax_err("a = 1\n= 2\n");
        assert_eq!(
            e.to_string(),
            "t.cfg:2: config parsing error near `=': syntax error, unexpected '='"
        );
        let e = syntax_err("a = [1,\n");
        assert_eq!(
            e.to_string(),
            "t.cfg:2: config parsing error near <end of file>: syntax error, unexpected end of file, expecting STRING or NUMBER or '['"
        );
        // upper case is not a key
        let e = syntax_err("Memory = 1\n");
        assert_eq!(
            e.to_string(),
            "t.cfg:1: config parsing error near `Memory': lexical error"
        );
        // Python
        match syntax_err("memory = 128 * 2\n") {
            ConfigError::Syntax {
                likely_python,
                near,
                ..
            } => {
                assert!(!likely_python);
                assert_eq!(near, Near::Text("*".into()));
            }
            e => panic!("{e}"),
        }
        match syntax_err("kernel = os.path.join('a')\n") {
            ConfigError::Syntax { likely_python, .. } => assert!(likely_python),
            e => panic!("{e}"),
        }
        match syntax_err("x = 1.5\n") {
            ConfigError::Syntax {
                likely_python,
                near,
                line,
                ..
            } => {
                assert!(likely_python);
                assert_eq!(line, 1);
                assert_eq!(near, Near::Text(".5".into()));
            }
            e => panic!("{e}"),
        }
        assert!(matches!(syntax_err("a = 'x\n"), ConfigError::Syntax { .. }));
        assert!(matches!(syntax_err("a = \"x"), ConfigError::Syntax { .. }));
        assert!(matches!(
            syntax_err("a = 1\r\n"),
            ConfigError::Syntax { .. }
        ));
    }

    #[test]
    fn empty_files_and_separators() {
        assert!(tree("").settings.is_empty());
        assert!(tree("\n\n;;\n# only a comment").settings.is_empty());
        let t = tree("a=1;b=2;\nc=3");
        assert_eq!(t.settings.len(), 3);
    }

    #[test]
    fn c_numbers() {
        assert_eq!(parse_c_long("256"), Ok(256));
        assert_eq!(parse_c_long("0x100"), Ok(256));
        assert_eq!(parse_c_long("0X1f"), Ok(31));
        assert_eq!(parse_c_long("0400"), Ok(256));
        assert_eq!(parse_c_long("0"), Ok(0));
        assert_eq!(parse_c_long(" -12"), Ok(-12));
        assert_eq!(parse_c_long("+7"), Ok(7));
        assert_eq!(parse_c_long("08"), Err(IntError::Invalid));
        assert_eq!(parse_c_long("0x"), Err(IntError::Invalid));
        assert_eq!(parse_c_long("12a"), Err(IntError::Invalid));
        assert_eq!(parse_c_long("12 "), Err(IntError::Invalid));
        assert_eq!(parse_c_long(""), Err(IntError::Invalid));
        assert_eq!(parse_c_long("9223372036854775808"), Err(IntError::Range));
        assert_eq!(parse_c_long("-9223372036854775808"), Ok(i64::MIN));
    }

    #[test]
    fn uuids() {
        let u: Uuid = "5C6A9B0E-0D8B-4D4B-9C2F-0123456789ab".parse().unwrap();
        assert_eq!(u.to_string(), "5c6a9b0e-0d8b-4d4b-9c2f-0123456789ab");
        assert_eq!(
            Uuid::NIL.to_string(),
            "00000000-0000-0000-0000-000000000000"
        );
        for bad in [
            "",
            "5c6a9b0e0d8b4d4b9c2f0123456789ab",
            "5c6a9b0e-0d8b-4d4b-9c2f-0123456789a",
            "5c6a9b0e-0d8b-4d4b-9c2f-0123456789ag",
            "5c6a9b0e+0d8b-4d4b-9c2f-0123456789ab",
        ] {
            assert!(bad.parse::<Uuid>().is_err(), "{bad}");
        }
        let r = Uuid::random();
        assert_eq!(r.0[6] >> 4, 4);
        assert_eq!(r.0[8] >> 6, 2);
        assert_ne!(r, Uuid::random());
        assert_eq!(
            serde_json::to_string(&u).unwrap(),
            "\"5c6a9b0e-0d8b-4d4b-9c2f-0123456789ab\""
        );
    }

    #[test]
    fn actions() {
        for a in [
            Action::Destroy,
            Action::Restart,
            Action::RenameRestart,
            Action::Preserve,
            Action::CoredumpDestroy,
            Action::CoredumpRestart,
            Action::SoftReset,
        ] {
            assert_eq!(a.as_str().parse::<Action>(), Ok(a));
        }
        assert!("reboot".parse::<Action>().is_err());
    }

    #[test]
    fn override_quoting() {
        assert_eq!(override_line("memory=256"), "memory=256");
        assert_eq!(override_line("name=web"), "name=\"web\"");
        assert_eq!(override_line("name=\"web\""), "name=\"web\"");
        assert_eq!(override_line("name='web'"), "name='web'");
        assert_eq!(override_line("disk=['/i,,xvda']"), "disk=['/i,,xvda']");
        assert_eq!(
            override_line("extra=a \"b\" c\\d"),
            r#"extra="a \"b\" c\\d""#
        );
        assert_eq!(override_line("extra+=x"), "extra+=\"x\"");
        assert_eq!(override_line("cmdline="), "cmdline=\"\"");
        assert_eq!(
            with_overrides("a=1", &["b=2", "c=x"]),
            "a=1\nb=2\nc=\"x\"\n\n"
        );
        assert_eq!(with_overrides::<&str>("a=1", &[]), "a=1");
    }
}
