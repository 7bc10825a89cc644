use serde_json::{json, Value};

use super::*;
use crate::protocol::request::*;

fn parsed(message: Value) -> Parsed {
    match parse_client_message(&message.to_string()) {
        Ok(message) => message.body,
        Err(error) => panic!("{message}: {error:?}"),
    }
}

/// A message of `kind` with every field valid.
fn valid(kind: RequestKind) -> Value {
    let mut message = json!({ "type": kind.name() });
    for (name, rule) in field_rules(kind) {
        message[*name] = match rule {
            FieldRule::String | FieldRule::OptionalString | FieldRule::StringOrBool => json!("x"),
            FieldRule::OptionalBool => json!(true),
            FieldRule::U64 | FieldRule::OptionalU64 => json!(3),
            FieldRule::OptionalContent => json!([]),
        };
    }
    message
}

#[test]
fn envelope_rules() {
    assert_eq!(
        parse_client_message("nope").err(),
        Some(EnvelopeError::InvalidJson)
    );
    assert!(matches!(
        parse_client_message("[1]"),
        Err(EnvelopeError::InvalidMessage { .. })
    ));
    assert!(matches!(
        parse_client_message(r#"{"type":"ping","requestId":5}"#),
        Err(EnvelopeError::InvalidMessage {
            request_id: None,
            ..
        })
    ));
    let long = "a".repeat(65);
    assert!(parse_client_message(&format!(r#"{{"type":"ping","requestId":"{long}"}}"#)).is_err());
    let longest = "é".repeat(64);
    let ok = parse_client_message(&format!(r#"{{"type":"ping","requestId":"{longest}"}}"#));
    assert!(matches!(ok, Ok(ClientMessage { request_id: Some(ref id), .. }) if *id == longest));
    assert!(matches!(
        parse_client_message(r#"{"requestId":"r"}"#),
        Err(EnvelopeError::InvalidMessage { request_id: Some(id), .. }) if id == "r"
    ));
    let ok = parse_client_message(r#"{"type":"ping","requestId":null,"extra":1}"#);
    assert!(matches!(
        ok,
        Ok(ClientMessage {
            request_id: None,
            body: Parsed::Request(ClientRequest::Ping)
        })
    ));
    let unknown = parse_client_message(r#"{"type":"nope","requestId":"u"}"#);
    assert!(matches!(
        unknown,
        Ok(ClientMessage { request_id: Some(ref id), body: Parsed::Unknown }) if id == "u"
    ));
}

#[test]
fn every_kind_parses_into_its_own_request() {
    for kind in RequestKind::ALL {
        let message = valid(kind);
        match parsed(message.clone()) {
            Parsed::Request(request) => assert_eq!(request.kind(), kind, "{message}"),
            other => panic!("{message}: {other:?}"),
        }
        assert_eq!(RequestKind::from_name(kind.name()), Some(kind));
    }
}

#[test]
fn the_first_bad_field_in_order_is_named_with_the_protocol_message() {
    for kind in RequestKind::ALL {
        let rules = field_rules(kind);
        for (index, (name, rule)) in rules.iter().enumerate() {
            // This field and every later one wrong: this one is named.
            let mut message = valid(kind);
            for (later, _) in &rules[index..] {
                message[*later] = json!([1]);
            }
            let expected = match rule {
                FieldRule::String | FieldRule::OptionalString => format!("{name} must be a string"),
                FieldRule::OptionalBool => format!("{name} must be a boolean"),
                FieldRule::StringOrBool => format!("{name} must be a string or a boolean"),
                FieldRule::U64 | FieldRule::OptionalU64 => {
                    format!("{name} must be a non-negative integer")
                }
                // `[1]` is an array: its first block is named.
                FieldRule::OptionalContent => format!("{name}[0] must be an object"),
            };
            assert_eq!(
                parsed(message.clone()),
                Parsed::Invalid {
                    kind,
                    reason: expected.clone()
                },
                "{message}"
            );
            // Absent or null: an error only when the field is required.
            for absent in [None, Some(Value::Null)] {
                let mut message = valid(kind);
                match &absent {
                    None => {
                        message.as_object_mut().map(|fields| fields.remove(*name));
                    }
                    Some(null) => message[*name] = null.clone(),
                }
                let body = parsed(message.clone());
                if rule.is_required() {
                    assert_eq!(
                        body,
                        Parsed::Invalid {
                            kind,
                            reason: expected.clone()
                        },
                        "{message}"
                    );
                } else {
                    assert!(matches!(body, Parsed::Request(_)), "{message}: {body:?}");
                }
            }
        }
    }
}

#[test]
fn numbers_must_be_non_negative_integers_that_fit() {
    for bad in [json!(-1), json!(1.5), json!(1e3), json!("1"), json!(true)] {
        let message = json!({"type": "get_events", "sessionId": "s", "afterSeq": bad});
        assert_eq!(
            parsed(message.clone()),
            Parsed::Invalid {
                kind: RequestKind::GetEvents,
                reason: "afterSeq must be a non-negative integer".into()
            },
            "{message}"
        );
    }
    let big = r#"{"type":"get_events","sessionId":"s","afterSeq":18446744073709551616}"#;
    assert!(matches!(
        parse_client_message(big).map(|message| message.body),
        Ok(Parsed::Invalid { .. })
    ));
    let max = parsed(json!({"type": "get_events", "sessionId": "s", "afterSeq": u64::MAX}));
    assert_eq!(
        max,
        Parsed::Request(ClientRequest::GetEvents(GetEvents {
            session_id: "s".into(),
            after_seq: u64::MAX,
            limit: None
        }))
    );
}

#[test]
fn fields_land_in_their_types_and_extra_fields_are_ignored() {
    assert_eq!(
        parsed(json!({
            "type": "answer_question", "sessionId": "s", "questionId": "q1",
            "optionId": "allow", "cancelled": null, "extra": {"a": 1}
        })),
        Parsed::Request(ClientRequest::AnswerQuestion(AnswerQuestion {
            session_id: "s".into(),
            question_id: "q1".into(),
            option_id: Some("allow".into()),
            cancelled: None,
        }))
    );
    assert_eq!(
        parsed(json!({"type": "steer", "sessionId": "s", "text": "go"})),
        Parsed::Request(ClientRequest::Steer(RunTurn {
            session_id: "s".into(),
            text: "go".into(),
            content: None,
        }))
    );
    assert_eq!(
        parsed(json!({"type": "join_session", "sessionId": "s", "afterSeq": 4, "epoch": "e"})),
        Parsed::Request(ClientRequest::JoinSession(JoinSession {
            session_id: "s".into(),
            after_seq: Some(4),
            epoch: Some("e".into())
        }))
    );
    assert_eq!(
        parsed(json!({"type": "list_sessions"})),
        Parsed::Request(ClientRequest::ListSessions(ListSessions {
            include_archived: None
        }))
    );
}

/// The rules accept what the types accept: the same fields, required the same way, as the
/// `ClientRequest` schema (which is generated from the types) says.
#[test]
fn the_field_rules_match_the_request_types() {
    let schema = crate::protocol::schema::schema_of::<ClientRequest>(true);
    let variants = schema["oneOf"].as_array().cloned().unwrap_or_default();
    assert_eq!(variants.len(), RequestKind::ALL.len());
    for variant in variants {
        let name = variant["properties"]["type"]["const"]
            .as_str()
            .unwrap_or_default();
        let kind = RequestKind::from_name(name).unwrap_or_else(|| panic!("unknown {name}"));
        // The variant's own fields: inline, or in the definition it refers to.
        let body = match variant["$ref"].as_str() {
            Some(reference) => {
                let name = reference.trim_start_matches("#/$defs/");
                schema["$defs"][name].clone()
            }
            None => variant.clone(),
        };
        let mut fields: Vec<&str> = body["properties"]
            .as_object()
            .map(|properties| properties.keys().map(String::as_str).collect())
            .unwrap_or_default();
        fields.retain(|field| *field != "type");
        fields.sort_unstable();
        let mut required: Vec<&str> = body["required"]
            .as_array()
            .map(|names| names.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        required.retain(|field| *field != "type");
        required.sort_unstable();
        let mut rule_fields: Vec<&str> = field_rules(kind).iter().map(|(name, _)| *name).collect();
        rule_fields.sort_unstable();
        let mut rule_required: Vec<&str> = field_rules(kind)
            .iter()
            .filter(|(_, rule)| rule.is_required())
            .map(|(name, _)| *name)
            .collect();
        rule_required.sort_unstable();
        assert_eq!(fields, rule_fields, "fields of {name}");
        assert_eq!(required, rule_required, "required fields of {name}");
    }
}

#[test]
fn permissions_by_role() {
    use Permission::*;
    let expect = [
        ("owner", [true; 6]),
        ("admin", [true; 6]),
        ("member", [true, true, true, true, false, true]),
        ("viewer", [true, false, false, false, false, false]),
        ("nobody", [false; 6]),
    ];
    for (role, allowed) in expect {
        for (permission, allowed) in [Read, Create, Write, Archive, Delete, Steer]
            .into_iter()
            .zip(allowed)
        {
            assert_eq!(
                role_allows(role, permission),
                allowed,
                "{role} {permission:?}"
            );
        }
    }
    let request = ClientRequest::DeleteSession(SessionRef {
        session_id: "s".into(),
    });
    assert_eq!(request.permission(), Some(Delete));
    assert_eq!(ClientRequest::Ping.permission(), None);
    assert_eq!(RequestKind::Steer.permission(), Some(Steer));
    assert_eq!(RequestKind::GetHistory.permission(), Some(Read));
    assert_eq!(RequestKind::AnswerQuestion.permission(), Some(Write));
    assert_eq!(RequestKind::UnarchiveSession.permission(), Some(Archive));
}

#[test]
fn set_mode_and_set_config_option_parse_with_their_values() {
    assert_eq!(
        parsed(json!({"type": "set_mode", "sessionId": "s", "modeId": "code"})),
        Parsed::Request(ClientRequest::SetMode(SetMode {
            session_id: "s".into(),
            mode_id: "code".into()
        }))
    );
    for (value, expected) in [
        (json!("fast"), ConfigValue::Id("fast".into())),
        (json!(false), ConfigValue::Bool(false)),
    ] {
        let message =
            json!({"type": "set_config_option", "sessionId": "s", "configId": "c", "value": value});
        assert_eq!(
            parsed(message),
            Parsed::Request(ClientRequest::SetConfigOption(SetConfigOption {
                session_id: "s".into(),
                config_id: "c".into(),
                value: expected
            }))
        );
    }
    let message =
        json!({"type": "set_config_option", "sessionId": "s", "configId": "c", "value": 3});
    assert_eq!(
        parsed(message),
        Parsed::Invalid {
            kind: RequestKind::SetConfigOption,
            reason: "value must be a string or a boolean".into()
        }
    );
    assert_eq!(
        RequestKind::SetMode.permission(),
        Some(Permission::Write),
        "member and up"
    );
    assert!(role_allows("member", Permission::Write));
    assert!(!role_allows("viewer", Permission::Write));
}

#[test]
fn content_blocks_parse_into_their_types() {
    let message = json!({
        "type": "run_turn", "sessionId": "s", "text": "look",
        "content": [
            {"type": "image", "data": "AQID", "mimeType": "image/png"},
            {"type": "audio", "data": "", "mimeType": "audio/wav"},
            {"type": "resource_link", "uri": "file:///a.rs", "name": "a.rs", "mimeType": null,
             "size": 12, "extra": 1},
            {"type": "resource", "resource": {"uri": "file:///b.txt", "text": "hi",
             "mimeType": "text/plain"}},
            {"type": "resource", "resource": {"uri": "file:///c.bin", "blob": "AA=="}},
        ]
    });
    let Parsed::Request(ClientRequest::RunTurn(run)) = parsed(message.clone()) else {
        panic!("{message}");
    };
    let content = run.content.unwrap_or_default();
    assert_eq!(
        content,
        vec![
            PromptBlock::Image(MediaBlock {
                data: "AQID".into(),
                mime_type: "image/png".into()
            }),
            PromptBlock::Audio(MediaBlock {
                data: String::new(),
                mime_type: "audio/wav".into()
            }),
            PromptBlock::ResourceLink(ResourceLinkBlock {
                uri: "file:///a.rs".into(),
                name: "a.rs".into(),
                mime_type: None,
                title: None,
                description: None,
                size: Some(12),
            }),
            PromptBlock::Resource(EmbeddedResourceBlock {
                resource: ResourceContents {
                    uri: "file:///b.txt".into(),
                    text: Some("hi".into()),
                    blob: None,
                    mime_type: Some("text/plain".into()),
                }
            }),
            PromptBlock::Resource(EmbeddedResourceBlock {
                resource: ResourceContents {
                    uri: "file:///c.bin".into(),
                    text: None,
                    blob: Some("AA==".into()),
                    mime_type: None,
                }
            }),
        ]
    );
    // They serialize back to ACP's shapes (extra fields and nulls dropped).
    assert_eq!(
        serde_json::to_value(&content[2]).unwrap_or_default(),
        json!({"type": "resource_link", "uri": "file:///a.rs", "name": "a.rs", "size": 12})
    );
    assert_eq!(
        serde_json::to_value(&content[3]).unwrap_or_default(),
        json!({"type": "resource", "resource": {"uri": "file:///b.txt", "text": "hi",
               "mimeType": "text/plain"}})
    );
    for kind in ["run_turn", "steer"] {
        let message = json!({"type": kind, "sessionId": "s", "text": "t", "content": null});
        assert!(matches!(parsed(message), Parsed::Request(_)));
    }
}

#[test]
fn bad_content_blocks_are_named_with_their_place() {
    let cases = [
        (
            json!({"a": 1}),
            "content must be an array of content blocks",
        ),
        (json!("x"), "content must be an array of content blocks"),
        (json!(["x"]), "content[0] must be an object"),
        (
            json!([{"data": "AA=="}]),
            "content[0].type must be one of image, audio, resource_link, resource",
        ),
        (
            json!([{"type": "text", "text": "x"}]),
            "content[0].type must be one of image, audio, resource_link, resource",
        ),
        (
            json!([{"type": "image", "mimeType": "image/png"}]),
            "content[0].data must be a string",
        ),
        (
            json!([{"type": "image", "data": "not base64!", "mimeType": "image/png"}]),
            "content[0].data must be base64",
        ),
        (
            json!([{"type": "image", "data": "AA=="}]),
            "content[0].mimeType must be a string",
        ),
        (
            json!([{"type": "resource_link", "uri": "u", "name": "n"}, {"type": "audio", "data": "AA==", "mimeType": 3}]),
            "content[1].mimeType must be a string",
        ),
        (
            json!([{"type": "resource_link", "name": "n"}]),
            "content[0].uri must be a string",
        ),
        (
            json!([{"type": "resource_link", "uri": "u"}]),
            "content[0].name must be a string",
        ),
        (
            json!([{"type": "resource_link", "uri": "u", "name": "n", "title": 1}]),
            "content[0].title must be a string",
        ),
        (
            json!([{"type": "resource_link", "uri": "u", "name": "n", "size": -1}]),
            "content[0].size must be a non-negative integer",
        ),
        (
            json!([{"type": "resource", "uri": "u", "text": "t"}]),
            "content[0].resource must be an object",
        ),
        (
            json!([{"type": "resource", "resource": {"text": "t"}}]),
            "content[0].resource.uri must be a string",
        ),
        (
            json!([{"type": "resource", "resource": {"uri": "u"}}]),
            "content[0].resource must have exactly one of text and blob",
        ),
        (
            json!([{"type": "resource", "resource": {"uri": "u", "text": "t", "blob": "AA=="}}]),
            "content[0].resource must have exactly one of text and blob",
        ),
        (
            json!([{"type": "resource", "resource": {"uri": "u", "blob": "%%"}}]),
            "content[0].resource.blob must be base64",
        ),
        (
            json!([{"type": "resource", "resource": {"uri": "u", "text": 5}}]),
            "content[0].resource.text must be a string",
        ),
    ];
    for (content, reason) in cases {
        for kind in [RequestKind::RunTurn, RequestKind::Steer] {
            let message =
                json!({"type": kind.name(), "sessionId": "s", "text": "t", "content": content});
            assert_eq!(
                parsed(message.clone()),
                Parsed::Invalid {
                    kind,
                    reason: reason.to_owned()
                },
                "{message}"
            );
        }
    }
}
