//! Settings: flags, the config file and environment, resolved and refused.

use super::*;

/// A file in a directory of its own (tests run in parallel and each removes its directory).
fn temp_file(name: &str, text: &str) -> (PathBuf, PathBuf) {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let unique = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!(
        "diminuendo-settings-{name}-{}-{unique}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("gateway.toml");
    std::fs::write(&path, text).expect("write");
    (dir, path)
}

#[test]
fn flags_win_over_the_file_and_the_file_over_defaults() {
    let (dir, path) = temp_file(
        "order",
        "max_connections = 7\nlisten = \"127.0.0.1:9000\"\ndev = true\n",
    );
    let flags = Flags {
        config: Some(path),
        listen: Some("127.0.0.1:9100".parse().expect("addr")),
        ..Flags::default()
    };
    let settings = Settings::resolve(flags).expect("valid");
    assert_eq!(settings.listen.port(), 9100);
    assert_eq!(settings.core.max_connections, 7);
    assert!(settings.core.dev_mode);
    assert_eq!(
        settings.core.max_message_size,
        CoreConfig::default().max_message_size
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn the_console_is_on_in_dev_mode_unless_turned_off() {
    let console = |dev: Option<bool>, console: Option<bool>| {
        Settings::resolve(Flags {
            dev,
            console,
            ..Flags::default()
        })
        .map(|settings| settings.core.console.is_some())
    };
    assert_eq!(console(None, None), Ok(false));
    assert_eq!(console(Some(true), None), Ok(true));
    assert_eq!(console(Some(true), Some(false)), Ok(false));
    assert_eq!(console(None, Some(true)), Ok(true));
    let (dir, path) = temp_file("console", "console = true\n");
    let from_file = Settings::resolve(Flags {
        config: Some(path),
        ..Flags::default()
    })
    .map(|settings| settings.core.console.is_some());
    assert_eq!(from_file, Ok(true));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn unknown_keys_and_zero_limits_are_refused() {
    let (dir, path) = temp_file("bad", "max_conections = 7\n");
    let error = Settings::resolve(Flags {
        config: Some(path),
        ..Flags::default()
    })
    .expect_err("typo refused");
    assert!(error.contains("max_conections"), "{error}");
    let error = Settings::resolve(Flags {
        max_message_size: Some(0),
        ..Flags::default()
    })
    .expect_err("zero refused");
    assert!(error.contains("max_message_size"));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn agent_options_from_flags_and_the_file() {
    let (dir, path) = temp_file(
        "options",
        "turn_timeout_ms = 60000\n\n\
         [agents.slow]\ncommand = \"x\"\nturn_timeout_ms = 7200000\ncancel_grace_ms = 2500\n\
         context_replay = \"none\"\nfs = true\n\n\
         [agents.plain]\ncommand = \"y\"\n",
    );
    let settings = Settings::resolve(Flags {
        config: Some(path.clone()),
        cancel_grace_ms: Some(3000),
        ..Flags::default()
    })
    .expect("valid");
    let core = &settings.core;
    let slow = core.agent_options("slow");
    assert_eq!(slow.turn_timeout, Duration::from_secs(7200));
    assert_eq!(slow.cancel_grace, Duration::from_millis(2500));
    assert_eq!(slow.context_replay, ContextReplay::None);
    assert!(slow.fs);
    let plain = core.agent_options("plain");
    assert_eq!(
        plain.turn_timeout,
        Duration::from_secs(60),
        "the file's default"
    );
    assert_eq!(
        plain.cancel_grace,
        Duration::from_secs(3),
        "the flag's default"
    );
    assert_eq!(plain.context_replay, ContextReplay::Transcript);
    assert!(!plain.fs);
    assert_eq!(core.agent_options("echo"), &core.default_agent_options);
    std::fs::remove_dir_all(&dir).ok();

    for (name, body, expected) in [
        (
            "replay",
            "[agents.a]\ncommand = \"x\"\ncontext_replay = \"all\"\n",
            "context_replay",
        ),
        (
            "zero",
            "[agents.a]\ncommand = \"x\"\ncancel_grace_ms = 0\n",
            "cancel_grace_ms",
        ),
    ] {
        let (dir, path) = temp_file(name, body);
        let error = Settings::resolve(Flags {
            config: Some(path),
            ..Flags::default()
        })
        .expect_err(name);
        assert!(error.contains(expected), "{name}: {error}");
        std::fs::remove_dir_all(&dir).ok();
    }
}

#[test]
fn agent_sandbox_settings() {
    let (dir, path) = temp_file(
        "sandbox",
        "[agents.boxed]\ncommand = \"bwrap\"\nsandbox = \"launcher\"\ninherit_env = [\"KUBECONFIG\"]\n\n\
         [agents.tight]\ncommand = \"node\"\nnetwork = \"deny\"\nread_paths = [\"/srv/tools\"]\n\
         write_paths = [\"/srv/cache\"]\nlimits = { processes = 32, cpu_seconds = 0 }\n\n\
         [agents.open]\ncommand = \"x\"\nsandbox = \"off\"\n",
    );
    let settings = Settings::resolve(Flags {
        config: Some(path),
        ..Flags::default()
    })
    .expect("valid");
    let boxed = &settings.agents["boxed"];
    assert_eq!(boxed.sandbox, SandboxMode::Launcher);
    assert_eq!(boxed.inherit_env, ["KUBECONFIG"]);
    let tight = &settings.agents["tight"];
    assert_eq!(tight.sandbox, SandboxMode::Landlock);
    assert_eq!(tight.network, NetworkPolicy::Deny);
    assert_eq!(tight.read_paths, [PathBuf::from("/srv/tools")]);
    assert_eq!(tight.write_paths, [PathBuf::from("/srv/cache")]);
    assert_eq!(tight.limits.processes, Some(32));
    assert_eq!(tight.limits.cpu_seconds, None, "0 is unlimited");
    assert_eq!(tight.limits.open_files, Limits::default().open_files);
    assert_eq!(settings.agents["echo"].sandbox, SandboxMode::Landlock);
    assert_eq!(settings.core.agent_sandbox["open"], "off");
    assert_eq!(settings.core.agent_sandbox["boxed"], "launcher");
    assert_eq!(settings.core.agent_sandbox["echo"], "landlock");
    std::fs::remove_dir_all(&dir).ok();

    for (name, body, expected) in [
        (
            "bad-mode",
            "sandbox = \"docker\"",
            "landlock, off or launcher",
        ),
        ("bad-net", "network = \"some\"", "allow or deny"),
        (
            "secret",
            "inherit_env = [\"DIMINUENDO_JWT_SECRET\"]",
            "DIMINUENDO_",
        ),
        (
            "secret-env",
            "env = { DIMINUENDO_X = \"1\" }",
            "DIMINUENDO_",
        ),
        (
            "launcher-net",
            "sandbox = \"launcher\"\nnetwork = \"deny\"",
            "launcher",
        ),
        ("limit-key", "limits = { memory = 1 }", "memory"),
    ] {
        let (dir, path) = temp_file(name, &format!("[agents.a]\ncommand = \"x\"\n{body}\n"));
        let error = Settings::resolve(Flags {
            config: Some(path),
            ..Flags::default()
        })
        .expect_err(name);
        assert!(error.contains(expected), "{name}: {error}");
        std::fs::remove_dir_all(&dir).ok();
    }
}

#[test]
fn agent_types_from_the_file_and_flags_with_the_bundled_echo() {
    let (dir, path) = temp_file(
        "agents",
        "[agents.claude]\ncommand = \"node\"\nargs = [\"agent.js\"]\nenv = { KEY = \"v\" }\n\n[agents.fixed]\ncommand = \"x\"\nworkspace = \"/srv/w\"\n",
    );
    let flags = Flags {
        config: Some(path),
        agents: Some(vec![
            "claude=npx other --flag".into(),
            "tiny=/bin/cat".into(),
        ]),
        ..Flags::default()
    };
    let settings = Settings::resolve(flags).expect("valid");
    assert_eq!(
        settings.core.agent_types,
        ["claude", "echo", "fixed", "tiny"]
    );
    assert_eq!(
        settings.agents["claude"].command, "npx",
        "the flag replaces the file's entry"
    );
    assert_eq!(settings.agents["claude"].args, ["other", "--flag"]);
    assert_eq!(settings.agents["echo"].args, [ECHO_AGENT_COMMAND]);
    assert!(matches!(
        settings.agents["fixed"].cwd,
        WorkspacePolicy::Fixed(_)
    ));
    let error = Settings::resolve(Flags {
        agents: Some(vec!["no-command".into()]),
        ..Flags::default()
    })
    .expect_err("bad");
    assert!(error.contains("NAME=COMMAND"), "{error}");
    let error = Settings::resolve(Flags {
        agents: Some(vec!["../x=cat".into()]),
        ..Flags::default()
    })
    .expect_err("bad");
    assert!(error.contains("agent type names"), "{error}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn auth_is_configured_only_with_a_key() {
    let settings = Settings::resolve(Flags::default()).expect("valid");
    assert!(settings.auth.is_none());
    let settings = Settings::resolve(Flags {
        jwt_secret: Some("x".repeat(32)),
        jwt_issuer: Some("me".into()),
        ..Flags::default()
    })
    .expect("valid");
    let auth = settings.auth.expect("auth");
    assert_eq!(auth.issuer.as_deref(), Some("me"));
    let error = Settings::resolve(Flags {
        jwks_file: Some("/nonexistent/jwks.json".into()),
        ..Flags::default()
    })
    .expect_err("missing file");
    assert!(error.contains("JWKS"), "{error}");
}

#[test]
fn the_secret_comes_from_a_file_and_a_command_line_secret_is_warned_about() {
    let secret = "s".repeat(40);
    let (dir, path) = temp_file("secret", &format!("{secret}\n"));
    let settings = Settings::resolve(Flags {
        jwt_secret_file: Some(path.clone()),
        ..Flags::default()
    })
    .expect("valid");
    let auth = settings.auth.expect("auth");
    assert_eq!(auth.hs256_secret.as_deref(), Some(secret.as_str()));
    assert!(settings.warnings.is_empty(), "{:?}", settings.warnings);
    let error = Settings::resolve(Flags {
        jwt_secret_file: Some(path),
        jwt_secret: Some(secret.clone()),
        ..Flags::default()
    })
    .expect_err("both refused");
    assert!(error.contains("not both"), "{error}");
    std::fs::write(dir.join("empty"), "\n").expect("write");
    let error = Settings::resolve(Flags {
        jwt_secret_file: Some(dir.join("empty")),
        ..Flags::default()
    })
    .expect_err("empty refused");
    assert!(error.contains("empty"), "{error}");
    let settings = Settings::resolve(Flags {
        jwt_secret: Some(secret.clone()),
        jwt_secret_on_command_line: true,
        ..Flags::default()
    })
    .expect("valid");
    assert!(
        settings
            .warnings
            .iter()
            .any(|w| w.contains("/proc/<pid>/cmdline")),
        "{:?}",
        settings.warnings
    );
    let settings = Settings::resolve(Flags {
        jwt_secret: Some(secret),
        ..Flags::default()
    })
    .expect("valid");
    assert!(settings.warnings.is_empty(), "{:?}", settings.warnings);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn connection_limits_and_trusted_proxies() {
    let settings = Settings::resolve(Flags::default()).expect("valid");
    assert_eq!(settings.core.max_connections_per_ip, 256);
    assert!(settings.core.trusted_proxies.is_empty());
    let settings = Settings::resolve(Flags {
        max_connections_per_ip: Some(3),
        trusted_proxies: Some(vec!["10.0.0.0/8".into(), "::1".into()]),
        ..Flags::default()
    })
    .expect("valid");
    assert_eq!(settings.core.max_connections_per_ip, 3);
    assert_eq!(settings.core.trusted_proxies.len(), 2);
    let error = Settings::resolve(Flags {
        trusted_proxies: Some(vec!["10.0.0.0/40".into()]),
        ..Flags::default()
    })
    .expect_err("bad range");
    assert!(error.contains("trusted-proxies"), "{error}");
}

#[test]
fn the_storage_queue_limit_has_a_default_a_file_key_and_a_flag() {
    let settings = Settings::resolve(Flags::default()).expect("valid");
    assert_eq!(settings.storage.queue_limit, 64 * 1024 * 1024);
    assert!(settings.storage.commit_delay.is_zero());
    let (dir, path) = temp_file("queue", "storage_queue_limit = 1048576\n");
    let settings = Settings::resolve(Flags {
        config: Some(path.clone()),
        ..Flags::default()
    })
    .expect("valid");
    assert_eq!(settings.storage.queue_limit, 1024 * 1024);
    let settings = Settings::resolve(Flags {
        config: Some(path),
        storage_queue_limit: Some(4096),
        storage_commit_delay_ms: Some(20),
        ..Flags::default()
    })
    .expect("valid");
    assert_eq!(settings.storage.queue_limit, 4096);
    assert_eq!(settings.storage.commit_delay, Duration::from_millis(20));
    let error = Settings::resolve(Flags {
        storage_queue_limit: Some(0),
        ..Flags::default()
    })
    .expect_err("zero refused");
    assert!(error.contains("storage_queue_limit"), "{error}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn cluster_mode_is_off_by_default_and_its_settings_need_the_url() {
    let settings = Settings::resolve(Flags::default()).expect("defaults");
    assert!(settings.cluster.is_none());
    assert!(settings.workspace_root.is_none());
    let error = Settings::resolve(Flags {
        cluster_instance: Some("gw-a".into()),
        ..Flags::default()
    })
    .expect_err("an instance id without --cluster");
    assert!(
        error.contains("--cluster-instance needs --cluster"),
        "{error}"
    );
}

#[test]
fn cluster_settings_map_onto_the_engine_s_and_warn_about_a_local_workspace_root() {
    let settings = Settings::resolve(Flags {
        cluster: Some("nats://10.0.0.5:4222, nats://10.0.0.6:4222".into()),
        cluster_user: Some("gw".into()),
        cluster_password: Some("secret".into()),
        cluster_replicas: Some(3),
        cluster_lease_renew_ms: Some(500),
        ..Flags::default()
    })
    .expect("valid cluster settings");
    let cluster = settings.cluster.expect("cluster mode");
    assert_eq!(cluster.url, "nats://10.0.0.5:4222, nats://10.0.0.6:4222");
    assert!(!cluster.instance_id.is_empty(), "a generated instance id");
    assert_eq!(cluster.user_password, Some(("gw".into(), "secret".into())));
    assert_eq!(cluster.replicas, 3);
    assert_eq!(cluster.lease_renewal, Duration::from_millis(500));
    assert!(
        settings
            .warnings
            .iter()
            .any(|warning| warning.contains("--workspace-root")),
        "{:?}",
        settings.warnings
    );
    // Two generated ids differ (a restart never renews its predecessor's leases).
    let again = Settings::resolve(Flags {
        cluster: Some("nats://127.0.0.1:4222".into()),
        workspace_root: Some(PathBuf::from("/srv/workspaces")),
        ..Flags::default()
    })
    .expect("valid");
    assert!(!again
        .warnings
        .iter()
        .any(|w| w.contains("--workspace-root")));
    assert_ne!(
        again.cluster.expect("cluster").instance_id,
        cluster.instance_id
    );

    for (flags, expected) in [
        (
            Flags {
                cluster: Some("http://nats:4222".into()),
                ..Flags::default()
            },
            "nats://",
        ),
        (
            Flags {
                cluster: Some("nats://nats:4222".into()),
                cluster_user: Some("gw".into()),
                ..Flags::default()
            },
            "go together",
        ),
        (
            Flags {
                cluster: Some("nats://nats:4222".into()),
                cluster_replicas: Some(7),
                ..Flags::default()
            },
            "replicas",
        ),
        (
            Flags {
                cluster: Some("nats://nats:4222".into()),
                cluster_lease_renew_ms: Some(10),
                ..Flags::default()
            },
            "100 ms",
        ),
    ] {
        let error = Settings::resolve(flags).expect_err("refused");
        assert!(error.contains(expected), "{error}");
    }
}
