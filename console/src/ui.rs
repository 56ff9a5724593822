//! Renders the live console from its state: a pure function of [`App`] onto a ratatui frame.
//! Every screen works at 80×24; colours carry meaning only together with text, and `mono`
//! drops them (NO_COLOR, dumb terminals).

use crate::app::{App, Input, KEYMAP, Tab, View};
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell, Clear, Paragraph, Row, Sparkline, Table, Wrap};
use serde_json::Value;
use shared::api::cluster_json;
use shared::dcs::{
    Cluster, Leader, Member, MemberData, Status, failover_blocked, likely_successor,
};
use shared::view::initialize_label;

/// Colours, or none.
#[derive(Debug, Clone, Copy)]
pub struct Theme {
    pub mono: bool,
}

impl Theme {
    fn fg(self, c: Color) -> Style {
        if self.mono {
            Style::default()
        } else {
            Style::default().fg(c)
        }
    }
    fn alert(self) -> Style {
        if self.mono {
            Style::default().add_modifier(Modifier::REVERSED | Modifier::BOLD)
        } else {
            Style::default()
                .fg(Color::White)
                .bg(Color::Red)
                .add_modifier(Modifier::BOLD)
        }
    }
    fn selected(self) -> Style {
        Style::default().add_modifier(Modifier::REVERSED)
    }
    fn changed(self) -> Style {
        if self.mono {
            Style::default().add_modifier(Modifier::BOLD | Modifier::UNDERLINED)
        } else {
            Style::default()
                .fg(Color::Yellow)
                .add_modifier(Modifier::BOLD)
        }
    }
}

/// Bytes as B, kB, MB or GB.
pub fn bytes(b: u64) -> String {
    const K: f64 = 1024.0;
    let f = b as f64;
    if f < K {
        format!("{b} B")
    } else if f < K * K {
        format!("{:.0} kB", f / K)
    } else if f < K * K * K {
        format!("{:.1} MB", f / K / K)
    } else {
        format!("{:.2} GB", f / K / K / K)
    }
}

fn age(secs: f64) -> String {
    if secs < 10.0 {
        format!("{secs:.1}s")
    } else if secs < 120.0 {
        format!("{secs:.0}s")
    } else {
        format!("{:.0}m", secs / 60.0)
    }
}

/// Draws the whole screen.
pub fn draw(f: &mut Frame, app: &App, theme: Theme) {
    let area = f.area();
    let banner = u16::from(app.etcd.error.is_some()) * 2;
    let input = u16::from(app.input != Input::None);
    let [head, warn, main, status, inp] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(banner),
        Constraint::Min(3),
        Constraint::Length(1),
        Constraint::Length(input),
    ])
    .areas(area);
    header(f, app, theme, head);
    if banner > 0 {
        etcd_banner(f, app, theme, warn);
    }
    match app.view {
        View::Clusters => clusters(f, app, theme, main),
        View::Cluster(tab) => cluster(f, app, theme, main, tab),
    }
    status_line(f, app, theme, status);
    if input > 0 {
        let (prompt, text) = match &app.input {
            Input::Filter(t) => ("/", t.as_str()),
            Input::Command(t) => (":", t.as_str()),
            Input::None => ("", ""),
        };
        f.render_widget(Paragraph::new(format!("{prompt}{text}█")), inp);
    }
    if app.detail {
        member_detail(f, app, area);
    }
    if app.help {
        help(f, theme, area);
    }
    if let Some(c) = &app.confirm {
        confirm(f, theme, area, &c.title, &c.text);
    }
}

fn header(f: &mut Frame, app: &App, theme: Theme, area: Rect) {
    let etcd = match (&app.etcd.error, app.etcd.last_ok) {
        (None, Some(_)) => Span::styled("etcd ok", theme.fg(Color::Green)),
        (None, None) => Span::styled("connecting to etcd…", theme.fg(Color::Yellow)),
        (Some(_), _) => Span::styled("ETCD DOWN", theme.alert()),
    };
    let mut spans = vec![
        Span::styled(
            " pgpilot console ",
            Style::default().add_modifier(Modifier::BOLD),
        ),
        Span::raw(format!(
            "· {} · {} · {} clusters · ",
            app.endpoint,
            shared::dcs::keys::namespace_prefix(&app.namespace),
            app.clusters.len()
        )),
        etcd,
    ];
    if app.frozen {
        spans.push(Span::styled(" · FROZEN", theme.fg(Color::Cyan)));
    }
    if app.read_only {
        spans.push(Span::raw(" · read-only"));
    }
    if let Some(d) = &app.demo {
        spans.push(Span::raw(" · demo: C K N E"));
        let mut broken = Vec::new();
        if d.etcd_stopped {
            broken.push("etcd stopped".to_string());
        }
        broken.extend(d.cut.iter().map(|m| format!("{m} cut")));
        broken.extend(d.isolated.iter().map(|m| format!("{m} isolated")));
        if !broken.is_empty() {
            spans.push(Span::styled(
                format!(" · {}", broken.join(", ")),
                theme.fg(Color::Magenta),
            ));
        }
    }
    f.render_widget(Paragraph::new(Line::from(spans)), area);
}

fn etcd_banner(f: &mut Frame, app: &App, theme: Theme, area: Rect) {
    let since = app
        .etcd
        .last_ok
        .map(|t| app.now.saturating_duration_since(t).as_secs_f64());
    let text = match (since, &app.etcd.last_ok_clock) {
        (Some(s), Some(clock)) => format!(
            " etcd unreachable or without quorum: what you see is from {clock}, {} ago. {}",
            age(s),
            app.etcd.error.as_deref().unwrap_or_default()
        ),
        _ => format!(
            " etcd unreachable or without quorum: nothing read yet. {}",
            app.etcd.error.as_deref().unwrap_or_default()
        ),
    };
    f.render_widget(
        Paragraph::new(text)
            .style(theme.alert())
            .wrap(Wrap { trim: true }),
        area,
    );
}

/// One line on whether the cluster could fail over now.
pub fn readiness(c: &Cluster) -> (String, bool) {
    if c.members.is_empty() {
        return ("no members".into(), true);
    }
    // a successor exists exactly when failover is not blocked; the reasons are only worked
    // out when it is
    match likely_successor(c) {
        Some(n) => (format!("failover ready: {n} would take over"), false),
        None => (
            format!(
                "failover BLOCKED: {}",
                failover_blocked(c).unwrap_or_default()
            ),
            true,
        ),
    }
}

fn cluster_health(c: &Cluster) -> (String, bool) {
    if c.leader.is_none() {
        return ("NO LEADER".into(), true);
    }
    let down: Vec<&str> = c
        .members
        .iter()
        .filter(|m| m.data.state != "running")
        .map(|m| m.name.as_str())
        .collect();
    if down.is_empty() {
        ("healthy".into(), false)
    } else {
        (format!("degraded ({} down)", down.len()), true)
    }
}

fn max_lag(c: &Cluster) -> Option<u64> {
    let v = cluster_json(c);
    v["members"]
        .as_array()?
        .iter()
        .filter_map(|m| m["receive_lag"].as_u64().max(m["replay_lag"].as_u64()))
        .max()
}

fn flags(c: &Cluster) -> String {
    let mut v = Vec::new();
    if c.is_paused() {
        v.push("PAUSED".to_string());
    }
    let cfg = c.dynamic_config();
    if let Some(sc) = cfg.standby_cluster() {
        v.push(format!(
            "standby of {}",
            sc.address().unwrap_or_else(|| "the archive".into())
        ));
    }
    if cfg.synchronous_mode() != shared::dcs::SyncMode::Off {
        let standbys = c
            .sync
            .as_ref()
            .map(|k| k.value.sync_standby.join(","))
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "none".into());
        let strict = if cfg.synchronous_mode_strict() {
            "strict "
        } else {
            ""
        };
        v.push(format!("{strict}sync: {standbys}"));
    }
    if cfg.failsafe_mode() {
        v.push("failsafe".to_string());
    }
    if let Some(at) = c
        .failover
        .as_ref()
        .and_then(|f| f.value.scheduled_at.clone())
    {
        v.push(format!("switchover at {at}"));
    }
    let restarts = c
        .members
        .iter()
        .filter(|m| m.data.scheduled_restart.is_some())
        .count();
    if restarts > 0 {
        v.push(format!("{restarts} restart(s) scheduled"));
    }
    let pending = c
        .members
        .iter()
        .filter(|m| m.data.pending_restart == Some(true))
        .count();
    if pending > 0 {
        v.push(format!("{pending} pending restart"));
    }
    v.join(", ")
}

fn clusters(f: &mut Frame, app: &App, theme: Theme, area: Rect) {
    let visible = app.visible_clusters();
    let block = Block::default()
        .borders(Borders::ALL)
        .title(if app.filter.is_empty() {
            " Clusters ".to_string()
        } else {
            format!(" Clusters matching /{} ", app.filter)
        });
    if visible.is_empty() {
        let text = if app.etcd.last_ok.is_none() {
            "waiting for etcd…"
        } else if app.filter.is_empty() {
            "no cluster in this namespace yet"
        } else {
            "nothing matches the filter (Esc clears it)"
        };
        f.render_widget(Paragraph::new(text).block(block), area);
        return;
    }
    let rows = visible.iter().enumerate().map(|(i, c)| {
        let (health, bad) = cluster_health(c);
        let (ready, blocked) = readiness(c);
        let running = c
            .members
            .iter()
            .filter(|m| m.data.state == "running")
            .count();
        let tl = c
            .leader
            .as_ref()
            .and_then(|l| c.member(&l.name))
            .and_then(|m| m.data.timeline)
            .map(|t| t.to_string())
            .unwrap_or_default();
        let row = Row::new(vec![
            Cell::from(c.scope.clone()),
            Cell::from(
                c.leader
                    .as_ref()
                    .map(|l| l.name.clone())
                    .unwrap_or_else(|| "—".into()),
            ),
            Cell::from(format!("{running}/{}", c.members.len())),
            Cell::from(health).style(if bad {
                theme.fg(Color::Red)
            } else {
                theme.fg(Color::Green)
            }),
            Cell::from(tl),
            Cell::from(max_lag(c).map(bytes).unwrap_or_default()),
            Cell::from(flags(c)).style(theme.fg(Color::Magenta)),
            Cell::from(ready).style(if blocked {
                theme.fg(Color::Red)
            } else {
                Style::default()
            }),
        ]);
        if i == app.cluster_idx {
            row.style(theme.selected())
        } else {
            row
        }
    });
    let table = Table::new(
        rows,
        [
            Constraint::Length(14),
            Constraint::Length(12),
            Constraint::Length(5),
            Constraint::Length(17),
            Constraint::Length(3),
            Constraint::Length(8),
            Constraint::Length(10),
            Constraint::Min(10),
        ],
    )
    .header(
        Row::new([
            "Cluster", "Leader", "Up", "Health", "TL", "Max lag", "Flags", "Failover",
        ])
        .style(Style::default().add_modifier(Modifier::BOLD)),
    )
    .block(block);
    f.render_widget(table, area);
}

fn cluster(f: &mut Frame, app: &App, theme: Theme, area: Rect, tab: Tab) {
    let Some(c) = app.selected_cluster() else {
        f.render_widget(
            Paragraph::new("the cluster is gone (Esc goes back)")
                .block(Block::default().borders(Borders::ALL)),
            area,
        );
        return;
    };
    let tabs: Vec<Span> = Tab::ALL
        .iter()
        .enumerate()
        .flat_map(|(i, t)| {
            let label = format!(" {} {} ", i + 1, t.title());
            let style = if *t == tab {
                theme.selected()
            } else {
                Style::default()
            };
            [Span::styled(label, style), Span::raw(" ")]
        })
        .collect();
    let (ready, blocked) = readiness(c);
    let mut title = format!(
        " {} ({}) · leader {} ",
        c.scope,
        initialize_label(c),
        c.leader.as_ref().map(|l| l.name.as_str()).unwrap_or("NONE")
    );
    let fl = flags(c);
    if !fl.is_empty() {
        title.push_str(&format!("· {fl} "));
    }
    let [top, ready_area, body] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(1),
        Constraint::Min(3),
    ])
    .areas(area);
    f.render_widget(
        Paragraph::new(Line::from(
            std::iter::once(Span::styled(
                title,
                Style::default().add_modifier(Modifier::BOLD),
            ))
            .chain(tabs)
            .collect::<Vec<_>>(),
        )),
        top,
    );
    f.render_widget(
        Paragraph::new(format!(" {ready}")).style(if blocked {
            theme.fg(Color::Red)
        } else {
            theme.fg(Color::Green)
        }),
        ready_area,
    );
    match tab {
        Tab::Members => members(f, app, theme, body, c),
        Tab::History => history(f, body, c),
        Tab::Config => {
            let text = c
                .config
                .as_ref()
                .map(|v| {
                    serde_saphyr::to_string(&Value::Object(v.value.raw.clone())).unwrap_or_default()
                })
                .unwrap_or_else(|| "(no config key)".into());
            f.render_widget(
                Paragraph::new(text).block(
                    Block::default()
                        .borders(Borders::ALL)
                        .title(" Dynamic configuration "),
                ),
                body,
            );
        }
        Tab::Events => {
            let lines: Vec<Line> = app
                .events
                .iter()
                .filter(|e| e.scope == c.scope)
                .map(|e| Line::from(format!("{}  {}", e.clock, e.text)))
                .collect();
            let lines = if lines.is_empty() {
                vec![Line::from("nothing has changed since the console started")]
            } else {
                lines
            };
            f.render_widget(
                Paragraph::new(lines).block(
                    Block::default()
                        .borders(Borders::ALL)
                        .title(" Events since start "),
                ),
                body,
            );
        }
    }
}

fn members(f: &mut Frame, app: &App, theme: Theme, area: Rect, c: &Cluster) {
    let list = crate::app::ordered_members(c);
    let detail_h = if area.height >= 16 { 7 } else { 0 };
    let [table_area, detail_area] =
        Layout::vertical([Constraint::Min(3), Constraint::Length(detail_h)]).areas(area);
    let rows = list.iter().enumerate().map(|(i, (depth, m))| {
        let name = m["name"].as_str().unwrap_or_default();
        let shown = shared::view::tree_name(*depth, name);
        let api = m["api_url"].as_str().unwrap_or_default();
        let lag = |k: &str| m[k].as_u64().map(bytes).unwrap_or_default();
        let sample = app.samples.get(api);
        let sampled = match sample {
            Some(s) => {
                let a = age(app.now.saturating_duration_since(s.at).as_secs_f64());
                match &s.body {
                    Ok(_) => a,
                    Err(_) => format!("REST down {a}"),
                }
            }
            None => "—".into(),
        };
        let rest_down = sample.is_some_and(|s| s.body.is_err());
        let role = m["role"].as_str().unwrap_or_default().replace('_', " ");
        let host = match (m["host"].as_str(), m["port"].as_u64()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            _ => String::new(),
        };
        let state = m["state"].as_str().unwrap_or_default().to_string();
        let state_style = if state == "running" || state == "streaming" {
            Style::default()
        } else {
            theme.fg(Color::Red)
        };
        // the demo's switches thrown on this member
        let switched = app.demo.as_ref().map(|d| {
            let mut marks = Vec::new();
            if d.cut.iter().any(|m| m == name) {
                marks.push("cut");
            }
            if d.isolated.iter().any(|m| m == name) {
                marks.push("isolated");
            }
            marks.join(", ")
        });
        let name_cell = match switched.filter(|m| !m.is_empty()) {
            Some(marks) => Cell::from(Line::from(vec![
                Span::raw(shown),
                Span::styled(format!(" [{marks}]"), theme.fg(Color::Magenta)),
            ])),
            None => Cell::from(shown),
        };
        let mut row = Row::new(vec![
            name_cell,
            Cell::from(host),
            Cell::from(role),
            Cell::from(state).style(state_style),
            Cell::from(
                m["timeline"]
                    .as_u64()
                    .map(|t| t.to_string())
                    .unwrap_or_default(),
            ),
            Cell::from(lag("receive_lag")),
            Cell::from(lag("replay_lag")),
            Cell::from(
                sample
                    .and_then(|s| s.delay)
                    .filter(|_| m["role"] != "leader")
                    .map(age)
                    .unwrap_or_default(),
            ),
            Cell::from(if m.get("pending_restart").is_some() {
                "*"
            } else {
                ""
            }),
            Cell::from(sampled).style(if rest_down {
                theme.fg(Color::Red)
            } else {
                Style::default()
            }),
        ]);
        if app.changed.contains_key(&format!("{}/{name}", c.scope)) {
            row = row.style(theme.changed());
        }
        if i == app.member_idx {
            row = row.style(theme.selected());
        }
        row
    });
    let table = Table::new(
        rows,
        [
            Constraint::Min(12),
            Constraint::Length(16),
            Constraint::Length(12),
            Constraint::Length(10),
            Constraint::Length(3),
            Constraint::Length(9),
            Constraint::Length(9),
            Constraint::Length(6),
            Constraint::Length(2),
            Constraint::Length(14),
        ],
    )
    .header(
        Row::new([
            "Member", "Host", "Role", "State", "TL", "Recv lag", "Rply lag", "Delay", "R",
            "Sampled",
        ])
        .style(Style::default().add_modifier(Modifier::BOLD)),
    )
    .block(Block::default().borders(Borders::ALL).title(" Members "));
    f.render_widget(table, table_area);
    if detail_h == 0 {
        return;
    }
    let Some((_, m)) = list.get(app.member_idx) else {
        return;
    };
    let api = m["api_url"].as_str().unwrap_or_default();
    let [text_area, spark_area] =
        Layout::horizontal([Constraint::Min(20), Constraint::Length(32)]).areas(detail_area);
    let mut lines = vec![Line::from(format!(
        "{}  api {}  tags {}",
        m["name"].as_str().unwrap_or_default(),
        api,
        m.get("tags")
            .map(|t| t.to_string())
            .unwrap_or_else(|| "{}".into())
    ))];
    match app.samples.get(api).map(|s| &s.body) {
        Some(Ok(b)) => {
            let version = b["server_version"]
                .as_i64()
                .filter(|v| *v > 0)
                .map(|v| format!("  PostgreSQL {}.{}", v / 10000, v % 10000))
                .unwrap_or_default();
            lines.push(Line::from(format!(
                "state {}  role {}  timeline {}  replication {}{version}",
                b["state"].as_str().unwrap_or("?"),
                b["role"].as_str().unwrap_or("?"),
                b["timeline"],
                b["replication_state"].as_str().unwrap_or("—")
            )));
            if let Some(d) = b["pgpilot"]["decision"].as_str() {
                lines.push(Line::from(format!("agent: {d}")));
            }
            if let Some(m) = b["pgpilot"]["replica_method"].as_str() {
                lines.push(Line::from(format!("creating replica with {m}")));
            }
            if let Some(p) = protection(b) {
                lines.push(Line::from(p));
            }
            if let Some(r) = b.get("pending_restart_reason") {
                lines.push(Line::from(format!("pending restart: {r}")));
            }
        }
        Some(Err(e)) => lines.push(Line::from(format!("REST API: {e}"))),
        None => lines.push(Line::from("REST API not sampled yet")),
    }
    f.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: true })
            .block(Block::default().borders(Borders::ALL).title(" Member ")),
        text_area,
    );
    let data: Vec<u64> = app
        .lag
        .get(api)
        .map(|d| d.iter().copied().collect())
        .unwrap_or_default();
    let peak = data.iter().copied().max().unwrap_or(0);
    f.render_widget(
        Sparkline::default()
            .data(&data)
            .style(theme.fg(Color::Cyan))
            .block(
                Block::default()
                    .borders(Borders::ALL)
                    .title(format!(" replay lag, max {} ", bytes(peak))),
            ),
        spark_area,
    );
}

/// What guards this member against a second primary, from its `/patroni`: the fencing guard,
/// the watchdog, failsafe mode.
fn protection(b: &Value) -> Option<String> {
    let own = &b["pgpilot"];
    let mut v = Vec::new();
    if let Some(f) = own["fencing"].as_str() {
        v.push(format!("fencing {f}"));
    }
    if b["watchdog_failed"] == true {
        v.push("watchdog FAILED (required)".to_string());
    } else if let Some(w) = own["watchdog"].as_str() {
        v.push(format!("watchdog {w}"));
    }
    if b["failsafe_mode_is_active"] == true {
        v.push("failsafe ACTIVE (etcd unreachable)".to_string());
    }
    (!v.is_empty()).then(|| format!("protection: {}", v.join(", ")))
}

/// The selected member's key and REST answer, in full.
fn member_detail(f: &mut Frame, app: &App, area: Rect) {
    let Some(c) = app.selected_cluster() else {
        return;
    };
    let list = crate::app::ordered_members(c);
    let Some((_, m)) = list.get(app.member_idx) else {
        return;
    };
    let name = m["name"].as_str().unwrap_or_default();
    let key = c
        .member(name)
        .map(|m| m.data.to_json())
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .map(|v| serde_json::to_string_pretty(&v).unwrap_or_default())
        .unwrap_or_default();
    let api = m["api_url"].as_str().unwrap_or_default();
    let rest = match app.samples.get(api).map(|s| &s.body) {
        Some(Ok(b)) => serde_json::to_string_pretty(b).unwrap_or_default(),
        Some(Err(e)) => format!("no answer: {e}"),
        None => "not sampled yet".into(),
    };
    let r = centered(
        area,
        area.width.saturating_sub(4),
        area.height.saturating_sub(2),
    );
    f.render_widget(Clear, r);
    // this member's history: the events seen since the console started that name it
    let mine: Vec<Line> = app
        .events
        .iter()
        .filter(|e| e.scope == c.scope && e.text.contains(name))
        .map(|e| Line::from(format!("{} {}", e.clock, e.text)))
        .collect();
    let events_h = if mine.is_empty() {
        3
    } else {
        (mine.len() as u16 + 2).min(8)
    };
    let [panes, events_area] =
        Layout::vertical([Constraint::Min(6), Constraint::Length(events_h)]).areas(r);
    let skip = mine
        .len()
        .saturating_sub(events_h.saturating_sub(2) as usize);
    let shown: Vec<Line> = if mine.is_empty() {
        vec![Line::from(
            "nothing changed for this member since the console started",
        )]
    } else {
        mine.into_iter().skip(skip).collect()
    };
    f.render_widget(
        Paragraph::new(shown).block(
            Block::default()
                .borders(Borders::ALL)
                .title(format!(" {name}: events since start ")),
        ),
        events_area,
    );
    let [left, right] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(panes);
    f.render_widget(
        Paragraph::new(key).wrap(Wrap { trim: false }).block(
            Block::default()
                .borders(Borders::ALL)
                .title(format!(" members/{name} in etcd (Esc closes) ")),
        ),
        left,
    );
    f.render_widget(
        Paragraph::new(rest).wrap(Wrap { trim: false }).block(
            Block::default()
                .borders(Borders::ALL)
                .title(format!(" GET {api} ")),
        ),
        right,
    );
}

fn history(f: &mut Frame, area: Rect, c: &Cluster) {
    let rows = c.history.iter().map(|e| {
        Row::new(vec![
            e.timeline.to_string(),
            shared::view::lsn(e.lsn),
            e.reason.clone(),
            e.timestamp.clone().unwrap_or_default(),
            e.new_leader.clone().unwrap_or_default(),
        ])
    });
    let table = Table::new(
        rows,
        [
            Constraint::Length(4),
            Constraint::Length(12),
            Constraint::Min(20),
            Constraint::Length(32),
            Constraint::Length(16),
        ],
    )
    .header(
        Row::new(["TL", "LSN", "Reason", "Timestamp", "New leader"])
            .style(Style::default().add_modifier(Modifier::BOLD)),
    )
    .block(
        Block::default()
            .borders(Borders::ALL)
            .title(if c.history.is_empty() {
                " Timeline history (none: still on timeline 1) "
            } else {
                " Timeline history "
            }),
    );
    f.render_widget(table, area);
}

fn status_line(f: &mut Frame, app: &App, theme: Theme, area: Rect) {
    let line = match &app.status {
        Some((text, true)) => Line::from(Span::styled(format!(" {text}"), theme.fg(Color::Red))),
        Some((text, false)) => Line::from(format!(" {text}")),
        None => {
            let hints: Vec<String> = KEYMAP
                .iter()
                .filter(|b| ["?", "q", "/", "p", "Enter / l"].contains(&b.keys))
                .map(|b| {
                    format!(
                        "{} {}",
                        b.keys,
                        b.what.split(' ').next().unwrap_or_default()
                    )
                })
                .collect();
            Line::from(Span::styled(
                format!(" {}", hints.join(" · ")),
                theme.fg(Color::DarkGray),
            ))
        }
    };
    f.render_widget(Paragraph::new(line), area);
}

fn centered(area: Rect, w: u16, h: u16) -> Rect {
    let w = w.min(area.width);
    let h = h.min(area.height);
    Rect {
        x: area.x + (area.width - w) / 2,
        y: area.y + (area.height - h) / 2,
        width: w,
        height: h,
    }
}

fn help(f: &mut Frame, theme: Theme, area: Rect) {
    let lines: Vec<Line> = KEYMAP
        .iter()
        .map(|b| {
            Line::from(vec![
                Span::styled(format!("{:>12}  ", b.keys), theme.fg(Color::Cyan)),
                Span::raw(b.what),
            ])
        })
        .collect();
    let r = centered(area, 70, KEYMAP.len() as u16 + 2);
    f.render_widget(Clear, r);
    f.render_widget(
        Paragraph::new(lines).block(
            Block::default()
                .borders(Borders::ALL)
                .title(" Keys (any key closes) "),
        ),
        r,
    );
}

/// How many lines `text` takes when word-wrapped to `width` columns.
fn wrapped_lines(text: &str, width: usize) -> usize {
    let width = width.max(1);
    text.lines()
        .map(|line| {
            let mut lines = 1;
            let mut used = 0;
            for word in line.split_whitespace() {
                let w = word.chars().count().max(1);
                if used > 0 && used + 1 + w <= width {
                    used += 1 + w;
                    continue;
                }
                if used > 0 {
                    lines += 1;
                }
                // the word starts a line; a longer one than the width is broken
                let extra = (w - 1) / width;
                lines += extra;
                used = w - extra * width;
            }
            lines
        })
        .sum::<usize>()
        .max(1)
}

fn confirm(f: &mut Frame, theme: Theme, area: Rect, title: &str, text: &str) {
    // the text, a blank line and the keys inside the border: the keys must always show
    let height = wrapped_lines(text, 62) as u16 + 4;
    let r = centered(area, 64, height);
    f.render_widget(Clear, r);
    let lines = vec![
        Line::from(text.to_string()),
        Line::from(""),
        Line::from(vec![
            Span::styled(" y ", theme.alert()),
            Span::raw(" do it    "),
            Span::styled(" n ", theme.selected()),
            Span::raw(" cancel"),
        ]),
    ];
    f.render_widget(
        Paragraph::new(lines).wrap(Wrap { trim: true }).block(
            Block::default()
                .borders(Borders::ALL)
                .title(format!(" {title}? ")),
        ),
        r,
    );
}

/// A made-up healthy cluster of `n` members (the first leads), for the render benchmark and
/// the tests.
pub fn synthetic_cluster(scope: &str, n: usize) -> Cluster {
    Cluster {
        scope: scope.into(),
        initialize: Some("7449876543210987654".into()),
        leader: Some(Leader {
            name: format!("{scope}-1"),
            lease: 1,
            mod_revision: 1,
        }),
        status: Status {
            optime: Some(80 << 20),
            ..Default::default()
        },
        members: (1..=n)
            .map(|i| Member {
                name: format!("{scope}-{i}"),
                data: MemberData {
                    conn_url: format!("postgres://10.0.0.{i}:5432/postgres"),
                    api_url: format!("http://10.0.0.{i}:8008/patroni"),
                    state: "running".into(),
                    role: if i == 1 { "primary" } else { "replica" }.into(),
                    timeline: Some(3),
                    xlog_location: Some((80 << 20) - (i as u64) * 1000),
                    replication_state: (i > 1).then(|| "streaming".into()),
                    ..Default::default()
                },
                lease: 1,
                mod_revision: 1,
            })
            .collect(),
        ..Default::default()
    }
}

/// The time to draw the cluster list of 200 clusters × 5 members (1,000 members) on a 200×60
/// off-screen terminal, per frame over `frames` frames: the figure BENCHMARKS.md keeps.
pub fn render_benchmark(frames: u32) -> std::time::Duration {
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;
    let clusters: Vec<Cluster> = (0..200)
        .map(|i| synthetic_cluster(&format!("c{i:03}"), 5))
        .collect();
    let now = std::time::Instant::now();
    let mut app = App::new("127.0.0.1:2379".into(), "/service".into(), true, now);
    crate::app::update(
        &mut app,
        crate::app::Msg::Clusters {
            clusters,
            at: now,
            clock: "12:00:00".into(),
        },
    );
    let Ok(mut t) = Terminal::new(TestBackend::new(200, 60));
    let started = std::time::Instant::now();
    for _ in 0..frames.max(1) {
        let _ = t.draw(|f| draw(f, &app, Theme { mono: false }));
    }
    started.elapsed() / frames.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::{App, Msg, Sample, update};
    use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;

    use std::time::{Duration, Instant};

    fn cluster(scope: &str, n: usize) -> Cluster {
        synthetic_cluster(scope, n)
    }

    fn render(app: &App, w: u16, h: u16) -> String {
        let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
        t.draw(|f| draw(f, app, Theme { mono: false })).unwrap();
        let buf = t.backend().buffer().clone();
        let mut out = String::new();
        for y in 0..buf.area.height {
            for x in 0..buf.area.width {
                out.push_str(buf[(x, y)].symbol());
            }
            out.push('\n');
        }
        out
    }

    fn app_with(clusters: Vec<Cluster>) -> App {
        let now = Instant::now();
        let mut app = App::new("127.0.0.1:2379".into(), "/service".into(), false, now);
        update(
            &mut app,
            Msg::Clusters {
                clusters,
                at: now,
                clock: "12:00:00".into(),
            },
        );
        app
    }

    fn press(app: &mut App, code: KeyCode) {
        update(app, Msg::Key(KeyEvent::new(code, KeyModifiers::NONE)));
    }

    #[test]
    fn confirmation_dialogs_always_show_their_keys() {
        let mut app = app_with(vec![cluster("alpha", 3)]);
        // the longest dialogs: a switchover to a named member, a demo cut
        press(&mut app, KeyCode::Enter);
        press(&mut app, KeyCode::Char('j'));
        press(&mut app, KeyCode::Char('s'));
        assert!(app.confirm.is_some());
        for (w, h) in [(80, 24), (120, 32)] {
            let s = render(&app, w, h);
            assert!(s.contains(" do it") && s.contains(" cancel"), "{s}");
        }
        assert_eq!(wrapped_lines("a b c", 3), 2);
        assert_eq!(wrapped_lines("abcdefg", 3), 3);
        assert_eq!(wrapped_lines("one\ntwo", 10), 2);
    }

    #[test]
    fn demo_switches_show_in_the_header_and_on_their_members() {
        let mut app = app_with(vec![cluster("alpha", 3)]);
        let record = r#"{"control": "/bin/demo", "net": {}, "etcd": {"stopped": true},
            "nodes": [{"name": "alpha-2", "cut": true}, {"name": "alpha-3", "isolated": true}]}"#;
        update(
            &mut app,
            Msg::Demo(crate::app::DemoSwitches::parse("/d", record)),
        );
        press(&mut app, KeyCode::Enter);
        let s = render(&app, 140, 24);
        assert!(s.contains("demo: C K N E"), "{s}");
        assert!(
            s.contains("etcd stopped, alpha-2 cut, alpha-3 isolated"),
            "{s}"
        );
        assert!(s.contains("alpha-2 [cut]"), "{s}");
        assert!(s.contains("alpha-3 [isolated]"), "{s}");
    }

    #[test]
    fn empty_namespace_and_waiting_for_etcd() {
        let app = App::new(
            "127.0.0.1:2379".into(),
            "/service".into(),
            false,
            Instant::now(),
        );
        let s = render(&app, 80, 24);
        assert!(s.contains("waiting for etcd"), "{s}");
        let s = render(&app_with(vec![]), 80, 24);
        assert!(s.contains("no cluster in this namespace yet"), "{s}");
        assert!(s.contains("etcd ok"), "{s}");
    }

    #[test]
    fn cluster_list_shows_leader_health_flags_and_readiness() {
        let mut paused = cluster("beta", 3);
        paused.config = Some(shared::dcs::Versioned {
            value: shared::dcs::DynamicConfig::parse(r#"{"pause":true}"#).unwrap(),
            mod_revision: 1,
        });
        paused.members[2].data.state = "stopped".into();
        let app = app_with(vec![cluster("alpha", 3), paused]);
        let s = render(&app, 120, 24);
        assert!(s.contains("alpha-1"), "{s}");
        assert!(s.contains("healthy"), "{s}");
        assert!(s.contains("degraded"), "{s}");
        assert!(s.contains("PAUSED"), "{s}");
        let mut dr = cluster("gamma", 2);
        dr.config = Some(shared::dcs::Versioned {
            value: shared::dcs::DynamicConfig::parse(
                r#"{"standby_cluster": {"host": "10.0.0.9", "port": 5432}}"#,
            )
            .unwrap(),
            mod_revision: 1,
        });
        assert!(
            flags(&dr).contains("standby of 10.0.0.9:5432"),
            "{}",
            flags(&dr)
        );
        assert!(s.contains("failover ready: alpha-2"), "{s}");
        // it fits 80 columns without panicking
        render(&app, 80, 24);
    }

    #[test]
    fn cluster_flags_show_synchronous_and_failsafe_modes() {
        let mut c = cluster("alpha", 3);
        c.config = Some(shared::dcs::Versioned {
            value: shared::dcs::DynamicConfig::parse(
                r#"{"synchronous_mode":true,"synchronous_mode_strict":true,"failsafe_mode":true}"#,
            )
            .unwrap(),
            mod_revision: 1,
        });
        assert_eq!(flags(&c), "strict sync: none, failsafe");
        c.sync = Some(shared::dcs::Versioned {
            value: shared::dcs::SyncState {
                leader: Some("alpha-1".into()),
                quorum: 0,
                sync_standby: vec!["alpha-2".into()],
            },
            mod_revision: 2,
        });
        assert_eq!(flags(&c), "strict sync: alpha-2, failsafe");
        let s = render(&app_with(vec![c]), 120, 20);
        assert!(s.contains("strict syn"), "{s}");
    }

    #[test]
    fn topology_view_shows_lags_samples_and_the_readiness_line() {
        let mut c = cluster("alpha", 3);
        c.members[1]
            .data
            .tags
            .insert("nofailover".into(), serde_json::json!(true));
        c.members[2].data.xlog_location = Some(10 << 20);
        let mut app = app_with(vec![c]);
        let t0 = app.now;
        update(
            &mut app,
            Msg::Sample {
                api_url: "http://10.0.0.2:8008/patroni".into(),
                sample: Sample {
                    at: t0,
                    delay: Some(4.0),
                    body: Ok(
                        serde_json::json!({"state":"running","role":"replica","timeline":3,
                        "replication_state":"streaming",
                        "xlog":{"received_location":100,"replayed_location":40},
                        "pgpilot":{"decision":"replica following alpha-1","fencing":"disarmed","watchdog":"off"}}),
                    ),
                },
            },
        );
        update(
            &mut app,
            Msg::Sample {
                api_url: "http://10.0.0.3:8008/patroni".into(),
                sample: Sample {
                    at: t0,
                    body: Err("no answer".into()),
                    delay: None,
                },
            },
        );
        // sampled again, still down: the age counts from the first failure
        update(
            &mut app,
            Msg::Sample {
                api_url: "http://10.0.0.3:8008/patroni".into(),
                sample: Sample {
                    at: t0 + Duration::from_secs(2),
                    body: Err("no answer".into()),
                    delay: None,
                },
            },
        );
        update(&mut app, Msg::Tick(t0 + Duration::from_secs(3)));
        press(&mut app, KeyCode::Enter);
        press(&mut app, KeyCode::Down);
        let s = render(&app, 100, 30);
        assert!(s.contains("failover BLOCKED"), "{s}");
        assert!(s.contains("tagged nofailover"), "{s}");
        assert!(s.contains("lagging"), "{s}");
        assert!(s.contains("70.0 MB"), "{s}");
        assert!(s.contains("2 kB"), "{s}");
        assert!(s.contains("REST down 3.0s"), "{s}");
        assert!(s.contains("agent: replica following alpha-1"), "{s}");
        assert!(
            s.contains("protection: fencing disarmed, watchdog off"),
            "{s}"
        );
        assert!(s.contains("replay lag"), "{s}");
        assert!(s.contains("Delay") && s.contains("4.0s"), "{s}");
        // the member's key and REST answer in full, and its events
        press(&mut app, KeyCode::Enter);
        let s = render(&app, 100, 30);
        assert!(s.contains("members/alpha-2 in etcd"), "{s}");
        assert!(s.contains("alpha-2: events since start"), "{s}");
        assert!(s.contains("\"received_location\": 100"), "{s}");
        press(&mut app, KeyCode::Esc);
        // the other tabs
        press(&mut app, KeyCode::Char('2'));
        assert!(render(&app, 100, 30).contains("Timeline history"));
        press(&mut app, KeyCode::Char('4'));
        assert!(render(&app, 100, 30).contains("nothing has changed"));
        press(&mut app, KeyCode::Char('3'));
        assert!(render(&app, 100, 30).contains("(no config key)"));
    }

    #[test]
    fn etcd_down_is_loud_and_dialogs_say_what_happens() {
        let mut app = app_with(vec![cluster("alpha", 3)]);
        let t0 = app.now;
        update(&mut app, Msg::EtcdFailed("deadline exceeded".into()));
        update(&mut app, Msg::Tick(t0 + Duration::from_secs(12)));
        let s = render(&app, 80, 24);
        assert!(s.contains("ETCD DOWN"), "{s}");
        assert!(s.contains("what you see is from 12:00:00, 12s ago"), "{s}");
        press(&mut app, KeyCode::Char('p'));
        let s = render(&app, 80, 24);
        assert!(s.contains("Pause cluster alpha"), "{s}");
        assert!(s.contains("do it"), "{s}");
        press(&mut app, KeyCode::Char('n'));
        press(&mut app, KeyCode::Char('?'));
        let s = render(&app, 80, 24);
        for b in KEYMAP {
            assert!(
                s.contains(b.what.split(' ').next().unwrap()),
                "{}: {s}",
                b.keys
            );
        }
    }

    #[test]
    fn two_hundred_clusters_of_five_members() {
        let clusters: Vec<Cluster> = (0..200).map(|i| cluster(&format!("c{i:03}"), 5)).collect();
        let mut app = app_with(clusters);
        // measured, not asserted (BENCHMARKS.md keeps the number; `bench` runs it released)
        eprintln!(
            "cluster list, 200 clusters / 1,000 members: {:?} per frame",
            render_benchmark(20)
        );
        press(&mut app, KeyCode::Char('G'));
        for _ in 0..150 {
            press(&mut app, KeyCode::Down);
        }
        press(&mut app, KeyCode::Enter);
        let s = render(&app, 120, 40);
        assert!(s.contains("c150"), "{s}");
    }
}
