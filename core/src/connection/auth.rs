//! A connection's authentication (PROTOCOL section 3): the token of the upgrade request, token
//! verification against the gateway-wide `Authenticator` and `FailureLimiter` (passed in, since
//! every connection shares them), and the switch to authenticated. The authentication timeout is
//! one of the connection's deadlines (`Connection::deadline`).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::auth::{Authenticator, FailureLimiter};
use crate::http::RequestHead;
use crate::metrics::Metrics;
use crate::protocol::refusal::Refusal;
use crate::protocol::{ErrorCode, Identity, ServerMessage};
use crate::storage;
use crate::ws::close_code;

use super::{Connection, Env, Output};

/// The gateway-wide state one verification borrows.
pub(crate) struct Verifier<'a> {
    /// Without one, only dev mode can authenticate.
    pub(crate) authenticator: Option<&'a mut Authenticator>,
    pub(crate) failures: &'a mut FailureLimiter,
    pub(crate) metrics: &'a mut Metrics,
}

impl Connection {
    /// Verifies a token. A token in the verified-token cache is accepted before any limit (it
    /// costs one hash). A fresh one is verified at once while the client's address is within its
    /// failure budget; over it, at the limiter's verification rate (`AUTH_RATE_LIMITED` with a
    /// `retryAfterMs` of at most one interval otherwise), so others' failures behind the same
    /// address slow a valid token down but never lock it out. `unix_ms` is `now` on the wall
    /// clock.
    pub(crate) fn verify_token(
        &self,
        token: &str,
        now: Instant,
        unix_ms: u64,
        verifier: Verifier<'_>,
    ) -> Result<Arc<Identity>, Refusal> {
        let ip: Option<IpAddr> = self.client().map(|client| client.client_ip);
        let Verifier {
            mut authenticator,
            failures,
            metrics,
        } = verifier;
        let cached = authenticator
            .as_deref_mut()
            .and_then(|auth| auth.cached(token, unix_ms));
        let verified = match (cached, authenticator) {
            (Some(identity), _) => Ok(identity),
            (None, Some(auth)) => {
                if let Some(ip) = ip {
                    if let Err(retry_after) = failures.admit_verification(ip, now) {
                        return Err(Refusal {
                            retry_after: Some(retry_after.max(Duration::from_millis(1))),
                            ..Refusal::new(
                                ErrorCode::AuthRateLimited,
                                "too many failed authentications from this address; try again \
                                 shortly",
                            )
                        });
                    }
                }
                auth.verify_fresh(token, unix_ms)
                    .map_err(|error| error.to_string())
            }
            (None, None) => Err("token verification is not configured on this gateway".to_owned()),
        };
        let checked = verified.and_then(|identity| {
            if storage::is_valid_identifier(&identity.tenant_id) {
                Ok(identity)
            } else {
                Err("the token's tenant_id is not a valid identifier".to_owned())
            }
        });
        match checked {
            Ok(identity) => Ok(identity),
            Err(message) => {
                if let Some(ip) = ip {
                    failures.record_failure(ip, now);
                }
                metrics.auth_failures += 1;
                Err(Refusal::new(ErrorCode::AuthFailed, message))
            }
        }
    }

    /// The connection is `identity` from now on: it is answered `authenticated`, and the gateway
    /// joins it to its tenant (`Output::Authenticated`).
    pub(crate) fn complete_authentication(
        &mut self,
        identity: Arc<Identity>,
        request_id: Option<&str>,
        now: Instant,
        env: &mut Env<'_>,
    ) {
        let Some(client) = self.client_mut() else {
            return;
        };
        client.identity = Some(identity.clone());
        client.auth_deadline = None;
        let reply = ServerMessage::Authenticated {
            identity: &identity,
            request_id,
        };
        self.send_message(&reply, now, env);
        env.out.push(Output::Authenticated(identity));
        env.out.push(Output::Deadline);
    }

    /// The upgrade request's token was refused: the client is told and closed with 4001 ("get a
    /// new token"); when it was only not verified yet (`AUTH_RATE_LIMITED`: its address is over
    /// its failure budget and used its verification slot), with 4101 ("reconnect with backoff"),
    /// since the token may well be valid.
    pub(crate) fn refuse_upgrade_token(
        &mut self,
        refusal: &Refusal,
        now: Instant,
        env: &mut Env<'_>,
    ) {
        let error = ServerMessage::Error {
            code: refusal.code,
            message: &refusal.message,
            request_id: None,
            retry_after_ms: refusal.retry_after.map(|after| after.as_millis() as u64),
        };
        self.send_message(&error, now, env);
        let (code, reason) = if refusal.code == ErrorCode::AuthRateLimited {
            (close_code::RATE_LIMITED, "try again shortly")
        } else {
            (close_code::AUTH_FAILED, "authentication failed")
        };
        self.close_websocket(code, reason, now, env);
    }
}

/// A token offered in the upgrade request: `Authorization: Bearer <token>`, or (browsers) the
/// subprotocol `bearer.<token>`.
pub(crate) fn upgrade_token(head: &RequestHead) -> Option<String> {
    if let Some(token) = head.authorization.as_deref().and_then(|value| {
        let (scheme, token) = value.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_owned())
    }) {
        return Some(token);
    }
    head.websocket_protocols
        .iter()
        .find_map(|protocol| protocol.strip_prefix("bearer.").map(str::to_owned))
}
