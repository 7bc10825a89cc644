//! The agent sandbox (DESIGN.md, "The agent host"): a hostile agent (`tests/agents/hostile.py`)
//! of tenant `attacker`, on a gateway that holds secrets in its environment and on its command
//! line, tries to read and write what is not its own; every attempt must be refused, while its
//! own workspace, its inherited variable and Unix sockets keep working. Also: /health reports
//! each agent type's sandbox, and a real launcher (bubblewrap) runs the echo agent with the
//! placeholders substituted.

use std::path::{Path, PathBuf};

use diminuendo_core::auth::testing::{claims, sign_hs256};
use diminuendo_tests::{binaries, binary_path, delta_text, parse, unix_now, Client, Gateway};

const SECRET: &str = "a-sandbox-test-secret-that-is-long-enough";

fn client_of(gateway: &Gateway, sub: &str, tenant: &str) -> Client {
    let token = sign_hs256(SECRET, &claims(sub, tenant, "owner", unix_now() + 3600)).expect("sign");
    Client::authenticated(gateway, &token)
}

fn hostile_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("agents/hostile.py")
}

/// The config file of the hostile agent type (and the echo type, confined by default).
fn write_config(dir: &Path) -> PathBuf {
    let config = format!(
        r#"
[agents.hostile]
command = "/usr/bin/python3"
args = [{script:?}]
inherit_env = ["HOSTILE_INHERITED"]
network = "deny"
limits = {{ processes = 32 }}
"#,
        script = hostile_script().display().to_string()
    );
    let path = dir.join("hostile.toml");
    std::fs::write(&path, config).expect("write the config");
    path
}

/// Every attempt the hostile agent makes; each must be refused.
const ATTEMPTS: &[&str] = &[
    "env_reserved",
    "env_not_inherited",
    "proc_parent_environ",
    "proc_parent_cmdline",
    "proc_init_cmdline",
    "proc_self_root_data",
    "list_sessions",
    "list_data_dir",
    "other_session_db",
    "own_tenant_registry",
    "other_tenant_registry",
    "write_data_root",
    "write_other_workspace",
    "write_outside_data",
    "write_tmp",
    "tcp_socket",
    "tcp6_socket",
    "process_limit",
];

const CONTROLS: &[&str] = &[
    "control_inherited",
    "control_workspace",
    "control_proc_self",
    "control_unix_socket",
];

#[test]
fn a_hostile_agent_is_refused_everything_outside_its_workspace() {
    if !Path::new("/usr/bin/python3").is_file() {
        panic!("the hostile agent needs /usr/bin/python3");
    }
    let scratch = tempfile::tempdir().expect("scratch dir");
    let config = write_config(scratch.path());
    let config_text = config.display().to_string();
    for binary in binaries() {
        let gateway = Gateway::start_with_env(
            binary,
            &["--jwt-secret", SECRET, "--config", &config_text],
            &[
                ("DIMINUENDO_SANDBOX_CANARY", "gateway-secret"),
                ("HOSTILE_SECRET", "aws-key-of-the-gateway"),
                ("HOSTILE_INHERITED", "yes"),
            ],
        );
        // A victim tenant with a session that ran a turn: its session.db, its registry.db and
        // its workspace exist.
        let mut victim = client_of(&gateway, "victim", "victim-tenant");
        let victim_session = victim.create_session("echo")["id"]
            .as_str()
            .expect("id")
            .to_owned();
        victim.join(&victim_session);
        victim.run_turn(&victim_session, "my private prompt");
        let victim_events = victim.turn_events(&victim_session);
        assert!(
            delta_text(&victim_events).contains("my private prompt"),
            "{victim_events:?}"
        );

        let mut attacker = client_of(&gateway, "mallory", "attacker");
        let session = attacker.create_session("hostile")["id"]
            .as_str()
            .expect("id")
            .to_owned();
        attacker.join(&session);
        // The databases the agent goes for exist before it tries (storage writes in batches).
        let data = gateway_data_dir(&gateway);
        for file in [
            data.join("sessions")
                .join(&victim_session)
                .join("session.db"),
            data.join("tenants/victim-tenant/registry.db"),
            data.join("tenants/attacker/registry.db"),
        ] {
            wait_for_file(&file);
        }
        let prompt = format!(
            "probe other_session={victim_session} own_tenant=attacker other_tenant=victim-tenant"
        );
        attacker.run_turn(&session, &prompt);
        let events = attacker.turn_events(&session);
        let report = delta_text(&events);
        assert!(
            events
                .iter()
                .any(|text| parse(text)["type"] == "turn_complete"),
            "{events:?}\n{}",
            gateway.log()
        );
        for name in ATTEMPTS {
            let line = report
                .lines()
                .find(|line| line.starts_with(&format!("{name}: ")))
                .unwrap_or_else(|| panic!("{binary}: no {name} in the report:\n{report}"));
            assert!(
                line.starts_with(&format!("{name}: refused")),
                "{binary}: the sandbox let this through: {line}\n{report}"
            );
            // Refused by the sandbox, not missing: EACCES/EPERM (EAGAIN for the fork).
            let expected = if *name == "process_limit" {
                "BlockingIOError"
            } else {
                "PermissionError"
            };
            assert!(
                line.contains(expected),
                "{binary}: not refused for the right reason: {line}\n{report}"
            );
        }
        for name in CONTROLS {
            assert!(
                report.contains(&format!("{name}: ok")),
                "{binary}: the agent could not do what it must: {name}\n{report}"
            );
        }
        // Nothing was written where it was refused.
        assert!(!data.join("hostile.txt").exists());
        assert!(!data
            .join("sessions")
            .join(&victim_session)
            .join("workspace/hostile.txt")
            .exists());
        assert!(!data.join("../hostile-outside.txt").exists());
        assert!(data
            .join("sessions")
            .join(&session)
            .join("workspace/own-file.txt")
            .exists());

        let health = health(&gateway);
        assert_eq!(
            health["agents"]["hostile"]["sandbox"], "landlock",
            "{health}"
        );
        assert_eq!(health["agents"]["echo"]["sandbox"], "landlock", "{health}");
    }
}

/// Waits (bounded) until `path` exists.
fn wait_for_file(path: &Path) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !path.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "{} did not appear",
            path.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

fn health(gateway: &Gateway) -> serde_json::Value {
    let response = gateway.get("/health");
    serde_json::from_slice(&response.body).expect("/health is JSON")
}

/// The gateway's data directory (the harness passes `<dir>/data`).
fn gateway_data_dir(gateway: &Gateway) -> PathBuf {
    let data = gateway.data_dir().join("data");
    assert!(
        data.join("sessions").is_dir(),
        "no {}/sessions",
        data.display()
    );
    data
}

/// A real launcher: bubblewrap runs the echo agent with the workspace bound at /work and the
/// placeholders substituted as whole arguments; the agent answers from inside.
#[test]
fn a_bubblewrap_launcher_runs_the_echo_agent() {
    let bwrap = Path::new("/usr/bin/bwrap");
    assert!(
        bwrap.is_file(),
        "bubblewrap is not installed (scripts/test installs it: apt-get install -y bubblewrap)"
    );
    let scratch = tempfile::tempdir().expect("scratch dir");
    for binary in binaries() {
        let exe = binary_path(binary);
        let config = format!(
            r#"
[agents.boxed]
command = "/usr/bin/bwrap"
sandbox = "launcher"
args = ["--ro-bind", "/usr", "/usr", "--ro-bind-try", "/lib", "/lib", "--ro-bind-try", "/lib64", "/lib64",
        "--ro-bind", {exe:?}, "/agent", "--bind", "{{workspace}}", "/work", "--chdir", "/work",
        "--setenv", "SESSION", "{{session_id}}", "--setenv", "TENANT", "{{tenant_id}}",
        "--unshare-all", "--die-with-parent", "--", "/agent", "echo-agent"]

[agents.open]
command = "/bin/cat"
sandbox = "off"
"#,
            exe = exe.display().to_string()
        );
        let path = scratch.path().join(format!("{binary}.toml"));
        std::fs::write(&path, config).expect("write the config");
        let gateway = Gateway::start(binary, &["--dev", "--config", &path.display().to_string()]);
        let mut client = Client::dev(&gateway);
        let id = client.create_session("boxed")["id"]
            .as_str()
            .expect("id")
            .to_owned();
        client.join(&id);
        client.run_turn(&id, "hello from inside bubblewrap");
        let events = client.turn_events(&id);
        assert!(
            delta_text(&events).contains("hello from inside bubblewrap"),
            "{binary}: {events:?}\n{}",
            gateway.log()
        );
        let health = health(&gateway);
        assert_eq!(health["agents"]["boxed"]["sandbox"], "launcher", "{health}");
        assert_eq!(health["agents"]["open"]["sandbox"], "off", "{health}");
        // An agent type without a sandbox is announced at start.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !gateway
            .log()
            .contains("agents of this type can read and write everything")
        {
            assert!(
                std::time::Instant::now() < deadline,
                "{binary}: no warning about sandbox = \"off\":\n{}",
                gateway.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

/// The parent-death signal: a gateway killed with SIGKILL (no shutdown code runs) takes its
/// agents with it, even one that ignores the end of its stdin.
#[test]
fn no_agent_outlives_a_killed_gateway() {
    let scratch = tempfile::tempdir().expect("scratch dir");
    let config = write_config(scratch.path());
    let config_text = config.display().to_string();
    for binary in binaries() {
        let mut gateway = Gateway::start(binary, &["--dev", "--config", &config_text]);
        let mut client = Client::dev(&gateway);
        let id = client.create_session("hostile")["id"]
            .as_str()
            .expect("id")
            .to_owned();
        client.join(&id);
        client.run_turn(&id, "linger");
        let report = delta_text(&client.turn_events(&id));
        let pid: i32 = report
            .strip_prefix("lingering as ")
            .and_then(|pid| pid.trim().parse().ok())
            .unwrap_or_else(|| panic!("{binary}: {report}"));
        let started = start_time(pid).expect("the agent is running");
        gateway.signal(libc::SIGKILL);
        gateway
            .wait_exit(std::time::Duration::from_secs(10))
            .expect("the gateway exits on SIGKILL");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        // Gone, or a zombie waiting for its new parent: either way no longer running.
        while start_time(pid) == Some(started) && !is_zombie(pid) {
            assert!(
                std::time::Instant::now() < deadline,
                "{binary}: agent {pid} outlived the gateway"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

/// Field 22 of /proc/PID/stat (after the parenthesised command), telling a pid from its reuse.
fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rfind(')')
            .and_then(|end| stat[end + 2..].chars().next())
            == Some('Z')
    })
}

/// The workspace quota: a turn that leaves the workspace over it is followed by a `turn_error`
/// naming the quota (checked before the next prompt), and the agent is stopped.
#[test]
fn a_workspace_over_its_quota_ends_the_next_turn_with_an_error() {
    let scratch = tempfile::tempdir().expect("scratch dir");
    let config = scratch.path().join("quota.toml");
    std::fs::write(
        &config,
        format!(
            "[agents.filler]\ncommand = \"/usr/bin/python3\"\nargs = [{:?}]\nlimits = {{ workspace_bytes = 1048576 }}\n",
            hostile_script().display().to_string()
        ),
    )
    .expect("write the config");
    let config_text = config.display().to_string();
    for binary in binaries() {
        let gateway = Gateway::start(binary, &["--dev", "--config", &config_text]);
        let mut client = Client::dev(&gateway);
        let id = client.create_session("filler")["id"]
            .as_str()
            .expect("id")
            .to_owned();
        client.join(&id);
        client.run_turn(&id, "fill 3000000");
        let first = client.turn_events(&id);
        assert!(
            first.iter().any(|e| parse(e)["type"] == "turn_complete"),
            "{binary}: {first:?}"
        );
        client.run_turn(&id, "fill 1");
        let second = client.turn_events(&id);
        let error = second
            .iter()
            .map(|e| parse(e))
            .find(|e| e["type"] == "turn_error")
            .unwrap_or_else(|| panic!("{binary}: no turn_error in {second:?}"));
        assert_eq!(error["code"], "AGENT_UNAVAILABLE", "{error}");
        let message = error["message"].as_str().unwrap_or_default();
        assert!(message.contains("over its quota"), "{binary}: {message}");
    }
}
