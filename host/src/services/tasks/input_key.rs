//! A task's default key: a hash of its plugin, callback and input, where the input counts
//! as the JSON value it is, exactly: object keys in any order and any spacing give the same
//! key, while numbers are compared as written (no precision is lost: `2^64 + 1` is not
//! `2^64`), the way the input itself is kept as given.

use std::collections::BTreeMap;

use serde_json::value::RawValue;

/// The default key of a call of `plugin`'s `callback` with JSON `input` (checked JSON).
pub(super) fn default_key(plugin: &str, callback: &str, input: &str) -> String {
    let mut text = format!("{plugin}\0{callback}\0");
    if canonical(input, &mut text).is_err() {
        // Not JSON (the caller checked it is): its text as given.
        text.push_str(input);
    }
    format!("{:032x}", xxhash_rust::xxh3::xxh3_128(text.as_bytes()))
}

/// Appends `json` to `out` with object keys sorted, no spaces, strings re-encoded one way;
/// numbers, `true`, `false` and `null` as written.
fn canonical(json: &str, out: &mut String) -> Result<(), serde_json::Error> {
    let json = json.trim();
    match json.as_bytes().first() {
        Some(b'{') => {
            // The last of repeated keys wins, as it does for `serde_json::Value`.
            let members: BTreeMap<String, &RawValue> = serde_json::from_str(json)?;
            out.push('{');
            for (i, (key, value)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::to_string(&key)?);
                out.push(':');
                canonical(value.get(), out)?;
            }
            out.push('}');
        }
        Some(b'[') => {
            let items: Vec<&RawValue> = serde_json::from_str(json)?;
            out.push('[');
            for (i, item) in items.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(item.get(), out)?;
            }
            out.push(']');
        }
        Some(b'"') => {
            let text: String = serde_json::from_str(json)?;
            out.push_str(&serde_json::to_string(&text)?);
        }
        _ => out.push_str(json),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_key_ignores_the_order_of_object_keys_and_spacing() {
        let a = default_key("p", "c", r#"{"a":1,"b":[2,{"y":"\u0041","x":null}]}"#);
        let b = default_key(
            "p",
            "c",
            r#" { "b" : [ 2 , {"x":null, "y":"A"} ] , "a" : 1 } "#,
        );
        assert_eq!(a, b);
        assert_ne!(
            a,
            default_key("p", "d", r#"{"a":1,"b":[2,{"y":"A","x":null}]}"#)
        );
        assert_ne!(
            a,
            default_key("p", "c", r#"{"a":1,"b":[{"y":"A","x":null},2]}"#)
        );
    }

    #[test]
    fn numbers_are_compared_as_written_without_losing_precision() {
        let big = default_key("p", "c", r#"{"n":18446744073709551617}"#);
        assert_ne!(big, default_key("p", "c", r#"{"n":18446744073709551616}"#));
        assert_eq!(
            big,
            default_key("p", "c", r#"{ "n": 18446744073709551617 }"#)
        );
        let mut text = String::new();
        canonical(r#"[1.10, -0, 1e400, "é\n"]"#, &mut text).unwrap();
        assert_eq!(text, r#"[1.10,-0,1e400,"é\n"]"#);
    }
}
