//! The `--cluster*` settings: cluster mode's engine configuration, flag over file.

use std::path::PathBuf;
use std::time::Duration;

use diminuendo_cluster::ClusterConfig;

/// The `--cluster*` settings, flag over file.
pub(super) struct ClusterFlags {
    pub(super) url: Option<String>,
    pub(super) instance: Option<String>,
    pub(super) creds: Option<PathBuf>,
    pub(super) nkey: Option<PathBuf>,
    pub(super) user: Option<String>,
    pub(super) password: Option<String>,
    pub(super) token: Option<String>,
    pub(super) tls_ca: Option<PathBuf>,
    pub(super) tls_cert: Option<PathBuf>,
    pub(super) tls_key: Option<PathBuf>,
    pub(super) tls: Option<bool>,
    pub(super) tls_first: Option<bool>,
    pub(super) replicas: Option<usize>,
    pub(super) lease_renew_ms: Option<u64>,
}

/// Cluster mode's engine settings, or `None` without `--cluster` (then every other `--cluster-*`
/// setting is refused, so a typo'd URL variable cannot silently start a single node).
pub(super) fn resolve_cluster(flags: ClusterFlags) -> Result<Option<ClusterConfig>, String> {
    let url = flags.url.filter(|url| !url.trim().is_empty());
    let Some(url) = url else {
        let given = [
            ("--cluster-instance", flags.instance.is_some()),
            ("--cluster-creds", flags.creds.is_some()),
            ("--cluster-nkey", flags.nkey.is_some()),
            ("--cluster-user", flags.user.is_some()),
            ("--cluster-password", flags.password.is_some()),
            ("--cluster-token", flags.token.is_some()),
            ("--cluster-tls-ca", flags.tls_ca.is_some()),
            ("--cluster-tls-cert", flags.tls_cert.is_some()),
            ("--cluster-tls-key", flags.tls_key.is_some()),
            ("--cluster-replicas", flags.replicas.is_some()),
            ("--cluster-lease-renew-ms", flags.lease_renew_ms.is_some()),
        ];
        if let Some((name, _)) = given.iter().find(|(_, given)| *given) {
            return Err(format!("{name} needs --cluster"));
        }
        return Ok(None);
    };
    for part in url.split(',') {
        let part = part.trim();
        let scheme_ok = ["nats://", "tls://", "ws://", "wss://"]
            .iter()
            .any(|scheme| part.starts_with(scheme));
        if !scheme_ok {
            return Err(format!(
                "--cluster {part:?}: a server URL starts with nats:// or tls://"
            ));
        }
    }
    let instance = match flags.instance {
        Some(id) => {
            let id = id.trim().to_owned();
            if id.is_empty() || id.len() > 128 {
                return Err("--cluster-instance: 1 to 128 characters".to_owned());
            }
            id
        }
        None => generated_instance_id()?,
    };
    let mut config = ClusterConfig::new(url.trim(), instance);
    config.creds_file = flags.creds;
    config.nkey_seed_file = flags.nkey;
    config.user_password = match (flags.user, flags.password) {
        (Some(user), Some(password)) => Some((user, password)),
        (None, None) => None,
        _ => return Err("--cluster-user and --cluster-password go together".to_owned()),
    };
    config.token = flags.token;
    config.tls_ca = flags.tls_ca;
    config.tls_client_cert = match (flags.tls_cert, flags.tls_key) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        _ => return Err("--cluster-tls-cert and --cluster-tls-key go together".to_owned()),
    };
    config.tls_required = flags.tls.unwrap_or(false);
    config.tls_first = flags.tls_first.unwrap_or(false);
    if let Some(replicas) = flags.replicas {
        config.replicas = replicas;
    }
    if let Some(ms) = flags.lease_renew_ms {
        config.lease_renewal = Duration::from_millis(ms);
    }
    config.validate()?;
    Ok(Some(config))
}

/// An instance id for `--cluster-instance` left unset: the host name and 8 random hex digits
/// (unique per start, so a restarted instance never renews its predecessor's leases).
fn generated_instance_id() -> Result<String, String> {
    let mut bytes = [0u8; 4];
    getrandom::fill(&mut bytes)
        .map_err(|error| format!("the operating system's random source failed: {error}"))?;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host: String = host
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(48)
        .collect();
    let suffix: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Ok(if host.is_empty() {
        format!("gw-{suffix}")
    } else {
        format!("{host}-{suffix}")
    })
}
