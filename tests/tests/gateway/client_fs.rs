//! The client file system (issue 13 item 8) against every binary: an agent type with `fs = true`
//! (`tests/agents/fs_agent.py`, sandboxed as usual) is offered `fs.readTextFile` and
//! `fs.writeTextFile`, reads and writes files of its workspace through the gateway, gets
//! JSON-RPC errors for everything outside it (an absolute path elsewhere, `..`, symlinks leading
//! out), and each write is published as `file_changed`. A type without `fs` is offered nothing
//! and refused.

use std::path::{Path, PathBuf};

use diminuendo_tests::{binaries, delta_text, parse, Client, Gateway};

fn fs_agent_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("agents/fs_agent.py")
}

fn write_config(dir: &Path) -> PathBuf {
    let config = format!(
        r#"
[agents.files]
command = "/usr/bin/python3"
args = [{script:?}]
fs = true

[agents.nofs]
command = "/usr/bin/python3"
args = [{script:?}]
"#,
        script = fs_agent_script().display().to_string()
    );
    let path = dir.join("fs.toml");
    std::fs::write(&path, config).expect("write the config");
    path
}

/// Creates a session of `agent_type`, joins it, prepares its workspace with `prepare`, runs one
/// turn with `prompt`; returns the agent's report and the turn's events.
fn run(
    gateway: &Gateway,
    agent_type: &str,
    prepare: impl Fn(&Path),
    prompt: &str,
) -> (String, Vec<serde_json::Value>, PathBuf) {
    let mut client = Client::dev(gateway);
    let session = client.create_session(agent_type)["id"]
        .as_str()
        .expect("id")
        .to_owned();
    client.join(&session);
    let workspace = gateway
        .data_dir()
        .join("data/sessions")
        .join(&session)
        .join("workspace");
    std::fs::create_dir_all(&workspace).expect("the workspace");
    prepare(&workspace);
    client.run_turn(&session, prompt);
    let events = client.turn_events(&session);
    let report = delta_text(&events);
    let events = events.iter().map(|text| parse(text)).collect();
    (report, events, workspace)
}

fn line<'a>(report: &'a str, prefix: &str) -> &'a str {
    report
        .lines()
        .find(|line| line.starts_with(prefix))
        .unwrap_or_else(|| panic!("no `{prefix}` in the report:\n{report}"))
}

#[test]
fn an_fs_agent_reads_and_writes_its_workspace_only_and_writes_are_published() {
    if !Path::new("/usr/bin/python3").is_file() {
        panic!("the fs agent needs /usr/bin/python3");
    }
    let scratch = tempfile::tempdir().expect("scratch dir");
    let config = write_config(scratch.path());
    let config_text = config.display().to_string();
    // Outside every workspace (and the data directory): must stay untouched and unread.
    let outside = scratch.path().join("outside");
    std::fs::create_dir(&outside).expect("a directory outside");
    let secret = outside.join("secret.txt");
    std::fs::write(&secret, "the gateway's secret").expect("a file outside");

    for binary in binaries() {
        let gateway = Gateway::start(binary, &["--dev", "--config", &config_text]);
        let prompt = [
            "read notes.txt 2 1".to_owned(),
            "write out.txt hello from the agent".to_owned(),
            "read out.txt".to_owned(),
            format!("read {}", secret.display()),
            format!("write {}", secret.display()),
            "read ../../../../outside/secret.txt".to_owned(),
            "read escape".to_owned(),
            "write escape pwned".to_owned(),
            "write dirlink/new.txt pwned".to_owned(),
            "read missing.txt".to_owned(),
        ]
        .join("\n");
        let prepare = |workspace: &Path| {
            std::fs::write(workspace.join("notes.txt"), "one\ntwo\nthree\n").expect("notes");
            std::os::unix::fs::symlink(&secret, workspace.join("escape")).expect("a symlink");
            std::os::unix::fs::symlink(&outside, workspace.join("dirlink")).expect("a symlink");
        };
        let (report, events, workspace) = run(&gateway, "files", prepare, &prompt);
        let context = format!("{binary}:\n{report}\n{events:?}\n{}", gateway.log());

        assert_eq!(
            line(&report, "capabilities"),
            "capabilities: read=True write=True",
            "{context}"
        );
        // Served from the workspace, with line/limit.
        assert_eq!(
            line(&report, "read notes.txt"),
            r#"read notes.txt: ok "two\n""#,
            "{context}"
        );
        assert_eq!(
            line(&report, "write out.txt"),
            "write out.txt: ok",
            "{context}"
        );
        assert_eq!(
            line(&report, "read out.txt"),
            r#"read out.txt: ok "hello from the agent""#,
            "{context}"
        );
        assert_eq!(
            std::fs::read_to_string(workspace.join("out.txt")).expect("written"),
            "hello from the agent"
        );
        // Everything outside answers a JSON-RPC error.
        let outside_error = "error -32602 the path is outside the session's workspace";
        for prefix in [
            format!("read {}", secret.display()),
            format!("write {}", secret.display()),
            "read ../../../../outside/secret.txt".to_owned(),
            "read escape".to_owned(),
            "write escape".to_owned(),
            "write dirlink/new.txt".to_owned(),
        ] {
            assert_eq!(
                line(&report, &format!("{prefix}:")),
                format!("{prefix}: {outside_error}"),
                "{context}"
            );
        }
        assert_eq!(
            line(&report, "read missing.txt"),
            "read missing.txt: error -32002 no such file",
            "{context}"
        );
        assert_eq!(
            std::fs::read_to_string(&secret).expect("still there"),
            "the gateway's secret"
        );
        assert!(!outside.join("new.txt").exists(), "{context}");

        // One file_changed, for the one write that happened, in the turn.
        let changed: Vec<&serde_json::Value> = events
            .iter()
            .filter(|event| event["type"] == "file_changed")
            .collect();
        assert_eq!(changed.len(), 1, "{context}");
        assert_eq!(changed[0]["path"], "out.txt", "{context}");
        let turn_id = events
            .iter()
            .find(|event| event["type"] == "turn_started")
            .map(|event| event["turnId"].clone())
            .expect("turn_started");
        assert_eq!(changed[0]["turnId"], turn_id, "{context}");
        assert!(
            events.iter().any(|event| event["type"] == "turn_complete"),
            "{context}"
        );

        // Without `fs`: not offered, and refused by the ACP client itself.
        let (report, events, workspace) =
            run(&gateway, "nofs", |_| {}, "write out.txt not allowed");
        let context = format!("{binary}:\n{report}\n{events:?}");
        assert_eq!(
            line(&report, "capabilities"),
            "capabilities: read=False write=False",
            "{context}"
        );
        assert!(
            line(&report, "write out.txt").starts_with("write out.txt: error -32601"),
            "{context}"
        );
        assert!(!workspace.join("out.txt").exists(), "{context}");
        assert!(
            events.iter().all(|event| event["type"] != "file_changed"),
            "{context}"
        );
    }
}
