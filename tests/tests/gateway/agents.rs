//! Driving agents (PROTOCOL sections 5, 6 and 9) with the bundled echo agent: streaming,
//! permissions, stop and steer, agents that exit or break the protocol, an agent that cannot
//! start, and every kind of update.

use diminuendo_tests::{assert_gap_free, delta_text, parse, types, Client, Gateway};
use serde_json::{json, Value};

use crate::with_each_gateway;

/// A dev client with a new echo session it has joined; returns the session id.
fn joined_session(gateway: &Gateway, agent_type: &str) -> (Client, String) {
    let mut client = Client::dev(gateway);
    let id = client.create_session(agent_type)["id"]
        .as_str()
        .expect("id")
        .to_owned();
    client.join(&id);
    (client, id)
}

fn parsed(events: &[String]) -> Vec<Value> {
    events.iter().map(|text| parse(text)).collect()
}

fn find<'a>(events: &'a [Value], kind: &str) -> &'a Value {
    events
        .iter()
        .find(|event| event["type"] == kind)
        .unwrap_or_else(|| panic!("no {kind} among {events:?}"))
}

/// The text the echo agent's `stream N SIZE` produces: byte `i` is `'a' + i % 26`.
fn stream_text(bytes: usize) -> String {
    (0..bytes)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect()
}

fn check_stream(gateway: &Gateway, coalesced: bool) {
    let (mut client, id) = joined_session(gateway, "echo");
    client.run_turn(&id, "stream 200 64");
    let events = client.turn_events(&id);
    assert_gap_free(&events, 1);
    let expected = stream_text(200 * 64);
    assert_eq!(delta_text(&events), expected);
    let deltas = types(&events).iter().filter(|k| *k == "text_delta").count();
    if coalesced {
        assert!((1..=200).contains(&deltas), "{deltas} deltas");
    } else {
        assert_eq!(deltas, 200, "uncoalesced deltas are one per chunk");
    }
    let events = parsed(&events);
    let complete = find(&events, "turn_complete");
    assert_eq!(complete["finalText"], expected.as_str());
    assert_eq!(complete["stopReason"], "end_turn");
}

#[test]
fn streamed_text_arrives_whole_with_coalescing() {
    with_each_gateway(&["--dev"], |gateway| check_stream(gateway, true));
}

#[test]
fn streamed_text_arrives_whole_without_coalescing() {
    with_each_gateway(&["--dev", "--coalesce-deltas", "false"], |gateway| {
        check_stream(gateway, false)
    });
}

#[test]
fn a_permission_is_answered_once_by_the_first_client() {
    with_each_gateway(&["--dev"], |gateway| {
        let (mut first, id) = joined_session(gateway, "echo");
        let mut second = Client::dev(gateway);
        second.join(&id);
        first.run_turn(&id, "permission");
        let asked = |client: &mut Client| {
            let events = client.events_until(&id, |e| e["type"] == "permission_requested");
            let events = parsed(&events);
            let tool = find(&events, "tool_call").clone();
            assert_eq!(tool["kind"], "edit", "{tool}");
            let question = events.last().expect("permission_requested").clone();
            assert_eq!(question["toolCallId"], tool["toolCallId"], "{question}");
            assert!(question["title"].is_string(), "{question}");
            let options: Vec<(&str, &str)> = question["options"]
                .as_array()
                .expect("options")
                .iter()
                .map(|o| {
                    (
                        o["optionId"].as_str().unwrap_or(""),
                        o["kind"].as_str().unwrap_or(""),
                    )
                })
                .collect();
            assert_eq!(
                options,
                vec![("allow", "allow_once"), ("reject", "reject_once")]
            );
            question
        };
        let question = asked(&mut first);
        assert_eq!(asked(&mut second), question);
        let question_id = question["questionId"].as_str().expect("questionId");
        // The session waits for the answer.
        let waiting = parse(&first.events_until(&id, |e| e["type"] == "session_state")[0]);
        assert_eq!(waiting["status"], "waiting", "{waiting}");

        // Both answer at once; the gateway takes the first to arrive.
        first.send(&json!({
            "type": "answer_question", "requestId": "a-1", "sessionId": id,
            "questionId": question_id, "optionId": "allow"
        }));
        second.send(&json!({
            "type": "answer_question", "requestId": "a-2", "sessionId": id,
            "questionId": question_id, "optionId": "reject"
        }));
        let replies = [first.reply_to("a-1"), second.reply_to("a-2")];
        let winners: Vec<&Value> = replies
            .iter()
            .filter(|r| r["type"] == "question_answered")
            .collect();
        assert_eq!(winners.len(), 1, "{replies:?}");
        let loser = replies
            .iter()
            .find(|r| r["type"] == "error")
            .unwrap_or_else(|| panic!("{replies:?}"));
        assert_eq!(loser["code"], "INVALID_STATE", "{loser}");
        assert_eq!(winners[0]["questionId"], question_id);
        let chosen = if replies[0]["type"] == "question_answered" {
            "allow"
        } else {
            "reject"
        };

        for client in [&mut first, &mut second] {
            let events = parsed(&client.turn_events(&id));
            let resolved: Vec<&Value> = events
                .iter()
                .filter(|e| e["type"] == "permission_resolved")
                .collect();
            assert_eq!(resolved.len(), 1, "{events:?}");
            assert_eq!(resolved[0]["questionId"], question_id);
            assert_eq!(resolved[0]["optionId"], chosen);
            assert_eq!(resolved[0]["userId"], "dev-user-001");
            let complete = find(&events, "turn_complete");
            assert_eq!(complete["finalText"], format!("permission: {chosen}"));
            assert_eq!(complete["stopReason"], "end_turn");
        }
        // Nothing pending any more.
        let error = first.call(json!({
            "type": "answer_question", "sessionId": id, "questionId": question_id, "optionId": "allow"
        }));
        assert_eq!(error["code"], "INVALID_STATE", "{error}");
    });
}

#[test]
fn stop_turn_cancels_a_hanging_turn() {
    with_each_gateway(&["--dev"], |gateway| {
        let (mut client, id) = joined_session(gateway, "echo");
        let turn_id = client.run_turn(&id, "hang")["turnId"].clone();
        client.events_until(&id, |e| e["type"] == "turn_started");
        let stopping = client.call(json!({"type": "stop_turn", "sessionId": id}));
        assert_eq!(stopping["type"], "turn_stopping", "{stopping}");
        assert_eq!(stopping["turnId"], turn_id);
        assert_eq!(stopping["sessionId"], id.as_str());
        let events = parsed(&client.turn_events(&id));
        let complete = find(&events, "turn_complete");
        assert_eq!(complete["turnId"], turn_id);
        assert_eq!(complete["stopReason"], "cancelled");
        assert_eq!(events.last().expect("state")["status"], "ready");
    });
}

#[test]
fn steer_cancels_the_running_turn_and_prompts_the_new_text() {
    with_each_gateway(&["--dev"], |gateway| {
        let (mut client, id) = joined_session(gateway, "echo");
        let first_turn = client.run_turn(&id, "hang")["turnId"].clone();
        client.events_until(&id, |e| e["type"] == "turn_started");
        let accepted =
            client.call(json!({"type": "steer", "sessionId": id, "text": "steered text"}));
        assert_eq!(accepted["type"], "turn_accepted", "{accepted}");
        let steered_turn = accepted["turnId"].clone();
        assert_ne!(steered_turn, first_turn);

        let first = parsed(&client.turn_events(&id));
        let complete = find(&first, "turn_complete");
        assert_eq!(complete["turnId"], first_turn);
        assert_eq!(complete["stopReason"], "cancelled");
        let second = parsed(&client.turn_events(&id));
        let started = find(&second, "turn_started");
        assert_eq!(started["turnId"], steered_turn);
        assert_eq!(started["text"], "steered text");
        let complete = find(&second, "turn_complete");
        assert_eq!(complete["turnId"], steered_turn);
        assert_eq!(complete["stopReason"], "end_turn");
        assert_eq!(complete["finalText"], "steered text");
    });
}

/// A turn that broke the agent ends with `turn_error` then `session_state` `error`; the next
/// `run_turn` starts a fresh process.
fn expect_broken_then_recovered(client: &mut Client, id: &str) {
    let events = parsed(&client.turn_events(id));
    let error = find(&events, "turn_error");
    assert!(
        error["code"].is_string() && error["message"].is_string(),
        "{error}"
    );
    let last = events.last().expect("state");
    assert_eq!(last["type"], "session_state");
    assert_eq!(last["status"], "error", "{last}");
    assert_eq!(
        events
            .iter()
            .filter(|e| e["type"] == "turn_complete")
            .count(),
        0,
        "{events:?}"
    );

    client.run_turn(id, "alive again");
    let events = parsed(&client.turn_events(id));
    assert_eq!(events[0]["status"], "activating", "{events:?}");
    assert_eq!(events[0]["previous"], "error", "{events:?}");
    let complete = find(&events, "turn_complete");
    assert_eq!(complete["finalText"], "alive again");
}

#[test]
fn an_agent_that_exits_mid_turn_fails_the_turn_and_is_restarted() {
    with_each_gateway(&["--dev"], |gateway| {
        let (mut client, id) = joined_session(gateway, "echo");
        client.run_turn(&id, "exit");
        expect_broken_then_recovered(&mut client, &id);
        let metrics = gateway.metrics();
        assert_eq!(metrics.get("diminuendo_agents_started_total"), Some(&2.0));
    });
}

#[test]
fn an_agent_that_writes_garbage_fails_the_turn_and_is_restarted() {
    with_each_gateway(&["--dev"], |gateway| {
        let (mut client, id) = joined_session(gateway, "echo");
        client.run_turn(&id, "garbage");
        expect_broken_then_recovered(&mut client, &id);
    });
}

#[test]
fn an_agent_whose_command_does_not_exist_is_unavailable() {
    with_each_gateway(
        &["--dev", "--agent", "broken=/nonexistent/diminuendo/cmd"],
        |gateway| {
            let (mut client, id) = joined_session(gateway, "broken");
            let error = client.call(json!({"type": "run_turn", "sessionId": id, "text": "hi"}));
            assert_eq!(error["type"], "error", "{error}");
            assert_eq!(error["code"], "AGENT_UNAVAILABLE", "{error}");
            assert!(
                !error["message"]
                    .as_str()
                    .unwrap_or("")
                    .contains("/nonexistent"),
                "{error}"
            );
            // The gateway is fine; the built-in echo agent still works.
            let (mut echo, echo_id) = joined_session(gateway, "echo");
            echo.run_turn(&echo_id, "fine");
            assert_eq!(delta_text(&echo.turn_events(&echo_id)), "fine");
            // Trying again gives the same answer.
            let error = client.call(json!({"type": "run_turn", "sessionId": id, "text": "hi"}));
            assert_eq!(error["code"], "AGENT_UNAVAILABLE", "{error}");
        },
    );
}

#[test]
fn every_kind_of_update_becomes_an_event() {
    with_each_gateway(&["--dev"], |gateway| {
        let (mut client, id) = joined_session(gateway, "echo");

        let turn = client.run_turn(&id, "tools")["turnId"].clone();
        let events = parsed(&client.turn_events(&id));
        let call = find(&events, "tool_call");
        assert_eq!(call["turnId"], turn);
        assert_eq!(call["kind"], "read");
        assert_eq!(call["status"], "pending");
        assert!(call["title"].is_string(), "{call}");
        let tool_id = call["toolCallId"].as_str().expect("toolCallId");
        let updates: Vec<&Value> = events
            .iter()
            .filter(|e| e["type"] == "tool_call_update")
            .collect();
        assert_eq!(updates.len(), 2, "{events:?}");
        assert!(updates
            .iter()
            .all(|u| u["toolCallId"] == tool_id && u["turnId"] == turn));
        assert_eq!(updates[0]["status"], "in_progress");
        assert_eq!(updates[1]["status"], "completed");
        assert!(
            updates[1]["content"].to_string().contains("# Echo"),
            "{}",
            updates[1]
        );

        client.run_turn(&id, "plan");
        let events = parsed(&client.turn_events(&id));
        let plan = find(&events, "plan");
        assert_eq!(plan["entries"].as_array().map(Vec::len), Some(3), "{plan}");

        client.run_turn(&id, "think deeply");
        let events = client.turn_events(&id);
        let thinking: String = parsed(&events)
            .iter()
            .filter(|e| e["type"] == "thinking_delta")
            .map(|e| e["text"].as_str().unwrap_or("").to_owned())
            .collect();
        assert_eq!(thinking, "deeply");
        assert_eq!(delta_text(&events), "deeply");

        client.run_turn(&id, "usage");
        let events = parsed(&client.turn_events(&id));
        let usage = find(&events, "usage");
        assert_eq!(usage["used"], 1234, "{usage}");
        assert_eq!(usage["size"], 200_000, "{usage}");
        assert!(usage["cost"].is_object(), "{usage}");

        client.run_turn(&id, "unknown");
        let events = parsed(&client.turn_events(&id));
        let update = find(&events, "agent_update");
        assert!(
            update["update"].to_string().contains("echo_unknown_kind"),
            "{update}"
        );
        assert_eq!(find(&events, "turn_complete")["stopReason"], "end_turn");

        // History keeps the tool calls and the usage.
        let history = client.call(json!({"type": "get_history", "sessionId": id}));
        let turns = history["turns"].as_array().expect("turns");
        assert_eq!(turns.len(), 5, "{history}");
        assert!(
            turns
                .iter()
                .any(|t| t["toolCalls"].as_array().is_some_and(|c| !c.is_empty())),
            "{history}"
        );
        assert!(turns.iter().any(|t| t["usage"].is_object()), "{history}");
    });
}
