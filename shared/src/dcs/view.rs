//! The cluster as a watch keeps it between reads: the keys under the cluster's prefix as one
//! linearizable read returned them, with every change the watch reported since applied. An
//! agent whose view is current does not read the whole prefix each cycle; what decides who
//! leads is still read from etcd itself (agent/src/runtime/mod.rs says when).

use super::{Cluster, KeyValue, WatchEvent, parse_cluster};
use std::collections::BTreeMap;

/// The keys under one cluster's prefix, kept by a watch.
#[derive(Debug, Clone, Default)]
pub struct View {
    kvs: BTreeMap<String, KeyValue>,
    /// The revision of the read the view started from, or of the newest change or progress
    /// report applied since.
    revision: i64,
}

impl View {
    /// A view from a read of the prefix at `revision`.
    pub fn new(kvs: Vec<KeyValue>, revision: i64) -> View {
        View {
            kvs: kvs.into_iter().map(|kv| (kv.key.clone(), kv)).collect(),
            revision,
        }
    }

    /// Applies one watch event. Returns false when the view can no longer be trusted (the
    /// stream was interrupted and may have missed changes): the owner reads the prefix again.
    /// A change older than what the view holds for that key (a stream resumed from before
    /// the read) is ignored.
    pub fn apply(&mut self, event: &WatchEvent) -> bool {
        match event {
            WatchEvent::Put(kv) => {
                let newer = self
                    .kvs
                    .get(&kv.key)
                    .is_none_or(|old| old.mod_revision < kv.mod_revision);
                if newer {
                    self.revision = self.revision.max(kv.mod_revision);
                    self.kvs.insert(kv.key.clone(), kv.clone());
                }
                true
            }
            WatchEvent::Delete { key } => {
                self.kvs.remove(key);
                true
            }
            WatchEvent::Progress { revision } => {
                self.revision = self.revision.max(*revision);
                true
            }
            WatchEvent::Reset => false,
        }
    }

    /// The cluster this view shows.
    pub fn cluster(&self, prefix: &str, scope: &str) -> Cluster {
        let kvs: Vec<KeyValue> = self.kvs.values().cloned().collect();
        parse_cluster(prefix, scope, &kvs, self.revision)
    }

    /// The value of `key`, if the view holds it.
    pub fn value(&self, key: &str) -> Option<&str> {
        self.kvs.get(key).map(|kv| kv.value.as_str())
    }

    /// The revision of the newest change, read or progress report the view holds (for
    /// information: a watch is never resumed from it, a Delete carries no revision).
    pub fn revision(&self) -> i64 {
        self.revision
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, value: &str, rev: i64) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: value.into(),
            mod_revision: rev,
            create_revision: rev,
            lease: 0,
        }
    }

    #[test]
    fn a_view_follows_puts_and_deletes_and_ignores_older_changes() {
        let p = "/service/main/";
        let mut v = View::new(
            vec![
                kv("/service/main/leader", "node1", 5),
                kv("/service/main/initialize", "42", 2),
            ],
            7,
        );
        assert_eq!(v.cluster(p, "main").leader.unwrap().name, "node1");
        // a change from before the read (a resumed stream) does not go back in time
        assert!(v.apply(&WatchEvent::Put(kv("/service/main/leader", "node0", 4))));
        assert_eq!(v.cluster(p, "main").leader.unwrap().name, "node1");
        assert!(v.apply(&WatchEvent::Delete {
            key: "/service/main/leader".into()
        }));
        assert!(v.cluster(p, "main").leader.is_none());
        assert!(v.apply(&WatchEvent::Put(kv("/service/main/leader", "node2", 9))));
        let c = v.cluster(p, "main");
        assert_eq!(c.leader.unwrap().name, "node2");
        assert_eq!((c.revision, c.initialize.as_deref()), (9, Some("42")));
        assert!(v.apply(&WatchEvent::Progress { revision: 12 }));
        assert_eq!(v.revision(), 12);
        // an interrupted stream: the view must be read again
        assert!(!v.apply(&WatchEvent::Reset));
    }
}
