//! Issue 13's snapshot items against the echo agent: tool calls in full (content, diffs,
//! terminals, locations, raw input and output; history at their latest state), the agent's
//! controls (`set_mode`, `set_config_option` and the typed mode, commands and option events),
//! and the picture of a session a join gives.

use diminuendo_tests::{parse, Client, Gateway};
use serde_json::{json, Value};

use crate::with_each_gateway;

fn joined_session(gateway: &Gateway) -> (Client, String) {
    let mut client = Client::dev(gateway);
    let id = client.create_session("echo")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    client.join(&id);
    (client, id)
}

fn parsed(events: &[String]) -> Vec<Value> {
    events.iter().map(|text| parse(text)).collect()
}

fn of_type<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|event| event["type"] == kind)
        .collect()
}

#[test]
fn tool_calls_arrive_in_full_and_history_keeps_their_latest_state() {
    with_each_gateway(&["--dev"], |gateway| {
        let (mut client, id) = joined_session(gateway);
        let turn = client.run_turn(&id, "diff")["turnId"].clone();
        let events = parsed(&client.turn_events(&id));
        let diff = json!({"type":"diff","path":"echo.txt","oldText":"old\n","newText":"new\n"});
        let calls = of_type(&events, "tool_call");
        assert_eq!(calls.len(), 1, "{events:?}");
        let call = calls[0];
        assert_eq!(call["turnId"], turn);
        assert_eq!(call["kind"], "edit");
        assert_eq!(call["status"], "in_progress");
        assert_eq!(call["title"], "Edit echo.txt");
        assert_eq!(call["locations"], json!([{"line":1,"path":"echo.txt"}]));
        assert_eq!(call["content"], json!([diff]));
        assert_eq!(call["input"], json!({"newText":"new\n","path":"echo.txt"}));
        assert!(call.get("truncated").is_none(), "{call}");
        let updates = of_type(&events, "tool_call_update");
        assert_eq!(updates.len(), 1, "{events:?}");
        let update = updates[0];
        assert_eq!(update["status"], "completed");
        assert_eq!(
            update["content"],
            json!([diff, {"terminalId":"echo-terminal","type":"terminal"}])
        );
        assert_eq!(update["rawOutput"], json!({"written": 4}));

        // `tools`: three states of one call; history keeps the last.
        client.run_turn(&id, "tools");
        client.turn_events(&id);
        let history = client.call(json!({"type": "get_history", "sessionId": id}));
        let turns = history["turns"].as_array().expect("turns");
        assert_eq!(turns.len(), 2, "{history}");
        let edit = &turns[0]["toolCalls"];
        assert_eq!(edit.as_array().map(Vec::len), Some(1), "{history}");
        assert_eq!(edit[0]["status"], "completed");
        assert_eq!(edit[0]["kind"], "edit");
        assert_eq!(edit[0]["title"], "Edit echo.txt");
        assert_eq!(edit[0]["content"], update["content"]);
        assert_eq!(edit[0]["locations"], call["locations"]);
        assert_eq!(edit[0]["input"], call["input"]);
        assert_eq!(edit[0]["rawOutput"], json!({"written": 4}));
        let read = &turns[1]["toolCalls"];
        assert_eq!(read.as_array().map(Vec::len), Some(1), "{history}");
        assert_eq!(read[0]["status"], "completed", "{history}");
        assert!(
            read[0]["content"].to_string().contains("# Echo"),
            "{history}"
        );
        assert_eq!(read[0]["rawOutput"], json!({"bytes": 7}));
    });
}

#[test]
fn set_mode_and_set_config_option_answer_with_the_agents_result() {
    with_each_gateway(&["--dev"], |gateway| {
        let (mut client, id) = joined_session(gateway);
        // No agent yet: INVALID_STATE.
        let refused = client.call(json!({"type":"set_mode","sessionId":id,"modeId":"code"}));
        assert_eq!(refused["type"], "error", "{refused}");
        assert_eq!(refused["code"], "INVALID_STATE", "{refused}");
        let bad = client.call_invalid(
            json!({"type":"set_config_option","sessionId":id,"configId":"speed","value":3}),
        );
        assert_eq!(bad["code"], "INVALID_MESSAGE", "{bad}");
        assert_eq!(bad["message"], "value must be a string or a boolean");

        client.run_turn(&id, "hello");
        client.turn_events(&id);
        let set = client.call(json!({"type":"set_mode","sessionId":id,"modeId":"code"}));
        assert_eq!(set["type"], "mode_set", "{set}");
        assert_eq!(set["sessionId"], id.as_str());
        assert_eq!(set["modeId"], "code");
        let events = parsed(&client.events_until(&id, |e| e["type"] == "current_mode_update"));
        assert_eq!(
            events.last().map(|e| e["currentModeId"].clone()),
            Some(json!("code"))
        );

        let refused = client.call(json!({"type":"set_mode","sessionId":id,"modeId":"yolo"}));
        assert_eq!(refused["code"], "AGENT_REFUSED", "{refused}");
        assert!(
            refused["message"]
                .as_str()
                .is_some_and(|m| m.contains("yolo")),
            "{refused}"
        );

        let set = client.call(
            json!({"type":"set_config_option","sessionId":id,"configId":"speed","value":"fast"}),
        );
        assert_eq!(set["type"], "config_option_set", "{set}");
        assert_eq!(set["configOptions"][0]["id"], "speed");
        assert_eq!(set["configOptions"][0]["currentValue"], "fast");
        let events = parsed(&client.events_until(&id, |e| e["type"] == "config_option_update"));
        assert_eq!(
            events.last().map(|e| e["configOptions"].clone()),
            Some(set["configOptions"].clone())
        );
        let refused = client.call(
            json!({"type":"set_config_option","sessionId":id,"configId":"speed","value":true}),
        );
        assert_eq!(refused["code"], "AGENT_REFUSED", "{refused}");
    });
}

#[test]
fn the_agents_commands_mode_and_options_are_typed_events() {
    with_each_gateway(&["--dev"], |gateway| {
        let (mut client, id) = joined_session(gateway);
        let turn = client.run_turn(&id, "controls")["turnId"].clone();
        let events = parsed(&client.turn_events(&id));
        assert!(of_type(&events, "agent_update").is_empty(), "{events:?}");
        let commands = of_type(&events, "available_commands_update");
        assert_eq!(commands.len(), 1, "{events:?}");
        assert_eq!(commands[0]["turnId"], turn);
        assert_eq!(
            commands[0]["availableCommands"],
            json!([
                {"description":"Say what I remember","name":"recall"},
                {"description":"Stream text","input":{"hint":"N SIZE"},"name":"stream"}
            ])
        );
        let mode = of_type(&events, "current_mode_update");
        assert_eq!(mode.len(), 1, "{events:?}");
        assert_eq!(mode[0]["currentModeId"], "code");
        let options = of_type(&events, "config_option_update");
        assert_eq!(options.len(), 1, "{events:?}");
        assert_eq!(options[0]["configOptions"][0]["currentValue"], "fast");
    });
}

#[test]
fn a_join_mid_turn_gets_the_picture_of_the_session() {
    with_each_gateway(&["--dev"], |gateway| {
        let (mut first, id) = joined_session(gateway);
        // Nothing runs yet: no turn, no questions, no agent.
        let mut second = Client::dev(gateway);
        let joined = second.join(&id);
        for absent in ["turn", "questions", "agent"] {
            assert!(joined.get(absent).is_none(), "{joined}");
        }

        // A turn whose first chunk arrived and that then waits a minute.
        let accepted = first.run_turn(&id, "slow 3 60000");
        first.events_until(&id, |e| e["type"] == "text_delta");
        let joined = second.join(&id);
        let turn = &joined["turn"];
        assert_eq!(turn["turnId"], accepted["turnId"], "{joined}");
        assert_eq!(turn["text"], "slow 3 60000");
        assert!(turn["userId"].is_string(), "{joined}");
        assert!(
            turn["startedAt"].as_i64().is_some_and(|at| at > 0),
            "{joined}"
        );
        assert_eq!(turn["agentText"], "chunk 1 of 3\n");
        let agent = &joined["agent"];
        assert_eq!(agent["currentModeId"], "ask", "{joined}");
        assert_eq!(
            agent["availableModes"],
            json!([{"id":"ask","name":"Ask"},{"id":"code","name":"Code"}])
        );
        assert_eq!(agent["configOptions"][0]["id"], "speed");
        assert!(joined.get("questions").is_none(), "{joined}");
        first.call(json!({"type":"stop_turn","sessionId":id}));
        first.turn_events(&id);

        // A question waits for its answer: the join shows it.
        first.run_turn(&id, "permission");
        let asked = parsed(&first.events_until(&id, |e| e["type"] == "permission_requested"));
        let asked = asked.last().cloned().unwrap_or_default();
        let joined = second.join(&id);
        let questions = joined["questions"].as_array().expect("questions");
        assert_eq!(questions.len(), 1, "{joined}");
        assert_eq!(questions[0]["questionId"], asked["questionId"]);
        assert_eq!(questions[0]["toolCallId"], asked["toolCallId"]);
        assert_eq!(questions[0]["title"], asked["title"]);
        assert_eq!(questions[0]["options"], asked["options"]);
        assert_eq!(joined["turn"]["text"], "permission");
        let question_id = asked["questionId"].as_str().unwrap_or_default();
        let answered = first.call(json!({"type":"answer_question","sessionId":id,
            "questionId":question_id,"optionId":"allow"}));
        assert_eq!(answered["type"], "question_answered", "{answered}");
        first.turn_events(&id);
        let joined = second.join(&id);
        assert!(joined.get("turn").is_none(), "{joined}");
        assert!(joined.get("questions").is_none(), "{joined}");
        assert_eq!(joined["agent"]["currentModeId"], "ask", "{joined}");
    });
}
