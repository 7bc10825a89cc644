//! The environment an agent starts with: built from nothing, never copied from the gateway.
//!
//! An agent gets `PATH`, `HOME` (its workspace), `LANG` and `LC_*`, `TERM`, `TMPDIR` (a private
//! directory inside its workspace), the agent type's own `env` table, and the gateway variables
//! its agent type names in `inherit_env`. Nothing else of the gateway's environment reaches it,
//! and no variable whose name starts with `DIMINUENDO_` ever does, whatever the configuration
//! says (the settings refuse such names; this module drops them again).

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// The prefix of the gateway's own variables; never passed to an agent.
pub const RESERVED_PREFIX: &str = "DIMINUENDO_";

/// `PATH` when the gateway has none.
pub const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// `TERM` when the gateway has none (agents talk over pipes, not a terminal).
pub const DEFAULT_TERM: &str = "dumb";

/// True for names the gateway keeps to itself.
pub fn is_reserved(name: &OsStr) -> bool {
    name.as_bytes().starts_with(RESERVED_PREFIX.as_bytes())
}

fn is_locale(name: &OsStr) -> bool {
    let name = name.as_bytes();
    name == b"LANG" || name == b"LANGUAGE" || name.starts_with(b"LC_")
}

/// The agent's environment, sorted by name. `gateway` is the gateway's own environment
/// (`std::env::vars_os()`); `env` is the agent type's table (it overrides everything but
/// `HOME` and `TMPDIR`, which always name the workspace); `inherit` names the gateway variables
/// passed on (absent ones are skipped).
pub fn build(
    gateway: impl IntoIterator<Item = (OsString, OsString)>,
    env: &[(String, String)],
    inherit: &[String],
    workspace: &Path,
    tmpdir: &Path,
) -> Vec<(OsString, OsString)> {
    let mut out: BTreeMap<OsString, OsString> = BTreeMap::new();
    for (name, value) in gateway {
        let keep = name.as_bytes() == b"PATH"
            || name.as_bytes() == b"TERM"
            || is_locale(&name)
            || inherit
                .iter()
                .any(|wanted| wanted.as_bytes() == name.as_bytes());
        if keep {
            out.insert(name, value);
        }
    }
    out.entry("PATH".into())
        .or_insert_with(|| DEFAULT_PATH.into());
    out.entry("TERM".into())
        .or_insert_with(|| DEFAULT_TERM.into());
    for (name, value) in env {
        out.insert(name.into(), value.into());
    }
    out.insert("HOME".into(), workspace.as_os_str().to_owned());
    out.insert("TMPDIR".into(), tmpdir.as_os_str().to_owned());
    out.retain(|name, _| !is_reserved(name) && !name.is_empty());
    out.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        pairs
            .iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v)))
            .collect()
    }

    fn get<'a>(env: &'a [(OsString, OsString)], name: &str) -> Option<&'a str> {
        env.iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.to_str())
    }

    #[test]
    fn only_the_listed_gateway_variables_pass() {
        let gateway = vars(&[
            ("PATH", "/opt/bin:/usr/bin"),
            ("LANG", "C.UTF-8"),
            ("LC_ALL", "C"),
            ("LANGUAGE", "en"),
            ("TERM", "xterm"),
            ("HOME", "/root"),
            ("TMPDIR", "/tmp"),
            ("AWS_SECRET_ACCESS_KEY", "aws"),
            ("ANTHROPIC_API_KEY", "sk"),
            ("DIMINUENDO_JWT_SECRET", "secret"),
            ("USER", "root"),
        ]);
        let env = build(
            gateway,
            &[("MODE".into(), "fast".into())],
            &["ANTHROPIC_API_KEY".into(), "NOT_SET".into()],
            Path::new("/d/sessions/s/workspace"),
            Path::new("/d/sessions/s/workspace/.tmp"),
        );
        let names: Vec<&str> = env.iter().filter_map(|(k, _)| k.to_str()).collect();
        assert_eq!(
            names,
            [
                "ANTHROPIC_API_KEY",
                "HOME",
                "LANG",
                "LANGUAGE",
                "LC_ALL",
                "MODE",
                "PATH",
                "TERM",
                "TMPDIR"
            ]
        );
        assert_eq!(get(&env, "PATH"), Some("/opt/bin:/usr/bin"));
        assert_eq!(get(&env, "HOME"), Some("/d/sessions/s/workspace"));
        assert_eq!(get(&env, "TMPDIR"), Some("/d/sessions/s/workspace/.tmp"));
        assert_eq!(get(&env, "ANTHROPIC_API_KEY"), Some("sk"));
        assert_eq!(get(&env, "TERM"), Some("xterm"));
    }

    #[test]
    fn defaults_when_the_gateway_has_none() {
        let env = build(Vec::new(), &[], &[], Path::new("/w"), Path::new("/w/.tmp"));
        assert_eq!(get(&env, "PATH"), Some(DEFAULT_PATH));
        assert_eq!(get(&env, "TERM"), Some(DEFAULT_TERM));
        assert_eq!(env.len(), 4);
    }

    #[test]
    fn reserved_names_never_pass_even_when_asked_for() {
        let gateway = vars(&[("DIMINUENDO_JWT_SECRET", "secret"), ("DIMINUENDO_X", "x")]);
        let env = build(
            gateway,
            &[("DIMINUENDO_Y".into(), "y".into())],
            &["DIMINUENDO_JWT_SECRET".into(), "DIMINUENDO_X".into()],
            Path::new("/w"),
            Path::new("/w/.tmp"),
        );
        assert!(env.iter().all(|(k, _)| !is_reserved(k)), "{env:?}");
    }

    #[test]
    fn the_type_table_overrides_but_not_home_or_tmpdir() {
        let env = build(
            vars(&[("PATH", "/usr/bin")]),
            &[
                ("PATH".into(), "/agent/bin".into()),
                ("HOME".into(), "/elsewhere".into()),
                ("TMPDIR".into(), "/tmp".into()),
            ],
            &[],
            Path::new("/w"),
            Path::new("/w/.tmp"),
        );
        assert_eq!(get(&env, "PATH"), Some("/agent/bin"));
        assert_eq!(get(&env, "HOME"), Some("/w"));
        assert_eq!(get(&env, "TMPDIR"), Some("/w/.tmp"));
    }
}
