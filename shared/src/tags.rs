//! Member tags read the way Patroni reads them, for a member's own YAML and for the tags other
//! members publish in etcd alike — a mixed cluster must agree on who may lead, who may be the
//! synchronous standby and whom to clone from. Patroni members publish tags as they were
//! written, often as strings (`failover_priority: '1'`, `nofailover: 'false'`):
//!
//! - `nofailover`, `nosync`, `clonefrom`, `noloadbalance` are taken by Python truthiness: any
//!   non-empty string is true (`'false'` too), a number is true unless 0;
//! - `failover_priority`, `sync_priority` are integers as Patroni's `parse_int` reads them:
//!   `2`, `'2'`, `' 2 '`, `'0x10'`, `'1.6'` (rounded); anything else counts as unset (1);
//! - a boolean tag, when present, wins over its priority tag; absent, a priority at or below
//!   0 means the same as the boolean;
//! - `nostream` is a strict boolean (`on`/`true`/`yes`/`1`, else false).

use serde_json::{Map, Value};

/// Python's truthiness of a JSON value: `null`, `false`, `0`, `""`, `[]` and `{}` are false.
pub fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

/// An integer as Patroni's `parse_int` reads a value without a unit: a JSON number (rounded),
/// or a string holding one — decimal, `0x` hexadecimal, `0` octal, or a decimal fraction
/// (rounded half to even, as Python's `round`) — with blanks around it. `None` for anything
/// else, booleans included (Patroni reads `str(True)`, which is no number).
pub fn integer(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().and_then(round)),
        Value::String(s) => parse_integer(s.trim()),
        _ => None,
    }
}

fn round(f: f64) -> Option<i64> {
    let r = f.round_ties_even();
    (r.is_finite() && r >= i64::MIN as f64 && r <= i64::MAX as f64).then_some(r as i64)
}

fn parse_integer(s: &str) -> Option<i64> {
    if s.is_empty() {
        return None;
    }
    let (negative, digits) = match s.as_bytes()[0] {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let magnitude = if let Some(hex) = digits
        .strip_prefix("0x")
        .or_else(|| digits.strip_prefix("0X"))
    {
        // digits only: from_str_radix would take a second sign
        hex.bytes()
            .all(|b| b.is_ascii_hexdigit())
            .then(|| i64::from_str_radix(hex, 16).ok())
            .flatten()
    } else if digits.len() > 1
        && digits.starts_with('0')
        && digits.bytes().all(|b| b.is_ascii_digit())
    {
        i64::from_str_radix(&digits[1..], 8).ok()
    } else if digits.bytes().all(|b| b.is_ascii_digit()) {
        digits.parse::<i64>().ok()
    } else {
        // a fraction or an exponent (strtod, then rounded); not "inf" or "nan"
        let numeric = digits
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-'))
            && digits.starts_with(|c: char| c.is_ascii_digit() || c == '.');
        numeric
            .then(|| digits.parse::<f64>().ok())
            .flatten()
            .and_then(round)
    };
    if negative {
        magnitude.and_then(i64::checked_neg)
    } else {
        magnitude
    }
}

/// A strict boolean, as Patroni's `parse_bool`: `on`/`true`/`yes`/`1` and `off`/`false`/`no`/`0`
/// (any case); `None` for anything else.
pub fn strict_bool(v: &Value) -> Option<bool> {
    let text = match v {
        Value::Bool(b) => return Some(*b),
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.to_ascii_lowercase(),
        _ => return None,
    };
    match text.as_str() {
        "on" | "true" | "yes" | "1" => Some(true),
        "off" | "false" | "no" | "0" => Some(false),
        _ => None,
    }
}

/// A member's tags (its YAML `tags` section, or the `tags` of its member key), read as
/// Patroni reads them.
#[derive(Debug, Clone, Copy)]
pub struct TagView<'a>(pub &'a Map<String, Value>);

impl TagView<'_> {
    /// The boolean tag when present (it wins), else whether the priority tag is at or below 0.
    fn flag_or_priority(&self, flag: &str, priority: &str) -> bool {
        // a null is no value (Patroni publishes `nofailover: null` beside a priority)
        match self.0.get(flag).filter(|v| !v.is_null()) {
            Some(v) => truthy(v),
            None => self
                .0
                .get(priority)
                .and_then(integer)
                .is_some_and(|p| p <= 0),
        }
    }

    /// 0 when the boolean tag is true, else the priority tag (1 when unset or unreadable).
    fn priority(&self, flag: &str, priority: &str) -> i64 {
        if self.0.get(flag).is_some_and(truthy) {
            0
        } else {
            self.0.get(priority).and_then(integer).unwrap_or(1)
        }
    }

    /// Never becomes leader (`nofailover`, or `failover_priority` ≤ 0 without it).
    pub fn no_failover(&self) -> bool {
        self.flag_or_priority("nofailover", "failover_priority")
    }

    /// Preference at equal WAL position: 0 with `nofailover`, else `failover_priority` (1).
    pub fn failover_priority(&self) -> i64 {
        self.priority("nofailover", "failover_priority")
    }

    /// Never the synchronous standby (`nosync`, or `sync_priority` ≤ 0 without it).
    pub fn no_sync(&self) -> bool {
        self.flag_or_priority("nosync", "sync_priority")
    }

    /// Preference for the synchronous standby: 0 with `nosync`, else `sync_priority` (1).
    pub fn sync_priority(&self) -> i64 {
        self.priority("nosync", "sync_priority")
    }

    /// New replicas may clone from this member.
    pub fn clonefrom(&self) -> bool {
        self.0.get("clonefrom").is_some_and(truthy)
    }

    /// Left out of `GET /replica` load balancing.
    pub fn noloadbalance(&self) -> bool {
        self.0.get("noloadbalance").is_some_and(truthy)
    }

    /// Takes WAL from the archive only (strict boolean).
    pub fn nostream(&self) -> bool {
        self.0
            .get("nostream")
            .and_then(strict_bool)
            .unwrap_or(false)
    }

    /// The member to stream from instead of the leader.
    pub fn replicatefrom(&self) -> Option<String> {
        match self.0.get("replicatefrom")? {
            Value::String(s) if !s.is_empty() => Some(s.clone()),
            _ => None,
        }
    }

    /// Tags whose value Patroni reads differently from what it may seem to say, each with why:
    /// a boolean tag written as a string other than a true one (`'false'`, `'no'`, `'maybe'`)
    /// is true; a priority that is no integer is ignored.
    pub fn surprises(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for flag in ["nofailover", "nosync", "clonefrom", "noloadbalance"] {
            if let Some(Value::String(s)) = self.0.get(flag)
                && strict_bool(&Value::String(s.clone())) != Some(true)
            {
                out.push((
                    flag.to_string(),
                    format!(
                        "the string {s:?} is true, as Patroni reads it (any non-empty string is): write {flag}: false, without quotes, to mean false"
                    ),
                ));
            }
        }
        for priority in ["failover_priority", "sync_priority"] {
            if let Some(v) = self.0.get(priority)
                && integer(v).is_none()
            {
                out.push((
                    priority.to_string(),
                    format!("{v} is not an integer: ignored, as Patroni does (the priority is 1)"),
                ));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tags(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn integers_as_patroni_parses_them() {
        for (v, want) in [
            (json!(2), Some(2)),
            (json!("2"), Some(2)),
            (json!(" 3 "), Some(3)),
            (json!("-1"), Some(-1)),
            (json!("0x10"), Some(16)),
            (json!("010"), Some(8)),
            (json!("1.6"), Some(2)),
            (json!(1.4), Some(1)),
            (json!(0.5), Some(0)),
            (json!("2.5"), Some(2)),
            (json!(true), None),
            (json!("0x-1"), None),
            (json!("-0x8000000000000000"), None),
            (json!("-0x10"), Some(-16)),
            (json!("0"), Some(0)),
            (json!(""), None),
            (json!("high"), None),
            (json!("2x"), None),
            (json!(null), None),
            (json!([1]), None),
        ] {
            assert_eq!(integer(&v), want, "{v}");
        }
    }

    #[test]
    fn string_tags_as_a_patroni_member_publishes_them() {
        // failover_priority as a string is a priority, and at 0 means nofailover
        let t = tags(json!({"failover_priority": "3"}));
        assert_eq!(TagView(&t).failover_priority(), 3);
        assert!(!TagView(&t).no_failover());
        let t = tags(json!({"failover_priority": "0"}));
        assert!(TagView(&t).no_failover());
        assert_eq!(TagView(&t).failover_priority(), 0);
        // sync_priority '0': never the synchronous standby
        let t = tags(json!({"sync_priority": "0"}));
        assert!(TagView(&t).no_sync());
        assert_eq!(TagView(&t).sync_priority(), 0);
        // clonefrom 'true' is honoured
        assert!(TagView(&tags(json!({"clonefrom": "true"}))).clonefrom());
        // a boolean tag wins over its priority, by truthiness: 'false' is a non-empty string
        let t = tags(json!({"nofailover": "false", "failover_priority": "5"}));
        assert!(TagView(&t).no_failover());
        assert_eq!(TagView(&t).failover_priority(), 0);
        let t = tags(json!({"nofailover": false, "failover_priority": "5"}));
        assert!(!TagView(&t).no_failover());
        assert_eq!(TagView(&t).failover_priority(), 5);
        let t = tags(json!({"nofailover": 0}));
        assert!(!TagView(&t).no_failover());
        // nofailover: null beside a priority of 0 (YAML `nofailover:`): the priority decides
        let t = tags(json!({"nofailover": null, "failover_priority": 0}));
        assert!(TagView(&t).no_failover());
        // nothing: may lead, priority 1, may be synchronous
        let t = Map::new();
        assert!(!TagView(&t).no_failover() && !TagView(&t).no_sync() && !TagView(&t).clonefrom());
        assert_eq!(TagView(&t).failover_priority(), 1);
        // nostream is strict
        assert!(TagView(&tags(json!({"nostream": "on"}))).nostream());
        assert!(!TagView(&tags(json!({"nostream": "false"}))).nostream());
        assert!(!TagView(&tags(json!({"nostream": "maybe"}))).nostream());
    }

    #[test]
    fn surprising_values_are_named() {
        let t = tags(json!({"nofailover": "false", "nosync": true, "sync_priority": "high"}));
        let keys: Vec<String> = TagView(&t)
            .surprises()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, ["nofailover", "sync_priority"]);
        assert!(
            TagView(&tags(json!({"nofailover": "true"})))
                .surprises()
                .is_empty()
        );
    }
}
