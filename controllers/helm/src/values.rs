//! A HelmRelease's values, composed as Flux's helm-controller composes them
//! (`ChartValuesFromReferences` and `ReplacePathValue` in fluxcd/pkg `chartutil/values.go`,
//! `MergeMaps` in `chartutil/merge.go`, Helm's `pkg/strvals/parser.go` for `targetPath`).
//!
//! What Flux does, and this module with it:
//! - `valuesFrom` entries are read in order from the HelmRelease's namespace. Each object is read
//!   once per composition, so two entries naming it see one version of it. A ConfigMap's `data`
//!   and a Secret's `data` are read; a ConfigMap's `binaryData` is not.
//! - `valuesKey` defaults to `values.yaml` (also when empty). A missing object or key fails the
//!   composition unless the entry is `optional`, which skips it; any other API error fails it,
//!   optional or not.
//! - Without `targetPath` the key holds a YAML document: empty or `null` adds nothing, a map is
//!   merged over what came before, anything else is an error. Only the first document is read.
//! - With `targetPath` the line `<targetPath>=<content>` goes through Helm's `--set` parser
//!   (`strvals.ParseInto`), for Secrets and ConfigMaps alike: `true`, `false` and `null` (any case)
//!   and integers without a leading zero are typed, `{a,b}` is a list, a `,` starts another
//!   `key=value` and `\` escapes the next character. Content wrapped in quotes (`'…'` or `"…"`)
//!   loses every quote at both ends and stays a string (`strvals.ParseIntoString`).
//! - Merging is Helm's `mergeMaps`: maps merge key by key; anything else, lists and `null`
//!   included, replaces what was there. `null` does not delete a key: deleting is Helm's
//!   coalescing of the chart's defaults, which happens later, in Helm.
//! - `spec.values` is merged last, and also merged in before each `targetPath` is set. Go maps and
//!   slices are references: a path set inside a map or list that came from `spec.values` alone
//!   changes `spec.values` itself, so the target path wins over the inline values there (what
//!   Flux documents: "it will overwrite everything before, including inline values"), while a
//!   top-level key, or one inside a map merged from several layers, is overridden by the inline
//!   values again. `Node` keeps Go's sharing, so the result is Flux's in every case rather than
//!   only in the documented ones.
//!
//! Where Weir differs: errors never quote a ConfigMap's or Secret's content (a YAML error is cut to
//! its problem and location, a `--set` error to what is wrong), since Secret values must stay out
//! of status, events and logs. Documents are read as Go's `sigs.k8s.io/yaml` reads them (a
//! repeated key keeps its last value, `<<` merges, number and boolean keys become strings), but
//! with YAML 1.2 scalars where Go has YAML 1.1's: unquoted `yes`/`no`/`on`/`off`/`y`/`n`, `0755`
//! and `1_000` stay strings here, where Flux makes them booleans and numbers.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::fmt;
use std::rc::Rc;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::{Api, Client};
use serde::de::{
    self, Deserialize, Deserializer, EnumAccess, MapAccess, SeqAccess, VariantAccess as _, Visitor,
};
use serde_json::{Map, Value};
use weir_api::helm_release::{HelmReleaseSpec, ValuesKind, ValuesReference};

/// The data key read when a reference names none.
pub const DEFAULT_VALUES_KEY: &str = "values.yaml";
/// Helm's `strvals.MaxIndex`: the largest list index a path may set.
const MAX_INDEX: usize = 65_536;
/// Helm's `strvals.MaxNestedNameLevel`: how many `.`-separated map keys a path may hold.
const MAX_NESTED_NAME_LEVEL: usize = 30;

/// A ConfigMap's or Secret's `data`, by key.
pub type ObjectData = BTreeMap<String, Vec<u8>>;

/// Why a HelmRelease's values could not be composed. Messages name the reference and what is
/// wrong with it, never the content of a ConfigMap or Secret.
#[derive(Debug, thiserror::Error)]
pub enum ValuesError {
    #[error("{} '{namespace}/{name}' named in valuesFrom was not found", .kind.as_str())]
    NotFound {
        kind: ValuesKind,
        namespace: String,
        name: String,
    },
    #[error("{} '{namespace}/{name}' named in valuesFrom has no key '{key}'", .kind.as_str())]
    MissingKey {
        kind: ValuesKind,
        namespace: String,
        name: String,
        key: String,
    },
    #[error(
        "key '{key}' of {} '{namespace}/{name}' is not a values document: {reason}",
        .kind.as_str()
    )]
    Invalid {
        kind: ValuesKind,
        namespace: String,
        name: String,
        key: String,
        reason: String,
    },
    #[error("cannot set the value at targetPath '{path}': {reason}")]
    TargetPath { path: String, reason: String },
    #[error("cannot read {} '{namespace}/{name}' named in valuesFrom", .kind.as_str())]
    Api {
        kind: ValuesKind,
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
}

impl ValuesError {
    /// Whether the error may go away without a change to the HelmRelease: a missing object may
    /// be created later.
    #[must_use]
    pub fn is_waiting(&self) -> bool {
        matches!(self, Self::NotFound { .. })
    }
}

/// The values of a release: every `valuesFrom` entry in order, then `spec.values`, as Flux
/// composes them (see the module docs). Objects are read from `namespace`, the HelmRelease's.
pub async fn compose(
    client: &Client,
    namespace: &str,
    spec: &HelmReleaseSpec,
) -> Result<Value, ValuesError> {
    let mut fetched = fetch_objects(client, namespace, &spec.values_from).await;
    compose_from(namespace, spec, |kind, name| {
        match fetched.remove(&(kind.as_str(), name.to_owned())) {
            Some(Ok(data)) => Ok(data),
            Some(Err(source)) => Err(ValuesError::Api {
                kind,
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                source,
            }),
            // Not reached: composing asks for objects in the order they were fetched and stops
            // at the API error that stopped fetching.
            None => Ok(None),
        }
    })
}

/// The pure core of [`compose`]: `lookup` gives an object's data, `None` when it does not exist;
/// it is asked once per distinct object, in the order the references first name them.
pub fn compose_from(
    namespace: &str,
    spec: &HelmReleaseSpec,
    mut lookup: impl FnMut(ValuesKind, &str) -> Result<Option<ObjectData>, ValuesError>,
) -> Result<Value, ValuesError> {
    let inline = map_from_json(spec.values.clone().unwrap_or_default());
    let mut objects: BTreeMap<(&'static str, &str), Option<ObjectData>> = BTreeMap::new();
    let mut result = MapRef::default();
    for reference in &spec.values_from {
        let object_key = (reference.kind.as_str(), reference.name.as_str());
        let data = match objects.entry(object_key) {
            Entry::Occupied(entry) => entry.into_mut(),
            Entry::Vacant(entry) => entry.insert(lookup(reference.kind, &reference.name)?),
        };
        if let Some(content) = select_content(namespace, reference, data.as_ref())? {
            result = apply_reference(namespace, reference, content, &result, &inline)?;
        }
    }
    Ok(Value::Object(map_to_json(&merge_shared(&result, &inline))))
}

/// Sets `value` at `path`, in Helm's `--set` path syntax: `.` between map keys, `\` escaping the
/// next character (`kubernetes\.io/role`), `[i]` indexing a list, which grows with nulls. The
/// value is set as given, not parsed. `values` is unchanged when the path is rejected.
pub fn set_path(
    values: &mut Map<String, Value>,
    path: &str,
    value: Value,
) -> Result<(), ValuesError> {
    let rejected = |error: SetError| ValuesError::TargetPath {
        path: path.to_owned(),
        reason: error.reason().to_owned(),
    };
    if path.is_empty() {
        return Err(rejected(SetError::EmptyKey));
    }
    let root = map_from_json(values.clone());
    let value = Node::from_json(value);
    SetLine::new(&format!("{path}="), Typing::Given(Some(value)))
        .apply(&root)
        .map_err(rejected)?;
    *values = map_to_json(&root);
    Ok(())
}

/// Merges `overlay` over `base` as Helm's `mergeMaps` does: maps merge key by key, anything
/// else (lists, scalars, `null`) replaces.
pub fn deep_merge(base: &mut Map<String, Value>, overlay: Map<String, Value>) {
    for (key, value) in overlay {
        match (base.get_mut(&key), value) {
            (Some(Value::Object(left)), Value::Object(right)) => deep_merge(left, right),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

type Fetched = BTreeMap<(&'static str, String), Result<Option<ObjectData>, kube::Error>>;

/// Reads every object the references name, once each, in order; stops at the first API error,
/// which composing reaches before any object after it.
async fn fetch_objects(
    client: &Client,
    namespace: &str,
    references: &[ValuesReference],
) -> Fetched {
    let mut fetched = Fetched::new();
    for reference in references {
        let object_key = (reference.kind.as_str(), reference.name.clone());
        if fetched.contains_key(&object_key) {
            continue;
        }
        let data = fetch_object(client, namespace, reference.kind, &reference.name).await;
        let failed = data.is_err();
        fetched.insert(object_key, data);
        if failed {
            break;
        }
    }
    fetched
}

async fn fetch_object(
    client: &Client,
    namespace: &str,
    kind: ValuesKind,
    name: &str,
) -> Result<Option<ObjectData>, kube::Error> {
    Ok(match kind {
        ValuesKind::ConfigMap => Api::<ConfigMap>::namespaced(client.clone(), namespace)
            .get_opt(name)
            .await?
            .map(|object| {
                let data = object.data.unwrap_or_default().into_iter();
                data.map(|(key, text)| (key, text.into_bytes())).collect()
            }),
        ValuesKind::Secret => Api::<Secret>::namespaced(client.clone(), namespace)
            .get_opt(name)
            .await?
            .map(|object| {
                let data = object.data.unwrap_or_default().into_iter();
                data.map(|(key, bytes)| (key, bytes.0)).collect()
            }),
    })
}

/// The content a reference names, `None` when an optional reference finds nothing.
fn select_content<'a>(
    namespace: &str,
    reference: &ValuesReference,
    data: Option<&'a ObjectData>,
) -> Result<Option<&'a [u8]>, ValuesError> {
    let key = values_key(reference);
    let Some(data) = data else {
        if reference.optional {
            tracing::debug!(
                kind = reference.kind.as_str(),
                name = %reference.name,
                "optional valuesFrom object not found, skipped"
            );
            return Ok(None);
        }
        return Err(ValuesError::NotFound {
            kind: reference.kind,
            namespace: namespace.to_owned(),
            name: reference.name.clone(),
        });
    };
    match data.get(key) {
        Some(content) => Ok(Some(content)),
        None if reference.optional => {
            tracing::debug!(
                kind = reference.kind.as_str(),
                name = %reference.name,
                key,
                "optional valuesFrom key not found, skipped"
            );
            Ok(None)
        }
        None => Err(ValuesError::MissingKey {
            kind: reference.kind,
            namespace: namespace.to_owned(),
            name: reference.name.clone(),
            key: key.to_owned(),
        }),
    }
}

fn values_key(reference: &ValuesReference) -> &str {
    match reference.values_key.as_deref() {
        None | Some("") => DEFAULT_VALUES_KEY,
        Some(key) => key,
    }
}

/// One reference's layer over `result`: its document merged, or its content set at its target
/// path after the inline values are merged in (see the module docs for why both).
fn apply_reference(
    namespace: &str,
    reference: &ValuesReference,
    content: &[u8],
    result: &MapRef,
    inline: &MapRef,
) -> Result<MapRef, ValuesError> {
    if let Some(path) = reference
        .target_path
        .as_deref()
        .filter(|path| !path.is_empty())
    {
        let merged = merge_shared(result, inline);
        replace_path_value(&merged, path, &String::from_utf8_lossy(content)).map_err(|error| {
            ValuesError::TargetPath {
                path: path.to_owned(),
                reason: error.reason().to_owned(),
            }
        })?;
        return Ok(merged);
    }
    let document = read_document(content).map_err(|reason| ValuesError::Invalid {
        kind: reference.kind,
        namespace: namespace.to_owned(),
        name: reference.name.clone(),
        key: values_key(reference).to_owned(),
        reason,
    })?;
    Ok(merge_shared(result, &map_from_json(document)))
}

/// Flux's `ReplacePathValue`: `<path>=<content>` through Helm's `--set` parser, as strings only
/// when the content is quoted.
fn replace_path_value(values: &MapRef, path: &str, content: &str) -> Result<(), SetError> {
    let quoted = |quote: char| content.starts_with(quote) && content.ends_with(quote);
    let (content, typing) = if quoted('\'') || quoted('"') {
        (content.trim_matches(['\'', '"']), Typing::Strings)
    } else {
        (content, Typing::Typed)
    };
    SetLine::new(&format!("{path}={content}"), typing).apply(values)
}

// --- Values with Go's sharing -------------------------------------------------------------

type MapRef = Rc<RefCell<BTreeMap<String, Node>>>;
type ListRef = Rc<RefCell<Vec<Node>>>;

/// A values tree whose maps and lists are shared references, as Go's are: merging copies a map's
/// entries, not the maps and lists under them, and setting a path changes those in place.
#[derive(Clone, Debug)]
enum Node {
    Scalar(Value),
    Map(MapRef),
    List(ListRef),
}

impl Node {
    fn from_json(value: Value) -> Self {
        match value {
            Value::Object(map) => Self::Map(map_from_json(map)),
            Value::Array(items) => Self::List(Rc::new(RefCell::new(
                items.into_iter().map(Self::from_json).collect(),
            ))),
            scalar => Self::Scalar(scalar),
        }
    }

    fn to_json(&self) -> Value {
        match self {
            Self::Scalar(value) => value.clone(),
            Self::Map(map) => Value::Object(map_to_json(map)),
            Self::List(list) => Value::Array(list.borrow().iter().map(Self::to_json).collect()),
        }
    }
}

fn map_from_json(map: Map<String, Value>) -> MapRef {
    let entries = map
        .into_iter()
        .map(|(key, value)| (key, Node::from_json(value)));
    Rc::new(RefCell::new(entries.collect()))
}

fn map_to_json(map: &MapRef) -> Map<String, Value> {
    let map = map.borrow();
    map.iter()
        .map(|(key, value)| (key.clone(), value.to_json()))
        .collect()
}

/// Flux's `MergeMaps`: a new map with `base`'s entries, then `overlay`'s; where both hold a map
/// under one key, a new merged map. Every other value is shared, not copied.
fn merge_shared(base: &MapRef, overlay: &MapRef) -> MapRef {
    let mut out = base.borrow().clone();
    for (key, value) in overlay.borrow().iter() {
        let merged = match (out.get(key), value) {
            (Some(Node::Map(left)), Node::Map(right)) => Node::Map(merge_shared(left, right)),
            _ => value.clone(),
        };
        out.insert(key.clone(), merged);
    }
    Rc::new(RefCell::new(out))
}

// --- Helm's `--set` line -------------------------------------------------------------------

/// What is wrong with a `--set` line; content-free, since the line holds a Secret's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SetError {
    NoValue,
    EmptyKey,
    EmptyMap,
    ExtraEquals,
    BadIndex,
    NegativeIndex,
    IndexTooLarge,
    DataAfterIndex,
    TooDeep,
    UnterminatedList,
    NotAMap,
    NotAList,
}

impl SetError {
    fn reason(self) -> &'static str {
        match self {
            Self::NoValue => {
                "a key has no '=<value>'; in Helm's --set syntax a ',' in the path or the value \
                 starts another key (escape it as '\\,')"
            }
            Self::EmptyKey => "the path has an empty key",
            Self::EmptyMap => "a key ends with '.' but nothing is set under it",
            Self::ExtraEquals => "the path has an unescaped '='",
            Self::BadIndex => "a list index is not a number or has no closing ']'",
            Self::NegativeIndex => "a list index is negative",
            Self::IndexTooLarge => "a list index is above Helm's limit of 65536",
            Self::DataAfterIndex => "a ']' is followed by something other than '.', '[' or '='",
            Self::TooDeep => "the path nests more than Helm's limit of 30 keys",
            Self::UnterminatedList => "a '{' list has no closing '}'",
            Self::NotAMap => "the path goes through a key whose value is not a map",
            Self::NotAList => "the path indexes a key whose value is not a list",
        }
    }
}

/// How the values of a `--set` line are made.
enum Typing {
    /// `--set`: booleans, null and integers typed, the rest strings.
    Typed,
    /// `--set-string`.
    Strings,
    /// One value, given, for a line that is only `<path>=`.
    Given(Option<Node>),
}

/// Whether a `--set` line has more `key=value` pairs after the one just set.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Flow {
    More,
    End,
}

/// Helm's `strvals` parser, setting as it reads, over a values tree.
struct SetLine {
    chars: Vec<char>,
    position: usize,
    typing: Typing,
}

impl SetLine {
    fn new(line: &str, typing: Typing) -> Self {
        Self {
            chars: line.chars().collect(),
            position: 0,
            typing,
        }
    }

    fn apply(mut self, data: &MapRef) -> Result<(), SetError> {
        while self.key(data, 0)? == Flow::More {}
        Ok(())
    }

    /// Reads up to one of `stops`, which it consumes and returns (`None` at the end of the line),
    /// unescaping `\`.
    fn read_until(&mut self, stops: &[char]) -> (String, Option<char>) {
        let mut text = String::new();
        while let Some(&c) = self.chars.get(self.position) {
            self.position += 1;
            if stops.contains(&c) {
                return (text, Some(c));
            }
            if c == '\\' {
                let Some(&escaped) = self.chars.get(self.position) else {
                    return (text, None);
                };
                self.position += 1;
                text.push(escaped);
            } else {
                text.push(c);
            }
        }
        (text, None)
    }

    /// One `key…=value` into `data`, `level` maps deep.
    fn key(&mut self, data: &MapRef, level: usize) -> Result<Flow, SetError> {
        let (key, stop) = self.read_until(&['=', '[', ',', '.']);
        match stop {
            None if key.is_empty() => Ok(Flow::End),
            None | Some(',') => Err(SetError::NoValue),
            Some('[') => {
                let index = self.index()?;
                let existing = data.borrow().get(&key).cloned();
                let list = match existing {
                    None => ListRef::default(),
                    Some(Node::List(list)) => list,
                    Some(_) => return Err(SetError::NotAList),
                };
                let (list, flow) = self.list_item(list, index, level)?;
                self.set(data, key, Node::List(list))?;
                Ok(flow)
            }
            Some('=') => {
                let value = self.value()?;
                let flow = if value.is_some() {
                    Flow::More
                } else {
                    Flow::End
                };
                self.set(data, key, value.unwrap_or_else(empty_string))?;
                Ok(flow)
            }
            Some(_) => {
                let level = level + 1;
                if level > MAX_NESTED_NAME_LEVEL {
                    return Err(SetError::TooDeep);
                }
                let existing = data.borrow().get(&key).cloned();
                let inner = match existing {
                    None => MapRef::default(),
                    Some(Node::Map(map)) => map,
                    Some(_) => return Err(SetError::NotAMap),
                };
                let flow = self.key(&inner, level)?;
                if !inner.borrow().is_empty() {
                    self.set(data, key, Node::Map(inner))?;
                } else if flow == Flow::More {
                    return Err(SetError::EmptyMap);
                }
                Ok(flow)
            }
        }
    }

    /// What follows `[index]` in `list`.
    fn list_item(
        &mut self,
        list: ListRef,
        index: i64,
        level: usize,
    ) -> Result<(ListRef, Flow), SetError> {
        let index = usize::try_from(index).map_err(|_| SetError::NegativeIndex)?;
        let (rest, stop) = self.read_until(&['[', '.', '=']);
        if !rest.is_empty() {
            return Err(SetError::DataAfterIndex);
        }
        match stop {
            None => Ok((list, Flow::End)),
            Some('=') => {
                let value = self.value()?.unwrap_or_else(empty_string);
                Ok((set_index(list, index, value)?, Flow::More))
            }
            Some('[') => {
                let next = self.index()?;
                let existing = list.borrow().get(index).cloned();
                let inner = match existing {
                    None | Some(Node::Scalar(Value::Null)) => ListRef::default(),
                    Some(Node::List(inner)) => inner,
                    Some(_) => return Err(SetError::NotAList),
                };
                let (inner, flow) = self.list_item(inner, next, level)?;
                if flow == Flow::End {
                    return Ok((list, flow));
                }
                Ok((set_index(list, index, Node::List(inner))?, Flow::More))
            }
            Some(_) => {
                let existing = list.borrow().get(index).cloned();
                let inner = match existing {
                    None => MapRef::default(),
                    Some(Node::Map(inner)) => inner,
                    // Helm replaces the element in place, in a list that may be shared.
                    Some(_) => {
                        let inner = MapRef::default();
                        if let Some(slot) = list.borrow_mut().get_mut(index) {
                            *slot = Node::Map(Rc::clone(&inner));
                        }
                        inner
                    }
                };
                let flow = self.key(&inner, level)?;
                if flow == Flow::End {
                    return Ok((list, flow));
                }
                Ok((set_index(list, index, Node::Map(inner))?, Flow::More))
            }
        }
    }

    /// The number inside `[…]`, the `[` already read.
    fn index(&mut self) -> Result<i64, SetError> {
        match self.read_until(&[']']) {
            (text, Some(_)) => text.parse().map_err(|_| SetError::BadIndex),
            (_, None) => Err(SetError::BadIndex),
        }
    }

    /// The value after `=`; `None` when the line ends right after it.
    fn value(&mut self) -> Result<Option<Node>, SetError> {
        if let Typing::Given(given) = &mut self.typing {
            if self.position != self.chars.len() {
                return Err(SetError::ExtraEquals);
            }
            return Ok(Some(given.take().unwrap_or(Node::Scalar(Value::Null))));
        }
        match self.chars.get(self.position) {
            None => Ok(None),
            Some('{') => {
                self.position += 1;
                self.list_value().map(Some)
            }
            Some(_) => {
                let (text, _) = self.read_until(&[',']);
                Ok(Some(self.typed(text)))
            }
        }
    }

    /// `{a,b,…}`, the `{` already read; a `,` right after the `}` is consumed.
    fn list_value(&mut self) -> Result<Node, SetError> {
        let mut items = Vec::new();
        loop {
            let (text, stop) = self.read_until(&[',', '}']);
            match stop {
                None => return Err(SetError::UnterminatedList),
                Some('}') => {
                    if self.chars.get(self.position) == Some(&',') {
                        self.position += 1;
                    }
                    items.push(self.typed(text));
                    return Ok(Node::List(Rc::new(RefCell::new(items))));
                }
                Some(_) => items.push(self.typed(text)),
            }
        }
    }

    fn typed(&self, text: String) -> Node {
        Node::Scalar(match self.typing {
            Typing::Typed => typed_scalar(text),
            Typing::Strings | Typing::Given(_) => Value::String(text),
        })
    }

    /// Helm ignores empty keys; a path given to [`set_path`] must not have them.
    fn set(&self, data: &MapRef, key: String, value: Node) -> Result<(), SetError> {
        if key.is_empty() {
            return match self.typing {
                Typing::Given(_) => Err(SetError::EmptyKey),
                Typing::Typed | Typing::Strings => Ok(()),
            };
        }
        data.borrow_mut().insert(key, value);
        Ok(())
    }
}

fn empty_string() -> Node {
    Node::Scalar(Value::String(String::new()))
}

/// Sets `list[index]`: in place when the list is long enough (changing it wherever it is shared,
/// as Go does), else in a new list grown with nulls.
fn set_index(list: ListRef, index: usize, value: Node) -> Result<ListRef, SetError> {
    if index > MAX_INDEX {
        return Err(SetError::IndexTooLarge);
    }
    if let Some(slot) = list.borrow_mut().get_mut(index) {
        *slot = value;
        return Ok(Rc::clone(&list));
    }
    let mut grown = list.borrow().clone();
    grown.resize(index, Node::Scalar(Value::Null));
    grown.push(value);
    Ok(Rc::new(RefCell::new(grown)))
}

/// Helm's `typedVal` for `--set`: `true`, `false`, `null` in any case, `0`, and integers that
/// do not start with `0`; everything else (floats too) stays a string.
fn typed_scalar(text: String) -> Value {
    if text.eq_ignore_ascii_case("true") {
        return Value::Bool(true);
    }
    if text.eq_ignore_ascii_case("false") {
        return Value::Bool(false);
    }
    if text.eq_ignore_ascii_case("null") {
        return Value::Null;
    }
    if text == "0" {
        return Value::from(0);
    }
    if !text.starts_with('0')
        && let Ok(number) = text.parse::<i64>()
    {
        return Value::from(number);
    }
    Value::String(text)
}

// --- Values documents ----------------------------------------------------------------------

const NOT_FINITE: &str = "a number is infinite or NaN, which JSON cannot hold";
const NULL_KEY: &str = "a map key is null";
const COMPLEX_KEY: &str = "a map key is a list or a map";
const BAD_MERGE: &str = "a '<<' merge key holds something other than maps";

/// Helm's `ReadValues`: the first YAML document, a map; empty or `null` is an empty map. The
/// error is a reason free of the content.
fn read_document(content: &[u8]) -> Result<Map<String, Value>, String> {
    let Some(document) = serde_yaml_ng::Deserializer::from_slice(content).next() else {
        return Ok(Map::new());
    };
    match GoYaml::deserialize(document)
        .map_err(|e| yaml_reason(&e))?
        .0
    {
        Value::Null => Ok(Map::new()),
        Value::Object(map) => Ok(map),
        Value::Bool(_) => Err("the document is a boolean, not a map".to_owned()),
        Value::Number(_) => Err("the document is a number, not a map".to_owned()),
        Value::String(_) => Err("the document is a string, not a map".to_owned()),
        Value::Array(_) => Err("the document is a list, not a map".to_owned()),
    }
}

/// A YAML node read into JSON as Go's `sigs.k8s.io/yaml` reads it: a repeated key keeps its last
/// value, `<<` merges maps in (keys of the map itself win), keys that are numbers or booleans
/// become strings, tags are dropped.
struct GoYaml(Value);

impl<'de> Deserialize<'de> for GoYaml {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(GoYamlVisitor)
    }
}

struct GoYamlVisitor;

impl<'de> Visitor<'de> for GoYamlVisitor {
    type Value = GoYaml;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a YAML value")
    }

    fn visit_bool<E: de::Error>(self, flag: bool) -> Result<GoYaml, E> {
        Ok(GoYaml(Value::Bool(flag)))
    }

    fn visit_i64<E: de::Error>(self, number: i64) -> Result<GoYaml, E> {
        Ok(GoYaml(Value::from(number)))
    }

    fn visit_u64<E: de::Error>(self, number: u64) -> Result<GoYaml, E> {
        Ok(GoYaml(Value::from(number)))
    }

    fn visit_f64<E: de::Error>(self, number: f64) -> Result<GoYaml, E> {
        let number = serde_json::Number::from_f64(number).ok_or_else(|| E::custom(NOT_FINITE))?;
        Ok(GoYaml(Value::Number(number)))
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<GoYaml, E> {
        Ok(GoYaml(Value::String(text.to_owned())))
    }

    fn visit_string<E: de::Error>(self, text: String) -> Result<GoYaml, E> {
        Ok(GoYaml(Value::String(text)))
    }

    fn visit_unit<E: de::Error>(self) -> Result<GoYaml, E> {
        Ok(GoYaml(Value::Null))
    }

    fn visit_none<E: de::Error>(self) -> Result<GoYaml, E> {
        Ok(GoYaml(Value::Null))
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<GoYaml, D::Error> {
        GoYaml::deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut sequence: A) -> Result<GoYaml, A::Error> {
        let mut items = Vec::new();
        while let Some(GoYaml(item)) = sequence.next_element()? {
            items.push(item);
        }
        Ok(GoYaml(Value::Array(items)))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut mapping: A) -> Result<GoYaml, A::Error> {
        let mut map = Map::new();
        let mut merges = Vec::new();
        while let Some(GoYamlKey(key)) = mapping.next_key()? {
            let GoYaml(value) = mapping.next_value()?;
            if key == "<<" {
                merges.push(value);
            } else {
                map.insert(key, value);
            }
        }
        for merge in merges {
            let sources = match merge {
                Value::Object(source) => vec![Value::Object(source)],
                Value::Array(sources) => sources,
                _ => return Err(de::Error::custom(BAD_MERGE)),
            };
            for source in sources {
                let Value::Object(source) = source else {
                    return Err(de::Error::custom(BAD_MERGE));
                };
                for (key, value) in source {
                    map.entry(key).or_insert(value);
                }
            }
        }
        Ok(GoYaml(Value::Object(map)))
    }

    fn visit_enum<A: EnumAccess<'de>>(self, tagged: A) -> Result<GoYaml, A::Error> {
        let (_tag, value): (String, _) = tagged.variant()?;
        value.newtype_variant()
    }
}

/// A map key as `sigs.k8s.io/yaml` turns it into a JSON key.
struct GoYamlKey(String);

impl<'de> Deserialize<'de> for GoYamlKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(GoYamlKeyVisitor)
    }
}

struct GoYamlKeyVisitor;

impl<'de> Visitor<'de> for GoYamlKeyVisitor {
    type Value = GoYamlKey;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a string, number or boolean map key")
    }

    fn visit_bool<E: de::Error>(self, flag: bool) -> Result<GoYamlKey, E> {
        Ok(GoYamlKey(flag.to_string()))
    }

    fn visit_i64<E: de::Error>(self, number: i64) -> Result<GoYamlKey, E> {
        Ok(GoYamlKey(number.to_string()))
    }

    fn visit_u64<E: de::Error>(self, number: u64) -> Result<GoYamlKey, E> {
        Ok(GoYamlKey(number.to_string()))
    }

    fn visit_f64<E: de::Error>(self, number: f64) -> Result<GoYamlKey, E> {
        Ok(GoYamlKey(go_float_key(number)))
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<GoYamlKey, E> {
        Ok(GoYamlKey(text.to_owned()))
    }

    fn visit_string<E: de::Error>(self, text: String) -> Result<GoYamlKey, E> {
        Ok(GoYamlKey(text))
    }

    fn visit_unit<E: de::Error>(self) -> Result<GoYamlKey, E> {
        Err(E::custom(NULL_KEY))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<GoYamlKey, A::Error> {
        Err(de::Error::custom(COMPLEX_KEY))
    }

    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<GoYamlKey, A::Error> {
        Err(de::Error::custom(COMPLEX_KEY))
    }

    fn visit_enum<A: EnumAccess<'de>>(self, tagged: A) -> Result<GoYamlKey, A::Error> {
        let (_tag, key): (String, _) = tagged.variant()?;
        key.newtype_variant()
    }
}

/// A float map key as `sigs.k8s.io/yaml` writes it: Go's `FormatFloat(key, 'g', -1, 32)`.
fn go_float_key(key: f64) -> String {
    if key.is_nan() {
        return ".nan".to_owned();
    }
    if key.is_infinite() {
        return if key > 0.0 { ".inf" } else { "-.inf" }.to_owned();
    }
    // Go formats the key at 32-bit precision.
    #[allow(clippy::cast_possible_truncation)]
    let key = key as f32;
    let scientific = format!("{key:e}");
    let Some((mantissa, exponent)) = scientific.split_once('e') else {
        return key.to_string();
    };
    match exponent.parse::<i32>() {
        Ok(exponent) if !(-4..6).contains(&exponent) => {
            let sign = if exponent < 0 { '-' } else { '+' };
            format!("{mantissa}e{sign}{:02}", exponent.abs())
        }
        _ => key.to_string(),
    }
}

/// A YAML error's problem and location, without the content: libyaml's problems and this
/// module's own are fixed texts, while other messages (serde's, …) may quote the document.
fn yaml_reason(error: &serde_yaml_ng::Error) -> String {
    const FIXED: [&str; 8] = [
        "EOF while parsing a value",
        "recursion limit exceeded",
        "repetition limit exceeded",
        "unknown anchor",
        "deserializing from YAML containing more than one document",
        "invalid utf-8",
        "invalid type: sequence",
        "invalid type: map",
    ];
    let text = error.to_string();
    let own = [NOT_FINITE, NULL_KEY, COMPLEX_KEY, BAD_MERGE]
        .into_iter()
        .find(|label| text.contains(label));
    let problem = if let Some(own) = own {
        own.to_owned()
    } else if format!("{error:?}").starts_with("Error { kind:")
        || FIXED.iter().any(|fixed| text.starts_with(fixed))
    {
        let end = [" at line ", " at position "]
            .iter()
            .filter_map(|marker| text.find(marker))
            .min()
            .unwrap_or(text.len());
        text.get(..end).unwrap_or("not valid YAML").to_owned()
    } else {
        "not valid YAML".to_owned()
    };
    match error.location() {
        Some(at) => format!("{problem} at line {}, column {}", at.line(), at.column()),
        None => problem,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::cell::Cell;

    use pretty_assertions::assert_eq;
    use serde_json::json;

    use super::*;

    const SECRET_TEXT: &str = "hunter2-s3cr3t";

    /// Objects by (kind, name), each a list of (key, content).
    type Objects<'a> = &'a [(ValuesKind, &'a str, &'a [(&'a str, &'a str)])];

    fn spec(values_from: Value, values: Value) -> HelmReleaseSpec {
        let mut spec = json!({ "interval": "5m", "valuesFrom": values_from });
        if !values.is_null() {
            spec["values"] = values;
        }
        serde_json::from_value(spec).unwrap()
    }

    /// Reconcile futures must be `Send`: the values tree's `Rc`s must not live across an await.
    #[allow(dead_code, reason = "only type-checked")]
    fn compose_is_send(client: &Client, spec: &HelmReleaseSpec) -> impl Send {
        compose(client, "apps", spec)
    }

    fn compose_with(objects: Objects, spec: &HelmReleaseSpec) -> Result<Value, ValuesError> {
        compose_from("apps", spec, |kind, name| {
            Ok(objects
                .iter()
                .find(|(k, n, _)| *k == kind && *n == name)
                .map(|(_, _, data)| {
                    let data = data.iter();
                    data.map(|(key, text)| ((*key).to_owned(), text.as_bytes().to_vec()))
                        .collect()
                }))
        })
    }

    fn set(path: &str, content: &str) -> Result<Value, SetError> {
        let root = MapRef::default();
        replace_path_value(&root, path, content)?;
        Ok(Value::Object(map_to_json(&root)))
    }

    #[test]
    fn layers_merge_in_order_and_inline_values_win() {
        // Flux's "merges" case.
        let objects: Objects = &[
            (
                ValuesKind::ConfigMap,
                "values",
                &[(
                    "values.yaml",
                    "flat: value\nnested:\n  configuration: value\n",
                )],
            ),
            (
                ValuesKind::Secret,
                "values",
                &[("values.yaml", "flat:\n  nested: value\nnested: value\n")],
            ),
        ];
        let spec = spec(
            json!([
                { "kind": "ConfigMap", "name": "values" },
                { "kind": "Secret", "name": "values" },
            ]),
            json!({ "other": "values", "nested": "inline" }),
        );
        assert_eq!(
            compose_with(objects, &spec).unwrap(),
            json!({ "flat": { "nested": "value" }, "nested": "inline", "other": "values" })
        );
    }

    #[test]
    fn later_layers_replace_lists_and_scalars_and_null_keeps_the_key() {
        let objects: Objects = &[
            (
                ValuesKind::ConfigMap,
                "base",
                &[("v", "list: [1, 2, 3]\nmap: {a: 1, b: 2}\nkeep: x\n")],
            ),
            (
                ValuesKind::ConfigMap,
                "over",
                &[("v", "list: [9]\nmap: {b: 3, c: 4}\nkeep: null\n")],
            ),
        ];
        let spec = spec(
            json!([
                { "kind": "ConfigMap", "name": "base", "valuesKey": "v" },
                { "kind": "ConfigMap", "name": "over", "valuesKey": "v" },
            ]),
            Value::Null,
        );
        assert_eq!(
            compose_with(objects, &spec).unwrap(),
            json!({ "list": [9], "map": { "a": 1, "b": 3, "c": 4 }, "keep": null })
        );
    }

    #[test]
    fn optional_missing_objects_and_keys_are_skipped() {
        let objects: Objects = &[(ValuesKind::Secret, "present", &[("values.yaml", "a: 1")])];
        let spec = spec(
            json!([
                { "kind": "ConfigMap", "name": "absent", "optional": true },
                { "kind": "Secret", "name": "present", "valuesKey": "other", "optional": true },
                { "kind": "Secret", "name": "present" },
            ]),
            Value::Null,
        );
        assert_eq!(compose_with(objects, &spec).unwrap(), json!({ "a": 1 }));
    }

    #[test]
    fn a_required_missing_object_is_waited_for() {
        let spec = spec(json!([{ "kind": "Secret", "name": "absent" }]), Value::Null);
        let error = compose_with(&[], &spec).unwrap_err();
        assert!(matches!(
            error,
            ValuesError::NotFound {
                kind: ValuesKind::Secret,
                ..
            }
        ));
        assert!(error.is_waiting());
        assert_eq!(
            error.to_string(),
            "Secret 'apps/absent' named in valuesFrom was not found"
        );
    }

    #[test]
    fn a_required_missing_key_fails() {
        let objects: Objects = &[(ValuesKind::ConfigMap, "cm", &[("other", "a: 1")])];
        let spec = spec(json!([{ "kind": "ConfigMap", "name": "cm" }]), Value::Null);
        let error = compose_with(objects, &spec).unwrap_err();
        assert!(!error.is_waiting());
        assert_eq!(
            error.to_string(),
            "ConfigMap 'apps/cm' named in valuesFrom has no key 'values.yaml'"
        );
    }

    #[test]
    fn an_object_named_twice_is_read_once() {
        let reads = Cell::new(0);
        let spec = spec(
            json!([
                { "kind": "Secret", "name": "s", "valuesKey": "a" },
                { "kind": "Secret", "name": "s", "valuesKey": "b" },
                { "kind": "ConfigMap", "name": "s", "optional": true },
            ]),
            Value::Null,
        );
        let values = compose_from("apps", &spec, |kind, _| {
            reads.set(reads.get() + 1);
            Ok((kind == ValuesKind::Secret).then(|| {
                ObjectData::from([
                    ("a".to_owned(), b"x: 1".to_vec()),
                    ("b".to_owned(), b"y: 2".to_vec()),
                ])
            }))
        })
        .unwrap();
        assert_eq!(values, json!({ "x": 1, "y": 2 }));
        assert_eq!(reads.get(), 2);
    }

    #[test]
    fn a_lookup_error_stops_composing() {
        let spec = spec(
            json!([{ "kind": "Secret", "name": "first" }, { "kind": "Secret", "name": "second" }]),
            Value::Null,
        );
        let mut asked = Vec::new();
        let error = compose_from("apps", &spec, |kind, name| {
            asked.push(name.to_owned());
            Err(ValuesError::NotFound {
                kind,
                namespace: "apps".to_owned(),
                name: name.to_owned(),
            })
        })
        .unwrap_err();
        assert!(matches!(error, ValuesError::NotFound { .. }));
        assert_eq!(asked, ["first"]);
    }

    #[test]
    fn a_target_path_sets_the_content_at_a_nested_path() {
        // Flux's "with target path" case.
        let objects: Objects = &[(ValuesKind::Secret, "values", &[("single", "value")])];
        let spec = spec(
            json!([{
                "kind": "Secret", "name": "values", "valuesKey": "single",
                "targetPath": "merge.at.specific.path",
            }]),
            Value::Null,
        );
        assert_eq!(
            compose_with(objects, &spec).unwrap(),
            json!({ "merge": { "at": { "specific": { "path": "value" } } } })
        );
    }

    #[test]
    fn a_target_path_wins_over_inline_values_in_a_map_only_they_hold() {
        // Flux's "target path precedence over all" case.
        let objects: Objects = &[
            (
                ValuesKind::ConfigMap,
                "values",
                &[(
                    "values.yaml",
                    "flat: value\nnested:\n  configuration:\n  - one\n  - two\n  - three\n",
                )],
            ),
            (ValuesKind::Secret, "values", &[("key", "value")]),
        ];
        let spec = spec(
            json!([
                {
                    "kind": "Secret", "name": "values", "valuesKey": "key",
                    "targetPath": "nested.configuration[0]",
                },
                { "kind": "ConfigMap", "name": "values" },
            ]),
            json!({ "nested": { "configuration": ["list", "item", "option"] } }),
        );
        assert_eq!(
            compose_with(objects, &spec).unwrap(),
            json!({ "flat": "value", "nested": { "configuration": ["value", "item", "option"] } })
        );
    }

    #[test]
    fn a_target_path_into_a_list_from_an_earlier_layer_keeps_its_other_items() {
        // Flux's "target path for string type array item" case.
        let objects: Objects = &[
            (
                ValuesKind::ConfigMap,
                "values",
                &[(
                    "values.yaml",
                    "flat: value\nnested:\n  configuration:\n  - list\n  - item\n  - option\n",
                )],
            ),
            (ValuesKind::Secret, "values", &[("values.yaml", "foo")]),
        ];
        let spec = spec(
            json!([
                { "kind": "ConfigMap", "name": "values" },
                { "kind": "Secret", "name": "values", "targetPath": "nested.configuration[1]" },
            ]),
            json!({ "other": "values" }),
        );
        assert_eq!(
            compose_with(objects, &spec).unwrap(),
            json!({
                "flat": "value",
                "nested": { "configuration": ["list", "foo", "option"] },
                "other": "values",
            })
        );
    }

    #[test]
    fn inline_values_win_over_a_top_level_target_path_and_a_key_of_a_merged_map() {
        // Flux's maps are shared only where one layer alone holds them.
        let objects: Objects = &[
            (
                ValuesKind::Secret,
                "s",
                &[("top", "secret"), ("deep", "secret")],
            ),
            (
                ValuesKind::ConfigMap,
                "cm",
                &[("values.yaml", "map: {from: configmap}")],
            ),
        ];
        let spec = spec(
            json!([
                { "kind": "ConfigMap", "name": "cm" },
                { "kind": "Secret", "name": "s", "valuesKey": "top", "targetPath": "top" },
                { "kind": "Secret", "name": "s", "valuesKey": "deep", "targetPath": "map.key" },
            ]),
            json!({ "top": "inline", "map": { "key": "inline" } }),
        );
        assert_eq!(
            compose_with(objects, &spec).unwrap(),
            json!({ "top": "inline", "map": { "from": "configmap", "key": "inline" } })
        );
    }

    #[test]
    fn a_later_layer_overrides_a_target_path_outside_the_inline_values() {
        let objects: Objects = &[
            (ValuesKind::Secret, "s", &[("v", "secret")]),
            (
                ValuesKind::ConfigMap,
                "cm",
                &[("values.yaml", "a: {b: configmap}")],
            ),
        ];
        let spec = spec(
            json!([
                { "kind": "Secret", "name": "s", "valuesKey": "v", "targetPath": "a.b" },
                { "kind": "ConfigMap", "name": "cm" },
            ]),
            json!({ "other": 1 }),
        );
        assert_eq!(
            compose_with(objects, &spec).unwrap(),
            json!({ "a": { "b": "configmap" }, "other": 1 })
        );
    }

    #[test]
    fn target_path_content_is_typed_like_helm_set() {
        let cases = [
            ("true", json!(true)),
            ("FALSE", json!(false)),
            ("Null", json!(null)),
            ("0", json!(0)),
            ("42", json!(42)),
            ("-7", json!(-7)),
            ("+7", json!(7)),
            ("0755", json!("0755")),
            ("1.5", json!("1.5")),
            ("", json!("")),
            ("plain text", json!("plain text")),
            ("'true'", json!("true")),
            ("\"42\"", json!("42")),
            ("\"'both'\"", json!("both")),
            ("{a,b,c}", json!(["a", "b", "c"])),
            ("{1,true,x}", json!([1, true, "x"])),
            ("value1\\,value2", json!("value1,value2")),
            ("a=b", json!("a=b")),
            ("line one\nline two", json!("line one\nline two")),
        ];
        for (content, expected) in cases {
            assert_eq!(
                set("k", content).unwrap(),
                json!({ "k": expected }),
                "{content:?}"
            );
        }
    }

    #[test]
    fn a_comma_in_target_path_content_sets_another_key() {
        assert_eq!(set("a", "x,b=y").unwrap(), json!({ "a": "x", "b": "y" }));
        assert_eq!(
            set("a", "{x,y},b.c=1").unwrap(),
            json!({ "a": ["x", "y"], "b": { "c": 1 } })
        );
        assert_eq!(set("a", "x,").unwrap(), json!({ "a": "x" }));
        assert_eq!(set("a", "x,oops"), Err(SetError::NoValue));
        assert_eq!(set("a", "{x,y"), Err(SetError::UnterminatedList));
    }

    #[test]
    fn target_paths_take_helm_set_syntax() {
        let cases = [
            ("outer.inner", json!({ "outer": { "inner": "v" } })),
            (
                "nodeSelector.kubernetes\\.io/role",
                json!({ "nodeSelector": { "kubernetes.io/role": "v" } }),
            ),
            (
                "merge.at[2]",
                json!({ "merge": { "at": [null, null, "v"] } }),
            ),
            ("a.b[1].c", json!({ "a": { "b": [null, { "c": "v" }] } })),
            ("a[0][1]", json!({ "a": [[null, "v"]] })),
            ("a[1].b.c", json!({ "a": [null, { "b": { "c": "v" } }] })),
        ];
        for (path, expected) in cases {
            assert_eq!(set(path, "v").unwrap(), expected, "{path}");
        }
    }

    #[test]
    fn malformed_target_paths_are_rejected() {
        let cases = [
            ("a[x]", SetError::BadIndex),
            ("a[0", SetError::BadIndex),
            ("a[-1]", SetError::NegativeIndex),
            ("a[65537]", SetError::IndexTooLarge),
            ("a[0]b", SetError::DataAfterIndex),
            ("a,b", SetError::NoValue),
            ("a.", SetError::EmptyMap),
        ];
        for (path, expected) in cases {
            assert_eq!(set(path, "v"), Err(expected), "{path}");
        }
        let deep = vec!["k"; 32].join(".");
        assert_eq!(set(&deep, "v"), Err(SetError::TooDeep));
    }

    #[test]
    fn a_target_path_through_a_scalar_is_rejected_and_names_no_content() {
        let objects: Objects = &[
            (
                ValuesKind::ConfigMap,
                "cm",
                &[("values.yaml", "a: scalar\nlist: text")],
            ),
            (ValuesKind::Secret, "s", &[("v", SECRET_TEXT)]),
        ];
        for (path, reason) in [("a.b", SetError::NotAMap), ("list[0]", SetError::NotAList)] {
            let spec = spec(
                json!([
                    { "kind": "ConfigMap", "name": "cm" },
                    { "kind": "Secret", "name": "s", "valuesKey": "v", "targetPath": path },
                ]),
                Value::Null,
            );
            let error = compose_with(objects, &spec).unwrap_err();
            let message = error.to_string();
            assert!(
                matches!(&error, ValuesError::TargetPath { reason: r, .. } if r == reason.reason()),
                "{message}"
            );
            assert!(
                message.contains(path) && !message.contains(SECRET_TEXT),
                "{message}"
            );
        }
    }

    #[test]
    fn a_comma_in_a_secret_value_fails_without_quoting_it() {
        let content = format!("{SECRET_TEXT},{SECRET_TEXT}");
        let objects: Objects = &[(ValuesKind::Secret, "s", &[("v", content.as_str())])];
        let spec = spec(
            json!([{ "kind": "Secret", "name": "s", "valuesKey": "v", "targetPath": "tls.key" }]),
            Value::Null,
        );
        let message = compose_with(objects, &spec).unwrap_err().to_string();
        assert!(
            message.starts_with("cannot set the value at targetPath 'tls.key': "),
            "{message}"
        );
        assert!(!message.contains(SECRET_TEXT), "{message}");
    }

    #[test]
    fn an_empty_or_null_document_adds_nothing() {
        for content in ["", "   \n", "# only a comment\n", "null", "~", "---\n"] {
            let objects: Objects = &[(ValuesKind::ConfigMap, "cm", &[("values.yaml", content)])];
            let spec = spec(
                json!([{ "kind": "ConfigMap", "name": "cm" }]),
                json!({ "a": 1 }),
            );
            assert_eq!(
                compose_with(objects, &spec).unwrap(),
                json!({ "a": 1 }),
                "{content:?}"
            );
        }
    }

    #[test]
    fn a_document_that_is_not_a_map_is_invalid() {
        for (content, what) in [
            ("invalid", "a string"),
            ("- a\n- b", "a list"),
            ("42", "a number"),
            ("true", "a boolean"),
        ] {
            let objects: Objects = &[(ValuesKind::ConfigMap, "cm", &[("values.yaml", content)])];
            let spec = spec(json!([{ "kind": "ConfigMap", "name": "cm" }]), Value::Null);
            let error = compose_with(objects, &spec).unwrap_err();
            assert_eq!(
                error.to_string(),
                format!(
                    "key 'values.yaml' of ConfigMap 'apps/cm' is not a values document: \
                     the document is {what}, not a map"
                )
            );
        }
    }

    #[test]
    fn invalid_secret_yaml_is_reported_without_its_content() {
        let contents = [
            format!("password: {SECRET_TEXT}\n  nested: [unclosed"),
            format!("a: {SECRET_TEXT}\nb: *{SECRET_TEXT}"),
            format!("a: {{<<: {SECRET_TEXT}}}"),
            format!("a: {SECRET_TEXT}\nb: .inf"),
            format!("~: {SECRET_TEXT}"),
            format!("key: \"{SECRET_TEXT}"),
            format!("list:\n- {SECRET_TEXT}\n bad: {SECRET_TEXT}"),
            format!("{{{SECRET_TEXT}: 1}}: 2"),
            format!("a: !!binary {SECRET_TEXT}: x"),
        ];
        for content in &contents {
            let objects: Objects = &[(ValuesKind::Secret, "s", &[("values.yaml", content)])];
            let spec = spec(json!([{ "kind": "Secret", "name": "s" }]), Value::Null);
            let error = compose_with(objects, &spec).unwrap_err();
            let message = error.to_string();
            assert!(matches!(error, ValuesError::Invalid { .. }), "{message}");
            assert!(!message.contains(SECRET_TEXT), "{message}");
            assert!(
                message
                    .starts_with("key 'values.yaml' of Secret 'apps/s' is not a values document: "),
                "{message}"
            );
        }
    }

    #[test]
    fn a_yaml_syntax_error_names_its_problem_and_line() {
        let objects: Objects = &[(ValuesKind::Secret, "s", &[("values.yaml", "a: 1\nb: [2\n")])];
        let spec = spec(json!([{ "kind": "Secret", "name": "s" }]), Value::Null);
        let message = compose_with(objects, &spec).unwrap_err().to_string();
        assert!(message.contains(" at line "), "{message}");
        assert!(!message.contains("not valid YAML at"), "{message}");
    }

    #[test]
    fn yaml_documents_read_as_go_reads_them() {
        let content = "\
base: &base {a: 1, b: 2}
merged:
  <<: *base
  b: 3
1: integer key
true: boolean key
1.5: float key
big: 12345678901234567890
float: 1.25
repeated: first
repeated: last
tagged: !custom value
lists:
  <<: [{a: 1, b: 1}, {b: 2, c: 2}]
  c: 3
---
second: document
";
        let objects: Objects = &[(ValuesKind::ConfigMap, "cm", &[("values.yaml", content)])];
        let spec = spec(json!([{ "kind": "ConfigMap", "name": "cm" }]), Value::Null);
        assert_eq!(
            compose_with(objects, &spec).unwrap(),
            json!({
                "base": { "a": 1, "b": 2 },
                "merged": { "a": 1, "b": 3 },
                "1": "integer key",
                "true": "boolean key",
                "1.5": "float key",
                "big": 12_345_678_901_234_567_890_u64,
                "float": 1.25,
                "repeated": "last",
                "tagged": "value",
                "lists": { "a": 1, "b": 1, "c": 3 },
            })
        );
    }

    #[test]
    fn float_keys_are_written_as_go_writes_them() {
        for (key, expected) in [
            (1.0, "1"),
            (0.1, "0.1"),
            (100_000.0, "100000"),
            (1_000_000.0, "1e+06"),
            (1.5e-5, "1.5e-05"),
            (0.0001, "0.0001"),
            (f64::INFINITY, ".inf"),
        ] {
            assert_eq!(go_float_key(key), expected);
        }
    }

    #[test]
    fn inline_values_alone_are_the_values() {
        let inline = spec(json!([]), json!({ "replicaCount": 2 }));
        assert_eq!(
            compose_with(&[], &inline).unwrap(),
            json!({ "replicaCount": 2 })
        );
        let empty = spec(json!([]), Value::Null);
        assert_eq!(compose_with(&[], &empty).unwrap(), json!({}));
    }

    #[test]
    fn set_path_sets_a_given_value_at_a_helm_path() {
        let mut values = json!({ "a": { "keep": 1, "list": [0] } })
            .as_object()
            .cloned()
            .unwrap();
        set_path(&mut values, "a.list[2]", json!({ "x": [1, 2] })).unwrap();
        set_path(&mut values, "a.b\\.c", json!("true")).unwrap();
        set_path(&mut values, "a.list[0]", json!(null)).unwrap();
        set_path(&mut values, "new[1].deep", json!(3)).unwrap();
        assert_eq!(
            Value::Object(values),
            json!({
                "a": { "keep": 1, "list": [null, null, { "x": [1, 2] }], "b.c": "true" },
                "new": [null, { "deep": 3 }],
            })
        );
    }

    #[test]
    fn set_path_rejects_malformed_paths_and_leaves_values_unchanged() {
        let original = json!({ "a": "scalar", "l": "text" })
            .as_object()
            .cloned()
            .unwrap();
        for path in [
            "", ".a", "a..b", "a.", "[0]", "x[0].", "a.b", "l[0]", "x[y]", "x[-1]", "x=y", "x,y",
        ] {
            let mut values = original.clone();
            let error = set_path(&mut values, path, json!(1)).unwrap_err();
            assert!(
                matches!(&error, ValuesError::TargetPath { path: p, .. } if p == path),
                "{path}: {error}"
            );
            assert_eq!(values, original, "{path}");
        }
    }

    #[test]
    fn deep_merge_merges_maps_and_replaces_the_rest() {
        let mut base = json!({
            "map": { "a": 1, "inner": { "x": 1 } },
            "list": [1, 2],
            "scalar": "s",
            "gone": "kept",
            "to_map": 1,
        })
        .as_object()
        .cloned()
        .unwrap();
        let overlay = json!({
            "map": { "b": 2, "inner": { "y": 2 } },
            "list": [3],
            "scalar": { "now": "map" },
            "gone": null,
            "to_map": { "m": 1 },
        })
        .as_object()
        .cloned()
        .unwrap();
        deep_merge(&mut base, overlay);
        assert_eq!(
            Value::Object(base),
            json!({
                "map": { "a": 1, "b": 2, "inner": { "x": 1, "y": 2 } },
                "list": [3],
                "scalar": { "now": "map" },
                "gone": null,
                "to_map": { "m": 1 },
            })
        );
    }
}
