//! The `blocks` command: what the prompt carried besides its text, one line per block, so a test
//! sees exactly which content blocks reached the agent.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::Value;

/// One line per non-text block of `prompt`, in order (README.md, "Commands"); `no blocks` when
/// there are none.
pub(crate) fn describe_blocks(prompt: &[Value]) -> String {
    let lines: Vec<String> = prompt
        .iter()
        .filter(|block| block.get("type").and_then(Value::as_str) != Some("text"))
        .map(describe)
        .collect();
    if lines.is_empty() {
        "no blocks".to_owned()
    } else {
        lines.join("\n")
    }
}

fn describe(block: &Value) -> String {
    let field = |value: &Value, name: &str| {
        value
            .get(name)
            .and_then(Value::as_str)
            .unwrap_or("-")
            .to_owned()
    };
    let kind = field(block, "type");
    match kind.as_str() {
        "image" | "audio" => format!(
            "{kind} {} {}",
            field(block, "mimeType"),
            bytes(block.get("data"))
        ),
        "resource_link" => format!(
            "resource_link {} {}",
            field(block, "name"),
            field(block, "uri")
        ),
        "resource" => {
            let resource = block.get("resource").cloned().unwrap_or_default();
            let contents = match (resource.get("text"), resource.get("blob")) {
                (Some(Value::String(text)), _) => format!("text {text:?}"),
                (_, Some(blob)) => format!("blob {}", bytes(Some(blob))),
                _ => "empty".to_owned(),
            };
            format!("resource {} {contents}", field(&resource, "uri"))
        }
        other => format!("{other} (unknown block)"),
    }
}

/// `N bytes` for base64 data, `invalid base64` else.
fn bytes(data: Option<&Value>) -> String {
    match data
        .and_then(Value::as_str)
        .map(|data| STANDARD.decode(data))
    {
        Some(Ok(bytes)) => format!("{} bytes", bytes.len()),
        _ => "invalid base64".to_owned(),
    }
}
