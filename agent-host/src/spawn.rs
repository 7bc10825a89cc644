//! How an agent's process is built: program, arguments, environment, working directory, process
//! group and pipes. Kept apart (and small) so that the sandbox can change what an agent starts
//! with without touching the poller that drives it.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::AgentSpec;

/// The command for one agent of type `spec`, run in `workspace`. The caller spawns it and needs
/// exactly this of it: stdin, stdout and stderr piped, and the process leading its own process
/// group (signals go to the group).
pub(crate) fn command(spec: &AgentSpec, workspace: &Path) -> Command {
    let mut command = Command::new(&spec.command);
    command
        .args(&spec.args)
        .envs(spec.env.iter().map(|(key, value)| (key, value)))
        .current_dir(workspace)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    command
}
