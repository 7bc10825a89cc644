//! Builds the `Command` of one agent: placeholders substituted, the clean environment, the
//! workspace as working directory and `HOME`, a private `TMPDIR`, its own process group, and
//! the sandbox applied in the child before `exec`.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};

use diminuendo_core::AgentId;

use crate::cgroup;
use crate::environment;
use crate::sandbox::{self, Confinement, Plan, SandboxMode};
use crate::AgentSpec;

/// The values of the placeholders an agent command may use.
#[derive(Debug, Clone, Copy)]
pub struct Placeholders<'a> {
    /// `{workspace}`: the agent's working directory.
    pub workspace: &'a str,
    /// `{session_id}`.
    pub session_id: &'a str,
    /// `{tenant_id}`.
    pub tenant_id: &'a str,
}

/// Replaces `{workspace}`, `{session_id}` and `{tenant_id}` in one argument. The result is still
/// one argument: no shell sees it, so a value cannot add arguments or run anything. Other
/// braces are left as they are. The values are substituted once (a value that itself contains
/// a placeholder is not expanded again).
pub fn substitute(template: &str, values: &Placeholders<'_>) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let tail = &rest[start..];
        let found = [
            ("{workspace}", values.workspace),
            ("{session_id}", values.session_id),
            ("{tenant_id}", values.tenant_id),
        ]
        .into_iter()
        .find(|(name, _)| tail.starts_with(name));
        match found {
            Some((name, value)) => {
                out.push_str(value);
                rest = &tail[name.len()..];
            }
            None => {
                out.push('{');
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// One agent to start.
pub(crate) struct Request<'a> {
    /// The host's number ([`cgroup::next_host_id`]).
    pub host_id: u64,
    pub agent: AgentId,
    pub session_id: &'a str,
    pub tenant_id: &'a str,
    pub spec: &'a AgentSpec,
    pub data_dir: &'a Path,
    pub workspace: &'a Path,
}

/// The name of the private temporary directory inside a workspace.
pub const TMPDIR_NAME: &str = ".tmp";

/// The agent's `Command`, ready to spawn (stdio piped, its own process group, the sandbox in
/// `pre_exec`). The error is a short reason for `SpawnFailed`.
pub(crate) fn command(request: &Request<'_>) -> Result<Command, String> {
    let spec = request.spec;
    let workspace_text = request
        .workspace
        .to_str()
        .ok_or("the workspace path is not UTF-8")?;
    let values = Placeholders {
        workspace: workspace_text,
        session_id: request.session_id,
        tenant_id: request.tenant_id,
    };
    let program = substitute(&spec.command, &values);
    let args: Vec<String> = spec
        .args
        .iter()
        .map(|arg| substitute(arg, &values))
        .collect();

    let tmpdir = request.workspace.join(TMPDIR_NAME);
    std::fs::create_dir_all(&tmpdir)
        .and_then(|()| std::fs::set_permissions(&tmpdir, std::fs::Permissions::from_mode(0o700)))
        .map_err(|error| format!("cannot create the agent's TMPDIR: {}", error.kind()))?;
    let env = environment::build(
        std::env::vars_os(),
        &spec.env,
        &spec.inherit_env,
        request.workspace,
        &tmpdir,
    );

    let (read_paths, write_paths) = match spec.sandbox {
        SandboxMode::Landlock => grants(request, &program, &args, &env)?,
        SandboxMode::Off | SandboxMode::Launcher => (Vec::new(), Vec::new()),
    };
    let cgroup_name = cgroup::cgroup_name(request.host_id, request.agent);
    let mut confinement = Confinement::prepare(&Plan {
        mode: spec.sandbox,
        network: spec.network,
        limits: spec.limits,
        read_paths: &read_paths,
        write_paths: &write_paths,
        cgroup_name: &cgroup_name,
    })?;

    let mut command = Command::new(&program);
    command
        .args(&args)
        .env_clear()
        .envs(env)
        .current_dir(request.workspace)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    // SAFETY: `apply` only makes system calls on data prepared above (see `sandbox`).
    unsafe {
        command.pre_exec(move || confinement.apply());
    }
    Ok(command)
}

/// What a Landlock-confined agent may read and execute, and read and write. Refuses a grant
/// that would expose the data directory beyond the agent's own workspace.
fn grants(
    request: &Request<'_>,
    program: &str,
    args: &[String],
    env: &[(std::ffi::OsString, std::ffi::OsString)],
) -> Result<(Vec<PathBuf>, Vec<PathBuf>), String> {
    let spec = request.spec;
    let data_dir = std::fs::canonicalize(request.data_dir).map_err(|error| {
        format!(
            "cannot resolve the data directory {}: {error}",
            request.data_dir.display()
        )
    })?;
    // A grant that holds the data directory, or lies inside it (the workspace is granted on its
    // own, below).
    let exposes_data = |path: &Path| {
        std::fs::canonicalize(path)
            .is_ok_and(|path| data_dir.starts_with(&path) || path.starts_with(&data_dir))
    };
    let mut read = Vec::new();
    // The agent's install directory: the executable itself, and the package of any script it
    // is given by absolute path (node_modules root, or the script's directory).
    let path_var = env
        .iter()
        .find(|(name, _)| name == "PATH")
        .map(|(_, value)| value.clone());
    if let Some(executable) = resolve(program, path_var.as_deref()) {
        read.push(executable);
    }
    for arg in args {
        let path = Path::new(arg);
        if !path.is_absolute() || !path.exists() {
            continue;
        }
        let root = package_root(path);
        let home = std::env::var_os("HOME").map(PathBuf::from);
        if exposes_data(&root) || too_broad(&root, home.as_deref()) {
            // Never widen a grant over the data directory or a sensitive directory: the file
            // alone (a directory argument gets nothing).
            if path.is_file() && !exposes_data(path) {
                read.push(path.to_path_buf());
            }
        } else {
            read.push(root);
        }
    }
    for path in &spec.read_paths {
        if exposes_data(path) {
            return Err(format!(
                "read_paths entry {} overlaps the data directory",
                path.display()
            ));
        }
        read.push(path.clone());
    }
    let mut write = vec![request.workspace.to_path_buf()];
    for path in &spec.write_paths {
        if exposes_data(path) {
            return Err(format!(
                "write_paths entry {} overlaps the data directory",
                path.display()
            ));
        }
        write.push(path.clone());
    }
    Ok((read, write))
}

/// The executable `program` names: a path, or the first match on `PATH`.
fn resolve(program: &str, path_var: Option<&std::ffi::OsStr>) -> Option<PathBuf> {
    if program.contains('/') {
        return std::fs::canonicalize(program).ok();
    }
    std::env::split_paths(path_var?)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
        .and_then(|found| std::fs::canonicalize(found).ok())
}

/// The directory that holds a script's package: the directory containing the first
/// `node_modules` on its path, else the script's own directory (or the path itself when it is
/// a directory).
fn package_root(path: &Path) -> PathBuf {
    let mut root = PathBuf::new();
    for component in path.components() {
        if component == Component::Normal("node_modules".as_ref()) {
            return root;
        }
        root.push(component);
    }
    if path.is_dir() {
        path.to_path_buf()
    } else {
        path.parent()
            .map_or_else(|| path.to_path_buf(), Path::to_path_buf)
    }
}

/// A directory too broad to grant because an argument names something in it: the root or a
/// top-level directory, system state (`/etc`, `/proc`, `/sys`, `/dev`, `/run`, `/var`, and
/// anything below them), a home directory or the gateway's `HOME` (or an ancestor of it), and
/// the shared `/tmp` and `/root` or a directory directly in them (a package installed deeper,
/// such as a checkout's `/tmp/ci/app/node_modules`, is its own directory and may be granted).
fn too_broad(dir: &Path, home: Option<&Path>) -> bool {
    let depth = dir.components().count();
    let system = ["/etc", "/proc", "/sys", "/dev", "/run", "/var"]
        .iter()
        .any(|prefix| dir.starts_with(prefix));
    let shared = ["/tmp", "/root"].iter().any(|prefix| {
        dir.starts_with(prefix) && depth <= Path::new(prefix).components().count() + 1
    });
    let a_home = dir.parent() == Some(Path::new("/home"));
    let gateway_home = home.is_some_and(|home| home.starts_with(dir));
    depth <= 2 || system || shared || a_home || gateway_home
}

/// Checks an agent type's settings once, at start: the reason it cannot run as configured.
pub fn check_spec(name: &str, spec: &AgentSpec) -> Result<(), String> {
    for (key, _) in &spec.env {
        if environment::is_reserved(key.as_ref()) {
            return Err(format!(
                "agent type {name}: env may not set {key} ({}* stays with the gateway)",
                environment::RESERVED_PREFIX
            ));
        }
    }
    for key in &spec.inherit_env {
        if environment::is_reserved(key.as_ref()) {
            return Err(format!(
                "agent type {name}: inherit_env may not name {key} ({}* stays with the gateway)",
                environment::RESERVED_PREFIX
            ));
        }
    }
    if spec.sandbox == SandboxMode::Launcher && spec.network == sandbox::NetworkPolicy::Deny {
        return Err(format!(
            "agent type {name}: network = \"deny\" needs sandbox = \"landlock\" or \"off\"; \
             a launcher has its own network option (docker --network none, bwrap --unshare-net)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALUES: Placeholders<'static> = Placeholders {
        workspace: "/data/sessions/s1/workspace",
        session_id: "s1",
        tenant_id: "acme",
    };

    #[test]
    fn placeholders_are_replaced_inside_one_argument() {
        assert_eq!(
            substitute("{workspace}:/workspace", &VALUES),
            "/data/sessions/s1/workspace:/workspace"
        );
        assert_eq!(
            substitute("agent-{tenant_id}-{session_id}", &VALUES),
            "agent-acme-s1"
        );
        assert_eq!(substitute("{session_id}{session_id}", &VALUES), "s1s1");
        assert_eq!(substitute("plain", &VALUES), "plain");
    }

    #[test]
    fn other_braces_stay() {
        assert_eq!(substitute("{", &VALUES), "{");
        assert_eq!(substitute("{}{x}{workspace", &VALUES), "{}{x}{workspace");
        assert_eq!(substitute("{{tenant_id}}", &VALUES), "{acme}");
        assert_eq!(substitute("é{tenant_id}é", &VALUES), "éacmeé");
    }

    #[test]
    fn values_are_not_expanded_again_nor_split() {
        let values = Placeholders {
            workspace: "/w",
            session_id: "{tenant_id}",
            tenant_id: "a b; rm -rf /",
        };
        assert_eq!(substitute("{session_id}", &values), "{tenant_id}");
        assert_eq!(substitute("--t={tenant_id}", &values), "--t=a b; rm -rf /");
    }

    #[test]
    fn the_package_root_of_a_node_script() {
        assert_eq!(
            package_root(Path::new("/srv/agent/node_modules/@x/sdk/dist/agent.js")),
            Path::new("/srv/agent")
        );
    }

    #[test]
    fn argument_grants_stay_narrow() {
        let home = Some(Path::new("/home/op"));
        for broad in [
            "/",
            "/opt",
            "/etc/agent",
            "/home/op",
            "/home",
            "/tmp/x",
            "/root/a",
        ] {
            assert!(too_broad(Path::new(broad), home), "{broad}");
        }
        for narrow in [
            "/opt/agent",
            "/srv/agents/claude",
            "/tmp/ci/main/target/acp-agent",
            "/root/work/agent",
            "/home/op/agents/x",
            "/usr/lib/node",
        ] {
            assert!(!too_broad(Path::new(narrow), home), "{narrow}");
        }
    }

    #[test]
    fn reserved_names_are_refused_in_the_settings() {
        let spec = AgentSpec {
            inherit_env: vec!["DIMINUENDO_JWT_SECRET".into()],
            ..AgentSpec::default()
        };
        assert!(check_spec("x", &spec).is_err());
        let spec = AgentSpec {
            env: vec![("DIMINUENDO_X".into(), "1".into())],
            ..AgentSpec::default()
        };
        assert!(check_spec("x", &spec).is_err());
        let spec = AgentSpec {
            inherit_env: vec!["ANTHROPIC_API_KEY".into()],
            ..AgentSpec::default()
        };
        assert!(check_spec("x", &spec).is_ok());
    }
}
