//! The session's modes and configuration option (README.md, "Modes and options"): advertised
//! when a session opens, changed by `session/set_mode` and `session/set_config_option`, and
//! announced by the `controls` command.

use serde_json::{json, Value};

/// The modes every session offers: id and name.
pub(crate) const MODES: [(&str, &str); 2] = [("ask", "Ask"), ("code", "Code")];
/// The values of the `speed` option.
pub(crate) const SPEEDS: [(&str, &str); 2] = [("normal", "Normal"), ("fast", "Fast")];

/// A session's mode and its `speed` option.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Controls {
    pub(crate) mode: String,
    pub(crate) speed: String,
}

impl Default for Controls {
    fn default() -> Self {
        Controls {
            mode: "ask".into(),
            speed: "normal".into(),
        }
    }
}

impl Controls {
    /// ACP `SessionModeState`.
    pub(crate) fn modes(&self) -> Value {
        let available: Vec<Value> = MODES
            .iter()
            .map(|(id, name)| json!({"id": id, "name": name}))
            .collect();
        json!({"currentModeId": self.mode, "availableModes": available})
    }

    /// ACP `SessionConfigOption`s: one `select`, `speed`.
    pub(crate) fn config_options(&self) -> Value {
        let options: Vec<Value> = SPEEDS
            .iter()
            .map(|(value, name)| json!({"value": value, "name": name}))
            .collect();
        json!([{"id": "speed", "name": "Speed", "type": "select", "currentValue": self.speed, "options": options}])
    }

    /// The fields a `session/new`, `session/load` or `session/resume` answer carries.
    pub(crate) fn session_result(&self, mut result: Value) -> Value {
        if let Some(object) = result.as_object_mut() {
            object.insert("modes".into(), self.modes());
            object.insert("configOptions".into(), self.config_options());
        }
        result
    }

    /// `session/set_mode {modeId}`: `Err` with the error message for a mode it does not have.
    pub(crate) fn set_mode(&mut self, params: &Value) -> Result<(), String> {
        let mode = params
            .get("modeId")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !MODES.iter().any(|(id, _)| *id == mode) {
            return Err(format!("Invalid params: no mode {mode:?}"));
        }
        mode.clone_into(&mut self.mode);
        Ok(())
    }

    /// `session/set_config_option {configId, value}`: `Ok` with every option now, `Err` with the
    /// error message for another option or value.
    pub(crate) fn set_config_option(&mut self, params: &Value) -> Result<Value, String> {
        let config = params
            .get("configId")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if config != "speed" {
            return Err(format!("Invalid params: no option {config:?}"));
        }
        let value = params
            .get("value")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !SPEEDS.iter().any(|(id, _)| *id == value) {
            return Err(format!("Invalid params: no speed {value:?}"));
        }
        value.clone_into(&mut self.speed);
        Ok(json!({"configOptions": self.config_options()}))
    }

    /// The `controls` command: the session switches to mode `code` and speed `fast`, and the
    /// updates that announce it, with the commands it offers.
    pub(crate) fn announce(&mut self) -> Vec<Value> {
        self.mode = "code".into();
        self.speed = "fast".into();
        vec![
            json!({
                "sessionUpdate": "available_commands_update",
                "availableCommands": [
                    {"name": "recall", "description": "Say what I remember"},
                    {"name": "stream", "description": "Stream text", "input": {"hint": "N SIZE"}},
                ],
            }),
            json!({"sessionUpdate": "current_mode_update", "currentModeId": self.mode}),
            json!({"sessionUpdate": "config_option_update", "configOptions": self.config_options()}),
        ]
    }
}
