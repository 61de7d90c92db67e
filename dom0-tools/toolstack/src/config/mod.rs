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
//!
//! The work is split by job: `syntax` (the tree), `parser` (lexer and
//! parser), `number` (xl's integers), `de` (serde over the tree),
//! `model` (the domain configuration), `resolve` (defaults and checks)
//! and `error`; this module holds the entry points and re-exports the
//! public types, so `config::X` paths are unchanged.

use std::path::Path;

mod de;
mod error;
mod model;
mod number;
mod parser;
mod resolve;
mod syntax;

pub use error::{ConfigError, ConfigWarning, Near, WarningKind};
pub(crate) use model::random_bytes;
pub use model::{
    Action, BadUuid, DomainConfig, DomainType, Uuid, VcpuAffinity, DEFAULT_MEMORY_MIB,
};
pub use resolve::UNSUPPORTED_XL_KEYS;
pub use syntax::{Atom, AtomKind, CfgFile, Op, Setting, Value};

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
    use super::number::{parse_c_long, IntError};
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
