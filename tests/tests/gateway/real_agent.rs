//! A real ACP agent nobody here wrote: the example agent of the TypeScript ACP SDK
//! (`@agentclientprotocol/sdk`, `dist/examples/agent.js`), which `scripts/test` installs and
//! names in `DIMINUENDO_TS_AGENT`. Without the variable the test prints a notice and passes.
//!
//! What that agent does per prompt, one second apart: a text chunk, `tool_call` `call_1` (read,
//! pending), `tool_call_update` `call_1` completed, another text chunk, `tool_call` `call_2`
//! (edit, pending), then `session/request_permission` for `call_2` with options `allow`
//! (`allow_once`) and `reject` (`reject_once`); on `allow`: `tool_call_update` `call_2`
//! completed and a last text chunk, then `end_turn`.

use diminuendo_tests::{delta_text, parse, Client};
use serde_json::{json, Value};

use crate::with_each_gateway;

#[test]
fn the_typescript_sdk_example_agent_runs_a_turn_with_a_permission() {
    let Some(agent) = std::env::var_os("DIMINUENDO_TS_AGENT") else {
        eprintln!(
            "notice: DIMINUENDO_TS_AGENT is not set (scripts/test sets it); \
             the real-agent test is skipped"
        );
        return;
    };
    let agent = std::path::PathBuf::from(agent);
    assert!(
        agent.is_file(),
        "DIMINUENDO_TS_AGENT={} is not a file",
        agent.display()
    );
    let agent_flag = format!("ts=node {}", agent.display());
    with_each_gateway(&["--dev", "--agent", &agent_flag], |gateway| {
        let mut client = Client::dev(gateway);
        let id = client.create_session("ts")["id"]
            .as_str()
            .expect("id")
            .to_owned();
        client.join(&id);
        let turn = client.run_turn(&id, "Please improve the configuration.")["turnId"].clone();

        let before: Vec<Value> = client
            .events_until(&id, |e| e["type"] == "permission_requested")
            .iter()
            .map(|text| parse(text))
            .collect();
        let question = before.last().expect("permission_requested").clone();
        assert_eq!(question["turnId"], turn);
        assert_eq!(question["toolCallId"], "call_2", "{question}");
        assert_eq!(question["title"], "Modifying critical configuration file");
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
        let calls: Vec<(&str, &str)> = before
            .iter()
            .filter(|e| e["type"] == "tool_call")
            .map(|e| {
                (
                    e["toolCallId"].as_str().unwrap_or(""),
                    e["kind"].as_str().unwrap_or(""),
                )
            })
            .collect();
        assert_eq!(calls, vec![("call_1", "read"), ("call_2", "edit")]);
        assert!(
            before.iter().any(|e| e["type"] == "tool_call_update"
                && e["toolCallId"] == "call_1"
                && e["status"] == "completed"),
            "{before:?}"
        );

        let answered = client.call(json!({
            "type": "answer_question", "sessionId": id,
            "questionId": question["questionId"], "optionId": "allow"
        }));
        assert_eq!(answered["type"], "question_answered", "{answered}");
        let after: Vec<String> = client.turn_events(&id);
        let after_parsed: Vec<Value> = after.iter().map(|text| parse(text)).collect();
        let resolved = after_parsed
            .iter()
            .find(|e| e["type"] == "permission_resolved")
            .unwrap_or_else(|| panic!("no permission_resolved: {after_parsed:?}"));
        assert_eq!(resolved["optionId"], "allow");
        assert_eq!(resolved["questionId"], question["questionId"]);
        assert!(
            after_parsed.iter().any(|e| e["type"] == "tool_call_update"
                && e["toolCallId"] == "call_2"
                && e["status"] == "completed"),
            "{after_parsed:?}"
        );
        let complete = after_parsed
            .iter()
            .find(|e| e["type"] == "turn_complete")
            .unwrap_or_else(|| panic!("no turn_complete: {after_parsed:?}"));
        assert_eq!(complete["stopReason"], "end_turn", "{complete}");
        let text = format!(
            "{}{}",
            delta_text(&before.iter().map(Value::to_string).collect::<Vec<String>>()),
            delta_text(&after)
        );
        assert!(text.starts_with("I'll help you with that."), "{text}");
        assert!(
            text.contains(" Now I understand the project structure."),
            "{text}"
        );
        assert!(text.ends_with("The changes have been applied."), "{text}");
        assert_eq!(complete["finalText"], text.as_str());
        assert_eq!(after_parsed.last().expect("state")["status"], "ready");
    });
}
