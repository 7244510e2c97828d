//! Duplicate keys. YAML maps read into Rust maps keep the last of two equal keys without a
//! word, so a second `jobs.synapse` would silently replace the first. This pass walks the whole
//! document before the typed parse and refuses any mapping that has a key twice, at the
//! duplicate's line and column, naming the first occurrence.
//!
//! The positions come from serde_yaml_ng itself: an error raised while a key is deserialized
//! carries that key's location. The first walk stops at the duplicate; a second walk stops at
//! the first occurrence of the same key in the same mapping (mappings are numbered in document
//! order, which both walks share).

use std::collections::HashSet;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, Visitor};

/// A duplicate key: where it is and where it was first written (1-based line and column).
#[derive(Debug)]
pub struct Duplicate {
    pub at: (usize, usize),
    pub first: (usize, usize),
    /// serde_yaml_ng's message without its location: `jobs: duplicate key "synapse"`.
    pub message: String,
}

/// Walks `text`; `Ok(None)` when no mapping has a key twice. Errors other than duplicates
/// (YAML syntax) are returned as they are, for the typed parse to report the same way.
pub fn find_duplicate(text: &str) -> Result<Option<Duplicate>, serde_yaml_ng::Error> {
    let mut walk = Walk::default();
    let err = match walk_document(text, &mut walk) {
        Ok(()) => return Ok(None),
        Err(e) => e,
    };
    let Some(found) = walk.found.take() else {
        return Err(err);
    };
    let mut again = Walk {
        target: Some(found),
        ..Walk::default()
    };
    let first = walk_document(text, &mut again).err();
    Ok(Some(Duplicate {
        at: position(&err),
        first: first.as_ref().map_or((1, 1), position),
        message: crate::strip_location(&err.to_string()),
    }))
}

fn position(e: &serde_yaml_ng::Error) -> (usize, usize) {
    e.location().map_or((1, 1), |l| (l.line(), l.column()))
}

fn walk_document(text: &str, walk: &mut Walk) -> Result<(), serde_yaml_ng::Error> {
    let de = serde_yaml_ng::Deserializer::from_str(text);
    Node(walk).deserialize(de)
}

/// The walk's state: how many mappings were entered, and (second walk) which key to stop at.
#[derive(Default)]
struct Walk {
    maps: usize,
    /// (mapping number, key): the duplicate the first walk found.
    found: Option<(usize, String)>,
    target: Option<(usize, String)>,
}

/// Any YAML node; mappings check their keys.
struct Node<'a>(&'a mut Walk);

impl<'de> DeserializeSeed<'de> for Node<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Node<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_i128<E>(self, _: i128) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u128<E>(self, _: u128) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_none<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        Node(self.0).deserialize(d)
    }
    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        Node(self.0).deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Node(&mut *self.0))?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let id = self.0.maps;
        self.0.maps += 1;
        let mut seen = HashSet::new();
        while map
            .next_key_seed(Key {
                walk: &mut *self.0,
                id,
                seen: &mut seen,
            })?
            .is_some()
        {
            map.next_value_seed(Node(&mut *self.0))?;
        }
        Ok(())
    }

    /// A tagged node (`!tag value`): its value is walked like any other.
    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<(), A::Error> {
        let (_, variant) = data.variant::<de::IgnoredAny>()?;
        de::VariantAccess::newtype_variant_seed(variant, Node(self.0))
    }
}

/// A mapping key. The error is raised while the key itself is read, so that it carries the
/// key's position.
struct Key<'a> {
    walk: &'a mut Walk,
    id: usize,
    seen: &'a mut HashSet<String>,
}

impl Key<'_> {
    fn check<E: de::Error>(self, key: String) -> Result<(), E> {
        let this = (self.id, key);
        if self.walk.target.as_ref() == Some(&this) {
            return Err(E::custom("first occurrence"));
        }
        if self.walk.target.is_none() && !self.seen.insert(this.1.clone()) {
            let msg = format!("duplicate key {:?}", this.1);
            self.walk.found = Some(this);
            return Err(E::custom(msg));
        }
        Ok(())
    }
}

impl<'de> DeserializeSeed<'de> for Key<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

/// Keys are compared as the text a `String` key would hold; a mapping or a list used as a
/// key is left to the typed parse (no key of the config is one).
impl<'de> Visitor<'de> for Key<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a mapping key")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.check(v.to_string())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.check(v.to_string())
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<(), E> {
        self.check(v.to_string())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.check(v.to_string())
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<(), E> {
        self.check(v.to_string())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.check(v.to_string())
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.check(v.to_owned())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.check("~".to_owned())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
        Node(self.walk).visit_seq(seq)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        Node(self.walk).visit_map(map)
    }
    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<(), A::Error> {
        Node(self.walk).visit_enum(data)
    }
}
