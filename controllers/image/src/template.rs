//! Commit messages from `git.commit.messageTemplate`: the subset of Go's text/template that
//! Flux's documented templates use — text, `{{ .Field.Path }}`, `{{ $var.Field }}`,
//! `{{ range [$k, $v :=] pipeline }}…{{ else }}…{{ end }}`, `{{ if pipeline }}…{{ else }}…{{ end }}`,
//! comments and `{{-`/`-}}` trimming. Anything else (functions, pipes, `with`, `define`) is an
//! error naming it, never silently dropped.

use std::fmt::Write as _;

/// A value the template can read.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Str(String),
    List(Vec<Value>),
    /// Entries sorted by key text, as Go ranges over maps in key order.
    Map(Vec<(String, Value, Value)>),
    /// Named fields, and how the value prints (Go's `String()`).
    Struct(Vec<(&'static str, Value)>, String),
}

impl Value {
    /// A map from entries, sorted by the keys' printed form.
    #[must_use]
    pub fn map(mut entries: Vec<(Value, Value)>) -> Self {
        entries.sort_by_key(|(k, _)| k.to_text());
        Self::Map(
            entries
                .into_iter()
                .map(|(k, v)| (k.to_text(), k, v))
                .collect(),
        )
    }

    fn to_text(&self) -> String {
        match self {
            Self::Str(s) | Self::Struct(_, s) => s.clone(),
            Self::List(items) => {
                let inner: Vec<_> = items.iter().map(Self::to_text).collect();
                format!("[{}]", inner.join(" "))
            }
            Self::Map(entries) => {
                let inner: Vec<_> = entries
                    .iter()
                    .map(|(k, _, v)| format!("{k}:{}", v.to_text()))
                    .collect();
                format!("map[{}]", inner.join(" "))
            }
        }
    }

    fn truthy(&self) -> bool {
        match self {
            Self::Str(s) => !s.is_empty(),
            Self::List(l) => !l.is_empty(),
            Self::Map(m) => !m.is_empty(),
            Self::Struct(..) => true,
        }
    }

    fn field(&self, name: &str) -> Result<Value, TemplateError> {
        match self {
            Self::Struct(fields, _) => fields
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.clone())
                .ok_or_else(|| TemplateError::Field(name.to_owned())),
            Self::Map(entries) => Ok(entries
                .iter()
                .find(|(k, _, _)| k == name)
                .map_or(Self::Str(String::new()), |(_, _, v)| v.clone())),
            _ => Err(TemplateError::Field(name.to_owned())),
        }
    }
}

/// Why a template cannot be rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("unclosed action (a '{{{{' without '}}}}')")]
    Unclosed,
    #[error("unexpected {{{{{0}}}}}")]
    Unexpected(String),
    #[error("missing {{{{end}}}} for {{{{{0}}}}}")]
    MissingEnd(String),
    #[error("unsupported action {{{{{0}}}}}: Weir renders fields, variables, range and if")]
    Unsupported(String),
    #[error("can't evaluate field {0}")]
    Field(String),
    #[error("undefined variable {0}")]
    Variable(String),
}

#[derive(Debug)]
enum Node {
    Text(String),
    Print(String),
    Range {
        key: Option<String>,
        value: Option<String>,
        expr: String,
        body: Vec<Node>,
        otherwise: Vec<Node>,
    },
    If {
        expr: String,
        body: Vec<Node>,
        otherwise: Vec<Node>,
    },
}

enum Token {
    Text(String),
    Action(String),
}

fn tokenize(src: &str) -> Result<Vec<Token>, TemplateError> {
    let mut tokens = vec![];
    let mut rest = src;
    let mut trim_next = false;
    while let Some(start) = rest.find("{{") {
        let mut text = &rest[..start];
        if trim_next {
            text = text.trim_start();
        }
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or(TemplateError::Unclosed)?;
        let mut body = &after[..end];
        if let Some(b) = body.strip_prefix("- ").or_else(|| body.strip_prefix("-\n")) {
            text = text.trim_end();
            body = b;
        }
        trim_next = false;
        if let Some(b) = body.strip_suffix(" -").or_else(|| body.strip_suffix("\n-")) {
            trim_next = true;
            body = b;
        }
        if !text.is_empty() {
            tokens.push(Token::Text(text.to_owned()));
        }
        let body = body.trim();
        if !(body.starts_with("/*") && body.ends_with("*/")) {
            tokens.push(Token::Action(body.to_owned()));
        }
        rest = &after[end + 2..];
    }
    let text = if trim_next { rest.trim_start() } else { rest };
    if !text.is_empty() {
        tokens.push(Token::Text(text.to_owned()));
    }
    Ok(tokens)
}

/// What ended a block: `end`, or `else` (then the else branch follows).
enum BlockEnd {
    End,
    Else,
    Eof,
}

fn parse_block(
    tokens: &mut std::iter::Peekable<std::vec::IntoIter<Token>>,
) -> Result<(Vec<Node>, BlockEnd), TemplateError> {
    let mut nodes = vec![];
    while let Some(token) = tokens.next() {
        let action = match token {
            Token::Text(t) => {
                nodes.push(Node::Text(t));
                continue;
            }
            Token::Action(a) => a,
        };
        let word = action.split_whitespace().next().unwrap_or_default();
        match word {
            "end" => return Ok((nodes, BlockEnd::End)),
            "else" => return Ok((nodes, BlockEnd::Else)),
            "range" | "if" => {
                let header = action[word.len()..].trim().to_owned();
                let (body, end) = parse_block(tokens)?;
                let otherwise = match end {
                    BlockEnd::End => vec![],
                    BlockEnd::Else => match parse_block(tokens)? {
                        (otherwise, BlockEnd::End) => otherwise,
                        _ => return Err(TemplateError::MissingEnd(action.clone())),
                    },
                    BlockEnd::Eof => return Err(TemplateError::MissingEnd(action.clone())),
                };
                if word == "if" {
                    nodes.push(Node::If {
                        expr: header,
                        body,
                        otherwise,
                    });
                } else {
                    let (key, value, expr) = range_header(&header)?;
                    nodes.push(Node::Range {
                        key,
                        value,
                        expr,
                        body,
                        otherwise,
                    });
                }
            }
            _ if action.starts_with('.') || action.starts_with('$') => {
                nodes.push(Node::Print(action));
            }
            _ => return Err(TemplateError::Unsupported(action)),
        }
    }
    Ok((nodes, BlockEnd::Eof))
}

/// `$k, $v := expr`, `$v := expr` or `expr`.
type RangeHeader = (Option<String>, Option<String>, String);

fn range_header(header: &str) -> Result<RangeHeader, TemplateError> {
    let Some((vars, expr)) = header.split_once(":=") else {
        return Ok((None, None, header.to_owned()));
    };
    let vars: Vec<String> = vars.split(',').map(|v| v.trim().to_owned()).collect();
    if vars.iter().any(|v| !v.starts_with('$')) {
        return Err(TemplateError::Unsupported(format!("range {header}")));
    }
    let expr = expr.trim().to_owned();
    match vars.as_slice() {
        [v] => Ok((None, Some(v.clone()), expr)),
        [k, v] => Ok((Some(k.clone()), Some(v.clone()), expr)),
        _ => Err(TemplateError::Unsupported(format!("range {header}"))),
    }
}

/// A parsed template.
#[derive(Debug)]
pub struct Template {
    nodes: Vec<Node>,
}

impl Template {
    /// Parses `src`; fails on anything outside the supported subset.
    pub fn parse(src: &str) -> Result<Self, TemplateError> {
        let mut tokens = tokenize(src)?.into_iter().peekable();
        match parse_block(&mut tokens)? {
            (nodes, BlockEnd::Eof) => Ok(Self { nodes }),
            (_, BlockEnd::End) => Err(TemplateError::Unexpected("end".into())),
            (_, BlockEnd::Else) => Err(TemplateError::Unexpected("else".into())),
        }
    }

    /// Renders with `root` as `.` and `$`.
    pub fn render(&self, root: &Value) -> Result<String, TemplateError> {
        let mut out = String::new();
        let mut vars = vec![("$".to_owned(), root.clone())];
        render_nodes(&self.nodes, root, &mut vars, &mut out)?;
        Ok(out)
    }
}

fn eval(expr: &str, dot: &Value, vars: &[(String, Value)]) -> Result<Value, TemplateError> {
    let expr = expr.trim();
    if expr.contains(char::is_whitespace) || expr.contains('|') || expr.contains('(') {
        return Err(TemplateError::Unsupported(expr.to_owned()));
    }
    let (mut value, path) = if let Some(rest) = expr.strip_prefix('$') {
        let (name, path) = rest.split_once('.').unwrap_or((rest, ""));
        let var = format!("${name}");
        let value = vars
            .iter()
            .rev()
            .find(|(n, _)| *n == var)
            .map(|(_, v)| v.clone())
            .ok_or(TemplateError::Variable(var))?;
        (value, path)
    } else if let Some(path) = expr.strip_prefix('.') {
        (dot.clone(), path)
    } else {
        return Err(TemplateError::Unsupported(expr.to_owned()));
    };
    for field in path.split('.').filter(|f| !f.is_empty()) {
        value = value.field(field)?;
    }
    Ok(value)
}

fn render_nodes(
    nodes: &[Node],
    dot: &Value,
    vars: &mut Vec<(String, Value)>,
    out: &mut String,
) -> Result<(), TemplateError> {
    for node in nodes {
        match node {
            Node::Text(t) => out.push_str(t),
            Node::Print(expr) => {
                let _ = write!(out, "{}", eval(expr, dot, vars)?.to_text());
            }
            Node::If {
                expr,
                body,
                otherwise,
            } => {
                let branch = if eval(expr, dot, vars)?.truthy() {
                    body
                } else {
                    otherwise
                };
                render_nodes(branch, dot, vars, out)?;
            }
            Node::Range {
                key,
                value,
                expr,
                body,
                otherwise,
            } => {
                let items: Vec<(Value, Value)> = match eval(expr, dot, vars)? {
                    Value::List(items) => items
                        .into_iter()
                        .enumerate()
                        .map(|(i, v)| (Value::Str(i.to_string()), v))
                        .collect(),
                    Value::Map(entries) => entries.into_iter().map(|(_, k, v)| (k, v)).collect(),
                    Value::Str(s) if s.is_empty() => vec![],
                    other => {
                        return Err(TemplateError::Unsupported(format!(
                            "range over {}",
                            other.to_text()
                        )));
                    }
                };
                if items.is_empty() {
                    render_nodes(otherwise, dot, vars, out)?;
                }
                for (k, v) in items {
                    let depth = vars.len();
                    if let Some(name) = key {
                        vars.push((name.clone(), k));
                    }
                    if let Some(name) = value {
                        vars.push((name.clone(), v.clone()));
                    }
                    let result = render_nodes(body, &v, vars, out);
                    vars.truncate(depth);
                    result?;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> Value {
        Value::Str(v.to_owned())
    }

    fn change(old: &str, new: &str) -> Value {
        Value::Struct(
            vec![
                ("OldValue", s(old)),
                ("NewValue", s(new)),
                ("Setter", s("ns:app")),
            ],
            format!("{old} -> {new}"),
        )
    }

    fn root() -> Value {
        let object = Value::Struct(
            vec![("Kind", s("Deployment")), ("Name", s("app"))],
            "Deployment/app".into(),
        );
        let changes = Value::List(vec![change("r/app:1.0.0", "r/app:1.1.0")]);
        Value::Struct(
            vec![
                (
                    "AutomationObject",
                    Value::Struct(vec![("Name", s("auto"))], "ns/auto".into()),
                ),
                (
                    "Changed",
                    Value::Struct(
                        vec![
                            (
                                "FileChanges",
                                Value::map(vec![(
                                    s("deploy.yaml"),
                                    Value::map(vec![(object.clone(), changes.clone())]),
                                )]),
                            ),
                            ("Objects", Value::map(vec![(object, changes.clone())])),
                            ("Changes", changes),
                        ],
                        String::new(),
                    ),
                ),
            ],
            String::new(),
        )
    }

    #[test]
    fn renders_fluxs_documented_template() {
        let src = r"Automated image update

Automation name: {{ .AutomationObject }}

Files:
{{ range $filename, $_ := .Changed.FileChanges -}}
- {{ $filename }}
{{ end -}}

Objects:
{{ range $resource, $changes := .Changed.Objects -}}
- {{ $resource.Kind }} {{ $resource.Name }}
  Changes:
{{- range $_, $change := $changes }}
    - {{ $change.OldValue }} -> {{ $change.NewValue }}
{{ end -}}
{{ end -}}
";
        let out = Template::parse(src).unwrap().render(&root()).unwrap();
        assert_eq!(
            out,
            "Automated image update\n\nAutomation name: ns/auto\n\nFiles:\n- deploy.yaml\nObjects:\n- Deployment app\n  Changes:\n    - r/app:1.0.0 -> r/app:1.1.0\n"
        );
    }

    #[test]
    fn range_without_variables_and_if_else() {
        let src = "{{ range .Changed.Changes }}{{ .NewValue }};{{ else }}none{{ end }}{{/* c */}}\
                   {{ if .Changed.Changes }} yes{{ else }} no{{ end }}";
        let out = Template::parse(src).unwrap().render(&root()).unwrap();
        assert_eq!(out, "r/app:1.1.0; yes");
    }

    #[test]
    fn what_it_cannot_render_is_an_error() {
        for (src, want) in [
            ("{{ .Updated.Images }}", "can't evaluate field Updated"),
            ("{{ .Changed | printf }}", "unsupported action"),
            ("{{ printf \"%s\" .X }}", "unsupported action"),
            ("{{ range .Changed.Changes }}", "missing {{end}}"),
            ("{{ end }}", "unexpected"),
            ("{{ .AutomationObject", "unclosed"),
            ("{{ $nope }}", "undefined variable"),
            ("{{ with .Changed }}x{{ end }}", "unsupported action"),
        ] {
            let err = Template::parse(src)
                .and_then(|t| t.render(&root()))
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{src}: {err}");
        }
    }
}
