//! pgpilot's shared library, used by the `agent` and the `console`:
//!
//! - [`config`]: Patroni-compatible YAML + `PATRONI_*` environment configuration;
//! - [`dcs`]: the cluster model and Patroni's etcd v3 key layout (etcd and in-memory stores);
//! - [`api`]: REST response types shared by the agent's server and its clients;
//! - [`haproxy`]: HAProxy configuration with Patroni-style health checks;
//! - [`journal`]: the cluster journal (agents' `/journal` and the `history` key, merged);
//! - [`tags`]: member tags read as Patroni reads them;
//! - [`types`]: LSNs, roles, states, slot names, units.

pub mod api;
pub mod cli;
pub mod config;
pub mod dcs;
pub mod haproxy;
pub mod journal;
pub mod ops;
pub mod tags;
pub mod types;
pub mod view;

/// The Patroni version pgpilot reports in member keys and `/patroni`, so that Patroni peers and
/// `patronictl` treat pgpilot members as current Patroni members.
pub const PATRONI_COMPAT_VERSION: &str = "4.1.4";

/// pgpilot's own version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
