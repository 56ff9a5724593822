//! DCS values against literal Patroni-shaped JSON, garbage tolerance, and the Patroni etcd
//! operations (initialize race, leader lock, lease expiry, re-attach) over the in-memory store.

use shared::dcs::mem::MemStore;
use shared::dcs::*;

const REPLICA: &str = r#"{"conn_url":"postgres://10.1.0.12:5432/postgres","api_url":"http://10.1.0.12:8008/patroni","state":"running","role":"replica","version":"4.1.4","tags":{"clonefrom":true},"xlog_location":83886496,"replay_lsn":83886496,"receive_lsn":83886496,"replication_state":"streaming","timeline":4}"#;
const LEADER: &str = r#"{"conn_url":"postgres://10.1.0.11:5432/postgres","api_url":"http://10.1.0.11:8008/patroni","state":"running","role":"primary","version":"4.1.4","checkpoint_after_promote":false,"xlog_location":83886720,"timeline":5}"#;

#[test]
fn member_values_round_trip_byte_for_byte() {
    for raw in [REPLICA, LEADER] {
        let m = MemberData::parse(raw).unwrap();
        assert_eq!(m.to_json(), raw);
    }
    let m = MemberData::parse(REPLICA).unwrap();
    assert_eq!(m.host_port(), Some(("10.1.0.12".into(), 5432)));
    assert_eq!(m.role(), Some(shared::types::Role::Replica));
}

#[test]
fn member_values_are_read_leniently() {
    // legacy master role, wrong-typed field, unknown field
    let m = MemberData::parse(
        r#"{"conn_url":"postgres://h:1/postgres","api_url":"http://h:2/patroni","state":"running","role":"master","version":"2.0.0","xlog_location":"oops","new_field":[1]}"#,
    )
    .unwrap();
    assert_eq!(m.role(), Some(shared::types::Role::Primary));
    assert_eq!(m.xlog_location, None);
    // legacy connection URL form
    let m = MemberData::parse("postgres://replicator:pw@10.0.0.5:5433/postgres?application_name=http://10.0.0.5:8008/patroni").unwrap();
    assert_eq!(m.api_url, "http://10.0.0.5:8008/patroni");
    assert_eq!(m.host_port(), Some(("10.0.0.5".into(), 5433)));
    assert!(MemberData::parse("garbage{").is_none());
    assert!(MemberData::parse("[1,2]").is_none());
}

#[test]
fn other_values_round_trip() {
    let status = r#"{"optime":83886720,"slots":{"node1":83886720,"node2":83886496},"retain_slots":["node1","node2","node3"]}"#;
    assert_eq!(Status::parse(status).unwrap().to_json(), status);
    assert_eq!(Status::parse("12345").unwrap().optime, Some(12345));
    let encoded = r#"{"optime":5,"slots":"{\"a\":1}","retain_slots":"[\"a\"]"}"#;
    let s = Status::parse(encoded).unwrap();
    assert_eq!(s.retain_slots, Some(vec!["a".to_string()]));

    let history = r#"[[3,50331816,"no recovery target specified","2025-03-02T10:14:55.204871+00:00","node2"],[4,83886208,"no recovery target specified","2025-03-09T08:01:12.551002+00:00","node1"]]"#;
    let h = parse_history(history).unwrap();
    assert_eq!(history_json(&h), history);
    assert_eq!(
        parse_history(r#"[[1,100,"old"]]"#).unwrap()[0].timestamp,
        None
    );
    assert_eq!(history_json(&parse_history("[]").unwrap()), "[]");

    let f = r#"{"leader":"node1","member":"node2","scheduled_at":"2025-04-01T02:00:00+00:00"}"#;
    assert_eq!(Failover::parse(f).unwrap().to_json(), f);
    assert!(Failover::parse("{}").is_none());
    assert_eq!(
        Failover::parse("node1:node2").unwrap().member.as_deref(),
        Some("node2")
    );

    let sync = r#"{"leader":"node1","quorum":0,"sync_standby":"node2,node3"}"#;
    let s = SyncState::parse(sync).unwrap();
    assert_eq!(s.to_json(), sync);
    assert!(s.is_sync("NODE3"));
    let empty = r#"{"leader":"node1","quorum":0,"sync_standby":null}"#;
    assert_eq!(SyncState::parse(empty).unwrap().to_json(), empty);
    let quorum = r#"{"leader":"node1","quorum":1,"sync_standby":"node2,node3"}"#;
    assert_eq!(SyncState::parse(quorum).unwrap().to_json(), quorum);
    // odd values read as Patroni reads them: an empty leader is none, no quorum without one;
    // blanks, repeats and the leader itself are no voters; a quorum beyond the voters is capped
    let odd = SyncState::parse(r#"{"leader":"","quorum":3,"sync_standby":"a"}"#).unwrap();
    assert_eq!((odd.leader, odd.quorum), (None, 0));
    let odd = SyncState::parse(
        r#"{"leader":"n1","quorum":18446744073709551615,"sync_standby":" a,A,,n1,b "}"#,
    )
    .unwrap();
    assert_eq!(odd.sync_standby, vec!["a".to_string(), "b".to_string()]);
    assert_eq!(odd.quorum, 2);

    let cfg = r#"{"ttl":30,"loop_wait":10,"retry_timeout":10,"maximum_lag_on_failover":1048576,"postgresql":{"use_pg_rewind":true,"use_slots":true,"parameters":{"max_connections":200}}}"#;
    let c = DynamicConfig::parse(cfg).unwrap();
    assert_eq!(c.to_json(), cfg);
    assert_eq!(c.parameters()["max_connections"], 200);
    assert_eq!(c.member_slots_ttl(), 1800);
    assert_eq!(
        DynamicConfig::parse(r#"{"member_slots_ttl":"1h"}"#)
            .unwrap()
            .member_slots_ttl(),
        3600
    );
    assert_eq!(
        DynamicConfig::parse(r#"{"member_slots_ttl":0}"#)
            .unwrap()
            .member_slots_ttl(),
        0
    );
}

#[test]
fn timing_limits() {
    let t = |j: &str| DynamicConfig::parse(j).unwrap().timing();
    assert_eq!(
        t("{}"),
        Timing {
            ttl: 30,
            loop_wait: 10,
            retry_timeout: 10
        }
    );
    // pgpilot accepts a 5 s ttl, keeping loop_wait + 2*retry_timeout <= ttl
    assert_eq!(
        t(r#"{"ttl":5,"loop_wait":1,"retry_timeout":2}"#),
        Timing {
            ttl: 5,
            loop_wait: 1,
            retry_timeout: 2
        }
    );
    assert_eq!(
        t(r#"{"ttl":10,"loop_wait":10,"retry_timeout":3}"#).loop_wait,
        4
    );
    assert_eq!(
        t(r#"{"ttl":6,"loop_wait":5,"retry_timeout":5}"#),
        Timing {
            ttl: 6,
            loop_wait: 1,
            retry_timeout: 2
        }
    );
    assert_eq!(t(r#"{"ttl":1}"#).ttl, 5);
}

#[test]
fn garbage_values_are_treated_as_absent() {
    let p = "/service/demo/";
    let kv = |k: &str, v: &str| KeyValue {
        key: format!("{p}{k}"),
        value: v.into(),
        create_revision: 1,
        mod_revision: 1,
        lease: 0,
    };
    let c = parse_cluster(
        p,
        "demo",
        &[
            kv("config", "not json"),
            kv("history", "{"),
            kv("status", "[]"),
            kv("sync", "7"),
            kv("members/ghost", "garbage{"),
            kv("members/n1", REPLICA),
            kv("leader", ""),
            kv("failover", "{}"),
        ],
        9,
    );
    assert!(c.config.is_none());
    assert!(c.history.is_empty());
    assert!(c.sync.is_none());
    assert!(c.leader.is_none());
    assert!(c.failover.is_none());
    assert_eq!(c.members.len(), 1);
    assert_eq!(c.members[0].name, "n1");
}

#[tokio::test]
async fn leader_lock_and_leases() {
    let store = MemStore::new();
    let a = Dcs::new(store.client(), "/service", "demo", "a", 10);
    let b = Dcs::new(store.client(), "service", "demo", "b", 10);

    assert!(a.race_initialize().await.unwrap());
    assert!(!b.race_initialize().await.unwrap());
    // an abandoned claim can be given up, a stored system identifier cannot
    assert!(a.abandon_initialize().await.unwrap());
    assert!(a.race_initialize().await.unwrap());
    a.set_initialize("7000000000000000001").await.unwrap();
    assert!(!a.abandon_initialize().await.unwrap());

    assert!(a.acquire_leader().await.unwrap());
    assert!(!b.acquire_leader().await.unwrap());
    let c = b.load().await.unwrap();
    assert_eq!(c.leader.as_ref().unwrap().name, "a");
    assert_eq!(c.initialize.as_deref(), Some("7000000000000000001"));
    assert!(a.update_leader(&c).await.unwrap());
    assert!(!b.update_leader(&c).await.unwrap());

    // the lease keeps the lock while refreshed
    store.advance_ms(8000);
    assert!(a.update_leader(&a.load().await.unwrap()).await.unwrap());
    store.advance_ms(8000);
    assert!(b.load().await.unwrap().leader.is_some());
    // ...and it disappears with the lease
    store.advance_ms(10_001);
    assert!(b.load().await.unwrap().leader.is_none());
    assert!(b.acquire_leader().await.unwrap());

    // a restarted holder (new lease) re-attaches its lock by value
    let b2 = Dcs::new(store.client(), "/service", "demo", "b", 10);
    let c = b2.load().await.unwrap();
    let old_lease = c.leader.as_ref().unwrap().lease;
    assert!(b2.update_leader(&c).await.unwrap());
    let c = b2.load().await.unwrap();
    assert_ne!(c.leader.as_ref().unwrap().lease, old_lease);

    // a holder whose key expired does not write it again from its last view
    let stale = b2.load().await.unwrap();
    store.advance_ms(10_001);
    assert!(b2.load().await.unwrap().leader.is_none());
    assert!(!b2.update_leader(&stale).await.unwrap());
    assert!(b2.load().await.unwrap().leader.is_none());
    assert!(b2.acquire_leader().await.unwrap());

    // release only works for the holder
    assert!(!a.release_leader().await.unwrap());
    assert!(b2.release_leader().await.unwrap());
    assert!(a.load().await.unwrap().leader.is_none());
}

#[tokio::test]
async fn member_keys_are_lease_bound_and_written_only_on_change() {
    let store = MemStore::new();
    let a = Dcs::new(store.client(), "/service", "demo", "a", 10);
    let m = MemberData::parse(REPLICA).unwrap();
    a.touch_member(&m).await.unwrap();
    let rev1 = a.load().await.unwrap().revision;
    a.touch_member(&m).await.unwrap();
    assert_eq!(
        a.load().await.unwrap().revision,
        rev1,
        "unchanged member key rewritten"
    );
    let dump = store.dump();
    let key = dump
        .iter()
        .find(|k| k.key == "/service/demo/members/a")
        .unwrap();
    assert_eq!(key.value, REPLICA);
    assert_ne!(key.lease, 0);
    store.advance_ms(11_000);
    assert!(a.load().await.unwrap().members.is_empty());
    // a new lease is granted transparently
    a.touch_member(&m).await.unwrap();
    assert_eq!(a.load().await.unwrap().members.len(), 1);
}

#[tokio::test]
async fn config_and_failover_compare_and_swap() {
    let store = MemStore::new();
    let a = Dcs::new(store.client(), "/service", "demo", "a", 10);
    let cfg = DynamicConfig::parse(r#"{"ttl":30}"#).unwrap();
    assert!(a.init_config(&cfg).await.unwrap());
    assert!(!a.init_config(&cfg).await.unwrap());
    let c = a.load().await.unwrap();
    let rev = c.config.as_ref().unwrap().mod_revision;
    let paused = DynamicConfig::parse(r#"{"ttl":30,"pause":true}"#).unwrap();
    assert!(a.set_config(&paused, Some(rev)).await.unwrap());
    assert!(
        !a.set_config(&cfg, Some(rev)).await.unwrap(),
        "stale revision must lose"
    );
    assert!(a.load().await.unwrap().is_paused());

    a.set_failover(None, None).await.unwrap();
    let raw = store
        .dump()
        .into_iter()
        .find(|k| k.key.ends_with("/failover"))
        .unwrap();
    assert_eq!(raw.value, "{}");
}

#[tokio::test]
async fn a_partitioned_client_fails_and_others_continue() {
    let store = MemStore::new();
    let kv = store.client();
    let a = Dcs::new(kv.clone(), "/service", "demo", "a", 10);
    let b = Dcs::new(store.client(), "/service", "demo", "b", 10);
    kv.set_cut(true);
    assert!(matches!(
        a.load().await,
        Err(DcsError::Kv(KvError::Unavailable(_)))
    ));
    assert!(b.acquire_leader().await.unwrap());
    kv.set_cut(false);
    assert_eq!(a.load().await.unwrap().leader.unwrap().name, "b");
}

#[tokio::test]
async fn watch_reports_changes_under_the_prefix() {
    let store = MemStore::new();
    let a = Dcs::new(store.client(), "/service", "demo", "a", 10);
    let mut rx = a.watch(0).await.unwrap();
    store.put_raw("/service/other/leader", "x");
    assert!(a.acquire_leader().await.unwrap());
    match rx.recv().await.unwrap() {
        WatchEvent::Put(kv) => assert_eq!(kv.key, "/service/demo/leader"),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn absurd_timing_is_refused_by_key_and_never_overflows() {
    let c = |j: &str| DynamicConfig::parse(j).unwrap();
    let max = u64::MAX;
    let absurd = c(&format!(
        r#"{{"ttl":{max},"loop_wait":{max},"retry_timeout":{max}}}"#
    ));
    let why = absurd.refusal().unwrap();
    for key in ["ttl:", "loop_wait:", "retry_timeout:"] {
        assert!(why.contains(key), "{why}");
    }
    // no panic and nothing wraps: every value is clamped into its range
    let t = absurd.timing();
    assert!(t.ttl <= shared::dcs::MAX_TIMING && t.loop_wait + 2 * t.retry_timeout <= t.ttl);
    assert!(absurd.timing_problem().is_some());
    // a type error is refused too, naming the key
    assert!(c(r#"{"ttl":"soon"}"#).refusal().unwrap().contains("ttl"));
    assert!(
        c(r#"{"pause":"maybe"}"#)
            .refusal()
            .unwrap()
            .contains("pause")
    );
    // a day is the longest ttl; the usual values pass
    assert!(
        c(r#"{"ttl":86401}"#)
            .refusal()
            .unwrap()
            .contains("at most 86400")
    );
    assert_eq!(
        c(r#"{"ttl":30,"loop_wait":10,"retry_timeout":10}"#).refusal(),
        None
    );
    // a combination that cannot work is adjusted and warned about, not refused
    assert_eq!(
        c(r#"{"ttl":10,"loop_wait":10,"retry_timeout":10}"#).refusal(),
        None
    );
}

#[test]
fn permanent_and_ignored_physical_slots_are_kept() {
    let c = |j: &str| DynamicConfig::parse(j).unwrap();
    let d = c(
        r#"{"slots":{"debezium":{"type":"logical"},"archiver":{"type":"physical"}},
            "ignore_slots":[{"name":"barman","type":"physical"},{"name":"cdc","plugin":"pgoutput"},{"type":"physical","name":"wal_rx"}]}"#,
    );
    for kept in ["archiver", "debezium", "barman", "wal_rx"] {
        assert!(d.keeps_physical_slot(kept), "{kept}");
    }
    for dropped in ["cdc", "node2"] {
        assert!(!d.keeps_physical_slot(dropped), "{dropped}");
    }
    // an empty entry matches nothing; garbage is ignored
    assert!(!c(r#"{"ignore_slots":[{}]}"#).keeps_physical_slot("x"));
    assert!(!c(r#"{"ignore_slots":"all","slots":[1]}"#).keeps_physical_slot("x"));
}
