//! Failsafe mode (`failsafe_mode: true`): the leader keeps the `failsafe` key listing every
//! member's REST API; when etcd becomes unreachable, a primary stays writable only while every
//! member listed there confirms it over `POST /failsafe` each cycle, and a member that confirmed
//! does not race for the lock for ttl seconds.

use super::Agent;
use serde_json::{Map, Value, json};
use shared::dcs::{Cluster, Kv};
use std::time::Duration;
use tokio::time::Instant;
use tracing::{info, warn};

/// How long a member waits for each confirmation (one retry).
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(2);

/// The `failsafe` key's value for this cluster: every member with an `api_url`, and the leader.
pub(super) fn failsafe_members(
    cluster: &Cluster,
    me: &str,
    my_api_url: &str,
) -> Map<String, Value> {
    let mut m: Map<String, Value> = cluster
        .members
        .iter()
        .filter(|m| !m.data.api_url.is_empty())
        .map(|m| (m.name.clone(), json!(m.data.api_url)))
        .collect();
    m.insert(me.to_string(), json!(my_api_url));
    m
}

impl<K: Kv> Agent<K> {
    /// The leader writes the `failsafe` key when failsafe mode is on and the members changed.
    pub(super) async fn publish_failsafe(&mut self, cluster: &Cluster) {
        if !cluster.dynamic_config().failsafe_mode() {
            return;
        }
        let want = failsafe_members(cluster, &self.cfg.name, &self.cfg.restapi.api_url());
        if cluster.failsafe.as_ref() == Some(&want) {
            return;
        }
        match self
            .with_demote_deadline(self.dcs.write_failsafe(&want))
            .await
        {
            Ok(()) => {
                info!(members = want.len(), "failsafe key written");
                self.failsafe_written = Some(want);
            }
            Err(e) => warn!("cannot write the failsafe key: {e}"),
        }
    }

    /// With etcd unreachable: asks every other member listed in the last `failsafe` key seen
    /// to confirm this primary. `Ok` only when all of them answered `Accepted`.
    pub(super) async fn failsafe_round(
        &self,
        wal_position: Option<u64>,
        limit: Duration,
    ) -> Result<(), String> {
        let last = self.snapshot.borrow().cluster.clone();
        let listed = last
            .as_ref()
            .and_then(|c| c.failsafe.clone())
            .unwrap_or_default();
        if listed.is_empty() {
            return Err("no failsafe key was seen before etcd became unreachable".into());
        }
        if !listed.contains_key(&self.cfg.name) {
            return Err("the failsafe key does not list this member".into());
        }
        let body = json!({
            "name": self.cfg.name,
            "conn_url": self.cfg.postgresql.conn_url(),
            "api_url": self.cfg.restapi.api_url(),
            "slots": {},
            "wal_position": wal_position,
        });
        let auth = self
            .rest_auth
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut asks = tokio::task::JoinSet::new();
        for (name, url) in listed.iter().filter(|(n, _)| **n != self.cfg.name) {
            let (client, name, body, auth) =
                (self.peers.clone(), name.clone(), body.clone(), auth.clone());
            let url = url.as_str().unwrap_or_default().to_string();
            asks.spawn(async move {
                let mut last = String::new();
                for _ in 0..2 {
                    match client
                        .call(
                            reqwest::Method::POST,
                            &url,
                            "/failsafe",
                            &body,
                            auth.as_ref(),
                            CONFIRM_TIMEOUT,
                        )
                        .await
                    {
                        Ok((200, text)) if text.trim() == "Accepted" => return Ok(()),
                        Ok((code, text)) => {
                            last = format!("{name} answered {code} {}", text.trim())
                        }
                        Err(e) => last = format!("{name} did not answer: {e}"),
                    }
                }
                Err(last)
            });
        }
        let mut refusals = Vec::new();
        let collect = async {
            while let Some(r) = asks.join_next().await {
                match r {
                    Ok(Ok(())) => {}
                    Ok(Err(why)) => refusals.push(why),
                    Err(e) => refusals.push(format!("confirmation task failed: {e}")),
                }
            }
        };
        if tokio::time::timeout(limit, collect).await.is_err() {
            asks.abort_all();
            return Err(format!(
                "not every member confirmed within {} ms, the time left before this primary must be read-only",
                limit.as_millis()
            ));
        }
        if refusals.is_empty() {
            Ok(())
        } else {
            refusals.sort();
            Err(refusals.join("; "))
        }
    }

    /// How long a failsafe round may take: never past the moment this primary must be
    /// read-only (its last lock renewal, or last confirmed round, plus ttl - retry_timeout),
    /// and at most two confirmation attempts.
    pub(super) fn failsafe_round_limit(&self, t: shared::dcs::Timing) -> Duration {
        let keep = Duration::from_secs(t.ttl.saturating_sub(t.retry_timeout));
        let until = [self.lock_renewed, self.failsafe_confirmed]
            .into_iter()
            .flatten()
            .map(|start| start + keep)
            .max();
        let left = until.map_or(Duration::ZERO, |u| {
            u.saturating_duration_since(Instant::now())
        });
        left.min(CONFIRM_TIMEOUT * 2)
            .max(Duration::from_millis(100))
    }

    /// The primary in failsafe mode that reached this node less than `ttl` ago, if any.
    pub(super) fn failsafe_leader(&self, ttl: u64) -> Option<String> {
        let heard = self
            .failsafe_heard
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        heard
            .filter(|(_, at)| at.elapsed() < Duration::from_secs(ttl))
            .map(|(name, _)| name)
    }
}

/// Who last asked this node to confirm it as the failsafe primary, and when.
pub type FailsafeHeard = std::sync::Arc<std::sync::Mutex<Option<(String, Instant)>>>;

#[cfg(test)]
mod tests {
    use super::*;
    use shared::dcs::{Member, MemberData};

    #[test]
    fn the_key_lists_members_with_an_api_and_the_leader() {
        let member = |name: &str, api: &str| Member {
            name: name.into(),
            data: MemberData {
                api_url: api.into(),
                ..Default::default()
            },
            lease: 1,
            mod_revision: 1,
        };
        let cluster = Cluster {
            members: vec![
                member("n1", "http://10.0.0.1:8008/patroni"),
                member("n2", "http://10.0.0.2:8008/patroni"),
                member("n3", ""),
            ],
            ..Default::default()
        };
        let m = failsafe_members(&cluster, "n1", "http://10.0.0.1:8008/patroni");
        assert_eq!(
            Value::Object(m).to_string(),
            r#"{"n1":"http://10.0.0.1:8008/patroni","n2":"http://10.0.0.2:8008/patroni"}"#
        );
    }
}
