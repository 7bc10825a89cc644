//! `run_turn`'s `content` (PROTOCOL section 5): each block's fields checked in order, the first
//! offending one named with its place (`content[1].mimeType must be a string`).

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::{Map, Value};

/// The block types a prompt may carry besides its text.
const KINDS: &str = "image, audio, resource_link, resource";

/// Checks a present, non-null `content` value.
pub(super) fn check(value: &Value) -> Result<(), String> {
    let Value::Array(blocks) = value else {
        return Err("content must be an array of content blocks".to_owned());
    };
    for (index, block) in blocks.iter().enumerate() {
        let at = format!("content[{index}]");
        let Value::Object(fields) = block else {
            return Err(format!("{at} must be an object"));
        };
        match fields.get("type").and_then(Value::as_str) {
            Some("image" | "audio") => {
                base64_field(fields, &at, "data")?;
                string(fields, &at, "mimeType")?;
            }
            Some("resource_link") => {
                string(fields, &at, "uri")?;
                string(fields, &at, "name")?;
                for name in ["mimeType", "title", "description"] {
                    optional_string(fields, &at, name)?;
                }
                match fields.get("size") {
                    None | Some(Value::Null) => {}
                    Some(Value::Number(n)) if n.as_u64().is_some() => {}
                    Some(_) => return Err(format!("{at}.size must be a non-negative integer")),
                }
            }
            Some("resource") => {
                let at = format!("{at}.resource");
                let Some(Value::Object(resource)) = fields.get("resource") else {
                    return Err(format!("{at} must be an object"));
                };
                string(resource, &at, "uri")?;
                optional_string(resource, &at, "text")?;
                optional_string(resource, &at, "mimeType")?;
                let has = |name| !matches!(resource.get(name), None | Some(Value::Null));
                match (has("text"), has("blob")) {
                    (true, false) => {}
                    (false, true) => base64_field(resource, &at, "blob")?,
                    _ => return Err(format!("{at} must have exactly one of text and blob")),
                }
            }
            _ => return Err(format!("{at}.type must be one of {KINDS}")),
        }
    }
    Ok(())
}

fn string(fields: &Map<String, Value>, at: &str, name: &str) -> Result<(), String> {
    match fields.get(name) {
        Some(Value::String(_)) => Ok(()),
        _ => Err(format!("{at}.{name} must be a string")),
    }
}

fn optional_string(fields: &Map<String, Value>, at: &str, name: &str) -> Result<(), String> {
    match fields.get(name) {
        None | Some(Value::Null | Value::String(_)) => Ok(()),
        _ => Err(format!("{at}.{name} must be a string")),
    }
}

fn base64_field(fields: &Map<String, Value>, at: &str, name: &str) -> Result<(), String> {
    match fields.get(name) {
        Some(Value::String(data)) if STANDARD.decode(data).is_ok() => Ok(()),
        Some(Value::String(_)) => Err(format!("{at}.{name} must be base64")),
        _ => Err(format!("{at}.{name} must be a string")),
    }
}
