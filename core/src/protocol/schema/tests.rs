use super::*;

/// The committed file, `docs/protocol.schema.json`.
fn committed_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(SCHEMA_PATH)
}

#[test]
fn the_committed_schema_is_current() {
    let generated = protocol_schema_text();
    let path = committed_path();
    if std::env::var_os("UPDATE_SCHEMA").is_some() {
        if let Err(error) = std::fs::write(&path, &generated) {
            panic!("cannot write {}: {error}", path.display());
        }
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "{SCHEMA_PATH} is stale (or missing): the protocol's types changed. Regenerate it with \
         `UPDATE_SCHEMA=1 cargo test -p diminuendo-core schema` and commit it."
    );
}

#[test]
fn the_schema_is_stable() {
    assert_eq!(protocol_schema_text(), protocol_schema_text());
}

#[test]
fn every_request_type_and_server_message_is_in_the_schema() {
    let schema = protocol_schema();
    let text = schema.to_string();
    for kind in crate::protocol::RequestKind::ALL {
        assert!(
            text.contains(&format!("\"const\":\"{}\"", kind.name())),
            "{} missing",
            kind.name()
        );
    }
    for name in [
        "welcome",
        "connected",
        "authenticated",
        "pong",
        "heartbeat",
        "error",
        "server_shutdown",
        "session_list",
        "session_created",
        "session_updated",
        "session_deleted",
    ] {
        assert!(
            text.contains(&format!("\"const\":\"{name}\"")),
            "{name} missing"
        );
    }
    for def in [
        "ClientMessage",
        "ServerMessage",
        "Envelope",
        "ClientRequest",
    ] {
        assert!(schema["$defs"].get(def).is_some(), "$defs/{def} missing");
    }
}
