//! YAML → positioned tree. Owns the one YAML parse of a policy file (through serde-saphyr, with
//! size, node and alias budgets), the [`Node`] tree that keeps every node's line and column, and
//! its conversion to `serde_json::Value` (the document as authored, for hashing and signing).
//!
//! Must not: interpret the policy (that is `raw`/`validate`) or accept more than one document,
//! tags, binary scalars or non-finite floats.

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};
use serde_saphyr::{Location, Options, Spanned};

/// Largest policy text accepted, in bytes (a policy is a few KiB; this bounds parse time).
pub const MAX_POLICY_BYTES: usize = 1024 * 1024;

/// A 1-based source position (`line:column`, columns counted in characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    pub line: u64,
    pub column: u64,
}

impl From<Location> for Pos {
    fn from(l: Location) -> Self {
        Pos {
            line: l.line(),
            column: l.column(),
        }
    }
}

/// One YAML node with its position.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub value: NodeValue,
    pub pos: Pos,
}

/// The YAML 1.2 core-schema data model.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeValue {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    /// Mapping entries in document order; keys are nodes too (they have positions).
    Map(Vec<(Node, Node)>),
}

impl NodeValue {
    /// A short noun for error messages ("a string", "a list", …).
    pub fn kind(&self) -> &'static str {
        match self {
            NodeValue::Null => "null",
            NodeValue::Bool(_) => "a boolean",
            NodeValue::Int(_) | NodeValue::UInt(_) => "an integer",
            NodeValue::Float(_) => "a number",
            NodeValue::Str(_) => "a string",
            NodeValue::Seq(_) => "a list",
            NodeValue::Map(_) => "a mapping",
        }
    }
}

/// A YAML syntax or budget error with its position, if the parser gave one.
#[derive(Debug, Clone, PartialEq)]
pub struct YamlError {
    pub pos: Option<Pos>,
    pub message: String,
}

fn options() -> Options {
    serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_events: 200_000,
            max_aliases: 256,
            max_anchors: 256,
            max_depth: 48,
            max_documents: 1,
            max_nodes: 100_000,
            max_total_scalar_bytes: MAX_POLICY_BYTES,
            max_merge_keys: 256,
            max_recorded_anchor_events: 20_000,
            max_recorded_anchor_bytes: MAX_POLICY_BYTES,
        },
        alias_limits: serde_saphyr::alias_limits! {
            max_total_replayed_events: 20_000,
            max_replay_stack_depth: 16,
        },
        reject_unsupported_tags: true,
        // YAML 1.2 core schema: only true/false are booleans (`no` stays a string) and
        // `1_000` is a string, as other YAML 1.2 readers of the same file will see it.
        strict_booleans: true,
        underscored_numbers_as_strings: true,
        with_snippet: false,
    }
}

/// Parses one YAML document into a positioned tree. The caller bounds `text` to
/// [`MAX_POLICY_BYTES`]; this function checks again.
pub fn parse(text: &str) -> Result<Node, YamlError> {
    if text.len() > MAX_POLICY_BYTES {
        return Err(YamlError {
            pos: None,
            message: format!(
                "policy is {} bytes, larger than the {} byte limit",
                text.len(),
                MAX_POLICY_BYTES
            ),
        });
    }
    if text.trim().is_empty() {
        return Err(YamlError {
            pos: None,
            message: "the policy is empty".into(),
        });
    }
    serde_saphyr::from_str_with_options::<Node>(text, options()).map_err(|e| {
        let pos = e.location().map(Pos::from).filter(|p| p.line > 0);
        let message = first_line(&e.without_snippet().to_string());
        YamlError { pos, message }
    })
}

/// serde-saphyr errors may embed a location prefix or a snippet; keep the first line, lowercase
/// start, and drop a trailing " at line X column Y" that we print ourselves.
fn first_line(s: &str) -> String {
    let line = s.lines().next().unwrap_or("invalid YAML").trim();
    let line = match line.find(" at line ") {
        Some(i) => &line[..i],
        None => line,
    };
    line.trim_end_matches('.').to_string()
}

impl Node {
    /// The document as authored, as JSON (mapping keys must be strings; the loader checks that
    /// before calling this, other keys are rendered as their YAML text).
    pub fn to_json(&self) -> Value {
        match &self.value {
            NodeValue::Null => Value::Null,
            NodeValue::Bool(b) => Value::Bool(*b),
            NodeValue::Int(i) => Value::Number((*i).into()),
            NodeValue::UInt(u) => Value::Number((*u).into()),
            NodeValue::Float(f) => Number::from_f64(*f).map_or(Value::Null, Value::Number),
            NodeValue::Str(s) => Value::String(s.clone()),
            NodeValue::Seq(items) => Value::Array(items.iter().map(Node::to_json).collect()),
            NodeValue::Map(entries) => {
                let mut m = Map::new();
                for (k, v) in entries {
                    m.insert(k.key_text(), v.to_json());
                }
                Value::Object(m)
            }
        }
    }

    /// The text of a mapping key (string keys verbatim; scalars rendered).
    pub fn key_text(&self) -> String {
        match &self.value {
            NodeValue::Str(s) => s.clone(),
            NodeValue::Null => "null".into(),
            NodeValue::Bool(b) => b.to_string(),
            NodeValue::Int(i) => i.to_string(),
            NodeValue::UInt(u) => u.to_string(),
            NodeValue::Float(f) => f.to_string(),
            NodeValue::Seq(_) | NodeValue::Map(_) => "<complex key>".into(),
        }
    }

    /// Looks up a mapping entry by string key.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.value {
            NodeValue::Map(entries) => entries
                .iter()
                .find(|(k, _)| matches!(&k.value, NodeValue::Str(s) if s == key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// Looks up a mapping entry's key node by string key.
    pub fn get_key(&self, key: &str) -> Option<&Node> {
        match &self.value {
            NodeValue::Map(entries) => entries
                .iter()
                .find(|(k, _)| matches!(&k.value, NodeValue::Str(s) if s == key))
                .map(|(k, _)| k),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            NodeValue::Str(s) => Some(s),
            _ => None,
        }
    }

    /// Finds the node at a field path such as `spec.tool_rules[2].action` (as produced by the
    /// loader); returns the deepest node reached, so a missing leaf points at its parent.
    pub fn locate(&self, path: &str) -> &Node {
        let mut node = self;
        for seg in split_path(path) {
            let next = match seg {
                PathSeg::Key(k) => node.get(k),
                PathSeg::Index(i) => match &node.value {
                    NodeValue::Seq(items) => items.get(i),
                    _ => None,
                },
            };
            match next {
                Some(n) => node = n,
                None => break,
            }
        }
        node
    }
}

enum PathSeg<'a> {
    Key(&'a str),
    Index(usize),
}

fn split_path(path: &str) -> Vec<PathSeg<'_>> {
    let mut out = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (key, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            out.push(PathSeg::Key(key));
        }
        while let Some(end) = rest.find(']') {
            if let Ok(i) = rest[1..end].parse() {
                out.push(PathSeg::Index(i));
            }
            rest = &rest[end + 1..];
        }
    }
    out
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Spanned::<NodeValue>::deserialize(d)?;
        Ok(Node {
            value: s.value,
            pos: s.referenced.into(),
        })
    }
}

impl<'de> Deserialize<'de> for NodeValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = NodeValue;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a YAML value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<NodeValue, E> {
        Ok(NodeValue::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<NodeValue, E> {
        Ok(NodeValue::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<NodeValue, E> {
        match i64::try_from(v) {
            Ok(i) => Ok(NodeValue::Int(i)),
            Err(_) => Ok(NodeValue::UInt(v)),
        }
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<NodeValue, E> {
        i64::try_from(v)
            .map(NodeValue::Int)
            .map_err(|_| E::custom("integer out of range"))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<NodeValue, E> {
        u64::try_from(v)
            .map(|u| self.visit_u64::<E>(u))
            .map_err(|_| E::custom("integer out of range"))?
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<NodeValue, E> {
        if v.is_finite() {
            Ok(NodeValue::Float(v))
        } else {
            Err(E::custom("non-finite numbers are not allowed"))
        }
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<NodeValue, E> {
        Ok(NodeValue::Str(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<NodeValue, E> {
        Ok(NodeValue::Str(v))
    }
    fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<NodeValue, E> {
        Err(E::custom("binary scalars are not allowed in a policy"))
    }
    fn visit_unit<E: de::Error>(self) -> Result<NodeValue, E> {
        Ok(NodeValue::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<NodeValue, E> {
        Ok(NodeValue::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<NodeValue, D::Error> {
        NodeValue::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<NodeValue, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Node>()? {
            items.push(item);
        }
        Ok(NodeValue::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<NodeValue, A::Error> {
        let mut entries: Vec<(Node, Node)> = Vec::new();
        while let Some(key) = map.next_key::<Node>()? {
            let value = map.next_value::<Node>()?;
            entries.push((key, value));
        }
        Ok(NodeValue::Map(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;

    #[test]
    fn nodes_carry_line_and_column() {
        let n = parse("a: 1\nb:\n  - x\n  - \"y\"\n").unwrap();
        let b = n.get("b").unwrap();
        assert_eq!(b.pos.line, 3);
        let NodeValue::Seq(items) = &b.value else {
            panic!("not a seq")
        };
        assert_eq!(items[1].pos, Pos { line: 4, column: 5 });
        assert_eq!(n.get_key("b").unwrap().pos, Pos { line: 2, column: 1 });
        assert_eq!(n.locate("b[1]").pos.line, 4);
        assert_eq!(n.locate("b[7]").pos.line, 3);
    }

    #[test]
    fn core_schema_scalars_and_json_order() {
        let n = parse("z: no\ny: true\nx: 1.5\nw: ~\nv: 0x10\nu: 1_000\n").unwrap();
        assert_eq!(
            serde_json::to_string(&n.to_json()).unwrap(),
            r#"{"z":"no","y":true,"x":1.5,"w":null,"v":16,"u":"1_000"}"#
        );
    }

    #[test]
    fn duplicate_keys_are_rejected_with_position() {
        let e = parse("spec:\n  mode: enforce\n  mode: monitor\n").unwrap_err();
        assert!(e.message.to_lowercase().contains("duplicate"), "{e:?}");
        assert_eq!(e.pos.map(|p| p.line), Some(3));
    }

    #[test]
    fn alias_bombs_hit_the_budget() {
        let mut s = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..9 {
            let p = i - 1;
            s.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        assert!(parse(&s).is_err());
    }

    #[test]
    fn multiple_documents_and_tags_are_rejected() {
        assert!(parse("a: 1\n---\nb: 2\n").is_err());
        assert!(parse("a: !custom x\n").is_err());
    }

    #[test]
    fn oversize_and_empty_input_are_rejected() {
        assert!(parse("").is_err());
        assert!(parse(&"#".repeat(MAX_POLICY_BYTES + 1)).is_err());
    }
}
