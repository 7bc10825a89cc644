//! Rich prompts, driven on one Session: content blocks after the text reach the agent's
//! `session/prompt` only if its `promptCapabilities` allow them; refused at `run_turn` while the
//! agent runs, and as the turn's `turn_error` when the check waits for `initialize`.

use super::*;
use crate::protocol::request::{
    EmbeddedResourceBlock, MediaBlock, PromptBlock, ResourceContents, ResourceLinkBlock,
};
use crate::storage::StorageCommand;

fn image() -> PromptBlock {
    PromptBlock::Image(MediaBlock {
        data: "AQID".into(),
        mime_type: "image/png".into(),
    })
}

fn link() -> PromptBlock {
    PromptBlock::ResourceLink(ResourceLinkBlock {
        uri: "file:///w/a.rs".into(),
        name: "a.rs".into(),
        mime_type: None,
        title: None,
        description: None,
        size: None,
    })
}

fn embedded() -> PromptBlock {
    PromptBlock::Resource(EmbeddedResourceBlock {
        resource: ResourceContents {
            uri: "file:///w/b.txt".into(),
            text: Some("hi".into()),
            blob: None,
            mime_type: Some("text/plain".into()),
        },
    })
}

/// `inactive` to `ready` with an agent whose `initialize` answered `capabilities`; a first turn
/// `first` ran and ended.
fn ready_with(capabilities: Value) -> Harness {
    let mut h = Harness::new();
    let (accepted, _) = h.run_turn("first", false);
    assert!(accepted.is_ok());
    let agent = h.session.agent_id().unwrap_or(AgentId(0));
    h.run(|s, ctx, out| s.agent_spawned(ctx, agent, "/w", out));
    h.agent_says(json!({"jsonrpc":"2.0","id":0,"result":{"protocolVersion":1,
        "agentCapabilities":capabilities}}));
    let out = h.agent_says(json!({"jsonrpc":"2.0","id":1,"result":{"sessionId":"acp-1"}}));
    assert_eq!(methods(&out), ["session/prompt"]);
    let out = h.agent_says(json!({"jsonrpc":"2.0","id":2,"result":{"stopReason":"end_turn"}}));
    assert!(kinds(&out).contains(&"turn_complete".to_owned()));
    assert_eq!(h.session.status(), SessionStatus::Ready);
    h
}

fn prompt_of(out: &[SessionOutput]) -> Option<Value> {
    agent_lines(out)
        .into_iter()
        .find(|line| line["method"] == "session/prompt")
        .map(|line| line["params"]["prompt"].clone())
}

fn stored_content(out: &[SessionOutput]) -> Vec<Option<String>> {
    out.iter()
        .filter_map(|o| match o {
            SessionOutput::Storage(StorageCommand::UpsertTurn { turn, .. }) => {
                Some(turn.content_json.clone())
            }
            _ => None,
        })
        .collect()
}

#[test]
fn allowed_blocks_follow_the_text_and_are_published_and_stored() {
    let mut h = ready_with(json!({"promptCapabilities":{"image":true,"embeddedContext":true}}));
    let content = vec![image(), link(), embedded()];
    let (accepted, out) = h.run_turn_with("look", content, false);
    assert!(accepted.is_ok());
    assert_eq!(
        prompt_of(&out),
        Some(json!([
            {"type":"text","text":"look"},
            {"type":"image","data":"AQID","mimeType":"image/png"},
            {"type":"resource_link","uri":"file:///w/a.rs","name":"a.rs"},
            {"type":"resource","resource":{"uri":"file:///w/b.txt","text":"hi",
                "mimeType":"text/plain"}},
        ]))
    );
    let blocks = json!([
        {"type":"image","data":"AQID","mimeType":"image/png"},
        {"type":"resource_link","uri":"file:///w/a.rs","name":"a.rs"},
        {"type":"resource","resource":{"uri":"file:///w/b.txt","text":"hi","mimeType":"text/plain"}},
    ]);
    let started = published(&out)
        .into_iter()
        .find(|event| event["type"] == "turn_started")
        .unwrap_or_default();
    assert_eq!(started["content"], blocks);
    let stored = stored_content(&out);
    assert_eq!(stored.len(), 1);
    let stored: Value = stored[0]
        .as_deref()
        .and_then(|text| serde_json::from_str(text).ok())
        .unwrap_or_default();
    assert_eq!(stored, blocks);
}

#[test]
fn a_text_only_turn_has_no_content_anywhere() {
    let mut h = ready_with(json!({}));
    let (accepted, out) = h.run_turn("plain", false);
    assert!(accepted.is_ok());
    assert_eq!(
        prompt_of(&out),
        Some(json!([{"type":"text","text":"plain"}]))
    );
    let started = published(&out)
        .into_iter()
        .find(|event| event["type"] == "turn_started")
        .unwrap_or_default();
    assert_eq!(started.get("content"), None);
    assert_eq!(stored_content(&out), [None]);
}

#[test]
fn a_block_the_running_agent_cannot_take_is_refused_at_run_turn_and_steer() {
    // A resource link is always allowed; an image and an embedded resource need capabilities.
    let mut h = ready_with(json!({"promptCapabilities":{"image":false}}));
    for (block, message) in [
        (
            image(),
            "the agent does not accept image content (its promptCapabilities.image is false)",
        ),
        (
            embedded(),
            "the agent does not accept resource content (its promptCapabilities.embeddedContext is false)",
        ),
        (
            PromptBlock::Audio(MediaBlock {
                data: "AA==".into(),
                mime_type: "audio/wav".into(),
            }),
            "the agent does not accept audio content (its promptCapabilities.audio is false)",
        ),
    ] {
        let (refused, out) = h.run_turn_with("x", vec![link(), block.clone()], false);
        assert!(
            matches!(&refused, Err(r) if r.code == ErrorCode::InvalidMessage && r.message == message),
            "{:?}",
            refused.as_ref().err().map(|r| &r.message)
        );
        assert!(out.is_empty(), "a refusal changes nothing");
        assert_eq!(h.session.status(), SessionStatus::Ready);
        // A steer into a running turn is checked the same way, before it cancels anything.
        let out = h.start_running_again("busy");
        assert_eq!(methods(&out), ["session/prompt"]);
        let prompt_id = agent_lines(&out)[0]["id"].clone();
        let (refused, out) = h.run_turn_with("steer", vec![block], true);
        assert!(
            matches!(&refused, Err(r) if r.code == ErrorCode::InvalidMessage && r.message == message)
        );
        assert!(methods(&out).is_empty(), "no session/cancel");
        assert_eq!(h.session.status(), SessionStatus::Running);
        h.finish_running(prompt_id);
    }
    // The link alone is fine.
    let (accepted, out) = h.run_turn_with("linked", vec![link()], false);
    assert!(accepted.is_ok());
    assert_eq!(
        prompt_of(&out).map(|p| p[1]["type"].clone()),
        Some(json!("resource_link"))
    );
}

#[test]
fn during_activation_the_check_waits_for_initialize_and_ends_the_turn() {
    let mut h = Harness::new();
    let (accepted, out) = h.run_turn_with("look", vec![image()], false);
    assert!(
        accepted.is_ok(),
        "accepted while the capabilities are unknown"
    );
    assert!(replies(&out).is_empty());
    let agent = h.session.agent_id().unwrap_or(AgentId(0));
    let (_, out) = h.run(|s, ctx, out| s.agent_spawned(ctx, agent, "/w", out));
    assert_eq!(
        replies(&out),
        [json!({"type":"turn_accepted","requestId":"r-1","sessionId":"s-1","turnId":"turn-look"})]
    );
    h.agent_says(json!({"jsonrpc":"2.0","id":0,"result":{"protocolVersion":1,
        "agentCapabilities":{"promptCapabilities":{"embeddedContext":true}}}}));
    let out = h.agent_says(json!({"jsonrpc":"2.0","id":1,"result":{"sessionId":"acp-1"}}));
    assert!(
        methods(&out).is_empty(),
        "no session/prompt: {:?}",
        methods(&out)
    );
    assert_eq!(
        kinds(&out),
        [
            "state:ready",
            "state:running",
            "turn_started",
            "turn_error",
            "state:ready"
        ]
    );
    let error = published(&out)
        .into_iter()
        .find(|event| event["type"] == "turn_error")
        .unwrap_or_default();
    assert_eq!(error["turnId"], "turn-look");
    assert_eq!(error["code"], "INVALID_MESSAGE");
    assert_eq!(
        error["message"],
        "the agent does not accept image content (its promptCapabilities.image is false)"
    );
    // The turn is in history with its content and `error`; the agent stays up for the next.
    assert_eq!(stored_content(&out).len(), 2);
    assert_eq!(h.session.status(), SessionStatus::Ready);
    let (accepted, out) = h.run_turn_with("again", vec![embedded()], false);
    assert!(accepted.is_ok());
    assert_eq!(
        prompt_of(&out).map(|p| p[1]["type"].clone()),
        Some(json!("resource"))
    );
}

#[test]
fn during_activation_allowed_blocks_reach_the_agent() {
    let mut h = Harness::new();
    let (accepted, _) = h.run_turn_with("look", vec![image()], false);
    assert!(accepted.is_ok());
    let agent = h.session.agent_id().unwrap_or(AgentId(0));
    h.run(|s, ctx, out| s.agent_spawned(ctx, agent, "/w", out));
    h.agent_says(json!({"jsonrpc":"2.0","id":0,"result":{"protocolVersion":1,
        "agentCapabilities":{"promptCapabilities":{"image":true}}}}));
    let out = h.agent_says(json!({"jsonrpc":"2.0","id":1,"result":{"sessionId":"acp-1"}}));
    assert_eq!(
        prompt_of(&out),
        Some(json!([
            {"type":"text","text":"look"},
            {"type":"image","data":"AQID","mimeType":"image/png"},
        ]))
    );
}

impl Harness {
    /// From `ready` to a running turn `text` (the agent's next request id is the prompt's).
    fn start_running_again(&mut self, text: &str) -> Vec<SessionOutput> {
        let (accepted, out) = self.run_turn(text, false);
        assert!(accepted.is_ok());
        out
    }

    /// The agent answers the running turn's prompt.
    fn finish_running(&mut self, id: Value) {
        let out =
            self.agent_says(json!({"jsonrpc":"2.0","id":id,"result":{"stopReason":"end_turn"}}));
        assert!(
            kinds(&out).contains(&"turn_complete".to_owned()),
            "{:?}",
            kinds(&out)
        );
    }
}
