//! The live console: terminal setup and teardown, the data feeds (an etcd watch on the namespace
//! plus a periodic re-read that notices a lost quorum, and concurrent polling of every member's
//! REST API), the keyboard, and the loop that turns their messages into [`update`]s and frames.
//! Operations run in the background through `shared::ops`, so the screen never freezes.

use crate::app::{App, Effect, Msg, Operation, Sample, update};
use crate::ui::{self, Theme};
use crossterm::event::{self, Event, KeyEventKind};
use shared::api::MemberClient;
use shared::config::BasicAuth;
use shared::config::ConsoleConfig;
use shared::dcs::etcd::EtcdKv;
use shared::dcs::{Kv, keys, load_namespace};
use shared::ops::{self, switchover};
use std::io::IsTerminal;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// How often etcd is re-read even without watch events (to notice a lost quorum).
const REREAD: Duration = Duration::from_secs(2);
/// How often every member's REST API is sampled.
const SAMPLE: Duration = Duration::from_secs(1);

fn clock() -> String {
    chrono::Local::now().format("%H:%M:%S").to_string()
}

/// Runs the live console until `q`; returns the exit code. With `mouse`, clicks select rows and
/// tabs and the wheel scrolls (the terminal's own selection then needs Shift, as in tmux).
pub async fn run(
    cfg: ConsoleConfig,
    read_only: bool,
    demo: Option<std::path::PathBuf>,
    mouse: bool,
) -> i32 {
    if !std::io::stdout().is_terminal() {
        eprintln!(
            "pgpilot-console: the live console needs a terminal; for scripts use `pgpilot-console --batch COMMAND`"
        );
        return 2;
    }
    let client = match MemberClient::with_tls(Duration::from_millis(900), &cfg.rest_tls) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pgpilot-console: ctl.cacert / restapi.cafile: {e}");
            return 2;
        }
    };
    let kv = match EtcdKv::connect(&cfg.etcd, Duration::from_secs(3)).await {
        Ok(kv) => kv,
        Err(e) => {
            eprintln!("pgpilot-console: cannot set up the etcd client: {e}");
            return 1;
        }
    };
    let (tx, mut rx) = mpsc::unbounded_channel::<Msg>();
    let (urls_tx, urls_rx) = watch::channel(Vec::<String>::new());
    tokio::spawn(etcd_feed(
        kv.clone(),
        cfg.namespace.clone(),
        tx.clone(),
        urls_tx,
    ));
    let reach = Reach {
        client: client.clone(),
        auth: cfg.rest_auth.clone(),
    };
    tokio::spawn(journal_feed(client.clone(), urls_rx.clone(), tx.clone()));
    tokio::spawn(rest_feed(client, urls_rx, tx.clone()));
    spawn_keyboard(tx.clone());
    if let Some(dir) = demo {
        tokio::spawn(demo_feed(dir, tx.clone()));
    }
    {
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut t = tokio::time::interval(Duration::from_millis(250));
            loop {
                t.tick().await;
                if tx.send(Msg::Tick(Instant::now())).is_err() {
                    break;
                }
            }
        });
    }
    let theme = Theme {
        mono: std::env::var_os("NO_COLOR").is_some()
            || std::env::var("TERM").is_ok_and(|t| t == "dumb"),
    };
    let mut app = App::new(
        cfg.etcd.hosts.join(","),
        cfg.namespace.clone(),
        read_only,
        Instant::now(),
    );
    let mut terminal = ratatui::init();
    if mouse {
        // without mouse reporting the console works as before: keys only
        let _ = crossterm::execute!(std::io::stdout(), crossterm::event::EnableMouseCapture);
    }
    let restore = || {
        if mouse {
            let _ = crossterm::execute!(std::io::stdout(), crossterm::event::DisableMouseCapture);
        }
        ratatui::restore();
    };
    'outer: loop {
        let mut hits = crate::app::Hits::default();
        if let Err(e) = terminal.draw(|f| hits = ui::draw(f, &app, theme)) {
            restore();
            eprintln!("pgpilot-console: cannot draw: {e}");
            return 1;
        }
        app.hits = hits;
        let Some(first) = rx.recv().await else { break };
        let mut batch = vec![first];
        while let Ok(m) = rx.try_recv() {
            batch.push(m);
        }
        for msg in batch {
            for effect in update(&mut app, msg) {
                match effect {
                    Effect::Quit => break 'outer,
                    Effect::Run(op) => {
                        let (kv, ns, tx) = (kv.clone(), cfg.namespace.clone(), tx.clone());
                        let reach = reach.clone();
                        tokio::spawn(async move {
                            let _ = tx.send(Msg::Done(execute(&kv, &ns, &reach, op).await));
                        });
                    }
                }
            }
        }
    }
    restore();
    0
}

/// Re-reads the demo's record every second (switches thrown elsewhere show up too).
async fn demo_feed(dir: std::path::PathBuf, tx: mpsc::UnboundedSender<Msg>) {
    let shown = dir.display().to_string();
    let mut t = tokio::time::interval(Duration::from_secs(1));
    loop {
        t.tick().await;
        let read = tokio::fs::read_to_string(dir.join("demo.json"))
            .await
            .map_err(|e| format!("{shown}/demo.json: {e} (is the demo still there?)"))
            .and_then(|text| crate::app::DemoSwitches::parse(&shown, &text));
        if tx.send(Msg::Demo(read)).is_err() {
            return;
        }
    }
}

/// Runs the demo program for one switch: its sentence, or its reason for refusing.
async fn demo_switch(program: &str, dir: &str, args: &[String]) -> Result<String, String> {
    let out = tokio::process::Command::new(program)
        .arg("--dir")
        .arg(dir)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    let text = |b: &[u8]| String::from_utf8_lossy(b).trim().replace('\n', " ");
    if out.status.success() {
        Ok(text(&out.stdout))
    } else {
        Err(text(&out.stderr))
    }
}

/// What an operation needs besides etcd: the members' REST client and credentials.
#[derive(Clone)]
pub struct Reach {
    pub client: MemberClient,
    pub auth: Option<BasicAuth>,
}

/// Runs one operation through `shared::ops` on a fresh read of its cluster; the sentence to
/// show, or the reason it did not happen.
pub async fn execute<K: Kv + Clone>(
    kv: &K,
    namespace: &str,
    reach: &Reach,
    op: Operation,
) -> Result<String, String> {
    // the demo's switches need no etcd (one of them starts it)
    if let Operation::Demo {
        program, dir, args, ..
    } = &op
    {
        return demo_switch(program, dir, args).await;
    }
    let scope = op.scope().to_string();
    let clusters = load_namespace(kv, namespace)
        .await
        .map_err(|e| format!("cannot read etcd: {e}"))?;
    let c = clusters
        .into_iter()
        .find(|c| c.scope == scope)
        .ok_or_else(|| format!("cluster {scope} is gone"))?;
    let dcs = ops::operator_handle(kv.clone(), namespace, &scope);
    let agent = |name: &str| -> Result<ops::member::MemberAgent<'_>, String> {
        let member = c
            .member(name)
            .ok_or_else(|| format!("{name} is no longer a member of {scope}"))?;
        Ok(ops::member::MemberAgent {
            client: &reach.client,
            auth: reach.auth.as_ref(),
            member,
        })
    };
    let text = |e: ops::OpsError| e.to_string();
    match op {
        Operation::Pause { on, .. } => ops::set_pause(&dcs, &c, on)
            .await
            .map(|_| format!("cluster {scope} {}", if on { "paused" } else { "resumed" }))
            .map_err(text),
        Operation::StandbyCluster { remote, .. } => {
            let section = remote
                .as_deref()
                .and_then(shared::config::split_host_port)
                .map(|(host, port)| {
                    let mut m = serde_json::Map::new();
                    m.insert("host".into(), host.into());
                    m.insert("port".into(), port.into());
                    m
                });
            let promote = section.is_none();
            ops::set_standby_cluster(&dcs, &c, section)
                .await
                .map(|_| {
                    if promote {
                        format!("cluster {scope} promoted: its standby leader becomes a primary")
                    } else {
                        format!("cluster {scope} is a standby cluster now")
                    }
                })
                .map_err(text)
        }
        Operation::CancelSwitchover { .. } => ops::clear_scheduled_switchover(&dcs, &c)
            .await
            .map(|_| format!("scheduled switchover of {scope} cancelled"))
            .map_err(text),
        Operation::Switchover {
            leader,
            candidate,
            at,
            ..
        } => {
            let req = switchover::Request::switchover(Some(leader), candidate, at.as_deref())
                .map_err(text)?;
            hand_over(&dcs, reach, &c, req).await
        }
        Operation::Failover { candidate, .. } => {
            hand_over(
                &dcs,
                reach,
                &c,
                switchover::Request::failover(Some(candidate)),
            )
            .await
        }
        Operation::Restart {
            member,
            pending_only,
            at,
            ..
        } => {
            let mut body = serde_json::Map::new();
            if let Some(t) = at {
                body.insert("schedule".into(), t.into());
            }
            if pending_only {
                body.insert("restart_pending".into(), true.into());
            }
            let req = ops::RestartRequest::from_json(&body.into()).map_err(text)?;
            agent(&member)?
                .restart(&req)
                .await
                .map(|t| format!("{member}: {t}"))
                .map_err(text)
        }
        Operation::CancelRestart { member, .. } => match agent(&member)?.cancel_restart().await {
            Ok(Some(t)) => Ok(format!("{member}: {t}")),
            Ok(None) => Err(format!("{member} has no scheduled restart")),
            Err(e) => Err(text(e)),
        },
        Operation::Reinit { member, .. } => agent(&member)?
            .reinitialize(false, false)
            .await
            .map(|t| format!("{member}: {t} (it streams again once the copy is done)"))
            .map_err(text),
        Operation::Reload { member, .. } => agent(&member)?
            .reload()
            .await
            .map(|_| format!("{member}: configuration reloaded"))
            .map_err(text),
        Operation::Demo {
            program, dir, args, ..
        } => demo_switch(&program, &dir, &args).await,
    }
}

/// A switchover or failover, followed to its definite outcome.
async fn hand_over<K: Kv + Clone>(
    dcs: &shared::dcs::Dcs<K>,
    reach: &Reach,
    c: &shared::dcs::Cluster,
    req: switchover::Request,
) -> Result<String, String> {
    let wait = Duration::from_secs(2 * c.dynamic_config().timing().ttl + 20);
    match switchover::run(dcs, &reach.client, &req, wait).await {
        Ok(switchover::Outcome::Done { message, .. }) => Ok(message),
        Ok(switchover::Outcome::Scheduled { at }) => {
            Ok(format!("switchover scheduled at {}", at.to_rfc3339()))
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Reads the namespace on every watch event (changes reach the screen at once) and every
/// [`REREAD`]; a failed read is reported, never hidden.
async fn etcd_feed(
    kv: EtcdKv,
    namespace: String,
    tx: mpsc::UnboundedSender<Msg>,
    urls: watch::Sender<Vec<String>>,
) {
    let prefix = keys::namespace_prefix(&namespace);
    let mut events: Option<mpsc::Receiver<shared::dcs::WatchEvent>> = None;
    loop {
        match load_namespace(&kv, &namespace).await {
            Ok(clusters) => {
                let revision = clusters.iter().map(|c| c.revision).max().unwrap_or(0);
                let list: Vec<String> = clusters
                    .iter()
                    .flat_map(|c| c.members.iter().map(|m| m.data.api_url.clone()))
                    .filter(|u| !u.is_empty())
                    .collect();
                // only a real change wakes the journal reader
                urls.send_if_modified(|old| {
                    let changed = *old != list;
                    if changed {
                        *old = list;
                    }
                    changed
                });
                if tx
                    .send(Msg::Clusters {
                        clusters,
                        at: Instant::now(),
                        clock: clock(),
                    })
                    .is_err()
                {
                    return;
                }
                if events.is_none() {
                    // from the revision just read; an empty namespace watches from now (0)
                    let from = if revision > 0 { revision + 1 } else { 0 };
                    events = kv.watch(&prefix, from).await.ok();
                }
            }
            Err(e) => {
                events = None;
                if tx.send(Msg::EtcdFailed(e.to_string())).is_err() {
                    return;
                }
            }
        }
        // wait for a change or the re-read period, then drain what else arrived
        let closed = match events.as_mut() {
            Some(rx) => {
                tokio::select! {
                    ev = rx.recv() => {
                        // let a burst of changes settle, then read once
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        while rx.try_recv().is_ok() {}
                        ev.is_none()
                    }
                    _ = tokio::time::sleep(REREAD) => false,
                }
            }
            None => {
                tokio::time::sleep(Duration::from_secs(1)).await;
                false
            }
        };
        if closed {
            events = None;
        }
    }
}

/// Samples every member's `GET /patroni` concurrently, every [`SAMPLE`].
async fn rest_feed(
    client: MemberClient,
    urls: watch::Receiver<Vec<String>>,
    tx: mpsc::UnboundedSender<Msg>,
) {
    loop {
        let list = urls.borrow().clone();
        let polls = list.into_iter().map(|url| {
            let client = client.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let body = client
                    .status(&url)
                    .await
                    .ok_or_else(|| "no answer".to_string());
                let delay = body
                    .as_ref()
                    .ok()
                    .and_then(|b| crate::app::replay_delay(b, chrono::Utc::now()));
                let _ = tx.send(Msg::Sample {
                    api_url: url,
                    sample: Sample {
                        at: Instant::now(),
                        body,
                        delay,
                    },
                });
            })
        });
        let handles: Vec<_> = polls.collect();
        for h in handles {
            let _ = h.await;
        }
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(SAMPLE).await;
    }
}

/// Reads every member's journal (`GET /journal`) every [`JOURNAL_EVERY`]; a member that does
/// not answer keeps the entries last read from it.
async fn journal_feed(
    client: MemberClient,
    mut urls: watch::Receiver<Vec<String>>,
    tx: mpsc::UnboundedSender<Msg>,
) {
    loop {
        let list = urls.borrow().clone();
        let mut asks = tokio::task::JoinSet::new();
        for url in list {
            let client = client.clone();
            asks.spawn(async move {
                let read = shared::journal::read(&client, &url, Duration::from_secs(2)).await;
                (url, read)
            });
        }
        while let Some(r) = asks.join_next().await {
            if let Ok((api_url, Some((_, entries)))) = r
                && tx.send(Msg::Journal { api_url, entries }).is_err()
            {
                return;
            }
        }
        if tx.is_closed() {
            return;
        }
        // at once when the members change (the first read of etcd), else every few seconds
        tokio::select! {
            _ = tokio::time::sleep(JOURNAL_EVERY) => {}
            changed = urls.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}

/// How often the members' journals are read.
const JOURNAL_EVERY: Duration = Duration::from_secs(3);

/// Reads the keyboard on its own thread (crossterm's read blocks).
fn spawn_keyboard(tx: mpsc::UnboundedSender<Msg>) {
    std::thread::spawn(move || {
        loop {
            match event::read() {
                Ok(Event::Key(k)) if k.kind == KeyEventKind::Press => {
                    if tx.send(Msg::Key(k)).is_err() {
                        return;
                    }
                }
                Ok(Event::Mouse(m)) => {
                    if tx.send(Msg::Mouse(m)).is_err() {
                        return;
                    }
                }
                Ok(Event::Resize(_, _)) => {
                    if tx.send(Msg::Tick(Instant::now())).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::dcs::Dcs;
    use shared::dcs::mem::MemStore;

    #[tokio::test]
    async fn operations_go_through_shared_ops() {
        let store = MemStore::new();
        let kv = store.client();
        let dcs = Dcs::new(kv.clone(), "/service", "demo", "t", 30);
        dcs.init_config(&shared::dcs::DynamicConfig::default())
            .await
            .unwrap();
        let pause = || Operation::Pause {
            scope: "demo".into(),
            on: true,
        };
        let reach = Reach {
            client: MemberClient::new(Duration::from_millis(200)),
            auth: None,
        };
        let done = execute(&kv, "/service", &reach, pause()).await;
        assert_eq!(done, Ok("cluster demo paused".into()));
        assert!(dcs.load().await.unwrap().is_paused());
        let again = execute(&kv, "/service", &reach, pause()).await;
        assert!(again.unwrap_err().contains("already paused"));
        let gone = execute(
            &kv,
            "/service",
            &reach,
            Operation::CancelSwitchover {
                scope: "nope".into(),
            },
        )
        .await;
        assert!(gone.unwrap_err().contains("gone"));
    }
}
