//! The fleet as `host fleet --json` and `GET /v1/fleet` list it: each host's row, and what
//! that host made of each published plugin, with the plugin's rollout (and why it
//! stopped). The output stays an array of hosts, each with `"alive"`, as before the
//! catalogue: each host object only gains `"published"`.

use serde::{Deserialize, Serialize};

use super::store::PublishedPlugin;
use crate::services::postgres::{Database, FleetHost, PgError};

/// A host of the fleet, with what it made of each published plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct FleetMember {
    /// Its row (`id`, `alive`, `plugins` ...), as `host fleet --json` always listed it.
    #[serde(flatten)]
    pub host: FleetHost,
    /// Each plugin of the catalogue, by name: its rollout, and what this host made of it.
    #[serde(default)]
    pub published: Vec<PublishedHere>,
}

/// A published plugin seen from one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PublishedHere {
    pub name: String,
    pub version: String,
    /// SHA-256 of the published file, lowercase hex.
    pub sha256: String,
    /// The rollout, the fleet's: `canary`, `everywhere` or `failed`.
    pub rollout: String,
    /// Why the rollout stopped (with `"rollout": "failed"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_reason: Option<String>,
    /// This host is one of its canaries.
    pub canary: bool,
    /// What this host made of it: `loading`, `serving` (on probation), `passed`, `failed`;
    /// `null`: nothing (it is not this host's to load, or not yet).
    pub state: Option<String>,
    /// Why it failed on this host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The generation serving it on this host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
}

/// `hosts`, each with what it made of each of `published`.
pub fn members(hosts: Vec<FleetHost>, published: &[PublishedPlugin]) -> Vec<FleetMember> {
    hosts
        .into_iter()
        .map(|host| {
            let published = published
                .iter()
                .map(|plugin| {
                    let report = plugin.hosts.iter().find(|r| r.host == host.id);
                    PublishedHere {
                        name: plugin.name.clone(),
                        version: plugin.version.clone(),
                        sha256: plugin.sha256.clone(),
                        rollout: plugin.rollout.clone(),
                        rollout_reason: plugin.reason.clone(),
                        canary: plugin.canaries.contains(&host.id),
                        state: report.map(|r| r.state.clone()),
                        reason: report.and_then(|r| r.reason.clone()),
                        generation: report.and_then(|r| r.generation),
                    }
                })
                .collect();
            FleetMember { host, published }
        })
        .collect()
}

/// The fleet's hosts (alive within `lease_ms`, or gone) with the catalogue; a database of
/// a schema without the catalogue answers the hosts alone (`"published": []`).
pub async fn list_fleet(db: &Database, lease_ms: u64) -> Result<Vec<FleetMember>, PgError> {
    let hosts = db.fleet(lease_ms).await?;
    let published = super::service::list_published(db).await.unwrap_or_default();
    Ok(members(hosts, &published))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::catalogue::HostReport;

    #[test]
    fn each_host_gets_the_rollout_and_its_own_report() {
        let host = |id: &str| -> FleetHost {
            serde_json::from_value(serde_json::json!({
                "id": id, "hostname": "box", "pid": 1, "version": "1",
                "started_unix_ms": 0, "heartbeat_unix_ms": 0, "alive": true, "plugins": []
            }))
            .unwrap()
        };
        let plugin: PublishedPlugin = serde_json::from_value(serde_json::json!({
            "name": "hello", "version": "0.2.0", "sha256": "ab", "size": 1,
            "publisher": "me@box", "published_unix_ms": 0, "canary": 1, "canaries": ["a"],
            "rollout": "failed", "reason": "canary a: self_test failed",
            "hosts": [serde_json::to_value(HostReport {
                host: "a".into(), state: "failed".into(),
                reason: Some("self_test failed".into()), generation: None,
            }).unwrap()]
        }))
        .unwrap();
        let members = members(vec![host("a"), host("b")], &[plugin]);
        let json = serde_json::to_value(&members).unwrap();
        assert_eq!(
            json[0]["alive"], true,
            "the host's own fields stay at the top: {json}"
        );
        assert_eq!(json[0]["id"], "a");
        let a = &json[0]["published"][0];
        assert_eq!(
            (a["canary"].clone(), a["state"].clone(), a["reason"].clone()),
            (true.into(), "failed".into(), "self_test failed".into())
        );
        assert_eq!(a["rollout_reason"], "canary a: self_test failed");
        let b = &json[1]["published"][0];
        assert_eq!(
            (b["canary"].clone(), b["state"].clone()),
            (false.into(), serde_json::Value::Null)
        );
        assert_eq!(b["rollout"], "failed");
        // And back: a script's reader in Rust.
        let back: Vec<FleetMember> = serde_json::from_value(json).unwrap();
        assert_eq!(back, members);
    }
}
