//! The harness validates real traffic against `docs/protocol.schema.json` (see
//! `diminuendo_tests::Tapped`): these tests show that the check is live on a real connection.

use std::panic::{catch_unwind, AssertUnwindSafe};

use diminuendo_tests::Client;
use serde_json::json;

use crate::with_each_gateway;

/// The panic message of `run`, which must panic.
fn panic_of(run: impl FnOnce()) -> String {
    match catch_unwind(AssertUnwindSafe(run)) {
        Ok(()) => panic!("expected a schema violation to fail the test"),
        Err(payload) => payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default(),
    }
}

#[test]
fn messages_on_ws_are_validated_against_the_committed_schema() {
    with_each_gateway(&["--dev"], |gateway| {
        // Valid traffic both ways: the greeting, a request, its reply.
        let mut client = Client::dev(gateway);
        let list = client.call(json!({"type": "list_sessions"}));
        assert_eq!(list["type"], "session_list", "{list}");

        // A message the schema rejects fails the test unless it is sent as invalid on purpose.
        let mut careless = Client::dev(gateway);
        let message = panic_of(|| careless.send(&json!({"type": "run_turn", "sessionId": 5})));
        assert!(
            message.contains("violates docs/protocol.schema.json"),
            "{message}"
        );
        let error = client.call_invalid(json!({"type": "run_turn", "sessionId": 5}));
        assert_eq!(error["code"], "INVALID_MESSAGE", "{error}");

        // A message sent as invalid that the schema accepts shows the schema is too loose.
        let mut wrong = Client::dev(gateway);
        let message = panic_of(|| {
            wrong.call_invalid(json!({"type": "list_sessions"}));
        });
        assert!(message.contains("accepts it"), "{message}");
    });
}
