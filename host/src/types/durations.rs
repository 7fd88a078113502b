//! Durations as people write them in host.toml (`30s`, `5m`, `1h 30m`), for serde's `with`.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Reads and writes a list of durations as `["30s", "1h"]`.
pub(crate) mod list {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(
        value: &[Duration],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        let texts: Vec<String> = value
            .iter()
            .map(|d| humantime::format_duration(*d).to_string())
            .collect();
        texts.serialize(serializer)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<Duration>, D::Error> {
        parse(&Vec::<String>::deserialize(deserializer)?)
    }

    pub(super) fn parse<E: serde::de::Error>(texts: &[String]) -> Result<Vec<Duration>, E> {
        texts
            .iter()
            .map(|text| {
                humantime::parse_duration(text).map_err(|err| {
                    E::custom(format!(
                        "{text:?} is not a duration (30s, 5m, 1h 30m): {err}"
                    ))
                })
            })
            .collect()
    }
}

/// Reads and writes an optional list of durations as `["30s", "1h"]`.
pub(crate) mod optional {
    use super::list::parse;
    use super::*;

    pub(crate) fn serialize<S: Serializer>(
        value: &Option<Vec<Duration>>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(value) => super::list::serialize(value, serializer),
            None => serializer.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Vec<Duration>>, D::Error> {
        // `null` (how JSON writes `None`, for a worker process) or a list.
        let texts = Option::<Vec<String>>::deserialize(deserializer)?;
        texts.map(|texts| parse(&texts)).transpose()
    }
}

/// Reads and writes a duration as `"24h"`.
pub(crate) mod one {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(
        value: &Duration,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        humantime::format_duration(*value)
            .to_string()
            .serialize(serializer)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        let parsed = super::list::parse::<D::Error>(std::slice::from_ref(&text))?;
        Ok(parsed.first().copied().unwrap_or_default())
    }
}
