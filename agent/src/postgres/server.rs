//! The seam between the agent and the machine under it: the PostgreSQL programs it runs
//! (pg_ctl, initdb, pg_controldata, pg_rewind, pg_basebackup, `postgres --single`), the
//! postmaster it starts and watches, and the statements it sends its own server. Without a
//! [`Server`], [`super::Postgres`] does all of this for real; the seeded simulation installs one
//! of its own, so that everything above these calls — their deadlines, the marker files, the
//! configuration files, pg_control's parsing, the HA runtime — is the daemon's own code.

use super::{SlotInfo, Upstream, sql::ServerStatus};
use anyhow::Result;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::Notify;

/// An answer still to come.
pub type Pending<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'a>>;

/// What the agent asks of the machine and of its own server, one call each.
pub trait Server: Send + Sync {
    /// Runs `program` (a PostgreSQL binary's file name) with `args`: its stdout and stderr, or
    /// why it failed. The caller bounds the wait.
    fn run(&self, program: &str, args: Vec<String>) -> Pending<'_, (String, String)>;
    /// Starts the postmaster; `exited` is notified when it exits. Its PID.
    fn start_postmaster(&self, exited: Arc<Notify>) -> Result<u32>;
    /// The running postmaster's PID, if one runs on the data directory.
    fn postmaster_pid(&self) -> Option<i32>;
    /// SIGKILLs every server process on the data directory (a frozen postmaster, or the
    /// children a dead one left).
    fn kill_all(&self);
    /// The status queries ([`ServerStatus`]).
    fn status(&self) -> Pending<'_, ServerStatus>;
    /// `pg_promote()`, returning once the server accepts writes.
    fn promote(&self) -> Pending<'_, ()>;
    fn checkpoint(&self) -> Pending<'_, ()>;
    fn reload(&self) -> Pending<'_, ()>;
    /// The replication and rewind roles after bootstrap.
    fn create_roles(&self) -> Pending<'_, ()>;
    /// `pg_replication_slots`.
    fn slots(&self) -> Pending<'_, Vec<SlotInfo>>;
    /// A physical slot reserving WAL, unless it exists.
    fn create_slot(&self, name: &str) -> Pending<'_, ()>;
    fn drop_slot(&self, name: &str) -> Pending<'_, ()>;
    /// `current_setting(name)`.
    fn show(&self, setting: &str) -> Pending<'_, String>;
    /// The newest timeline history file of the server at `from` (name and content); `None` on
    /// timeline 1.
    fn timeline_history(&self, from: &Upstream) -> Pending<'_, Option<(String, Vec<u8>)>>;
}

/// A command's program file name and its arguments, as text.
pub(super) fn program_and_args(cmd: &tokio::process::Command) -> (String, Vec<String>) {
    let std = cmd.as_std();
    let program = std::path::Path::new(std.get_program())
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let args = std
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    (program, args)
}
