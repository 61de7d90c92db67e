//! The lexer and parser of libxlu's grammar: tokens (atoms, punctuation,
//! newlines), C-style string escapes, and settings built into a
//! [`CfgFile`].

use super::error::{ConfigError, Near};
use super::syntax::{Atom, AtomKind, CfgFile, Op, Setting, Value};

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

pub(super) struct Parser<'a> {
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
    pub(super) fn new(src: &'a str, source: &'a str) -> Self {
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

    pub(super) fn file(mut self) -> Result<CfgFile, ConfigError> {
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
