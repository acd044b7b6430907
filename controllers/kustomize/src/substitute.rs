//! `postBuild` variable substitution with the syntax of Flux's envsubst (fluxcd/pkg's fork of
//! drone/envsubst), run on the YAML of each built object.
//!
//! The forms, and what each gives:
//! - `${var}`: the value.
//! - `${var:=default}`, `${var:-default}`, `${var=default}`: `default` when the variable is
//!   undefined or empty, else the value. Flux treats the three alike (in bash, `=` keeps an
//!   empty value).
//! - `${var:offset}`, `${var:offset:length}`: the characters from `offset` on, at most `length`
//!   of them. A negative offset counts from the end (`${var:-2}` being a default, it comes from
//!   a reference: `${var:${offset}}`); an offset past the end gives nothing; a negative length
//!   stops that many characters before the end. An offset or length that is not an integer
//!   leaves the value whole.
//! - `${var/from/to}`, `${var//from/to}`: the first, or every, occurrence of the plain text
//!   `from` replaced by `to`; `${var/from/}` deletes it.
//! - `${var/#from/to}`, `${var/%from/to}`: `from` replaced only where the value starts, or ends,
//!   with it; an empty `from` prepends, or appends, `to`.
//! - `${var#glob}`, `${var##glob}`: the shortest, or longest, start of the value matching the
//!   glob removed; `${var%glob}`, `${var%%glob}` the same at the end.
//! - `${var^}`, `${var^^}`, `${var,}`, `${var,,}`: the first, or every, character upper-cased
//!   (`^`) or lower-cased (`,`).
//! - `${#var}`: the number of characters of the value.
//! - `$$`: a literal `$`, so `$${var}` is the literal `${var}`.
//!
//! Globs know `*` (any text, `/` included), `?` (one character), `[a-z]`, `[!a-z]` and `\`
//! before a character that stands for itself. In `from` and `to`, `\/` and `\\` stand for `/`
//! and `\`. Arguments may hold references (`${host:=${cluster}.example.com}`), expanded before
//! the operator runs, as in Flux. Values are never scanned for references themselves.
//!
//! As in Flux, only the braced forms are substituted: a bare `$var` (common in shell scripts
//! held in ConfigMaps) is left alone. Variable names must match `^[_a-zA-Z][_a-zA-Z0-9]*$`, in
//! `postBuild` and in references alike (Flux checks only `postBuild`'s, and looks a reference
//! like `${1x}` up as an undefined variable).
//!
//! [`Strictness::Strict`] is Flux's `StrictPostBuildSubstitutions` feature gate, on by default
//! since Flux 2.9 (kustomize-controller v1.9): a variable that is not defined at all fails the
//! substitution, whatever operator reads it (`${#var}` and `${var^^}` too), unless the form
//! gives a default. A variable defined as the empty string is defined. [`Strictness::Lenient`]
//! (the gate off) reads undefined variables as the empty string.
//!
//! Errors name the variable, or quote the reference as written in the manifest; never a value,
//! since values may come from Secrets.
//!
//! Where Weir deviates from Flux, and why:
//! - `${var-default}`, `${var+alt}`, `${var:?message}` and `${var:+alt}` are errors. Flux's
//!   envsubst lists them as unsupported: its parser rejects the first two, and evaluates the
//!   other two as `:-`, which silently breaks bash scripts that use them. Weir fails loudly;
//!   `$${...}` keeps any of them as written.
//! - Offsets, lengths and globs count characters, as bash does; Flux counts bytes, which gives
//!   other numbers for non-ASCII values and can cut a character in two.
//! - Case mapping is Unicode's full mapping (`ß` upper-cases to `SS`); Go's maps one character
//!   to one (`ß` stays).
//! - Where Flux's parser misbehaves, Weir follows bash or fails: `${var/from}` without its
//!   second `/` is an error (Flux reads on past the `}`); an empty `to` with `/#` or `/%`
//!   deletes (Flux leaves the value whole); an empty `from` with `//` changes nothing (Go would
//!   put `to` between all characters); a glob matching the empty start removes nothing
//!   (`${var#*}`; Flux removes one byte).

use std::collections::BTreeMap;

/// What a variable that is not defined at all becomes, in a form without a default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strictness {
    /// An error naming the variable: Flux 2.9's default (`StrictPostBuildSubstitutions=true`).
    Strict,
    /// The empty string: Flux before 2.9, or `StrictPostBuildSubstitutions=false`.
    Lenient,
}

/// Why substitution failed. Messages name the variable, never a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubstituteError {
    #[error("variable name {0:?} is invalid: names must match ^[_a-zA-Z][_a-zA-Z0-9]*$")]
    InvalidName(String),
    #[error("unterminated variable reference starting at {0:?}")]
    Unterminated(String),
    #[error("unsupported variable reference {0:?} (write $${{...}} to keep it as written)")]
    Unsupported(String),
    #[error("variable {0:?} is not defined and the reference gives no default (strict mode)")]
    Undefined(String),
    #[error("variable reference {0:?} nests references more than {MAX_NESTING} deep")]
    TooDeep(String),
}

/// How deep references may nest in arguments: far beyond any real manifest, and shallow enough
/// that a crafted one cannot exhaust the stack of the reconcile running it.
const MAX_NESTING: usize = 32;

/// Whether `name` is a valid variable name (`^[_a-zA-Z][_a-zA-Z0-9]*$`).
#[must_use]
pub fn is_valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

/// Checks every name of `vars`, so a typo in `postBuild.substitute` is reported, not ignored.
pub fn validate_names<'a>(
    names: impl IntoIterator<Item = &'a String>,
) -> Result<(), SubstituteError> {
    match names.into_iter().find(|n| !is_valid_name(n)) {
        Some(bad) => Err(SubstituteError::InvalidName(bad.clone())),
        None => Ok(()),
    }
}

/// Replaces the variable references in `text` with their values from `vars`.
pub fn substitute(
    text: &str,
    vars: &BTreeMap<String, String>,
    strictness: Strictness,
) -> Result<String, SubstituteError> {
    let mut expander = Expander {
        text,
        pos: 0,
        depth: 0,
        vars,
        strictness,
    };
    expander.document()
}

/// A cursor over the text being substituted; each method reads one piece and moves on.
struct Expander<'a> {
    text: &'a str,
    pos: usize,
    /// How many references enclose the one being read.
    depth: usize,
    vars: &'a BTreeMap<String, String>,
    strictness: Strictness,
}

impl<'a> Expander<'a> {
    /// The whole text: plain text, `$$` escapes and `${...}` references.
    fn document(&mut self) -> Result<String, SubstituteError> {
        let mut out = String::with_capacity(self.text.len());
        while let Some(found) = self.rest().find('$') {
            out.push_str(&self.rest()[..found]);
            self.pos += found;
            let start = self.pos;
            if self.eat("${") {
                out.push_str(&self.reference(start)?);
            } else {
                // `$$` is one `$`; any other `$` stands for itself.
                if !self.eat("$$") {
                    self.pos += 1;
                }
                out.push('$');
            }
        }
        out.push_str(self.rest());
        Ok(out)
    }

    /// After `${`: the value of the reference up to its `}`.
    fn reference(&mut self, start: usize) -> Result<String, SubstituteError> {
        if self.eat("#") {
            let name = self.name(start)?;
            self.close(start)?;
            return Ok(self.value(name, false)?.chars().count().to_string());
        }
        let name = self.name(start)?;
        let operator = self.peek().ok_or_else(|| self.unterminated(start))?;
        match operator {
            '}' => {
                self.pos += 1;
                Ok(self.value(name, false)?.to_owned())
            }
            '=' => self.default(name, start, 1),
            ':' => match self.rest()[1..].chars().next() {
                Some('=' | '-') => self.default(name, start, 2),
                Some('?' | '+') => Err(self.unsupported(start)),
                _ => self.substring(name, start),
            },
            '^' | ',' => self.case(name, start, operator),
            '/' => self.replace(name, start),
            '#' | '%' => self.trim(name, start, operator),
            _ => Err(self.unsupported(start)),
        }
    }

    /// `${name:=default}`, `${name:-default}`, `${name=default}`; `operator_len` is 1 or 2.
    fn default(
        &mut self,
        name: &str,
        start: usize,
        operator_len: usize,
    ) -> Result<String, SubstituteError> {
        self.pos += operator_len;
        let default = self.word(start, &['}'], false)?;
        self.close(start)?;
        let value = self.value(name, true)?;
        Ok(if value.is_empty() {
            default
        } else {
            value.to_owned()
        })
    }

    /// `${name:offset}`, `${name:offset:length}`.
    fn substring(&mut self, name: &str, start: usize) -> Result<String, SubstituteError> {
        self.pos += 1;
        let offset = self.word(start, &[':', '}'], false)?;
        let length = if self.eat(":") {
            Some(self.word(start, &['}'], false)?)
        } else {
            None
        };
        if offset.is_empty() || length.as_ref().is_some_and(String::is_empty) {
            return Err(self.unsupported(start));
        }
        self.close(start)?;
        let value = self.value(name, false)?;
        Ok(substring(value, &offset, length.as_deref()))
    }

    /// `${name^}`, `${name^^}`, `${name,}`, `${name,,}`.
    fn case(
        &mut self,
        name: &str,
        start: usize,
        operator: char,
    ) -> Result<String, SubstituteError> {
        self.pos += 1;
        let every = self.peek() == Some(operator);
        if every {
            self.pos += 1;
        }
        self.close(start)?;
        let value = self.value(name, false)?;
        let mapped = match (operator, every) {
            ('^', true) => value.to_uppercase(),
            (_, true) => value.to_lowercase(),
            ('^', false) => map_first(value, char::to_uppercase),
            (_, false) => map_first(value, char::to_lowercase),
        };
        Ok(mapped)
    }

    /// `${name/from/to}`, `${name//from/to}`, `${name/#from/to}`, `${name/%from/to}`.
    fn replace(&mut self, name: &str, start: usize) -> Result<String, SubstituteError> {
        self.pos += 1;
        let anchor = match self.peek() {
            Some(c @ ('/' | '#' | '%')) => {
                self.pos += 1;
                Some(c)
            }
            _ => None,
        };
        let from = self.word(start, &['/', '}'], true)?;
        if !self.eat("/") {
            return Err(self.unsupported(start));
        }
        let to = self.word(start, &['}'], true)?;
        self.close(start)?;
        let value = self.value(name, false)?;
        Ok(replace(value, anchor, &from, &to))
    }

    /// `${name#glob}`, `${name##glob}`, `${name%glob}`, `${name%%glob}`.
    fn trim(
        &mut self,
        name: &str,
        start: usize,
        operator: char,
    ) -> Result<String, SubstituteError> {
        self.pos += 1;
        let longest = self.peek() == Some(operator);
        if longest {
            self.pos += 1;
        }
        if self.peek() == Some('}') {
            return Err(self.unsupported(start));
        }
        let pattern = Glob::new(&self.word(start, &['}'], false)?);
        self.close(start)?;
        let value = self.value(name, false)?;
        Ok(pattern.trim(value, operator == '#', longest).to_owned())
    }

    /// A variable name, checked.
    fn name(&mut self, start: usize) -> Result<&'a str, SubstituteError> {
        let rest = self.rest();
        let len = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        let name = &rest[..len];
        if name.is_empty() {
            return Err(self.end_or_unsupported(start));
        }
        if !is_valid_name(name) {
            return Err(SubstituteError::InvalidName(name.to_owned()));
        }
        self.pos += len;
        Ok(name)
    }

    /// An operator's argument up to (not including) one of `stops` outside nested references,
    /// with those references expanded. `escapes` turns on `\/`, `\\` and `$$`.
    fn word(
        &mut self,
        start: usize,
        stops: &[char],
        escapes: bool,
    ) -> Result<String, SubstituteError> {
        let mut out = String::new();
        loop {
            let c = self.peek().ok_or_else(|| self.unterminated(start))?;
            if stops.contains(&c) {
                return Ok(out);
            }
            let inner = self.pos;
            if self.eat("${") {
                if self.depth == MAX_NESTING {
                    return Err(SubstituteError::TooDeep(self.written(start)));
                }
                self.depth += 1;
                out.push_str(&self.reference(inner)?);
                self.depth -= 1;
            } else if escapes && ["\\/", "\\\\", "$$"].iter().any(|e| self.eat(e)) {
                // Each escape stands for its second character.
                out.push(char::from(self.text.as_bytes()[self.pos - 1]));
            } else {
                out.push(c);
                self.pos += c.len_utf8();
            }
        }
    }

    /// The value of `name`; `has_default` forms read an undefined variable as empty even in
    /// strict mode.
    fn value(&self, name: &str, has_default: bool) -> Result<&'a str, SubstituteError> {
        match self.vars.get(name) {
            Some(value) => Ok(value),
            None if has_default || self.strictness == Strictness::Lenient => Ok(""),
            None => Err(SubstituteError::Undefined(name.to_owned())),
        }
    }

    /// Consumes the `}` ending a reference.
    fn close(&mut self, start: usize) -> Result<(), SubstituteError> {
        if self.eat("}") {
            Ok(())
        } else {
            Err(self.end_or_unsupported(start))
        }
    }

    fn rest(&self) -> &'a str {
        &self.text[self.pos..]
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    /// Consumes `prefix` if the rest starts with it.
    fn eat(&mut self, prefix: &str) -> bool {
        let found = self.rest().starts_with(prefix);
        if found {
            self.pos += prefix.len();
        }
        found
    }

    /// Unterminated at the end of the text, else unsupported.
    fn end_or_unsupported(&self, start: usize) -> SubstituteError {
        if self.peek().is_none() {
            self.unterminated(start)
        } else {
            self.unsupported(start)
        }
    }

    fn unterminated(&self, start: usize) -> SubstituteError {
        SubstituteError::Unterminated(self.text[start..].chars().take(20).collect())
    }

    fn unsupported(&self, start: usize) -> SubstituteError {
        SubstituteError::Unsupported(self.written(start))
    }

    /// The reference at `start` as written, up to its first `}` (at most 60 characters).
    fn written(&self, start: usize) -> String {
        let rest = &self.text[start..];
        let end = rest.find('}').map_or(rest.len(), |i| i + 1);
        rest[..end].chars().take(60).collect()
    }
}

/// `value` with its first character mapped by `map`.
fn map_first<I: Iterator<Item = char>>(value: &str, map: impl Fn(char) -> I) -> String {
    let mut chars = value.chars();
    match chars.next() {
        Some(first) => map(first).chain(chars).collect(),
        None => String::new(),
    }
}

/// The characters of `value` from `offset`, at most `length` of them (see the module docs).
fn substring(value: &str, offset: &str, length: Option<&str>) -> String {
    let chars: Vec<char> = value.chars().collect();
    let count = i64::try_from(chars.len()).unwrap_or(i64::MAX);
    let Ok(offset) = offset.parse::<i64>() else {
        return value.to_owned();
    };
    let from = if offset < 0 {
        count.saturating_add(offset).max(0)
    } else {
        offset.min(count)
    };
    let to = match length.map(str::parse::<i64>) {
        None => count,
        Some(Err(_)) => return value.to_owned(),
        Some(Ok(length)) if length < 0 => count.saturating_add(length),
        Some(Ok(length)) => from.saturating_add(length).min(count),
    };
    match (usize::try_from(from), usize::try_from(to)) {
        (Ok(from), Ok(to)) if from < to => chars[from..to].iter().collect(),
        _ => String::new(),
    }
}

/// `value` with the literal `from` replaced by `to`: the first occurrence (`anchor` `None`),
/// every one (`/`), only at the start (`#`) or only at the end (`%`).
fn replace(value: &str, anchor: Option<char>, from: &str, to: &str) -> String {
    match anchor {
        Some('#') => match value.strip_prefix(from) {
            Some(rest) => format!("{to}{rest}"),
            None => value.to_owned(),
        },
        Some('%') => match value.strip_suffix(from) {
            Some(rest) => format!("{rest}{to}"),
            None => value.to_owned(),
        },
        _ if from.is_empty() => value.to_owned(),
        Some(_) => value.replace(from, to),
        None => value.replacen(from, to, 1),
    }
}

/// A bash-style glob: literal characters, `*`, `?` and bracket classes.
#[derive(Debug)]
struct Glob(Vec<Token>);

#[derive(Debug)]
enum Token {
    Char(char),
    AnyChar,
    AnyText,
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

impl Glob {
    fn new(pattern: &str) -> Self {
        let chars: Vec<char> = pattern.chars().collect();
        let mut tokens = Vec::new();
        let mut i = 0;
        while i < chars.len() {
            let (token, used) = match chars[i] {
                '*' => (Token::AnyText, 1),
                '?' => (Token::AnyChar, 1),
                '\\' if i + 1 < chars.len() => (Token::Char(chars[i + 1]), 2),
                '[' => class(&chars[i..]).unwrap_or((Token::Char('['), 1)),
                c => (Token::Char(c), 1),
            };
            tokens.push(token);
            i += used;
        }
        Self(tokens)
    }

    /// `value` less the shortest or longest start (`from_start`) or end matching the glob.
    fn trim<'v>(&self, value: &'v str, from_start: bool, longest: bool) -> &'v str {
        let matched = if from_start {
            self.matches(value.chars(), false)
        } else {
            self.matches(value.chars().rev(), true)
        };
        let mut lengths = (0..matched.len()).filter(|&n| matched[n]);
        let Some(n) = (if longest {
            lengths.next_back()
        } else {
            lengths.next()
        }) else {
            return value;
        };
        // Byte offsets of the character boundaries, the end included.
        let bounds: Vec<usize> = value
            .char_indices()
            .map(|(i, _)| i)
            .chain([value.len()])
            .collect();
        if from_start {
            &value[bounds[n]..]
        } else {
            &value[..bounds[bounds.len() - 1 - n]]
        }
    }

    /// For each `n`, whether the glob matches the first `n` characters of `text` (read
    /// backwards, with the glob reversed, when `reversed`): one pass of a set of positions in
    /// the glob, so a long value costs its length times the glob's.
    fn matches(&self, text: impl Iterator<Item = char>, reversed: bool) -> Vec<bool> {
        let tokens: Vec<&Token> = if reversed {
            self.0.iter().rev().collect()
        } else {
            self.0.iter().collect()
        };
        let close = |states: &mut Vec<bool>| {
            for i in 0..tokens.len() {
                if states[i] && matches!(tokens[i], Token::AnyText) {
                    states[i + 1] = true;
                }
            }
        };
        let mut states = vec![false; tokens.len() + 1];
        states[0] = true;
        close(&mut states);
        let mut matched = vec![states[tokens.len()]];
        for c in text {
            let mut next = vec![false; tokens.len() + 1];
            for (i, token) in tokens.iter().enumerate().filter(|&(i, _)| states[i]) {
                match token {
                    Token::AnyText => next[i] = true,
                    Token::AnyChar => next[i + 1] = true,
                    Token::Char(x) => next[i + 1] |= *x == c,
                    Token::Class { negated, ranges } => {
                        next[i + 1] |= *negated != ranges.iter().any(|&(a, b)| a <= c && c <= b);
                    }
                }
            }
            close(&mut next);
            matched.push(next[tokens.len()]);
            states = next;
        }
        matched
    }
}

/// The bracket class `chars` starts with, and how many characters it spans; `None` when the
/// `[` is never closed (it then stands for itself, as in bash).
fn class(chars: &[char]) -> Option<(Token, usize)> {
    let mut i = 1;
    let negated = matches!(chars.get(i), Some('!' | '^'));
    if negated {
        i += 1;
    }
    let mut ranges = Vec::new();
    let first = i;
    loop {
        let mut c = *chars.get(i)?;
        if c == ']' && i > first {
            return Some((Token::Class { negated, ranges }, i + 1));
        }
        if c == '\\' {
            i += 1;
            c = *chars.get(i)?;
        }
        match (chars.get(i + 1), chars.get(i + 2)) {
            (Some('-'), Some(&end)) if end != ']' => {
                ranges.push((c, end));
                i += 3;
            }
            _ => {
                ranges.push((c, c));
                i += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> BTreeMap<String, String> {
        [
            ("cluster", "prod"),
            ("empty", ""),
            ("path_name", "/home/bozo/ideas/thoughts.for.today"),
            ("stringZ", "abcABC123ABCabc"),
            ("lower", "abc"),
            ("filename", "bash.string.txt"),
            ("file_path", "path/to/file"),
            ("abs_path", "/path/to/file"),
            ("prefix", "bash."),
            ("mixed", "abcdEFGH28ij"),
            ("upper", "ABCDEFGH28IJ"),
            ("slashed", "foo/bar/baz"),
            ("dotted", "foo.bar"),
            ("star", "*x"),
            ("neg", "-2"),
            ("far", "-10"),
            ("unicode", "héllo wörld"),
            ("template", "${cluster} $${cluster}"),
            ("emoji", "a😀b"),
            ("accent", "élan"),
            ("shout", "ÉCOLE"),
            ("street", "straße"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    /// Asserts that each input substitutes to its output.
    fn expect(strictness: Strictness, table: &[(&str, &str)]) {
        let vars = vars();
        for (input, output) in table {
            assert_eq!(
                substitute(input, &vars, strictness).as_deref(),
                Ok(*output),
                "{input}"
            );
        }
    }

    /// Asserts that each input fails with its error.
    fn expect_errors(strictness: Strictness, table: &[(&str, SubstituteError)]) {
        let vars = vars();
        for (input, error) in table {
            assert_eq!(
                substitute(input, &vars, strictness).as_ref(),
                Err(error),
                "{input}"
            );
        }
    }

    fn unsupported(reference: &str) -> SubstituteError {
        SubstituteError::Unsupported(reference.to_owned())
    }

    fn undefined(name: &str) -> SubstituteError {
        SubstituteError::Undefined(name.to_owned())
    }

    #[test]
    fn references_and_defaults_treat_unset_and_empty_alike() {
        expect(
            Strictness::Lenient,
            &[
                (
                    "name: app-${cluster}\nreplicas: 3\n",
                    "name: app-prod\nreplicas: 3\n",
                ),
                ("${empty}", ""),
                ("${missing}", ""),
                ("${cluster:=dev}", "prod"),
                ("${cluster:-dev}", "prod"),
                ("${cluster=dev}", "prod"),
                ("${missing:=dev}", "dev"),
                ("${missing:-dev}", "dev"),
                ("${missing=dev}", "dev"),
                ("${empty:=dev}", "dev"),
                ("${empty:-dev}", "dev"),
                ("${empty=dev}", "dev"),
                ("${missing:=}", ""),
                ("${missing:=a:b-c=d/e}", "a:b-c=d/e"),
                ("${missing:=${cluster}-suffix}", "prod-suffix"),
                ("${missing=prefix${cluster}-suffix}", "prefixprod-suffix"),
                ("${missing=${mixed^^}}", "ABCDEFGH28IJ"),
                ("${missing:=$HOME}", "$HOME"),
                ("${missing:=x}y}", "xy}"),
                ("${template}", "${cluster} $${cluster}"),
            ],
        );
    }

    #[test]
    fn substrings_count_characters_and_clamp_offsets() {
        expect(
            Strictness::Lenient,
            &[
                ("${path_name:11}", "ideas/thoughts.for.today"),
                ("${path_name:11:5}", "ideas"),
                ("${cluster:0}", "prod"),
                ("${cluster:4}", ""),
                ("${cluster:10}", ""),
                ("${cluster:1:100}", "rod"),
                ("${cluster:10:2}", ""),
                ("${cluster:1:0}", ""),
                // A negative length stops that many characters before the end.
                ("${cluster:1:-1}", "ro"),
                ("${cluster:0:-4}", ""),
                ("${cluster:3:-2}", ""),
                // `${v:-2}` is a default, so a negative offset comes from a reference.
                ("${cluster:${neg}}", "od"),
                ("${cluster:${neg}:1}", "o"),
                ("${cluster:${far}}", "prod"),
                // Not integers (Flux's strconv.Atoi refuses " -2" too): the whole value.
                ("${cluster: -2}", "prod"),
                ("${cluster:x}", "prod"),
                ("${cluster:1:y}", "prod"),
                ("${unicode:1:4}", "éllo"),
                ("${unicode:${neg}}", "ld"),
                ("${emoji:1:1}", "😀"),
                ("${emoji:2}", "b"),
                ("${missing:1}", ""),
            ],
        );
    }

    #[test]
    fn replacements_take_literal_text() {
        expect(
            Strictness::Lenient,
            &[
                ("${stringZ/abc/xyz}", "xyzABC123ABCabc"),
                ("${stringZ//abc/xyz}", "xyzABC123ABCxyz"),
                ("${stringZ/#abc/XYZ}", "XYZABC123ABCabc"),
                ("${stringZ/%abc/XYZ}", "abcABC123ABCXYZ"),
                ("${stringZ/#ABC/XYZ}", "abcABC123ABCabc"),
                ("${stringZ/%ABC/XYZ}", "abcABC123ABCabc"),
                ("${stringZ/#abc/}", "ABC123ABCabc"),
                ("${stringZ/%abc/}", "abcABC123ABC"),
                ("${cluster/#/pre-}", "pre-prod"),
                ("${cluster/%/-post}", "prod-post"),
                ("${cluster///x}", "prod"),
                ("${dotted/./}", "foobar"),
                ("${stringZ//abc/}", "ABC123ABC"),
                ("${stringZ//a*/x}", "abcABC123ABCabc"),
                (r"${slashed/\//-}", "foo-bar/baz"),
                (r"${slashed//\//-}", "foo-bar-baz"),
                (r"${slashed//\//\\}", r"foo\bar\baz"),
                ("${cluster/o/a/b}", "pra/bd"),
                ("${stringZ//${lower}/${cluster}}", "prodABC123ABCprod"),
                ("${unicode//ö/oe}", "héllo woerld"),
                ("${missing/a/b}", ""),
            ],
        );
    }

    #[test]
    fn trims_remove_glob_matches_at_either_end() {
        expect(
            Strictness::Lenient,
            &[
                ("${filename#*.}", "string.txt"),
                ("${filename##*.}", "txt"),
                ("${filename%.*}", "bash.string"),
                ("${filename%%.*}", "bash"),
                ("${file_path#*/}", "to/file"),
                ("${file_path##*/}", "file"),
                ("${abs_path#*/}", "path/to/file"),
                ("${abs_path##*/}", "file"),
                ("${abs_path%/*}", "/path/to"),
                ("${abs_path%%/*}", ""),
                ("${filename#bash.}", "string.txt"),
                ("${filename#nomatch}", "bash.string.txt"),
                ("${filename#${prefix}}", "string.txt"),
                ("${filename%.t?t}", "bash.string"),
                ("${filename##*[.]}", "txt"),
                ("${filename%%[!a-z]*}", "bash"),
                ("${filename#[a-c]}", "ash.string.txt"),
                // A glob matching the empty start removes nothing (bash), `##` everything.
                ("${cluster#*}", "prod"),
                ("${cluster##*}", ""),
                (r"${star#\*}", "x"),
                ("${star#[*]}", "x"),
                ("${star#[}", "*x"),
                ("${unicode#h?}", "llo wörld"),
                ("${unicode%ö*}", "héllo w"),
                ("${missing#a}", ""),
            ],
        );
    }

    #[test]
    fn case_and_length_operators_count_characters() {
        expect(
            Strictness::Lenient,
            &[
                ("${mixed^}", "AbcdEFGH28ij"),
                ("${mixed^^}", "ABCDEFGH28IJ"),
                ("${upper,}", "aBCDEFGH28IJ"),
                ("${upper,,}", "abcdefgh28ij"),
                ("${accent^}", "Élan"),
                ("${unicode^^}", "HÉLLO WÖRLD"),
                ("${shout,}", "éCOLE"),
                ("${shout,,}", "école"),
                ("${street^^}", "STRASSE"),
                ("${empty^}", ""),
                ("${missing^^}", ""),
                ("${#mixed}", "12"),
                ("${#empty}", "0"),
                ("${#unicode}", "11"),
                ("${#emoji}", "3"),
                ("${#missing}", "0"),
            ],
        );
    }

    #[test]
    fn double_dollars_escape_and_bare_dollars_stay() {
        expect(
            Strictness::Lenient,
            &[
                ("$${cluster}", "${cluster}"),
                ("$$cluster", "$cluster"),
                ("$$", "$"),
                ("a$$$b", "a$$b"),
                ("$$${cluster}", "$prod"),
                ("$${var=${cluster}}", "${var=prod}"),
                (
                    "some text ${mixed}$${var$${mixed}$mixed${mixed}",
                    "some text abcdEFGH28ij${var${mixed}$mixedabcdEFGH28ij",
                ),
                ("${missing:=$${cluster}}", "$prod"),
                ("${cluster/r/$$}", "p$od"),
                ("echo $HOME $1 $", "echo $HOME $1 $"),
                ("cost: 5$", "cost: 5$"),
                ("a}b{c", "a}b{c"),
                (r"\\something ${cluster}", r"\\something prod"),
            ],
        );
    }

    #[test]
    fn strict_mode_fails_on_undefined_variables_unless_a_default_is_given() {
        expect(
            Strictness::Strict,
            &[
                ("${cluster}", "prod"),
                ("${empty}", ""),
                ("${#empty}", "0"),
                ("${missing:=d}", "d"),
                ("${missing:-d}", "d"),
                ("${missing=d}", "d"),
                ("${missing:=}", ""),
                ("${empty:=d}", "d"),
                ("$${missing}", "${missing}"),
                ("$missing", "$missing"),
            ],
        );
        let reads = [
            "${missing}",
            "${#missing}",
            "${missing^}",
            "${missing^^}",
            "${missing,}",
            "${missing,,}",
            "${missing:0}",
            "${missing:0:10}",
            "${missing/a/b}",
            "${missing//a/b}",
            "${missing/#a/b}",
            "${missing/%a/b}",
            "${missing#a}",
            "${missing##a}",
            "${missing%a}",
            "${missing%%a}",
            // Arguments are expanded before the operator runs, as in Flux.
            "${cluster:=${missing}}",
            "${cluster:${missing}}",
        ];
        let errors: Vec<_> = reads.iter().map(|r| (*r, undefined("missing"))).collect();
        expect_errors(Strictness::Strict, &errors);
        assert_eq!(
            undefined("missing").to_string(),
            "variable \"missing\" is not defined and the reference gives no default (strict mode)"
        );
    }

    #[test]
    fn malformed_and_unsupported_references_are_errors() {
        let unterminated = |s: &str| SubstituteError::Unterminated(s.to_owned());
        expect_errors(
            Strictness::Lenient,
            &[
                ("x: ${open", unterminated("${open")),
                ("${", unterminated("${")),
                ("${cluster:=abc", unterminated("${cluster:=abc")),
                ("${cluster/a/b", unterminated("${cluster/a/b")),
                ("${cluster:1", unterminated("${cluster:1")),
                ("${cluster^", unterminated("${cluster^")),
                ("${1x}", SubstituteError::InvalidName("1x".to_owned())),
                ("${#1x}", SubstituteError::InvalidName("1x".to_owned())),
                ("${café}", SubstituteError::InvalidName("café".to_owned())),
                ("${bad-name}", unsupported("${bad-name}")),
                ("${cluster-dev}", unsupported("${cluster-dev}")),
                ("${cluster+alt}", unsupported("${cluster+alt}")),
                ("${cluster:?message}", unsupported("${cluster:?message}")),
                ("${cluster:+alt}", unsupported("${cluster:+alt}")),
                ("${cluster@U}", unsupported("${cluster@U}")),
                ("${a.b}", unsupported("${a.b}")),
                ("${}", unsupported("${}")),
                ("${ cluster}", unsupported("${ cluster}")),
                ("${#}", unsupported("${#}")),
                ("${#cluster:1}", unsupported("${#cluster:1}")),
                ("${cluster:}", unsupported("${cluster:}")),
                ("${cluster::2}", unsupported("${cluster::2}")),
                ("${cluster:1:}", unsupported("${cluster:1:}")),
                ("${cluster#}", unsupported("${cluster#}")),
                ("${cluster%%}", unsupported("${cluster%%}")),
                ("${cluster/a}", unsupported("${cluster/a}")),
                ("${cluster^x}", unsupported("${cluster^x}")),
                ("${cluster^^^}", unsupported("${cluster^^^}")),
                ("${cluster,^}", unsupported("${cluster,^}")),
                ("ok ${cluster:=${bad-name}}", unsupported("${bad-name}")),
            ],
        );
    }

    #[test]
    fn deeply_nested_references_are_refused_before_the_stack_runs_out() {
        let nested = |depth: usize| {
            format!(
                "{}${{cluster}}{}",
                "${missing:=".repeat(depth),
                "}".repeat(depth)
            )
        };
        let vars = vars();
        assert_eq!(
            substitute(&nested(MAX_NESTING), &vars, Strictness::Strict).as_deref(),
            Ok("prod")
        );
        // Named by the deepest reference allowed, as written (60 characters of it).
        let error = substitute(&nested(100_000), &vars, Strictness::Strict).unwrap_err();
        let written = format!("{}${{mis", "${missing:=".repeat(5));
        assert_eq!(error, SubstituteError::TooDeep(written));
    }

    #[test]
    fn errors_name_the_reference_never_a_value() {
        let vars = BTreeMap::from([("token".to_owned(), "hunter2".to_owned())]);
        for input in [
            "${token-x}",
            "${token:+x}",
            "${token/x}",
            "${token:=${nope}}",
            "${token:1",
        ] {
            let error = substitute(input, &vars, Strictness::Strict).unwrap_err();
            let message = error.to_string();
            assert!(
                message.contains("token") || message.contains("nope"),
                "{message}"
            );
            assert!(!message.contains("unter2"), "{message}");
        }
    }

    #[test]
    fn names_of_variables_are_validated() {
        assert!(validate_names(&["ok_1".to_owned(), "_x".to_owned()]).is_ok());
        assert_eq!(
            validate_names(&["1x".to_owned()]),
            Err(SubstituteError::InvalidName("1x".to_owned()))
        );
        assert!(validate_names(&["a-b".to_owned()]).is_err());
    }
}
