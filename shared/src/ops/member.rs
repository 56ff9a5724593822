//! Operations one member's agent carries out, asked over its REST API with the operator's
//! credentials: restart (now or scheduled, with filters), cancelling a scheduled restart,
//! reinitialize and reload. The agent's answer becomes a sentence or an [`OpsError`].

use super::{OpsError, RestartRequest};
use crate::api::MemberClient;
use crate::config::BasicAuth;
use crate::dcs::Member;
use serde_json::{Value, json};
use std::time::Duration;

/// How a 404 answer (nothing to act on at that member) starts.
const NOTHING_THERE: &str = "nothing to do: ";

/// The reason text of an agent's answer: plain text (Patroni's and pgpilot's), the message of
/// the error page Python's HTTP server sends, or an older pgpilot's `{"error": …}`.
fn reason(body: &str) -> String {
    if let Some(rest) = body.split("<p>Message: ").nth(1) {
        let message = rest.split("</p>").next().unwrap_or(rest);
        return message.trim().trim_end_matches('.').to_string();
    }
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_else(|| body.trim().to_string())
}

/// One member's agent, asked over its REST API with the operator's credentials.
pub struct MemberAgent<'a> {
    pub client: &'a MemberClient,
    pub auth: Option<&'a BasicAuth>,
    pub member: &'a Member,
}

impl MemberAgent<'_> {
    /// Sends one request; a 2xx answer's text, else the reason as an [`OpsError`].
    async fn ask(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Value,
        timeout: Duration,
    ) -> Result<String, OpsError> {
        let m = self.member;
        if m.data.api_url.is_empty() {
            return Err(OpsError::Failed(format!(
                "{} publishes no api_url: its agent cannot be asked",
                m.name
            )));
        }
        let (code, text) = self
            .client
            .call(method, &m.data.api_url, path, &body, self.auth, timeout)
            .await
            .map_err(|e| {
                OpsError::Failed(format!(
                    "{}: the REST API at {} does not answer: {e}",
                    m.name, m.data.api_url
                ))
            })?;
        let why = reason(&text);
        match code {
            200..=299 => Ok(why),
            401 | 403 => Err(OpsError::Refused(format!(
                "{}: the REST API refused the credentials ({why}); set ctl.authentication or restapi.authentication in the console's config",
                m.name
            ))),
            400 | 422 => Err(OpsError::Invalid(format!("{}: {why}", m.name))),
            404 => Err(OpsError::Refused(format!(
                "{NOTHING_THERE}{}: {why}",
                m.name
            ))),
            _ => Err(OpsError::Failed(format!("{}: {why}", m.name))),
        }
    }

    /// Restarts (or schedules a restart of) the member's PostgreSQL; an immediate restart is
    /// answered when it has finished.
    pub async fn restart(&self, req: &RestartRequest) -> Result<String, OpsError> {
        let wait = Duration::from_secs(req.timeout.unwrap_or(60) + 30);
        self.ask(reqwest::Method::POST, "/restart", req.to_json(), wait)
            .await
    }

    /// Cancels the member's scheduled restart; `None` when none was scheduled there.
    pub async fn cancel_restart(&self) -> Result<Option<String>, OpsError> {
        let answer = self
            .ask(
                reqwest::Method::DELETE,
                "/restart",
                json!({}),
                Duration::from_secs(10),
            )
            .await;
        match answer {
            Ok(text) => Ok(Some(text)),
            Err(OpsError::Refused(m)) if m.starts_with(NOTHING_THERE) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Asks a replica to wipe its data directory and clone it again from the leader.
    pub async fn reinitialize(&self, force: bool, from_leader: bool) -> Result<String, OpsError> {
        self.ask(
            reqwest::Method::POST,
            "/reinitialize",
            json!({"force": force, "from_leader": from_leader}),
            Duration::from_secs(30),
        )
        .await
    }

    /// Asks the member to re-read its configuration file.
    pub async fn reload(&self) -> Result<String, OpsError> {
        self.ask(
            reqwest::Method::POST,
            "/reload",
            json!({}),
            Duration::from_secs(30),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_come_from_json_or_text() {
        assert_eq!(reason(r#"{"error": "I am the leader"}"#), "I am the leader");
        assert_eq!(reason("restart failed\n"), "restart failed");
        let page = "<!DOCTYPE HTML>\n<html lang=\"en\">\n    <body>\n        <h1>Error response</h1>\n        <p>Error code: 409</p>\n        <p>Message: Conflict.</p>\n    </body>\n</html>\n";
        assert_eq!(reason(page), "Conflict");
    }
}
