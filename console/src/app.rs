//! The live console's state and its pure `update`: messages in (etcd snapshots, REST samples,
//! keys, ticks, action results), state changes and effects out (quit, run an operation). No IO
//! and no clock here: time arrives in the messages, so every behaviour is testable.

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use serde_json::Value;
use shared::dcs::Cluster;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// How many lag samples are kept per member for the sparkline.
const LAG_SAMPLES: usize = 60;
/// How many lines the event log keeps.
const EVENTS: usize = 500;
/// How long a change stays highlighted.
pub const HIGHLIGHT: Duration = Duration::from_secs(5);

/// A member's last answer to `GET /patroni`.
#[derive(Debug, Clone)]
pub struct Sample {
    pub at: Instant,
    /// The JSON body, or why there is none.
    pub body: Result<Value, String>,
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
}

impl Tab {
    pub const ALL: [Tab; 4] = [Tab::Members, Tab::History, Tab::Config, Tab::Events];
    pub fn title(self) -> &'static str {
        match self {
            Tab::Members => "Members",
            Tab::History => "History",
            Tab::Config => "Config",
            Tab::Events => "Events",
        }
    }
}

/// An operation the console can run, through `shared::ops`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    Pause { scope: String, on: bool },
    CancelSwitchover { scope: String },
}

/// A question waiting for y/n.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confirm {
    pub title: String,
    /// Exactly what will happen.
    pub text: String,
    pub operation: Operation,
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
    Tick(Instant),
    /// An operation finished: what to tell the operator.
    Done(Result<String, String>),
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
        keys: "Tab / 1-4",
        what: "members, history, config, events",
    },
    Binding {
        keys: "/",
        what: "filter clusters and members",
    },
    Binding {
        keys: ":",
        what: "command (pause, resume, cancel-switchover, quit)",
    },
    Binding {
        keys: "p",
        what: "pause or resume the cluster (asks first)",
    },
    Binding {
        keys: "x",
        what: "cancel the scheduled switchover (asks first)",
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
    pub lag: HashMap<String, VecDeque<u64>>,
    /// When each `scope/member` last changed role, state or leadership.
    pub changed: HashMap<String, Instant>,
    pub now: Instant,
    pub endpoint: String,
    pub namespace: String,
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
            lag: HashMap::new(),
            changed: HashMap::new(),
            now,
            endpoint,
            namespace,
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
                        format!("{} left (its key expired)", p.name),
                    );
                }
            }
        }
        for o in &old {
            if !new.iter().any(|c| c.scope == o.scope) {
                self.log(clock, &o.scope, "cluster removed".into());
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

    fn command(&mut self, line: &str) -> Vec<Effect> {
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
                    format!("unknown command {other:?}: pause, resume, cancel-switchover, quit"),
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
                    self.view = View::Cluster(Tab::ALL[(i + 1) % Tab::ALL.len()]);
                }
            }
            KeyCode::Char(d @ '1'..='4') if self.selected_cluster().is_some() => {
                let i = (d as usize) - ('1' as usize);
                self.view = View::Cluster(Tab::ALL[i]);
            }
            _ => {}
        }
        self.clamp();
        vec![]
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
            }
            vec![]
        }
        Msg::EtcdFailed(e) => {
            app.etcd.error = Some(e);
            vec![]
        }
        Msg::Sample { api_url, sample } => {
            if let Ok(body) = &sample.body {
                let lag = lag_of(body);
                if let Some(l) = lag {
                    let h = app.lag.entry(api_url.clone()).or_default();
                    h.push_back(l);
                    while h.len() > LAG_SAMPLES {
                        h.pop_front();
                    }
                }
            }
            if !app.frozen {
                app.samples.insert(api_url, sample);
            }
            vec![]
        }
        Msg::Key(k) => app.key(k),
        Msg::Tick(now) => {
            app.now = now;
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
    }
}

/// A replica's replay lag behind its received WAL, from `/patroni` (bytes).
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
}
