//! Issue 13 item 6, rich prompts, against the echo agent (it takes images and embedded
//! resources, not audio, and answers `blocks` with one line per content block it received):
//! the blocks reach the agent after the text, `turn_started` and history carry them, a kind the
//! agent does not take is refused (at `run_turn` while it runs, as the turn's `turn_error` when
//! the agent was still starting), and a malformed block is named.

use diminuendo_tests::{parse, Client, Gateway};
use serde_json::{json, Value};

use crate::with_each_gateway;

const AUDIO_REFUSED: &str =
    "the agent does not accept audio content (its promptCapabilities.audio is false)";

fn joined_session(gateway: &Gateway) -> (Client, String) {
    let mut client = Client::dev(gateway);
    let id = client.create_session("echo")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    client.join(&id);
    (client, id)
}

fn event<'a>(events: &'a [Value], kind: &str) -> &'a Value {
    events
        .iter()
        .find(|event| event["type"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in {events:?}"))
}

fn audio() -> Value {
    json!([{"type": "audio", "data": "AAAA", "mimeType": "audio/wav"}])
}

#[test]
fn content_blocks_reach_the_agent_and_history_and_a_kind_it_cannot_take_is_refused() {
    with_each_gateway(&["--dev"], |gateway| {
        let (mut client, id) = joined_session(gateway);
        let content = json!([
            {"type": "image", "data": "AQID", "mimeType": "image/png"},
            {"type": "resource_link", "uri": "file:///workspace/a.rs", "name": "a.rs",
             "mimeType": "text/x-rust"},
            {"type": "resource", "resource": {"uri": "file:///workspace/b.txt", "text": "hi",
             "mimeType": "text/plain"}},
        ]);
        // The first turn starts the agent: the check waits for its `initialize`, and passes.
        let accepted = client.call(json!({
            "type": "run_turn", "sessionId": id, "text": "blocks", "content": content
        }));
        assert_eq!(accepted["type"], "turn_accepted", "{accepted}");
        let events: Vec<Value> = client.turn_events(&id).iter().map(|t| parse(t)).collect();
        let started = event(&events, "turn_started");
        assert_eq!(started["content"], content);
        assert_eq!(started["text"], "blocks");
        let answer = "image image/png 3 bytes\nresource_link a.rs file:///workspace/a.rs\n\
                      resource file:///workspace/b.txt text \"hi\"";
        assert_eq!(
            event(&events, "turn_complete")["finalText"],
            answer,
            "{events:?}"
        );

        // The agent runs now: audio, which it does not take, is refused at once, for both
        // `run_turn` and `steer`, and starts nothing.
        for kind in ["run_turn", "steer"] {
            let refused = client.call(json!({
                "type": kind, "sessionId": id, "text": "blocks", "content": audio()
            }));
            assert_eq!(refused["type"], "error", "{refused}");
            assert_eq!(refused["code"], "INVALID_MESSAGE");
            assert_eq!(refused["message"], AUDIO_REFUSED);
        }
        // A malformed block is named.
        let refused = client.call_invalid(json!({
            "type": "run_turn", "sessionId": id, "text": "blocks",
            "content": [{"type": "image", "data": "AQID"}]
        }));
        assert_eq!(refused["code"], "INVALID_MESSAGE", "{refused}");
        assert_eq!(refused["message"], "content[0].mimeType must be a string");

        // A text-only turn still runs, and says it got no blocks.
        client.run_turn(&id, "blocks");
        let events: Vec<Value> = client.turn_events(&id).iter().map(|t| parse(t)).collect();
        assert!(event(&events, "turn_started").get("content").is_none());
        assert_eq!(event(&events, "turn_complete")["finalText"], "no blocks");

        let history = client.call(json!({"type": "get_history", "sessionId": id}));
        let turns = history["turns"].as_array().expect("turns");
        assert_eq!(turns.len(), 2, "{history}");
        assert_eq!(turns[0]["content"], content, "{history}");
        assert_eq!(turns[0]["finalText"], answer);
        assert!(turns[1].get("content").is_none(), "{history}");
    });
}

#[test]
fn a_kind_refused_once_the_agent_started_ends_the_turn_and_the_agent_stays() {
    with_each_gateway(&["--dev"], |gateway| {
        let (mut client, id) = joined_session(gateway);
        // The agent is not running: the turn is accepted, then ends once `initialize` told.
        let accepted = client.call(json!({
            "type": "run_turn", "sessionId": id, "text": "listen", "content": audio()
        }));
        assert_eq!(accepted["type"], "turn_accepted", "{accepted}");
        let events: Vec<Value> = client.turn_events(&id).iter().map(|t| parse(t)).collect();
        assert_eq!(event(&events, "turn_started")["content"], audio());
        let error = event(&events, "turn_error");
        assert_eq!(error["turnId"], accepted["turnId"]);
        assert_eq!(error["code"], "INVALID_MESSAGE");
        assert_eq!(error["message"], AUDIO_REFUSED);
        assert!(
            events.iter().all(|e| e["type"] != "text_delta"),
            "{events:?}"
        );
        assert_eq!(
            events.last().map(|e| e["status"].clone()),
            Some(json!("ready"))
        );

        // The same agent takes the next turn; history keeps the refused one with its content.
        client.run_turn(&id, "blocks");
        let events: Vec<Value> = client.turn_events(&id).iter().map(|t| parse(t)).collect();
        assert_eq!(event(&events, "turn_complete")["finalText"], "no blocks");
        assert!(
            events
                .iter()
                .all(|e| e["type"] != "session_state" || e["status"] != "activating"),
            "no second activation: {events:?}"
        );
        let history = client.call(json!({"type": "get_history", "sessionId": id}));
        let turns = history["turns"].as_array().expect("turns");
        assert_eq!(turns.len(), 2, "{history}");
        assert_eq!(turns[0]["content"], audio());
        assert_eq!(turns[0]["stopReason"], "error");
        assert_eq!(turns[0]["userText"], "listen");
    });
}
