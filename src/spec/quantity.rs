//! Small value types of the manifest: integer-or-percent bounds and durations.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// Which way [`IntOrPercent::resolve`] rounds a percentage of a count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rounding {
    /// Up, as Kubernetes resolves `maxSurge`.
    Up,
    /// Down, as Kubernetes resolves `maxUnavailable`.
    Down,
}

/// `maxSurge` / `maxUnavailable`: a plain count or a percentage like `"25%"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntOrPercent {
    Int(u32),
    Percent(u32),
}

impl IntOrPercent {
    /// Whether this is literally zero (`0` or `"0%"`), as Kubernetes' validation reads it.
    pub fn is_zero(self) -> bool {
        matches!(self, IntOrPercent::Int(0) | IntOrPercent::Percent(0))
    }

    /// Resolves against `n` instances, rounding up (surge) or down (unavailable) as Kubernetes does.
    pub fn resolve(self, n: u32, rounding: Rounding) -> u32 {
        match self {
            IntOrPercent::Int(v) => v,
            IntOrPercent::Percent(p) => {
                let scaled = u64::from(p) * u64::from(n);
                let v = match rounding {
                    Rounding::Up => scaled.div_ceil(100),
                    Rounding::Down => scaled / 100,
                };
                u32::try_from(v).unwrap_or(u32::MAX)
            }
        }
    }

    /// Parses a percentage exactly as Kubernetes' `IsValidPercent` reads one: digits, then `%`,
    /// nothing else (no sign, no spaces).
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.chars().any(char::is_whitespace) {
            return Err(format!(
                "{s:?} has spaces: expected an integer or a percentage like \"25%\""
            ));
        }
        s.strip_suffix('%')
            .filter(|num| !num.is_empty() && num.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|num| num.parse::<u32>().ok())
            .map(IntOrPercent::Percent)
            .ok_or_else(|| format!("{s:?} is neither an integer nor a percentage like \"25%\""))
    }
}

impl fmt::Display for IntOrPercent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IntOrPercent::Int(v) => write!(f, "{v}"),
            IntOrPercent::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl Serialize for IntOrPercent {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            IntOrPercent::Int(v) => s.serialize_u32(*v),
            IntOrPercent::Percent(_) => s.serialize_str(&self.to_string()),
        }
    }
}

impl<'de> Deserialize<'de> for IntOrPercent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = IntOrPercent;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a non-negative integer or a percentage like \"25%\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                u32::try_from(v)
                    .map(IntOrPercent::Int)
                    .map_err(|_| E::custom(format!("{v} is too large")))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                if v < 0 {
                    return Err(E::custom(format!(
                        "{v} is negative: expected a non-negative integer or a percentage like \"25%\""
                    )));
                }
                self.visit_u64(v as u64)
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Err(E::custom(format!(
                    "{v} is not a whole number: expected an integer or a percentage like \"25%\""
                )))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                IntOrPercent::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl schemars::JsonSchema for IntOrPercent {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "IntOrPercent".into()
    }

    /// What [`IntOrPercent::deserialize`] accepts: a count, or digits then `%` and nothing else.
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A count of instances, or a percentage like \"25%\"",
            "oneOf": [
                {"type": "integer", "minimum": 0, "maximum": u32::MAX},
                {"type": "string", "pattern": "^[0-9]+%$"}
            ]
        })
    }
}

/// A duration written like `500ms`, `30s`, `5m`, `1h30m` or `1d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Dur(pub Duration);

impl Dur {
    pub fn parse(s: &str) -> Result<Self, String> {
        let expected = || {
            format!(
                "{s:?} is not a duration: expected a number with a unit, like \"30s\", \"5m\" or \"1h30m\""
            )
        };
        let t = s.trim();
        if t.is_empty() {
            return Err(expected());
        }
        let mut total = Duration::ZERO;
        let mut rest = t;
        while !rest.is_empty() {
            let digits = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            if digits == 0 {
                return Err(expected());
            }
            let n: u64 = rest[..digits].parse().map_err(|_| expected())?;
            rest = &rest[digits..];
            let unit_len = rest
                .find(|c: char| c.is_ascii_digit())
                .unwrap_or(rest.len());
            let unit = &rest[..unit_len];
            rest = &rest[unit_len..];
            let part = match unit {
                "ms" => Duration::from_millis(n),
                "s" => Duration::from_secs(n),
                "m" => Duration::from_secs(n.saturating_mul(60)),
                "h" => Duration::from_secs(n.saturating_mul(3600)),
                "d" => Duration::from_secs(n.saturating_mul(86400)),
                _ => return Err(expected()),
            };
            total = total.saturating_add(part);
        }
        Ok(Dur(total))
    }

    pub fn as_secs_f64(self) -> f64 {
        self.0.as_secs_f64()
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms == 0 {
            f.write_str("0s")
        } else if ms.is_multiple_of(86_400_000) {
            write!(f, "{}d", ms / 86_400_000)
        } else if ms.is_multiple_of(3_600_000) {
            write!(f, "{}h", ms / 3_600_000)
        } else if ms.is_multiple_of(60_000) {
            write!(f, "{}m", ms / 60_000)
        } else if ms.is_multiple_of(1000) {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration like \"30s\" or \"5m\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                if v == 0 {
                    return Ok(Dur(Duration::ZERO));
                }
                Err(E::custom(format!(
                    "{v} has no unit: expected a duration like \"{v}s\" or \"{v}m\""
                )))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Err(E::custom(format!(
                    "{v} has no unit: expected a duration like \"30s\" or \"5m\""
                )))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Err(E::custom(format!(
                    "{v} has no unit: expected a duration like \"30s\" or \"5m\""
                )))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Dur::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl schemars::JsonSchema for Dur {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    /// What [`Dur::parse`] accepts (it trims spaces), or a bare `0`.
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A duration: a number with a unit (ms, s, m, h, d), repeated: \"500ms\", \"30s\", \"1h30m\"",
            "oneOf": [
                {"type": "string", "pattern": "^\\s*([0-9]+(ms|s|m|h|d))+\\s*$"},
                {"type": "integer", "const": 0}
            ]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_rounding_matches_kubernetes() {
        assert_eq!(IntOrPercent::Percent(25).resolve(10, Rounding::Up), 3);
        assert_eq!(IntOrPercent::Percent(25).resolve(10, Rounding::Down), 2);
        assert_eq!(
            IntOrPercent::Percent(1).resolve(100_000, Rounding::Up),
            1000
        );
        assert_eq!(IntOrPercent::Int(7).resolve(3, Rounding::Down), 7);
    }

    #[test]
    fn parse_forms() {
        assert_eq!(IntOrPercent::parse("25%"), Ok(IntOrPercent::Percent(25)));
        assert!(
            IntOrPercent::parse("130")
                .unwrap_err()
                .contains("neither an integer nor a percentage")
        );
        assert!(IntOrPercent::parse("x%").is_err());
        // As Kubernetes' IsValidPercent: digits and '%' only.
        for bad in ["+5%", "-5%", "%", "5 %", " 5%", "5% ", "5.5%", "20Percent"] {
            assert!(IntOrPercent::parse(bad).is_err(), "{bad:?}");
        }
        assert!(
            IntOrPercent::parse(" 5%")
                .unwrap_err()
                .contains("has spaces")
        );
        assert_eq!(IntOrPercent::parse("05%"), Ok(IntOrPercent::Percent(5)));
        assert_eq!(IntOrPercent::parse("110%"), Ok(IntOrPercent::Percent(110)));
    }

    #[test]
    fn durations() {
        assert_eq!(Dur::parse("30s").unwrap().0, Duration::from_secs(30));
        assert_eq!(Dur::parse("1h30m").unwrap().0, Duration::from_secs(5400));
        assert_eq!(Dur::parse("250ms").unwrap().0, Duration::from_millis(250));
        assert!(Dur::parse("5").is_err());
        assert!(Dur::parse("5 minutes").is_err());
        assert_eq!(Dur(Duration::from_secs(300)).to_string(), "5m");
    }
}
