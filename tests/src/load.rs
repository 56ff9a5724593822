//! Load and observation during failures: a writer recording acknowledged writes, a probe of
//! every node's writability, and the checks that no split brain happened and nothing was lost.

use crate::*;
use anyhow::Result;
use std::time::Duration;

/// Runs one query through an arbitrary DSN; first column of each row.
pub fn sql_dsn(dsn: &str, q: &str) -> Result<Vec<String>> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let (client, conn) = tokio_postgres::connect(dsn, tokio_postgres::NoTls).await?;
            tokio::spawn(conn);
            let mut out = Vec::new();
            for r in client.simple_query(q).await? {
                if let tokio_postgres::SimpleQueryMessage::Row(row) = r {
                    out.push(row.get(0).unwrap_or("").to_string());
                }
            }
            Ok(out)
        })
}

/// A client that inserts one row every 20 ms through a multi-host libpq connection string with
/// `target_session_attrs=read-write` (so it always finds the writable primary, as applications
/// do), and records every acknowledged id with the time of the acknowledgement.
pub struct Writer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    acked: std::sync::Arc<std::sync::Mutex<Vec<(i64, std::time::Instant)>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    /// The multi-host DSN over all nodes of a cluster.
    pub fn dsn(nodes: &[Node]) -> String {
        let hosts: Vec<&str> = nodes.iter().map(|n| n.host.as_str()).collect();
        let hosts = hosts.join(",");
        let ports: Vec<String> = nodes.iter().map(|n| n.pg_port.to_string()).collect();
        format!(
            "host={hosts} port={} user=postgres password=postgres-secret dbname=postgres connect_timeout=2 target_session_attrs=read-write",
            ports.join(",")
        )
    }

    /// Creates the table (through the writable primary) and starts writing.
    pub fn start(nodes: &[Node]) -> Result<Writer> {
        let dsn = Self::dsn(nodes);
        sql_dsn(
            &dsn,
            "CREATE TABLE IF NOT EXISTS pgpilot_writes(id bigint PRIMARY KEY, at timestamptz DEFAULT now())",
        )?;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (s, a) = (stop.clone(), acked.clone());
        let thread = on_own_runtime(write_loop(dsn, s, a));
        Ok(Writer {
            stop,
            acked,
            thread: Some(thread),
        })
    }

    /// How many rows were acknowledged so far.
    pub fn acked_count(&self) -> usize {
        self.acked.lock().map(|a| a.len()).unwrap_or(0)
    }

    /// Waits until `n` more rows than now are acknowledged.
    pub fn wait_more(&self, n: usize, timeout: Duration) -> Result<()> {
        let target = self.acked_count() + n;
        wait_for("the writer to get writes through", timeout, || {
            (self.acked_count() >= target).then_some(())
        })
    }

    /// Stops writing; returns the acknowledged ids and the longest time without an
    /// acknowledgement after `since` (the write gap of a failure injected then).
    /// Every id acknowledged so far, with when.
    pub fn acked(&self) -> Vec<(i64, std::time::Instant)> {
        self.acked.lock().map(|a| a.clone()).unwrap_or_default()
    }

    pub fn finish(mut self, since: std::time::Instant) -> (Vec<i64>, Duration) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let acked = self.acked.lock().map(|a| a.clone()).unwrap_or_default();
        let mut gap = Duration::ZERO;
        let mut prev = since;
        for (_, at) in acked.iter().filter(|(_, at)| *at >= since) {
            gap = gap.max(at.duration_since(prev));
            prev = *at;
        }
        (acked.into_iter().map(|(id, _)| id).collect(), gap)
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn write_loop(
    dsn: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    acked: std::sync::Arc<std::sync::Mutex<Vec<(i64, std::time::Instant)>>>,
) {
    let mut next_id: i64 = 1;
    let mut client: Option<tokio_postgres::Client> = None;
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            client = match tokio::time::timeout(
                Duration::from_secs(3),
                tokio_postgres::connect(&dsn, tokio_postgres::NoTls),
            )
            .await
            {
                Ok(Ok((c, conn))) => {
                    tokio::spawn(conn);
                    Some(c)
                }
                _ => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
        }
        let Some(c) = client.as_ref() else { continue };
        let q = format!("INSERT INTO pgpilot_writes(id) VALUES ({next_id})");
        match tokio::time::timeout(Duration::from_secs(2), c.simple_query(&q)).await {
            Ok(Ok(_)) => {
                if let Ok(mut a) = acked.lock() {
                    a.push((next_id, std::time::Instant::now()));
                }
                next_id += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok(Err(e)) if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) => {
                // committed earlier but the acknowledgement was lost: not counted, move on
                next_id += 1;
            }
            _ => {
                client = None;
                // the id may or may not have committed; never reuse it
                next_id += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// Runs a client loop on a thread of its own with a single-threaded runtime.
fn on_own_runtime(
    work: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            rt.block_on(work);
        }
    })
}

/// Checks every node for writability every 100 ms (a write transaction: `txid_current()`
/// fails on a standby or a server that stopped), each over its own connection, so that a
/// window with two writable primaries is seen even while nobody writes to the second one.
pub struct WriteProbe {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Per node: the ticks (100 ms since the start) at which it accepted a write.
    writable: std::sync::Arc<std::sync::Mutex<Vec<std::collections::BTreeSet<u64>>>>,
    thread: Option<std::thread::JoinHandle<()>>,
    pub started: std::time::Instant,
}

/// The probe's tick length.
pub const PROBE_TICK: Duration = Duration::from_millis(100);

impl WriteProbe {
    pub fn start(nodes: &[Node]) -> WriteProbe {
        let dsns: Vec<String> = nodes.iter().map(|n| n.dsn()).collect();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writable = std::sync::Arc::new(std::sync::Mutex::new(vec![
            std::collections::BTreeSet::new();
            dsns.len()
        ]));
        let started = std::time::Instant::now();
        let (s, w) = (stop.clone(), writable.clone());
        let thread = on_own_runtime(async move {
            let mut tasks = tokio::task::JoinSet::new();
            for (i, dsn) in dsns.into_iter().enumerate() {
                tasks.spawn(probe_loop(i, dsn, started, s.clone(), w.clone()));
            }
            while tasks.join_next().await.is_some() {}
        });
        WriteProbe {
            stop,
            writable,
            thread: Some(thread),
            started,
        }
    }

    /// The ticks at which two or more nodes accepted writes.
    pub fn split_ticks(&self) -> Vec<u64> {
        let w = self.writable.lock().map(|w| w.clone()).unwrap_or_default();
        let mut count: std::collections::BTreeMap<u64, usize> = Default::default();
        for ticks in &w {
            for t in ticks {
                *count.entry(*t).or_default() += 1;
            }
        }
        count
            .into_iter()
            .filter(|(_, n)| *n >= 2)
            .map(|(t, _)| t)
            .collect()
    }

    /// The last tick at which node `i` accepted a write.
    pub fn last_writable(&self, i: usize) -> Option<u64> {
        let w = self.writable.lock().ok()?;
        w.get(i)?.iter().next_back().copied()
    }

    /// The first tick at or after `from` at which node `i` accepted a write.
    pub fn first_writable_since(&self, i: usize, from: u64) -> Option<u64> {
        let w = self.writable.lock().ok()?;
        w.get(i)?.range(from..).next().copied()
    }

    /// The tick an instant falls in.
    pub fn tick_of(&self, at: std::time::Instant) -> u64 {
        (at.saturating_duration_since(self.started).as_millis() / PROBE_TICK.as_millis()) as u64
    }

    pub fn stop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for WriteProbe {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn probe_loop(
    i: usize,
    dsn: String,
    started: std::time::Instant,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    writable: std::sync::Arc<std::sync::Mutex<Vec<std::collections::BTreeSet<u64>>>>,
) {
    let mut client: Option<tokio_postgres::Client> = None;
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        let next = tokio::time::Instant::now() + PROBE_TICK;
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            client = match tokio::time::timeout(
                PROBE_TICK * 3,
                tokio_postgres::connect(&dsn, tokio_postgres::NoTls),
            )
            .await
            {
                Ok(Ok((c, conn))) => {
                    tokio::spawn(conn);
                    Some(c)
                }
                _ => None,
            };
        }
        if let Some(c) = client.as_ref() {
            let asked = std::time::Instant::now();
            match tokio::time::timeout(PROBE_TICK * 3, c.simple_query("SELECT txid_current()"))
                .await
            {
                Ok(Ok(_)) => {
                    let tick =
                        (asked.duration_since(started).as_millis() / PROBE_TICK.as_millis()) as u64;
                    if let Ok(mut w) = writable.lock() {
                        w[i].insert(tick);
                    }
                }
                Ok(Err(e)) if e.code().is_some() => {} // read-only: the connection is fine
                _ => client = None,
            }
        }
        tokio::time::sleep_until(next).await;
    }
}

/// Waits until every node holds every acknowledged id.
pub fn every_node_has(c: &TestCluster, acked: &[i64]) {
    for n in &c.nodes {
        wait_for(
            &format!("{} to hold every acknowledged id", n.name),
            Duration::from_secs(30),
            || {
                let ids = written_ids(n).ok()?;
                acked.iter().all(|id| ids.contains(id)).then_some(())
            },
        )
        .map_err(|e| {
            let ids = written_ids(n).unwrap_or_default();
            let missing: Vec<&i64> = acked.iter().filter(|id| !ids.contains(id)).collect();
            format!(
                "{e}: {} of {} acknowledged ids missing, first {:?}",
                missing.len(),
                acked.len(),
                &missing[..missing.len().min(10)]
            )
        })
        .unwrap();
    }
}

/// The verdict of a run: no probe tick saw two writable servers, and every node holds every id
/// the writer was told about.
pub fn no_split_brain_and_nothing_lost(
    c: &TestCluster,
    mut probe: WriteProbe,
    writer: Writer,
    since: std::time::Instant,
) {
    probe.stop();
    let split = probe.split_ticks();
    let (acked, _) = writer.finish(since);
    assert!(
        split.is_empty(),
        "two writable primaries at ticks {split:?}"
    );
    every_node_has(c, &acked);
}
