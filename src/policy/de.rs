//! A serde `Deserializer` over the positioned YAML tree ([`Node`]) that knows the field path of
//! every value (`spec.tool_rules[2].action`), so a type error, an unknown key or a missing field
//! is reported at its line and column with its path. Unknown keys carry the list of valid names
//! for the "did you mean" hint.
//!
//! Must not: coerce between YAML types (a number is not a string, `yes` is not a boolean), or
//! know anything about policy fields.

use std::fmt;

use serde::de::{self, DeserializeSeed, IntoDeserializer, MapAccess, SeqAccess, Visitor};

use super::yaml::{Node, NodeValue, Pos};

/// A deserialization error, located by the innermost node that saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct DeError {
    pub path: Option<String>,
    pub pos: Option<Pos>,
    pub kind: DeErrorKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum DeErrorKind {
    UnknownField {
        field: String,
        expected: &'static [&'static str],
    },
    MissingField(&'static str),
    WrongType {
        expected: &'static str,
        found: &'static str,
    },
    Message(String),
}

impl DeError {
    fn new(kind: DeErrorKind) -> Self {
        DeError {
            path: None,
            pos: None,
            kind,
        }
    }

    /// Fills in the location unless an inner node already did.
    fn locate(mut self, path: &str, pos: Pos) -> Self {
        if self.path.is_none() {
            self.path = Some(match &self.kind {
                DeErrorKind::MissingField(f) => join_key(path, f),
                _ => path.to_owned(),
            });
            self.pos = Some(pos);
        }
        self
    }
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            DeErrorKind::UnknownField { field, .. } => write!(f, "unknown field `{field}`"),
            DeErrorKind::MissingField(name) => write!(f, "missing required field `{name}`"),
            DeErrorKind::WrongType { expected, found } => {
                write!(f, "expected {expected}, found {found}")
            }
            DeErrorKind::Message(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DeError::new(DeErrorKind::Message(msg.to_string()))
    }
    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        DeError::new(DeErrorKind::UnknownField {
            field: field.to_owned(),
            expected,
        })
    }
    fn missing_field(field: &'static str) -> Self {
        DeError::new(DeErrorKind::MissingField(field))
    }
    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Self {
        DeError::new(DeErrorKind::Message(format!(
            "unknown value `{variant}`, expected one of {}",
            expected.join(", ")
        )))
    }
}

pub fn join_key(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// Deserializes `T` from `node`, whose field path is `path` (empty for the document root).
pub fn from_node<'de, T: de::Deserialize<'de>>(node: &Node, path: &str) -> Result<T, DeError> {
    T::deserialize(NodeDe {
        node,
        path: path.to_owned(),
    })
}

struct NodeDe<'a> {
    node: &'a Node,
    path: String,
}

impl NodeDe<'_> {
    fn wrong(&self, expected: &'static str) -> DeError {
        DeError::new(DeErrorKind::WrongType {
            expected,
            found: self.node.value.kind(),
        })
        .locate(&self.path, self.node.pos)
    }
}

macro_rules! deserialize_integer {
    ($($method:ident)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
            let r = match &self.node.value {
                NodeValue::Int(i) => visitor.visit_i64(*i),
                NodeValue::UInt(u) => visitor.visit_u64(*u),
                _ => return Err(self.wrong("an integer")),
            };
            r.map_err(|e: DeError| e.locate(&self.path, self.node.pos))
        }
    )*};
}

impl<'de> de::Deserializer<'de> for NodeDe<'_> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let (path, pos) = (self.path.clone(), self.node.pos);
        let r = match &self.node.value {
            NodeValue::Null => visitor.visit_unit(),
            NodeValue::Bool(b) => visitor.visit_bool(*b),
            NodeValue::Int(i) => visitor.visit_i64(*i),
            NodeValue::UInt(u) => visitor.visit_u64(*u),
            NodeValue::Float(f) => visitor.visit_f64(*f),
            NodeValue::Str(s) => visitor.visit_str(s),
            NodeValue::Seq(items) => visitor.visit_seq(SeqDe {
                items: items.iter(),
                index: 0,
                path: &self.path,
            }),
            NodeValue::Map(entries) => visitor.visit_map(MapDe {
                entries: entries.iter(),
                value: None,
                path: &self.path,
            }),
        };
        r.map_err(|e: DeError| e.locate(&path, pos))
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.node.value {
            NodeValue::Bool(b) => visitor
                .visit_bool(*b)
                .map_err(|e: DeError| e.locate(&self.path, self.node.pos)),
            _ => Err(self.wrong("`true` or `false`")),
        }
    }

    deserialize_integer! {
        deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64 deserialize_i128
        deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64 deserialize_u128
    }

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_f64(visitor)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let r = match &self.node.value {
            NodeValue::Float(f) => visitor.visit_f64(*f),
            NodeValue::Int(i) => visitor.visit_i64(*i),
            NodeValue::UInt(u) => visitor.visit_u64(*u),
            _ => return Err(self.wrong("a number")),
        };
        r.map_err(|e: DeError| e.locate(&self.path, self.node.pos))
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.node.value {
            NodeValue::Str(s) => visitor
                .visit_str(s)
                .map_err(|e: DeError| e.locate(&self.path, self.node.pos)),
            _ => Err(self.wrong("a string")),
        }
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, DeError> {
        Err(self.wrong("bytes"))
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, DeError> {
        Err(self.wrong("bytes"))
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let (path, pos) = (self.path.clone(), self.node.pos);
        let r = match &self.node.value {
            NodeValue::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        };
        r.map_err(|e: DeError| e.locate(&path, pos))
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.node.value {
            NodeValue::Null => visitor
                .visit_unit()
                .map_err(|e: DeError| e.locate(&self.path, self.node.pos)),
            _ => Err(self.wrong("null")),
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        let (path, pos) = (self.path.clone(), self.node.pos);
        visitor
            .visit_newtype_struct(self)
            .map_err(|e: DeError| e.locate(&path, pos))
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.node.value {
            NodeValue::Seq(_) => self.deserialize_any(visitor),
            _ => Err(self.wrong("a list")),
        }
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.node.value {
            NodeValue::Map(_) => self.deserialize_any(visitor),
            _ => Err(self.wrong("a mapping")),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_map(visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        match &self.node.value {
            NodeValue::Str(s) => {
                let d: de::value::StrDeserializer<'_, DeError> = s.as_str().into_deserializer();
                visitor
                    .visit_enum(d)
                    .map_err(|e: DeError| e.locate(&self.path, self.node.pos))
            }
            _ => Err(self.wrong("a string")),
        }
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_unit()
    }
}

struct SeqDe<'a, 'p> {
    items: std::slice::Iter<'a, Node>,
    index: usize,
    path: &'p str,
}

impl<'de> SeqAccess<'de> for SeqDe<'_, '_> {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        let Some(node) = self.items.next() else {
            return Ok(None);
        };
        let path = format!("{}[{}]", self.path, self.index);
        self.index += 1;
        seed.deserialize(NodeDe { node, path }).map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

struct MapDe<'a, 'p> {
    entries: std::slice::Iter<'a, (Node, Node)>,
    value: Option<(&'a Node, String)>,
    path: &'p str,
}

impl<'de> MapAccess<'de> for MapDe<'_, '_> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        let Some((key, value)) = self.entries.next() else {
            return Ok(None);
        };
        let NodeValue::Str(name) = &key.value else {
            return Err(DeError::new(DeErrorKind::WrongType {
                expected: "a string key",
                found: key.value.kind(),
            })
            .locate(self.path, key.pos));
        };
        let path = join_key(self.path, name);
        let k = seed.deserialize(NodeDe {
            node: key,
            path: path.clone(),
        })?;
        self.value = Some((value, path));
        Ok(Some(k))
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        match self.value.take() {
            Some((node, path)) => seed.deserialize(NodeDe { node, path }),
            None => Err(de::Error::custom("value requested before key")),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::yaml::parse;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        tool: String,
        #[serde(default)]
        n: Option<u32>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Outer {
        name: String,
        rules: Vec<Inner>,
        flag: Option<bool>,
    }

    fn de(text: &str) -> Result<Outer, DeError> {
        from_node(&parse(text).unwrap(), "spec")
    }

    #[test]
    fn unknown_field_is_located_at_the_key_with_candidates() {
        let e = de("name: a\nrules:\n  - tool: x\n  - tool: y\n    nn: 3\n").unwrap_err();
        assert_eq!(e.path.as_deref(), Some("spec.rules[1].nn"));
        assert_eq!(e.pos, Some(Pos { line: 5, column: 5 }));
        assert!(
            matches!(e.kind, DeErrorKind::UnknownField { ref field, expected } if field == "nn" && expected.contains(&"n"))
        );
    }

    #[test]
    fn missing_field_names_the_field_under_its_parent() {
        let e = de("name: a\nrules:\n  - n: 1\n").unwrap_err();
        assert_eq!(e.path.as_deref(), Some("spec.rules[0].tool"));
        assert_eq!(e.pos.map(|p| p.line), Some(3));
    }

    #[test]
    fn types_are_not_coerced() {
        let e = de("name: 5\nrules: []\n").unwrap_err();
        assert_eq!(e.path.as_deref(), Some("spec.name"));
        assert_eq!(e.to_string(), "expected a string, found an integer");
        let e = de("name: a\nrules: []\nflag: yes\n").unwrap_err();
        assert_eq!(e.to_string(), "expected `true` or `false`, found a string");
        let e = de("name: a\nrules: {}\n").unwrap_err();
        assert_eq!(e.to_string(), "expected a list, found a mapping");
    }

    #[test]
    fn well_formed_input_deserializes() {
        let o = de("name: a\nrules:\n  - tool: x\n    n: 2\nflag: ~\n").unwrap();
        assert_eq!(
            o,
            Outer {
                name: "a".into(),
                rules: vec![Inner {
                    tool: "x".into(),
                    n: Some(2)
                }],
                flag: None
            }
        );
    }
}
