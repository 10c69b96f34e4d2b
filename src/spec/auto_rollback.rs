//! `rollback.auto` as written: `true`, `false` or `"pause"` (serde `with` module and its schema).

use super::AutoRollback;
use serde::{Deserialize, Deserializer, Serializer};

pub fn serialize<S: Serializer>(v: &AutoRollback, s: S) -> Result<S::Ok, S::Error> {
    match v {
        AutoRollback::Yes => s.serialize_bool(true),
        AutoRollback::No => s.serialize_bool(false),
        AutoRollback::Pause => s.serialize_str("pause"),
    }
}

pub fn schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "description": "true: roll back at once; pause: wait for a person; false: mark failed",
        "enum": [true, false, "pause"],
        "default": true
    })
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<AutoRollback, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        B(bool),
        S(String),
    }
    match Raw::deserialize(d)
        .map_err(|_| serde::de::Error::custom("expected true, false or \"pause\""))?
    {
        Raw::B(true) => Ok(AutoRollback::Yes),
        Raw::B(false) => Ok(AutoRollback::No),
        Raw::S(s) if s == "pause" => Ok(AutoRollback::Pause),
        Raw::S(s) => Err(serde::de::Error::custom(format!(
            "{s:?}: expected true, false or \"pause\""
        ))),
    }
}
