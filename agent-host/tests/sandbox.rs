//! The sandbox of an agent process, against real processes: the clean environment, placeholders,
//! Landlock (fully enforced, or the agent does not start), no capabilities and no_new_privs, the
//! network filter, and the resource limits.

mod support;

use diminuendo_agent_host::sandbox::landlock_abi;
use diminuendo_agent_host::{AgentReport, AgentSpec, Limits, NetworkPolicy, SandboxMode};
use diminuendo_core::AgentId;
use support::{lines, sh, Harness};

/// The Landlock ABI the built-in sandbox needs (scopes arrived in 6).
const NEEDED_ABI: i64 = 6;

fn spawned(report: &AgentReport) -> bool {
    matches!(report, AgentReport::Spawned { .. })
}

/// Landlock is fully enforced whenever the kernel has it: the agent starts, and a read outside
/// its grants fails. Without it, the agent does not start (and says why).
#[test]
fn landlock_is_fully_enforced_or_the_agent_does_not_start() {
    let mut h = Harness::new(|config| {
        let secret = config.data_dir.join("secret.txt");
        std::fs::write(&secret, "gateway secret").unwrap();
        let mut spec = sh(r#"cat "$0" || echo refused; cat "$1" > /dev/null && echo system-ok"#);
        spec.args.push(secret.display().to_string());
        spec.args.push("/usr/bin/env".into());
        config.agents.insert("reader".into(), spec);
    });
    let report = h.spawn(1, "s1", "reader");
    if landlock_abi() < NEEDED_ABI {
        match report {
            AgentReport::SpawnFailed { reason, .. } => {
                assert!(reason.contains("Landlock"), "{reason}")
            }
            other => panic!("started without a Landlock sandbox: {other:?}"),
        }
        return;
    }
    // A ruleset the kernel enforces only in part makes the child refuse to exec: SpawnFailed.
    assert!(spawned(&report), "Landlock is available, yet: {report:?}");
    let reports = h.until_exit(1);
    assert_eq!(lines(&reports, 1), ["refused", "system-ok"]);
}

#[test]
fn sandbox_off_reads_what_the_gateway_reads() {
    let mut h = Harness::new(|config| {
        let secret = config.data_dir.join("secret.txt");
        std::fs::write(&secret, "gateway secret").unwrap();
        let mut spec = sh(r#"cat "$0"; echo"#);
        spec.args.push(secret.display().to_string());
        spec.sandbox = SandboxMode::Off;
        config.agents.insert("reader".into(), spec);
    });
    let report = h.spawn(1, "s1", "reader");
    assert!(spawned(&report), "{report:?}");
    let reports = h.until_exit(1);
    assert_eq!(lines(&reports, 1), ["gateway secret"]);
}

/// The environment is built from nothing (the test process's own variables, `CARGO_*` among
/// them, do not reach the agent).
#[test]
fn the_environment_is_clean() {
    let mut h = Harness::new(|config| {
        config.agents.insert(
            "env".into(),
            AgentSpec {
                command: "env".into(),
                env: vec![("MODE".into(), "x".into())],
                ..AgentSpec::default()
            },
        );
    });
    let report = h.spawn(1, "s1", "env");
    assert!(spawned(&report), "{report:?}");
    let reports = h.until_exit(1);
    let workspace = h.data_dir.path().join("sessions/s1/workspace");
    let mut names = Vec::new();
    for line in lines(&reports, 1) {
        let (name, value) = line.split_once('=').expect("NAME=value");
        match name {
            "HOME" => assert_eq!(value, workspace.to_str().unwrap()),
            "TMPDIR" => assert_eq!(value, workspace.join(".tmp").to_str().unwrap()),
            "MODE" => assert_eq!(value, "x"),
            "PATH" | "TERM" | "LANG" | "LANGUAGE" => {}
            other if other.starts_with("LC_") => {}
            other => panic!("{other} reached the agent"),
        }
        names.push(name.to_owned());
    }
    for needed in ["HOME", "TMPDIR", "PATH", "TERM", "MODE"] {
        assert!(
            names.iter().any(|n| n == needed),
            "{needed} missing: {names:?}"
        );
    }
    assert!(workspace.join(".tmp").is_dir());
}

/// `{workspace}`, `{session_id}` and `{tenant_id}` become whole arguments: no shell splits them.
#[test]
fn placeholders_are_substituted_as_whole_arguments() {
    let mut h = Harness::new(|config| {
        let mut spec = sh(r#"printf '%s|%s|%s|%s\n' "$#" "$0" "$1" "$2""#);
        spec.args.extend([
            "{workspace}".into(),
            "--session={session_id}".into(),
            "a b {tenant_id}; echo injected".into(),
        ]);
        config.agents.insert("args".into(), spec);
    });
    let report = h.spawn(1, "s1", "args");
    assert!(spawned(&report), "{report:?}");
    let reports = h.until_exit(1);
    let workspace = h.data_dir.path().join("sessions/s1/workspace");
    assert_eq!(
        lines(&reports, 1),
        [format!(
            "2|{}|--session=s1|a b tenant; echo injected",
            workspace.display()
        )]
    );
}

/// Read from the test process (the agent's parent): no_new_privs, no capabilities, the seccomp
/// filter with `network = "deny"`.
#[test]
fn no_privileges_and_the_network_filter() {
    let mut h = Harness::new(|config| {
        let mut spec = sh("echo ready; exec sleep 30");
        spec.network = NetworkPolicy::Deny;
        config.agents.insert("idle".into(), spec);
    });
    let report = h.spawn(1, "s1", "idle");
    assert!(spawned(&report), "{report:?}");
    h.collect_until(usize::MAX, |reports| !lines(reports, 1).is_empty());
    let pid = h.host.pid(AgentId(1)).unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{name}:")))
            .map(str::trim)
            .unwrap_or_else(|| panic!("no {name} in {status}"))
            .to_owned()
    };
    assert_eq!(field("NoNewPrivs"), "1");
    assert_eq!(field("Seccomp"), "2");
    for caps in ["CapInh", "CapPrm", "CapEff", "CapAmb"] {
        assert_eq!(field(caps), "0000000000000000", "{caps}");
    }
    if unsafe { libc::geteuid() } == 0 {
        assert_eq!(field("CapBnd"), "0000000000000000");
    }
    h.host
        .execute(diminuendo_core::AgentCommand::Stop { agent: AgentId(1) });
    h.until_exit(1);
}

#[test]
fn resource_limits_are_set() {
    let mut h = Harness::new(|config| {
        let mut spec = sh("echo ready; exec sleep 30");
        spec.limits = Limits {
            open_files: Some(77),
            file_size: Some(512 * 1024),
            cpu_seconds: Some(99),
            address_space: Some(8 << 30),
            ..Limits::default()
        };
        config.agents.insert("limits".into(), spec);
    });
    let report = h.spawn(1, "s1", "limits");
    assert!(spawned(&report), "{report:?}");
    h.collect_until(usize::MAX, |reports| !lines(reports, 1).is_empty());
    let pid = h.host.pid(AgentId(1)).unwrap();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let soft = |name: &str| {
        let line = limits
            .lines()
            .find(|line| line.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} in {limits}"));
        line[name.len()..]
            .split_whitespace()
            .next()
            .unwrap()
            .to_owned()
    };
    assert_eq!(soft("Max open files"), "77");
    assert_eq!(soft("Max file size"), "524288");
    assert_eq!(soft("Max cpu time"), "99");
    assert_eq!(soft("Max address space"), (8u64 << 30).to_string());
    h.host
        .execute(diminuendo_core::AgentCommand::Stop { agent: AgentId(1) });
    h.until_exit(1);
}

/// A gateway with many agents holds descriptors numbered above an agent's `open_files` limit;
/// the child holds them too until `exec`, so nothing in the sandbox may open a descriptor after
/// the limit is set (found with 156 agents of a gateway: every later spawn failed with EMFILE).
#[test]
fn agents_start_while_the_gateway_holds_descriptors_above_their_limit() {
    let mut h = Harness::new(|config| {
        let mut spec = sh("echo ready");
        spec.limits = Limits {
            open_files: Some(64),
            ..Limits::default()
        };
        config.agents.insert("small".into(), spec);
    });
    // Fill the descriptor numbers up to above the limit, as the gateway's sockets, pipes and
    // SQLite handles do.
    let held: Vec<std::fs::File> = (0..80)
        .map(|_| std::fs::File::open("/dev/null").unwrap())
        .collect();
    let report = h.spawn(1, "s1", "small");
    assert!(spawned(&report), "{report:?}");
    let reports = h.until_exit(1);
    assert_eq!(lines(&reports, 1), ["ready"]);
    drop(held);
}

/// A configured path that does not exist is a spawn failure, not a silently smaller (or larger)
/// sandbox; a write path in the data directory is refused.
#[test]
fn bad_grants_are_spawn_failures() {
    let mut h = Harness::new(|config| {
        let mut spec = sh("true");
        spec.read_paths.push("/nonexistent/dir".into());
        config.agents.insert("typo".into(), spec);
        let mut spec = sh("true");
        spec.write_paths.push(config.data_dir.clone());
        config.agents.insert("data".into(), spec);
    });
    if landlock_abi() < NEEDED_ABI {
        return;
    }
    for (agent, agent_type, expected) in [
        (1, "typo", "/nonexistent/dir"),
        (2, "data", "data directory"),
    ] {
        match h.spawn(agent, "s1", agent_type) {
            AgentReport::SpawnFailed { reason, .. } => {
                assert!(reason.contains(expected), "{reason}")
            }
            other => panic!("{agent_type}: {other:?}"),
        }
    }
}
