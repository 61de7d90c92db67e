//! serde over the syntax tree: a [`serde::Deserializer`] that maps
//! settings to struct fields, checks each value's kind, records the keys
//! no field took, and locates every error at its key and line.

use std::{cell::RefCell, fmt};

use serde::{
    de::{self, IntoDeserializer, Visitor},
    Deserialize,
};

use super::number::{parse_c_long, IntError};
use super::syntax::{Atom, Op, Setting, Value};

/// Error inside the deserializer; located (key, line) on the way out.
#[derive(Debug)]
pub(super) struct DeError {
    pub(super) msg: String,
    pub(super) key: Option<String>,
    pub(super) line: Option<u32>,
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
pub(super) struct SettingsDe<'a, 'b> {
    pub(super) settings: Vec<&'a Setting>,
    pub(super) ignored: &'b Ignored<'a>,
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
pub(super) struct StringList(pub(super) Vec<String>);

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
