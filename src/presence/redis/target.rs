//! Where the Redis store is: `--store` as a URL.
//!
//! - `redis://[user:pass@]host:port[/db]`, `rediss://…` (TLS): one node.
//! - `redis+cluster://[user:pass@]host:port,host:port`,
//!   `rediss+cluster://…`: a Cluster, given any of its nodes.

/// A parsed `--store` of a Redis kind.
#[derive(Clone, PartialEq, Eq)]
pub struct Target {
    /// One `redis://` or `rediss://` URL per node given.
    pub nodes: Vec<String>,
    /// A Cluster (sharded pub/sub, hash-tagged keys over many slots).
    pub cluster: bool,
    /// The URL as given, with any password replaced by `***`.
    pub shown: String,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

impl Target {
    /// Parses a `redis://`, `rediss://`, `redis+cluster://` or
    /// `rediss+cluster://` URL.
    pub fn parse(url: &str) -> Result<Self, String> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| format!("{url:?} is not a URL"))?;
        let (node_scheme, cluster) = match scheme {
            "redis" => ("redis", false),
            "rediss" => ("rediss", false),
            "redis+cluster" => ("redis", true),
            "rediss+cluster" => ("rediss", true),
            other => {
                return Err(format!(
                    "unknown store scheme {other:?}: use memory, redis://, rediss://, \
                     redis+cluster:// or rediss+cluster://"
                ))
            }
        };
        let (credentials, hosts) = match rest.rsplit_once('@') {
            Some((credentials, hosts)) => (Some(credentials), hosts),
            None => (None, rest),
        };
        let (hosts, path) = match hosts.split_once('/') {
            Some((hosts, path)) => (hosts, Some(path)),
            None => (hosts, None),
        };
        if let Some(path) = path.filter(|p| !p.is_empty()) {
            let db = path.split('?').next().unwrap_or_default();
            if cluster && !db.is_empty() {
                return Err("a Redis Cluster has no databases: drop the /db of the URL".into());
            }
            if !db.is_empty() && db.parse::<u16>().is_err() {
                return Err(format!("database {db:?} is not a number"));
            }
        }
        let hosts: Vec<&str> = hosts.split(',').map(str::trim).collect();
        if hosts.iter().any(|h| h.is_empty()) {
            return Err(format!("{} has an empty host", redact(url)));
        }
        if !cluster && hosts.len() > 1 {
            return Err("several hosts need redis+cluster:// (or rediss+cluster://)".into());
        }
        for host in &hosts {
            let port = host.rsplit_once(':').map(|(_, p)| p);
            if port.is_some_and(|p| p.parse::<u16>().is_err()) && !host.ends_with(']') {
                return Err(format!("{host:?}: the port is not a number"));
            }
        }
        let auth = credentials.map_or(String::new(), |c| format!("{c}@"));
        let suffix = match path {
            Some(path) if !cluster => format!("/{path}"),
            _ => String::new(),
        };
        let nodes = hosts
            .iter()
            .map(|host| format!("{node_scheme}://{auth}{host}{suffix}"))
            .collect();
        Ok(Self {
            nodes,
            cluster,
            shown: redact(url),
        })
    }
}

/// `url` with the password of its credentials replaced by `***`.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.rsplit_once('@') {
        Some((credentials, hosts)) => {
            let user = credentials.split_once(':').map_or(credentials, |(u, _)| u);
            let hidden = if credentials.contains(':') {
                format!("{user}:***")
            } else {
                "***".to_owned()
            };
            format!("{scheme}://{hidden}@{hosts}")
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_forms_of_store_urls() {
        let t = Target::parse("redis://127.0.0.1:6379/2").unwrap();
        assert_eq!(t.nodes, ["redis://127.0.0.1:6379/2"]);
        assert!(!t.cluster);
        let t = Target::parse("rediss://app:s3cret@redis.internal:6380").unwrap();
        assert_eq!(t.nodes, ["rediss://app:s3cret@redis.internal:6380"]);
        assert_eq!(t.shown, "rediss://app:***@redis.internal:6380");
        assert_eq!(format!("{t:?}"), "rediss://app:***@redis.internal:6380");
        let t = Target::parse("redis+cluster://:pw@10.0.0.1:7000,10.0.0.2:7001").unwrap();
        assert!(t.cluster);
        assert_eq!(
            t.nodes,
            ["redis://:pw@10.0.0.1:7000", "redis://:pw@10.0.0.2:7001"]
        );
        assert_eq!(t.shown, "redis+cluster://:***@10.0.0.1:7000,10.0.0.2:7001");
        let t = Target::parse("rediss+cluster://h:1").unwrap();
        assert_eq!(t.nodes, ["rediss://h:1"]);
        for bad in [
            "localhost:6379",
            "http://h:1",
            "redis://a:1,b:2",
            "redis+cluster://h:1/3",
            "redis://h:port",
            "redis://h:1/x",
            "redis+cluster://a:1,,b:2",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }
}
