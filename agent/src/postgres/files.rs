//! The files pgpilot writes for PostgreSQL: `postgresql.conf` (including the original as
//! `postgresql.base.conf`), `pg_hba.conf`, `standby.signal`, the pgpass file, and the timeline
//! history it reads back.

use super::{Postgres, Upstream, write_private};
use anyhow::{Context, Result};
use serde_json::{Map, Value};
use shared::config::{PgUser, guc_value};
use shared::types::Lsn;
use std::path::{Path, PathBuf};

/// One line of a timeline history file: parent timeline, switch LSN, reason.
pub type TimelineSwitch = (u64, u64, String);

/// Quotes a GUC value for postgresql.conf.
fn quote_guc(v: &str) -> String {
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "''"))
}

/// The value of a GUC quoted by [`quote_guc`].
fn unquote_guc(v: &str) -> Option<String> {
    let inner = v.strip_prefix('\'')?.strip_suffix('\'')?;
    Some(inner.replace("''", "'").replace("\\\\", "\\"))
}

/// Quotes a libpq connection-string value.
fn quote_conninfo(v: &str) -> String {
    if !v.is_empty() && !v.contains([' ', '\'', '\\']) {
        v.to_string()
    } else {
        format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
    }
}

/// Escapes a pgpass field.
fn pgpass_field(v: &str) -> String {
    v.replace('\\', "\\\\").replace(':', "\\:")
}

impl Postgres {
    /// Writes the pgpass file with the replication and superuser credentials (mode 0600).
    pub fn write_pgpass(&self) -> Result<()> {
        let mut text = String::new();
        for user in [
            &self.cfg().postgresql.replication,
            &self.cfg().postgresql.superuser,
        ]
        .into_iter()
        .chain(self.cfg().postgresql.rewind.as_ref())
        {
            if let Some(pw) = &user.password {
                text.push_str(&format!(
                    "*:*:*:{}:{}\n",
                    pgpass_field(&user.username),
                    pgpass_field(pw.expose())
                ));
            }
        }
        let path = &self.cfg().postgresql.pgpass;
        if let Some(parent) = path.parent()
            && !parent.as_os_str().is_empty()
        {
            std::fs::create_dir_all(parent).ok();
        }
        write_private(path, &text).context("cannot write the pgpass file (postgresql.pgpass)")?;
        // the keys' passphrases (sslpassword) for the tools the agent runs, which must not get
        // them on their command line: a libpq service file beside the pgpass file
        let mut services = String::new();
        for user in [
            &self.cfg().postgresql.replication,
            &self.cfg().postgresql.superuser,
        ]
        .into_iter()
        .chain(self.cfg().postgresql.rewind.as_ref())
        {
            if let Some(p) = &user.sslpassword {
                services.push_str(&format!(
                    "[{}]\nsslpassword={}\n",
                    service_name(&user.username),
                    p.expose().replace(['\n', '\r'], "")
                ));
            }
        }
        write_private(&self.service_file(), &services)
            .context("cannot write the libpq service file beside postgresql.pgpass")
    }

    /// The libpq service file holding the keys' passphrases, beside the pgpass file.
    pub fn service_file(&self) -> PathBuf {
        let mut name = self.cfg().postgresql.pgpass.clone().into_os_string();
        name.push(".service");
        PathBuf::from(name)
    }

    /// A libpq connection string for `user` to `host:port`, password taken from the pgpass file,
    /// for a program's command line: the key's passphrase comes from the service file.
    pub fn conninfo(&self, user: &PgUser, host: &str, port: u16, extra: &[(&str, &str)]) -> String {
        self.conninfo_with(user, host, port, extra, false)
    }

    /// The same with the key's passphrase written in (for `primary_conninfo`, in a file only
    /// the postgres user reads).
    fn conninfo_with(
        &self,
        user: &PgUser,
        host: &str,
        port: u16,
        extra: &[(&str, &str)],
        inline_passphrase: bool,
    ) -> String {
        let mut parts = vec![
            format!("user={}", quote_conninfo(&user.username)),
            format!(
                "passfile={}",
                quote_conninfo(&self.cfg().postgresql.pgpass.to_string_lossy())
            ),
            format!("host={}", quote_conninfo(host)),
            format!("port={port}"),
        ];
        for (k, v) in &user.options {
            parts.push(format!("{k}={}", quote_conninfo(v)));
        }
        if let Some(p) = &user.sslpassword {
            if inline_passphrase {
                parts.push(format!("sslpassword={}", quote_conninfo(p.expose())));
            } else {
                parts.push(format!("service={}", service_name(&user.username)));
            }
        }
        for (k, v) in extra {
            parts.push(format!("{k}={}", quote_conninfo(v)));
        }
        parts.join(" ")
    }

    /// The GUCs pgpilot writes: Patroni's defaults, then the dynamic configuration's parameters,
    /// then the local ones; `listen_addresses`, `port`, `cluster_name` and `hot_standby` always
    /// come from pgpilot.
    pub fn effective_parameters(&self, dynamic: &Map<String, Value>) -> Vec<(String, String)> {
        let mut params: Vec<(String, String)> = [
            ("max_connections", "100"),
            ("max_locks_per_transaction", "64"),
            ("max_worker_processes", "8"),
            ("max_prepared_transactions", "0"),
            ("track_commit_timestamp", "off"),
            ("wal_level", "replica"),
            ("max_wal_senders", "10"),
            ("max_replication_slots", "10"),
            ("wal_keep_size", "128MB"),
            ("wal_log_hints", "on"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let mut set = |k: &str, v: String| match params.iter_mut().find(|(pk, _)| pk == k) {
            Some(p) => p.1 = v,
            None => params.push((k.to_string(), v)),
        };
        let mut dropped = Vec::new();
        let mut given_keep_size = false;
        let mut keep_segments = None;
        for (k, v) in dynamic
            .iter()
            .chain(self.cfg().postgresql.parameters.iter())
        {
            if matches!(
                k.as_str(),
                "listen_addresses" | "port" | "cluster_name" | "hot_standby"
            ) || v.is_null()
            {
                continue;
            }
            // the pre-13 name, converted below when nothing names the new one
            if k == "wal_keep_segments" {
                keep_segments = Some(guc_value(v));
                continue;
            }
            given_keep_size |= k == "wal_keep_size";
            set(k, guc_value(v));
        }
        if let Some(segments) = keep_segments
            && !given_keep_size
        {
            match super::catalog::wal_keep_size_of_segments(&segments) {
                Some(size) => set("wal_keep_size", size),
                None => dropped.push(format!(
                    "wal_keep_segments ({segments:?} is not a number of segments)"
                )),
            }
        }
        let (host, port) = shared::config::split_host_port(&self.cfg().postgresql.listen)
            .unwrap_or(("127.0.0.1".into(), 5432));
        set("listen_addresses", host);
        set("port", port.to_string());
        set("cluster_name", self.cfg().scope.clone());
        set("hot_standby", "on".into());
        // copies of logical slots on replicas need the primary to keep their catalog rows
        if self.logical_slots() {
            set("hot_standby_feedback", "on".into());
        }
        // PostgreSQL 17+ with failover slots asked for: the server itself keeps a standby's
        // copies (its slot sync worker; needs the feedback above, primary_slot_name and a
        // dbname in primary_conninfo, all written here). A member that cannot sync (cascading,
        // nostream, nofailover, without slots) runs without it rather than failing at it.
        if self.failover_slots() && !self.can_sync_slots() {
            set("sync_replication_slots", "off".into());
        }
        if let Some(names) = self.sync_names() {
            set(
                "synchronous_standby_names",
                crate::synchronous::guc_value(&names, self.sync_any()),
            );
        }
        // a name that is no parameter name could inject lines; the upstream, the slot and
        // the recovery targets are pgpilot's (in parameters they would make a replica stop,
        // pause or promote at a target)
        params.retain(|(k, _)| {
            let keep = super::methods::is_parameter_name(k) && !super::methods::replica_owned(k);
            if !keep {
                dropped.push(k.clone());
            }
            keep
        });
        // names this server does not know (misspelt, retired, internal) would keep it from
        // starting: left out, with a warning
        if let Some(catalog) = self.catalog() {
            params.retain(|(k, _)| {
                let keep = catalog.accepts(k);
                if !keep {
                    dropped.push(k.clone());
                }
                keep
            });
        }
        self.note_dropped(dropped);
        params
    }

    /// The parameter part of `postgresql.conf` (everything but the recovery settings).
    fn render_parameters(&self, dynamic: &Map<String, Value>) -> String {
        let dir = self.conf_dir();
        let mut text = String::from(
            "# Written by pgpilot; edits are overwritten. Set parameters in the agent's YAML\n\
             # (postgresql.parameters) or cluster-wide in the DCS config key.\n\
             include 'postgresql.base.conf'\n\n",
        );
        for (k, v) in self.effective_parameters(dynamic) {
            text.push_str(&format!("{k} = {}\n", quote_guc(&v)));
        }
        if self.cfg().postgresql.config_dir.is_some() {
            text.push_str(&format!(
                "hba_file = {}\nident_file = {}\n",
                quote_guc(&dir.join("pg_hba.conf").to_string_lossy()),
                quote_guc(&dir.join("pg_ident.conf").to_string_lossy())
            ));
        }
        text
    }

    /// Whether `postgresql.conf` holds other parameters than the configuration asks for now
    /// (the dynamic configuration or the local YAML changed).
    pub fn parameters_outdated(&self, dynamic: &Map<String, Value>) -> bool {
        let Ok(text) = std::fs::read_to_string(self.conf_dir().join("postgresql.conf")) else {
            return false;
        };
        let head = text.split(RECOVERY_MARK).next().unwrap_or("");
        head.trim_end() != self.render_parameters(dynamic).trim_end()
    }

    /// Takes the `synchronous_standby_names` pgpilot last wrote into `postgresql.conf` as the
    /// setting synchronous mode manages (an agent restarted beside a running primary).
    pub fn adopt_sync_setting(&self) {
        if self.sync_names().is_some() {
            return;
        }
        let Ok(text) = std::fs::read_to_string(self.conf_dir().join("postgresql.conf")) else {
            return;
        };
        let params = text.split(RECOVERY_MARK).next().unwrap_or_default();
        let value = params.lines().find_map(|l| {
            let (k, v) = l.split_once('=')?;
            (k.trim() == "synchronous_standby_names").then(|| unquote_guc(v.trim()))
        });
        // only a value in the form pgpilot writes (a user's own is the configuration's)
        if let Some((names, any)) = value
            .flatten()
            .as_deref()
            .and_then(|v| {
                crate::synchronous::parse_guc_value(v)
                    .filter(|(names, any)| crate::synchronous::guc_value(names, *any) == v)
            })
            .filter(|(names, _)| !names.is_empty())
        {
            self.set_sync_setting(Some(names), any);
        }
    }

    /// Rewrites the parameter part of `postgresql.conf`, keeping its recovery settings.
    pub fn rewrite_parameters(&self, dynamic: &Map<String, Value>) -> Result<()> {
        let conf = self.conf_dir().join("postgresql.conf");
        let old = std::fs::read_to_string(&conf).unwrap_or_default();
        let mut text = self.render_parameters(dynamic);
        if let Some((_, recovery)) = old.split_once(RECOVERY_MARK) {
            text.push_str(RECOVERY_MARK);
            text.push_str(recovery);
        }
        write_atomic(&conf, &text)
    }

    /// Whether pg_hba.conf differs from what `postgresql.pg_hba` (local, else dynamic) asks for.
    pub fn hba_outdated(&self, dynamic_hba: Option<Vec<String>>) -> bool {
        let Some(want) = self.render_hba(dynamic_hba) else {
            return false;
        };
        std::fs::read_to_string(self.conf_dir().join("pg_hba.conf")).ok() != Some(want)
    }

    fn render_hba(&self, dynamic_hba: Option<Vec<String>>) -> Option<String> {
        let lines = self.cfg().postgresql.pg_hba.clone().or(dynamic_hba)?;
        let mut text = String::from("# Written by pgpilot from postgresql.pg_hba\n");
        for l in lines {
            text.push_str(&l);
            text.push('\n');
        }
        Some(text)
    }

    /// Writes `postgresql.conf` (the original is kept as `postgresql.base.conf` and included),
    /// and `standby.signal` plus recovery settings for a replica.
    pub fn write_config(
        &self,
        dynamic: &Map<String, Value>,
        replica_of: Option<Option<&Upstream>>,
    ) -> Result<()> {
        let dir = self.conf_dir();
        let conf = dir.join("postgresql.conf");
        let base = dir.join("postgresql.base.conf");
        if !base.exists() {
            if conf.exists() {
                std::fs::rename(&conf, &base).with_context(|| {
                    format!("cannot rename {} to {}", conf.display(), base.display())
                })?;
            } else {
                std::fs::write(&base, "")?;
            }
        }
        let mut text = self.render_parameters(dynamic);
        let signal = self.data_dir().join("standby.signal");
        if let Some(upstream) = replica_of {
            text.push_str(RECOVERY_MARK);
            text.push_str("recovery_target_timeline = 'latest'\n");
            // a standby cluster's remote primary (the standby leader follows it)
            let standby = self.standby_cluster();
            let to_remote = standby
                .as_ref()
                .is_some_and(|sc| match (upstream, sc.address()) {
                    (Some(up), Some(addr)) => format!("{}:{}", up.host, up.port) == addr,
                    (None, None) => true,
                    _ => false,
                });
            // recovery_conf: restore_command (a replica that cannot stream keeps up from the
            // archive), archive_cleanup_command, recovery_min_apply_delay, …; in a standby
            // cluster its own restore and cleanup commands on every member, its apply delay on
            // the standby leader
            let catalog = self.catalog();
            let mut settings = self.replica_recovery_settings();
            if let Some(sc) = &standby {
                let mut set = |k: &str, v: &Option<String>| {
                    if let Some(v) = v {
                        settings.retain(|(sk, _)| sk != k);
                        settings.push((k.to_string(), v.clone()));
                    }
                };
                set("restore_command", &sc.restore_command);
                set("archive_cleanup_command", &sc.archive_cleanup_command);
                if to_remote {
                    set("recovery_min_apply_delay", &sc.recovery_min_apply_delay);
                }
            }
            for (k, v) in settings {
                if catalog.as_ref().is_none_or(|c| c.accepts(&k)) {
                    text.push_str(&format!("{k} = {}\n", quote_guc(&v)));
                }
            }
            if let Some(up) = upstream.filter(|_| self.cfg().tags.nostream) {
                // nostream, as Patroni: no streaming at all, WAL from the archive
                // (restore_command) only; the member it follows is noted for the agent
                text.push_str(&format!("{NOSTREAM_MARK}{}:{}\n", up.host, up.port));
            } else if let Some(up) = upstream {
                let ci = self.conninfo_with(
                    &self.cfg().postgresql.replication,
                    &up.host,
                    up.port,
                    &[
                        ("application_name", &self.cfg().name),
                        ("dbname", "postgres"),
                    ],
                    true,
                );
                text.push_str(&format!("primary_conninfo = {}\n", quote_guc(&ci)));
                if to_remote {
                    // on the remote primary: the slot standby_cluster names, or none
                    if let Some(slot) = standby.as_ref().and_then(|sc| sc.primary_slot_name.clone())
                    {
                        text.push_str(&format!("primary_slot_name = {}\n", quote_guc(&slot)));
                    }
                } else if !self.cfg().tags.nostream && self.use_slots() {
                    text.push_str(&format!(
                        "primary_slot_name = {}\n",
                        quote_guc(&shared::types::slot_name(&self.cfg().name))
                    ));
                }
            }
            std::fs::write(&signal, "")?;
        } else if signal.exists() {
            std::fs::remove_file(&signal)?;
        }
        write_atomic(&conf, &text)?;
        Ok(())
    }

    /// Writes `postgresql.conf` for a server that recovers to a target and ends recovery (a
    /// custom bootstrap's `recovery_conf`): the parameters, then `settings`, with
    /// `recovery.signal`.
    pub fn write_recovery_target(
        &self,
        dynamic: &Map<String, Value>,
        settings: &Map<String, Value>,
    ) -> Result<()> {
        self.write_config(dynamic, None)?;
        let conf = self.conf_dir().join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).unwrap_or_default();
        text.push_str(RECOVERY_MARK);
        for (k, v) in settings {
            if v.is_null()
                || k.eq_ignore_ascii_case("standby_mode")
                || !super::methods::is_parameter_name(k)
            {
                continue;
            }
            text.push_str(&format!("{k} = {}\n", quote_guc(&guc_value(v))));
        }
        write_atomic(&conf, &text)?;
        std::fs::write(self.data_dir().join("recovery.signal"), "")?;
        Ok(())
    }

    /// The upstream `host:port` configured in postgresql.conf, if any.
    pub fn configured_upstream(&self) -> Option<String> {
        let text = std::fs::read_to_string(self.conf_dir().join("postgresql.conf")).ok()?;
        if let Some(noted) = text.lines().find_map(|l| l.strip_prefix(NOSTREAM_MARK)) {
            return Some(noted.trim().to_string());
        }
        let line = text
            .lines()
            .find(|l| l.starts_with("primary_conninfo = "))?;
        let mut host = None;
        let mut port = None;
        for part in line.split_whitespace() {
            let part = part.trim_matches('\'');
            if let Some(h) = part.strip_prefix("host=") {
                host = Some(h.trim_matches('\'').to_string());
            } else if let Some(p) = part.strip_prefix("port=") {
                port = Some(p.trim_matches('\'').to_string());
            }
        }
        Some(format!("{}:{}", host?, port?))
    }

    /// Writes pg_hba.conf from `postgresql.pg_hba` (local config first, then dynamic), or
    /// appends `bootstrap.pg_hba` to initdb's file at bootstrap.
    pub fn write_hba(&self, dynamic_hba: Option<Vec<String>>, bootstrap: bool) -> Result<()> {
        let path = self.conf_dir().join("pg_hba.conf");
        if let Some(text) = self.render_hba(dynamic_hba) {
            write_atomic(&path, &text)?;
        } else if bootstrap && !self.cfg().bootstrap.pg_hba.is_empty() {
            let mut text = std::fs::read_to_string(&path).unwrap_or_default();
            text.push_str("\n# bootstrap.pg_hba\n");
            for l in &self.cfg().bootstrap.pg_hba {
                text.push_str(l);
                text.push('\n');
            }
            write_atomic(&path, &text)?;
        }
        Ok(())
    }

    /// Reads `<timeline>.history` from pg_wal: `(parent timeline, switch LSN, reason)` lines.
    pub fn timeline_history(
        &self,
        timeline: u64,
    ) -> Option<(Vec<TimelineSwitch>, std::time::SystemTime)> {
        let path = self
            .data_dir()
            .join("pg_wal")
            .join(format!("{timeline:08X}.history"));
        let text = std::fs::read_to_string(&path).ok()?;
        let mtime = std::fs::metadata(&path).and_then(|m| m.modified()).ok()?;
        let entries = text
            .lines()
            .filter_map(|l| {
                let mut parts = l.splitn(3, '\t');
                let tl = parts.next()?.trim().parse().ok()?;
                let lsn = parts.next()?.trim().parse::<Lsn>().ok()?.0;
                let reason = parts.next().unwrap_or("").trim().to_string();
                Some((tl, lsn, reason))
            })
            .collect();
        Some((entries, mtime))
    }
}

impl Postgres {
    fn dynamic_cache(&self) -> std::path::PathBuf {
        self.data_dir().join("patroni.dynamic.json")
    }

    /// Keeps a copy of the cluster's dynamic configuration in the data directory (Patroni's
    /// `patroni.dynamic.json`), so a lost or broken `config` key is restored from it.
    pub fn cache_dynamic_config(&self, json: &str) -> Result<()> {
        if std::fs::read_to_string(self.dynamic_cache())
            .ok()
            .as_deref()
            == Some(json)
        {
            return Ok(());
        }
        write_atomic(&self.dynamic_cache(), json)
    }

    /// The cached dynamic configuration, if there is a valid one.
    pub fn cached_dynamic_config(&self) -> Option<String> {
        std::fs::read_to_string(self.dynamic_cache())
            .ok()
            .filter(|t| shared::dcs::DynamicConfig::parse(t).is_some())
    }
}

fn write_atomic(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("pgpilot-tmp");
    std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(())
}

/// How a `nostream` replica's configuration names the member it follows (it has no
/// `primary_conninfo`): `# pgpilot nostream (WAL from the archive only), following HOST:PORT`.
const NOSTREAM_MARK: &str = "# pgpilot nostream (WAL from the archive only), following ";

/// Where the recovery settings start in `postgresql.conf`.
const RECOVERY_MARK: &str = "\n# recovery\n";

/// The section of the service file for `user`.
fn service_name(user: &str) -> String {
    format!("pgpilot_{}", shared::types::slot_name(user))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A replica's WAL end on timeline 2 continues on timeline 3 only when it stopped at or
    /// before 3's fork point: past it, it diverged (the simulation found a replica past the
    /// fork taking the newer file's timeline, so it was never rewound).
    #[test]
    fn wal_continues_on_the_newest_history_only_before_its_fork() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let yaml = crate::tests_support::MIN_YAML.replace(
            "data_dir: /tmp/pgpilot-test/n1",
            &format!("data_dir: {}", data.display()),
        );
        let cfg = std::sync::Arc::new(shared::config::Config::from_yaml(&yaml, "test").unwrap());
        let pg = super::super::Postgres::new(cfg);
        // no pg_wal: the base timeline
        assert_eq!(pg.wal_timeline(2, 0x300), 2);
        std::fs::create_dir_all(data.join("pg_wal")).unwrap();
        std::fs::write(
            data.join("pg_wal/00000003.history"),
            "1\t0/100\tno recovery target specified\n2\t0/200\tno recovery target specified\n",
        )
        .unwrap();
        assert_eq!(pg.wal_timeline(2, 0x1F0), 3, "before the fork");
        assert_eq!(pg.wal_timeline(2, 0x200), 3, "at the fork");
        assert_eq!(pg.wal_timeline(2, 0x201), 2, "past the fork: diverged");
        // timeline 1 forked at 0/100
        assert_eq!(pg.wal_timeline(1, 0x100), 3);
        assert_eq!(pg.wal_timeline(1, 0x101), 1);
        // already on the newest
        assert_eq!(pg.wal_timeline(3, 0x900), 3);
        // a history file that is not one: the base
        std::fs::write(data.join("pg_wal/00000004.history"), "garbage").unwrap();
        assert_eq!(pg.wal_timeline(2, 0x100), 2);

        // the segment files say it first: a replica reporting the timeline of its last
        // restartpoint (2) holds segment 0/1 of timeline 3: it is on 3, though past the fork
        let segment = |name: &str| {
            std::fs::File::create(data.join("pg_wal").join(name))
                .unwrap()
                .set_len(16 << 20)
                .unwrap();
        };
        segment("000000020000000000000001");
        let in_segment_1 = 0x0100_0100;
        assert_eq!(pg.wal_timeline(2, in_segment_1), 2);
        segment("000000030000000000000001");
        assert_eq!(pg.wal_timeline(2, in_segment_1), 3);
        // the last byte before a segment boundary is in the segment before
        assert_eq!(pg.wal_timeline(2, 0x0200_0000), 3);
        // a reported timeline ahead of the files stands
        assert_eq!(pg.wal_timeline(5, in_segment_1), 5);
        // no file for the position's segment: the history files decide
        assert_eq!(pg.wal_timeline(2, 0x0500_0000), 2);
    }

    #[test]
    fn quoting() {
        assert_eq!(quote_guc("it's"), "'it''s'");
        assert_eq!(quote_conninfo("plain"), "plain");
        assert_eq!(quote_conninfo("a b"), "'a b'");
        assert_eq!(pgpass_field("a:b\\c"), "a\\:b\\\\c");
    }

    #[test]
    fn a_keys_passphrase_never_goes_on_a_command_line() {
        let dir = tempfile::tempdir().unwrap();
        let yaml = crate::tests_support::MIN_YAML
            .replace(
                "replication: {username: replicator, password: rep-pass}",
                "replication: {username: replicator, password: rep-pass, sslmode: verify-full, sslkey: /k.pem, sslpassword: key-phrase}",
            )
            .replace("data_dir: /tmp/pgpilot-test/n1", &format!("data_dir: {}/data\n  pgpass: {}/pgpass", dir.path().display(), dir.path().display()));
        let cfg = std::sync::Arc::new(shared::config::Config::from_yaml(&yaml, "test").unwrap());
        let pg = super::super::Postgres::new(cfg.clone());
        let user = &cfg.postgresql.replication;
        let command_line = pg.conninfo(user, "10.0.0.2", 5432, &[]);
        assert!(!command_line.contains("key-phrase"), "{command_line}");
        assert!(
            command_line.contains("service=pgpilot_replicator"),
            "{command_line}"
        );
        let in_file = pg.conninfo_with(user, "10.0.0.2", 5432, &[], true);
        assert!(in_file.contains("sslpassword=key-phrase"), "{in_file}");
        // the service file holds it, private
        pg.write_pgpass().unwrap();
        let services = std::fs::read_to_string(pg.service_file()).unwrap();
        assert_eq!(services, "[pgpilot_replicator]\nsslpassword=key-phrase\n");
        use std::os::unix::fs::PermissionsExt;
        for f in [pg.service_file(), dir.path().join("pgpass")] {
            let mode = std::fs::metadata(&f).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", f.display());
        }
        // a pgpass file that existed readable by others is made private
        let pgpass = dir.path().join("pgpass");
        std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o644)).unwrap();
        pg.write_pgpass().unwrap();
        let mode = std::fs::metadata(&pgpass).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
