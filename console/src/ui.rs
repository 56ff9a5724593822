//! Renders the live console from its state: a pure function of [`App`] onto a ratatui frame.
//! Every screen works at 80×24; colours carry meaning only together with text, and `mono`
//! drops them (NO_COLOR, dumb terminals).

use crate::app::{App, CHART_SPAN, Hits, Input, KEYMAP, Measure, Tab, Trace, View};
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::symbols::Marker;
use ratatui::text::{Line, Span};
use ratatui::widgets::{
    Axis, Block, Borders, Cell, Chart, Clear, Dataset, GraphType, Paragraph, Row, Table,
    TableState, Wrap,
};
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
    /// A member that is gone: dim where the terminal can, else italic.
    fn gone(self) -> Style {
        if self.mono {
            Style::default().add_modifier(Modifier::ITALIC)
        } else {
            Style::default()
                .fg(Color::DarkGray)
                .add_modifier(Modifier::DIM)
        }
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
/// Draws one frame; returns where its clickable parts are (for the mouse).
pub fn draw(f: &mut Frame, app: &App, theme: Theme) -> Hits {
    let mut hits = Hits {
        view: Some(app.view),
        ..Default::default()
    };
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
        View::Clusters => clusters(f, app, theme, main, &mut hits),
        View::Cluster(tab) => cluster(f, app, theme, main, tab, &mut hits),
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
    hits
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

/// Renders a table whose selected row stays in sight (the table scrolls to it) and records
/// where its rows are for the mouse.
fn selectable_table(f: &mut Frame, table: Table, area: Rect, selected: usize, hits: &mut Hits) {
    let mut state = TableState::default().with_selected(Some(selected));
    f.render_stateful_widget(table, area, &mut state);
    // below the top border and the header line, above the bottom border
    let rows = Rect {
        x: area.x.saturating_add(1),
        y: area.y.saturating_add(2),
        width: area.width.saturating_sub(2),
        height: area.height.saturating_sub(3),
    };
    hits.rows = Some((rows, state.offset()));
}

fn clusters(f: &mut Frame, app: &App, theme: Theme, area: Rect, hits: &mut Hits) {
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
    selectable_table(f, table, area, app.cluster_idx, hits);
}

fn cluster(f: &mut Frame, app: &App, theme: Theme, area: Rect, tab: Tab, hits: &mut Hits) {
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
    // where each tab's label lands on the line (for a click)
    let mut x = top.x.saturating_add(title.chars().count() as u16);
    for (i, t) in Tab::ALL.iter().enumerate() {
        let w = format!(" {} {} ", i + 1, t.title()).chars().count() as u16;
        let r = Rect {
            x,
            y: top.y,
            width: w,
            height: 1,
        }
        .intersection(top);
        hits.tabs.push((r, *t));
        x = x.saturating_add(w + 1);
    }
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
    let line = match incident(app, c) {
        Some(text) => Paragraph::new(format!(" {text}")).style(theme.alert()),
        None => Paragraph::new(format!(" {ready}")).style(if blocked {
            theme.fg(Color::Red)
        } else {
            theme.fg(Color::Green)
        }),
    };
    f.render_widget(line, ready_area);
    match tab {
        Tab::Members => members(f, app, theme, body, c, hits),
        Tab::History => history(f, app.scroll, body, c),
        Tab::Config => {
            let text = c
                .config
                .as_ref()
                .map(|v| {
                    serde_saphyr::to_string(&Value::Object(v.value.raw.clone())).unwrap_or_default()
                })
                .unwrap_or_else(|| "(no config key)".into());
            f.render_widget(
                Paragraph::new(text).scroll((app.scroll, 0)).block(
                    Block::default()
                        .borders(Borders::ALL)
                        .title(" Dynamic configuration "),
                ),
                body,
            );
        }
        Tab::Events => events(f, app, body, c),
        Tab::Charts => charts(f, app, theme, body, c),
    }
}

/// During an incident — the leader's REST API stopped answering, or nobody holds the lock —
/// one line saying where the failover stands: how long the leader has been silent and at the
/// latest when its lock lapses (it was renewed at the latest when the API last answered), or
/// how long the cluster has been without a leader, and who would take over or why nobody can.
pub fn incident(app: &App, c: &Cluster) -> Option<String> {
    let ttl = c.dynamic_config().timing().ttl;
    let next = match readiness(c) {
        (_, true) => format!(
            "nobody can take over: {}",
            failover_blocked(c).unwrap_or_default()
        ),
        (_, false) => format!(
            "{} would take over",
            likely_successor(c).unwrap_or_default()
        ),
    };
    let Some(leader) = c.leader.as_ref() else {
        return Some(format!("NO LEADER · {next}"));
    };
    let api = &c.member(&leader.name)?.data.api_url;
    let sample = app.samples.get(api)?;
    if sample.body.is_ok() {
        return None;
    }
    let silent = app
        .now
        .saturating_duration_since(sample.at)
        .as_secs_f64()
        .round() as u64;
    let lapse = match ttl.checked_sub(silent) {
        Some(left) if left > 0 => format!("its lock lapses within {left}s (ttl {ttl}s)"),
        _ => format!("its lock should have lapsed (ttl {ttl}s): etcd expires it"),
    };
    Some(format!(
        "LEADER {} SILENT {silent}s · {lapse} · then {next}",
        leader.name
    ))
}

/// The Events tab: the cluster journal (the agents' and the history key's, so a console
/// opened after an incident tells it), and below it what this console saw change.
fn events(f: &mut Frame, app: &App, area: Rect, c: &Cluster) {
    let now_ms = chrono::Utc::now().timestamp_millis();
    let journal: Vec<Line> = app
        .journal_of(c)
        .iter()
        .map(|e| Line::from(format!("{}  {:<14} {}", e.clock(now_ms), e.member, e.text)))
        .collect();
    let seen: Vec<Line> = app
        .events
        .iter()
        .filter(|e| e.scope == c.scope)
        .map(|e| Line::from(format!("{}  {}", e.clock, e.text)))
        .collect();
    let seen_h = if seen.is_empty() {
        3
    } else {
        (seen.len() as u16 + 2).min(area.height / 3).max(3)
    };
    let [top, bottom] =
        Layout::vertical([Constraint::Min(3), Constraint::Length(seen_h)]).areas(area);
    let journal = if journal.is_empty() {
        vec![Line::from(
            "no journal yet: the agents' /journal is read every few seconds",
        )]
    } else {
        journal
    };
    f.render_widget(
        Paragraph::new(journal).scroll((app.scroll, 0)).block(
            Block::default()
                .borders(Borders::ALL)
                .title(" Journal: agents and history, newest first (UTC) "),
        ),
        top,
    );
    let seen = if seen.is_empty() {
        vec![Line::from("nothing has changed since the console started")]
    } else {
        seen
    };
    f.render_widget(
        Paragraph::new(seen).block(
            Block::default()
                .borders(Borders::ALL)
                .title(" Seen by this console "),
        ),
        bottom,
    );
}

/// The members table's columns for the terminal's width: all of them from 100 columns, else
/// without the receive lag (5) and the replay delay (7).
fn fit_columns<T>(wide: bool, columns: Vec<T>) -> Vec<T> {
    columns
        .into_iter()
        .enumerate()
        .filter(|(i, _)| wide || !matches!(i, 5 | 7))
        .map(|(_, c)| c)
        .collect()
}

/// `host:port` of a member as `/cluster` renders it.
fn host_of(m: &Value) -> String {
    match (m["host"].as_str(), m["port"].as_u64()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        _ => String::new(),
    }
}

fn members(f: &mut Frame, app: &App, theme: Theme, area: Rect, c: &Cluster, hits: &mut Hits) {
    let list = crate::app::ordered_members(c);
    // the Host column as wide as its longest address, so that no port is cut
    let host_w = list
        .iter()
        .map(|(_, m)| host_of(m).chars().count())
        .max()
        .unwrap_or(0)
        .clamp(4, 40) as u16;
    let detail_h = if area.height >= 16 { 7 } else { 0 };
    let [table_area, detail_area] =
        Layout::vertical([Constraint::Min(3), Constraint::Length(detail_h)]).areas(area);
    // below 100 columns the receive lag and the replay delay make room for the rest
    let wide = table_area.width >= 100;
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
        let host = host_of(m);
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
        let mut row = Row::new(fit_columns(
            wide,
            vec![
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
            ],
        ));
        if app.changed.contains_key(&format!("{}/{name}", c.scope)) {
            row = row.style(theme.changed());
        }
        if i == app.member_idx {
            row = row.style(theme.selected());
        }
        row
    });
    // members whose key expired while this console watched: dimmed, with how long they have
    // been gone and what they last were
    let gone = app.departed_of(&c.scope).into_iter().map(|d| {
        let one = Cluster {
            scope: c.scope.clone(),
            members: vec![d.member.clone()],
            ..Default::default()
        };
        let host = host_of(&cluster_json(&one)["members"][0]);
        let since = age(app.now.saturating_duration_since(d.since).as_secs_f64());
        Row::new(fit_columns(
            wide,
            vec![
                Cell::from(d.member.name.clone()),
                Cell::from(host),
                Cell::from(format!("was {}", d.member.data.role.replace('_', " "))),
                Cell::from(format!("gone {since}")).style(theme.fg(Color::Red)),
                Cell::from(
                    d.member
                        .data
                        .timeline
                        .map(|t| t.to_string())
                        .unwrap_or_default(),
                ),
                Cell::from(""),
                Cell::from(""),
                Cell::from(""),
                Cell::from(""),
                Cell::from("key expired"),
            ],
        ))
        .style(theme.gone())
    });
    let rows: Vec<Row> = rows.chain(gone).collect();
    let widths = fit_columns(
        wide,
        vec![
            Constraint::Min(12),
            Constraint::Length(host_w),
            Constraint::Length(12),
            Constraint::Length(10),
            Constraint::Length(3),
            Constraint::Length(9),
            Constraint::Length(9),
            Constraint::Length(6),
            Constraint::Length(2),
            Constraint::Length(if wide { 14 } else { 10 }),
        ],
    );
    let header = fit_columns(
        wide,
        vec![
            "Member", "Host", "Role", "State", "TL", "Recv lag", "Rply lag", "Delay", "R",
            "Sampled",
        ],
    );
    let table = Table::new(rows, widths)
        .header(Row::new(header).style(Style::default().add_modifier(Modifier::BOLD)))
        .block(Block::default().borders(Borders::ALL).title(" Members "));
    selectable_table(f, table, table_area, app.member_idx, hits);
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
            if let Some(r) = raft_line(b) {
                lines.push(Line::from(r));
            }
            if let Some(r) = b.get("pending_restart_reason") {
                lines.push(Line::from(format!("pending restart: {r}")));
            }
        }
        Some(Err(e)) => lines.push(Line::from(format!("REST API: {e}"))),
        None => lines.push(Line::from("REST API not sampled yet")),
    }
    // whether this member would be promoted if the leader failed now, and why not
    let name = m["name"].as_str().unwrap_or_default();
    if let Some((_, why)) = shared::dcs::failover_readiness(c)
        .into_iter()
        .find(|(n, _)| n == name)
    {
        lines.push(Line::from(match why {
            None => "failover: a candidate".to_string(),
            Some(why) => format!("failover: not a candidate — {why}"),
        }));
    }
    f.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: true })
            .block(Block::default().borders(Borders::ALL).title(" Member ")),
        text_area,
    );
    // a replica's replay lag, a primary's WAL rate
    let measure = if m["role"]
        .as_str()
        .is_some_and(|r| r == "leader" || r == "standby_leader")
    {
        Measure::WalRate
    } else {
        Measure::ReplayLag
    };
    let one: Vec<Trace> = app
        .series
        .get(api)
        .map(|points| {
            let points = crate::app::trace(points, app.now, measure);
            let peak = points.iter().map(|p| p.1).fold(0.0, f64::max);
            Trace {
                member: name.to_string(),
                points,
                peak,
            }
        })
        .into_iter()
        .collect();
    chart(f, theme, spark_area, measure, &one, false);
}

/// The Charts tab: replay lag above, WAL rate below, each member a line, over the last
/// minutes (the members with the largest peaks when there are more than fit).
fn charts(f: &mut Frame, app: &App, theme: Theme, area: Rect, c: &Cluster) {
    let [lag, rate] =
        Layout::vertical([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(area);
    chart(
        f,
        theme,
        lag,
        Measure::ReplayLag,
        &app.traces(c, Measure::ReplayLag),
        true,
    );
    chart(
        f,
        theme,
        rate,
        Measure::WalRate,
        &app.traces(c, Measure::WalRate),
        true,
    );
}

/// Colours of a chart's lines, in order; without colours the markers tell them apart.
const LINE_COLOURS: [Color; 6] = [
    Color::Cyan,
    Color::Yellow,
    Color::Green,
    Color::Magenta,
    Color::LightBlue,
    Color::LightRed,
];
const MONO_MARKERS: [Marker; 5] = [
    Marker::Braille,
    Marker::Dot,
    Marker::Block,
    Marker::Bar,
    Marker::HalfBlock,
];

/// One chart with a time axis from [`CHART_SPAN`] ago to now and a value axis from 0 to the
/// peak; `legend` names the lines.
fn chart(
    f: &mut Frame,
    theme: Theme,
    area: Rect,
    measure: Measure,
    traces: &[Trace],
    legend: bool,
) {
    let (what, unit) = match measure {
        Measure::ReplayLag => ("replay lag", ""),
        Measure::WalRate => ("WAL rate", "/s"),
    };
    let span = CHART_SPAN.as_secs_f64();
    let peak = traces.iter().map(|t| t.peak).fold(0.0, f64::max);
    let top = if peak > 0.0 { peak * 1.1 } else { 1.0 };
    let title = match (traces.is_empty(), legend) {
        (true, _) => format!(" {what}: no samples yet "),
        (false, true) => format!(
            " {what}, last {} min, peak {}{unit} ",
            span / 60.0,
            bytes(peak as u64)
        ),
        // the member pane's small chart: the peak only
        (false, false) => format!(" {what}, peak {}{unit} ", bytes(peak as u64)),
    };
    let datasets: Vec<Dataset> = traces
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let d = Dataset::default()
                .graph_type(GraphType::Line)
                .data(&t.points);
            let d = if legend { d.name(t.member.clone()) } else { d };
            if theme.mono {
                d.marker(MONO_MARKERS[i % MONO_MARKERS.len()])
            } else {
                d.marker(Marker::Braille)
                    .style(Style::default().fg(LINE_COLOURS[i % LINE_COLOURS.len()]))
            }
        })
        .collect();
    let minutes = |s: f64| format!("-{}m", s / 60.0);
    let chart = Chart::new(datasets)
        .block(Block::default().borders(Borders::ALL).title(title))
        .x_axis(Axis::default().bounds([-span, 0.0]).labels([
            Span::raw(minutes(span)),
            Span::raw(minutes(span / 2.0)),
            Span::raw("now"),
        ]))
        .y_axis(Axis::default().bounds([0.0, top]).labels([
            Span::raw("0"),
            Span::raw(format!("{}{unit}", bytes(top as u64))),
        ]))
        .hidden_legend_constraints((Constraint::Ratio(1, 2), Constraint::Ratio(1, 2)));
    f.render_widget(chart, area);
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

/// The etcd member a `raft:` agent runs, from its `/patroni` (`pgpilot.raft`).
fn raft_line(b: &Value) -> Option<String> {
    let r = b["pgpilot"].get("raft").filter(|r| r.is_object())?;
    let problem = r["problem"]
        .as_str()
        .map(|p| format!(" — {p}"))
        .unwrap_or_default();
    Some(if r["running"] == true {
        format!(
            "raft member: {}/{} members answer, leader {}{problem}",
            r["reachable"],
            r["members"],
            r["leader"].as_str().unwrap_or("NONE (no quorum)")
        )
    } else {
        format!("raft member: NOT RUNNING{problem}")
    })
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

/// The History tab as a timeline: who led each timeline, from when until when, and how it
/// ended (from the `history` key; the current timeline's leader from the leader key).
fn history(f: &mut Frame, scroll: u16, area: Rect, c: &Cluster) {
    let mut entries = c.history.clone();
    entries.sort_by_key(|e| e.timeline);
    let current = c
        .timeline()
        .max(entries.last().map_or(1, |e| e.timeline.saturating_add(1)));
    // the timelines there is something to say about (never a walk over a range a corrupt
    // value could make huge)
    let mut timelines: Vec<u64> = entries
        .iter()
        .flat_map(|e| [e.timeline, e.timeline.saturating_add(1)])
        .chain([current])
        .collect();
    timelines.sort_unstable_by(|a, b| b.cmp(a));
    timelines.dedup();
    let short = |t: &Option<String>| {
        t.as_deref()
            .map(|t| t.get(..19).unwrap_or(t).replace('T', " "))
            .unwrap_or_else(|| "?".into())
    };
    let mut rows: Vec<Row> = Vec::new();
    for tl in timelines.into_iter().skip(usize::from(scroll)).take(500) {
        let before = entries.iter().find(|e| e.timeline.saturating_add(1) == tl);
        let end = entries.iter().find(|e| e.timeline == tl);
        let leader = match (before.and_then(|e| e.new_leader.clone()), tl == current) {
            (Some(l), _) => l,
            (None, true) => c.leader.as_ref().map_or("?".into(), |l| l.name.clone()),
            (None, false) => "?".into(),
        };
        let from = match before {
            Some(e) => short(&e.timestamp),
            None if tl == 1 => "bootstrap".into(),
            None => "?".into(),
        };
        let (until, ended) = match end {
            Some(e) => {
                let how = match e.new_leader.as_deref() {
                    Some(n) => format!("{n} promoted at {}", shared::view::lsn(e.lsn)),
                    None => format!("ended at {}", shared::view::lsn(e.lsn)),
                };
                let why = if e.reason.is_empty() || e.reason == "no recovery target specified" {
                    String::new()
                } else {
                    format!(" ({})", e.reason)
                };
                (short(&e.timestamp), format!("{how}{why}"))
            }
            None => ("now".into(), "current".into()),
        };
        rows.push(Row::new(vec![tl.to_string(), leader, from, until, ended]));
    }
    let table = Table::new(
        rows,
        [
            Constraint::Length(4),
            Constraint::Length(16),
            Constraint::Length(19),
            Constraint::Length(19),
            Constraint::Min(20),
        ],
    )
    .header(
        Row::new(["TL", "Led by", "From (UTC)", "Until", "How it ended"])
            .style(Style::default().add_modifier(Modifier::BOLD)),
    )
    .block(
        Block::default()
            .borders(Borders::ALL)
            .title(" Timelines, newest first "),
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
    // as wide as the terminal allows (up to 100 columns), each description wrapped under
    // itself beside its keys, so that no line is cut
    let width = area.width.saturating_sub(2).clamp(30, 100);
    let text_w = usize::from(width.saturating_sub(2 + 14)).max(10);
    let mut lines: Vec<Line> = Vec::new();
    for b in KEYMAP {
        for (i, part) in wrap_words(b.what, text_w).into_iter().enumerate() {
            let keys = if i == 0 { b.keys } else { "" };
            lines.push(Line::from(vec![
                Span::styled(format!("{keys:>12}  "), theme.fg(Color::Cyan)),
                Span::raw(part),
            ]));
        }
    }
    let r = centered(area, width, lines.len() as u16 + 2);
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

/// `text` word-wrapped to `width` columns (a longer word is broken).
fn wrap_words(text: &str, width: usize) -> Vec<String> {
    let width = width.max(1);
    let mut out: Vec<String> = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        let mut word: Vec<char> = word.chars().collect();
        let used = line.chars().count();
        if used > 0 && used + 1 + word.len() <= width {
            line.push(' ');
            line.extend(word);
            continue;
        }
        if used > 0 {
            out.push(std::mem::take(&mut line));
        }
        while word.len() > width {
            out.push(word.drain(..width).collect());
        }
        line = word.into_iter().collect();
    }
    if !line.is_empty() || out.is_empty() {
        out.push(line);
    }
    out
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
        let _ = t.draw(|f| {
            draw(f, &app, Theme { mono: false });
        });
    }
    started.elapsed() / frames.max(1)
}

/// The time to draw the Charts tab of one cluster of 1,000 members, each with five minutes of
/// samples (one a second), on a 200×60 off-screen terminal, per frame over `frames` frames.
pub fn charts_benchmark(frames: u32) -> std::time::Duration {
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;
    let c = synthetic_cluster("big", 1000);
    let start = std::time::Instant::now();
    let mut app = App::new("127.0.0.1:2379".into(), "/service".into(), true, start);
    let t0 = start.checked_sub(CHART_SPAN).unwrap_or(start);
    for (i, m) in c.members.iter().enumerate() {
        for s in 0..300u64 {
            let wal = (i as u64 + 1) * 1_000_000 + s * 50_000;
            let xlog = if i == 0 {
                serde_json::json!({"location": wal})
            } else {
                serde_json::json!({"received_location": wal, "replayed_location": wal - (s % 7) * 4096})
            };
            crate::app::update(
                &mut app,
                crate::app::Msg::Sample {
                    api_url: m.data.api_url.clone(),
                    sample: crate::app::Sample {
                        at: t0 + std::time::Duration::from_secs(s),
                        body: Ok(serde_json::json!({"state": "running", "xlog": xlog})),
                        delay: None,
                    },
                },
            );
        }
    }
    crate::app::update(
        &mut app,
        crate::app::Msg::Clusters {
            clusters: vec![c],
            at: start,
            clock: "12:00:00".into(),
        },
    );
    app.view = View::Cluster(Tab::Charts);
    let Ok(mut t) = Terminal::new(TestBackend::new(200, 60));
    let started = std::time::Instant::now();
    for _ in 0..frames.max(1) {
        let _ = t.draw(|f| {
            draw(f, &app, Theme { mono: false });
        });
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
        t.draw(|f| {
            draw(f, app, Theme { mono: false });
        })
        .unwrap();
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
    fn a_member_whose_key_expired_stays_listed_until_it_returns_or_is_dismissed() {
        let mut app = app_with(vec![cluster("alpha", 3)]);
        let t0 = app.now;
        // alpha-1's key expires (its machine was cut)
        let mut without = cluster("alpha", 3);
        let gone = without.members.remove(0);
        update(
            &mut app,
            Msg::Clusters {
                clusters: vec![without.clone()],
                at: t0 + Duration::from_secs(5),
                clock: "12:00:05".into(),
            },
        );
        app.now = t0 + Duration::from_secs(95);
        press(&mut app, KeyCode::Enter);
        for (w, h) in [(80, 24), (200, 60)] {
            let s = render(&app, w, h);
            assert!(s.contains("alpha-1"), "{w}x{h}\n{s}");
            assert!(s.contains("gone 90s"), "{w}x{h}\n{s}");
            // no address loses its port
            assert!(s.contains("10.0.0.1:5432"), "{w}x{h}\n{s}");
        }
        let s = render(&app, 200, 60);
        assert!(s.contains("key expired"), "{s}");
        // the event says what it was
        assert!(
            app.events.iter().any(|e| e.text.contains("alpha-1 left")),
            "{:?}",
            app.events
        );
        // it comes back: listed as a member again, and the events say so
        let mut back = without.clone();
        back.members.insert(0, gone);
        update(
            &mut app,
            Msg::Clusters {
                clusters: vec![back],
                at: t0 + Duration::from_secs(100),
                clock: "12:01:40".into(),
            },
        );
        assert!(app.departed.is_empty());
        assert!(
            app.events
                .iter()
                .any(|e| e.text.contains("alpha-1 is back"))
        );
        // gone again, then dismissed
        update(
            &mut app,
            Msg::Clusters {
                clusters: vec![without],
                at: t0 + Duration::from_secs(110),
                clock: "12:01:50".into(),
            },
        );
        assert_eq!(app.departed.len(), 1);
        press(&mut app, KeyCode::Char(':'));
        for ch in "dismiss alpha-1".chars() {
            press(&mut app, KeyCode::Char(ch));
        }
        press(&mut app, KeyCode::Enter);
        assert!(app.departed.is_empty(), "{:?}", app.status);
        let s = render(&app, 200, 60);
        assert!(!s.contains("was primary"), "{s}");
    }

    #[test]
    fn a_late_console_tells_the_failover_from_the_journal_and_the_history() {
        let mut c = cluster("alpha", 3);
        c.history = vec![shared::dcs::HistoryEntry {
            timeline: 1,
            lsn: 0x3000060,
            reason: "no recovery target specified".into(),
            timestamp: Some("2026-12-02T03:01:02.000+00:00".into()),
            new_leader: Some("alpha-2".into()),
        }];
        let mut app = app_with(vec![c.clone()]);
        let api = c.members[1].data.api_url.clone();
        update(
            &mut app,
            Msg::Journal {
                api_url: api,
                entries: vec![
                    shared::journal::Entry {
                        at_ms: 1_764_644_460_000,
                        member: "alpha-2".into(),
                        text: "no leader: racing for the lock".into(),
                    },
                    shared::journal::Entry {
                        at_ms: 1_764_644_461_000,
                        member: "alpha-2".into(),
                        text: "holding the leader lock: promoting".into(),
                    },
                ],
            },
        );
        press(&mut app, KeyCode::Enter);
        press(&mut app, KeyCode::Char('4'));
        for (w, h) in [(80, 24), (200, 60)] {
            let s = render(&app, w, h);
            assert!(
                s.contains("holding the leader lock: promoting"),
                "{w}x{h}\n{s}"
            );
            assert!(s.contains("timeline 1 ended at 0/3000060"), "{w}x{h}\n{s}");
        }
        let s = render(&app, 200, 60);
        assert!(s.contains("alpha-2 leads timeline 2"), "{s}");
        // newest first: the promotion above the race
        let promote = s.find("promoting").unwrap();
        let race = s.find("racing for the lock").unwrap();
        assert!(promote < race, "{s}");
        // the History tab: who led each timeline
        press(&mut app, KeyCode::Char('2'));
        let s = render(&app, 120, 30);
        assert!(s.contains("alpha-2 promoted at 0/3000060"), "{s}");
        assert!(s.contains("current"), "{s}");
    }

    #[test]
    fn a_corrupt_history_value_neither_hangs_nor_panics_the_history_tab() {
        let mut c = cluster("alpha", 3);
        c.history = vec![shared::dcs::HistoryEntry {
            timeline: u64::MAX,
            lsn: 0,
            reason: "x".into(),
            timestamp: Some("not a time".into()),
            new_leader: None,
        }];
        let mut app = app_with(vec![c]);
        press(&mut app, KeyCode::Enter);
        press(&mut app, KeyCode::Char('2'));
        let s = render(&app, 120, 30);
        assert!(s.contains("Timelines"), "{s}");
        press(&mut app, KeyCode::Char('4'));
        render(&app, 80, 24);
    }

    #[test]
    fn an_incident_line_counts_down_the_silent_leaders_lock_and_names_the_successor() {
        let c = cluster("alpha", 3);
        let leader_api = c.members[0].data.api_url.clone();
        let mut app = app_with(vec![c]);
        let t0 = app.now;
        update(
            &mut app,
            Msg::Sample {
                api_url: leader_api,
                sample: Sample {
                    at: t0,
                    delay: None,
                    body: Err("connection refused".into()),
                },
            },
        );
        update(&mut app, Msg::Tick(t0 + Duration::from_secs(8)));
        press(&mut app, KeyCode::Enter);
        for (w, h) in [(80, 24), (200, 60)] {
            let s = render(&app, w, h);
            assert!(s.contains("LEADER alpha-1 SILENT 8s"), "{w}x{h}\n{s}");
        }
        let s = render(&app, 200, 60);
        assert!(s.contains("its lock lapses within 22s (ttl 30s)"), "{s}");
        assert!(s.contains("then alpha-2 would take over"), "{s}");
        // the selected replica says whether it would be promoted
        press(&mut app, KeyCode::Char('j'));
        let s = render(&app, 200, 60);
        assert!(s.contains("failover: a candidate"), "{s}");
    }

    #[test]
    fn help_wraps_every_line_at_80_columns_and_hosts_keep_their_ports() {
        let mut app = app_with(vec![cluster("alpha", 3)]);
        press(&mut app, KeyCode::Char('?'));
        let s = render(&app, 80, 24);
        // the long command line is wrapped, not cut: its last words are on screen
        assert!(s.contains("etcd stop|start"), "{s}");
        assert!(s.contains("cancel-switchover, quit;"), "{s}");
        let mut c = cluster("alpha", 3);
        for m in &mut c.members {
            m.data.conn_url = "postgres://10.210.230.13:43210/postgres".into();
        }
        let mut app = app_with(vec![c]);
        press(&mut app, KeyCode::Enter);
        let s = render(&app, 120, 30);
        assert!(s.contains("10.210.230.13:43210"), "{s}");
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
        assert!(render(&app, 100, 30).contains("Timelines, newest first"));
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

    /// Feeds `secs` seconds of samples (one a second) for every member of `c`: the leader
    /// writes 1 MB/s, replica i lags i × 64 kB.
    fn feed(app: &mut App, c: &Cluster, secs: u64) {
        let t0 = app.now;
        for s in 0..secs {
            for (i, m) in c.members.iter().enumerate() {
                let wal = 100_000_000 + s * 1_048_576;
                let xlog = if i == 0 {
                    serde_json::json!({"location": wal})
                } else {
                    serde_json::json!({"received_location": wal,
                        "replayed_location": wal - (i as u64) * 65_536})
                };
                update(
                    app,
                    Msg::Sample {
                        api_url: m.data.api_url.clone(),
                        sample: Sample {
                            at: t0 + Duration::from_secs(s),
                            body: Ok(serde_json::json!({"state": "running", "xlog": xlog})),
                            delay: None,
                        },
                    },
                );
            }
        }
        update(app, Msg::Tick(t0 + Duration::from_secs(secs)));
    }

    #[test]
    fn the_charts_tab_draws_lag_and_wal_rate_with_a_time_axis() {
        let c = cluster("alpha", 3);
        let mut app = app_with(vec![c.clone()]);
        feed(&mut app, &c, 120);
        press(&mut app, KeyCode::Enter);
        press(&mut app, KeyCode::Char('5'));
        assert_eq!(app.view, View::Cluster(Tab::Charts));
        for (w, h) in [(80, 24), (200, 60)] {
            let s = render(&app, w, h);
            assert!(
                s.contains("replay lag, last 5 min, peak 128 kB"),
                "{w}x{h}\n{s}"
            );
            assert!(
                s.contains("WAL rate, last 5 min, peak 1.0 MB/s"),
                "{w}x{h}\n{s}"
            );
            assert!(s.contains("-5m") && s.contains("now"), "{w}x{h}\n{s}");
        }
        // the legend names the members where there is room
        let s = render(&app, 200, 60);
        assert!(s.contains("alpha-2") && s.contains("alpha-3"), "{s}");
        // the replay lag chart has the replicas only, the largest first
        let lag = app.traces(&c, Measure::ReplayLag);
        let names: Vec<&str> = lag.iter().map(|t| t.member.as_str()).collect();
        assert_eq!(names, ["alpha-3", "alpha-2"]);
        // the member pane charts the selected member: the leader's WAL rate
        press(&mut app, KeyCode::Char('1'));
        let s = render(&app, 120, 32);
        assert!(s.contains("WAL rate"), "{s}");
    }

    #[test]
    fn a_chart_without_samples_says_so() {
        let mut app = app_with(vec![cluster("alpha", 3)]);
        press(&mut app, KeyCode::Enter);
        press(&mut app, KeyCode::Char('5'));
        let s = render(&app, 80, 24);
        assert!(s.contains("replay lag: no samples yet"), "{s}");
    }

    #[test]
    fn wal_rate_skips_a_position_that_went_back() {
        let t0 = Instant::now();
        let p = |s: u64, wal: u64| crate::app::Point {
            at: t0 + Duration::from_secs(s),
            lag: None,
            wal: Some(wal),
        };
        let points: std::collections::VecDeque<_> =
            [p(0, 1000), p(2, 3000), p(3, 500), p(4, 1500)].into();
        let now = t0 + Duration::from_secs(4);
        let rate = crate::app::trace(&points, now, Measure::WalRate);
        assert_eq!(rate, vec![(-2.0, 1000.0), (0.0, 1000.0)]);
    }

    fn render_hits(app: &mut App, w: u16, h: u16) {
        let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
        let mut hits = Hits::default();
        t.draw(|f| hits = draw(f, app, Theme { mono: false }))
            .unwrap();
        app.hits = hits;
    }

    fn mouse(app: &mut App, kind: crossterm::event::MouseEventKind, column: u16, row: u16) {
        update(
            app,
            Msg::Mouse(crossterm::event::MouseEvent {
                kind,
                column,
                row,
                modifiers: KeyModifiers::NONE,
            }),
        );
    }

    #[test]
    fn the_mouse_selects_opens_switches_tabs_and_scrolls() {
        use crossterm::event::{MouseButton, MouseEventKind};
        let clusters: Vec<Cluster> = (0..3).map(|i| cluster(&format!("c{i}"), 4)).collect();
        let mut app = app_with(clusters);
        render_hits(&mut app, 120, 32);
        let (rows, first) = app.hits.rows.unwrap();
        assert_eq!(first, 0);
        // a click on the third row selects it; a second click opens it
        let left = MouseEventKind::Down(MouseButton::Left);
        mouse(&mut app, left, rows.x + 2, rows.y + 2);
        assert_eq!(app.cluster_idx, 2);
        assert_eq!(app.view, View::Clusters);
        mouse(&mut app, left, rows.x + 2, rows.y + 2);
        assert_eq!(app.view, View::Cluster(Tab::Members));
        assert_eq!(app.selected_cluster().unwrap().scope, "c2");
        // the wheel moves the member selection
        render_hits(&mut app, 120, 32);
        mouse(&mut app, MouseEventKind::ScrollDown, 10, 10);
        assert_eq!(app.member_idx, 3);
        mouse(&mut app, MouseEventKind::ScrollUp, 10, 10);
        assert_eq!(app.member_idx, 0);
        // a click on a tab opens it; the wheel scrolls it
        let (r, _) = *app
            .hits
            .tabs
            .iter()
            .find(|(_, t)| *t == Tab::Events)
            .unwrap();
        mouse(&mut app, left, r.x + 1, r.y);
        assert_eq!(app.view, View::Cluster(Tab::Events));
        mouse(&mut app, MouseEventKind::ScrollDown, 10, 10);
        assert_eq!(app.scroll, 3);
        press(&mut app, KeyCode::PageDown);
        assert_eq!(app.scroll, 13);
        // a click outside anything clickable changes nothing, nor does one under a dialog
        render_hits(&mut app, 120, 32);
        mouse(&mut app, left, 119, 31);
        assert_eq!(app.view, View::Cluster(Tab::Events));
        press(&mut app, KeyCode::Char('p'));
        assert!(app.confirm.is_some());
        let (r, _) = *app
            .hits
            .tabs
            .iter()
            .find(|(_, t)| *t == Tab::Members)
            .unwrap();
        mouse(&mut app, left, r.x + 1, r.y);
        assert_eq!(app.view, View::Cluster(Tab::Events));
        // a click meant for a screen a key has already left does nothing
        press(&mut app, KeyCode::Char('n'));
        press(&mut app, KeyCode::Esc);
        assert_eq!(app.view, View::Clusters);
        mouse(&mut app, left, r.x + 1, r.y);
        assert_eq!(app.view, View::Clusters);
    }

    #[test]
    fn the_selection_stays_in_sight_in_a_long_table() {
        let mut app = app_with(vec![cluster("big", 300)]);
        press(&mut app, KeyCode::Enter);
        for _ in 0..250 {
            press(&mut app, KeyCode::Down);
        }
        for (w, h) in [(80, 24), (200, 60)] {
            render_hits(&mut app, w, h);
            let s = render(&app, w, h);
            assert!(s.contains("big-251"), "{w}x{h}\n{s}");
            let (_, first) = app.hits.rows.unwrap();
            assert!(first > 0 && first <= 250, "{first}");
        }
    }
}
