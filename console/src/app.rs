//! The live console's state and its pure `update`: messages in (etcd snapshots, REST samples,
//! keys, ticks, action results), state changes and effects out (quit, run an operation). No IO
//! and no clock here: time arrives in the messages, so every behaviour is testable.

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers, MouseButton, MouseEvent, MouseEventKind};
use serde_json::Value;
use shared::dcs::{Cluster, Member};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// How far back the charts reach: each member's samples older than this are dropped.
pub const CHART_SPAN: Duration = Duration::from_secs(300);
/// At most this many samples per member (a sample a second over [`CHART_SPAN`], with room).
const CHART_POINTS: usize = 600;
/// How many lines the event log keeps.
const EVENTS: usize = 500;
/// How long a change stays highlighted.
pub const HIGHLIGHT: Duration = Duration::from_secs(5);
/// How long an operation's outcome stays on the status line (the key hints come back after).
pub const STATUS_SHOWN: Duration = Duration::from_secs(20);

/// A member's last answer to `GET /patroni`.
#[derive(Debug, Clone)]
pub struct Sample {
    pub at: Instant,
    /// The JSON body, or why there is none.
    pub body: Result<Value, String>,
    /// A replica's replay delay in seconds at sampling time (see [`replay_delay`]).
    pub delay: Option<f64>,
}

/// How far a replica's replay is behind in time: 0 when it has replayed all it received, else
/// the age of the last replayed transaction at `now` (`None` for a primary or when unknown).
pub fn replay_delay(body: &Value, now: chrono::DateTime<chrono::Utc>) -> Option<f64> {
    let x = body.get("xlog")?;
    let received = x.get("received_location")?.as_u64()?;
    let replayed = x.get("replayed_location")?.as_u64()?;
    if replayed >= received {
        return Some(0.0);
    }
    let ts = x.get("replayed_timestamp")?.as_str()?;
    let at = chrono::DateTime::parse_from_str(ts, "%Y-%m-%d %H:%M:%S%.f%:z")
        .or_else(|_| chrono::DateTime::parse_from_rfc3339(ts))
        .ok()?;
    Some(
        (now - at.with_timezone(&chrono::Utc))
            .num_milliseconds()
            .max(0) as f64
            / 1000.0,
    )
}

/// What the console knows about etcd.
#[derive(Debug, Clone, Default)]
pub struct EtcdHealth {
    /// The last read failed (down, unreachable or without quorum).
    pub error: Option<String>,
    /// When the last successful read arrived.
    pub last_ok: Option<Instant>,
    /// Wall-clock time of the last successful read, for the banner.
    pub last_ok_clock: Option<String>,
}

/// The screens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// Every cluster of the namespace.
    Clusters,
    /// One cluster, with a tab.
    Cluster(Tab),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tab {
    Members,
    History,
    Config,
    Events,
    /// Replay lag and WAL rate over the last minutes, per member.
    Charts,
}

impl Tab {
    pub const ALL: [Tab; 5] = [
        Tab::Members,
        Tab::History,
        Tab::Config,
        Tab::Events,
        Tab::Charts,
    ];
    pub fn title(self) -> &'static str {
        match self {
            Tab::Members => "Members",
            Tab::History => "History",
            Tab::Config => "Config",
            Tab::Events => "Events",
            Tab::Charts => "Charts",
        }
    }
}

/// An operation the console can run, through `shared::ops`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    Pause {
        scope: String,
        on: bool,
    },
    /// Make the cluster a standby cluster of the primary at `remote` (`host:port`), or with
    /// `None` a cluster of its own (demote-cluster / promote-cluster).
    StandbyCluster {
        scope: String,
        remote: Option<String>,
    },
    CancelSwitchover {
        scope: String,
    },
    /// Hand the lock over from `leader` to `candidate` (the healthiest replica if `None`), now
    /// or at `at` (ISO 8601 with a zone).
    Switchover {
        scope: String,
        leader: String,
        candidate: Option<String>,
        at: Option<String>,
    },
    /// Promote `candidate` when there is no healthy leader.
    Failover {
        scope: String,
        candidate: String,
    },
    /// Restart a member's PostgreSQL, now or at `at`, or only if a restart is pending.
    Restart {
        scope: String,
        member: String,
        pending_only: bool,
        at: Option<String>,
    },
    CancelRestart {
        scope: String,
        member: String,
    },
    /// Wipe a replica's data directory and clone it again.
    Reinit {
        scope: String,
        member: String,
    },
    /// Make a member's agent re-read its configuration file.
    Reload {
        scope: String,
        member: String,
    },
    /// Throw one of the demo's failure switches: `program --dir DIR ARGS…` (the `demo`
    /// program recorded in the demo's `demo.json`).
    Demo {
        scope: String,
        program: String,
        dir: String,
        args: Vec<String>,
    },
}

impl Operation {
    /// The cluster the operation acts on.
    pub fn scope(&self) -> &str {
        match self {
            Operation::Pause { scope, .. }
            | Operation::StandbyCluster { scope, .. }
            | Operation::CancelSwitchover { scope }
            | Operation::Switchover { scope, .. }
            | Operation::Failover { scope, .. }
            | Operation::Restart { scope, .. }
            | Operation::CancelRestart { scope, .. }
            | Operation::Reinit { scope, .. }
            | Operation::Reload { scope, .. }
            | Operation::Demo { scope, .. } => scope,
        }
    }
}

/// A question waiting for y/n.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confirm {
    pub title: String,
    /// Exactly what will happen.
    pub text: String,
    pub operation: Operation,
}

/// The demo's failure switches (`console --demo DIR`), as its `demo.json` records them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DemoSwitches {
    pub dir: String,
    /// The `demo` program that throws the switches.
    pub program: String,
    /// The nodes run in network namespaces (isolation possible).
    pub isolation: bool,
    pub etcd_stopped: bool,
    pub cut: Vec<String>,
    pub isolated: Vec<String>,
}

impl DemoSwitches {
    /// Reads a `demo.json` record; the reason when it is not one.
    pub fn parse(dir: &str, text: &str) -> Result<DemoSwitches, String> {
        let v: Value = serde_json::from_str(text).map_err(|e| format!("{dir}/demo.json: {e}"))?;
        let program = v["control"]
            .as_str()
            .ok_or_else(|| format!("{dir}/demo.json names no control program"))?
            .to_string();
        let nodes = v["nodes"].as_array().cloned().unwrap_or_default();
        let named = |flag: &str| -> Vec<String> {
            nodes
                .iter()
                .filter(|n| n[flag].as_bool() == Some(true))
                .filter_map(|n| n["name"].as_str().map(str::to_string))
                .collect()
        };
        Ok(DemoSwitches {
            dir: dir.to_string(),
            program,
            isolation: !v["net"].is_null(),
            etcd_stopped: v["etcd"]["stopped"].as_bool() == Some(true),
            cut: named("cut"),
            isolated: named("isolated"),
        })
    }
}

/// What the keyboard is typing into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    None,
    Filter(String),
    Command(String),
}

/// One line of the event log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub clock: String,
    pub scope: String,
    pub text: String,
}

/// Messages into [`update`].
#[derive(Debug)]
pub enum Msg {
    /// A fresh read of every cluster of the namespace, with the wall-clock time.
    Clusters {
        clusters: Vec<Cluster>,
        at: Instant,
        clock: String,
    },
    /// Reading etcd failed.
    EtcdFailed(String),
    Sample {
        api_url: String,
        sample: Sample,
    },
    Key(KeyEvent),
    /// A click or a wheel turn (when the console reports the mouse).
    Mouse(MouseEvent),
    Tick(Instant),
    /// An operation finished: what to tell the operator.
    Done(Result<String, String>),
    /// A fresh read of the demo's record (`console --demo`).
    Demo(Result<DemoSwitches, String>),
    /// A member's journal (its `GET /journal`), read at `api_url`.
    Journal {
        api_url: String,
        entries: Vec<shared::journal::Entry>,
    },
}

/// What the runner must do after an update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    Quit,
    Run(Operation),
}

/// One key binding, for the help overlay and the hint bar (generated from this table).
pub struct Binding {
    pub keys: &'static str,
    pub what: &'static str,
}

/// The live keymap.
pub const KEYMAP: &[Binding] = &[
    Binding {
        keys: "↑↓ / j k",
        what: "select",
    },
    Binding {
        keys: "Enter / l",
        what: "open the cluster; on a member, its keys and REST answer",
    },
    Binding {
        keys: "Esc / h",
        what: "back",
    },
    Binding {
        keys: "Tab / 1-5",
        what: "members, history, config, events, charts",
    },
    Binding {
        keys: "PgUp / PgDn",
        what: "scroll; mouse: click selects, click again opens",
    },
    Binding {
        keys: "/",
        what: "filter clusters and members",
    },
    Binding {
        keys: ":",
        what: "command: switchover, failover, restart, reinit, reload, pause, resume, dismiss, cancel-restart, cancel-switchover, quit; demo: cut, restore, crash, isolate, heal, etcd stop|start",
    },
    Binding {
        keys: "s",
        what: "switchover to the selected member (or the healthiest replica)",
    },
    Binding {
        keys: "F",
        what: "failover to the selected member",
    },
    Binding {
        keys: "r / R",
        what: "restart the selected member now / only if a restart is pending",
    },
    Binding {
        keys: "i",
        what: "reinitialize the selected replica (wipe and clone again)",
    },
    Binding {
        keys: "o",
        what: "reload the selected member's configuration file",
    },
    Binding {
        keys: "p",
        what: "pause or resume the cluster",
    },
    Binding {
        keys: "x / X",
        what: "cancel the scheduled switchover / scheduled restart",
    },
    Binding {
        keys: "C / K",
        what: "demo: cut/restore the member's machine / crash its postmaster",
    },
    Binding {
        keys: "N / E",
        what: "demo: isolate/reconnect the member / stop or start etcd",
    },
    Binding {
        keys: "f",
        what: "freeze or resume the refresh",
    },
    Binding {
        keys: "?",
        what: "help: this list of keys",
    },
    Binding {
        keys: "q",
        what: "quit",
    },
];

/// One REST sample reduced to what the charts draw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Point {
    pub at: Instant,
    /// Received minus replayed WAL, in bytes (a replica).
    pub lag: Option<u64>,
    /// The WAL position: written (a primary) or received (a replica).
    pub wal: Option<u64>,
}

/// One line of a chart: a member's name and its points as (seconds before now, value).
#[derive(Debug, Clone, PartialEq)]
pub struct Trace {
    pub member: String,
    pub points: Vec<(f64, f64)>,
    /// The largest value in the window.
    pub peak: f64,
}

/// What a chart draws.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Measure {
    /// Replay lag in bytes.
    ReplayLag,
    /// WAL written (primary) or received (replica) per second.
    WalRate,
}

/// How many members one chart draws at most (the largest peaks first).
pub const CHART_TRACES: usize = 6;

/// The chart of one member's samples: x is seconds before `now` (negative), y the measure.
pub fn trace(points: &VecDeque<Point>, now: Instant, measure: Measure) -> Vec<(f64, f64)> {
    let x = |at: Instant| -now.saturating_duration_since(at).as_secs_f64();
    match measure {
        Measure::ReplayLag => points
            .iter()
            .filter_map(|p| Some((x(p.at), p.lag? as f64)))
            .collect(),
        Measure::WalRate => rates(points).map(|(at, r)| (x(at), r)).collect(),
    }
}

/// The largest value of a member's line, `None` when it has no point.
fn peak(points: &VecDeque<Point>, measure: Measure) -> Option<f64> {
    match measure {
        Measure::ReplayLag => points.iter().filter_map(|p| p.lag).max().map(|l| l as f64),
        Measure::WalRate => rates(points).map(|(_, r)| r).reduce(f64::max),
    }
}

/// WAL bytes per second between consecutive samples, at the later one's time; a position that
/// went back (a re-clone) gives no rate.
fn rates(points: &VecDeque<Point>) -> impl Iterator<Item = (Instant, f64)> + '_ {
    points
        .iter()
        .zip(points.iter().skip(1))
        .filter_map(|(a, b)| {
            let dt = b.at.checked_duration_since(a.at)?.as_secs_f64();
            let dw = b.wal?.checked_sub(a.wal?)?;
            (dt > 0.0).then(|| (b.at, dw as f64 / dt))
        })
}

/// Where the last frame drew what a mouse click can reach.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hits {
    /// The screen the frame showed: a click is taken only while it is still on screen.
    pub view: Option<View>,
    /// Each tab's label on the cluster screen.
    pub tabs: Vec<(ratatui::layout::Rect, Tab)>,
    /// The rows of the cluster or member table: their area (below the header) and the index
    /// of the first row shown.
    pub rows: Option<(ratatui::layout::Rect, usize)>,
}

/// A member whose key expired while this console watched: still listed (dimmed, with how
/// long it has been gone and what it last was) until it comes back or the operator dismisses
/// it, so that a cut machine stays in sight and the demo's `:restore` can name it.
#[derive(Debug, Clone)]
pub struct Departed {
    pub scope: String,
    /// Its member key as last read.
    pub member: Member,
    pub since: Instant,
}

/// The whole state of the live console.
pub struct App {
    pub clusters: Vec<Cluster>,
    pub samples: HashMap<String, Sample>,
    pub etcd: EtcdHealth,
    pub view: View,
    pub cluster_idx: usize,
    pub member_idx: usize,
    pub filter: String,
    pub input: Input,
    pub confirm: Option<Confirm>,
    pub help: bool,
    /// The selected member's keys and REST answer, in full.
    pub detail: bool,
    pub read_only: bool,
    /// Refresh frozen: new data is not applied.
    pub frozen: bool,
    pub events: VecDeque<LogLine>,
    /// The last operation's outcome or a refusal: (text, is_error).
    pub status: Option<(String, bool)>,
    /// The status line's text and when it first showed, so that it goes after [`STATUS_SHOWN`].
    status_since: Option<(String, Instant)>,
    /// Each member's recent samples, by REST address, for the charts (last [`CHART_SPAN`]).
    pub series: HashMap<String, VecDeque<Point>>,
    /// Lines scrolled down in the History, Config and Events tabs (mouse wheel, PgUp/PgDn).
    pub scroll: u16,
    /// Where the last frame put its clickable parts (set by the runner after each draw).
    pub hits: Hits,
    /// When each `scope/member` last changed role, state or leadership.
    pub changed: HashMap<String, Instant>,
    pub now: Instant,
    pub endpoint: String,
    pub namespace: String,
    /// The demo's switches, when the console watches the demo (`--demo`).
    pub demo: Option<DemoSwitches>,
    /// Why the demo's record cannot be read (a wrong `--demo` directory, a demo wiped).
    pub demo_problem: Option<String>,
    /// Members gone while this console watched.
    pub departed: Vec<Departed>,
    /// Each member's journal as last read, by REST address (kept when it stops answering).
    pub journals: HashMap<String, Vec<shared::journal::Entry>>,
}

impl App {
    pub fn new(endpoint: String, namespace: String, read_only: bool, now: Instant) -> App {
        App {
            clusters: Vec::new(),
            samples: HashMap::new(),
            etcd: EtcdHealth::default(),
            view: View::Clusters,
            cluster_idx: 0,
            member_idx: 0,
            filter: String::new(),
            input: Input::None,
            confirm: None,
            help: false,
            detail: false,
            read_only,
            frozen: false,
            events: VecDeque::new(),
            status: None,
            series: HashMap::new(),
            scroll: 0,
            hits: Hits::default(),
            changed: HashMap::new(),
            now,
            endpoint,
            namespace,
            demo: None,
            demo_problem: None,
            status_since: None,
            departed: Vec::new(),
            journals: HashMap::new(),
        }
    }

    /// Clusters shown, after the filter.
    pub fn visible_clusters(&self) -> Vec<&Cluster> {
        let f = self.filter.to_lowercase();
        self.clusters
            .iter()
            .filter(|c| {
                f.is_empty()
                    || c.scope.to_lowercase().contains(&f)
                    || c.members.iter().any(|m| m.name.to_lowercase().contains(&f))
            })
            .collect()
    }

    pub fn selected_cluster(&self) -> Option<&Cluster> {
        self.visible_clusters().get(self.cluster_idx).copied()
    }

    /// The journal of cluster `c`: what its members (present and gone) recorded and its
    /// history key, newest first.
    pub fn journal_of(&self, c: &Cluster) -> Vec<shared::journal::Entry> {
        let urls = c.members.iter().map(|m| &m.data.api_url).chain(
            self.departed_of(&c.scope)
                .into_iter()
                .map(|d| &d.member.data.api_url),
        );
        let mut all = shared::journal::from_history(c);
        for url in urls {
            if let Some(entries) = self.journals.get(url) {
                all.extend(entries.iter().cloned());
            }
        }
        shared::journal::merge(all)
    }

    /// The members of `scope` gone while this console watched, longest gone first.
    pub fn departed_of(&self, scope: &str) -> Vec<&Departed> {
        let mut v: Vec<&Departed> = self.departed.iter().filter(|d| d.scope == scope).collect();
        v.sort_by_key(|d| d.since);
        v
    }

    /// `:dismiss [MEMBER]`: stops listing a gone member (all of the cluster's without a name).
    fn dismiss(&mut self, named: Option<&str>) {
        let Some(scope) = self.selected_cluster().map(|c| c.scope.clone()) else {
            self.status = Some(("open a cluster first".into(), true));
            return;
        };
        let before = self.departed.len();
        self.departed
            .retain(|d| d.scope != scope || named.is_some_and(|n| d.member.name != n));
        let gone = before - self.departed.len();
        self.status = Some(match (gone, named) {
            (0, Some(n)) => (format!("{n} is not listed as gone"), true),
            (0, None) => ("no gone member is listed".into(), true),
            (n, _) => (format!("{n} gone member(s) no longer listed"), false),
        });
    }

    fn log(&mut self, clock: &str, scope: &str, text: String) {
        self.events.push_front(LogLine {
            clock: clock.to_string(),
            scope: scope.to_string(),
            text,
        });
        self.events.truncate(EVENTS);
    }

    /// Records what changed between two reads: leaders, roles, states, members, pause.
    fn diff(&mut self, new: &[Cluster], at: Instant, clock: &str) {
        let old = std::mem::take(&mut self.clusters);
        for c in new {
            let prev = old.iter().find(|o| o.scope == c.scope);
            let Some(prev) = prev else {
                if !old.is_empty() {
                    self.log(clock, &c.scope, "cluster appeared".into());
                }
                continue;
            };
            let leader = |x: &Cluster| x.leader.as_ref().map(|l| l.name.clone());
            if leader(prev) != leader(c) {
                let text = match (leader(prev), leader(c)) {
                    (Some(a), Some(b)) => format!("leader {a} → {b}"),
                    (None, Some(b)) => format!("{b} took the leader lock"),
                    (Some(a), None) => format!("leader lock of {a} is gone"),
                    (None, None) => String::new(),
                };
                self.log(clock, &c.scope, text);
                for n in leader(prev).into_iter().chain(leader(c)) {
                    self.changed.insert(format!("{}/{n}", c.scope), at);
                }
            }
            if prev.is_paused() != c.is_paused() {
                let text = if c.is_paused() {
                    "paused (maintenance mode)"
                } else {
                    "resumed"
                };
                self.log(clock, &c.scope, text.into());
            }
            for m in &c.members {
                let was_gone = self
                    .departed
                    .iter()
                    .position(|d| d.scope == c.scope && d.member.name == m.name);
                if let Some(i) = was_gone {
                    let d = self.departed.remove(i);
                    let gone = at.saturating_duration_since(d.since).as_secs();
                    self.log(clock, &c.scope, format!("{} is back after {gone}s", m.name));
                    self.changed.insert(format!("{}/{}", c.scope, m.name), at);
                    continue;
                }
                match prev.member(&m.name) {
                    None => {
                        self.log(clock, &c.scope, format!("{} joined", m.name));
                        self.changed.insert(format!("{}/{}", c.scope, m.name), at);
                    }
                    Some(p) => {
                        if p.data.role != m.data.role || p.data.state != m.data.state {
                            self.log(
                                clock,
                                &c.scope,
                                format!(
                                    "{}: {} {} → {} {}",
                                    m.name, p.data.role, p.data.state, m.data.role, m.data.state
                                ),
                            );
                            self.changed.insert(format!("{}/{}", c.scope, m.name), at);
                        }
                        if p.data.timeline != m.data.timeline
                            && let Some(tl) = m.data.timeline
                        {
                            self.log(clock, &c.scope, format!("{}: timeline {tl}", m.name));
                        }
                    }
                }
            }
            for p in &prev.members {
                if c.member(&p.name).is_none() {
                    self.log(
                        clock,
                        &c.scope,
                        format!(
                            "{} left (its key expired; it was {} on timeline {})",
                            p.name,
                            p.data.role,
                            p.data
                                .timeline
                                .map_or_else(|| "?".to_string(), |t| t.to_string())
                        ),
                    );
                    self.departed
                        .retain(|d| !(d.scope == c.scope && d.member.name == p.name));
                    self.departed.push(Departed {
                        scope: c.scope.clone(),
                        member: p.clone(),
                        since: at,
                    });
                }
            }
        }
        for o in &old {
            if !new.iter().any(|c| c.scope == o.scope) {
                self.log(clock, &o.scope, "cluster removed".into());
                self.departed.retain(|d| d.scope != o.scope);
            }
        }
    }

    fn clamp(&mut self) {
        let n = self.visible_clusters().len();
        if self.cluster_idx >= n {
            self.cluster_idx = n.saturating_sub(1);
        }
        let m = self
            .selected_cluster()
            .map(|c| c.members.len())
            .unwrap_or(0);
        if self.member_idx >= m {
            self.member_idx = m.saturating_sub(1);
        }
    }

    /// Asks before an operation, unless read-only.
    fn ask(&mut self, c: Confirm) {
        if self.read_only {
            self.status = Some((
                "read-only mode: actions are disabled (started with --read-only)".into(),
                true,
            ));
        } else {
            self.confirm = Some(c);
        }
    }

    fn pause_request(&mut self) {
        let Some(c) = self.selected_cluster() else {
            return;
        };
        let on = !c.is_paused();
        let scope = c.scope.clone();
        let text = if on {
            format!(
                "Pause cluster {scope}: its agents stop every automatic action (no failover, no restart of a stopped PostgreSQL) until it is resumed. PostgreSQL keeps running."
            )
        } else {
            format!("Resume cluster {scope}: automatic failover and healing start again.")
        };
        self.ask(Confirm {
            title: if on { "Pause" } else { "Resume" }.into(),
            text,
            operation: Operation::Pause { scope, on },
        });
    }

    /// Asks to confirm making the selected cluster a standby cluster of `remote`, or (with
    /// `None`) promoting a standby cluster.
    fn standby_request(&mut self, remote: Option<String>) {
        let Some(c) = self.selected_cluster() else {
            return;
        };
        let scope = c.scope.clone();
        let is_standby = c.dynamic_config().standby_cluster().is_some();
        let (title, text) = match &remote {
            None if !is_standby => {
                self.status = Some((format!("{scope} is not a standby cluster"), true));
                return;
            }
            None => (
                "Promote cluster",
                format!(
                    "Promote standby cluster {scope}: its standby leader becomes a primary and takes writes; it stops following its source."
                ),
            ),
            Some(_) if is_standby => {
                self.status = Some((format!("{scope} is already a standby cluster"), true));
                return;
            }
            Some(r) => (
                "Demote cluster",
                format!(
                    "Demote cluster {scope} to a standby cluster of {r}: its primary stops taking writes and replicates from {r}."
                ),
            ),
        };
        self.ask(Confirm {
            title: title.into(),
            text,
            operation: Operation::StandbyCluster { scope, remote },
        });
    }

    fn cancel_switchover_request(&mut self) {
        let Some(c) = self.selected_cluster() else {
            return;
        };
        let scope = c.scope.clone();
        match c
            .failover
            .as_ref()
            .and_then(|f| f.value.scheduled_at.clone())
        {
            Some(at) => self.ask(Confirm {
                title: "Cancel switchover".into(),
                text: format!("Cancel the switchover of cluster {scope} scheduled at {at}."),
                operation: Operation::CancelSwitchover { scope },
            }),
            None => {
                self.status = Some((format!("no switchover is scheduled in {scope}"), true));
            }
        }
    }

    /// The selected member's name, on a cluster's members tab (replication-tree order).
    pub fn selected_member(&self) -> Option<String> {
        if self.view != View::Cluster(Tab::Members) {
            return None;
        }
        let c = self.selected_cluster()?;
        let list = ordered_members(c);
        let (_, m) = list.get(self.member_idx)?;
        m["name"].as_str().map(str::to_string)
    }

    /// The member an action names, else the selected one; a status line says what is missing.
    fn target(&mut self, named: Option<&str>, what: &str) -> Option<(String, String)> {
        let Some(scope) = self.selected_cluster().map(|c| c.scope.clone()) else {
            self.status = Some(("open a cluster first".into(), true));
            return None;
        };
        let member = named.map(str::to_string).or_else(|| self.selected_member());
        // the demo's switches also reach a member whose key expired (a cut machine)
        let switch = matches!(what, "cut" | "restore" | "crash" | "isolate" | "heal");
        match member {
            Some(m)
                if self
                    .selected_cluster()
                    .is_some_and(|c| c.member(&m).is_some())
                    || switch
                        && self
                            .departed
                            .iter()
                            .any(|d| d.scope == scope && d.member.name == m) =>
            {
                Some((scope, m))
            }
            Some(m) => {
                self.status = Some((format!("{m} is not a member of {scope}"), true));
                None
            }
            None => {
                self.status = Some((
                    format!("select a member on the Members tab (or name it) to {what}"),
                    true,
                ));
                None
            }
        }
    }

    fn switchover_request(&mut self, named: Option<&str>, at: Option<String>) {
        let Some(c) = self.selected_cluster() else {
            self.status = Some(("open a cluster first".into(), true));
            return;
        };
        let scope = c.scope.clone();
        let Some(leader) = c.leader.as_ref().map(|l| l.name.clone()) else {
            self.status = Some((
                format!("{scope} has no leader: use failover (F) to promote a member"),
                true,
            ));
            return;
        };
        let candidate = named
            .map(str::to_string)
            .or_else(|| self.selected_member())
            .filter(|m| *m != leader);
        if let Some(m) = &candidate
            && self
                .selected_cluster()
                .is_none_or(|c| c.member(m).is_none())
        {
            self.status = Some((format!("{m} is not a member of {scope}"), true));
            return;
        }
        let to = candidate
            .clone()
            .unwrap_or_else(|| "the healthiest replica".into());
        let when = at
            .as_deref()
            .map(|t| format!(" at {t}"))
            .unwrap_or_else(|| " now".into());
        self.ask(Confirm {
            title: "Switchover".into(),
            text: format!(
                "Switch over cluster {scope} from {leader} to {to}{when}: {leader} checkpoints, stops and hands the lock over; {to} promotes; {leader} comes back as its replica. Clients see a write gap of a fraction of a second. Refused if {to} is not a healthy replica within maximum_lag_on_failover."
            ),
            operation: Operation::Switchover {
                scope,
                leader,
                candidate,
                at,
            },
        });
    }

    fn failover_request(&mut self, named: Option<&str>) {
        let Some((scope, candidate)) = self.target(named, "fail over to it") else {
            return;
        };
        let leader = self
            .selected_cluster()
            .and_then(|c| c.leader.as_ref().map(|l| l.name.clone()));
        let text = match &leader {
            Some(l) => format!(
                "Fail over cluster {scope} to {candidate}. {l} holds the lock: with a healthy leader this is carried out as a switchover (lag limit included)."
            ),
            None => format!(
                "Fail over cluster {scope} to {candidate}: it is promoted even if it lags behind the last leader position (writes it never received are lost)."
            ),
        };
        self.ask(Confirm {
            title: "Failover".into(),
            text,
            operation: Operation::Failover { scope, candidate },
        });
    }

    fn restart_request(&mut self, named: Option<&str>, pending_only: bool, at: Option<String>) {
        let Some((scope, member)) = self.target(named, "restart it") else {
            return;
        };
        let when = at
            .as_deref()
            .map(|t| format!(" at {t}"))
            .unwrap_or_else(|| " now".into());
        let only = if pending_only {
            ", only if a parameter change left a restart pending"
        } else {
            ""
        };
        self.ask(Confirm {
            title: "Restart".into(),
            text: format!(
                "Restart PostgreSQL on {member} ({scope}){when}{only}: it stops (fast) and starts again in the same role with the current parameters; a leader keeps its lock meanwhile."
            ),
            operation: Operation::Restart {
                scope,
                member,
                pending_only,
                at,
            },
        });
    }

    fn reinit_request(&mut self, named: Option<&str>) {
        let Some((scope, member)) = self.target(named, "reinitialize it") else {
            return;
        };
        if self
            .selected_cluster()
            .and_then(|c| c.leader.as_ref())
            .is_some_and(|l| l.name == member)
        {
            self.status = Some((
                format!("{member} is the leader: a leader is never reinitialized"),
                true,
            ));
            return;
        }
        self.ask(Confirm {
            title: "Reinitialize".into(),
            text: format!(
                "Reinitialize {member} ({scope}): PostgreSQL is stopped, its data directory REMOVED and cloned again from the leader. It is out of service until the copy ends."
            ),
            operation: Operation::Reinit { scope, member },
        });
    }

    fn reload_request(&mut self, named: Option<&str>) {
        let Some((scope, member)) = self.target(named, "reload it") else {
            return;
        };
        self.ask(Confirm {
            title: "Reload".into(),
            text: format!(
                "Make the agent of {member} ({scope}) re-read its configuration file (as SIGHUP): parameters, pg_hba, tags and credentials change without a restart; a file with errors changes nothing."
            ),
            operation: Operation::Reload { scope, member },
        });
    }

    fn cancel_restart_request(&mut self, named: Option<&str>) {
        let Some((scope, member)) = self.target(named, "cancel its restart") else {
            return;
        };
        self.ask(Confirm {
            title: "Cancel restart".into(),
            text: format!("Cancel the scheduled restart of {member} ({scope})."),
            operation: Operation::CancelRestart { scope, member },
        });
    }

    /// Asks before throwing a demo switch (`what` is cut, restore, crash, isolate, heal or
    /// etcd-stop / etcd-start); `named` or the selected member.
    fn demo_request(&mut self, what: &str, named: Option<&str>) {
        let Some(demo) = self.demo.clone() else {
            let why = match &self.demo_problem {
                Some(p) => format!("no failure switches: {p}"),
                None => {
                    "failure switches work on the demo only (demo console, or pgpilot-console --demo DIR)"
                        .into()
                }
            };
            self.status = Some((why, true));
            return;
        };
        if self.read_only {
            self.status = Some(("read-only console: switches are disabled".into(), true));
            return;
        }
        let scope = self
            .selected_cluster()
            .map(|c| c.scope.clone())
            .unwrap_or_else(|| "demo".into());
        let (title, text, args) = if let Some(action) = what.strip_prefix("etcd-") {
            let text = if action == "stop" {
                "Stop etcd (SIGTERM). The primary keeps its lock for retry_timeout, then goes \
                 read-only; nobody is promoted; replicas keep streaming. This screen shows the \
                 last data it read until etcd is back (E again)."
            } else {
                "Start etcd again. The agents reach it, the primary takes the lock back and \
                 writes resume."
            };
            (
                format!("etcd {action}"),
                text.to_string(),
                vec!["etcd".to_string(), action.to_string()],
            )
        } else {
            let Some((_, member)) = self.target(named, what) else {
                return;
            };
            let what = match what {
                "cut" if demo.cut.contains(&member) => "restore",
                "restore" if !demo.cut.contains(&member) => "cut",
                "isolate" if demo.isolated.contains(&member) => "heal",
                "heal" if !demo.isolated.contains(&member) => "isolate",
                w => w,
            };
            if matches!(what, "isolate" | "heal") && !demo.isolation {
                self.status = Some((
                    "isolating needs network namespaces, and this demo runs on loopback: start it as root with nftables (demo down --wipe; demo up)".into(),
                    true,
                ));
                return;
            }
            let text = match what {
                "cut" => format!(
                    "SIGKILL {member}'s agent and PostgreSQL, as if its machine died. If it is \
                     the primary, a replica takes over when the leader key expires (ttl). C again \
                     brings it back."
                ),
                "restore" => format!(
                    "Start {member}'s agent again: it starts PostgreSQL in the role the cluster \
                     gives it (an old primary rejoins with pg_rewind)."
                ),
                "crash" => format!(
                    "SIGKILL {member}'s postmaster only. Its agent notices and starts it again \
                     (crash recovery); a primary keeps its lock."
                ),
                "isolate" => format!(
                    "Drop {member}'s traffic to and from etcd and the other nodes (this console \
                     still reaches it). A primary goes read-only after retry_timeout; a replica \
                     takes over when the leader key expires. N again reconnects it."
                ),
                _ => {
                    format!("Reconnect {member}: it reaches etcd and the other nodes and rejoins.")
                }
            };
            (
                format!("{what} {member}"),
                text,
                vec![what.to_string(), member],
            )
        };
        self.ask(Confirm {
            title,
            text,
            operation: Operation::Demo {
                scope,
                program: demo.program.clone(),
                dir: demo.dir.clone(),
                args,
            },
        });
    }

    fn command(&mut self, line: &str) -> Vec<Effect> {
        let words: Vec<&str> = line.split_whitespace().collect();
        // `... at TIME` schedules
        let (args, at) = match words.iter().position(|w| *w == "at") {
            Some(i) => (&words[..i], Some(words[i + 1..].join(" "))),
            None => (&words[..], None),
        };
        let at = at.filter(|t| !t.is_empty());
        let first = args.first().copied().unwrap_or("");
        let arg = args.get(1).copied();
        match first {
            "switchover" => {
                self.switchover_request(arg, at);
                return vec![];
            }
            "failover" => {
                self.failover_request(arg);
                return vec![];
            }
            "restart" => {
                let pending = args.contains(&"pending");
                let member = arg.filter(|a| *a != "pending");
                self.restart_request(member, pending, at);
                return vec![];
            }
            "reinit" => {
                self.reinit_request(arg);
                return vec![];
            }
            "reload" => {
                self.reload_request(arg);
                return vec![];
            }
            "cancel-restart" => {
                self.cancel_restart_request(arg);
                return vec![];
            }
            "promote-cluster" => {
                self.standby_request(None);
                return vec![];
            }
            "demote-cluster" => {
                match arg.filter(|a| shared::config::split_host_port(a).is_some()) {
                    Some(remote) => self.standby_request(Some(remote.to_string())),
                    None => {
                        self.status = Some((
                            "demote-cluster HOST:PORT (the other cluster's primary)".into(),
                            true,
                        ))
                    }
                }
                return vec![];
            }
            "cut" | "restore" | "crash" | "isolate" | "heal" => {
                self.demo_request(first, arg);
                return vec![];
            }
            "dismiss" => {
                self.dismiss(arg);
                return vec![];
            }
            "etcd" if matches!(arg, Some("stop") | Some("start")) => {
                self.demo_request(&format!("etcd-{}", arg.unwrap_or_default()), None);
                return vec![];
            }
            _ => {}
        }
        match line.trim() {
            "q" | "quit" => vec![Effect::Quit],
            "pause" | "resume" => {
                let paused = self.selected_cluster().is_some_and(|c| c.is_paused());
                if (line.trim() == "pause") == paused {
                    self.status = Some((
                        format!(
                            "the cluster is already {}",
                            if paused { "paused" } else { "running" }
                        ),
                        true,
                    ));
                } else {
                    self.pause_request();
                }
                vec![]
            }
            "cancel-switchover" => {
                self.cancel_switchover_request();
                vec![]
            }
            "" => vec![],
            other => {
                self.status = Some((
                    format!(
                        "unknown command {other:?}: switchover, failover, restart, reinit, reload, cancel-restart, cancel-switchover, pause, resume, dismiss, quit"
                    ),
                    true,
                ));
                vec![]
            }
        }
    }

    fn key(&mut self, k: KeyEvent) -> Vec<Effect> {
        if k.modifiers.contains(KeyModifiers::CONTROL) && k.code == KeyCode::Char('c') {
            return vec![Effect::Quit];
        }
        if let Some(c) = self.confirm.clone() {
            match k.code {
                KeyCode::Char('y') | KeyCode::Char('Y') => {
                    self.confirm = None;
                    self.status = Some((format!("{}: running…", c.title), false));
                    return vec![Effect::Run(c.operation)];
                }
                KeyCode::Char('n') | KeyCode::Char('N') | KeyCode::Esc => {
                    self.confirm = None;
                    self.status = Some((format!("{}: cancelled, nothing done", c.title), false));
                }
                _ => {}
            }
            return vec![];
        }
        match &mut self.input {
            Input::Filter(text) | Input::Command(text) => {
                match k.code {
                    KeyCode::Esc => {
                        if matches!(self.input, Input::Filter(_)) {
                            self.filter.clear();
                        }
                        self.input = Input::None;
                    }
                    KeyCode::Enter => {
                        let line = text.clone();
                        let was_command = matches!(self.input, Input::Command(_));
                        self.input = Input::None;
                        if was_command {
                            return self.command(&line);
                        }
                    }
                    KeyCode::Backspace => {
                        text.pop();
                    }
                    KeyCode::Char(ch) => text.push(ch),
                    _ => {}
                }
                if let Input::Filter(t) = &self.input {
                    self.filter = t.clone();
                    self.cluster_idx = 0;
                }
                self.clamp();
                return vec![];
            }
            Input::None => {}
        }
        if self.help {
            self.help = false;
            return vec![];
        }
        if self.detail {
            if matches!(
                k.code,
                KeyCode::Esc | KeyCode::Enter | KeyCode::Char('q') | KeyCode::Char('h')
            ) {
                self.detail = false;
            }
            return vec![];
        }
        match k.code {
            KeyCode::Char('q') => return vec![Effect::Quit],
            KeyCode::Char('?') => self.help = true,
            KeyCode::Char('/') => self.input = Input::Filter(self.filter.clone()),
            KeyCode::Char(':') => self.input = Input::Command(String::new()),
            KeyCode::Char('f') => {
                self.frozen = !self.frozen;
                self.status = Some((
                    if self.frozen {
                        "refresh frozen (f resumes)"
                    } else {
                        "refresh resumed"
                    }
                    .into(),
                    false,
                ));
            }
            KeyCode::Char('p') => self.pause_request(),
            KeyCode::Char('x') => self.cancel_switchover_request(),
            KeyCode::Char('X') => self.cancel_restart_request(None),
            KeyCode::Char('s') => self.switchover_request(None, None),
            KeyCode::Char('F') => self.failover_request(None),
            KeyCode::Char('r') => self.restart_request(None, false, None),
            KeyCode::Char('R') => self.restart_request(None, true, None),
            KeyCode::Char('i') => self.reinit_request(None),
            KeyCode::Char('o') => self.reload_request(None),
            KeyCode::Char('C') => self.demo_request("cut", None),
            KeyCode::Char('K') => self.demo_request("crash", None),
            KeyCode::Char('N') => self.demo_request("isolate", None),
            KeyCode::Char('E') => {
                let stopped = self.demo.as_ref().is_some_and(|d| d.etcd_stopped);
                self.demo_request(if stopped { "etcd-start" } else { "etcd-stop" }, None)
            }
            KeyCode::Down | KeyCode::Char('j') => match self.view {
                View::Clusters => self.cluster_idx += 1,
                View::Cluster(_) => self.member_idx += 1,
            },
            KeyCode::Up | KeyCode::Char('k') => match self.view {
                View::Clusters => self.cluster_idx = self.cluster_idx.saturating_sub(1),
                View::Cluster(_) => self.member_idx = self.member_idx.saturating_sub(1),
            },
            KeyCode::Enter | KeyCode::Char('l') | KeyCode::Right
                if self.view == View::Clusters && self.selected_cluster().is_some() =>
            {
                self.view = View::Cluster(Tab::Members);
                self.member_idx = 0;
            }
            KeyCode::Enter if self.view == View::Cluster(Tab::Members) => self.detail = true,
            KeyCode::Esc | KeyCode::Char('h') | KeyCode::Left | KeyCode::Backspace => {
                self.view = View::Clusters;
            }
            KeyCode::Tab => {
                if let View::Cluster(t) = self.view {
                    let i = Tab::ALL.iter().position(|x| *x == t).unwrap_or(0);
                    self.open_tab(Tab::ALL[(i + 1) % Tab::ALL.len()]);
                }
            }
            KeyCode::Char(d @ '1'..='5') if self.selected_cluster().is_some() => {
                let i = (d as usize) - ('1' as usize);
                self.open_tab(Tab::ALL[i]);
            }
            KeyCode::PageDown => self.scroll = self.scroll.saturating_add(PAGE),
            KeyCode::PageUp => self.scroll = self.scroll.saturating_sub(PAGE),
            _ => {}
        }
        self.clamp();
        vec![]
    }
}

/// Lines PgUp and PgDn scroll.
const PAGE: u16 = 10;
/// Lines or rows one wheel notch moves.
const WHEEL: u16 = 3;

impl App {
    fn open_tab(&mut self, t: Tab) {
        self.view = View::Cluster(t);
        self.scroll = 0;
    }

    /// A click selects the row or tab under it (a click on the selected row opens it, as
    /// Enter does); the wheel moves the selection in a table and scrolls the other tabs.
    /// Nothing happens while a prompt, the help or a confirmation is up (keys answer those).
    fn mouse(&mut self, m: MouseEvent) -> Vec<Effect> {
        if self.confirm.is_some() || self.input != Input::None {
            return vec![];
        }
        if self.help || self.detail {
            if matches!(m.kind, MouseEventKind::Down(_)) {
                self.help = false;
                self.detail = false;
            }
            return vec![];
        }
        let in_table = matches!(self.view, View::Clusters | View::Cluster(Tab::Members));
        match m.kind {
            MouseEventKind::ScrollDown if in_table => {
                for _ in 0..WHEEL {
                    self.step(true);
                }
            }
            MouseEventKind::ScrollUp if in_table => {
                for _ in 0..WHEEL {
                    self.step(false);
                }
            }
            MouseEventKind::ScrollDown => self.scroll = self.scroll.saturating_add(WHEEL),
            MouseEventKind::ScrollUp => self.scroll = self.scroll.saturating_sub(WHEEL),
            // a click meant for a screen that is no longer shown (a key came first) does nothing
            MouseEventKind::Down(_) if self.hits.view != Some(self.view) => {}
            MouseEventKind::Down(MouseButton::Left) => {
                let at = ratatui::layout::Position::new(m.column, m.row);
                if let Some((_, t)) = self.hits.tabs.iter().find(|(r, _)| r.contains(at)) {
                    let t = *t;
                    self.open_tab(t);
                    return vec![];
                }
                let Some((area, first)) = self.hits.rows else {
                    return vec![];
                };
                if !area.contains(at) {
                    return vec![];
                }
                let i = first + usize::from(m.row - area.y);
                match self.view {
                    View::Clusters if i < self.visible_clusters().len() => {
                        if i == self.cluster_idx {
                            self.view = View::Cluster(Tab::Members);
                            self.member_idx = 0;
                        } else {
                            self.cluster_idx = i;
                        }
                    }
                    View::Cluster(Tab::Members) => {
                        let n = self
                            .selected_cluster()
                            .map(|c| c.members.len())
                            .unwrap_or(0);
                        if i == self.member_idx {
                            self.detail = true;
                        } else if i < n {
                            self.member_idx = i;
                        }
                    }
                    _ => {}
                }
            }
            _ => {}
        }
        self.clamp();
        vec![]
    }

    /// Moves the table selection one row.
    fn step(&mut self, down: bool) {
        let idx = match self.view {
            View::Clusters => &mut self.cluster_idx,
            View::Cluster(_) => &mut self.member_idx,
        };
        *idx = if down {
            idx.saturating_add(1)
        } else {
            idx.saturating_sub(1)
        };
        self.clamp();
    }

    /// The lines of one chart for cluster `c`: the members with the largest peaks first, at
    /// most [`CHART_TRACES`], each over the last [`CHART_SPAN`] before `self.now`.
    pub fn traces(&self, c: &Cluster, measure: Measure) -> Vec<Trace> {
        // the peaks first, without building every member's line (a fleet has many)
        let mut peaks: Vec<(f64, &Member, &VecDeque<Point>)> = c
            .members
            .iter()
            .filter_map(|m| {
                let points = self.series.get(&m.data.api_url)?;
                Some((peak(points, measure)?, m, points))
            })
            .collect();
        peaks.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.name.cmp(&b.1.name)));
        peaks
            .into_iter()
            .take(CHART_TRACES)
            .map(|(peak, m, points)| Trace {
                member: m.name.clone(),
                points: trace(points, self.now, measure),
                peak,
            })
            .collect()
    }
}

/// Applies one message.
pub fn update(app: &mut App, msg: Msg) -> Vec<Effect> {
    match msg {
        Msg::Clusters {
            clusters,
            at,
            clock,
        } => {
            app.etcd.error = None;
            app.etcd.last_ok = Some(at);
            app.etcd.last_ok_clock = Some(clock.clone());
            if !app.frozen {
                app.diff(&clusters, at, &clock);
                app.clusters = clusters;
                app.clamp();
                let listed: std::collections::HashSet<String> = app
                    .clusters
                    .iter()
                    .flat_map(|c| c.members.iter().map(|m| m.data.api_url.clone()))
                    .chain(app.departed.iter().map(|d| d.member.data.api_url.clone()))
                    .collect();
                app.journals.retain(|url, _| listed.contains(url));
            }
            vec![]
        }
        Msg::EtcdFailed(e) => {
            app.etcd.error = Some(e);
            vec![]
        }
        Msg::Journal { api_url, entries } => {
            // only for members listed now (present or gone)
            let listed = app
                .clusters
                .iter()
                .flat_map(|c| c.members.iter().map(|m| &m.data.api_url))
                .chain(app.departed.iter().map(|d| &d.member.data.api_url))
                .any(|u| *u == api_url);
            if !app.frozen && listed {
                app.journals.insert(api_url, entries);
            }
            vec![]
        }
        Msg::Sample { api_url, sample } => {
            if let Ok(body) = &sample.body {
                let point = Point {
                    at: sample.at,
                    lag: lag_of(body),
                    wal: wal_of(body),
                };
                let h = app.series.entry(api_url.clone()).or_default();
                h.push_back(point);
                while h.len() > CHART_POINTS
                    || h.front()
                        .is_some_and(|p| sample.at.saturating_duration_since(p.at) > CHART_SPAN)
                {
                    h.pop_front();
                }
            }
            if !app.frozen {
                // a failed sample after a failed one keeps the time of the first: the screen
                // says how long the API has been down
                let sample = match app.samples.get(&api_url) {
                    Some(prev) if prev.body.is_err() && sample.body.is_err() => Sample {
                        at: prev.at,
                        ..sample
                    },
                    _ => sample,
                };
                app.samples.insert(api_url, sample);
            }
            vec![]
        }
        Msg::Key(k) => app.key(k),
        Msg::Mouse(m) => app.mouse(m),
        Msg::Tick(now) => {
            app.now = now;
            match (&app.status, &app.status_since) {
                (Some((text, _)), Some((seen, since))) if text == seen => {
                    if now.duration_since(*since) >= STATUS_SHOWN {
                        app.status = None;
                        app.status_since = None;
                    }
                }
                (Some((text, _)), _) => app.status_since = Some((text.clone(), now)),
                (None, _) => app.status_since = None,
            }
            app.changed
                .retain(|_, t| now.duration_since(*t) < HIGHLIGHT);
            vec![]
        }
        Msg::Done(r) => {
            app.status = Some(match r {
                Ok(m) => (m, false),
                Err(e) => (e, true),
            });
            vec![]
        }
        Msg::Demo(r) => {
            match r {
                Ok(d) => {
                    app.demo = Some(d);
                    app.demo_problem = None;
                }
                Err(e) => {
                    if app.demo.is_some() {
                        app.status = Some((e.clone(), true));
                    }
                    app.demo = None;
                    app.demo_problem = Some(e);
                }
            }
            vec![]
        }
    }
}

/// The members as `cluster_json` describes them, in replication-tree order with their depth
/// (the order the members tab shows).
pub fn ordered_members(c: &Cluster) -> Vec<(usize, Value)> {
    let view = shared::api::cluster_json(c);
    let list: Vec<Value> = view["members"].as_array().cloned().unwrap_or_default();
    shared::view::topology_order(&list)
        .into_iter()
        .map(|(d, m)| (d, m.clone()))
        .collect()
}

/// A replica's replay lag behind its received WAL, from `/patroni` (bytes).
/// The WAL position a member reports: written (a primary) or received (a replica).
fn wal_of(body: &Value) -> Option<u64> {
    let x = body.get("xlog")?;
    x.get("location")
        .or_else(|| x.get("received_location"))?
        .as_u64()
}

fn lag_of(body: &Value) -> Option<u64> {
    let x = body.get("xlog")?;
    let recv = x.get("received_location")?.as_u64()?;
    let replay = x.get("replayed_location")?.as_u64()?;
    Some(recv.saturating_sub(replay))
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::dcs::{Leader, Member, MemberData};

    pub fn cluster(scope: &str, leader: &str, n: usize) -> Cluster {
        Cluster {
            scope: scope.into(),
            initialize: Some("7000000000000000001".into()),
            leader: Some(Leader {
                name: leader.into(),
                lease: 1,
                mod_revision: 1,
            }),
            members: (1..=n)
                .map(|i| Member {
                    name: format!("{scope}-n{i}"),
                    data: MemberData {
                        conn_url: format!("postgres://127.0.0.1:{}/postgres", 5432 + i),
                        api_url: format!("http://127.0.0.1:{}/patroni", 8008 + i),
                        state: "running".into(),
                        role: if format!("{scope}-n{i}") == leader {
                            "primary".into()
                        } else {
                            "replica".into()
                        },
                        timeline: Some(1),
                        xlog_location: Some(1000),
                        ..Default::default()
                    },
                    lease: 1,
                    mod_revision: 1,
                })
                .collect(),
            ..Default::default()
        }
    }

    fn key(c: char) -> Msg {
        Msg::Key(KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE))
    }

    fn feed(app: &mut App, clusters: Vec<Cluster>) {
        update(
            app,
            Msg::Clusters {
                clusters,
                at: app.now,
                clock: "12:00:00".into(),
            },
        );
    }

    #[test]
    fn leader_changes_are_logged_and_highlighted() {
        let now = Instant::now();
        let mut app = App::new("e".into(), "/service".into(), false, now);
        feed(&mut app, vec![cluster("a", "a-n1", 3)]);
        assert!(app.events.is_empty());
        feed(&mut app, vec![cluster("a", "a-n2", 3)]);
        assert!(
            app.events.iter().any(|e| e.text == "leader a-n1 → a-n2"),
            "{:?}",
            app.events
        );
        assert!(app.changed.contains_key("a/a-n2"));
        update(&mut app, Msg::Tick(now + HIGHLIGHT));
        assert!(app.changed.is_empty());
    }

    #[test]
    fn pausing_asks_first_and_read_only_refuses() {
        let now = Instant::now();
        let mut app = App::new("e".into(), "/service".into(), false, now);
        feed(&mut app, vec![cluster("a", "a-n1", 3)]);
        assert!(update(&mut app, key('p')).is_empty());
        let c = app.confirm.clone().expect("a confirmation");
        assert!(c.text.contains("Pause cluster a"), "{}", c.text);
        let effects = update(&mut app, key('y'));
        assert_eq!(
            effects,
            vec![Effect::Run(Operation::Pause {
                scope: "a".into(),
                on: true
            })]
        );
        // n cancels
        update(&mut app, key('p'));
        assert!(update(&mut app, key('n')).is_empty());
        assert!(app.confirm.is_none());
        let mut ro = App::new("e".into(), "/service".into(), true, now);
        feed(&mut ro, vec![cluster("a", "a-n1", 3)]);
        update(&mut ro, key('p'));
        assert!(ro.confirm.is_none());
        assert!(ro.status.as_ref().is_some_and(|s| s.1));
    }

    #[test]
    fn filter_and_commands() {
        let now = Instant::now();
        let mut app = App::new("e".into(), "/service".into(), false, now);
        feed(
            &mut app,
            vec![
                cluster("alpha", "alpha-n1", 2),
                cluster("beta", "beta-n1", 2),
            ],
        );
        update(&mut app, key('/'));
        for c in "bet".chars() {
            update(&mut app, key(c));
        }
        assert_eq!(app.visible_clusters().len(), 1);
        update(
            &mut app,
            Msg::Key(KeyEvent::new(KeyCode::Esc, KeyModifiers::NONE)),
        );
        assert_eq!(app.visible_clusters().len(), 2);
        update(&mut app, key(':'));
        for c in "nonsense".chars() {
            update(&mut app, key(c));
        }
        update(
            &mut app,
            Msg::Key(KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE)),
        );
        assert!(
            app.status
                .as_ref()
                .is_some_and(|s| s.0.contains("unknown command"))
        );
        update(&mut app, key(':'));
        update(&mut app, key('q'));
        let effects = update(
            &mut app,
            Msg::Key(KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE)),
        );
        assert_eq!(effects, vec![Effect::Quit]);
    }

    #[test]
    fn frozen_refresh_keeps_the_screen() {
        let now = Instant::now();
        let mut app = App::new("e".into(), "/service".into(), false, now);
        feed(&mut app, vec![cluster("a", "a-n1", 3)]);
        update(&mut app, key('f'));
        feed(&mut app, vec![cluster("a", "a-n2", 3)]);
        assert_eq!(app.clusters[0].leader.as_ref().unwrap().name, "a-n1");
        assert!(app.etcd.last_ok.is_some());
    }

    fn enter() -> Msg {
        Msg::Key(KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE))
    }

    fn typed(app: &mut App, text: &str) {
        update(app, key(':'));
        for c in text.chars() {
            update(app, key(c));
        }
        update(app, enter());
    }

    #[test]
    fn demote_and_promote_cluster_ask_first() {
        let now = Instant::now();
        let mut app = App::new("e".into(), "/service".into(), false, now);
        feed(&mut app, vec![cluster("a", "a-n1", 3)]);
        // not a standby cluster: nothing to promote
        typed(&mut app, "promote-cluster");
        assert!(app.confirm.is_none());
        typed(&mut app, "demote-cluster 10.0.0.9:5432");
        let c = app.confirm.clone().expect("a confirmation");
        assert!(
            c.text.contains("standby cluster of 10.0.0.9:5432"),
            "{}",
            c.text
        );
        assert_eq!(
            update(&mut app, key('y')),
            vec![Effect::Run(Operation::StandbyCluster {
                scope: "a".into(),
                remote: Some("10.0.0.9:5432".into())
            })]
        );
        // a standby cluster: promote asks, demote refuses
        let mut standby = cluster("a", "a-n1", 3);
        standby.config = Some(shared::dcs::Versioned {
            value: shared::dcs::DynamicConfig::parse(
                r#"{"standby_cluster": {"host": "10.0.0.9", "port": 5432}}"#,
            )
            .unwrap(),
            mod_revision: 1,
        });
        feed(&mut app, vec![standby]);
        typed(&mut app, "demote-cluster 10.0.0.9:5432");
        assert!(app.confirm.is_none());
        typed(&mut app, "promote-cluster");
        let c = app.confirm.clone().expect("a confirmation");
        assert!(c.text.contains("Promote standby cluster a"), "{}", c.text);
    }

    #[test]
    fn the_status_line_clears_itself() {
        let t0 = Instant::now();
        let mut app = App::new("e".into(), "/service".into(), false, t0);
        update(&mut app, Msg::Done(Ok("switched over".into())));
        update(&mut app, Msg::Tick(t0 + Duration::from_secs(1)));
        update(&mut app, Msg::Tick(t0 + Duration::from_secs(15)));
        assert!(app.status.is_some());
        // a new message starts its own time
        update(&mut app, Msg::Done(Err("refused".into())));
        update(&mut app, Msg::Tick(t0 + Duration::from_secs(16)));
        update(&mut app, Msg::Tick(t0 + Duration::from_secs(30)));
        assert_eq!(app.status, Some(("refused".into(), true)));
        update(&mut app, Msg::Tick(t0 + Duration::from_secs(37)));
        assert_eq!(app.status, None);
    }

    #[test]
    fn demo_switches_ask_and_run_the_demo_program() {
        let now = Instant::now();
        let mut app = App::new("e".into(), "/service".into(), false, now);
        feed(&mut app, vec![cluster("a", "a-n1", 3)]);
        // without --demo the keys explain themselves and do nothing
        assert!(update(&mut app, key('C')).is_empty());
        assert!(app.confirm.is_none());
        assert!(app.status.as_ref().unwrap().0.contains("demo only"));
        let record = r#"{"control": "/bin/demo", "net": null, "etcd": {"stopped": false},
            "nodes": [{"name": "a-n1", "cut": false, "isolated": false},
                      {"name": "a-n2", "cut": true, "isolated": false}]}"#;
        update(
            &mut app,
            Msg::Demo(DemoSwitches::parse("/var/tmp/d", record)),
        );
        update(&mut app, enter());
        let run = |app: &mut App, k: char| {
            update(app, key(k));
            let title = app.confirm.as_ref().map(|c| c.title.clone());
            (title, update(app, key('y')))
        };
        let demo = |args: &[&str]| {
            vec![Effect::Run(Operation::Demo {
                scope: "a".into(),
                program: "/bin/demo".into(),
                dir: "/var/tmp/d".into(),
                args: args.iter().map(|a| a.to_string()).collect(),
            })]
        };
        assert_eq!(
            run(&mut app, 'C'),
            (Some("cut a-n1".into()), demo(&["cut", "a-n1"]))
        );
        assert_eq!(
            run(&mut app, 'K'),
            (Some("crash a-n1".into()), demo(&["crash", "a-n1"]))
        );
        assert_eq!(
            run(&mut app, 'E'),
            (Some("etcd stop".into()), demo(&["etcd", "stop"]))
        );
        // a cut member is restored by the same key
        update(&mut app, key('j'));
        assert_eq!(
            run(&mut app, 'C'),
            (Some("restore a-n2".into()), demo(&["restore", "a-n2"]))
        );
        // on loopback isolation is refused before asking, with the way out
        assert!(update(&mut app, key('N')).is_empty());
        assert!(app.confirm.is_none());
        assert!(
            app.status
                .as_ref()
                .unwrap()
                .0
                .contains("network namespaces")
        );
        // `:` commands name the member
        typed(&mut app, "crash a-n3");
        assert_eq!(update(&mut app, key('y')), demo(&["crash", "a-n3"]));
        // a broken record is reported and switches go away, saying why
        update(&mut app, Msg::Demo(DemoSwitches::parse("/var/tmp/d", "{")));
        assert!(app.demo.is_none());
        assert!(app.status.as_ref().unwrap().1);
        update(&mut app, key('E'));
        let (text, _) = app.status.clone().unwrap();
        assert!(
            text.starts_with("no failure switches: /var/tmp/d/demo.json"),
            "{text}"
        );
        // read-only consoles throw nothing
        let mut ro = App::new("e".into(), "/service".into(), true, now);
        update(&mut ro, Msg::Demo(DemoSwitches::parse("/d", record)));
        feed(&mut ro, vec![cluster("a", "a-n1", 3)]);
        update(&mut ro, key('E'));
        assert!(ro.confirm.is_none());
    }

    #[test]
    fn member_actions_ask_exactly_and_run_through_operations() {
        let now = Instant::now();
        let mut app = App::new("e".into(), "/service".into(), false, now);
        feed(&mut app, vec![cluster("a", "a-n1", 3)]);
        // on the cluster list no member is selected: a switchover goes to the healthiest
        update(&mut app, key('s'));
        let c = app.confirm.clone().expect("a confirmation");
        assert!(
            c.text.contains("from a-n1 to the healthiest replica now"),
            "{}",
            c.text
        );
        update(&mut app, key('n'));
        // open the cluster, select the second member (tree order: leader first)
        update(&mut app, enter());
        update(&mut app, key('j'));
        let picked = app.selected_member().unwrap();
        assert_ne!(picked, "a-n1");
        update(&mut app, key('s'));
        assert_eq!(
            update(&mut app, key('y')),
            vec![Effect::Run(Operation::Switchover {
                scope: "a".into(),
                leader: "a-n1".into(),
                candidate: Some(picked.clone()),
                at: None
            })]
        );
        for (k, want) in [
            (
                'r',
                Operation::Restart {
                    scope: "a".into(),
                    member: picked.clone(),
                    pending_only: false,
                    at: None,
                },
            ),
            (
                'R',
                Operation::Restart {
                    scope: "a".into(),
                    member: picked.clone(),
                    pending_only: true,
                    at: None,
                },
            ),
            (
                'i',
                Operation::Reinit {
                    scope: "a".into(),
                    member: picked.clone(),
                },
            ),
            (
                'o',
                Operation::Reload {
                    scope: "a".into(),
                    member: picked.clone(),
                },
            ),
            (
                'F',
                Operation::Failover {
                    scope: "a".into(),
                    candidate: picked.clone(),
                },
            ),
        ] {
            update(&mut app, key(k));
            let c = app
                .confirm
                .clone()
                .unwrap_or_else(|| panic!("{k}: no dialog"));
            assert!(c.text.contains(&picked), "{k}: {}", c.text);
            assert_eq!(update(&mut app, key('y')), vec![Effect::Run(want)]);
        }
        // the leader is never reinitialized
        update(&mut app, key('k'));
        update(&mut app, key('i'));
        assert!(app.confirm.is_none());
        assert!(
            app.status
                .as_ref()
                .is_some_and(|s| s.1 && s.0.contains("leader"))
        );
        // commands name members and times
        typed(&mut app, "switchover a-n3 at 2030-01-01T00:00:00+00:00");
        assert_eq!(
            update(&mut app, key('y')),
            vec![Effect::Run(Operation::Switchover {
                scope: "a".into(),
                leader: "a-n1".into(),
                candidate: Some("a-n3".into()),
                at: Some("2030-01-01T00:00:00+00:00".into())
            })]
        );
        typed(&mut app, "restart a-n2 pending");
        assert_eq!(
            update(&mut app, key('y')),
            vec![Effect::Run(Operation::Restart {
                scope: "a".into(),
                member: "a-n2".into(),
                pending_only: true,
                at: None
            })]
        );
        typed(&mut app, "reinit nobody");
        assert!(app.confirm.is_none());
        assert!(
            app.status
                .as_ref()
                .is_some_and(|s| s.0.contains("not a member"))
        );
        // read-only: every action refused
        let mut ro = App::new("e".into(), "/service".into(), true, now);
        feed(&mut ro, vec![cluster("a", "a-n1", 3)]);
        update(&mut ro, enter());
        update(&mut ro, key('j'));
        for k in ['s', 'r', 'i', 'o', 'F', 'X'] {
            update(&mut ro, key(k));
            assert!(ro.confirm.is_none(), "{k}");
        }
    }

    #[test]
    fn replay_delay_is_zero_when_caught_up_and_the_age_when_behind() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-11-23T12:00:10Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let behind = serde_json::json!({"xlog": {"received_location": 200, "replayed_location": 100,
            "replayed_timestamp": "2026-11-23 12:00:07.500000+00:00"}});
        assert_eq!(replay_delay(&behind, now), Some(2.5));
        let caught_up = serde_json::json!({"xlog": {"received_location": 200, "replayed_location": 200,
            "replayed_timestamp": null}});
        assert_eq!(replay_delay(&caught_up, now), Some(0.0));
        assert_eq!(
            replay_delay(&serde_json::json!({"xlog": {"location": 5}}), now),
            None
        );
    }
}
